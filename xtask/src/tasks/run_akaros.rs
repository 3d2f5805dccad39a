//! `cargo xtask run-akaros`: writes the guest command-line file and
//! `vnet_opts` into the build directory, then runs (on Akaros) or prints
//! `vmrunkernel -k FILE -n FILE -N CPUS -i INITRAMFS VMLINUX`.

use anyhow::{bail, Result};
use camino::Utf8PathBuf;
use vmm::akaros::{self, Cmdline, Options, PortForward, VnetOpts};

use crate::config::Config;

#[derive(clap::Args)]
pub struct Flags {
    /// The vmrunkernel binary (a name is looked up on PATH)
    #[arg(long, value_name = "PATH", default_value = "vmrunkernel")]
    vmrunkernel: Utf8PathBuf,
    /// Virtual CPUs (-N)
    #[arg(long, default_value_t = 8)]
    cpus: u32,
    /// The kernel [default: <build dir>/vmlinux]
    #[arg(long, value_name = "FILE")]
    kernel: Option<Utf8PathBuf>,
    /// The initramfs [default: <build dir>/initramfs.cpio.gz]
    #[arg(long, value_name = "FILE")]
    initramfs: Option<Utf8PathBuf>,
    /// Add `earlyprintk=akaros` to the command line
    #[arg(long)]
    earlyprintk: bool,
    /// More kernel parameters, one per flag (after console=hvc0 mitigations=off nozswap)
    #[arg(long = "append", value_name = "PARAM")]
    append: Vec<String>,
    /// Leave `snoop` out of vnet_opts
    #[arg(long)]
    no_snoop: bool,
    /// `nat_timeout = SECS` in vnet_opts
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    nat_timeout: u32,
    /// Leave `nat_timeout` out of vnet_opts
    #[arg(long)]
    no_nat_timeout: bool,
    /// Leave `map_diagnostics` out of vnet_opts
    #[arg(long)]
    no_map_diagnostics: bool,
    /// Forward a host port to the guest, [PROTO:]HOST:GUEST (repeatable) [default: tcp:23:22]
    #[arg(long = "port", value_name = "[PROTO:]HOST:GUEST")]
    ports: Vec<PortForward>,
    /// No port forwards
    #[arg(long, conflicts_with = "ports")]
    no_ports: bool,
    /// Write the files and print the command instead of running it
    #[arg(long)]
    print: bool,
}

pub fn run(c: &Config, f: &Flags) -> Result<()> {
    let b = &c.build_dir.value;
    let mut vnet = VnetOpts {
        snoop: !f.no_snoop,
        nat_timeout: (!f.no_nat_timeout).then_some(f.nat_timeout),
        map_diagnostics: !f.no_map_diagnostics,
        ..VnetOpts::default()
    };
    if f.no_ports {
        vnet.ports.clear();
    } else if !f.ports.is_empty() {
        vnet.ports = f.ports.clone();
    }
    let o = Options {
        binary: f.vmrunkernel.clone(),
        cpus: f.cpus,
        kernel: f.kernel.clone().unwrap_or_else(|| b.join("vmlinux")),
        initramfs: f
            .initramfs
            .clone()
            .unwrap_or_else(|| b.join("initramfs.cpio.gz")),
        cmdline: Cmdline {
            earlyprintk: f.earlyprintk,
            extra: f.append.clone(),
        },
        vnet,
        dir: b.join("akaros"),
    };
    if f.print {
        let files = akaros::write_files(&o)?;
        println!(
            "{}",
            akaros::shell_line(&o.binary, &akaros::args(&o, &files))
        );
        return Ok(());
    }
    let status = akaros::run(&o)?;
    if !status.success() {
        bail!("{} exited with {status}", o.binary);
    }
    Ok(())
}
