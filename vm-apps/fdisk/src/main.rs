//! `fdisk [VM OPTIONS] [FDISK ARGS] DISK`: fdisk on DISK, run inside a VM
//! (the guest's busybox fdisk on /dev/vda), with its output on this
//! program's stdout and its exit status as ours.
//!
//! The guest side is `guest/rcS-fdisk`: it decodes `fdisk_args=` from the
//! kernel command line, runs fdisk with the virtio console as its
//! terminal, reports `rcS-fdisk: fdisk exited with status N` on the serial
//! console (our log) and powers off.

use std::ffi::OsString;
use std::process::Stdio;

use anyhow::{bail, Result};
use vmapp::{akaros, qemu, Session, Vmm};

const USAGE: &str = "usage: fdisk [VM OPTIONS] [FDISK ARGS] DISK\n\
Runs fdisk on DISK (an image file or a block device) inside a VM.\n\
Example: fdisk -l disk.img";

/// What the guest's rcS prints on the serial console when fdisk is done.
const STATUS_MARKER: &str = "rcS-fdisk: fdisk exited with status ";

fn main() -> std::process::ExitCode {
    vmapp::main("fdisk", run)
}

fn run(args: Vec<OsString>) -> Result<u8> {
    let Some((opts, rest)) = vmapp::parse_options(args)? else {
        println!("{USAGE}\n\n{}", vmapp::OPTIONS_HELP);
        return Ok(0);
    };
    let Some((disk, fdisk_args)) = rest.split_last() else {
        eprintln!("{USAGE}\n(`fdisk --help` for the VM options)");
        return Ok(2);
    };
    // Before anything starts: a typo must not boot a VM.
    let disk = vmapp::disk_path(disk)?;
    let fdisk_args = vmapp::encode_args(fdisk_args)?;
    let session = Session::start("fdisk", opts)?;
    match session.opts.vmm {
        Vmm::Akaros => {
            // The old script's file, line for line.
            session.write(
                "guest_cmdline",
                &format!(
                    "console=none\nlapic=notscdeadline\nnortc\nnozswap\nfdisk_args={fdisk_args}\n"
                ),
            )?;
            let args = akaros::Args {
                vnet_opts: false,
                mem_bytes: session.opts.mem_mib.map_or(0x4000000, |m| m << 20),
                disk,
                kernel: session
                    .opts
                    .kernel
                    .clone()
                    .unwrap_or_else(|| akaros::DEFAULT_KERNEL.into()),
            };
            let waited = session.run_akaros(&args)?;
            if let Some(code) = waited.interrupted_code() {
                return Ok(code);
            }
            Ok(waited.status.code().map_or(1, |c| c as u8))
        }
        Vmm::Qemu => {
            // console=ttyS0 sends the kernel's messages to the log, so only
            // fdisk talks on hvc0 (our stdout); -onlcr there keeps "\r\n"
            // out of piped output (a terminal adds its own \r).
            let words = [
                "console=ttyS0",
                "panic=-1",
                "nortc",
                "nozswap",
                "vmapp_stty=-onlcr",
                &format!("fdisk_args={fdisk_args}"),
            ];
            let cmdline = session.write("guest_cmdline", &(words.join("\n") + "\n"))?;
            let mut args = qemu::Args {
                accel: qemu::Accel::Tcg,
                mem_mib: session.opts.mem_mib.unwrap_or(256),
                kernel: session.qemu_kernel()?,
                initrd: session.image.initramfs.clone(),
                append: std::fs::read_to_string(&cmdline)?
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
                disk,
                read_only: false,
                console_log: session.dir.path().join("console.log"),
                forwards: vec![],
            };
            let waited = session.run_qemu(
                &mut args,
                Stdio::inherit,
                false,
                |_| Ok(()),
                &mut |_, child| vmapp::forward_term(child),
            )?;
            if let Some(code) = waited.interrupted_code() {
                return Ok(code);
            }
            let log = vmapp::read_log(&args.console_log);
            let status = log
                .lines()
                .rev()
                .filter_map(|l| l.trim_end().split(STATUS_MARKER).nth(1))
                .find_map(|n| n.trim().parse::<u8>().ok());
            match status {
                Some(s) if waited.status.success() => Ok(s),
                _ => bail!(
                    "the VM stopped before fdisk finished (QEMU: {}); the end of its console:\n{}",
                    waited.status,
                    vmapp::tail(&log, 25)
                ),
            }
        }
    }
}
