//! Leaving the terminal as we found it, however the VMM exits.
//!
//! QEMU puts the terminal in raw mode and restores it on a clean exit, but
//! its firmware and the guest turn line wrap off (`ESC [ ? 7 l`) and nobody
//! turns it back on: the old scripts' users typed `tput smam` after every
//! run. A killed QEMU also leaves raw mode and a non-blocking stdin behind.
//! [`Guard`] saves stdin's termios and file flags, forwards SIGINT, SIGTERM
//! and SIGHUP to the VMM (so it can exit and we can clean up), and restores
//! everything, plus auto-wrap, when the VMM is gone.

use std::ffi::OsString;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

use anyhow::{Context, Result};

/// DECAWM on (what `tput smam` prints on xterm-like terminals).
pub const AUTOWRAP_ON: &[u8] = b"\x1b[?7h";

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The terminal as it was before the first [`Guard`]: read by the signal
/// handler, so plain data behind a `OnceLock` (a lock-free read once set).
struct Saved {
    termios: Option<libc::termios>,
    stdin_flags: Option<libc::c_int>,
    stdout_is_tty: bool,
}

static SAVED: OnceLock<Saved> = OnceLock::new();
/// The VMM's pid while it runs; signals are forwarded to it.
static CHILD: AtomicI32 = AtomicI32::new(0);
/// The last of [`SIGNALS`] received while guarding (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// Restores the saved terminal. Only async-signal-safe calls: the signal
/// handler uses it too.
fn restore_saved() {
    let Some(s) = SAVED.get() else { return };
    // SAFETY: plain syscalls on the process's own standard descriptors,
    // with a termios value that tcgetattr filled in.
    unsafe {
        if let Some(t) = &s.termios {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSADRAIN, t);
        }
        if let Some(flags) = s.stdin_flags {
            libc::fcntl(libc::STDIN_FILENO, libc::F_SETFL, flags);
        }
        if s.stdout_is_tty {
            libc::write(
                libc::STDOUT_FILENO,
                AUTOWRAP_ON.as_ptr().cast(),
                AUTOWRAP_ON.len(),
            );
        }
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    RECEIVED.store(sig, Ordering::SeqCst);
    let child = CHILD.load(Ordering::SeqCst);
    if child > 0 {
        // The VMM exits on these signals too; the waiting thread then
        // restores the terminal and re-raises.
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(child, sig) };
        return;
    }
    restore_saved();
    // SAFETY: async-signal-safe; default disposition, then die of the signal.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Saves the terminal on creation and restores it on [`Guard::restore`] and
/// on drop; catches SIGINT, SIGTERM and SIGHUP while it lives.
pub struct Guard {
    previous: Vec<(libc::c_int, libc::sighandler_t)>,
}

impl Guard {
    pub fn new() -> Guard {
        SAVED.get_or_init(|| {
            // SAFETY: termios is plain data; tcgetattr fills it or fails.
            unsafe {
                let mut t: libc::termios = std::mem::zeroed();
                let termios = (libc::isatty(libc::STDIN_FILENO) == 1
                    && libc::tcgetattr(libc::STDIN_FILENO, &mut t) == 0)
                    .then_some(t);
                let flags = libc::fcntl(libc::STDIN_FILENO, libc::F_GETFL);
                Saved {
                    termios,
                    stdin_flags: (flags >= 0).then_some(flags),
                    stdout_is_tty: libc::isatty(libc::STDOUT_FILENO) == 1,
                }
            }
        });
        RECEIVED.store(0, Ordering::SeqCst);
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        let previous = SIGNALS
            .iter()
            // SAFETY: installs a handler that only makes async-signal-safe calls.
            .map(|&s| (s, unsafe { libc::signal(s, handler) }))
            .collect();
        Guard { previous }
    }

    /// Forward signals to `pid` (the VMM) from now on.
    pub fn set_child(&self, pid: u32) {
        CHILD.store(pid as i32, Ordering::SeqCst);
    }

    /// The signal that arrived while guarding, if any.
    pub fn received(&self) -> Option<i32> {
        match RECEIVED.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }

    /// Puts the terminal back as it was and turns auto-wrap on.
    pub fn restore(&self) {
        restore_saved();
    }
}

impl Default for Guard {
    fn default() -> Self {
        Guard::new()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        CHILD.store(0, Ordering::SeqCst);
        restore_saved();
        for &(sig, h) in &self.previous {
            // SAFETY: puts back the disposition we replaced.
            unsafe { libc::signal(sig, h) };
        }
    }
}

/// Runs an interactive VMM on this terminal and restores the terminal
/// afterwards. Returns the exit code to propagate: the VMM's, or 128+N
/// when it died of signal N. If we were signalled ourselves, we die of the
/// same signal once the terminal is restored.
pub fn run_interactive(program: &str, args: &[OsString]) -> Result<i32> {
    let guard = Guard::new();
    let mut child = Command::new(program)
        .args(args)
        .spawn()
        .with_context(|| format!("cannot start {program}"))?;
    guard.set_child(child.id());
    let status = child
        .wait()
        .with_context(|| format!("waiting for {program}"))?;
    let received = guard.received();
    drop(guard);
    if let Some(sig) = received {
        // SAFETY: default disposition, then die of the signal we got, so
        // our parent sees the truth.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
    Ok(exit_code(status))
}

/// The shell's convention: the exit code, or 128 + the signal number.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        let st = |script: &str| Command::new("sh").args(["-c", script]).status().unwrap();
        assert_eq!(exit_code(st("exit 3")), 3);
        assert_eq!(exit_code(st("kill -TERM $$")), 128 + libc::SIGTERM);
        assert_eq!(
            run_interactive("sh", &["-c".into(), "exit 5".into()]).unwrap(),
            5
        );
        let e = run_interactive("/nonexistent/qemu", &[]).unwrap_err();
        assert!(format!("{e:#}").contains("cannot start /nonexistent/qemu"));
    }
}
