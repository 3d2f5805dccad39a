//! `mount-fs [VM OPTIONS] [APP OPTIONS] DISK PART_ID MNT [MOUNT OPTIONS]`:
//! the guest mounts partition PART_ID of DISK (`/dev/vda<PART_ID>`; an
//! empty PART_ID is the whole disk) and serves it over 9P2000.L on TCP;
//! the host mounts that on MNT. A line `SHUTDOWN` on stdin, SIGINT or
//! SIGTERM unmounts the host side, then the guest unmounts and powers off.
//!
//! The guest side is `guest/rcS-mount-fs` with `ninep-server`
//! (vm-apps/ninep-server) as its 9p server.

use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vmapp::{akaros, ninep, qemu, Session, Vmm};

const USAGE: &str = "usage: mount-fs [VM OPTIONS] [--host-port N] [--guest-port N] [--no-mount] \
DISK PART_ID MNT [MOUNT OPTIONS]\n\
Serves partition PART_ID of DISK (\"\" for the whole disk) over 9p from a VM and mounts it on MNT.\n\
  --host-port N   the host's TCP port [default: 3333]\n\
  --guest-port N  the guest server's port [default: 3332]\n\
  --no-mount      only serve; print the mount command\n\
MOUNT OPTIONS go to the host's mount; -r or -o ro also makes the guest mount and the disk read-only.\n\
Type SHUTDOWN (or press Ctrl-C) to unmount and stop.";

/// How long a (TCG) guest may take to start serving.
const READY_TIMEOUT: Duration = Duration::from_secs(300);

fn main() -> std::process::ExitCode {
    vmapp::main("mount-fs", run)
}

struct App {
    disk: PathBuf,
    part: String,
    mnt: PathBuf,
    mount_opts: Vec<String>,
    read_only: bool,
    host_port: u16,
    guest_port: u16,
    no_mount: bool,
}

fn run(args: Vec<OsString>) -> Result<u8> {
    let Some((opts, rest)) = vmapp::parse_options(args)? else {
        println!("{USAGE}\n\n{}", vmapp::OPTIONS_HELP);
        return Ok(0);
    };
    let Some(app) = parse(rest)? else {
        eprintln!("{USAGE}");
        return Ok(2);
    };
    let session = Session::start("mount-fs", opts)?;
    match session.opts.vmm {
        Vmm::Qemu => run_qemu(&session, &app),
        Vmm::Akaros => run_akaros(&session, &app),
    }
}

fn parse(rest: Vec<OsString>) -> Result<Option<App>> {
    let mut rest: Vec<String> = rest
        .into_iter()
        .map(|a| {
            a.into_string()
                .map_err(|a| anyhow::anyhow!("argument {a:?} is not UTF-8"))
        })
        .collect::<Result<_>>()?;
    let (mut host_port, mut guest_port, mut no_mount) = (3333u16, 3332u16, false);
    while let Some(flag) = rest.first().cloned() {
        let port = |v: Option<&String>| -> Result<u16> {
            v.and_then(|v| v.parse().ok())
                .filter(|&p| p > 0)
                .with_context(|| format!("{flag} needs a port number"))
        };
        match flag.as_str() {
            "--host-port" => host_port = port(rest.get(1))?,
            "--guest-port" => guest_port = port(rest.get(1))?,
            "--no-mount" => {
                no_mount = true;
                rest.remove(0);
                continue;
            }
            _ => break,
        }
        rest.drain(..2);
    }
    if rest.len() < 3 {
        return Ok(None);
    }
    let disk = vmapp::disk_path(rest[0].as_ref())?;
    let part = rest[1].clone();
    if !part.chars().all(|c| c.is_ascii_digit()) {
        bail!("PART_ID {part:?} should be a partition number (as `fdisk -l` shows it) or \"\" for the whole disk");
    }
    let mnt = PathBuf::from(&rest[2]);
    let mount_opts = rest[3..].to_vec();
    let read_only = is_read_only(&mount_opts);
    Ok(Some(App {
        disk,
        part,
        mnt,
        mount_opts,
        read_only,
        host_port,
        guest_port,
        no_mount,
    }))
}

/// `-r`, `--read-only`, or `ro` in an `-o` list.
fn is_read_only(opts: &[String]) -> bool {
    let mut after_o = false;
    for o in opts {
        let list = if after_o {
            Some(o.as_str())
        } else {
            o.strip_prefix("-o").filter(|l| !l.is_empty())
        };
        after_o = o == "-o";
        if o == "-r" || o == "--read-only" || list.is_some_and(|l| l.split(',').any(|x| x == "ro"))
        {
            return true;
        }
    }
    false
}

