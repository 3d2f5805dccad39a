//! Shared fixtures: a small tc_root with every kind of entry, and wrappers
//! around the real tools (gzip, zstd, xz, GNU cpio).
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use camino::{Utf8Path, Utf8PathBuf};
use initramfs::Compression;
use rootfs::manifest::{Entry, Kind, Manifest};

pub struct Tree {
    pub dir: tempfile::TempDir,
    pub root: Utf8PathBuf,
    pub manifest: Manifest,
}

impl Tree {
    /// A scratch directory next to the tree, for outputs.
    pub fn out(&self, name: &str) -> Utf8PathBuf {
        Utf8PathBuf::from_path_buf(self.dir.path().join("out"))
            .unwrap()
            .join(name)
    }
}

fn entry(kind: Kind, mode: u32, uid: u32, gid: u32) -> Entry {
    Entry {
        mode,
        uid,
        gid,
        kind,
        source: Some("corepure64.gz".into()),
    }
}

pub fn write(root: &Utf8Path, rel: &str, data: &[u8], mode: u32) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, data).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// dirs, files (empty, odd sizes, 1 MiB+), symlinks, a hard-link group of
/// 3, a setuid file, device nodes, a fifo, a 0700 dir, 1001:50 home/tc.
/// Everything on disk is world-readable (a 65534 user can pack it).
pub fn build_tree() -> Tree {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = Utf8PathBuf::from_path_buf(dir.path().join("tc_root")).unwrap();
    let out = Utf8PathBuf::from_path_buf(dir.path().join("out")).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
    for d in [
        "bin",
        "dev",
        "etc",
        "run",
        "tmp",
        "usr/lib",
        "home/tc/.ssh",
        "opt",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    write(&root, "bin/busybox", b"#!busybox\n", 0o755);
    write(&root, "bin/busybox.suid", b"suid busybox", 0o755);
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::os::unix::fs::symlink("/does/not/exist", root.join("bin/dangling")).unwrap();
    write(
        &root,
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\ntc:x:1001:50::/home/tc:/bin/sh\n",
        0o644,
    );
    write(&root, "etc/shadow", b"root:*:1::::::\n", 0o640);
    write(&root, "etc/empty", b"", 0o644);
    write(&root, "etc/odd size", b"abcde", 0o604);
    let big: Vec<u8> = (0..1_500_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 & 0x3f)
        .collect();
    write(&root, "usr/lib/libbig.so.1", &big, 0o755);
    write(
        &root,
        "usr/lib/linked-a",
        b"three names, one inode\n",
        0o644,
    );
    std::fs::hard_link(root.join("usr/lib/linked-a"), root.join("usr/lib/linked-b")).unwrap();
    std::fs::hard_link(root.join("usr/lib/linked-a"), root.join("usr/lib/linked-c")).unwrap();
    write(&root, "home/tc/.profile", b"export PS1='$ '\n", 0o644);
    write(
        &root,
        "home/tc/.ssh/authorized_keys",
        b"ssh-ed25519 AAAA test\n",
        0o644,
    );
    write(&root, "opt/bootlocal.sh", b"#!/bin/sh\n", 0o775);

    let mut m = Manifest::new();
    m.insert("/bin", entry(Kind::Dir, 0o755, 0, 0));
    m.insert("/bin/busybox.suid", entry(Kind::File, 0o4755, 0, 0));
    m.insert("/dev", entry(Kind::Dir, 0o755, 0, 0));
    m.insert(
        "/dev/console",
        entry(Kind::CharDev { major: 5, minor: 1 }, 0o600, 0, 0),
    );
    m.insert(
        "/dev/null",
        entry(Kind::CharDev { major: 1, minor: 3 }, 0o666, 0, 0),
    );
    m.insert(
        "/dev/sda",
        entry(Kind::BlockDev { major: 8, minor: 0 }, 0o660, 0, 6),
    );
    m.insert("/run/initctl", entry(Kind::Fifo, 0o600, 0, 0));
    m.insert("/tmp", entry(Kind::Dir, 0o1777, 0, 0));
    m.insert("/etc/shadow", entry(Kind::File, 0o640, 0, 50));
    m.insert("/home/tc/.ssh", entry(Kind::Dir, 0o700, 1001, 50));
    m.insert("/opt", entry(Kind::Dir, 0o2775, 0, 50));
    Tree {
        dir,
        root,
        manifest: m,
    }
}

/// Runs a command, panicking with its stderr on failure; returns stdout.
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Vec<u8> {
    let what = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let feeder = stdin.map(|data| {
        let mut pipe = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let out = child.wait_with_output().unwrap();
    if let Some(f) = feeder {
        f.join().unwrap();
    }
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Decompresses with the real tool for `c`.
pub fn decompress(path: &Utf8Path, c: Compression) -> Vec<u8> {
    let tool = match c {
        Compression::Gzip { .. } => "gzip",
        Compression::Zstd { .. } => "zstd",
        Compression::Xz => "xz",
        Compression::None => return std::fs::read(path).unwrap(),
    };
    testmirror::tools::require_tool(tool, tool).expect("tool");
    run(
        Command::new(tool).args(["-d", "-c"]).arg(path.as_str()),
        None,
    )
}

/// `cpio -t -v -n` (numeric owners) of an uncompressed archive.
pub fn cpio_tv(cpio: &[u8]) -> String {
    testmirror::tools::require_tool("cpio", "cpio").expect("cpio");
    String::from_utf8(run(
        Command::new("cpio").args(["-t", "-v", "-n", "--quiet"]),
        Some(cpio),
    ))
    .unwrap()
}

/// `cpio -i` as the current user (root in CI) into `dest`.
pub fn cpio_extract(cpio: &[u8], dest: &Utf8Path) {
    testmirror::tools::require_tool("cpio", "cpio").expect("cpio");
    std::fs::create_dir_all(dest).unwrap();
    run(
        Command::new("cpio")
            .args(["-i", "-d", "-m", "-u", "--quiet", "--no-absolute-filenames"])
            .current_dir(dest),
        Some(cpio),
    );
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// (name, the 13 header fields) of every entry of an uncompressed newc
/// archive, trailer included: a deliberately independent little parser.
pub fn headers(raw: &[u8]) -> Vec<(String, [u32; 13])> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 110 <= raw.len() {
        assert_eq!(&raw[pos..pos + 6], b"070701", "magic at {pos}");
        let mut f = [0u32; 13];
        for (i, v) in f.iter_mut().enumerate() {
            let s = std::str::from_utf8(&raw[pos + 6 + 8 * i..pos + 14 + 8 * i]).unwrap();
            *v = u32::from_str_radix(s, 16).unwrap();
        }
        let namesize = f[11] as usize;
        let name = String::from_utf8(raw[pos + 110..pos + 110 + namesize - 1].to_vec()).unwrap();
        let data = (pos + 110 + namesize + 3) & !3;
        pos = (data + f[6] as usize + 3) & !3;
        let done = name == "TRAILER!!!";
        out.push((name, f));
        if done {
            break;
        }
    }
    out
}
