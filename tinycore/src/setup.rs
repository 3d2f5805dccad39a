//! The whole `setup-tinycore` job: resolve, fetch, unpack core and
//! extensions as the invoking user, apply our edits, write the manifest.
//!
//! tc_root is built in `tc_root.new` next to the old one and swapped in only
//! when everything succeeded, so a failed setup never leaves a half-made
//! tree (or manifest) where the last good one was.
//!
//! Deleting a tree costs about as much as unpacking one, so it is kept off
//! the critical path: the replaced tc_root (and a failed run's `tc_root.new`)
//! is moved into `.trash/` in the build directory, and the next setup empties
//! `.trash/` in a background thread while it fetches and unpacks.

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
        Stopwatch {
            last: Instant::now(),
            stages: vec![],
        }
    }
    fn lap(&mut self, name: &'static str) {
        self.lap_at(name, Instant::now());
    }
    /// A stage that ended at `at` (measured inside overlapping work).
    fn lap_at(&mut self, name: &'static str, at: Instant) {
        self.stages
            .push((name, at.saturating_duration_since(self.last)));
        self.last = at;
    }
}

/// Resolves the packages only (`--list`/`--dry-run`).
pub fn resolve(plan: &Plan) -> Result<Resolution> {
    plan.client()?
        .resolve(&plan.packages, plan.kernel_deps.clone())
}

pub fn run(plan: &Plan, log: &dyn Fn(&str)) -> Result<Report> {
    let start = Instant::now();
    std::fs::create_dir_all(&plan.build_dir)
        .with_context(|| format!("cannot create the build directory {}", plan.build_dir))?;
    mark_top_dir(&plan.build_dir);
    let trash = plan.build_dir.join(TRASH);
    let staging = plan.build_dir.join("tc_root.new");
    // A failed run's staging tree, and the old tree of versions that kept it
    // as tc_root.old, go the way of every replaced tree.
    move_to_trash(&staging, &trash)?;
    move_to_trash(&plan.build_dir.join("tc_root.old"), &trash)?;
    std::thread::scope(|s| {
        let cleaner = s.spawn(|| empty_trash(&trash));
        let mut cleaner = Some(cleaner);
        let mut wait_for_cleaner = || {
            let Some(c) = cleaner.take() else { return };
            match c.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log(&format!("warning: {e:#}; delete it by hand")),
                Err(_) => log(&format!(
                    "warning: emptying {trash} failed (panic); delete it by hand"
                )),
            }
        };
        build(plan, log, start, &staging, &mut wait_for_cleaner)
    })
}

/// Marks `dir` as the top of directory hierarchies (`chattr +T`), so that
/// ext4's Orlov allocator puts each new tree made in it (tc_root.new) in a
/// block group of its own instead of next to `dir`. That matters because
/// ext4 without a journal skips, on every inode it allocates, each inode of
/// the group freed in the last minute (longer until it is written back):
/// re-creating tc_root where the previous one (or anything else) was just
/// deleted then costs far more than writing its data.
/// A placement hint only; other filesystems, or a refusal, change nothing.
fn mark_top_dir(dir: &Utf8Path) {
    use std::os::fd::AsRawFd;
    const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;
    let Ok(f) = std::fs::File::open(dir) else {
        return;
    };
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS/SETFLAGS read and write one int at the given
    // pointer, which is valid for the duration of each call.
    unsafe {
        if libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) == 0
            && flags & FS_TOPDIR_FL == 0
        {
            flags |= FS_TOPDIR_FL;
            libc::ioctl(f.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags);
        }
    }
}

/// Creates the empty staging directory. It is made under a fresh name and
/// renamed: ext4 picks a top directory's block group from a hash of its
/// name, and a fixed name would put every new tree where the previous one
/// was just deleted (see [`mark_top_dir`]).
fn create_staging(staging: &Utf8Path) -> Result<()> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let fresh = staging.with_file_name(format!(".tc_root.new-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&fresh).with_context(|| format!("cannot create {fresh}"))?;
    std::fs::rename(&fresh, staging).with_context(|| format!("cannot move {fresh} to {staging}"))
}

/// Where replaced trees wait to be deleted, in the build directory.
const TRASH: &str = ".trash";

/// Moves `path` (if it exists) under `trash` with a unique name.
fn move_to_trash(path: &Utf8Path, trash: &Utf8Path) -> Result<()> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    std::fs::create_dir_all(trash).with_context(|| format!("cannot create {trash}"))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = path.file_name().unwrap_or("tree");
    let dest = trash.join(format!("{name}-{}-{nanos}", std::process::id()));
    std::fs::rename(path, &dest).with_context(|| format!("cannot move {path} to {dest}"))
}

/// Deletes everything in `trash` (which may not exist).
fn empty_trash(trash: &Utf8Path) -> Result<()> {
    let rd = match trash.read_dir_utf8() {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {trash}")),
    };
    for ent in rd {
        let ent = ent.with_context(|| format!("cannot list {trash}"))?;
        rootfs::contain::remove_tree(ent.path())
            .with_context(|| format!("cannot empty {trash}"))?;
    }
    Ok(())
}

