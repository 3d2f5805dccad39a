//! The shared runner of the self-extracting VM apps (`fdisk`, `mount-fs`).
//!
//! An app is this runner plus a small `main` that turns its command line
//! into a guest command line. At run time the app:
//! 1. takes the runner's own options from the front of its arguments
//!    ([`parse_options`]: `--vmm`, `--kernel`, `--accel`, `--mem`, `-v`);
//! 2. reads its own executable, finds the payload after the `PAYLOAD:` line
//!    (the `embed-payload` format) and splits it with [`payload::bundle`]
//!    into the initramfs and, when carried, the kernel;
//! 3. writes them, the guest command-line file (and `vnet_opts`) into a
//!    private temporary directory that is removed on exit, also after
//!    Ctrl-C or SIGTERM ([`Workdir`], [`signals`]);
//! 4. runs the VMM in the foreground: `vmrunkernel` exactly as the old
//!    Akaros scripts did ([`akaros`]), or QEMU with the disk as virtio-blk
//!    and the guest's virtio console on the app's stdin/stdout ([`qemu`]).

pub mod akaros;
pub mod ninep;
pub mod qemu;
pub mod shell;
pub mod signals;
mod terminal;
mod workdir;

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use workdir::Workdir;

/// Which VMM runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    Qemu,
    Akaros,
}

/// The runner's options, common to every app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub vmm: Vmm,
    /// `--kernel FILE`: boot this instead of the carried kernel (QEMU: a
    /// bzImage) or `/lib/vmlinux` (Akaros).
    pub kernel: Option<PathBuf>,
    pub accel: qemu::AccelChoice,
    /// `--mem MIB`: guest memory; each app has its own default.
    pub mem_mib: Option<u64>,
    /// `-v`/`--verbose`: print the VMM command and, after QEMU, the guest's
    /// console log on stderr.
    pub verbose: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            // vmrunkernel exists only on Akaros; QEMU is what Linux has.
            vmm: if cfg!(target_os = "linux") {
                Vmm::Qemu
            } else {
                Vmm::Akaros
            },
            kernel: None,
            accel: qemu::AccelChoice::Auto,
            mem_mib: None,
            verbose: false,
        }
    }
}

/// For each app's usage text.
pub const OPTIONS_HELP: &str = "\
VM options (before the app's own arguments; `--` ends them):
  --vmm qemu|akaros     the VMM [default: qemu on Linux]: QEMU with the disk
                        as virtio-blk and the guest console on this terminal,
                        or Akaros' vmrunkernel
  --kernel FILE         boot FILE (QEMU: a bzImage) instead of the kernel the
                        app carries (QEMU) or /lib/vmlinux (Akaros)
  --accel auto|kvm|tcg  QEMU accelerator [default: auto: KVM when /dev/kvm is
                        usable and boots, else TCG]
  --mem MIB             guest memory in MiB
  -v, --verbose         print the VMM command line and the guest's boot log
  -h, --help            this help";

/// Takes the runner's options from the front of `args` (program name
/// already removed); returns them and the app's arguments, or `None` for
/// `--help`.
pub fn parse_options(args: Vec<OsString>) -> Result<Option<(Options, Vec<OsString>)>> {
    let mut o = Options::default();
    let mut it = args.into_iter().peekable();
    while let Some(arg) = it.peek() {
        let Some(s) = arg.to_str() else { break };
        let (flag, inline) = match s.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (s.to_string(), None),
        };
        let takes_value = matches!(flag.as_str(), "--vmm" | "--kernel" | "--accel" | "--mem");
        match flag.as_str() {
            "--" => {
                it.next();
                break;
            }
            "-h" | "--help" => return Ok(None),
            "-v" | "--verbose" => {
                it.next();
                o.verbose = true;
                continue;
            }
            _ if !takes_value => break,
            _ => {}
        }
        it.next();
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .with_context(|| format!("{flag} needs a value"))?
                .into_string()
                .map_err(|v| anyhow::anyhow!("{flag} {v:?}: not UTF-8"))?,
        };
        match flag.as_str() {
            "--vmm" => {
                o.vmm = match value.as_str() {
                    "qemu" => Vmm::Qemu,
                    "akaros" => Vmm::Akaros,
                    _ => bail!("--vmm {value:?}: expected qemu or akaros"),
                }
            }
            // Absolute: vmrunkernel runs in the private directory.
            "--kernel" => {
                o.kernel = Some(
                    std::path::absolute(&value)
                        .with_context(|| format!("--kernel {value}: cannot resolve the path"))?,
                )
            }
            "--accel" => {
                o.accel = value
                    .parse()
                    .map_err(|e: String| anyhow::anyhow!("--accel {e}"))?
            }
            "--mem" => {
                o.mem_mib = Some(value.parse().ok().filter(|&m: &u64| m > 0).with_context(
                    || format!("--mem {value:?}: expected a size in MiB, e.g. 256"),
                )?)
            }
            _ => unreachable!("only flags with values get here"),
        }
    }
    Ok(Some((o, it.collect())))
}

