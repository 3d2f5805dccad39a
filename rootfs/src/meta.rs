//! What goes into the initramfs: the tree on disk joined with the manifest.
//!
//! Rules (the packer applies no others):
//! - Everything under `/home/tc` belongs to 1001:50 (TC's `tc` user, group
//!   `staff`), as the old rebuild script's `chown` did.
//! - A path on disk that the manifest records with the same kind takes uid
//!   and gid from the manifest. Directories take the manifest's mode (on
//!   disk they are kept owner-writable so a plain user can edit them);
//!   regular files take their permission bits from disk (so `chmod` in
//!   tc_root works) plus the manifest's setuid/setgid/sticky bits; symlinks
//!   are 0777.
//! - A path on disk that the manifest does not know (added by the user), or
//!   whose kind changed, is root:root with its mode from disk.
//! - Device nodes, fifos and sockets exist only in the manifest and are
//!   always included; a manifest dir/file/slink missing on disk was removed
//!   by the user and is left out.
//! - Regular files with more than one link on disk form hard-link groups.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use crate::manifest::{Kind, Manifest};

pub const TC_UID: u32 = 1001;
pub const STAFF_GID: u32 = 50;

/// One entry of the image, with its final metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Absolute in-guest path (`/etc/passwd`); never `/` itself.
    pub path: String,
    pub kind: Kind,
    /// Permission and special bits (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// For regular files: the file on disk to read the data from.
    pub disk: Option<Utf8PathBuf>,
    /// For regular files: size on disk when walked.
    pub size: u64,
    /// Modification time on disk (seconds), 0 for manifest-only entries.
    pub mtime: i64,
    /// For regular files with several links on disk: (st_dev, st_ino).
    pub link_group: Option<(u64, u64)>,
    /// For regular files: the stat data the walk saw, so that change
    /// detection need not stat every file a second time.
    pub stamp: Option<Stamp>,
}

/// What git's index calls the stat data of a file: if none of it changed,
/// its content is taken as unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub mode: u32,
}

impl Stamp {
    pub fn of(md: &std::fs::Metadata) -> Stamp {
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        Stamp {
            size: md.len(),
            mtime_ns: ns(md.mtime(), md.mtime_nsec()),
            ctime_ns: ns(md.ctime(), md.ctime_nsec()),
            ino: md.ino(),
            mode: md.mode(),
        }
    }
}

fn under_home_tc(path: &str) -> bool {
    path == "/home/tc" || path.starts_with("/home/tc/")
}

/// Walks `root` and joins it with `manifest`; the result is sorted by path.
pub fn collect(root: &Utf8Path, manifest: &Manifest) -> Result<Vec<Node>> {
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    walk(root, root, manifest, &mut nodes)?;
    for (path, e) in manifest.iter() {
        if e.kind.is_manifest_only() && !nodes.contains_key(path) {
            let (uid, gid) = if under_home_tc(path) {
                (TC_UID, STAFF_GID)
            } else {
                (e.uid, e.gid)
            };
            nodes.insert(
                path.to_string(),
                Node {
                    path: path.to_string(),
                    kind: e.kind.clone(),
                    mode: e.mode & 0o7777,
                    uid,
                    gid,
                    disk: None,
                    size: 0,
                    mtime: 0,
                    link_group: None,
                    stamp: None,
                },
            );
        }
    }
    Ok(nodes.into_values().collect())
}

