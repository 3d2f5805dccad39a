//! `cargo xtask progs`: the guest helper programs are built as static,
//! stripped musl binaries of the promised size, parse their arguments, and
//! do their job: tinyreboot powers off a real QEMU guest (Debian's kernel,
//! TCG), and vsock-server/vsock-cat talk over vsock loopback inside it (the
//! host here has no loopback transport).
//!
//! Never run tinyreboot on the host as root without `--help`: it would
//! power off the machine. The host runs below drop every capability first.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use camino::{Utf8Path, Utf8PathBuf};
use goblin::elf::{program_header::PT_INTERP, Elf};
use initramfs::{Compression, PackOptions};
use rootfs::manifest::Manifest;
use testmirror::tools::require_tool;

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");
const NAMES: [&str; 3] = ["tinyreboot", "vsock-cat", "vsock-server"];
const TINYREBOOT_BUDGET: u64 = 64 * 1024;

/// The three binaries, built once per test run by `xtask progs`.
fn programs() -> &'static [Utf8PathBuf] {
    static BUILT: OnceLock<Vec<Utf8PathBuf>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let t = Instant::now();
        let out = Command::new(XTASK)
            .arg("progs")
            .output()
            .expect("xtask runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!(
            "--- xtask progs ({:.1?})\n{stdout}{}",
            t.elapsed(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "xtask progs failed: {}", out.status);
        // Each line: PATH  SIZE bytes (N KiB)
        let paths: Vec<Utf8PathBuf> = stdout
            .lines()
            .map(|l| {
                let (path, rest) = l.split_once("  ").expect("PATH  SIZE bytes");
                let size: u64 = rest.split(' ').next().unwrap().parse().unwrap();
                let path = Utf8PathBuf::from(path);
                assert_eq!(std::fs::metadata(&path).unwrap().len(), size, "{l}");
                path
            })
            .collect();
        let names: Vec<&str> = paths.iter().map(|p| p.file_name().unwrap()).collect();
        assert_eq!(names, NAMES, "xtask progs printed:\n{stdout}");
        paths
    })
}

fn program(name: &str) -> &'static Utf8Path {
    let i = NAMES.iter().position(|n| *n == name).unwrap();
    &programs()[i]
}

fn run(name: &str, args: &[&str]) -> Output {
    Command::new(program(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
}

#[test]
fn binaries_are_static_stripped_and_small() {
    for path in programs() {
        let bytes = std::fs::read(path).unwrap();
        let elf = Elf::parse(&bytes).unwrap_or_else(|e| panic!("{path}: not ELF: {e}"));
        assert_eq!(
            elf.header.e_machine,
            goblin::elf::header::EM_X86_64,
            "{path}"
        );
        assert!(
            elf.program_headers.iter().all(|ph| ph.p_type != PT_INTERP),
            "{path} has a PT_INTERP: it needs a dynamic loader"
        );
        assert_eq!(elf.interpreter, None, "{path}");
        assert!(
            elf.libraries.is_empty(),
            "{path} needs shared libraries (DT_NEEDED): {:?}",
            elf.libraries
        );
        assert!(elf.syms.is_empty(), "{path} is not stripped");
        eprintln!("{path}: {} bytes", bytes.len());
    }
    let size = std::fs::metadata(program("tinyreboot")).unwrap().len();
    assert!(
        size <= TINYREBOOT_BUDGET,
        "tinyreboot is {size} bytes, over its {TINYREBOOT_BUDGET}-byte budget"
    );
}

#[test]
fn help_names_each_program_and_exits_0() {
    for name in NAMES {
        for flag in ["--help", "-h"] {
            let out = run(name, &[flag]);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{name} {flag}: {}", out.status);
            assert!(
                stdout.starts_with(&format!("usage: {name} ")),
                "{name} {flag} printed:\n{stdout}"
            );
            assert!(out.stderr.is_empty(), "{name} {flag} wrote to stderr");
        }
    }
}

#[test]
fn bad_arguments_print_usage_and_exit_2() {
    let cases: &[(&str, &[&str], &str)] = &[
        ("tinyreboot", &["--bogus"], "unknown argument '--bogus'"),
        ("tinyreboot", &["--halt", "--reboot"], "at most one"),
        ("vsock-cat", &[], "expected CID PORT, got 0 arguments"),
        ("vsock-cat", &["3"], "expected CID PORT, got 1 arguments"),
        (
            "vsock-cat",
            &["3", "5000", "x"],
            "expected CID PORT, got 3 arguments",
        ),
        ("vsock-cat", &["guest", "5000"], "bad CID 'guest'"),
        ("vsock-cat", &["3", "port"], "bad port 'port'"),
        ("vsock-server", &[], "missing PORT"),
        ("vsock-server", &["--once"], "missing PORT"),
        ("vsock-server", &["x"], "bad port 'x'"),
        (
            "vsock-server",
            &["5000", "--"],
            "`--` must be followed by a command",
        ),
        (
            "vsock-server",
            &["5000", "cat"],
            "unexpected argument 'cat'",
        ),
        (
            "vsock-server",
            &["--bogus", "5000"],
            "unknown option '--bogus'",
        ),
    ];
    for (name, args, msg) in cases {
        let out = run(name, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name} {args:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!("{name}: {msg}")),
            "{name} {args:?}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("usage: {name} ")),
            "{name} {args:?}: no usage: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{name} {args:?} wrote to stdout");
    }
}

#[test]
fn a_missing_musl_target_names_the_rustup_command() {
    // A rustc whose sysroot has no musl standard library.
    let tmp = tempfile::tempdir().unwrap();
    let sysroot = tmp.path().join("sysroot");
    std::fs::create_dir_all(sysroot.join("lib/rustlib/x86_64-unknown-linux-gnu/lib")).unwrap();
    let rustc = tmp.path().join("rustc");
    std::fs::write(&rustc, format!("#!/bin/sh\necho {}\n", sysroot.display())).unwrap();
    std::fs::set_permissions(&rustc, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(XTASK)
        .arg("progs")
        .env("RUSTC", &rustc)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is not installed")
            && stderr
                .trim_end()
                .ends_with("rustup target add x86_64-unknown-linux-musl"),
        "{stderr}"
    );
}

/// Whether this process could reboot the machine (CAP_SYS_BOOT is bit 22
/// of the effective or ambient capability set).
fn has_cap_sys_boot() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().any(|l| {
        let Some((key, hex)) = l.split_once(":\t") else {
            return false;
        };
        matches!(key, "CapEff" | "CapAmb")
            && u64::from_str_radix(hex.trim(), 16).unwrap() & (1 << 22) != 0
    })
}

