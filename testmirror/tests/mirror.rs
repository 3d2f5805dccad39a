//! The test mirror: served over 127.0.0.1, checked with the real tools
//! (md5sum, unsquashfs, GNU cpio), and reproducible.

use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Command, Stdio};

use camino::{Utf8Path, Utf8PathBuf};
use testmirror::build;
use testmirror::mirror::{build_fresh, catalog, Builder, Layout, TCDEMO_OUTPUT};
use testmirror::server::raw_get;
use testmirror::tools::require_tool;

fn tempdir() -> (tempfile::TempDir, Utf8PathBuf) {
    let t = tempfile::tempdir().expect("tempdir");
    let p = Utf8PathBuf::from_path_buf(t.path().to_path_buf()).expect("utf-8 temp path");
    (t, p)
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn served_files_pass_md5sum_and_missing_deps_404() {
    let Some(md5sum) = require_tool("md5sum", "coreutils") else {
        return;
    };
    let (_t, dir) = tempdir();
    let (m, server) = testmirror::serve(&dir.join("mirror"), &Layout::tc16_x86_64()).unwrap();
    let dl = dir.join("dl");
    std::fs::create_dir_all(&dl).unwrap();
    let mut paths = vec![
        format!("/{}/corepure64.gz", m.layout.release_dir()),
        format!("/{}/corepure64.gz.md5.txt", m.layout.release_dir()),
    ];
    for p in [
        "openssh",
        "libtcdemo",
        "ca-certificates",
        "strace",
        "chain-mid",
    ] {
        paths.push(m.tcz_url_path(&format!("{p}.tcz")));
        paths.push(m.tcz_url_path(&format!("{p}.tcz.md5.txt")));
    }
    for p in &paths {
        let (status, body) = raw_get(&server.url(), p).unwrap();
        assert_eq!(status, 200, "{p}");
        std::fs::write(dl.join(p.rsplit('/').next().unwrap()), body).unwrap();
    }
    let md5s: Vec<String> = std::fs::read_dir(&dl)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".md5.txt"))
        .collect();
    assert_eq!(md5s.len(), 6);
    for f in &md5s {
        run_ok(Command::new(&md5sum).arg("-c").arg(f).current_dir(&dl));
    }
    assert_eq!(m.core_url_path(), paths[0]);

    for missing in [
        "ca-certificates.tcz.dep",
        "strace.tcz.dep",
        "nonexistent.tcz",
    ] {
        assert_eq!(
            raw_get(&server.url(), &m.tcz_url_path(missing)).unwrap().0,
            404,
            "{missing}"
        );
    }
    let (status, dep) = raw_get(&server.url(), &m.tcz_url_path("openssh.tcz.dep")).unwrap();
    assert_eq!(
        (status, dep.as_slice()),
        (200, &b"openssl.tcz\r\n\t libtcdemo  \r\n"[..])
    );
    assert!(server.double_slash_requests().is_empty());
}

#[test]
fn catalog_and_dep_files() {
    let (_t, dir) = tempdir();
    let m = build(&dir, &Layout::tc16_x86_64()).unwrap();
    let cat = catalog();
    let names: Vec<&str> = cat.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(m.packages, names);
    let deps = |n: &str| cat.iter().find(|p| p.name == n).unwrap().deps.clone();
    assert_eq!(deps("openssh"), ["openssl", "libtcdemo"]);
    assert_eq!(deps("openssl"), ["ca-certificates", "fuse-KERNEL"]);
    assert_eq!(deps("cyc-a"), ["cyc-b"]);
    assert_eq!(deps("cyc-b"), ["cyc-a"]);
    assert_eq!(deps("cycle-demo"), ["cyc-a"]);
    assert_eq!(deps("chain-top"), ["chain-mid"]);
    assert_eq!(deps("chain-mid"), ["chain-bottom"]);
    assert!(deps("chain-bottom").is_empty());
    assert_eq!(deps("tcdemo"), ["libtcdemo"]);
    assert_eq!(deps("evil-through"), ["evil-symlink"]);
    for p in &cat {
        let dep = m
            .root
            .join(m.layout.tcz_dir())
            .join(format!("{}.tcz.dep", p.name));
        match &p.dep_file {
            Some(bytes) => assert_eq!(&std::fs::read(&dep).unwrap(), bytes, "{dep}"),
            None => assert!(!dep.exists(), "{dep} should not exist"),
        }
        let list = std::fs::read_to_string(
            m.root
                .join(m.layout.tcz_dir())
                .join(format!("{}.tcz.list", p.name)),
        )
        .unwrap();
        assert_eq!(list.lines().collect::<Vec<_>>(), p.files, "{}", p.name);
        let info = std::fs::read_to_string(m.tcz_path(&p.name).with_extension("tcz.info")).unwrap();
        assert!(
            info.starts_with(&format!("Title:          {}.tcz\n", p.name)),
            "{info}"
        );
        assert!(info.contains("\nVersion:        "), "{info}");
    }
    let openssl_dep =
        std::fs::read(m.root.join(m.layout.tcz_dir()).join("openssl.tcz.dep")).unwrap();
    assert!(
        !openssl_dep.ends_with(b"\n"),
        "one .dep lacks a final newline"
    );
    // Builders are all represented.
    for b in [
        Builder::Mksquashfs,
        Builder::MksquashfsXz,
        Builder::Backhand,
        Builder::DotDotPatched,
    ] {
        assert!(cat.iter().any(|p| p.builder == b), "{b:?}");
    }
    assert!(
        cat.iter()
            .filter(|p| p.builder == Builder::Backhand)
            .count()
            >= 2
    );
}

