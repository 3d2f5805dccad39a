//! `cargo xtask setup-tinycore` end to end: the real binary against the
//! Tiny Core-shaped test mirror served on 127.0.0.1, as root and as an
//! unprivileged user.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use camino::{Utf8Path, Utf8PathBuf};
use testmirror::mirror::{self, Layout};
use testmirror::server::Server;
use testmirror::tools::require_tool;

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

struct Env {
    _dir: tempfile::TempDir,
    dir: Utf8PathBuf,
    server: Server,
}

fn env() -> Option<Env> {
    for (tool, pkg) in [
        ("mksquashfs", "squashfs-tools"),
        ("busybox", "busybox-static"),
        ("gcc", "gcc"),
    ] {
        require_tool(tool, pkg)?;
    }
    require_tool("ssh-keygen", "openssh-client")?;
    let dir = tempfile::tempdir().unwrap();
    let path = Utf8PathBuf::from_path_buf(dir.path().to_owned()).unwrap();
    // The unprivileged run needs to reach the build directory.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let built = mirror::build(&path.join("mirror"), &Layout::tc16_x86_64()).unwrap();
    let server = Server::start(built.root.as_std_path()).unwrap();
    Some(Env {
        _dir: dir,
        dir: path,
        server,
    })
}

/// Runs xtask with a clean environment (no PACKAGES etc. from the caller).
fn xtask(e: &Env, as_nobody: bool, build: &Utf8Path, args: &[&str]) -> Output {
    xtask_env(e, as_nobody, build, args, &[])
}

fn xtask_env(
    e: &Env,
    as_nobody: bool,
    build: &Utf8Path,
    args: &[&str],
    vars: &[(&str, &str)],
) -> Output {
    let mut cmd = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", XTASK]);
        c
    } else {
        Command::new(XTASK)
    };
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", e.dir.join("home"))
        .envs(vars.iter().copied())
        .arg("--build-dir")
        .arg(build)
        .args(args);
    let out = cmd.output().expect("xtask runs");
    eprintln!(
        "--- xtask {args:?}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Installs openssh and strace: as root through flags, as nobody through
/// the old scripts' PACKAGES variable.
fn setup(e: &Env, as_nobody: bool, build: &Utf8Path, extra: &[&str]) -> Output {
    let url = e.server.url();
    let mut args = vec!["setup-tinycore", "--mirror", &url, "--no-progress"];
    if !as_nobody {
        args.extend(["-p", "openssh", "-p", "strace"]);
    }
    args.extend_from_slice(extra);
    let vars: &[(&str, &str)] = if as_nobody {
        &[("PACKAGES", "openssh strace")]
    } else {
        &[]
    };
    xtask_env(e, as_nobody, build, &args, vars)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every path below `root` with its type, permission bits and, for files,
/// contents and for symlinks, the target.
fn snapshot(root: &Utf8Path) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for ent in dir.read_dir_utf8().unwrap() {
            let ent = ent.unwrap();
            let p = ent.path().to_owned();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap();
            let what = if md.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if md.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else {
                format!("file {:x}", md5_of(&std::fs::read(&p).unwrap()))
            };
            out.push(format!(
                "{rel} {:o} {what}",
                md.permissions().mode() & 0o7777
            ));
        }
    }
    out.sort();
    out
}

fn md5_of(b: &[u8]) -> u128 {
    // Not a security hash; just a compact content fingerprint for diffs.
    b.iter().fold(0xcbf29ce484222325u128, |h, &x| {
        (h ^ x as u128).wrapping_mul(0x100000001b3)
    })
}

