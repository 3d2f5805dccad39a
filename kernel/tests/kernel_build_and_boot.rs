//! The real thing: Debian's kernel source tarball, kernel.config, a full
//! Kbuild with O=, then a TCG boot of the bzImage with a tiny busybox
//! initramfs that loads the modules we built.
//!
//! Slow the first time (~8-10 minutes on 2 cores). The unpacked tree and
//! the O= directory are cached under `target/kernel-test/`, keyed by
//! kernel.config and the tarball, so later runs are incremental.

use std::time::{Duration, Instant};

use camino::{Utf8Path, Utf8PathBuf};
use initramfs::{Compression, PackOptions};
use kernel::{BuildOptions, Source};
use rootfs::manifest::Manifest;
use testmirror::kernel_cache;
use testmirror::tools::require_tools;

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# CONFIG_DEVTMPFS_MOUNT applies to a disk root only: an initramfs (Tiny
# Core's too) mounts devtmpfs itself.
grep -q ' /dev devtmpfs ' /proc/mounts || mount -t devtmpfs devtmpfs /dev
grep -q ' /dev devtmpfs ' /proc/mounts && [ -c /dev/null ] && [ -c /dev/ttyS0 ] && echo DEVTMPFS-OK
echo "KERNEL-BOOT-OK $(uname -r)"
modprobe loop && grep -q '^loop ' /proc/modules && [ -b /dev/loop0 ] && echo MODPROBE-OK loop
insmod "/lib/modules/$(uname -r)/kernel/drivers/virtio/virtio_balloon.ko" \
  && grep -q '^virtio_balloon ' /proc/modules && echo INSMOD-OK virtio_balloon
