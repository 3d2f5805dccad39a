//! `ninep-server -l ADDR:PORT -e DIR [-f] [-n]`: serves DIR over 9P2000.L
//! on TCP, one thread per connection, until killed. The flags are diod's
//! (`-f` foreground and `-n` no authentication are what this server always
//! does), so `guest/rcS-mount-fs` can run either.
//!
//! The protocol is google's `p9` crate (crosvm's 9p server); this is only
//! the listener around it. It is built as a static musl binary by
//! `cargo xtask vm-app mount-fs` and put into that app's guest.

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;

fn main() {
    let mut listen = None;
    let mut export = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-l" => listen = args.next(),
            "-e" => export = args.next(),
            "-f" | "-n" => {}
            _ => usage(&format!("unknown argument {a:?}")),
        }
    }
    let (Some(listen), Some(export)) = (listen, export) else {
        usage("-l ADDR:PORT and -e DIR are required");
    };
    let root = PathBuf::from(&export);
    if !root.is_dir() {
        usage(&format!("{export} is not a directory"));
    }
    let listener = TcpListener::bind(&listen).unwrap_or_else(|e| {
        eprintln!("ninep-server: cannot listen on {listen}: {e}");
        std::process::exit(1)
    });
    eprintln!("ninep-server: serving {export} on {listen}");
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let root = root.clone();
                std::thread::spawn(move || serve(stream, root));
            }
            Err(e) => eprintln!("ninep-server: accept: {e}"),
        }
    }
}

fn serve(stream: TcpStream, root: PathBuf) {
    let _ = stream.set_nodelay(true);
    let mut server = match p9::Server::new(root, BTreeMap::new(), BTreeMap::new()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ninep-server: cannot start a session: {e}");
            return;
        }
    };
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = BufWriter::new(stream);
    // Ends when the client disconnects (a read error or EOF).
    while server.handle_message(&mut reader, &mut writer).is_ok() {
        if writer.flush().is_err() {
            break;
        }
    }
}

fn usage(why: &str) -> ! {
    eprintln!("ninep-server: {why}\nusage: ninep-server -l ADDR:PORT -e DIR [-f] [-n]");
    std::process::exit(2)
}
