//! The mirror client against the fault-injecting test server on 127.0.0.1.

use std::time::Duration;

use camino::{Utf8Path, Utf8PathBuf};
use md5::{Digest, Md5};
use testmirror::server::{refused_url, Fault, Server};
use tinycore::deps::KernelDeps;
use tinycore::mirror::{Client, Config, Item, Layout, Progress, Source};

const TCZ: &str = "/16.x/x86_64/tcz";
const REL: &str = "/16.x/x86_64/release/distribution_files";

/// A Tiny Core-shaped mirror tree in a tempdir (until the shared test
/// mirror builder exists we make our own files: only bytes and md5 matter).
struct Fixture {
    _dir: tempfile::TempDir,
    root: Utf8PathBuf,
    build: Utf8PathBuf,
    server: Server,
}

fn payload(name: &str, len: usize) -> Vec<u8> {
    // Deterministic, incompressible-ish bytes that differ per file.
    let mut out = Vec::with_capacity(len);
    let mut h = Md5::digest(name.as_bytes());
    while out.len() < len {
        out.extend_from_slice(&h);
        h = Md5::digest(h);
    }
    out.truncate(len);
    out
}

fn md5_hex(b: &[u8]) -> String {
    format!("{:x}", Md5::digest(b))
}

fn put(root: &Utf8Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

fn put_with_md5(root: &Utf8Path, dir: &str, file: &str, bytes: &[u8]) {
    put(root, &format!("{dir}/{file}"), bytes);
    put(
        root,
        &format!("{dir}/{file}.md5.txt"),
        format!("{}  {file}\n", md5_hex(bytes)).as_bytes(),
    );
}

const PACKAGES: &[(&str, Option<&str>)] = &[
    ("openssh", Some("openssl.tcz\nlibtcdemo.tcz\n")),
    ("openssl", Some("ca-certificates.tcz\r\nfuse-KERNEL.tcz")),
    ("libtcdemo", None),
    ("ca-certificates", None),
    ("strace", None),
];

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let base = Utf8PathBuf::from_path_buf(dir.path().to_path_buf()).unwrap();
    let root = base.join("mirror");
    for (name, dep) in PACKAGES {
        let file = format!("{name}.tcz");
        put_with_md5(&root, TCZ, &file, &payload(&file, 150 * 1024));
        if let Some(dep) = dep {
            put(&root, &format!("{TCZ}/{file}.dep"), dep.as_bytes());
        }
    }
    for i in 0..8 {
        let file = format!("extra{i}.tcz");
        put_with_md5(&root, TCZ, &file, &payload(&file, 20 * 1024 + i));
    }
    put_with_md5(&root, REL, "corepure64.gz", &payload("core", 300 * 1024));
    let server = Server::start(root.as_std_path()).unwrap();
    Fixture {
        _dir: dir,
        root,
        build: base.join("build"),
        server,
    }
}

impl Fixture {
    fn config(&self, mirrors: Vec<String>) -> Config {
        let mut c = Config::new(
            mirrors,
            Layout::new("16.x", "x86_64").unwrap(),
            self.build.join("tczs"),
            self.build.join("downloads"),
        );
        c.retries = 2;
        c.backoff = Duration::from_millis(10);
        c.connect_timeout = Duration::from_secs(2);
        // Long enough not to fire on a busy 2-core machine; the slow-answer
        // test shortens it.
        c.read_timeout = Duration::from_secs(5);
        c.progress = Progress::Lines;
        c
    }

    fn client(&self) -> Client {
        Client::new(self.config(vec![self.server.url()])).unwrap()
    }

    fn offline_client(&self) -> Client {
        let mut c = self.config(vec![self.server.url()]);
        c.offline = true;
        Client::new(c).unwrap()
    }

    fn original(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.root.join(rel.trim_start_matches('/'))).unwrap()
    }

    fn count(&self, path: &str) -> usize {
        self.server.requests().iter().filter(|p| *p == path).count()
    }

    /// Names in the tczs cache dir (including any stray temp files).
    fn cache_listing(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.build.join("tczs")) else {
            return vec![];
        };
        let mut v: Vec<String> = rd
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    fn no_double_slashes(&self) {
        let bad = self.server.double_slash_requests();
        assert!(bad.is_empty(), "requests with //: {bad:?}");
    }
}

