//! `cargo xtask rebuild`: the old `rebuild_cpio_and_linux.sh`. Packs
//! tc_root + its manifest into the initramfs (reproducible, atomic, a no-op
//! when nothing changed).

use anyhow::{bail, Result};
use camino::{Utf8Path, Utf8PathBuf};
use initramfs::{Compression, PackOptions};
use rootfs::manifest::Manifest;

use crate::config::{Config, Overrides};

#[derive(clap::Args)]
pub struct Flags {
    /// Do not build the kernel or its modules (env SKIP_KERNEL=1)
    #[arg(long)]
    skip_kernel: bool,
    /// gzip[:1-9] (default gzip:6, what the scripts made), zstd[:1-19], xz or none
    #[arg(long, default_value = "gzip", value_name = "KIND[:LEVEL]")]
    compression: Compression,
    /// Where to write the initramfs [default: <build dir>/initramfs.cpio<.gz|.zst|.xz>]
    #[arg(long, short, value_name = "FILE")]
    output: Option<Utf8PathBuf>,
    /// Repack even when nothing changed
    #[arg(long)]
    force: bool,
}

impl Flags {
    pub fn apply(&self, o: &mut Overrides) {
        o.skip_kernel = self.skip_kernel;
    }
}

/// The initramfs path for a compression: `initramfs.cpio.gz` by default.
pub fn default_output(c: &Config, compression: &Compression) -> Utf8PathBuf {
    c.build_dir
        .value
        .join(format!("initramfs.cpio{}", compression.extension()))
}

pub fn run(c: &Config, f: &Flags) -> Result<()> {
    let root = c.tc_root();
    if !root.is_dir() {
        bail!("{root} does not exist: run `cargo xtask setup-tinycore` first");
    }
    if !c.skip_kernel.value {
        bail!(
            "building the kernel is not available yet; run `cargo xtask rebuild --skip-kernel` \
             (or SKIP_KERNEL=1) to pack the initramfs only"
        );
    }
    let mut manifest = Manifest::load(&c.manifest_path())?;
    remove_tinycore_modules(&root, &mut manifest)?;
    let out = f
        .output
        .clone()
        .unwrap_or_else(|| default_output(c, &f.compression));
    let mut opts = PackOptions::from_env(f.compression)?;
    opts.force = f.force;
    let report = initramfs::pack(&root, &manifest, &out, &opts)?;
    eprintln!("{report}");
    println!("{out}");
    Ok(())
}

/// SKIP_KERNEL: the old script removed only TC's own modules
/// (`lib/modules/*tinycore*`), which belong to a kernel we do not boot.
fn remove_tinycore_modules(root: &Utf8Path, manifest: &mut Manifest) -> Result<()> {
    let dir = root.join("lib/modules");
    let Ok(rd) = dir.read_dir_utf8() else {
        return Ok(());
    };
    let mut removed = false;
    for ent in rd.flatten() {
        if ent.file_name().contains("tinycore") {
            rootfs::contain::remove_tree(ent.path())?;
            manifest.remove_tree(&format!("/lib/modules/{}", ent.file_name()));
            eprintln!("removed TC's kernel modules {}", ent.path());
            removed = true;
        }
    }
    if removed {
        manifest.save(&root.with_file_name("tc_root.manifest"))?;
    }
    Ok(())
}
