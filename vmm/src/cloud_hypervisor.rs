//! Cloud Hypervisor: the old README's command line, plus an API socket so
//! the guest can be stopped cleanly (ACPI power button, then a VMM
//! shutdown) instead of with `killall`.
//!
//! The API is HTTP/1.1 over a Unix socket. Two bodiless `PUT`s are all we
//! need, so the client is a few lines over [`UnixStream`] rather than an
//! HTTP stack.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

/// The old README's MAC: `tc-sys.sh` gives the guest its static addresses
/// when it sees it.
pub const MAGIC_MAC: &str = "00:01:02:03:04:0b";

/// Tap networking for `--net`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Net {
    pub tap: String,
    pub mac: String,
}

impl Default for Net {
    fn default() -> Self {
        Net {
            tap: "tap-vm".into(),
            mac: MAGIC_MAC.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// The `cloud-hypervisor` binary (a name is looked up on PATH).
    pub binary: Utf8PathBuf,
    pub cpus: u32,
    pub memory_mib: u32,
    pub kernel: Utf8PathBuf,
    pub initramfs: Utf8PathBuf,
    pub cmdline: String,
    pub net: Option<Net>,
    pub api_socket: Utf8PathBuf,
}

/// The arguments after the binary: the old README's invocation, with the
/// API socket first.
pub fn args(o: &Options) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--api-socket".into(),
        o.api_socket.to_string(),
        "--console".into(),
        "off".into(),
        "--serial".into(),
        "tty".into(),
        "--cpus".into(),
        format!("boot={}", o.cpus),
        "--memory".into(),
        format!("size={}M", o.memory_mib),
        "--kernel".into(),
        o.kernel.to_string(),
        "--initramfs".into(),
        o.initramfs.to_string(),
        "--cmdline".into(),
        o.cmdline.clone(),
    ];
    if let Some(n) = &o.net {
        // Empty ip= and mask= keep Cloud Hypervisor from configuring the tap
        // itself: tap-up's bridge owns the host side.
        a.push("--net".into());
        a.push(format!("tap={},mac={},ip=,mask=", n.tap, n.mac));
    }
    a
}

/// Cloud Hypervisor needs KVM: fail before starting it, saying what to do,
/// rather than letting it die with an ioctl error.
pub fn check_kvm(device: &Utf8Path) -> Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map(drop)
        .with_context(|| {
            format!(
                "Cloud Hypervisor needs KVM, but {device} cannot be opened read-write: load \
                 kvm_intel or kvm_amd, add yourself to the `kvm` group, or boot with \
                 `cargo xtask run-qemu --accel tcg` instead"
            )
        })
}

/// Where the running VMM's pid is kept, next to its API socket.
pub fn pid_file(api_socket: &Utf8Path) -> Utf8PathBuf {
    Utf8PathBuf::from(format!("{api_socket}.pid"))
}

/// Runs Cloud Hypervisor in the foreground (its serial console is this
/// terminal) and cleans up the socket and pid file when it exits.
pub fn run(o: &Options) -> Result<ExitStatus> {
    for (what, p) in [("kernel", &o.kernel), ("initramfs", &o.initramfs)] {
        if !p.is_file() {
            bail!("the {what} {p} does not exist: run `cargo xtask full-build` (or pass its path)");
        }
    }
    // sockaddr_un holds 108 bytes with the NUL; a longer path fails deep
    // inside Cloud Hypervisor with a less helpful message.
    if o.api_socket.as_str().len() > 107 {
        bail!(
            "the API socket path {} is longer than a Unix socket allows (107 bytes): \
             pass a shorter --api-socket",
            o.api_socket
        );
    }
    clear_stale_socket(&o.api_socket)?;
    if let Some(dir) = o.api_socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {dir}"))?;
    }
    let mut child = Command::new(o.binary.as_str())
        .args(args(o))
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {}: install Cloud Hypervisor \
                 (https://github.com/cloud-hypervisor/cloud-hypervisor/releases) or pass --ch PATH",
                o.binary
            )
        })?;
    let pid_path = pid_file(&o.api_socket);
    let wrote_pid = std::fs::write(&pid_path, format!("{}\n", child.id()));
    let status = child
        .wait()
        .with_context(|| format!("waiting for {}", o.binary));
    if wrote_pid.is_ok() {
        let _ = std::fs::remove_file(&pid_path);
    }
    // A socket left by an exited VMM only confuses the next run and `stop`.
    let _ = std::fs::remove_file(&o.api_socket);
    wrote_pid.with_context(|| format!("cannot write {pid_path}"))?;
    status
}

/// Refuses to start next to a live VMM; removes a socket nobody listens on.
fn clear_stale_socket(socket: &Utf8Path) -> Result<()> {
    if std::fs::symlink_metadata(socket).is_err() {
        return Ok(());
    }
    match UnixStream::connect(socket) {
        Ok(_) => bail!(
            "a Cloud Hypervisor is already running with the API socket {socket}: \
             stop it with `cargo xtask stop` first"
        ),
        Err(_) => std::fs::remove_file(socket)
            .with_context(|| format!("cannot remove the stale API socket {socket}")),
    }
}

/// An answer from the API that was not 2xx.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub body: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        if !self.body.trim().is_empty() {
            write!(f, ": {}", self.body.trim())?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

