//! The distro edits, overrides, CUSTOM_BINARIES/REMOVALS and user ssh keys
//! on a small TC-shaped tc_root.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use camino::{Utf8Path, Utf8PathBuf};
use rootfs::manifest::{Entry, Kind, Manifest};
use tinycore::edits::{self, Overrides};

const RCS: &str = "#!/bin/sh\n\
# RC Script for Tiny Core Linux\n\
\n\
/bin/mount -a\n\
/bin/mount -o remount,rw /\n\
\n\
clear\n\
/etc/init.d/tc-config\n";

const TC_CONFIG: &str = "#!/bin/sh\n\
# RC Script for Tiny Core Linux\n\
. /etc/init.d/tc-functions\n\
\n\
addUser(){\n\
\techo \"${GREEN}Adding user ${YELLOW} $USER ${NORMAL}\"\n\
}\n\
### END functions\n\
\n\
# Main\n\
clear\n\
echo \"${GREEN}Booting ${YELLOW}Core $VERSION ${NORMAL}\"\n";

const INITTAB: &str = "# /etc/inittab: init configuration for busybox init.\n\
::sysinit:/etc/init.d/rcS\n\
\n\
tty1::respawn:/sbin/getty -nl /sbin/autologin 38400 tty1\n\
tty2::askfirst:/sbin/getty 38400 tty2\n";

const AUTOLOGIN: &str = "#!/bin/sh\n\
if [ -f /var/log/autologin ] ; then\n\
\texec /sbin/getty 38400 tty1\n\
else\n\
\ttouch /var/log/autologin\n\
\texec login -f \"$USER\"\n\
fi\n";

const BOOTLOCAL: &str = "#!/bin/sh\n# put other system startup commands here\n";

fn write(root: &Utf8Path, rel: &str, text: &str, mode: u32) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn tc_root() -> (tempfile::TempDir, Utf8PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = Utf8PathBuf::from_path_buf(dir.path().join("tc_root")).unwrap();
    std::fs::create_dir_all(root.join("lib")).unwrap();
    std::fs::create_dir_all(root.join("etc/sysconfig")).unwrap();
    std::fs::create_dir_all(root.join("root")).unwrap();
    write(&root, "etc/init.d/rcS", RCS, 0o775);
    write(&root, "etc/init.d/tc-config", TC_CONFIG, 0o775);
    write(&root, "etc/inittab", INITTAB, 0o644);
    write(&root, "sbin/autologin", AUTOLOGIN, 0o755);
    write(&root, "opt/bootlocal.sh", BOOTLOCAL, 0o775);
    write(&root, "opt/bootsync.sh", BOOTSYNC, 0o775);
    (dir, root)
}

/// Every file, link and dir under `root` with its mode and content.
fn snapshot(root: &Utf8Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in dir.read_dir_utf8().unwrap() {
            let p = e.unwrap().path().to_owned();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let data = if md.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else if md.is_dir() {
                stack.push(p.clone());
                Vec::new()
            } else {
                std::fs::read(&p).unwrap()
            };
            out.insert(p.strip_prefix(root).unwrap().to_string(), (md.mode(), data));
        }
    }
    out
}

fn read(root: &Utf8Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap()
}

