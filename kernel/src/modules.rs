//! Kernel modules in tc_root: ours replace whatever was there, and TC's
//! own (for a kernel we do not boot) go when the kernel is not rebuilt.

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use rootfs::manifest::Manifest;

/// What [`install_modules`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModulesReport {
    /// Releases copied in (`6.1.158-guest`).
    pub releases: Vec<String>,
    /// Entries removed from `tc_root/lib/modules` first.
    pub removed: Vec<String>,
    pub files: usize,
    pub bytes: u64,
}

/// Replaces `tc_root/lib/modules/*` with the `lib/modules/<release>` trees
/// that `modules_install INSTALL_MOD_PATH=<modules_dir>` wrote. The
/// manifest forgets the old entries; the new files are not recorded, so
/// the packer gives them root:root and their modes on disk.
pub fn install_modules(
    modules_dir: &Utf8Path,
    tc_root: &Utf8Path,
    manifest: &mut Manifest,
) -> Result<ModulesReport> {
    let from = modules_dir.join("lib/modules");
    let mut releases: Vec<Utf8PathBuf> = from
        .read_dir_utf8()
        .with_context(|| {
            format!("cannot list {from}: no installed modules (did `make modules_install` run?)")
        })?
        .map(|e| e.map(|e| e.into_path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot list {from}"))?;
    releases.retain(|p| p.is_dir());
    releases.sort();
    if releases.is_empty() {
        bail!("{from} holds no lib/modules/<release> directory: did `make modules_install` run?");
    }

    let to = tc_root.join("lib/modules");
    let removed = remove_matching(tc_root, manifest, |_| true)?;
    std::fs::create_dir_all(&to).with_context(|| format!("cannot create {to}"))?;
    let mut report = ModulesReport {
        removed,
        ..ModulesReport::default()
    };
    for rel in &releases {
        let name = rel.file_name().unwrap_or_default().to_string();
        copy_tree(rel, &to.join(&name), true, &mut report)?;
        report.releases.push(name);
    }
    Ok(report)
}

/// For a rebuild without the kernel: removes only TC's own modules
/// (`lib/modules/*tinycore*`), which belong to TC's kernel, not ours.
/// Returns the names removed.
pub fn remove_tinycore_modules(tc_root: &Utf8Path, manifest: &mut Manifest) -> Result<Vec<String>> {
    remove_matching(tc_root, manifest, |name| name.contains("tinycore"))
}

/// Removes `tc_root/lib/modules/<name>` for matching names, on disk and in
/// the manifest (which may list names no longer on disk).
fn remove_matching(
    tc_root: &Utf8Path,
    manifest: &mut Manifest,
    matches: impl Fn(&str) -> bool,
) -> Result<Vec<String>> {
    let dir = tc_root.join("lib/modules");
    let mut removed = Vec::new();
    match dir.read_dir_utf8() {
        Ok(entries) => {
            for e in entries {
                let e = e.with_context(|| format!("cannot list {dir}"))?;
                let name = e.file_name().to_string();
                if !matches(&name) {
                    continue;
                }
                let path = e.path();
                let ft = e
                    .file_type()
                    .with_context(|| format!("cannot stat {path}"))?;
                if ft.is_dir() {
                    std::fs::remove_dir_all(path)
                } else {
                    std::fs::remove_file(path)
                }
                .with_context(|| format!("cannot remove {path}"))?;
                removed.push(name);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot list {dir}")),
    }
    let stale: Vec<String> = manifest
        .iter()
        .filter_map(|(p, _)| {
            let name = p.strip_prefix("/lib/modules/")?.split('/').next()?;
            matches(name).then(|| format!("/lib/modules/{name}"))
        })
        .collect();
    for p in stale {
        manifest.remove_tree(&p);
    }
    removed.sort();
    Ok(removed)
}

/// Copies a module tree. At the top, the `build` and `source` symlinks
/// that modules_install makes point into the host's kernel tree: useless
/// in the guest and a leak of host paths into the image, so skipped.
fn copy_tree(from: &Utf8Path, to: &Utf8Path, top: bool, report: &mut ModulesReport) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {to}"))?;
    for e in from
        .read_dir_utf8()
        .with_context(|| format!("cannot list {from}"))?
    {
        let e = e.with_context(|| format!("cannot list {from}"))?;
        let src = e.path();
        let dst = to.join(e.file_name());
        let ft = e
            .file_type()
            .with_context(|| format!("cannot stat {src}"))?;
        if ft.is_symlink() {
            if top && matches!(e.file_name(), "build" | "source") {
                continue;
            }
            let target =
                std::fs::read_link(src).with_context(|| format!("cannot read link {src}"))?;
            std::os::unix::fs::symlink(&target, &dst)
                .with_context(|| format!("cannot create symlink {dst}"))?;
        } else if ft.is_dir() {
            copy_tree(src, &dst, false, report)?;
        } else {
            report.bytes +=
                std::fs::copy(src, &dst).with_context(|| format!("cannot copy {src} to {dst}"))?;
            report.files += 1;
        }
    }
    Ok(())
}
