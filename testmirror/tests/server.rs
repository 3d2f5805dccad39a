//! The fault-injecting file server, exercised with raw TCP and with ureq.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use testmirror::server::raw_get;
use testmirror::{refused_url, Fault, Server};

fn root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("16.x/x86_64/tcz")).unwrap();
    std::fs::write(
        dir.path().join("16.x/x86_64/tcz/a.tcz"),
        b"0123456789abcdef",
    )
    .unwrap();
    std::fs::write(dir.path().join("top.txt"), b"top").unwrap();
    dir
}

/// Sends a raw request and returns the whole response (headers and body).
fn raw(server: &Server, request: &str) -> String {
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

#[test]
fn serves_files_logs_paths_and_404s() {
    let dir = root();
    let server = Server::start(dir.path()).unwrap();
    assert!(server.url().starts_with("http://127.0.0.1:") && server.url().ends_with('/'));
    let (st, body) = raw_get(&server.url(), "/16.x/x86_64/tcz/a.tcz").unwrap();
    assert_eq!((st, body.as_slice()), (200, &b"0123456789abcdef"[..]));
    let (st, _) = raw_get(&server.url(), "/16.x/x86_64/tcz/missing.tcz.dep").unwrap();
    assert_eq!(st, 404);
    let (st, _) = raw_get(&server.url(), "/16.x/x86_64/tcz").unwrap();
    assert_eq!(st, 404, "directories are not served");
    // `//` is served (like real mirrors) but recorded raw so tests can flag it.
    let (st, _) = raw_get(&server.url(), "/16.x//x86_64/tcz/a.tcz").unwrap();
    assert_eq!(st, 200);
    assert_eq!(
        server.requests(),
        [
            "/16.x/x86_64/tcz/a.tcz",
            "/16.x/x86_64/tcz/missing.tcz.dep",
            "/16.x/x86_64/tcz",
            "/16.x//x86_64/tcz/a.tcz"
        ]
    );
    assert_eq!(server.double_slash_requests(), ["/16.x//x86_64/tcz/a.tcz"]);
    let statuses: Vec<u16> = server.request_log().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 404, 404, 200]);
    server.clear_requests();
    assert!(server.requests().is_empty());
}

#[test]
fn head_has_length_and_no_body() {
    let dir = root();
    let server = Server::start(dir.path()).unwrap();
    let resp = raw(&server, "HEAD /top.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("Content-Length: 3\r\n"), "{resp}");
    assert!(
        resp.ends_with("\r\n\r\n"),
        "HEAD must not send a body: {resp:?}"
    );
}

#[test]
fn never_serves_outside_root() {
    let dir = root();
    std::fs::write(
        dir.path().parent().unwrap().join("testmirror-secret"),
        b"secret",
    )
    .ok();
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("passwd-link")).unwrap();
    let server = Server::start(dir.path().join("16.x")).unwrap();
    for p in [
        "/../top.txt",
        "/x86_64/../../top.txt",
        "/%2e%2e/top.txt",
        "/x86_64/%2E%2E/%2e%2e/top.txt",
        "top.txt",
    ] {
        let (st, body) = raw_get(&server.url(), p).unwrap();
        assert_eq!(
            st,
            400,
            "{p} must be rejected, got {}",
            String::from_utf8_lossy(&body)
        );
    }
    drop(server);
    let server = Server::start(dir.path()).unwrap();
    let (st, _) = raw_get(&server.url(), "/passwd-link").unwrap();
    assert_eq!(st, 404, "a symlink leading out of root is not followed");
}

