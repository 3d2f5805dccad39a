//! `cargo xtask boot-test` against the test image (setup-tinycore from the
//! test mirror, rebuild --skip-kernel) with Debian's kernel under TCG: it
//! reaches bootlocal.sh's ready marker, runs checks on the console shell,
//! powers off, and fails loudly when a check fails or the marker is late.

use std::process::Output;

use camino::Utf8PathBuf;
use testmirror::qemu::{debian_kernel, guest_image, GuestImage};
use testmirror::tools::require_tool;

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

fn setup() -> Option<(tempfile::TempDir, GuestImage, Utf8PathBuf)> {
    require_tool("qemu-system-x86_64", "qemu-system-x86")?;
    let kernel = debian_kernel()?;
    let tmp = tempfile::tempdir().unwrap();
    let dir = Utf8PathBuf::from_path_buf(tmp.path().to_owned()).unwrap();
    let image = guest_image(&dir, XTASK, &[]).unwrap();
    Some((tmp, image, kernel))
}

fn boot_test(image: &GuestImage, kernel: &Utf8PathBuf, extra: &[&str]) -> (Output, String) {
    let out = image
        .xtask(XTASK)
        .args(["boot-test", "--accel", "tcg", "--kernel", kernel.as_str()])
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

/// No QEMU booting this test's image is left running.
fn assert_no_qemu_left(image: &GuestImage) {
    let needle = image.initramfs.as_str();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd);
            assert!(
                !(cmd.contains("qemu-system") && cmd.contains(needle)),
                "a QEMU of this test still runs: {cmd}"
            );
        }
    }
}

#[test]
fn reaches_ready_runs_checks_and_powers_off() {
    let Some((_tmp, image, kernel)) = setup() else {
        return;
    };
    let (out, text) = boot_test(
        &image,
        &kernel,
        &[
            "--expect",
            "tc-config: boot finished",
            "--check",
            "test -L /dev/tty1 && grep -qw nozswap /proc/cmdline",
        ],
    );
    assert!(out.status.success(), "boot-test failed:\n{text}");
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("boot-test: ready after "))
        .unwrap_or_else(|| panic!("no boot time in:\n{text}"))
        .to_string();
    eprintln!("{line}");
    assert!(
        line.ends_with("(TCG), 1 check(s) passed, powered off"),
        "{line}"
    );
    assert!(text.contains("accelerator: TCG (--accel tcg)"), "{text}");
    let secs: f64 = line["boot-test: ready after ".len()..]
        .split('s')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(secs > 0.5 && secs < 180.0, "{line}");
    assert_no_qemu_left(&image);
}

#[test]
fn a_failing_check_or_a_late_marker_fails() {
    let Some((_tmp, image, kernel)) = setup() else {
        return;
    };
    let (out, text) = boot_test(
        &image,
        &kernel,
        &["--check", "echo checking; ls /nonexistent"],
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("the check `echo checking; ls /nonexistent` exited with 1"),
        "{text}"
    );
    assert!(text.contains("checking"), "{text}");

    // Under TCG the guest needs several seconds: 3 is too short, and the
    // QEMU is killed.
    let (out, text) = boot_test(&image, &kernel, &["--timeout", "3"]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "the guest did not print `linux-guest: ready` within 3s; killed qemu-system-x86_64"
        ),
        "{text}"
    );
    assert!(text.contains("--- console ---"), "{text}");
    assert_no_qemu_left(&image);

    let out = image
        .xtask(XTASK)
        .args(["boot-test", "--accel", "tcg"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("bzImage: run `cargo xtask full-build") && err.contains("--kernel FILE"),
        "{err}"
    );
}
