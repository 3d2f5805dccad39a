//! `cargo xtask embed-payload SRC PAYLOAD DST`, the old `embed_payload.sh`.

use anyhow::Result;
use camino::Utf8PathBuf;

#[derive(clap::Args)]
pub struct Flags {
    /// The program or script that will carry the payload.
    src: Utf8PathBuf,
    /// The payload, usually an initramfs.
    payload: Utf8PathBuf,
    /// The executable to write (mode 0755; replaced atomically).
    dst: Utf8PathBuf,
}

pub fn run(f: &Flags) -> Result<()> {
    payload::embed(&f.src, &f.payload, &f.dst)?;
    println!("{}", f.dst);
    Ok(())
}
