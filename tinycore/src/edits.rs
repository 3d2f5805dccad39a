//! The edits that turn a stock Tiny Core root into our guest.
//!
//! Everything here works on an unpacked tc_root as a plain user: files are
//! rewritten in place (keeping their mode), nothing is ever chowned. Owners
//! come from the manifest and the rules in [`rootfs::meta`]: whatever we add
//! and do not record is root:root with its disk mode, and `/home/tc` is
//! 1001:50.
//!
//! Every edit is idempotent (a second run leaves the same bytes and reports
//! nothing applied) and names what it could not do: another TC release may
//! lack the line an edit anchors on, and silently skipping it would produce a
//! guest that, e.g., hangs waiting for zram.

use std::os::unix::fs::PermissionsExt;

use anyhow::{bail, Context, Result};
use camino::{Utf8Component, Utf8Path, Utf8PathBuf};
use rootfs::fsutil::write_atomic;
use rootfs::manifest::Manifest;

/// What a step did. The caller prints it; nothing here prints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EditReport {
    /// Edits that changed tc_root in this run.
    pub applied: Vec<String>,
    /// Edits that were already in place (a re-run).
    pub unchanged: Vec<String>,
    /// Edits that could not be made, or inputs that were ignored, by name.
    pub warnings: Vec<String>,
}

impl EditReport {
    pub fn merge(&mut self, other: EditReport) {
        self.applied.extend(other.applied);
        self.unchanged.extend(other.unchanged);
        self.warnings.extend(other.warnings);
    }

    pub(crate) fn record(&mut self, changed: bool, what: impl Into<String>) {
        if changed {
            self.applied.push(what.into());
        } else {
            self.unchanged.push(what.into());
        }
    }

    pub(crate) fn warn(&mut self, what: impl Into<String>) {
        self.warnings.push(what.into());
    }
}

/// Our `/opt/bootlocal.sh`. TC's getty and autologin run on tty1; in a VM
/// the console is the virtio console (hvc0) or the first serial port, so
/// tty1 becomes a symlink to whichever exists, as in the original script.
/// Lines appended later (the openssh start line) are kept on re-runs: the
/// edit only checks that the file starts with this text.
pub const BOOTLOCAL_SH: &str = r#"#!/bin/sh
# /opt/bootlocal.sh, written by linux-guest (tinycore::edits).
# TC runs it in the background at the end of tc-config.

# The ready marker `cargo xtask boot-test` waits for, printed when this
# script ends: after the lines appended below too (the openssh start).
trap 'echo "linux-guest: ready"' EXIT

# TC's getty/autologin use tty1; a VM's console is the virtio console (hvc0)
# or the first serial port, so point tty1 at whichever exists. Ask sysfs:
# a static /dev/hvc0 node exists even when the kernel has no virtio console.
if [ -e /sys/class/tty/hvc0 ]; then
	ln -sf /dev/hvc0 /dev/tty1
else
	ln -sf /dev/ttyS0 /dev/tty1
fi

# Site setup (networking), installed from guest/tc-sys.sh-link.
if [ -x /root/tc-sys.sh ]; then
	/root/tc-sys.sh
elif [ -f /root/tc-sys.sh ]; then
	sh /root/tc-sys.sh
fi
"#;

/// Put into `/opt/bootsync.sh` before it starts bootlocal.sh in the
/// background: busybox init may start the tty1 getty before the background
/// bootlocal.sh has pointed tty1 at the console, and then root's login
/// shell sits on a tty nobody sees. bootsync.sh runs synchronously inside
/// the sysinit step, before init starts any getty.
const BOOTSYNC_TTY1: &str =
    "# linux-guest: tty1 is the VM console (hvc0 or ttyS0), before any getty starts.
if [ -e /sys/class/tty/hvc0 ]; then ln -sf /dev/hvc0 /dev/tty1; else ln -sf /dev/ttyS0 /dev/tty1; fi
";
const BOOTSYNC_ANCHOR: &str = "/opt/bootlocal.sh &";

/// What replaces TC's `clear` line in rcS: a comment rather than nothing, so
/// a re-run can tell "already removed" from "this rcS never had one".
const RCS_CLEAR_MARKER: &str =
    "# linux-guest: removed `clear` here (keeps boot messages on the console)";

const TC_CONFIG_ANCHOR: &str = "### END functions";
const TC_CONFIG_LINES: [&str; 2] = ["NORTC=1", "NOZSWAP=1"];

