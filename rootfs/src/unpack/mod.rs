//! Unpacking TC's core (gzip'd newc cpio) and `.tcz` extensions (squashfs)
//! into tc_root as a plain user.
//!
//! On disk (identical whether run as root or not):
//! - regular files get the archive's permission bits without
//!   setuid/setgid/sticky (`mode & 0o777`), directories `0o700` on top
//!   (`(mode & 0o777) | 0o700`) so the user can always edit below them;
//!   symlinks as they are; nothing is ever chowned;
//! - device nodes, fifos and sockets are not created (anything on disk at
//!   their path is removed);
//! - file, directory and symlink mtimes come from the archive.
//!
//! Every entry is recorded in the [`Manifest`] with its archive mode
//! (special bits included), owner, kind and source archive, keyed by its
//! physical path (an entry written through the `lib64 -> lib` symlink is
//! recorded under `/lib`). A later entry at the same path replaces the
//! earlier one on disk and in the manifest (`unsquashfs -f` semantics; a
//! directory over a directory merges, also through a symlink that stays in
//! tc_root; anything else over a directory removes the whole tree; nothing
//! is written through a symlink in the final component). Names go through
//! [`crate::contain`] first.

mod cpio;
mod squashfs;

pub use self::cpio::cpio;
pub use self::squashfs::{squashfs, squashfs_many, squashfs_many_after};

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use crate::contain;
use crate::manifest::{Entry, Kind, Manifest};

/// What an unpack did, for progress lines and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UnpackStats {
    /// Archive entries applied (the archive's root `.` not counted).
    pub entries: u64,
    pub dirs: u64,
    /// Regular-file entries applied (each name of a hard-link group counts;
    /// with several squashfs images, also files a later image overwrote).
    pub files: u64,
    pub symlinks: u64,
    /// Names created as hard links to an earlier name (cpio only).
    pub hard_links: u64,
    /// Device nodes, fifos and sockets (manifest only).
    pub special: u64,
    /// Bytes of file data written (only the winners' for squashfs).
    pub bytes: u64,
}

impl std::ops::AddAssign for UnpackStats {
    fn add_assign(&mut self, o: UnpackStats) {
        self.entries += o.entries;
        self.dirs += o.dirs;
        self.files += o.files;
        self.symlinks += o.symlinks;
        self.hard_links += o.hard_links;
        self.special += o.special;
        self.bytes += o.bytes;
    }
}

/// One archive entry's metadata, as both formats provide it.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub kind: Kind,
    /// Permission and special bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
}

/// What an entry's path holds on disk before it is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnDisk {
    Dir,
    Symlink,
    Other,
}

/// Where a placed entry ended up.
#[derive(Debug, Clone)]
pub(crate) struct Placed {
    /// Physical path relative to tc_root (`etc/passwd`).
    pub rel: String,
    pub disk: Utf8PathBuf,
}

/// tc_root plus its manifest while archives are applied to it.
pub(crate) struct Tree<'a> {
    pub root: &'a Utf8Path,
    pub manifest: &'a mut Manifest,
    pub stats: UnpackStats,
    /// Directory mtimes to set once everything below them is written
    /// (writing into a directory changes its mtime).
    dir_mtimes: BTreeMap<String, i64>,
    /// Regular files (relative path -> (archive, entry) index) that the
    /// parallel squashfs unpacker will create later. They count as present:
    /// a later entry at the same path replaces them, one below them fails as
    /// it would on disk.
    pub planned: BTreeMap<String, (usize, usize)>,
    /// Paths (relative to tc_root, `""` for tc_root) known to be real
    /// directories reached without symlinks: seen by `lstat` or created
    /// here, and forgotten when anything at or above them is replaced. Saves
    /// an `lstat` per parent component of every entry.
    known_dirs: HashSet<String>,
}

