//! The `.dep` resolver against in-memory `.dep` files.

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::{bail, Result};
use tinycore::deps::{resolve, resolve_with_parallelism, KernelDeps, Resolution};

/// A fake mirror: name -> .dep text (absent = 404), counting fetches.
struct Deps {
    files: HashMap<&'static str, &'static str>,
    calls: Mutex<Vec<String>>,
}

impl Deps {
    fn new(files: &[(&'static str, &'static str)]) -> Deps {
        Deps {
            files: files.iter().copied().collect(),
            calls: Mutex::new(Vec::new()),
        }
    }

    fn fetch(&self, name: &str) -> Result<Option<String>> {
        self.calls.lock().unwrap().push(name.to_string());
        if name == "broken" {
            bail!("cannot fetch http://m/16.x/x86_64/tcz/broken.tcz.dep: HTTP 500");
        }
        Ok(self.files.get(name).map(|s| s.to_string()))
    }

    fn resolve(&self, roots: &[&str], kernel: KernelDeps) -> Result<Resolution> {
        let roots: Vec<String> = roots.iter().map(|s| s.to_string()).collect();
        resolve(&roots, |n| self.fetch(n), kernel)
    }
}

fn mirror() -> Deps {
    Deps::new(&[
        ("openssh", "openssl.tcz\nlibtcdemo.tcz\n"),
        ("openssl", "ca-certificates.tcz\r\nfuse-KERNEL.tcz\r\n"),
        ("cyc-a", "cyc-b.tcz\n"),
        ("cyc-b", "cyc-a.tcz\n"),
        ("cycle-demo", "cyc-a.tcz"),
        ("chain-top", "  chain-mid.tcz\t\n\n"),
        ("chain-mid", "chain-bottom.tcz\n"),
        ("self-loop", "self-loop.tcz\n"),
        ("needs-broken", "broken.tcz\n"),
    ])
}

#[test]
fn chain_is_installed_bottom_up() {
    let r = mirror().resolve(&["chain-top"], KernelDeps::Skip).unwrap();
    assert_eq!(r.order, ["chain-bottom", "chain-mid", "chain-top"]);
    assert!(r.cycles.is_empty() && r.skipped_kernel.is_empty());
}

#[test]
fn openssh_order_and_kernel_skip() {
    let m = mirror();
    let r = m.resolve(&["openssh.tcz"], KernelDeps::Skip).unwrap();
    assert_eq!(
        r.order,
        ["ca-certificates", "openssl", "libtcdemo", "openssh"]
    );
    assert_eq!(r.skipped_kernel, ["fuse-KERNEL"]);
    // Each package's .dep fetched exactly once; the skipped one never.
    let mut calls = m.calls.lock().unwrap().clone();
    calls.sort();
    assert_eq!(
        calls,
        ["ca-certificates", "libtcdemo", "openssh", "openssl"]
    );
}

#[test]
fn kernel_substitution() {
    let r = mirror()
        .resolve(
            &["openssl"],
            KernelDeps::Substitute("6.1.0-tinycore64".into()),
        )
        .unwrap();
    assert_eq!(
        r.order,
        ["ca-certificates", "fuse-6.1.0-tinycore64", "openssl"]
    );
    assert!(r.skipped_kernel.is_empty());
}

#[test]
fn cycle_is_reported_once_and_not_fatal() {
    let r = mirror()
        .resolve(&["cycle-demo", "cyc-b", "cyc-a"], KernelDeps::Skip)
        .unwrap();
    assert_eq!(r.order, ["cyc-b", "cyc-a", "cycle-demo"]);
    assert_eq!(r.cycles, [("cyc-b".to_string(), "cyc-a".to_string())]);
    assert!(
        r.to_string()
            .contains("loop dependency: cyc-b.tcz -> cyc-a.tcz"),
        "{r}"
    );

    let r = mirror().resolve(&["self-loop"], KernelDeps::Skip).unwrap();
    assert_eq!(r.order, ["self-loop"]);
    assert_eq!(r.cycles.len(), 1);
}

#[test]
fn missing_dep_file_means_no_deps() {
    let r = mirror()
        .resolve(&["strace", "ca-certificates"], KernelDeps::Skip)
        .unwrap();
    assert_eq!(r.order, ["strace", "ca-certificates"]);
}

#[test]
fn shared_deps_once_in_root_order() {
    let r = mirror()
        .resolve(
            &["openssl", "openssh", "strace", "openssh", " chain-mid.tcz "],
            KernelDeps::Skip,
        )
        .unwrap();
    assert_eq!(
        r.order,
        [
            "ca-certificates",
            "openssl",
            "libtcdemo",
            "openssh",
            "strace",
            "chain-bottom",
            "chain-mid"
        ]
    );
    assert_eq!(r.skipped_kernel, ["fuse-KERNEL"], "reported once");
}

#[test]
fn order_does_not_depend_on_parallelism() {
    let roots: Vec<String> = ["openssh", "cycle-demo", "chain-top", "strace"]
        .map(String::from)
        .into();
    let m = mirror();
    let one = resolve_with_parallelism(&roots, |n| m.fetch(n), KernelDeps::Skip, 1).unwrap();
    for threads in [2, 8] {
        let r =
            resolve_with_parallelism(&roots, |n| m.fetch(n), KernelDeps::Skip, threads).unwrap();
        assert_eq!(r, one);
    }
}

#[test]
fn fetch_error_names_the_package_and_who_needs_it() {
    let err = mirror()
        .resolve(&["needs-broken"], KernelDeps::Skip)
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("broken (needed by needs-broken)"), "{msg}");
    assert!(
        msg.contains("http://m/16.x/x86_64/tcz/broken.tcz.dep"),
        "{msg}"
    );
}

#[test]
fn display_lists_order_then_notes() {
    let r = mirror().resolve(&["openssh"], KernelDeps::Skip).unwrap();
    let text = r.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        &lines[..4],
        ["ca-certificates", "openssl", "libtcdemo", "openssh"]
    );
    assert!(
        lines[4].starts_with("# skipped kernel-specific dependency fuse-KERNEL.tcz"),
        "{text}"
    );
}
