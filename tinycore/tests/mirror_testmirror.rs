//! The client and resolver end to end against the shared Tiny Core-shaped
//! test mirror (real squashfs extensions, a real core, TC-style `.dep`s).

use std::time::Duration;

use camino::Utf8PathBuf;
use testmirror::mirror::{build, catalog, BuiltMirror, Layout as MirrorLayout};
use testmirror::server::Server;
use testmirror::tools::require_tool;
use tinycore::deps::{parse_dep, KernelDeps};
use tinycore::mirror::{Client, Config, Item, Layout, Progress};

struct Env {
    _dir: tempfile::TempDir,
    mirror: BuiltMirror,
    build: Utf8PathBuf,
    server: Server,
}

fn env(version: &str, arch: &str) -> Option<Env> {
    require_tool("mksquashfs", "squashfs-tools")?;
    require_tool("gcc", "gcc")?;
    let dir = tempfile::tempdir().unwrap();
    let base = Utf8PathBuf::from_path_buf(dir.path().to_path_buf()).unwrap();
    let mirror = build(&base.join("mirror"), &MirrorLayout::new(version, arch)).unwrap();
    let server = Server::start(mirror.root.as_std_path()).unwrap();
    Some(Env {
        _dir: dir,
        mirror,
        build: base.join("build"),
        server,
    })
}

impl Env {
    fn client(&self, version: &str, arch: &str, offline: bool) -> Client {
        let mut c = Config::new(
            vec![self.server.url()],
            Layout::new(version, arch).unwrap(),
            self.build.join("tczs"),
            self.build.join("downloads"),
        );
        c.offline = offline;
        c.retries = 1;
        c.backoff = Duration::from_millis(10);
        c.progress = Progress::Lines;
        Client::new(c).unwrap()
    }
}

fn roots(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn parse_dep_agrees_with_the_mirror_catalog() {
    for p in catalog() {
        if let Some(bytes) = &p.dep_file {
            let text = std::str::from_utf8(bytes).unwrap();
            assert_eq!(parse_dep(text), p.deps, "{}.tcz.dep: {text:?}", p.name);
        }
    }
}

#[test]
fn resolve_fetch_and_reuse_the_cache() {
    let Some(e) = env("16.x", "x86_64") else {
        return;
    };
    let client = e.client("16", "x86_64", false);

    let res = client
        .resolve(
            &roots(&["openssh", "strace", "cycle-demo", "chain-top"]),
            KernelDeps::Skip,
        )
        .unwrap();
    println!("{res}");
    assert_eq!(
        res.order,
        [
            "ca-certificates",
            "openssl",
            "libtcdemo",
            "openssh",
            "strace",
            "cyc-b",
            "cyc-a",
            "cycle-demo",
            "chain-bottom",
            "chain-mid",
            "chain-top"
        ]
    );
    assert_eq!(res.skipped_kernel, ["fuse-KERNEL"]);
    assert_eq!(res.cycles, [("cyc-b".to_string(), "cyc-a".to_string())]);

    let mut items: Vec<Item> = res.order.iter().map(|n| Item::tcz(n)).collect();
    items.push(client.core());
    let report = client.fetch_many(&items).unwrap();
    assert_eq!((report.downloaded(), report.cached()), (12, 0));
    for (name, path) in res.order.iter().zip(report.paths()) {
        assert_eq!(
            std::fs::read(path).unwrap(),
            std::fs::read(e.mirror.tcz_path(name)).unwrap()
        );
    }
    assert_eq!(
        std::fs::read(&report.paths()[11]).unwrap(),
        std::fs::read(e.mirror.core_path()).unwrap()
    );
    assert!(
        e.server.double_slash_requests().is_empty(),
        "{:?}",
        e.server.double_slash_requests()
    );
    assert!(e.server.requests().contains(&e.mirror.core_url_path()));
    assert!(e
        .server
        .requests()
        .contains(&e.mirror.tcz_url_path("openssh.tcz.dep")));

    // Second run, online: everything from the cache, not a single request.
    e.server.clear_requests();
    let res2 = client
        .resolve(
            &roots(&["openssh", "strace", "cycle-demo", "chain-top"]),
            KernelDeps::Skip,
        )
        .unwrap();
    assert_eq!(res2, res);
    let report = client.fetch_many(&items).unwrap();
    assert_eq!((report.downloaded(), report.cached()), (0, 12));
    assert!(e.server.requests().is_empty(), "{:?}", e.server.requests());

    // With refresh, the .dep files (which have no checksum) are read again.
    e.server.clear_requests();
    let mut cfg = client.config().clone();
    cfg.refresh = true;
    let refreshing = tinycore::mirror::Client::new(cfg).unwrap();
    let res_r = refreshing
        .resolve(
            &roots(&["openssh", "strace", "cycle-demo", "chain-top"]),
            KernelDeps::Skip,
        )
        .unwrap();
    assert_eq!(res_r, res);
    assert!(e
        .server
        .requests()
        .iter()
        .any(|p| p.ends_with("openssh.tcz.dep")));
    assert!(
        e.server.requests().iter().all(|p| p.ends_with(".tcz.dep")),
        "{:?}",
        e.server.requests()
    );

    // Offline: the same answers and not a single request.
    e.server.clear_requests();
    let offline = e.client("16.x", "x86_64", true);
    let res3 = offline
        .resolve(
            &roots(&["openssh", "strace", "cycle-demo", "chain-top"]),
            KernelDeps::Skip,
        )
        .unwrap();
    assert_eq!(res3, res);
    assert_eq!(offline.fetch_many(&items).unwrap().cached(), 12);
    assert!(e.server.requests().is_empty(), "{:?}", e.server.requests());
}

#[test]
fn x86_uses_core_gz_and_its_own_tree() {
    let Some(e) = env("7.x", "x86") else { return };
    let client = e.client("7", "x86", false);
    assert_eq!(client.core(), Item::Release("core.gz".into()));
    let p = client.fetch_verified(&client.core()).unwrap();
    assert_eq!(p, e.build.join("downloads/core.gz"));
    assert_eq!(
        std::fs::read(p).unwrap(),
        std::fs::read(e.mirror.core_path()).unwrap()
    );
    assert_eq!(
        e.server.requests(),
        [
            format!("{}.md5.txt", e.mirror.core_url_path()),
            e.mirror.core_url_path()
        ]
    );
}