impl<'a> Tree<'a> {
    pub fn new(root: &'a Utf8Path, manifest: &'a mut Manifest) -> Result<Tree<'a>> {
        std::fs::create_dir_all(root).with_context(|| format!("cannot create tc_root {root}"))?;
        Ok(Tree {
            root,
            manifest,
            stats: UnpackStats::default(),
            dir_mtimes: BTreeMap::new(),
            planned: BTreeMap::new(),
            known_dirs: HashSet::from([String::new()]),
        })
    }

    fn resolve_parent(
        &self,
        parent: &[&str],
        archive: &Utf8Path,
        name: &str,
    ) -> Result<contain::ResolvedParent> {
        contain::resolve_parent_with(self.root, parent, archive, name, &|rel| {
            self.known_dirs.contains(rel)
        })
    }

    /// Records the existing directories among `resolved`'s components.
    fn remember(&mut self, resolved: &contain::ResolvedParent) {
        let existing = resolved.first_missing.unwrap_or(resolved.components.len());
        let mut rel = String::new();
        for c in &resolved.components[..existing] {
            if !rel.is_empty() {
                rel.push('/');
            }
            rel.push_str(c);
            if !self.known_dirs.contains(&rel) {
                self.known_dirs.insert(rel.clone());
            }
        }
    }

    /// Forgets `rel` and everything below it (about to be removed).
    fn forget_dirs(&mut self, rel: &str) {
        let prefix = format!("{rel}/");
        self.known_dirs
            .retain(|k| k != rel && !k.starts_with(&prefix));
    }

    /// [`contain::is_plain_path`], with the directory cache.
    pub fn is_plain(&self, rel: &str) -> bool {
        if self.known_dirs.contains(rel) {
            return true;
        }
        match rel.rsplit_once('/') {
            Some((parent, _)) if self.known_dirs.contains(parent) => {
                std::fs::symlink_metadata(self.root.join(rel))
                    .is_ok_and(|m| !m.file_type().is_symlink())
            }
            _ => contain::is_plain_path(self.root, rel),
        }
    }

    /// Validates `name`, resolves its parent inside tc_root (creating missing
    /// directories), clears whatever is at the final path unless a directory
    /// merges into a directory, creates directories and symlinks, and records
    /// the entry in the manifest. Regular files are left for the caller to
    /// create at the returned path (see [`create_file`]). Returns `None` for
    /// the archive's root entry, which is not applied.
    pub fn place(
        &mut self,
        archive: &Utf8Path,
        source: &str,
        name: &str,
        allow_absolute: bool,
        meta: &Meta,
    ) -> Result<Option<Placed>> {
        let comps = contain::entry_components(name, archive, allow_absolute)?;
        let Some((last, parent)) = comps.split_last() else {
            return Ok(None);
        };
        let is_dir = meta.kind == Kind::Dir;
        let resolved = self.resolve_parent(parent, archive, name)?;
        self.remember(&resolved);
        if let Some(first) = resolved.first_missing {
            self.create_parents(&resolved.components, first, archive, name)?;
        }
        let mut rel = resolved.rel();
        if !rel.is_empty() {
            rel.push('/');
        }
        rel.push_str(last);
        let mut existing = self.lstat(&rel, name, archive)?;
        if is_dir && existing == Some(OnDisk::Symlink) {
            // A directory over a symlink merges into the link's target, as
            // `unsquashfs -f` and the kernel's initramfs unpacker do (a
            // `.tcz` shipping `lib64/` over `lib64 -> lib`); the target must
            // be inside tc_root like any parent.
            let through = self.resolve_parent(&comps, archive, name)?;
            let n = through.components.len();
            if n == 0 {
                return Ok(None);
            }
            if let Some(first) = through.first_missing.filter(|&f| f + 1 < n) {
                self.create_parents(&through.components[..n - 1], first, archive, name)?;
            }
            rel = through.rel();
            existing = self.lstat(&rel, name, archive)?;
        }
        let disk = self.root.join(&rel);
        let guest = format!("/{rel}");
        let ctx = || format!("cannot unpack entry `{name}` of {archive} to {disk}");

        self.planned.remove(&rel);
        match existing {
            Some(OnDisk::Dir) if is_dir => {}
            Some(OnDisk::Dir) => {
                self.forget_dirs(&rel);
                contain::remove_tree(&disk).with_context(ctx)?;
                forget_below(&mut self.planned, &rel);
            }
            Some(_) => std::fs::remove_file(&disk).with_context(ctx)?,
            None => {}
        }
        // Only a recorded directory has entries below it to drop; checking
        // first keeps the common case off `remove_tree`'s full scan.
        if !is_dir
            && self
                .manifest
                .get(&guest)
                .is_some_and(|e| e.kind == Kind::Dir)
        {
            self.manifest.remove_tree(&guest);
        }

        self.stats.entries += 1;
        match &meta.kind {
            Kind::Dir => {
                if existing != Some(OnDisk::Dir) {
                    std::fs::create_dir(&disk).with_context(ctx)?;
                }
                self.known_dirs.insert(rel.clone());
                set_mode(&disk, dir_disk_mode(meta.mode)).with_context(ctx)?;
                self.dir_mtimes.insert(rel.clone(), meta.mtime);
                self.stats.dirs += 1;
            }
            Kind::Symlink { target } => {
                std::os::unix::fs::symlink(target, &disk).with_context(ctx)?;
                set_symlink_mtime(&disk, meta.mtime).with_context(ctx)?;
                self.stats.symlinks += 1;
            }
            Kind::File => self.stats.files += 1,
            _ => self.stats.special += 1,
        }
        self.manifest.insert(
            &guest,
            Entry {
                mode: meta.mode & 0o7777,
                uid: meta.uid,
                gid: meta.gid,
                kind: meta.kind.clone(),
                source: Some(source.to_string()),
            },
        );
        Ok(Some(Placed { rel, disk }))
    }

    /// What is at `rel` (not following a final symlink), `None` if nothing.
    fn lstat(&self, rel: &str, name: &str, archive: &Utf8Path) -> Result<Option<OnDisk>> {
        if self.known_dirs.contains(rel) {
            return Ok(Some(OnDisk::Dir));
        }
        let disk = self.root.join(rel);
        match std::fs::symlink_metadata(&disk) {
            Ok(md) if md.is_dir() => Ok(Some(OnDisk::Dir)),
            Ok(md) if md.is_symlink() => Ok(Some(OnDisk::Symlink)),
            Ok(_) => Ok(Some(OnDisk::Other)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e)
                .with_context(|| format!("cannot unpack entry `{name}` of {archive} to {disk}")),
        }
    }

    fn create_parents(
        &mut self,
        comps: &[String],
        first: usize,
        archive: &Utf8Path,
        name: &str,
    ) -> Result<()> {
        for i in first..comps.len() {
            let rel = comps[..=i].join("/");
            let disk = self.root.join(&rel);
            if self.planned.contains_key(&rel) {
                bail!(
                    "entry `{name}` of {archive} needs /{rel} to be a directory, but an earlier entry \
                     is a file there (the archive is inconsistent)"
                );
            }
            std::fs::create_dir(&disk).with_context(|| {
                format!("cannot create directory {disk} for entry `{name}` of {archive}")
            })?;
            self.known_dirs.insert(rel.clone());
            // umask differs between users; the result must not.
            set_mode(&disk, 0o755).with_context(|| format!("cannot chmod {disk}"))?;
            // A device or fifo recorded here is gone now that a directory is.
            let guest = format!("/{rel}");
            if self
                .manifest
                .get(&guest)
                .is_some_and(|e| e.kind != Kind::Dir)
            {
                self.manifest.remove(&guest);
            }
        }
        Ok(())
    }

    /// Sets the recorded directory mtimes; call after all files are written.
    pub fn finish(&mut self) -> Result<()> {
        for (rel, mtime) in std::mem::take(&mut self.dir_mtimes) {
            let disk = self.root.join(&rel);
            // A later entry may have replaced the directory; only real
            // directories reached without symlinks get the time.
            let real_dir = self.known_dirs.contains(&rel)
                || (contain::is_plain_path(self.root, &rel)
                    && std::fs::symlink_metadata(&disk).is_ok_and(|m| m.is_dir()));
            if !real_dir {
                continue;
            }
            // The path has no symlink in it, so not following the last
            // component is enough.
            set_mtime_nofollow(&disk, mtime, false)
                .with_context(|| format!("cannot set the mtime of {disk}"))?;
        }
        Ok(())
    }
}

