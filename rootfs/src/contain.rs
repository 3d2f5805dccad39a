//! Keeping archive contents inside tc_root.
//!
//! Downloaded archives are untrusted: a name with `..`, an absolute name, or
//! a symlink that a later entry is written through could put files anywhere
//! the user can write. Every entry name goes through [`entry_components`]
//! and the directory it lands in through [`resolve_parent`] before anything
//! is written.
//!
//! Policy for symlinks on disk that a *parent* component of an entry runs
//! into: a relative target that stays inside tc_root is followed (TC's
//! `lib64 -> lib`, or a `.tcz` that ships `usr/local/lib/foo -> bar`); an
//! absolute target, or `..` climbing above tc_root, is refused. The final
//! component of a file, symlink or device entry is never followed: whatever
//! is there is replaced. A directory entry over a symlink is treated like a
//! parent (followed when it stays inside, refused otherwise), because
//! `unsquashfs -f` and the kernel merge a directory into a symlinked one and
//! the next entries go below it anyway.
//!
//! Resolution uses `lstat` component by component and yields a physical path
//! with no symlinks in it. Only this process writes tc_root while unpacking,
//! and the threat is the archive, not a concurrent local attacker, so the
//! check-then-use gap is accepted; files are still created with
//! `O_EXCL | O_NOFOLLOW` so a final component cannot be followed.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;

use anyhow::{bail, Context, Result};
use camino::Utf8Path;

/// Symlinks followed while resolving one entry before giving up (as the
/// kernel's `ELOOP` limit).
const MAX_SYMLINK_HOPS: usize = 40;

/// Splits an archive entry name into its path components, refusing names
/// that could leave tc_root. `.` and empty components are dropped, so
/// `./etc//x/` gives `["etc", "x"]` and `.` gives `[]` (the root itself).
///
/// `allow_absolute`: squashfs readers hand out `/`-prefixed paths for the
/// image's own root, so a leading `/` means nothing there; in a cpio it is
/// an attempt to write to the host's `/`.
pub fn entry_components<'a>(
    name: &'a str,
    archive: &Utf8Path,
    allow_absolute: bool,
) -> Result<Vec<&'a str>> {
    if name.starts_with('/') && !allow_absolute {
        bail!(
            "entry `{name}` of {archive} has an absolute name, which would write outside tc_root; \
             refusing to unpack this archive (archives for tc_root use relative names like `etc/x`)"
        );
    }
    let mut out = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => bail!(
                "entry `{name}` of {archive} has a `..` component, which could write outside tc_root; \
                 refusing to unpack this archive"
            ),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Where an entry's parent directory is on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedParent {
    /// Physical path components relative to tc_root, no symlinks among them.
    pub components: Vec<String>,
    /// Index in `components` of the first one that does not exist yet (the
    /// caller creates it and everything after it as directories).
    pub first_missing: Option<usize>,
}

impl ResolvedParent {
    /// The parent as a path relative to tc_root (`""` for tc_root itself).
    pub fn rel(&self) -> String {
        self.components.join("/")
    }
}

/// Resolves the parent components of an entry (`parent` as returned by
/// [`entry_components`], without the final name) to a physical directory
/// inside `root`, following symlinks on disk only while they stay inside
/// `root`. `archive` and `entry` are for error messages.
pub fn resolve_parent(
    root: &Utf8Path,
    parent: &[&str],
    archive: &Utf8Path,
    entry: &str,
) -> Result<ResolvedParent> {
    resolve_parent_with(root, parent, archive, entry, &|_| false)
}

