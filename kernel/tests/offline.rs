//! Quick tests: config comparison, source location and tarball unpacking,
//! host prerequisites, modules in tc_root, configure with a fake Kbuild.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use camino::{Utf8Path, Utf8PathBuf};
use kernel::config::initramfs_source_in;
use kernel::prereq::{missing, missing_message, HostProbe};
use kernel::{
    compare_configs, configure, install_modules, parse_config, remove_tinycore_modules,
    BuildOptions, ConfigIssue, ConfigValue, Origin, Source,
};
use rootfs::manifest::{Entry, Kind, Manifest};

fn tempdir() -> (tempfile::TempDir, Utf8PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let p = Utf8PathBuf::from_path_buf(t.path().to_path_buf()).unwrap();
    (t, p)
}

fn write(path: &Utf8Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

// ---- config comparison -------------------------------------------------

#[test]
fn parses_set_and_unset_lines() {
    let c = parse_config(
        "# header comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x y\"\n\
         CONFIG_D=n\nCONFIG_A=m\nNOT_A_CONFIG=y\n#CONFIG_E is not set\n",
    );
    assert_eq!(
        c.get("CONFIG_A"),
        Some(&ConfigValue::Set("m".into())),
        "last value wins"
    );
    assert_eq!(c.get("CONFIG_B"), Some(&ConfigValue::NotSet));
    assert_eq!(c.get("CONFIG_C"), Some(&ConfigValue::Set("\"x y\"".into())));
    assert_eq!(c.get("CONFIG_D"), Some(&ConfigValue::NotSet));
    assert_eq!(c.len(), 4, "{c:?}");
}

#[test]
fn reports_dropped_and_changed_symbols() {
    let wanted = "CONFIG_KEPT=y\nCONFIG_GONE=y\nCONFIG_MOD=m\n# CONFIG_OFF is not set\n\
                  # CONFIG_UNKNOWN_OFF is not set\n# CONFIG_SELECTED is not set\n\
                  CONFIG_STR=\"-guest\"\n";
    let result = "#\n# Automatically generated file; DO NOT EDIT.\n#\nCONFIG_KEPT=y\n\
                  CONFIG_MOD=y\n# CONFIG_OFF is not set\nCONFIG_SELECTED=y\nCONFIG_STR=\"-guest\"\n\
                  CONFIG_OTHER=y\n";
    let issues = compare_configs(wanted, result);
    assert_eq!(
        issues,
        vec![
            ConfigIssue::Dropped {
                symbol: "CONFIG_GONE".into(),
                wanted: ConfigValue::Set("y".into())
            },
            ConfigIssue::Changed {
                symbol: "CONFIG_MOD".into(),
                wanted: ConfigValue::Set("m".into()),
                got: ConfigValue::Set("y".into()),
            },
            ConfigIssue::Changed {
                symbol: "CONFIG_SELECTED".into(),
                wanted: ConfigValue::NotSet,
                got: ConfigValue::Set("y".into()),
            },
        ]
    );
    assert_eq!(
        issues[0].to_string(),
        "CONFIG_GONE=y from kernel.config was dropped by Kconfig (unknown symbol or unmet dependencies)"
    );
    assert!(issues[1]
        .to_string()
        .starts_with("CONFIG_MOD=m from kernel.config became `CONFIG_MOD=y`"));
    assert!(issues[2]
        .describe("my.config")
        .starts_with("# CONFIG_SELECTED is not set from my.config"));
}

#[test]
fn the_repository_kernel_config_is_in_savedefconfig_form() {
    let path = Utf8Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel.config");
    let text = std::fs::read_to_string(&path).unwrap();
    let c = parse_config(&text);
    for sym in [
        "CONFIG_VIRTIO_PCI",
        "CONFIG_VIRTIO_MMIO",
        "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES",
        "CONFIG_VIRTIO_NET",
        "CONFIG_VIRTIO_BLK",
        "CONFIG_VIRTIO_CONSOLE",
        "CONFIG_VIRTIO_VSOCKETS",
        "CONFIG_HW_RANDOM_VIRTIO",
        "CONFIG_NET_9P_VIRTIO",
        "CONFIG_9P_FS",
        "CONFIG_FUSE_FS",
        "CONFIG_VIRTIO_FS",
        "CONFIG_EXT4_FS",
        "CONFIG_DEVTMPFS",
        "CONFIG_DEVTMPFS_MOUNT",
        "CONFIG_SERIAL_8250_CONSOLE",
        "CONFIG_BLK_DEV_INITRD",
        "CONFIG_RD_ZSTD",
        "CONFIG_RD_XZ",
        "CONFIG_PVH",
        "CONFIG_PARAVIRT",
        "CONFIG_ACPI",
        "CONFIG_E1000",
        "CONFIG_IPV6",
        "CONFIG_MODULES",
    ] {
        assert_eq!(
            c.get(sym),
            Some(&ConfigValue::Set("y".into())),
            "{sym} in {path}"
        );
    }
    assert_eq!(
        c.get("CONFIG_BLK_DEV_LOOP"),
        Some(&ConfigValue::Set("m".into()))
    );
    assert_eq!(
        initramfs_source_in(&text),
        None,
        "kernel.config must not embed an initramfs by default"
    );
}

#[test]
fn initramfs_source_values() {
    assert_eq!(initramfs_source_in("CONFIG_INITRAMFS_SOURCE=\"\"\n"), None);
    assert_eq!(initramfs_source_in("# CONFIG_FOO is not set\n"), None);
    assert_eq!(
        initramfs_source_in("CONFIG_INITRAMFS_SOURCE=\"/b/initramfs.cpio.gz\"\n").as_deref(),
        Some("/b/initramfs.cpio.gz")
    );
    let (_t, dir) = tempdir();
    let cfg = dir.join(".config");
    write(&cfg, "CONFIG_INITRAMFS_SOURCE=\"../x.cpio\"\n");
    assert_eq!(
        kernel::initramfs_source(&cfg).unwrap().as_deref(),
        Some("../x.cpio")
    );
    let err = kernel::initramfs_source(&dir.join("nope")).unwrap_err();
    assert!(format!("{err:#}").contains("nope"), "{err:#}");
}

// ---- Source::locate ------------------------------------------------------

/// A directory that passes for a kernel tree.
fn fake_tree(dir: &Utf8Path, makefile: &str) {
    write(&dir.join("Makefile"), makefile);
    write(&dir.join("Kconfig"), "mainmenu \"fake\"\n");
    write(&dir.join("arch/x86/Kconfig"), "");
    write(&dir.join("scripts/setlocal.sh"), "#!/bin/sh\n");
    std::fs::set_permissions(
        dir.join("scripts/setlocal.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
}

fn make_tarball(tree_parent: &Utf8Path, top: &str, out: &Utf8Path) {
    let file = std::fs::File::create(out).unwrap();
    let w: Box<dyn std::io::Write> = if out.as_str().ends_with(".xz") {
        Box::new(liblzma::write::XzEncoder::new(file, 1))
    } else {
        Box::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ))
    };
    let mut b = tar::Builder::new(w);
    b.append_dir_all(top, tree_parent.join(top)).unwrap();
    b.into_inner().unwrap().flush().unwrap();
}

#[test]
fn locate_accepts_a_kernel_tree_in_place() {
    let (_t, dir) = tempdir();
    fake_tree(&dir.join("linux"), "all:\n");
    let s = Source::locate(&dir.join("linux"), &dir.join("build")).unwrap();
    assert_eq!(s.tree(), dir.join("linux").canonicalize_utf8().unwrap());
    assert_eq!(s.origin(), &Origin::Tree);
    assert!(!dir.join("build").exists(), "a tree is used in place");
}

#[test]
fn locate_rejects_what_is_not_a_kernel() {
    let (_t, dir) = tempdir();
    write(&dir.join("proj/Makefile"), "all:\n");
    let err = Source::locate(&dir.join("proj"), &dir.join("build")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} is not a kernel tree (no Makefile/Kconfig) nor a .tar.xz/.tar.gz kernel tarball",
            dir.join("proj")
        )
    );
    write(&dir.join("notes.txt"), "hi");
    let err = Source::locate(&dir.join("notes.txt"), &dir.join("build")).unwrap_err();
    assert!(err.to_string().contains("is not a kernel tree"), "{err}");
    let err = Source::locate(&dir.join("missing"), &dir.join("build")).unwrap_err();
    assert!(format!("{err:#}").contains("does not exist"), "{err:#}");
    // A tarball that holds something else.
    write(&dir.join("other/x/README"), "not a kernel");
    make_tarball(&dir.join("other"), "x", &dir.join("x.tar.gz"));
    let err = Source::locate(&dir.join("x.tar.gz"), &dir.join("build")).unwrap_err();
    assert!(
        format!("{err:#}").contains("does not contain a kernel tree"),
        "{err:#}"
    );
    assert!(
        !dir.join("build/kernel-src/x").exists(),
        "nothing half-unpacked is left in place"
    );
}

