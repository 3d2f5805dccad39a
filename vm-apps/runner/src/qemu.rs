//! QEMU for a VM app: one disk as virtio-blk, the guest's virtio console
//! (`hvc0`) on the app's stdin/stdout so the app behaves like a local
//! command, and the kernel's own messages (`ttyS0`) in a log file.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Result};

// The QEMU binary, `--accel` and the KVM check are shared with the host
// tasks (the `vmm` crate re-exports them): this crate stays small enough
// for the static apps.

/// The binary every QEMU launch runs (looked up on PATH).
pub const QEMU: &str = "qemu-system-x86_64";
/// Debian package that provides [`QEMU`], for error messages.
pub const QEMU_PACKAGE: &str = "qemu-system-x86";
pub const KVM_DEVICE: &str = "/dev/kvm";

/// What `--accel` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    /// KVM when `/dev/kvm` can be opened read-write, else TCG.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl FromStr for AccelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" => Ok(AccelChoice::Tcg),
            _ => Err(format!("`{s}`: expected auto, kvm or tcg")),
        }
    }
}

/// The accelerator actually used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        })
    }
}

/// Whether `dev` (normally `/dev/kvm`) can be opened read-write: what QEMU
/// needs, and a better test than "exists" (the node is often root-only or
/// group `kvm`). The error says why not.
pub fn kvm_usable(dev: &Path) -> Result<(), String> {
    let shown = dev.display();
    match std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "{shown} does not exist (no KVM in this kernel, or nested virtualisation is off)"
        )),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(format!(
            "cannot open {shown} read-write: {e} (add yourself to its group, usually `kvm`)"
        )),
        Err(e) => Err(format!("cannot open {shown} read-write: {e}")),
    }
}

/// The accelerator to start with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub accel: Accel,
    /// Said on stderr (falling back to TCG is slow and should be noticed).
    pub note: Option<String>,
    /// KVM chosen automatically: fall back to TCG if the guest never starts.
    pub watch: bool,
}

/// Resolves `--accel` against `dev` (normally /dev/kvm): KVM needs it
/// read-write (it is often root- or `kvm`-group-only).
pub fn choose_accel(choice: AccelChoice, dev: &Path) -> Result<Decision> {
    Ok(match (choice, kvm_usable(dev)) {
        (AccelChoice::Tcg, _) => Decision {
            accel: Accel::Tcg,
            note: None,
            watch: false,
        },
        (AccelChoice::Kvm, Ok(_)) => Decision {
            accel: Accel::Kvm,
            note: None,
            watch: false,
        },
        (AccelChoice::Kvm, Err(why)) => bail!("--accel kvm: {why}; use --accel tcg"),
        (AccelChoice::Auto, Ok(_)) => Decision {
            accel: Accel::Kvm,
            note: None,
            watch: true,
        },
        (AccelChoice::Auto, Err(why)) => Decision {
            accel: Accel::Tcg,
            note: Some(format!("{why}: emulating with TCG, which is slower")),
            watch: false,
        },
    })
}

/// Everything that makes the QEMU command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub accel: Accel,
    pub mem_mib: u64,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The kernel command line.
    pub append: String,
    pub disk: PathBuf,
    /// Attach the disk read-only (QEMU refuses every write).
    pub read_only: bool,
    /// Where the serial console (kernel messages, init) goes.
    pub console_log: PathBuf,
    /// `(host, guest)` TCP ports forwarded from 127.0.0.1 with user-mode
    /// networking; empty: the guest has no network.
    pub forwards: Vec<(u16, u16)>,
}

impl Args {
    pub fn argv(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
        match self.accel {
            Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => push(&["-accel", "tcg"]),
        }
        let mem = self.mem_mib.to_string();
        push(&["-smp", "1", "-m", &mem]);
        // No default devices, no monitor, no display; a guest reboot or
        // panic (panic=-1) ends QEMU instead of looping.
        push(&["-nodefaults", "-display", "none", "-no-reboot"]);
        let log = format!("file,id=log,path={}", opt(&self.console_log));
        push(&["-chardev", &log, "-serial", "chardev:log"]);
        push(&[
            "-chardev",
            "stdio,id=app",
            "-device",
            "virtio-serial-pci",
            "-device",
            "virtconsole,chardev=app",
        ]);
        let mut drive = format!("file={},format=raw,if=virtio", opt(&self.disk));
        if self.read_only {
            drive.push_str(",readonly=on");
        }
        push(&["-drive", &drive]);
        push(&["-kernel"]);
        a.push(self.kernel.clone().into_os_string());
        a.push("-initrd".into());
        a.push(self.initrd.clone().into_os_string());
        a.push("-append".into());
        a.push(self.append.clone().into());
        if !self.forwards.is_empty() {
            let fwd: String = self
                .forwards
                .iter()
                .map(|(h, g)| format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"))
                .collect();
            a.push("-netdev".into());
            a.push(format!("user,id=net0{fwd}").into());
            a.push("-device".into());
            a.push("virtio-net-pci,netdev=net0".into());
        }
        a
    }
}

/// A path as a QEMU option value: `,` is the separator, `,,` a comma.
fn opt(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// The command as one shell line (`--verbose`).
pub fn shell_line(args: &[OsString]) -> String {
    crate::shell::line(QEMU, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> Args {
        Args {
            accel: Accel::Tcg,
            mem_mib: 256,
            kernel: "/t/bzImage".into(),
            initrd: "/t/initramfs".into(),
            append: "console=ttyS0 fdisk_args=\\040-l".into(),
            disk: "/d/a,b.img".into(),
            read_only: false,
            console_log: "/t/console.log".into(),
            forwards: vec![],
        }
    }

    #[test]
    fn argv_puts_the_disk_on_virtio_and_the_console_on_stdio() {
        let line = shell_line(&args().argv());
        assert_eq!(
            line,
            "qemu-system-x86_64 -accel tcg -smp 1 -m 256 -nodefaults -display none -no-reboot \
             -chardev file,id=log,path=/t/console.log -serial chardev:log \
             -chardev stdio,id=app -device virtio-serial-pci -device virtconsole,chardev=app \
             -drive file=/d/a,,b.img,format=raw,if=virtio \
             -kernel /t/bzImage -initrd /t/initramfs -append 'console=ttyS0 fdisk_args=\\040-l'"
        );
        let mut a = args();
        a.accel = Accel::Kvm;
        a.forwards = vec![(3333, 3332)];
        a.read_only = true;
        let line = shell_line(&a.argv());
        assert!(
            line.starts_with("qemu-system-x86_64 -accel kvm -cpu host "),
            "{line}"
        );
        assert!(
            line.ends_with("-netdev user,id=net0,hostfwd=tcp:127.0.0.1:3333-:3332 -device virtio-net-pci,netdev=net0"),
            "{line}"
        );
    }

    #[test]
    fn accel_choice() {
        let dir = std::env::temp_dir().join(format!("vmapp-accel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dev = dir.join("kvm");
        let _ = std::fs::remove_file(&dev);
        let d = choose_accel(AccelChoice::Auto, &dev).unwrap();
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d.note.unwrap().contains("TCG"));
        assert!(choose_accel(AccelChoice::Kvm, &dev).is_err());
        std::fs::write(&dev, b"").unwrap();
        let d = choose_accel(AccelChoice::Auto, &dev).unwrap();
        assert_eq!((d.accel, d.watch), (Accel::Kvm, true));
        assert_eq!(
            choose_accel(AccelChoice::Tcg, &dev).unwrap().accel,
            Accel::Tcg
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
