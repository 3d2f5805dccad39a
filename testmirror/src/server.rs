//! A small HTTP/1.1 file server on 127.0.0.1 with fault injection.
//!
//! Serves GET and HEAD for files under a root directory, records every
//! request path exactly as the client sent it (so tests can assert that
//! clients never send `//`), and lets tests queue faults per path: an HTTP
//! status, a truncated body, corrupted bytes or a delay.
//!
//! One thread accepts, one thread per connection answers. Every response
//! carries `Connection: close`, which keeps the server simple and makes
//! `Drop` prompt: it wakes the accept loop, shuts down open connections and
//! joins every thread, so no listener or thread outlives the `Server`.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// A fault to inject into the next response for one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status code (and a short text body) instead of the file.
    Status(u16),
    /// Send the correct `Content-Length`, then only the first n bytes, then close.
    Truncate(usize),
    /// Same length, but some bytes flipped (the md5 will not match).
    Corrupt,
    /// Wait this long before answering normally.
    Delay(Duration),
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target exactly as sent (e.g. `/16.x/x86_64/tcz/openssh.tcz`).
    pub path: String,
    pub status: u16,
}

#[derive(Default)]
struct State {
    log: Vec<Request>,
    faults: HashMap<String, VecDeque<Fault>>,
}

struct Shared {
    root: PathBuf,
    stop: AtomicBool,
    state: Mutex<State>,
    /// Open connections: the thread and a handle to shut its socket down on drop.
    conns: Mutex<Vec<(JoinHandle<()>, TcpStream)>>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking connection thread must not take the test's view of
        // the log down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running server. Dropping it stops it.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds 127.0.0.1 on an ephemeral port and serves files under `root`.
    pub fn start(root: impl Into<PathBuf>) -> Result<Server> {
        let root: PathBuf = root.into();
        let root = root.canonicalize().with_context(|| {
            format!(
                "test server root {} does not exist; build the mirror first",
                root.display()
            )
        })?;
        anyhow::ensure!(
            root.is_dir(),
            "test server root {} is not a directory",
            root.display()
        );
        let listener = TcpListener::bind("127.0.0.1:0")
            .context("binding the test HTTP server to 127.0.0.1:0")?;
        let addr = listener
            .local_addr()
            .context("reading the test server's bound address")?;
        let shared = Arc::new(Shared {
            root,
            stop: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            conns: Mutex::new(Vec::new()),
        });
        let accept_shared = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name(format!("testmirror-accept-{}", addr.port()))
            .spawn(move || accept_loop(listener, accept_shared))
            .context("spawning the test server's accept thread")?;
        Ok(Server {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// `http://127.0.0.1:PORT/`, with a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// Request paths in arrival order, exactly as the client sent them.
    pub fn requests(&self) -> Vec<String> {
        self.shared
            .state()
            .log
            .iter()
            .map(|r| r.path.clone())
            .collect()
    }

    /// Requests with method and the status the server answered.
    pub fn request_log(&self) -> Vec<Request> {
        self.shared.state().log.clone()
    }

    /// The requests whose path contains `//` (clients should never send one).
    pub fn double_slash_requests(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|p| p.contains("//"))
            .collect()
    }

    pub fn clear_requests(&self) {
        self.shared.state().log.clear();
    }

    /// Queues a fault for `path` (e.g. `/16.x/x86_64/tcz/openssh.tcz`; a
    /// missing leading `/` is added). Each fault is consumed by the next
    /// request for that path; several queue up in order.
    pub fn inject(&self, path: &str, fault: Fault) {
        let key = fault_key(path);
        self.shared
            .state()
            .faults
            .entry(key)
            .or_default()
            .push_back(fault);
    }

    /// Faults injected but not yet consumed.
    pub fn pending_faults(&self) -> usize {
        self.shared.state().faults.values().map(VecDeque::len).sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept(); if the connect fails the listener is
        // already gone, which is what we want anyway.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let conns =
            std::mem::take(&mut *self.shared.conns.lock().unwrap_or_else(|e| e.into_inner()));
        for (thread, stream) in conns {
            let _ = stream.shutdown(Shutdown::Both);
            let _ = thread.join();
        }
    }
}

/// `http://127.0.0.1:PORT/` where nothing listens: binds an ephemeral port
/// and closes it again, so connections are refused.
pub fn refused_url() -> String {
    let listener =
        TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0 to find a free port");
    let addr = listener.local_addr().expect("reading the bound address");
    drop(listener);
    format!("http://{addr}/")
}

fn fault_key(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or("");
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else {
            // E.g. out of file descriptors: back off instead of spinning.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let Ok(handle) = stream.try_clone() else {
            continue;
        };
        let conn_shared = Arc::clone(&shared);
        let Ok(thread) = std::thread::Builder::new()
            .name("testmirror-conn".into())
            .spawn(move || {
                // Errors here are the client hanging up; nothing to report.
                let _ = handle_connection(stream, &conn_shared);
            })
        else {
            continue;
        };
        let mut conns = shared.conns.lock().unwrap_or_else(|e| e.into_inner());
        // Reap finished connections so long tests don't accumulate handles.
        let (done, live): (Vec<_>, Vec<_>) = std::mem::take(&mut *conns)
            .into_iter()
            .partition(|(t, _)| t.is_finished());
        for (t, _) in done {
            let _ = t.join();
        }
        *conns = live;
        conns.push((thread, handle));
    }
}

fn handle_connection(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    // A client that connects and says nothing must not hold a thread forever.
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;

    let mut request_line = String::new();
    if reader.read_line(&mut request_line)? == 0 {
        return Ok(());
    }
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();

    let fault = {
        let mut st = shared.state();
        let key = fault_key(&target);
        let fault = st.faults.get_mut(&key).and_then(VecDeque::pop_front);
        // Log before answering so a test that reads requests() right after
        // its client returns sees this one even if the body is still going.
        st.log.push(Request {
            method: method.clone(),
            path: target.clone(),
            status: 0,
        });
        (fault, st.log.len() - 1)
    };
    let (fault, log_index) = fault;
    let set_status = |status: u16| {
        if let Some(r) = shared.state().log.get_mut(log_index) {
            r.status = status;
        }
    };

    if method != "GET" && method != "HEAD" {
        set_status(405);
        return send_text(&mut out, 405, "method not allowed\n", &method);
    }
    let fault = match fault {
        Some(Fault::Delay(d)) => {
            sleep_unless_stopped(d, shared);
            None
        }
        other => other,
    };
    if let Some(Fault::Status(code)) = fault {
        set_status(code);
        return send_text(
            &mut out,
            code,
            &format!("injected status {code}\n"),
            &method,
        );
    }
    let file = match resolve(&shared.root, &target) {
        Resolved::File(f) => f,
        Resolved::Bad => {
            set_status(400);
            return send_text(&mut out, 400, "bad path\n", &method);
        }
        Resolved::Missing => {
            set_status(404);
            return send_text(&mut out, 404, "not found\n", &method);
        }
    };
    let Ok(mut data) = std::fs::read(&file) else {
        set_status(404);
        return send_text(&mut out, 404, "not found\n", &method);
    };

    let mut status = 200;
    let mut extra = String::new();
    if let Some(r) = range.as_deref().and_then(|r| parse_range(r, data.len())) {
        let (start, end) = r;
        extra = format!(
            "Content-Range: bytes {start}-{}/{}\r\n",
            end - 1,
            data.len()
        );
        data = data[start..end].to_vec();
        status = 206;
    }
    if fault == Some(Fault::Corrupt) && !data.is_empty() {
        let n = data.len();
        for i in [0, n / 2, n - 1] {
            data[i] ^= 0x5a;
        }
    }
    set_status(status);
    write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n{extra}Connection: close\r\n\r\n",
        reason(status),
        data.len()
    )?;
    if method == "GET" {
        let body = match fault {
            Some(Fault::Truncate(n)) => &data[..n.min(data.len())],
            _ => &data[..],
        };
        out.write_all(body)?;
    }
    out.flush()?;
    let _ = out.shutdown(Shutdown::Both);
    Ok(())
}