/// Applies the basic distro edits (SPEC §2 TinyCore setup, steps 2 and 3):
/// `lib64 -> lib`, `home/tc`, no `clear` in rcS, NORTC/NOZSWAP in
/// tc-config, `etc/sysconfig/superuser`, 115200 baud on tty1, our
/// bootlocal.sh.
pub fn apply_distro_edits(root: &Utf8Path) -> Result<EditReport> {
    let mut r = EditReport::default();
    lib64_link(root, &mut r)?;
    home_tc(root, &mut r)?;
    rcs_no_clear(root, &mut r)?;
    tc_config_flags(root, &mut r)?;
    superuser(root, &mut r)?;
    for rel in ["etc/inittab", "sbin/autologin"] {
        tty1_speed(root, rel, &mut r)?;
    }
    bootlocal(root, &mut r)?;
    bootsync_tty1(root, &mut r)?;
    Ok(r)
}

fn lib64_link(root: &Utf8Path, r: &mut EditReport) -> Result<()> {
    let link = root.join("lib64");
    match std::fs::symlink_metadata(&link) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::os::unix::fs::symlink("lib", &link)
                .with_context(|| format!("cannot create the symlink {link} -> lib"))?;
            r.record(true, "lib64 -> lib");
        }
        Err(e) => return Err(e).with_context(|| format!("cannot stat {link}")),
        Ok(md) if md.file_type().is_symlink() => {
            let target = std::fs::read_link(&link)
                .with_context(|| format!("cannot read the symlink {link}"))?;
            if target.as_os_str() == "lib" || target.as_os_str() == "/lib" {
                r.record(false, "lib64 -> lib");
            } else {
                r.warn(format!(
                    "lib64 is a symlink to {}, not lib: leaving it",
                    target.display()
                ));
            }
        }
        // Newer releases may ship a real /lib64; the loader path then works already.
        Ok(_) => r.warn("lib64 exists and is not a symlink: not linking it to lib"),
    }
    Ok(())
}