fn mode(p: &Utf8Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Tiny Core's own /opt/bootsync.sh.
const BOOTSYNC: &str = "#!/bin/sh
# put other system startup commands here, the boot process will wait until they complete.
# Use bootlocal.sh for system startup commands that can run in the background
# and therefore not slow down the boot process.
/usr/bin/sethostname box
/opt/bootlocal.sh &
";

#[test]
fn distro_edits_apply_once_and_are_idempotent() {
    let (_d, root) = tc_root();
    let r1 = edits::apply_distro_edits(&root).unwrap();
    assert!(r1.warnings.is_empty(), "{r1:#?}");
    assert_eq!(r1.applied.len(), 9, "{r1:#?}");
    // tty1 points at the console before bootlocal.sh goes to the background.
    let sync = read(&root, "opt/bootsync.sh");
    let tty1 = sync.find("ln -sf /dev/ttyS0 /dev/tty1").expect(&sync);
    assert!(tty1 < sync.find("/opt/bootlocal.sh &").unwrap(), "{sync}");
    assert!(sync.starts_with("#!/bin/sh\n"), "{sync}");

    assert_eq!(
        std::fs::read_link(root.join("lib64")).unwrap().to_str(),
        Some("lib")
    );
    assert!(root.join("home/tc").is_dir());
    let rcs = read(&root, "etc/init.d/rcS");
    assert!(!rcs.lines().any(|l| l.trim() == "clear"), "{rcs}");
    assert!(rcs.contains("/etc/init.d/tc-config\n"));
    assert_eq!(
        mode(&root.join("etc/init.d/rcS")),
        0o775,
        "rewrite keeps the mode"
    );
    let tcc = read(&root, "etc/init.d/tc-config");
    assert!(
        tcc.contains("### END functions\nNORTC=1\nNOZSWAP=1\n\n# Main\n"),
        "{tcc}"
    );
    assert!(root.join("etc/sysconfig/superuser").is_file());
    let inittab = read(&root, "etc/inittab");
    assert!(
        inittab.contains("/sbin/autologin 115200 tty1\n"),
        "{inittab}"
    );
    assert!(inittab.contains("38400 tty2"), "only tty1 changes");
    assert!(read(&root, "sbin/autologin").contains("getty 115200 tty1"));
    assert_eq!(mode(&root.join("sbin/autologin")), 0o755);
    assert_eq!(read(&root, "opt/bootlocal.sh"), edits::BOOTLOCAL_SH);
    assert_eq!(mode(&root.join("opt/bootlocal.sh")), 0o755);

    let before = snapshot(&root);
    let r2 = edits::apply_distro_edits(&root).unwrap();
    assert!(r2.applied.is_empty(), "second run applied {:?}", r2.applied);
    assert!(r2.warnings.is_empty(), "{r2:#?}");
    assert_eq!(r2.unchanged.len(), 9);
    assert_eq!(snapshot(&root), before, "second run changed bytes or modes");
}

#[test]
fn seed_edited_tc_config_gets_only_nozswap() {
    let (_d, root) = tc_root();
    write(
        &root,
        "etc/init.d/tc-config",
        &TC_CONFIG.replace("### END functions\n", "### END functions\nNORTC=1\n"),
        0o775,
    );
    let r = edits::apply_distro_edits(&root).unwrap();
    assert!(
        r.applied.iter().any(|a| a == "tc-config: NOZSWAP=1"),
        "{r:#?}"
    );
    let tcc = read(&root, "etc/init.d/tc-config");
    assert_eq!(tcc.matches("NORTC=1").count(), 1, "{tcc}");
    assert!(
        tcc.contains("### END functions\nNORTC=1\nNOZSWAP=1\n"),
        "{tcc}"
    );
}

#[test]
fn missing_anchors_are_named_warnings() {
    let (_d, root) = tc_root();
    write(
        &root,
        "etc/init.d/rcS",
        "#!/bin/sh\n/etc/init.d/tc-config\n",
        0o755,
    );
    write(&root, "etc/init.d/tc-config", "#!/bin/sh\necho hi\n", 0o755);
    write(
        &root,
        "etc/inittab",
        "tty1::respawn:/sbin/getty 9600 tty1\n",
        0o644,
    );
    std::fs::remove_file(root.join("sbin/autologin")).unwrap();
    let before_tcc = read(&root, "etc/init.d/tc-config");
    let r = edits::apply_distro_edits(&root).unwrap();
    let w = r.warnings.join("\n");
    assert!(
        w.contains("tc-config: no `### END functions` line; NORTC/NOZSWAP not set"),
        "{w}"
    );
    assert!(w.contains("rcS: no `clear` line"), "{w}");
    assert!(w.contains("etc/inittab: no `38400 tty1`"), "{w}");
    assert!(w.contains("sbin/autologin does not exist"), "{w}");
    assert_eq!(r.warnings.len(), 4, "{w}");
    assert_eq!(
        read(&root, "etc/init.d/tc-config"),
        before_tcc,
        "no anchor: file untouched"
    );
}

#[test]
fn bootlocal_keeps_lines_appended_after_ours() {
    let (_d, root) = tc_root();
    edits::apply_distro_edits(&root).unwrap();
    let extended = format!(
        "{}/usr/local/etc/init.d/openssh start\n",
        edits::BOOTLOCAL_SH
    );
    write(&root, "opt/bootlocal.sh", &extended, 0o755);
    let r = edits::apply_distro_edits(&root).unwrap();
    assert!(r.applied.is_empty(), "{r:#?}");
    assert_eq!(read(&root, "opt/bootlocal.sh"), extended);
}

#[test]
fn bootlocal_script_is_valid_sh() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bootlocal.sh");
    std::fs::write(&p, edits::BOOTLOCAL_SH).unwrap();
    for sh in [&["sh", "-n"][..], &["busybox", "sh", "-n"][..]] {
        if testmirror::tools::require_tool(sh[0], "busybox-static").is_none() {
            return;
        }
        let st = std::process::Command::new(sh[0])
            .args(&sh[1..])
            .arg(&p)
            .status()
            .unwrap();
        assert!(st.success(), "{sh:?} -n rejects BOOTLOCAL_SH");
    }
    assert!(edits::BOOTLOCAL_SH.contains("ln -sf /dev/hvc0 /dev/tty1"));
    assert!(edits::BOOTLOCAL_SH.contains("ln -sf /dev/ttyS0 /dev/tty1"));
    assert!(edits::BOOTLOCAL_SH.contains("/root/tc-sys.sh"));
}

