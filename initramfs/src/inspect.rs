//! `cat-cpio`: what is in an initramfs, biggest files last.
//!
//! Reads what the kernel reads (`init/initramfs.c`): a sequence of newc
//! archives, each either uncompressed or inside a gzip, zstd or xz member,
//! with NUL padding between them (how early-microcode images and `cat a.gz
//! b.gz` images look). Like the kernel, a compressed member must hold whole
//! archives, and a later entry with the same name replaces an earlier one.
//! Every format error names the file offset (and, inside a compressed
//! member, the offset in its decompressed data).

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};

use anyhow::{bail, Context, Result};
use camino::Utf8Path;
use rootfs::manifest::Manifest;

use crate::newc::{HEADER_LEN, MAGIC, MAGIC_CRC, PATH_MAX, S_IFMT, S_IFREG, TRAILER};

/// One regular file of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Name as in the archive, without a leading `./` or `/`.
    pub path: String,
    /// Size of the file's data (for hard links: of the shared data).
    pub size: u64,
    /// Names sharing one inode have the same group number.
    pub link_group: Option<u32>,
}

/// How a part of the image is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Uncompressed,
    Gzip,
    Zstd,
    Xz,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Uncompressed => "uncompressed",
            Format::Gzip => "gzip",
            Format::Zstd => "zstd",
            Format::Xz => "xz",
        })
    }
}

/// One compressed member or uncompressed stretch of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub format: Format,
    /// Where it starts in the file.
    pub offset: u64,
    /// Bytes it takes in the file.
    pub stored_len: u64,
    /// Bytes of cpio data it holds.
    pub cpio_len: u64,
    /// Complete cpio archives (trailers) in it.
    pub archives: usize,
}

/// The contents of an image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Regular files, smallest first (ties by name).
    pub files: Vec<FileEntry>,
    /// All entries of every kind, trailers excluded, duplicates included.
    pub entries: usize,
    pub members: Vec<Member>,
}

/// Reads and lists the image at `path`.
pub fn list(path: &Utf8Path) -> Result<Listing> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
    list_bytes(&data).with_context(|| format!("{path} is not a valid initramfs"))
}

/// Lists an image held in memory.
pub fn list_bytes(data: &[u8]) -> Result<Listing> {
    let mut st = Collector::default();
    let mut members = Vec::new();
    let mut off = 0usize;
    while off < data.len() {
        let rest = &data[off..];
        if rest[0] == 0 {
            off += 1;
            continue;
        }
        let before = st.archives;
        let (format, stored_len, cpio): (Format, usize, std::borrow::Cow<'_, [u8]>) = if rest
            .starts_with(b"07070")
        {
            // One uncompressed archive; what follows may be compressed.
            let end = st.archive(rest, 0, &|pos| format!("at file offset {}", off + pos))?;
            (Format::Uncompressed, end, rest[..end].into())
        } else if rest.starts_with(&[0x1f, 0x8b]) {
            let mut d = flate2::bufread::GzDecoder::new(rest);
            let mut out = Vec::new();
            d.read_to_end(&mut out).with_context(|| {
                format!("the gzip member at file offset {off} is corrupt or truncated")
            })?;
            let left = d.into_inner().len();
            (Format::Gzip, rest.len() - left, out.into())
        } else if rest.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            let n = zstd::zstd_safe::find_frame_compressed_size(rest).map_err(|code| {
                anyhow::anyhow!(
                    "the zstd frame at file offset {off} is corrupt or truncated ({})",
                    zstd::zstd_safe::get_error_name(code)
                )
            })?;
            let out = zstd::stream::decode_all(&rest[..n])
                .with_context(|| format!("the zstd frame at file offset {off} is corrupt"))?;
            (Format::Zstd, n, out.into())
        } else if rest.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            let mut d = liblzma::bufread::XzDecoder::new(rest);
            let mut out = Vec::new();
            d.read_to_end(&mut out).with_context(|| {
                format!("the xz stream at file offset {off} is corrupt or truncated")
            })?;
            let left = d.into_inner().len();
            (Format::Xz, rest.len() - left, out.into())
        } else {
            let other = [
                (&b"BZh"[..], "bzip2"),
                (&[0x5d, 0, 0][..], "lzma"),
                (&[0x02, 0x21, 0x4c, 0x18][..], "lz4"),
                (&[0x89, b'L', b'Z', b'O'][..], "lzo"),
            ]
            .iter()
            .find(|(m, _)| rest.starts_with(m))
            .map(|(_, n)| *n);
            match other {
                Some(name) => bail!("{name} data at file offset {off}: only gzip, zstd, xz and uncompressed are supported"),
                None => bail!(
                    "unknown data at file offset {off} (bytes {:02x?}): not gzip, zstd, xz or a newc cpio archive",
                    &rest[..rest.len().min(8)]
                ),
            }
        };
        if format != Format::Uncompressed {
            let mut pos = 0;
            while pos < cpio.len() {
                if cpio[pos] == 0 {
                    pos += 1;
                    continue;
                }
                let at = |p: usize| {
                    format!("in the {format} member at file offset {off}, decompressed offset {p}")
                };
                pos += st.archive(&cpio[pos..], pos, &at)?;
            }
        }
        members.push(Member {
            format,
            offset: off as u64,
            stored_len: stored_len as u64,
            cpio_len: cpio.len() as u64,
            archives: st.archives - before,
        });
        off += stored_len;
    }
    if members.is_empty() {
        bail!("the file is empty (or only NUL bytes)");
    }
    let mut files: Vec<FileEntry> = st.files.into_values().collect();
    for f in &mut files {
        if let Some(g) = f.link_group {
            f.size = st.group_size.get(&g).copied().unwrap_or(f.size);
        }
    }
    files.sort_by(|a, b| a.size.cmp(&b.size).then_with(|| a.path.cmp(&b.path)));
    Ok(Listing {
        files,
        entries: st.entries,
        members,
    })
}

