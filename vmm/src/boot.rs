//! Headless boots: QEMU with its serial console on pipes, read by a thread
//! into a buffer that can be waited on. The one boot loop that `boot-test`,
//! the tests (`testmirror::qemu::boot_tcg`) and the kernel tests share.
//!
//! A [`Session`] kills the QEMU it started, and only that one, when it is
//! dropped or times out.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The console so far, and whether QEMU closed it.
#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    closed: bool,
}

type Shared = Arc<(Mutex<Buffer>, Condvar)>;

/// A running headless QEMU and its console.
pub struct Session {
    program: String,
    child: Child,
    stdin: Option<ChildStdin>,
    console: Shared,
    reader: Option<JoinHandle<()>>,
    stderr: Option<JoinHandle<String>>,
    started: Instant,
    status: Option<ExitStatus>,
}

/// What a wait ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// The text was found; the console offset just after it.
    Found(usize),
    /// QEMU exited (the console is complete).
    Exited(ExitStatus),
    TimedOut,
}

impl Session {
    /// Starts `program args` with the console on pipes. With `echo`, the
    /// console is copied to our stderr as it arrives.
    pub fn spawn(program: &str, args: &[OsString], echo: bool) -> Result<Session> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {program}"))?;
        let started = Instant::now();
        let console: Shared = Arc::default();
        let mut out = child.stdout.take().context("no stdout pipe")?;
        let shared = console.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                let n = out.read(&mut buf).unwrap_or(0);
                if echo && n > 0 {
                    let _ = std::io::stderr().write_all(&buf[..n]);
                }
                let (lock, cv) = &*shared;
                let mut b = lock.lock().unwrap_or_else(|e| e.into_inner());
                if n == 0 {
                    b.closed = true;
                } else {
                    b.bytes.extend_from_slice(&buf[..n]);
                }
                cv.notify_all();
                if n == 0 {
                    return;
                }
            }
        });
        let mut err = child.stderr.take().context("no stderr pipe")?;
        let stderr = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = err.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        });
        Ok(Session {
            program: program.to_string(),
            stdin: child.stdin.take(),
            child,
            console,
            reader: Some(reader),
            stderr: Some(stderr),
            started,
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Time since QEMU was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The console so far (lossy UTF-8).
    pub fn console(&self) -> String {
        let b = self.console.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&b.bytes).into_owned()
    }

    /// The console so far, as bytes.
    pub fn console_bytes(&self) -> Vec<u8> {
        self.console
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bytes
            .clone()
    }

    /// Bytes of console so far: an offset to search from.
    pub fn console_len(&self) -> usize {
        self.console
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bytes
            .len()
    }

    /// Types `text` on the console.
    pub fn send(&mut self, text: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("the console input is closed")?;
        stdin
            .write_all(text.as_bytes())
            .and_then(|_| stdin.flush())
            .context("cannot write to QEMU's console")
    }

    /// Waits until `needle` appears in the console at or after `from`, QEMU
    /// exits, or `deadline` passes.
    pub fn wait_for(&mut self, needle: &str, from: usize, deadline: Instant) -> Result<Wait> {
        let needle = needle.as_bytes();
        loop {
            {
                let (lock, cv) = &*self.console;
                let b = lock.lock().unwrap_or_else(|e| e.into_inner());
                let start = from.min(b.bytes.len());
                if let Some(i) = find(&b.bytes[start..], needle) {
                    return Ok(Wait::Found(start + i + needle.len()));
                }
                if !b.closed {
                    // Short waits: QEMU can also exit without closing the
                    // pipe (a grandchild holding it), so poll the child too.
                    let left = deadline.saturating_duration_since(Instant::now());
                    let _ = cv
                        .wait_timeout(b, left.min(Duration::from_millis(100)))
                        .unwrap_or_else(|e| e.into_inner());
                }
            }
            if let Some(st) = self.try_wait()? {
                // Search once more: the text may have come with the last read.
                let done = self.finish_reading();
                if let Some(i) = find(&done[from.min(done.len())..], needle) {
                    return Ok(Wait::Found(from + i + needle.len()));
                }
                return Ok(Wait::Exited(st));
            }
            if Instant::now() >= deadline {
                return Ok(Wait::TimedOut);
            }
        }
    }

    /// Waits for QEMU to exit until `deadline`; `None` when it is still
    /// running.
    pub fn wait_exit(&mut self, deadline: Instant) -> Result<Option<ExitStatus>> {
        loop {
            if let Some(st) = self.try_wait()? {
                self.finish_reading();
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills this QEMU (and nothing else) and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(st) = self.status {
            return Ok(st);
        }
        let _ = self.child.kill();
        let st = self
            .child
            .wait()
            .with_context(|| format!("cannot reap {} (pid {})", self.program, self.child.id()))?;
        self.status = Some(st);
        self.finish_reading();
        Ok(st)
    }

    /// What QEMU printed on its stderr (complete once it has exited).
    pub fn stderr(&mut self) -> String {
        if self.status.is_none() {
            return String::new();
        }
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("cannot wait for {}", self.program))?;
        }
        Ok(self.status)
    }

    /// After exit: let the reader drain the pipe, return the whole console.
    fn finish_reading(&mut self) -> Vec<u8> {
        // Closing stdin first: nothing more will be typed.
        self.stdin = None;
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.console
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bytes
            .clone()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.kill();
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Boots and waits for the guest to power off: the console and the time it
/// took. Fails, with the console so far, when QEMU fails or `timeout`
/// passes (the QEMU is then killed).
pub fn run_to_poweroff(
    program: &str,
    args: &[OsString],
    timeout: Duration,
) -> Result<(String, Duration)> {
    let mut s = Session::spawn(program, args, false)?;
    match s.wait_exit(Instant::now() + timeout)? {
        Some(st) if st.success() => Ok((s.console(), s.elapsed())),
        Some(st) => {
            let err = s.stderr();
            bail!(
                "{program} exited with {st}: {err}\nconsole:\n{}",
                s.console()
            )
        }
        None => {
            s.kill()?;
            bail!(
                "the guest did not power off within {timeout:?}; killed {program}; console:\n{}",
                s.console()
            )
        }
    }
}

/// A shell command typed on the console after the guest is ready, and what
/// it returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub command: String,
    pub status: i32,
    /// The console between typing the command and its status line.
    pub output: String,
}

/// How the guest ended after it was ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It powered off on its own (e.g. an rcS override that ends so).
    ByItself,
    /// It powered off after we typed `poweroff` on the console.
    Poweroff,
}

