//! `cargo xtask run-qemu`: the old README's QEMU invocations, with the
//! accelerator chosen out loud and the terminal restored afterwards.
//! Also the kernel/initramfs/accelerator flags `boot-test` and `vm-exec`
//! share.

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use vmm::qemu::{self, AccelChoice, AccelDecision, Console, Net, MAGIC_MAC};

use crate::config::Config;

/// What to boot and how to accelerate it.
#[derive(clap::Args, Clone, Debug)]
pub struct GuestFlags {
    /// The kernel (a bzImage) [default: <build dir>/bzImage]
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<Utf8PathBuf>,
    /// The initramfs [default: <build dir>/initramfs.cpio.gz]
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<Utf8PathBuf>,
    /// Extra kernel command-line words, after `console=... nozswap` (repeatable)
    #[arg(long, value_name = "WORDS")]
    pub append: Vec<String>,
    /// auto: KVM when /dev/kvm opens read-write, else TCG (env LINUX_GUEST_ACCEL)
    #[arg(
        long,
        default_value = "auto",
        env = "LINUX_GUEST_ACCEL",
        value_name = "auto|kvm|tcg"
    )]
    pub accel: AccelChoice,
    /// The KVM device `--accel auto|kvm` checks
    #[arg(long, default_value = "/dev/kvm", value_name = "PATH", hide = true)]
    pub kvm_device: Utf8PathBuf,
}

impl GuestFlags {
    /// The kernel and initramfs to boot; a clear error when one is missing.
    pub fn image(&self, c: &Config) -> Result<(Utf8PathBuf, Utf8PathBuf)> {
        let b = &c.build_dir.value;
        let kernel = match &self.kernel {
            Some(k) => existing(k, "--kernel")?,
            None => {
                let k = b.join("bzImage");
                if !k.is_file() {
                    bail!(
                        "no kernel at {k}: run `cargo xtask full-build --linux PATH` (or `rebuild`), \
                         or pass --kernel FILE (e.g. Debian's /boot/vmlinuz-*)"
                    );
                }
                k
            }
        };
        let initrd = match &self.initrd {
            Some(i) => existing(i, "--initrd")?,
            None => {
                let i = b.join("initramfs.cpio.gz");
                if !i.is_file() {
                    bail!(
                        "no initramfs at {i}: run `cargo xtask setup-tinycore` and \
                         `cargo xtask rebuild --skip-kernel`, or pass --initrd FILE"
                    );
                }
                i
            }
        };
        Ok((kernel, initrd))
    }

    pub fn accel(&self) -> Result<AccelDecision> {
        qemu::choose_accel(self.accel, &self.kvm_device)
    }

    /// The QEMU options these flags make (image, accelerator, `--append`),
    /// with the accelerator choice said on stderr; the caller adds its own.
    pub fn qemu_options(&self, c: &Config) -> Result<qemu::Options> {
        let (kernel, initrd) = self.image(c)?;
        let decision = self.accel()?;
        eprintln!("{decision}");
        let mut o = qemu::Options::new(kernel, initrd, decision.accel);
        o.append = self.append.clone();
        Ok(o)
    }
}

fn existing(p: &Utf8Path, flag: &str) -> Result<Utf8PathBuf> {
    if !p.is_file() {
        bail!("{flag} {p}: no such file");
    }
    crate::config::absolute(p)
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetKind {
    /// QEMU user networking; ssh on 127.0.0.1:--ssh-port
    User,
    /// The host's tap (see tap-up), virtio-net with the magic MAC
    Tap,
    None,
}

#[derive(clap::Args)]
pub struct Flags {
    #[command(flatten)]
    guest: GuestFlags,
    /// Virtual CPUs
    #[arg(long, default_value_t = 8)]
    smp: u32,
    /// Memory in MiB
    #[arg(long, short, default_value_t = 1024, value_name = "MIB")]
    memory: u32,
    #[arg(long, value_enum, default_value = "user")]
    net: NetKind,
    /// Host port (on 127.0.0.1) forwarded to the guest's ssh with --net user
    #[arg(long, default_value_t = 5555, value_name = "PORT")]
    ssh_port: u16,
    /// Tap device for --net tap
    #[arg(long, default_value = "tap-vm", value_name = "IFNAME")]
    tap: String,
    /// The guest's MAC with --net tap (the default makes tc-sys.sh set 10.0.2.15)
    #[arg(long, default_value = MAGIC_MAC)]
    mac: String,
    /// The guest console: ttyS0 or hvc0
    #[arg(long, default_value = "ttyS0", value_name = "ttyS0|hvc0")]
    console: Console,
    /// gdb stub on tcp::1234 (-s)
    #[arg(long)]
    gdb: bool,
    /// Print the QEMU command line instead of running it
    #[arg(long)]
    dry_run: bool,
}

pub fn run(c: &Config, f: &Flags) -> Result<()> {
    let mut o = f.guest.qemu_options(c)?;
    o.smp = f.smp;
    o.memory_mib = f.memory;
    o.console = f.console;
    o.gdb = f.gdb;
    o.net = match f.net {
        NetKind::User => Net::User {
            ssh_port: f.ssh_port,
        },
        NetKind::Tap => Net::Tap {
            ifname: f.tap.clone(),
            mac: f.mac.clone(),
        },
        NetKind::None => Net::None,
    };
    let args = o.args();
    if f.dry_run {
        println!("{}", qemu::shell_line(qemu::QEMU, &args));
        return Ok(());
    }
    if f.net == NetKind::Tap && !Utf8Path::new("/sys/class/net").join(&f.tap).exists() {
        bail!(
            "there is no network device {}: run `cargo xtask tap-up` first (as root)",
            f.tap
        );
    }
    if testmirror::tools::find_on_path(qemu::QEMU).is_none() {
        bail!(
            "{} is not installed: apt-get install {}",
            qemu::QEMU,
            qemu::QEMU_PACKAGE
        );
    }
    match f.net {
        NetKind::User => eprintln!(
            "ssh: ssh -p {} root@127.0.0.1 (guest 10.0.2.15 by DHCP)",
            f.ssh_port
        ),
        NetKind::Tap => eprintln!(
            "network: {} with MAC {} (guest 10.0.2.15, host 10.0.2.2)",
            f.tap, f.mac
        ),
        NetKind::None => {}
    }
    eprintln!("Ctrl-A X quits, Ctrl-A C is the QEMU monitor");
    let code = vmm::terminal::run_interactive(qemu::QEMU, &args)
        .with_context(|| format!("running {}", qemu::QEMU))?;
    if code != 0 {
        eprintln!("{} exited with status {code}", qemu::QEMU);
        std::process::exit(code);
    }
    Ok(())
}