/// The whole error chain, printed so `--nocapture` shows what users see.
fn err_text(err: anyhow::Error) -> String {
    let msg = format!("{err:#}");
    eprintln!("error: {msg}");
    msg
}

fn items(names: &[&str]) -> Vec<Item> {
    names.iter().map(|n| Item::tcz(n)).collect()
}

#[test]
fn second_run_downloads_nothing() {
    let f = fixture();
    let client = f.client();
    let mut all = items(&["openssh", "openssl", "strace"]);
    all.push(client.core());
    let r = client.fetch_many(&all).unwrap();
    assert_eq!((r.downloaded(), r.cached()), (4, 0));
    assert_eq!(r.paths()[0], f.build.join("tczs/openssh.tcz"));
    assert_eq!(r.paths()[3], f.build.join("downloads/corepure64.gz"));
    assert_eq!(
        std::fs::read(&r.paths()[0]).unwrap(),
        f.original(&format!("{TCZ}/openssh.tcz"))
    );
    assert_eq!(
        std::fs::read(&r.paths()[3]).unwrap(),
        f.original(&format!("{REL}/corepure64.gz"))
    );
    assert!(
        f.build.join("tczs/openssh.tcz.md5.txt").is_file(),
        "md5 kept for --offline"
    );
    f.no_double_slashes();

    f.server.clear_requests();
    let r = f.client().fetch_many(&all).unwrap();
    assert_eq!((r.downloaded(), r.cached()), (0, 4));
    assert!(f.server.requests().is_empty(), "{:?}", f.server.requests());
}

#[test]
fn mirror_url_with_trailing_slashes_or_none() {
    let f = fixture();
    let base = f.server.url().trim_end_matches('/').to_string();
    for (i, m) in [base.clone(), format!("{base}//")].into_iter().enumerate() {
        let client = Client::new(f.config(vec![m])).unwrap();
        let name = format!("extra{i}");
        client.fetch_verified(&Item::tcz(&name)).unwrap();
        assert!(client.fetch_dep(&name).unwrap().is_none());
    }
    assert!(!f.server.requests().is_empty());
    f.no_double_slashes();
}

#[test]
fn parallel_fetch_of_many() {
    let f = fixture();
    let mut c = f.config(vec![f.server.url()]);
    c.parallelism = 3;
    let client = Client::new(c).unwrap();
    let names: Vec<String> = (0..8).map(|i| format!("extra{i}")).collect();
    let mut list: Vec<Item> = names.iter().map(|n| Item::tcz(n)).collect();
    list.push(Item::tcz("extra0.tcz")); // duplicate: fetched once
    let r = client.fetch_many(&list).unwrap();
    assert_eq!(r.downloaded(), 8);
    for (n, p) in names.iter().zip(r.paths()) {
        assert_eq!(
            std::fs::read(p).unwrap(),
            f.original(&format!("{TCZ}/{n}.tcz"))
        );
        assert_eq!(f.count(&format!("{TCZ}/{n}.tcz")), 1);
    }
}

#[test]
fn truncated_download_is_retried() {
    let f = fixture();
    let tcz = format!("{TCZ}/openssh.tcz");
    f.server.inject(&tcz, Fault::Truncate(1000));
    let got = f.client().fetch_item(&Item::tcz("openssh")).unwrap();
    assert!(matches!(got.source, Source::Downloaded { .. }));
    assert_eq!(std::fs::read(&got.path).unwrap(), f.original(&tcz));
    assert_eq!(f.count(&tcz), 2);
    assert_eq!(
        f.cache_listing(),
        ["openssh.tcz", "openssh.tcz.md5.txt", "openssh.tcz.verified"]
    );
}

