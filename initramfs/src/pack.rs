//! The deterministic newc writer: `tc_root` + manifest -> `initramfs.cpio.gz`.
//!
//! What the archive contains, and why:
//! - First `.`, the root directory (mode, owner from a manifest `dir /` line,
//!   else 0755 root:root). `gen_init_cpio` omits it, `find . | cpio` (the
//!   old script) emits it; the kernel then chmods/chowns the rootfs root,
//!   which otherwise keeps the mode the kernel gave it (1777 on tmpfs).
//! - Then every node of [`rootfs::meta::collect`] in path order, named
//!   without a leading `/` or `./` (`bin/busybox`), as `gen_init_cpio`
//!   does; the kernel and GNU cpio accept it.
//! - Inode numbers 1, 2, 3, ... in archive order; devmajor/devminor 0;
//!   rdevmajor/rdevminor from device nodes; nlink 2 + subdirectories for
//!   directories (what a filesystem reports), the group size for hard
//!   links, 1 otherwise.
//! - mtimes: all 0 by default, so the image depends only on content and
//!   metadata; with `SOURCE_DATE_EPOCH` set, min(mtime on disk, epoch).
//! - Hard links: files of one on-disk link group that also agree on mode
//!   and owner share one inode number; the data is written on the last
//!   name only, the others have size 0 (the GNU cpio and `gen_init_cpio`
//!   convention; the kernel links later names to the first and writes the
//!   data through the last). Members whose manifest metadata differ cannot
//!   be one inode and are written as separate copies.
//! - No padding after the trailer (the kernel does not need it).
//!
//! Incremental: `<out>.state` records a fingerprint of everything the
//! archive is made of (every header, every symlink target, a blake3 hash of
//! every file's content, the compression), the output's size/mtime/inode
//! and hash, and each file's stat key (size, mtime/ctime in ns, inode,
//! mode) with its content hash. A file is re-hashed only when its stat key
//! changed (as git's index does); the fingerprint then decides. Files
//! changed less than a second before the state was written are recorded
//! as untrusted ("racy"), because timestamps are coarse.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use rootfs::fsutil::AtomicFile;
use rootfs::manifest::{Kind, Manifest};
use rootfs::meta::Node;

use crate::compress::{Compression, Encoder};
use crate::newc::{self, Header, PATH_MAX, S_IFDIR};

/// How to pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackOptions {
    pub compression: Compression,
    /// Clamp mtimes to this (seconds since the epoch); `None`: all mtimes 0.
    pub source_date_epoch: Option<u64>,
    /// Compression threads; 0 means one per CPU. Does not change the output.
    pub threads: usize,
    /// Pack even if the state file says the output is up to date.
    pub force: bool,
}

impl PackOptions {
    pub fn new(compression: Compression) -> PackOptions {
        PackOptions {
            compression,
            source_date_epoch: None,
            threads: 0,
            force: false,
        }
    }

    /// Like [`PackOptions::new`], with `SOURCE_DATE_EPOCH` from the
    /// environment (reproducible-builds.org convention).
    pub fn from_env(compression: Compression) -> Result<PackOptions> {
        let mut o = PackOptions::new(compression);
        if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
            let v = v.trim();
            if !v.is_empty() {
                o.source_date_epoch = Some(v.parse().with_context(|| {
                    format!(
                        "SOURCE_DATE_EPOCH=`{v}` is not a number of seconds; unset it or fix it"
                    )
                })?);
            }
        }
        Ok(o)
    }

    fn threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// What [`pack`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackReport {
    /// Archive entries, `.` included, the trailer not.
    pub entries: usize,
    pub uncompressed_bytes: u64,
    pub compressed_bytes: u64,
    pub elapsed: Duration,
    /// Nothing changed: the existing output was kept.
    pub up_to_date: bool,
}

impl fmt::Display for PackReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        if self.up_to_date {
            write!(
                f,
                "up to date ({} entries, {:.1} MiB) in {:.0?}",
                self.entries,
                mib(self.compressed_bytes),
                self.elapsed
            )
        } else {
            write!(
                f,
                "{} entries, {:.1} MiB -> {:.1} MiB in {:.2?}",
                self.entries,
                mib(self.uncompressed_bytes),
                mib(self.compressed_bytes),
                self.elapsed
            )
        }
    }
}