fn sleep_unless_stopped(d: Duration, shared: &Shared) {
    let until = Instant::now() + d;
    while Instant::now() < until && !shared.stop.load(Ordering::SeqCst) {
        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(20)));
    }
}

enum Resolved {
    File(PathBuf),
    Missing,
    /// Would leave root (`..`) or is not a plain origin-form path.
    Bad,
}

/// Maps a request target to a file under root. Empty segments (`//`) are
/// ignored like most web servers do; tests check for them via the log.
fn resolve(root: &Path, target: &str) -> Resolved {
    let path = target.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return Resolved::Bad;
    }
    let Some(decoded) = percent_decode(path) else {
        return Resolved::Bad;
    };
    let mut out = root.to_path_buf();
    for seg in decoded.split('/') {
        if seg.is_empty() || seg == "." {
            continue;
        }
        if seg == ".." || seg.contains('\\') || seg.contains('\0') {
            return Resolved::Bad;
        }
        // Reject anything that is not a plain name (belt and braces).
        if !matches!(
            Path::new(seg).components().next(),
            Some(Component::Normal(_))
        ) {
            return Resolved::Bad;
        }
        out.push(seg);
    }
    // A symlink inside root pointing outside must not leak files either.
    match out.canonicalize() {
        Ok(canon) if canon.starts_with(root) && canon.is_file() => Resolved::File(canon),
        _ => Resolved::Missing,
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `bytes=a-b` or `bytes=a-` (single range only); None means "send it all".
fn parse_range(v: &str, len: usize) -> Option<(usize, usize)> {
    let spec = v.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let start: usize = a.trim().parse().ok()?;
    let end = if b.trim().is_empty() {
        len
    } else {
        b.trim().parse::<usize>().ok()?.saturating_add(1).min(len)
    };
    (start < end).then_some((start, end))
}

fn send_text(out: &mut TcpStream, status: u16, body: &str, method: &str) -> std::io::Result<()> {
    write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    )?;
    if method != "HEAD" {
        out.write_all(body.as_bytes())?;
    }
    out.flush()?;
    let _ = out.shutdown(Shutdown::Both);
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Reads a whole response from a raw stream (used by this crate's tests and
/// handy for others that want to look at headers).
pub fn raw_get(url_base: &str, path: &str) -> Result<(u16, Vec<u8>)> {
    let hostport = url_base.trim_start_matches("http://").trim_end_matches('/');
    let mut s =
        TcpStream::connect(hostport).with_context(|| format!("connecting to {hostport}"))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("sending GET {path} to {hostport}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .with_context(|| format!("reading the response to GET {path}"))?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("response to GET {path} has no end of headers"))?;
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("response to GET {path} has no status: {head:?}"))?;
    Ok((status, buf[split + 4..].to_vec()))
}
