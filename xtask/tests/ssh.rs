//! `cargo xtask ssh -- CMD` answers from a real guest: setup-tinycore from
//! the test mirror with openssh (whose sshd is the host's Debian dropbear,
//! started by the extension's init script with the build's host keys),
//! rebuild, then Debian's kernel under QEMU/TCG with user networking
//! forwarded on 127.0.0.1. The guest's host keys are pinned, not trusted on
//! first use, and `~/.ssh/known_hosts` is never touched.
//!
//! The guest runs the real guest/tc-sys.sh: with the magic MAC it must
//! configure the static addresses, with any other MAC it runs DHCP.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use camino::{Utf8Path, Utf8PathBuf};
use testmirror::mirror::{self, Layout};
use testmirror::server::Server;
use testmirror::tools::require_tool;

mod common;
use common::{free_port, XTASK};

const MAGIC_MAC: &str = "00:01:02:03:04:0b";

/// QEMU, killed on drop.
struct Vm {
    child: Child,
    console: Utf8PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vm {
    fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Debian's kernel has its NICs as modules: load e1000 before
/// bootlocal.sh (and so tc-sys.sh) runs.
fn prepare_network(root: &Utf8Path, release: &str) {
    let ko = format!("/lib/modules/{release}/kernel/drivers/net/ethernet/intel/e1000/e1000.ko");
    assert!(
        Utf8Path::new(&ko).is_file(),
        "{ko} is missing (apt-get install linux-image-amd64)"
    );
    std::fs::copy(&ko, root.join("lib/e1000.ko")).unwrap();
    let bootsync = root.join("opt/bootsync.sh");
    let text = std::fs::read_to_string(&bootsync).unwrap();
    if !text.contains("e1000") {
        let text = text.replacen(
            "/opt/bootlocal.sh &",
            "/sbin/insmod /lib/e1000.ko\n/opt/bootlocal.sh &",
            1,
        );
        std::fs::write(&bootsync, text).unwrap();
    }
}

fn boot(kernel: &Utf8Path, image: &Utf8Path, dir: &Utf8Path, port: u16, mac: &str) -> Vm {
    let qemu = require_tool("qemu-system-x86_64", "qemu-system-x86").unwrap();
    let console = dir.join(format!("console-{port}.log"));
    let child = Command::new(qemu)
        .args([
            "-accel",
            "tcg",
            "-m",
            "512",
            "-nographic",
            "-nodefaults",
            "-no-reboot",
        ])
        .args(["-serial", &format!("file:{console}")])
        .args(["-kernel", kernel.as_str(), "-initrd", image.as_str()])
        .args(["-append", "console=ttyS0 panic=-1 nozswap"])
        .args([
            "-netdev",
            &format!("user,id=n0,restrict=off,hostfwd=tcp:127.0.0.1:{port}-:22"),
            "-device",
            &format!("e1000,netdev=n0,mac={mac}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Vm { child, console }
}

fn wait_ready(vm: &Vm, timeout: Duration) -> Duration {
    let start = Instant::now();
    while !vm.console().contains("linux-guest: ready") {
        assert!(
            start.elapsed() < timeout,
            "the guest was not ready within {timeout:?}; console:\n{}",
            vm.console()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}

#[test]
fn ssh_into_the_guest_with_pinned_host_keys() {
    for (tool, pkg) in [
        ("mksquashfs", "squashfs-tools"),
        ("busybox", "busybox-static"),
        ("gcc", "gcc"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("ldd", "libc-bin"),
        ("/usr/sbin/dropbear", "dropbear-bin"),
        ("dropbearconvert", "dropbear-bin"),
    ] {
        let Some(_) = require_tool(tool, pkg) else {
            return;
        };
    }
    assert!(
        mirror::openssh_has_real_sshd(),
        "the test mirror's openssh has no real sshd although dropbear is installed"
    );
    let Some(kernel) = testmirror::qemu::debian_kernel() else {
        return;
    };
    let release = kernel
        .file_name()
        .unwrap()
        .strip_prefix("vmlinuz-")
        .unwrap()
        .to_string();
    let tmp = tempfile::tempdir().unwrap();
    let dir = Utf8PathBuf::from_path_buf(tmp.path().to_owned()).unwrap();
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let built = mirror::build(&dir.join("mirror"), &Layout::tc16_x86_64()).unwrap();
    let server = Server::start(built.root.as_std_path()).unwrap();

    let key = dir.join("id_ed25519");
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
            .arg(&key),
    );
    let config = dir.join("guest.toml");
    std::fs::write(
        &config,
        format!(
            "[tinycore]\nmirrors = [\"{}\"]\npackages = [\"openssh\"]\n[guest]\nssh_key = \"{key}\"\n",
            server.url()
        ),
    )
    .unwrap();
    let build = dir.join("build");
    let xtask = |args: &[&str]| -> Output {
        Command::new(XTASK)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("HOME", &home)
            .args(["--config", config.as_str(), "--build-dir", build.as_str()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let ok = |args: &[&str]| -> String {
        let out = xtask(args);
        assert!(
            out.status.success(),
            "xtask {args:?} failed:\n{}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    ok(&["setup-tinycore", "--no-progress"]);
    let root = build.join("tc_root");
    assert!(root.join("usr/local/sbin/dropbear").is_file());
    prepare_network(&root, &release);
    ok(&["rebuild", "--skip-kernel"]);
    let image = build.join("initramfs.cpio.gz");

    // ssh-config: the stanzas with our key and the pinned keys.
    let cfg = ok(&["ssh-config"]);
    for want in [
        "Host qemu\n",
        "Host qemu-tap\n",
        "Host linux-guest\n",
        &format!("IdentityFile {key}\n"),
        "HostKeyAlias linux-guest",
        "StrictHostKeyChecking yes",
        "ssh -L 2345:127.0.0.1:23 ",
    ] {
        assert!(
            cfg.contains(want),
            "`{want}` missing from ssh-config:\n{cfg}"
        );
    }
    let ed25519 =
        std::fs::read_to_string(build.join("ssh-host-keys/ssh_host_ed25519_key.pub")).unwrap();
    let known = std::fs::read_to_string(build.join("ssh/known_hosts")).unwrap();
    let pinned: Vec<&str> = ed25519.split_whitespace().take(2).collect();
    assert!(
        known.contains(&format!("linux-guest {}", pinned.join(" "))),
        "{known}"
    );

    // The magic MAC: tc-sys.sh configures the static addresses.
    let port = free_port();
    let vm = boot(&kernel, &image, &dir, port, MAGIC_MAC);
    let took = wait_ready(&vm, Duration::from_secs(240));
    eprintln!("guest ready in {took:.1?}");
    let p = port.to_string();
    let start = Instant::now();
    let out = xtask(&["ssh", "--port", &p, "--", "uname", "-r"]);
    eprintln!("ssh -- uname -r took {:.1?}", start.elapsed());
    assert!(
        out.status.success(),
        "ssh failed:\n{}\nconsole:\n{}",
        text(&out),
        vm.console()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), release);

    let addrs = ok(&[
        "ssh",
        "--port",
        &p,
        "--",
        "/sbin/ip addr show dev eth0; /sbin/ip route; ps",
    ]);
    assert!(addrs.contains("inet 10.0.2.15/24"), "{addrs}");
    assert!(addrs.contains("inet6 fd0:1234:4321::15/64"), "{addrs}");
    assert!(addrs.contains("default via 10.0.2.2"), "{addrs}");
    assert!(
        !addrs.contains("udhcpc"),
        "DHCP still running with the magic MAC:\n{addrs}"
    );
    assert!(
        vm.console().contains("has the magic MAC"),
        "{}",
        vm.console()
    );

    // Nothing was added to the user's known_hosts.
    assert!(!home.join(".ssh/known_hosts").exists());

    // A guest whose host key is not the pinned one is refused: pin another.
    let keys = build.join("ssh-host-keys");
    let saved = dir.join("saved-keys");
    std::fs::rename(&keys, &saved).unwrap();
    std::fs::create_dir_all(&keys).unwrap();
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(keys.join("ssh_host_ed25519_key")),
    );
    let out = xtask(&["ssh", "--port", &p, "--", "true"]);
    let t = text(&out);
    assert!(!out.status.success(), "accepted an unpinned host key:\n{t}");
    assert!(
        t.contains("Host key verification failed") || t.contains("IDENTIFICATION HAS CHANGED"),
        "{t}"
    );
    std::fs::remove_dir_all(&keys).unwrap();
    std::fs::rename(&saved, &keys).unwrap();
    drop(vm);

    // Any other MAC: DHCP (QEMU's user network hands out 10.0.2.15 too).
    let port = free_port();
    let vm = boot(&kernel, &image, &dir, port, "52:54:00:12:34:56");
    wait_ready(&vm, Duration::from_secs(240));
    let p = port.to_string();
    let mut got = String::new();
    // The lease may take a moment after the ready marker.
    for _ in 0..20 {
        let out = xtask(&["ssh", "--port", &p, "--", "/sbin/ip addr show dev eth0; ps"]);
        got = text(&out);
        if out.status.success() && got.contains("inet 10.0.2.15/24") {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        got.contains("inet 10.0.2.15/24") && got.contains("udhcpc"),
        "{got}\nconsole:\n{}",
        vm.console()
    );
    assert!(vm.console().contains("DHCP"), "{}", vm.console());
}
