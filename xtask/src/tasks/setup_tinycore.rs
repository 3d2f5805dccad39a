//! `cargo xtask setup-tinycore`: the old `setup_tinycore.sh`, without root.

use anyhow::Result;
use camino::Utf8PathBuf;
use tinycore::deps::KernelDeps;
use tinycore::mirror::Progress;
use tinycore::setup::{self, Plan};

use crate::config::{Config, Overrides};

#[derive(clap::Args)]
#[group(id = "setup_tinycore_flags")]
pub struct Flags {
    /// Mirror base URL (repeat to try several in order) [env TC_MIRROR]
    #[arg(long = "mirror", value_name = "URL")]
    mirrors: Vec<String>,
    /// Tiny Core release, e.g. 16.x or 7.x [env TC_VERSION]
    #[arg(long, value_name = "N.x")]
    tc_version: Option<String>,
    /// x86_64 or x86 [env TC_ARCH]
    #[arg(long)]
    arch: Option<String>,
    /// Extra extension to install (repeatable; adds to PACKAGES and the config)
    #[arg(long = "package", short = 'p', value_name = "NAME")]
    packages: Vec<String>,
    /// Use only the download cache; fail naming anything missing
    #[arg(long)]
    offline: bool,
    /// Re-read the cached `.dep` files from the mirror (they carry no
    /// checksum, so a warm cache otherwise trusts them)
    #[arg(long, conflicts_with = "offline")]
    refresh: bool,
    /// Print the resolved packages in install order and stop
    #[arg(long, visible_alias = "list")]
    pub dry_run: bool,
    /// Install `NAME-KERNEL` dependencies for this kernel version
    /// (e.g. 6.12.11-tinycore64) instead of skipping them
    #[arg(long, value_name = "UNAME_R")]
    kernel_version: Option<String>,
    /// Parallel downloads
    #[arg(long, default_value_t = 4, value_name = "N")]
    download_jobs: usize,
    /// Threads unpacking extensions [default: all cores]
    #[arg(long, value_name = "N")]
    unpack_threads: Option<usize>,
    /// Plain progress lines even on a terminal
    #[arg(long)]
    no_progress: bool,
}

impl Flags {
    pub fn apply(&self, o: &mut Overrides) {
        o.mirrors = self.mirrors.clone();
        o.tc_version = self.tc_version.clone();
        o.arch = self.arch.clone();
        o.packages = self.packages.clone();
    }
}

pub fn plan(c: &Config, f: &Flags) -> Plan {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    Plan {
        build_dir: c.build_dir.value.clone(),
        mirrors: c.mirrors.value.clone(),
        version: c.tc_release_dir(),
        arch: c.arch.value.clone(),
        packages: c.packages.value.clone(),
        kernel_deps: match &f.kernel_version {
            Some(v) => KernelDeps::Substitute(v.clone()),
            None => KernelDeps::Skip,
        },
        offline: f.offline,
        refresh: f.refresh,
        download_jobs: f.download_jobs,
        unpack_threads: f.unpack_threads.unwrap_or(cores),
        progress: if f.no_progress {
            Progress::Lines
        } else {
            Progress::Auto
        },
        guest_dir: c.guest_dir(),
        overrides: tinycore::edits::Overrides {
            rcs: c.rcs_override.value.clone(),
            tc_sys: c.tc_sys_override.value.clone(),
        },
        custom_binaries: c.custom_binaries.value.clone(),
        custom_removals: c
            .custom_removals
            .value
            .iter()
            .map(Utf8PathBuf::from)
            .collect(),
        ssh_key: Some(c.ssh_key.value.clone()),
        copy_private_key: c.copy_private_key.value,
        sshd_port: c.sshd_port.value,
    }
}

pub fn run(c: &Config, f: &Flags) -> Result<()> {
    let plan = plan(c, f);
    if f.dry_run {
        print!("{}", setup::resolve(&plan)?);
        return Ok(());
    }
    run_plan(&plan)
}

/// Sets tc_root up as `plan` says and reports what happened.
pub fn run_plan(plan: &Plan) -> Result<()> {
    let r = setup::run(plan, &|line| eprintln!("{line}"))?;
    for line in &r.edits.applied {
        eprintln!("edit: {line}");
    }
    for line in &r.edits.unchanged {
        eprintln!("note: {line}");
    }
    for line in &r.edits.warnings {
        eprintln!("warning: {line}");
    }
    println!(
        "tc_root: {} ({} packages; {} downloaded, {} from cache; {} entries in {}) in {:.2?}",
        plan.tc_root(),
        r.resolution.order.len(),
        r.downloaded,
        r.cached,
        r.manifest_entries,
        plan.manifest_path(),
        r.elapsed
    );
    Ok(())
}