#[derive(Default)]
struct Collector {
    files: HashMap<String, FileEntry>,
    entries: usize,
    archives: usize,
    next_group: u32,
    group_size: HashMap<u32, u64>,
}

impl Collector {
    /// Parses one archive at the start of `buf` (which starts at `base` in
    /// the data `at` describes); returns the bytes up to and including the
    /// trailer's padding.
    fn archive(&mut self, buf: &[u8], base: usize, at: &dyn Fn(usize) -> String) -> Result<usize> {
        // (ino, devmajor, devminor) -> group, per archive as in the kernel.
        let mut links: HashMap<(u32, u32, u32), u32> = HashMap::new();
        let mut pos = 0usize;
        loop {
            let here = base + pos;
            let h = buf.get(pos..pos + HEADER_LEN).with_context(|| {
                format!(
                    "archive truncated {}: {} bytes left, a header needs {HEADER_LEN}",
                    at(here),
                    buf.len() - pos
                )
            })?;
            if &h[..6] != MAGIC && &h[..6] != MAGIC_CRC {
                bail!(
                    "bad cpio magic {:?} {} (expected 070701)",
                    String::from_utf8_lossy(&h[..6]),
                    at(here)
                );
            }
            let field = |i: usize| -> Result<u32> {
                let s = &h[6 + 8 * i..14 + 8 * i];
                std::str::from_utf8(s)
                    .ok()
                    .and_then(|s| u32::from_str_radix(s, 16).ok())
                    .with_context(|| {
                        format!(
                            "bad hex field {:?} in the header {}",
                            String::from_utf8_lossy(s),
                            at(here)
                        )
                    })
            };
            let (ino, mode, nlink, filesize) =
                (field(0)?, field(1)?, field(4)?, field(6)? as usize);
            let (devmajor, devminor, namesize) = (field(7)?, field(8)?, field(11)? as usize);
            if namesize == 0 || namesize > PATH_MAX {
                bail!("name size {namesize} {} is not in 1..={PATH_MAX}", at(here));
            }
            let name_end = pos + HEADER_LEN + namesize;
            let raw = buf.get(pos + HEADER_LEN..name_end).with_context(|| {
                format!(
                    "archive truncated inside the name of the entry {}",
                    at(here)
                )
            })?;
            if raw[namesize - 1] != 0 {
                bail!("the name of the entry {} is not NUL-terminated", at(here));
            }
            let name = String::from_utf8_lossy(&raw[..namesize - 1]).into_owned();
            let data_start = align4(name_end);
            let data_end = data_start + filesize;
            if data_end > buf.len() {
                bail!(
                    "archive truncated inside the data of `{name}` {}: {filesize} bytes declared, {} present",
                    at(here),
                    buf.len().saturating_sub(data_start)
                );
            }
            pos = align4(data_end).min(buf.len());
            if name == TRAILER {
                self.archives += 1;
                return Ok(pos);
            }
            self.entries += 1;
            let path = name
                .trim_start_matches("./")
                .trim_start_matches('/')
                .to_string();
            if mode & S_IFMT != S_IFREG {
                // A later non-file replaces an earlier file of that name.
                self.files.remove(&path);
                continue;
            }
            let link_group = (nlink > 1).then(|| {
                *links.entry((ino, devmajor, devminor)).or_insert_with(|| {
                    self.next_group += 1;
                    self.next_group
                })
            });
            if let Some(g) = link_group {
                let s = self.group_size.entry(g).or_default();
                *s = (*s).max(filesize as u64);
            }
            self.files.insert(
                path.clone(),
                FileEntry {
                    path,
                    size: filesize as u64,
                    link_group,
                },
            );
        }
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Totals for a [`Listing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub files: usize,
    /// Data bytes, each hard-linked file counted once.
    pub total_bytes: u64,
    /// (directory, bytes, files) by the files directly in it, largest first.
    pub top_dirs: Vec<(String, u64, usize)>,
    /// (source archive, bytes, files), largest first, when a manifest was given;
    /// files the manifest does not know are under `(not in manifest)`.
    pub sources: Option<Vec<(String, u64, usize)>>,
    pub members: Vec<Member>,
}

impl Listing {
    /// Data bytes of all files, each hard-linked file counted once.
    pub fn total_bytes(&self) -> u64 {
        let mut seen = std::collections::HashSet::new();
        self.files
            .iter()
            .filter(|f| f.link_group.is_none_or(|g| seen.insert(g)))
            .map(|f| f.size)
            .sum()
    }

    /// Totals, the `top` largest directories and (with a manifest) the
    /// bytes per source extension.
    pub fn summary(&self, manifest: Option<&Manifest>, top: usize) -> Summary {
        let mut seen = std::collections::HashSet::new();
        let mut dirs: HashMap<String, (u64, usize)> = HashMap::new();
        let mut sources: HashMap<String, (u64, usize)> = HashMap::new();
        for f in &self.files {
            let counted = f.link_group.is_none_or(|g| seen.insert(g));
            let bytes = if counted { f.size } else { 0 };
            let dir = f.path.rsplit_once('/').map_or(".", |(d, _)| d);
            let e = dirs.entry(dir.to_string()).or_default();
            (e.0, e.1) = (e.0 + bytes, e.1 + 1);
            if let Some(m) = manifest {
                let src = m.get(&f.path).map_or("(not in manifest)", |e| {
                    e.source.as_deref().unwrap_or("(no source)")
                });
                let e = sources.entry(src.to_string()).or_default();
                (e.0, e.1) = (e.0 + bytes, e.1 + 1);
            }
        }
        let sorted = |m: HashMap<String, (u64, usize)>| {
            let mut v: Vec<(String, u64, usize)> =
                m.into_iter().map(|(k, (b, n))| (k, b, n)).collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            v
        };
        let mut top_dirs = sorted(dirs);
        top_dirs.truncate(top);
        Summary {
            files: self.files.len(),
            total_bytes: self.total_bytes(),
            top_dirs,
            sources: manifest.map(|_| sorted(sources)),
            members: self.members.clone(),
        }
    }

    /// One `SIZE\tPATH` line per regular file, smallest first.
    pub fn write_files(&self, w: &mut impl Write) -> io::Result<()> {
        for f in &self.files {
            writeln!(w, "{}\t{}", f.size, f.path)?;
        }
        Ok(())
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        writeln!(
            f,
            "{} files, {} bytes ({:.1} MiB)",
            self.files,
            self.total_bytes,
            mib(self.total_bytes)
        )?;
        for m in &self.members {
            writeln!(
                f,
                "  {} at offset {}: {} bytes stored, {} bytes of cpio, {} archive(s)",
                m.format, m.offset, m.stored_len, m.cpio_len, m.archives
            )?;
        }
        writeln!(f, "largest directories (files directly inside):")?;
        for (d, b, n) in &self.top_dirs {
            writeln!(f, "  {b:>12}  {n:>5} files  {d}")?;
        }
        if let Some(sources) = &self.sources {
            writeln!(f, "by source:")?;
            for (s, b, n) in sources {
                writeln!(f, "  {b:>12}  {n:>5} files  {s}")?;
            }
        }
        Ok(())
    }
}

/// What `cargo xtask cat-cpio` prints: the file list, then the summary.
pub fn print(listing: &Listing, manifest: Option<&Manifest>, w: &mut impl Write) -> io::Result<()> {
    listing.write_files(w)?;
    writeln!(w)?;
    write!(w, "{}", listing.summary(manifest, 10))
}