/// [`resolve_parent`] with a cache: `known_dir(rel)` is true only for paths
/// (relative to `root`) that are real directories reached without symlinks,
/// which are then taken as such without an `lstat`.
pub fn resolve_parent_with(
    root: &Utf8Path,
    parent: &[&str],
    archive: &Utf8Path,
    entry: &str,
    known_dir: &dyn Fn(&str) -> bool,
) -> Result<ResolvedParent> {
    let mut done: Vec<String> = Vec::with_capacity(parent.len());
    let mut pending: VecDeque<String> = parent.iter().map(|s| s.to_string()).collect();
    let mut hops = 0;
    // The last symlink followed, for the message when a `..` in its target
    // climbs above tc_root.
    let mut via: Option<(String, String)> = None;
    let mut first_missing: Option<usize> = None;

    while let Some(c) = pending.pop_front() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                if first_missing.is_some() {
                    let (link, target) = via.clone().unwrap_or_default();
                    bail!(
                        "entry `{entry}` of {archive} would be written through symlink {link} -> {target}, \
                         whose target goes through the missing directory /{}; refusing",
                        done.join("/")
                    );
                }
                if done.pop().is_none() {
                    let (link, target) = via.clone().unwrap_or_default();
                    bail!(
                        "entry `{entry}` of {archive} would be written through symlink {link} -> {target}, \
                         which leaves tc_root; refusing to unpack this archive"
                    );
                }
                continue;
            }
            _ => {}
        }
        if first_missing.is_some() {
            done.push(c);
            continue;
        }
        let mut rel = done.join("/");
        if !rel.is_empty() {
            rel.push('/');
        }
        rel.push_str(&c);
        if known_dir(&rel) {
            done.push(c);
            continue;
        }
        let disk = root.join(&rel);
        let md = match std::fs::symlink_metadata(&disk) {
            Ok(md) => md,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                first_missing = Some(done.len());
                done.push(c);
                continue;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot stat {disk} (unpacking entry `{entry}` of {archive})")
                })
            }
        };
        let ft = md.file_type();
        if ft.is_dir() {
            done.push(c);
        } else if ft.is_symlink() {
            hops += 1;
            if hops > MAX_SYMLINK_HOPS {
                bail!("entry `{entry}` of {archive}: too many levels of symlinks below {disk}; refusing");
            }
            let target =
                std::fs::read_link(&disk).with_context(|| format!("cannot read symlink {disk}"))?;
            let target = target
                .into_os_string()
                .into_string()
                .map_err(|t| anyhow::anyhow!("symlink {disk} has a non-UTF-8 target {t:?}"))?;
            if target.starts_with('/') {
                bail!(
                    "entry `{entry}` of {archive} would be written through symlink /{rel} -> {target}, \
                     which leaves tc_root; refusing to unpack this archive"
                );
            }
            for t in target.split('/').rev() {
                pending.push_front(t.to_string());
            }
            via = Some((format!("/{rel}"), target));
        } else {
            bail!(
                "entry `{entry}` of {archive} needs /{rel} to be a directory, but it is a file on disk \
                 (the archive is inconsistent or an earlier archive put a file there)"
            );
        }
    }
    Ok(ResolvedParent {
        components: done,
        first_missing,
    })
}

/// True when every component of `rel` (relative to `root`) exists as a real
/// directory, except the last, which must exist and not be a directory
/// reached through a symlink: i.e. `root/rel` names the file without
/// following any symlink.
pub fn is_plain_path(root: &Utf8Path, rel: &str) -> bool {
    let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    let mut cur = root.to_owned();
    for (i, c) in comps.iter().enumerate() {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(md) if i + 1 == comps.len() => return !md.file_type().is_symlink(),
            Ok(md) if md.file_type().is_dir() => {}
            _ => return false,
        }
    }
    false
}

/// Deletes `path` and everything below it, even directories without owner
/// write or search permission (a plain user's tc_root can contain those if
/// someone `chmod`ed them). Symlinks are removed, never followed. A missing
/// `path` is not an error.
pub fn remove_tree(path: &Utf8Path) -> Result<()> {
    if path.as_str().is_empty() || path == "/" {
        bail!("refusing to remove `{path}`");
    }
    let md = match std::fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot stat {path} to remove it")),
    };
    if md.file_type().is_dir() {
        remove_dir_contents(path, md.permissions().mode())?;
        std::fs::remove_dir(path).with_context(|| format!("cannot remove directory {path}"))
    } else {
        std::fs::remove_file(path).with_context(|| format!("cannot remove {path}"))
    }
}

