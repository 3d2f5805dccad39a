//! `.tcz` extensions (squashfs 4.0, gzip or xz) via backhand.
//!
//! backhand exposes no inode numbers or link counts, so hard links inside a
//! squashfs come out as separate copies; TC's extensions rarely have any and
//! the guest does not care.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{anyhow, Context, Result};
use backhand::{BackhandError, FilesystemReader, InnerNode};
use camino::{Utf8Path, Utf8PathBuf};

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
/// data written by `threads` workers.
///
/// How: every image's directory tree is read first (cheap). Then, in archive
/// order, directories, symlinks and manifest-only entries are applied and
/// each regular file is planned (it counts as present for later entries: a
/// later directory or symlink at its path replaces it, a later file wins it,
/// a file replacing a directory tree drops the files planned below it), so
/// every entry sees the same state as in a sequential unpack. Each file path
/// thus ends up with exactly one winning archive, and the workers create
/// only the winners, in any order. Creating files is most of the cost on
/// ext4, so it is left to the workers too.
pub fn squashfs_many(
    archives: &[(Utf8PathBuf, String)],
    root: &Utf8Path,
    manifest: &mut Manifest,
    threads: usize,
) -> Result<UnpackStats> {
    let threads = threads.max(1);
    let readers = open_all(archives, threads)?;

    let mut tree = Tree::new(root, manifest)?;
    for (ai, (fs, (archive, source))) in readers.iter().zip(archives).enumerate() {
        for (ni, node) in fs.files().enumerate() {
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

    // One unit of work per image: two threads reading the same image would
    // contend for its reader lock and fragment cache.
    let mut per_archive: Vec<Vec<(String, usize)>> = vec![Vec::new(); archives.len()];
    for (rel, (archive, node)) in std::mem::take(&mut tree.planned) {
        per_archive[archive].push((rel, node));
    }
    for files in &mut per_archive {
        files.sort_by_key(|(_, node)| *node);
    }
    let bytes = write_all(&readers, archives, root, &per_archive, threads)?;
    tree.stats.bytes += bytes;
    tree.finish()?;
    Ok(tree.stats)
}

/// Reads every image's superblock and directory tree, `threads` at a time.
fn open_all(
    archives: &[(Utf8PathBuf, String)],
    threads: usize,
) -> Result<Vec<FilesystemReader<'static>>> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<FilesystemReader<'static>>>>> =
        Mutex::new((0..archives.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads.min(archives.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((path, _)) = archives.get(i) else {
                    break;
                };
                let r = open_one(path);
                if let Ok(mut v) = results.lock() {
                    v[i] = Some(r);
                }
            });
        }
    });
    let results = results
        .into_inner()
        .map_err(|_| anyhow!("a worker reading squashfs images panicked"))?;
    results
        .into_iter()
        .zip(archives)
        .map(|(r, (path, _))| {
            r.unwrap_or_else(|| Err(anyhow!("{path} was not read (a worker thread panicked)")))
        })
        .collect()
}

fn open_one(path: &Utf8Path) -> Result<FilesystemReader<'static>> {
    let f = File::open(path).with_context(|| format!("cannot open squashfs image {path}"))?;
    FilesystemReader::from_reader(BufReader::with_capacity(1 << 16, f)).map_err(|e| {
        anyhow!("{path} is not a valid squashfs 4.0 image (gzip or xz): {}; delete it so it is downloaded again", describe(&e))
    })
}

/// Creates the planned files with their data; returns bytes written.
fn write_all(
    readers: &[FilesystemReader<'static>],
    archives: &[(Utf8PathBuf, String)],
    root: &Utf8Path,
    per_archive: &[Vec<(String, usize)>],
    threads: usize,
) -> Result<u64> {
    // Biggest images first, so the last one to finish is a small one.
    let mut order: Vec<usize> = (0..per_archive.len())
        .filter(|&a| !per_archive[a].is_empty())
        .collect();
    let size = |a: usize| -> usize {
        per_archive[a]
            .iter()
            .map(|(_, n)| match &readers[a].root.nodes[*n].inner {
                InnerNode::File(f) => f.file_len(),
                _ => 0,
            })
            .sum()
    };
    order.sort_by_cached_key(|&a| std::cmp::Reverse(size(a)));
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let first_err: Mutex<Option<((usize, usize), anyhow::Error)>> = Mutex::new(None);
    let total = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.min(order.len()) {
            s.spawn(|| {
                let mut buf = vec![0u8; 1 << 17];
                'work: while let Some(&a) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                    for (k, (rel, node)) in per_archive[a].iter().enumerate() {
                        if stop.load(Ordering::Relaxed) {
                            break 'work;
                        }
                        match write_one(&readers[a], &archives[a].0, root, rel, *node, &mut buf) {
                            Ok(n) => {
                                total.fetch_add(n, Ordering::Relaxed);
                            }
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                if let Ok(mut fe) = first_err.lock() {
                                    // Report the earliest failing entry so the
                                    // error does not depend on thread timing.
                                    if fe.as_ref().is_none_or(|(at, _)| (a, k) < *at) {
                                        *fe = Some(((a, k), e));
                                    }
                                }
                                break 'work;
                            }
                        }
                    }
                }
            });
        }
    });
    if let Some((_, e)) = first_err
        .into_inner()
        .map_err(|_| anyhow!("a worker writing files panicked"))?
    {
        return Err(e);
    }
    Ok(total.into_inner() as u64)
}

fn write_one(
    fs: &FilesystemReader<'static>,
    archive: &Utf8Path,
    root: &Utf8Path,
    rel: &str,
    node: usize,
    buf: &mut [u8],
) -> Result<usize> {
    let node = &fs.root.nodes[node];
    let InnerNode::File(file) = &node.inner else {
        return Err(anyhow!(
            "internal error: planned entry {rel} of {archive} is not a regular file"
        ));
    };
    let name = node.fullpath.display();
    let disk = root.join(rel);
    let ctx = || format!("cannot write {disk} (entry `{name}` of {archive})");
    // The sequential pass cleared this path; nothing else creates it.
    let mut out = create_file(&disk).with_context(ctx)?;
    let mut reader = fs
        .file(file)
        .reader_checked()
        .map_err(|e| anyhow!("{archive}: cannot read entry `{name}`: {} (corrupt image; delete it so it is downloaded again)", describe(&e)))?;
    let mut written = 0usize;
    loop {
        let n = match reader.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(anyhow!(
                    "{archive}: cannot decompress entry `{name}`: {e} (corrupt or truncated image; delete it so it is downloaded again)"
                ))
            }
        };
        out.write_all(&buf[..n]).with_context(ctx)?;
        written += n;
    }
    if written != file.file_len() {
        return Err(anyhow!(
            "{archive}: entry `{name}` has {written} bytes of data but its inode says {} (corrupt image; delete it so it is downloaded again)",
            file.file_len()
        ));
    }
    finish_file(
        &out,
        u32::from(node.header.permissions),
        i64::from(node.header.mtime),
    )
    .with_context(ctx)?;
    Ok(written)
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
