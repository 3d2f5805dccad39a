//! QEMU: the old README's invocations as a pure function from options to
//! argv, plus choosing the accelerator (KVM when it can be used, TCG
//! otherwise, said out loud).

use std::ffi::OsString;
use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use camino::{Utf8Path, Utf8PathBuf};

pub use crate::cloud_hypervisor::MAGIC_MAC;

// One QEMU binary name, `--accel` and KVM check for the host tasks and the
// static VM apps: they live in the apps' small runner crate.
pub use vmapp::qemu::{kvm_usable, Accel, AccelChoice, QEMU, QEMU_PACKAGE};

/// The accelerator and the one-line reason it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelDecision {
    pub accel: Accel,
    pub why: String,
}

impl fmt::Display for AccelDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "accelerator: {} ({})", self.accel, self.why)
    }
}

/// Resolves `--accel` against `dev`. `kvm` fails when KVM cannot be used;
/// `auto` falls back to TCG and says why.
pub fn choose_accel(choice: AccelChoice, dev: &Utf8Path) -> Result<AccelDecision> {
    Ok(match choice {
        AccelChoice::Tcg => AccelDecision {
            accel: Accel::Tcg,
            why: "--accel tcg".into(),
        },
        AccelChoice::Kvm => match kvm_usable(dev.as_std_path()) {
            Ok(()) => AccelDecision {
                accel: Accel::Kvm,
                why: "--accel kvm".into(),
            },
            Err(why) => bail!("--accel kvm: {why}; use --accel tcg (slow, but works anywhere)"),
        },
        AccelChoice::Auto => match kvm_usable(dev.as_std_path()) {
            Ok(()) => AccelDecision {
                accel: Accel::Kvm,
                why: format!("{dev} is usable; --accel tcg to emulate instead"),
            },
            Err(why) => AccelDecision {
                accel: Accel::Tcg,
                why: format!("{why}; emulating, which is much slower"),
            },
        },
    })
}

/// `--net`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Net {
    /// QEMU user networking: the guest gets 10.0.2.15 by DHCP, host port
    /// `ssh_port` on 127.0.0.1 reaches the guest's port 22.
    User {
        ssh_port: u16,
    },
    /// The host's tap device, virtio-net with the magic MAC: the guest
    /// configures 10.0.2.15 itself (tc-sys.sh).
    Tap {
        ifname: String,
        mac: String,
    },
    None,
}

/// `--console`: where the kernel console and the login shell are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Console {
    #[default]
    TtyS0,
    /// The virtio console; early boot messages still go to ttyS0, on the
    /// same terminal.
    Hvc0,
}

impl FromStr for Console {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ttyS0" => Ok(Console::TtyS0),
            "hvc0" => Ok(Console::Hvc0),
            _ => Err(format!("`{s}`: expected ttyS0 or hvc0")),
        }
    }
}

impl Console {
    pub fn name(self) -> &'static str {
        match self {
            Console::TtyS0 => "ttyS0",
            Console::Hvc0 => "hvc0",
        }
    }
}

/// Where the guest's serial ports and console go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Io {
    /// An interactive terminal: `-nographic`, the console multiplexed with
    /// the monitor on stdio (Ctrl-A X quits, Ctrl-A C is the monitor).
    Terminal,
    /// Automation: no default devices, no monitor, ttyS0 on stdio (pipes),
    /// never reboot (a guest reboot or panic ends QEMU).
    Headless,
    /// Automation with every port in a file: ttyS0, ttyS1, ... in order.
    Files(Vec<Utf8PathBuf>),
}

/// A 9p share (`-virtfs`): `path` on the host, `tag` to mount in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub path: Utf8PathBuf,
    pub tag: String,
}

/// Everything that makes a QEMU command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub kernel: Utf8PathBuf,
    pub initrd: Utf8PathBuf,
    /// Kernel command-line words after `console=... nozswap`.
    pub append: Vec<String>,
    /// Start the command line with `console=... nozswap` (what a Tiny Core
    /// guest needs); without it the command line is `append` alone.
    pub tc_cmdline: bool,
    pub smp: u32,
    pub memory_mib: u32,
    pub accel: Accel,
    pub net: Net,
    pub console: Console,
    /// `-s`: gdb stub on tcp::1234.
    pub gdb: bool,
    pub io: Io,
    pub share: Option<Share>,
}

