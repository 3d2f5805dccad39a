//! The server on the host, read back with the runner's 9p client: what
//! the mount-fs guest and the app do, without a VM.

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmapp::ninep::Client;

#[test]
fn serves_a_directory_over_tcp() {
    let dir = std::env::temp_dir().join(format!("ninep-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("hello.txt"), b"hello over 9p\n").unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.join("sub/big.bin"), &big).unwrap();

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut server = Command::new(env!("CARGO_BIN_EXE_ninep-server"))
        .args(["-f", "-n", "-l", &addr.to_string(), "-e"])
        .arg(&dir)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let mut c = loop {
        match Client::connect(addr, Duration::from_secs(2)) {
            Ok(c) => break c,
            Err(e) if t.elapsed() > Duration::from_secs(10) => {
                panic!("server never answered: {e:#}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    assert_eq!(c.list_dir("").unwrap(), ["hello.txt", "sub"]);
    assert_eq!(c.read_file("hello.txt").unwrap(), b"hello over 9p\n");
    assert!(
        c.read_file("sub/big.bin").unwrap() == big,
        "big file differs"
    );
    let e = c.read_file("nope").unwrap_err();
    assert!(format!("{e:#}").contains("nope"), "{e:#}");

    // Bad usage is an error, not a silent server.
    let out = Command::new(env!("CARGO_BIN_EXE_ninep-server"))
        .arg("-l")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    server.kill().unwrap();
    server.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
