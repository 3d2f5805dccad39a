//! `vm-exec`: run one command in a fresh guest and hand back its stdout,
//! stderr and exit status, as the original author's `vmapp` did.
//!
//! The command never touches the kernel command line. It travels as a
//! shell script of single-quoted words in a small uncompressed cpio
//! appended to the initramfs (concatenated archives are a valid initramfs;
//! later entries win), together with our own PID 1 (`rdinit=`), which skips
//! Tiny Core's boot. The guest's first serial port is the console; the
//! command's stdout, stderr and exit status each get their own serial port
//! (ttyS1, ttyS2, ttyS3; the 8250 driver is built into every x86 kernel we
//! boot), set raw so bytes pass untranslated, and each lands in a file that
//! is copied to our stdout/stderr as it grows.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use initramfs::newc::{self, Header};

use crate::qemu::{self, Io, Net, Share};

/// Where the guest mounts `--share`, and the command's working directory
/// then.
pub const SHARE_MOUNT: &str = "/mnt/share";
const SHARE_TAG: &str = "vmexec";
/// The exit status when the command cannot be run at all (as `env` and
/// `timeout` do).
pub const CANNOT_RUN: i32 = 125;

/// The guest's PID 1. `@SHARE@` becomes 1 with a share.
const INIT: &str = r#"#!/bin/sh
# vm-exec PID 1 (linux-guest vmm::exec): run /vm-exec/argv's command with
# stdout on ttyS1, stderr on ttyS2, its exit status on ttyS3; power off.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
HOME=/root
export PATH HOME
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for i in 1 2 3; do [ -c /dev/ttyS$i ] || mknod /dev/ttyS$i c 4 $((64 + i)); done
mkdir -p /dev/pts /tmp
mount -t devpts devpts /dev/pts 2>/dev/null
exec 3>/dev/ttyS1 4>/dev/ttyS2 5>/dev/ttyS3
# raw: no \n -> \r\n or any other translation of the command's bytes.
for fd in 3 4 5; do stty raw -echo <&$fd; done
finish() {
	exec 3>&- 4>&-
	echo "$1" >&5
	exec 5>&-
	sync
	poweroff -f
}
cd /
if [ @SHARE@ = 1 ]; then
	mkdir -p @MOUNT@
	if ! mount -t 9p -o trans=virtio,version=9p2000.L @TAG@ @MOUNT@ 2>&4; then
		finish "error: cannot mount the --share directory (9p): the guest kernel needs CONFIG_NET_9P_VIRTIO and CONFIG_9P_FS built in (Debian's kernel has them as modules)"
	fi
	cd @MOUNT@
fi
. /vm-exec/argv
"$@" </dev/null >&3 2>&4 3>&- 4>&- 5>&-
finish "exit $?"
"#;

