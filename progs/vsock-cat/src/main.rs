//! `vsock-cat CID PORT`: connect to an AF_VSOCK port and relay stdin to the
//! socket and the socket to stdout, like `nc` for vsock. At stdin's EOF the
//! write side is shut down, so the peer sees EOF and can still answer; we
//! exit when the peer closes. Talks to a guest (or the host) without any
//! networking set up.

use std::io::{self, Write};
use std::process::ExitCode;

const USAGE: &str = "\
usage: vsock-cat CID PORT
Connect to AF_VSOCK CID:PORT; copy stdin to it and its data to stdout.
At the end of stdin the sending side is shut down (the peer reads EOF);
vsock-cat exits when the peer closes the connection.
  CID   a number, `host` (2: the hypervisor's host) or `local` (1: loopback)
  PORT  a port number
";

fn usage_error(msg: &str) -> ExitCode {
    eprint!("vsock-cat: {msg}\n{USAGE}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args = match vsock::args() {
        Ok(a) => a,
        Err(bad) => return usage_error(&format!("argument {bad:?} is not UTF-8")),
    };
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let [cid, port] = args.as_slice() else {
        return usage_error(&format!("expected CID PORT, got {} arguments", args.len()));
    };
    let Some(cid_n) = vsock::parse_cid(cid) else {
        return usage_error(&format!("bad CID '{cid}'"));
    };
    let Some(port_n) = vsock::parse_port(port) else {
        return usage_error(&format!("bad port '{port}'"));
    };
    match relay(cid_n, port_n) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vsock-cat: CID {cid} port {port}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn relay(cid: u32, port: u32) -> io::Result<()> {
    let sock = vsock::Stream::connect(cid, port)
        .map_err(|e| io::Error::new(e.kind(), format!("connect: {e}")))?;
    let out = sock.try_clone()?;
    // Not joined: when the peer closes first we exit even if stdin stays open.
    std::thread::spawn(move || {
        let sent = io::copy(&mut io::stdin().lock(), &mut &out);
        let shut = out.shutdown_write();
        match sent.and(shut) {
            Ok(_) => {}
            // The peer closed its side: what it sent is still printed.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::NotConnected
                ) => {}
            Err(e) => eprintln!("vsock-cat: sending stdin: {e}"),
        }
    });
    let mut stdout = io::stdout().lock();
    io::copy(&mut &sock, &mut stdout)
        .map_err(|e| io::Error::new(e.kind(), format!("receiving: {e}")))?;
    stdout.flush()
}