/// Packs `root` (with `manifest`) into `out`, unless `<out>.state` shows
/// that `out` already is exactly that archive.
pub fn pack(
    root: &Utf8Path,
    manifest: &Manifest,
    out: &Utf8Path,
    opts: &PackOptions,
) -> Result<PackReport> {
    let start = Instant::now();
    let nodes = rootfs::meta::collect(root, manifest)
        .with_context(|| format!("cannot scan {root} for the initramfs"))?;
    let root_md = std::fs::metadata(root).with_context(|| format!("cannot stat {root}"))?;
    let root_entry = RootEntry::from_manifest(manifest, root_md.mtime());
    let plan = plan(&nodes, &root_entry, opts)?;
    let state_path = state_path(out);

    let mut files: Vec<FileState> = plan
        .iter()
        .filter_map(|p| p.file)
        .map(|_| FileState::default())
        .collect();
    if !opts.force {
        if let Some(old) = State::load(&state_path) {
            if old.output_matches(out)? {
                let mut rehashed = false;
                for (f, node) in files.iter_mut().zip(plan.iter().filter_map(|p| p.file)) {
                    let disk = node_disk(node)?;
                    let key = match node.stamp {
                        Some(stamp) => StatKey::from(stamp),
                        None => StatKey::of_path(disk)?,
                    };
                    f.hash = match old.files.get(&node.path) {
                        Some((k, h)) if *k == key => Some(*h),
                        _ => {
                            rehashed = true;
                            Some(hash_file(disk)?)
                        }
                    };
                    f.key = Some(key);
                }
                if fingerprint(&plan, &files, opts) == old.fingerprint {
                    let (uncompressed, compressed) = (old.uncompressed, old.output.size);
                    if rehashed {
                        // Record the new stat keys (as `git status` refreshes
                        // the index) so the next run need not hash again.
                        State {
                            files: file_map(&plan, &files),
                            ..old
                        }
                        .save(&state_path)?;
                    }
                    return Ok(PackReport {
                        entries: plan.len(),
                        uncompressed_bytes: uncompressed,
                        compressed_bytes: compressed,
                        elapsed: start.elapsed(),
                        up_to_date: true,
                    });
                }
            }
        }
    }

    // The old state may stay until the new one replaces it: it records the
    // hash of the output it describes, so it never vouches for another one.
    let atomic = AtomicFile::create(out)?;
    let sink = HashCount {
        inner: atomic,
        hasher: blake3::Hasher::new(),
        count: 0,
    };
    let encoder = Encoder::new(opts.compression, opts.threads(), sink)?;
    let mut w = BufWriter::with_capacity(1 << 20, encoder);
    let uncompressed = write_plan(&plan, &mut w, &mut files)
        .with_context(|| format!("cannot pack {root} into {out}"))?;
    let encoder = w
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {out}"))?;
    let sink = encoder
        .finish()
        .with_context(|| format!("cannot finish compressing {out}"))?;
    let (out_hash, compressed) = (sink.hasher.finalize(), sink.count);
    let mut atomic = sink.inner;
    // AtomicFile's temporary file is 0600; an image is no secret, and the
    // VMM or a copy step may run as another user.
    atomic
        .file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .with_context(|| format!("cannot make the new {out} readable"))?;
    atomic.commit()?;

    let out_md = std::fs::metadata(out).with_context(|| format!("cannot stat the new {out}"))?;
    let state = State {
        fingerprint: fingerprint(&plan, &files, opts),
        output: OutputKey {
            size: out_md.len(),
            mtime_ns: mtime_ns(&out_md),
            ino: out_md.ino(),
            hash: out_hash,
        },
        uncompressed,
        files: file_map(&plan, &files),
    };
    state.save(&state_path)?;
    Ok(PackReport {
        entries: plan.len(),
        uncompressed_bytes: uncompressed,
        compressed_bytes: compressed,
        elapsed: start.elapsed(),
        up_to_date: false,
    })
}

/// Writes the uncompressed newc archive of `nodes` to `w` (no state file,
/// no compression); returns the bytes written. For embedding elsewhere.
pub fn write_newc(
    root: &Utf8Path,
    manifest: &Manifest,
    opts: &PackOptions,
    w: &mut impl Write,
) -> Result<u64> {
    let nodes = rootfs::meta::collect(root, manifest)
        .with_context(|| format!("cannot scan {root} for the initramfs"))?;
    let root_md = std::fs::metadata(root).with_context(|| format!("cannot stat {root}"))?;
    let plan = plan(
        &nodes,
        &RootEntry::from_manifest(manifest, root_md.mtime()),
        opts,
    )?;
    let mut files: Vec<FileState> = plan
        .iter()
        .filter_map(|p| p.file)
        .map(|_| FileState::default())
        .collect();
    write_plan(&plan, w, &mut files)
}

