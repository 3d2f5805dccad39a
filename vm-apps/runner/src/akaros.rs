//! Akaros' `vmrunkernel`, invoked exactly as the old app scripts did, from
//! the app's private directory:
//!
//! ```text
//! vmrunkernel -k guest_cmdline [-n vnet_opts] -m MEM -f DISK -s /lib/vmlinux -i initramfs
//! ```

use std::ffi::OsString;
use std::path::PathBuf;

pub const VMRUNKERNEL: &str = "vmrunkernel";
/// Where Akaros keeps the guest kernel the apps share.
pub const DEFAULT_KERNEL: &str = "/lib/vmlinux";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// Pass `-n vnet_opts` (the file is in the private directory).
    pub vnet_opts: bool,
    /// Guest memory in bytes (written in hex, as the scripts did).
    pub mem_bytes: u64,
    pub disk: PathBuf,
    pub kernel: PathBuf,
}

impl Args {
    pub fn argv(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["-k".into(), "guest_cmdline".into()];
        if self.vnet_opts {
            a.extend(["-n".into(), "vnet_opts".into()]);
        }
        a.extend([
            "-m".into(),
            format!("{:#x}", self.mem_bytes).into(),
            "-f".into(),
            self.disk.clone().into_os_string(),
            "-s".into(),
            self.kernel.clone().into_os_string(),
            "-i".into(),
            "initramfs".into(),
        ]);
        a
    }
}

/// The command as one shell line (`--verbose`).
pub fn shell_line(args: &[OsString]) -> String {
    crate::shell::line(VMRUNKERNEL, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_old_scripts_command_lines() {
        let mut a = Args {
            vnet_opts: false,
            mem_bytes: 0x4000000,
            disk: "/data/disk.img".into(),
            kernel: DEFAULT_KERNEL.into(),
        };
        assert_eq!(
            shell_line(&a.argv()),
            "vmrunkernel -k guest_cmdline -m 0x4000000 -f /data/disk.img -s /lib/vmlinux -i initramfs"
        );
        a.vnet_opts = true;
        a.mem_bytes = 0x8000000;
        assert_eq!(
            shell_line(&a.argv()),
            "vmrunkernel -k guest_cmdline -n vnet_opts -m 0x8000000 -f /data/disk.img -s /lib/vmlinux -i initramfs"
        );
    }
}