fn build(
    plan: &Plan,
    log: &dyn Fn(&str),
    start: Instant,
    staging: &Utf8Path,
    wait_for_cleaner: &mut dyn FnMut(),
) -> Result<Report> {
    let mut sw = Stopwatch::new();
    let client = plan.client()?;

    let resolution = client.resolve(&plan.packages, plan.kernel_deps.clone())?;
    for w in resolution.warnings() {
        log(&format!("warning: {w}"));
    }
    sw.lap("resolve");
    let core = client.fetch_item(&client.core())?;
    let tczs = client.fetch_tczs(&resolution.order)?;
    let downloaded =
        tczs.downloaded() + usize::from(matches!(core.source, mirror::Source::Downloaded { .. }));
    let cached = tczs.cached() + usize::from(matches!(core.source, mirror::Source::Cached));
    let bytes_downloaded = tczs.bytes_downloaded()
        + match core.source {
            mirror::Source::Downloaded { bytes, .. } => bytes,
            mirror::Source::Cached => 0,
        };

    sw.lap("fetch");
    create_staging(staging)?;

    sw.lap("clean");
    let mut manifest = Manifest::new();
    let core_name = core.path.file_name().unwrap_or("core").to_string();
    let archives: Vec<(Utf8PathBuf, String)> = tczs
        .files
        .iter()
        .map(|f| {
            (
                f.path.clone(),
                f.path.file_name().unwrap_or("?").to_string(),
            )
        })
        .collect();
    // Reading and decompressing the extensions needs nothing from the core:
    // the other workers do it while this thread unpacks the core.
    let mut core_done = None;
    let (core_unpacked, ext_unpacked) = rootfs::unpack::squashfs_many_after(
        &archives,
        staging,
        &mut manifest,
        plan.unpack_threads,
        |m| {
            let r = rootfs::unpack::cpio(&core.path, staging, m, &core_name);
            core_done = Some(Instant::now());
            r
        },
    )?;
    if let Some(t) = core_done {
        sw.lap_at("unpack core", t);
    }
    let mut unpacked = core_unpacked;
    unpacked += ext_unpacked;
    sw.lap("unpack extensions");
    let mut report = edits::apply_distro_edits(staging)?;
    let (mut overrides, r) = Overrides::from_guest_dir(&plan.guest_dir)?;
    report.merge(r);
    if plan.overrides.rcs.is_some() {
        overrides.rcs = plan.overrides.rcs.clone();
    }
    if plan.overrides.tc_sys.is_some() {
        overrides.tc_sys = plan.overrides.tc_sys.clone();
    }
    report.merge(edits::apply_overrides(staging, &overrides)?);
    if !plan.custom_binaries.is_empty() {
        report.merge(edits::install_binaries(
            staging,
            &mut manifest,
            &plan.custom_binaries,
        )?);
    }
    if !plan.custom_removals.is_empty() {
        report.merge(edits::apply_removals(
            staging,
            &mut manifest,
            &plan.custom_removals,
        )?);
    }
    if let Some(key) = &plan.ssh_key {
        let public = Utf8PathBuf::from(format!("{key}.pub"));
        if public.is_file() {
            let private = plan.copy_private_key.then_some(key.as_path());
            report.merge(edits::install_user_ssh_key(staging, &public, private)?);
        } else {
            report.unchanged.push(format!(
                "ssh key {public} does not exist: no authorized_keys in the guest"
            ));
        }
    }
    let mut host_keys = vec![];
    if openssh::wanted(&resolution.order) {
        let s = openssh::setup(staging, &plan.build_dir, &mut manifest, plan.sshd_port)?;
        host_keys = s.host_keys;
        report.merge(s.report);
    }
    sw.lap("edits");
    // Last, so that it sees every library the steps above added or removed.
    report.merge(ldcache::refresh(staging)?);
    sw.lap("ldconfig");

    manifest.save(&plan.build_dir.join("tc_root.manifest.new"))?;
    wait_for_cleaner();
    swap_into_place(
        staging,
        &plan.tc_root(),
        &plan.build_dir.join("tc_root.manifest.new"),
        &plan.manifest_path(),
        &plan.build_dir.join(TRASH),
    )?;
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
/// tree is moved into the trash first (the next run deletes it), so the
/// window without a tc_root is two renames long, and the manifest moves
/// right after the tree.
fn swap_into_place(
    new_root: &Utf8Path,
    root: &Utf8Path,
    new_manifest: &Utf8Path,
    manifest: &Utf8Path,
    trash: &Utf8Path,
) -> Result<()> {
    move_to_trash(root, trash).with_context(|| format!("cannot move the previous {root} aside"))?;
    std::fs::rename(new_root, root).with_context(|| format!("cannot move {new_root} to {root}"))?;
    std::fs::rename(new_manifest, manifest)
        .with_context(|| format!("cannot move {new_manifest} to {manifest}"))?;
    Ok(())
}
