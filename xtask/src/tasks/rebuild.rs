//! `cargo xtask rebuild`: the old `rebuild_cpio_and_linux.sh`. Builds the
//! kernel and its modules (unless skipped), puts the modules into tc_root,
//! packs tc_root + its manifest into the initramfs (reproducible, atomic,
//! a no-op when nothing changed), and embeds it when the kernel's
//! `CONFIG_INITRAMFS_SOURCE` asks for it.

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use initramfs::{Compression, PackOptions, PackReport};
use kernel::{BuildOptions, Source};
use rootfs::manifest::Manifest;

use crate::config::{Config, Overrides};

#[derive(clap::Args)]
#[group(id = "rebuild_flags")]
pub struct Flags {
    /// Do not build the kernel or its modules (env SKIP_KERNEL=1)
    #[arg(long)]
    pub skip_kernel: bool,
    /// gzip[:1-9] (default gzip:6, what the scripts made), zstd[:1-19], xz or none
    #[arg(long, default_value = "gzip", value_name = "KIND[:LEVEL]")]
    pub compression: Compression,
    /// Where to write the initramfs [default: <build dir>/initramfs.cpio<.gz|.zst|.xz>]
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<Utf8PathBuf>,
    /// Repack even when nothing changed
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub kernel: KernelFlags,
}

/// How to build the kernel (shared by `rebuild` and `full-build`).
#[derive(clap::Args, Clone, Default)]
pub struct KernelFlags {
    /// Kernel tree, or a .tar.xz/.tar.gz kernel source tarball unpacked once
    /// into the build directory [env LINUX_REPO]
    #[arg(long, value_name = "PATH")]
    pub linux: Option<Utf8PathBuf>,
    /// Build out of tree in DIR (make O=DIR) [default: in the tree]
    #[arg(long, value_name = "DIR", env = "KBUILD_OUTPUT")]
    pub kernel_out: Option<Utf8PathBuf>,
    /// make -j N [env MAKE_JOBS; default: all cores]
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<usize>,
    /// KEY=VALUE given to every make, e.g. CC="ccache gcc" or LLVM=1 (repeatable)
    #[arg(long = "make-var", value_name = "KEY=VALUE")]
    pub make_vars: Vec<String>,
    /// make V=1, with make's output on the terminal instead of the log
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// The configuration installed as .config [default: kernel.config]; `rebuild`
    /// installs it only when given or when the kernel has no .config yet
    #[arg(long, value_name = "FILE")]
    pub kernel_config: Option<Utf8PathBuf>,
}

impl Flags {
    pub fn apply(&self, o: &mut Overrides) {
        o.skip_kernel = self.skip_kernel;
        self.kernel.apply(o);
    }
}

impl KernelFlags {
    pub fn apply(&self, o: &mut Overrides) {
        o.linux.clone_from(&self.linux);
        o.make_jobs = self.jobs;
    }

    /// The kernel config file to install: the flag, else `kernel.config` at
    /// the top of the workspace.
    pub fn kernel_config(&self, c: &Config) -> Utf8PathBuf {
        self.kernel_config
            .clone()
            .unwrap_or_else(|| c.workspace.join("kernel.config"))
    }
}

/// The initramfs path for a compression: `initramfs.cpio.gz` by default.
pub fn default_output(c: &Config, compression: &Compression) -> Utf8PathBuf {
    c.build_dir
        .value
        .join(format!("initramfs.cpio{}", compression.extension()))
}

/// A located, checked kernel source and how to run Kbuild on it.
pub struct KernelBuild {
    pub src: Source,
    pub opts: BuildOptions,
}

