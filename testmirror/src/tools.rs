//! Host tools that tests depend on.
//!
//! A missing tool fails the test with its name and the Debian package to
//! install. On a developer machine `LINUX_GUEST_ALLOW_MISSING_TOOLS=1` turns
//! that into a loud skip; with `CI=true` it never does.

use std::path::PathBuf;

/// Returns the tool's path, or panics naming it and its Debian package.
/// With `LINUX_GUEST_ALLOW_MISSING_TOOLS=1` (and not in CI) returns `None`
/// after printing a SKIPPED line; callers then return early.
pub fn require_tool(tool: &str, debian_package: &str) -> Option<PathBuf> {
    if let Some(p) = find_on_path(tool) {
        return Some(p);
    }
    let ci = std::env::var("CI").map(|v| v == "true").unwrap_or(false);
    let allow = std::env::var("LINUX_GUEST_ALLOW_MISSING_TOOLS")
        .map(|v| v == "1")
        .unwrap_or(false);
    if allow && !ci {
        eprintln!("SKIPPED: `{tool}` is not installed (apt-get install {debian_package}); LINUX_GUEST_ALLOW_MISSING_TOOLS=1");
        return None;
    }
    panic!(
        "test needs `{tool}`, which is not on PATH: apt-get install {debian_package} \
         (or run `cargo xtask test`, which installs test prerequisites)"
    );
}

/// For tests that need root (network namespaces, tap devices): `true` when
/// running as root. Otherwise panics saying so, or, with
/// `LINUX_GUEST_ALLOW_MISSING_TOOLS=1` (and not in CI), prints a SKIPPED
/// line and returns `false`; callers then return early.
pub fn require_root(what: &str) -> bool {
    if effective_uid() == Some(0) {
        return true;
    }
    let ci = std::env::var("CI").map(|v| v == "true").unwrap_or(false);
    let allow = std::env::var("LINUX_GUEST_ALLOW_MISSING_TOOLS")
        .map(|v| v == "1")
        .unwrap_or(false);
    if allow && !ci {
        eprintln!("SKIPPED: {what} needs root; LINUX_GUEST_ALLOW_MISSING_TOOLS=1");
        return false;
    }
    panic!("{what} needs root: run the tests as root (CI does), or set LINUX_GUEST_ALLOW_MISSING_TOOLS=1 to skip it");
}

/// The effective uid, from `/proc/self/status` (`Uid: real effective ...`).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

pub fn find_on_path(tool: &str) -> Option<PathBuf> {
    if tool.contains('/') {
        return find_file(tool);
    }
    let path = std::env::var_os("PATH")?;
    // sbin directories are not on every user's PATH but hold mkfs/ldconfig.
    let extra = ["/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// A file path, where the last component may hold one `*`
/// (`/boot/vmlinuz-*`): the last match in name order.
fn find_file(pattern: &str) -> Option<PathBuf> {
    let p = PathBuf::from(pattern);
    let name = p.file_name()?.to_str()?;
    let Some((prefix, suffix)) = name.split_once('*') else {
        return p.is_file().then_some(p);
    };
    let dir = p.parent()?;
    let mut hits: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.len() >= prefix.len() + suffix.len() && n.starts_with(prefix) && n.ends_with(suffix)
        })
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    hits.sort();
    hits.pop()
}

/// [`require_tool`] for each `(tool, debian_package)`, in order: all their
/// paths, or `None` (a skipped test) when one is missing.
pub fn require_tools(tools: &[(&str, &str)]) -> Option<Vec<PathBuf>> {
    tools
        .iter()
        .map(|(tool, pkg)| require_tool(tool, pkg))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn globs_in_the_last_component() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["vmlinuz-6.1.0-1", "vmlinuz-6.1.0-2", "config-6.1.0-2"] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        let pat = format!("{}/vmlinuz-*", dir.path().display());
        assert_eq!(
            super::find_on_path(&pat),
            Some(dir.path().join("vmlinuz-6.1.0-2"))
        );
        assert_eq!(
            super::find_on_path(&format!("{}/nope-*", dir.path().display())),
            None
        );
    }
}
