//! Cloud Hypervisor's API client against a Unix-socket server that checks
//! the exact request bytes and answers like Cloud Hypervisor (keeping the
//! connection open), and `stop` against a stand-in VMM process.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use camino::{Utf8Path, Utf8PathBuf};
use vmm::cloud_hypervisor::{self, pid_file, Stopped};

fn tmp() -> (tempfile::TempDir, Utf8PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let p = Utf8PathBuf::from_path_buf(t.path().to_owned()).unwrap();
    (t, p)
}

fn read_request(s: &mut UnixStream) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 256];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "client closed before a complete request");
        buf.extend_from_slice(&b[..n]);
    }
    String::from_utf8(buf).unwrap()
}

/// Serves `answers.len()` connections, one request each; records the
/// request text and calls `on` with it. Like Cloud Hypervisor's
/// micro_http it does not close the connection after answering.
fn serve(
    listener: UnixListener,
    answers: Vec<&'static str>,
    on: impl Fn(&str) + Send + 'static,
) -> (JoinHandle<()>, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let h = std::thread::spawn(move || {
        let mut open = vec![];
        for answer in answers {
            let (mut s, _) = listener.accept().unwrap();
            let req = read_request(&mut s);
            s2.lock().unwrap().push(req.clone());
            on(&req);
            s.write_all(answer.as_bytes()).unwrap();
            open.push(s);
        }
    });
    (h, seen)
}

#[test]
fn put_sends_the_exact_request_and_does_not_wait_for_eof() {
    let (_t, dir) = tmp();
    let sock = dir.join("ch.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let (h, seen) = serve(l, vec!["HTTP/1.1 204 No Content\r\n\r\n"], |_| {});
    let start = Instant::now();
    cloud_hypervisor::put(&sock, "vm.power-button", Duration::from_secs(5)).unwrap();
    assert!(start.elapsed() < Duration::from_secs(2), "waited for EOF?");
    h.join().unwrap();
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        ["PUT /api/v1/vm.power-button HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n"]
    );
    assert_eq!(
        cloud_hypervisor::request("vmm.shutdown"),
        b"PUT /api/v1/vmm.shutdown HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n"
    );
}

#[test]
fn an_error_answer_reports_status_and_body() {
    let (_t, dir) = tmp();
    let sock = dir.join("ch.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let (h, _) = serve(
        l,
        vec!["HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: 24\r\n\r\n\"VM is not booted\" extra"],
        |_| {},
    );
    let e = cloud_hypervisor::put(&sock, "vm.power-button", Duration::from_secs(5)).unwrap_err();
    h.join().unwrap();
    let msg = format!("{e:#}");
    assert!(msg.contains("PUT vm.power-button"), "{msg}");
    assert!(
        msg.contains("HTTP 500: \"VM is not booted\" extra"),
        "{msg}"
    );
}

#[test]
fn stop_without_a_vmm_says_so_and_removes_a_stale_socket() {
    let (_t, dir) = tmp();
    let sock = dir.join("ch.sock");
    let e = cloud_hypervisor::stop(&sock, Duration::from_secs(1)).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("no Cloud Hypervisor is running"), "{msg}");
    assert!(msg.contains("no API socket at"), "{msg}");

    // A socket file whose listener is gone: connection refused.
    drop(UnixListener::bind(&sock).unwrap());
    std::fs::write(pid_file(&sock), "999999\n").unwrap();
    assert!(sock.exists());
    let e = cloud_hypervisor::stop(&sock, Duration::from_secs(1)).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("connection refused"), "{msg}");
    assert!(msg.contains("removed the stale socket"), "{msg}");
    assert!(!sock.exists() && !pid_file(&sock).exists());
}

/// A stand-in VMM process whose pid `stop` watches.
fn fake_vmm(sock: &Utf8Path) -> Arc<Mutex<Child>> {
    let child = Command::new("sleep").arg("60").spawn().unwrap();
    std::fs::write(pid_file(sock), format!("{}\n", child.id())).unwrap();
    Arc::new(Mutex::new(child))
}