/// (non-directory paths, superblock compressor id, block size)
fn unsquashfs_list(unsquashfs: &std::path::Path, tcz: &Utf8Path) -> BTreeSet<String> {
    let out = run_ok(Command::new(unsquashfs).arg("-lls").arg(tcz));
    out.lines()
        .filter_map(|l| {
            let (_, path) = l.split_once(" squashfs-root/")?;
            (!l.starts_with('d')).then(|| path.split(" -> ").next().unwrap().to_string())
        })
        .collect()
}

#[test]
fn tcz_files_list_with_unsquashfs() {
    let Some(unsquashfs) = require_tool("unsquashfs", "squashfs-tools") else {
        return;
    };
    let (_t, dir) = tempdir();
    let m = build(&dir, &Layout::tc16_x86_64()).unwrap();
    for p in catalog() {
        let tcz = m.tcz_path(&p.name);
        let data = std::fs::read(&tcz).unwrap();
        assert_eq!(&data[0..4], b"hsqs", "{tcz}");
        let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]);
        let block_size = u32::from_le_bytes(data[12..16].try_into().unwrap());
        assert_eq!(block_size, 4096, "{tcz}");
        assert_eq!((u16_at(28), u16_at(30)), (4, 0), "{tcz}: squashfs 4.0");
        let expected_comp = if p.builder == Builder::MksquashfsXz {
            4
        } else {
            1
        };
        assert_eq!(u16_at(20), expected_comp, "{tcz}: compressor");
        if p.builder == Builder::DotDotPatched {
            let out = Command::new(&unsquashfs)
                .arg("-l")
                .arg(&tcz)
                .output()
                .unwrap();
            assert!(
                !out.status.success(),
                "unsquashfs must refuse the `..` entries of {tcz}"
            );
            continue;
        }
        let listed = unsquashfs_list(&unsquashfs, &tcz);
        let expected: BTreeSet<String> = p.files.iter().cloned().collect();
        assert_eq!(listed, expected, "{tcz}");
    }
    // Spot checks on what the containment tests rely on.
    let evil = run_ok(
        Command::new(&unsquashfs)
            .arg("-lls")
            .arg(m.tcz_path("evil-symlink")),
    );
    assert!(
        evil.contains("squashfs-root/usr/local/evil -> /etc"),
        "{evil}"
    );
    let openssh = unsquashfs_list(&unsquashfs, &m.tcz_path("openssh"));
    assert!(openssh.contains("usr/local/tce.installed/openssh"));
}

#[test]
fn tcdemo_runs_against_libtcdemo_only_via_the_library_path() {
    let Some(unsquashfs) = require_tool("unsquashfs", "squashfs-tools") else {
        return;
    };
    let (_t, dir) = tempdir();
    let m = build(&dir.join("mirror"), &Layout::tc16_x86_64()).unwrap();
    let root = dir.join("root");
    for p in ["libtcdemo", "tcdemo"] {
        run_ok(
            Command::new(&unsquashfs)
                .arg("-f")
                .arg("-d")
                .arg(&root)
                .arg(m.tcz_path(p)),
        );
    }
    let bin = root.join("usr/local/bin/tcdemo");
    let out = run_ok(Command::new(&bin).env("LD_LIBRARY_PATH", root.join("usr/local/lib")));
    assert_eq!(out, format!("{TCDEMO_OUTPUT}\n"));
    // No rpath: without the library path (in the guest: the ld.so cache) it fails.
    let out = Command::new(&bin)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "tcdemo found libtcdemo without help: it must not have an rpath"
    );
    let link = std::fs::read_link(root.join("usr/local/lib/libtcdemo.so")).unwrap();
    assert_eq!(link.to_str(), Some("libtcdemo.so.1"));
}

