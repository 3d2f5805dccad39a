//! `cat-cpio` (initramfs::inspect) against archives from us and GNU cpio.

mod common;

use std::process::Command;

use camino::Utf8Path;
use common::{build_tree, run};
use initramfs::inspect::{list, list_bytes, Format};
use initramfs::{pack, PackOptions};

fn gnu_cpio(dir: &Utf8Path) -> Vec<u8> {
    testmirror::tools::require_tool("cpio", "cpio").expect("cpio");
    let names = run(Command::new("find").arg(".").current_dir(dir), None);
    run(
        Command::new("cpio")
            .args(["-o", "-H", "newc", "--quiet"])
            .current_dir(dir),
        Some(&names),
    )
}

#[test]
fn lists_files_smallest_first_with_link_sizes() {
    let t = build_tree();
    let out = t.out("initramfs.cpio.gz");
    pack(
        &t.root,
        &t.manifest,
        &out,
        &PackOptions::new("gzip".parse().unwrap()),
    )
    .unwrap();
    let l = list(&out).unwrap();
    let sizes: Vec<u64> = l.files.iter().map(|f| f.size).collect();
    let mut sorted = sizes.clone();
    sorted.sort();
    assert_eq!(sizes, sorted);
    let nodes = rootfs::meta::collect(&t.root, &t.manifest).unwrap();
    let regular: Vec<_> = nodes
        .iter()
        .filter(|n| n.kind == rootfs::manifest::Kind::File)
        .collect();
    assert_eq!(l.files.len(), regular.len());
    for n in regular {
        let f = l
            .files
            .iter()
            .find(|f| format!("/{}", f.path) == n.path)
            .unwrap_or_else(|| panic!("{}", n.path));
        assert_eq!(f.size, n.size, "{}", n.path);
    }
    let linked: Vec<_> = l
        .files
        .iter()
        .filter(|f| f.path.starts_with("usr/lib/linked-"))
        .collect();
    assert_eq!(linked.len(), 3);
    assert!(linked
        .iter()
        .all(|f| f.size == 23 && f.link_group.is_some() && f.link_group == linked[0].link_group));
    let total: u64 = nodes
        .iter()
        .filter(|n| n.kind == rootfs::manifest::Kind::File)
        .map(|n| n.size)
        .sum();
    assert_eq!(
        l.total_bytes(),
        total - 2 * 23,
        "hard-linked data counted once"
    );
    assert_eq!(l.members.len(), 1);
    assert_eq!(
        (l.members[0].format, l.members[0].archives),
        (Format::Gzip, 1)
    );
    assert_eq!(l.files.last().unwrap().path, "usr/lib/libbig.so.1");

    let mut text = Vec::new();
    initramfs::inspect::print(&l, Some(&t.manifest), &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.starts_with("0\tetc/empty\n") || text.starts_with("0\tusr/lib/"),
        "{text}"
    );
    assert!(text.contains("1500000\tusr/lib/libbig.so.1\n"), "{text}");
    assert!(text.contains("usr/lib\n"), "{text}");
    assert!(
        text.contains("corepure64.gz") && text.contains("(not in manifest)"),
        "{text}"
    );
    let s = l.summary(Some(&t.manifest), 3);
    assert_eq!(s.top_dirs.len(), 3);
    assert_eq!(s.top_dirs[0].0, "usr/lib");
    let sources = s.sources.unwrap();
    let core = sources.iter().find(|s| s.0 == "corepure64.gz").unwrap();
    // The manifest knows busybox.suid (12 bytes) and etc/shadow (15).
    assert_eq!((core.1, core.2), (27, 2));
}