/// The request bytes for a bodiless `PUT /api/v1/ENDPOINT`, as
/// `ch-remote` sends it.
pub fn request(endpoint: &str) -> Vec<u8> {
    format!("PUT /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n")
        .into_bytes()
}

/// Why the API could not be reached at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// No socket file: nothing was started with this socket.
    NoSocket,
    /// A socket file nobody listens on: the VMM is gone.
    Refused,
}

/// Sends `PUT /api/v1/ENDPOINT` (e.g. `vm.power-button`) and waits for the
/// answer. The error is an [`ApiError`] for a non-2xx answer and carries
/// [`Unreachable`] when nothing listens.
pub fn put(socket: &Utf8Path, endpoint: &str, timeout: Duration) -> Result<()> {
    let mut s = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(anyhow::Error::new(e).context(Unreachable::NoSocket))
                .with_context(|| format!("no API socket at {socket}"));
        }
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            return Err(anyhow::Error::new(e).context(Unreachable::Refused))
                .with_context(|| format!("nothing listens on the API socket {socket}"));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot connect to {socket}")),
    };
    s.set_read_timeout(Some(timeout))
        .and_then(|_| s.set_write_timeout(Some(timeout)))
        .context("setting socket timeouts")?;
    s.write_all(&request(endpoint))
        .with_context(|| format!("sending PUT {endpoint} to {socket}"))?;
    let (status, body) = read_response(&mut s)
        .with_context(|| format!("reading the answer to PUT {endpoint} from {socket}"))?;
    if !(200..300).contains(&status) {
        return Err(ApiError { status, body })
            .with_context(|| format!("PUT {endpoint} on {socket} failed"));
    }
    Ok(())
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unreachable::NoSocket => "no API socket",
            Unreachable::Refused => "connection refused",
        })
    }
}

/// Reads one response. Cloud Hypervisor keeps the connection open, so the
/// end is found from the headers (`Content-Length`), not from EOF.
fn read_response(s: &mut UnixStream) -> Result<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            bail!("response headers longer than 64 KiB");
        }
        let n = s.read(&mut chunk).context("no complete response")?;
        if n == 0 {
            bail!("the connection closed before a complete response");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP status line: {status_line:?}"))?;
    let length: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.trim().parse())
        .transpose()
        .context("bad Content-Length")?
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = s.read(&mut chunk).context("reading the response body")?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// How a [`stop`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The guest powered off after the ACPI power button.
    PowerButton,
    /// The guest did not react in time; the VMM was shut down.
    VmmShutdown,
}

/// Whether the VMM behind `socket` still runs: its pid (when the pid file
/// is there) or, failing that, whether the socket still answers.
fn running(socket: &Utf8Path) -> bool {
    if let Some(pid) = read_pid(socket) {
        // SAFETY: kill with signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        return alive && !is_zombie(pid);
    }
    UnixStream::connect(socket).is_ok()
}

fn read_pid(socket: &Utf8Path) -> Option<i32> {
    let text = std::fs::read_to_string(pid_file(socket)).ok()?;
    text.trim().parse().ok().filter(|p| *p > 0)
}

/// A zombie has exited; only its parent has not reaped it yet.
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn wait_gone(socket: &Utf8Path, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if !running(socket) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    !running(socket)
}

/// Stops the guest behind `socket`: the ACPI power button, up to
/// `grace` for the guest to power off (the VMM exits with it), then
/// `vmm.shutdown`. With no VMM running, says so and removes a stale socket.
pub fn stop(socket: &Utf8Path, grace: Duration) -> Result<Stopped> {
    let io_timeout = Duration::from_secs(5);
    if let Err(e) = put(socket, "vm.power-button", io_timeout) {
        match e.downcast_ref::<Unreachable>() {
            Some(Unreachable::NoSocket) => bail!(
                "no Cloud Hypervisor is running: there is no API socket at {socket} \
                 (start one with `cargo xtask run-cloud-hypervisor`)"
            ),
            Some(Unreachable::Refused) => {
                let _ = std::fs::remove_file(socket);
                let _ = std::fs::remove_file(pid_file(socket));
                bail!(
                    "no Cloud Hypervisor is running: nothing listens on {socket} \
                     (connection refused); removed the stale socket"
                )
            }
            // The VMM answered with an error (no VM booted, paused...):
            // it is alive, so vmm.shutdown below still applies.
            None => eprintln!("power button refused ({e:#}); shutting the VMM down"),
        }
    } else if wait_gone(socket, grace) {
        cleanup(socket);
        return Ok(Stopped::PowerButton);
    }
    match put(socket, "vmm.shutdown", io_timeout) {
        Ok(()) => {}
        // It exited between our last look and the request.
        Err(e) if e.downcast_ref::<Unreachable>().is_some() => {}
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                "the guest ignored the power button for {grace:?} and the VMM refused to shut down"
            )
            })
        }
    }
    if !wait_gone(socket, io_timeout) {
        bail!(
            "Cloud Hypervisor (API socket {socket}) accepted vmm.shutdown but is still running after {io_timeout:?}"
        );
    }
    cleanup(socket);
    Ok(Stopped::VmmShutdown)
}

fn cleanup(socket: &Utf8Path) {
    let _ = std::fs::remove_file(socket);
    let _ = std::fs::remove_file(pid_file(socket));
}