/// Splits the core into its gzip members.
fn gzip_members(data: &[u8]) -> Vec<Vec<u8>> {
    let mut rest = data;
    let mut members = Vec::new();
    while !rest.is_empty() {
        let mut dec = flate2::bufread::GzDecoder::new(rest);
        let mut out = Vec::new();
        dec.read_to_end(&mut out).expect("a valid gzip member");
        rest = dec.into_inner();
        members.push(out);
    }
    members
}

fn cpio_list(cpio: &std::path::Path, archive: &[u8], verbose: bool) -> String {
    let mut child = Command::new(cpio)
        .arg(if verbose { "-itv" } else { "-it" })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = archive.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "cpio -t failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn core_is_two_gzip_members_that_gnu_cpio_lists() {
    let Some(cpio) = require_tool("cpio", "cpio") else {
        return;
    };
    let Some(zcat) = require_tool("zcat", "gzip") else {
        return;
    };
    let (_t, dir) = tempdir();
    let m = build(&dir, &Layout::tc16_x86_64()).unwrap();
    let core = std::fs::read(m.core_path()).unwrap();
    let members = gzip_members(&core);
    assert_eq!(members.len(), 2);

    // zcat decompresses all members; GNU cpio stops at the first trailer.
    let all = Command::new(&zcat).arg(m.core_path()).output().unwrap();
    assert!(all.status.success());
    assert_eq!(
        all.stdout,
        [members[0].clone(), members[1].clone()].concat()
    );

    let base: BTreeSet<String> = cpio_list(&cpio, &members[0], false)
        .lines()
        .map(str::to_string)
        .collect();
    for f in [
        ".",
        "init",
        "bin/busybox",
        "bin/busybox.suid",
        "usr/bin/sudo",
        "bin/sh",
        "sbin/init",
        "sbin/autologin",
        "etc/inittab",
        "etc/init.d/rcS",
        "etc/init.d/tc-config",
        "etc/sysconfig",
        "opt/bootsync.sh",
        "opt/bootlocal.sh",
        "etc/passwd",
        "etc/group",
        "etc/shadow",
        "etc/ld.so.conf",
        "dev/console",
        "dev/initctl",
        "tmp",
        "usr/local/lib",
        "lib/modules/6.12.11-tinycore64/modules.dep",
    ] {
        assert!(
            base.contains(f),
            "{f} missing from the base archive: {base:?}"
        );
    }
    assert!(!base.contains("lib64"), "older TC cores have no /lib64");
    let libs = cpio_list(&cpio, &members[1], false);
    assert_eq!(
        libs.lines().collect::<Vec<_>>(),
        [
            "lib/ld-linux-x86-64.so.2",
            "lib/libc.so.6",
            "lib/libm.so.6",
            "lib/libresolv.so.2",
            "sbin/ldconfig"
        ]
    );

    let verbose = cpio_list(&cpio, &members[0], true);
    let line = |name: &str| {
        verbose
            .lines()
            .find(|l| l.ends_with(&format!(" {name}")) || l.contains(&format!(" {name} -> ")))
            .unwrap_or_else(|| panic!("{name} not in {verbose}"))
            .to_string()
    };
    assert!(
        line("dev/ttyS0").starts_with("crw-rw----"),
        "{}",
        line("dev/ttyS0")
    );
    assert!(line("dev/ttyS0").contains("staff"), "{}", line("dev/ttyS0"));
    assert!(
        line("dev/ttyS0").contains("4,  64"),
        "{}",
        line("dev/ttyS0")
    );
    assert!(
        line("dev/vda").starts_with("brw-rw----"),
        "{}",
        line("dev/vda")
    );
    assert!(
        line("dev/null").starts_with("crw-rw-rw-"),
        "{}",
        line("dev/null")
    );
    assert!(
        line("dev/initctl").starts_with("prw-------"),
        "{}",
        line("dev/initctl")
    );
    assert!(line("tmp").starts_with("drwxrwxrwt"), "{}", line("tmp"));
    assert!(
        line("bin/busybox.suid").starts_with("-rwsr-xr-x   2 root"),
        "{}",
        line("bin/busybox.suid")
    );
    assert!(
        line("usr/bin/sudo").starts_with("-rwsr-xr-x   2 root"),
        "{}",
        line("usr/bin/sudo")
    );
    assert!(
        line("sbin/init").contains("sbin/init -> ../bin/busybox"),
        "{}",
        line("sbin/init")
    );

    // The text files the TC setup edits.
    let inittab = extract(&cpio, &members[0], "etc/inittab", &dir);
    assert!(inittab.contains("::sysinit:/etc/init.d/rcS\n"));
    assert!(inittab.contains("tty1::respawn:/sbin/getty -nl /sbin/autologin 38400 tty1\n"));
    assert!(extract(&cpio, &members[0], "sbin/autologin", &dir).contains("38400 tty1"));
    let rcs = extract(&cpio, &members[0], "etc/init.d/rcS", &dir);
    assert!(rcs.lines().any(|l| l.trim() == "clear"), "{rcs}");
    let tc_config = extract(&cpio, &members[0], "etc/init.d/tc-config", &dir);
    assert_eq!(
        tc_config
            .lines()
            .filter(|l| *l == "### END functions")
            .count(),
        1
    );
    assert!(tc_config.contains("nozswap") && tc_config.contains("/opt/bootsync.sh"));
    assert!(extract(&cpio, &members[0], "opt/bootsync.sh", &dir).contains("/opt/bootlocal.sh &"));
    assert!(extract(&cpio, &members[0], "etc/passwd", &dir).contains("\ntc:x:1001:50:"));
    assert_eq!(
        extract(&cpio, &members[0], "etc/ld.so.conf", &dir),
        "/usr/local/lib\n"
    );
}

