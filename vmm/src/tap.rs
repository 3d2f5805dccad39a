//! Host tap networking: a bridge (`br-vm`, the guest's gateway 10.0.2.2/24
//! and fd0:1234:4321::2/64) with a tap (`tap-vm`) enslaved to it, as the
//! old README set up by hand.
//!
//! The plan is computed from what `ip -j -d addr show` reports, so running
//! `tap-up` or `tap-down` again only does what is missing. Changing links
//! needs CAP_NET_ADMIN; reading the state and printing the plan does not.

use std::process::Command;

use anyhow::{bail, Context, Result};
use camino::Utf8PathBuf;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapConfig {
    pub bridge: String,
    pub tap: String,
    /// Addresses of the bridge, with prefix length (`10.0.2.2/24`).
    pub addresses: Vec<String>,
    /// Who may open the tap (so QEMU need not run as root).
    pub user: Option<String>,
}

impl Default for TapConfig {
    fn default() -> Self {
        TapConfig {
            bridge: "br-vm".into(),
            tap: "tap-vm".into(),
            addresses: vec!["10.0.2.2/24".into(), "fd0:1234:4321::2/64".into()],
            user: None,
        }
    }
}

/// One link as `ip -j -d addr show` reports it (the fields we use).
#[derive(Debug, Clone, Deserialize)]
pub struct Link {
    pub ifname: String,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub master: Option<String>,
    #[serde(default)]
    pub linkinfo: Option<LinkInfo>,
    #[serde(default)]
    pub addr_info: Vec<AddrInfo>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LinkInfo {
    #[serde(default)]
    pub info_kind: Option<String>,
    #[serde(default)]
    pub info_data: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AddrInfo {
    #[serde(default)]
    pub local: Option<String>,
    #[serde(default)]
    pub prefixlen: Option<u8>,
}

impl Link {
    fn kind(&self) -> Option<&str> {
        self.linkinfo.as_ref()?.info_kind.as_deref()
    }
    /// A tun device in tap mode (`ip -d` says `"info_kind":"tun"` with
    /// `"type":"tap"`).
    fn is_tap(&self) -> bool {
        self.kind() == Some("tun")
            && self
                .linkinfo
                .as_ref()
                .and_then(|l| l.info_data.as_ref())
                .and_then(|d| d.get("type"))
                .and_then(|t| t.as_str())
                .is_none_or(|t| t == "tap")
    }
    fn is_up(&self) -> bool {
        self.flags.iter().any(|f| f == "UP")
    }
    fn has_address(&self, cidr: &str) -> bool {
        let Some((ip, len)) = cidr.split_once('/') else {
            return false;
        };
        self.addr_info.iter().any(|a| {
            a.local.as_deref().is_some_and(|l| same_ip(l, ip))
                && a.prefixlen.map(|p| p.to_string()).as_deref() == Some(len)
        })
    }
}

/// `fd0:1234:4321::2` and `fd0:1234:4321:0::2` are the same address.
fn same_ip(a: &str, b: &str) -> bool {
    match (a.parse::<std::net::IpAddr>(), b.parse::<std::net::IpAddr>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Parses `ip -j -d addr show`.
pub fn parse_links(json: &str) -> Result<Vec<Link>> {
    serde_json::from_str(json).context("cannot parse the JSON of `ip -j -d addr show`")
}

/// The host's links now.
pub fn links() -> Result<Vec<Link>> {
    let ip = ip_binary()?;
    let out = Command::new(&ip)
        .args(["-j", "-d", "addr", "show"])
        .output()
        .with_context(|| format!("cannot run `{ip} -j -d addr show`"))?;
    if !out.status.success() {
        bail!(
            "`{ip} -j -d addr show` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_links(&String::from_utf8_lossy(&out.stdout))
}

/// `ip` (iproute2), also from the sbin directories a user's PATH may lack.
pub fn ip_binary() -> Result<Utf8PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .filter(|d| !d.is_empty())
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Utf8PathBuf::from(d).join("ip"))
        .find(|p| p.is_file());
    found.context("`ip` is not installed: apt-get install iproute2")
}

/// The `ip` commands (arguments after `ip`) that bring the bridge and tap
/// up from the state `links`.
pub fn plan_up(c: &TapConfig, links: &[Link]) -> Result<Vec<Vec<String>>> {
    let find = |n: &str| links.iter().find(|l| l.ifname == n);
    let mut plan: Vec<Vec<String>> = vec![];
    let cmd = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    let bridge = find(&c.bridge);
    match bridge {
        Some(b) if b.kind() != Some("bridge") => bail!(
            "{} exists but is not a bridge ({}): remove it (`ip link del {}`) or choose another name with --bridge",
            c.bridge,
            b.kind().unwrap_or("unknown kind"),
            c.bridge
        ),
        Some(_) => {}
        None => plan.push(cmd(&["link", "add", "name", &c.bridge, "type", "bridge"])),
    }
    for a in &c.addresses {
        if !bridge.is_some_and(|b| b.has_address(a)) {
            plan.push(cmd(&["addr", "add", a, "dev", &c.bridge]));
        }
    }
    if !bridge.is_some_and(Link::is_up) {
        plan.push(cmd(&["link", "set", &c.bridge, "up"]));
    }

    let tap = find(&c.tap);
    match tap {
        Some(t) if !t.is_tap() => bail!(
            "{} exists but is not a tap device ({}): remove it (`ip link del {}`) or choose another name with --tap",
            c.tap,
            t.kind().unwrap_or("unknown kind"),
            c.tap
        ),
        Some(_) => {}
        None => {
            let mut add = cmd(&["tuntap", "add", "dev", &c.tap, "mode", "tap"]);
            if let Some(u) = &c.user {
                add.extend(["user".to_string(), u.clone()]);
            }
            plan.push(add);
        }
    }
    if tap.and_then(|t| t.master.as_deref()) != Some(c.bridge.as_str()) {
        plan.push(cmd(&["link", "set", &c.tap, "master", &c.bridge]));
    }
    if !tap.is_some_and(Link::is_up) {
        plan.push(cmd(&["link", "set", &c.tap, "up"]));
    }
    Ok(plan)
}

/// The commands that remove the tap and the bridge, if they exist.
pub fn plan_down(c: &TapConfig, links: &[Link]) -> Vec<Vec<String>> {
    [&c.tap, &c.bridge]
        .into_iter()
        .filter(|n| links.iter().any(|l| &&l.ifname == n))
        .map(|n| vec!["link".into(), "del".into(), n.clone()])
        .collect()
}

/// Fails (before anything is changed) unless we may change links.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("tap-up/tap-down need root (CAP_NET_ADMIN): run as root or use --dry-run to print the `ip` commands");
    }
    Ok(())
}

/// Tap devices are made through /dev/net/tun.
pub fn require_tun() -> Result<()> {
    let tun = "/dev/net/tun";
    if !std::path::Path::new(tun).exists() {
        bail!("{tun} does not exist, so no tap device can be made: `modprobe tun` (CONFIG_TUN)");
    }
    Ok(())
}

/// Runs the plan's commands in order, stopping at the first failure.
pub fn apply(plan: &[Vec<String>]) -> Result<()> {
    let ip = ip_binary()?;
    for args in plan {
        let line = format!("ip {}", args.join(" "));
        let out = Command::new(&ip)
            .args(args)
            .output()
            .with_context(|| format!("cannot run `{line}`"))?;
        if !out.status.success() {
            bail!(
                "`{line}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}
