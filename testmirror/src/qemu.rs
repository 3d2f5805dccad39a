//! Booting a kernel + initramfs under QEMU/TCG for tests: the serial
//! console is captured and the run is bounded in time. The boot loop is
//! `vmm::boot`'s, the one `boot-test` uses.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use vmm::qemu::{Accel, Io, Net, Options, QEMU, QEMU_PACKAGE};

use crate::mirror::{self, Layout};
use crate::server::Server;
use crate::tools::require_tool;

/// Debian's newest `/boot/vmlinuz-*` (package linux-image-amd64); `None`
/// only where missing tools may be skipped (see [`require_tool`]).
pub fn debian_kernel() -> Option<Utf8PathBuf> {
    let p = require_tool("/boot/vmlinuz-*", "linux-image-amd64")?;
    Utf8PathBuf::from_path_buf(p).ok()
}

/// What a boot printed on its serial console.
#[derive(Debug)]
pub struct Boot {
    pub console: String,
    pub elapsed: Duration,
}

/// Boots with `-accel tcg -m 512`, no default devices, no network, never
/// rebooting, ttyS0 on a pipe, and exactly `append` as the command line;
/// the guest is expected to power off. Fails (with the console so far)
/// after `timeout`, killing the QEMU.
pub fn boot_tcg(
    kernel: &Utf8Path,
    initrd: &Utf8Path,
    append: &str,
    timeout: Duration,
) -> Result<Boot> {
    require_tool(QEMU, QEMU_PACKAGE).context("qemu-system-x86_64 is missing")?;
    let mut o = Options::new(kernel.to_owned(), initrd.to_owned(), Accel::Tcg);
    o.smp = 1;
    o.memory_mib = 512;
    o.net = Net::None;
    o.io = Io::Headless;
    o.tc_cmdline = false;
    o.append = vec![append.to_string()];
    let (console, elapsed) = vmm::boot::run_to_poweroff(QEMU, &o.args(), timeout)?;
    Ok(Boot { console, elapsed })
}

/// A Tiny Core image built the user's way, for tests that boot one:
/// `setup-tinycore` from a fresh test mirror, then `rebuild --skip-kernel`.
pub struct GuestImage {
    /// `--config` for further xtask runs.
    pub config: Utf8PathBuf,
    /// `--build-dir`.
    pub build_dir: Utf8PathBuf,
    /// `<build dir>/initramfs.cpio.gz`.
    pub initramfs: Utf8PathBuf,
}

impl GuestImage {
    /// `xtask --config C --build-dir B ARGS` with a clean environment
    /// (PATH, and HOME = `dir`/home).
    pub fn xtask(&self, xtask: &str) -> Command {
        let mut c = Command::new(xtask);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.build_dir.with_file_name("home"))
            .args(["--config", self.config.as_str()])
            .args(["--build-dir", self.build_dir.as_str()]);
        c
    }
}

/// Builds the test mirror in `dir`, serves it for the setup, and runs
/// `xtask` (the binary under test) to set up and pack an image with
/// `packages`. The default rcS: the image boots like a user's, and prints
/// bootlocal.sh's ready marker.
pub fn guest_image(dir: &Utf8Path, xtask: &str, packages: &[&str]) -> Result<GuestImage> {
    for (tool, pkg) in [
        ("mksquashfs", "squashfs-tools"),
        ("busybox", "busybox-static"),
    ] {
        require_tool(tool, pkg).with_context(|| format!("{tool} is missing"))?;
    }
    let built = mirror::build(&dir.join("mirror"), &Layout::tc16_x86_64())?;
    let server = Server::start(built.root.as_std_path())?;
    let config = dir.join("guest.toml");
    let list = packages
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        &config,
        format!(
            "[tinycore]\nmirrors = [\"{}\"]\npackages = [{list}]\n",
            server.url()
        ),
    )
    .with_context(|| format!("cannot write {config}"))?;
    std::fs::create_dir_all(dir.join("home"))?;
    let image = GuestImage {
        config,
        build_dir: dir.join("build"),
        initramfs: dir.join("build/initramfs.cpio.gz"),
    };
    for args in [
        &["setup-tinycore", "--no-progress"][..],
        &["rebuild", "--skip-kernel"][..],
    ] {
        let out = image
            .xtask(xtask)
            .args(args)
            .output()
            .with_context(|| format!("cannot run {xtask}"))?;
        if !out.status.success() {
            bail!(
                "xtask {args:?} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    drop(server);
    Ok(image)
}
