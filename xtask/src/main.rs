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
    /// Everything from scratch: kernel config, progs, setup-tinycore (with
    /// binaries, removals, ssh keys), then rebuild; optionally --deploy.
    FullBuild(tasks::full_build::Flags),
    /// Build the kernel and its modules (unless --skip-kernel), put the
    /// modules into tc_root, pack the initramfs (reproducible, atomic) and
    /// embed it when CONFIG_INITRAMFS_SOURCE names it.
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
    /// Build the guest helper programs (tinyreboot, vsock-cat, vsock-server)
    /// as static musl binaries; print their paths and sizes.
    Progs(tasks::progs::Flags),
    /// Boot vmlinux + the initramfs in Cloud Hypervisor (needs KVM), with an
    /// API socket in the build directory for `stop`.
    RunCloudHypervisor(tasks::run_cloud_hypervisor::Flags),
    /// Shut down the guest run-cloud-hypervisor started: ACPI power button,
    /// then VMM shutdown.
    Stop(tasks::stop::Flags),
    /// Write Akaros' guest command-line and vnet_opts files, then run or
    /// print vmrunkernel.
    RunAkaros(tasks::run_akaros::Flags),
    /// Create the bridge br-vm (10.0.2.2/24, fd0:1234:4321::2/64) with tap
    /// tap-vm enslaved (root; idempotent; --dry-run prints the commands).
    TapUp(tasks::tap::Flags),
    /// Remove the tap and the bridge (root; idempotent).
    TapDown(tasks::tap::Flags),
    /// Print ssh stanzas for the guest (qemu, qemu-tap, linux-guest) with
    /// its host keys pinned.
    SshConfig(tasks::ssh::ConfigFlags),
    /// ssh into the running guest [-- CMD].
    Ssh(tasks::ssh::Flags),
    /// Build a self-extracting VM app (fdisk, mount-fs) in <build dir>/vm-apps/NAME:
    /// tc_root plus the app's rcS, the kernel, and the app's runner.
    VmApp(tasks::vm_app::Flags),
    /// Boot the last build in QEMU (KVM when usable, else TCG; user, tap or
    /// no network); the terminal is restored when QEMU exits.
    RunQemu(tasks::run_qemu::Flags),
    /// Boot headless, wait for the ready marker, run --check commands,
    /// power off; prints the boot time to ready.
    BootTest(tasks::boot_test::Flags),
    /// Run one command in a fresh guest [--share DIR] -- CMD ARGS...; its
    /// stdout, stderr and exit status become ours.
    VmExec(tasks::vm_exec::Flags),
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
        Task::FullBuild(f) => {
            load_config(g, |o| f.apply(o)).and_then(|c| tasks::full_build::run(&c, &f))
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
        Task::Progs(f) => load_config(g, |_| {}).and_then(|c| tasks::progs::run(&c, &f)),
        Task::RunCloudHypervisor(f) => {
            load_config(g, |_| {}).and_then(|c| tasks::run_cloud_hypervisor::run(&c, &f))
        }
        Task::Stop(f) => load_config(g, |_| {}).and_then(|c| tasks::stop::run(&c, &f)),
        Task::RunAkaros(f) => load_config(g, |_| {}).and_then(|c| tasks::run_akaros::run(&c, &f)),
        Task::TapUp(f) => tasks::tap::up(&f),
        Task::TapDown(f) => tasks::tap::down(&f),
        Task::SshConfig(f) => load_config(g, |_| {}).and_then(|c| tasks::ssh::print_config(&c, &f)),
        Task::Ssh(f) => load_config(g, |_| {}).and_then(|c| tasks::ssh::run(&c, &f)),
        Task::VmApp(f) => load_config(g, |_| {}).and_then(|c| tasks::vm_app::run(&c, &f)),
        Task::RunQemu(f) => load_config(g, |_| {}).and_then(|c| tasks::run_qemu::run(&c, &f)),
        Task::BootTest(f) => load_config(g, |_| {}).and_then(|c| tasks::boot_test::run(&c, &f)),
        Task::VmExec(f) => load_config(g, |_| {}).and_then(|c| tasks::vm_exec::run(&c, &f)),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
