//! `.config` handling: install kernel.config, let Kconfig complete it
//! (`make olddefconfig`), and report every symbol it did not keep.
//!
//! kernel.config is in `make savedefconfig` form (only non-default
//! symbols). Kconfig drops, without a word, symbols it does not know
//! (renamed in a newer kernel) and symbols whose dependencies are unmet; we
//! compare the file with the resulting `.config` to say so.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use crate::make::{run_make_captured, BuildOptions};
use crate::source::Source;

/// One symbol's value in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigValue {
    /// `CONFIG_X=<value>`, the value as written (`y`, `m`, `"text"`, `0x10`).
    Set(String),
    /// `# CONFIG_X is not set` (or `CONFIG_X=n`).
    NotSet,
}

impl ConfigValue {
    /// The line Kconfig would write for `symbol` (`CONFIG_X=y`).
    pub fn line(&self, symbol: &str) -> String {
        match self {
            ConfigValue::Set(v) => format!("{symbol}={v}"),
            ConfigValue::NotSet => format!("# {symbol} is not set"),
        }
    }
}

/// A kernel.config line that Kconfig did not keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigIssue {
    /// The symbol is absent from `.config`: Kconfig does not know it, or
    /// its dependencies are unmet.
    Dropped { symbol: String, wanted: ConfigValue },
    /// The symbol has another value (`m` forced to `y`, selected by
    /// another symbol, out of range...).
    Changed {
        symbol: String,
        wanted: ConfigValue,
        got: ConfigValue,
    },
}

impl ConfigIssue {
    pub fn symbol(&self) -> &str {
        match self {
            ConfigIssue::Dropped { symbol, .. } | ConfigIssue::Changed { symbol, .. } => symbol,
        }
    }

    /// The warning, naming the file the wanted value came from.
    pub fn describe(&self, origin: &str) -> String {
        match self {
            ConfigIssue::Dropped { symbol, wanted } => format!(
                "{} from {origin} was dropped by Kconfig (unknown symbol or unmet dependencies)",
                wanted.line(symbol)
            ),
            ConfigIssue::Changed {
                symbol,
                wanted,
                got,
            } => format!(
                "{} from {origin} became `{}` in .config (Kconfig forced it: check the symbol's \
                 dependencies, selects and range)",
                wanted.line(symbol),
                got.line(symbol)
            ),
        }
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe("kernel.config"))
    }
}

/// What [`configure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigReport {
    /// The kernel.config that was installed.
    pub kernel_config: Utf8PathBuf,
    /// The resulting `.config` (in the O= directory when there is one).
    pub config: Utf8PathBuf,
    /// `.config.old`: the `.config` that was there before, if any.
    pub previous: Option<Utf8PathBuf>,
    /// The resulting `.config` differs from the previous one. When it does
    /// not, the file keeps its old mtime, so Kbuild does not even rerun
    /// syncconfig.
    pub changed: bool,
    /// Lines of kernel.config that Kconfig did not keep.
    pub issues: Vec<ConfigIssue>,
}

impl ConfigReport {
    /// One warning line per issue, for the caller to print.
    pub fn warnings(&self) -> Vec<String> {
        let origin = self.kernel_config.as_str();
        self.issues.iter().map(|i| i.describe(origin)).collect()
    }
}

/// `CONFIG_X=value` and `# CONFIG_X is not set` lines, by symbol (with the
/// `CONFIG_` prefix). A symbol given twice keeps its last value, as in
/// Kconfig. Other lines (comments, blanks) are ignored.
pub fn parse_config(text: &str) -> BTreeMap<String, ConfigValue> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# ") {
            if let Some(sym) = rest.strip_suffix(" is not set") {
                if is_symbol(sym) {
                    out.insert(sym.to_string(), ConfigValue::NotSet);
                }
            }
        } else if let Some((sym, value)) = line.split_once('=') {
            if is_symbol(sym) {
                let v = if value == "n" {
                    ConfigValue::NotSet
                } else {
                    ConfigValue::Set(value.to_string())
                };
                out.insert(sym.to_string(), v);
            }
        }
    }
    out
}

