//! `cargo xtask progs`: the guest helper programs in `progs/` (tinyreboot,
//! vsock-cat, vsock-server) as static, size-optimised musl binaries.
//!
//! `progs/` is a cargo workspace of its own (tinyreboot is `no_std` and
//! would break `cargo test --workspace`), built into `target/progs` so that
//! it never waits for the main target directory's lock.

use std::process::Command;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use crate::config::Config;

/// The guest's target: static binaries run in any x86_64 guest, whatever
/// its C library (Tiny Core's glibc, a bare busybox initramfs, none).
pub const TARGET: &str = "x86_64-unknown-linux-musl";

/// The binaries `progs/` produces, in the order [`build`] returns them.
pub const PROGRAMS: [&str; 3] = ["tinyreboot", "vsock-cat", "vsock-server"];

#[derive(clap::Args)]
pub struct Flags {}

pub fn run(c: &Config, _f: &Flags) -> Result<()> {
    for path in build(&c.workspace)? {
        let size = std::fs::metadata(&path)
            .with_context(|| format!("cannot stat {path}"))?
            .len();
        println!("{path}  {size} bytes ({:.1} KiB)", size as f64 / 1024.0);
    }
    Ok(())
}

/// Builds `<workspace>/progs` for [`TARGET`] in release mode and returns
/// the paths of the binaries named in [`PROGRAMS`].
pub fn build(workspace: &Utf8Path) -> Result<Vec<Utf8PathBuf>> {
    let manifest = workspace.join("progs/Cargo.toml");
    if !manifest.is_file() {
        bail!("{manifest} is missing: is {workspace} the linux-guest workspace?");
    }
    check_target_installed(workspace)?;
    let target_dir = workspace.join("target/progs");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    // current_dir inside the workspace: cargo reads the root
    // .cargo/config.toml (crt-static for the musl target) from there.
    let out = Command::new(&cargo)
        .current_dir(workspace.join("progs"))
        .args(["build", "--release", "--locked", "--target", TARGET])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        .output()
        .with_context(|| format!("cannot run {cargo} (is cargo on PATH?)"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let hint = if missing_target(&stderr) {
            format!("\nthe {TARGET} standard library is missing: rustup target add {TARGET}")
        } else {
            String::new()
        };
        bail!(
            "building {manifest} for {TARGET} failed ({}):\n{}{hint}",
            out.status,
            stderr.trim_end()
        );
    }
    let dir = target_dir.join(TARGET).join("release");
    PROGRAMS
        .iter()
        .map(|p| {
            let path = dir.join(p);
            if path.is_file() {
                Ok(path)
            } else {
                bail!("cargo succeeded but did not produce {path}")
            }
        })
        .collect()
}

/// Fails early, with the fix, when the rustc that cargo will use has no
/// standard library for [`TARGET`] (cargo's own error is a page about
/// `core`).
fn check_target_installed(workspace: &Utf8Path) -> Result<()> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let out = Command::new(&rustc)
        .current_dir(workspace)
        .args(["--print", "sysroot"])
        .output()
        .with_context(|| format!("cannot run {rustc} (the RUSTC variable, else rustc on PATH)"))?;
    if !out.status.success() {
        bail!(
            "`{rustc} --print sysroot` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let lib = Utf8PathBuf::from(sysroot)
        .join("lib/rustlib")
        .join(TARGET)
        .join("lib");
    if !lib.is_dir() {
        bail!("the Rust standard library for {TARGET} is not installed ({lib} is missing): rustup target add {TARGET}");
    }
    Ok(())
}

fn missing_target(stderr: &str) -> bool {
    stderr.contains("target may not be installed")
        || stderr.contains("can't find crate for `core`")
        || stderr.contains("can't find crate for `std`")
}

#[cfg(test)]
mod tests {
    #[test]
    fn recognises_a_missing_target() {
        let stderr = "error[E0463]: can't find crate for `core`\n  = note: the `x86_64-unknown-linux-musl` target may not be installed";
        assert!(super::missing_target(stderr));
        assert!(!super::missing_target("error: linking with `cc` failed"));
    }
}
