//! The guest's ssh server (SPEC §2 TinyCore setup step 7), when `openssh`
//! is among the packages.
//!
//! The original shipped fixed, publicly known host keys. We generate one
//! set per build directory (`<build>/ssh-host-keys/`) on first use and copy
//! it into every tc_root built there: the guest's identity survives
//! rebuilds (no known_hosts churn) but is private to this machine.

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use rootfs::manifest::Manifest;
use xshell::{cmd, Shell};

use crate::edits::{ensure_mode, put_file, read_text_opt, rewrite, set_mode, EditReport};

/// Host key types, in the order sshd offers them.
pub const KEY_TYPES: [&str; 3] = ["ed25519", "ecdsa", "rsa"];

/// Where TC's openssh extension looks for its configuration.
pub const SSH_ETC: &str = "usr/local/etc/ssh";

/// The line bootlocal.sh needs to start sshd at boot.
pub const START_LINE: &str = "/usr/local/etc/init.d/openssh start";

/// Whether a package list asks for the ssh server (`openssh` or
/// `openssh.tcz`).
pub fn wanted(packages: &[String]) -> bool {
    packages
        .iter()
        .any(|p| p.trim().trim_end_matches(".tcz") == "openssh")
}

/// One host public key, for pinning in the host's known_hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    /// `ed25519`, `ecdsa` or `rsa`.
    pub key_type: String,
    /// The `.pub` line: `ssh-ed25519 AAAA... linux-guest`.
    pub public: String,
}

#[derive(Debug, Clone, Default)]
pub struct Setup {
    pub host_keys: Vec<HostKey>,
    pub report: EditReport,
}

/// The sshd_config we install: keys only, root allowed (the guest is a
/// throwaway VM reached from its host), StrictModes off because files under
/// /home/tc are packed as tc-owned while /root and / are root-owned, and a
/// fresh initramfs has no reason to fail sshd's ownership checks.
///
/// `KbdInteractiveAuthentication` needs OpenSSH >= 8.7 (TC 13.x and later);
/// with the seed's 7.x openssh, sshd rejects it as a bad option.
pub fn sshd_config(port: u16) -> String {
    let mut s = format!(
        "# Written by linux-guest (tinycore::openssh); rebuilt by setup-tinycore.\n\
         Port {port}\n\
         PermitRootLogin prohibit-password\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PubkeyAuthentication yes\n\
         StrictModes no\n\
         AuthorizedKeysFile .ssh/authorized_keys\n"
    );
    for t in KEY_TYPES {
        s.push_str(&format!("HostKey /{SSH_ETC}/ssh_host_{t}_key\n"));
    }
    // New scp speaks sftp; without the subsystem `scp` to the guest fails.
    s.push_str("Subsystem sftp /usr/local/lib/openssh/sftp-server\n");
    s
}

/// Installs sshd_config, `var/lib/sshd/`, the build directory's host keys
/// and the bootlocal.sh start line into `root`. Idempotent.
pub fn setup(
    root: &Utf8Path,
    build_dir: &Utf8Path,
    manifest: &mut Manifest,
    port: u16,
) -> Result<Setup> {
    let mut report = EditReport::default();
    let (key_dir, generated) = ensure_host_keys(build_dir)?;
    for t in &generated {
        report
            .applied
            .push(format!("generated the {t} host key in {key_dir}"));
    }

    let etc = root.join(SSH_ETC);
    std::fs::create_dir_all(&etc).with_context(|| format!("cannot create {etc}"))?;
    let changed = put_file(
        &etc.join("sshd_config"),
        sshd_config(port).as_bytes(),
        0o644,
    )?;
    report.record(changed, format!("{SSH_ETC}/sshd_config (port {port})"));

    // sshd's privilege-separation directory; it insists on root-owned and
    // not group/world-writable, which unrecorded entries are (root:root).
    let privsep = root.join("var/lib/sshd");
    let existed = privsep.is_dir();
    std::fs::create_dir_all(&privsep).with_context(|| format!("cannot create {privsep}"))?;
    let mode_changed = ensure_mode(&privsep, 0o755)?;
    manifest.remove("/var/lib/sshd");
    report.record(!existed || mode_changed, "var/lib/sshd/");

    let mut host_keys = Vec::new();
    let mut keys_changed = false;
    for t in KEY_TYPES {
        let name = format!("ssh_host_{t}_key");
        let private = std::fs::read(key_dir.join(&name))
            .with_context(|| format!("cannot read {key_dir}/{name}"))?;
        let public = std::fs::read_to_string(key_dir.join(format!("{name}.pub")))
            .with_context(|| format!("cannot read {key_dir}/{name}.pub"))?;
        keys_changed |= put_file(&etc.join(&name), &private, 0o600)?;
        keys_changed |= put_file(&etc.join(format!("{name}.pub")), public.as_bytes(), 0o644)?;
        // A record from an extension would give the key its owner/mode.
        manifest.remove(&format!("/{SSH_ETC}/{name}"));
        manifest.remove(&format!("/{SSH_ETC}/{name}.pub"));
        host_keys.push(HostKey {
            key_type: t.to_string(),
            public: public.trim().to_string(),
        });
    }
    manifest.remove(&format!("/{SSH_ETC}/sshd_config"));
    report.record(keys_changed, format!("host keys in {SSH_ETC}/"));

    let bootlocal = root.join("opt/bootlocal.sh");
    match read_text_opt(&bootlocal)? {
        Some(text) if text.lines().any(|l| l.trim() == START_LINE) => {
            report.record(false, "bootlocal.sh starts openssh");
        }
        Some(mut text) => {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(START_LINE);
            text.push('\n');
            rewrite(&bootlocal, text.as_bytes())?;
            report.record(true, "bootlocal.sh starts openssh");
        }
        None => {
            let text = format!("#!/bin/sh\n{START_LINE}\n");
            put_file(&bootlocal, text.as_bytes(), 0o755)?;
            report.warnings.push(
                "opt/bootlocal.sh did not exist (distro edits not applied?); wrote one that only starts openssh".into(),
            );
        }
    }
    Ok(Setup { host_keys, report })
}

