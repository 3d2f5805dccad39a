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
pub use self::squashfs::{squashfs, squashfs_many};

use std::collections::BTreeMap;
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
        })
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
        let resolved = contain::resolve_parent(self.root, parent, archive, name)?;
        if let Some(first) = resolved.first_missing {
            self.create_parents(&resolved.components, first, archive, name)?;
        }
        let mut rel = resolved.rel();
        if !rel.is_empty() {
            rel.push('/');
        }
        rel.push_str(last);
        if is_dir
            && std::fs::symlink_metadata(self.root.join(&rel))
                .is_ok_and(|m| m.file_type().is_symlink())
        {
            // A directory over a symlink merges into the link's target, as
            // `unsquashfs -f` and the kernel's initramfs unpacker do (a
            // `.tcz` shipping `lib64/` over `lib64 -> lib`); the target must
            // be inside tc_root like any parent.
            let through = contain::resolve_parent(self.root, &comps, archive, name)?;
            let n = through.components.len();
            if n == 0 {
                return Ok(None);
            }
            if let Some(first) = through.first_missing.filter(|&f| f + 1 < n) {
                self.create_parents(&through.components[..n - 1], first, archive, name)?;
            }
            rel = through.rel();
        }
        let disk = self.root.join(&rel);
        let guest = format!("/{rel}");
        let ctx = || format!("cannot unpack entry `{name}` of {archive} to {disk}");

        let existing = match std::fs::symlink_metadata(&disk) {
            Ok(md) => Some(md.file_type()),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(ctx),
        };
        self.planned.remove(&rel);
        match existing {
            Some(ft) if ft.is_dir() && is_dir => {}
            Some(ft) if ft.is_dir() => {
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
                if !matches!(existing, Some(ft) if ft.is_dir()) {
                    std::fs::create_dir(&disk).with_context(ctx)?;
                }
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
            if !contain::is_plain_path(self.root, &rel) {
                continue;
            }
            let dir = match File::options()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
                .open(&disk)
            {
                Ok(d) => d,
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => continue,
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot open directory {disk} to set its mtime"))
                }
            };
            dir.set_modified(system_time(mtime))
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
/// never following a symlink there.
pub(crate) fn create_file(disk: &Utf8Path) -> std::io::Result<File> {
    File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(disk)
}

/// Gives a written file its on-disk mode and mtime.
pub(crate) fn finish_file(f: &File, mode: u32, mtime: i64) -> std::io::Result<()> {
    f.set_permissions(std::fs::Permissions::from_mode(file_disk_mode(mode)))?;
    f.set_modified(system_time(mtime))
}

fn set_symlink_mtime(path: &Utf8Path, mtime: i64) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_str())
        .map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))?;
    let ts = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [ts, ts];
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
