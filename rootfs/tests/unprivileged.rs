//! The same unpack as root and as uid 65534 gives the same tc_root and the
//! same manifest. The unprivileged run re-executes this test binary under
//! `setpriv` with the `child` test selected and its job in the environment.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use camino::{Utf8Path, Utf8PathBuf};
use common::*;
use rootfs::manifest::Manifest;
use rootfs::unpack;

const JOB: &str = "ROOTFS_TEST_CHILD_JOB";

/// Does one job: `unpack ROOT MANIFEST CPIO TCZ...` or `remove PATH`.
/// Without the variable (a normal test run) it does nothing.
#[test]
fn child() {
    let Ok(job) = std::env::var(JOB) else { return };
    let args: Vec<&str> = job.split('\n').collect();
    match args.as_slice() {
        ["unpack", root, manifest, cpio, tczs @ ..] => {
            let root = Utf8Path::new(root);
            let mut m = Manifest::new();
            unpack::cpio(Utf8Path::new(cpio), root, &mut m, "core.gz").unwrap();
            let tczs: Vec<(Utf8PathBuf, String)> = tczs
                .iter()
                .map(|t| {
                    (
                        Utf8PathBuf::from(*t),
                        Utf8Path::new(t).file_name().unwrap().to_string(),
                    )
                })
                .collect();
            unpack::squashfs_many(&tczs, root, &mut m, 2).unwrap();
            m.save(Utf8Path::new(manifest)).unwrap();
        }
        ["remove", path] => rootfs::contain::remove_tree(Utf8Path::new(path)).unwrap(),
        other => panic!("bad job {other:?}"),
    }
}

fn run_as_nobody(exe: &Utf8Path, job: &[&str]) {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(exe)
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(JOB, job.join("\n"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child {job:?} failed as uid 65534:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn root_and_nobody_unpack_identically() {
    if !has_tools(&[
        ("setpriv", "util-linux"),
        ("cpio", "cpio"),
        ("mksquashfs", "squashfs-tools"),
    ]) || !need_root("root_and_nobody_unpack_identically")
    {
        return;
    }
    let t = tmp();
    let src = t.path.join("src");
    build_fixture(&src);
    let inputs = t.path.join("inputs");
    std::fs::create_dir(&inputs).unwrap();
    let cpio = inputs.join("core.gz");
    std::fs::write(&cpio, gzip(&[&gnu_cpio(&src, "newc")])).unwrap();
    // Extensions that land in and over the core's read-only and setgid dirs.
    let ext = t.path.join("ext");
    std::fs::create_dir_all(ext.join("opt/ro")).unwrap();
    std::fs::create_dir_all(ext.join("usr/local/bin")).unwrap();
    std::fs::write(ext.join("opt/ro/inside"), b"from tcz").unwrap();
    std::fs::write(ext.join("usr/local/bin/tool"), noise(30_000, 2)).unwrap();
    std::fs::set_permissions(
        ext.join("usr/local/bin/tool"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    let tcz1 = inputs.join("one.tcz");
    mksquashfs(&ext, &tcz1, "gzip");
    let tcz2 = inputs.join("fixture.tcz");
    mksquashfs(&src, &tcz2, "xz");
    for p in [&cpio, &tcz1, &tcz2] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    // The test binary may live where uid 65534 cannot reach it.
    let exe = t.path.join("test-exe");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let work = t.path.join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o777)).unwrap();

    let job = |root: &Utf8Path, manifest: &Utf8Path| -> Vec<String> {
        [
            "unpack",
            root.as_str(),
            manifest.as_str(),
            cpio.as_str(),
            tcz1.as_str(),
            tcz2.as_str(),
        ]
        .map(String::from)
        .to_vec()
    };
    let (root_a, man_a) = (work.join("as-root"), work.join("as-root.manifest"));
    let out = Command::new(&exe)
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(JOB, job(&root_a, &man_a).join("\n"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "root child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (root_b, man_b) = (work.join("as-nobody"), work.join("as-nobody.manifest"));
    let jb = job(&root_b, &man_b);
    run_as_nobody(&exe, &jb.iter().map(String::as_str).collect::<Vec<_>>());

    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(root_b.join("etc/passwd")).unwrap().uid(),
        65534,
        "the child did not run as 65534"
    );
    let text_a = std::fs::read_to_string(&man_a).unwrap();
    assert_eq!(
        text_a,
        std::fs::read_to_string(&man_b).unwrap(),
        "manifests differ"
    );
    assert!(
        text_a.contains("file /usr/local/bin/tool usr/local/bin/tool 4755 0 0\n"),
        "{text_a}"
    );
    assert_eq!(listing(&root_a), listing(&root_b), "trees differ");

    // Owned by 65534 now; make parts unwritable and unsearchable for the
    // owner, then remove as that user.
    std::fs::set_permissions(
        root_b.join("opt/ro"),
        std::fs::Permissions::from_mode(0o500),
    )
    .unwrap();
    std::fs::set_permissions(
        root_b.join("usr/lib"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    std::fs::set_permissions(root_b.join("etc"), std::fs::Permissions::from_mode(0o100)).unwrap();
    run_as_nobody(&exe, &["remove", root_b.as_str()]);
    assert!(!root_b.exists());
}
