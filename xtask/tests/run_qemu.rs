//! `cargo xtask run-qemu`: the exact README command lines (--dry-run), and
//! the terminal restore, checked in a real terminal: tmux runs run-qemu
//! (Debian's kernel, the test image, TCG), QEMU's firmware turns line wrap
//! off, and after Ctrl-A X, or QEMU being killed, wrap is back on and the
//! termios are as before.

use std::process::Command;
use std::time::{Duration, Instant};

use camino::{Utf8Path, Utf8PathBuf};
use testmirror::qemu::{debian_kernel, guest_image, GuestImage};
use testmirror::tools::require_tool;

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

#[test]
fn dry_run_prints_the_readme_invocations() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = Utf8Path::from_path(tmp.path()).unwrap();
    let (k, i) = (dir.join("bzImage"), dir.join("initramfs.cpio.gz"));
    std::fs::write(&k, b"").unwrap();
    std::fs::write(&i, b"").unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(XTASK)
            .args(["--build-dir", dir.as_str(), "run-qemu", "--dry-run"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        (String::from_utf8(out.stdout).unwrap(), err)
    };
    // The README's tap example (KVM from a stand-in /dev/kvm we can open).
    let (line, err) = run(&["--net", "tap", "--gdb", "--kvm-device", k.as_str()]);
    assert_eq!(
        line.trim(),
        format!(
            "qemu-system-x86_64 -accel kvm -cpu host -smp 8 -m 1024 -nographic -s \
             -kernel {k} -initrd {i} -append 'console=ttyS0 nozswap' \
             -device virtio-net-pci,netdev=vmnet,mac=00:01:02:03:04:0b \
             -netdev tap,id=vmnet,ifname=tap-vm,script=no,downscript=no"
        )
    );
    assert!(err.starts_with("accelerator: KVM ("), "{err}");
    // User networking, TCG chosen because there is no KVM.
    let (line, err) = run(&["--kvm-device", "/nonexistent/kvm", "--append", "quiet"]);
    assert_eq!(
        line.trim(),
        format!(
            "qemu-system-x86_64 -accel tcg -smp 8 -m 1024 -nographic \
             -kernel {k} -initrd {i} -append 'console=ttyS0 nozswap quiet' \
             -netdev user,id=vmnet,hostfwd=tcp:127.0.0.1:5555-:22 -device e1000,netdev=vmnet"
        )
    );
    assert!(
        err.starts_with("accelerator: TCG (/nonexistent/kvm does not exist"),
        "{err}"
    );
    // --accel kvm without KVM is an error, not a silent fallback.
    let out = Command::new(XTASK)
        .args(["--build-dir", dir.as_str(), "run-qemu", "--dry-run"])
        .args(["--accel", "kvm", "--kvm-device", "/nonexistent/kvm"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("--accel kvm: /nonexistent/kvm does not exist") && err.contains("--accel tcg"),
        "{err}"
    );
}

/// A tmux server of our own (its own socket), killed at the end.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        let t = Tmux {
            socket: format!(
                "lg-run-qemu-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            )
            .replace(['(', ')'], ""),
        };
        let ok = Command::new("tmux")
            .args([
                "-L",
                &t.socket,
                "new-session",
                "-d",
                "-x",
                "120",
                "-y",
                "40",
                command,
            ])
            .status()
            .unwrap();
        assert!(ok.success(), "tmux new-session failed");
        t
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wrap(&self) -> String {
        self.tmux(&["display", "-p", "#{wrap_flag}"])
            .trim()
            .to_string()
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p"])
    }

    fn wait(&self, what: &str, timeout: Duration, mut f: impl FnMut(&Tmux) -> bool) {
        let start = Instant::now();
        while !f(self) {
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what}; screen:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

fn setup() -> Option<(tempfile::TempDir, Utf8PathBuf, GuestImage, Utf8PathBuf)> {
    require_tool("tmux", "tmux")?;
    require_tool("qemu-system-x86_64", "qemu-system-x86")?;
    let kernel = debian_kernel()?;
    let tmp = tempfile::tempdir().unwrap();
    let dir = Utf8PathBuf::from_path_buf(tmp.path().to_owned()).unwrap();
    let image = guest_image(&dir, XTASK, &[]).unwrap();
    Some((tmp, dir, image, kernel))
}

/// The pane's script: termios before, run-qemu, its status, termios after.
fn script(dir: &Utf8Path, image: &GuestImage, kernel: &Utf8Path) -> String {
    format!(
        "cd {dir} && stty -g > before && {XTASK} --config {} --build-dir {} run-qemu --accel tcg \
         --net none --smp 1 -m 512 --kernel {kernel}; echo $? > status.tmp; stty -g > after; \
         mv status.tmp status; sleep 600",
        image.config, image.build_dir
    )
}

fn finished(dir: &Utf8Path) -> Option<String> {
    std::fs::read_to_string(dir.join("status"))
        .ok()
        .map(|s| s.trim().to_string())
}

#[test]
fn ctrl_a_x_leaves_the_terminal_wrapping() {
    let Some((_tmp, dir, image, kernel)) = setup() else {
        return;
    };
    let t = Tmux::start(&script(&dir, &image, &kernel));
    // The guest's login shell on the console: a full boot.
    t.wait("the guest's shell prompt", Duration::from_secs(120), |t| {
        t.screen().contains("root@box:~#")
    });
    assert_eq!(t.wrap(), "0", "QEMU's firmware should have turned wrap off");
    t.tmux(&["send-keys", "C-a", "x"]);
    t.wait("run-qemu to exit", Duration::from_secs(30), |_| {
        finished(&dir).is_some()
    });
    assert_eq!(finished(&dir).unwrap(), "0");
    assert_eq!(t.wrap(), "1", "auto-wrap is still off after run-qemu");
    let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
    assert_eq!(read("before"), read("after"), "termios changed");
}

#[test]
fn a_killed_qemu_leaves_the_terminal_restored() {
    let Some((_tmp, dir, image, kernel)) = setup() else {
        return;
    };
    let t = Tmux::start(&script(&dir, &image, &kernel));
    t.wait("QEMU to turn wrap off", Duration::from_secs(60), |t| {
        t.wrap() == "0"
    });
    // SIGKILL: QEMU cannot restore anything itself.
    let needle = image.initramfs.as_str();
    let pid = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .find_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd);
            (cmd.starts_with("qemu-system-x86_64") && cmd.contains(needle))
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
        .expect("our QEMU's pid");
    assert!(Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap()
        .success());
    t.wait("run-qemu to exit", Duration::from_secs(30), |_| {
        finished(&dir).is_some()
    });
    assert_eq!(
        finished(&dir).unwrap(),
        "137",
        "QEMU's death by SIGKILL is propagated"
    );
    assert_eq!(t.wrap(), "1", "auto-wrap is still off after run-qemu");
    let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
    assert_eq!(
        read("before"),
        read("after"),
        "termios not restored after QEMU was killed"
    );
}
