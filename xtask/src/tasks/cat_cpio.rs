//! `cargo xtask cat-cpio IMG`: the old `cat_cpio_gz.sh`, plus a summary.

use anyhow::Result;
use camino::Utf8PathBuf;
use rootfs::manifest::Manifest;

use crate::config::Config;

#[derive(clap::Args)]
pub struct Flags {
    /// The initramfs (gzip, zstd, xz or uncompressed newc; concatenations too)
    image: Utf8PathBuf,
    /// Manifest for per-extension totals [default: the build dir's, if present]
    #[arg(long, value_name = "FILE")]
    manifest: Option<Utf8PathBuf>,
}

pub fn run(c: &Config, f: &Flags) -> Result<()> {
    let listing = initramfs::inspect::list(&f.image)?;
    let manifest = match &f.manifest {
        Some(p) => Some(Manifest::load(p)?),
        None => {
            let p = c.manifest_path();
            p.is_file().then(|| Manifest::load(&p)).transpose()?
        }
    };
    let mut out = std::io::stdout().lock();
    initramfs::inspect::print(&listing, manifest.as_ref(), &mut out)?;
    Ok(())
}
