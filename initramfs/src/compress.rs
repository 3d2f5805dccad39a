//! Compressors for the initramfs, each producing what the kernel's
//! decompressors (`lib/decompress_*.c`) accept.
//!
//! Why each choice:
//! - **gzip** is one gzip member holding one deflate stream, compressed in
//!   parallel pigz-style: 1 MiB input chunks are deflated on worker threads,
//!   each primed with the previous chunk's last 32 KiB as dictionary and
//!   ended with a sync flush (byte-aligned), so the raw outputs concatenate
//!   into a single valid stream; the CRC32s are combined. Concatenated gzip
//!   *members* would be simpler but do not work for one archive: the
//!   kernel's `unpack_to_rootfs` decompresses one member at a time and
//!   fails with "junk at the end of compressed archive" unless each member
//!   ends exactly at a cpio trailer. Chunk boundaries depend only on the
//!   input, so the output is the same for any number of threads.
//!   Default level 6: gzip's own default and what the old script used.
//!   flate2's zlib-rs backend (zlib-ng's algorithms) makes level 6 with
//!   `deflate_medium` and a 4-byte hash: ~2.3x faster per core than GNU
//!   gzip -6 but 0.6-3.7% larger on the same archive (more on ELF-heavy
//!   trees, whose 3-byte matches it cannot find). The chunking costs
//!   nothing measurable (<0.05% against one unchunked stream). Level 7
//!   (lazy matching, as zlib's 6) is as small as gzip -6 for ~1.4x our
//!   level-6 time; 9 (3-byte rolling hash) up to 3% smaller for ~3.5x.
//! - **zstd** uses libzstd's worker threads (always at least one worker:
//!   libzstd's multi-threaded output is the same for any worker count, but
//!   differs from its single-threaded mode). Level 3 by default (zstd's
//!   default); up to 19: 20-22 ("ultra") need windows of up to 128 MiB that
//!   the guest kernel would have to allocate at boot.
//! - **xz** exactly as the kernel's own `usr/Makefile` does for
//!   `CONFIG_INITRAMFS_COMPRESSION_XZ` (`xz --check=crc32
//!   --lzma2=dict=1MiB`): the kernel's XZ decoder supports only the CRC32
//!   (or no) integrity check, not xz's default CRC64. Multi-threaded over
//!   3 MiB blocks (as `xz -T`).

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};

/// How the archive is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip { level: u32 },
    Zstd { level: i32 },
    Xz,
    None,
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Gzip { level: 6 }
    }
}

impl Compression {
    /// The usual file-name suffix (`initramfs.cpio` + this).
    pub fn extension(&self) -> &'static str {
        match self {
            Compression::Gzip { .. } => ".gz",
            Compression::Zstd { .. } => ".zst",
            Compression::Xz => ".xz",
            Compression::None => "",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::Gzip { level } => write!(f, "gzip:{level}"),
            Compression::Zstd { level } => write!(f, "zstd:{level}"),
            Compression::Xz => write!(f, "xz"),
            Compression::None => write!(f, "none"),
        }
    }
}

impl FromStr for Compression {
    type Err = anyhow::Error;

    /// `gzip`, `gzip:9`, `zstd`, `zstd:19`, `xz`, `none`.
    fn from_str(s: &str) -> Result<Self> {
        let (name, level) = match s.split_once(':') {
            Some((n, l)) => (n, Some(l)),
            None => (s, None),
        };
        let parse_level = |lo: i64, hi: i64| -> Result<Option<i64>> {
            let Some(l) = level else { return Ok(None) };
            let v: i64 = l
                .parse()
                .with_context(|| format!("compression level `{l}` in `{s}` is not a number"))?;
            if !(lo..=hi).contains(&v) {
                bail!("compression level {v} in `{s}` is out of range: use {lo}..={hi}");
            }
            Ok(Some(v))
        };
        Ok(match name {
            "gzip" | "gz" => Compression::Gzip {
                level: parse_level(1, 9)?.unwrap_or(6) as u32,
            },
            "zstd" | "zst" => Compression::Zstd {
                level: parse_level(1, 19)?.unwrap_or(3) as i32,
            },
            "xz" | "none" if level.is_some() => {
                bail!("`{name}` takes no level (got `{s}`); use `{name}`")
            }
            "xz" => Compression::Xz,
            "none" => Compression::None,
            other => {
                bail!("unknown compression `{other}`: use gzip[:1-9], zstd[:1-19], xz or none")
            }
        })
    }
}

/// A compressing writer; call [`Encoder::finish`] to complete the stream.
pub(crate) enum Encoder<W: Write + Send + 'static> {
    Gzip(GzipWriter<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Xz(liblzma::write::XzEncoder<W>),
    None(W),
}