fn file_map(plan: &[Planned<'_>], files: &[FileState]) -> HashMap<String, (StatKey, blake3::Hash)> {
    plan.iter()
        .filter_map(|p| p.file)
        .zip(files)
        .filter_map(|(n, f)| Some((n.path.clone(), (f.key?, f.hash?))))
        .collect()
}

/// The state file that belongs to `out`.
pub fn state_path(out: &Utf8Path) -> Utf8PathBuf {
    Utf8PathBuf::from(format!("{out}.state"))
}

struct RootEntry {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

impl RootEntry {
    fn from_manifest(m: &Manifest, mtime: i64) -> RootEntry {
        match m.get("/") {
            Some(e) if e.kind == Kind::Dir => RootEntry {
                mode: e.mode & 0o7777,
                uid: e.uid,
                gid: e.gid,
                mtime,
            },
            _ => RootEntry {
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime,
            },
        }
    }
}

/// One archive entry, fully decided before anything is written.
struct Planned<'a> {
    name: &'a str,
    header: Header,
    /// Symlink target.
    inline: Option<&'a [u8]>,
    /// Regular file whose data goes here (the last name of a link group).
    file: Option<&'a Node>,
}

fn plan<'a>(nodes: &'a [Node], root: &RootEntry, opts: &PackOptions) -> Result<Vec<Planned<'a>>> {
    let mtime = |t: i64| -> Result<u32> {
        let Some(epoch) = opts.source_date_epoch else {
            return Ok(0);
        };
        let t = t.clamp(0, epoch as i64);
        u32::try_from(t).with_context(|| {
            format!("SOURCE_DATE_EPOCH={epoch} is after 2106; newc mtimes are 32-bit: use a smaller value")
        })
    };
    let mut subdirs: HashMap<&str, u32> = HashMap::new();
    for n in nodes.iter().filter(|n| n.kind == Kind::Dir) {
        *subdirs.entry(parent(&n.path)).or_default() += 1;
    }
    type GroupKey = ((u64, u64), u32, u32, u32);
    let mut groups: HashMap<GroupKey, Vec<usize>> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        if let (Kind::File, Some(g)) = (&n.kind, n.link_group) {
            groups.entry((g, n.mode, n.uid, n.gid)).or_default().push(i);
        }
    }
    let mut group_ino: HashMap<GroupKey, u32> = HashMap::new();

    let mut plan = Vec::with_capacity(nodes.len() + 1);
    plan.push(Planned {
        name: ".",
        header: Header {
            ino: 1,
            mode: S_IFDIR | root.mode,
            uid: root.uid,
            gid: root.gid,
            nlink: 2 + subdirs.get("/").copied().unwrap_or(0),
            mtime: mtime(root.mtime)?,
            ..Header::default()
        },
        inline: None,
        file: None,
    });
    let dirs: std::collections::HashSet<&str> = nodes
        .iter()
        .filter(|n| n.kind == Kind::Dir)
        .map(|n| n.path.as_str())
        .collect();
    let mut next_ino = 2u32;
    for (i, n) in nodes.iter().enumerate() {
        let dir = parent(&n.path);
        if dir != "/" && !dirs.contains(dir) {
            // The kernel would fail to create it (silently): say so now.
            bail!(
                "{} (from the manifest) is in {dir}, which is not a directory in tc_root; \
                 create the directory or remove the manifest line",
                n.path
            );
        }
        let name = n.path.trim_start_matches('/');
        if name.is_empty() || name.contains('\0') || name.len() + 1 > PATH_MAX {
            bail!("cannot put `{}` into a cpio archive: empty, contains NUL or longer than {PATH_MAX} bytes", n.path);
        }
        let mut h = Header {
            mode: n.kind.type_bits() | (n.mode & 0o7777),
            uid: n.uid,
            gid: n.gid,
            nlink: 1,
            mtime: mtime(n.mtime)?,
            ..Header::default()
        };
        let mut fresh_ino = true;
        let (mut inline, mut file) = (None, None);
        match &n.kind {
            Kind::Dir => h.nlink = 2 + subdirs.get(n.path.as_str()).copied().unwrap_or(0),
            Kind::Symlink { target } => {
                if target.len() + 1 > PATH_MAX {
                    bail!(
                        "symlink {} points to a target longer than {PATH_MAX} bytes",
                        n.path
                    );
                }
                h.filesize = target.len() as u32;
                inline = Some(target.as_bytes());
            }
            Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => {
                (h.rdevmajor, h.rdevminor) = (*major, *minor);
            }
            Kind::Fifo | Kind::Socket => {}
            Kind::File => {
                let size = u32::try_from(n.size).map_err(|_| {
                    anyhow::anyhow!(
                        "{} is {} bytes: the newc cpio format cannot hold files of 4 GiB or more; \
                         remove it from tc_root or shrink it",
                        n.disk.as_deref().map_or(n.path.as_str(), |d| d.as_str()),
                        n.size
                    )
                })?;
                let key = n.link_group.map(|g| (g, n.mode, n.uid, n.gid));
                let members = key.and_then(|k| groups.get(&k)).filter(|m| m.len() > 1);
                match members {
                    Some(members) => {
                        let k = key.expect("members imply a key");
                        h.nlink = members.len() as u32;
                        if let Some(&ino) = group_ino.get(&k) {
                            h.ino = ino;
                            fresh_ino = false;
                        } else {
                            group_ino.insert(k, next_ino);
                        }
                        if members.last() == Some(&i) {
                            h.filesize = size;
                            file = Some(n);
                        }
                    }
                    None => {
                        h.filesize = size;
                        file = Some(n);
                    }
                }
            }
        }
        if fresh_ino {
            h.ino = next_ino;
            next_ino += 1;
        }
        plan.push(Planned {
            name,
            header: h,
            inline,
            file,
        });
    }
    Ok(plan)
}

fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

fn node_disk(n: &Node) -> Result<&Utf8Path> {
    n.disk
        .as_deref()
        .with_context(|| format!("internal: regular file {} has no path on disk", n.path))
}

#[derive(Default, Clone, Copy)]
struct FileState {
    key: Option<StatKey>,
    hash: Option<blake3::Hash>,
}

/// Writes the archive; fills in each file's stat key and content hash.
fn write_plan(plan: &[Planned<'_>], w: &mut impl Write, files: &mut [FileState]) -> Result<u64> {
    let mut offset = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    let mut file_idx = 0;
    for p in plan {
        let at = offset;
        let ctx = || format!("cannot write entry `{}` at archive offset {at}", p.name);
        offset += newc::write_header(w, &p.header, p.name.as_bytes()).with_context(ctx)?;
        let data_len = if let Some(bytes) = p.inline {
            w.write_all(bytes).with_context(ctx)?;
            bytes.len() as u64
        } else if let Some(node) = p.file {
            let (key, hash) = copy_file(node, u64::from(p.header.filesize), w, &mut buf)?;
            files[file_idx] = FileState {
                key: Some(key),
                hash: Some(hash),
            };
            file_idx += 1;
            u64::from(p.header.filesize)
        } else {
            0
        };
        w.write_all(&[0u8; 3][..newc::pad4(data_len)])
            .with_context(ctx)?;
        offset += data_len + newc::pad4(data_len) as u64;
    }
    offset += newc::write_trailer(w).context("cannot write the cpio trailer")?;
    Ok(offset)
}

/// Copies exactly `expected` bytes of the node's file, or fails naming it.
fn copy_file(
    node: &Node,
    expected: u64,
    w: &mut impl Write,
    buf: &mut [u8],
) -> Result<(StatKey, blake3::Hash)> {
    let disk = node_disk(node)?;
    let mut f = std::fs::File::open(disk).with_context(|| {
        format!(
            "cannot read {disk} (guest path {}): make it readable or remove it from tc_root",
            node.path
        )
    })?;
    let md = f
        .metadata()
        .with_context(|| format!("cannot stat {disk}"))?;
    if !md.is_file() || md.len() != expected {
        bail!(
            "{disk} changed while packing (was a {expected}-byte file, now {} bytes{}); run the pack again",
            md.len(),
            if md.is_file() { "" } else { ", not a regular file" }
        );
    }
    let key = StatKey::of(&md);
    let mut hasher = blake3::Hasher::new();
    let mut left = expected;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match f.read(&mut buf[..want]) {
            Ok(0) => bail!(
                "{disk} shrank while packing: {} of {expected} bytes read; run the pack again",
                expected - left
            ),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read {disk} at byte {}", expected - left))
            }
        };
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n])
            .with_context(|| format!("cannot write the data of {disk}"))?;
        left -= n as u64;
    }
    let mut probe = [0u8; 1];
    if f.read(&mut probe)
        .with_context(|| format!("cannot read {disk}"))?
        != 0
    {
        bail!("{disk} grew while packing (expected {expected} bytes); run the pack again");
    }
    Ok((key, hasher.finalize()))
}