fn home_tc(root: &Utf8Path, r: &mut EditReport) -> Result<()> {
    let dir = root.join("home/tc");
    if dir.is_dir() {
        r.record(false, "home/tc");
        return Ok(());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {dir}"))?;
    set_mode(&dir, 0o755)?;
    r.record(true, "home/tc");
    Ok(())
}

fn rcs_no_clear(root: &Utf8Path, r: &mut EditReport) -> Result<()> {
    let path = root.join("etc/init.d/rcS");
    let Some(text) = read_text_opt(&path)? else {
        r.warn("rcS: etc/init.d/rcS does not exist; `clear` not removed");
        return Ok(());
    };
    let mut found = false;
    let mut marker = false;
    let lines: Vec<String> = text
        .split_inclusive('\n')
        .map(|line| {
            let body = line.trim_end_matches(['\n', '\r']);
            if body.trim() == RCS_CLEAR_MARKER {
                marker = true;
            }
            if body.trim() == "clear" {
                found = true;
                format!("{RCS_CLEAR_MARKER}{}", &line[body.len()..])
            } else {
                line.to_string()
            }
        })
        .collect();
    if found {
        rewrite(&path, lines.concat().as_bytes())?;
        r.record(true, "rcS: removed `clear`");
    } else if marker {
        r.record(false, "rcS: removed `clear`");
    } else {
        r.warn("rcS: no `clear` line; nothing removed");
    }
    Ok(())
}

fn tc_config_flags(root: &Utf8Path, r: &mut EditReport) -> Result<()> {
    let path = root.join("etc/init.d/tc-config");
    let Some(text) = read_text_opt(&path)? else {
        r.warn("tc-config: etc/init.d/tc-config does not exist; NORTC/NOZSWAP not set");
        return Ok(());
    };
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    let Some(anchor) = lines.iter().position(|l| l.trim_end() == TC_CONFIG_ANCHOR) else {
        r.warn("tc-config: no `### END functions` line; NORTC/NOZSWAP not set");
        return Ok(());
    };
    // The lines we own are the run of NORTC=1/NOZSWAP=1 right after the
    // anchor (a tree edited by the seed script has only NORTC=1).
    let mut present = Vec::new();
    let mut i = anchor + 1;
    while let Some(l) = lines.get(i).map(|l| l.trim()) {
        match TC_CONFIG_LINES.iter().find(|want| **want == l) {
            Some(want) => present.push(*want),
            None => break,
        }
        i += 1;
    }
    let missing: Vec<&str> = TC_CONFIG_LINES
        .iter()
        .copied()
        .filter(|l| !present.contains(l))
        .collect();
    if missing.is_empty() {
        r.record(false, "tc-config: NORTC=1 NOZSWAP=1");
        return Ok(());
    }
    // After the anchor and the flags already there; a last line without a
    // newline gets one.
    let after = i - 1;
    let fixed_line;
    if !lines[after].ends_with('\n') {
        fixed_line = format!("{}\n", lines[after]);
        lines[after] = &fixed_line;
    }
    let insert: Vec<String> = missing.iter().map(|l| format!("{l}\n")).collect();
    let mut out = String::with_capacity(text.len() + 32);
    for (n, l) in lines.iter().enumerate() {
        out.push_str(l);
        if n == after {
            insert.iter().for_each(|l| out.push_str(l));
        }
    }
    rewrite(&path, out.as_bytes())?;
    r.record(true, format!("tc-config: {}", missing.join(" ")));
    Ok(())
}

fn superuser(root: &Utf8Path, r: &mut EditReport) -> Result<()> {
    let path = root.join("etc/sysconfig/superuser");
    if path.exists() {
        r.record(false, "etc/sysconfig/superuser");
        return Ok(());
    }
    // TC's autologin logs in as root when this file exists.
    let dir = root.join("etc/sysconfig");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {dir}"))?;
    std::fs::write(&path, b"").with_context(|| format!("cannot create {path}"))?;
    set_mode(&path, 0o644)?;
    r.record(true, "etc/sysconfig/superuser");
    Ok(())
}

fn tty1_speed(root: &Utf8Path, rel: &str, r: &mut EditReport) -> Result<()> {
    let path = root.join(rel);
    let name = format!("{rel}: 115200 tty1");
    let Some(text) = read_text_opt(&path)? else {
        r.warn(format!(
            "{rel} does not exist; tty1 speed not set to 115200"
        ));
        return Ok(());
    };
    if text.contains("38400 tty1") {
        rewrite(&path, text.replace("38400 tty1", "115200 tty1").as_bytes())?;
        r.record(true, name);
    } else if text.contains("115200 tty1") {
        r.record(false, name);
    } else {
        r.warn(format!(
            "{rel}: no `38400 tty1`; tty1 speed not set to 115200"
        ));
    }
    Ok(())
}

fn bootlocal(root: &Utf8Path, r: &mut EditReport) -> Result<()> {
    let path = root.join("opt/bootlocal.sh");
    let current = read_text_opt(&path)?;
    let ours = current
        .as_deref()
        .is_some_and(|t| t.starts_with(BOOTLOCAL_SH));
    let changed = if ours {
        ensure_mode(&path, 0o755)?
    } else {
        put_file(&path, BOOTLOCAL_SH.as_bytes(), 0o755)?
    };
    r.record(changed, "opt/bootlocal.sh");
    Ok(())
}

fn bootsync_tty1(root: &Utf8Path, r: &mut EditReport) -> Result<()> {
    let rel = "opt/bootsync.sh";
    let path = root.join(rel);
    let Some(text) = read_text_opt(&path)? else {
        r.warn(format!(
            "{rel} does not exist; tty1 is pointed at the console only by bootlocal.sh, \
             which may be too late for the tty1 getty"
        ));
        return Ok(());
    };
    if text.contains(BOOTSYNC_TTY1) {
        r.record(false, format!("{rel}: tty1 -> console"));
        return Ok(());
    }
    let new = match text.find(BOOTSYNC_ANCHOR) {
        Some(at) => format!("{}{BOOTSYNC_TTY1}{}", &text[..at], &text[at..]),
        None => format!(
            "{}{}{BOOTSYNC_TTY1}",
            text,
            if text.ends_with('\n') { "" } else { "\n" }
        ),
    };
    rewrite(&path, new.as_bytes())?;
    r.record(true, format!("{rel}: tty1 -> console"));
    Ok(())
}

/// Files that replace or join tc_root's own (SPEC §2 step 4). `None` means
/// "keep TC's".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Becomes `/root/tc-sys.sh` (run by bootlocal.sh at boot).
    pub tc_sys: Option<Utf8PathBuf>,
    /// Replaces `/etc/init.d/rcS` entirely.
    pub rcs: Option<Utf8PathBuf>,
}

