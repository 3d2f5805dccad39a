//! squashfs unpacking compared with `unsquashfs -f` run as root.

mod common;

use std::io::Cursor;

use backhand::{FilesystemCompressor, FilesystemWriter, NodeHeader};
use camino::{Utf8Path, Utf8PathBuf};
use common::*;
use rootfs::manifest::{Kind, Manifest};
use rootfs::unpack;

fn tools() -> bool {
    has_tools(&[
        ("mksquashfs", "squashfs-tools"),
        ("unsquashfs", "squashfs-tools"),
        ("mknod", "coreutils"),
    ])
}

#[test]
fn gzip_and_xz_images_match_unsquashfs() {
    if !tools() || !need_root("gzip_and_xz_images_match_unsquashfs") {
        return;
    }
    let t = tmp();
    build_fixture(&t.path.join("src"));
    for comp in ["gzip", "xz"] {
        let img = t.path.join(format!("fixture-{comp}.tcz"));
        mksquashfs(&t.path.join("src"), &img, comp);
        let reference = t.path.join(format!("ref-{comp}"));
        unsquashfs(&img, &reference);
        let root = t.path.join(format!("root-{comp}"));
        let mut m = Manifest::new();
        let stats = unpack::squashfs(&img, &root, &mut m, "fixture.tcz").unwrap();
        compare(&reference, &root, &m, false);
        assert_eq!(stats.special, 5, "{stats:?}");
        let text = m.to_text();
        assert!(
            text.contains("file /bin/busybox.suid bin/busybox.suid 4755 0 0\n"),
            "{text}"
        );
        assert!(
            text.contains("nod /dev/big 0640 0 0 c 259 65537\n"),
            "{text}"
        );
        assert!(text.contains("#@ source fixture.tcz\n"), "{text}");
    }
}

/// Three images in the shape of `.tcz` extensions that overlap: later
/// files win, directories merge.
fn overlapping_images(t: &Utf8Path) -> Vec<(Utf8PathBuf, String)> {
    let mut out = Vec::new();
    for i in 0..3u32 {
        let src = t.join(format!("ext{i}"));
        let base = src.join("usr/local");
        std::fs::create_dir_all(base.join("bin")).unwrap();
        std::fs::create_dir_all(base.join(format!("lib/ext{i}"))).unwrap();
        std::fs::create_dir_all(base.join("tce.installed")).unwrap();
        std::fs::write(
            base.join("bin/shared-tool"),
            format!("from ext{i}\n").repeat(2000),
        )
        .unwrap();
        std::fs::write(base.join(format!("tce.installed/ext{i}")), b"#!/bin/sh\n").unwrap();
        for j in 0..40u32 {
            std::fs::write(
                base.join(format!("lib/ext{i}/lib{j}.so")),
                noise(1000 + 997 * j as usize, i * 100 + j),
            )
            .unwrap();
        }
        std::os::unix::fs::symlink(format!("../lib/ext{i}/lib0.so"), base.join("bin/latest"))
            .unwrap();
        std::fs::set_permissions(
            base.join("bin"),
            std::os::unix::fs::PermissionsExt::from_mode(0o751 + i),
        )
        .unwrap();
        let img = t.join(format!("ext{i}.tcz"));
        mksquashfs(&src, &img, "gzip");
        out.push((img, format!("ext{i}.tcz")));
    }
    out
}

#[test]
fn many_images_match_an_unsquashfs_loop_with_any_thread_count() {
    if !has_tools(&[
        ("mksquashfs", "squashfs-tools"),
        ("unsquashfs", "squashfs-tools"),
    ]) {
        return;
    }
    let t = tmp();
    let images = overlapping_images(&t.path);
    let reference = t.path.join("ref");
    for (img, _) in &images {
        unsquashfs(img, &reference);
    }
    let mut results = Vec::new();
    for threads in [1, 2, 3] {
        let root = t.path.join(format!("root{threads}"));
        let mut m = Manifest::new();
        let stats = unpack::squashfs_many(&images, &root, &mut m, threads).unwrap();
        if is_root() {
            compare(&reference, &root, &m, false);
        }
        assert_eq!(
            std::fs::read_to_string(root.join("usr/local/bin/shared-tool")).unwrap(),
            "from ext2\n".repeat(2000)
        );
        assert_eq!(
            m.get("/usr/local/bin/shared-tool")
                .unwrap()
                .source
                .as_deref(),
            Some("ext2.tcz")
        );
        assert_eq!(
            m.get("/usr/local/lib/ext0/lib3.so")
                .unwrap()
                .source
                .as_deref(),
            Some("ext0.tcz")
        );
        assert_eq!(m.get("/usr/local/bin").unwrap().mode, 0o753);
        results.push((m.to_text(), listing(&root), stats));
    }
    assert!(
        results.windows(2).all(|w| w[0] == w[1]),
        "results differ between thread counts"
    );
}