pub(crate) fn dir_disk_mode(mode: u32) -> u32 {
    (mode & 0o777) | 0o700
}

pub(crate) fn file_disk_mode(mode: u32) -> u32 {
    mode & 0o777
}

fn set_mode(path: &Utf8Path, mode: u32) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

pub(crate) fn system_time(mtime: i64) -> SystemTime {
    if mtime >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(mtime as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(mtime.unsigned_abs())
    }
}

/// Creates a new regular file at `disk` (which [`Tree::place`] cleared),
/// never following a symlink there, with the on-disk mode for the archive's
/// `mode` (the fd stays writable whatever the mode).
pub(crate) fn create_file(disk: &Utf8Path, mode: u32) -> std::io::Result<File> {
    let mode = file_disk_mode(mode);
    let f = File::options()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(disk)?;
    // The umask differs between users; the result must not. Most modes
    // survive the usual umasks, which saves a chmod per file.
    if umask().is_none_or(|u| mode & u != 0) {
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    Ok(f)
}

/// The process umask, read once (from /proc: umask(2) can only be read by
/// changing it, which would race with other threads creating files).
fn umask() -> Option<u32> {
    static UMASK: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
        u32::from_str_radix(line.trim(), 8).ok()
    })
}

/// Gives a written file its mtime.
pub(crate) fn finish_file(f: &File, mtime: i64) -> std::io::Result<()> {
    f.set_modified(system_time(mtime))
}

fn set_symlink_mtime(path: &Utf8Path, mtime: i64) -> std::io::Result<()> {
    set_mtime_nofollow(path, mtime, true)
}

/// Sets the mtime (and the atime too, if `atime`) of `path` itself, never
/// following a symlink there.
fn set_mtime_nofollow(path: &Utf8Path, mtime: i64, atime: bool) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_str())
        .map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))?;
    let ts = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let omit = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_OMIT,
    };
    let times = [if atime { ts } else { omit }, ts];
    // SAFETY: `c` is a valid NUL-terminated path and `times` two timespecs,
    // as utimensat(2) requires; AT_SYMLINK_NOFOLLOW sets the link's own time.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Drops planned paths equal to or below `removed`.
fn forget_below<V>(plan: &mut BTreeMap<String, V>, removed: &str) {
    {
        let r = removed;
        plan.remove(r);
        let prefix = format!("{r}/");
        let doomed: Vec<String> = plan
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            plan.remove(&k);
        }
    }
}