impl Options {
    /// The old README's defaults: 8 CPUs, 1 GiB, user networking with ssh
    /// on 127.0.0.1:5555, console on ttyS0, an interactive terminal.
    pub fn new(kernel: Utf8PathBuf, initrd: Utf8PathBuf, accel: Accel) -> Options {
        Options {
            kernel,
            initrd,
            append: Vec::new(),
            tc_cmdline: true,
            smp: 8,
            memory_mib: 1024,
            accel,
            net: Net::User { ssh_port: 5555 },
            console: Console::TtyS0,
            gdb: false,
            io: Io::Terminal,
            share: None,
        }
    }

    /// The kernel command line: `console=ttyS0 nozswap` and the extras.
    pub fn cmdline(&self) -> String {
        let mut words = Vec::new();
        if self.tc_cmdline {
            words.push(format!("console={}", self.console.name()));
            words.push("nozswap".into());
        }
        words.extend(self.append.iter().cloned());
        words.join(" ")
    }

    /// The arguments after the binary. Pure: the same options give the same
    /// argv, which the tests compare with the README's invocations.
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
        match self.accel {
            Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => push(&["-accel", "tcg"]),
        }
        let smp = self.smp.to_string();
        let mem = self.memory_mib.to_string();
        push(&["-smp", &smp, "-m", &mem]);
        match &self.io {
            Io::Terminal => match self.console {
                Console::TtyS0 => push(&["-nographic"]),
                // One stdio chardev shared by the serial port (early boot),
                // the virtio console and the monitor, so Ctrl-A X still
                // quits and Ctrl-A C still cycles to the monitor.
                Console::Hvc0 => push(&[
                    "-nographic",
                    "-chardev",
                    "stdio,id=con0,mux=on,signal=off",
                    "-serial",
                    "chardev:con0",
                    "-mon",
                    "chardev=con0,mode=readline",
                    "-device",
                    "virtio-serial-pci",
                    "-device",
                    "virtconsole,chardev=con0",
                ]),
            },
            Io::Headless => {
                push(&["-nodefaults", "-display", "none", "-no-reboot"]);
                match self.console {
                    Console::TtyS0 => push(&["-serial", "stdio"]),
                    Console::Hvc0 => push(&[
                        "-chardev",
                        "stdio,id=con0,mux=on,signal=off",
                        "-serial",
                        "chardev:con0",
                        "-device",
                        "virtio-serial-pci",
                        "-device",
                        "virtconsole,chardev=con0",
                    ]),
                }
            }
            Io::Files(files) => {
                push(&["-nodefaults", "-display", "none", "-no-reboot"]);
                for f in files {
                    push(&["-serial", &format!("file:{f}")]);
                }
            }
        }
        if self.gdb {
            push(&["-s"]);
        }
        push(&[
            "-kernel",
            self.kernel.as_str(),
            "-initrd",
            self.initrd.as_str(),
            "-append",
            &self.cmdline(),
        ]);
        match &self.net {
            Net::User { ssh_port } => push(&[
                "-netdev",
                &format!("user,id=vmnet,hostfwd=tcp:127.0.0.1:{ssh_port}-:22"),
                "-device",
                "e1000,netdev=vmnet",
            ]),
            Net::Tap { ifname, mac } => push(&[
                "-device",
                &format!("virtio-net-pci,netdev=vmnet,mac={mac}"),
                "-netdev",
                &format!("tap,id=vmnet,ifname={ifname},script=no,downscript=no"),
            ]),
            // Otherwise QEMU adds its default user-mode NIC.
            Net::None => push(&["-nic", "none"]),
        }
        if let Some(s) = &self.share {
            push(&[
                "-virtfs",
                &format!(
                    "local,path={},mount_tag={},security_model=none",
                    escape_opt(s.path.as_str()),
                    s.tag
                ),
            ]);
        }
        a.into_iter().map(OsString::from).collect()
    }
}

/// QEMU option values use `,` as a separator; a literal comma is `,,`.
fn escape_opt(v: &str) -> String {
    v.replace(',', ",,")
}

