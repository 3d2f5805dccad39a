//! CUSTOM_BINARIES' shared libraries, with real ELF files: programs and
//! libraries built here with gcc, a TC-shaped guest tree that has glibc's
//! libc.so.6 (and `lib64 -> lib`) but not the test's libraries, and the
//! copied set run through the copied loader with only the guest's
//! directories.

use std::process::Command;

use camino::{Utf8Path, Utf8PathBuf};
use rootfs::manifest::{Entry, Kind, Manifest};
use tinycore::edits;
use tinycore::elfdeps::{self, HostLibs};

/// A C compiler run that must succeed.
fn cc(dir: &Utf8Path, args: &[&str]) {
    let out = Command::new("gcc")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run gcc");
    assert!(
        out.status.success(),
        "gcc {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write(path: &Utf8Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// The host side: `bin/prog` -> libgreet.so.1 (a symlink to
/// libgreet.so.1.0, RUNPATH `$ORIGIN/../lib`) -> libinner.so.1, all built
/// with gcc; `bin/static` (gcc -static); `bin/lonely`, which needs
/// libgone.so, deleted after linking.
struct Host {
    _dir: tempfile::TempDir,
    dir: Utf8PathBuf,
}

fn host() -> Option<Host> {
    testmirror::tools::require_tool("gcc", "gcc")?;
    let d = tempfile::tempdir().unwrap();
    let dir = Utf8PathBuf::from_path_buf(d.path().join("host")).unwrap();
    let lib = dir.join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    write(&dir.join("src/inner.c"), "int inner(void) { return 42; }\n");
    write(
        &dir.join("src/greet.c"),
        "#include <stdio.h>\nint inner(void);\nvoid greet(void) { printf(\"greet %d\\n\", inner()); }\n",
    );
    write(
        &dir.join("src/prog.c"),
        "void greet(void);\nint main(void) { greet(); return 0; }\n",
    );
    write(
        &dir.join("src/hello.c"),
        "#include <stdio.h>\nint main(void) { puts(\"static\"); return 0; }\n",
    );
    write(&dir.join("src/gone.c"), "int gone(void) { return 1; }\n");
    write(
        &dir.join("src/lonely.c"),
        "int gone(void);\nint main(void) { return gone(); }\n",
    );
    cc(
        &dir,
        &[
            "-shared",
            "-fPIC",
            "-Wl,-soname,libinner.so.1",
            "-o",
            "lib/libinner.so.1",
            "src/inner.c",
        ],
    );
    std::os::unix::fs::symlink("libinner.so.1", lib.join("libinner.so")).unwrap();
    cc(
        &dir,
        &[
            "-shared",
            "-fPIC",
            "-Wl,-soname,libgreet.so.1",
            "-Wl,-rpath,$ORIGIN",
            "-o",
            "lib/libgreet.so.1.0",
            "src/greet.c",
            "-Llib",
            "-linner",
        ],
    );
    std::os::unix::fs::symlink("libgreet.so.1.0", lib.join("libgreet.so.1")).unwrap();
    std::os::unix::fs::symlink("libgreet.so.1", lib.join("libgreet.so")).unwrap();
    cc(
        &dir,
        &[
            "-o",
            "bin/prog",
            "src/prog.c",
            "-Llib",
            "-lgreet",
            "-Wl,-rpath,$ORIGIN/../lib",
        ],
    );
    cc(&dir, &["-static", "-Os", "-o", "bin/static", "src/hello.c"]);
    cc(
        &dir,
        &["-shared", "-fPIC", "-o", "lib/libgone.so", "src/gone.c"],
    );
    cc(
        &dir,
        &["-o", "bin/lonely", "src/lonely.c", "-Llib", "-lgone"],
    );
    std::fs::remove_file(lib.join("libgone.so")).unwrap();
    // The host binary works on the host.
    let out = Command::new(dir.join("bin/prog")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "greet 42\n");
    Some(Host { _dir: d, dir })
}

/// The host's libc.so.6, as its loader finds it.
fn host_libc() -> Utf8PathBuf {
    let host = HostLibs::system();
    host.cache
        .iter()
        .find(|(k, p)| k == "libc.so.6" && p.as_str().contains("x86_64"))
        .map(|(_, p)| p.clone())
        .or_else(|| {
            host.default_dirs
                .iter()
                .map(|d| d.join("libc.so.6"))
                .find(|p| p.is_file())
        })
        .expect("the host has libc.so.6")
        .canonicalize_utf8()
        .unwrap()
}

/// A TC-shaped guest: `lib/libc.so.6` (the host's glibc, as TC's is a
/// glibc too), `lib64 -> lib`, `etc/ld.so.conf` listing /usr/local/lib, no
/// program interpreter.
fn guest(libc: &Utf8Path) -> (tempfile::TempDir, Utf8PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let root = Utf8PathBuf::from_path_buf(d.path().join("tc_root")).unwrap();
    std::fs::create_dir_all(root.join("lib")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::copy(libc, root.join("lib/libc.so.6")).unwrap();
    std::os::unix::fs::symlink("lib", root.join("lib64")).unwrap();
    std::fs::write(root.join("etc/ld.so.conf"), "/usr/local/lib\n").unwrap();
    (d, root)
}

fn stale(mode: u32) -> Entry {
    Entry {
        mode,
        uid: 0,
        gid: 50,
        kind: Kind::File,
        source: Some("x.tcz".into()),
    }
}

#[test]
fn dynamic_binary_gets_the_libraries_the_guest_lacks_and_runs() {
    let Some(h) = host() else { return };
    let (_d, root) = guest(&host_libc());
    let mut m = Manifest::new();
    m.insert("/usr/local/lib/libgreet.so.1", stale(0o4755));

    let r = edits::install_binaries(&root, &mut m, &[h.dir.join("bin/prog")]).unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);

    // The needed names, with the real files' bytes (symlinks resolved).
    let greet = root.join("usr/local/lib/libgreet.so.1");
    let inner = root.join("usr/local/lib/libinner.so.1");
    for p in [&greet, &inner] {
        assert!(
            std::fs::symlink_metadata(p).unwrap().is_file(),
            "{p} is a file"
        );
    }
    assert_eq!(
        std::fs::read(&greet).unwrap(),
        std::fs::read(h.dir.join("lib/libgreet.so.1.0")).unwrap()
    );
    // The guest's own libc is used, not the host's copied over it.
    assert!(!root.join("usr/local/lib/libc.so.6").exists());
    // The loader lands at the PT_INTERP path, through lib64 -> lib.
    let ld = root.join("lib/ld-linux-x86-64.so.2");
    assert!(std::fs::symlink_metadata(&ld).unwrap().is_file());
    assert!(std::fs::symlink_metadata(root.join("lib64"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(
        m.get("/usr/local/lib/libgreet.so.1").is_none(),
        "the stale setuid record is dropped"
    );
    let applied = r.applied.join("\n");
    for want in ["libgreet.so.1", "libinner.so.1", "lib/ld-linux-x86-64.so.2"] {
        assert!(applied.contains(want), "{want} not reported:\n{applied}");
    }
    assert_eq!(
        r.applied.len(),
        4,
        "prog + 2 libraries + loader:\n{applied}"
    );

    // The copied set is complete: the guest's loader, the guest's
    // directories only, no linker cache.
    let out = Command::new(&ld)
        .arg("--inhibit-cache")
        .arg("--library-path")
        .arg(format!("{root}/lib:{root}/usr/local/lib"))
        .arg(root.join("usr/local/bin/prog"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "greet 42\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A second run finds everything in the guest and changes nothing.
    let again = edits::install_binaries(&root, &mut m, &[h.dir.join("bin/prog")]).unwrap();
    assert!(again.applied.is_empty(), "{:?}", again.applied);
    assert!(again.warnings.is_empty(), "{:?}", again.warnings);
}

#[test]
fn static_binary_and_scripts_need_nothing() {
    let Some(h) = host() else { return };
    let (_d, root) = guest(&host_libc());
    write(&h.dir.join("bin/script"), "#!/bin/sh\necho hi\n");
    let mut m = Manifest::new();
    let r = edits::install_binaries(
        &root,
        &mut m,
        &[h.dir.join("bin/static"), h.dir.join("bin/script")],
    )
    .unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!(r.applied.len(), 2, "{:?}", r.applied);
    assert!(
        r.unchanged
            .iter()
            .any(|u| u.contains("static") && u.contains("statically linked")),
        "{:?}",
        r.unchanged
    );
    assert!(!root.join("usr/local/lib").exists(), "no library copied");
    assert!(
        !root.join("lib/ld-linux-x86-64.so.2").exists(),
        "no loader copied"
    );
}

#[test]
fn a_library_found_nowhere_is_a_warning_naming_it() {
    let Some(h) = host() else { return };
    let (_d, root) = guest(&host_libc());
    let mut m = Manifest::new();
    let r = edits::install_binaries(&root, &mut m, &[h.dir.join("bin/lonely")]).unwrap();
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    let w = &r.warnings[0];
    assert!(w.contains("lonely") && w.contains("libgone.so"), "{w}");
    assert!(
        root.join("usr/local/bin/lonely").is_file(),
        "still installed"
    );
}

#[test]
fn a_guest_glibc_older_than_the_binary_needs_is_a_warning() {
    let Some(h) = host() else { return };
    // An "old glibc": libc.so.6 that defines only GLIBC_2.2.5.
    let old = h.dir.join("oldlibc");
    write(&old.join("v.map"), "GLIBC_2.2.5 { global: *; };\n");
    write(&old.join("c.c"), "int puts(const char *s) { return 0; }\n");
    cc(
        &old,
        &[
            "-shared",
            "-fPIC",
            "-nostdlib",
            "-Wl,-soname,libc.so.6",
            "-Wl,--version-script=v.map",
            "-o",
            "libc.so.6",
            "c.c",
        ],
    );
    let (_d, root) = guest(&old.join("libc.so.6"));
    let mut m = Manifest::new();
    let r = edits::install_binaries(&root, &mut m, &[h.dir.join("bin/prog")]).unwrap();
    let w = r.warnings.join("\n");
    assert!(
        w.contains("prog needs GLIBC_") && w.contains("provides only up to GLIBC_2.2.5"),
        "{w}"
    );
    assert!(w.contains("/lib/libc.so.6"), "names the guest's file: {w}");
    // The guest had no loader, so the host's was copied: it does not go
    // with this libc.
    assert!(
        w.contains("prog: the program interpreter came from the host and libc.so.6 from the guest"),
        "{w}"
    );
}

#[test]
fn a_guest_loader_is_kept() {
    let Some(h) = host() else { return };
    let (_d, root) = guest(&host_libc());
    std::fs::write(root.join("lib/ld-linux-x86-64.so.2"), b"not ELF").unwrap();
    let mut m = Manifest::new();
    let r = edits::install_binaries(&root, &mut m, &[h.dir.join("bin/prog")]).unwrap();
    // Not an x86-64 ELF file: the loader would not be this one either, so
    // the host's replaces it.
    assert_ne!(
        std::fs::read(root.join("lib/ld-linux-x86-64.so.2")).unwrap(),
        b"not ELF"
    );
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    // A real one is kept as it is.
    let before = std::fs::read(root.join("lib/ld-linux-x86-64.so.2")).unwrap();
    let mut m = Manifest::new();
    let r = edits::install_binaries(&root, &mut m, &[h.dir.join("bin/prog")]).unwrap();
    assert!(!r.applied.join(" ").contains("ld-linux"), "{:?}", r.applied);
    assert_eq!(
        std::fs::read(root.join("lib/ld-linux-x86-64.so.2")).unwrap(),
        before
    );
}

#[test]
fn ld_so_cache_parser_agrees_with_ldconfig_p() {
    let Some(ldconfig) = testmirror::tools::require_tool("ldconfig", "libc-bin") else {
        return;
    };
    let ours: std::collections::BTreeSet<(String, String)> =
        elfdeps::parse_ld_so_cache(&std::fs::read("/etc/ld.so.cache").unwrap())
            .unwrap()
            .into_iter()
            .map(|(k, p)| (k, p.to_string()))
            .collect();
    let out = Command::new(ldconfig).arg("-p").output().unwrap();
    assert!(out.status.success());
    let theirs: std::collections::BTreeSet<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('\t') && !l.contains("hwcap"))
        .filter_map(|l| {
            let (lhs, path) = l.trim().split_once(" => ")?;
            let name = lhs.split(' ').next()?;
            Some((name.to_string(), path.to_string()))
        })
        .collect();
    assert!(theirs.len() > 10, "ldconfig -p listed {}", theirs.len());
    assert_eq!(ours, theirs);
}

#[test]
fn ld_so_cache_in_another_format_falls_back_to_the_directories() {
    let d = tempfile::tempdir().unwrap();
    let p = Utf8PathBuf::from_path_buf(d.path().join("ld.so.cache")).unwrap();
    std::fs::write(&p, b"ld.so-1.7.0\0\0\0\0\0").unwrap();
    let h = HostLibs::with_cache(&p);
    assert!(h.cache.is_empty());
    assert!(h.cache_problem.unwrap().contains("glibc-ld.so.cache1.1"));
    assert!(!h.default_dirs.is_empty());
    assert!(
        elfdeps::parse_ld_so_cache(b"glibc-ld.so.cache1.1").is_err(),
        "truncated"
    );
}
