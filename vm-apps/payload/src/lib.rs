//! The VM-app PAYLOAD format of the old `embed_payload.sh`:
//!
//! ```text
//! <SRC bytes> "\n" "PAYLOAD:\n" <PAYLOAD bytes>
//! ```
//!
//! The old app scripts found the first line that is exactly `PAYLOAD:` in
//! themselves and took everything after it as the initramfs; [`extract`]
//! does the same, so files made by either tool work with both.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;

use anyhow::{Context, Result};
use camino::Utf8Path;
use rootfs::fsutil::AtomicFile;

pub const MARKER: &[u8] = b"PAYLOAD:\n";

/// Writes DST = SRC, `\n`, `PAYLOAD:\n`, PAYLOAD, mode 0755, atomically.
pub fn embed(src: &Utf8Path, payload: &Utf8Path, dst: &Utf8Path) -> Result<()> {
    let mut out = AtomicFile::create(dst)?;
    copy_into(src, &mut out, "the program (SRC)")?;
    out.write_all(b"\n")
        .with_context(|| format!("cannot write {dst}"))?;
    out.write_all(MARKER)
        .with_context(|| format!("cannot write {dst}"))?;
    copy_into(payload, &mut out, "the payload")?;
    out.file()
        .set_permissions(std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {dst} executable"))?;
    out.commit()
}

fn copy_into(path: &Utf8Path, out: &mut AtomicFile, what: &str) -> Result<()> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {what} {path}"))?;
    std::io::copy(&mut f, out).with_context(|| format!("cannot copy {what} {path}"))?;
    Ok(())
}

/// The bytes after the first line that is exactly `PAYLOAD:`, as the old
/// scripts' `sed`/`tail` extraction found them.
pub fn extract(bytes: &[u8]) -> Option<&[u8]> {
    let mut line_start = 0;
    loop {
        if bytes[line_start..].starts_with(MARKER) {
            return Some(&bytes[line_start + MARKER.len()..]);
        }
        let nl = bytes[line_start..].iter().position(|&b| b == b'\n')?;
        line_start += nl + 1;
    }
}

/// Reads a file and returns its payload; errors name the file.
pub fn extract_from_file(path: &Utf8Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("cannot read {path}"))?;
    extract(&bytes)
        .map(<[u8]>::to_vec)
        .with_context(|| format!("{path} has no `PAYLOAD:` line: it was not made by embed-payload"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extract_finds_the_first_marker_line_only() {
        assert_eq!(
            extract(b"#!/bin/sh\nexit\n\nPAYLOAD:\nab\nPAYLOAD:\ncd"),
            Some(&b"ab\nPAYLOAD:\ncd"[..])
        );
        // Not a whole line: no match.
        assert_eq!(extract(b"echo PAYLOAD:\nx"), None);
        assert_eq!(extract(b"PAYLOAD:\n"), Some(&b""[..]));
        assert_eq!(extract(b"PAYLOAD:"), None);
    }
}
