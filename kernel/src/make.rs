//! Running Kbuild: `make vmlinux bzImage modules`, `modules_install`,
//! `kernelrelease`, with O=, -j, pass-through variables and a log.

use std::fmt;
use std::fs::File;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use crate::config::{parse_config, ConfigValue};
use crate::prereq::{self, HostProbe};
use crate::source::Source;

/// How to run Kbuild.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// `O=`: build outside the source tree (kept clean).
    pub out_dir: Option<Utf8PathBuf>,
    /// `-j` (`MAKE_JOBS`).
    pub jobs: usize,
    /// Passed to every make as `KEY=VALUE`: `CC=ccache gcc`, `LLVM=1`...
    pub make_vars: Vec<(String, String)>,
    /// `V=1`, and make's output on the terminal instead of the log.
    pub verbose: bool,
    /// Where `kernel-build.log` and the installed modules
    /// (`kernel-modules/lib/modules/<release>`) go.
    pub build_dir: Utf8PathBuf,
}

impl BuildOptions {
    /// In-tree build, one job per CPU, log and modules under `build_dir`.
    pub fn new(build_dir: &Utf8Path) -> BuildOptions {
        BuildOptions {
            out_dir: None,
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            make_vars: Vec::new(),
            verbose: false,
            build_dir: build_dir.to_owned(),
        }
    }

    /// `MAKE_JOBS` from the environment (the old scripts' knob), else one
    /// job per CPU.
    pub fn jobs_from_env() -> Result<usize> {
        match std::env::var("MAKE_JOBS") {
            Ok(v) if !v.trim().is_empty() => {
                let n: usize = v.trim().parse().with_context(|| {
                    format!("MAKE_JOBS=`{v}` is not a number of jobs; unset it or fix it")
                })?;
                Ok(n.max(1))
            }
            _ => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        }
    }

    /// Parses `KEY=VALUE` (a `--make-var` flag) into a pair.
    pub fn parse_make_var(s: &str) -> Result<(String, String)> {
        match s.split_once('=') {
            Some((k, v)) if !k.is_empty() && !k.contains(char::is_whitespace) => {
                Ok((k.to_string(), v.to_string()))
            }
            _ => bail!("make variable `{s}` is not KEY=VALUE (e.g. CC=\"ccache gcc\" or LLVM=1)"),
        }
    }

    /// Where Kbuild writes its outputs: the O= directory, or the tree.
    pub fn objtree(&self, src: &Source) -> Utf8PathBuf {
        self.abs_out_dir().unwrap_or_else(|| src.tree().to_owned())
    }

    /// The O= directory made absolute: make resolves a relative O= against
    /// the source tree (after `-C`), not against where we run.
    pub(crate) fn abs_out_dir(&self) -> Option<Utf8PathBuf> {
        let out = self.out_dir.as_ref()?;
        if out.is_absolute() {
            return Some(out.clone());
        }
        let cwd = std::env::current_dir()
            .ok()
            .and_then(|d| Utf8PathBuf::from_path_buf(d).ok());
        Some(cwd.map_or_else(|| out.clone(), |d| d.join(out)))
    }

    pub fn log_path(&self) -> Utf8PathBuf {
        self.build_dir.join("kernel-build.log")
    }

    /// `INSTALL_MOD_PATH` of modules_install.
    pub fn modules_dir(&self) -> Utf8PathBuf {
        self.build_dir.join("kernel-modules")
    }
}

/// What [`build`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOutputs {
    pub vmlinux: Utf8PathBuf,
    pub bz_image: Utf8PathBuf,
    /// `make -s kernelrelease` (`6.1.158-guest`).
    pub release: String,
    /// `INSTALL_MOD_PATH` holding `lib/modules/<release>`; `None` when
    /// the config has no modules (CONFIG_MODULES off).
    pub modules_dir: Option<Utf8PathBuf>,
    /// The make output, unless verbose (then it went to the terminal).
    pub log: Option<Utf8PathBuf>,
    pub elapsed: Duration,
}

