//! `cargo xtask rebuild`: pack tc_root into the initramfs.

use anyhow::{bail, Result};

use crate::config::{Config, Overrides};

#[derive(clap::Args)]
pub struct Flags {
    /// Do not build the kernel or its modules (env SKIP_KERNEL=1).
    #[arg(long)]
    skip_kernel: bool,
}

impl Flags {
    pub fn apply(&self, o: &mut Overrides) {
        o.skip_kernel = self.skip_kernel;
    }
}

pub fn run(_c: &Config, _f: &Flags) -> Result<()> {
    bail!("rebuild: not wired yet")
}