impl Overrides {
    /// Reads the magic links `tc-sys.sh-link` and `rcS-link` from the guest
    /// dir. A link that resolves to a file is an override; a dangling one
    /// (the default `rcS-link -> xxx`) or a missing one is not, and says so
    /// in the report.
    pub fn from_guest_dir(guest: &Utf8Path) -> Result<(Overrides, EditReport)> {
        let mut r = EditReport::default();
        let tc_sys = resolve_magic_link(guest, "tc-sys.sh-link", "no /root/tc-sys.sh", &mut r)?;
        let rcs = resolve_magic_link(guest, "rcS-link", "keeping TC's rcS", &mut r)?;
        Ok((Overrides { tc_sys, rcs }, r))
    }
}

fn resolve_magic_link(
    guest: &Utf8Path,
    name: &str,
    fallback: &str,
    r: &mut EditReport,
) -> Result<Option<Utf8PathBuf>> {
    let link = guest.join(name);
    let md = match std::fs::symlink_metadata(&link) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            r.unchanged
                .push(format!("{name}: {link} does not exist: {fallback}"));
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("cannot stat {link}")),
    };
    let shown = if md.file_type().is_symlink() {
        let target =
            std::fs::read_link(&link).with_context(|| format!("cannot read the symlink {link}"))?;
        format!("{name} -> {}", target.display())
    } else {
        name.to_string()
    };
    match std::fs::metadata(&link) {
        Ok(m) if m.is_file() => {
            let resolved = link
                .canonicalize_utf8()
                .with_context(|| format!("cannot resolve {link}"))?;
            Ok(Some(resolved))
        }
        Ok(_) => {
            r.warn(format!("{shown} is not a regular file: {fallback}"));
            Ok(None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // The seed's way of saying "no override".
            r.unchanged.push(format!("{shown} is dangling: {fallback}"));
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("cannot follow {link}")),
    }
}

/// Installs the overrides: `tc_sys` as `root/tc-sys.sh`, `rcs` as
/// `etc/init.d/rcS`, both 0755. An explicit path that does not exist is an
/// error (it came from the config, so the user meant it).
pub fn apply_overrides(root: &Utf8Path, o: &Overrides) -> Result<EditReport> {
    let mut r = EditReport::default();
    for (src, rel, what) in [
        (&o.tc_sys, "root/tc-sys.sh", "tc-sys.sh override"),
        (&o.rcs, "etc/init.d/rcS", "rcS override"),
    ] {
        let Some(src) = src else { continue };
        let bytes = std::fs::read(src).with_context(|| {
            format!(
                "cannot read the {what} {src}: fix the path in guest.toml or the link in guest/"
            )
        })?;
        let changed = put_file(&root.join(rel), &bytes, 0o755)?;
        r.record(changed, format!("{rel} from {src}"));
    }
    Ok(r)
}