#[test]
fn tinyreboot_without_cap_sys_boot_fails_cleanly() {
    // A copy that the unprivileged user can reach.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = tmp.path().join("tinyreboot");
    std::fs::copy(program("tinyreboot"), &bin).unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(
            !has_cap_sys_boot(),
            "refusing to run tinyreboot: this non-root process has CAP_SYS_BOOT"
        );
    }
    for (args, rb) in [
        (&[][..], "RB_POWER_OFF"),
        (&["--poweroff"][..], "RB_POWER_OFF"),
        (&["--halt"][..], "RB_HALT_SYSTEM"),
        (&["--reboot"][..], "RB_AUTOBOOT"),
    ] {
        let mut cmd = if root {
            require_tool("setpriv", "util-linux").unwrap();
            // nobody, and no capabilities left even to a setuid file.
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs",
            ]);
            c.arg(&bin);
            c
        } else {
            Command::new(&bin)
        };
        let out = cmd.args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "tinyreboot {args:?}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "tinyreboot: reboot({rb}) failed: Operation not permitted"
            )),
            "tinyreboot {args:?}: {stderr}"
        );
        assert!(stderr.contains("CAP_SYS_BOOT"), "{stderr}");
    }
}

/// The guest's /init: vsock echo and command round trips over loopback,
/// then tinyreboot. Markers start with `PROGS-`.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t devtmpfs devtmpfs /dev
echo PROGS-INIT
for m in vsock vmw_vsock_virtio_transport_common vsock_loopback; do
  insmod /lib/modules/$m.ko || echo "PROGS-INSMOD-FAILED $m"
done
# Waits until vsock-server (stderr in $1) listens.
listening() {
  for i in $(seq 300); do
    grep -q 'listening on port' "$1" && return 0
    sleep 0.1
  done
  echo "PROGS-NOT-LISTENING $(cat "$1")"
}
/vsock-server --once 5000 2>/tmp/echo.log &
listening /tmp/echo.log
echo "hello over vsock" | /vsock-cat local 5000 >/tmp/echo.out
echo "PROGS-CAT-EXIT $?"
wait $!
echo "PROGS-ECHO-SERVER-EXIT $?"
echo "PROGS-ECHO [$(cat /tmp/echo.out)]"
/vsock-server --once 5001 -- /bin/sh -c 'tr a-z A-Z; echo done; exit 7' 2>/tmp/cmd.log &
listening /tmp/cmd.log
printf 'one\ntwo\n' | /vsock-cat 1 5001 >/tmp/cmd.out
echo "PROGS-CMD-CAT-EXIT $?"
wait $!
echo "PROGS-CMD-SERVER-EXIT $?"
echo "PROGS-CMD [$(tr '\n' ' ' </tmp/cmd.out)]"
/vsock-cat 1 5002 </dev/null
echo "PROGS-REFUSED-EXIT $?"
echo PROGS-TINYREBOOT
/tinyreboot
echo "PROGS-TINYREBOOT-RETURNED $?"
poweroff -f
"#;