#[test]
fn faults_are_queued_per_path_and_consumed_in_order() {
    let dir = root();
    let server = Server::start(dir.path()).unwrap();
    let p = "/16.x/x86_64/tcz/a.tcz";
    server.inject(p, Fault::Status(503));
    server.inject("16.x/x86_64/tcz/a.tcz", Fault::Corrupt);
    server.inject(p, Fault::Truncate(5));
    assert_eq!(server.pending_faults(), 3);
    // Another path is unaffected.
    assert_eq!(raw_get(&server.url(), "/top.txt").unwrap().0, 200);

    assert_eq!(raw_get(&server.url(), p).unwrap().0, 503);

    let (st, body) = raw_get(&server.url(), p).unwrap();
    assert_eq!(st, 200);
    assert_eq!(body.len(), 16);
    assert_ne!(body, b"0123456789abcdef");

    let resp = raw(&server, &format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(
        resp.contains("Content-Length: 16\r\n"),
        "truncation keeps the real length: {resp}"
    );
    assert!(resp.ends_with("\r\n\r\n01234"), "{resp:?}");

    assert_eq!(
        raw_get(&server.url(), p).unwrap(),
        (200, b"0123456789abcdef".to_vec())
    );
    assert_eq!(server.pending_faults(), 0);
}

#[test]
fn delay_fault_delays() {
    let dir = root();
    let server = Server::start(dir.path()).unwrap();
    server.inject("/top.txt", Fault::Delay(Duration::from_millis(300)));
    let t = Instant::now();
    assert_eq!(
        raw_get(&server.url(), "/top.txt").unwrap(),
        (200, b"top".to_vec())
    );
    assert!(t.elapsed() >= Duration::from_millis(300));
    let t = Instant::now();
    raw_get(&server.url(), "/top.txt").unwrap();
    assert!(t.elapsed() < Duration::from_millis(300));
}

#[test]
fn range_requests_get_206() {
    let dir = root();
    let server = Server::start(dir.path()).unwrap();
    let resp = raw(
        &server,
        "GET /16.x/x86_64/tcz/a.tcz HTTP/1.1\r\nRange: bytes=10-\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 206"), "{resp}");
    assert!(resp.contains("Content-Range: bytes 10-15/16\r\n"), "{resp}");
    assert!(resp.ends_with("abcdef"), "{resp}");
}

#[test]
fn works_with_ureq() {
    let dir = root();
    let server = Server::start(dir.path()).unwrap();
    let url = format!("{}16.x/x86_64/tcz/a.tcz", server.url());
    let body = ureq::get(&url)
        .call()
        .unwrap()
        .body_mut()
        .read_to_vec()
        .unwrap();
    assert_eq!(body, b"0123456789abcdef");
    server.inject("/16.x/x86_64/tcz/a.tcz", Fault::Status(500));
    match ureq::get(&url).call() {
        Err(ureq::Error::StatusCode(500)) => {}
        other => panic!("expected 500, got {other:?}"),
    }
    server.inject("/16.x/x86_64/tcz/a.tcz", Fault::Truncate(4));
    let res = ureq::get(&url).call().unwrap().body_mut().read_to_vec();
    assert!(
        res.is_err(),
        "a truncated body must be an error for the client, got {res:?}"
    );
}

#[test]
fn drop_stops_listening_and_refused_url_refuses() {
    let dir = root();
    let server = Server::start(dir.path()).unwrap();
    let addr = server.addr();
    // An idle connection must not keep drop from returning.
    let _idle = TcpStream::connect(addr).unwrap();
    server.inject("/top.txt", Fault::Delay(Duration::from_secs(60)));
    let slow = std::thread::spawn(move || {
        let _ = raw_get(&format!("http://{addr}/"), "/top.txt");
    });
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    drop(server);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "drop took {:?}",
        t.elapsed()
    );
    slow.join().unwrap();
    assert!(
        TcpStream::connect(addr).is_err(),
        "listener still open after drop"
    );

    let url = refused_url();
    let hostport = url.trim_start_matches("http://").trim_end_matches('/');
    let err = TcpStream::connect(hostport).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[test]
fn missing_root_is_an_error() {
    let err = Server::start("/nonexistent/testmirror-root")
        .err()
        .expect("must fail");
    assert!(
        format!("{err:#}").contains("/nonexistent/testmirror-root"),
        "{err:#}"
    );
}