#[test]
fn truncated_every_time_leaves_nothing_in_the_cache() {
    let f = fixture();
    let tcz = format!("{TCZ}/openssh.tcz");
    for _ in 0..3 {
        f.server.inject(&tcz, Fault::Truncate(5000));
    }
    let err = f
        .client()
        .fetch_verified(&Item::tcz("openssh"))
        .unwrap_err();
    let msg = err_text(err);
    assert!(
        msg.contains(&format!("{}{}", f.server.url().trim_end_matches('/'), tcz)),
        "{msg}"
    );
    assert_eq!(f.count(&tcz), 3, "first try + 2 retries");
    assert!(f.cache_listing().is_empty(), "{:?}", f.cache_listing());
}

#[test]
fn corrupt_once_then_good() {
    let f = fixture();
    let tcz = format!("{TCZ}/strace.tcz");
    f.server.inject(&tcz, Fault::Corrupt);
    let p = f.client().fetch_verified(&Item::tcz("strace")).unwrap();
    assert_eq!(std::fs::read(p).unwrap(), f.original(&tcz));
    assert_eq!(f.count(&tcz), 2);
}

#[test]
fn corrupt_every_time_is_a_clear_error_and_nothing_is_cached() {
    let f = fixture();
    let tcz = format!("{TCZ}/strace.tcz");
    for _ in 0..2 {
        f.server.inject(&tcz, Fault::Corrupt);
    }
    let err = f.client().fetch_verified(&Item::tcz("strace")).unwrap_err();
    let msg = err_text(err);
    let expected = md5_hex(&f.original(&tcz));
    assert!(msg.contains("md5 mismatch for http://127.0.0.1:"), "{msg}");
    assert!(msg.contains(&tcz), "{msg}");
    assert!(msg.contains(&format!("expected {expected} got ")), "{msg}");
    assert!(msg.contains("try another with --mirror"), "{msg}");
    assert_eq!(f.count(&tcz), 2, "one retry after a mismatch");
    assert!(f.cache_listing().is_empty(), "{:?}", f.cache_listing());
}

#[test]
fn wrong_md5_file_is_a_clear_error() {
    let f = fixture();
    put(
        &f.root,
        &format!("{TCZ}/strace.tcz.md5.txt"),
        b"0123456789abcdef0123456789abcdef  strace.tcz\n",
    );
    let err = f.client().fetch_verified(&Item::tcz("strace")).unwrap_err();
    let msg = err_text(err);
    assert!(
        msg.contains("expected 0123456789abcdef0123456789abcdef got "),
        "{msg}"
    );
    assert!(f.cache_listing().is_empty());
}

#[test]
fn server_error_then_success() {
    let f = fixture();
    let tcz = format!("{TCZ}/openssl.tcz");
    f.server.inject(&tcz, Fault::Status(500));
    f.server
        .inject(&format!("{tcz}.md5.txt"), Fault::Status(503));
    let p = f.client().fetch_verified(&Item::tcz("openssl")).unwrap();
    assert_eq!(std::fs::read(p).unwrap(), f.original(&tcz));
    assert_eq!(f.count(&tcz), 2);
    assert_eq!(f.count(&format!("{tcz}.md5.txt")), 2);
}

#[test]
fn slow_answer_times_out_and_is_retried() {
    let f = fixture();
    let tcz = format!("{TCZ}/openssl.tcz");
    f.server.inject(&tcz, Fault::Delay(Duration::from_secs(3)));
    let mut c = f.config(vec![f.server.url()]);
    c.read_timeout = Duration::from_millis(700);
    let p = Client::new(c)
        .unwrap()
        .fetch_verified(&Item::tcz("openssl"))
        .unwrap();
    assert_eq!(std::fs::read(p).unwrap(), f.original(&tcz));
    assert_eq!(f.count(&tcz), 2);
}

#[test]
fn refused_first_mirror_falls_back_to_the_second() {
    let f = fixture();
    let client = Client::new(f.config(vec![refused_url(), f.server.url()])).unwrap();
    let r = client.fetch_many(&items(&["openssh", "strace"])).unwrap();
    assert_eq!(r.downloaded(), 2);
    for fetched in &r.files {
        let Source::Downloaded { url, .. } = &fetched.source else {
            panic!()
        };
        assert!(url.starts_with(f.server.url().as_str()), "{url}");
    }
    // .dep files too.
    assert!(client
        .fetch_dep("openssh")
        .unwrap()
        .unwrap()
        .contains("openssl.tcz"));
}

