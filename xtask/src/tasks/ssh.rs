//! `cargo xtask ssh-config` and `cargo xtask ssh [-- CMD]`: the old
//! README's ssh stanzas, with the configured key and the guest's host keys
//! pinned in `<build dir>/ssh/known_hosts` (never `~/.ssh/known_hosts`).

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{Context, Result};
use vmm::ssh;

use crate::config::Config;

#[derive(clap::Args)]
pub struct ConfigFlags {}

#[derive(clap::Args)]
pub struct Flags {
    /// Which stanza: qemu (user networking, 127.0.0.1:5555), qemu-tap (10.0.2.15), linux-guest (127.0.0.1:2345)
    #[arg(long, default_value = "qemu", value_parser = ["qemu", "qemu-tap", "linux-guest"])]
    host: String,
    /// Another port than the stanza's (e.g. a different hostfwd)
    #[arg(long, short)]
    port: Option<u16>,
    /// Print the ssh command instead of running it
    #[arg(long)]
    print: bool,
    /// The command to run in the guest [default: a login shell]
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

pub fn print_config(c: &Config, _f: &ConfigFlags) -> Result<()> {
    let files = ssh::write_files(&c.build_dir.value, &c.ssh_key.value, c.sshd_port.value)?;
    println!(
        "# linux-guest ssh stanzas (key {}, from {}); add them to ~/.ssh/config, or\n\
         # `Include {}`. The guest's host keys are pinned in {}.\n",
        c.ssh_key.value, c.ssh_key.origin, files.config, files.known_hosts
    );
    print!(
        "{}",
        ssh::config(
            &ssh::targets(c.sshd_port.value),
            &c.ssh_key.value,
            &files.known_hosts
        )
    );
    println!("# Tunnels for guests on another machine:");
    for (host, line) in ssh::tunnel_commands() {
        println!("#   {host}: {line}");
    }
    Ok(())
}

pub fn run(c: &Config, f: &Flags) -> Result<()> {
    ssh::check_key(&c.ssh_key.value)?;
    let files = ssh::write_files(&c.build_dir.value, &c.ssh_key.value, c.sshd_port.value)?;
    let args = ssh::ssh_args(&files.config, &f.host, f.port, &f.command);
    if f.print {
        println!(
            "{}",
            vmm::akaros::shell_line(camino::Utf8Path::new("ssh"), &args)
        );
        return Ok(());
    }
    // exec: ssh owns the terminal and its exit status is ours.
    let err = Command::new("ssh").args(&args).exec();
    Err(err).context("cannot run ssh: apt-get install openssh-client")
}
