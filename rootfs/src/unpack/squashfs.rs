//! `.tcz` extensions (squashfs 4.0, gzip or xz) via backhand.
//!
//! backhand exposes no inode numbers or link counts, so hard links inside a
//! squashfs come out as separate copies; TC's extensions rarely have any and
//! the guest does not care.

use std::collections::HashMap;
use std::io::{Cursor, Read, Write};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{anyhow, Context, Result};
use backhand::traits::Compressor;
use backhand::{BackhandError, FilesystemReader, InnerNode, SquashfsFileReader};
use camino::{Utf8Path, Utf8PathBuf};
use flate2::{Decompress, FlushDecompress, Status};

use super::{create_file, finish_file, Meta, Tree, UnpackStats};
use crate::manifest::{Kind, Manifest};

/// Unpacks one squashfs image over `root` (`unsquashfs -f` semantics).
pub fn squashfs(
    archive: &Utf8Path,
    root: &Utf8Path,
    manifest: &mut Manifest,
    source: &str,
) -> Result<UnpackStats> {
    squashfs_many(
        &[(archive.to_owned(), source.to_string())],
        root,
        manifest,
        1,
    )
}

/// Unpacks squashfs images over `root` in order, later ones overwriting
/// earlier ones exactly as a loop of `unsquashfs -f` would, but with file
/// data decompressed and written by `threads` workers.
pub fn squashfs_many(
    archives: &[(Utf8PathBuf, String)],
    root: &Utf8Path,
    manifest: &mut Manifest,
    threads: usize,
) -> Result<UnpackStats> {
    let (_, stats) = squashfs_many_after(archives, root, manifest, threads, |_| {
        Ok(UnpackStats::default())
    })?;
    Ok(stats)
}

/// [`squashfs_many`] after `before` (the core's unpack) has run on the
/// calling thread; meanwhile the other workers already read and decompress
/// the images, which needs nothing from tc_root. Returns what `before`
/// returned and the images' stats.
///
/// How: every image's directory tree is read first (cheap). Then, in archive
/// order, directories, symlinks and manifest-only entries are applied and
/// each regular file is planned (it counts as present for later entries: a
/// later directory or symlink at its path replaces it, a later file wins it,
/// a file replacing a directory tree drops the files planned below it), so
/// every entry sees the same state as in a sequential unpack. Each file path
/// thus ends up with exactly one winning archive, and the workers create
/// only the winners, in any order, from the decompressed contents.
pub fn squashfs_many_after<T>(
    archives: &[(Utf8PathBuf, String)],
    root: &Utf8Path,
    manifest: &mut Manifest,
    threads: usize,
    before: impl FnOnce(&mut Manifest) -> Result<T>,
) -> Result<(T, UnpackStats)> {
    let helpers = threads.max(1) - 1;
    let work = Work::new(archives, root);
    let result = std::thread::scope(|s| {
        for h in 0..helpers.min(archives.len().max(1)) {
            let work = &work;
            s.spawn(move || work.helper(h == 0));
        }
        // The helpers wait for the lead's plan: on an error or a panic here,
        // tell them to stop before the scope waits for them.
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            work.lead(manifest, root, before, helpers > 0)
        }));
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                work.abort();
                Err(e)
            }
            Err(panic) => {
                work.abort();
                std::panic::resume_unwind(panic)
            }
        }
    });
    let (before_result, mut tree) = result?;
    let Work {
        first_err, total, ..
    } = work;
    if let Some((_, e)) = first_err
        .into_inner()
        .map_err(|_| anyhow!("a worker writing files panicked"))?
    {
        return Err(e);
    }
    tree.stats.bytes += total.into_inner() as u64;
    tree.finish()?;
    Ok((before_result, tree.stats))
}

/// A parsed image and its bytes, which the gzip fast path reads directly.
struct Image {
    fs: FilesystemReader<'static>,
    data: Arc<Vec<u8>>,
}

/// The contents of an image's regular files by node index, or why one could
/// not be read.
type Contents = Vec<Option<std::result::Result<Vec<u8>, String>>>;

/// Per archive, the (path relative to tc_root, node index) of each file it
/// wins, in node order.
type Plan = Vec<Vec<(String, usize)>>;