#[test]
fn tarballs_are_unpacked_once_and_again_when_they_change() {
    for ext in ["tar.xz", "tar.gz"] {
        let (_t, dir) = tempdir();
        let build = dir.join("build");
        fake_tree(&dir.join("src/linux-source-9.9"), "# version 1\n");
        let tarball = dir.join(format!("linux-source-9.9.{ext}"));
        make_tarball(&dir.join("src"), "linux-source-9.9", &tarball);

        let s = Source::locate(&tarball, &build).unwrap();
        let tree = build.join("kernel-src/linux-source-9.9/linux-source-9.9");
        assert_eq!(s.tree(), tree);
        assert!(
            matches!(
                s.origin(),
                Origin::Tarball {
                    unpacked_now: true,
                    ..
                }
            ),
            "{s:?}"
        );
        assert_eq!(
            std::fs::read_to_string(tree.join("Makefile")).unwrap(),
            "# version 1\n"
        );
        let mode = std::fs::metadata(tree.join("scripts/setlocal.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "scripts stay executable");
        assert!(build.join("kernel-src/linux-source-9.9.stamp").is_file());

        // Unchanged tarball: reused as is (a file made in between survives).
        write(&tree.join("built-here"), "");
        let s = Source::locate(&tarball, &build).unwrap();
        assert!(
            matches!(
                s.origin(),
                Origin::Tarball {
                    unpacked_now: false,
                    ..
                }
            ),
            "{s:?}"
        );
        assert!(tree.join("built-here").exists());

        // A new tarball (other size and mtime): unpacked again from scratch.
        fake_tree(&dir.join("src/linux-source-9.9"), "# version 2, longer\n");
        make_tarball(&dir.join("src"), "linux-source-9.9", &tarball);
        let f = std::fs::File::options().write(true).open(&tarball).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(10))
            .unwrap();
        let s = Source::locate(&tarball, &build).unwrap();
        assert!(
            matches!(
                s.origin(),
                Origin::Tarball {
                    unpacked_now: true,
                    ..
                }
            ),
            "{s:?}"
        );
        assert_eq!(
            std::fs::read_to_string(tree.join("Makefile")).unwrap(),
            "# version 2, longer\n"
        );
        assert!(!tree.join("built-here").exists(), "the old tree is gone");
        let leftovers: Vec<_> = build
            .join("kernel-src")
            .read_dir_utf8()
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(
            leftovers.is_empty(),
            "temporary directories left: {leftovers:?}"
        );

        // A missing stamp (interrupted unpack) means unpack again.
        std::fs::remove_file(build.join("kernel-src/linux-source-9.9.stamp")).unwrap();
        let s = Source::locate(&tarball, &build).unwrap();
        assert!(
            matches!(
                s.origin(),
                Origin::Tarball {
                    unpacked_now: true,
                    ..
                }
            ),
            "{s:?}"
        );
    }
}

#[test]
fn suggests_installed_sources() {
    let (_t, dir) = tempdir();
    write(&dir.join("linux-source-6.1.tar.xz"), "");
    write(&dir.join("linux-config-6.1/x"), "");
    write(&dir.join("python3.11/x"), "");
    fake_tree(&dir.join("linux-source-6.2"), "");
    assert_eq!(
        kernel::source::suggest_sources_in(&dir),
        vec![
            dir.join("linux-source-6.1.tar.xz"),
            dir.join("linux-source-6.2")
        ]
    );
    assert!(kernel::source::no_source_message().starts_with("no kernel source given"));
}

// ---- host prerequisites --------------------------------------------------

#[test]
fn missing_prerequisites_name_their_debian_packages() {
    let (_t, dir) = tempdir();
    for tool in ["make", "gcc", "bison"] {
        write(&dir.join("bin").join(tool), "");
    }
    write(&dir.join("include/gelf.h"), "");
    let probe = HostProbe {
        path: Some(dir.join("bin").into()),
        include_dir: dir.join("include"),
    };
    let m = missing(&probe, &[]);
    let whats: Vec<(&str, &str)> = m
        .iter()
        .map(|m| (m.what.as_str(), m.debian_package.as_str()))
        .collect();
    assert!(whats.contains(&("flex", "flex")), "{whats:?}");
    assert!(whats.contains(&("bc", "bc")), "{whats:?}");
    assert!(
        !whats
            .iter()
            .any(|(w, _)| *w == "make" || *w == "gcc" || *w == "bison"),
        "{whats:?}"
    );
    assert!(
        !whats.iter().any(|(_, p)| *p == "libelf-dev"),
        "gelf.h is enough: {whats:?}"
    );
    assert!(
        whats
            .iter()
            .any(|(w, p)| w.contains("openssl/ssl.h") && *p == "libssl-dev"),
        "{whats:?}"
    );
    let msg = missing_message(&m).unwrap();
    assert!(msg.contains("  - flex (Debian package flex)"), "{msg}");
    assert!(
        msg.contains("apt-get install flex bc") && !msg.contains("sudo"),
        "{msg}"
    );

    // CC=ccache gcc needs ccache; LLVM=1 needs clang and ld.lld.
    let vars = [("CC".to_string(), "ccache gcc".to_string())];
    assert!(missing(&probe, &vars)
        .iter()
        .any(|m| m.what == "ccache" && m.debian_package == "ccache"));
    let vars = [("LLVM".to_string(), "1".to_string())];
    let m = missing(&probe, &vars);
    assert!(
        m.iter().any(|m| m.what == "clang") && m.iter().any(|m| m.debian_package == "lld"),
        "{m:?}"
    );
    assert!(!m.iter().any(|m| m.what == "gcc"), "{m:?}");

    let err = kernel::prereq::check_host_with(&probe, &[]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot build the kernel: missing host prerequisites"),
        "{err}"
    );
}

#[test]
fn make_vars_parse() {
    assert_eq!(
        BuildOptions::parse_make_var("CC=ccache gcc").unwrap(),
        ("CC".to_string(), "ccache gcc".to_string())
    );
    assert_eq!(BuildOptions::parse_make_var("LLVM=1").unwrap().1, "1");
    assert!(BuildOptions::parse_make_var("LLVM").is_err());
    assert!(BuildOptions::parse_make_var("=1").is_err());
}

// ---- modules -------------------------------------------------------------

fn entry(kind: Kind) -> Entry {
    Entry {
        mode: 0o755,
        uid: 0,
        gid: 0,
        kind,
        source: Some("corepure64.gz".into()),
    }
}

#[test]
fn install_modules_replaces_tc_modules() {
    let (_t, dir) = tempdir();
    let mods = dir.join("kernel-modules");
    let rel = mods.join("lib/modules/6.1.0-guest");
    write(&rel.join("kernel/drivers/block/loop.ko"), "elf");
    write(&rel.join("modules.dep"), "kernel/drivers/block/loop.ko:\n");
    std::os::unix::fs::symlink("/home/me/linux", rel.join("build")).unwrap();
    std::os::unix::fs::symlink("kernel/drivers/block/loop.ko", rel.join("a-link")).unwrap();

    let root = dir.join("tc_root");
    write(
        &root.join("lib/modules/6.1.2-tinycore64/kernel/x.ko"),
        "old",
    );
    write(&root.join("lib/modules/stale-file"), "old");
    write(&root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n");
    let mut manifest = Manifest::new();
    manifest.insert("/lib/modules", entry(Kind::Dir));
    manifest.insert("/lib/modules/6.1.2-tinycore64", entry(Kind::Dir));
    manifest.insert(
        "/lib/modules/6.1.2-tinycore64/kernel/x.ko",
        entry(Kind::File),
    );
    manifest.insert("/lib/modules/gone-from-disk", entry(Kind::Dir));
    manifest.insert("/etc/passwd", entry(Kind::File));

    let r = install_modules(&mods, &root, &mut manifest).unwrap();
    assert_eq!(r.releases, vec!["6.1.0-guest"]);
    assert_eq!(r.removed, vec!["6.1.2-tinycore64", "stale-file"]);
    assert_eq!(r.files, 2);
    let names: Vec<String> = root
        .join("lib/modules")
        .read_dir_utf8()
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string())
        .collect();
    assert_eq!(names, vec!["6.1.0-guest"]);
    let new = root.join("lib/modules/6.1.0-guest");
    assert_eq!(
        std::fs::read_to_string(new.join("kernel/drivers/block/loop.ko")).unwrap(),
        "elf"
    );
    assert!(
        new.join("build").symlink_metadata().is_err(),
        "the host-tree link is not copied"
    );
    assert_eq!(
        std::fs::read_link(new.join("a-link")).unwrap().to_str(),
        Some("kernel/drivers/block/loop.ko")
    );
    let paths: Vec<&str> = manifest.iter().map(|(p, _)| p).collect();
    assert_eq!(paths, vec!["/etc/passwd", "/lib/modules"]);

    // Nothing installed: a clear error.
    let err = install_modules(&dir.join("empty"), &root, &mut manifest).unwrap_err();
    assert!(format!("{err:#}").contains("modules_install"), "{err:#}");
}

#[test]
fn skip_kernel_removes_only_tinycore_modules() {
    let (_t, dir) = tempdir();
    let root = dir.join("tc_root");
    write(&root.join("lib/modules/6.1.2-tinycore64/kernel/x.ko"), "");
    write(&root.join("lib/modules/6.1.0-guest/kernel/y.ko"), "");
    let mut manifest = Manifest::new();
    manifest.insert("/lib/modules/6.1.2-tinycore64", entry(Kind::Dir));
    manifest.insert(
        "/lib/modules/6.1.2-tinycore64/kernel/x.ko",
        entry(Kind::File),
    );
    manifest.insert("/lib/modules/6.1.0-guest", entry(Kind::Dir));
    let removed = remove_tinycore_modules(&root, &mut manifest).unwrap();
    assert_eq!(removed, vec!["6.1.2-tinycore64"]);
    assert!(root.join("lib/modules/6.1.0-guest/kernel/y.ko").exists());
    assert!(!root.join("lib/modules/6.1.2-tinycore64").exists());
    let paths: Vec<&str> = manifest.iter().map(|(p, _)| p).collect();
    assert_eq!(paths, vec!["/lib/modules/6.1.0-guest"]);
    // No lib/modules at all is fine.
    assert!(remove_tinycore_modules(&dir.join("nothing"), &mut manifest)
        .unwrap()
        .is_empty());
}

// ---- configure with a fake Kbuild ------------------------------------------

/// A Makefile whose olddefconfig behaves like Kconfig's: drops
/// CONFIG_GONE, adds a default, and writes .config only when it changes,
/// moving the old one to .config.old.
const FAKE_KBUILD: &str = "O ?= .\n\
olddefconfig:\n\
\tcd $(O) && { grep -v '^CONFIG_GONE=' .config | grep -v '^CONFIG_DEFAULT=' ; echo CONFIG_DEFAULT=y; } > .config.new && \\\n\
\tif cmp -s .config.new .config; then rm .config.new; else mv .config .config.old && mv .config.new .config; fi\n";

#[test]
fn configure_keeps_the_previous_config_and_reports_drops() {
    if testmirror::tools::require_tool("make", "make").is_none() {
        return;
    }
    let (_t, dir) = tempdir();
    fake_tree(&dir.join("linux"), FAKE_KBUILD);
    let src = Source::locate(&dir.join("linux"), &dir.join("build")).unwrap();
    let kc = dir.join("kernel.config");
    write(&kc, "CONFIG_A=y\nCONFIG_GONE=y\n");
    let out = dir.join("obj");
    let opts = BuildOptions {
        out_dir: Some(out.clone()),
        ..BuildOptions::new(&dir.join("build"))
    };

    let r = configure(&src, &opts, &kc).unwrap();
    assert_eq!(r.config, out.join(".config"));
    assert_eq!(r.previous, None);
    assert!(r.changed);
    assert_eq!(
        r.warnings(),
        vec![format!(
            "CONFIG_GONE=y from {kc} was dropped by Kconfig (unknown symbol or unmet dependencies)"
        )]
    );
    let first = std::fs::read_to_string(out.join(".config")).unwrap();
    assert_eq!(first, "CONFIG_A=y\nCONFIG_DEFAULT=y\n");
    assert!(
        !out.join(".config.old").exists(),
        "no previous .config, no .config.old"
    );
    assert!(
        !dir.join("linux/.config").exists(),
        "O= keeps the tree clean"
    );

    // Same kernel.config again: nothing changes, not even the mtime.
    let old_time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(out.join(".config"))
        .unwrap()
        .set_modified(old_time)
        .unwrap();
    let r = configure(&src, &opts, &kc).unwrap();
    assert!(!r.changed);
    assert_eq!(r.previous, Some(out.join(".config.old")));
    assert_eq!(
        std::fs::metadata(out.join(".config"))
            .unwrap()
            .modified()
            .unwrap(),
        old_time
    );
    assert_eq!(std::fs::read_to_string(out.join(".config")).unwrap(), first);

    // A changed kernel.config: the previous full .config becomes .config.old.
    write(&kc, "CONFIG_A=m\n");
    let r = configure(&src, &opts, &kc).unwrap();
    assert!(r.changed && r.issues.is_empty(), "{r:?}");
    assert_eq!(
        std::fs::read_to_string(out.join(".config.old")).unwrap(),
        first
    );
    assert_eq!(
        std::fs::read_to_string(out.join(".config")).unwrap(),
        "CONFIG_A=m\nCONFIG_DEFAULT=y\n"
    );

    // In-tree configure works too; afterwards O= from that tree is refused,
    // as Kbuild would.
    let in_tree = BuildOptions::new(&dir.join("build"));
    configure(&src, &in_tree, &kc).unwrap();
    assert!(dir.join("linux/.config").exists());
    let err = configure(&src, &opts, &kc).unwrap_err();
    assert!(err.to_string().contains("mrproper"), "{err}");

    // A missing kernel.config names the file.
    let err = configure(&src, &in_tree, &dir.join("nope.config")).unwrap_err();
    assert!(format!("{err:#}").contains("nope.config"), "{err:#}");
}

#[test]
fn initramfs_source_path_is_relative_to_the_object_tree() {
    let (_t, dir) = tempdir();
    fake_tree(&dir.join("linux"), "all:\n");
    let src = Source::locate(&dir.join("linux"), &dir.join("build")).unwrap();
    let out = dir.join("obj");
    let opts = BuildOptions {
        out_dir: Some(out.clone()),
        ..BuildOptions::new(&dir.join("build"))
    };
    write(&out.join(".config"), "CONFIG_INITRAMFS_SOURCE=\"\"\n");
    assert_eq!(kernel::initramfs_source_path(&src, &opts).unwrap(), None);
    write(
        &out.join(".config"),
        "CONFIG_INITRAMFS_SOURCE=\"../initramfs.cpio.gz\"\n",
    );
    assert_eq!(
        kernel::initramfs_source_path(&src, &opts).unwrap(),
        Some(out.join("../initramfs.cpio.gz"))
    );
    write(
        &out.join(".config"),
        "CONFIG_INITRAMFS_SOURCE=\"/b/i.cpio.gz\"\n",
    );
    assert_eq!(
        kernel::initramfs_source_path(&src, &opts).unwrap(),
        Some(Utf8PathBuf::from("/b/i.cpio.gz"))
    );
    write(&out.join(".config"), "CONFIG_INITRAMFS_SOURCE=\"a b\"\n");
    assert!(kernel::initramfs_source_path(&src, &opts)
        .unwrap_err()
        .to_string()
        .contains("several"));
}

// ---- build with a fake Kbuild ----------------------------------------------

const FAKE_BUILD: &str = "O ?= .\n\
vmlinux:\n\
\t@for i in $$(seq 1 60); do echo \"  CC      file$$i.o\"; done\n\
\t@if [ -e $(O)/FAIL ]; then echo 'fake.c:1: error: boom' >&2; exit 2; fi\n\
\t@touch $(O)/vmlinux\n\
bzImage: vmlinux\n\
\t@mkdir -p $(O)/arch/x86/boot && touch $(O)/arch/x86/boot/bzImage\n\
modules:\n\
\t@echo '  CC [M]  loop.o' \"CC=$(CC)\"\n\
modules_install:\n\
\t@mkdir -p $(INSTALL_MOD_PATH)/lib/modules/1.2.3-fake/kernel\n\
\t@echo \"strip=$(INSTALL_MOD_STRIP)\" > $(INSTALL_MOD_PATH)/lib/modules/1.2.3-fake/kernel/loop.ko\n\
kernelrelease:\n\
\t@echo 1.2.3-fake\n";

#[test]
fn build_runs_kbuild_targets_logs_and_reports_failures() {
    if testmirror::tools::require_tool("make", "make").is_none() {
        return;
    }
    let (_t, dir) = tempdir();
    fake_tree(&dir.join("linux"), FAKE_BUILD);
    let src = Source::locate(&dir.join("linux"), &dir.join("build")).unwrap();
    let out = dir.join("obj");
    let opts = BuildOptions {
        out_dir: Some(out.clone()),
        jobs: 2,
        make_vars: vec![("CC".into(), "gcc".into())],
        ..BuildOptions::new(&dir.join("build"))
    };
    write(&out.join(".config"), "CONFIG_MODULES=y\n");

    let b = kernel::build(&src, &opts).unwrap();
    assert_eq!(b.vmlinux, out.join("vmlinux"));
    assert_eq!(b.bz_image, out.join("arch/x86/boot/bzImage"));
    assert_eq!(b.release, "1.2.3-fake");
    let mods = b.modules_dir.clone().unwrap();
    let ko = mods.join("lib/modules/1.2.3-fake/kernel/loop.ko");
    assert_eq!(std::fs::read_to_string(ko).unwrap(), "strip=1\n");
    let log = std::fs::read_to_string(b.log.as_ref().unwrap()).unwrap();
    assert!(
        log.contains("CC [M]  loop.o CC=gcc"),
        "make variables are passed: {log}"
    );
    assert!(log.contains(&format!("O={out} -j2")), "{log}");
    assert!(
        b.to_string().starts_with("kernel 1.2.3-fake built in 0m0"),
        "{b}"
    );

    // No modules in the config: neither built nor installed.
    write(&out.join(".config"), "# CONFIG_MODULES is not set\n");
    let b = kernel::build(&src, &opts).unwrap();
    assert_eq!(b.modules_dir, None);

    // A failing make: the error names the command and the log.
    write(&out.join("FAIL"), "");
    let err = kernel::build(&src, &opts).unwrap_err().to_string();
    assert!(
        err.contains("vmlinux bzImage") && err.contains("failed"),
        "{err}"
    );
    let log = opts.log_path();
    assert!(err.contains(&format!("full output in {log}")), "{err}");
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("fake.c:1: error: boom"));

    // Not configured: says what to do.
    std::fs::remove_file(out.join(".config")).unwrap();
    let err = kernel::build(&src, &opts).unwrap_err();
    assert!(
        format!("{err:#}").contains("configure the kernel"),
        "{err:#}"
    );
}
