//! `cargo xtask tap-up` / `tap-down`: the host side of tap networking, a
//! bridge with the guest's gateway addresses and a tap enslaved to it.
//! Idempotent; needs root (CAP_NET_ADMIN) unless `--dry-run`.

use anyhow::Result;
use vmm::tap::{self, TapConfig};

#[derive(clap::Args)]
pub struct Flags {
    /// The bridge
    #[arg(long, default_value = "br-vm")]
    bridge: String,
    /// The tap device
    #[arg(long, default_value = "tap-vm")]
    tap: String,
    /// The bridge's addresses (repeatable) [default: 10.0.2.2/24 fd0:1234:4321::2/64]
    #[arg(long = "address", value_name = "ADDR/LEN", value_parser = parse_cidr)]
    addresses: Vec<String>,
    /// Who may open the tap (tap-up) [default: $SUDO_USER, if set]
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// Print the `ip` commands that would run, change nothing
    #[arg(long)]
    dry_run: bool,
}

impl Flags {
    fn config(&self) -> TapConfig {
        let mut c = TapConfig {
            bridge: self.bridge.clone(),
            tap: self.tap.clone(),
            user: self
                .user
                .clone()
                .or_else(|| std::env::var("SUDO_USER").ok().filter(|u| !u.is_empty())),
            ..TapConfig::default()
        };
        if !self.addresses.is_empty() {
            c.addresses = self.addresses.clone();
        }
        c
    }
}

pub fn up(f: &Flags) -> Result<()> {
    let c = f.config();
    if !f.dry_run {
        tap::require_root()?;
        tap::require_tun()?;
    }
    let plan = tap::plan_up(&c, &tap::links()?)?;
    finish(
        f,
        &plan,
        &format!("{} and {} are already up", c.bridge, c.tap),
    )
}

pub fn down(f: &Flags) -> Result<()> {
    let c = f.config();
    if !f.dry_run {
        tap::require_root()?;
    }
    let plan = tap::plan_down(&c, &tap::links()?);
    finish(
        f,
        &plan,
        &format!("neither {} nor {} exists", c.tap, c.bridge),
    )
}

fn finish(f: &Flags, plan: &[Vec<String>], nothing: &str) -> Result<()> {
    if plan.is_empty() {
        eprintln!("nothing to do: {nothing}");
        return Ok(());
    }
    for args in plan {
        let line = format!("ip {}", args.join(" "));
        if f.dry_run {
            println!("{line}");
        } else {
            eprintln!("+ {line}");
        }
    }
    if !f.dry_run {
        tap::apply(plan)?;
    }
    Ok(())
}

/// `ADDR/LEN`: the length is needed to tell on a re-run whether the bridge
/// already has the address (`ip` shows it with its length).
fn parse_cidr(s: &str) -> Result<String, String> {
    match s.split_once('/') {
        Some((addr, len))
            if addr.parse::<std::net::IpAddr>().is_ok() && len.parse::<u8>().is_ok() =>
        {
            Ok(s.to_string())
        }
        _ => Err(format!(
            "`{s}` is not ADDR/LEN (e.g. 10.0.2.2/24 or fd0:1234:4321::2/64)"
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn addresses_need_a_prefix_length() {
        assert!(super::parse_cidr("10.0.2.2/24").is_ok());
        assert!(super::parse_cidr("fd0:1234:4321::2/64").is_ok());
        for bad in ["10.0.2.2", "10.0.2.2/", "host/24", "10.0.2.2/x"] {
            let e = super::parse_cidr(bad).unwrap_err();
            assert!(e.contains("ADDR/LEN"), "{e}");
        }
    }
}