/// The image bytes as backhand's reader (a `Cursor` needs `AsRef<[u8]>`).
#[derive(Clone)]
struct SharedBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The state the workers share: parsed images, decompressed contents
/// (each image decompressed once, by whoever claims it first), the plan of
/// which files to write, and the first error.
struct Work<'a> {
    archives: &'a [(Utf8PathBuf, String)],
    root: &'a Utf8Path,
    images: OnceLock<std::result::Result<Vec<Image>, String>>,
    claimed: Vec<AtomicBool>,
    contents: Vec<OnceLock<Contents>>,
    next_decode: AtomicUsize,
    /// The files to write; `None` when the lead gave up.
    plan: OnceLock<Option<Plan>>,
    next_write: AtomicUsize,
    stop: AtomicBool,
    first_err: Mutex<Option<((usize, usize), anyhow::Error)>>,
    total: AtomicUsize,
}

impl<'a> Work<'a> {
    fn new(archives: &'a [(Utf8PathBuf, String)], root: &'a Utf8Path) -> Work<'a> {
        Work {
            archives,
            root,
            images: OnceLock::new(),
            claimed: archives.iter().map(|_| AtomicBool::new(false)).collect(),
            contents: archives.iter().map(|_| OnceLock::new()).collect(),
            next_decode: AtomicUsize::new(0),
            plan: OnceLock::new(),
            next_write: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            first_err: Mutex::new(None),
            total: AtomicUsize::new(0),
        }
    }

    /// Reads and parses every image (on one thread: it is cheap).
    fn parse_all(&self) {
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.archives
                .iter()
                .map(|(path, _)| open_one(path))
                .collect::<Result<Vec<_>>>()
                .map_err(|e| format!("{e:#}"))
        }))
        .unwrap_or_else(|_| Err("reading the squashfs images panicked".to_string()));
        let _ = self.images.set(r);
    }

    fn images(&self) -> Option<&[Image]> {
        self.images.wait().as_ref().ok().map(|v| &v[..])
    }

    /// Makes the helpers stop (after an error on the lead's side).
    fn abort(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.plan.set(None);
        let _ = self.images.set(Err("aborted".into()));
    }

    /// A helper thread: parses (the first one), decompresses images until
    /// the plan is ready, then writes files.
    fn helper(&self, parses: bool) {
        if parses {
            self.parse_all();
        }
        let Some(images) = self.images() else { return };
        while self.plan.get().is_none() && !self.stop.load(Ordering::Relaxed) {
            let i = self.next_decode.fetch_add(1, Ordering::Relaxed);
            if i >= images.len() {
                break;
            }
            self.decoded(images, i);
        }
        if let Some(plan) = self.plan.wait() {
            self.write_files(images, plan);
        }
    }

    /// The calling thread: runs `before`, applies the images' entries in
    /// order, publishes the plan and writes files with the helpers.
    fn lead<'m, T>(
        &self,
        manifest: &'m mut Manifest,
        root: &'m Utf8Path,
        before: impl FnOnce(&mut Manifest) -> Result<T>,
        helped: bool,
    ) -> Result<(T, Tree<'m>)> {
        let b = before(manifest)?;
        if !helped {
            self.parse_all();
        }
        let images = match self.images.wait() {
            Ok(v) => &v[..],
            Err(e) => return Err(anyhow!("{e}")),
        };
        let mut tree = Tree::new(root, manifest)?;
        place_all(&mut tree, images, self.archives)?;
        let mut per_archive: Plan = vec![Vec::new(); self.archives.len()];
        for (rel, (archive, node)) in std::mem::take(&mut tree.planned) {
            per_archive[archive].push((rel, node));
        }
        for files in &mut per_archive {
            files.sort_by_key(|(_, node)| *node);
        }
        let _ = self.plan.set(Some(per_archive));
        if let Some(Some(plan)) = self.plan.get() {
            self.write_files(images, plan);
        }
        Ok((b, tree))
    }

    /// The contents of image `i`, decompressing them unless another worker
    /// already has (or is: then this waits for it).
    fn decoded(&self, images: &[Image], i: usize) -> &Contents {
        if !self.claimed[i].swap(true, Ordering::AcqRel) {
            let img = &images[i];
            let contents = std::panic::catch_unwind(AssertUnwindSafe(|| read_contents(img)))
                .unwrap_or_else(|_| {
                    img.fs
                        .files()
                        .map(|n| {
                            matches!(n.inner, InnerNode::File(_))
                                .then(|| Err("the decompressor panicked".to_string()))
                        })
                        .collect()
                });
            let _ = self.contents[i].set(contents);
        }
        self.contents[i].wait()
    }

    /// Takes images in order and writes the files each one wins.
    fn write_files(&self, images: &[Image], plan: &[Vec<(String, usize)>]) {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let a = self.next_write.fetch_add(1, Ordering::Relaxed);
            let Some(files) = plan.get(a) else { return };
            if files.is_empty() {
                continue;
            }
            let contents = self.decoded(images, a);
            for (k, (rel, node)) in files.iter().enumerate() {
                if self.stop.load(Ordering::Relaxed) {
                    return;
                }
                let r = write_one(
                    &images[a],
                    contents,
                    &self.archives[a].0,
                    self.root,
                    rel,
                    *node,
                );
                match r {
                    Ok(n) => {
                        self.total.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.stop.store(true, Ordering::Relaxed);
                        if let Ok(mut fe) = self.first_err.lock() {
                            // Report the earliest failing entry so the error
                            // does not depend on thread timing.
                            if fe.as_ref().is_none_or(|(at, _)| (a, k) < *at) {
                                *fe = Some(((a, k), e));
                            }
                        }
                        return;
                    }
                }
            }
        }
    }
}

