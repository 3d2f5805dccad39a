//! run-cloud-hypervisor, stop and run-akaros through the xtask binary,
//! with fake `cloud-hypervisor` and `vmrunkernel` on PATH (neither can
//! run here: no usable KVM, no Akaros). The fakes record their argv, one
//! argument a line, and the test checks it exactly.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::process::{Command, Output};

use camino::{Utf8Path, Utf8PathBuf};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

struct Env {
    _tmp: tempfile::TempDir,
    dir: Utf8PathBuf,
    build: Utf8PathBuf,
    bin: Utf8PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Utf8PathBuf::from_path_buf(tmp.path().to_owned()).unwrap();
        let build = dir.join("build");
        let bin = dir.join("bin");
        std::fs::create_dir_all(&build).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(build.join("vmlinux"), b"kernel").unwrap();
        std::fs::write(build.join("initramfs.cpio.gz"), b"initramfs").unwrap();
        Env {
            _tmp: tmp,
            dir,
            build,
            bin,
        }
    }

    fn fake(&self, name: &str, body: &str) {
        let p = self.bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn xtask(&self, args: &[&str]) -> Output {
        let path = format!("{}:{}", self.bin, std::env::var("PATH").unwrap());
        Command::new(XTASK)
            .env_clear()
            .env("PATH", path)
            .env("HOME", self.dir.join("home"))
            .env("LOG", self.dir.join("log"))
            .args(["--build-dir", self.build.as_str()])
            .args(args)
            .output()
            .unwrap()
    }

    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Records argv, then checks run-cloud-hypervisor wrote its pid next to
/// the API socket while it runs.
const FAKE_CH: &str = r#"for a in "$@"; do printf '%s\n' "$a" >> "$LOG"; done
sock=$2
sleep 0.2
[ -f "$sock.pid" ] && echo "pid $(cat "$sock.pid")" >> "$LOG"
echo "fake pid $$" >> "$LOG"
exit ${FAKE_EXIT:-0}
"#;

#[test]
fn run_cloud_hypervisor_runs_the_readmes_command_line() {
    let e = Env::new();
    e.fake("cloud-hypervisor", FAKE_CH);
    let sock = e.build.join("cloud-hypervisor.sock");
    // A stale socket from a crashed run is cleared, not an error.
    drop(UnixListener::bind(&sock).unwrap());
    let out = e.xtask(&["run-cloud-hypervisor", "--kvm-device", "/dev/null"]);
    assert!(out.status.success(), "{}", text(&out));
    let log = e.log();
    let b = &e.build;
    let want = [
        "--api-socket".to_string(),
        sock.to_string(),
        "--console".into(),
        "off".into(),
        "--serial".into(),
        "tty".into(),
        "--cpus".into(),
        "boot=8".into(),
        "--memory".into(),
        "size=1024M".into(),
        "--kernel".into(),
        b.join("vmlinux").to_string(),
        "--initramfs".into(),
        b.join("initramfs.cpio.gz").to_string(),
        "--cmdline".into(),
        "console=ttyS0 nozswap".into(),
        "--net".into(),
        "tap=tap-vm,mac=00:01:02:03:04:0b,ip=,mask=".into(),
    ];
    assert_eq!(log[..want.len()], want, "{log:#?}");
    // The pid file held the VMM's pid while it ran, and is gone after.
    let fake_pid = log
        .iter()
        .find_map(|l| l.strip_prefix("fake pid "))
        .unwrap();
    assert!(log.contains(&format!("pid {fake_pid}")), "{log:#?}");
    assert!(!sock.exists() && !Utf8Path::new(&format!("{sock}.pid")).exists());

    // Flags reach the command line; no network on request.
    std::fs::remove_file(e.dir.join("log")).unwrap();
    let other = e.dir.join("k");
    std::fs::write(&other, b"k").unwrap();
    let out = e.xtask(&[
        "run-cloud-hypervisor",
        "--kvm-device",
        "/dev/null",
        "--cpus",
        "2",
        "--memory",
        "512",
        "--kernel",
        other.as_str(),
        "--cmdline",
        "console=ttyS0 quiet",
        "--no-net",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let log = e.log();
    for pair in [
        ["--cpus", "boot=2"],
        ["--memory", "size=512M"],
        ["--kernel", other.as_str()],
        ["--cmdline", "console=ttyS0 quiet"],
    ] {
        assert!(log.windows(2).any(|w| w == pair), "{pair:?} in {log:#?}");
    }
    assert!(!log.iter().any(|l| l == "--net"), "{log:#?}");
}

#[test]
fn run_cloud_hypervisor_errors() {
    let e = Env::new();
    e.fake("cloud-hypervisor", FAKE_CH);
    // No KVM: a clear error, and the VMM never starts.
    let out = e.xtask(&[
        "run-cloud-hypervisor",
        "--kvm-device",
        e.dir.join("no-kvm").as_str(),
    ]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("needs KVM") && t.contains("no-kvm"), "{t}");
    assert!(e.log().is_empty(), "started anyway: {:?}", e.log());

    // No kernel: says how to make one.
    let out = e.xtask(&[
        "run-cloud-hypervisor",
        "--kvm-device",
        "/dev/null",
        "--kernel",
        e.dir.join("nope").as_str(),
    ]);
    let t = text(&out);
    assert!(
        !out.status.success() && t.contains("cargo xtask full-build"),
        "{t}"
    );
    assert!(e.log().is_empty());

    // The VMM fails: so do we, saying how.
    let out = Command::new(XTASK)
        .env(
            "PATH",
            format!("{}:{}", e.bin, std::env::var("PATH").unwrap()),
        )
        .env("LOG", e.dir.join("log"))
        .env("FAKE_EXIT", "3")
        .args([
            "--build-dir",
            e.build.as_str(),
            "run-cloud-hypervisor",
            "--kvm-device",
            "/dev/null",
        ])
        .output()
        .unwrap();
    let t = text(&out);
    assert!(!out.status.success() && t.contains("exit status: 3"), "{t}");

    // A live VMM on the socket: refuse to start a second one.
    let sock = e.build.join("cloud-hypervisor.sock");
    let _live = UnixListener::bind(&sock).unwrap();
    let out = e.xtask(&["run-cloud-hypervisor", "--kvm-device", "/dev/null"]);
    let t = text(&out);
    assert!(
        !out.status.success() && t.contains("already running"),
        "{t}"
    );
}

#[test]
fn stop_talks_to_the_api_socket() {
    let e = Env::new();
    let out = e.xtask(&["stop"]);
    let t = text(&out);
    assert!(
        !out.status.success() && t.contains("no Cloud Hypervisor is running"),
        "{t}"
    );

    // A VMM that answers the power button but keeps running (its pid is
    // this test's) gets vmm.shutdown after --timeout; then it "exits".
    let sock = e.build.join("cloud-hypervisor.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let mut vmm = Command::new("sleep").arg("60").spawn().unwrap();
    std::fs::write(format!("{sock}.pid"), format!("{}\n", vmm.id())).unwrap();
    let server = std::thread::spawn(move || {
        let mut seen = vec![];
        let mut conns = vec![];
        for _ in 0..2 {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            if req.contains("vmm.shutdown") {
                // Left a zombie until reaped below: `stop` must see it as gone.
                vmm.kill().unwrap();
            }
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
            seen.push(req.lines().next().unwrap_or_default().to_string());
            conns.push(s);
        }
        let _ = vmm.kill();
        vmm.wait().unwrap();
        seen
    });
    let out = e.xtask(&["stop", "--timeout", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("vmm.shutdown"), "{}", text(&out));
    assert_eq!(
        server.join().unwrap(),
        [
            "PUT /api/v1/vm.power-button HTTP/1.1",
            "PUT /api/v1/vmm.shutdown HTTP/1.1"
        ]
    );
    assert!(!sock.exists());
}

#[test]
fn run_akaros_writes_the_files_and_runs_vmrunkernel() {
    let e = Env::new();
    // Records argv and the contents of the -k and -n files.
    e.fake(
        "vmrunkernel",
        r#"for a in "$@"; do printf '%s\n' "$a" >> "$LOG"; done
while [ $# -gt 0 ]; do
	case $1 in
	-k|-n) echo "== $1" >> "$LOG.files"; cat "$2" >> "$LOG.files"; shift ;;
	esac
	shift
done
"#,
    );
    let out = e.xtask(&["run-akaros"]);
    assert!(out.status.success(), "{}", text(&out));
    let b = &e.build;
    assert_eq!(
        e.log(),
        [
            "-k",
            b.join("akaros/guest_cmdline").as_str(),
            "-n",
            b.join("akaros/vnet_opts").as_str(),
            "-N",
            "8",
            "-i",
            b.join("initramfs.cpio.gz").as_str(),
            b.join("vmlinux").as_str(),
        ]
    );
    assert_eq!(
        std::fs::read_to_string(e.dir.join("log.files")).unwrap(),
        "== -k\nconsole=hvc0\nmitigations=off\nnozswap\n\
         == -n\nsnoop\nnat_timeout = 30\nmap_diagnostics\nport:tcp:23:22\n"
    );

    // Every option selectable; --print prints instead of running.
    std::fs::remove_file(e.dir.join("log")).unwrap();
    let out = e.xtask(&[
        "run-akaros",
        "--print",
        "--earlyprintk",
        "--cpus",
        "2",
        "--no-snoop",
        "--no-map-diagnostics",
        "--nat-timeout",
        "5",
        "--port",
        "tcp:2222:22",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(e.log().is_empty(), "--print ran vmrunkernel");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "vmrunkernel -k {b}/akaros/guest_cmdline -n {b}/akaros/vnet_opts -N 2 -i {b}/initramfs.cpio.gz {b}/vmlinux"
        )
    );
    assert_eq!(
        std::fs::read_to_string(b.join("akaros/guest_cmdline")).unwrap(),
        "earlyprintk=akaros\nconsole=hvc0\nmitigations=off\nnozswap\n"
    );
    assert_eq!(
        std::fs::read_to_string(b.join("akaros/vnet_opts")).unwrap(),
        "nat_timeout = 5\nport:tcp:2222:22\n"
    );

    // Without vmrunkernel (not on Akaros): says to use --print.
    std::fs::remove_file(e.bin.join("vmrunkernel")).unwrap();
    let out = Command::new(XTASK)
        .env("PATH", e.bin.as_str())
        .args(["--build-dir", e.build.as_str(), "run-akaros"])
        .output()
        .unwrap();
    let t = text(&out);
    assert!(!out.status.success() && t.contains("--print"), "{t}");
}
