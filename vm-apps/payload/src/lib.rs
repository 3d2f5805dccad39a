//! The VM-app PAYLOAD format of the old `embed_payload.sh`:
//!
//! ```text
//! <SRC bytes> "\n" "PAYLOAD:\n" <PAYLOAD bytes>
//! ```
//!
//! The old app scripts found the first line that is exactly `PAYLOAD:` in
//! themselves and took everything after it as the initramfs; [`extract`]
//! does the same, so files made by either tool work with both. When SRC is
//! an ELF program (the Rust VM apps), the search starts after the ELF
//! image: a program's own bytes may well contain a `PAYLOAD:` line.
//!
//! What the payload holds is up to the app; the Rust VM apps use the small
//! [`bundle`] container (initramfs, optionally a kernel).

use std::io::Read;

use anyhow::{Context, Result};
use camino::Utf8Path;

pub mod bundle;

pub const MARKER: &[u8] = b"PAYLOAD:\n";

#[cfg(feature = "embed")]
pub use embed::embed;

#[cfg(feature = "embed")]
mod embed {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    use anyhow::{Context, Result};
    use camino::Utf8Path;
    use rootfs::fsutil::AtomicFile;

    use super::MARKER;

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
        let mut f =
            std::fs::File::open(path).with_context(|| format!("cannot open {what} {path}"))?;
        std::io::copy(&mut f, out).with_context(|| format!("cannot copy {what} {path}"))?;
        Ok(())
    }
}

/// The bytes after the first line that is exactly `PAYLOAD:`, as the old
/// scripts' `sed`/`tail` extraction found them; for an ELF file, the first
/// such line after the ELF image.
pub fn extract(bytes: &[u8]) -> Option<&[u8]> {
    let mut line_start = 0;
    if let Some(end) = elf_end(bytes) {
        // embed() put "\n" right after SRC, so the marker line starts
        // there; a payload appended otherwise is still found by the scan.
        line_start = end.min(bytes.len());
        if !bytes[line_start..].starts_with(MARKER) {
            let nl = bytes[line_start..].iter().position(|&b| b == b'\n')?;
            line_start += nl + 1;
        }
    }
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

/// Where the ELF image in `bytes` ends: the furthest of the program
/// headers, the section headers and every segment's and section's file
/// data. `None` when `bytes` is not a (complete enough) ELF file.
pub fn elf_end(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < 0x34 || &bytes[..4] != b"\x7fELF" {
        return None;
    }
    let is64 = match bytes[4] {
        1 => false,
        2 => true,
        _ => return None,
    };
    let le = match bytes[5] {
        1 => true,
        2 => false,
        _ => return None,
    };
    let uint = |off: usize, len: usize| -> Option<u64> {
        let b = bytes.get(off..off + len)?;
        let mut v = 0u64;
        for i in 0..len {
            let byte = if le { b[len - 1 - i] } else { b[i] };
            v = (v << 8) | u64::from(byte);
        }
        Some(v)
    };
    let word = if is64 { 8 } else { 4 };
    let (phoff, shoff) = if is64 {
        (uint(0x20, 8)?, uint(0x28, 8)?)
    } else {
        (uint(0x1c, 4)?, uint(0x20, 4)?)
    };
    let base = if is64 { 0x36 } else { 0x2a };
    let (phentsize, phnum) = (uint(base, 2)?, uint(base + 2, 2)?);
    let (shentsize, shnum) = (uint(base + 4, 2)?, uint(base + 6, 2)?);
    let span = |off: u64, size: u64| off.saturating_add(size);
    let mut end: u64 = if is64 { 0x40 } else { 0x34 };
    end = end.max(span(phoff, phentsize * phnum));
    end = end.max(span(shoff, shentsize * shnum));
    for i in 0..phnum {
        let ph = usize::try_from(span(phoff, i * phentsize)).ok()?;
        // p_offset and p_filesz.
        let (off, size) = if is64 {
            (uint(ph + 8, 8)?, uint(ph + 32, 8)?)
        } else {
            (uint(ph + 4, 4)?, uint(ph + 16, 4)?)
        };
        end = end.max(span(off, size));
    }
    for i in 0..shnum {
        let sh = usize::try_from(span(shoff, i * shentsize)).ok()?;
        const SHT_NOBITS: u64 = 8;
        if uint(sh + 4, 4)? == SHT_NOBITS {
            continue;
        }
        // sh_offset and sh_size.
        let (off, size) = (
            uint(sh + 8 + 2 * word, word)?,
            uint(sh + 8 + 3 * word, word)?,
        );
        end = end.max(span(off, size));
    }
    usize::try_from(end).ok()
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

    /// A minimal ELF64: header, then data holding a `PAYLOAD:` line, then
    /// one section header at the end of the file.
    fn tiny_elf() -> Vec<u8> {
        let data = b"rodata\nPAYLOAD:\nnot the payload\n";
        let shoff = 0x40 + data.len() as u64;
        let mut e = vec![0u8; 0x40];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2; // 64-bit
        e[5] = 1; // little-endian
        e[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        e[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        e[0x3c..0x3e].copy_from_slice(&1u16.to_le_bytes()); // e_shnum
        e.extend_from_slice(data);
        let mut sh = [0u8; 64];
        sh[4] = 1; // SHT_PROGBITS
        sh[0x18..0x20].copy_from_slice(&0x40u64.to_le_bytes());
        sh[0x20..0x28].copy_from_slice(&(data.len() as u64).to_le_bytes());
        e.extend_from_slice(&sh);
        e
    }

    #[test]
    fn elf_programs_are_skipped_before_the_search() {
        let elf = tiny_elf();
        assert_eq!(elf_end(&elf), Some(elf.len()));
        assert_eq!(
            extract(&elf),
            None,
            "a marker inside the program is not the payload"
        );
        let mut app = elf.clone();
        app.extend_from_slice(b"\nPAYLOAD:\nreal");
        assert_eq!(extract(&app), Some(&b"real"[..]));
        // Truncated ELF: its claimed end is past the file.
        assert_eq!(extract(&elf[..elf.len() - 10]), None);
        assert_eq!(elf_end(b"#!/bin/sh\n"), None);
    }
}