fn open_one(path: &Utf8Path) -> Result<Image> {
    let data = Arc::new(
        std::fs::read(path).with_context(|| format!("cannot open squashfs image {path}"))?,
    );
    let fs = FilesystemReader::from_reader(Cursor::new(SharedBytes(data.clone()))).map_err(|e| {
        anyhow!("{path} is not a valid squashfs 4.0 image (gzip or xz): {}; delete it so it is downloaded again", describe(&e))
    })?;
    Ok(Image { fs, data })
}

/// Decompresses every regular file of an image.
fn read_contents(img: &Image) -> Contents {
    let mut scratch = Scratch::new();
    img.fs
        .files()
        .map(|node| match &node.inner {
            InnerNode::File(file) => Some(if img.fs.compressor == Some(Compressor::Gzip) {
                read_gzip_file(&img.fs, &img.data, file, &mut scratch)
            } else {
                read_with_backhand(&img.fs, file).map_err(|e| e.to_string())
            }),
            _ => None,
        })
        .collect()
}

/// Applies every image's entries in order; regular files are only planned.
fn place_all(
    tree: &mut Tree<'_>,
    images: &[Image],
    archives: &[(Utf8PathBuf, String)],
) -> Result<()> {
    for (ai, (img, (archive, source))) in images.iter().zip(archives).enumerate() {
        for (ni, node) in img.fs.files().enumerate() {
            let name = node.fullpath.to_str().ok_or_else(|| {
                anyhow!(
                    "entry `{}` of {archive} has a name that is not UTF-8; tc_root paths must be UTF-8",
                    node.fullpath.display()
                )
            })?;
            let h = &node.header;
            let kind = match &node.inner {
                InnerNode::Dir(_) => Kind::Dir,
                InnerNode::File(_) => Kind::File,
                InnerNode::Symlink(s) => Kind::Symlink {
                    target: s
                        .link
                        .to_str()
                        .ok_or_else(|| {
                            anyhow!("symlink `{name}` in {archive} has a target that is not UTF-8")
                        })?
                        .to_string(),
                },
                InnerNode::CharacterDevice(d) => {
                    let (major, minor) = decode_dev(d.device_number);
                    Kind::CharDev { major, minor }
                }
                InnerNode::BlockDevice(d) => {
                    let (major, minor) = decode_dev(d.device_number);
                    Kind::BlockDev { major, minor }
                }
                InnerNode::NamedPipe => Kind::Fifo,
                InnerNode::Socket => Kind::Socket,
            };
            let meta = Meta {
                kind,
                mode: u32::from(h.permissions) & 0o7777,
                uid: h.uid,
                gid: h.gid,
                mtime: i64::from(h.mtime),
            };
            let placed = tree.place(archive, source, name, true, &meta)?;
            if let (Kind::File, Some(p)) = (&meta.kind, placed) {
                tree.planned.insert(p.rel, (ai, ni));
            }
        }
    }
    Ok(())
}

/// Reusable state for reading one image: one inflater, and the image's
/// decompressed fragment blocks.
struct Scratch {
    inflate: Decompress,
    fragments: HashMap<u32, Vec<u8>>,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            inflate: Decompress::new(true),
            fragments: HashMap::new(),
        }
    }
}