#[test]
fn overrides_real_and_dangling_links() {
    let (d, root) = tc_root();
    let guest = Utf8PathBuf::from_path_buf(d.path().join("guest")).unwrap();
    std::fs::create_dir_all(&guest).unwrap();
    write(&guest, "tc-sys.sh", "#!/bin/sh\necho net\n", 0o644);
    std::os::unix::fs::symlink("tc-sys.sh", guest.join("tc-sys.sh-link")).unwrap();
    std::os::unix::fs::symlink("xxx", guest.join("rcS-link")).unwrap();

    let (o, notes) = Overrides::from_guest_dir(&guest).unwrap();
    assert!(o.tc_sys.as_ref().unwrap().ends_with("tc-sys.sh"), "{o:?}");
    assert_eq!(o.rcs, None);
    assert!(
        notes
            .unchanged
            .iter()
            .any(|n| n == "rcS-link -> xxx is dangling: keeping TC's rcS"),
        "{notes:#?}"
    );

    let r = edits::apply_overrides(&root, &o).unwrap();
    assert_eq!(r.applied.len(), 1, "{r:#?}");
    assert_eq!(read(&root, "root/tc-sys.sh"), "#!/bin/sh\necho net\n");
    assert_eq!(mode(&root.join("root/tc-sys.sh")), 0o755);
    assert_eq!(
        read(&root, "etc/init.d/rcS"),
        RCS,
        "dangling rcS-link keeps TC's rcS"
    );
    let r = edits::apply_overrides(&root, &o).unwrap();
    assert!(r.applied.is_empty(), "{r:#?}");

    // Point rcS-link at a real file: it replaces rcS.
    write(&guest, "rcS-mine", "#!/bin/sh\nexec /bin/sh\n", 0o644);
    std::fs::remove_file(guest.join("rcS-link")).unwrap();
    std::os::unix::fs::symlink("rcS-mine", guest.join("rcS-link")).unwrap();
    let (o, _) = Overrides::from_guest_dir(&guest).unwrap();
    edits::apply_overrides(&root, &o).unwrap();
    assert_eq!(read(&root, "etc/init.d/rcS"), "#!/bin/sh\nexec /bin/sh\n");
    assert_eq!(mode(&root.join("etc/init.d/rcS")), 0o755);

    // An explicit path from the config that does not exist is an error.
    let bad = Overrides {
        tc_sys: Some(guest.join("nope.sh")),
        rcs: None,
    };
    let err = edits::apply_overrides(&root, &bad).unwrap_err();
    assert!(format!("{err:#}").contains("nope.sh"), "{err:#}");
}

