//! `cargo xtask vm-app NAME`: a self-extracting VM app in
//! `<build>/vm-apps/NAME`.
//!
//! 1. The app's initramfs, `<build>/vm-apps/NAME.cpio.gz`: tc_root packed
//!    as `rebuild` packs it (reproducible; a no-op when unchanged), followed
//!    by a second, small archive with the app's rcS (`guest/rcS-NAME`) as
//!    `/etc/init.d/rcS`, `/usr/local/bin/tinyreboot` and the app's guest
//!    programs (mount-fs: `ninep-server`, its 9p server). The kernel unpacks
//!    concatenated archives in order, later entries replacing earlier
//!    ones, so tc_root itself is never touched. With `--remove PATH` or
//!    CUSTOM_REMOVALS naming files still in tc_root, tc_root is first
//!    hard-link-copied to `<build>/vm-apps/NAME.root` and slimmed there.
//! 2. The payload ([`payload::bundle`]): that initramfs and the kernel to
//!    boot it with under QEMU (`--kernel FILE`, default `<build>/bzImage`;
//!    `--no-kernel` to carry none).
//! 3. The app binary (`vm-apps/NAME`), a static musl executable built into
//!    `target/vm-apps`, with the payload embedded after a `PAYLOAD:` line
//!    (`embed-payload`'s format).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use initramfs::{Compression, PackOptions};
use rootfs::manifest::{Kind, Manifest};

use crate::config::Config;
use crate::tasks::progs;

/// A VM app of `vm-apps/`.
pub struct App {
    pub name: &'static str,
    /// The cargo package of the host program.
    pub package: &'static str,
    /// Cargo packages (of the same name as their binary) built alongside
    /// and installed into the guest's `/usr/local/bin`.
    pub guest_programs: &'static [&'static str],
}

pub const APPS: &[App] = &[
    App {
        name: "fdisk",
        package: "vmapp-fdisk",
        guest_programs: &[],
    },
    App {
        name: "mount-fs",
        package: "vmapp-mount-fs",
        guest_programs: &["ninep-server"],
    },
];

#[derive(clap::Args)]
pub struct Flags {
    /// The app: fdisk or mount-fs
    name: String,
    /// The kernel (bzImage) the app carries for QEMU [default: <build dir>/bzImage]
    #[arg(long, value_name = "FILE", conflicts_with = "no_kernel")]
    kernel: Option<Utf8PathBuf>,
    /// Carry no kernel: the app then needs `--kernel` when run with QEMU
    /// (Akaros boots /lib/vmlinux)
    #[arg(long)]
    no_kernel: bool,
    /// Leave PATH (relative to tc_root) out of the app's image; adds to
    /// CUSTOM_REMOVALS (repeatable)
    #[arg(long = "remove", value_name = "PATH")]
    remove: Vec<String>,
    /// The rcS the app's guest runs [default: guest/rcS-NAME]
    #[arg(long, value_name = "FILE")]
    rcs: Option<Utf8PathBuf>,
    /// gzip[:1-9], zstd[:1-19], xz or none, for the app's initramfs
    #[arg(long, default_value = "gzip", value_name = "KIND[:LEVEL]")]
    compression: Compression,
}

