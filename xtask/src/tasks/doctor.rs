//! `cargo xtask doctor`: which host tools are present, and which package
//! brings each missing one.

use anyhow::{bail, Result};

/// (tool, Debian package, what needs it). `cargo xtask test` installs the
/// packages of missing ones when it runs as root.
pub const TOOLS: &[(&str, &str, &str)] = &[
    (
        "ssh-keygen",
        "openssh-client",
        "setup-tinycore: sshd host keys",
    ),
    (
        "ldconfig",
        "libc-bin",
        "setup-tinycore: the guest's linker cache",
    ),
    (
        "unshare",
        "util-linux",
        "setup-tinycore as a plain user: ldconfig in a user namespace",
    ),
    (
        "mksquashfs",
        "squashfs-tools",
        "tests: building .tcz extensions",
    ),
    (
        "unsquashfs",
        "squashfs-tools",
        "tests and bench: the reference extractor",
    ),
    ("cpio", "cpio", "tests and bench: the reference archiver"),
    ("gzip", "gzip", "tests and bench"),
    ("xz", "xz-utils", "tests: xz initramfs"),
    ("zstd", "zstd", "tests: zstd initramfs"),
    ("busybox", "busybox-static", "tests: the test mirror's core"),
    (
        "dropbear",
        "dropbear-bin",
        "tests: sshd in the guest for `ssh`",
    ),
    ("ip", "iproute2", "tap-up/tap-down and their tests"),
    ("tmux", "tmux", "tests: run-qemu under a terminal"),
    (
        "gcc",
        "gcc",
        "tests: a real shared library in the test mirror; kernel builds",
    ),
    (
        "setpriv",
        "util-linux",
        "tests: running as an unprivileged user",
    ),
    ("qemu-system-x86_64", "qemu-system-x86", "boot tests"),
];

pub fn run() -> Result<()> {
    let mut missing = vec![];
    for (tool, pkg, why) in TOOLS {
        match testmirror::tools::find_on_path(tool) {
            Some(p) => println!("ok       {tool:<20} {}", p.display()),
            None => {
                println!("MISSING  {tool:<20} apt-get install {pkg}   ({why})");
                missing.push(*pkg);
            }
        }
    }
    let kernels = glob_boot_kernels();
    if kernels.is_empty() {
        println!("MISSING  /boot/vmlinuz-*       apt-get install linux-image-amd64   (boot tests)");
        missing.push("linux-image-amd64");
    } else {
        println!("ok       {:<20} {}", "/boot/vmlinuz-*", kernels.join(" "));
    }
    if missing.is_empty() {
        println!("all host tools present");
        Ok(())
    } else {
        missing.sort_unstable();
        missing.dedup();
        bail!("missing host tools: apt-get install {}", missing.join(" "))
    }
}

pub fn glob_boot_kernels() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/boot")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("vmlinuz-"))
        .map(|n| format!("/boot/{n}"))
        .collect();
    v.sort();
    v
}