/// What `vm-exec` runs and on what.
#[derive(Debug, Clone)]
pub struct Options {
    pub kernel: Utf8PathBuf,
    pub initrd: Utf8PathBuf,
    pub accel: qemu::Accel,
    pub smp: u32,
    pub memory_mib: u32,
    /// Extra kernel command-line words.
    pub append: Vec<String>,
    /// A host directory mounted at [`SHARE_MOUNT`] (9p); the command runs there.
    pub share: Option<Utf8PathBuf>,
    /// The command and its arguments, any bytes but NUL.
    pub argv: Vec<OsString>,
    /// Scratch files go into a fresh directory under here (the build dir).
    pub work_dir: Utf8PathBuf,
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct Outcome {
    /// The command's exit status (128+N when a signal killed it).
    pub status: i32,
    pub elapsed: Duration,
}

/// The command as a shell script: `set --` and one single-quoted word per
/// argument, which the shell takes byte for byte (a `'` is `'\''`).
pub fn argv_script(argv: &[OsString]) -> Result<Vec<u8>> {
    if argv.is_empty() {
        bail!("no command given: vm-exec -- CMD ARGS...");
    }
    let mut s = b"set --".to_vec();
    for a in argv {
        let bytes = a.as_bytes();
        if bytes.contains(&0) {
            bail!("argument {a:?} contains a NUL byte, which no command line can carry");
        }
        s.extend_from_slice(b" '");
        for &b in bytes {
            if b == b'\'' {
                s.extend_from_slice(br"'\''");
            } else {
                s.push(b);
            }
        }
        s.push(b'\'');
    }
    s.push(b'\n');
    Ok(s)
}

/// The appended archive: `/vm-exec/init` and `/vm-exec/argv`.
pub fn extra_cpio(argv: &[OsString], share: bool) -> Result<Vec<u8>> {
    let init = INIT
        .replace("@SHARE@", if share { "1" } else { "0" })
        .replace("@MOUNT@", SHARE_MOUNT)
        .replace("@TAG@", SHARE_TAG);
    let argv = argv_script(argv)?;
    let mut out = Vec::new();
    let mut ino = 0x7e00;
    let mut entry = |name: &str, mode: u32, data: &[u8]| -> std::io::Result<()> {
        ino += 1;
        let h = Header {
            ino,
            mode,
            nlink: if mode & newc::S_IFMT == newc::S_IFDIR {
                2
            } else {
                1
            },
            filesize: data.len() as u32,
            ..Header::default()
        };
        let n = newc::write_header(&mut out, &h, name.as_bytes())?;
        let _ = n;
        out.extend_from_slice(data);
        out.resize(out.len() + newc::pad4(data.len() as u64), 0);
        Ok(())
    };
    entry("vm-exec", newc::S_IFDIR | 0o755, b"")?;
    entry("vm-exec/init", newc::S_IFREG | 0o755, init.as_bytes())?;
    entry("vm-exec/argv", newc::S_IFREG | 0o644, &argv)?;
    newc::write_trailer(&mut out)?;
    Ok(out)
}

/// Copies what was appended to `path` since `pos` into `to`.
fn drain(path: &Utf8Path, pos: &mut u64, to: &mut dyn Write) -> Result<()> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Ok(());
    };
    f.seek(SeekFrom::Start(*pos))
        .with_context(|| format!("cannot seek in {path}"))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)
        .with_context(|| format!("cannot read {path}"))?;
    if !buf.is_empty() {
        to.write_all(&buf)
            .and_then(|_| to.flush())
            .context("cannot write the command's output")?;
        *pos += buf.len() as u64;
    }
    Ok(())
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Boots, runs the command, streams its output into `stdout`/`stderr`
/// (bytes as they are), and returns its exit status. Errors (QEMU failing,
/// the guest not reporting a status, the timeout) carry the console's end.
pub fn run(o: &Options, stdout: &mut dyn Write, stderr: &mut dyn Write) -> Result<Outcome> {
    let extra = extra_cpio(&o.argv, o.share.is_some())?;
    std::fs::create_dir_all(&o.work_dir)
        .with_context(|| format!("cannot create {}", o.work_dir))?;
    let tmp = tempfile::Builder::new()
        .prefix("vm-exec.")
        .tempdir_in(&o.work_dir)
        .with_context(|| format!("cannot create a scratch directory in {}", o.work_dir))?;
    let dir = Utf8PathBuf::from_path_buf(tmp.path().to_owned())
        .map_err(|p| anyhow::anyhow!("non-UTF-8 scratch path {}", p.display()))?;

    // The image plus our archive. The kernel looks for a cpio header only
    // at 4-byte offsets; zeros in between are skipped.
    let mut initrd = std::fs::read(&o.initrd)
        .with_context(|| format!("cannot read the initramfs {}", o.initrd))?;
    initrd.resize(initrd.len().next_multiple_of(4), 0);
    initrd.extend_from_slice(&extra);
    let combined = dir.join("initramfs");
    std::fs::write(&combined, &initrd).with_context(|| format!("cannot write {combined}"))?;

    let ports: Vec<Utf8PathBuf> = ["console", "stdout", "stderr", "status"]
        .iter()
        .map(|n| dir.join(n))
        .collect();
    let mut q = qemu::Options::new(o.kernel.clone(), combined, o.accel);
    q.smp = o.smp;
    q.memory_mib = o.memory_mib;
    q.net = Net::None;
    q.io = Io::Files(ports.clone());
    q.append = ["rdinit=/vm-exec/init", "panic=-1", "quiet"]
        .iter()
        .map(|s| s.to_string())
        .chain(o.append.iter().cloned())
        .collect();
    if let Some(share) = &o.share {
        if !share.is_dir() {
            bail!("--share {share}: not a directory");
        }
        q.share = Some(Share {
            path: share
                .canonicalize_utf8()
                .with_context(|| format!("--share {share}"))?,
            tag: SHARE_TAG.into(),
        });
    }
    let start = Instant::now();
    let mut cmd = Command::new(qemu::QEMU);
    cmd.args(q.args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    crate::boot::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().with_context(|| {
        format!(
            "cannot start {} (apt-get install {})",
            qemu::QEMU,
            qemu::QEMU_PACKAGE
        )
    })?;
    let mut qemu_err = child.stderr.take().context("no stderr pipe")?;
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = qemu_err.read_to_string(&mut s);
        s
    });
    let (mut out_pos, mut err_pos) = (0u64, 0u64);
    let status = loop {
        drain(&ports[1], &mut out_pos, stdout)?;
        drain(&ports[2], &mut err_pos, stderr)?;
        if let Some(st) = child.try_wait().context("cannot wait for QEMU")? {
            break st;
        }
        if start.elapsed() > o.timeout {
            let _ = child.kill();
            let _ = child.wait();
            let console = std::fs::read_to_string(&ports[0]).unwrap_or_default();
            bail!(
                "the command did not finish within {:?}; killed QEMU (pid {}). Console:\n{}",
                o.timeout,
                child.id(),
                tail(&console, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(30));
    };
    drain(&ports[1], &mut out_pos, stdout)?;
    drain(&ports[2], &mut err_pos, stderr)?;
    let console = std::fs::read_to_string(&ports[0]).unwrap_or_default();
    let qemu_said = err_reader.join().unwrap_or_default();
    if !status.success() {
        bail!(
            "{} exited with {status}: {}\nconsole:\n{}",
            qemu::QEMU,
            qemu_said.trim(),
            tail(&console, 30)
        );
    }
    let report = std::fs::read_to_string(&ports[3]).unwrap_or_default();
    let report = report.trim();
    if let Some(code) = report.strip_prefix("exit ") {
        let status = code
            .parse()
            .with_context(|| format!("the guest reported a bad exit status `{report}`"))?;
        return Ok(Outcome {
            status,
            elapsed: start.elapsed(),
        });
    }
    if let Some(msg) = report.strip_prefix("error: ") {
        bail!("in the guest: {msg}");
    }
    bail!(
        "the guest powered off without reporting the command's exit status \
         (does the initramfs have /bin/sh, stty and poweroff?). Console:\n{}",
        tail(&console, 30)
    )
}

/// For messages: the command as a shell would show it.
pub fn display(argv: &[OsString]) -> String {
    argv.iter()
        .map(|a| OsStr::to_string_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    /// The script, run by the host's sh, gives back the exact bytes.
    #[test]
    fn argv_survives_the_shell() {
        let args: Vec<OsString> = vec![
            "printf".into(),
            "%s\\0".into(),
            "a b".into(),
            "it's \"quoted\" $HOME `x` \\".into(),
            "héllo ✓".into(),
            "".into(),
            OsString::from_vec(vec![0xff, b'\n', 0x01]),
        ];
        let mut script = argv_script(&args).unwrap();
        script.extend_from_slice(b"\"$@\"\n");
        let out = Command::new("sh")
            .arg("-c")
            .arg(OsStr::from_bytes(&script))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let mut want = Vec::new();
        for a in &args[2..] {
            want.extend_from_slice(a.as_bytes());
            want.push(0);
        }
        assert_eq!(out.stdout, want);
        assert!(argv_script(&[]).is_err());
        assert!(argv_script(&[OsString::from_vec(b"a\0b".to_vec())]).is_err());
    }

    /// GNU cpio reads the appended archive back.
    #[test]
    fn extra_archive_is_newc() {
        let data = extra_cpio(&["uname".into(), "-r".into()], false).unwrap();
        let mut child = Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cpio (apt-get install cpio)");
        child.stdin.take().unwrap().write_all(&data).unwrap();
        let out = child.wait_with_output().unwrap();
        let list = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success());
        let lines: Vec<&str> = list.lines().collect();
        assert_eq!(lines.len(), 3, "{list}");
        assert!(lines[0].starts_with("drwxr-xr-x") && lines[0].ends_with(" vm-exec"));
        assert!(lines[1].starts_with("-rwxr-xr-x") && lines[1].ends_with(" vm-exec/init"));
        assert!(lines[2].ends_with(" vm-exec/argv"));
        let text = String::from_utf8_lossy(&data);
        assert!(text.contains("set -- 'uname' '-r'\n"));
        assert!(text.contains("if [ 0 = 1 ]"));
    }
}
