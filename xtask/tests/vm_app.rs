//! `cargo xtask vm-app fdisk` for real: the app is built from a tc_root set
//! up from the test mirror, then
//! - run under QEMU/TCG with the project kernel on a disk image made by
//!   `sfdisk`: its `fdisk -l` must list the partitions the host's
//!   `sfdisk -d` sees, on stdout, exit 0, and leave the image unchanged;
//!   fdisk's own failure must become the app's exit status;
//! - run with `--vmm akaros` against a fake `vmrunkernel` that records its
//!   argv, working directory and files: exactly the old script's command;
//! - run on a missing disk: an error naming it, and no VMM started.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use camino::{Utf8Path, Utf8PathBuf};
use testmirror::mirror::{self, Layout};
use testmirror::server::Server;
use testmirror::tools::require_tool;

mod common;
use common::{free_port, Sandbox};

struct Setup {
    dir: Utf8PathBuf,
    sandbox: Sandbox,
    // Keeps the mirror up while the tests run.
    _server: Server,
}

/// One tc_root for every test of this file (setup-tinycore from the test
/// mirror); `None` when a tool is missing and skipping is allowed.
fn setup() -> Option<&'static Setup> {
    static SETUP: OnceLock<Option<Setup>> = OnceLock::new();
    SETUP
        .get_or_init(|| {
            for (tool, pkg) in [
                ("mksquashfs", "squashfs-tools"),
                ("busybox", "busybox-static"),
            ] {
                require_tool(tool, pkg)?;
            }
            let dir = Utf8PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("vm_app");
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let built = mirror::build(&dir.join("mirror"), &Layout::tc16_x86_64()).unwrap();
            let server = Server::start(built.root.as_std_path()).unwrap();
            let config = dir.join("guest.toml");
            std::fs::write(
                &config,
                format!("[tinycore]\nmirrors = [\"{}\"]\n", server.url()),
            )
            .unwrap();
            let sandbox = Sandbox {
                config,
                build: dir.join("build"),
                home: dir.join("home"),
            };
            sandbox.run(&["setup-tinycore", "--no-progress"], &[]);
            Some(Setup {
                dir,
                sandbox,
                _server: server,
            })
        })
        .as_ref()
}

/// `vm-app NAME ARGS`, serialised (the tests share the build directory);
/// copies the app to `dst` and returns its initramfs.
fn build_app(s: &Setup, name: &str, args: &[&str], dst: &Utf8Path) -> Vec<u8> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut all = vec!["vm-app", name];
    all.extend_from_slice(args);
    let t = Instant::now();
    let (out, _) = s.sandbox.run(&all, &[]);
    eprintln!("vm-app {name} {args:?} took {:.1?}:\n{out}", t.elapsed());
    std::fs::copy(s.sandbox.build.join("vm-apps").join(name), dst).unwrap();
    std::fs::read(s.sandbox.build.join(format!("vm-apps/{name}.cpio.gz"))).unwrap()
}

