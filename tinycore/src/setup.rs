//! The whole `setup-tinycore` job: resolve, fetch, unpack core and
//! extensions as the invoking user, apply our edits, write the manifest.
//!
//! tc_root is built in `tc_root.new` next to the old one and swapped in only
//! when everything succeeded, so a failed setup never leaves a half-made
//! tree (or manifest) where the last good one was.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use rootfs::manifest::Manifest;
use rootfs::unpack::UnpackStats;

use crate::deps::{KernelDeps, Resolution};
use crate::edits::{self, EditReport, Overrides};
use crate::mirror::{self, Client, Layout, Progress};
use crate::{ldcache, openssh};

/// Everything setup needs, already resolved from config, env and flags.
#[derive(Debug, Clone)]
pub struct Plan {
    pub build_dir: Utf8PathBuf,
    pub mirrors: Vec<String>,
    pub version: String,
    pub arch: String,
    pub packages: Vec<String>,
    pub kernel_deps: KernelDeps,
    pub offline: bool,
    /// Re-read cached `.dep` files from the mirror.
    pub refresh: bool,
    pub download_jobs: usize,
    pub unpack_threads: usize,
    pub progress: Progress,
    /// `guest/`: where `rcS-link` and `tc-sys.sh-link` live.
    pub guest_dir: Utf8PathBuf,
    /// Explicit overrides; they win over the guest dir's magic links.
    pub overrides: Overrides,
    pub custom_binaries: Vec<Utf8PathBuf>,
    pub custom_removals: Vec<Utf8PathBuf>,
    /// The user's key (private key path; `.pub` is next to it).
    pub ssh_key: Option<Utf8PathBuf>,
    pub copy_private_key: bool,
    pub sshd_port: u16,
}

impl Plan {
    pub fn tc_root(&self) -> Utf8PathBuf {
        self.build_dir.join("tc_root")
    }
    pub fn manifest_path(&self) -> Utf8PathBuf {
        self.build_dir.join("tc_root.manifest")
    }
    fn client(&self) -> Result<Client> {
        let layout = Layout::new(&self.version, &self.arch)?;
        let mut cfg = mirror::Config::new(
            self.mirrors.clone(),
            layout,
            self.build_dir.join("tczs"),
            self.build_dir.join("downloads"),
        );
        cfg.offline = self.offline;
        cfg.refresh = self.refresh;
        cfg.parallelism = self.download_jobs.max(1);
        cfg.progress = self.progress;
        Client::new(cfg)
    }
}

