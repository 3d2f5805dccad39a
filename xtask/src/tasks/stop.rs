//! `cargo xtask stop`: shut down the guest that `run-cloud-hypervisor`
//! started, cleanly: the ACPI power button, then a VMM shutdown if the
//! guest does not power off in time (the old scripts used `killall`).

use std::time::Duration;

use anyhow::Result;
use camino::Utf8PathBuf;
use vmm::cloud_hypervisor::{self, Stopped};

use crate::config::Config;

#[derive(clap::Args)]
pub struct Flags {
    /// The VMM's API socket [default: <build dir>/cloud-hypervisor.sock]
    #[arg(long, value_name = "PATH")]
    api_socket: Option<Utf8PathBuf>,
    /// Seconds to wait for the guest to power off before shutting the VMM down
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    timeout: u64,
}

pub fn run(c: &Config, f: &Flags) -> Result<()> {
    let socket = f
        .api_socket
        .clone()
        .unwrap_or_else(|| super::run_cloud_hypervisor::default_api_socket(c));
    match cloud_hypervisor::stop(&socket, Duration::from_secs(f.timeout))? {
        Stopped::PowerButton => println!("the guest powered off (ACPI power button)"),
        Stopped::VmmShutdown => println!(
            "the guest ignored the power button for {}s; shut the VMM down (vmm.shutdown)",
            f.timeout
        ),
    }
    Ok(())
}