fn hdr(mode: u16) -> NodeHeader {
    NodeHeader::new(mode, 0, 0, 1_600_000_000)
}

fn write_image(path: &Utf8Path, build: impl FnOnce(&mut FilesystemWriter<'_, '_, '_>)) {
    let mut w = FilesystemWriter::default();
    w.set_block_size(4096);
    w.set_compressor(
        FilesystemCompressor::new(backhand::compression::Compressor::Gzip, None).unwrap(),
    );
    build(&mut w);
    let mut f = std::fs::File::create(path).unwrap();
    w.write(&mut f).unwrap();
}

/// Linux `new_encode_dev`.
fn dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

#[test]
fn backhand_written_image_matches_unsquashfs() {
    if !has_tools(&[("unsquashfs", "squashfs-tools")]) {
        return;
    }
    let t = tmp();
    let img = t.path.join("bh.tcz");
    let big = noise(50_000, 3);
    write_image(&img, |w| {
        w.push_dir("usr", hdr(0o755)).unwrap();
        w.push_dir(
            "usr/local",
            NodeHeader::new(0o2755, 1001, 50, 1_600_000_001),
        )
        .unwrap();
        w.push_file(
            Cursor::new(big.clone()),
            "usr/local/big",
            NodeHeader::new(0o4711, 0, 50, 1_600_000_002),
        )
        .unwrap();
        w.push_file(Cursor::new(b"".to_vec()), "usr/local/empty", hdr(0o600))
            .unwrap();
        w.push_symlink("big", "usr/local/link", hdr(0o777)).unwrap();
        w.push_dir("dev", hdr(0o755)).unwrap();
        w.push_char_device(dev(4, 64), "dev/ttyS0", NodeHeader::new(0o660, 0, 20, 0))
            .unwrap();
        w.push_block_device(dev(259, 70000), "dev/nvme", hdr(0o600))
            .unwrap();
        w.push_fifo("dev/fifo", hdr(0o644)).unwrap();
        w.push_socket("dev/sock", hdr(0o777)).unwrap();
    });
    let root = t.path.join("root");
    let mut m = Manifest::new();
    unpack::squashfs(&img, &root, &mut m, "bh.tcz").unwrap();
    assert_eq!(std::fs::read(root.join("usr/local/big")).unwrap(), big);
    assert_eq!(
        m.get("/dev/nvme").unwrap().kind,
        Kind::BlockDev {
            major: 259,
            minor: 70000
        }
    );
    assert_eq!(
        m.get("/dev/ttyS0").unwrap().kind,
        Kind::CharDev {
            major: 4,
            minor: 64
        }
    );
    assert_eq!(
        (
            m.get("/usr/local").unwrap().uid,
            m.get("/usr/local").unwrap().mode
        ),
        (1001, 0o2755)
    );
    assert_eq!(m.get("/usr/local/big").unwrap().mode, 0o4711);
    if is_root() {
        let reference = t.path.join("ref");
        unsquashfs(&img, &reference);
        compare(&reference, &root, &m, false);
    }
}

#[test]
fn later_images_replace_entries_of_another_type() {
    let t = tmp();
    let a = t.path.join("a.tcz");
    let b = t.path.join("b.tcz");
    write_image(&a, |w| {
        w.push_dir_all("x/dir/sub", hdr(0o755)).unwrap();
        w.push_file(Cursor::new(b"deep".to_vec()), "x/dir/sub/f", hdr(0o644))
            .unwrap();
        w.push_file(Cursor::new(b"file".to_vec()), "x/file", hdr(0o644))
            .unwrap();
        w.push_symlink("file", "x/link", hdr(0o777)).unwrap();
        w.push_file(Cursor::new(b"kept".to_vec()), "x/kept", hdr(0o644))
            .unwrap();
        w.push_char_device(dev(1, 3), "x/null", hdr(0o666)).unwrap();
    });
    write_image(&b, |w| {
        w.push_dir("x", hdr(0o700)).unwrap();
        w.push_file(Cursor::new(b"now a file".to_vec()), "x/dir", hdr(0o600))
            .unwrap();
        w.push_dir("x/file", hdr(0o755)).unwrap();
        w.push_file(Cursor::new(b"inner".to_vec()), "x/file/inner", hdr(0o644))
            .unwrap();
        w.push_file(Cursor::new(b"not a link".to_vec()), "x/link", hdr(0o644))
            .unwrap();
        w.push_file(Cursor::new(b"not a device".to_vec()), "x/null", hdr(0o644))
            .unwrap();
    });
    for threads in [1, 2] {
        let root = t.path.join(format!("root{threads}"));
        let mut m = Manifest::new();
        let images = [
            (a.clone(), "a.tcz".to_string()),
            (b.clone(), "b.tcz".to_string()),
        ];
        unpack::squashfs_many(&images, &root, &mut m, threads).unwrap();
        assert_eq!(std::fs::read(root.join("x/dir")).unwrap(), b"now a file");
        assert!(m.get("/x/dir/sub/f").is_none() && m.get("/x/dir/sub").is_none());
        assert_eq!(m.get("/x/dir").unwrap().kind, Kind::File);
        assert_eq!(std::fs::read(root.join("x/file/inner")).unwrap(), b"inner");
        assert_eq!(m.get("/x/file").unwrap().kind, Kind::Dir);
        assert!(!root.join("x/link").is_symlink());
        assert_eq!(std::fs::read(root.join("x/null")).unwrap(), b"not a device");
        assert_eq!(m.get("/x/null").unwrap().kind, Kind::File);
        assert_eq!(std::fs::read(root.join("x/kept")).unwrap(), b"kept");
        assert_eq!(m.get("/x").unwrap().source.as_deref(), Some("b.tcz"));
        assert_eq!(m.get("/x/kept").unwrap().source.as_deref(), Some("a.tcz"));
    }
}

/// A rough comparison with an `unsquashfs -f` loop on a TC-shaped set of
/// images: `cargo test -p rootfs --release --test unpack_squashfs -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_many_vs_unsquashfs_loop() {
    if !has_tools(&[
        ("mksquashfs", "squashfs-tools"),
        ("unsquashfs", "squashfs-tools"),
    ]) {
        return;
    }
    let t = tmp();
    let mut images = Vec::new();
    for i in 0..29u32 {
        let src = t.path.join(format!("src{i}"));
        for j in 0..19u32 {
            let d = src.join(format!("usr/local/lib/e{i}/d{}", j % 4));
            std::fs::create_dir_all(&d).unwrap();
            // Half compressible text, half noise, ~40 KiB average.
            let mut data = format!("line {j} of extension {i}\n").repeat(1000);
            data.truncate(20_000);
            let mut bytes = data.into_bytes();
            bytes.extend(noise(20_000 + 1000 * j as usize, i * 100 + j));
            std::fs::write(d.join(format!("f{j}")), bytes).unwrap();
        }
        let img = t.path.join(format!("e{i}.tcz"));
        mksquashfs(&src, &img, "gzip");
        images.push((img, format!("e{i}.tcz")));
    }
    // Best of three, alternating, fresh destinations: the machine is shared.
    // CPU time (user + system, all threads or child processes) is reported
    // too, as it depends less on what else runs.
    fn cpu(who: i32) -> std::time::Duration {
        // SAFETY: getrusage fills the struct it is given.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut ru) };
        let tv =
            |t: libc::timeval| std::time::Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
    let mut best = [(std::time::Duration::MAX, std::time::Duration::MAX); 3];
    let mut keep = |i: usize, wall: std::time::Duration, cpu: std::time::Duration| {
        best[i] = (best[i].0.min(wall), best[i].1.min(cpu));
    };
    for round in 0..3 {
        let dest = t.path.join(format!("loop{round}"));
        let (start, c0) = (std::time::Instant::now(), cpu(libc::RUSAGE_CHILDREN));
        for (img, _) in &images {
            unsquashfs(img, &dest);
        }
        keep(0, start.elapsed(), cpu(libc::RUSAGE_CHILDREN) - c0);
        for threads in [1, 2] {
            let root = t.path.join(format!("root{threads}-{round}"));
            let (start, c0) = (std::time::Instant::now(), cpu(libc::RUSAGE_SELF));
            let mut m = Manifest::new();
            unpack::squashfs_many(&images, &root, &mut m, threads).unwrap();
            keep(threads, start.elapsed(), cpu(libc::RUSAGE_SELF) - c0);
        }
    }
    eprintln!(
        "(wall, cpu) unsquashfs -f loop: {:?}; squashfs_many threads=1: {:?}, threads=2: {:?}",
        best[0], best[1], best[2]
    );
}
