//! The test core really boots: Debian's kernel under QEMU (TCG) runs TC's
//! chain init -> rcS -> tc-config -> bootsync.sh -> bootlocal.sh, and the
//! core's glibc and ldconfig run a dynamically linked program from
//! /usr/local/lib, as on real Tiny Core.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use camino::Utf8PathBuf;
use testmirror::mirror::{Layout, TCDEMO_OUTPUT};
use testmirror::newc::{self, Entry, Kind};
use testmirror::tools::require_tool;

const BOOTLOCAL: &str = "#!/bin/sh
echo testmirror-bootlocal-start
/sbin/ldconfig
/usr/local/bin/tcdemo
echo testmirror-bootlocal-end
/sbin/poweroff -f
";

fn debian_kernel() -> Utf8PathBuf {
    let mut kernels: Vec<Utf8PathBuf> = std::fs::read_dir("/boot")
        .expect("listing /boot: apt-get install linux-image-amd64")
        .filter_map(|e| Utf8PathBuf::from_path_buf(e.ok()?.path()).ok())
        .filter(|p| p.file_name().is_some_and(|n| n.starts_with("vmlinuz-")))
        .collect();
    kernels.sort();
    kernels
        .pop()
        .expect("no /boot/vmlinuz-*: apt-get install linux-image-amd64")
}

#[test]
fn core_boots_and_runs_a_dynamic_program_from_usr_local_lib() {
    let Some(qemu) = require_tool("qemu-system-x86_64", "qemu-system-x86") else {
        return;
    };
    let Some(unsquashfs) = require_tool("unsquashfs", "squashfs-tools") else {
        return;
    };
    let kernel = debian_kernel();
    let tmp = tempfile::tempdir().unwrap();
    let dir = Utf8PathBuf::from_path_buf(tmp.path().to_path_buf()).unwrap();
    let m = testmirror::build(&dir.join("mirror"), &Layout::tc16_x86_64()).unwrap();

    // What the setup will do for real: unpack the two extensions, add
    // lib64 -> lib (the host binary's interpreter is /lib64/...).
    let root = dir.join("ext");
    for p in ["libtcdemo", "tcdemo"] {
        let st = Command::new(&unsquashfs)
            .arg("-f")
            .arg("-d")
            .arg(&root)
            .arg(m.tcz_path(p))
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "unsquashfs {p}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
    }
    let read = |p: &str| std::fs::read(root.join(p)).unwrap();
    let overlay = vec![
        Entry::new("lib64", 0o777, Kind::Symlink("lib".into())),
        Entry::new("opt/bootlocal.sh", 0o775, Kind::File(BOOTLOCAL.into())),
        Entry::new(
            "usr/local/bin/tcdemo",
            0o755,
            Kind::File(read("usr/local/bin/tcdemo")),
        ),
        Entry::new(
            "usr/local/lib/libtcdemo.so",
            0o777,
            Kind::Symlink("libtcdemo.so.1".into()),
        ),
        Entry::new(
            "usr/local/lib/libtcdemo.so.1",
            0o755,
            Kind::File(read("usr/local/lib/libtcdemo.so.1")),
        ),
    ];
    // A third archive after the core's two, uncompressed. The kernel only
    // recognises an uncompressed archive at a 4-byte-aligned offset (zeros
    // before it are skipped), so pad the gzip members first.
    let mut initrd = std::fs::read(m.core_path()).unwrap();
    initrd.resize(initrd.len().next_multiple_of(4), 0);
    newc::write_archive(&mut initrd, &overlay, 0, 100_000);
    let initrd_path = dir.join("initrd");
    std::fs::write(&initrd_path, &initrd).unwrap();

    let mut child = Command::new(qemu)
        .args([
            "-accel",
            "tcg",
            "-m",
            "512",
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd_path)
        .args([
            "-append",
            "console=ttyS0 nozswap nortc nodhcp panic=-1 quiet",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut log = Vec::new();
    let deadline = Duration::from_secs(180);
    while start.elapsed() < deadline {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                let done = line.contains("testmirror-bootlocal-end");
                log.push(line);
                if done {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    eprintln!("boot took {:?}", start.elapsed());
    let log = log.join("\n");
    for needle in [
        "tc-config: booting",
        "testmirror-bootlocal-start",
        TCDEMO_OUTPUT,
        "testmirror-bootlocal-end",
    ] {
        assert!(
            log.contains(needle),
            "`{needle}` missing from the guest console:\n{log}"
        );
    }
}