pub fn run(c: &Config, f: &Flags) -> Result<()> {
    let Some(app) = APPS.iter().find(|a| a.name == f.name) else {
        let names: Vec<&str> = APPS.iter().map(|a| a.name).collect();
        bail!("no VM app {:?}: the apps are {}", f.name, names.join(", "));
    };
    let name = app.name;
    let build = &c.build_dir.value;
    let root = c.tc_root();
    if !root.is_dir() {
        bail!("{root} does not exist: run `cargo xtask setup-tinycore` (or full-build) first");
    }
    let rcs = f
        .rcs
        .clone()
        .unwrap_or_else(|| c.workspace.join(format!("guest/rcS-{name}")));
    if !rcs.is_file() {
        bail!("the app's rcS {rcs} does not exist");
    }
    let kernel = if f.no_kernel {
        None
    } else {
        let k = f.kernel.clone().unwrap_or_else(|| build.join("bzImage"));
        if !k.is_file() {
            bail!(
                "no kernel to carry: {k} does not exist; build it (`cargo xtask full-build`), \
                 pass --kernel BZIMAGE, or --no-kernel"
            );
        }
        Some(k)
    };
    let out_dir = build.join("vm-apps");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {out_dir}"))?;

    let progs = progs::build(&c.workspace).context("cannot build tinyreboot (progs/)")?;
    let tinyreboot = progs
        .iter()
        .find(|p| p.file_name() == Some("tinyreboot"))
        .context("progs built no tinyreboot")?;
    let mut packages = vec![app.package];
    packages.extend(app.guest_programs);
    let mut built = build_packages(&c.workspace, &packages)?.into_iter();
    let app_bin = built.next().expect("one path per package");
    let mut guest_bins: Vec<Utf8PathBuf> = vec![tinyreboot.clone()];
    guest_bins.extend(built);

    let image = out_dir.join(format!("{name}.cpio{}", f.compression.extension()));
    let mut removals = c.custom_removals.value.clone();
    removals.extend(f.remove.iter().cloned());
    pack_image(c, name, &removals, &rcs, &guest_bins, &image, f.compression)?;
    let payload = out_dir.join(format!(".{name}.payload"));
    write_bundle(&image, kernel.as_deref(), &payload)?;
    let dst = out_dir.join(name);
    let embedded = payload::embed(&app_bin, &payload, &dst);
    let _ = std::fs::remove_file(&payload);
    embedded?;

    let size = |p: &Utf8Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "{name}: program {:.1} MiB + initramfs {:.1} MiB{} = {:.1} MiB",
        mib(size(&app_bin)),
        mib(size(&image)),
        match &kernel {
            Some(k) => format!(" + kernel {:.1} MiB ({k})", mib(size(k))),
            None => " (no kernel)".into(),
        },
        mib(size(&dst))
    );
    println!("{dst}");
    Ok(())
}

/// The app's initramfs: tc_root (slimmed if asked), then the overlay.
fn pack_image(
    c: &Config,
    name: &str,
    removals: &[String],
    rcs: &Utf8Path,
    guest_bins: &[Utf8PathBuf],
    image: &Utf8Path,
    compression: Compression,
) -> Result<()> {
    let out_dir = image.parent().expect("image is in vm-apps/");
    let mut manifest = Manifest::load(&c.manifest_path())?;
    let root = c.tc_root();
    let present: Vec<&String> = removals
        .iter()
        .filter(|r| {
            let rel = r.trim_start_matches('/');
            !rel.is_empty()
                && !rel.split('/').any(|p| p == "..")
                && rootfs::contain::is_plain_path(&root, rel)
        })
        .collect();
    let staged = out_dir.join(format!("{name}.root"));
    rootfs::contain::remove_tree(&staged)?;
    let base_root = if present.is_empty() {
        root.clone()
    } else {
        link_copy(&root, &staged).with_context(|| format!("cannot copy {root} to {staged}"))?;
        for r in &present {
            let rel = r.trim_start_matches('/');
            rootfs::contain::remove_tree(&staged.join(rel))?;
            manifest.remove_tree(&format!("/{rel}"));
            eprintln!("{name}: left out /{rel}");
        }
        staged.clone()
    };

    let base = out_dir.join(format!(".{name}.base.cpio{}", compression.extension()));
    let opts = PackOptions::from_env(compression)?;
    let report = initramfs::pack(&base_root, &manifest, &base, &opts)?;
    eprintln!("{name}: tc_root: {report}");

    // The overlay: directories keep tc_root's metadata (the kernel applies
    // a directory entry's owner and mode to the existing directory).
    let ov = &out_dir.join(format!(".{name}.overlay"));
    rootfs::contain::remove_tree(ov)?;
    let mut ov_manifest = Manifest::new();
    let mut files = vec![("etc/init.d", "rcS", rcs)];
    for b in guest_bins {
        files.push(("usr/local/bin", b.file_name().expect("a binary's path"), b));
    }
    for (dir, file, src) in files {
        std::fs::create_dir_all(ov.join(dir))
            .with_context(|| format!("cannot create {ov}/{dir}"))?;
        let dst = ov.join(dir).join(file);
        std::fs::copy(src, &dst).with_context(|| format!("cannot copy {src} to {dst}"))?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot chmod {dst}"))?;
        let mut path = String::new();
        for comp in dir.split('/') {
            path = format!("{path}/{comp}");
            if let Some(e) = manifest.get(&path).filter(|e| e.kind == Kind::Dir) {
                ov_manifest.insert(&path, e.clone());
            }
        }
    }
    if let Some(e) = manifest.get("/") {
        ov_manifest.insert("/", e.clone());
    }
    let overlay = out_dir.join(format!(".{name}.overlay.cpio{}", compression.extension()));
    let mut ov_opts = opts.clone();
    ov_opts.force = true;
    initramfs::pack(ov, &ov_manifest, &overlay, &ov_opts)?;
    let _ = std::fs::remove_file(initramfs::state_path(&overlay));

    let mut out = rootfs::fsutil::AtomicFile::create(image)?;
    for part in [&base, &overlay] {
        let mut f = std::fs::File::open(part).with_context(|| format!("cannot open {part}"))?;
        std::io::copy(&mut f, out.file()).with_context(|| format!("cannot write {image}"))?;
    }
    out.file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("cannot chmod {image}"))?;
    out.commit()?;
    let _ = std::fs::remove_file(&overlay);
    rootfs::contain::remove_tree(ov)?;
    Ok(())
}

