//! The guest's dynamic-linker cache (`etc/ld.so.cache`), built without root.
//!
//! Extensions put their libraries in `/usr/local/lib`; the guest's loader
//! finds them through the cache. The old script ran `ldconfig -r tc_root`,
//! which chroots and so needs root. A user namespace in which we are root
//! (`unshare --user --map-root-user`) grants chroot for our own tree, and
//! the cache it writes is byte-for-byte what root's run writes: the format
//! records names and hardware classes, never owners or times.

use std::os::unix::fs::MetadataExt;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Shell};

use crate::edits::{put_file, read_text_opt, rewrite, EditReport};

/// The library directory extensions install into, which TC's ld.so.conf
/// lists and the cache must cover.
pub const LOCAL_LIB: &str = "/usr/local/lib";

/// ldconfig's auxiliary cache, relative to the root it ran on.
const AUX_CACHE: &str = "var/cache/ldconfig/aux-cache";

/// Host ldconfig locations, in order (glibc's, package libc-bin).
const LDCONFIG: [&str; 2] = ["/sbin/ldconfig", "/usr/sbin/ldconfig"];

/// Makes sure `etc/ld.so.conf` lists `/usr/local/lib`, then rebuilds
/// `etc/ld.so.cache` (and the soname symlinks, as ldconfig always does)
/// with the host's ldconfig: directly as root, in a user namespace
/// otherwise. ldconfig's own warnings end up in the report.
pub fn refresh(root: &Utf8Path) -> Result<EditReport> {
    let mut report = ensure_local_lib(root)?;
    let root = root.canonicalize_utf8().with_context(|| {
        format!("tc_root {root} does not exist; run `cargo xtask setup-tinycore`")
    })?;
    let ldconfig = LDCONFIG
        .iter()
        .map(Utf8Path::new)
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
            "the host's {} is missing; it builds the guest's ld.so.cache: apt-get install libc-bin",
            LDCONFIG[0]
        )
        })?;
    let sh = Shell::new().context("cannot start a shell for ldconfig")?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    let (how, out) = if is_root {
        let out = cmd!(sh, "{ldconfig} -r {root}")
            .quiet()
            .ignore_status()
            .output();
        ("ldconfig -r", out)
    } else {
        let unshare = find_program("unshare").with_context(|| {
            format!(
                "`{ldconfig} -r {root}` chroots, which needs root or a user namespace, and `unshare` is missing: \
                 apt-get install util-linux"
            )
        })?;
        let out = cmd!(sh, "{unshare} --user --map-root-user {ldconfig} -r {root}")
            .quiet()
            .ignore_status()
            .output();
        ("unshare --user --map-root-user ldconfig -r", out)
    };
    let out = out.with_context(|| format!("cannot run `{how} {root}`"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let hint = if is_root {
            "".to_string()
        } else {
            "\nldconfig -r needs chroot: run as root, or allow unprivileged user namespaces \
             (sysctl user.max_user_namespaces > 0, kernel.unprivileged_userns_clone=1 on Debian kernels, \
             kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu)"
                .to_string()
        };
        bail!(
            "`{how} {root}` failed ({}): {}{hint}",
            out.status,
            stderr.trim()
        );
    }
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        report.warnings.push(format!("ldconfig: {line}"));
    }
    // ldconfig also writes this when its directory exists (even with -i); it
    // records host inode numbers and times, which would make the image
    // differ on every build. The guest's own ldconfig recreates it.
    let aux = root.join(AUX_CACHE);
    match std::fs::remove_file(&aux) {
        Ok(()) => report.applied.push(format!(
            "removed {AUX_CACHE} (host inode numbers and times)"
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {aux}")),
    }
    let cache = root.join("etc/ld.so.cache");
    let md = std::fs::metadata(&cache)
        .with_context(|| format!("`{how} {root}` succeeded but wrote no {cache}"))?;
    report
        .applied
        .push(format!("etc/ld.so.cache ({} bytes)", md.size()));
    Ok(report)
}

/// Adds `/usr/local/lib` to `etc/ld.so.conf` when the core lacks it (with a
/// comment saying why), creating the file if needed.
pub fn ensure_local_lib(root: &Utf8Path) -> Result<EditReport> {
    let mut r = EditReport::default();
    let conf = root.join("etc/ld.so.conf");
    let what = "etc/ld.so.conf lists /usr/local/lib";
    let note = "# added by linux-guest: extensions install their libraries here\n";
    match read_text_opt(&conf)? {
        Some(text)
            if text
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == LOCAL_LIB) =>
        {
            r.record(false, what)
        }
        Some(mut text) => {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(note);
            text.push_str(LOCAL_LIB);
            text.push('\n');
            rewrite(&conf, text.as_bytes())?;
            r.warnings
                .push(format!("etc/ld.so.conf did not list {LOCAL_LIB}; added it"));
            r.record(true, what);
        }
        None => {
            put_file(&conf, format!("{note}{LOCAL_LIB}\n").as_bytes(), 0o644)?;
            r.warnings.push(format!(
                "etc/ld.so.conf did not exist; created it with {LOCAL_LIB}"
            ));
            r.record(true, what);
        }
    }
    Ok(r)
}

/// A program on PATH, or in the sbin directories a plain user's PATH lacks.
pub fn find_program(name: &str) -> Option<Utf8PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .filter(|d| !d.is_empty())
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Utf8Path::new(d).join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0));
    found
}
