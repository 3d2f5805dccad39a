//! Akaros' `vmrunkernel`: the guest command-line file, the `vnet_opts`
//! file, and `vmrunkernel -k CMDLINE -n VNET_OPTS -N CPUS -i INITRAMFS VMLINUX`
//! (the old README's invocation).

use std::process::{Command, ExitStatus};

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

/// The guest kernel command line, one parameter a line as vmrunkernel's
/// `-k` file had it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmdline {
    /// `earlyprintk=akaros`: kernel messages before the console is up.
    pub earlyprintk: bool,
    /// Anything else, appended after the standard lines.
    pub extra: Vec<String>,
}

impl Cmdline {
    pub fn render(&self) -> String {
        let mut lines = vec![];
        if self.earlyprintk {
            lines.push("earlyprintk=akaros".to_string());
        }
        // Akaros' virtio console is hvc0; mitigations cost a lot in a VM
        // and buy nothing for a throwaway guest; nozswap keeps TC from
        // waiting for zram the kernel does not have.
        for l in ["console=hvc0", "mitigations=off", "nozswap"] {
            lines.push(l.to_string());
        }
        lines.extend(self.extra.iter().cloned());
        lines.iter().map(|l| format!("{l}\n")).collect()
    }
}

/// A host port forwarded to a guest port by Akaros' virtual network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForward {
    /// `tcp` or `udp`.
    pub proto: String,
    pub host: u16,
    pub guest: u16,
}

impl std::str::FromStr for PortForward {
    type Err = anyhow::Error;
    /// `HOST:GUEST` (tcp) or `PROTO:HOST:GUEST`, e.g. `tcp:23:22`.
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        let (proto, host, guest) = match parts.as_slice() {
            [h, g] => ("tcp", *h, *g),
            [p, h, g] => (*p, *h, *g),
            _ => bail!(
                "port forward {s:?} should be HOST:GUEST or PROTO:HOST:GUEST (e.g. tcp:23:22)"
            ),
        };
        if !matches!(proto, "tcp" | "udp") {
            bail!("port forward {s:?}: protocol must be tcp or udp");
        }
        let port = |v: &str| -> Result<u16> {
            v.parse()
                .with_context(|| format!("port forward {s:?}: {v:?} is not a port number"))
        };
        Ok(PortForward {
            proto: proto.to_string(),
            host: port(host)?,
            guest: port(guest)?,
        })
    }
}

/// `vnet_opts`: Akaros' virtual network options, each selectable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VnetOpts {
    /// Log every packet (`snoop`).
    pub snoop: bool,
    /// `nat_timeout = N` seconds.
    pub nat_timeout: Option<u32>,
    /// `map_diagnostics`.
    pub map_diagnostics: bool,
    /// `port:PROTO:HOST:GUEST` lines; the README's `port:tcp:23:22` lets
    /// `ssh -p 23 AKAROS_HOST` reach the guest's sshd.
    pub ports: Vec<PortForward>,
}

impl Default for VnetOpts {
    /// The old README's file.
    fn default() -> Self {
        VnetOpts {
            snoop: true,
            nat_timeout: Some(30),
            map_diagnostics: true,
            ports: vec![PortForward {
                proto: "tcp".into(),
                host: 23,
                guest: 22,
            }],
        }
    }
}

impl VnetOpts {
    pub fn render(&self) -> String {
        let mut s = String::new();
        if self.snoop {
            s.push_str("snoop\n");
        }
        if let Some(t) = self.nat_timeout {
            s.push_str(&format!("nat_timeout = {t}\n"));
        }
        if self.map_diagnostics {
            s.push_str("map_diagnostics\n");
        }
        for p in &self.ports {
            s.push_str(&format!("port:{}:{}:{}\n", p.proto, p.host, p.guest));
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        self.render().is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// `vmrunkernel` (a name is looked up on PATH).
    pub binary: Utf8PathBuf,
    pub cpus: u32,
    pub kernel: Utf8PathBuf,
    pub initramfs: Utf8PathBuf,
    pub cmdline: Cmdline,
    pub vnet: VnetOpts,
    /// Where the two files go (inside the build directory).
    pub dir: Utf8PathBuf,
}

/// The files written for one run.
#[derive(Debug, Clone)]
pub struct Files {
    pub cmdline: Utf8PathBuf,
    /// `None` when no vnet option is selected: `-n` is left out.
    pub vnet_opts: Option<Utf8PathBuf>,
}

/// Writes `DIR/guest_cmdline` and (unless empty) `DIR/vnet_opts`
/// atomically; removes an old `vnet_opts` that is no longer wanted so it
/// cannot be mistaken for this run's.
pub fn write_files(o: &Options) -> Result<Files> {
    std::fs::create_dir_all(&o.dir).with_context(|| format!("cannot create {}", o.dir))?;
    let cmdline = o.dir.join("guest_cmdline");
    rootfs::fsutil::write_atomic(&cmdline, o.cmdline.render().as_bytes())?;
    let vnet = o.dir.join("vnet_opts");
    let vnet_opts = if o.vnet.is_empty() {
        match std::fs::remove_file(&vnet) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove the old {vnet}")),
        }
        None
    } else {
        rootfs::fsutil::write_atomic(&vnet, o.vnet.render().as_bytes())?;
        Some(vnet)
    };
    Ok(Files { cmdline, vnet_opts })
}

/// `vmrunkernel`'s arguments for the written files.
pub fn args(o: &Options, f: &Files) -> Vec<String> {
    let mut a = vec!["-k".to_string(), f.cmdline.to_string()];
    if let Some(v) = &f.vnet_opts {
        a.push("-n".into());
        a.push(v.to_string());
    }
    a.extend([
        "-N".to_string(),
        o.cpus.to_string(),
        "-i".to_string(),
        o.initramfs.to_string(),
        o.kernel.to_string(),
    ]);
    a
}

/// A command as one shell line, quoted where needed (the run tasks' `--print`).
pub fn shell_line(binary: &Utf8Path, args: &[String]) -> String {
    vmapp::shell::line(binary.as_str(), args)
}

/// Checks the inputs exist, writes the files and runs vmrunkernel in the
/// foreground.
pub fn run(o: &Options) -> Result<ExitStatus> {
    check_inputs(o)?;
    let files = write_files(o)?;
    let args = args(o, &files);
    Command::new(o.binary.as_str())
        .args(&args)
        .status()
        .with_context(|| {
            format!(
                "cannot run {}: vmrunkernel exists only on Akaros; use --print to get the command line",
                o.binary
            )
        })
}

pub fn check_inputs(o: &Options) -> Result<()> {
    for (what, p) in [("kernel", &o.kernel), ("initramfs", &o.initramfs)] {
        if !p.is_file() {
            bail!("the {what} {p} does not exist: run `cargo xtask full-build` (or pass its path)");
        }
    }
    Ok(())
}