#[test]
fn in_a_qemu_guest_vsock_round_trips_and_tinyreboot_powers_off() {
    let Some(busybox) = require_tool("/bin/busybox", "busybox-static") else {
        return;
    };
    let Some(kernel) = testmirror::qemu::debian_kernel() else {
        return;
    };
    let release = kernel
        .file_name()
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .expect("/boot/vmlinuz-RELEASE");
    // vsock loopback (CID 1) inside the guest; Debian builds it as modules.
    let mut modules = Vec::new();
    for m in [
        "vsock",
        "vmw_vsock_virtio_transport_common",
        "vsock_loopback",
    ] {
        let p = format!("/lib/modules/{release}/kernel/net/vmw_vsock/{m}.ko");
        let Some(p) = require_tool(&p, "linux-image-amd64") else {
            return;
        };
        modules.push((m, p));
    }

    let tmp = tempfile::tempdir().unwrap();
    let tmp = Utf8Path::from_path(tmp.path()).unwrap().to_owned();
    let root = tmp.join("root");
    for d in ["bin", "dev", "proc", "tmp", "lib/modules"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    for name in NAMES {
        std::fs::copy(program(name), root.join(name)).unwrap();
    }
    for (m, p) in &modules {
        std::fs::copy(p, root.join(format!("lib/modules/{m}.ko"))).unwrap();
    }
    std::fs::write(root.join("init"), INIT).unwrap();
    std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The kernel opens /dev/console for init's output before init runs.
    let manifest = Manifest::from_text(
        "dir /dev 0755 0 0\nnod /dev/console 0600 0 0 c 5 1\n",
        "progs test",
    )
    .unwrap();
    let initrd = tmp.join("initramfs.cpio.gz");
    initramfs::pack(
        &root,
        &manifest,
        &initrd,
        &PackOptions::new(Compression::Gzip { level: 6 }),
    )
    .unwrap();

    // No panic=: a panicking guest hangs until the timeout instead of
    // exiting QEMU like a power off would.
    let boot = testmirror::qemu::boot_tcg(
        &kernel,
        &initrd,
        "console=ttyS0 quiet",
        Duration::from_secs(300),
    )
    .expect("the guest powers itself off (QEMU exits by itself)");
    let console = boot.console.replace('\r', "");
    eprintln!("--- guest console ({:.1?})\n{console}", boot.elapsed);
    // The first line may start with the firmware's terminal escapes.
    let has = |line: &str| console.lines().any(|l| l.trim_end().ends_with(line));

    assert!(has("PROGS-INIT"), "init did not run");
    assert!(!console.contains("PROGS-INSMOD-FAILED"), "insmod failed");
    assert!(
        !console.contains("PROGS-NOT-LISTENING"),
        "vsock-server did not listen"
    );
    assert!(has("PROGS-CAT-EXIT 0"), "vsock-cat (echo) failed");
    assert!(
        has("PROGS-ECHO-SERVER-EXIT 0"),
        "vsock-server --once (echo) failed"
    );
    assert!(has("PROGS-ECHO [hello over vsock]"), "no echo");
    assert!(has("PROGS-CMD-CAT-EXIT 0"), "vsock-cat (command) failed");
    assert!(
        has("PROGS-CMD-SERVER-EXIT 7"),
        "vsock-server --once did not exit with the command's status"
    );
    assert!(has("PROGS-CMD [ONE TWO done ]"), "command output");
    assert!(has("PROGS-REFUSED-EXIT 1"), "connecting to a closed port");
    assert!(
        console.contains("vsock-cat: CID 1 port 5002: connect: Connection reset by peer")
            || console.contains("vsock-cat: CID 1 port 5002: connect: Connection refused"),
        "no clear error for a closed port"
    );
    assert!(has("PROGS-TINYREBOOT"));
    assert!(
        !console.contains("PROGS-TINYREBOOT-RETURNED"),
        "tinyreboot returned instead of powering off"
    );
    assert!(
        console.contains("reboot: Power down"),
        "the kernel did not power down"
    );
    assert!(!console.contains("Kernel panic"), "the guest panicked");
}
