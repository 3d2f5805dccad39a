//! `cargo xtask vm-exec -- CMD ARGS...`: run one command in a fresh guest;
//! its stdout, stderr and exit status become ours.

use std::ffi::OsString;
use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use camino::Utf8PathBuf;
use vmm::exec::{self, CANNOT_RUN};

use crate::config::Config;
use crate::tasks::run_qemu::GuestFlags;

#[derive(clap::Args)]
pub struct Flags {
    #[command(flatten)]
    guest: GuestFlags,
    /// Virtual CPUs
    #[arg(long, default_value_t = 1)]
    smp: u32,
    /// Memory in MiB
    #[arg(long, short, default_value_t = 512, value_name = "MIB")]
    memory: u32,
    /// Host directory shared over 9p, mounted at /mnt/share in the guest
    /// and the command's working directory (the guest kernel needs 9p built in)
    #[arg(long, value_name = "DIR")]
    share: Option<Utf8PathBuf>,
    /// Seconds before the guest is killed
    #[arg(long, default_value_t = 600, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: u64,
    /// Say which accelerator was used, and how long it took (on stderr)
    #[arg(long, short)]
    verbose: bool,
    /// The command and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "CMD", value_parser = clap::value_parser!(OsString))]
    command: Vec<OsString>,
}

/// Exits with the command's status; 125 when it could not be run.
pub fn run(c: &Config, f: &Flags) -> Result<()> {
    match run_inner(c, f) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: vm-exec {}: {e:#}", exec::display(&f.command));
            std::process::exit(CANNOT_RUN);
        }
    }
}

fn run_inner(c: &Config, f: &Flags) -> Result<i32> {
    let (kernel, initrd) = f.guest.image(c)?;
    let decision = f.guest.accel()?;
    if f.verbose {
        eprintln!("{decision}");
    }
    let o = exec::Options {
        kernel,
        initrd,
        accel: decision.accel,
        smp: f.smp,
        memory_mib: f.memory,
        append: f.guest.append.clone(),
        share: f.share.clone(),
        argv: f.command.clone(),
        work_dir: c.build_dir.value.join("vm-exec"),
        timeout: Duration::from_secs(f.timeout),
    };
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let r = exec::run(&o, &mut out, &mut err)?;
    out.flush()?;
    if f.verbose {
        eprintln!("vm-exec: exit {} after {:.1?}", r.status, r.elapsed);
    }
    Ok(r.status)
}