fn write_one(
    img: &Image,
    contents: &Contents,
    archive: &Utf8Path,
    root: &Utf8Path,
    rel: &str,
    node_index: usize,
) -> Result<usize> {
    let node = &img.fs.root.nodes[node_index];
    let (InnerNode::File(file), Some(Some(contents))) = (&node.inner, contents.get(node_index))
    else {
        return Err(anyhow!(
            "internal error: planned entry {rel} of {archive} is not a regular file"
        ));
    };
    let name = node.fullpath.display();
    let data = contents.as_ref().map_err(|why| {
        anyhow!(
            "{archive}: cannot decompress entry `{name}`: {why} (corrupt or truncated image; delete it so it is downloaded again)"
        )
    })?;
    if data.len() != file.file_len() {
        return Err(anyhow!(
            "{archive}: entry `{name}` has {} bytes of data but its inode says {} (corrupt image; delete it so it is downloaded again)",
            data.len(),
            file.file_len()
        ));
    }
    let disk = root.join(rel);
    let ctx = || format!("cannot write {disk} (entry `{name}` of {archive})");
    // The sequential pass cleared this path; nothing else creates it.
    let mut out = create_file(&disk, u32::from(node.header.permissions)).with_context(ctx)?;
    out.write_all(data).with_context(ctx)?;
    finish_file(&out, i64::from(node.header.mtime)).with_context(ctx)?;
    Ok(data.len())
}

/// Any compression backhand knows (xz), through its reader.
fn read_with_backhand(
    fs: &FilesystemReader<'static>,
    file: &SquashfsFileReader,
) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::with_capacity(file.file_len());
    let mut reader = fs
        .file(file)
        .reader_checked()
        .map_err(|e| std::io::Error::other(describe(&e)))?;
    reader.read_to_end(&mut data)?;
    Ok(data)
}

const NO_FRAGMENT: u32 = 0xffff_ffff;

/// A gzip image's file, read straight from the image bytes: each 4 KiB
/// block is inflated in place into the file's buffer with one reused
/// inflater (backhand allocates a new one per block and seeks a shared
/// reader under a lock), and fragment blocks are inflated once.
fn read_gzip_file(
    fs: &FilesystemReader<'static>,
    image: &[u8],
    file: &SquashfsFileReader,
    s: &mut Scratch,
) -> std::result::Result<Vec<u8>, String> {
    let (blocks_start, file_len, frag_index, block_offset, sizes) = match file {
        SquashfsFileReader::Basic(b) => (
            u64::from(b.blocks_start),
            u64::from(b.file_size),
            b.frag_index,
            b.block_offset,
            &b.block_sizes[..],
        ),
        SquashfsFileReader::Extended(e) => (
            e.blocks_start,
            e.file_size,
            e.frag_index,
            e.block_offset,
            &e.block_sizes[..],
        ),
    };
    let bs = fs.block_size as usize;
    let len = usize::try_from(file_len).map_err(|_| "file too large".to_string())?;
    // Room past the end lets the inflater stay in its fast loop to the
    // last byte of a block (it needs a few hundred bytes of headroom).
    let mut data = vec![0u8; len + SLACK];
    let mut pos = usize::try_from(blocks_start).map_err(|_| "bad block offset".to_string())?;
    let mut at = 0usize;
    for size in sizes {
        let want = bs.min(len - at);
        if want == 0 {
            return Err("more data blocks than the file size needs".into());
        }
        let stored = size.size() as usize;
        if stored == 0 {
            // A hole: zeros, which the buffer already holds.
            at += want;
            continue;
        }
        if stored > bs {
            return Err(format!(
                "a data block of {stored} bytes exceeds the block size"
            ));
        }
        let end = pos
            .checked_add(stored)
            .filter(|&end| end <= image.len())
            .ok_or("a data block lies beyond the end of the image")?;
        if size.uncompressed() {
            if stored != want {
                return Err("an uncompressed block has the wrong size".into());
            }
            data[at..at + want].copy_from_slice(&image[pos..end]);
        } else {
            // The input may run on into the next block, for the same reason;
            // the stream must still end exactly at this block's end.
            let raw = &image[pos..image.len().min(end + SLACK)];
            inflate_exact(&mut s.inflate, raw, stored, &mut data[at..], want)?;
        }
        pos = end;
        at += want;
    }
    if frag_index == NO_FRAGMENT {
        if at != len {
            return Err("the data blocks are shorter than the file".into());
        }
        data.truncate(len);
        return Ok(data);
    }
    let tail = len - at;
    if tail >= bs {
        return Err("the fragment tail is longer than a block".into());
    }
    if !s.fragments.contains_key(&frag_index) {
        let frag = fs
            .fragments
            .as_ref()
            .and_then(|f| f.get(frag_index as usize))
            .ok_or("the fragment index is out of range")?;
        let stored = frag.size.size() as usize;
        if stored > bs {
            return Err("a fragment block exceeds the block size".into());
        }
        let start = usize::try_from(frag.start).map_err(|_| "bad fragment offset".to_string())?;
        let raw = start
            .checked_add(stored)
            .and_then(|end| image.get(start..end))
            .ok_or("a fragment block lies beyond the end of the image")?;
        let block = if frag.size.uncompressed() {
            raw.to_vec()
        } else {
            let mut block = vec![0u8; bs + SLACK];
            let n = inflate_some(&mut s.inflate, raw, &mut block)?;
            if n > bs {
                return Err("a fragment block inflates to more than the block size".into());
            }
            block.truncate(n);
            block
        };
        s.fragments.insert(frag_index, block);
    }
    let block = &s.fragments[&frag_index];
    let from = block_offset as usize;
    let src = from
        .checked_add(tail)
        .and_then(|end| block.get(from..end))
        .ok_or("the file's tail lies outside its fragment block")?;
    data[at..len].copy_from_slice(src);
    data.truncate(len);
    Ok(data)
}