#[test]
fn all_mirrors_down_names_each() {
    let f = fixture();
    let dead = refused_url();
    let client = Client::new(f.config(vec![dead.clone()])).unwrap();
    let msg = err_text(client.fetch_verified(&Item::tcz("openssh")).unwrap_err());
    assert!(msg.contains(dead.trim_end_matches('/')), "{msg}");
    assert!(msg.contains("openssh.tcz"), "{msg}");
    assert!(msg.contains("--mirror"), "{msg}");
}

#[test]
fn unknown_package_is_a_clear_error() {
    let f = fixture();
    let err = f
        .client()
        .fetch_verified(&Item::tcz("nosuchpkg"))
        .unwrap_err();
    let msg = err_text(err);
    assert!(
        msg.starts_with("package nosuchpkg not found on http://127.0.0.1:"),
        "{msg}"
    );
    assert!(msg.contains("nosuchpkg.tcz.md5.txt"), "{msg}");
    assert!(
        msg.contains("check the name in PACKAGES / guest.toml"),
        "{msg}"
    );
    assert_eq!(f.server.requests().len(), 1, "a 404 is not retried");
    assert!(f.cache_listing().is_empty());

    // The .tcz itself missing (md5 present) is the same error.
    std::fs::remove_file(f.root.join(&TCZ[1..]).join("strace.tcz")).unwrap();
    let msg = err_text(f.client().fetch_verified(&Item::tcz("strace")).unwrap_err());
    assert!(msg.starts_with("package strace not found on"), "{msg}");
}

#[test]
fn offline_with_empty_cache_names_the_file() {
    let f = fixture();
    let client = f.offline_client();
    let msg = err_text(client.fetch_verified(&Item::tcz("openssh")).unwrap_err());
    assert!(msg.contains("openssh.tcz"), "{msg}");
    assert!(msg.contains("run once without --offline"), "{msg}");
    let msg = err_text(
        client
            .resolve(&["openssh".into()], KernelDeps::Skip)
            .unwrap_err(),
    );
    assert!(
        msg.contains("openssh.tcz.dep") && msg.contains("without --offline"),
        "{msg}"
    );
    assert!(f.server.requests().is_empty());
}

#[test]
fn offline_with_warm_cache_makes_no_requests() {
    let f = fixture();
    let online = f.client();
    let res = online
        .resolve(&["openssh".into()], KernelDeps::Skip)
        .unwrap();
    assert_eq!(
        res.order,
        ["ca-certificates", "openssl", "libtcdemo", "openssh"]
    );
    assert_eq!(res.skipped_kernel, ["fuse-KERNEL"]);
    let mut list: Vec<Item> = res.order.iter().map(|n| Item::tcz(n)).collect();
    list.push(online.core());
    assert_eq!(online.fetch_many(&list).unwrap().downloaded(), 5);
    f.no_double_slashes();

    f.server.clear_requests();
    let offline = f.offline_client();
    let res2 = offline
        .resolve(&["openssh".into()], KernelDeps::Skip)
        .unwrap();
    assert_eq!(res2, res);
    let r = offline.fetch_many(&list).unwrap();
    assert_eq!((r.downloaded(), r.cached()), (0, 5));
    assert!(f.server.requests().is_empty(), "{:?}", f.server.requests());
}

#[test]
fn damaged_cache_entry_is_refetched_online_and_refused_offline() {
    let f = fixture();
    let p = f.client().fetch_verified(&Item::tcz("strace")).unwrap();
    std::fs::write(&p, b"damaged").unwrap();

    let msg = err_text(
        f.offline_client()
            .fetch_verified(&Item::tcz("strace"))
            .unwrap_err(),
    );
    assert!(
        msg.contains("strace.tcz") && msg.contains("without --offline"),
        "{msg}"
    );

    f.server.clear_requests();
    let got = f.client().fetch_item(&Item::tcz("strace")).unwrap();
    assert!(matches!(got.source, Source::Downloaded { .. }));
    assert_eq!(
        std::fs::read(&p).unwrap(),
        f.original(&format!("{TCZ}/strace.tcz"))
    );
}

