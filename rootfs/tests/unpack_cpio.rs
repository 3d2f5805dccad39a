//! cpio unpacking compared with GNU cpio run as root.

mod common;

use common::*;
use rootfs::manifest::{Kind, Manifest};
use rootfs::unpack;

fn tools() -> bool {
    has_tools(&[
        ("cpio", "cpio"),
        ("mknod", "coreutils"),
        ("mkfifo", "coreutils"),
    ])
}

#[test]
fn gzip_newc_matches_gnu_cpio() {
    if !tools() || !need_root("gzip_newc_matches_gnu_cpio") {
        return;
    }
    let t = tmp();
    build_fixture(&t.path.join("src"));
    let plain = gnu_cpio(&t.path.join("src"), "newc");
    gnu_cpio_extract(&plain, &t.path.join("ref"));

    // Two gzip members, split mid-entry, like some corepure64.gz.
    let (a, b) = plain.split_at(plain.len() / 3);
    let gz = gzip(&[a, b]);
    let archive = t.path.join("corepure64.gz");
    std::fs::write(&archive, gz).unwrap();
    let root = t.path.join("tc_root");
    let mut m = Manifest::new();
    let stats = unpack::cpio(&archive, &root, &mut m, "corepure64.gz").unwrap();
    compare(&t.path.join("ref"), &root, &m, true);
    assert_eq!(stats.hard_links, 3, "{stats:?}");
    assert_eq!(stats.special, 5, "{stats:?}");
    assert!(m
        .iter()
        .all(|(_, e)| e.source.as_deref() == Some("corepure64.gz")));
    let text = m.to_text();
    assert!(
        text.contains("file /bin/busybox.suid bin/busybox.suid 4755 0 0\n"),
        "{text}"
    );
    assert!(
        text.contains("nod /dev/big 0640 0 0 c 259 65537\n"),
        "{text}"
    );
    assert!(text.contains("dir /tmp 1777 0 0\n"), "{text}");
    assert!(text.contains("dir /home/tc 0750 1001 50\n"), "{text}");
    assert!(text.contains("pipe /run/initctl 0600 0 0\n"), "{text}");
    assert!(text.contains("sock /run/sock 0755 0 0\n"), "{text}");

    // The same archive, uncompressed and in the crc format.
    let crc = gnu_cpio(&t.path.join("src"), "crc");
    std::fs::write(t.path.join("core.cpio"), &crc).unwrap();
    let root2 = t.path.join("tc_root2");
    let mut m2 = Manifest::new();
    unpack::cpio(&t.path.join("core.cpio"), &root2, &mut m2, "corepure64.gz").unwrap();
    assert_eq!(m2.to_text(), m.to_text());
    assert_eq!(listing(&root2), listing(&root));
}