/// Copies the tree `src` to `dst` with hard links for files (cheap, and
/// nothing is ever written through them: removals only unlink), symlinks
/// recreated, directories owner-writable.
fn link_copy(src: &Utf8Path, dst: &Utf8Path) -> Result<()> {
    let md = std::fs::symlink_metadata(src).with_context(|| format!("cannot stat {src}"))?;
    std::fs::create_dir(dst).with_context(|| format!("cannot create {dst}"))?;
    std::fs::set_permissions(
        dst,
        std::fs::Permissions::from_mode((md.mode() & 0o7777) | 0o700),
    )
    .with_context(|| format!("cannot chmod {dst}"))?;
    for ent in src
        .read_dir_utf8()
        .with_context(|| format!("cannot read {src}"))?
    {
        let ent = ent.with_context(|| format!("cannot read {src}"))?;
        let (from, to) = (ent.path(), dst.join(ent.file_name()));
        let ft = ent
            .file_type()
            .with_context(|| format!("cannot stat {from}"))?;
        if ft.is_dir() {
            link_copy(from, &to)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(from).with_context(|| format!("cannot read {from}"))?;
            std::os::unix::fs::symlink(target, &to)
                .with_context(|| format!("cannot create {to}"))?;
        } else if std::fs::hard_link(from, &to).is_err() {
            std::fs::copy(from, &to).with_context(|| format!("cannot copy {from} to {to}"))?;
        }
    }
    Ok(())
}

/// Builds `packages` (each with a binary of its name, but the first:
/// an app, named after the app) as static musl binaries (they run on any
/// x86_64 Linux, guest or host) into `target/vm-apps`, a target directory
/// of its own so it never waits for the main one's lock. Returns their
/// paths in order.
fn build_packages(workspace: &Utf8Path, packages: &[&str]) -> Result<Vec<Utf8PathBuf>> {
    let target_dir = workspace.join("target/vm-apps");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace)
        .args(["build", "--release", "--locked", "--target", progs::TARGET])
        .args(["--config", "profile.release.strip=true"])
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    for p in packages {
        cmd.args(["-p", p]);
    }
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cargo} (is cargo on PATH?)"))?;
    if !out.status.success() {
        bail!(
            "building {} for {} failed ({}); is the target installed \
             (rustup target add {})?\n{}",
            packages.join(", "),
            progs::TARGET,
            out.status,
            progs::TARGET,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    let dir = target_dir.join(progs::TARGET).join("release");
    packages
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let bin = if i == 0 {
                APPS.iter().find(|a| a.package == *p).map_or(*p, |a| a.name)
            } else {
                p
            };
            let path = dir.join(bin);
            if path.is_file() {
                Ok(path)
            } else {
                bail!("cargo succeeded but did not produce {path}")
            }
        })
        .collect()
}

/// Writes the [`payload::bundle`]: header, initramfs, kernel.
fn write_bundle(image: &Utf8Path, kernel: Option<&Utf8Path>, out: &Utf8Path) -> Result<()> {
    let len = |p: &Utf8Path| -> Result<u64> {
        Ok(std::fs::metadata(p)
            .with_context(|| format!("cannot stat {p}"))?
            .len())
    };
    let header = payload::bundle::header(len(image)?, kernel.map(len).transpose()?);
    let mut w = rootfs::fsutil::AtomicFile::create(out)?;
    std::io::Write::write_all(w.file(), &header).with_context(|| format!("cannot write {out}"))?;
    for part in std::iter::once(image).chain(kernel) {
        let mut f = std::fs::File::open(part).with_context(|| format!("cannot open {part}"))?;
        std::io::copy(&mut f, w.file()).with_context(|| format!("cannot write {out}"))?;
    }
    w.commit()
}
