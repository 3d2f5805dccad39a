//! tap-up/tap-down for real, inside a network namespace the test creates
//! (never the host's own interfaces), which is deleted however the test
//! ends. Needs root, as the tasks do.

use std::process::{Command, Output};

use testmirror::tools::{require_root, require_tool};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        // Tests run in parallel threads of one process: number them.
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("lgtest-{}-{n}", std::process::id());
        // A leftover from a killed run of the same pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Netns(name)
    }

    fn xtask(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0, XTASK])
            .args(args)
            .env_remove("SUDO_USER")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.xtask(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "xtask {args:?} failed:\n{text}");
        text
    }

    /// `ip -n NAME -o link` and `addr`, one line per link/address; with
    /// `-d` (details: kinds, but also ticking timers) when `detailed`.
    fn state(&self, detailed: bool) -> String {
        let mut s = String::new();
        let link: &[&str] = if detailed {
            &["-d", "-o", "link"]
        } else {
            &["-o", "link"]
        };
        for what in [link, &["-o", "addr"]] {
            let out = Command::new("ip")
                .args(["-n", &self.0])
                .args(what)
                .output()
                .unwrap();
            assert!(out.status.success());
            s.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        s
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn has_line(state: &str, words: &[&str]) -> bool {
    state.lines().any(|l| words.iter().all(|w| l.contains(w)))
}

#[test]
fn tap_up_and_down_in_a_network_namespace() {
    if !require_root("tap-up/tap-down in a network namespace") {
        return;
    }
    let Some(_) = require_tool("ip", "iproute2") else {
        return;
    };
    assert!(
        std::path::Path::new("/dev/net/tun").exists(),
        "/dev/net/tun is missing: modprobe tun"
    );
    let ns = Netns::new();

    // --dry-run lists the commands and changes nothing.
    let plan = ns.ok(&["tap-up", "--dry-run"]);
    assert_eq!(
        plan.lines().collect::<Vec<_>>(),
        [
            "ip link add name br-vm type bridge",
            "ip addr add 10.0.2.2/24 dev br-vm",
            "ip addr add fd0:1234:4321::2/64 dev br-vm",
            "ip link set br-vm up",
            "ip tuntap add dev tap-vm mode tap",
            "ip link set tap-vm master br-vm",
            "ip link set tap-vm up",
        ]
    );
    assert!(!ns.state(false).contains("br-vm"));

    ns.ok(&["tap-up"]);
    let s = ns.state(true);
    assert!(has_line(&s, &["br-vm:", "bridge"]), "{s}");
    assert!(
        has_line(&s, &["tap-vm:", "master br-vm", "tun type tap"]),
        "{s}"
    );
    assert!(has_line(&s, &["br-vm", "inet 10.0.2.2/24"]), "{s}");
    assert!(has_line(&s, &["br-vm", "inet6 fd0:1234:4321::2/64"]), "{s}");
    assert!(has_line(&s, &["tap-vm:", "<", "UP"]), "{s}");

    // Again: nothing to do, nothing changed.
    let before = ns.state(false);
    let again = ns.ok(&["tap-up"]);
    assert!(again.contains("nothing to do"), "{again}");
    assert_eq!(ns.state(false), before);

    // Another name for everything works next to it.
    ns.ok(&[
        "tap-up",
        "--bridge",
        "br-x",
        "--tap",
        "tap-x",
        "--address",
        "10.9.0.1/16",
    ]);
    let s2 = ns.state(true);
    assert!(has_line(&s2, &["tap-x:", "master br-x"]), "{s2}");
    assert!(has_line(&s2, &["br-x", "inet 10.9.0.1/16"]), "{s2}");
    ns.ok(&["tap-down", "--bridge", "br-x", "--tap", "tap-x"]);

    ns.ok(&["tap-down"]);
    let s = ns.state(false);
    assert!(
        !s.contains("br-vm") && !s.contains("tap-vm") && !s.contains("br-x"),
        "{s}"
    );
    let again = ns.ok(&["tap-down"]);
    assert!(again.contains("nothing to do"), "{again}");
}

#[test]
fn without_root_it_says_so_before_touching_anything() {
    if !require_root("running tap-up as another user") {
        return;
    }
    let Some(setpriv) = require_tool("setpriv", "util-linux") else {
        return;
    };
    let ns = Netns::new();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(setpriv)
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            XTASK,
            "tap-up",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("need root (CAP_NET_ADMIN)") && err.contains("--dry-run"),
        "{err}"
    );
    assert!(!ns.state(false).contains("br-vm"));
}