[ -c /dev/vsock ] && echo VSOCK-OK
# The VMM adds a virtio-rng device (entropy, virtio id 4) on PCI or MMIO.
for d in /sys/bus/virtio/devices/*; do
  [ "$(cat "$d/device" 2>/dev/null)" = 0x0004 ] && echo VIRTIO-RNG-OK
done
grep -q 'virtio_mmio.device=' /proc/cmdline && echo MMIO-CMDLINE-DEVICE
echo INIT-DONE
# Without ACPI (microvm,acpi=off) there is no power-off: reset instead,
# which -no-reboot turns into a QEMU exit too.
grep -q guest_test.reboot /proc/cmdline && reboot -f
poweroff -f
"#;

/// Boots under QEMU/TCG with the serial console on stdout; fails (with
/// the console so far) if QEMU has not exited after `timeout`.
fn boot(machine: &[&str], kernel: &Utf8Path, initrd: &Utf8Path, append: &str) -> String {
    use std::io::Read as _;
    use std::process::{Command, Stdio};
    let timeout = Duration::from_secs(120);
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(machine)
        .args(["-accel", "tcg", "-m", "512", "-nographic", "-no-reboot"])
        .args([
            "-kernel",
            kernel.as_str(),
            "-initrd",
            initrd.as_str(),
            "-append",
            append,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot start qemu-system-x86_64");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let console = reader.join().unwrap();
            assert!(
                status.success(),
                "qemu {machine:?} exited with {status}:\n{console}"
            );
            eprintln!("booted {machine:?} in {:.1?}", start.elapsed());
            return console;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let console = reader.join().unwrap();
            panic!("qemu {machine:?} did not exit within {timeout:?}; console:\n{console}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_markers(console: &str, markers: &[String]) {
    for marker in markers {
        assert!(
            console.contains(marker.as_str()),
            "no `{marker}` on the console:\n{console}"
        );
    }
    assert!(!console.contains("Kernel panic"), "{console}");
}

/// No PT_INTERP program header: runs without a dynamic loader (ELF64 LE).
fn is_static(path: &Utf8Path) -> bool {
    let b = std::fs::read(path).unwrap();
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) != 3
    })
}

#[test]
fn kernel_build_and_boot() {
    let tools = [
        ("make", "make"),
        ("gcc", "gcc"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("/bin/busybox", "busybox-static"),
        ("/usr/src/linux-source-*.tar.xz", "linux-source-6.1"),
    ];
    let Some(found) = require_tools(&tools) else {
        return;
    };
    let found: Vec<Utf8PathBuf> = found
        .into_iter()
        .map(|p| Utf8PathBuf::from_path_buf(p).unwrap())
        .collect();
    let (busybox, tarball) = (found[3].clone(), found[4].clone());
    assert!(
        is_static(&busybox),
        "{busybox} is dynamically linked: apt-get install busybox-static"
    );

    let kernel_config = kernel_cache::workspace().join("kernel.config");
    let cache = kernel_cache::cache_root();
    let dir = kernel_cache::keyed_dir(&kernel_config, &tarball).unwrap();

    // The tarball is unpacked once into the cache, shared by all keys.
    let t = Instant::now();
    let src = Source::locate(&tarball, &cache).unwrap();
    eprintln!(
        "source {} ({:?}) in {:.1?}",
        src.tree(),
        src.origin(),
        t.elapsed()
    );

    let opts = BuildOptions {
        out_dir: Some(dir.join("obj")),
        jobs: BuildOptions::jobs_from_env().unwrap(),
        ..BuildOptions::new(&dir)
    };
    let report = kernel::configure(&src, &opts, &kernel_config).unwrap();
    assert!(
        report.issues.is_empty(),
        "Kconfig did not keep kernel.config:\n{}",
        report.warnings().join("\n")
    );
    assert_eq!(kernel::initramfs_source(&report.config).unwrap(), None);

    let out = kernel::build(&src, &opts).unwrap();
    assert!(out.release.ends_with("-guest"), "{}", out.release);
    let modules_dir = out
        .modules_dir
        .clone()
        .expect("kernel.config enables modules");

    // A tiny initramfs: static busybox, our /init, our modules.
    let tmp = tempfile::tempdir().unwrap();
    let tmp = Utf8Path::from_path(tmp.path()).unwrap().to_owned();
    let root = tmp.join("root");
    for d in ["bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    std::fs::write(root.join("init"), INIT).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut manifest = Manifest::new();
    let mods = kernel::install_modules(&modules_dir, &root, &mut manifest).unwrap();
    assert_eq!(mods.releases, vec![out.release.clone()]);
    let initrd = tmp.join("initramfs.cpio.gz");
    initramfs::pack(
        &root,
        &manifest,
        &initrd,
        &PackOptions::new(Compression::Gzip { level: 6 }),
    )
    .unwrap();

    let common: Vec<String> = [
        format!("KERNEL-BOOT-OK {}", out.release),
        "DEVTMPFS-OK".to_string(),
        "MODPROBE-OK loop".to_string(),
        "INSMOD-OK virtio_balloon".to_string(),
        "VSOCK-OK".to_string(),
        "VIRTIO-RNG-OK".to_string(),
        "INIT-DONE".to_string(),
    ]
    .into();

    // q35: virtio over PCI, ACPI power-off ends QEMU.
    let q35 = [
        "-M",
        "q35",
        "-nodefaults",
        "-serial",
        "stdio",
        "-device",
        "virtio-rng-pci",
    ];
    let console = boot(&q35, &out.bz_image, &initrd, "console=ttyS0 panic=-1 quiet");
    assert_markers(&console, &common);

    // The same with the uncompressed vmlinux: QEMU loads an ELF kernel only
    // through its PVH entry point (CONFIG_PVH), as Cloud Hypervisor does.
    let console = boot(&q35, &out.vmlinux, &initrd, "console=ttyS0 panic=-1 quiet");
    assert_markers(&console, &common);

    // microvm without ACPI: virtio-mmio devices that QEMU describes on the
    // kernel command line (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES), MP tables.
    // TCG gives microvm no clock to calibrate the TSC against, so the
    // frequency is given (KVM users do not need it: kvm-clock).
    let microvm = ["-M", "microvm,acpi=off", "-device", "virtio-rng-device"];
    let append = "console=ttyS0 panic=-1 quiet tsc_early_khz=2000000 reboot=t guest_test.reboot";
    let console = boot(&microvm, &out.bz_image, &initrd, append);
    let mut markers = common.clone();
    markers.push("MMIO-CMDLINE-DEVICE".to_string());
    assert_markers(&console, &markers);
}