#[test]
fn shipped_guest_links_are_the_seed_defaults() {
    let guest = Utf8Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest");
    let (o, notes) = Overrides::from_guest_dir(&guest).unwrap();
    assert!(
        o.tc_sys.as_ref().is_some_and(|p| p.ends_with("tc-sys.sh")),
        "{o:?}"
    );
    assert_eq!(o.rcs, None, "{notes:#?}");
}

fn entry(kind: Kind, mode: u32, uid: u32, gid: u32) -> Entry {
    Entry {
        mode,
        uid,
        gid,
        kind,
        source: Some("x.tcz".into()),
    }
}

#[test]
fn install_binaries_copies_and_opens_the_dir() {
    let (d, root) = tc_root();
    let host = Utf8PathBuf::from_path_buf(d.path().join("host")).unwrap();
    write(&host, "tinyreboot", "ELF", 0o700);
    std::fs::create_dir_all(root.join("usr/local/bin")).unwrap();
    std::fs::set_permissions(
        root.join("usr/local/bin"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    let mut m = Manifest::new();
    m.insert("/usr/local/bin", entry(Kind::Dir, 0o750, 0, 50));
    m.insert("/usr/local/bin/tinyreboot", entry(Kind::File, 0o4755, 0, 0));

    let r = edits::install_binaries(&root, &mut m, &[host.join("tinyreboot")]).unwrap();
    assert_eq!(r.applied.len(), 1);
    let dest = root.join("usr/local/bin/tinyreboot");
    assert_eq!(std::fs::read(&dest).unwrap(), b"ELF");
    assert_eq!(mode(&dest), 0o755);
    assert_eq!(mode(&root.join("usr/local/bin")) & 0o755, 0o755);
    assert_eq!(m.get("/usr/local/bin").unwrap().mode, 0o755);
    assert!(
        m.get("/usr/local/bin/tinyreboot").is_none(),
        "old setuid record dropped"
    );

    let err = edits::install_binaries(&root, &mut m, &[host.join("missing")]).unwrap_err();
    assert!(format!("{err:#}").contains("missing"), "{err:#}");
}

#[test]
fn removals_delete_warn_and_refuse_escapes() {
    let (_d, root) = tc_root();
    write(&root, "usr/lib/libstdc++.so.6", "lib", 0o644);
    write(&root, "usr/share/doc/a/README", "doc", 0o644);
    std::os::unix::fs::symlink("/", root.join("escape")).unwrap();
    let mut m = Manifest::new();
    m.insert("/usr/share/doc", entry(Kind::Dir, 0o755, 0, 0));
    m.insert("/usr/share/doc/a/README", entry(Kind::File, 0o644, 0, 0));
    m.insert(
        "/dev/sda",
        entry(Kind::BlockDev { major: 8, minor: 0 }, 0o660, 0, 6),
    );

    let paths: Vec<Utf8PathBuf> = [
        "usr/lib/libstdc++.so.6",
        "./usr/share/doc",
        "dev/sda",
        "usr/lib/nope.so",
    ]
    .map(Utf8PathBuf::from)
    .to_vec();
    let r = edits::apply_removals(&root, &mut m, &paths).unwrap();
    assert_eq!(r.applied.len(), 3, "{r:#?}");
    assert_eq!(
        r.warnings,
        vec![
            "CUSTOM_REMOVALS: usr/lib/nope.so does not exist in tc_root; nothing removed"
                .to_string()
        ]
    );
    assert!(!root.join("usr/lib/libstdc++.so.6").exists());
    assert!(!root.join("usr/share/doc").exists());
    assert!(m.is_empty(), "{}", m.to_text());

    for bad in ["/etc/passwd", "usr/../../x", "escape/etc/passwd", "."] {
        let err = edits::apply_removals(&root, &mut m, &[Utf8PathBuf::from(bad)]).unwrap_err();
        assert!(
            format!("{err:#}").contains("CUSTOM_REMOVALS"),
            "{bad}: {err:#}"
        );
    }
    assert!(Utf8Path::new("/etc/passwd").exists());
}

#[test]
fn user_ssh_key_for_both_homes() {
    let (d, root) = tc_root();
    let keys = Utf8PathBuf::from_path_buf(d.path().join("keys")).unwrap();
    write(&keys, "db_rsa.pub", "ssh-ed25519 AAAAC3Nza me@host", 0o644);
    write(
        &keys,
        "db_rsa",
        "-----BEGIN OPENSSH PRIVATE KEY-----\n",
        0o600,
    );

    let r = edits::install_user_ssh_key(&root, &keys.join("db_rsa.pub"), None).unwrap();
    assert_eq!(r.applied.len(), 2, "{r:#?}");
    for home in ["root", "home/tc"] {
        let ssh = root.join(home).join(".ssh");
        assert_eq!(mode(&ssh), 0o700);
        assert_eq!(
            read(&root, &format!("{home}/.ssh/authorized_keys")),
            "ssh-ed25519 AAAAC3Nza me@host\n"
        );
        assert_eq!(mode(&ssh.join("authorized_keys")), 0o600);
        let config = read(&root, &format!("{home}/.ssh/config"));
        for want in [
            "Host host\n",
            "HostName 10.0.2.2\n",
            "User root\n",
            "IdentityFile ~/.ssh/db_rsa\n",
            "StrictHostKeyChecking no\n",
        ] {
            assert!(config.contains(want), "{want:?} missing in {config}");
        }
        assert_eq!(mode(&ssh.join("config")), 0o600);
        assert!(
            !ssh.join("db_rsa").exists(),
            "private key copied without being asked"
        );
    }
    let again = edits::install_user_ssh_key(&root, &keys.join("db_rsa.pub"), None).unwrap();
    assert!(again.applied.is_empty(), "{again:#?}");

    edits::install_user_ssh_key(&root, &keys.join("db_rsa.pub"), Some(&keys.join("db_rsa")))
        .unwrap();
    assert_eq!(mode(&root.join("home/tc/.ssh/db_rsa")), 0o600);
    assert_eq!(
        read(&root, "root/.ssh/db_rsa"),
        "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    );

    let err = edits::install_user_ssh_key(&root, &keys.join("none.pub"), None).unwrap_err();
    assert!(format!("{err:#}").contains("none.pub"), "{err:#}");
}

#[test]
fn anchor_on_last_line_without_newline() {
    let (_d, root) = tc_root();
    write(
        &root,
        "etc/init.d/tc-config",
        "#!/bin/sh\n### END functions",
        0o755,
    );
    edits::apply_distro_edits(&root).unwrap();
    let once = read(&root, "etc/init.d/tc-config");
    assert_eq!(once, "#!/bin/sh\n### END functions\nNORTC=1\nNOZSWAP=1\n");
    let r = edits::apply_distro_edits(&root).unwrap();
    assert!(r.applied.is_empty(), "{r:#?}");
    assert_eq!(read(&root, "etc/init.d/tc-config"), once);
}