fn script(path: &Utf8Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn run_app(
    app: &Utf8Path,
    args: &[&str],
    path_prefix: Option<&Utf8Path>,
    cwd: &Utf8Path,
) -> Output {
    let mut path = std::env::var("PATH").unwrap();
    if let Some(p) = path_prefix {
        path = format!("{p}:{path}");
    }
    Command::new(app)
        .args(args)
        .env("PATH", path)
        .env("TMPDIR", cwd)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A 64 MiB image with a DOS label: a bootable Linux partition and a FAT
/// one, made by sfdisk.
fn make_disk(path: &Utf8Path) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(64 << 20).unwrap();
    let mut child = Command::new("sfdisk")
        .arg("--quiet")
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\nstart=2048, size=20480, type=83, bootable\nstart=22528, size=40960, type=c\n")
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed");
}

/// (start, sectors, type id) of each partition, from `sfdisk -d`.
fn sfdisk_partitions(path: &Utf8Path) -> Vec<(u64, u64, String)> {
    let out = Command::new("sfdisk").arg("-d").arg(path).output().unwrap();
    assert!(out.status.success());
    text(&out.stdout)
        .lines()
        .filter(|l| l.contains(": start="))
        .map(|l| {
            let field = |k: &str| {
                l.split(',')
                    .find_map(|f| {
                        f.trim()
                            .split_once('=')
                            .filter(|(n, _)| n.trim().ends_with(k))
                            .map(|(_, v)| v.trim().to_string())
                    })
                    .unwrap()
            };
            (
                field("start").parse().unwrap(),
                field("size").parse().unwrap(),
                field("type"),
            )
        })
        .collect()
}

/// The same from busybox fdisk -l: `/dev/vdaN [*] StartCHS EndCHS
/// StartLBA EndLBA Sectors Size Id Type`.
fn guest_partitions(listing: &str) -> Vec<(u64, u64, String)> {
    listing
        .lines()
        .filter(|l| l.starts_with("/dev/vda"))
        .map(|l| {
            let t: Vec<&str> = l.split_whitespace().filter(|w| *w != "*").collect();
            (
                t[3].parse().unwrap(),
                t[5].parse().unwrap(),
                t[7].to_string(),
            )
        })
        .collect()
}

#[test]
fn fdisk_lists_partitions_under_qemu_tcg() {
    let Some(s) = setup() else { return };
    for (tool, pkg) in [
        ("sfdisk", "fdisk"),
        ("qemu-system-x86_64", "qemu-system-x86"),
    ] {
        let Some(_) = require_tool(tool, pkg) else {
            return;
        };
    }
    let Some(kernel) = common::project_kernel() else {
        return;
    };
    let dir = s.dir.join("qemu");
    std::fs::create_dir_all(&dir).unwrap();
    let app = dir.join("fdisk");
    build_app(s, "fdisk", &["--kernel", kernel.bz_image.as_str()], &app);

    let disk = dir.join("disk.img");
    make_disk(&disk);
    let before = std::fs::read(&disk).unwrap();
    let want = sfdisk_partitions(&disk);
    assert_eq!(want.len(), 2, "{want:?}");

    let t = Instant::now();
    let out = run_app(&app, &["--accel", "tcg", "-l", "disk.img"], None, &dir);
    let took = t.elapsed();
    let stdout = text(&out.stdout);
    eprintln!(
        "fdisk -l under TCG took {took:.1?}:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    assert!(out.status.success(), "status {:?}", out.status);
    assert_eq!(guest_partitions(&stdout), want, "{stdout}");
    // Only fdisk talks on stdout: no kernel messages, no rcS chatter, no \r.
    assert!(stdout.contains("Disk /dev/vda: 64 M"), "{stdout}");
    for noise in ["Linux version", "rcS-fdisk", "\r"] {
        assert!(!stdout.contains(noise), "{noise:?} on stdout:\n{stdout}");
    }
    assert!(
        std::fs::read(&disk).unwrap() == before,
        "fdisk -l changed the image"
    );

    // fdisk's own failure is the app's exit status (busybox: 1 on a bad
    // option, with its usage).
    let out = run_app(&app, &["--accel", "tcg", "-Z", "disk.img"], None, &dir);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).to_lowercase().contains("usage"),
        "{}",
        text(&out.stdout)
    );
    // The private directories are gone.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("vm-app-"))
        .collect();
    assert!(left.is_empty(), "private directories left behind: {left:?}");
}