#[test]
fn stop_presses_the_power_button_and_waits_for_the_vmm_to_exit() {
    let (_t, dir) = tmp();
    let sock = dir.join("ch.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let vmm = fake_vmm(&sock);
    let v = vmm.clone();
    // The guest powers off when the button is pressed; the VMM exits.
    let (h, seen) = serve(l, vec!["HTTP/1.1 204 No Content\r\n\r\n"], move |req| {
        if req.contains("vm.power-button") {
            v.lock().unwrap().kill().unwrap();
        }
    });
    let start = Instant::now();
    let how = cloud_hypervisor::stop(&sock, Duration::from_secs(20)).unwrap();
    assert_eq!(how, Stopped::PowerButton);
    assert!(start.elapsed() < Duration::from_secs(5));
    h.join().unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert!(!sock.exists() && !pid_file(&sock).exists());
    vmm.lock().unwrap().wait().unwrap();
}

#[test]
fn stop_shuts_the_vmm_down_when_the_guest_ignores_the_button() {
    let (_t, dir) = tmp();
    let sock = dir.join("ch.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let vmm = fake_vmm(&sock);
    let v = vmm.clone();
    let (h, seen) = serve(
        l,
        vec![
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
        ],
        move |req| {
            if req.contains("vmm.shutdown") {
                v.lock().unwrap().kill().unwrap();
            }
        },
    );
    let start = Instant::now();
    let how = cloud_hypervisor::stop(&sock, Duration::from_secs(1)).unwrap();
    assert_eq!(how, Stopped::VmmShutdown);
    assert!(start.elapsed() >= Duration::from_secs(1));
    h.join().unwrap();
    let seen = seen.lock().unwrap();
    assert!(
        seen[0].starts_with("PUT /api/v1/vm.power-button "),
        "{seen:?}"
    );
    assert!(seen[1].starts_with("PUT /api/v1/vmm.shutdown "), "{seen:?}");
    vmm.lock().unwrap().wait().unwrap();
}

#[test]
fn stop_shuts_the_vmm_down_when_the_power_button_is_refused() {
    let (_t, dir) = tmp();
    let sock = dir.join("ch.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let vmm = fake_vmm(&sock);
    let v = vmm.clone();
    // No VM booted: Cloud Hypervisor answers the button with an error.
    let (h, seen) = serve(
        l,
        vec![
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 18\r\n\r\n\"VM is not booted\"",
            "HTTP/1.1 204 No Content\r\n\r\n",
        ],
        move |req| {
            if req.contains("vmm.shutdown") {
                v.lock().unwrap().kill().unwrap();
            }
        },
    );
    let start = Instant::now();
    let how = cloud_hypervisor::stop(&sock, Duration::from_secs(20)).unwrap();
    assert_eq!(how, Stopped::VmmShutdown);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "did not wait the grace"
    );
    h.join().unwrap();
    let seen = seen.lock().unwrap();
    assert!(seen[1].starts_with("PUT /api/v1/vmm.shutdown "), "{seen:?}");
    assert!(!sock.exists() && !pid_file(&sock).exists());
    vmm.lock().unwrap().wait().unwrap();
}

#[test]
fn kvm_check_names_the_device_and_the_alternative() {
    let (_t, dir) = tmp();
    let e = cloud_hypervisor::check_kvm(&dir.join("kvm")).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("needs KVM") && msg.contains("run-qemu --accel tcg"),
        "{msg}"
    );
    // Any read-write character device passes; /dev/null stands in for it.
    cloud_hypervisor::check_kvm(Utf8Path::new("/dev/null")).unwrap();
}

#[test]
fn the_command_line_is_the_readmes() {
    let o = cloud_hypervisor::Options {
        binary: "cloud-hypervisor".into(),
        cpus: 8,
        memory_mib: 1024,
        kernel: "vmlinux".into(),
        initramfs: "initramfs.cpio.gz".into(),
        cmdline: "console=ttyS0 nozswap".into(),
        net: Some(Default::default()),
        api_socket: "/b/ch.sock".into(),
    };
    assert_eq!(
        cloud_hypervisor::args(&o).join(" "),
        "--api-socket /b/ch.sock --console off --serial tty --cpus boot=8 --memory size=1024M \
         --kernel vmlinux --initramfs initramfs.cpio.gz --cmdline console=ttyS0 nozswap \
         --net tap=tap-vm,mac=00:01:02:03:04:0b,ip=,mask="
    );
}