#[test]
fn setup_as_root_and_as_nobody_twice_from_cache() {
    let Some(e) = env() else { return };
    let b_root = e.dir.join("build-root");
    let b_user = e.dir.join("build-nobody");
    std::fs::create_dir_all(&b_user).unwrap();
    std::fs::set_permissions(&b_user, std::fs::Permissions::from_mode(0o777)).unwrap();

    // First run as root: downloads the core and the five packages.
    let o = setup(&e, false, &b_root, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let reqs = e.server.requests();
    for want in [
        "corepure64.gz",
        "openssh.tcz",
        "openssl.tcz",
        "libtcdemo.tcz",
        "ca-certificates.tcz",
        "strace.tcz",
    ] {
        assert!(
            reqs.iter().any(|r| r.ends_with(&format!("/{want}"))),
            "{want} not fetched: {reqs:?}"
        );
    }
    assert!(reqs.iter().all(|r| !r.contains("//")), "{reqs:?}");
    assert!(
        !reqs
            .iter()
            .any(|r| r.contains("fuse-KERNEL.tcz") && !r.ends_with(".dep")),
        "kernel dep fetched"
    );
    assert!(
        stderr(&o).contains("fuse-KERNEL"),
        "skipped kernel dep not reported"
    );

    // As nobody, twice; the second run makes no request at all.
    let o = setup(&e, true, &b_user, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    e.server.clear_requests();
    let o = setup(&e, true, &b_user, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        e.server.requests().is_empty(),
        "warm run downloaded: {:?}",
        e.server.requests()
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("0 downloaded"),
        "{:?}",
        o.stdout
    );

    // Root and nobody produce the same manifest and the same tree, apart
    // from the per-build-directory sshd host keys.
    let m_root = std::fs::read_to_string(b_root.join("tc_root.manifest")).unwrap();
    let m_user = std::fs::read_to_string(b_user.join("tc_root.manifest")).unwrap();
    assert_eq!(m_root, m_user, "manifests differ between root and nobody");
    let keyless = |v: Vec<String>| -> Vec<String> {
        v.into_iter().filter(|l| !l.contains("ssh_host_")).collect()
    };
    assert_eq!(
        keyless(snapshot(&b_root.join("tc_root"))),
        keyless(snapshot(&b_user.join("tc_root")))
    );

    // What the manifest must have kept that a plain user cannot put on disk.
    for line in [
        "nod /dev/console ",
        "file /bin/busybox.suid bin/busybox.suid 4755 0 0",
        "nod /dev/sda 0660 0 50 b 8 0",
        "pipe /dev/",
        "#@ source openssh.tcz",
    ] {
        assert!(m_root.contains(line), "manifest lacks `{line}`:\n{m_root}");
    }
    let root = b_user.join("tc_root");
    // Files on disk belong to the invoking user, device nodes are not there.
    let md = std::fs::symlink_metadata(root.join("bin/busybox.suid")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&md), 65534);
    assert!(!root.join("dev/console").exists());

    // Host keys: generated once per build directory, reused on the rerun.
    for t in ["ed25519", "ecdsa", "rsa"] {
        let kept = std::fs::read(b_user.join(format!("ssh-host-keys/ssh_host_{t}_key"))).unwrap();
        let inside =
            std::fs::read(root.join(format!("usr/local/etc/ssh/ssh_host_{t}_key"))).unwrap();
        assert_eq!(
            kept, inside,
            "{t} host key in tc_root differs from the build directory's"
        );
    }
    let keys_before = std::fs::read(b_root.join("ssh-host-keys/ssh_host_ed25519_key")).unwrap();
    let o = setup(&e, false, &b_root, &["--offline"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        keys_before,
        std::fs::read(b_root.join("ssh-host-keys/ssh_host_ed25519_key")).unwrap()
    );

    // The TC edits and the sshd setup landed.
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    assert!(read("etc/init.d/tc-config").contains("### END functions\nNORTC=1\nNOZSWAP=1\n"));
    assert!(
        read("etc/inittab").contains("115200 tty1") && !read("etc/inittab").contains("38400 tty1")
    );
    assert!(read("opt/bootlocal.sh").contains("/usr/local/etc/init.d/openssh start"));
    assert!(read("usr/local/etc/ssh/sshd_config").contains("PasswordAuthentication no"));
    assert_eq!(
        std::fs::read_link(root.join("lib64")).unwrap().to_str(),
        Some("lib")
    );
    assert!(root.join("etc/sysconfig/superuser").exists());
    assert!(root.join("var/lib/sshd").is_dir());
    assert!(
        root.join("root/tc-sys.sh").is_file(),
        "tc-sys.sh-link override not applied"
    );
    // Extension files landed over the core.
    assert!(root.join("usr/local/bin/strace").is_file());
    assert!(root.join("usr/local/lib/libtcdemo.so.1").is_file());
}

#[test]
fn dry_run_lists_install_order_without_downloading_packages() {
    let Some(e) = env() else { return };
    let url = e.server.url();
    let o = xtask(
        &e,
        false,
        &e.dir.join("b"),
        &[
            "setup-tinycore",
            "--mirror",
            &url,
            "-p",
            "openssh",
            "--dry-run",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let order: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        order,
        ["ca-certificates", "openssl", "libtcdemo", "openssh"]
    );
    assert!(
        e.server.requests().iter().all(|r| r.ends_with(".dep")),
        "{:?}",
        e.server.requests()
    );
}

#[test]
fn bad_input_fails_clearly_and_keeps_the_previous_tc_root() {
    let Some(e) = env() else { return };
    let b = e.dir.join("b");
    let o = setup(&e, false, &b, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let manifest_before = std::fs::read_to_string(b.join("tc_root.manifest")).unwrap();

    // Unknown package.
    let url = e.server.url();
    let o = xtask(
        &e,
        false,
        &b,
        &[
            "setup-tinycore",
            "--mirror",
            &url,
            "-p",
            "no-such-pkg",
            "--no-progress",
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no-such-pkg"), "{}", stderr(&o));

    // A hostile extension: a symlink to /etc, then a file through it.
    let o = xtask(
        &e,
        false,
        &b,
        &[
            "setup-tinycore",
            "--mirror",
            &url,
            "-p",
            "evil-through",
            "--no-progress",
        ],
    );
    assert!(!o.status.success(), "evil-through was accepted");
    let err = stderr(&o);
    assert!(err.contains("evil"), "{err}");
    assert!(
        !std::path::Path::new("/etc/pwned").exists(),
        "wrote outside tc_root"
    );

    // Offline with an empty cache names what is missing.
    let o = xtask(
        &e,
        false,
        &e.dir.join("empty"),
        &[
            "setup-tinycore",
            "--mirror",
            &url,
            "-p",
            "strace",
            "--offline",
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("without --offline"), "{}", stderr(&o));

    // A refused first mirror, then the working one.
    let refused = testmirror::server::refused_url();
    let o = xtask(
        &e,
        false,
        &b,
        &[
            "setup-tinycore",
            "--mirror",
            &refused,
            "--mirror",
            &url,
            "-p",
            "openssh",
            "-p",
            "strace",
            "--refresh",
            "--no-progress",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    // Through all of it the last good tc_root and manifest stayed.
    assert_eq!(
        std::fs::read_to_string(b.join("tc_root.manifest")).unwrap(),
        manifest_before
    );
    assert!(b.join("tc_root/usr/local/bin/strace").is_file());
}