impl fmt::Display for BuildOutputs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel {} built in {}", self.release, mmss(self.elapsed))?;
        writeln!(f, "  vmlinux  {}", self.vmlinux)?;
        write!(f, "  bzImage  {}", self.bz_image)?;
        if let Some(m) = &self.modules_dir {
            write!(
                f,
                "\n  modules  {}",
                m.join("lib/modules").join(&self.release)
            )?;
        }
        if let Some(l) = &self.log {
            write!(f, "\n  log      {l}")?;
        }
        Ok(())
    }
}

/// `make -C <tree> [O=] [-j] [VARS] [V=1] <args>`.
fn make_command(src: &Source, opts: &BuildOptions, args: &[&str], jobs: bool) -> Command {
    let mut c = Command::new("make");
    c.arg("-C").arg(src.tree().as_str());
    if let Some(out) = opts.abs_out_dir() {
        c.arg(format!("O={out}"));
    }
    if jobs {
        c.arg(format!("-j{}", opts.jobs.max(1)));
    }
    for (k, v) in &opts.make_vars {
        c.arg(format!("{k}={v}"));
    }
    if opts.verbose {
        c.arg("V=1");
    }
    c.args(args);
    // A KCONFIG_CONFIG in the environment would make Kconfig read and write
    // another file than the .config we install and compare.
    c.env_remove("KCONFIG_CONFIG");
    c
}

/// The command as a shell line, for errors.
fn render(c: &Command) -> String {
    let quote = |s: &str| {
        if !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+".contains(c))
        {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a short make (olddefconfig) with its output captured; on failure
/// the error holds the output.
pub(crate) fn run_make_captured(
    src: &Source,
    opts: &BuildOptions,
    args: &[&str],
) -> Result<String> {
    let mut c = make_command(src, opts, args, false);
    c.stdin(Stdio::null());
    let line = render(&c);
    let out = c.output().with_context(|| {
        format!("cannot run `{line}`: is make installed? (apt-get install make)")
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}):\n{}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// `make -s kernelrelease`: the release string of the configured tree.
pub fn kernel_release(src: &Source, opts: &BuildOptions) -> Result<String> {
    let quiet = BuildOptions {
        verbose: false,
        ..opts.clone()
    };
    let out = run_make_captured(
        src,
        &quiet,
        &["-s", "--no-print-directory", "kernelrelease"],
    )?;
    let release = out
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("")
        .to_string();
    if release.is_empty() || release.contains(char::is_whitespace) {
        bail!(
            "`make -s kernelrelease` in {} printed no release: {out:?}",
            src.tree()
        );
    }
    Ok(release)
}

const HEARTBEAT: Duration = Duration::from_secs(30);

fn mmss(d: Duration) -> String {
    format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
}

/// The last non-empty line of the log (its last 4 KiB are enough).
fn last_line(log: &Utf8Path) -> String {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut buf = Vec::new();
    if let Ok(mut f) = File::open(log) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(4096)));
        let _ = f.read_to_end(&mut buf);
    }
    let text = String::from_utf8_lossy(&buf);
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

/// Runs a long make: on the terminal when verbose, else appended to the
/// log; a failure prints the log's tail and names the command and log.
fn run_make_logged(src: &Source, opts: &BuildOptions, args: &[&str], log: &Utf8Path) -> Result<()> {
    let mut c = make_command(src, opts, args, true);
    c.stdin(Stdio::null());
    let line = render(&c);
    if opts.verbose {
        eprintln!("$ {line}");
        let status = c.status().with_context(|| format!("cannot run `{line}`"))?;
        if !status.success() {
            bail!("`{line}` failed ({status}); its output is above");
        }
        return Ok(());
    }
    let mut f = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open the build log {log}"))?;
    writeln!(f, "$ {line}").with_context(|| format!("cannot write {log}"))?;
    let err = f
        .try_clone()
        .with_context(|| format!("cannot reopen {log}"))?;
    c.stdout(f).stderr(err);
    let mut child = c.spawn().with_context(|| format!("cannot run `{line}`"))?;
    // A kernel build takes minutes: a line every 30 s says it is alive and
    // where it is, without the thousands of lines of the log.
    let started = Instant::now();
    let mut next = HEARTBEAT;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("cannot wait for `{line}`"))?
        {
            break status;
        }
        if started.elapsed() >= next {
            next += HEARTBEAT;
            eprintln!("  [{}] {}", mmss(started.elapsed()), last_line(log));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(40)..];
        eprintln!("--- last {} lines of {log} ---", tail.len());
        for l in tail {
            eprintln!("{l}");
        }
        eprintln!("---");
        // With -j the first compiler error can be far above the tail.
        let first_error = lines
            .iter()
            .find(|l| l.contains("error:") || l.contains("Error:"));
        let first_error = first_error
            .map(|l| format!("; first error: {}", l.trim()))
            .unwrap_or_default();
        bail!("`{line}` failed ({status}){first_error}; full output in {log}");
    }
    Ok(())
}