fn hash_file(path: &Utf8Path) -> Result<blake3::Hash> {
    let f = std::fs::File::open(path)
        .with_context(|| format!("cannot read {path}: make it readable"))?;
    let mut h = blake3::Hasher::new();
    h.update_reader(f)
        .with_context(|| format!("cannot read {path}"))?;
    Ok(h.finalize())
}

/// Everything the archive bytes are a function of.
fn fingerprint(plan: &[Planned<'_>], files: &[FileState], opts: &PackOptions) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    // Bump when the same input starts producing different bytes
    // (compressor settings, entry layout), so old states stop matching.
    h.update(b"linux-guest initramfs v2\n");
    h.update(opts.compression.to_string().as_bytes());
    h.update(b"\n");
    let mut hashes = files.iter();
    for p in plan {
        let _ = newc::write_header(&mut h, &p.header, p.name.as_bytes());
        if let Some(bytes) = p.inline {
            h.update(bytes);
        }
        if p.file.is_some() {
            match hashes.next().and_then(|f| f.hash) {
                Some(fh) => h.update(fh.as_bytes()),
                // Unknown content: a value no real hash equals.
                None => h.update(b"unknown"),
            };
        }
    }
    h.finalize()
}

/// What git's index calls the stat data: if none of it changed, the
/// content is assumed unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatKey {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    mode: u32,
}

impl From<rootfs::meta::Stamp> for StatKey {
    fn from(s: rootfs::meta::Stamp) -> StatKey {
        StatKey {
            size: s.size,
            mtime_ns: s.mtime_ns,
            ctime_ns: s.ctime_ns,
            ino: s.ino,
            mode: s.mode,
        }
    }
}

impl StatKey {
    fn of(md: &std::fs::Metadata) -> StatKey {
        StatKey::from(rootfs::meta::Stamp::of(md))
    }

    fn of_path(path: &Utf8Path) -> Result<StatKey> {
        Ok(StatKey::of(
            &std::fs::symlink_metadata(path).with_context(|| format!("cannot stat {path}"))?,
        ))
    }

    /// Changed so recently that a later change could keep the same stamps.
    fn is_racy(&self, now_ns: i64) -> bool {
        self.mtime_ns.max(self.ctime_ns) > now_ns - 1_000_000_000
    }
}

fn mtime_ns(md: &std::fs::Metadata) -> i64 {
    md.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(md.mtime_nsec())
}

struct OutputKey {
    size: u64,
    mtime_ns: i64,
    ino: u64,
    hash: blake3::Hash,
}

struct State {
    fingerprint: blake3::Hash,
    output: OutputKey,
    uncompressed: u64,
    files: HashMap<String, (StatKey, blake3::Hash)>,
}

const STATE_MAGIC: &str = "linux-guest-initramfs-state 1";

impl State {
    /// A missing or unreadable state just means "pack".
    fn load(path: &Utf8Path) -> Option<State> {
        let text = std::fs::read_to_string(path).ok()?;
        State::parse(&text)
    }

    fn parse(text: &str) -> Option<State> {
        let mut lines = text.lines();
        if lines.next()? != STATE_MAGIC {
            return None;
        }
        let hash = |s: &str| blake3::Hash::from_hex(s).ok();
        let mut field = |name: &str| -> Option<Vec<String>> {
            let l = lines.next()?;
            let rest = l.strip_prefix(name)?.strip_prefix(' ')?;
            Some(rest.split(' ').map(str::to_string).collect())
        };
        let fingerprint = hash(field("fingerprint")?.first()?)?;
        let o = field("output")?;
        let output = OutputKey {
            size: o.first()?.parse().ok()?,
            mtime_ns: o.get(1)?.parse().ok()?,
            ino: o.get(2)?.parse().ok()?,
            hash: hash(o.get(3)?)?,
        };
        let uncompressed = field("uncompressed")?.first()?.parse().ok()?;
        let mut files = HashMap::new();
        for l in lines {
            let f: Vec<&str> = l.split(' ').collect();
            let [h, size, mt, ct, ino, mode, path] = f[..] else {
                return None;
            };
            let key = StatKey {
                size: size.parse().ok()?,
                mtime_ns: mt.parse().ok()?,
                ctime_ns: ct.parse().ok()?,
                ino: ino.parse().ok()?,
                mode: mode.parse().ok()?,
            };
            files.insert(rootfs::manifest::unescape(path).ok()?, (key, hash(h)?));
        }
        Some(State {
            fingerprint,
            output,
            uncompressed,
            files,
        })
    }

