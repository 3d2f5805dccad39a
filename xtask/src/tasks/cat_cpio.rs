//! `cargo xtask cat-cpio IMG`: the old `cat_cpio_gz.sh`.

use anyhow::{bail, Result};
use camino::Utf8PathBuf;

#[derive(clap::Args)]
pub struct Flags {
    /// The initramfs (gzip, zstd, xz or uncompressed newc cpio).
    image: Utf8PathBuf,
}

pub fn run(_g: &crate::GlobalFlags, f: &Flags) -> Result<()> {
    bail!("cat-cpio {}: not wired yet", f.image)
}