#[test]
fn reads_gnu_cpio_and_concatenated_members_like_the_kernel() {
    let t = build_tree();
    let ours = t.out("a.cpio.gz");
    pack(
        &t.root,
        &t.manifest,
        &ours,
        &PackOptions::new("gzip".parse().unwrap()),
    )
    .unwrap();

    // A second tree overriding etc/passwd and adding a file, as zstd.
    let t2 = tempfile::tempdir().unwrap();
    let root2 = Utf8Path::from_path(t2.path()).unwrap();
    common::write(root2, "etc/passwd", b"short\n", 0o644);
    common::write(root2, "lib/firmware/blob", &[7u8; 4000], 0o644);
    let second = t.out("b.cpio.zst");
    pack(
        root2,
        &Default::default(),
        &second,
        &PackOptions::new("zstd".parse().unwrap()),
    )
    .unwrap();
    // An uncompressed GNU cpio archive (names `./x`, padded to 512) and xz.
    let t3 = tempfile::tempdir().unwrap();
    let root3 = Utf8Path::from_path(t3.path()).unwrap();
    common::write(
        root3,
        "kernel/x86/microcode/GenuineIntel.bin",
        &[1u8; 333],
        0o644,
    );
    let gnu = gnu_cpio(root3);
    let xz = t.out("d.cpio.xz");
    pack(
        root3,
        &Default::default(),
        &xz,
        &PackOptions::new("xz".parse().unwrap()),
    )
    .unwrap();

    let mut image = gnu.clone();
    image.extend(std::fs::read(&ours).unwrap());
    image.extend([0u8; 8]);
    image.extend(std::fs::read(&second).unwrap());
    image.extend(std::fs::read(&xz).unwrap());
    let l = list_bytes(&image).unwrap();
    let formats: Vec<Format> = l.members.iter().map(|m| m.format).collect();
    assert_eq!(
        formats,
        [Format::Uncompressed, Format::Gzip, Format::Zstd, Format::Xz]
    );
    assert!(l.members.iter().all(|m| m.archives == 1), "{:?}", l.members);
    let size = |p: &str| {
        l.files
            .iter()
            .find(|f| f.path == p)
            .unwrap_or_else(|| panic!("{p}"))
            .size
    };
    assert_eq!(
        size("etc/passwd"),
        6,
        "a later archive replaces earlier entries"
    );
    assert_eq!(size("lib/firmware/blob"), 4000);
    assert_eq!(size("kernel/x86/microcode/GenuineIntel.bin"), 333);
    assert_eq!(size("usr/lib/libbig.so.1"), 1_500_000);

    // Two archives inside one gzip member.
    let mut two = std::fs::read(t.out("plain")).unwrap_or_default();
    two.extend(gnu.clone());
    two.extend(gnu);
    let gz = t.out("two.gz");
    std::fs::write(
        &gz,
        run(Command::new("gzip").args(["-c", "-6"]), Some(&two)),
    )
    .unwrap();
    let l = list(&gz).unwrap();
    assert_eq!(l.members.len(), 1);
    assert_eq!(l.members[0].archives, 2);
    assert_eq!(l.files.len(), 1);
}

#[test]
fn malformed_archives_give_offsets_not_panics() {
    let t = build_tree();
    let out = t.out("plain.cpio");
    pack(
        &t.root,
        &t.manifest,
        &out,
        &PackOptions::new("none".parse().unwrap()),
    )
    .unwrap();
    let raw = std::fs::read(&out).unwrap();
    let gz = t.out("x.gz");
    pack(
        &t.root,
        &t.manifest,
        &gz,
        &PackOptions::new("gzip".parse().unwrap()),
    )
    .unwrap();
    let gzb = std::fs::read(&gz).unwrap();
    let zst = t.out("x.zst");
    pack(
        &t.root,
        &t.manifest,
        &zst,
        &PackOptions::new("zstd".parse().unwrap()),
    )
    .unwrap();
    let zstb = std::fs::read(&zst).unwrap();

    let err = |data: &[u8]| format!("{:#}", list_bytes(data).unwrap_err());
    // Cut inside the big file's data.
    let e = err(&raw[..raw.len() / 2]);
    assert!(
        e.contains("usr/lib/libbig.so.1") && e.contains("offset"),
        "{e}"
    );
    // Cut inside a header.
    let e = err(&raw[..50]);
    assert!(e.contains("truncated") && e.contains("offset 0"), "{e}");
    let e = err(&gzb[..gzb.len() - 100]);
    assert!(e.contains("gzip") && e.contains("offset 0"), "{e}");
    let e = err(&zstb[..zstb.len() / 2]);
    assert!(e.contains("zstd") && e.contains("offset 0"), "{e}");
    // A compressed member ending inside an archive (the kernel refuses it).
    let half = run(Command::new("gzip").arg("-c"), Some(&raw[..raw.len() / 2]));
    let e = err(&half);
    assert!(
        e.contains("gzip member at file offset 0") && e.contains("decompressed offset"),
        "{e}"
    );
    // Garbage after a valid archive.
    let mut junk = raw.clone();
    junk.extend(b"hello world");
    let e = err(&junk);
    assert!(e.contains(&format!("offset {}", raw.len())), "{e}");
    // A bad hex digit in the second header.
    let mut bad = raw.clone();
    let second = raw.windows(6).skip(1).position(|w| w == b"070701").unwrap() + 1;
    bad[second + 6 + 8 * 6] = b'z';
    let e = err(&bad);
    assert!(
        e.contains(&format!("offset {second}")) && e.contains("hex"),
        "{e}"
    );
    let e = err(b"");
    assert!(e.contains("empty"), "{e}");
    // Every prefix: errors, never panics.
    for n in (0..raw.len()).step_by(97) {
        let _ = list_bytes(&raw[..n]);
    }
    for n in (0..gzb.len()).step_by(101) {
        let _ = list_bytes(&gzb[..n]);
    }
}
