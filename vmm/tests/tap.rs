//! tap-up/tap-down plans from `ip -j -d addr show` states: what is missing
//! is done, what exists is left alone.

use vmm::tap::{parse_links, plan_down, plan_up, TapConfig};

const NOTHING: &str = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"linkinfo":null,"addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]}]"#;

const ALL_UP: &str = r#"[
 {"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"addr_info":[]},
 {"ifindex":5,"ifname":"br-vm","flags":["NO-CARRIER","BROADCAST","MULTICAST","UP"],"operstate":"DOWN",
  "linkinfo":{"info_kind":"bridge","info_data":{"stp_state":0}},
  "addr_info":[{"family":"inet","local":"10.0.2.2","prefixlen":24},{"family":"inet6","local":"fd0:1234:4321::2","prefixlen":64}]},
 {"ifindex":6,"ifname":"tap-vm","flags":["NO-CARRIER","BROADCAST","MULTICAST","UP"],"master":"br-vm",
  "linkinfo":{"info_kind":"tun","info_data":{"type":"tap","pi":false}},"addr_info":[]}
]"#;

fn lines(plan: &[Vec<String>]) -> Vec<String> {
    plan.iter().map(|a| format!("ip {}", a.join(" "))).collect()
}

#[test]
fn from_nothing_everything_is_created() {
    let c = TapConfig {
        user: Some("alice".into()),
        ..TapConfig::default()
    };
    let plan = plan_up(&c, &parse_links(NOTHING).unwrap()).unwrap();
    assert_eq!(
        lines(&plan),
        [
            "ip link add name br-vm type bridge",
            "ip addr add 10.0.2.2/24 dev br-vm",
            "ip addr add fd0:1234:4321::2/64 dev br-vm",
            "ip link set br-vm up",
            "ip tuntap add dev tap-vm mode tap user alice",
            "ip link set tap-vm master br-vm",
            "ip link set tap-vm up",
        ]
    );
    assert!(plan_down(&c, &parse_links(NOTHING).unwrap()).is_empty());
}

#[test]
fn when_all_is_up_nothing_is_done_and_down_removes_both() {
    let c = TapConfig::default();
    let links = parse_links(ALL_UP).unwrap();
    assert!(plan_up(&c, &links).unwrap().is_empty());
    assert_eq!(
        lines(&plan_down(&c, &links)),
        ["ip link del tap-vm", "ip link del br-vm"]
    );
}

#[test]
fn half_done_is_finished() {
    // The bridge lost its IPv6 address and the tap is down and loose.
    let json = ALL_UP
        .replace(
            r#",{"family":"inet6","local":"fd0:1234:4321::2","prefixlen":64}"#,
            "",
        )
        .replace(r#""master":"br-vm","#, "")
        .replace(
            r#"["NO-CARRIER","BROADCAST","MULTICAST","UP"],"#,
            r#"["BROADCAST","MULTICAST"],"#,
        );
    let plan = plan_up(&TapConfig::default(), &parse_links(&json).unwrap()).unwrap();
    assert_eq!(
        lines(&plan),
        [
            "ip addr add fd0:1234:4321::2/64 dev br-vm",
            "ip link set br-vm up",
            "ip link set tap-vm master br-vm",
            "ip link set tap-vm up",
        ]
    );
}

#[test]
fn a_name_taken_by_something_else_is_an_error() {
    let json = ALL_UP.replace(r#""info_kind":"bridge""#, r#""info_kind":"dummy""#);
    let e = plan_up(&TapConfig::default(), &parse_links(&json).unwrap()).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("br-vm exists but is not a bridge (dummy)") && msg.contains("--bridge"),
        "{msg}"
    );
    let json = ALL_UP.replace(r#""type":"tap""#, r#""type":"tun""#);
    let e = plan_up(&TapConfig::default(), &parse_links(&json).unwrap()).unwrap_err();
    assert!(
        format!("{e:#}").contains("tap-vm exists but is not a tap device"),
        "{e:#}"
    );
}
