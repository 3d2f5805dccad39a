//! A small newc (`070701`) / crc (`070702`) cpio reader.
//!
//! Accepts what the kernel's initramfs unpacker accepts: a plain or gzip'd
//! stream (several gzip members concatenated, zero padding after a member
//! allowed), holding one or more archives each ending in `TRAILER!!!`, with
//! zero padding between them.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::fs::MetadataExt;

use anyhow::{bail, Context, Result};
use camino::Utf8Path;

use super::{create_file, finish_file, Meta, Tree, UnpackStats};
use crate::manifest::{Kind, Manifest};

const HEADER_LEN: usize = 110;
/// PATH_MAX: longer names or symlink targets mean a corrupt archive.
const MAX_NAME: u64 = 4096;

/// Unpacks a gzip'd or plain newc cpio `archive` into `root`, recording
/// every entry in `manifest` with `source` (e.g. `corepure64.gz`).
pub fn cpio(
    archive: &Utf8Path,
    root: &Utf8Path,
    manifest: &mut Manifest,
    source: &str,
) -> Result<UnpackStats> {
    let file =
        File::open(archive).with_context(|| format!("cannot open cpio archive {archive}"))?;
    let mut raw = BufReader::with_capacity(1 << 16, file);
    let head = raw
        .fill_buf()
        .with_context(|| format!("cannot read {archive}"))?;
    let stream: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(GzMembers {
            dec: Some(flate2::bufread::GzDecoder::new(raw)),
        })
    } else if head.starts_with(b"0707") {
        Box::new(raw)
    } else if head.is_empty() {
        bail!("{archive} is empty, not a cpio archive; delete it so it is downloaded again");
    } else {
        bail!(
            "{archive} is neither a gzip'd nor a plain newc cpio archive (starts with {:02x?}); \
             delete it so it is downloaded again",
            &head[..head.len().min(6)]
        );
    };
    let mut tree = Tree::new(root, manifest)?;
    let mut r = Reader {
        inner: BufReader::with_capacity(1 << 16, stream),
        pos: 0,
        archive,
    };
    unpack_stream(&mut r, &mut tree, archive, source)?;
    tree.finish()?;
    Ok(tree.stats)
}

/// Hard-link bookkeeping for one (dev, ino) of one archive.
struct LinkGroup {
    /// Names (relative to tc_root) that share the inode.
    names: Vec<String>,
    /// The name whose inode the others are linked to.
    leader: String,
    /// (st_dev, st_ino) of that inode on disk.
    inode: (u64, u64),
}