/// Headroom for the inflater's fast loop, in and out.
const SLACK: usize = 1024;

/// Inflates one zlib stream of exactly `stored` bytes at the start of `raw`
/// into exactly `want` bytes at the start of `out`.
fn inflate_exact(
    dec: &mut Decompress,
    raw: &[u8],
    stored: usize,
    out: &mut [u8],
    want: usize,
) -> std::result::Result<(), String> {
    let n = inflate_some(dec, raw, out)?;
    if n != want {
        return Err(format!(
            "a data block inflates to {n} bytes instead of {want}"
        ));
    }
    if dec.total_in() as usize != stored {
        return Err("a data block's stream does not end where the block does".into());
    }
    Ok(())
}

/// Inflates one complete zlib stream into `out`; returns its length.
fn inflate_some(
    dec: &mut Decompress,
    raw: &[u8],
    out: &mut [u8],
) -> std::result::Result<usize, String> {
    dec.reset(true);
    match dec.decompress(raw, out, FlushDecompress::Finish) {
        Ok(Status::StreamEnd) => Ok(dec.total_out() as usize),
        Ok(_) => Err("a block is truncated or inflates to more than the block size".into()),
        Err(e) => Err(format!("bad gzip data ({e})")),
    }
}

/// Linux `new_decode_dev`, the encoding squashfs stores.
fn decode_dev(dev: u32) -> (u32, u32) {
    ((dev & 0xfff00) >> 8, (dev & 0xff) | ((dev >> 12) & 0xfff00))
}

/// backhand prints nothing for its errors without its `error-strings`
/// feature (which pulls in `tracing`); say what the common ones mean.
fn describe(e: &BackhandError) -> String {
    match e {
        BackhandError::StdIo(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the file ends early (truncated)".to_string()
        }
        BackhandError::StdIo(io) => format!("read error: {io}"),
        BackhandError::Deku(_) => {
            "bad superblock or table (not squashfs, or truncated)".to_string()
        }
        BackhandError::UnsupportedCompression(c) => format!("unsupported compression {c}"),
        BackhandError::MissingCompressor => "no compressor recorded".to_string(),
        BackhandError::UnsupportedSquashfsVersion(major, minor) => {
            format!("squashfs version {major}.{minor}, only 4.0 is supported")
        }
        BackhandError::CorruptedOrInvalidSquashfs => "corrupt or invalid image".to_string(),
        BackhandError::InvalidCompressionOption => "invalid compression options".to_string(),
        BackhandError::InvalidIdTable | BackhandError::IdNotFoundInTable => {
            "corrupt uid/gid table".to_string()
        }
        BackhandError::InvalidFilePath | BackhandError::UndefineFileName => {
            "an entry has an invalid name".to_string()
        }
        BackhandError::DuplicatedFileName => "an entry name appears twice".to_string(),
        BackhandError::UnexpectedInode | BackhandError::UnsupportedInode => {
            "unexpected or unsupported inode type".to_string()
        }
        BackhandError::StrUtf8(_) | BackhandError::StringUtf8(_) => {
            "a name is not UTF-8".to_string()
        }
        _ => "corrupt or unsupported image".to_string(),
    }
}