/// Extracts one file with GNU cpio (to stdout) and returns it as text.
fn extract(cpio: &std::path::Path, archive: &[u8], name: &str, dir: &Utf8Path) -> String {
    let src = dir.join("member.cpio");
    std::fs::write(&src, archive).unwrap();
    let out = run_ok(
        Command::new(cpio)
            .args(["-i", "--to-stdout", "-F"])
            .arg(&src)
            .arg(name),
    );
    assert!(!out.is_empty(), "{name} is empty or missing");
    out
}

fn tree(root: &Utf8Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in d.read_dir_utf8().unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path().to_path_buf());
            } else {
                let rel = e.path().strip_prefix(root).unwrap().to_string();
                out.push((rel, std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn builds_are_byte_identical() {
    let (_t, dir) = tempdir();
    let t = std::time::Instant::now();
    let a = build_fresh(&dir.join("a"), &Layout::tc16_x86_64()).unwrap();
    eprintln!("fresh build: {:?}", t.elapsed());
    let b = build_fresh(&dir.join("b"), &Layout::tc16_x86_64()).unwrap();
    let c = build(&dir.join("c"), &Layout::tc16_x86_64()).unwrap();
    let (ta, tb, tc) = (tree(&a.root), tree(&b.root), tree(&c.root));
    assert!(ta.len() > 60, "{}", ta.len());
    for ((na, da), (nb, db)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert!(da == db, "{na} differs between two fresh builds");
    }
    assert_eq!(ta.len(), tb.len());
    assert!(ta == tc, "the cached build differs from a fresh one");
}

#[test]
fn other_layouts() {
    let (_t, dir) = tempdir();
    let seven = build(&dir, &Layout::tc7_x86_64()).unwrap();
    let x86 = build(&dir, &Layout::new("16.x", "x86")).unwrap();
    assert_eq!(
        seven.core_path(),
        dir.join("7.x/x86_64/release/distribution_files/corepure64.gz")
    );
    assert_eq!(
        x86.core_path(),
        dir.join("16.x/x86/release/distribution_files/core.gz")
    );
    let md5 = std::fs::read_to_string(x86.core_path().with_extension("gz.md5.txt")).unwrap();
    assert!(
        md5.ends_with("  core.gz\n") && md5.len() == 32 + 2 + 8,
        "{md5:?}"
    );
    assert!(dir.join("16.x/x86/tcz/openssh.tcz").is_file());
    assert!(dir.join("7.x/x86_64/tcz/tcdemo.tcz.md5.txt").is_file());
    assert_eq!(x86.tcz_url_path("openssh.tcz"), "/16.x/x86/tcz/openssh.tcz");
}

/// Both readers a consumer might use refuse the `..` names: the archive is
/// "corrupt" as far as they are concerned, which is what containment code
/// must turn into a clear error rather than a write outside the root.
#[test]
fn backhand_refuses_the_dotdot_entries() {
    let (_t, dir) = tempdir();
    let m = build(&dir, &Layout::tc16_x86_64()).unwrap();
    let file = std::io::BufReader::new(std::fs::File::open(m.tcz_path("evil-dotdot")).unwrap());
    match backhand::FilesystemReader::from_reader(file) {
        Err(e) => eprintln!("backhand refuses evil-dotdot: {e:?}"),
        Ok(fs) => {
            let paths: Vec<String> = fs
                .files()
                .map(|n| n.fullpath.display().to_string())
                .collect();
            panic!("backhand read evil-dotdot: {paths:?}");
        }
    }
}
