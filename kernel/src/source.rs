//! Where the kernel source comes from: a kernel tree, or a source tarball
//! (Debian's `/usr/src/linux-source-6.1.tar.xz`) unpacked once into the
//! build directory.

use std::fs::File;
use std::io::{BufReader, Read};
use std::time::UNIX_EPOCH;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

/// A kernel source tree ready for `make -C`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    tree: Utf8PathBuf,
    origin: Origin,
}

/// How [`Source::locate`] found the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The user's own tree, used in place.
    Tree,
    /// Unpacked from `tarball`; `unpacked_now` is false when an earlier
    /// unpack of the same tarball (same size and mtime) was reused.
    Tarball {
        tarball: Utf8PathBuf,
        unpacked_now: bool,
    },
}

/// Tarball compressions we can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    Xz,
    Gzip,
}

impl Source {
    /// `path` is a kernel tree (a directory with `Makefile`, `Kconfig` and
    /// `arch/x86`) or a `.tar.xz`/`.tar.gz` kernel tarball. Tarballs are
    /// unpacked under `<build_dir>/kernel-src/` the first time and reused
    /// while the tarball's size and mtime stay the same.
    pub fn locate(path: &Utf8Path, build_dir: &Utf8Path) -> Result<Source> {
        let meta = std::fs::metadata(path).with_context(|| {
            format!(
                "kernel source {path} does not exist: pass a kernel tree or a \
                 linux-source tarball (e.g. /usr/src/linux-source-6.1.tar.xz)"
            )
        })?;
        let abs = path
            .canonicalize_utf8()
            .with_context(|| format!("cannot resolve the kernel source path {path}"))?;
        if meta.is_dir() && is_kernel_tree(&abs) {
            return Ok(Source {
                tree: abs,
                origin: Origin::Tree,
            });
        }
        if meta.is_file() {
            if let Some(compression) = tarball_compression(&abs) {
                return unpack_once(&abs, compression, build_dir);
            }
        }
        bail!(
            "{path} is not a kernel tree (no Makefile/Kconfig) nor a .tar.xz/.tar.gz kernel \
             tarball"
        )
    }

    /// The top of the kernel tree (`make -C` this).
    pub fn tree(&self) -> &Utf8Path {
        &self.tree
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }
}

/// A top-level kernel directory: what `make` needs, and the x86 arch we
/// build for (a tree for another project has a Makefile too).
pub fn is_kernel_tree(dir: &Utf8Path) -> bool {
    dir.join("Makefile").is_file() && dir.join("Kconfig").is_file() && dir.join("arch/x86").is_dir()
}

/// Debian's kernel source tarballs (`apt-get install linux-source`), and
/// directories unpacked from them, newest name last: for the error when no
/// source was given.
pub fn suggest_sources() -> Vec<Utf8PathBuf> {
    suggest_sources_in(Utf8Path::new("/usr/src"))
}

/// [`suggest_sources`] in another directory (tests).
pub fn suggest_sources_in(dir: &Utf8Path) -> Vec<Utf8PathBuf> {
    let Ok(entries) = dir.read_dir_utf8() else {
        return Vec::new();
    };
    let mut found: Vec<Utf8PathBuf> = entries
        .flatten()
        .map(|e| e.into_path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default();
            name.starts_with("linux-source-")
                && (tarball_compression(p).is_some() || (p.is_dir() && is_kernel_tree(p)))
        })
        .collect();
    found.sort();
    found
}

/// The message for "no kernel source given", listing what is installed.
pub fn no_source_message() -> String {
    let found = suggest_sources();
    if found.is_empty() {
        "no kernel source given: pass --linux PATH (a kernel tree or a .tar.xz/.tar.gz \
         kernel tarball), or install Debian's with `apt-get install linux-source`"
            .to_string()
    } else {
        let list: Vec<&str> = found.iter().map(|p| p.as_str()).collect();
        format!(
            "no kernel source given: pass --linux PATH (a kernel tree or a tarball); \
             installed here: {}",
            list.join(", ")
        )
    }
}

fn tarball_compression(path: &Utf8Path) -> Option<Compression> {
    let name = path.file_name()?;
    if name.ends_with(".tar.xz") || name.ends_with(".txz") {
        Some(Compression::Xz)
    } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Some(Compression::Gzip)
    } else {
        None
    }
}