/// Makes sure `<build>/ssh-host-keys/` holds the three key pairs, running
/// ssh-keygen only for missing ones. Returns the directory and the types
/// generated now.
pub fn ensure_host_keys(build_dir: &Utf8Path) -> Result<(Utf8PathBuf, Vec<String>)> {
    let dir = build_dir.join("ssh-host-keys");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {dir}"))?;
    set_mode(&dir, 0o700)?;
    let mut generated = Vec::new();
    for t in KEY_TYPES {
        let key = dir.join(format!("ssh_host_{t}_key"));
        let pubkey = dir.join(format!("ssh_host_{t}_key.pub"));
        if key.is_file() && pubkey.is_file() {
            continue;
        }
        let keygen = ssh_keygen()?;
        let sh = Shell::new().context("cannot start a shell for ssh-keygen")?;
        if key.is_file() {
            // The public half got lost: derive it, keeping the identity.
            let out = cmd!(sh, "{keygen} -y -f {key}")
                .quiet()
                .read()
                .with_context(|| {
                    format!("`ssh-keygen -y -f {key}` failed; delete {key} to get a new key")
                })?;
            let line = if out.contains(" linux-guest") {
                out
            } else {
                format!("{} linux-guest", out.trim())
            };
            rootfs::fsutil::write_atomic(&pubkey, format!("{line}\n").as_bytes())?;
            set_mode(&pubkey, 0o644)?;
            continue;
        }
        // Generate into a scratch dir and rename, so an interrupted run never
        // leaves half a pair under the final names.
        let tmp = tempfile::Builder::new()
            .prefix(".keygen")
            .tempdir_in(&dir)
            .with_context(|| format!("cannot create a temporary directory in {dir}"))?;
        let tmp_key = Utf8Path::from_path(tmp.path())
            .with_context(|| format!("temporary directory in {dir} is not UTF-8"))?
            .join("key");
        let empty = "";
        cmd!(
            sh,
            "{keygen} -q -t {t} -N {empty} -C linux-guest -f {tmp_key}"
        )
        .quiet()
        .ignore_stdout()
        .run()
        .with_context(|| format!("ssh-keygen could not generate the {t} host key in {dir}"))?;
        let tmp_pub = Utf8PathBuf::from(format!("{tmp_key}.pub"));
        std::fs::rename(&tmp_pub, &pubkey)
            .with_context(|| format!("cannot move {tmp_pub} to {pubkey}"))?;
        std::fs::rename(&tmp_key, &key)
            .with_context(|| format!("cannot move {tmp_key} to {key}"))?;
        set_mode(&key, 0o600)?;
        set_mode(&pubkey, 0o644)?;
        generated.push(t.to_string());
    }
    Ok((dir, generated))
}

fn ssh_keygen() -> Result<Utf8PathBuf> {
    match crate::ldcache::find_program("ssh-keygen") {
        Some(p) => Ok(p),
        None => bail!("ssh-keygen is not installed (needed for the guest's ssh host keys): apt-get install openssh-client"),
    }
}
