//! `cargo xtask test`: the one command that runs every test.

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use super::doctor::TOOLS;

#[derive(clap::Args)]
pub struct Flags {
    /// Only check prerequisites; never run apt-get.
    #[arg(long)]
    no_install: bool,
    /// Extra arguments for `cargo test` (after `--`).
    #[arg(last = true)]
    cargo_args: Vec<String>,
}

pub fn run(f: &Flags) -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(crate::config::workspace_root());
    let mut pkgs: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, ..)| testmirror::tools::find_on_path(tool).is_none())
        .map(|(_, pkg, _)| *pkg)
        .collect();
    if super::doctor::glob_boot_kernels().is_empty() {
        pkgs.push("linux-image-amd64");
    }
    pkgs.sort_unstable();
    pkgs.dedup();
    if !pkgs.is_empty() {
        let root = is_root();
        if f.no_install || !root {
            eprintln!(
                "test prerequisites missing: apt-get install {} (tests that need them will fail naming the tool)",
                pkgs.join(" ")
            );
        } else {
            eprintln!("installing test prerequisites: {}", pkgs.join(" "));
            cmd!(sh, "apt-get install -y --no-install-recommends {pkgs...}")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .run()
                .context("apt-get install failed (run `apt-get update` first?)")?;
        }
    }
    let args = &f.cargo_args;
    cmd!(sh, "cargo test --workspace {args...}")
        .run()
        .context("tests failed")?;
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
