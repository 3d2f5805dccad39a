//! `embed` must give exactly what `cat SRC; echo; echo PAYLOAD:; cat PAYLOAD`
//! gives, and the old scripts' shell extraction must recover the payload.

use camino::{Utf8Path, Utf8PathBuf};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn shell_embed(dir: &Utf8Path, src: &Utf8Path, payload: &Utf8Path) -> Vec<u8> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"cat "$1"; echo; echo PAYLOAD:; cat "$2""#)
        .arg("sh")
        .arg(src)
        .arg(payload)
        .current_dir(dir)
        .output()
        .expect("sh runs");
    assert!(out.status.success());
    out.stdout
}

/// The extraction the old vm-app scripts used: line number of the first
/// exact `PAYLOAD:` line, then everything after it.
fn shell_extract(file: &Utf8Path) -> Vec<u8> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"line=$(grep -a -n -x -m1 'PAYLOAD:' "$1" | cut -d: -f1); tail -n +$((line + 1)) "$1""#)
        .arg("sh")
        .arg(file)
        .output()
        .expect("sh runs");
    assert!(out.status.success());
    out.stdout
}

fn case(src: &[u8], payload: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let d = Utf8PathBuf::from_path_buf(dir.path().to_owned()).unwrap();
    std::fs::write(d.join("src"), src).unwrap();
    std::fs::write(d.join("payload"), payload).unwrap();
    let dst = d.join("out/app");
    payload::embed(&d.join("src"), &d.join("payload"), &dst).unwrap();
    let ours = std::fs::read(&dst).unwrap();
    assert_eq!(ours, shell_embed(&d, &d.join("src"), &d.join("payload")));
    assert_eq!(
        std::fs::metadata(&dst).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(shell_extract(&dst), payload, "shell extraction");
    assert_eq!(
        payload::extract_from_file(&dst).unwrap(),
        payload,
        "our extraction"
    );
}

#[test]
fn matches_the_shell_layout() {
    case(
        b"#!/bin/sh\necho hi\nexit 0\n",
        b"\x1f\x8b binary \x00\xff payload",
    );
}

#[test]
fn src_without_final_newline() {
    case(b"#!/bin/sh\nexit 0", b"data\n");
}

#[test]
fn payload_containing_marker_lines() {
    case(b"#!/bin/sh\nexit 0\n", b"PAYLOAD:\nPAYLOAD:\nmore\n");
}

#[test]
fn missing_input_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = Utf8PathBuf::from_path_buf(dir.path().to_owned()).unwrap();
    std::fs::write(d.join("src"), b"x").unwrap();
    std::fs::write(d.join("app"), b"old").unwrap();
    let err = payload::embed(&d.join("src"), &d.join("nope"), &d.join("app")).unwrap_err();
    assert!(format!("{err:#}").contains("nope"), "{err:#}");
    assert_eq!(std::fs::read(d.join("app")).unwrap(), b"old");
}
