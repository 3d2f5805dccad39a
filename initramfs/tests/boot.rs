//! The real consumer: boot a kernel (Debian's, from /boot) under QEMU/TCG
//! with a packed initramfs and let a busybox /init report what the kernel
//! unpacked: hard links, device nodes, modes, owners, a multi-MiB file
//! that spans several parallel gzip chunks.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use camino::Utf8PathBuf;
use initramfs::{pack, PackOptions};
use rootfs::manifest::{Entry, Kind, Manifest};

const INIT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B echo BOOT-CHECK-START
$B stat -c 'L %i %h %s %n' /lib/a /lib/b /lib/c
$B stat -c 'M %F %t:%T %a %u:%g %n' /dev/console /dev/sda /tmp /bin/suid /home/tc /home/tc/file
$B md5sum /big
$B cat /lib/c
$B echo BOOT-CHECK-END
$B poweroff -f
"#;

fn kernel() -> Option<Utf8PathBuf> {
    let mut found: Vec<Utf8PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .filter_map(|e| Utf8PathBuf::from_path_buf(e.path()).ok())
        .filter(|p| p.file_name().is_some_and(|n| n.starts_with("vmlinuz-")))
        .collect();
    found.sort();
    found.pop()
}

#[test]
fn kernel_unpacks_every_compression() {
    testmirror::tools::require_tool("qemu-system-x86_64", "qemu-system-x86").expect("qemu");
    let busybox = testmirror::tools::require_tool("busybox", "busybox-static").expect("busybox");
    let Some(kernel) = kernel() else {
        testmirror::tools::require_tool("/boot/vmlinuz-*", "linux-image-amd64");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = Utf8PathBuf::from_path_buf(dir.path().join("root")).unwrap();
    for d in ["bin", "dev", "lib", "tmp", "home/tc", "proc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    common::write(&root, "init", INIT.as_bytes(), 0o755);
    common::write(&root, "bin/suid", b"x", 0o755);
    common::write(&root, "home/tc/file", b"tc's", 0o644);
    common::write(&root, "lib/a", b"linked data\n", 0o644);
    std::fs::hard_link(root.join("lib/a"), root.join("lib/b")).unwrap();
    std::fs::hard_link(root.join("lib/a"), root.join("lib/c")).unwrap();
    // 3.5 MiB of poorly compressible data: several 1 MiB gzip chunks.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let big: Vec<u8> = (0..3_500_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 7) as u8 + b'a'
        })
        .collect();
    common::write(&root, "big", &big, 0o644);
    let big_md5 = String::from_utf8(common::run(
        Command::new("md5sum").arg(root.join("big").as_str()),
        None,
    ))
    .unwrap();
    let big_md5 = big_md5.split_whitespace().next().unwrap().to_string();

    let mut m = Manifest::new();
    let e = |kind, mode, uid, gid| Entry {
        mode,
        uid,
        gid,
        kind,
        source: None,
    };
    m.insert(
        "/dev/console",
        e(Kind::CharDev { major: 5, minor: 1 }, 0o600, 0, 0),
    );
    m.insert(
        "/dev/sda",
        e(Kind::BlockDev { major: 8, minor: 0 }, 0o660, 0, 6),
    );
    m.insert("/tmp", e(Kind::Dir, 0o1777, 0, 0));
    m.insert("/bin/suid", e(Kind::File, 0o4755, 0, 0));

    // zstd:19: the largest window we allow must still fit the guest decoder.
    for c in ["gzip", "zstd", "zstd:19", "xz"] {
        let img = Utf8PathBuf::from_path_buf(
            dir.path()
                .join(format!("initramfs.{}", c.replace(':', "-"))),
        )
        .unwrap();
        pack(&root, &m, &img, &PackOptions::new(c.parse().unwrap())).unwrap();
        let start = Instant::now();
        let console = boot(&kernel, &img);
        let elapsed = start.elapsed();
        let report = console
            .split("BOOT-CHECK-START")
            .nth(1)
            .and_then(|s| s.split("BOOT-CHECK-END").next())
            .unwrap_or_else(|| panic!("{c}: /init did not run; console:\n{console}"));
        eprintln!("{c}: booted and checked in {elapsed:.1?}");
        let lines: Vec<&str> = report
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let links: Vec<Vec<&str>> = lines
            .iter()
            .filter(|l| l.starts_with("L "))
            .map(|l| l.split(' ').collect())
            .collect();
        assert_eq!(links.len(), 3, "{c}: {report}");
        for l in &links {
            assert_eq!(
                (l[1], l[2], l[3]),
                (links[0][1], "3", "12"),
                "{c}: hard links: {report}"
            );
        }
        for want in [
            "M character special file 5:1 600 0:0 /dev/console",
            "M block special file 8:0 660 0:6 /dev/sda",
            "M directory 0:0 1777 0:0 /tmp",
            "M regular file 0:0 4755 0:0 /bin/suid",
            "M directory 0:0 755 1001:50 /home/tc",
            "M regular file 0:0 644 1001:50 /home/tc/file",
            "linked data",
        ] {
            assert!(lines.contains(&want), "{c}: missing `{want}` in:\n{report}");
        }
        assert!(
            report.contains(&format!("{big_md5}  /big")),
            "{c}: /big corrupted:\n{report}"
        );
    }
}

/// Boots and returns the serial console output.
fn boot(kernel: &Utf8PathBuf, initrd: &Utf8PathBuf) -> String {
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "512",
            "-nographic",
            "-no-reboot",
            "-kernel",
            kernel.as_str(),
        ])
        .args(["-initrd", initrd.as_str()])
        .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "QEMU did not power off within 180 s; console:\n{}",
                reader.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().unwrap()
}
