//! The "new ASCII" (newc, `070701`) cpio format: what the kernel unpacks
//! (`init/initramfs.c`) and `gen_init_cpio` / `cpio -H newc` write.
//!
//! An entry is a 110-byte header of `070701` and 13 eight-digit hex fields,
//! the NUL-terminated name padded to a multiple of 4 (counting the header),
//! then the data padded to a multiple of 4. The archive ends with an entry
//! named `TRAILER!!!`.

use std::io::{self, Write};

pub const MAGIC: &[u8; 6] = b"070701";
/// `070702` is newc with a checksum field; the kernel accepts both.
pub const MAGIC_CRC: &[u8; 6] = b"070702";
pub const HEADER_LEN: usize = 110;
pub const TRAILER: &str = "TRAILER!!!";
/// The kernel's `PATH_MAX`, including the terminating NUL.
pub const PATH_MAX: usize = 4096;

pub const S_IFMT: u32 = 0o170000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFLNK: u32 = 0o120000;

/// The fields of one newc header (`check` is always written as 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub ino: u32,
    /// File type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub filesize: u32,
    pub devmajor: u32,
    pub devminor: u32,
    pub rdevmajor: u32,
    pub rdevminor: u32,
}

/// Bytes needed to pad `n` to a multiple of 4.
pub fn pad4(n: u64) -> usize {
    ((4 - (n % 4)) % 4) as usize
}

/// Writes the header and the padded name; returns the bytes written.
pub fn write_header(w: &mut impl Write, h: &Header, name: &[u8]) -> io::Result<u64> {
    let mut buf = Vec::with_capacity(HEADER_LEN + name.len() + 4);
    buf.extend_from_slice(MAGIC);
    let namesize = name.len() as u32 + 1;
    for v in [
        h.ino,
        h.mode,
        h.uid,
        h.gid,
        h.nlink,
        h.mtime,
        h.filesize,
        h.devmajor,
        h.devminor,
        h.rdevmajor,
        h.rdevminor,
        namesize,
        0,
    ] {
        // Fixed-width hex needs no allocation per field beyond this.
        let _ = write!(buf, "{v:08x}");
    }
    buf.extend_from_slice(name);
    buf.push(0);
    buf.resize(buf.len() + pad4(buf.len() as u64), 0);
    w.write_all(&buf)?;
    Ok(buf.len() as u64)
}

/// Writes the trailer entry; returns the bytes written.
pub fn write_trailer(w: &mut impl Write) -> io::Result<u64> {
    write_header(
        w,
        &Header {
            nlink: 1,
            ..Header::default()
        },
        TRAILER.as_bytes(),
    )
}