impl KernelBuild {
    /// Finds the source (`--linux`/`LINUX_REPO`), checks the host's build
    /// prerequisites, and sets up O=, -j, make variables and V=1.
    pub fn prepare(c: &Config, f: &KernelFlags) -> Result<KernelBuild> {
        let build_dir = &c.build_dir.value;
        let last = LastKernel::load(build_dir);
        let (linux, origin) = match (&c.linux.value, &last) {
            (Some(l), _) => (l.clone(), c.linux.origin.to_string()),
            (None, Some(last)) => (
                last.linux.clone(),
                format!("the last build, {}", LastKernel::path(build_dir)),
            ),
            (None, None) => bail!("{}", kernel::no_source_message()),
        };
        let kernel_out = match (&f.kernel_out, &last) {
            (Some(o), _) => Some(o.clone()),
            (None, Some(last)) if c.linux.value.is_none() => last.kernel_out.clone(),
            _ => None,
        };
        std::fs::create_dir_all(build_dir)
            .with_context(|| format!("cannot create the build directory {build_dir}"))?;
        let src = Source::locate(&linux, build_dir)
            .with_context(|| format!("cannot use {linux} (from {origin}) as the kernel source"))?;
        if c.linux.value.is_none() {
            eprintln!("kernel source: {linux} (from {origin})");
        }
        if let kernel::Origin::Tarball {
            tarball,
            unpacked_now,
        } = src.origin()
        {
            let how = if *unpacked_now { "unpacked" } else { "reusing" };
            eprintln!("kernel source: {how} {tarball} in {}", src.tree());
        }
        let make_vars = f
            .make_vars
            .iter()
            .map(|v| BuildOptions::parse_make_var(v))
            .collect::<Result<Vec<_>>>()?;
        kernel::check_host(&make_vars)?;
        let opts = BuildOptions {
            out_dir: kernel_out.clone(),
            jobs: c.make_jobs.value,
            make_vars,
            verbose: f.verbose,
            ..BuildOptions::new(build_dir)
        };
        // A plain `rebuild` next time builds the same kernel.
        LastKernel { linux, kernel_out }.save(build_dir)?;
        Ok(KernelBuild { src, opts })
    }

    /// Installs `kernel_config` as `.config` (`make olddefconfig`) and says
    /// what Kconfig dropped or changed.
    pub fn configure(&self, kernel_config: &Utf8Path) -> Result<()> {
        let report = kernel::configure(&self.src, &self.opts, kernel_config)?;
        for w in report.warnings() {
            eprintln!("warning: {w}");
        }
        eprintln!(
            "kernel config: {kernel_config} -> {}{}",
            report.config,
            if report.changed { "" } else { " (unchanged)" }
        );
        Ok(())
    }

    fn has_config(&self) -> bool {
        self.opts.objtree(&self.src).join(".config").is_file()
    }
}

/// The kernel source and O= of the last kernel build in this build
/// directory, so that `rebuild` needs no `--linux` after a `full-build`.
struct LastKernel {
    linux: Utf8PathBuf,
    kernel_out: Option<Utf8PathBuf>,
}

impl LastKernel {
    fn path(build_dir: &Utf8Path) -> Utf8PathBuf {
        build_dir.join("last-kernel")
    }

    /// `linux PATH` and `kernel-out DIR` lines; anything unreadable is
    /// as if there was no last build.
    fn load(build_dir: &Utf8Path) -> Option<LastKernel> {
        let text = std::fs::read_to_string(Self::path(build_dir)).ok()?;
        let mut linux = None;
        let mut kernel_out = None;
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("linux", v)) => linux = Some(Utf8PathBuf::from(v)),
                Some(("kernel-out", v)) => kernel_out = Some(Utf8PathBuf::from(v)),
                _ => {}
            }
        }
        Some(LastKernel {
            linux: linux?,
            kernel_out,
        })
    }

    fn save(&self, build_dir: &Utf8Path) -> Result<()> {
        let abs = |p: &Utf8Path| p.canonicalize_utf8().unwrap_or_else(|_| p.to_owned());
        let mut text = format!("linux {}\n", abs(&self.linux));
        if let Some(o) = &self.kernel_out {
            std::fs::create_dir_all(o).with_context(|| format!("cannot create {o}"))?;
            text.push_str(&format!("kernel-out {}\n", abs(o)));
        }
        rootfs::fsutil::write_atomic(&Self::path(build_dir), text.as_bytes())
    }
}

pub fn run(c: &Config, f: &Flags) -> Result<()> {
    let kernel = if c.skip_kernel.value {
        None
    } else {
        let k = KernelBuild::prepare(c, &f.kernel)?;
        if f.kernel.kernel_config.is_some() || !k.has_config() {
            k.configure(&f.kernel.kernel_config(c))?;
        }
        Some(k)
    };
    run_with(c, f, kernel.as_ref())
}