/// A shell-pasteable rendering of a command line (`--dry-run`).
pub fn shell_line(program: &str, args: &[OsString]) -> String {
    vmapp::shell::line(program, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(o: &Options) -> Vec<String> {
        o.args()
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn readme(accel: Accel) -> Options {
        Options::new("bzImage".into(), "initramfs.cpio.gz".into(), accel)
    }

    /// The README's tap invocation: `-s -enable-kvm -cpu host -smp 8
    /// -m 1024 -nographic`, virtio-net with the magic MAC on tap-vm.
    #[test]
    fn readme_tap_invocation() {
        let mut o = readme(Accel::Kvm);
        o.gdb = true;
        o.net = Net::Tap {
            ifname: "tap-vm".into(),
            mac: MAGIC_MAC.into(),
        };
        let mut want = words(
            "-accel kvm -cpu host -smp 8 -m 1024 -nographic -s \
             -kernel bzImage -initrd initramfs.cpio.gz -append",
        );
        want.push("console=ttyS0 nozswap".into());
        want.extend(words(
            "-device virtio-net-pci,netdev=vmnet,mac=00:01:02:03:04:0b \
             -netdev tap,id=vmnet,ifname=tap-vm,script=no,downscript=no",
        ));
        assert_eq!(argv(&o), want);
    }

    /// User networking: e1000 (built into the guest kernel, like the old
    /// `-net nic,model=e1000`), ssh forwarded from 127.0.0.1 only.
    #[test]
    fn readme_user_invocation() {
        let mut o = readme(Accel::Tcg);
        o.append = vec!["earlyprintk=serial".into(), "quiet".into()];
        let mut want = words(
            "-accel tcg -smp 8 -m 1024 -nographic \
             -kernel bzImage -initrd initramfs.cpio.gz -append",
        );
        want.push("console=ttyS0 nozswap earlyprintk=serial quiet".into());
        want.extend(words(
            "-netdev user,id=vmnet,hostfwd=tcp:127.0.0.1:5555-:22 -device e1000,netdev=vmnet",
        ));
        assert_eq!(argv(&o), want);

        o.net = Net::User { ssh_port: 2222 };
        assert!(argv(&o).contains(&"user,id=vmnet,hostfwd=tcp:127.0.0.1:2222-:22".to_string()));
    }

    #[test]
    fn no_network_and_hvc0() {
        let mut o = readme(Accel::Tcg);
        o.net = Net::None;
        o.console = Console::Hvc0;
        let a = argv(&o);
        assert!(a.ends_with(&words("-nic none")), "{a:?}");
        assert!(a.contains(&"console=hvc0 nozswap".to_string()));
        let s = a.join(" ");
        assert!(s.contains("-chardev stdio,id=con0,mux=on,signal=off -serial chardev:con0 -mon chardev=con0,mode=readline -device virtio-serial-pci -device virtconsole,chardev=con0"), "{s}");
    }

    #[test]
    fn headless_and_files() {
        let mut o = readme(Accel::Tcg);
        o.smp = 1;
        o.memory_mib = 512;
        o.net = Net::None;
        o.io = Io::Headless;
        assert_eq!(
            argv(&o)[..14],
            words("-accel tcg -smp 1 -m 512 -nodefaults -display none -no-reboot -serial stdio -kernel bzImage")[..]
        );
        o.io = Io::Files(vec!["/t/console".into(), "/t/out,1".into()]);
        o.share = Some(Share {
            path: "/srv/a,b".into(),
            tag: "share".into(),
        });
        let s = argv(&o).join(" ");
        assert!(
            s.contains("-serial file:/t/console -serial file:/t/out,1 -kernel"),
            "{s}"
        );
        assert!(
            s.ends_with("-virtfs local,path=/srv/a,,b,mount_tag=share,security_model=none"),
            "{s}"
        );
    }

    #[test]
    fn accel_choice() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Utf8PathBuf::from_path_buf(dir.path().join("kvm")).unwrap();
        let d = choose_accel(AccelChoice::Auto, &missing).unwrap();
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d.to_string().starts_with("accelerator: TCG ("), "{d}");
        assert!(d.why.contains("does not exist"), "{d}");
        let e = choose_accel(AccelChoice::Kvm, &missing)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--accel tcg") && e.contains("does not exist"),
            "{e}"
        );
        assert_eq!(
            choose_accel(AccelChoice::Tcg, &missing).unwrap().accel,
            Accel::Tcg
        );
        // A file we can open read-write stands in for a usable /dev/kvm.
        std::fs::write(&missing, b"").unwrap();
        let d = choose_accel(AccelChoice::Auto, &missing).unwrap();
        assert_eq!(d.accel, Accel::Kvm, "{d}");
        assert!("bogus".parse::<AccelChoice>().is_err());
    }

    #[test]
    fn dry_run_line_quotes() {
        let args: Vec<OsString> = ["-append", "console=ttyS0 nozswap", "it's"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(
            shell_line(QEMU, &args),
            r"qemu-system-x86_64 -append 'console=ttyS0 nozswap' 'it'\''s'"
        );
    }
}
