//! Booting a kernel + initramfs under QEMU/TCG for tests: the serial
//! console is captured and the run is bounded in time.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

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

/// Boots with `-accel tcg -nographic -no-reboot`; the guest is expected to
/// power off. Fails (with the console so far) after `timeout`.
pub fn boot_tcg(
    kernel: &Utf8Path,
    initrd: &Utf8Path,
    append: &str,
    timeout: Duration,
) -> Result<Boot> {
    let qemu = require_tool("qemu-system-x86_64", "qemu-system-x86")
        .context("qemu-system-x86_64 is missing")?;
    let start = Instant::now();
    let mut child = Command::new(qemu)
        .args([
            "-accel",
            "tcg",
            "-m",
            "512",
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .args([
            "-kernel",
            kernel.as_str(),
            "-initrd",
            initrd.as_str(),
            "-append",
            append,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    loop {
        if let Some(status) = child.try_wait()? {
            let console = reader.join().unwrap_or_default();
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                bail!("qemu exited with {status}: {err}\nconsole:\n{console}");
            }
            return Ok(Boot {
                console,
                elapsed: start.elapsed(),
            });
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let console = reader.join().unwrap_or_default();
            bail!("the guest did not power off within {timeout:?}; console:\n{console}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