/// Relinks `vmlinux` and `bzImage` after the embedded initramfs
/// (`CONFIG_INITRAMFS_SOURCE`) changed: Kbuild notices the newer file and
/// redoes only `usr/` and the link. Appends to the build log.
pub fn relink(src: &Source, opts: &BuildOptions) -> Result<Duration> {
    let start = Instant::now();
    let log = opts.log_path();
    if !opts.verbose {
        eprintln!("relinking vmlinux and bzImage with the new initramfs (log: {log})");
    }
    run_make_logged(src, opts, &["vmlinux", "bzImage"], &log)?;
    Ok(start.elapsed())
}

/// Builds vmlinux, bzImage and (when the config has modules) the modules,
/// then installs the modules under `opts.modules_dir()` stripped.
/// [`crate::configure`] must have run. Prints a short summary on stderr.
pub fn build(src: &Source, opts: &BuildOptions) -> Result<BuildOutputs> {
    let probe = HostProbe::system();
    prereq::check_host_with(&probe, &opts.make_vars)?;
    let start = Instant::now();
    let objtree = opts.objtree(src);
    let dot_config = objtree.join(".config");
    let config = std::fs::read_to_string(&dot_config).with_context(|| {
        format!(
            "cannot read {dot_config}: configure the kernel (kernel::configure) before building"
        )
    })?;
    let modules =
        parse_config(&config).get("CONFIG_MODULES") == Some(&ConfigValue::Set("y".into()));

    std::fs::create_dir_all(&opts.build_dir)
        .with_context(|| format!("cannot create the build directory {}", opts.build_dir))?;
    let log = opts.log_path();
    if !opts.verbose {
        std::fs::write(&log, "").with_context(|| format!("cannot create the build log {log}"))?;
        eprintln!(
            "building the kernel in {objtree} with -j{} (make's output goes to {log})",
            opts.jobs
        );
    }

    let mut targets = vec!["vmlinux", "bzImage"];
    if modules {
        targets.push("modules");
    }
    run_make_logged(src, opts, &targets, &log)?;

    let modules_dir = if modules {
        let dir = opts.modules_dir();
        // Only this build's modules: an older release's tree would be
        // copied into the guest too.
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove the old {dir}")),
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {dir}"))?;
        let dir = dir
            .canonicalize_utf8()
            .with_context(|| format!("cannot resolve {dir}"))?;
        let mod_path = format!("INSTALL_MOD_PATH={dir}");
        let mut args = vec!["modules_install", mod_path.as_str(), "INSTALL_MOD_STRIP=1"];
        let depmod = prereq::depmod_override(&probe).map(|p| format!("DEPMOD={p}"));
        if let Some(d) = &depmod {
            args.push(d);
        }
        run_make_logged(src, opts, &args, &log)?;
        Some(dir)
    } else {
        None
    };

    let release = kernel_release(src, opts)?;
    let vmlinux = objtree.join("vmlinux");
    let bz_image = objtree.join("arch/x86/boot/bzImage");
    for p in [&vmlinux, &bz_image] {
        if !p.is_file() {
            bail!("make succeeded but {p} is missing; see {log}");
        }
    }
    let outputs = BuildOutputs {
        vmlinux,
        bz_image,
        release,
        modules_dir,
        log: (!opts.verbose).then_some(log),
        elapsed: start.elapsed(),
    };
    eprintln!("{outputs}");
    Ok(outputs)
}
