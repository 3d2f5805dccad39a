//! Archives that try to write outside tc_root, and broken archives: clear
//! errors naming the archive and entry, nothing written outside root.

mod common;

use std::io::Cursor;

use backhand::{FilesystemCompressor, FilesystemWriter, NodeHeader};
use camino::{Utf8Path, Utf8PathBuf};
use common::*;
use rootfs::manifest::Manifest;
use rootfs::unpack;

/// tc_root and an empty sentinel directory next to it.
struct Scene {
    t: Tmp,
}

impl Scene {
    fn new() -> Scene {
        let t = tmp();
        std::fs::create_dir(t.path.join("sentinel")).unwrap();
        Scene { t }
    }
    fn root(&self) -> Utf8PathBuf {
        self.t.path.join("deep/tc_root")
    }
    fn write(&self, name: &str, bytes: &[u8]) -> Utf8PathBuf {
        let p = self.t.path.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
    fn cpio_err(&self, name: &str, bytes: &[u8]) -> String {
        let archive = self.write(name, bytes);
        let mut m = Manifest::new();
        let err = unpack::cpio(&archive, &self.root(), &mut m, name).expect_err("unpack must fail");
        format!("{err:#}")
    }
    fn assert_contained(&self) {
        let left: Vec<_> = std::fs::read_dir(self.t.path.join("sentinel"))
            .unwrap()
            .collect();
        assert!(
            left.is_empty(),
            "something was written next to tc_root: {left:?}"
        );
        let mut top: Vec<String> = std::fs::read_dir(&self.t.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        top.sort();
        top.retain(|n| !n.ends_with(".cpio") && !n.ends_with(".gz") && !n.ends_with(".tcz"));
        assert_eq!(
            top,
            ["deep", "sentinel"],
            "unexpected files next to tc_root"
        );
        let deep: Vec<_> = std::fs::read_dir(self.t.path.join("deep"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            deep.iter().all(|n| n == "tc_root"),
            "unexpected files next to tc_root: {deep:?}"
        );
    }
}

fn has(err: &str, parts: &[&str]) {
    eprintln!("error: {err}");
    for p in parts {
        assert!(err.contains(p), "error lacks `{p}`: {err}");
    }
}

#[test]
fn dotdot_and_absolute_cpio_names_are_refused() {
    let s = Scene::new();
    let e = s.cpio_err(
        "dotdot.cpio",
        &Newc::new()
            .entry(b"../../sentinel/x", 0o100644, b"evil")
            .finish(),
    );
    has(&e, &["dotdot.cpio", "`../../sentinel/x`", ".."]);
    let e = s.cpio_err(
        "mid.cpio",
        &Newc::new()
            .entry(b"etc/../../sentinel/x", 0o100644, b"evil")
            .finish(),
    );
    has(&e, &["mid.cpio", "`etc/../../sentinel/x`"]);
    let abs = format!("{}/sentinel/x", s.t.path);
    let e = s.cpio_err(
        "abs.cpio",
        &Newc::new()
            .entry(abs.as_bytes(), 0o100644, b"evil")
            .finish(),
    );
    has(&e, &["abs.cpio", &abs, "absolute"]);
    let e = s.cpio_err(
        "etc.cpio",
        &Newc::new().entry(b"/etc/x", 0o100644, b"evil").finish(),
    );
    has(&e, &["etc.cpio", "`/etc/x`", "absolute"]);
    assert!(!std::path::Path::new("/etc/x").exists());
    s.assert_contained();
}

#[test]
fn writes_through_symlinks_out_of_root_are_refused_in_one_cpio() {
    let s = Scene::new();
    let cases: [(&str, &[u8]); 4] = [
        ("abs", b"/etc"),
        ("up", b"../../.."),
        ("side", b"../sentinel"),
        ("sneaky", b"lib/../../sentinel"),
    ];
    for (name, target) in cases {
        let archive = format!("{name}.cpio");
        let mut a = Newc::new();
        a.entry(b"lib", 0o040755, b"")
            .entry(b"evil", 0o120777, target)
            .entry(b"evil/passwd", 0o100644, b"pwned");
        let e = s.cpio_err(&archive, &a.finish());
        let t = std::str::from_utf8(target).unwrap();
        has(
            &e,
            &[
                &archive,
                "`evil/passwd`",
                &format!("symlink /evil -> {t}"),
                "leaves tc_root",
            ],
        );
        // The symlink itself is harmless and stays; nothing went through it.
        assert!(s.root().join("evil").is_symlink());
    }
    // A chain: an inner link that is fine, pointing at one that escapes.
    let mut a = Newc::new();
    a.entry(b"out", 0o120777, b"..")
        .entry(b"chain", 0o120777, b"out/..")
        .entry(b"chain/x", 0o100644, b"x");
    let e = s.cpio_err("chain.cpio", &a.finish());
    has(&e, &["chain.cpio", "`chain/x`", "leaves tc_root"]);
    assert!(!std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .contains("pwned"));
    s.assert_contained();
}

#[test]
fn final_symlink_is_replaced_not_followed() {
    let s = Scene::new();
    let sentinel_file = s.t.path.join("sentinel/f");
    let mut a = Newc::new();
    a.entry(b"f", 0o120777, sentinel_file.as_str().as_bytes())
        .entry(b"f", 0o100644, b"replaced")
        .entry(b"g", 0o120777, b"../../sentinel/g")
        .entry(b"g", 0o120777, b"new-target")
        .entry(b"h", 0o120777, b"../../sentinel/h")
        .entry(b"h", 0o020600, b"");
    let archive = s.write("final.cpio", &a.finish());
    let mut m = Manifest::new();
    unpack::cpio(&archive, &s.root(), &mut m, "final.cpio").unwrap();
    assert_eq!(std::fs::read(s.root().join("f")).unwrap(), b"replaced");
    assert_eq!(
        std::fs::read_link(s.root().join("g")).unwrap().to_str(),
        Some("new-target")
    );
    assert!(!s.root().join("h").exists() && !s.root().join("h").is_symlink());
    s.assert_contained();
}

#[test]
fn directory_over_symlink_merges_inside_and_is_refused_outside() {
    let s = Scene::new();
    let mut a = Newc::new();
    a.entry(b"lib", 0o040755, b"")
        .entry(b"lib64", 0o120777, b"lib")
        .entry(b"lib64", 0o040755, b"")
        .entry(b"lib64/ld.so", 0o100755, b"ld");
    let archive = s.write("merge.cpio", &a.finish());
    let mut m = Manifest::new();
    unpack::cpio(&archive, &s.root(), &mut m, "merge.cpio").unwrap();
    assert!(s.root().join("lib64").is_symlink());
    assert_eq!(std::fs::read(s.root().join("lib/ld.so")).unwrap(), b"ld");

    let mut a = Newc::new();
    a.entry(b"d", 0o120777, b"../../sentinel")
        .entry(b"d", 0o040755, b"")
        .entry(b"d/x", 0o100644, b"x");
    let e = s.cpio_err("dir.cpio", &a.finish());
    has(
        &e,
        &[
            "dir.cpio",
            "entry `d`",
            "symlink /d -> ../../sentinel",
            "leaves tc_root",
        ],
    );
    s.assert_contained();
}

fn image(path: &Utf8Path, build: impl FnOnce(&mut FilesystemWriter<'_, '_, '_>)) {
    let mut w = FilesystemWriter::default();
    w.set_block_size(4096);
    w.set_compressor(
        FilesystemCompressor::new(backhand::compression::Compressor::Gzip, None).unwrap(),
    );
    build(&mut w);
    w.write(std::fs::File::create(path).unwrap()).unwrap();
}

#[test]
fn symlink_from_one_image_and_file_through_it_from_another_are_refused() {
    let h = NodeHeader::new(0o755, 0, 0, 0);
    for (target, threads) in [
        ("/etc", 1),
        ("../../..", 2),
        ("../../../../sentinel", 2),
        ("bin/../../../..", 1),
        ("nothere/../../../..", 2),
    ] {
        let s = Scene::new();
        let a = s.t.path.join("a.tcz");
        let b = s.t.path.join("b.tcz");
        image(&a, |w| {
            w.push_dir_all("usr/local/bin", h).unwrap();
            w.push_symlink(target, "usr/local/evil", h).unwrap();
        });
        image(&b, |w| {
            w.push_dir_all("usr/local/evil", h).unwrap();
            w.push_file(Cursor::new(b"pwned".to_vec()), "usr/local/evil/passwd", h)
                .unwrap();
        });
        let mut m = Manifest::new();
        let images = [(a, "a.tcz".to_string()), (b, "b.tcz".to_string())];
        let e = format!(
            "{:#}",
            unpack::squashfs_many(&images, &s.root(), &mut m, threads).unwrap_err()
        );
        has(
            &e,
            &[
                "b.tcz",
                "`/usr/local/evil`",
                &format!("symlink /usr/local/evil -> {target}"),
            ],
        );
        s.assert_contained();
    }
}

#[test]
fn symlink_inside_root_from_one_image_is_followed_by_the_next() {
    let h = NodeHeader::new(0o755, 0, 0, 0);
    let s = Scene::new();
    let a = s.t.path.join("a.tcz");
    let b = s.t.path.join("b.tcz");
    image(&a, |w| {
        w.push_dir_all("usr/local/lib", h).unwrap();
        w.push_symlink("lib", "usr/local/lib64", h).unwrap();
    });
    image(&b, |w| {
        w.push_dir_all("usr/local/lib64", h).unwrap();
        w.push_file(Cursor::new(b"so".to_vec()), "usr/local/lib64/libz.so", h)
            .unwrap();
    });
    let mut m = Manifest::new();
    let images = [(a, "a.tcz".to_string()), (b, "b.tcz".to_string())];
    unpack::squashfs_many(&images, &s.root(), &mut m, 2).unwrap();
    assert!(s.root().join("usr/local/lib64").is_symlink());
    assert_eq!(
        std::fs::read(s.root().join("usr/local/lib/libz.so")).unwrap(),
        b"so"
    );
    assert_eq!(
        m.get("/usr/local/lib/libz.so").unwrap().source.as_deref(),
        Some("b.tcz")
    );
    s.assert_contained();
}

#[test]
fn truncated_and_garbage_inputs_give_clear_errors() {
    let s = Scene::new();
    let mut a = Newc::new();
    a.entry(b"etc", 0o040755, b"")
        .entry(b"etc/big", 0o100644, &noise(100_000, 1));
    let good = a.finish();

    let gz = gzip(&[&good]);
    let e = s.cpio_err("trunc.cpio.gz", &gz[..gz.len() / 2]);
    has(&e, &["trunc.cpio.gz", "truncated", "uncompressed offset"]);

    let e = s.cpio_err("trunc.cpio", &good[..good.len() - 1000]);
    has(&e, &["trunc.cpio", "truncated", "file data"]);

    let e = s.cpio_err("garbage.cpio", &noise(5000, 9));
    has(
        &e,
        &["garbage.cpio", "neither a gzip'd nor a plain newc cpio"],
    );

    let mut bad = good.clone();
    bad[16..18].copy_from_slice(b"zz");
    let e = s.cpio_err("badhex.cpio", &bad);
    has(&e, &["badhex.cpio", "bad mode field", "offset 0"]);

    // Valid first entry, then junk where the next header should be.
    let mut junk = Newc::new().entry(b"ok", 0o100644, b"1234").0.clone();
    junk.extend_from_slice(b"0707XXgarbage garbage garbage garbage garbage garbage garbage garbage garbage garbage garbage garbage garbage!");
    let e = s.cpio_err("junk.cpio", &junk);
    has(&e, &["junk.cpio", "bad cpio header magic", "offset 120"]);

    let e = s.cpio_err(
        "notrailer.cpio",
        &Newc::new().entry(b"ok", 0o100644, b"1234").0.clone(),
    );
    has(&e, &["notrailer.cpio", "truncated"]);

    let e = s.cpio_err(
        "utf8.cpio",
        &Newc::new().entry(b"bad\xffname", 0o100644, b"").finish(),
    );
    has(&e, &["utf8.cpio", "not UTF-8", "bad\u{fffd}name"]);

    let e = s.cpio_err("empty.cpio", b"");
    has(&e, &["empty.cpio", "empty"]);

    let mut gz_garbage = gzip(&[&good]);
    gz_garbage.extend_from_slice(b"trailing junk");
    let e = s.cpio_err("junk.cpio.gz", &gz_garbage);
    has(&e, &["junk.cpio.gz", "garbage after a gzip member"]);

    for (name, bytes) in [
        ("notsquash.tcz", noise(100_000, 5)),
        ("short.tcz", b"hsqs".to_vec()),
    ] {
        let p = s.write(name, &bytes);
        let mut m = Manifest::new();
        let e = format!(
            "{:#}",
            unpack::squashfs(&p, &s.root(), &mut m, name).unwrap_err()
        );
        has(&e, &[name, "not a valid squashfs"]);
    }
    let mut m = Manifest::new();
    let missing = s.t.path.join("missing.tcz");
    let e = format!(
        "{:#}",
        unpack::squashfs_many(&[(missing, "m".into())], &s.root(), &mut m, 2).unwrap_err()
    );
    has(&e, &["missing.tcz", "cannot open"]);
    s.assert_contained();
}

#[test]
fn truncated_squashfs_and_non_utf8_names_give_clear_errors() {
    if !has_tools(&[("mksquashfs", "squashfs-tools")]) {
        return;
    }
    let s = Scene::new();
    let src = s.t.path.join("src.d");
    std::fs::create_dir_all(src.join("usr/local/lib")).unwrap();
    std::fs::write(src.join("usr/local/lib/big"), noise(200_000, 4)).unwrap();
    let img = s.t.path.join("whole.tcz");
    mksquashfs(&src, &img, "gzip");
    let bytes = std::fs::read(&img).unwrap();
    // Not just the last few hundred bytes: mksquashfs pads to 4 KiB.
    for cut in [bytes.len() / 2, bytes.len() * 3 / 4, 100] {
        let p = s.write("cut.tcz", &bytes[..cut]);
        let mut m = Manifest::new();
        let e = format!(
            "{:#}",
            unpack::squashfs(&p, &s.root(), &mut m, "cut.tcz").unwrap_err()
        );
        has(&e, &["cut.tcz"]);
    }

    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::OsStr::from_bytes(b"bad\xffname");
    std::fs::write(src.join("usr/local").as_std_path().join(name), b"x").unwrap();
    let img = s.t.path.join("utf8.tcz");
    mksquashfs(&src, &img, "gzip");
    let mut m = Manifest::new();
    let e = format!(
        "{:#}",
        unpack::squashfs(&img, &s.root(), &mut m, "utf8.tcz").unwrap_err()
    );
    has(&e, &["utf8.tcz", "not UTF-8", "bad"]);
    std::fs::remove_dir_all(&src).unwrap();
    s.assert_contained();
}

#[test]
fn damaged_squashfs_data_blocks_give_errors_not_panics() {
    if !has_tools(&[("mksquashfs", "squashfs-tools")]) {
        return;
    }
    let s = Scene::new();
    let src = s.t.path.join("src.d");
    let lib = src.join("usr/local/lib");
    std::fs::create_dir_all(&lib).unwrap();
    // Whole blocks (compressible and not), a sparse stretch, fragment tails
    // and files that are only a fragment.
    let mut big = b"compressible text\n".repeat(2000);
    big.extend(noise(9000, 7));
    big.extend(vec![0u8; 3 * 4096]);
    big.extend(b"tail after the hole".repeat(100));
    std::fs::write(lib.join("big"), &big).unwrap();
    let mut small = Vec::new();
    for i in 0..12u32 {
        let data = format!("small file {i}\n").repeat(i as usize * 20 + 1);
        std::fs::write(lib.join(format!("s{i}")), &data).unwrap();
        small.push(data);
    }
    let img = s.t.path.join("good.tcz");
    mksquashfs(&src, &img, "gzip");
    let bytes = std::fs::read(&img).unwrap();

    // Undamaged: every byte comes back.
    let mut m = Manifest::new();
    unpack::squashfs(&img, &s.root(), &mut m, "good.tcz").unwrap();
    assert_eq!(
        std::fs::read(s.root().join("usr/local/lib/big")).unwrap(),
        big
    );
    for (i, data) in small.iter().enumerate() {
        let got = std::fs::read(s.root().join(format!("usr/local/lib/s{i}"))).unwrap();
        assert_eq!(got, data.as_bytes(), "s{i}");
    }

    // The data blocks lie between the superblock and the inode table.
    let inode_table = u64::from_le_bytes(bytes[64..72].try_into().unwrap()) as usize;
    assert!(inode_table > 96 && inode_table < bytes.len());
    let mut errors = 0;
    for (n, at) in (96..inode_table).step_by(41).enumerate() {
        let mut bad = bytes.clone();
        bad[at] ^= 0xa5;
        let p = s.write("bad.tcz", &bad);
        let root = s.t.path.join(format!("deep/r{n}"));
        let mut m = Manifest::new();
        if let Err(e) = unpack::squashfs(&p, &root, &mut m, "bad.tcz") {
            let e = format!("{e:#}");
            assert!(e.contains("bad.tcz"), "error lacks the archive: {e}");
            errors += 1;
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
    assert!(errors > 0, "no damaged block was noticed");
    std::fs::remove_dir_all(&src).unwrap();
    s.assert_contained();
}
