//! Issue 5's "Done when", as a user types it on this machine (no internet,
//! so Tiny Core comes from the test mirror, whose openssh carries Debian's
//! dropbear as its sshd):
//!
//! 1. `full-build -p openssh --mirror URL`: the project kernel
//!    (kernel.config on Debian's linux-source, in the O= tree shared with
//!    the other kernel tests), progs, Tiny Core, the user's key, rebuild;
//! 2. `run-qemu --accel tcg --net user --ssh-port P` in the background,
//!    until the ready marker is on its console;
//! 3. `ssh --port P -- uname -a` answers from the guest (the project
//!    kernel's `-guest` release), with the host key pinned and the user's
//!    known_hosts untouched;
//! 4. `vm-exec -- uname -r` prints the release and exits 0;
//! 5. `ssh -- poweroff` ends the guest, run-qemu exits 0 and no QEMU is
//!    left;
//! 6. `boot-test` on the same image reaches ready, runs a check, powers off.
//!
//! Run as root (CI), steps 2-5 run as nobody (setpriv): none of them needs
//! root. The first run builds the kernel (~8-10 min) unless the kernel
//! crate's test or full_build.rs already did.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use camino::{Utf8Path, Utf8PathBuf};
use kernel::Source;
use testmirror::kernel_cache;
use testmirror::mirror::{self, Layout};
use testmirror::server::Server;
use testmirror::tools::{require_tool, require_tools};

mod common;
use common::{free_port, Sandbox, XTASK};

const NOBODY: u32 = 65534;
const READY: &str = "linux-guest: ready";

/// How the steps after full-build run xtask: as the user (nobody when the
/// test is root), with the sandbox's HOME, config and build directory.
struct User<'a> {
    sandbox: &'a Sandbox,
    as_nobody: bool,
}

impl User<'_> {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = if self.as_nobody {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={NOBODY}"),
                &format!("--regid={NOBODY}"),
                "--clear-groups",
                XTASK,
            ]);
            c
        } else {
            Command::new(XTASK)
        };
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("HOME", &self.sandbox.home)
            .args(["--config", self.sandbox.config.as_str()])
            .args(["--build-dir", self.sandbox.build.as_str()])
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    fn output(&self, args: &[&str]) -> (Output, Duration) {
        let t = Instant::now();
        let out = self.command(args).output().unwrap();
        (out, t.elapsed())
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `run-qemu` in the background, its stdout and stderr collected. On drop
/// (a failed assertion) it gets SIGTERM, which it passes to QEMU, and any
/// QEMU it started that is still there is killed.
struct RunQemu {
    child: Child,
    output: Arc<Mutex<Vec<u8>>>,
    qemu: Option<u32>,
}

impl RunQemu {
    fn start(mut cmd: Command) -> RunQemu {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        let streams: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for mut s in streams {
            let out = Arc::clone(&output);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        RunQemu {
            child,
            output,
            qemu: None,
        }
    }

    fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Waits for `marker` on the console; notes QEMU's pid on the way.
    fn wait_for(&mut self, marker: &str, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if self.qemu.is_none() {
                self.qemu = children(self.child.id()).into_iter().next();
            }
            if self.output().contains(marker) {
                return start.elapsed();
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!(
                    "run-qemu exited ({st}) before `{marker}`:\n{}",
                    self.output()
                );
            }
            assert!(
                start.elapsed() < timeout,
                "no `{marker}` within {timeout:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                start.elapsed() < timeout,
                "run-qemu still running {timeout:?} after the power-off:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RunQemu {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: a signal to our own child, which has not been reaped.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            for _ in 0..100 {
                if self.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(pid) = self.qemu.filter(|p| alive(*p)) {
            // SAFETY: the QEMU run-qemu started (its child), still there.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// The pids whose parent is `pid` (from /proc/*/stat).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(pid) {
            if let Some(child) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
                out.push(child);
            }
        }
    }
    out
}

/// Running (a zombie or a vanished pid is not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// Running processes whose command line mentions `path`.
fn using(path: &Utf8Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(path.as_str()) && alive(pid) {
            out.push(format!("{pid}: {cmdline}"));
        }
    }
    out
}

/// The home directory ssh itself uses for `~/.ssh` (from the password
/// database, not $HOME).
fn passwd_home(uid: u32) -> Option<Utf8PathBuf> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 5 && f[2] == uid.to_string()).then(|| Utf8PathBuf::from(f[5]))
    })
}

fn read_opt(p: &Utf8Path) -> Option<Vec<u8>> {
    std::fs::read(p).ok()
}