fn walk(
    root: &Utf8Path,
    dir: &Utf8Path,
    manifest: &Manifest,
    out: &mut BTreeMap<String, Node>,
) -> Result<()> {
    let rd = dir
        .read_dir_utf8()
        .with_context(|| format!("cannot read directory {dir}"))?;
    for ent in rd {
        let ent = ent.with_context(|| format!("cannot read directory {dir}"))?;
        let disk = ent.path().to_owned();
        // DirEntry::metadata is an lstat relative to the open directory:
        // cheaper than resolving the whole path again.
        let md = ent
            .metadata()
            .with_context(|| format!("cannot stat {disk}"))?;
        let rel = disk.strip_prefix(root).expect("walk stays below root");
        let path = format!("/{rel}");
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            let target =
                std::fs::read_link(&disk).with_context(|| format!("cannot read symlink {disk}"))?;
            let target = target
                .into_os_string()
                .into_string()
                .map_err(|t| anyhow::anyhow!("symlink {disk} has a non-UTF-8 target {t:?}"))?;
            Kind::Symlink { target }
        } else if ft.is_file() {
            Kind::File
        } else {
            anyhow::bail!(
                "{disk} is a special file on disk; device nodes, fifos and sockets belong in the manifest \
                 (a `nod`/`pipe`/`sock` line), not in tc_root"
            );
        };
        let recorded = manifest.get(&path).filter(|e| {
            e.kind == kind
                || (matches!(kind, Kind::Symlink { .. }) && matches!(e.kind, Kind::Symlink { .. }))
        });
        let disk_mode = md.mode() & 0o7777;
        let (mode, mut uid, mut gid) = match (recorded, &kind) {
            (_, Kind::Symlink { .. }) => (
                0o777,
                recorded.map_or(0, |e| e.uid),
                recorded.map_or(0, |e| e.gid),
            ),
            (Some(e), Kind::Dir) => (e.mode & 0o7777, e.uid, e.gid),
            (Some(e), _) => ((disk_mode & 0o777) | (e.mode & 0o7000), e.uid, e.gid),
            (None, _) => (disk_mode, 0, 0),
        };
        if under_home_tc(&path) {
            (uid, gid) = (TC_UID, STAFF_GID);
        }
        let is_file = kind == Kind::File;
        out.insert(
            path.clone(),
            Node {
                path,
                kind: kind.clone(),
                mode,
                uid,
                gid,
                disk: is_file.then(|| disk.clone()),
                size: if is_file { md.len() } else { 0 },
                mtime: md.mtime(),
                link_group: (is_file && md.nlink() > 1).then(|| (md.dev(), md.ino())),
                stamp: is_file.then(|| Stamp::of(&md)),
            },
        );
        if kind == Kind::Dir {
            walk(root, &disk, manifest, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Entry;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn joins_disk_and_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(dir.path()).unwrap();
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("home/tc")).unwrap();
        std::fs::write(root.join("bin/busybox.suid"), b"x").unwrap();
        std::fs::set_permissions(
            root.join("bin/busybox.suid"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::hard_link(root.join("bin/busybox.suid"), root.join("bin/su")).unwrap();
        std::fs::write(root.join("home/tc/.profile"), b"p").unwrap();
        std::fs::write(root.join("added"), b"a").unwrap();
        std::os::unix::fs::symlink("busybox.suid", root.join("bin/sh")).unwrap();
        let mut m = Manifest::new();
        m.insert(
            "/bin",
            Entry {
                mode: 0o555,
                uid: 0,
                gid: 0,
                kind: Kind::Dir,
                source: None,
            },
        );
        m.insert(
            "/bin/busybox.suid",
            Entry {
                mode: 0o4700,
                uid: 0,
                gid: 50,
                kind: Kind::File,
                source: None,
            },
        );
        m.insert(
            "/dev/console",
            Entry {
                mode: 0o600,
                uid: 0,
                gid: 50,
                kind: Kind::CharDev { major: 5, minor: 1 },
                source: None,
            },
        );
        m.insert(
            "/removed",
            Entry {
                mode: 0o644,
                uid: 0,
                gid: 0,
                kind: Kind::File,
                source: None,
            },
        );

        let nodes = collect(root, &m).unwrap();
        let by = |p: &str| {
            nodes
                .iter()
                .find(|n| n.path == p)
                .unwrap_or_else(|| panic!("{p} missing"))
        };
        assert_eq!(by("/bin").mode, 0o555);
        let suid = by("/bin/busybox.suid");
        assert_eq!((suid.mode, suid.uid, suid.gid), (0o4755, 0, 50));
        assert!(suid.link_group.is_some());
        assert_eq!(suid.link_group, by("/bin/su").link_group);
        assert_eq!(by("/bin/sh").mode, 0o777);
        assert_eq!(
            (by("/home/tc").uid, by("/home/tc/.profile").gid),
            (1001, 50)
        );
        assert_eq!(by("/added").uid, 0);
        assert_eq!(
            by("/dev/console").kind,
            Kind::CharDev { major: 5, minor: 1 }
        );
        assert!(nodes.iter().all(|n| n.path != "/removed"));
        let paths: Vec<_> = nodes.iter().map(|n| n.path.clone()).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted);
    }
}