fn tarball_stem(name: &str) -> &str {
    [".tar.xz", ".txz", ".tar.gz", ".tgz"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// What identifies one version of the tarball: a changed tarball (new
/// Debian upload) gets unpacked again.
fn stamp_text(tarball: &Utf8Path) -> Result<String> {
    let md = std::fs::metadata(tarball).with_context(|| format!("cannot stat {tarball}"))?;
    let mtime = md
        .modified()
        .with_context(|| format!("cannot read the mtime of {tarball}"))?
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Ok(format!(
        "size {} mtime {}.{:09} tarball {tarball}\n",
        md.len(),
        mtime.as_secs(),
        mtime.subsec_nanos()
    ))
}

/// The kernel tree inside an unpacked tarball: its top directory, or the
/// one directory the tarball holds (`linux-source-6.1/`).
fn find_tree(dir: &Utf8Path) -> Option<Utf8PathBuf> {
    if is_kernel_tree(dir) {
        return Some(dir.to_owned());
    }
    let subdirs: Vec<Utf8PathBuf> = dir
        .read_dir_utf8()
        .ok()?
        .flatten()
        .map(|e| e.into_path())
        .filter(|p| p.is_dir())
        .collect();
    match subdirs.as_slice() {
        [one] if is_kernel_tree(one) => Some(one.clone()),
        _ => None,
    }
}

fn unpack_once(
    tarball: &Utf8Path,
    compression: Compression,
    build_dir: &Utf8Path,
) -> Result<Source> {
    let base = build_dir.join("kernel-src");
    let stem = tarball_stem(tarball.file_name().unwrap_or("linux"));
    let dest = base.join(stem);
    let stamp = base.join(format!("{stem}.stamp"));
    let want = stamp_text(tarball)?;

    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        if let Some(tree) = find_tree(&dest) {
            let origin = Origin::Tarball {
                tarball: tarball.to_owned(),
                unpacked_now: false,
            };
            return Ok(Source { tree, origin });
        }
    }

    std::fs::create_dir_all(&base).with_context(|| format!("cannot create {base}"))?;
    // The stamp goes first: an interrupted unpack must not look complete.
    match std::fs::remove_file(&stamp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove the stale {stamp}")),
    }
    eprintln!("unpacking {tarball} into {dest} (once; reused while the tarball is unchanged)");
    // Unpacked beside the destination (same filesystem), renamed into place
    // when complete, so a half-unpacked tree is never used.
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{stem}.unpacking."))
        .tempdir_in(&base)
        .with_context(|| format!("cannot create a temporary directory in {base}"))?;
    let tmp_path = Utf8Path::from_path(tmp.path())
        .with_context(|| format!("temporary directory under {base} is not UTF-8"))?
        .to_owned();
    let file = File::open(tarball).with_context(|| format!("cannot open {tarball}"))?;
    let reader: Box<dyn Read> = match compression {
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new(BufReader::new(file))),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file))),
    };
    let mut archive = tar::Archive::new(reader);
    // Kbuild decides what to rebuild from mtimes; keep the tarball's.
    archive.set_preserve_mtime(true);
    // `unpack` refuses entries that would land outside tmp_path (`..`,
    // absolute names), so a hostile tarball stays contained.
    archive.unpack(&tmp_path).with_context(|| {
        format!("cannot unpack {tarball} into {tmp_path} (corrupt or truncated?)")
    })?;
    let inner = find_tree(&tmp_path).with_context(|| {
        format!("{tarball} does not contain a kernel tree (no top directory with Makefile, Kconfig and arch/x86)")
    })?;
    let rel = inner
        .strip_prefix(&tmp_path)
        .unwrap_or(Utf8Path::new(""))
        .to_owned();

    if dest.exists() {
        // Moved aside first, so the rename below cannot hit a non-empty dir.
        let trash = tempfile::Builder::new()
            .prefix(&format!(".{stem}.old."))
            .tempdir_in(&base)
            .with_context(|| format!("cannot create a temporary directory in {base}"))?;
        let aside = trash.path().join("tree");
        std::fs::rename(&dest, &aside)
            .with_context(|| format!("cannot move the stale {dest} out of the way"))?;
        drop(trash); // removes the old tree
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, &dest)
        .with_context(|| format!("cannot rename the unpacked tree {tmp_path} to {dest}"))?;
    rootfs::fsutil::write_atomic(&stamp, want.as_bytes())?;
    let origin = Origin::Tarball {
        tarball: tarball.to_owned(),
        unpacked_now: true,
    };
    let tree = if rel.as_str().is_empty() {
        dest
    } else {
        dest.join(rel)
    };
    Ok(Source { tree, origin })
}