/// The guest stdin (its console), shared by the stdin forwarder and the
/// signal handler.
type Console = Arc<Mutex<Option<ChildStdin>>>;

fn send(console: &Console, line: &str) {
    if let Some(stdin) = console.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        let _ = stdin.write_all(line.as_bytes()).and_then(|_| stdin.flush());
    }
}

/// The host-side mount, undone once.
struct HostMount {
    mnt: PathBuf,
    mounted: AtomicBool,
    /// `umount` on Linux, `unmount` on Akaros.
    umount: &'static str,
}

impl HostMount {
    fn undo(&self) {
        if self.mounted.swap(false, Ordering::SeqCst) {
            let ok = Command::new(self.umount)
                .arg(&self.mnt)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                eprintln!("mount-fs: unmounted {}", self.mnt.display());
            } else {
                eprintln!(
                    "mount-fs: warning: `{} {}` failed",
                    self.umount,
                    self.mnt.display()
                );
            }
        }
    }
}

fn run_qemu(session: &Session, app: &App) -> Result<u8> {
    if !app.no_mount && !app.mnt.is_dir() {
        bail!("the mount point {} is not a directory", app.mnt.display());
    }
    let mut words = vec![
        "console=ttyS0".to_string(),
        "panic=-1".into(),
        "nortc".into(),
        "nozswap".into(),
        format!("mount_part_id={}", app.part),
        format!("mount_port_nr={}", app.guest_port),
    ];
    if app.read_only {
        words.push("mount_ro=1".into());
    }
    session.write("guest_cmdline", &(words.join("\n") + "\n"))?;
    let mut args = qemu::Args {
        accel: qemu::Accel::Tcg,
        mem_mib: session.opts.mem_mib.unwrap_or(256),
        kernel: session.qemu_kernel()?,
        initrd: session.image.initramfs.clone(),
        append: words.join(" "),
        disk: app.disk.clone(),
        read_only: app.read_only,
        console_log: session.dir.path().join("console.log"),
        forwards: vec![(app.host_port, app.guest_port)],
    };
    let console: Console = Arc::new(Mutex::new(None));
    let host = Arc::new(HostMount {
        mnt: app.mnt.clone(),
        mounted: AtomicBool::new(false),
        umount: "umount",
    });
    let addr = SocketAddr::from(([127, 0, 0, 1], app.host_port));
    let on_start = |child: &mut Child| -> Result<()> {
        *console.lock().unwrap_or_else(|e| e.into_inner()) = child.stdin.take();
        forward_stdin(console.clone(), host.clone());
        if !wait_ready(child, addr)? {
            return Ok(());
        }
        let dev = format!("/dev/vda{}", app.part);
        eprintln!("mount-fs: {dev} is served by 9p on {addr}");
        let opts = mount_o(app);
        let line = format!(
            "mount -t 9p -o {opts} 127.0.0.1 {}",
            vmapp::shell::quote(&app.mnt.to_string_lossy())
        );
        if app.no_mount {
            eprintln!("mount-fs: mount it with: {line}");
        } else if effective_uid() != 0 {
            eprintln!("mount-fs: not root, so not mounting; as root: {line}");
        } else {
            let out = Command::new("mount")
                .args(["-t", "9p", "-o", &opts, "127.0.0.1"])
                .arg(&app.mnt)
                .output()
                .context("cannot run mount")?;
            if out.status.success() {
                host.mounted.store(true, Ordering::SeqCst);
                eprintln!("mount-fs: mounted on {}", app.mnt.display());
            } else {
                eprintln!(
                    "mount-fs: warning: `{line}` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        eprintln!("mount-fs: type SHUTDOWN or press Ctrl-C to unmount and stop");
        Ok(())
    };
    let waited = session.run_qemu(&mut args, Stdio::piped, true, on_start, &mut |_, _| {
        host.undo();
        send(&console, "SHUTDOWN\n");
        Ok(())
    })?;
    // The guest may have died with our mount still there.
    host.undo();
    if let Some(code) = waited.interrupted_code() {
        return Ok(code);
    }
    if !waited.status.success() {
        bail!(
            "QEMU ended with {}; the end of the guest's console:\n{}",
            waited.status,
            vmapp::tail(&vmapp::read_log(&args.console_log), 25)
        );
    }
    Ok(0)
}

/// The host mount's `-o`: 9p over TCP to the forwarded port, then the
/// user's options (from `-o LIST`; other mount flags cannot be expressed).
fn mount_o(app: &App) -> String {
    let mut o = format!("trans=tcp,port={},version=9p2000.L", app.host_port);
    let mut after_o = false;
    for opt in &app.mount_opts {
        if after_o {
            o.push(',');
            o.push_str(opt);
        } else if opt == "-r" || opt == "--read-only" {
            o.push_str(",ro");
        } else if let Some(l) = opt.strip_prefix("-o").filter(|l| !l.is_empty()) {
            o.push(',');
            o.push_str(l);
        }
        after_o = opt == "-o";
    }
    o
}

/// Copies the app's stdin to the guest console; a `SHUTDOWN` line first
/// unmounts the host side. At EOF the console stays open (an EOF would
/// make the guest's read loop spin).
fn forward_stdin(console: Console, host: Arc<HostMount>) {
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if line.trim() == "SHUTDOWN" {
                host.undo();
            }
            send(&console, &format!("{line}\n"));
        }
    });
}