#[test]
fn concatenated_archives_later_wins() {
    if !tools() || !need_root("concatenated_archives_later_wins") {
        return;
    }
    let t = tmp();
    let src = t.path.join("src");
    build_fixture(&src);
    let first = gnu_cpio(&src, "newc");

    // A second archive overrides a file, a symlink and a directory's mode,
    // and adds a hard-link pair whose inode number collides with the first.
    let src2 = t.path.join("src2");
    std::fs::create_dir_all(src2.join("etc")).unwrap();
    std::fs::create_dir_all(src2.join("bin")).unwrap();
    std::fs::write(src2.join("etc/passwd"), b"overridden\n").unwrap();
    std::os::unix::fs::symlink("busybox.suid", src2.join("bin/sh")).unwrap();
    std::fs::write(src2.join("etc/new"), b"new").unwrap();
    std::fs::hard_link(src2.join("etc/new"), src2.join("etc/new2")).unwrap();
    std::fs::set_permissions(
        src2.join("etc"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let second = gnu_cpio(&src2, "newc");

    let reference = t.path.join("ref");
    gnu_cpio_extract(&first, &reference);
    gnu_cpio_extract(&second, &reference);

    // Zero padding between the archives, as when initramfs images are
    // concatenated after 512-byte blocking.
    let mut cat = first.clone();
    cat.extend_from_slice(&[0u8; 512]);
    cat.extend_from_slice(&second);
    let mut padded_gz = gzip(&[&first, &second]);
    padded_gz.extend_from_slice(&[0u8; 300]);
    for (name, bytes) in [("cat.cpio", cat), ("cat.cpio.gz", padded_gz)] {
        let archive = t.path.join(name);
        std::fs::write(&archive, bytes).unwrap();
        let root = t.path.join(format!("root-{name}"));
        let mut m = Manifest::new();
        unpack::cpio(&archive, &root, &mut m, name).unwrap();
        compare(&reference, &root, &m, true);
        assert_eq!(
            std::fs::read(root.join("etc/passwd")).unwrap(),
            b"overridden\n"
        );
        assert_eq!(m.get("/etc").unwrap().mode, 0o700);
    }
}

#[test]
fn type_changes_replace_on_disk_and_in_manifest() {
    let t = tmp();
    let mut first = Newc::new();
    first
        .entry(b"d", 0o040755, b"")
        .entry(b"d/sub", 0o040755, b"")
        .entry(b"d/sub/f", 0o100644, b"x")
        .entry(b"f", 0o100644, b"file")
        .entry(b"l", 0o120777, b"target")
        .entry(b"n", 0o020600, b"");
    let mut second = Newc::new();
    second
        .entry(b"d", 0o100600, b"now a file")
        .entry(b"f", 0o040500, b"")
        .entry(b"f/inside", 0o100400, b"in")
        .entry(b"l", 0o100644, b"was a link")
        .entry(b"n", 0o040755, b"")
        .entry(b"./x", 0o010644, b"");
    let mut bytes = first.finish();
    bytes.extend(second.finish());
    let archive = t.path.join("two.cpio");
    std::fs::write(&archive, bytes).unwrap();
    let root = t.path.join("root");
    std::fs::create_dir_all(root.join("x/y")).unwrap();
    let mut m = Manifest::new();
    unpack::cpio(&archive, &root, &mut m, "two.cpio").unwrap();
    assert_eq!(std::fs::read(root.join("d")).unwrap(), b"now a file");
    assert!(m.get("/d/sub").is_none() && m.get("/d/sub/f").is_none());
    assert_eq!(m.get("/d").unwrap().kind, Kind::File);
    assert!(root.join("f").is_dir());
    assert_eq!(std::fs::read(root.join("f/inside")).unwrap(), b"in");
    assert_eq!(m.get("/f").unwrap().mode, 0o500);
    assert!(!root.join("l").is_symlink());
    assert_eq!(m.get("/n").unwrap().kind, Kind::Dir);
    assert!(
        !root.join("x").exists(),
        "a fifo's path must not exist on disk"
    );
    assert_eq!(m.get("/x").unwrap().kind, Kind::Fifo);
    contain_remove(&root);
}

fn contain_remove(root: &camino::Utf8Path) {
    rootfs::contain::remove_tree(root).unwrap();
    assert!(!root.exists());
}

#[test]
fn symlinks_inside_root_are_followed() {
    let t = tmp();
    let mut a = Newc::new();
    a.entry(b"lib", 0o040755, b"")
        .entry(b"lib64", 0o120777, b"lib")
        .entry(b"usr", 0o040755, b"")
        .entry(b"usr/l", 0o120777, b"../lib")
        .entry(b"lib64/ld.so", 0o100755, b"ld")
        .entry(b"usr/l/libc.so", 0o100644, b"c");
    let archive = t.path.join("a.cpio");
    std::fs::write(&archive, a.finish()).unwrap();
    let root = t.path.join("root");
    let mut m = Manifest::new();
    unpack::cpio(&archive, &root, &mut m, "a.cpio").unwrap();
    assert_eq!(std::fs::read(root.join("lib/ld.so")).unwrap(), b"ld");
    assert_eq!(std::fs::read(root.join("lib/libc.so")).unwrap(), b"c");
    // Recorded under the physical path, as the guest will see it.
    assert!(m.get("/lib/ld.so").is_some() && m.get("/lib64/ld.so").is_none());
    assert!(m.get("/lib/libc.so").is_some());
}