fn unpack_stream(
    r: &mut Reader<'_>,
    tree: &mut Tree<'_>,
    archive: &Utf8Path,
    source: &str,
) -> Result<()> {
    let mut after_trailer = false;
    let mut groups: HashMap<(u32, u32, u32), LinkGroup> = HashMap::new();
    loop {
        if after_trailer && r.skip_zeros()? {
            return Ok(());
        }
        let start = r.pos;
        if !start.is_multiple_of(4) {
            bail!("{archive}: cpio header at uncompressed offset {start} is not 4-byte aligned (corrupt archive)");
        }
        let mut hdr = [0u8; HEADER_LEN];
        r.read_exact(&mut hdr, "a cpio header")?;
        let magic = &hdr[..6];
        let crc = match magic {
            b"070701" => false,
            b"070702" => true,
            _ => bail!(
                "{archive}: bad cpio header magic {:?} at uncompressed offset {start} (not a newc archive, or corrupt); \
                 delete it so it is downloaded again",
                String::from_utf8_lossy(magic)
            ),
        };
        let field = |i: usize, what: &str| -> Result<u32> {
            let b = &hdr[6 + 8 * i..6 + 8 * (i + 1)];
            std::str::from_utf8(b)
                .ok()
                .and_then(|s| u32::from_str_radix(s, 16).ok())
                .with_context(|| format!("{archive}: cpio header at uncompressed offset {start} has a bad {what} field {:?} (corrupt archive; delete it so it is downloaded again)", String::from_utf8_lossy(b)))
        };
        let ino = field(0, "ino")?;
        let mode = field(1, "mode")?;
        let uid = field(2, "uid")?;
        let gid = field(3, "gid")?;
        let nlink = field(4, "nlink")?;
        let mtime = field(5, "mtime")?;
        let size = u64::from(field(6, "filesize")?);
        let devmajor = field(7, "devmajor")?;
        let devminor = field(8, "devminor")?;
        let rmajor = field(9, "rdevmajor")?;
        let rminor = field(10, "rdevminor")?;
        let namesize = u64::from(field(11, "namesize")?);
        let check = field(12, "check")?;

        if namesize == 0 || namesize > MAX_NAME + 1 {
            bail!("{archive}: cpio header at uncompressed offset {start} has an impossible name size {namesize}");
        }
        let mut name = vec![0u8; namesize as usize];
        r.read_exact(&mut name, "an entry name")?;
        if name.pop() != Some(0) || name.contains(&0) {
            bail!("{archive}: entry name at uncompressed offset {} is not NUL-terminated (corrupt archive)", start + HEADER_LEN as u64);
        }
        let name = String::from_utf8(name).map_err(|e| {
            anyhow::anyhow!(
                "entry `{}` at uncompressed offset {start} of {archive} has a name that is not UTF-8; \
                 tc_root paths must be UTF-8",
                String::from_utf8_lossy(e.as_bytes())
            )
        })?;
        r.align("the padding after an entry name")?;

        if name == "TRAILER!!!" {
            r.skip(size, "trailer data")?;
            r.align("the trailer padding")?;
            after_trailer = true;
            // Inode numbers are per archive.
            groups.clear();
            continue;
        }
        after_trailer = false;

        let kind = match mode & 0o170000 {
            0o040000 => Kind::Dir,
            0o100000 => Kind::File,
            0o120000 => {
                if size > MAX_NAME {
                    bail!("{archive}: symlink `{name}` at uncompressed offset {start} has an impossibly long target ({size} bytes)");
                }
                let mut t = vec![0u8; size as usize];
                r.read_exact(&mut t, "a symlink target")?;
                let target = String::from_utf8(t)
                    .map_err(|_| anyhow::anyhow!("symlink `{name}` in {archive} has a target that is not UTF-8"))?;
                Kind::Symlink { target }
            }
            0o020000 => Kind::CharDev { major: rmajor, minor: rminor },
            0o060000 => Kind::BlockDev { major: rmajor, minor: rminor },
            0o010000 => Kind::Fifo,
            0o140000 => Kind::Socket,
            t => bail!("entry `{name}` at uncompressed offset {start} of {archive} has an unknown file type {t:#o}"),
        };
        let meta = Meta {
            kind,
            mode: mode & 0o7777,
            uid,
            gid,
            mtime: i64::from(mtime),
        };
        let placed = tree.place(archive, source, &name, false, &meta)?;
        let entry_ctx = || format!("cannot unpack entry `{name}` of {archive}");

        match (&meta.kind, placed) {
            (Kind::File, Some(p)) => {
                let key = (devmajor, devminor, ino);
                let group = if nlink > 1 {
                    groups.get_mut(&key)
                } else {
                    None
                };
                let linkable = group.filter(|g| {
                    // The leader may have been replaced by a later entry.
                    tree.is_plain(&g.leader)
                        && std::fs::symlink_metadata(tree.root.join(&g.leader))
                            .is_ok_and(|m| (m.dev(), m.ino()) == g.inode)
                });
                match linkable {
                    Some(g) if size == 0 => {
                        std::fs::hard_link(tree.root.join(&g.leader), &p.disk)
                            .with_context(entry_ctx)?;
                        g.names.push(p.rel);
                        tree.stats.hard_links += 1;
                    }
                    Some(g) => {
                        // GNU cpio puts the data on the last name: give it a
                        // fresh inode and point the earlier names at it.
                        let inode = write_file(
                            r,
                            &p.disk,
                            size,
                            crc,
                            check,
                            &meta,
                            archive,
                            &name,
                            nlink > 1,
                        )?;
                        tree.stats.bytes += size;
                        for old in &g.names {
                            let old_disk = tree.root.join(old);
                            let same = tree.is_plain(old)
                                && std::fs::symlink_metadata(&old_disk)
                                    .is_ok_and(|m| (m.dev(), m.ino()) == g.inode);
                            if same {
                                std::fs::remove_file(&old_disk).with_context(entry_ctx)?;
                                std::fs::hard_link(&p.disk, &old_disk).with_context(entry_ctx)?;
                            }
                        }
                        tree.stats.hard_links += 1;
                        g.names.push(p.rel.clone());
                        g.leader = p.rel;
                        g.inode = inode;
                    }
                    None => {
                        let inode = write_file(
                            r,
                            &p.disk,
                            size,
                            crc,
                            check,
                            &meta,
                            archive,
                            &name,
                            nlink > 1,
                        )?;
                        tree.stats.bytes += size;
                        if nlink > 1 {
                            groups.insert(
                                key,
                                LinkGroup {
                                    names: vec![p.rel.clone()],
                                    leader: p.rel,
                                    inode,
                                },
                            );
                        }
                    }
                }
            }
            (Kind::Symlink { .. }, _) => {}
            _ => r.skip(size, "entry data")?,
        }
        r.align("the padding after entry data")?;
    }
}

