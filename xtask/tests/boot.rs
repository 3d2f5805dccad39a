//! The whole user path, booted for real: `setup-tinycore` from the test
//! mirror with an rcS override, `rebuild --skip-kernel` (gzip and zstd),
//! then Debian's kernel under QEMU/TCG. The override reports what the guest
//! sees of the metadata a plain user could not put on disk.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use camino::Utf8PathBuf;
use testmirror::mirror::{self, Layout};
use testmirror::server::Server;
use testmirror::tools::require_tool;

mod common;
use common::Sandbox;

const RCS: &str = r#"#!/bin/sh
# linux-guest boot test: report, then power off.
/bin/mount -t proc proc /proc
echo "LG-BOOT start"
echo "LG-BOOT home_tc $(stat -c %u:%g /home/tc)"
echo "LG-BOOT suid $(stat -c %a:%u:%g /bin/busybox.suid)"
[ /bin/busybox.suid -ef /usr/bin/sudo ] && echo "LG-BOOT hardlink $(stat -c %h /usr/bin/sudo)"
echo "LG-BOOT sda $(stat -c '%F %t:%T %u:%g %a' /dev/sda)"
echo "LG-BOOT console $(stat -c '%F %t:%T' /dev/console)"
echo "LG-BOOT fifo $(stat -c '%F' /dev/initctl)"
echo "LG-BOOT tmp $(stat -c %a /tmp)"
/usr/local/bin/tcdemo
echo "LG-BOOT modules $(ls /lib/modules 2>/dev/null | grep -c tinycore)"
echo "LG-BOOT done"
/sbin/poweroff -f
"#;

#[test]
fn setup_rebuild_and_boot_with_gzip_and_zstd() {
    for (tool, pkg) in [
        ("mksquashfs", "squashfs-tools"),
        ("busybox", "busybox-static"),
        ("gcc", "gcc"),
    ] {
        let Some(_) = require_tool(tool, pkg) else {
            return;
        };
    }
    let Some(kernel) = testmirror::qemu::debian_kernel() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = Utf8PathBuf::from_path_buf(tmp.path().to_owned()).unwrap();
    let built = mirror::build(&dir.join("mirror"), &Layout::tc16_x86_64()).unwrap();
    let server = Server::start(built.root.as_std_path()).unwrap();

    let rcs = dir.join("rcS-boot-test");
    std::fs::write(&rcs, RCS).unwrap();
    std::fs::set_permissions(&rcs, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.join("guest.toml");
    std::fs::write(
        &config,
        format!(
            "[tinycore]\nmirrors = [\"{}\"]\npackages = [\"tcdemo\"]\n[guest]\nrcs = \"{rcs}\"\n",
            server.url()
        ),
    )
    .unwrap();
    let build = dir.join("build");
    let sandbox = Sandbox {
        config,
        build: build.clone(),
        home: dir.join("home"),
    };
    let xtask = |args: &[&str]| sandbox.run(args, &[]).0;
    xtask(&["setup-tinycore", "-p", "openssh", "--no-progress"]);
    assert!(
        std::fs::read_to_string(build.join("tc_root/etc/init.d/rcS"))
            .unwrap()
            .contains("LG-BOOT")
    );
    // TC's own modules are there after setup; rebuild --skip-kernel drops them.
    let tc_modules = std::fs::read_dir(build.join("tc_root/lib/modules"))
        .unwrap()
        .count();
    assert!(
        tc_modules > 0,
        "the test core should carry lib/modules/*tinycore*"
    );

    for compression in ["gzip", "zstd"] {
        let out = xtask(&["rebuild", "--skip-kernel", "--compression", compression]);
        let image = Utf8PathBuf::from(
            out.lines()
                .find(|l| l.contains("initramfs.cpio"))
                .unwrap()
                .trim(),
        );
        let boot = testmirror::qemu::boot_tcg(
            &kernel,
            &image,
            "console=ttyS0 panic=-1 quiet nozswap",
            Duration::from_secs(120),
        )
        .unwrap_or_else(|e| panic!("{compression}: {e:#}"));
        let c = &boot.console;
        eprintln!(
            "{compression}: booted to the marker in {:.1?}",
            boot.elapsed
        );
        for want in [
            "LG-BOOT home_tc 1001:50",
            "LG-BOOT suid 4755:0:0",
            "LG-BOOT hardlink 2",
            "LG-BOOT sda block special file 8:0 0:50 660",
            "LG-BOOT console character special file 5:1",
            "LG-BOOT fifo fifo",
            "LG-BOOT tmp 1777",
            "tcdemo: libtcdemo says hello",
            "LG-BOOT modules 0",
            "LG-BOOT done",
        ] {
            assert!(
                c.contains(want),
                "{compression}: `{want}` missing from the console:\n{c}"
            );
        }
    }
}
