//! `vsock-server [--once] PORT [-- CMD [ARGS...]]`: listen on AF_VSOCK
//! port PORT (any CID) and, for each connection, run CMD with the socket as
//! its stdin and stdout, or echo back what the peer sends when there is no
//! CMD. A way into a guest (or out of it) without networking.

use std::io;
use std::process::{Command, ExitCode, Stdio};

const USAGE: &str = "\
usage: vsock-server [--once] PORT [-- CMD [ARGS...]]
Listen on AF_VSOCK port PORT (any CID). For each connection run CMD with the
connection as its stdin and stdout (stderr stays ours), or, without CMD,
echo back what the peer sends until it shuts down its side.
  --once   serve one connection, then exit (with CMD's exit status)
Connections are served concurrently otherwise.
";

struct Args {
    once: bool,
    port: u32,
    cmd: Vec<String>,
}

fn usage_error(msg: &str) -> ExitCode {
    eprint!("vsock-server: {msg}\n{USAGE}");
    ExitCode::from(2)
}

enum Parsed {
    Run(Args),
    Help,
    Bad(String),
}

fn parse(args: Vec<String>) -> Parsed {
    let mut once = false;
    let mut port = None;
    let mut it = args.into_iter();
    let mut cmd = Vec::new();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => return Parsed::Help,
            "--once" => once = true,
            "--" => {
                cmd = it.by_ref().collect();
                if cmd.is_empty() {
                    return Parsed::Bad("`--` must be followed by a command".into());
                }
            }
            s if s.starts_with('-') => return Parsed::Bad(format!("unknown option '{s}'")),
            s if port.is_some() => {
                return Parsed::Bad(format!(
                    "unexpected argument '{s}' (put the command after `--`)"
                ))
            }
            s => match vsock::parse_port(s) {
                Some(p) => port = Some(p),
                None => return Parsed::Bad(format!("bad port '{s}'")),
            },
        }
    }
    match port {
        Some(port) => Parsed::Run(Args { once, port, cmd }),
        None => Parsed::Bad("missing PORT".into()),
    }
}

fn main() -> ExitCode {
    let args = match vsock::args() {
        Ok(a) => a,
        Err(bad) => return usage_error(&format!("argument {bad:?} is not UTF-8")),
    };
    let args = match parse(args) {
        Parsed::Run(a) => a,
        Parsed::Help => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Parsed::Bad(msg) => return usage_error(&msg),
    };
    let listener = match vsock::Listener::bind(args.port) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("vsock-server: listen on port {}: {e}", args.port);
            return ExitCode::FAILURE;
        }
    };
    // Scripts wait for this line before connecting.
    eprintln!("vsock-server: listening on port {}", args.port);
    loop {
        let (conn, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("vsock-server: accept on port {}: {e}", args.port);
                if args.once {
                    return ExitCode::FAILURE;
                }
                continue;
            }
        };
        if args.once {
            return serve(conn, peer, &args.cmd);
        }
        let cmd = args.cmd.clone();
        std::thread::spawn(move || serve(conn, peer, &cmd));
    }
}

fn serve(conn: vsock::Stream, peer: u32, cmd: &[String]) -> ExitCode {
    let Some((prog, rest)) = cmd.split_first() else {
        return match echo(conn) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vsock-server: echo to CID {peer}: {e}");
                ExitCode::FAILURE
            }
        };
    };
    let child = conn.try_clone().and_then(|input| {
        // The Command owns our copies of the socket and drops them after
        // spawning: the peer then sees EOF as soon as CMD exits.
        Command::new(prog)
            .args(rest)
            .stdin(Stdio::from(input.into_owned_fd()))
            .stdout(Stdio::from(conn.into_owned_fd()))
            .spawn()
    });
    let status = match child.and_then(|mut c| c.wait()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vsock-server: run {prog} for CID {peer}: {e}");
            return ExitCode::from(127);
        }
    };
    match status.code() {
        Some(c) => ExitCode::from(c.clamp(0, 255) as u8),
        None => {
            eprintln!("vsock-server: {prog} for CID {peer}: {status}");
            ExitCode::FAILURE
        }
    }
}

fn echo(conn: vsock::Stream) -> io::Result<()> {
    io::copy(&mut &conn, &mut &conn)?;
    conn.shutdown_write()
}