#[test]
fn akaros_runs_vmrunkernel_like_the_old_script() {
    let Some(s) = setup() else { return };
    let dir = s.dir.join("akaros");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let app = dir.join("fdisk");
    let image = build_app(s, "fdisk", &["--no-kernel"], &app);
    let listing = initramfs::inspect::list_bytes(&image).unwrap();
    for f in ["etc/init.d/rcS", "usr/local/bin/tinyreboot", "bin/busybox"] {
        assert!(
            listing
                .files
                .iter()
                .any(|e| e.path.trim_start_matches('/') == f),
            "{f} not in the app's initramfs"
        );
    }

    let rec = dir.join("rec");
    script(
        &bin.join("vmrunkernel"),
        &format!(
            "rec={rec}\nmkdir -p $rec\nprintf '%s\\n' \"$@\" > $rec/argv\npwd > $rec/cwd\n\
             cp guest_cmdline initramfs $rec/\n[ -e vnet_opts ] && cp vnet_opts $rec/\nexit 0\n"
        ),
    );
    std::fs::write(dir.join("disk.img"), b"not really a disk").unwrap();
    let disk = std::fs::canonicalize(dir.join("disk.img")).unwrap();

    let out = run_app(
        &app,
        &["--vmm", "akaros", "-l", "disk.img"],
        Some(&bin),
        &dir,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let argv = std::fs::read_to_string(rec.join("argv")).unwrap();
    assert_eq!(
        argv.lines().collect::<Vec<_>>(),
        [
            "-k",
            "guest_cmdline",
            "-m",
            "0x4000000",
            "-f",
            disk.to_str().unwrap(),
            "-s",
            "/lib/vmlinux",
            "-i",
            "initramfs"
        ]
    );
    assert_eq!(
        std::fs::read_to_string(rec.join("guest_cmdline")).unwrap(),
        "console=none\nlapic=notscdeadline\nnortc\nnozswap\nfdisk_args=\\040-l\n"
    );
    assert!(!rec.join("vnet_opts").exists());
    assert!(
        std::fs::read(rec.join("initramfs")).unwrap() == image,
        "the extracted initramfs differs"
    );
    let cwd = std::fs::read_to_string(rec.join("cwd")).unwrap();
    let cwd = Utf8Path::new(cwd.trim());
    assert!(
        cwd.starts_with(&dir) && cwd.file_name().unwrap().starts_with("vm-app-fdisk."),
        "{cwd}"
    );
    assert!(!cwd.exists(), "the private directory {cwd} was not removed");

    // Several arguments, --mem and --kernel; vmrunkernel's status is ours.
    script(
        &bin.join("vmrunkernel"),
        &format!("printf '%s\\n' \"$@\" > {rec}/argv\ncp guest_cmdline {rec}/\nexit 3\n"),
    );
    let out = run_app(
        &app,
        &[
            "--vmm=akaros",
            "--mem",
            "128",
            "--kernel",
            "/k/vmlinux",
            "-u",
            "-c dos",
            "disk.img",
        ],
        Some(&bin),
        &dir,
    );
    assert_eq!(out.status.code(), Some(3));
    let argv = std::fs::read_to_string(rec.join("argv")).unwrap();
    assert!(
        argv.contains("-m\n0x8000000\n") && argv.contains("-s\n/k/vmlinux\n"),
        "{argv}"
    );
    assert!(std::fs::read_to_string(rec.join("guest_cmdline"))
        .unwrap()
        .ends_with("fdisk_args=\\040-u\\040-c\\040dos\n"));

    // A missing disk: an error naming it, before any VMM runs.
    std::fs::remove_file(rec.join("argv")).unwrap();
    for vmm in ["akaros", "qemu"] {
        script(
            &bin.join("qemu-system-x86_64"),
            &format!("touch {rec}/argv\n"),
        );
        let out = run_app(&app, &["--vmm", vmm, "-l", "missing.img"], Some(&bin), &dir);
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert!(err.contains("missing.img"), "{err}");
        assert!(
            !rec.join("argv").exists(),
            "a VMM was started for a missing disk"
        );
    }
    // The QEMU side of an app without a kernel says what to do.
    let out = run_app(&app, &["-l", "disk.img"], Some(&bin), &dir);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--kernel"),
        "{}",
        text(&out.stderr)
    );

    // --remove slims the app's image, not tc_root.
    let slim = build_app(
        s,
        "fdisk",
        &["--no-kernel", "--remove", "usr/bin"],
        &dir.join("fdisk-slim"),
    );
    let slim = initramfs::inspect::list_bytes(&slim).unwrap();
    assert!(!slim.files.iter().any(|e| e.path.starts_with("usr/bin/")));
    assert!(slim.files.iter().any(|e| e.path == "etc/init.d/rcS"));
    assert!(s.sandbox.build.join("tc_root/usr/bin").is_dir());

    // Ctrl-C or SIGTERM while the VMM runs: the VMM is told to stop, the
    // private directory goes, the status says which signal.
    script(&bin.join("qemu-system-x86_64"), "exec sleep 60\n");
    for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let t = Instant::now();
        let mut child = Command::new(&app)
            .args(["--accel", "tcg", "--kernel", "disk.img", "-l", "disk.img"])
            .env("PATH", format!("{bin}:{}", std::env::var("PATH").unwrap()))
            .env("TMPDIR", &dir)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let private = loop {
            let found = std::fs::read_dir(&dir)
                .unwrap()
                .filter_map(|e| e.ok())
                .find(|e| e.file_name().to_string_lossy().starts_with("vm-app-fdisk."));
            if let Some(e) = found {
                if e.path().join("guest_cmdline").exists() {
                    break e.path();
                }
            }
            assert!(t.elapsed().as_secs() < 20, "the app never started its VMM");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        std::thread::sleep(std::time::Duration::from_millis(200));
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "after signal {sig}");
        assert!(
            !private.exists(),
            "{} left behind after signal {sig}",
            private.display()
        );
        assert!(
            t.elapsed().as_secs() < 10,
            "the app took {:?} to stop",
            t.elapsed()
        );
    }
}