    fn save(&self, path: &Utf8Path) -> Result<()> {
        use std::fmt::Write as _;
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let mut s = String::new();
        let o = &self.output;
        let _ = writeln!(s, "{STATE_MAGIC}");
        let _ = writeln!(s, "fingerprint {}", self.fingerprint.to_hex());
        let _ = writeln!(
            s,
            "output {} {} {} {}",
            o.size,
            o.mtime_ns,
            o.ino,
            o.hash.to_hex()
        );
        let _ = writeln!(s, "uncompressed {}", self.uncompressed);
        let mut files: Vec<_> = self.files.iter().collect();
        files.sort_by(|a, b| a.0.cmp(b.0));
        for (p, (k, h)) in files {
            // A racy entry is stored with an mtime no file has: re-hashed
            // next time.
            let mt = if k.is_racy(now_ns) {
                i64::MIN
            } else {
                k.mtime_ns
            };
            let name = rootfs::manifest::escape(p);
            let _ = writeln!(
                s,
                "{} {} {mt} {} {} {} {name}",
                h.to_hex(),
                k.size,
                k.ctime_ns,
                k.ino,
                k.mode
            );
        }
        rootfs::fsutil::write_atomic(path, s.as_bytes())
            .with_context(|| format!("cannot record the pack state in {path}"))
    }

    /// The output is still the file this state describes.
    fn output_matches(&self, out: &Utf8Path) -> Result<bool> {
        let md = match std::fs::metadata(out) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("cannot stat {out}")),
        };
        if md.len() != self.output.size {
            return Ok(false);
        }
        if mtime_ns(&md) == self.output.mtime_ns && md.ino() == self.output.ino {
            return Ok(true);
        }
        Ok(hash_file(out)? == self.output.hash)
    }
}

/// Counts and hashes what passes through to the output file.
struct HashCount<W> {
    inner: W,
    hasher: blake3::Hasher,
    count: u64,
}

impl<W: Write> Write for HashCount<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_of_paths() {
        assert_eq!(parent("/bin"), "/");
        assert_eq!(parent("/bin/sh"), "/bin");
        assert_eq!(parent("/usr/local/bin"), "/usr/local");
    }

    fn node(disk: &Utf8Path, size: u64) -> Node {
        Node {
            path: "/x".into(),
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            disk: Some(disk.to_owned()),
            size,
            mtime: 0,
            link_group: None,
            stamp: None,
        }
    }

    #[test]
    fn copy_checks_the_exact_size() {
        let dir = tempfile::tempdir().unwrap();
        let f = Utf8PathBuf::from_path_buf(dir.path().join("f")).unwrap();
        std::fs::write(&f, b"12345").unwrap();
        let mut buf = vec![0u8; 2];
        let mut out = Vec::new();
        let (_, hash) = copy_file(&node(&f, 5), 5, &mut out, &mut buf).unwrap();
        assert_eq!(
            (out.as_slice(), hash),
            (&b"12345"[..], blake3::hash(b"12345"))
        );
        for (declared, what) in [(9, "changed while packing"), (3, "changed while packing")] {
            let err = format!(
                "{:#}",
                copy_file(&node(&f, declared), declared, &mut Vec::new(), &mut buf).unwrap_err()
            );
            assert!(err.contains(what) && err.contains(f.as_str()), "{err}");
        }
    }

    #[test]
    fn racy_keys_are_not_trusted() {
        let k = StatKey {
            size: 1,
            mtime_ns: 5_000_000_000,
            ctime_ns: 5_000_000_000,
            ino: 1,
            mode: 0,
        };
        assert!(k.is_racy(5_500_000_000));
        assert!(!k.is_racy(7_000_000_000));
    }
}
