//! `cargo xtask vm-exec` against the test image with Debian's kernel under
//! TCG: stdout, stderr and the exit status come back separately; the
//! command line and the output keep their bytes.

use std::os::unix::ffi::OsStrExt;
use std::process::Output;

use camino::Utf8PathBuf;
use testmirror::qemu::{debian_kernel, guest_image, GuestImage};
use testmirror::tools::require_tool;

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

fn setup() -> Option<(tempfile::TempDir, GuestImage, Utf8PathBuf)> {
    require_tool("qemu-system-x86_64", "qemu-system-x86")?;
    let kernel = debian_kernel()?;
    let tmp = tempfile::tempdir().unwrap();
    let dir = Utf8PathBuf::from_path_buf(tmp.path().to_owned()).unwrap();
    let image = guest_image(&dir, XTASK, &[]).unwrap();
    Some((tmp, image, kernel))
}

fn vm_exec(
    image: &GuestImage,
    kernel: &Utf8PathBuf,
    flags: &[&str],
    cmd: &[&std::ffi::OsStr],
) -> Output {
    image
        .xtask(XTASK)
        .args(["vm-exec", "--accel", "tcg", "--kernel", kernel.as_str()])
        .args(flags)
        .arg("--")
        .args(cmd)
        .output()
        .unwrap()
}

#[test]
fn stdout_stderr_and_status_come_back() {
    let Some((_tmp, image, kernel)) = setup() else {
        return;
    };
    let out = vm_exec(
        &image,
        &kernel,
        &[],
        &["sh", "-c", "echo out; echo err >&2; exit 7"].map(std::ffi::OsStr::new),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(out.status.code(), Some(7));
    // Scratch files stay in the build directory and are removed.
    let scratch = image.build_dir.join("vm-exec");
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "{scratch} not cleaned"
    );
}

#[test]
fn arguments_and_output_keep_their_bytes() {
    let Some((_tmp, image, kernel)) = setup() else {
        return;
    };
    let release = kernel
        .file_name()
        .unwrap()
        .strip_prefix("vmlinuz-")
        .unwrap();
    let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let args: Vec<&std::ffi::OsStr> = [
        "sh",
        "-c",
        r#"printf '%s|' "$@"; printf '\000\001\r\n\377end\n' >&2; uname -r"#,
        "zero",
        "a b",
        "it's \"q\" $HOME `id` \\",
        "héllo ✓",
        "",
    ]
    .iter()
    .map(std::ffi::OsStr::new)
    .chain([latin1])
    .collect();
    let out = vm_exec(&image, &kernel, &[], &args);
    let mut want = b"a b|it's \"q\" $HOME `id` \\|h\xc3\xa9llo \xe2\x9c\x93||caf\xe9|".to_vec();
    want.extend_from_slice(format!("{release}\n").as_bytes());
    assert_eq!(
        out.stdout,
        want,
        "stdout {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(out.stderr, b"\x00\x01\r\n\xffend\n");
    assert_eq!(out.status.code(), Some(0));
}

/// Debian's kernel has 9p only as modules, which the image lacks: the
/// share cannot be mounted, and vm-exec says why instead of running the
/// command somewhere else. (With the project's kernel.config, 9p is built in.)
#[test]
fn share_without_9p_is_a_clear_error_and_bad_input_too() {
    let Some((_tmp, image, kernel)) = setup() else {
        return;
    };
    let share = image.build_dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let out = vm_exec(
        &image,
        &kernel,
        &["--share", share.as_str()],
        &["sh", "-c", "echo ran"].map(std::ffi::OsStr::new),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(out.stdout.is_empty(), "the command ran without its share");
    assert!(
        err.contains("cannot mount the --share directory (9p)"),
        "{err}"
    );
    assert!(err.contains("CONFIG_9P_FS"), "{err}");

    let out = vm_exec(
        &image,
        &kernel,
        &["--share", "/nonexistent/dir"],
        &["true"].map(std::ffi::OsStr::new),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("--share /nonexistent/dir: not a directory"),
        "{err}"
    );

    let out = image
        .xtask(XTASK)
        .args(["vm-exec", "--accel", "tcg"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap: a command is required");
}

mod common;

/// With the project's kernel (kernel.config: 9p and virtio built in) the
/// share works both ways, and it is the command's working directory.
#[test]
fn share_with_the_project_kernel() {
    let Some(built) = common::project_kernel() else {
        return;
    };
    require_tool("qemu-system-x86_64", "qemu-system-x86").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = Utf8PathBuf::from_path_buf(tmp.path().to_owned()).unwrap();
    let image = guest_image(&dir, XTASK, &[]).unwrap();
    let share = dir.join("shared dir");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("in file"), "from the host\n").unwrap();
    let out = vm_exec(
        &image,
        &built.bz_image,
        &["--share", share.as_str()],
        &[
            "sh",
            "-c",
            "pwd; cat 'in file'; uname -r > release; echo from the guest > out",
        ]
        .map(std::ffi::OsStr::new),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/mnt/share\nfrom the host\n"
    );
    assert_eq!(
        std::fs::read_to_string(share.join("out")).unwrap(),
        "from the guest\n"
    );
    let release = std::fs::read_to_string(share.join("release")).unwrap();
    assert_eq!(release.trim(), built.release, "not the project kernel");
}