impl<W: Write + Send + 'static> Encoder<W> {
    pub(crate) fn new(c: Compression, threads: usize, out: W) -> Result<Encoder<W>> {
        let threads = threads.max(1);
        Ok(match c {
            Compression::Gzip { level } => Encoder::Gzip(GzipWriter::new(out, level, threads)),
            Compression::Zstd { level } => {
                let mut e = zstd::stream::write::Encoder::new(out, level)
                    .context("cannot set up the zstd compressor")?;
                e.include_checksum(true)
                    .context("cannot enable zstd checksums")?;
                e.multithread(threads as u32)
                    .context("cannot enable zstd worker threads")?;
                Encoder::Zstd(e)
            }
            Compression::Xz => {
                let mut opts = liblzma::stream::LzmaOptions::new_preset(6)
                    .context("cannot set up the xz compressor")?;
                opts.dict_size(1 << 20);
                let mut filters = liblzma::stream::Filters::new();
                filters.lzma2(&opts);
                // Independent 3 MiB blocks (xz's default for a 1 MiB
                // dictionary), compressed in parallel; the kernel's decoder
                // reads multi-block streams. Fixed block size: the output
                // does not depend on the thread count.
                let stream = liblzma::stream::MtStreamBuilder::new()
                    .threads(threads as u32)
                    .block_size(3 << 20)
                    .filters(filters)
                    .check(liblzma::stream::Check::Crc32)
                    .encoder()
                    .context("cannot set up the xz compressor")?;
                Encoder::Xz(liblzma::write::XzEncoder::new_stream(out, stream))
            }
            Compression::None => Encoder::None(out),
        })
    }

    /// Completes the stream and returns the underlying writer.
    pub(crate) fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Gzip(g) => g.finish(),
            Encoder::Zstd(z) => z.finish(),
            Encoder::Xz(x) => x.finish(),
            Encoder::None(w) => Ok(w),
        }
    }
}

impl<W: Write + Send + 'static> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Gzip(g) => g.write(buf),
            Encoder::Zstd(z) => z.write(buf),
            Encoder::Xz(x) => x.write(buf),
            Encoder::None(w) => w.write(buf),
        }
    }

    /// Deliberately a no-op for the compressors: a flush would end the
    /// current deflate/zstd block early and make the output larger (and
    /// stall the worker threads).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Input bytes per parallel gzip chunk.
const GZIP_CHUNK: usize = 1 << 20;
/// Deflate's window: the dictionary handed from one chunk to the next.
const GZIP_DICT: usize = 32 * 1024;

/// A compressed chunk and the CRC32 of its input.
type ChunkResult = io::Result<(Vec<u8>, flate2::Crc)>;

struct GzipJob {
    data: Vec<u8>,
    dict: Vec<u8>,
    last: bool,
    reply: mpsc::SyncSender<ChunkResult>,
}

/// Parallel single-stream gzip writer (see the module docs).
pub(crate) struct GzipWriter<W: Write> {
    /// `None` only after `finish` took it.
    out: Option<W>,
    level: u32,
    chunk: Vec<u8>,
    dict: Vec<u8>,
    crc: flate2::Crc,
    jobs: Option<mpsc::Sender<GzipJob>>,
    workers: Vec<JoinHandle<()>>,
    pending: VecDeque<mpsc::Receiver<ChunkResult>>,
    max_pending: usize,
    header_written: bool,
}

impl<W: Write> GzipWriter<W> {
    pub(crate) fn new(out: W, level: u32, threads: usize) -> GzipWriter<W> {
        let (tx, rx) = mpsc::channel::<GzipJob>();
        let rx = Arc::new(Mutex::new(rx));
        let workers = (0..threads)
            .map(|_| {
                let rx = Arc::clone(&rx);
                std::thread::spawn(move || loop {
                    // The lock is held only while taking a job.
                    let job = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    let result = deflate_chunk(level, &job.data, &job.dict, job.last).map(|out| {
                        let mut crc = flate2::Crc::new();
                        crc.update(&job.data);
                        (out, crc)
                    });
                    // The writer may have given up (error elsewhere): fine.
                    let _ = job.reply.send(result);
                })
            })
            .collect();
        GzipWriter {
            out: Some(out),
            level,
            chunk: Vec::with_capacity(GZIP_CHUNK),
            dict: Vec::new(),
            crc: flate2::Crc::new(),
            jobs: Some(tx),
            workers,
            pending: VecDeque::new(),
            // Enough queued chunks to keep every worker busy while the
            // writer waits for the oldest, bounded to keep memory small.
            max_pending: threads * 2,
            header_written: false,
        }
    }

