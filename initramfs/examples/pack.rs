//! Packs a directory by hand (for measurements; the real entry point is
//! `cargo xtask rebuild`): `pack ROOT OUT [COMPRESSION] [MANIFEST]`.

use anyhow::{Context, Result};
use camino::Utf8PathBuf;
use rootfs::manifest::Manifest;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, out, rest @ ..] = &args[..] else {
        anyhow::bail!("usage: pack ROOT OUT [gzip[:N]|zstd[:N]|xz|none] [MANIFEST]");
    };
    let compression = rest.first().map_or(Ok(Default::default()), |c| c.parse())?;
    let manifest = match rest.get(1) {
        Some(m) => Manifest::load(&Utf8PathBuf::from(m))?,
        None => Manifest::new(),
    };
    let opts = initramfs::PackOptions::from_env(compression)?;
    let report = initramfs::pack(
        &Utf8PathBuf::from(root),
        &manifest,
        &Utf8PathBuf::from(out),
        &opts,
    )
    .with_context(|| format!("packing {root} failed"))?;
    println!("{report}");
    Ok(())
}
