//! `cargo xtask bench`.

use anyhow::{bail, Result};

use crate::config::Config;

#[derive(clap::Args)]
pub struct Flags {}

pub fn run(_c: &Config, _f: &Flags) -> Result<()> {
    bail!("not wired yet")
}