/// Writes one file's data; returns its (st_dev, st_ino) if `linked` (it
/// has other names), else zeros.
#[allow(clippy::too_many_arguments)]
fn write_file(
    r: &mut Reader<'_>,
    disk: &Utf8Path,
    size: u64,
    crc: bool,
    check: u32,
    meta: &Meta,
    archive: &Utf8Path,
    name: &str,
    linked: bool,
) -> Result<(u64, u64)> {
    let ctx = || format!("cannot write {disk} (entry `{name}` of {archive})");
    let mut f = create_file(disk, meta.mode).with_context(ctx)?;
    let mut left = size;
    let mut sum: u32 = 0;
    while left > 0 {
        let buf = r.fill(left, "file data")?;
        let n = buf.len();
        if crc {
            sum = buf.iter().fold(sum, |s, &b| s.wrapping_add(u32::from(b)));
        }
        f.write_all(buf).with_context(ctx)?;
        r.consume(n);
        left -= n as u64;
    }
    if crc && sum != check {
        bail!("{archive}: entry `{name}` fails its checksum (corrupt archive); delete it so it is downloaded again");
    }
    finish_file(&f, meta.mtime).with_context(ctx)?;
    if !linked {
        return Ok((0, 0));
    }
    let md = f.metadata().with_context(ctx)?;
    Ok((md.dev(), md.ino()))
}

/// The uncompressed stream with its offset, for errors that point at bytes.
struct Reader<'a> {
    inner: BufReader<Box<dyn Read + 'a>>,
    pos: u64,
    archive: &'a Utf8Path,
}

impl Reader<'_> {
    fn read_exact(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.inner.read(&mut buf[done..]) {
                Ok(0) => {
                    return Err(io_err_at(
                        self.archive,
                        self.pos,
                        ErrorKind::UnexpectedEof.into(),
                        what,
                    ))
                }
                Ok(n) => {
                    done += n;
                    self.pos += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err_at(self.archive, self.pos, e, what)),
            }
        }
        Ok(())
    }

    /// Up to `max` buffered bytes, at least one; call [`Reader::consume`].
    fn fill(&mut self, max: u64, what: &str) -> Result<&[u8]> {
        let buf = match self.inner.fill_buf() {
            Ok(b) => b,
            Err(e) => {
                let pos = self.pos;
                return Err(io_err_at(self.archive, pos, e, what));
            }
        };
        if buf.is_empty() {
            return Err(io_err_at(
                self.archive,
                self.pos,
                ErrorKind::UnexpectedEof.into(),
                what,
            ));
        }
        let n = buf.len().min(usize::try_from(max).unwrap_or(usize::MAX));
        Ok(&buf[..n])
    }

    fn consume(&mut self, n: usize) {
        self.inner.consume(n);
        self.pos += n as u64;
    }

    fn skip(&mut self, mut n: u64, what: &str) -> Result<()> {
        while n > 0 {
            let len = self.fill(n, what)?.len();
            self.consume(len);
            n -= len as u64;
        }
        Ok(())
    }

    fn align(&mut self, what: &str) -> Result<()> {
        let pad = (4 - self.pos % 4) % 4;
        self.skip(pad, what)
    }

    /// Skips zero padding after a trailer; true at the end of the stream.
    fn skip_zeros(&mut self) -> Result<bool> {
        loop {
            let buf = match self.inner.fill_buf() {
                Ok(b) => b,
                Err(e) => {
                    return Err(io_err_at(
                        self.archive,
                        self.pos,
                        e,
                        "the padding after TRAILER!!!",
                    ))
                }
            };
            if buf.is_empty() {
                return Ok(true);
            }
            let zeros = buf.iter().take_while(|&&b| b == 0).count();
            let more = zeros < buf.len();
            self.consume(zeros);
            if more {
                return Ok(false);
            }
        }
    }
}

fn io_err_at(archive: &Utf8Path, pos: u64, e: std::io::Error, what: &str) -> anyhow::Error {
    if e.kind() == ErrorKind::UnexpectedEof {
        anyhow::anyhow!("{archive} is truncated: it ends in {what} at uncompressed offset {pos}; delete it so it is downloaded again")
    } else {
        anyhow::Error::new(e).context(format!(
            "cannot read {archive} at uncompressed offset {pos} ({what}): corrupt or truncated data; delete it so it is downloaded again"
        ))
    }
}

/// Concatenated gzip members as one stream. Unlike flate2's
/// `MultiGzDecoder` it accepts zero padding after the last member, as the
/// kernel does.
struct GzMembers<R: BufRead> {
    dec: Option<flate2::bufread::GzDecoder<R>>,
}

impl<R: BufRead> Read for GzMembers<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let Some(dec) = self.dec.as_mut() else {
                return Ok(0);
            };
            let n = dec.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            let Some(dec) = self.dec.take() else {
                return Ok(0);
            };
            let mut inner = dec.into_inner();
            loop {
                let next = inner.fill_buf()?;
                if next.is_empty() {
                    return Ok(0);
                }
                if next[0] == 0x1f {
                    self.dec = Some(flate2::bufread::GzDecoder::new(inner));
                    break;
                }
                let zeros = next.iter().take_while(|&&b| b == 0).count();
                if zeros == 0 {
                    return Err(std::io::Error::new(
                        ErrorKind::InvalidData,
                        "garbage after a gzip member",
                    ));
                }
                inner.consume(zeros);
            }
        }
    }
}
