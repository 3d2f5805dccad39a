//! The packer against the real tools: GNU cpio, gzip/zstd/xz, the kernel's
//! gen_init_cpio, and an unprivileged user.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use camino::{Utf8Path, Utf8PathBuf};
use common::{build_tree, cpio_extract, cpio_tv, decompress, headers, is_root, run};
use initramfs::{pack, PackOptions};
use rootfs::manifest::Kind;

fn opts(c: &str) -> PackOptions {
    PackOptions::new(c.parse().unwrap())
}

#[test]
fn round_trip_through_real_tools() {
    let t = build_tree();
    let nodes = rootfs::meta::collect(&t.root, &t.manifest).unwrap();
    let mut reference: Option<Vec<u8>> = None;
    for c in ["none", "gzip", "gzip:1", "gzip:9", "zstd", "zstd:19", "xz"] {
        let out = t.out(&format!("initramfs-{}.cpio", c.replace(':', "-")));
        let o = opts(c);
        let rep = pack(&t.root, &t.manifest, &out, &o).unwrap();
        assert!(!rep.up_to_date);
        let raw = decompress(&out, o.compression);
        assert_eq!(rep.uncompressed_bytes, raw.len() as u64, "{c}");
        assert_eq!(
            rep.compressed_bytes,
            std::fs::metadata(&out).unwrap().len(),
            "{c}"
        );
        assert_eq!(rep.entries, nodes.len() + 1, "{c}");
        match &reference {
            None => reference = Some(raw),
            Some(r) => assert!(
                r == &raw,
                "{c}: decompressed archive differs from the uncompressed one"
            ),
        }
    }
    let raw = reference.unwrap();

    // Names: `.` first, then every node in path order, no leading `/`.
    let listing = cpio_tv(&raw);
    let names: Vec<String> = listing.lines().map(|l| tv_name(l).to_string()).collect();
    let mut expected = vec![".".to_string()];
    expected.extend(
        nodes
            .iter()
            .map(|n| n.path.trim_start_matches('/').to_string()),
    );
    assert_eq!(names, expected, "{listing}");

    // Normalised headers: inodes 1.. (links shared), mtime 0, dev 0.
    let hs = headers(&raw);
    let mut seen_ino = std::collections::HashSet::new();
    for (name, f) in &hs[..hs.len() - 1] {
        assert_eq!(f[5], 0, "{name}: mtime");
        assert_eq!((f[7], f[8]), (0, 0), "{name}: devmajor/minor");
        if f[4] == 1 || f[1] & 0o170000 == 0o040000 {
            assert!(seen_ino.insert(f[0]), "{name}: inode {} reused", f[0]);
        }
    }
    let link = |n: &str| hs.iter().find(|(name, _)| name == n).unwrap().1;
    let (a, b, c) = (
        link("usr/lib/linked-a"),
        link("usr/lib/linked-b"),
        link("usr/lib/linked-c"),
    );
    assert_eq!((a[0], a[4]), (b[0], 3));
    assert_eq!((a[0], a[4]), (c[0], 3));
    assert_eq!(
        (a[6], b[6], c[6]),
        (0, 0, 23),
        "data goes on the last link only"
    );
    assert_eq!(
        link(".")[4],
        2 + 8,
        "root nlink counts the 8 top-level dirs"
    );

    if !is_root() {
        eprintln!("SKIPPED the extraction half: `cpio -i` needs root for owners and device nodes");
        return;
    }
    let dest = t.out("extracted");
    cpio_extract(&raw, &dest);
    for n in &nodes {
        let p = dest.join(n.path.trim_start_matches('/'));
        let md = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(md.mode() & 0o170000, n.kind.type_bits(), "{p}: type");
        if !matches!(n.kind, Kind::Symlink { .. }) {
            assert_eq!(md.mode() & 0o7777, n.mode, "{p}: mode");
        }
        assert_eq!((md.uid(), md.gid()), (n.uid, n.gid), "{p}: owner");
        match &n.kind {
            Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => {
                assert_eq!(
                    (libc::major(md.rdev()), libc::minor(md.rdev())),
                    (*major, *minor),
                    "{p}: rdev"
                )
            }
            Kind::Symlink { target } => assert_eq!(
                std::fs::read_link(&p).unwrap().to_str(),
                Some(target.as_str())
            ),
            Kind::File => assert!(
                std::fs::read(&p).unwrap() == std::fs::read(n.disk.as_ref().unwrap()).unwrap(),
                "{p}: content"
            ),
            _ => {}
        }
    }
    // What the metadata should be, not just "what collect said".
    let md = |p: &str| std::fs::symlink_metadata(dest.join(p)).unwrap();
    assert_eq!(md("bin/busybox.suid").mode() & 0o7777, 0o4755);
    assert_eq!(md("tmp").mode() & 0o7777, 0o1777);
    assert_eq!(md("opt").mode() & 0o7777, 0o2775);
    assert_eq!((md("opt").uid(), md("opt").gid()), (0, 50));
    assert_eq!(
        (md("home/tc/.profile").uid(), md("home/tc/.profile").gid()),
        (1001, 50)
    );
    assert_eq!(md("home/tc/.ssh").mode() & 0o7777, 0o700);
    assert_eq!(
        (md("etc/shadow").mode() & 0o7777, md("etc/shadow").gid()),
        (0o640, 50)
    );
    assert_eq!(md("dev/sda").rdev(), libc::makedev(8, 0));
    assert!(md("run/initctl").file_type().is_fifo_like());
    let ino = md("usr/lib/linked-a").ino();
    assert_eq!(
        (md("usr/lib/linked-b").ino(), md("usr/lib/linked-c").ino()),
        (ino, ino)
    );
    assert_eq!(md("usr/lib/linked-c").nlink(), 3);
    assert_eq!(
        std::fs::read(dest.join("usr/lib/linked-b")).unwrap(),
        b"three names, one inode\n"
    );
}

trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}
impl FifoLike for std::fs::FileType {
    fn is_fifo_like(&self) -> bool {
        std::os::unix::fs::FileTypeExt::is_fifo(self)
    }
}

/// The name column of a `cpio -t -v` line (before any ` -> target`).
fn tv_name(line: &str) -> &str {
    let f: Vec<&str> = line.split_whitespace().collect();
    let month = f
        .iter()
        .position(|w| MONTHS.contains(w))
        .unwrap_or_else(|| panic!("no date in `{line}`"));
    let name_start = line.find(f[month + 3]).unwrap();
    let name = &line[name_start..];
    name.split(" -> ").next().unwrap()
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `cpio -t -v -n` lines without nlink and date: mode, uid, gid,
/// size-or-rdev, name (and symlink target), sorted.
fn normalised_tv(listing: &str) -> Vec<String> {
    let mut v: Vec<String> = listing
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let month = f.iter().position(|w| MONTHS.contains(w)).unwrap();
            let name_start = l.find(f[month + 3]).unwrap();
            // gen_init_cpio counts a NUL after symlink targets (the kernel
            // accepts both); GNU cpio and we do not: compare targets only.
            let size = if f[0].starts_with('l') {
                String::new()
            } else {
                f[4..month].join("")
            };
            format!("{} {} {} {size} {}", f[0], f[2], f[3], &l[name_start..])
        })
        .collect();
    v.sort();
    v
}