fn sha(path: &Utf8Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// Reads `r` line by line into a channel (and a shared transcript).
fn lines_of(
    r: impl std::io::Read + Send + 'static,
) -> (
    std::sync::mpsc::Receiver<String>,
    std::sync::Arc<Mutex<String>>,
) {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    let all = std::sync::Arc::new(Mutex::new(String::new()));
    let all2 = all.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            all2.lock().unwrap().push_str(&format!("{line}\n"));
            let _ = tx.send(line);
        }
    });
    (rx, all)
}

#[test]
fn mount_fs_serves_a_partition_over_9p_under_qemu_tcg() {
    use std::io::Write;
    use std::time::Duration;
    let Some(s) = setup() else { return };
    for (tool, pkg) in [
        ("sfdisk", "fdisk"),
        ("mkfs.ext4", "e2fsprogs"),
        ("qemu-system-x86_64", "qemu-system-x86"),
    ] {
        let Some(_) = require_tool(tool, pkg) else {
            return;
        };
    }
    let Some(kernel) = common::project_kernel() else {
        return;
    };
    let dir = s.dir.join("mount-fs");
    std::fs::create_dir_all(dir.join("mnt")).unwrap();
    let app = dir.join("mount-fs");
    let image = build_app(s, "mount-fs", &["--kernel", kernel.bz_image.as_str()], &app);
    let listing = initramfs::inspect::list_bytes(&image).unwrap();
    assert!(listing
        .files
        .iter()
        .any(|e| e.path.trim_start_matches('/') == "usr/local/bin/ninep-server"));

    // Partition 1 of a DOS-labelled disk holds an ext4 with known files.
    let files = dir.join("files");
    std::fs::create_dir_all(files.join("sub")).unwrap();
    std::fs::write(files.join("hello.txt"), "hello from the guest\n").unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 253) as u8).collect();
    std::fs::write(files.join("sub/data.bin"), &data).unwrap();
    let disk = dir.join("disk.img");
    make_disk(&disk);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "offset=1048576", "-d"])
        .arg(&files)
        .arg(&disk)
        .arg("10M")
        .output()
        .unwrap();
    assert!(out.status.success(), "mkfs.ext4: {}", text(&out.stderr));
    let before = sha(&disk);

    let port = free_port();
    let t = Instant::now();
    let port_s = port.to_string();
    let mut child = Command::new(&app)
        .args([
            "--accel",
            "tcg",
            "--host-port",
            &port_s,
            "--no-mount",
            "disk.img",
            "1",
            "mnt",
            "-r",
        ])
        .env("TMPDIR", &dir)
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (_out_rx, stdout) = lines_of(child.stdout.take().unwrap());
    let (err_rx, stderr) = lines_of(child.stderr.take().unwrap());
    let ready = loop {
        match err_rx.recv_timeout(Duration::from_secs(240)) {
            Ok(l) if l.contains("is served by 9p on") => break true,
            Ok(_) => continue,
            Err(_) => break false,
        }
    };
    assert!(
        ready,
        "mount-fs never served:\nstdout:\n{}\nstderr:\n{}",
        stdout.lock().unwrap(),
        stderr.lock().unwrap()
    );
    eprintln!("mount-fs served after {:.1?}", t.elapsed());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut c = vmapp::ninep::Client::connect(addr, Duration::from_secs(10)).unwrap();
    assert_eq!(c.list_dir("").unwrap(), ["hello.txt", "lost+found", "sub"]);
    assert_eq!(c.read_file("hello.txt").unwrap(), b"hello from the guest\n");
    assert!(
        c.read_file("sub/data.bin").unwrap() == data,
        "sub/data.bin differs"
    );
    assert!(stderr
        .lock()
        .unwrap()
        .contains("mount -t 9p -o trans=tcp,port="));
    drop(c);

    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"SHUTDOWN\n")
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "mount-fs did not stop after SHUTDOWN"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(200));
    let out = stdout.lock().unwrap().clone();
    assert!(
        status.success(),
        "{status:?}\nstdout:\n{out}\nstderr:\n{}",
        stderr.lock().unwrap()
    );
    assert!(out.contains("rcS-mount-fs: unmounted /dev/vda1"), "{out}");
    assert!(
        sha(&disk) == before,
        "a read-only session changed the image"
    );

    // Ctrl-C (SIGINT to the app alone: QEMU is in its own process group)
    // also shuts the guest down cleanly; the status says SIGINT.
    let mut child = Command::new(&app)
        .args([
            "--accel",
            "tcg",
            "--host-port",
            &port_s,
            "--no-mount",
            "disk.img",
            "1",
            "mnt",
            "-o",
            "ro",
        ])
        .env("TMPDIR", &dir)
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (_out_rx, stdout) = lines_of(child.stdout.take().unwrap());
    let (err_rx, stderr) = lines_of(child.stderr.take().unwrap());
    let ready = loop {
        match err_rx.recv_timeout(Duration::from_secs(240)) {
            Ok(l) if l.contains("is served by 9p on") => break true,
            Ok(_) => continue,
            Err(_) => break false,
        }
    };
    assert!(ready, "mount-fs never served:\n{}", stderr.lock().unwrap());
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let out = stdout.lock().unwrap().clone();
    assert_eq!(
        status.code(),
        Some(130),
        "stdout:\n{out}\nstderr:\n{}",
        stderr.lock().unwrap()
    );
    assert!(out.contains("rcS-mount-fs: unmounted /dev/vda1"), "{out}");
    assert!(
        sha(&disk) == before,
        "a read-only session changed the image"
    );
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("vm-app-"))
        .collect();
    assert!(left.is_empty(), "private directories left behind: {left:?}");
}

