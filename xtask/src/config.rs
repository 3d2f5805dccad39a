//! The effective configuration: `guest/guest.toml`, then the environment
//! variables the old scripts honoured, then command-line flags, each value
//! remembering where it came from (`cargo xtask config` prints that).

use std::fmt;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::Deserialize;

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(Utf8PathBuf),
    Env(&'static str),
    Flag(&'static str),
    /// A list built from several places (PACKAGES adds to the file's list).
    Merged(Vec<String>),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::File(p) => write!(f, "{p}"),
            Origin::Env(v) => write!(f, "env {v}"),
            Origin::Flag(v) => write!(f, "flag {v}"),
            Origin::Merged(parts) => write!(f, "{}", parts.join(" + ")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Sourced<T> {
    pub value: T,
    pub origin: Origin,
}

impl<T> Sourced<T> {
    fn new(value: T, origin: Origin) -> Self {
        Sourced { value, origin }
    }
    fn set(&mut self, value: T, origin: Origin) {
        *self = Sourced { value, origin };
    }
}

/// Flags shared by tasks that override configuration values. Each task's
/// clap struct converts its flags into this.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config_file: Option<Utf8PathBuf>,
    pub build_dir: Option<Utf8PathBuf>,
    pub mirrors: Vec<String>,
    pub tc_version: Option<String>,
    pub arch: Option<String>,
    pub packages: Vec<String>,
    pub linux: Option<Utf8PathBuf>,
    pub skip_kernel: bool,
    pub make_jobs: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub workspace: Utf8PathBuf,
    pub config_file: Sourced<Option<Utf8PathBuf>>,
    pub build_dir: Sourced<Utf8PathBuf>,
    pub mirrors: Sourced<Vec<String>>,
    pub tc_version: Sourced<String>,
    pub arch: Sourced<String>,
    pub packages: Sourced<Vec<String>>,
    pub custom_binaries: Sourced<Vec<Utf8PathBuf>>,
    pub custom_removals: Sourced<Vec<String>>,
    pub ssh_key: Sourced<Utf8PathBuf>,
    pub copy_private_key: Sourced<bool>,
    pub sshd_port: Sourced<u16>,
    /// Replaces `/etc/init.d/rcS` (else guest/rcS-link, if it resolves).
    pub rcs_override: Sourced<Option<Utf8PathBuf>>,
    /// Becomes `/root/tc-sys.sh` (else guest/tc-sys.sh-link, if it resolves).
    pub tc_sys_override: Sourced<Option<Utf8PathBuf>>,
    pub linux: Sourced<Option<Utf8PathBuf>>,
    pub skip_kernel: Sourced<bool>,
    pub make_jobs: Sourced<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    tinycore: FileTinycore,
    #[serde(default)]
    guest: FileGuest,
    #[serde(default)]
    build: FileBuild,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTinycore {
    mirrors: Option<Vec<String>>,
    version: Option<String>,
    arch: Option<String>,
    packages: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGuest {
    custom_binaries: Option<Vec<String>>,
    custom_removals: Option<Vec<String>>,
    ssh_key: Option<String>,
    copy_private_key: Option<bool>,
    sshd_port: Option<u16>,
    rcs: Option<String>,
    tc_sys: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBuild {
    dir: Option<String>,
    linux: Option<String>,
    make_jobs: Option<usize>,
}

/// The environment, as a lookup function so tests can supply their own.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The workspace root: where the top-level Cargo.toml of this repo is.
pub fn workspace_root() -> Utf8PathBuf {
    let here = Utf8Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_owned()
}

fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Expands `~/` and makes relative paths relative to the workspace.
fn resolve_path(workspace: &Utf8Path, p: &str) -> Utf8PathBuf {
    if let Some(rest) = p.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return Utf8PathBuf::from(home.to_string_lossy().into_owned()).join(rest);
        }
    }
    let p = Utf8Path::new(p);
    if p.is_absolute() {
        p.to_owned()
    } else {
        workspace.join(p)
    }
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

fn parse_bool_env(name: &'static str, v: &str) -> Result<bool> {
    match v.trim() {
        "1" | "true" | "yes" | "y" | "on" => Ok(true),
        "0" | "false" | "no" | "n" | "off" => Ok(false),
        other => bail!("{name}={other:?} is not a boolean: use 1 or 0"),
    }
}

/// Appends `extra` (from `origin`) to a list, keeping order and dropping
/// repeats: PACKAGES and friends add to the file's list.
fn extend_list<T: PartialEq + Clone>(list: &mut Sourced<Vec<T>>, extra: Vec<T>, origin: Origin) {
    if extra.is_empty() {
        return;
    }
    let mut parts = match &list.origin {
        Origin::Merged(p) => p.clone(),
        Origin::Default => vec![],
        o => vec![o.to_string()],
    };
    parts.push(origin.to_string());
    for x in extra {
        if !list.value.contains(&x) {
            list.value.push(x);
        }
    }
    list.origin = if parts.len() == 1 {
        origin
    } else {
        Origin::Merged(parts)
    };
}

impl Config {
    /// Loads the configuration for the workspace at `workspace`.
    pub fn load(workspace: &Utf8Path, flags: &Overrides, env: Env<'_>) -> Result<Config> {
        let ws = workspace.to_owned();
        let (file_path, file_origin) = match (&flags.config_file, env("LINUX_GUEST_CONFIG")) {
            (Some(p), _) => (Some(p.clone()), Origin::Flag("--config")),
            (None, Some(p)) => (
                Some(Utf8PathBuf::from(p)),
                Origin::Env("LINUX_GUEST_CONFIG"),
            ),
            (None, None) => {
                let p = ws.join("guest/guest.toml");
                (p.exists().then_some(p), Origin::Default)
            }
        };
        let file: FileConfig = match &file_path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read the configuration file {p}"))?;
                toml::from_str(&text)
                    .with_context(|| format!("{p} is not a valid linux-guest configuration"))?
            }
            None => FileConfig::default(),
        };
        let fo = || Origin::File(file_path.clone().unwrap_or_default());

        let mut cfg = Config {
            workspace: ws.clone(),
            config_file: Sourced::new(file_path.clone(), file_origin),
            build_dir: Sourced::new(ws.join("target/guest"), Origin::Default),
            mirrors: Sourced::new(
                vec!["http://tinycorelinux.net".to_string()],
                Origin::Default,
            ),
            tc_version: Sourced::new("16.x".to_string(), Origin::Default),
            arch: Sourced::new("x86_64".to_string(), Origin::Default),
            packages: Sourced::new(vec![], Origin::Default),
            custom_binaries: Sourced::new(vec![], Origin::Default),
            custom_removals: Sourced::new(vec![], Origin::Default),
            ssh_key: Sourced::new(resolve_path(&ws, "~/.ssh/id_ed25519"), Origin::Default),
            copy_private_key: Sourced::new(false, Origin::Default),
            sshd_port: Sourced::new(22, Origin::Default),
            rcs_override: Sourced::new(None, Origin::Default),
            tc_sys_override: Sourced::new(None, Origin::Default),
            linux: Sourced::new(None, Origin::Default),
            skip_kernel: Sourced::new(false, Origin::Default),
            make_jobs: Sourced::new(default_jobs(), Origin::Default),
        };

        // The file.
        let t = file.tinycore;
        if let Some(m) = t.mirrors {
            cfg.mirrors.set(m, fo());
        }
        if let Some(v) = t.version {
            cfg.tc_version.set(v, fo());
        }
        if let Some(v) = t.arch {
            cfg.arch.set(v, fo());
        }
        if let Some(v) = t.packages {
            cfg.packages.set(v, fo());
        }
        let g = file.guest;
        if let Some(v) = g.custom_binaries {
            cfg.custom_binaries
                .set(v.iter().map(|p| resolve_path(&ws, p)).collect(), fo());
        }
        if let Some(v) = g.custom_removals {
            cfg.custom_removals.set(v, fo());
        }
        if let Some(v) = g.ssh_key {
            cfg.ssh_key.set(resolve_path(&ws, &v), fo());
        }
        if let Some(v) = g.copy_private_key {
            cfg.copy_private_key.set(v, fo());
        }
        if let Some(v) = g.sshd_port {
            cfg.sshd_port.set(v, fo());
        }
        if let Some(v) = g.rcs {
            cfg.rcs_override.set(Some(resolve_path(&ws, &v)), fo());
        }
        if let Some(v) = g.tc_sys {
            cfg.tc_sys_override.set(Some(resolve_path(&ws, &v)), fo());
        }
        let b = file.build;
        if let Some(v) = b.dir {
            cfg.build_dir.set(resolve_path(&ws, &v), fo());
        }
        if let Some(v) = b.linux {
            cfg.linux.set(Some(resolve_path(&ws, &v)), fo());
        }
        if let Some(v) = b.make_jobs {
            cfg.make_jobs.set(v, fo());
        }

        // The environment (the old scripts' variables, plus ours).
        if let Some(v) = env("LINUX_GUEST_BUILD_DIR") {
            cfg.build_dir
                .set(resolve_path(&ws, &v), Origin::Env("LINUX_GUEST_BUILD_DIR"));
        }
        if let Some(v) = env("TC_MIRROR") {
            cfg.mirrors.set(words(&v), Origin::Env("TC_MIRROR"));
        }
        if let Some(v) = env("TC_VERSION") {
            cfg.tc_version.set(v, Origin::Env("TC_VERSION"));
        }
        if let Some(v) = env("TC_ARCH") {
            cfg.arch.set(v, Origin::Env("TC_ARCH"));
        }
        if let Some(v) = env("PACKAGES") {
            extend_list(&mut cfg.packages, words(&v), Origin::Env("PACKAGES"));
        }
        if let Some(v) = env("CUSTOM_BINARIES") {
            let extra = words(&v).iter().map(|p| resolve_path(&ws, p)).collect();
            extend_list(
                &mut cfg.custom_binaries,
                extra,
                Origin::Env("CUSTOM_BINARIES"),
            );
        }
        if let Some(v) = env("CUSTOM_REMOVALS") {
            extend_list(
                &mut cfg.custom_removals,
                words(&v),
                Origin::Env("CUSTOM_REMOVALS"),
            );
        }
        if let Some(v) = env("SSH_KEY") {
            cfg.ssh_key
                .set(resolve_path(&ws, &v), Origin::Env("SSH_KEY"));
        }
        if let Some(v) = env("LINUX_REPO") {
            cfg.linux
                .set(Some(resolve_path(&ws, &v)), Origin::Env("LINUX_REPO"));
        }
        if let Some(v) = env("SKIP_KERNEL") {
            cfg.skip_kernel.set(
                parse_bool_env("SKIP_KERNEL", &v)?,
                Origin::Env("SKIP_KERNEL"),
            );
        }
        if let Some(v) = env("MAKE_JOBS") {
            let n: usize = v
                .trim()
                .parse()
                .with_context(|| format!("MAKE_JOBS={v:?} is not a number"))?;
            cfg.make_jobs.set(n, Origin::Env("MAKE_JOBS"));
        }

        // The flags.
        if let Some(v) = &flags.build_dir {
            cfg.build_dir.set(absolute(v)?, Origin::Flag("--build-dir"));
        }
        if !flags.mirrors.is_empty() {
            cfg.mirrors
                .set(flags.mirrors.clone(), Origin::Flag("--mirror"));
        }
        if let Some(v) = &flags.tc_version {
            cfg.tc_version.set(v.clone(), Origin::Flag("--tc-version"));
        }
        if let Some(v) = &flags.arch {
            cfg.arch.set(v.clone(), Origin::Flag("--arch"));
        }
        extend_list(
            &mut cfg.packages,
            flags.packages.clone(),
            Origin::Flag("--package"),
        );
        if let Some(v) = &flags.linux {
            cfg.linux.set(Some(absolute(v)?), Origin::Flag("--linux"));
        }
        if flags.skip_kernel {
            cfg.skip_kernel.set(true, Origin::Flag("--skip-kernel"));
        }
        if let Some(n) = flags.make_jobs {
            cfg.make_jobs.set(n, Origin::Flag("--jobs"));
        }

        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        if !matches!(self.arch.value.as_str(), "x86_64" | "x86") {
            bail!(
                "arch {:?} (from {}) is not supported: use x86_64 or x86",
                self.arch.value,
                self.arch.origin
            );
        }
        if self.mirrors.value.is_empty() {
            bail!("no Tiny Core mirror configured (from {}): set tinycore.mirrors or pass --mirror URL", self.mirrors.origin);
        }
        for m in &self.mirrors.value {
            if !(m.starts_with("http://") || m.starts_with("https://")) {
                bail!(
                    "mirror {m:?} (from {}) must be an http:// or https:// URL",
                    self.mirrors.origin
                );
            }
        }
        let v = self.tc_version.value.trim_end_matches(".x");
        if v.is_empty() || !v.chars().all(|c| c.is_ascii_digit()) {
            bail!(
                "Tiny Core version {:?} (from {}) should look like 16.x or 16",
                self.tc_version.value,
                self.tc_version.origin
            );
        }
        if self.make_jobs.value == 0 {
            bail!(
                "MAKE_JOBS must be at least 1 (from {})",
                self.make_jobs.origin
            );
        }
        Ok(())
    }

    /// `16`, `16.x` -> `16.x`: the mirror's directory name.
    pub fn tc_release_dir(&self) -> String {
        format!("{}.x", self.tc_version.value.trim_end_matches(".x"))
    }

    pub fn tc_root(&self) -> Utf8PathBuf {
        self.build_dir.value.join("tc_root")
    }

    pub fn manifest_path(&self) -> Utf8PathBuf {
        self.build_dir.value.join("tc_root.manifest")
    }

    pub fn guest_dir(&self) -> Utf8PathBuf {
        self.workspace.join("guest")
    }

    /// Lines for `cargo xtask config`.
    pub fn describe(&self) -> String {
        fn list<T: fmt::Display>(v: &[T]) -> String {
            if v.is_empty() {
                "(none)".into()
            } else {
                v.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        }
        let opt =
            |v: &Option<Utf8PathBuf>| v.as_ref().map_or("(unset)".to_string(), |p| p.to_string());
        let rows: Vec<(&str, String, &Origin)> = vec![
            (
                "config file",
                opt(&self.config_file.value),
                &self.config_file.origin,
            ),
            (
                "build dir",
                self.build_dir.value.to_string(),
                &self.build_dir.origin,
            ),
            ("mirrors", list(&self.mirrors.value), &self.mirrors.origin),
            ("tc version", self.tc_release_dir(), &self.tc_version.origin),
            ("arch", self.arch.value.clone(), &self.arch.origin),
            (
                "packages",
                list(&self.packages.value),
                &self.packages.origin,
            ),
            (
                "custom binaries",
                list(&self.custom_binaries.value),
                &self.custom_binaries.origin,
            ),
            (
                "custom removals",
                list(&self.custom_removals.value),
                &self.custom_removals.origin,
            ),
            (
                "ssh key",
                self.ssh_key.value.to_string(),
                &self.ssh_key.origin,
            ),
            (
                "copy private key",
                self.copy_private_key.value.to_string(),
                &self.copy_private_key.origin,
            ),
            (
                "sshd port",
                self.sshd_port.value.to_string(),
                &self.sshd_port.origin,
            ),
            (
                "rcS override",
                opt(&self.rcs_override.value),
                &self.rcs_override.origin,
            ),
            (
                "tc-sys.sh override",
                opt(&self.tc_sys_override.value),
                &self.tc_sys_override.origin,
            ),
            ("linux", opt(&self.linux.value), &self.linux.origin),
            (
                "skip kernel",
                self.skip_kernel.value.to_string(),
                &self.skip_kernel.origin,
            ),
            (
                "make jobs",
                self.make_jobs.value.to_string(),
                &self.make_jobs.origin,
            ),
        ];
        let mut out = String::new();
        for (k, v, o) in rows {
            out.push_str(&format!("{k:<19} {v}\n{:<19} ({o})\n", ""));
        }
        out
    }
}

/// Canonicalises a user-given path without requiring it to exist (the old
/// scripts refused relative paths; we accept them).
pub fn absolute(p: &Utf8Path) -> Result<Utf8PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_owned());
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let cwd = Utf8PathBuf::from_path_buf(cwd)
        .map_err(|p| anyhow::anyhow!("current directory {p:?} is not UTF-8"))?;
    Ok(cwd.join(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(file: &str, env: &[(&str, &str)], flags: Overrides) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let ws = Utf8Path::from_path(dir.path()).unwrap().to_owned();
        std::fs::create_dir_all(ws.join("guest")).unwrap();
        std::fs::write(ws.join("guest/guest.toml"), file).unwrap();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(&ws, &flags, &|k| env.get(k).cloned())
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let file =
            "[tinycore]\nversion = \"7.x\"\nmirrors = [\"http://file\"]\npackages = [\"a\"]\n";
        let c = load(file, &[], Overrides::default()).unwrap();
        assert_eq!(c.tc_version.value, "7.x");
        assert!(matches!(c.tc_version.origin, Origin::File(_)));

        let c = load(file, &[("TC_VERSION", "15.x")], Overrides::default()).unwrap();
        assert_eq!(
            (c.tc_version.value.as_str(), &c.tc_version.origin),
            ("15.x", &Origin::Env("TC_VERSION"))
        );

        let flags = Overrides {
            tc_version: Some("16".into()),
            mirrors: vec!["http://flag".into()],
            ..Default::default()
        };
        let c = load(
            file,
            &[("TC_VERSION", "15.x"), ("TC_MIRROR", "http://env")],
            flags,
        )
        .unwrap();
        assert_eq!(c.tc_release_dir(), "16.x");
        assert_eq!(c.mirrors.value, vec!["http://flag"]);
        assert_eq!(c.mirrors.origin, Origin::Flag("--mirror"));
    }

    #[test]
    fn packages_env_adds_to_file() {
        let file = "[tinycore]\npackages = [\"openssh\"]\n";
        let flags = Overrides {
            packages: vec!["gdb".into()],
            ..Default::default()
        };
        let c = load(file, &[("PACKAGES", "strace  openssh\tvim")], flags).unwrap();
        assert_eq!(c.packages.value, vec!["openssh", "strace", "vim", "gdb"]);
        let shown = c.packages.origin.to_string();
        assert!(
            shown.contains("guest.toml")
                && shown.contains("env PACKAGES")
                && shown.contains("--package"),
            "{shown}"
        );
    }

    #[test]
    fn old_script_variables_work() {
        let c = load(
            "",
            &[
                ("SKIP_KERNEL", "1"),
                ("MAKE_JOBS", "3"),
                ("LINUX_REPO", "/src/linux"),
                ("CUSTOM_BINARIES", "/bin/true rel/x"),
            ],
            Overrides::default(),
        )
        .unwrap();
        assert!(c.skip_kernel.value);
        assert_eq!(c.make_jobs.value, 3);
        assert_eq!(c.linux.value.as_deref(), Some(Utf8Path::new("/src/linux")));
        assert_eq!(c.custom_binaries.value[0], "/bin/true");
        assert_eq!(c.custom_binaries.value[1], c.workspace.join("rel/x"));
        assert!(c.describe().contains("env MAKE_JOBS"));
    }

    #[test]
    fn bad_values_name_their_origin() {
        let err = load("[tinycore]\narch = \"arm\"\n", &[], Overrides::default()).unwrap_err();
        assert!(format!("{err:#}").contains("guest.toml"), "{err:#}");
        let err = load("", &[("SKIP_KERNEL", "maybe")], Overrides::default()).unwrap_err();
        assert!(format!("{err:#}").contains("SKIP_KERNEL"), "{err:#}");
        let err = load("[tinycore]\nmirorrs = []\n", &[], Overrides::default()).unwrap_err();
        assert!(format!("{err:#}").contains("mirorrs"), "{err:#}");
        let err = load("", &[("TC_MIRROR", "ftp://x")], Overrides::default()).unwrap_err();
        assert!(format!("{err:#}").contains("TC_MIRROR"), "{err:#}");
    }
}