/// Waits until the clock has moved past `path`'s ctime, so that a stamp
/// written now is not racy and is trusted.
fn after_ctime_of(path: &Utf8Path) {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).unwrap();
    let probe = path.with_file_name(".clock-probe");
    loop {
        std::fs::write(&probe, b"").unwrap();
        let now = std::fs::metadata(&probe).unwrap();
        if (now.mtime(), now.mtime_nsec()) > (md.ctime(), md.ctime_nsec()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    std::fs::remove_file(&probe).unwrap();
}

#[test]
fn cache_file_modified_after_its_stamp_is_hashed_again() {
    let f = fixture();
    let p = f.client().fetch_verified(&Item::tcz("strace")).unwrap();
    let stamp = Utf8PathBuf::from(format!("{p}.verified"));
    assert!(stamp.is_file(), "a verified download is stamped");
    // A run that verifies by hashing leaves a trusted stamp.
    after_ctime_of(&p);
    std::fs::remove_file(&stamp).unwrap();
    f.offline_client()
        .fetch_verified(&Item::tcz("strace"))
        .unwrap();
    let stamp_id = |p: &Utf8Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().ino()
    };
    let trusted = stamp_id(&stamp);
    // Trusted: the next run neither hashes nor re-stamps.
    f.offline_client()
        .fetch_verified(&Item::tcz("strace"))
        .unwrap();
    assert_eq!(stamp_id(&stamp), trusted, "a good stamp was not trusted");

    // Same size, same mtime, one byte different: only the ctime (and the
    // content) tell.
    let good = std::fs::read(&p).unwrap();
    let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0x55;
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut w = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        w.seek(SeekFrom::Start(0)).unwrap();
        w.write_all(&bad).unwrap();
        w.set_modified(mtime).unwrap();
    }
    let msg = err_text(
        f.offline_client()
            .fetch_verified(&Item::tcz("strace"))
            .unwrap_err(),
    );
    assert!(msg.contains("strace.tcz") && msg.contains("md5"), "{msg}");

    // Truncated: refused offline, downloaded again online.
    std::fs::write(&p, &good[..good.len() - 1]).unwrap();
    assert!(f
        .offline_client()
        .fetch_verified(&Item::tcz("strace"))
        .is_err());
    let got = f.client().fetch_item(&Item::tcz("strace")).unwrap();
    assert!(matches!(got.source, Source::Downloaded { .. }));
    assert_eq!(std::fs::read(&p).unwrap(), good);

    // Replaced by another file with the same bytes as the damaged one: a
    // different inode, so hashed again.
    after_ctime_of(&p);
    let other = p.with_file_name("strace.tcz.other");
    std::fs::write(&other, &bad).unwrap();
    std::fs::rename(&other, &p).unwrap();
    assert!(f
        .offline_client()
        .fetch_verified(&Item::tcz("strace"))
        .is_err());
}

#[test]
fn stamp_for_an_old_md5_is_not_trusted() {
    let f = fixture();
    let p = f.client().fetch_verified(&Item::tcz("strace")).unwrap();
    after_ctime_of(&p);
    std::fs::remove_file(format!("{p}.verified")).unwrap();
    f.offline_client()
        .fetch_verified(&Item::tcz("strace"))
        .unwrap();
    // The mirror published a new md5 (the cached file is now stale).
    std::fs::write(
        format!("{p}.md5.txt"),
        format!("{}  strace.tcz\n", md5_hex(b"something else")),
    )
    .unwrap();
    let msg = err_text(
        f.offline_client()
            .fetch_verified(&Item::tcz("strace"))
            .unwrap_err(),
    );
    assert!(msg.contains("md5"), "{msg}");
}

