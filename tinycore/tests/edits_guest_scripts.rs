//! The shell scripts under guest/: syntax under the host's sh and busybox
//! ash (what TC runs), and the kernel-command-line decoding of the VM-app
//! rcS variants, run under busybox sh with a fake cmdline file.

use std::process::Command;

use camino::Utf8PathBuf;

const SCRIPTS: [&str; 4] = [
    "tc-sys.sh",
    "rcS-example-apps-and-info",
    "rcS-fdisk",
    "rcS-mount-fs",
];

fn guest() -> Utf8PathBuf {
    Utf8PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest")
}

fn have_busybox() -> bool {
    testmirror::tools::require_tool("busybox", "busybox-static").is_some()
}

#[test]
fn scripts_parse_under_sh_and_busybox() {
    if !have_busybox() {
        return;
    }
    for s in SCRIPTS {
        let path = guest().join(s);
        assert!(path.is_file(), "{path} missing");
        for sh in [&["sh", "-n"][..], &["busybox", "sh", "-n"][..]] {
            let out = Command::new(sh[0])
                .args(&sh[1..])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{sh:?} {path}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("#!/bin/sh\n"),
            "{path} needs a #!/bin/sh line"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "{path} should be executable");
    }
}

/// Sources `script` under busybox sh with RCS_SOURCE_ONLY=1 and a fake
/// /proc/cmdline, runs `call`, returns its stdout.
fn source_and_call(script: &str, cmdline: &str, call: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cl = dir.path().join("cmdline");
    std::fs::write(&cl, cmdline).unwrap();
    let out = Command::new("busybox")
        .args(["sh", "-c", &format!(". \"$0\"; {call}")])
        .arg(guest().join(script))
        .env("RCS_SOURCE_ONLY", "1")
        .env("CMDLINE_FILE", &cl)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {call}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn fdisk_args_are_decoded() {
    if !have_busybox() {
        return;
    }
    let cases = [
        ("console=hvc0 fdisk_args=-l nozswap\n", "-l\n"),
        (
            "console=hvc0 fdisk_args=-u\\040-c\\040-l quiet\n",
            "-u -c -l\n",
        ),
        // A glob must stay a literal, not expand against the cwd.
        ("fdisk_args=-t\\040*\n", "-t *\n"),
        ("console=ttyS0 nozswap\n", ""),
    ];
    for (cmdline, want) in cases {
        assert_eq!(
            source_and_call("rcS-fdisk", cmdline, "decode_fdisk_args"),
            want,
            "cmdline {cmdline:?}"
        );
    }
}

#[test]
fn mount_fs_reads_part_and_port() {
    if !have_busybox() {
        return;
    }
    let cl = "console=hvc0 mount_part_id=2 mount_port_nr=3332 nozswap\n";
    assert_eq!(
        source_and_call("rcS-mount-fs", cl, "cmdline_value mount_part_id"),
        "2\n"
    );
    assert_eq!(
        source_and_call("rcS-mount-fs", cl, "cmdline_value mount_port_nr"),
        "3332\n"
    );
    assert_eq!(
        source_and_call("rcS-mount-fs", cl, "cmdline_value missing_one"),
        ""
    );
}

#[test]
fn magic_links_are_the_seed_defaults() {
    let g = guest();
    assert_eq!(
        std::fs::read_link(g.join("tc-sys.sh-link"))
            .unwrap()
            .to_str(),
        Some("tc-sys.sh")
    );
    assert_eq!(
        std::fs::read_link(g.join("rcS-link")).unwrap().to_str(),
        Some("xxx")
    );
    assert!(
        !g.join("rcS-link").exists(),
        "rcS-link must dangle by default"
    );
}

#[test]
fn tc_sys_uses_the_magic_mac_and_addresses() {
    let text = std::fs::read_to_string(guest().join("tc-sys.sh")).unwrap();
    for want in [
        "00:01:02:03:04:0b",
        "10.0.2.15/24",
        "10.0.2.2",
        "fd0:1234:4321::15/64",
        "udhcpc",
        "carrier",
        "nameserver",
    ] {
        assert!(text.contains(want), "tc-sys.sh lacks {want}");
    }
}

/// Runs tc-sys.sh under the host's sh with stub `ip`, `udhcpc`, `pidof`
/// and `sleep` that log their arguments, and a fake sysfs. (busybox
/// sh would run its own applets instead of the stubs.) Returns the log and
/// the resolv.conf written, if any.
/// With `udhcpc` set, `pidof udhcpc` reports that process (a `sleep` the
/// test owns: the script's builtin `kill` really signals it).
fn run_tc_sys(mac: &str, carrier: &str, udhcpc: Option<u32>) -> (String, Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let d = Utf8PathBuf::from_path_buf(dir.path().to_path_buf()).unwrap();
    let bin = d.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = d.join("log");
    for tool in ["ip", "udhcpc", "sleep"] {
        let stub = format!("#!/bin/sh\necho \"{tool} $*\" >>\"{log}\"\n");
        std::fs::write(bin.join(tool), stub).unwrap();
    }
    let pidof = match udhcpc {
        Some(pid) => format!("#!/bin/sh\necho {pid}\n"),
        None => "#!/bin/sh\nexit 1\n".to_string(),
    };
    std::fs::write(bin.join("pidof"), pidof).unwrap();
    for f in ["ip", "udhcpc", "sleep", "pidof"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(bin.join(f), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let net = d.join("sys/class/net/eth0");
    std::fs::create_dir_all(&net).unwrap();
    std::fs::write(net.join("address"), format!("{mac}\n")).unwrap();
    std::fs::write(net.join("carrier"), format!("{carrier}\n")).unwrap();
    let resolv = d.join("resolv.conf");
    let out = Command::new("sh")
        .arg(guest().join("tc-sys.sh"))
        .env("PATH", format!("{bin}:/usr/bin:/bin"))
        .env("SYS_NET", d.join("sys/class/net"))
        .env("RESOLV_CONF", &resolv)
        .env("CARRIER_WAIT", "3")
        .env("DHCP_WAIT", "2")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tc-sys.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        std::fs::read_to_string(&log).unwrap_or_default(),
        std::fs::read_to_string(&resolv).ok(),
    )
}

#[test]
fn tc_sys_magic_mac_configures_statically() {
    let mut fake_udhcpc = Command::new("sleep").arg("60").spawn().unwrap();
    let (log, resolv) = run_tc_sys("00:01:02:03:04:0b", "1", Some(fake_udhcpc.id()));
    let status = fake_udhcpc.wait().unwrap();
    assert!(!status.success(), "udhcpc was not stopped");
    assert!(log.starts_with("ip link set dev eth0 up\n"), "{log}");
    assert!(log.contains("ip addr add 10.0.2.15/24 dev eth0\n"), "{log}");
    assert!(
        log.contains("ip route add default via 10.0.2.2 dev eth0\n"),
        "{log}"
    );
    assert!(
        log.contains("ip -6 addr add fd0:1234:4321::15/64 dev eth0\n"),
        "{log}"
    );
    assert!(!log.contains("udhcpc"), "{log}");
    assert!(!log.contains("sleep"), "carrier was up: {log}");
    assert_eq!(resolv.as_deref(), Some("nameserver 8.8.8.8\n"));

    // No carrier: waits a bounded number of seconds, then configures anyway.
    let (log, _) = run_tc_sys("00:01:02:03:04:0b", "0", None);
    assert_eq!(log.matches("sleep 1\n").count(), 3, "{log}");
    assert!(log.contains("ip addr add 10.0.2.15/24 dev eth0\n"), "{log}");
}

#[test]
fn tc_sys_other_mac_uses_dhcp() {
    let (log, resolv) = run_tc_sys("52:54:00:12:34:56", "1", None);
    assert!(log.starts_with("udhcpc -b -i eth0"), "{log}");
    assert!(!log.contains("ip "), "{log}");
    assert_eq!(resolv, None);
    // No lease (the stub udhcpc writes no resolv.conf): a bounded wait.
    assert_eq!(log.matches("sleep 1\n").count(), 2, "{log}");
    // tc-config's udhcpc is already running: leave it alone.
    let mut fake_udhcpc = Command::new("sleep").arg("60").spawn().unwrap();
    let (log, _) = run_tc_sys("52:54:00:12:34:56", "1", Some(fake_udhcpc.id()));
    assert!(
        fake_udhcpc.try_wait().unwrap().is_none(),
        "running udhcpc was killed"
    );
    fake_udhcpc.kill().unwrap();
    fake_udhcpc.wait().unwrap();
    assert_eq!(log, "sleep 1\nsleep 1\n");
}