/// An app's `main`: runs `f` on the arguments and turns its result into
/// the exit status; errors are printed as `NAME: error: ...`.
pub fn main(name: &str, f: impl FnOnce(Vec<OsString>) -> Result<u8>) -> ExitCode {
    match f(std::env::args_os().skip(1).collect()) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("{name}: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The absolute path of the disk image, checked before anything starts.
pub fn disk_path(disk: &OsStr) -> Result<PathBuf> {
    let p = Path::new(disk);
    let md =
        std::fs::metadata(p).with_context(|| format!("cannot use the disk {}", p.display()))?;
    if md.is_dir() {
        bail!(
            "the disk {} is a directory: give a disk image file or a block device",
            p.display()
        );
    }
    std::fs::canonicalize(p).with_context(|| format!("cannot resolve the disk {}", p.display()))
}

/// What the payload unpacked into the work directory.
#[derive(Debug, Clone)]
pub struct Image {
    pub initramfs: PathBuf,
    /// The carried kernel, if the app has one.
    pub kernel: Option<PathBuf>,
}

/// One run of an app: its options, private directory and unpacked image.
pub struct Session {
    pub app: String,
    pub opts: Options,
    pub image: Image,
    // Dropped last: the terminal is restored before the directory goes.
    _terminal: terminal::Restore,
    pub dir: Workdir,
}

impl Session {
    /// Catches SIGINT/SIGTERM/SIGHUP (so the directory is always removed),
    /// creates the private directory and unpacks the app's own payload.
    pub fn start(app: &str, opts: Options) -> Result<Session> {
        signals::install();
        let dir = Workdir::create(app)?;
        let exe = Path::new("/proc/self/exe");
        let bytes = std::fs::read(exe)
            .or_else(|_| std::env::current_exe().and_then(std::fs::read))
            .context("cannot read this program's own file to find its payload")?;
        let image = unpack(&bytes, &dir)?;
        Ok(Session {
            app: app.to_string(),
            opts,
            image,
            _terminal: terminal::Restore::save(),
            dir,
        })
    }

    /// Writes `name` in the private directory.
    pub fn write(&self, name: &str, contents: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    /// The kernel QEMU boots: `--kernel`, else the carried one.
    pub fn qemu_kernel(&self) -> Result<PathBuf> {
        match (&self.opts.kernel, &self.image.kernel) {
            (Some(k), _) => {
                if !k.is_file() {
                    bail!("--kernel {}: no such file", k.display());
                }
                Ok(k.clone())
            }
            (None, Some(k)) => Ok(k.clone()),
            (None, None) => bail!(
                "this {} carries no kernel (built with `cargo xtask vm-app --no-kernel`): \
                 pass --kernel BZIMAGE (one with virtio-blk built in, e.g. the project's bzImage)",
                self.app
            ),
        }
    }

    /// Runs `vmrunkernel` in the private directory (where `guest_cmdline`,
    /// `vnet_opts` and `initramfs` are) and waits for it; signals stop it.
    pub fn run_akaros(&self, args: &akaros::Args) -> Result<Waited> {
        let mut child = self.spawn_akaros(args, Stdio::inherit(), false)?;
        wait(&mut child, &mut |_, child| forward_term(child))
    }

    /// Starts `vmrunkernel` in the private directory; `quiet` sends its
    /// output (the guest's console) to /dev/null, as mount-fs did.
    pub fn spawn_akaros(&self, args: &akaros::Args, stdin: Stdio, quiet: bool) -> Result<Child> {
        let argv = args.argv();
        if self.opts.verbose {
            eprintln!(
                "{}: in {}: {}",
                self.app,
                self.dir.path().display(),
                akaros::shell_line(&argv)
            );
        }
        let mut cmd = Command::new(akaros::VMRUNKERNEL);
        cmd.args(&argv).current_dir(self.dir.path()).stdin(stdin);
        if quiet {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        cmd.spawn().with_context(|| {
            format!(
                "cannot run {}: it exists only on Akaros (on Linux use --vmm qemu)",
                akaros::VMRUNKERNEL
            )
        })
    }

    /// Runs QEMU and waits for it. With `--accel auto` and a usable
    /// /dev/kvm, a guest that prints nothing on its serial console within
    /// [`KVM_WATCHDOG`] (nested KVM that hangs) is stopped and QEMU is run
    /// again with TCG, saying so. `detach` puts QEMU in its own process
    /// group, so a Ctrl-C on the terminal reaches only the app (which can
    /// then stop the guest cleanly); `on_start` runs once the guest boots
    /// (if it fails, QEMU is stopped).
    pub fn run_qemu(
        &self,
        args: &mut qemu::Args,
        // A function, not a Stdio: the KVM attempt consumes one, and the
        // TCG retry needs a fresh one of the same kind.
        stdin: fn() -> Stdio,
        detach: bool,
        mut on_start: impl FnMut(&mut Child) -> Result<()>,
        on_signal: &mut dyn FnMut(i32, &mut Child) -> Result<()>,
    ) -> Result<Waited> {
        let decision = qemu::choose_accel(self.opts.accel, Path::new(qemu::KVM_DEVICE))?;
        if let Some(note) = &decision.note {
            eprintln!("{}: {note}", self.app);
        }
        args.accel = decision.accel;
        loop {
            let argv = args.argv();
            if self.opts.verbose {
                eprintln!("{}: {}", self.app, qemu::shell_line(&argv));
            }
            let mut cmd = Command::new(qemu::QEMU);
            cmd.args(&argv).stdin(stdin());
            if detach {
                std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            }
            let mut child = cmd.spawn().with_context(|| {
                format!(
                    "cannot run {} (apt-get install {})",
                    qemu::QEMU,
                    qemu::QEMU_PACKAGE
                )
            })?;
            if args.accel == qemu::Accel::Kvm
                && decision.watch
                && !watch_first_output(&mut child, &args.console_log)?
            {
                eprintln!(
                    "{}: KVM started no guest within {}s (nested KVM?); retrying with TCG \
                     (--accel tcg skips KVM)",
                    self.app,
                    KVM_WATCHDOG.as_secs()
                );
                args.accel = qemu::Accel::Tcg;
                let _ = std::fs::remove_file(&args.console_log);
                continue;
            }
            if let Err(e) = on_start(&mut child) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
            let waited = wait(&mut child, on_signal)?;
            if self.opts.verbose {
                eprintln!(
                    "{}: guest console log:\n{}",
                    self.app,
                    read_log(&args.console_log)
                );
            }
            return Ok(waited);
        }
    }
}

/// How long a KVM guest may stay silent before we assume KVM is broken.
pub const KVM_WATCHDOG: Duration = Duration::from_secs(8);

/// Waits until the console log has content (`true`), QEMU exited
/// (`true`: let the caller see its status) or the watchdog fired (QEMU is
/// killed, `false`).
fn watch_first_output(child: &mut Child, log: &Path) -> Result<bool> {
    let start = Instant::now();
    loop {
        if std::fs::metadata(log).map(|m| m.len() > 0).unwrap_or(false) {
            return Ok(true);
        }
        if child.try_wait().context("cannot wait for QEMU")?.is_some() {
            return Ok(true);
        }
        if signals::pending().is_some() {
            return Ok(true);
        }
        if start.elapsed() > KVM_WATCHDOG {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The guest's console log, lossily decoded ("" when there is none).
pub fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `n` lines of `text`, for error messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// How the VMM ended.
#[derive(Debug, Clone, Copy)]
pub struct Waited {
    pub status: ExitStatus,
    /// The last signal the app received while waiting, if any.
    pub signal: Option<i32>,
}

impl Waited {
    /// The app's exit code when the run was interrupted: 128 + signal.
    pub fn interrupted_code(&self) -> Option<u8> {
        self.signal.map(|s| (128 + s).min(255) as u8)
    }
}

/// The default reaction to SIGINT/SIGTERM/SIGHUP: ask the VMM to stop.
pub fn forward_term(child: &mut Child) -> Result<()> {
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    Ok(())
}

/// Waits for `child`; every new signal is handed to `on_signal` once. If
/// the child outlives a signal by 10 s it is killed.
pub fn wait(
    child: &mut Child,
    on_signal: &mut dyn FnMut(i32, &mut Child) -> Result<()>,
) -> Result<Waited> {
    // From 0: a signal that came while the VMM was starting counts too.
    let mut seen = 0;
    let mut last_signal_at: Option<Instant> = None;
    loop {
        if let Some(status) = child.try_wait().context("cannot wait for the VMM")? {
            return Ok(Waited {
                status,
                signal: signals::pending(),
            });
        }
        let now = signals::count();
        if now != seen {
            seen = now;
            last_signal_at = Some(Instant::now());
            if let Some(sig) = signals::pending() {
                on_signal(sig, child)?;
            }
        }
        if last_signal_at.is_some_and(|t| t.elapsed() > Duration::from_secs(10)) {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Splits the payload of `exe` (this program's bytes) into the work
/// directory: `initramfs` and, when carried, `bzImage`.
pub fn unpack(exe: &[u8], dir: &Workdir) -> Result<Image> {
    let payload = payload::extract(exe).context(
        "this program has no payload (no `PAYLOAD:` line after it): build it with `cargo xtask vm-app NAME`",
    )?;
    let bundle = payload::bundle::parse(payload)?;
    let initramfs = dir.path().join("initramfs");
    std::fs::write(&initramfs, bundle.initramfs)
        .with_context(|| format!("cannot write {}", initramfs.display()))?;
    let kernel = match bundle.kernel {
        Some(k) => {
            let path = dir.path().join("bzImage");
            std::fs::write(&path, k).with_context(|| format!("cannot write {}", path.display()))?;
            Some(path)
        }
        None => None,
    };
    Ok(Image { initramfs, kernel })
}

/// Encodes arguments for one kernel command-line word, as the old scripts
/// did: each argument preceded by `\040` (an octal-escaped space; the
/// guest's rcS decodes it), spaces inside an argument escaped too.
pub fn encode_args(args: &[OsString]) -> Result<String> {
    let mut out = String::new();
    for a in args {
        let s = a
            .to_str()
            .with_context(|| format!("argument {a:?} is not UTF-8"))?;
        if let Some(c) = s
            .chars()
            .find(|&c| c == '"' || c == '\\' || (c.is_whitespace() && c != ' ') || c.is_control())
        {
            bail!("argument {s:?}: {c:?} cannot be passed on the guest's kernel command line");
        }
        out.push_str("\\040");
        out.push_str(&s.replace(' ', "\\040"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn options_come_first_and_stop_at_the_first_other_argument() {
        let (o, rest) = parse_options(os(&[
            "--vmm", "akaros", "--mem=64", "-l", "--kernel", "x", "d",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(o.vmm, Vmm::Akaros);
        assert_eq!(o.mem_mib, Some(64));
        assert_eq!(o.kernel, None);
        assert_eq!(rest, os(&["-l", "--kernel", "x", "d"]));

        let (o, rest) = parse_options(os(&["-v", "--accel", "tcg", "--", "--vmm", "d"]))
            .unwrap()
            .unwrap();
        assert!(o.verbose);
        assert_eq!(o.accel, qemu::AccelChoice::Tcg);
        assert_eq!(rest, os(&["--vmm", "d"]));

        assert!(parse_options(os(&["--help", "d"])).unwrap().is_none());
        for bad in [
            &["--vmm", "xen"][..],
            &["--mem", "0"],
            &["--accel", "hvf"],
            &["--kernel"],
        ] {
            assert!(parse_options(os(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn args_are_octal_escaped_like_the_old_scripts() {
        assert_eq!(encode_args(&os(&["-l"])).unwrap(), r"\040-l");
        assert_eq!(
            encode_args(&os(&["-u", "-c dos"])).unwrap(),
            r"\040-u\040-c\040dos"
        );
        assert_eq!(encode_args(&[]).unwrap(), "");
        assert!(encode_args(&os(&["a\"b"])).is_err());
        assert!(encode_args(&os(&["a\tb"])).is_err());
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
