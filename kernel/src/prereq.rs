//! Host tools and headers Kbuild needs, checked before a build starts so
//! a missing one fails in a second with the Debian package to install,
//! not minutes into `make` with a cryptic error.

use std::ffi::OsString;

use anyhow::{bail, Result};
use camino::{Utf8Path, Utf8PathBuf};

/// Where to look: `PATH` and the system include directory. Tests point it
/// at fakes.
#[derive(Debug, Clone)]
pub struct HostProbe {
    pub path: Option<OsString>,
    pub include_dir: Utf8PathBuf,
}

impl HostProbe {
    pub fn system() -> HostProbe {
        HostProbe {
            path: std::env::var_os("PATH"),
            include_dir: Utf8PathBuf::from("/usr/include"),
        }
    }

    /// `tool` on PATH, or in the sbin directories a plain user's PATH
    /// lacks on Debian (depmod lives there).
    pub fn find_tool(&self, tool: &str) -> Option<Utf8PathBuf> {
        if tool.contains('/') {
            let p = Utf8PathBuf::from(tool);
            return p.is_file().then_some(p);
        }
        let dirs = self
            .path
            .as_ref()
            .map(std::env::split_paths)
            .into_iter()
            .flatten();
        let extra = ["/usr/sbin", "/sbin"].map(std::path::PathBuf::from);
        dirs.chain(extra)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
            .and_then(|p| Utf8PathBuf::from_path_buf(p).ok())
    }
}

/// One missing prerequisite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// What is missing (`flex`, `libelf headers (/usr/include/libelf.h)`).
    pub what: String,
    /// The Debian package that provides it.
    pub debian_package: String,
}

/// The compiler programs a build with these make variables runs:
/// `CC=ccache gcc` needs ccache and gcc, `LLVM=1` clang and ld.lld.
fn compilers(make_vars: &[(String, String)]) -> Vec<(String, String)> {
    let get = |k: &str| {
        make_vars
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let package = |tool: &str| match tool {
        "gcc" | "cc" => "gcc".to_string(),
        "ld.lld" => "lld".to_string(),
        "ccache" | "clang" | "sccache" => tool.to_string(),
        other => format!("the package providing {other}"),
    };
    if let Some(cc) = get("CC") {
        return cc
            .split_whitespace()
            .filter(|w| !w.starts_with('-') && !w.contains('='))
            .map(|w| (w.to_string(), package(w.rsplit('/').next().unwrap_or(w))))
            .collect();
    }
    match get("LLVM") {
        // LLVM=1 means the unsuffixed tools on PATH; LLVM=-15 or
        // LLVM=/opt/llvm/ name other ones, which Kbuild reports itself.
        Some("1") => vec![
            ("clang".into(), "clang".into()),
            ("ld.lld".into(), "lld".into()),
        ],
        Some(_) => Vec::new(),
        None => vec![("gcc".into(), "gcc".into())],
    }
}

/// Everything missing on this host for a build with `make_vars`.
pub fn missing(probe: &HostProbe, make_vars: &[(String, String)]) -> Vec<Missing> {
    let mut tools: Vec<(String, String)> = vec![("make".into(), "make".into())];
    tools.extend(compilers(make_vars));
    for t in ["flex", "bison", "bc"] {
        tools.push((t.into(), t.into()));
    }
    // modules_install runs depmod; without it the guest's modprobe finds
    // no modules.dep.
    tools.push(("depmod".into(), "kmod".into()));

    let mut out: Vec<Missing> = tools
        .into_iter()
        .filter(|(tool, _)| probe.find_tool(tool).is_none())
        .map(|(what, debian_package)| Missing {
            what,
            debian_package,
        })
        .collect();
    let headers: [(&[&str], &str, &str); 2] = [
        (&["libelf.h", "gelf.h"], "libelf headers", "libelf-dev"),
        (&["openssl/ssl.h"], "openssl headers", "libssl-dev"),
    ];
    for (files, what, pkg) in headers {
        if !files.iter().any(|f| probe.include_dir.join(f).is_file()) {
            let names: Vec<String> = files
                .iter()
                .map(|f| probe.include_dir.join(f).to_string())
                .collect();
            out.push(Missing {
                what: format!("{what} ({})", names.join(" or ")),
                debian_package: pkg.to_string(),
            });
        }
    }
    out
}

/// The error text for `missing`, or `None` when nothing is.
pub fn missing_message(missing: &[Missing]) -> Option<String> {
    if missing.is_empty() {
        return None;
    }
    let mut msg = String::from("cannot build the kernel: missing host prerequisites:\n");
    for m in missing {
        msg.push_str(&format!(
            "  - {} (Debian package {})\n",
            m.what, m.debian_package
        ));
    }
    let mut pkgs: Vec<&str> = missing
        .iter()
        .map(|m| m.debian_package.as_str())
        .filter(|p| !p.contains(' '))
        .collect();
    pkgs.dedup();
    if !pkgs.is_empty() {
        msg.push_str(&format!(
            "install them (as root) with: apt-get install {}",
            pkgs.join(" ")
        ));
    }
    Some(msg)
}

/// Fails, naming every missing tool/header and its Debian package, unless
/// this host can build the kernel with these make variables.
pub fn check_host(make_vars: &[(String, String)]) -> Result<()> {
    check_host_with(&HostProbe::system(), make_vars)
}

pub fn check_host_with(probe: &HostProbe, make_vars: &[(String, String)]) -> Result<()> {
    match missing_message(&missing(probe, make_vars)) {
        Some(msg) => bail!("{msg}"),
        None => Ok(()),
    }
}

/// The depmod Kbuild should run: its `DEPMOD=depmod` is looked up on PATH,
/// which on Debian lacks /usr/sbin for plain users, and then modules_install
/// silently skips modules.dep.
pub(crate) fn depmod_override(probe: &HostProbe) -> Option<Utf8PathBuf> {
    let on_path = probe
        .path
        .as_ref()
        .map(std::env::split_paths)
        .into_iter()
        .flatten()
        .any(|d| d.join("depmod").is_file());
    if on_path {
        None
    } else {
        probe
            .find_tool("depmod")
            .filter(|p| p.starts_with(Utf8Path::new("/")))
    }
}