#[test]
fn repeat_builds_are_byte_identical_and_ignore_mtimes() {
    let t = build_tree();
    for c in ["gzip", "zstd", "xz", "none"] {
        let mut o = opts(c);
        o.threads = 1;
        pack(&t.root, &t.manifest, &t.out("one"), &o).unwrap();
        o.threads = 3;
        pack(&t.root, &t.manifest, &t.out("three"), &o).unwrap();
        let one = std::fs::read(t.out("one")).unwrap();
        assert!(
            one == std::fs::read(t.out("three")).unwrap(),
            "{c}: output depends on the thread count"
        );
    }
    let default_out = |name: &str| {
        let out = t.out(name);
        let mut o = opts("gzip");
        o.force = true;
        pack(&t.root, &t.manifest, &out, &o).unwrap();
        std::fs::read(out).unwrap()
    };
    let before = default_out("a");
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(946_684_800);
    for p in ["etc/passwd", "usr/lib/linked-a", "bin", "."] {
        std::fs::File::open(t.root.join(p))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    assert!(
        before == default_out("b"),
        "without SOURCE_DATE_EPOCH, mtimes must not matter"
    );

    // SOURCE_DATE_EPOCH in the past: every mtime is clamped to it.
    let sde = |epoch: u64, name: &str| {
        let mut o = opts("none");
        o.source_date_epoch = Some(epoch);
        pack(&t.root, &t.manifest, &t.out(name), &o).unwrap();
        std::fs::read(t.out(name)).unwrap()
    };
    let x = sde(900_000_000, "x");
    std::fs::File::open(t.root.join("etc/passwd"))
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    assert!(x == sde(900_000_000, "y"));
    let hs = headers(&x);
    for (name, f) in &hs[..hs.len() - 1] {
        let expect = if t
            .manifest
            .get(name)
            .is_some_and(|e| e.kind.is_manifest_only())
        {
            0
        } else {
            900_000_000
        };
        assert_eq!(f[5], expect, "{name}");
    }
    // In the future: real mtimes.
    let z = sde(4_000_000_000, "z");
    let hs = headers(&z);
    let mtime = |n: &str| hs.iter().find(|(name, _)| name == n).unwrap().1[5];
    assert_eq!(mtime("usr/lib/linked-a"), 946_684_800);
    let passwd_mtime = std::fs::metadata(t.root.join("etc/passwd"))
        .unwrap()
        .mtime();
    assert_eq!(i64::from(mtime("etc/passwd")), passwd_mtime);
}

#[test]
fn second_pack_is_a_noop_until_an_input_changes() {
    let t = build_tree();
    let out = t.out("initramfs.cpio.gz");
    let o = opts("gzip");
    let again = |o: &PackOptions| pack(&t.root, &t.manifest, &out, o).unwrap();
    assert!(!again(&o).up_to_date);
    let ino = std::fs::metadata(&out).unwrap().ino();
    let r = again(&o);
    assert!(r.up_to_date, "{r}");
    assert_eq!(
        std::fs::metadata(&out).unwrap().ino(),
        ino,
        "an up-to-date pack must not rewrite the output"
    );
    assert_eq!(r.compressed_bytes, std::fs::metadata(&out).unwrap().len());

    // A touched file with the same content is still up to date.
    std::fs::File::open(t.root.join("etc/passwd"))
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    assert!(again(&o).up_to_date);
    // Same size, new content (within the same second: the racy rule).
    std::fs::write(
        t.root.join("etc/passwd"),
        b"root:x:0:0:root:/root:/bin/sh\ntc:x:1001:50::/home/tc:/bin/SH\n",
    )
    .unwrap();
    assert!(!again(&o).up_to_date);
    assert!(again(&o).up_to_date);
    std::fs::set_permissions(
        t.root.join("etc/passwd"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    assert!(!again(&o).up_to_date, "mode change");
    std::fs::create_dir(t.root.join("newdir")).unwrap();
    assert!(!again(&o).up_to_date, "new directory");
    assert!(!again(&opts("gzip:9")).up_to_date, "other compression");
    assert!(!again(&o).up_to_date, "back to the first compression");
    let mut forced = o.clone();
    forced.force = true;
    assert!(!again(&forced).up_to_date);

    // The output itself: removed, or changed behind our back.
    std::fs::remove_file(&out).unwrap();
    assert!(!again(&o).up_to_date);
    let mut bytes = std::fs::read(&out).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0xff;
    std::fs::write(&out, &bytes).unwrap();
    assert!(!again(&o).up_to_date);
    // A copy elsewhere (new inode, same bytes) is recognised by its hash.
    let copy = t.out("copy");
    std::fs::copy(&out, &copy).unwrap();
    std::fs::rename(&copy, &out).unwrap();
    assert!(again(&o).up_to_date);
    // A garbage state means "pack".
    std::fs::write(initramfs::state_path(&out), "nonsense").unwrap();
    assert!(!again(&o).up_to_date);

    // The manifest is an input too.
    let mut m = t.manifest.clone();
    let mut e = m.get("/dev/null").unwrap().clone();
    e.mode = 0o644;
    m.insert("/dev/null", e);
    assert!(!pack(&t.root, &m, &out, &o).unwrap().up_to_date);
    assert!(pack(&t.root, &m, &out, &o).unwrap().up_to_date);
}

#[test]
fn refuses_files_of_4_gib_and_orphans() {
    let t = build_tree();
    let out = t.out("initramfs.cpio.gz");
    pack(&t.root, &t.manifest, &out, &opts("gzip")).unwrap();
    let good = std::fs::read(&out).unwrap();
    let huge = t.root.join("usr/lib/huge");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let err = format!(
        "{:#}",
        pack(&t.root, &t.manifest, &out, &opts("gzip")).unwrap_err()
    );
    assert!(
        err.contains(huge.as_str()) && err.contains("4 GiB"),
        "{err}"
    );
    std::fs::remove_file(&huge).unwrap();
    assert!(good == std::fs::read(&out).unwrap());

    let mut m = t.manifest.clone();
    m.insert(
        "/nodir/console",
        rootfs::manifest::Entry {
            mode: 0o600,
            uid: 0,
            gid: 0,
            kind: Kind::CharDev { major: 5, minor: 1 },
            source: None,
        },
    );
    let err = format!("{:#}", pack(&t.root, &m, &out, &opts("gzip")).unwrap_err());
    assert!(
        err.contains("/nodir/console") && err.contains("/nodir"),
        "{err}"
    );
}

/// Builds the kernel's usr/gen_init_cpio once per target dir.
fn gen_init_cpio() -> Option<Utf8PathBuf> {
    let cache = Utf8PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gen_init_cpio");
    let bin = cache.join("gen_init_cpio");
    if bin.is_file() {
        return Some(bin);
    }
    let tarball = std::fs::read_dir("/usr/src")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-source-") && n.ends_with(".tar.xz"))
        });
    let Some(tarball) = tarball else {
        testmirror::tools::require_tool("/usr/src/linux-source-*.tar.xz", "linux-source");
        return None;
    };
    testmirror::tools::require_tool("gcc", "gcc")?;
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    run(
        Command::new("tar")
            .arg("-xJf")
            .arg(&tarball)
            .arg("-C")
            .arg(tmp.path())
            .args(["--wildcards", "*/usr/gen_init_cpio.c"]),
        None,
    );
    let src =
        walk_find(tmp.path(), "gen_init_cpio.c").expect("gen_init_cpio.c in the kernel tarball");
    std::fs::create_dir_all(&cache).unwrap();
    let partial = cache.join(format!("gen_init_cpio.{}", std::process::id()));
    run(
        Command::new("gcc")
            .args(["-O2", "-o"])
            .arg(partial.as_str())
            .arg(&src),
        None,
    );
    std::fs::rename(&partial, &bin).unwrap();
    Some(bin)
}

fn walk_find(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = walk_find(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

#[test]
fn matches_gen_init_cpio() {
    let Some(gen) = gen_init_cpio() else { return };
    let t = build_tree();
    // gen_init_cpio cannot take names with spaces.
    std::fs::remove_file(t.root.join("etc/odd size")).unwrap();
    let nodes = rootfs::meta::collect(&t.root, &t.manifest).unwrap();
    // The same tree as a gen_init_cpio spec (the manifest grammar).
    let mut spec = String::new();
    let mut groups: std::collections::BTreeMap<(u64, u64), Vec<&rootfs::meta::Node>> =
        Default::default();
    for n in &nodes {
        let (p, m, u, g) = (&n.path, n.mode, n.uid, n.gid);
        let line = match &n.kind {
            Kind::Dir => format!("dir {p} {m:o} {u} {g}"),
            Kind::File => match n.link_group {
                Some(lg) => {
                    groups.entry(lg).or_default().push(n);
                    continue;
                }
                None => format!("file {p} {} {m:o} {u} {g}", n.disk.as_ref().unwrap()),
            },
            Kind::Symlink { target } => format!("slink {p} {target} {m:o} {u} {g}"),
            Kind::CharDev { major, minor } => format!("nod {p} {m:o} {u} {g} c {major} {minor}"),
            Kind::BlockDev { major, minor } => format!("nod {p} {m:o} {u} {g} b {major} {minor}"),
            Kind::Fifo => format!("pipe {p} {m:o} {u} {g}"),
            Kind::Socket => format!("sock {p} {m:o} {u} {g}"),
        };
        spec.push_str(&line);
        spec.push('\n');
    }
    for members in groups.values() {
        let n = members[0];
        let others: Vec<&str> = members[1..].iter().map(|m| m.path.as_str()).collect();
        spec.push_str(&format!(
            "file {} {} {:o} {} {} {}\n",
            n.path,
            n.disk.as_ref().unwrap(),
            n.mode,
            n.uid,
            n.gid,
            others.join(" ")
        ));
    }
    let spec_path = t.out("spec");
    std::fs::write(&spec_path, &spec).unwrap();
    let theirs = run(Command::new(gen.as_str()).arg(spec_path.as_str()), None);

    let out = t.out("ours.cpio");
    pack(&t.root, &t.manifest, &out, &opts("none")).unwrap();
    let ours = std::fs::read(&out).unwrap();
    let ours_tv: Vec<String> = normalised_tv(&cpio_tv(&ours))
        .into_iter()
        .filter(|l| !l.ends_with(" ."))
        .collect();
    let theirs_tv = normalised_tv(&cpio_tv(&theirs));
    assert_eq!(ours_tv, theirs_tv, "spec:\n{spec}");
    assert!(
        ours_tv
            .iter()
            .any(|l| l.starts_with("crw------- 0 0 5,1 dev/console")),
        "{ours_tv:#?}"
    );
    assert!(
        ours_tv
            .iter()
            .any(|l| l.starts_with("-rwsr-xr-x 0 0 12 bin/busybox.suid")),
        "{ours_tv:#?}"
    );
}

/// Packs as uid/gid 65534 by running this test binary again (the
/// `child_pack` test) under setpriv.
fn pack_as_nobody(root: &Utf8Path, manifest: &Utf8Path, out: &Utf8Path) -> std::process::Output {
    testmirror::tools::require_tool("setpriv", "util-linux").expect("setpriv");
    let exe = std::env::current_exe().unwrap();
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(exe)
        .args([
            "--exact",
            "child_pack",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("INITRAMFS_CHILD", format!("{root}\n{manifest}\n{out}"))
        .output()
        .unwrap()
}

#[test]
#[ignore = "helper run by as_nobody tests"]
fn child_pack() {
    let Ok(args) = std::env::var("INITRAMFS_CHILD") else {
        return;
    };
    let a: Vec<&str> = args.lines().collect();
    let manifest = rootfs::manifest::Manifest::load(Utf8Path::new(a[1])).unwrap();
    let mut o = opts("gzip");
    o.force = true;
    match pack(Utf8Path::new(a[0]), &manifest, Utf8Path::new(a[2]), &o) {
        Ok(r) => println!("CHILD OK {r}"),
        Err(e) => {
            println!("CHILD ERROR {e:#}");
            std::process::exit(3);
        }
    }
}

#[test]
fn same_archive_as_root_and_as_nobody_and_failures_leave_the_old_output() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to switch to uid 65534");
        return;
    }
    let t = build_tree();
    // tc_root belongs to the user who packs it (as after an unprivileged
    // setup); the owners in the archive come from the manifest.
    run(
        Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(t.root.as_str()),
        None,
    );
    let manifest_path = t.out("manifest.txt");
    t.manifest.save(&manifest_path).unwrap();
    // AtomicFile creates 0600 files.
    std::fs::set_permissions(&manifest_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let as_root = t.out("root.cpio.gz");
    pack(&t.root, &t.manifest, &as_root, &opts("gzip")).unwrap();
    let nobody = t.out("nobody.cpio.gz");
    let o = pack_as_nobody(&t.root, &manifest_path, &nobody);
    let log = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && log.contains("CHILD OK"), "{log}");
    assert_eq!(std::fs::metadata(&nobody).unwrap().uid(), 65534);
    let good = std::fs::read(&nobody).unwrap();
    assert!(
        good == std::fs::read(&as_root).unwrap(),
        "root and uid 65534 produced different archives"
    );

    // An unreadable file late in the archive: the pack fails after having
    // written megabytes, and the old output stays as it was.
    common::write(&t.root, "zzz/unreadable", b"secret", 0o000);
    run(
        Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(t.root.join("zzz").as_str()),
        None,
    );
    let o = pack_as_nobody(&t.root, &manifest_path, &nobody);
    let log = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(!o.status.success(), "{log}");
    assert!(
        log.contains("CHILD ERROR") && log.contains("zzz/unreadable"),
        "{log}"
    );
    assert!(
        good == std::fs::read(&nobody).unwrap(),
        "a failed pack changed the output"
    );
    let leftovers: Vec<_> = std::fs::read_dir(t.out(""))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}