#[test]
fn fetch_text_none_on_404_error_after_retries() {
    let f = fixture();
    let client = f.client();
    let base = f.server.url();
    assert_eq!(
        client
            .fetch_text(&format!("{base}16.x/x86_64/tcz/openssh.tcz.dep"))
            .unwrap()
            .as_deref(),
        Some("openssl.tcz\nlibtcdemo.tcz\n")
    );
    assert_eq!(
        client
            .fetch_text(&format!("{base}16.x/x86_64/tcz/strace.tcz.dep"))
            .unwrap(),
        None
    );

    let dep = format!("{TCZ}/openssl.tcz.dep");
    for _ in 0..3 {
        f.server.inject(&dep, Fault::Status(500));
    }
    let url = format!("{base}{}", &dep[1..]);
    let msg = err_text(client.fetch_text(&url).unwrap_err());
    assert!(msg.contains(&url) && msg.contains("500"), "{msg}");
    assert_eq!(f.count(&dep), 3);

    // The resolver sees the same failure, naming the URL.
    for _ in 0..3 {
        f.server.inject(&dep, Fault::Status(500));
    }
    let msg = err_text(
        client
            .resolve(&["openssh".into()], KernelDeps::Skip)
            .unwrap_err(),
    );
    assert!(
        msg.contains(&url) && msg.contains("needed by openssh"),
        "{msg}"
    );
}

#[test]
fn md5_mismatch_twice_moves_on_to_the_next_mirror() {
    let f = fixture();
    let second = Server::start(f.root.as_std_path()).unwrap();
    let tcz = format!("{TCZ}/strace.tcz");
    f.server.inject(&tcz, Fault::Corrupt);
    f.server.inject(&tcz, Fault::Corrupt);
    let client = Client::new(f.config(vec![f.server.url(), second.url()])).unwrap();
    let got = client.fetch_item(&Item::tcz("strace")).unwrap();
    let Source::Downloaded { url, .. } = &got.source else {
        panic!("{got:?}")
    };
    assert!(url.starts_with(second.url().as_str()), "{url}");
    assert_eq!(std::fs::read(&got.path).unwrap(), f.original(&tcz));
    assert_eq!(f.count(&tcz), 2);
}

#[test]
fn package_missing_on_first_mirror_is_taken_from_the_second() {
    let f = fixture();
    let empty = tempfile::tempdir().unwrap();
    let first = Server::start(empty.path()).unwrap();
    let client = Client::new(f.config(vec![first.url(), f.server.url()])).unwrap();
    client.fetch_verified(&Item::tcz("openssh")).unwrap();
    assert_eq!(first.requests(), [format!("{TCZ}/openssh.tcz.md5.txt")]);

    let msg = err_text(client.fetch_verified(&Item::tcz("nosuchpkg")).unwrap_err());
    assert!(msg.starts_with("package nosuchpkg not found on"), "{msg}");
    assert!(msg.contains(first.url().trim_end_matches('/')), "{msg}");
    assert!(msg.contains(f.server.url().trim_end_matches('/')), "{msg}");
}

#[test]
fn fetch_many_names_every_failure_and_keeps_the_good_files() {
    let f = fixture();
    let err = f
        .client()
        .fetch_many(&items(&["nope-a", "strace", "nope-b"]))
        .unwrap_err();
    let msg = err_text(err);
    assert!(
        msg.starts_with("2 of 3 files could not be fetched"),
        "{msg}"
    );
    assert!(msg.contains("package nope-a not found") && msg.contains("package nope-b not found"));
    assert_eq!(
        f.cache_listing(),
        ["strace.tcz", "strace.tcz.md5.txt", "strace.tcz.verified"]
    );
}

#[test]
fn invalid_names_never_reach_the_network() {
    let f = fixture();
    let client = f.client();
    for bad in ["../evil", "a/b", ".hidden"] {
        let msg = err_text(client.fetch_verified(&Item::tcz(bad)).unwrap_err());
        assert!(msg.contains("invalid package or file name"), "{msg}");
        assert!(client.fetch_dep(bad).is_err());
    }
    assert!(f.server.requests().is_empty());
}
