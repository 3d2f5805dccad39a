//! `cargo xtask run-cloud-hypervisor`: the old README's Cloud Hypervisor
//! invocation, with an API socket in the build directory so that
//! `cargo xtask stop` can shut the guest down cleanly.

use anyhow::{bail, Result};
use camino::Utf8PathBuf;
use vmm::cloud_hypervisor::{self, Net, Options, MAGIC_MAC};

use crate::config::Config;

#[derive(clap::Args)]
pub struct Flags {
    /// The cloud-hypervisor binary (a name is looked up on PATH)
    #[arg(long, value_name = "PATH", default_value = "cloud-hypervisor")]
    ch: Utf8PathBuf,
    /// Virtual CPUs (--cpus boot=N)
    #[arg(long, default_value_t = 8)]
    cpus: u32,
    /// Memory in MiB (--memory size=NM)
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    memory: u32,
    /// The kernel [default: <build dir>/vmlinux]
    #[arg(long, value_name = "FILE")]
    kernel: Option<Utf8PathBuf>,
    /// The initramfs [default: <build dir>/initramfs.cpio.gz]
    #[arg(long, value_name = "FILE")]
    initramfs: Option<Utf8PathBuf>,
    /// The guest kernel command line
    #[arg(long, default_value = "console=ttyS0 nozswap")]
    cmdline: String,
    /// Tap device for the guest's network (see tap-up)
    #[arg(long, default_value = "tap-vm")]
    tap: String,
    /// The guest's MAC (the default makes tc-sys.sh set static addresses)
    #[arg(long, default_value = MAGIC_MAC)]
    mac: String,
    /// No network device
    #[arg(long)]
    no_net: bool,
    /// The API socket `stop` talks to [default: <build dir>/cloud-hypervisor.sock]
    #[arg(long, value_name = "PATH")]
    api_socket: Option<Utf8PathBuf>,
    /// The KVM device that must open read-write before starting
    #[arg(long, value_name = "PATH", default_value = "/dev/kvm")]
    kvm_device: Utf8PathBuf,
    /// Print the command line instead of running it
    #[arg(long)]
    print: bool,
}

/// The build directory's API socket (shared with `stop`).
pub fn default_api_socket(c: &Config) -> Utf8PathBuf {
    c.build_dir.value.join("cloud-hypervisor.sock")
}

pub fn run(c: &Config, f: &Flags) -> Result<()> {
    let b = &c.build_dir.value;
    let o = Options {
        binary: f.ch.clone(),
        cpus: f.cpus,
        memory_mib: f.memory,
        kernel: f.kernel.clone().unwrap_or_else(|| b.join("vmlinux")),
        initramfs: f
            .initramfs
            .clone()
            .unwrap_or_else(|| b.join("initramfs.cpio.gz")),
        cmdline: f.cmdline.clone(),
        net: (!f.no_net).then(|| Net {
            tap: f.tap.clone(),
            mac: f.mac.clone(),
        }),
        api_socket: f
            .api_socket
            .clone()
            .unwrap_or_else(|| default_api_socket(c)),
    };
    if f.print {
        println!(
            "{}",
            vmm::akaros::shell_line(&o.binary, &cloud_hypervisor::args(&o))
        );
        return Ok(());
    }
    cloud_hypervisor::check_kvm(&f.kvm_device)?;
    let status = cloud_hypervisor::run(&o)?;
    if !status.success() {
        bail!("{} exited with {status}", o.binary);
    }
    Ok(())
}