/// Waits until the guest's 9p server answers a version+attach through the
/// forwarded port (`true`), the VMM exited or a signal came (`false`).
fn wait_ready(child: &mut Child, addr: SocketAddr) -> Result<bool> {
    let start = Instant::now();
    loop {
        if child.try_wait()?.is_some() || vmapp::signals::pending().is_some() {
            return Ok(false);
        }
        if ninep::Client::connect(addr, Duration::from_secs(2)).is_ok() {
            return Ok(true);
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!(
                "the guest's 9p server did not answer on {addr} within {}s",
                READY_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Akaros, as the old script: `vnet_opts` forwards the host port, the
/// guest console is a pipe we keep open, `srv` dials the server until it
/// answers, then `mount OPTS /srv/ext4-PID MNT`.
fn run_akaros(session: &Session, app: &App) -> Result<u8> {
    session.write(
        "vnet_opts",
        &format!("port:tcp:{}:{}\n", app.host_port, app.guest_port),
    )?;
    session.write(
        "guest_cmdline",
        &format!(
            "console=none\nlapic=notscdeadline\nnortc\nnozswap\nmount_part_id={}\nmount_port_nr={}\n",
            app.part, app.guest_port
        ),
    )?;
    let args = akaros::Args {
        vnet_opts: true,
        mem_bytes: session.opts.mem_mib.map_or(0x8000000, |m| m << 20),
        disk: app.disk.clone(),
        kernel: session
            .opts
            .kernel
            .clone()
            .unwrap_or_else(|| akaros::DEFAULT_KERNEL.into()),
    };
    let mut child = session.spawn_akaros(&args, Stdio::piped(), true)?;
    let console: Console = Arc::new(Mutex::new(child.stdin.take()));
    let host = Arc::new(HostMount {
        mnt: app.mnt.clone(),
        mounted: AtomicBool::new(false),
        umount: "unmount",
    });
    let srv_name = format!("ext4-{}", std::process::id());
    let srv_path = Path::new("/srv").join(&srv_name);
    let dial = format!("tcp!127.0.0.1!{}", app.host_port);
    let mut served = false;
    while !served && child.try_wait()?.is_none() && vmapp::signals::pending().is_none() {
        std::thread::sleep(Duration::from_secs(1));
        served = Command::new("srv")
            .args([&dial, &srv_name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    }
    if served && !app.no_mount {
        let ok = Command::new("mount")
            .args(&app.mount_opts)
            .arg(&srv_path)
            .arg(&app.mnt)
            .status()
            .context("cannot run mount")?
            .success();
        host.mounted.store(ok, Ordering::SeqCst);
        if !ok {
            eprintln!(
                "mount-fs: warning: mounting {} on {} failed",
                srv_path.display(),
                app.mnt.display()
            );
        }
    }
    forward_stdin(console.clone(), host.clone());
    let waited = vmapp::wait(&mut child, &mut |_, _| {
        host.undo();
        send(&console, "SHUTDOWN\n");
        Ok(())
    })?;
    host.undo();
    let _ = std::fs::remove_file(&srv_path);
    if let Some(code) = waited.interrupted_code() {
        return Ok(code);
    }
    Ok(waited.status.code().map_or(1, |c| c as u8))
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn read_only_and_mount_options() {
        assert!(is_read_only(&strings(&["-r"])));
        assert!(is_read_only(&strings(&["-o", "noatime,ro"])));
        assert!(is_read_only(&strings(&["-oro"])));
        assert!(!is_read_only(&strings(&["-o", "rw"])));
        assert!(!is_read_only(&strings(&["ro"])));
        let app = App {
            disk: "/d".into(),
            part: "1".into(),
            mnt: "/m".into(),
            mount_opts: strings(&["-r", "-o", "cache=loose"]),
            read_only: true,
            host_port: 4000,
            guest_port: 3332,
            no_mount: false,
        };
        assert_eq!(
            mount_o(&app),
            "trans=tcp,port=4000,version=9p2000.L,ro,cache=loose"
        );
    }
}
