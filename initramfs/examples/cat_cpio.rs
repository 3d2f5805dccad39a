//! Lists an initramfs by hand (the real entry point is `cargo xtask
//! cat-cpio`): `cat_cpio IMAGE [MANIFEST]`.

use anyhow::Result;
use camino::Utf8PathBuf;
use rootfs::manifest::Manifest;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(image) = args.first() else {
        anyhow::bail!("usage: cat_cpio IMAGE [MANIFEST]");
    };
    let manifest = args
        .get(1)
        .map(|m| Manifest::load(&Utf8PathBuf::from(m)))
        .transpose()?;
    let listing = initramfs::list(&Utf8PathBuf::from(image))?;
    initramfs::inspect::print(&listing, manifest.as_ref(), &mut std::io::stdout().lock())?;
    Ok(())
}