#[test]
fn full_build_run_qemu_ssh_and_vm_exec() {
    let tools = [
        ("/usr/src/linux-source-*.tar.xz", "linux-source-6.1"),
        ("make", "make"),
        ("gcc", "gcc"),
        ("flex", "flex"),
        ("bison", "bison"),
        ("bc", "bc"),
        ("mksquashfs", "squashfs-tools"),
        ("busybox", "busybox-static"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("/usr/sbin/dropbear", "dropbear-bin"),
        ("dropbearconvert", "dropbear-bin"),
    ];
    let Some(found) = require_tools(&tools) else {
        return;
    };
    let found: Vec<Utf8PathBuf> = found
        .into_iter()
        .map(|p| Utf8PathBuf::from_path_buf(p).unwrap())
        .collect();
    let tarball = found[0].clone();
    assert!(
        mirror::openssh_has_real_sshd(),
        "the test mirror's openssh has no real sshd although dropbear is installed"
    );
    let as_nobody = unsafe { libc::geteuid() } == 0;
    if as_nobody {
        require_tool("setpriv", "util-linux").unwrap();
    }

    let tmp = tempfile::tempdir().unwrap();
    let dir = Utf8PathBuf::from_path_buf(tmp.path().to_owned()).unwrap();
    let home = dir.join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    // The user's key, where full-build and ssh look for it by default.
    let key = home.join(".ssh/id_ed25519");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "done-when", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen: {}", text(&out));
    let config = dir.join("guest.toml");
    std::fs::write(
        &config,
        "# done_when_ssh: the defaults, flags on the command line\n",
    )
    .unwrap();
    let sandbox = Sandbox {
        config,
        build: dir.join("build"),
        home: home.clone(),
    };
    let built = mirror::build(&dir.join("mirror"), &Layout::tc16_x86_64()).unwrap();
    let server = Server::start(built.root.as_std_path()).unwrap();

    // 1. full-build, in the O= tree the other kernel tests share; the
    // workspace's kernel.config installed explicitly, since another test
    // may have left its own .config there.
    let kernel_config = kernel_cache::workspace().join("kernel.config");
    let shared = kernel_cache::keyed_dir(&kernel_config, &tarball).unwrap();
    let src = Source::locate(&tarball, &kernel_cache::cache_root()).unwrap();
    let (out, took) = sandbox.run(
        &[
            "full-build",
            "--linux",
            src.tree().as_str(),
            "--kernel-out",
            shared.join("obj").as_str(),
            "--kernel-config",
            kernel_config.as_str(),
            "--mirror",
            &server.url(),
            "-p",
            "openssh",
            "--no-progress",
        ],
        &[],
    );
    eprintln!("full-build took {took:.1?}");
    let release = std::fs::read_to_string(shared.join("obj/include/config/kernel.release"))
        .unwrap()
        .trim()
        .to_string();
    assert!(release.ends_with("-guest"), "{release}\n{out}");
    let root = sandbox.build.join("tc_root");
    assert!(root.join("usr/local/sbin/dropbear").is_file(), "{out}");
    assert!(root.join("root/.ssh/authorized_keys").is_file(), "{out}");

    if as_nobody {
        let out = Command::new("chown")
            .args(["-R", &format!("{NOBODY}:{NOBODY}")])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "chown: {}", text(&out));
    }
    let user = User {
        sandbox: &sandbox,
        as_nobody,
    };
    let ssh_uid = if as_nobody {
        NOBODY
    } else {
        unsafe { libc::geteuid() }
    };
    let real_known_hosts = passwd_home(ssh_uid).map(|h| h.join(".ssh/known_hosts"));
    let known_before = real_known_hosts.as_deref().and_then(read_opt);

    // 2. run-qemu, as in the issue, on a free port.
    let port = free_port().to_string();
    let mut vm = RunQemu::start(user.command(&[
        "run-qemu",
        "--accel",
        "tcg",
        "--net",
        "user",
        "--ssh-port",
        &port,
    ]));
    let ready = vm.wait_for(READY, Duration::from_secs(300));
    eprintln!("run-qemu: ready after {ready:.1?} (TCG, project kernel)");
    let qemu = vm.qemu.expect("run-qemu started no QEMU");
    assert!(vm.output().contains("accelerator: TCG"), "{}", vm.output());

    // 3. ssh answers from the guest.
    let (out, took) = user.output(&["ssh", "--port", &port, "--", "uname", "-a"]);
    eprintln!("ssh -- uname -a: {took:.2?}");
    assert!(
        out.status.success(),
        "ssh failed:\n{}\nrun-qemu:\n{}",
        text(&out),
        vm.output()
    );
    let uname = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        uname.starts_with("Linux ") && uname.contains(&format!(" {release} ")),
        "`uname -a` is not the guest's ({release}): {uname}"
    );
    let (out, took) = user.output(&["ssh", "--port", &port, "--", "uname", "-r"]);
    eprintln!("ssh -- uname -r (a second round trip): {took:.2?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{release}\n"));
    assert!(!home.join(".ssh/known_hosts").exists());
    assert_eq!(
        real_known_hosts.as_deref().and_then(read_opt),
        known_before,
        "ssh changed {real_known_hosts:?}"
    );

    // 4. vm-exec: a fresh guest of its own, next to the running one.
    let (out, took) = user.output(&["vm-exec", "--accel", "tcg", "--", "uname", "-r"]);
    eprintln!("vm-exec -- uname -r: {took:.1?}");
    assert!(out.status.success(), "vm-exec failed:\n{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{release}\n"));

    // 5. Power off through ssh: QEMU exits, and run-qemu with status 0.
    // ssh itself may see the connection drop as the guest goes down.
    let t = Instant::now();
    let (out, _) = user.output(&["ssh", "--port", &port, "--", "/sbin/poweroff"]);
    let status = vm.wait_exit(Duration::from_secs(120));
    eprintln!("power-off to run-qemu's exit: {:.1?}", t.elapsed());
    assert!(
        status.success(),
        "run-qemu: {status}\nssh poweroff:\n{}\n{}",
        text(&out),
        vm.output()
    );
    assert!(!alive(qemu), "QEMU {qemu} is still running");
    drop(vm);
    let left = using(&sandbox.build);
    assert!(
        left.is_empty(),
        "processes using {} are left: {left:?}",
        sandbox.build
    );

    // 6. boot-test on the same full-build image (its bzImage, the default):
    // ready marker, a check on the console, power off.
    let (out, took) = user.output(&[
        "boot-test",
        "--accel",
        "tcg",
        "--check",
        "uname -r",
        "--expect",
        &release,
    ]);
    eprintln!("boot-test: {took:.1?}\n{}", text(&out));
    assert!(out.status.success(), "boot-test failed:\n{}", text(&out));
    assert!(text(&out).contains("ready after"), "{}", text(&out));
}