fn remove_dir_contents(dir: &Utf8Path, mode: u32) -> Result<()> {
    if mode & 0o700 != 0o700 {
        std::fs::set_permissions(
            dir,
            std::fs::Permissions::from_mode((mode & 0o7777) | 0o700),
        )
        .with_context(|| {
            format!("cannot make {dir} writable to remove it (is it owned by another user?)")
        })?;
    }
    let rd = std::fs::read_dir(dir).with_context(|| format!("cannot list {dir} to remove it"))?;
    for ent in rd {
        let ent = ent.with_context(|| format!("cannot list {dir} to remove it"))?;
        let name = ent.file_name();
        let child = dir.as_std_path().join(&name);
        let ft = ent
            .file_type()
            .with_context(|| format!("cannot stat {}", child.display()))?;
        if ft.is_dir() {
            let child = camino::Utf8PathBuf::from_path_buf(child)
                .map_err(|p| anyhow::anyhow!("cannot remove {}: name is not UTF-8", p.display()))?;
            let md = std::fs::symlink_metadata(&child)
                .with_context(|| format!("cannot stat {child}"))?;
            remove_dir_contents(&child, md.permissions().mode())?;
            std::fs::remove_dir(&child)
                .with_context(|| format!("cannot remove directory {child}"))?;
        } else {
            std::fs::remove_file(&child)
                .with_context(|| format!("cannot remove {}", child.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use camino::Utf8PathBuf;

    fn tmp() -> (tempfile::TempDir, Utf8PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = Utf8PathBuf::from_path_buf(d.path().to_path_buf()).unwrap();
        (d, p)
    }

    #[test]
    fn names() {
        let a = Utf8Path::new("x.cpio");
        assert_eq!(
            entry_components("./etc//x/", a, false).unwrap(),
            ["etc", "x"]
        );
        assert!(entry_components(".", a, false).unwrap().is_empty());
        assert_eq!(entry_components("/usr/a", a, true).unwrap(), ["usr", "a"]);
        let e = entry_components("/etc/x", a, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`/etc/x`") && e.contains("x.cpio") && e.contains("absolute"),
            "{e}"
        );
        let e = entry_components("a/../../x", a, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`a/../../x`") && e.contains(".."), "{e}");
    }

    #[test]
    fn symlinks_inside_are_followed_outside_refused() {
        let (_d, base) = tmp();
        let root = base.join("root");
        std::fs::create_dir_all(root.join("lib/sub")).unwrap();
        std::os::unix::fs::symlink("lib", root.join("lib64")).unwrap();
        std::os::unix::fs::symlink("../lib/sub", root.join("lib/up")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../..", root.join("lib/esc")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        let a = Utf8Path::new("t.tcz");
        let r = resolve_parent(&root, &["lib64", "up", "new", "deeper"], a, "e").unwrap();
        assert_eq!(r.components, ["lib", "sub", "new", "deeper"]);
        assert_eq!(r.first_missing, Some(2));
        let e = resolve_parent(&root, &["abs"], a, "abs/passwd")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("symlink /abs -> /etc") && e.contains("leaves tc_root"),
            "{e}"
        );
        let e = resolve_parent(&root, &["lib", "esc"], a, "lib/esc/x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/lib/esc -> ../..") && e.contains("`lib/esc/x`") && e.contains("t.tcz"),
            "{e}"
        );
        let e = resolve_parent(&root, &["loop"], a, "loop/x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("too many levels"), "{e}");
    }

    #[test]
    fn remove_tree_handles_read_only_dirs_and_keeps_link_targets() {
        let (_d, base) = tmp();
        let outside = base.join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"k").unwrap();
        let root = base.join("root");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a/out")).unwrap();
        std::fs::set_permissions(root.join("a/b"), std::fs::Permissions::from_mode(0o000)).unwrap();
        std::fs::set_permissions(root.join("a"), std::fs::Permissions::from_mode(0o500)).unwrap();
        remove_tree(&root).unwrap();
        assert!(!root.exists());
        assert!(outside.join("keep").exists());
        remove_tree(&root).unwrap();
    }
}
