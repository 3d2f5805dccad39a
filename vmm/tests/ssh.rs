//! ssh stanzas and the pinned known_hosts.

use camino::{Utf8Path, Utf8PathBuf};
use vmm::ssh;

#[test]
fn stanzas_pin_the_host_keys_under_one_alias() {
    let t = tempfile::tempdir().unwrap();
    let b = Utf8PathBuf::from_path_buf(t.path().to_owned()).unwrap();
    let e = ssh::write_files(&b, Utf8Path::new("/k/id"), 22).unwrap_err();
    assert!(
        format!("{e:#}").contains("setup-tinycore -p openssh"),
        "{e:#}"
    );

    std::fs::create_dir_all(b.join("ssh-host-keys")).unwrap();
    for (t, k) in [
        ("ed25519", "ssh-ed25519 AAAAC3Nz"),
        ("rsa", "ssh-rsa AAAAB3Nz"),
    ] {
        std::fs::write(
            b.join(format!("ssh-host-keys/ssh_host_{t}_key.pub")),
            format!("{k} linux-guest\n"),
        )
        .unwrap();
        std::fs::write(b.join(format!("ssh-host-keys/ssh_host_{t}_key")), "PRIVATE").unwrap();
    }
    let f = ssh::write_files(&b, Utf8Path::new("/k/my key"), 2222).unwrap();
    assert_eq!(
        std::fs::read_to_string(&f.known_hosts).unwrap(),
        "linux-guest ssh-ed25519 AAAAC3Nz\nlinux-guest ssh-rsa AAAAB3Nz\n"
    );
    let cfg = std::fs::read_to_string(&f.config).unwrap();
    assert!(!cfg.contains("PRIVATE"));
    let stanza = |host: &str| {
        let start = cfg.find(&format!("Host {host}\n")).unwrap();
        let rest = &cfg[start..];
        rest[..rest.find("\n\n").unwrap()].to_string()
    };
    let q = stanza("qemu");
    for want in [
        "HostName 127.0.0.1",
        "Port 5555",
        "User root",
        "IdentityFile \"/k/my key\"",
        "IdentitiesOnly yes",
        "HostKeyAlias linux-guest",
        &format!("UserKnownHostsFile {}", f.known_hosts),
        "StrictHostKeyChecking yes",
    ] {
        assert!(q.contains(want), "`{want}` missing from\n{q}");
    }
    let tap = stanza("qemu-tap");
    assert!(
        tap.contains("HostName 10.0.2.15") && tap.contains("Port 2222"),
        "{tap}"
    );
    let ak = stanza("linux-guest");
    assert!(
        ak.contains("HostName 127.0.0.1") && ak.contains("Port 2345"),
        "{ak}"
    );
    assert!(ssh::tunnel_commands()
        .iter()
        .any(|(_, l)| l.starts_with("ssh -L 2345:127.0.0.1:23 ")));
}

#[test]
fn ssh_arguments() {
    let cfg = Utf8Path::new("/b/ssh/config");
    assert_eq!(
        ssh::ssh_args(cfg, "qemu", None, &[]),
        ["-F", "/b/ssh/config", "qemu"]
    );
    assert_eq!(
        ssh::ssh_args(cfg, "qemu", Some(6000), &["uname".into(), "-r".into()]),
        [
            "-F",
            "/b/ssh/config",
            "-p",
            "6000",
            "qemu",
            "--",
            "uname",
            "-r"
        ]
    );
}
