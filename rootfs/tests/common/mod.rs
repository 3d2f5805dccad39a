//! Helpers shared by the unpack tests: a TC-shaped fixture tree built as
//! root with real tools, archives made by GNU cpio / mksquashfs, and a
//! comparison of our tc_root + manifest with a reference extraction done by
//! the same tools as root.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};

use camino::{Utf8Path, Utf8PathBuf};
use rootfs::manifest::{Kind, Manifest};

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Tests that build device nodes or chown need root (they run as root in
/// CI); elsewhere they say so and pass.
pub fn need_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    eprintln!("SKIPPED {test}: needs root to build fixtures with device nodes and owners");
    false
}

pub struct Tmp {
    _dir: tempfile::TempDir,
    pub path: Utf8PathBuf,
}

/// A temp dir that other users can traverse (for the uid 65534 runs).
pub fn tmp() -> Tmp {
    let dir = tempfile::tempdir().unwrap();
    let path = Utf8PathBuf::from_path_buf(dir.path().to_path_buf()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    Tmp { _dir: dir, path }
}

pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn chmod(p: &Utf8Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(p: &Utf8Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn file(p: &Utf8Path, data: &[u8], mode: u32) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
    chmod(p, mode);
}

fn mknod(p: &Utf8Path, t: &str, major: u32, minor: u32, mode: u32, uid: u32, gid: u32) {
    run(Command::new("mknod")
        .arg(p)
        .arg(t)
        .arg(major.to_string())
        .arg(minor.to_string()));
    chmod(p, mode);
    chown(p, uid, gid);
}

/// Deterministic incompressible-ish bytes.
pub fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A TC-shaped tree with every kind of entry. Needs root.
pub fn build_fixture(src: &Utf8Path) {
    std::fs::create_dir_all(src).unwrap();
    for d in [
        "bin",
        "sbin",
        "etc",
        "dev",
        "usr/lib",
        "usr/share",
        "home/tc",
        "opt/ro",
        "srv",
        "tmp",
        "run",
        "var/empty",
    ] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    let busybox: Vec<u8> = b"busybox\n".repeat(3000);
    file(&src.join("bin/busybox"), &busybox, 0o755);
    file(&src.join("bin/busybox.suid"), b"suid busybox", 0o4755);
    std::fs::hard_link(src.join("bin/busybox.suid"), src.join("bin/su")).unwrap();
    std::os::unix::fs::symlink("busybox", src.join("bin/sh")).unwrap();
    std::os::unix::fs::symlink("../bin/busybox", src.join("sbin/init")).unwrap();
    file(&src.join("usr/bin/a"), b"three names", 0o711);
    std::fs::hard_link(src.join("usr/bin/a"), src.join("usr/bin/b")).unwrap();
    std::fs::hard_link(src.join("usr/bin/a"), src.join("usr/bin/c")).unwrap();
    file(
        &src.join("etc/passwd"),
        b"root:x:0:0:root:/root:/bin/sh\ntc:x:1001:50::/home/tc:/bin/sh\n",
        0o644,
    );
    file(&src.join("etc/shadow"), b"root:*:1::::::\n", 0o640);
    chown(&src.join("etc/shadow"), 0, 50);
    file(&src.join("etc/sudoers"), b"tc ALL=NOPASSWD: ALL\n", 0o440);
    file(&src.join("etc/empty"), b"", 0o600);
    file(&src.join("usr/lib/libx.so.1"), &noise(70_000, 7), 0o755);
    std::os::unix::fs::symlink("libx.so.1", src.join("usr/lib/libx.so")).unwrap();
    file(&src.join("usr/share/a file#1"), b"spaces", 0o644);
    file(&src.join("home/tc/.profile"), b"PS1='$ '\n", 0o644);
    chown(&src.join("home/tc/.profile"), 1001, 50);
    chown(&src.join("home/tc"), 1001, 50);
    chmod(&src.join("home/tc"), 0o750);
    file(&src.join("opt/ro/inside"), b"ro", 0o444);
    chmod(&src.join("opt/ro"), 0o555);
    chmod(&src.join("var/empty"), 0o555);
    chmod(&src.join("srv"), 0o2775);
    chmod(&src.join("tmp"), 0o1777);
    mknod(&src.join("dev/console"), "c", 5, 1, 0o600, 0, 50);
    mknod(&src.join("dev/sda"), "b", 8, 0, 0o660, 0, 6);
    mknod(&src.join("dev/big"), "c", 259, 65537, 0o640, 0, 0);
    run(Command::new("mkfifo")
        .arg("-m")
        .arg("600")
        .arg(src.join("run/initctl")));
    drop(std::os::unix::net::UnixListener::bind(src.join("run/sock")).unwrap());
    chmod(&src.join("run/sock"), 0o755);
    // Fixed mtimes so a wrong one shows.
    run(Command::new("touch")
        .arg("-h")
        .arg("-d")
        .arg("@1500000000")
        .arg(src.join("etc/passwd"))
        .arg(src.join("bin/sh")));
}

/// `find . | sort | cpio -o -H FORMAT` inside `src`.
pub fn gnu_cpio(src: &Utf8Path, format: &str) -> Vec<u8> {
    let list = run(Command::new("sh")
        .arg("-c")
        .arg("find . -print0 | sort -z")
        .current_dir(src));
    let mut child = Command::new("cpio")
        .args(["-o", "-0", "--quiet", "-H", format])
        .current_dir(src)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&list).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "cpio -o failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Extracts `archive` (plain cpio bytes) into `dest` with GNU cpio as root.
pub fn gnu_cpio_extract(archive: &[u8], dest: &Utf8Path) {
    std::fs::create_dir_all(dest).unwrap();
    let mut child = Command::new("cpio")
        .args(["-idmu", "--quiet", "--no-absolute-filenames"])
        .current_dir(dest)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(archive).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "cpio -i failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn gzip(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(p).unwrap();
        out.extend(e.finish().unwrap());
    }
    out
}

pub fn mksquashfs(src: &Utf8Path, out: &Utf8Path, comp: &str) {
    run(Command::new("mksquashfs").arg(src).arg(out).args([
        "-comp",
        comp,
        "-b",
        "4K",
        "-no-xattrs",
        "-noappend",
        "-quiet",
        "-no-progress",
    ]));
}

pub fn unsquashfs(image: &Utf8Path, dest: &Utf8Path) {
    run(Command::new("unsquashfs")
        .args(["-f", "-q", "-n", "-d"])
        .arg(dest)
        .arg(image));
}

pub fn has_tools(tools: &[(&str, &str)]) -> bool {
    tools
        .iter()
        .all(|(t, p)| testmirror::tools::require_tool(t, p).is_some())
}

fn walk(root: &Utf8Path) -> BTreeMap<String, std::fs::Metadata> {
    fn go(root: &Utf8Path, dir: &Utf8Path, out: &mut BTreeMap<String, std::fs::Metadata>) {
        for e in dir.read_dir_utf8().unwrap() {
            let e = e.unwrap();
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            let rel = e.path().strip_prefix(root).unwrap().to_string();
            let is_dir = md.is_dir();
            out.insert(rel, md);
            if is_dir {
                go(root, e.path(), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    go(root, root, &mut out);
    out
}

fn dev_split(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as u32, minor as u32)
}

/// Asserts that `root` + `manifest` describe exactly the tree `reference`
/// (extracted as root by GNU cpio or unsquashfs).
pub fn compare(reference: &Utf8Path, root: &Utf8Path, manifest: &Manifest, hard_links: bool) {
    let refs = walk(reference);
    let ours = walk(root);
    assert!(!refs.is_empty());
    for (rel, md) in &refs {
        let guest = format!("/{rel}");
        let e = manifest
            .get(&guest)
            .unwrap_or_else(|| panic!("{guest} missing from the manifest"));
        assert_eq!((e.uid, e.gid), (md.uid(), md.gid()), "owner of {guest}");
        let ft = md.file_type();
        use std::os::unix::fs::FileTypeExt;
        if !ft.is_symlink() {
            assert_eq!(e.mode, md.mode() & 0o7777, "manifest mode of {guest}");
        }
        let disk = ours.get(rel);
        let ref_path = reference.join(rel);
        let our_path = root.join(rel);
        if ft.is_dir() {
            assert_eq!(e.kind, Kind::Dir, "{guest}");
            let d = disk.unwrap_or_else(|| panic!("{guest} not on disk"));
            assert!(d.is_dir(), "{guest}");
            assert_eq!(
                d.mode() & 0o7777,
                (md.mode() & 0o777) | 0o700,
                "disk mode of {guest}"
            );
            // GNU cpio sometimes leaves a directory at "now" (an entry
            // created in it after it set the time); only a reference time
            // that came from the archive is comparable.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            if now - md.mtime() > 3600 {
                assert_eq!(d.mtime(), md.mtime(), "mtime of directory {guest}");
            }
        } else if ft.is_file() {
            assert_eq!(e.kind, Kind::File, "{guest}");
            let d = disk.unwrap_or_else(|| panic!("{guest} not on disk"));
            assert!(d.is_file(), "{guest}");
            assert_eq!(d.mode() & 0o7777, md.mode() & 0o777, "disk mode of {guest}");
            assert_eq!(d.mtime(), md.mtime(), "mtime of {guest}");
            assert!(
                std::fs::read(&our_path).unwrap() == std::fs::read(&ref_path).unwrap(),
                "contents of {guest}"
            );
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&ref_path)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            assert_eq!(
                e.kind,
                Kind::Symlink {
                    target: target.clone()
                },
                "{guest}"
            );
            assert!(
                disk.is_some_and(|d| d.file_type().is_symlink()),
                "{guest} not a symlink on disk"
            );
            assert_eq!(
                std::fs::read_link(&our_path).unwrap().to_str().unwrap(),
                target,
                "{guest}"
            );
        } else {
            let (major, minor) = dev_split(md.rdev());
            let want = if ft.is_char_device() {
                Kind::CharDev { major, minor }
            } else if ft.is_block_device() {
                Kind::BlockDev { major, minor }
            } else if ft.is_fifo() {
                Kind::Fifo
            } else {
                Kind::Socket
            };
            assert_eq!(e.kind, want, "{guest}");
            assert!(disk.is_none(), "{guest} must not exist on disk");
        }
    }
    for rel in ours.keys() {
        assert!(
            refs.contains_key(rel),
            "/{rel} is on disk but not in the reference"
        );
    }
    for (p, _) in manifest.iter() {
        assert!(
            refs.contains_key(p.trim_start_matches('/')),
            "{p} is in the manifest but not in the reference"
        );
    }
    if hard_links {
        let groups = |m: &BTreeMap<String, std::fs::Metadata>| -> BTreeSet<Vec<String>> {
            let mut by: BTreeMap<u64, Vec<String>> = BTreeMap::new();
            for (rel, md) in m {
                if md.is_file() && md.nlink() > 1 {
                    by.entry(md.ino()).or_default().push(rel.clone());
                }
            }
            by.into_values().collect()
        };
        let g = groups(&refs);
        assert!(!g.is_empty(), "the reference has no hard links");
        assert_eq!(groups(&ours), g, "hard-link groups");
    }
}

/// Everything about a tree on disk that must not depend on who unpacked it.
pub fn listing(root: &Utf8Path) -> String {
    let mut out = String::new();
    for (rel, md) in walk(root) {
        let p = root.join(&rel);
        let what = if md.is_dir() {
            "dir".to_string()
        } else if md.file_type().is_symlink() {
            format!("-> {}", std::fs::read_link(&p).unwrap().display())
        } else {
            let data = std::fs::read(&p).unwrap();
            format!(
                "file {} {} {} nlink={}",
                data.len(),
                md.mtime(),
                blake3::hash(&data).to_hex(),
                md.nlink()
            )
        };
        out.push_str(&format!("{rel} {:o} {what}\n", md.mode()));
    }
    out
}

/// A newc archive from raw parts, for names GNU cpio would not write.
pub struct Newc(pub Vec<u8>);

impl Newc {
    pub fn new() -> Newc {
        Newc(Vec::new())
    }

    pub fn entry(&mut self, name: &[u8], mode: u32, data: &[u8]) -> &mut Newc {
        self.raw(name, mode, 1, data.len() as u32, data, 1)
    }

    pub fn raw(
        &mut self,
        name: &[u8],
        mode: u32,
        ino: u32,
        size: u32,
        data: &[u8],
        nlink: u32,
    ) -> &mut Newc {
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            1_600_000_000,
            size,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        self.0.extend_from_slice(b"070701");
        for f in fields {
            self.0.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.0.extend_from_slice(name);
        self.0.push(0);
        self.pad();
        self.0.extend_from_slice(data);
        self.pad();
        self
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    pub fn finish(&mut self) -> Vec<u8> {
        self.entry(b"TRAILER!!!", 0, b"");
        std::mem::take(&mut self.0)
    }
}
