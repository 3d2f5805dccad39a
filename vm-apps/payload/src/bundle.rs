//! The Rust VM apps' payload: the initramfs and, optionally, the kernel to
//! boot it with, in one blob after the `PAYLOAD:` line.
//!
//! ```text
//! LGAPP1\n
//! initramfs <size in bytes>\n
//! kernel <size in bytes>\n        (optional)
//! \n
//! <initramfs bytes><kernel bytes>
//! ```
//!
//! One `NAME SIZE` line per part, in the order the data follows; a blank
//! line ends the header. A payload that does not start with `LGAPP1\n` is
//! all initramfs, as with the old scripts (`embed-payload` of a plain
//! initramfs still makes a working app; the kernel then comes from
//! elsewhere).

use anyhow::{bail, Context, Result};

pub const MAGIC: &[u8] = b"LGAPP1\n";

/// The parts of a payload, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bundle<'a> {
    pub initramfs: &'a [u8],
    /// A bzImage for QEMU, when the app carries one.
    pub kernel: Option<&'a [u8]>,
}

/// The header for these parts; the data follows it in the same order.
pub fn header(initramfs_len: u64, kernel_len: Option<u64>) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(format!("initramfs {initramfs_len}\n").as_bytes());
    if let Some(k) = kernel_len {
        h.extend_from_slice(format!("kernel {k}\n").as_bytes());
    }
    h.push(b'\n');
    h
}

/// Splits a payload into its parts.
pub fn parse(payload: &[u8]) -> Result<Bundle<'_>> {
    let Some(mut rest) = payload.strip_prefix(MAGIC) else {
        return Ok(Bundle {
            initramfs: payload,
            kernel: None,
        });
    };
    let mut parts: Vec<(&str, usize)> = Vec::new();
    loop {
        let nl = rest
            .iter()
            .position(|&b| b == b'\n')
            .context("the payload's LGAPP1 header has no end (a blank line)")?;
        let line =
            std::str::from_utf8(&rest[..nl]).context("the payload's LGAPP1 header is not text")?;
        rest = &rest[nl + 1..];
        if line.is_empty() {
            break;
        }
        let (name, size) = line
            .split_once(' ')
            .with_context(|| format!("bad LGAPP1 header line {line:?}: expected `NAME SIZE`"))?;
        let size: usize = size
            .parse()
            .with_context(|| format!("bad LGAPP1 header line {line:?}: size is not a number"))?;
        parts.push((name, size));
    }
    let mut bundle = Bundle {
        initramfs: &[],
        kernel: None,
    };
    let mut have_initramfs = false;
    for (name, size) in parts {
        if rest.len() < size {
            bail!(
                "the payload is truncated: its {name} should be {size} bytes, only {} are left",
                rest.len()
            );
        }
        let (data, tail) = rest.split_at(size);
        rest = tail;
        match name {
            "initramfs" => {
                bundle.initramfs = data;
                have_initramfs = true;
            }
            "kernel" => bundle.kernel = Some(data),
            // Parts a newer xtask adds are skipped, not fatal.
            _ => {}
        }
    }
    if !have_initramfs {
        bail!("the payload's LGAPP1 header lists no initramfs");
    }
    Ok(bundle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_and_without_kernel() {
        let mut p = header(3, Some(2));
        p.extend_from_slice(b"abcKK");
        assert_eq!(
            parse(&p).unwrap(),
            Bundle {
                initramfs: b"abc",
                kernel: Some(b"KK")
            }
        );
        let mut p = header(3, None);
        p.extend_from_slice(b"abc");
        assert_eq!(parse(&p).unwrap().kernel, None);
        assert_eq!(parse(&p).unwrap().initramfs, b"abc");
    }

    #[test]
    fn plain_payload_is_the_initramfs() {
        let b = parse(b"\x1f\x8b gzip").unwrap();
        assert_eq!(b.initramfs, b"\x1f\x8b gzip");
        assert_eq!(b.kernel, None);
    }

    #[test]
    fn truncation_and_bad_headers_are_errors() {
        let mut p = header(10, None);
        p.extend_from_slice(b"short");
        let e = parse(&p).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("10 bytes"), "{e}");
        assert!(parse(b"LGAPP1\ninitramfs x\n\n").is_err());
        assert!(parse(b"LGAPP1\ninitramfs 1").is_err());
        assert!(parse(b"LGAPP1\nkernel 0\n\n").is_err());
    }
}