fn is_symbol(s: &str) -> bool {
    s.strip_prefix("CONFIG_").is_some_and(|name| {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// Every line of `wanted` (kernel.config) that `result` (the `.config`
/// after olddefconfig) did not keep. "Not set" is satisfied by an absent
/// symbol too: off is off.
pub fn compare_configs(wanted: &str, result: &str) -> Vec<ConfigIssue> {
    let result = parse_config(result);
    let mut issues = Vec::new();
    for (symbol, want) in parse_config(wanted) {
        let got = result.get(&symbol);
        let issue = match (&want, got) {
            (ConfigValue::NotSet, None | Some(ConfigValue::NotSet)) => None,
            (ConfigValue::Set(_), None) => Some(ConfigIssue::Dropped {
                symbol,
                wanted: want,
            }),
            (_, Some(got)) if *got == want => None,
            (_, Some(got)) => Some(ConfigIssue::Changed {
                symbol,
                wanted: want,
                got: got.clone(),
            }),
        };
        issues.extend(issue);
    }
    issues
}

/// Installs `kernel_config` as `.config` (in the O= directory when
/// `opts.out_dir` is set), runs `make olddefconfig`, and reports what
/// Kconfig dropped or changed. The previous `.config` is kept as
/// `.config.old`, as Kbuild does; when the result equals it, `.config`
/// keeps its old mtime so that nothing is rebuilt for it.
pub fn configure(
    src: &Source,
    opts: &BuildOptions,
    kernel_config: &Utf8Path,
) -> Result<ConfigReport> {
    let wanted = std::fs::read_to_string(kernel_config)
        .with_context(|| format!("cannot read the kernel config {kernel_config}"))?;
    let objtree = opts.objtree(src);
    if let Some(out) = &opts.abs_out_dir() {
        std::fs::create_dir_all(out)
            .with_context(|| format!("cannot create the kernel build directory (O=) {out}"))?;
        let tree = src.tree();
        // Kbuild refuses O= builds from a tree configured in place; say so
        // before it fails with "source tree is not clean".
        let same = out.canonicalize_utf8().ok().as_deref() == Some(tree);
        if !same && (tree.join(".config").exists() || tree.join("include/config").exists()) {
            bail!(
                "{tree} has been configured in place ({tree}/.config or include/config exist), \
                 so Kbuild refuses to build it with O={out}: save {tree}/.config if you need it \
                 and run `make -C {tree} mrproper`, or build in the tree (no O= directory)"
            );
        }
    }
    let dot_config = objtree.join(".config");
    let dot_old = objtree.join(".config.old");
    let previous = match std::fs::read(&dot_config) {
        Ok(bytes) => {
            let md = std::fs::metadata(&dot_config)
                .with_context(|| format!("cannot stat {dot_config}"))?;
            let mtime = md
                .modified()
                .with_context(|| format!("cannot read the mtime of {dot_config}"))?;
            Some((bytes, mtime))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {dot_config}")),
    };

    rootfs::fsutil::write_atomic(&dot_config, wanted.as_bytes())
        .with_context(|| format!("cannot install {kernel_config} as {dot_config}"))?;
    run_make_captured(src, opts, &["olddefconfig"])
        .with_context(|| format!("Kconfig rejected {kernel_config} (installed as {dot_config})"))?;
    let result = std::fs::read(&dot_config)
        .with_context(|| format!("cannot read {dot_config} after make olddefconfig"))?;

    // Kconfig itself renamed our copy of kernel.config to .config.old;
    // .config.old must be the previous full .config instead.
    let (changed, previous_path) = match previous {
        Some((old, mtime)) => {
            rootfs::fsutil::write_atomic(&dot_old, &old)
                .with_context(|| format!("cannot keep the previous .config as {dot_old}"))?;
            // write_atomic's temporary file is private; .config is not.
            std::fs::set_permissions(&dot_old, std::fs::Permissions::from_mode(0o644))
                .with_context(|| format!("cannot chmod {dot_old}"))?;
            let changed = old != result;
            if !changed {
                keep_mtime(&dot_config, mtime)?;
            }
            (changed, Some(dot_old))
        }
        None => {
            if std::fs::read(&dot_old).ok().as_deref() == Some(wanted.as_bytes()) {
                std::fs::remove_file(&dot_old)
                    .with_context(|| format!("cannot remove {dot_old}"))?;
            }
            (true, None)
        }
    };

    let result = String::from_utf8_lossy(&result);
    Ok(ConfigReport {
        kernel_config: kernel_config.to_owned(),
        config: dot_config,
        previous: previous_path,
        changed,
        issues: compare_configs(&wanted, &result),
    })
}

fn keep_mtime(path: &Utf8Path, mtime: SystemTime) -> Result<()> {
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {path} to restore its mtime"))?;
    f.set_modified(mtime)
        .with_context(|| format!("cannot restore the mtime of {path}"))
}

/// `CONFIG_INITRAMFS_SOURCE` of a `.config`, unquoted; `None` when unset or
/// empty. A relative value is relative to the object tree (the O=
/// directory, or the source tree), where Kbuild runs.
pub fn initramfs_source(config_path: &Utf8Path) -> Result<Option<String>> {
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("cannot read {config_path}"))?;
    Ok(initramfs_source_in(&text))
}

/// [`initramfs_source`] of config text.
pub fn initramfs_source_in(config_text: &str) -> Option<String> {
    match parse_config(config_text).remove("CONFIG_INITRAMFS_SOURCE")? {
        ConfigValue::Set(v) => {
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(&v)
                .trim();
            (!v.is_empty()).then(|| v.to_string())
        }
        ConfigValue::NotSet => None,
    }
}

/// Where the `.config` of this build wants its embedded initramfs:
/// `CONFIG_INITRAMFS_SOURCE` resolved against the object tree (Kbuild's
/// working directory). `None` when nothing is embedded. The caller packs
/// the initramfs there before [`crate::build`], so it gets embedded.
pub fn initramfs_source_path(src: &Source, opts: &BuildOptions) -> Result<Option<Utf8PathBuf>> {
    let objtree = opts.objtree(src);
    let config = objtree.join(".config");
    let Some(value) = initramfs_source(&config)? else {
        return Ok(None);
    };
    if value.split_whitespace().count() != 1 {
        bail!(
            "CONFIG_INITRAMFS_SOURCE in {config} lists several sources (`{value}`); point it at \
             the one initramfs file to embed (e.g. the packed initramfs.cpio.gz)"
        );
    }
    let path = Utf8PathBuf::from(value);
    Ok(Some(if path.is_absolute() {
        path
    } else {
        objtree.join(path)
    }))
}