/// CUSTOM_BINARIES: copies each host file into `usr/local/bin/` (0755) and
/// makes that directory world-readable/executable. Any manifest record of
/// an installed name is dropped, so a replaced extension file does not lend
/// its owner or setuid bit to the host binary. A dynamically linked binary
/// also gets the shared libraries (and program interpreter) the guest lacks,
/// from the host ([`crate::elfdeps`]); one found nowhere is a warning.
pub fn install_binaries(
    root: &Utf8Path,
    manifest: &mut Manifest,
    binaries: &[Utf8PathBuf],
) -> Result<EditReport> {
    let mut r = EditReport::default();
    let bin = root.join("usr/local/bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("cannot create {bin}"))?;
    add_mode_bits(&bin, 0o755)?;
    if let Some(e) = manifest.get("/usr/local/bin").cloned() {
        if e.mode & 0o755 != 0o755 {
            manifest.insert(
                "/usr/local/bin",
                rootfs::manifest::Entry {
                    mode: e.mode | 0o755,
                    ..e
                },
            );
        }
    }
    let mut installed = Vec::with_capacity(binaries.len());
    for src in binaries {
        let name = src
            .file_name()
            .with_context(|| format!("CUSTOM_BINARIES entry {src} has no file name"))?;
        let md = std::fs::metadata(src)
            .with_context(|| format!("CUSTOM_BINARIES: cannot read {src}; fix or drop it (guest.toml custom_binaries or $CUSTOM_BINARIES)"))?;
        if !md.is_file() {
            bail!("CUSTOM_BINARIES: {src} is not a regular file; list programs, not directories");
        }
        let bytes =
            std::fs::read(src).with_context(|| format!("CUSTOM_BINARIES: cannot read {src}"))?;
        let dest = bin.join(name);
        let changed = put_file(&dest, &bytes, 0o755)?;
        manifest.remove(&format!("/usr/local/bin/{name}"));
        r.record(changed, format!("usr/local/bin/{name} from {src}"));
        installed.push((src.clone(), format!("/usr/local/bin/{name}")));
    }
    let host = crate::elfdeps::HostLibs::system();
    r.merge(crate::elfdeps::install_deps(
        root, manifest, &host, &installed,
    )?);
    Ok(r)
}

/// CUSTOM_REMOVALS: deletes each path (relative to tc_root) and everything
/// below it, on disk and in the manifest. Absolute paths, `..` and paths
/// through a symlink are refused (they could reach outside tc_root); a path
/// that exists neither on disk nor in the manifest is a warning.
pub fn apply_removals(
    root: &Utf8Path,
    manifest: &mut Manifest,
    paths: &[Utf8PathBuf],
) -> Result<EditReport> {
    let mut r = EditReport::default();
    for rel in paths {
        let clean = contained_rel(rel)?;
        // Every parent must be a real directory: `lib64/x` with lib64 -> /lib
        // would otherwise delete from the host.
        let mut cur = root.to_path_buf();
        let comps: Vec<&str> = clean.iter().collect();
        let mut reachable = true;
        for c in &comps[..comps.len() - 1] {
            cur.push(c);
            match std::fs::symlink_metadata(&cur) {
                Ok(md) if md.file_type().is_symlink() => bail!(
                    "CUSTOM_REMOVALS: {rel} goes through the symlink {cur}; name the path it points to instead"
                ),
                Ok(md) if md.is_dir() => {}
                _ => {
                    reachable = false;
                    break;
                }
            }
        }
        let guest = format!("/{clean}");
        let in_manifest = manifest
            .iter()
            .any(|(p, _)| p == guest || p.starts_with(&format!("{guest}/")));
        let disk = root.join(&clean);
        let on_disk = reachable
            && match std::fs::symlink_metadata(&disk) {
                Ok(md) => {
                    if md.is_dir() {
                        std::fs::remove_dir_all(&disk)
                            .with_context(|| format!("cannot remove the directory {disk}"))?;
                    } else {
                        std::fs::remove_file(&disk)
                            .with_context(|| format!("cannot remove {disk}"))?;
                    }
                    true
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(e).with_context(|| format!("cannot stat {disk}")),
            };
        manifest.remove_tree(&guest);
        if on_disk || in_manifest {
            r.record(true, format!("removed {clean}"));
        } else {
            r.warn(format!(
                "CUSTOM_REMOVALS: {clean} does not exist in tc_root; nothing removed"
            ));
        }
    }
    Ok(r)
}

/// `rel` as a clean relative path, or an error if it could leave tc_root.
fn contained_rel(rel: &Utf8Path) -> Result<Utf8PathBuf> {
    let mut out = Utf8PathBuf::new();
    for c in rel.components() {
        match c {
            Utf8Component::Normal(n) => out.push(n),
            Utf8Component::CurDir => {}
            Utf8Component::ParentDir => {
                bail!("CUSTOM_REMOVALS: {rel} contains `..`; give a path inside tc_root")
            }
            Utf8Component::RootDir | Utf8Component::Prefix(_) => {
                bail!("CUSTOM_REMOVALS: {rel} is absolute; give it relative to tc_root (e.g. usr/lib/libstdc++.so.6)")
            }
        }
    }
    if out.as_str().is_empty() {
        bail!("CUSTOM_REMOVALS: `{rel}` names tc_root itself; give a path inside it");
    }
    Ok(out)
}

/// SPEC §2 full build step 7: the user's public key becomes
/// `authorized_keys` for root and tc, and both homes get an ssh client
/// config with a `Host host` entry for the VM host (10.0.2.2). The private
/// key is copied only when given (the user asked for it explicitly).
pub fn install_user_ssh_key(
    root: &Utf8Path,
    pubkey: &Utf8Path,
    private_key: Option<&Utf8Path>,
) -> Result<EditReport> {
    let mut r = EditReport::default();
    let mut key = std::fs::read_to_string(pubkey)
        .with_context(|| format!("cannot read the ssh public key {pubkey} (create one with `ssh-keygen -t ed25519`, or set guest.ssh_key)"))?;
    if !key.trim_start().starts_with("ssh-")
        && !key.trim_start().starts_with("ecdsa-")
        && !key.trim_start().starts_with("sk-")
    {
        bail!("{pubkey} does not look like an OpenSSH public key (expected `ssh-ed25519 AAAA...`); point guest.ssh_key at the key pair");
    }
    if !key.ends_with('\n') {
        key.push('\n');
    }
    let keyname = match private_key {
        Some(p) => p
            .file_name()
            .with_context(|| format!("private key path {p} has no file name"))?
            .to_string(),
        None => {
            let n = pubkey
                .file_name()
                .with_context(|| format!("public key path {pubkey} has no file name"))?;
            n.strip_suffix(".pub").unwrap_or(n).to_string()
        }
    };
    let private = match private_key {
        Some(p) => {
            Some(std::fs::read(p).with_context(|| format!("cannot read the ssh private key {p}"))?)
        }
        None => None,
    };
    let config = format!(
        "# Written by linux-guest: the VM host as seen from the guest.\n\
         Host host\n\
         \tHostName 10.0.2.2\n\
         \tUser root\n\
         \tIdentityFile ~/.ssh/{keyname}\n\
         \tStrictHostKeyChecking no\n"
    );
    for home in ["root", "home/tc"] {
        let ssh = root.join(home).join(".ssh");
        std::fs::create_dir_all(&ssh).with_context(|| format!("cannot create {ssh}"))?;
        let mut changed = ensure_mode(&ssh, 0o700)?;
        changed |= put_file(&ssh.join("authorized_keys"), key.as_bytes(), 0o600)?;
        changed |= put_file(&ssh.join("config"), config.as_bytes(), 0o600)?;
        if let Some(bytes) = &private {
            changed |= put_file(&ssh.join(&keyname), bytes, 0o600)?;
        }
        r.record(
            changed,
            format!(
                "{home}/.ssh: authorized_keys, config{}",
                if private.is_some() {
                    ", private key"
                } else {
                    ""
                }
            ),
        );
    }
    Ok(r)
}

// ---- small file helpers, shared with openssh/ldcache --------------------

/// Reads a text file, `None` if it does not exist.
pub(crate) fn read_text_opt(path: &Utf8Path) -> Result<Option<String>> {
    match std::fs::read(path) {
        Ok(b) => {
            let t = String::from_utf8(b)
                .with_context(|| format!("{path} is not UTF-8 text; cannot edit it"))?;
            Ok(Some(t))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {path}")),
    }
}

/// Replaces an existing file's content atomically, keeping its mode.
pub(crate) fn rewrite(path: &Utf8Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot stat {path}"))?
        .mode()
        & 0o7777;
    write_atomic(path, bytes)?;
    set_mode(path, mode)
}

/// Writes `bytes` with `mode` unless the file already has both; returns
/// whether anything changed. A symlink at `path` is replaced, not followed.
pub(crate) fn put_file(path: &Utf8Path, bytes: &[u8], mode: u32) -> Result<bool> {
    if let Ok(md) = std::fs::symlink_metadata(path) {
        if md.is_file() {
            let same = std::fs::read(path).with_context(|| format!("cannot read {path}"))? == bytes;
            if same {
                return ensure_mode(path, mode);
            }
        } else if md.is_dir() {
            bail!("{path} is a directory; remove it so a file can be written there");
        }
    }
    write_atomic(path, bytes)?;
    set_mode(path, mode)?;
    Ok(true)
}

/// Sets `mode` if different; returns whether it changed.
pub(crate) fn ensure_mode(path: &Utf8Path, mode: u32) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let cur = std::fs::metadata(path)
        .with_context(|| format!("cannot stat {path}"))?
        .mode()
        & 0o7777;
    if cur == mode {
        return Ok(false);
    }
    set_mode(path, mode)?;
    Ok(true)
}

fn add_mode_bits(path: &Utf8Path, bits: u32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let cur = std::fs::metadata(path)
        .with_context(|| format!("cannot stat {path}"))?
        .mode()
        & 0o7777;
    if cur & bits != bits {
        set_mode(path, cur | bits)?;
    }
    Ok(())
}

pub(crate) fn set_mode(path: &Utf8Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {mode:o} {path}"))
}