/// `boot-test`: what to wait for and check.
#[derive(Debug, Clone)]
pub struct BootTest {
    pub marker: String,
    /// Text the console must show by the time the marker appears.
    pub expect: Vec<String>,
    /// Shell commands to run on the console once ready; each must exit 0.
    pub checks: Vec<String>,
    pub timeout: Duration,
    /// How long a shell prompt and the power-off may take after ready.
    pub shutdown_timeout: Duration,
    /// Copy the console to stderr as it arrives.
    pub echo: bool,
}

#[derive(Debug)]
pub struct BootReport {
    /// From starting QEMU to the marker.
    pub ready_after: Duration,
    pub checks: Vec<Check>,
    pub ending: Ending,
    pub console: String,
}

/// A console line that tells the typed command (`$((40+2))`) from its
/// output (`42`): the terminal echoes what we type.
fn tagged(tag: &str) -> (String, String) {
    (format!("{tag}-$((40+2))"), format!("{tag}-42"))
}

/// Boots, waits for the ready marker, runs the checks on the console shell,
/// then powers the guest off. Fails with the console on a timeout, a
/// missing expectation or a failed check; the QEMU is killed then.
pub fn boot_test(program: &str, args: &[OsString], t: &BootTest) -> Result<BootReport> {
    let mut s = Session::spawn(program, args, t.echo)?;
    let fail = |s: &mut Session, why: String| -> anyhow::Error {
        let _ = s.kill();
        let err = s.stderr();
        let err = if err.trim().is_empty() {
            String::new()
        } else {
            format!("\n{program} said: {}", err.trim())
        };
        anyhow::anyhow!(
            "{why}{err}\n--- console ---\n{}\n--- end of console ---",
            s.console()
        )
    };
    let deadline = Instant::now() + t.timeout;
    let ready_at = match s.wait_for(&t.marker, 0, deadline)? {
        Wait::Found(at) => at,
        Wait::Exited(st) => {
            return Err(fail(
                &mut s,
                format!(
                    "{program} exited ({st}) before the guest printed `{}`",
                    t.marker
                ),
            ))
        }
        Wait::TimedOut => {
            return Err(fail(
                &mut s,
                format!(
                    "the guest did not print `{}` within {:?}; killed {program}",
                    t.marker, t.timeout
                ),
            ))
        }
    };
    let ready_after = s.elapsed();
    let console = s.console();
    let missing: Vec<&String> = t
        .expect
        .iter()
        .filter(|e| !console.contains(e.as_str()))
        .collect();
    if !missing.is_empty() {
        return Err(fail(
            &mut s,
            format!("ready, but the console lacks {missing:?}"),
        ));
    }

    let mut checks = Vec::new();
    let shell_deadline = Instant::now() + t.shutdown_timeout;
    let mut ending = None;
    // Wait for a shell on the console: it may start after the marker, and
    // input typed before it reads is lost.
    let (typed, seen) = tagged("lg-sync");
    loop {
        // A guest that powered off by itself cannot be typed at; the
        // wait below says so.
        let _ = s.send(&format!("echo {typed}\n"));
        match s.wait_for(
            &seen,
            ready_at,
            (Instant::now() + Duration::from_millis(500)).min(shell_deadline),
        )? {
            Wait::Found(_) => break,
            Wait::Exited(st) if st.success() && t.checks.is_empty() => {
                ending = Some(Ending::ByItself);
                break;
            }
            Wait::Exited(st) => {
                return Err(fail(
                    &mut s,
                    format!("{program} exited ({st}) after the guest was ready"),
                ));
            }
            Wait::TimedOut if Instant::now() >= shell_deadline => {
                return Err(fail(
                    &mut s,
                    format!(
                        "ready after {ready_after:.1?}, but no shell answered on the console within {:?} \
                         (needed to run checks and `poweroff`); killed {program}",
                        t.shutdown_timeout
                    ),
                ));
            }
            Wait::TimedOut => {}
        }
    }
    if ending.is_none() {
        for (i, cmd) in t.checks.iter().enumerate() {
            let (typed, seen) = tagged(&format!("lg-check-{i}"));
            let begin = s.console_len();
            // A newline, not `;`: `cmd &` or `cmd # note` would swallow
            // or break a `; echo`.
            let _ = s.send(&format!("{cmd}\necho \"{typed}:$?\"\n"));
            let end = match s.wait_for(&format!("{seen}:"), begin, Instant::now() + t.timeout)? {
                Wait::Found(at) => at,
                _ => return Err(fail(&mut s, format!("the check `{cmd}` did not finish"))),
            };
            // The status digits may trail the tag: wait for the line's end.
            let deadline = Instant::now() + t.shutdown_timeout;
            if !matches!(s.wait_for("\n", end, deadline)?, Wait::Found(_)) {
                return Err(fail(&mut s, format!("the check `{cmd}` printed no status")));
            }
            // Offsets are in bytes: slice before any lossy conversion.
            let bytes = s.console_bytes();
            let status: String = bytes[end..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .map(|&b| b as char)
                .collect();
            let output = String::from_utf8_lossy(&bytes[begin..end - seen.len() - 1]).into_owned();
            checks.push(Check {
                command: cmd.clone(),
                status: status.parse().unwrap_or(-1),
                output,
            });
        }
        let _ = s.send("poweroff\n");
        match s.wait_exit(Instant::now() + t.shutdown_timeout)? {
            Some(st) if st.success() => ending = Some(Ending::Poweroff),
            Some(st) => {
                return Err(fail(
                    &mut s,
                    format!("{program} exited with {st} on poweroff"),
                ))
            }
            None => {
                return Err(fail(
                    &mut s,
                    format!(
                        "the guest did not power off within {:?} of `poweroff`; killed {program}",
                        t.shutdown_timeout
                    ),
                ))
            }
        }
    }
    let report = BootReport {
        ready_after,
        checks,
        ending: ending.unwrap_or(Ending::ByItself),
        console: s.console(),
    };
    if let Some(bad) = report.checks.iter().find(|c| c.status != 0) {
        bail!(
            "the check `{}` exited with {}:\n{}\n--- console ---\n{}",
            bad.command,
            bad.status,
            bad.output,
            report.console
        );
    }
    Ok(report)
}

/// A headless QEMU does not notice that we are gone (its console pipes
/// just stop being read): have the kernel kill it when the task is killed
/// (a CI timeout, `kill`), so that no guest is left running.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no
    // memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell stands in for QEMU: the loop's logic, not the guest, is
    /// under test here (the xtask tests boot real guests).
    fn sh(script: &str) -> (String, Vec<OsString>) {
        ("sh".into(), vec!["-c".into(), script.into()])
    }

    #[test]
    fn finds_text_exits_and_times_out() {
        let (p, a) = sh("echo booting; sleep 0.2; echo 'linux-guest: ready'; sleep 0.3; exit 3");
        let mut s = Session::spawn(&p, &a, false).unwrap();
        let far = Instant::now() + Duration::from_secs(10);
        let Wait::Found(at) = s.wait_for("ready", 0, far).unwrap() else {
            panic!("no marker")
        };
        assert_eq!(&s.console()[..at], "booting\nlinux-guest: ready");
        match s.wait_for("never", at, far).unwrap() {
            Wait::Exited(st) => assert_eq!(st.code(), Some(3)),
            w => panic!("{w:?}"),
        }

        let (p, a) = sh("exec sleep 30");
        let mut s = Session::spawn(&p, &a, false).unwrap();
        let t0 = Instant::now();
        assert_eq!(
            s.wait_for("x", 0, Instant::now() + Duration::from_millis(300))
                .unwrap(),
            Wait::TimedOut
        );
        assert!(t0.elapsed() < Duration::from_secs(5));
        let pid = s.pid();
        let st = s.kill().unwrap();
        assert!(!st.success());
        // Only our child was killed, and it is gone (reaped).
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    /// A fake console: a shell that prints the marker and then reads lines
    /// as a guest's login shell would, with the tty echo imitated.
    const FAKE_GUEST: &str = r#"echo 'linux-guest: ready'
poweroff() { exit 0; }
st=0
while IFS= read -r line; do
  printf '%s\n' "$line"
  # `$?` of the previous line, as in a shell reading its input itself.
  (exit $st); eval "$line"; st=$?
done"#;

    fn test(checks: &[&str]) -> BootTest {
        BootTest {
            marker: "linux-guest: ready".into(),
            expect: vec![],
            checks: checks.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(10),
            echo: false,
        }
    }

    #[test]
    fn checks_then_poweroff() {
        let (p, a) = sh(FAKE_GUEST);
        let r = boot_test(&p, &a, &test(&["echo hello; true"])).unwrap();
        assert_eq!(r.ending, Ending::Poweroff);
        assert_eq!(r.checks.len(), 1);
        assert_eq!(r.checks[0].status, 0);
        assert!(r.checks[0].output.contains("hello\n"), "{:?}", r.checks[0]);

        let e = boot_test(&p, &a, &test(&["echo nope; false"])).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("the check `echo nope; false` exited with 1"),
            "{e}"
        );
    }

    #[test]
    fn marker_missing_or_guest_gone() {
        let (p, a) = sh("echo 'kernel panic'; exit 0");
        let e = format!("{:#}", boot_test(&p, &a, &test(&[])).unwrap_err());
        assert!(
            e.contains("before the guest printed `linux-guest: ready`"),
            "{e}"
        );
        assert!(e.contains("kernel panic"), "{e}");

        let (p, a) = sh("echo 'linux-guest: ready'; exit 0");
        let r = boot_test(&p, &a, &test(&[])).unwrap();
        assert_eq!(r.ending, Ending::ByItself);

        let mut t = test(&[]);
        t.timeout = Duration::from_millis(500);
        let (p, a) = sh("echo booting; exec sleep 30");
        let e = format!("{:#}", boot_test(&p, &a, &t).unwrap_err());
        assert!(
            e.contains("did not print `linux-guest: ready` within"),
            "{e}"
        );

        let mut t = test(&[]);
        t.expect = vec!["tc-config: boot finished".into()];
        let (p, a) = sh("echo 'linux-guest: ready'; exec sleep 5");
        let e = format!("{:#}", boot_test(&p, &a, &t).unwrap_err());
        assert!(e.contains("lacks [\"tc-config: boot finished\"]"), "{e}");
    }
}
