//! `cargo xtask`: builds a Linux guest kernel and a Tiny Core initramfs,
//! without root. See README.md for the tasks; `cargo xtask help TASK` for
//! each one's flags.

mod config;
mod tasks;

use camino::Utf8PathBuf;
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Overrides};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, pack and boot a Tiny Core Linux guest",
    version
)]
struct Cli {
    #[command(flatten)]
    global: GlobalFlags,
    #[command(subcommand)]
    task: Task,
}

/// Flags every task understands.
#[derive(Args, Clone, Default)]
pub struct GlobalFlags {
    /// Configuration file [default: guest/guest.toml; env LINUX_GUEST_CONFIG]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<Utf8PathBuf>,
    /// Where everything generated goes [default: target/guest; env LINUX_GUEST_BUILD_DIR]
    #[arg(long, global = true, value_name = "DIR")]
    build_dir: Option<Utf8PathBuf>,
}

#[derive(Subcommand)]
enum Task {
    /// Print the effective configuration and where each value came from.
    Config,
    /// Download Tiny Core and PACKAGES (verified, cached), unpack them into
    /// tc_root as the invoking user, record ownership/devices/setuid bits in
    /// tc_root.manifest, and apply the guest edits.
    SetupTinycore(tasks::setup_tinycore::Flags),
    /// Pack tc_root + its manifest into the initramfs (reproducible, atomic).
    Rebuild(tasks::rebuild::Flags),
    /// List the regular files of an initramfs, smallest first, with a summary.
    CatCpio(tasks::cat_cpio::Flags),
    /// DST = SRC, a newline, a `PAYLOAD:` line, then PAYLOAD (the VM-app format).
    EmbedPayload(tasks::embed_payload::Flags),
    /// Check that the host tools the tasks and tests use are installed.
    Doctor,
    /// Install what the tests need (when root), then run every test.
    Test(tasks::test::Flags),
    /// Time our setup and packing against the shell pipelines they replace.
    Bench(tasks::bench::Flags),
    /// Build the Tiny Core-shaped test mirror and serve it on 127.0.0.1.
    TestMirror(tasks::test_mirror::Flags),
}

impl GlobalFlags {
    fn overrides(&self) -> Overrides {
        Overrides {
            config_file: self.config.clone(),
            build_dir: self.build_dir.clone(),
            ..Default::default()
        }
    }
}

fn load_config(global: &GlobalFlags, extra: impl FnOnce(&mut Overrides)) -> anyhow::Result<Config> {
    let mut o = global.overrides();
    extra(&mut o);
    Config::load(&config::workspace_root(), &o, &config::process_env)
}

fn main() {
    let cli = Cli::parse();
    let g = &cli.global;
    let result = match cli.task {
        Task::Config => load_config(g, |_| {}).map(|c| print!("{}", c.describe())),
        Task::SetupTinycore(f) => {
            load_config(g, |o| f.apply(o)).and_then(|c| tasks::setup_tinycore::run(&c, &f))
        }
        Task::Rebuild(f) => {
            load_config(g, |o| f.apply(o)).and_then(|c| tasks::rebuild::run(&c, &f))
        }
        Task::CatCpio(f) => load_config(g, |_| {}).and_then(|c| tasks::cat_cpio::run(&c, &f)),
        Task::EmbedPayload(f) => tasks::embed_payload::run(&f),
        Task::Doctor => tasks::doctor::run(),
        Task::Test(f) => tasks::test::run(&f),
        Task::Bench(f) => load_config(g, |_| {}).and_then(|c| tasks::bench::run(&c, &f)),
        Task::TestMirror(f) => load_config(g, |_| {}).and_then(|c| tasks::test_mirror::run(&c, &f)),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
