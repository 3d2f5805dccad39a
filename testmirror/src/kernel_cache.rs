//! The kernel build shared by the tests that need a real kernel (the
//! kernel crate's build-and-boot test and xtask's full-build test): one
//! unpacked `linux-source-*.tar.xz` and one O= object tree under
//! `target/kernel-test`, keyed by kernel.config and the tarball, so the
//! second test only relinks.

use camino::{Utf8Path, Utf8PathBuf};

/// The workspace root (this crate lives one level below it).
pub fn workspace() -> Utf8PathBuf {
    let here = Utf8Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_owned()
}

/// Cargo's target directory (`CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn target_dir() -> Utf8PathBuf {
    match std::env::var("CARGO_TARGET_DIR") {
        Ok(d) if !d.is_empty() => workspace().join(d),
        _ => workspace().join("target"),
    }
}

/// `target/kernel-test`: where the tarball is unpacked (`kernel-src/`)
/// and the keyed build directories live.
pub fn cache_root() -> Utf8PathBuf {
    target_dir().join("kernel-test")
}

/// The build directory for this kernel.config + tarball under
/// [`cache_root`]; other keys are removed so that the cache does not grow
/// by a kernel build per config edit.
pub fn keyed_dir(kernel_config: &Utf8Path, tarball: &Utf8Path) -> std::io::Result<Utf8PathBuf> {
    let cache = cache_root();
    let md = std::fs::metadata(tarball)?;
    let mtime = md
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut h = blake3::Hasher::new();
    h.update(&std::fs::read(kernel_config)?);
    h.update(format!("\n{} {} {}", tarball, md.len(), mtime.as_nanos()).as_bytes());
    let key = format!("build-{}", &h.finalize().to_hex()[..16]);
    if let Ok(entries) = cache.read_dir_utf8() {
        for e in entries.flatten() {
            let name = e.file_name();
            if name.starts_with("build-") && name != key {
                eprintln!("removing the stale kernel test cache {}", e.path());
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(cache.join(key))
}