#[derive(Debug)]
pub struct Report {
    pub resolution: Resolution,
    pub downloaded: usize,
    pub cached: usize,
    pub bytes_downloaded: u64,
    pub unpacked: UnpackStats,
    pub manifest_entries: usize,
    pub edits: EditReport,
    pub host_keys: Vec<openssh::HostKey>,
    pub elapsed: Duration,
    /// Wall time of each stage, in order, for `-v` output and the bench.
    pub stages: Vec<(&'static str, Duration)>,
}

/// Records how long each stage took.
struct Stopwatch {
    last: Instant,
    stages: Vec<(&'static str, Duration)>,
}

impl Stopwatch {
    fn new() -> Stopwatch {
        Stopwatch { last: Instant::now(), stages: vec![] }
    }
    fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        self.stages.push((name, now - self.last));
        self.last = now;
    }
}

/// Resolves the packages only (`--list`/`--dry-run`).
pub fn resolve(plan: &Plan) -> Result<Resolution> {
    plan.client()?.resolve(&plan.packages, plan.kernel_deps.clone())
}

pub fn run(plan: &Plan, log: &dyn Fn(&str)) -> Result<Report> {
    let start = Instant::now();
    let mut sw = Stopwatch::new();
    std::fs::create_dir_all(&plan.build_dir)
        .with_context(|| format!("cannot create the build directory {}", plan.build_dir))?;
    let client = plan.client()?;

    let resolution = client.resolve(&plan.packages, plan.kernel_deps.clone())?;
    for w in resolution.warnings() {
        log(&format!("warning: {w}"));
    }
    sw.lap("resolve");
    let core = client.fetch_item(&client.core())?;
    let tczs = client.fetch_tczs(&resolution.order)?;
    let downloaded = tczs.downloaded() + usize::from(matches!(core.source, mirror::Source::Downloaded { .. }));
    let cached = tczs.cached() + usize::from(matches!(core.source, mirror::Source::Cached));
    let bytes_downloaded = tczs.bytes_downloaded()
        + match core.source {
            mirror::Source::Downloaded { bytes, .. } => bytes,
            mirror::Source::Cached => 0,
        };

    sw.lap("fetch");
    let staging = plan.build_dir.join("tc_root.new");
    if staging.exists() {
        rootfs::contain::remove_tree(&staging)?;
    }
    std::fs::create_dir_all(&staging).with_context(|| format!("cannot create {staging}"))?;

    sw.lap("clean");
    let mut manifest = Manifest::new();
    let core_name = core.path.file_name().unwrap_or("core").to_string();
    let mut unpacked = rootfs::unpack::cpio(&core.path, &staging, &mut manifest, &core_name)?;
    sw.lap("unpack core");
    let archives: Vec<(Utf8PathBuf, String)> = tczs
        .files
        .iter()
        .map(|f| (f.path.clone(), f.path.file_name().unwrap_or("?").to_string()))
        .collect();
    unpacked += rootfs::unpack::squashfs_many(&archives, &staging, &mut manifest, plan.unpack_threads)?;

    sw.lap("unpack extensions");
    let mut report = edits::apply_distro_edits(&staging)?;
    let (mut overrides, r) = Overrides::from_guest_dir(&plan.guest_dir)?;
    report.merge(r);
    if plan.overrides.rcs.is_some() {
        overrides.rcs = plan.overrides.rcs.clone();
    }
    if plan.overrides.tc_sys.is_some() {
        overrides.tc_sys = plan.overrides.tc_sys.clone();
    }
    report.merge(edits::apply_overrides(&staging, &overrides)?);
    if !plan.custom_binaries.is_empty() {
        report.merge(edits::install_binaries(&staging, &mut manifest, &plan.custom_binaries)?);
    }
    if !plan.custom_removals.is_empty() {
        report.merge(edits::apply_removals(&staging, &mut manifest, &plan.custom_removals)?);
    }
    if let Some(key) = &plan.ssh_key {
        let public = Utf8PathBuf::from(format!("{key}.pub"));
        if public.is_file() {
            let private = plan.copy_private_key.then_some(key.as_path());
            report.merge(edits::install_user_ssh_key(&staging, &public, private)?);
        } else {
            report.unchanged.push(format!("ssh key {public} does not exist: no authorized_keys in the guest"));
        }
    }
    let mut host_keys = vec![];
    if openssh::wanted(&resolution.order) {
        let s = openssh::setup(&staging, &plan.build_dir, &mut manifest, plan.sshd_port)?;
        host_keys = s.host_keys;
        report.merge(s.report);
    }
    sw.lap("edits");
    // Last, so that it sees every library the steps above added or removed.
    report.merge(ldcache::refresh(&staging)?);
    sw.lap("ldconfig");

    manifest.save(&plan.build_dir.join("tc_root.manifest.new"))?;
    swap_into_place(&staging, &plan.tc_root(), &plan.build_dir.join("tc_root.manifest.new"), &plan.manifest_path())?;
    sw.lap("manifest + swap");

    Ok(Report {
        resolution,
        downloaded,
        cached,
        bytes_downloaded,
        unpacked,
        manifest_entries: manifest.len(),
        edits: report,
        host_keys,
        elapsed: start.elapsed(),
        stages: sw.stages,
    })
}

/// Replaces tc_root and its manifest with the freshly built ones. The old
/// tree is renamed aside first so the window without a tc_root is two
/// renames long, and the manifest moves right after the tree.
fn swap_into_place(new_root: &Utf8Path, root: &Utf8Path, new_manifest: &Utf8Path, manifest: &Utf8Path) -> Result<()> {
    let old = root.with_file_name("tc_root.old");
    if old.exists() {
        rootfs::contain::remove_tree(&old)?;
    }
    if root.exists() {
        std::fs::rename(root, &old).with_context(|| format!("cannot move the previous {root} aside"))?;
    }
    std::fs::rename(new_root, root).with_context(|| format!("cannot move {new_root} to {root}"))?;
    std::fs::rename(new_manifest, manifest).with_context(|| format!("cannot move {new_manifest} to {manifest}"))?;
    if old.exists() {
        rootfs::contain::remove_tree(&old)?;
    }
    Ok(())
}