/// The rebuild proper, with the kernel (already configured) or without.
pub fn run_with(c: &Config, f: &Flags, kernel: Option<&KernelBuild>) -> Result<()> {
    let root = c.tc_root();
    if !root.is_dir() {
        bail!("{root} does not exist: run `cargo xtask setup-tinycore` first");
    }
    let manifest_path = c.manifest_path();
    let mut manifest = Manifest::load(&manifest_path)?;
    let out = f
        .output
        .clone()
        .unwrap_or_else(|| default_output(c, &f.compression));
    let mut opts = PackOptions::from_env(f.compression)?;
    opts.force = f.force;

    let Some(k) = kernel else {
        let removed = kernel::remove_tinycore_modules(&root, &mut manifest)?;
        if !removed.is_empty() {
            manifest.save(&manifest_path)?;
            eprintln!("removed TC's kernel modules: {}", removed.join(", "));
        }
        let report = initramfs::pack(&root, &manifest, &out, &opts)?;
        eprintln!("initramfs: {report}");
        println!("{out}");
        return Ok(());
    };

    // An embedded initramfs must exist before the first make, or Kbuild
    // fails; it is packed again with the new modules below.
    let embedded = kernel::initramfs_source_path(&k.src, &k.opts)?;
    if let Some(path) = &embedded {
        if !path.exists() {
            pack_embedded(&root, &manifest, path, &opts)?;
        }
    }

    let built = kernel::build(&k.src, &k.opts)?;
    if let Some(mods) = &built.modules_dir {
        let report = kernel::install_modules(mods, &root, &mut manifest)?;
        manifest.save(&manifest_path)?;
        eprintln!(
            "modules: {} ({} files, {:.1} MiB) into {root}/lib/modules{}",
            report.releases.join(", "),
            report.files,
            report.bytes as f64 / (1024.0 * 1024.0),
            if report.removed.is_empty() {
                String::new()
            } else {
                format!(", replacing {}", report.removed.join(", "))
            }
        );
    } else {
        let removed = kernel::remove_tinycore_modules(&root, &mut manifest)?;
        if !removed.is_empty() {
            manifest.save(&manifest_path)?;
        }
    }

    let report = initramfs::pack(&root, &manifest, &out, &opts)?;
    eprintln!("initramfs: {report}");
    if let Some(path) = &embedded {
        let embedded_report = if *path == out {
            report
        } else {
            pack_embedded(&root, &manifest, path, &opts)?
        };
        if !embedded_report.up_to_date {
            kernel::relink(&k.src, &k.opts)?;
        }
        eprintln!("embedded in the kernel: {path} (CONFIG_INITRAMFS_SOURCE)");
    }

    // Stable places for run-qemu & co., whatever O= or tree was used.
    let build_dir = &c.build_dir.value;
    let vmlinux = build_dir.join("vmlinux");
    let bz_image = build_dir.join("bzImage");
    copy_atomic(&built.vmlinux, &vmlinux)?;
    copy_atomic(&built.bz_image, &bz_image)?;
    eprintln!("kernel {}", built.release);
    println!("vmlinux   {vmlinux}");
    println!("bzImage   {bz_image}");
    println!("initramfs {out}");
    Ok(())
}

/// Packs for `CONFIG_INITRAMFS_SOURCE`: Kbuild takes `*.cpio` as is and
/// `*.cpio.<gz|zst|xz|...>` already compressed, so the name decides.
fn pack_embedded(
    root: &Utf8Path,
    manifest: &Manifest,
    path: &Utf8Path,
    opts: &PackOptions,
) -> Result<PackReport> {
    let name = path.file_name().unwrap_or_default();
    let compression = if name.ends_with(".cpio") {
        Compression::None
    } else if name.ends_with(".cpio.gz") {
        match opts.compression {
            c @ Compression::Gzip { .. } => c,
            _ => Compression::default(),
        }
    } else if name.ends_with(".cpio.zst") {
        match opts.compression {
            c @ Compression::Zstd { .. } => c,
            _ => "zstd".parse()?,
        }
    } else if name.ends_with(".cpio.xz") {
        Compression::Xz
    } else {
        bail!(
            "CONFIG_INITRAMFS_SOURCE is {path}: name it *.cpio, *.cpio.gz, *.cpio.zst or \
             *.cpio.xz so that it is clear how it is compressed"
        );
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {dir}"))?;
    }
    let opts = PackOptions {
        compression,
        ..opts.clone()
    };
    let report = initramfs::pack(root, manifest, path, &opts)
        .with_context(|| format!("cannot pack the embedded initramfs {path}"))?;
    Ok(report)
}

/// Copies through a temporary file and a rename, so that a VMM never sees
/// half a kernel.
fn copy_atomic(from: &Utf8Path, to: &Utf8Path) -> Result<()> {
    let mut src = std::fs::File::open(from).with_context(|| format!("cannot open {from}"))?;
    let mut dst = rootfs::fsutil::AtomicFile::create(to)?;
    std::io::copy(&mut src, dst.file()).with_context(|| format!("cannot copy {from} to {to}"))?;
    use std::os::unix::fs::PermissionsExt;
    let mode = src
        .metadata()
        .with_context(|| format!("cannot stat {from}"))?
        .permissions()
        .mode();
    dst.file()
        .set_permissions(std::fs::Permissions::from_mode(mode & 0o755))
        .with_context(|| format!("cannot chmod {to}"))?;
    dst.commit()
}