#[test]
fn mount_fs_on_akaros_runs_vmrunkernel_srv_and_mount() {
    use std::time::Duration;
    let Some(s) = setup() else { return };
    let dir = s.dir.join("mount-fs-akaros");
    let bin = dir.join("bin");
    let rec = dir.join("rec");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&rec).unwrap();
    let app = dir.join("mount-fs");
    build_app(s, "mount-fs", &["--no-kernel"], &app);
    // vmrunkernel stands for the guest: it records, then waits for
    // SHUTDOWN on its console.
    script(
        &bin.join("vmrunkernel"),
        &format!(
            "printf '%s\\n' \"$@\" > {rec}/argv\ncp guest_cmdline vnet_opts {rec}/\n\
             while read -r l; do [ \"$l\" = SHUTDOWN ] && echo got-shutdown >> {rec}/log && exit 0; done\nexit 9\n"
        ),
    );
    for tool in ["srv", "mount", "unmount"] {
        script(
            &bin.join(tool),
            &format!("echo \"{tool} $*\" >> {rec}/log\n"),
        );
    }
    std::fs::write(dir.join("disk.img"), b"disk").unwrap();
    let disk = std::fs::canonicalize(dir.join("disk.img")).unwrap();
    let mut child = Command::new(&app)
        .args(["--vmm", "akaros", "disk.img", "2", "/mnt/ext4", "-c"])
        .env("PATH", format!("{bin}:{}", std::env::var("PATH").unwrap()))
        .env("TMPDIR", &dir)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = rec.join("log");
    let t = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("mount ")
    {
        assert!(t.elapsed() < Duration::from_secs(20), "no mount after srv");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    let pid = child.id();
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        format!(
            "srv tcp!127.0.0.1!3333 ext4-{pid}\nmount -c /srv/ext4-{pid} /mnt/ext4\nunmount /mnt/ext4\ngot-shutdown\n"
        )
    );
    assert_eq!(
        std::fs::read_to_string(rec.join("argv"))
            .unwrap()
            .lines()
            .collect::<Vec<_>>(),
        [
            "-k",
            "guest_cmdline",
            "-n",
            "vnet_opts",
            "-m",
            "0x8000000",
            "-f",
            disk.to_str().unwrap(),
            "-s",
            "/lib/vmlinux",
            "-i",
            "initramfs"
        ]
    );
    assert_eq!(
        std::fs::read_to_string(rec.join("vnet_opts")).unwrap(),
        "port:tcp:3333:3332\n"
    );
    assert_eq!(
        std::fs::read_to_string(rec.join("guest_cmdline")).unwrap(),
        "console=none\nlapic=notscdeadline\nnortc\nnozswap\nmount_part_id=2\nmount_port_nr=3332\n"
    );
}
