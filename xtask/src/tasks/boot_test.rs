//! `cargo xtask boot-test`: boot headless, wait for the ready marker the
//! image prints, run optional checks on the console shell, power off, and
//! report the boot time to ready. CI uses it.

use std::time::Duration;

use anyhow::{Context, Result};
use vmm::boot::{BootTest, Ending};
use vmm::qemu::{self, Console, Io, Net};

use crate::config::Config;
use crate::tasks::run_qemu::GuestFlags;

/// What bootlocal.sh prints when it ends (tinycore::edits::BOOTLOCAL_SH).
pub const READY_MARKER: &str = "linux-guest: ready";

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
    /// The guest console: ttyS0 or hvc0
    #[arg(long, default_value = "ttyS0", value_name = "ttyS0|hvc0")]
    console: Console,
    /// The console line that means "ready" (an rcS override can print its own)
    #[arg(long, default_value = READY_MARKER, value_name = "TEXT")]
    marker: String,
    /// Text the console must show by the time the marker appears (repeatable)
    #[arg(long, value_name = "TEXT")]
    expect: Vec<String>,
    /// A shell command to run on the console once ready; must exit 0 (repeatable)
    #[arg(long, value_name = "CMD")]
    check: Vec<String>,
    /// Seconds to wait for the marker (and for each check)
    #[arg(long, default_value_t = 180, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: u64,
    /// Seconds for a shell prompt and the power-off once ready
    #[arg(long, default_value_t = 60, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    shutdown_timeout: u64,
    /// Copy the console to stderr as it arrives
    #[arg(long, short)]
    verbose: bool,
}

pub fn run(c: &Config, f: &Flags) -> Result<()> {
    let mut o = f.guest.qemu_options(c)?;
    o.smp = f.smp;
    o.memory_mib = f.memory;
    o.console = f.console;
    o.net = Net::None;
    o.io = Io::Headless;
    let t = BootTest {
        marker: f.marker.clone(),
        expect: f.expect.clone(),
        checks: f.check.clone(),
        timeout: Duration::from_secs(f.timeout),
        shutdown_timeout: Duration::from_secs(f.shutdown_timeout),
        echo: f.verbose,
    };
    let r = vmm::boot::boot_test(qemu::QEMU, &o.args(), &t).context("boot-test failed")?;
    for ch in &r.checks {
        eprintln!("check `{}`: exit {}", ch.command, ch.status);
    }
    let ending = match r.ending {
        Ending::ByItself => "the guest powered off by itself",
        Ending::Poweroff => "powered off",
    };
    println!(
        "boot-test: ready after {:.1}s ({}), {} check(s) passed, {ending}",
        r.ready_after.as_secs_f64(),
        o.accel,
        r.checks.len()
    );
    Ok(())
}
