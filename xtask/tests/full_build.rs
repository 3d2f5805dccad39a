//! `full-build` for real: Debian's kernel source, kernel.config with the
//! initramfs embedded (CONFIG_INITRAMFS_SOURCE), progs, the test mirror,
//! then the bzImage booted under QEMU/TCG; and `SKIP_KERNEL=1 rebuild`
//! after an edit.
//!
//! The unpacked source and the O= tree are shared with the kernel crate's
//! build-and-boot test (testmirror::kernel_cache), so whichever runs second
//! only relinks; the first run here takes a full kernel build (~8 min).

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use camino::Utf8PathBuf;
use initramfs::{Compression, PackOptions};
use kernel::Source;
use rootfs::manifest::Manifest;
use testmirror::kernel_cache;
use testmirror::mirror::{self, Layout};
use testmirror::server::Server;
use testmirror::tools::require_tools;

mod common;
use common::Sandbox;

const RCS: &str = r#"#!/bin/sh
# linux-guest full-build test: report, then power off with tinyreboot.
/bin/mount -t proc proc /proc
echo "LG-FULL kernel $(uname -r)"
[ -f "/lib/modules/$(uname -r)/modules.dep" ] && echo "LG-FULL modules.dep"
ls /lib/modules | grep -q tinycore || echo "LG-FULL no TC modules"
/sbin/modprobe loop && grep -q '^loop ' /proc/modules && echo "LG-FULL modprobe loop"
[ -e /lg-external-initrd ] && echo "LG-FULL external initrd too"
[ -x /usr/local/bin/tinyreboot ] && echo "LG-FULL tinyreboot"
echo "LG-FULL home_tc $(stat -c %u:%g /home/tc)"
echo "LG-FULL ready"
/usr/local/bin/tinyreboot || /sbin/poweroff -f
"#;

#[test]
fn full_build_embeds_the_initramfs_and_boots() {
    let tools = [
        ("make", "make"),
        ("gcc", "gcc"),
        ("mksquashfs", "squashfs-tools"),
        ("busybox", "busybox-static"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("/usr/src/linux-source-*.tar.xz", "linux-source-6.1"),
    ];
    let Some(found) = require_tools(&tools) else {
        return;
    };
    let found: Vec<Utf8PathBuf> = found
        .into_iter()
        .map(|p| Utf8PathBuf::from_path_buf(p).unwrap())
        .collect();
    let tarball = found[5].clone();

    let tmp = tempfile::tempdir().unwrap();
    let dir = Utf8PathBuf::from_path_buf(tmp.path().to_owned()).unwrap();
    let build = dir.join("build");
    let image = build.join("initramfs.cpio.gz");

    // kernel.config, with our initramfs embedded.
    let kernel_config = kernel_cache::workspace().join("kernel.config");
    let shared = kernel_cache::keyed_dir(&kernel_config, &tarball).unwrap();
    let src = Source::locate(&tarball, &kernel_cache::cache_root()).unwrap();
    let embed_config = dir.join("kernel.config");
    let mut text = std::fs::read_to_string(&kernel_config).unwrap();
    text.push_str(&format!("CONFIG_INITRAMFS_SOURCE=\"{image}\"\n"));
    std::fs::write(&embed_config, text).unwrap();

    let built = mirror::build(&dir.join("mirror"), &Layout::tc16_x86_64()).unwrap();
    let server = Server::start(built.root.as_std_path()).unwrap();
    let rcs = dir.join("rcS-full-build-test");
    std::fs::write(&rcs, RCS).unwrap();
    std::fs::set_permissions(&rcs, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.join("guest.toml");
    std::fs::write(&config, format!("[guest]\nrcs = \"{rcs}\"\n")).unwrap();

    let sandbox = Sandbox {
        config,
        build: build.clone(),
        home: dir.join("home"),
    };
    let xtask = |args: &[&str], env: &[(&str, &str)]| sandbox.run(args, env);

    let url = server.url();
    let (out, took) = xtask(
        &[
            "full-build",
            "--linux",
            src.tree().as_str(),
            "--kernel-out",
            shared.join("obj").as_str(),
            "--kernel-config",
            embed_config.as_str(),
            "--mirror",
            &url,
            "-p",
            "tcdemo",
            "--no-progress",
        ],
        &[],
    );
    eprintln!("full-build took {took:.1?}:\n{out}");
    for f in ["vmlinux", "bzImage", "initramfs.cpio.gz"] {
        assert!(build.join(f).is_file(), "{f} missing after full-build");
    }
    assert!(out.contains("embedded in the kernel"), "{out}");
    assert!(
        !out.contains("dropped by Kconfig") && !out.contains("Kconfig forced"),
        "Kconfig did not keep kernel.config:\n{out}"
    );

    // Booted without our initramfs as -initrd: the guest's rcS can only
    // come from the one embedded in bzImage. A second, tiny initrd shows
    // the two are layered as the kernel documents.
    let extra = dir.join("extra");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(extra.join("lg-external-initrd"), "x\n").unwrap();
    let extra_img = dir.join("extra.cpio");
    initramfs::pack(
        &extra,
        &Manifest::new(),
        &extra_img,
        &PackOptions::new(Compression::None),
    )
    .unwrap();
    let boot = testmirror::qemu::boot_tcg(
        &build.join("bzImage"),
        &extra_img,
        "console=ttyS0 panic=-1 quiet",
        Duration::from_secs(120),
    )
    .unwrap();
    eprintln!("booted to ready in {:.1?}", boot.elapsed);
    let c = &boot.console;
    for want in [
        "-guest",
        "LG-FULL modules.dep",
        "LG-FULL no TC modules",
        "LG-FULL modprobe loop",
        "LG-FULL external initrd too",
        "LG-FULL tinyreboot",
        "LG-FULL home_tc 1001:50",
        "LG-FULL ready",
    ] {
        assert!(c.contains(want), "`{want}` missing from the console:\n{c}");
    }

    // The everyday loop: edit tc_root, repack without the kernel.
    std::fs::write(build.join("tc_root/etc/motd"), "edited\n").unwrap();
    let (out, took) = xtask(&["rebuild"], &[("SKIP_KERNEL", "1")]);
    eprintln!("SKIP_KERNEL=1 rebuild after an edit took {took:.2?}");
    assert!(!out.contains("up to date"), "{out}");
    let listing = initramfs::inspect::list(&image).unwrap();
    assert!(listing.files.iter().any(|f| f.path.ends_with("etc/motd")));
    let (out, _) = xtask(&["rebuild", "--skip-kernel"], &[]);
    assert!(out.contains("up to date"), "{out}");

    // A plain rebuild remembers the kernel source and O= of the last build.
    let (out, took) = xtask(&["rebuild"], &[]);
    eprintln!("rebuild with nothing changed took {took:.1?}");
    assert!(out.contains("from the last build"), "{out}");
    assert!(out.contains(shared.join("obj").as_str()), "{out}");
    assert!(out.contains("up to date"), "{out}");
}
