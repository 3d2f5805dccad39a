//! The guest's sshd: config, host keys generated once per build dir, the
//! bootlocal.sh start line.

use std::os::unix::fs::PermissionsExt;

use camino::{Utf8Path, Utf8PathBuf};
use rootfs::manifest::Manifest;
use tinycore::{edits, openssh};

fn mode(p: &Utf8Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn setup_dirs() -> (tempfile::TempDir, Utf8PathBuf, Utf8PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let base = Utf8PathBuf::from_path_buf(dir.path().to_path_buf()).unwrap();
    let root = base.join("tc_root");
    std::fs::create_dir_all(root.join("opt")).unwrap();
    std::fs::write(root.join("opt/bootlocal.sh"), "#!/bin/sh\n").unwrap();
    edits::apply_distro_edits(&root).unwrap();
    (dir, root, base.join("build"))
}

#[test]
fn wanted_matches_openssh_only() {
    let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(openssh::wanted(&p(&["nano", "openssh.tcz"])));
    assert!(openssh::wanted(&p(&["openssh"])));
    assert!(!openssh::wanted(&p(&["openssh-server-extra", "openssl"])));
}

#[test]
fn host_keys_are_generated_once_and_reused() {
    if testmirror::tools::require_tool("ssh-keygen", "openssh-client").is_none() {
        return;
    }
    let (_d, root, build) = setup_dirs();
    let mut m = Manifest::new();
    let s1 = openssh::setup(&root, &build, &mut m, 22).unwrap();
    assert_eq!(
        s1.report
            .applied
            .iter()
            .filter(|a| a.starts_with("generated the"))
            .count(),
        3,
        "{:#?}",
        s1.report
    );
    assert_eq!(s1.host_keys.len(), 3);
    for (k, t) in s1.host_keys.iter().zip(openssh::KEY_TYPES) {
        assert_eq!(k.key_type, t);
        assert!(k.public.ends_with(" linux-guest"), "{}", k.public);
    }
    assert!(s1.host_keys[0].public.starts_with("ssh-ed25519 "));
    assert!(s1.host_keys[1].public.starts_with("ecdsa-sha2-"));
    assert!(s1.host_keys[2].public.starts_with("ssh-rsa "));

    let etc = root.join("usr/local/etc/ssh");
    for t in openssh::KEY_TYPES {
        let key = etc.join(format!("ssh_host_{t}_key"));
        assert_eq!(mode(&key), 0o600, "{key}");
        assert_eq!(mode(&etc.join(format!("ssh_host_{t}_key.pub"))), 0o644);
        assert_eq!(
            std::fs::read(&key).unwrap(),
            std::fs::read(build.join(format!("ssh-host-keys/ssh_host_{t}_key"))).unwrap()
        );
    }
    assert_eq!(mode(&build.join("ssh-host-keys")), 0o700);
    assert!(root.join("var/lib/sshd").is_dir());

    let config = std::fs::read_to_string(etc.join("sshd_config")).unwrap();
    for want in [
        "Port 22\n",
        "PermitRootLogin prohibit-password\n",
        "PasswordAuthentication no\n",
        "KbdInteractiveAuthentication no\n",
        "PubkeyAuthentication yes\n",
        "StrictModes no\n",
        "AuthorizedKeysFile .ssh/authorized_keys\n",
        "HostKey /usr/local/etc/ssh/ssh_host_ed25519_key\n",
        "HostKey /usr/local/etc/ssh/ssh_host_ecdsa_key\n",
        "HostKey /usr/local/etc/ssh/ssh_host_rsa_key\n",
    ] {
        assert!(config.contains(want), "{want:?} missing in\n{config}");
    }
    let bootlocal = std::fs::read_to_string(root.join("opt/bootlocal.sh")).unwrap();
    assert!(bootlocal.starts_with(edits::BOOTLOCAL_SH));
    assert_eq!(
        bootlocal.matches(openssh::START_LINE).count(),
        1,
        "{bootlocal}"
    );

    // Second run: same keys, nothing applied, bootlocal line still once.
    let s2 = openssh::setup(&root, &build, &mut m, 22).unwrap();
    assert_eq!(s2.host_keys, s1.host_keys);
    assert!(s2.report.applied.is_empty(), "{:#?}", s2.report);
    let bootlocal2 = std::fs::read_to_string(root.join("opt/bootlocal.sh")).unwrap();
    assert_eq!(bootlocal2, bootlocal);

    // A fresh tc_root in the same build dir gets the same identity.
    let (_d2, root2, _) = setup_dirs();
    let s3 = openssh::setup(&root2, &build, &mut Manifest::new(), 2222).unwrap();
    assert_eq!(s3.host_keys, s1.host_keys);
    assert!(
        !s3.report.applied.iter().any(|a| a.starts_with("generated")),
        "{:#?}",
        s3.report
    );
    let config3 = std::fs::read_to_string(root2.join("usr/local/etc/ssh/sshd_config")).unwrap();
    assert!(config3.contains("Port 2222\n"));

    // Distro edits after openssh keep the start line.
    let r = edits::apply_distro_edits(&root).unwrap();
    assert!(r.applied.is_empty(), "{r:#?}");
    assert_eq!(
        std::fs::read_to_string(root.join("opt/bootlocal.sh")).unwrap(),
        bootlocal
    );
}

#[test]
fn lost_public_key_is_rederived() {
    if testmirror::tools::require_tool("ssh-keygen", "openssh-client").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let build = Utf8PathBuf::from_path_buf(dir.path().to_path_buf()).unwrap();
    let (keys, gen) = openssh::ensure_host_keys(&build).unwrap();
    assert_eq!(gen.len(), 3);
    let pubkey = keys.join("ssh_host_ed25519_key.pub");
    let before = std::fs::read_to_string(&pubkey).unwrap();
    std::fs::remove_file(&pubkey).unwrap();
    let (_, gen) = openssh::ensure_host_keys(&build).unwrap();
    assert!(
        gen.is_empty(),
        "regenerated {gen:?} instead of deriving the public key"
    );
    assert_eq!(std::fs::read_to_string(&pubkey).unwrap(), before);
}