    fn dispatch(&mut self, last: bool) -> io::Result<()> {
        if !self.header_written {
            // No name, mtime 0 (reproducible), OS = Unix.
            let xfl = match self.level {
                9 => 2,
                1 => 4,
                _ => 0,
            };
            self.out()?
                .write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 3])?;
            self.header_written = true;
        }
        let data = std::mem::replace(&mut self.chunk, Vec::with_capacity(GZIP_CHUNK));
        let dict = std::mem::take(&mut self.dict);
        self.dict = data[data.len().saturating_sub(GZIP_DICT)..].to_vec();
        let (reply, rx) = mpsc::sync_channel(1);
        let job = GzipJob {
            data,
            dict,
            last,
            reply,
        };
        self.jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("gzip writer already finished"))?
            .send(job)
            .map_err(|_| io::Error::other("gzip worker threads stopped"))?;
        self.pending.push_back(rx);
        while self.pending.len() > self.max_pending {
            self.collect_one()?;
        }
        Ok(())
    }

    fn collect_one(&mut self) -> io::Result<()> {
        let Some(rx) = self.pending.pop_front() else {
            return Ok(());
        };
        let (bytes, crc) = rx
            .recv()
            .map_err(|_| io::Error::other("a gzip worker thread died"))??;
        self.crc.combine(&crc);
        self.out()?.write_all(&bytes)
    }

    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.dispatch(true)?;
        while !self.pending.is_empty() {
            self.collect_one()?;
        }
        let crc = self.crc.sum();
        let isize = self.crc.amount();
        self.out()?.write_all(&crc.to_le_bytes())?;
        self.out()?.write_all(&isize.to_le_bytes())?;
        self.shutdown();
        self.out
            .take()
            .ok_or_else(|| io::Error::other("gzip writer already finished"))
    }

    fn out(&mut self) -> io::Result<&mut W> {
        self.out
            .as_mut()
            .ok_or_else(|| io::Error::other("gzip writer already finished"))
    }

    fn shutdown(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl<W: Write> Drop for GzipWriter<W> {
    fn drop(&mut self) {
        // Drop pending results first so no worker blocks on a reply.
        self.pending.clear();
        self.shutdown();
    }
}

impl<W: Write> Write for GzipWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A full chunk is sent only once more input arrives, so that the
        // final chunk (the one ended with Finish, not Sync) is never empty
        // unless the whole input is.
        if self.chunk.len() == GZIP_CHUNK {
            self.dispatch(false)?;
        }
        let n = buf.len().min(GZIP_CHUNK - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Raw-deflates one chunk; non-final chunks end with a sync flush so the
/// next chunk's output can follow byte-aligned.
fn deflate_chunk(level: u32, data: &[u8], dict: &[u8], last: bool) -> io::Result<Vec<u8>> {
    use flate2::{Compress, FlushCompress, Status};
    let mut c = Compress::new(flate2::Compression::new(level), false);
    if !dict.is_empty() {
        c.set_dictionary(dict).map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(data.len() / 2 + 4096);
    loop {
        if out.capacity() - out.len() < 4096 {
            out.reserve(out.capacity().max(64 * 1024));
        }
        let consumed = c.total_in() as usize;
        let status = c
            .compress_vec(&data[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let all_in = c.total_in() as usize == data.len();
        match status {
            Status::StreamEnd => return Ok(out),
            // zlib's rule: a flush is complete when output space is left.
            _ if !last && all_in && out.len() < out.capacity() => return Ok(out),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gzip(data: &[u8], threads: usize) -> Vec<u8> {
        let mut g = GzipWriter::new(Vec::new(), 6, threads);
        // Odd write sizes cross chunk boundaries.
        for piece in data.chunks(300_007) {
            g.write_all(piece).unwrap();
        }
        g.finish().unwrap()
    }

    fn sample(len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        let mut x: u32 = 12345;
        while v.len() < len {
            x = x.wrapping_mul(1103515245).wrapping_add(12345);
            // Compressible but not trivial, with long-range repeats.
            let word = format!("w{} ", (x >> 16) % 500);
            v.extend_from_slice(word.as_bytes());
        }
        v.truncate(len);
        v
    }

    #[test]
    fn parallel_gzip_is_one_valid_member_independent_of_threads() {
        for len in [0, 1, GZIP_CHUNK, GZIP_CHUNK + 1, 3 * GZIP_CHUNK + 12345] {
            let data = sample(len);
            let one = gzip(&data, 1);
            let three = gzip(&data, 3);
            assert_eq!(one, three, "len {len}");
            // A single-member decoder must see everything.
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&one[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "len {len}");
        }
    }

    #[test]
    fn parses_compression_names() {
        assert_eq!(
            "gzip".parse::<Compression>().unwrap(),
            Compression::Gzip { level: 6 }
        );
        assert_eq!(
            "gzip:9".parse::<Compression>().unwrap(),
            Compression::Gzip { level: 9 }
        );
        assert_eq!(
            "zstd".parse::<Compression>().unwrap(),
            Compression::Zstd { level: 3 }
        );
        assert_eq!(
            "zstd:19".parse::<Compression>().unwrap(),
            Compression::Zstd { level: 19 }
        );
        assert_eq!("xz".parse::<Compression>().unwrap(), Compression::Xz);
        assert_eq!("none".parse::<Compression>().unwrap(), Compression::None);
        for bad in ["gzip:0", "gzip:x", "zstd:20", "xz:9", "lz4", ""] {
            assert!(bad.parse::<Compression>().is_err(), "{bad}");
        }
        for c in ["gzip:1", "zstd:7", "xz", "none"] {
            assert_eq!(c.parse::<Compression>().unwrap().to_string(), c);
        }
    }
}
