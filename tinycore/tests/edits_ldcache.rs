//! The guest's ld.so.cache: built with the host's ldconfig as root and as a
//! plain user (in a user namespace), same bytes both ways, and it really
//! resolves a library in /usr/local/lib inside a chroot.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use camino::{Utf8Path, Utf8PathBuf};
use tinycore::ldcache;

/// Env var that turns `child_refresh` into the worker of the uid-65534 run.
const CHILD_ROOT: &str = "LINUX_GUEST_LDCACHE_CHILD_ROOT";

fn is_root() -> bool {
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A tree with the host's loader and libc in lib/, `lib64 -> lib`,
/// libx.so.1 in usr/local/lib and a binary that needs it.
fn build_tree(work: &Utf8Path, root: &Utf8Path) {
    for d in ["lib", "etc", "usr/local/lib", "usr/local/bin"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::os::unix::fs::symlink("lib", root.join("lib64")).unwrap();
    for (host, name) in [
        ("/lib64/ld-linux-x86-64.so.2", "ld-linux-x86-64.so.2"),
        ("/lib/x86_64-linux-gnu/libc.so.6", "libc.so.6"),
    ] {
        std::fs::copy(host, root.join("lib").join(name))
            .unwrap_or_else(|e| panic!("cannot copy {host}: {e}"));
    }
    std::fs::write(work.join("x.c"), "int x(void) { return 42; }\n").unwrap();
    std::fs::write(
        work.join("m.c"),
        "#include <stdio.h>\nint x(void);\nint main(void) { printf(\"x says %d\\n\", x()); return 0; }\n",
    )
    .unwrap();
    let lib = root.join("usr/local/lib/libx.so.1.0");
    run(Command::new("gcc")
        .args(["-shared", "-fPIC", "-Wl,-soname,libx.so.1", "-o"])
        .arg(&lib)
        .arg(work.join("x.c")));
    run(Command::new("gcc")
        .arg("-o")
        .arg(root.join("usr/local/bin/bin"))
        .arg(work.join("m.c"))
        .arg(&lib));
    // TC's core lists /usr/local/lib already; this tree starts without one.
}

fn check_cache(root: &Utf8Path) {
    let listing = run(Command::new("/sbin/ldconfig")
        .arg("-p")
        .arg("-C")
        .arg(root.join("etc/ld.so.cache")));
    assert!(
        listing
            .lines()
            .any(|l| l.trim().starts_with("libx.so.1 ")
                && l.ends_with("=> /usr/local/lib/libx.so.1")),
        "{listing}"
    );
}

fn chroot_run(root: &Utf8Path) {
    let out = run(Command::new("chroot")
        .arg(root)
        .arg("/usr/local/bin/bin")
        .env_remove("LD_LIBRARY_PATH"));
    assert_eq!(out, "x says 42\n");
}

#[test]
fn refresh_as_root_and_as_nobody_gives_the_same_cache() {
    if testmirror::tools::require_tool("gcc", "gcc").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = Utf8PathBuf::from_path_buf(dir.path().to_path_buf()).unwrap();

    let a = work.join("as-me");
    build_tree(&work, &a);
    let r = ldcache::refresh(&a).unwrap();
    assert!(
        r.warnings.iter().any(|w| w.contains("did not exist")),
        "{r:#?}"
    );
    assert!(std::fs::read_to_string(a.join("etc/ld.so.conf"))
        .unwrap()
        .lines()
        .any(|l| l == "/usr/local/lib"));
    check_cache(&a);
    assert_eq!(
        std::fs::read_link(a.join("usr/local/lib/libx.so.1"))
            .unwrap()
            .to_str(),
        Some("libx.so.1.0")
    );
    let cache = std::fs::read(a.join("etc/ld.so.cache")).unwrap();

    // Idempotent: a second refresh writes the same cache, no conf change.
    // With var/cache/ldconfig present, ldconfig's aux-cache (inode numbers,
    // times) must not be left in the tree.
    std::fs::create_dir_all(a.join("var/cache/ldconfig")).unwrap();
    let r2 = ldcache::refresh(&a).unwrap();
    assert!(r2.warnings.is_empty(), "{r2:#?}");
    assert!(!a.join("var/cache/ldconfig/aux-cache").exists(), "{r2:#?}");
    assert_eq!(std::fs::read(a.join("etc/ld.so.cache")).unwrap(), cache);

    if !is_root() {
        eprintln!("not root: skipping the chroot run and the uid-65534 comparison");
        return;
    }
    chroot_run(&a);

    // The same as uid 65534 through a re-run of this test binary.
    let b = work.join("as-nobody");
    build_tree(&work, &b);
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755)).unwrap();
    run(Command::new("chown").args(["-R", "65534:65534"]).arg(&b));
    let exe = std::env::current_exe().unwrap();
    // The test binary may sit under a directory nobody cannot reach.
    let exe_copy = work.join("test-exe");
    std::fs::copy(&exe, &exe_copy).unwrap();
    std::fs::set_permissions(&exe_copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe_copy)
        .args([
            "--exact",
            "child_refresh",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ROOT, &b)
        .env("HOME", "/")
        .current_dir("/")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "refresh as uid 65534 failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        std::fs::metadata(b.join("etc/ld.so.cache")).unwrap().uid(),
        65534,
        "not written by nobody"
    );
    check_cache(&b);
    assert_eq!(
        std::fs::read(b.join("etc/ld.so.cache")).unwrap(),
        cache,
        "root and uid 65534 caches differ"
    );
    chroot_run(&b);
}

/// Worker for the test above; does nothing unless started by it.
#[test]
#[ignore = "run by refresh_as_root_and_as_nobody_gives_the_same_cache as uid 65534"]
fn child_refresh() {
    let Ok(root) = std::env::var(CHILD_ROOT) else {
        return;
    };
    assert_ne!(
        std::fs::metadata("/proc/self").unwrap().uid(),
        0,
        "child must not be root"
    );
    let r = ldcache::refresh(Utf8Path::new(&root)).unwrap();
    eprintln!("{r:#?}");
}

#[test]
fn existing_conf_without_local_lib_gets_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = Utf8PathBuf::from_path_buf(dir.path().to_path_buf()).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/ld.so.conf"), "/usr/X11R7/lib").unwrap();
    let r = ldcache::ensure_local_lib(&root).unwrap();
    assert_eq!(r.warnings.len(), 1, "{r:#?}");
    let text = std::fs::read_to_string(root.join("etc/ld.so.conf")).unwrap();
    assert!(text.starts_with("/usr/X11R7/lib\n#"), "{text}");
    assert!(text.ends_with("\n/usr/local/lib\n"), "{text}");
    let r = ldcache::ensure_local_lib(&root).unwrap();
    assert!(r.applied.is_empty() && r.warnings.is_empty(), "{r:#?}");
    assert_eq!(
        std::fs::read_to_string(root.join("etc/ld.so.conf")).unwrap(),
        text
    );
}
