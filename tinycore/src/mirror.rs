//! The Tiny Core mirror client: URLs, verified downloads into a cache that
//! cannot be poisoned, retries, several mirrors, offline mode.
//!
//! Cache layout (directories chosen by the caller, normally inside the
//! build directory):
//! - `tcz_dir/NAME.tcz`, `tcz_dir/NAME.tcz.md5.txt` (the mirror's md5 file,
//!   kept so that `--offline` can still verify), `tcz_dir/NAME.tcz.dep`
//!   (as fetched; empty when the mirror has none);
//! - `release_dir/corepure64.gz` and `release_dir/corepure64.gz.md5.txt`.
//!
//! A file only ever appears in the cache under its final name after its md5
//! matched: downloads go to a temporary file in the same directory and are
//! renamed into place ([`rootfs::fsutil::AtomicFile`]).
//!
//! Re-hashing every cached file on every run costs more than the rest of a
//! warm setup's fetch stage, so each verified file gets a stamp,
//! `NAME.verified`: its size, mtime, ctime, inode and device when it was
//! verified, and the md5 it matched. A cached file whose stamp matches its
//! current metadata and its md5 file is used without hashing; anything else
//! (no stamp, a changed or replaced file, a new md5) is hashed in full again.
//! Any write to the file moves its ctime, which no user tool can set back;
//! a change in the same clock tick as the stamp is caught by trusting a
//! stamp only when the file's ctime is older than the stamp itself.

use std::io::{IsTerminal, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use md5::{Digest, Md5};
use rootfs::fsutil::{write_atomic, AtomicFile};

use crate::deps::{self, KernelDeps, Resolution};

/// Public Tiny Core mirrors, primary first.
pub const DEFAULT_MIRRORS: &[&str] = &[
    "http://tinycorelinux.net",
    "http://repo.tinycorelinux.net",
    "http://distro.ibiblio.org/tinycorelinux",
];

/// Tiny Core CPU architecture directories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    X86,
}

impl Arch {
    pub fn parse(s: &str) -> Result<Arch> {
        match s {
            "x86_64" | "amd64" => Ok(Arch::X86_64),
            "x86" | "i386" | "i486" | "i586" | "i686" => Ok(Arch::X86),
            _ => bail!("unknown Tiny Core architecture {s:?}: use x86_64 or x86"),
        }
    }

    /// The directory name on the mirror.
    pub fn dir(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::X86 => "x86",
        }
    }

    /// The base system archive in `release/distribution_files/`.
    pub fn core_file(self) -> &'static str {
        match self {
            Arch::X86_64 => "corepure64.gz",
            Arch::X86 => "core.gz",
        }
    }
}

/// Release and architecture: everything needed to build mirror URLs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    version: String,
    arch: Arch,
}

impl Layout {
    /// `version` is `16.x` or `16`; `arch` is `x86_64` or `x86`.
    pub fn new(version: &str, arch: &str) -> Result<Layout> {
        let v = version.trim();
        let major = v.strip_suffix(".x").unwrap_or(v);
        if major.is_empty() || !major.bytes().all(|b| b.is_ascii_digit()) {
            bail!(
                "invalid Tiny Core version {version:?}: expected a major release like 16 or 16.x"
            );
        }
        Ok(Layout {
            version: format!("{major}.x"),
            arch: Arch::parse(arch.trim())?,
        })
    }

    /// Always of the form `N.x`.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// `<mirror>/<N>.x/<arch>/release/distribution_files/<file>`.
    pub fn release_url(&self, mirror: &str, file: &str) -> String {
        join_url(
            mirror,
            &[
                &self.version,
                self.arch.dir(),
                "release",
                "distribution_files",
                file,
            ],
        )
    }

    /// `<mirror>/<N>.x/<arch>/tcz/<file>` (file: `NAME.tcz`, `NAME.tcz.dep`, ...).
    pub fn tcz_url(&self, mirror: &str, file: &str) -> String {
        join_url(mirror, &[&self.version, self.arch.dir(), "tcz", file])
    }
}

/// Joins URL segments with exactly one `/`, whatever slashes the user's
/// mirror URL or the segments carry (mirrors can treat `//` differently).
pub fn join_url(base: &str, parts: &[&str]) -> String {
    let mut url = base.trim_end_matches('/').to_string();
    for p in parts {
        let p = p.trim_matches('/');
        if !p.is_empty() {
            url.push('/');
            url.push_str(p);
        }
    }
    url
}

/// Something the cache holds: a release file or an extension.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Item {
    /// A file in `release/distribution_files/` (e.g. `corepure64.gz`).
    Release(String),
    /// An extension by name, without `.tcz` (e.g. `openssh`).
    Tcz(String),
}

impl Item {
    /// An extension; accepts the name with or without `.tcz`.
    pub fn tcz(name: &str) -> Item {
        Item::Tcz(deps::normalize_name(name))
    }

    /// The file name on the mirror and in the cache.
    pub fn file_name(&self) -> String {
        match self {
            Item::Release(f) => f.clone(),
            Item::Tcz(n) => format!("{n}.tcz"),
        }
    }
}

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A progress bar when stderr is a terminal, plain lines otherwise.
    Auto,
    /// One plain line per file on stderr.
    Lines,
    /// Nothing.
    Quiet,
}

/// Client configuration; [`Config::new`] gives sensible defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// Mirror base URLs, tried in order.
    pub mirrors: Vec<String>,
    pub layout: Layout,
    /// Where `.tcz`, `.tcz.md5.txt` and `.tcz.dep` files are cached.
    pub tcz_dir: Utf8PathBuf,
    /// Where release files (the core) and their md5 are cached.
    pub release_dir: Utf8PathBuf,
    /// Never touch the network; use only verified cache entries.
    pub offline: bool,
    /// Extra attempts per request after a 5xx, timeout or connection error.
    pub retries: u32,
    /// Wait before the first retry; doubles for each further one.
    pub backoff: Duration,
    pub connect_timeout: Duration,
    /// Longest silence while waiting for a response or body bytes.
    pub read_timeout: Duration,
    /// Parallel downloads in [`Client::fetch_many`] and `.dep` fetches.
    pub parallelism: usize,
    pub progress: Progress,
    /// Re-fetch cached `.dep` files (their contents have no checksum to
    /// tell whether the mirror changed them).
    pub refresh: bool,
}

impl Config {
    pub fn new(
        mirrors: Vec<String>,
        layout: Layout,
        tcz_dir: Utf8PathBuf,
        release_dir: Utf8PathBuf,
    ) -> Config {
        Config {
            mirrors,
            layout,
            tcz_dir,
            release_dir,
            offline: false,
            retries: 3,
            backoff: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            parallelism: 4,
            progress: Progress::Auto,
            refresh: false,
        }
    }
}

/// Where a fetched file came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A verified cache entry; no request was made.
    Cached,
    /// Downloaded and verified now.
    Downloaded { url: String, bytes: u64 },
}

/// One fetched, verified file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    pub item: Item,
    pub path: Utf8PathBuf,
    pub source: Source,
}

/// The result of [`Client::fetch_many`]: paths in input order, and which
/// files were downloaded versus taken from the cache.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchReport {
    pub files: Vec<Fetched>,
}

impl FetchReport {
    pub fn paths(&self) -> Vec<Utf8PathBuf> {
        self.files.iter().map(|f| f.path.clone()).collect()
    }
    pub fn downloaded(&self) -> usize {
        self.files
            .iter()
            .filter(|f| matches!(f.source, Source::Downloaded { .. }))
            .count()
    }
    pub fn cached(&self) -> usize {
        self.files
            .iter()
            .filter(|f| f.source == Source::Cached)
            .count()
    }
    pub fn bytes_downloaded(&self) -> u64 {
        self.files
            .iter()
            .map(|f| match f.source {
                Source::Downloaded { bytes, .. } => bytes,
                Source::Cached => 0,
            })
            .sum()
    }
}

/// Why one request failed, which decides what happens next.
#[derive(Debug)]
enum Failure {
    /// 404/410: not retried; the file does not exist there.
    NotFound,
    /// 5xx, timeout, connection error, short body: retried with backoff.
    Transient(anyhow::Error),
    /// Anything else (other 4xx, local disk errors): not retried.
    Fatal(anyhow::Error),
}

/// What went wrong on one mirror, to build the final error.
enum MirrorFailure {
    NotFound {
        url: String,
    },
    Mismatch {
        url: String,
        expected: String,
        actual: String,
    },
    Other {
        url: String,
        err: anyhow::Error,
    },
}

impl MirrorFailure {
    fn describe(&self, hint: bool) -> String {
        match self {
            MirrorFailure::NotFound { url } => format!("{url}: not found (404)"),
            MirrorFailure::Mismatch {
                url,
                expected,
                actual,
            } => {
                let mut s = format!("md5 mismatch for {url}: expected {expected} got {actual}");
                if hint {
                    s.push_str("; the mirror may be updating, try another with --mirror");
                }
                s
            }
            MirrorFailure::Other { url, err } => {
                let mut s = format!("{url}: {err:#}");
                if hint {
                    s.push_str("; check the network, or try another mirror with --mirror");
                }
                s
            }
        }
    }
}

/// The mirror client. Cheap to share between threads (`&Client` is `Sync`).
pub struct Client {
    cfg: Config,
    agent: ureq::Agent,
    /// Mirrors that failed with transient errors are tried last from then
    /// on, so one dead mirror does not cost a full retry cycle per file.
    down: Vec<AtomicBool>,
}

impl Client {
    pub fn new(cfg: Config) -> Result<Client> {
        if cfg.mirrors.is_empty() && !cfg.offline {
            bail!("no Tiny Core mirror configured: pass --mirror URL or set mirrors in guest.toml");
        }
        for m in &cfg.mirrors {
            if !(m.starts_with("http://") || m.starts_with("https://")) {
                bail!("mirror URL {m:?} must start with http:// or https://");
            }
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(cfg.connect_timeout))
            .timeout_recv_response(Some(cfg.read_timeout))
            .timeout_per_read(Some(cfg.read_timeout))
            // We classify statuses ourselves (404 vs 5xx).
            .http_status_as_error(false)
            // .gz files must arrive byte for byte for their md5 to match;
            // never let a server apply (and ureq undo) a content encoding.
            .accept_encoding("identity")
            .user_agent(concat!("linux-guest-tinycore/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let down = cfg.mirrors.iter().map(|_| AtomicBool::new(false)).collect();
        Ok(Client { cfg, agent, down })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The base system archive for the configured architecture.
    pub fn core(&self) -> Item {
        Item::Release(self.cfg.layout.arch().core_file().to_string())
    }

    /// Where `item` lives in the cache (whether or not it is there).
    pub fn cache_path(&self, item: &Item) -> Utf8PathBuf {
        let dir = match item {
            Item::Release(_) => &self.cfg.release_dir,
            Item::Tcz(_) => &self.cfg.tcz_dir,
        };
        dir.join(item.file_name())
    }

    fn url_for(&self, mirror: &str, item: &Item, suffix: &str) -> String {
        let file = format!("{}{suffix}", item.file_name());
        match item {
            Item::Release(_) => self.cfg.layout.release_url(mirror, &file),
            Item::Tcz(_) => self.cfg.layout.tcz_url(mirror, &file),
        }
    }

    /// Mirror indices: healthy ones first (in configured order), then those
    /// that failed before.
    fn mirror_order(&self) -> Vec<usize> {
        let (mut up, down): (Vec<usize>, Vec<usize>) =
            (0..self.cfg.mirrors.len()).partition(|&i| !self.down[i].load(Ordering::Relaxed));
        up.extend(down);
        up
    }

    /// Fetches one file and returns its verified path in the cache.
    pub fn fetch_verified(&self, item: &Item) -> Result<Utf8PathBuf> {
        Ok(self.fetch_item(item)?.path)
    }

    /// [`Client::fetch_verified`], telling whether the file was downloaded.
    pub fn fetch_item(&self, item: &Item) -> Result<Fetched> {
        let rep = Reporter::new(self.cfg.progress, 1);
        let f = self.fetch_one(item, &rep);
        rep.finish();
        f
    }

    /// Fetches many files with up to `config.parallelism` downloads at once.
    /// Duplicates are fetched once. On failure, every failed file is named.
    pub fn fetch_many(&self, items: &[Item]) -> Result<FetchReport> {
        let mut unique: Vec<Item> = Vec::new();
        for i in items {
            if !unique.contains(i) {
                unique.push(i.clone());
            }
        }
        let rep = Reporter::new(self.cfg.progress, unique.len());
        let next = AtomicUsize::new(0);
        let slots: Vec<Mutex<Option<Result<Fetched>>>> =
            unique.iter().map(|_| Mutex::new(None)).collect();
        let workers = self.cfg.parallelism.max(1).min(unique.len());
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = unique.get(i) else { break };
                    let r = self.fetch_one(item, &rep);
                    *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                });
            }
        });
        rep.finish();
        let mut files = Vec::new();
        let mut errors = Vec::new();
        for slot in slots {
            match slot.into_inner().unwrap_or_else(|e| e.into_inner()) {
                Some(Ok(f)) => files.push(f),
                Some(Err(e)) => errors.push(e),
                None => errors.push(anyhow!("internal error: a download was never attempted")),
            }
        }
        match errors.len() {
            0 => Ok(FetchReport { files }),
            1 => Err(errors.remove(0)),
            n => {
                let list: Vec<String> = errors.iter().map(|e| format!("  - {e:#}")).collect();
                bail!(
                    "{n} of {} files could not be fetched:\n{}",
                    unique.len(),
                    list.join("\n")
                )
            }
        }
    }

    /// [`Client::fetch_many`] for extensions by name (with or without
    /// `.tcz`), e.g. a [`Resolution`]'s `order`.
    pub fn fetch_tczs(&self, names: &[String]) -> Result<FetchReport> {
        let items: Vec<Item> = names.iter().map(|n| Item::tcz(n)).collect();
        self.fetch_many(&items)
    }

    /// Fetches one file: from the cache if its md5 matches the recorded one,
    /// else from the mirrors.
    fn fetch_one(&self, item: &Item, rep: &Reporter) -> Result<Fetched> {
        let name = item.file_name();
        check_file_name(&name)?;
        let path = self.cache_path(item);
        let md5_path = Utf8PathBuf::from(format!("{path}.md5.txt"));
        let cache = verify_cached(&path, &md5_path);
        match (&cache, self.cfg.offline) {
            (CacheState::Valid, _) => {
                rep.line(&format!("cached {name}"));
                rep.done_one();
                return Ok(Fetched {
                    item: item.clone(),
                    path,
                    source: Source::Cached,
                });
            }
            (CacheState::Missing, true) => bail!(
                "{name} is not in the cache ({path}); run once without --offline to download it"
            ),
            (CacheState::NoMd5, true) => bail!(
                "{name} is in the cache but its md5 file {md5_path} is missing, so it cannot be \
                 verified; run once without --offline to download it again"
            ),
            (CacheState::Bad(why), true) => bail!(
                "cached {path} is unusable ({why}); run once without --offline to download it again"
            ),
            (CacheState::Bad(why), false) => rep.line(&format!(
                "cached {name} is unusable ({why}); downloading it again"
            )),
            _ => {}
        }

        let mut failures = Vec::new();
        for m in self.mirror_order() {
            let mirror = &self.cfg.mirrors[m];
            match self.fetch_from(mirror, item, &path, &md5_path, rep) {
                Ok((url, bytes)) => {
                    rep.line(&format!(
                        "fetched {name} ({}) from {url}",
                        human_size(bytes)
                    ));
                    rep.done_one();
                    return Ok(Fetched {
                        item: item.clone(),
                        path,
                        source: Source::Downloaded { url, bytes },
                    });
                }
                Err(f) => {
                    if matches!(f, MirrorFailure::Other { .. }) {
                        self.down[m].store(true, Ordering::Relaxed);
                    }
                    failures.push((mirror.clone(), f));
                }
            }
        }
        Err(self.fetch_error(item, failures))
    }

    fn fetch_error(&self, item: &Item, failures: Vec<(String, MirrorFailure)>) -> anyhow::Error {
        let name = item.file_name();
        if failures
            .iter()
            .all(|(_, f)| matches!(f, MirrorFailure::NotFound { .. }))
        {
            let wheres: Vec<String> = failures
                .iter()
                .map(|(m, f)| match f {
                    MirrorFailure::NotFound { url } => {
                        format!("{} ({url})", m.trim_end_matches('/'))
                    }
                    _ => unreachable!(),
                })
                .collect();
            let hint = match item {
                Item::Tcz(_) => "check the name in PACKAGES / guest.toml".to_string(),
                Item::Release(_) => format!(
                    "check the Tiny Core version ({}) and architecture ({})",
                    self.cfg.layout.version(),
                    self.cfg.layout.arch().dir()
                ),
            };
            let what = match item {
                Item::Tcz(n) => format!("package {n}"),
                Item::Release(f) => f.clone(),
            };
            return anyhow!("{what} not found on {}: {hint}", wheres.join(", "));
        }
        if failures.len() == 1 {
            return anyhow!("cannot fetch {name}: {}", failures[0].1.describe(true));
        }
        let lines: Vec<String> = failures
            .iter()
            .map(|(_, f)| format!("    {}", f.describe(false)))
            .collect();
        anyhow!(
            "cannot fetch {name} from any of {} mirrors:\n{}\ncheck the network, or add a mirror \
             with --mirror",
            failures.len(),
            lines.join("\n")
        )
    }

    /// Tries one mirror: md5 file, then the file (one more try after an md5
    /// mismatch), commit both into the cache.
    fn fetch_from(
        &self,
        mirror: &str,
        item: &Item,
        path: &Utf8Path,
        md5_path: &Utf8Path,
        rep: &Reporter,
    ) -> std::result::Result<(String, u64), MirrorFailure> {
        let md5_url = self.url_for(mirror, item, ".md5.txt");
        let md5_text = match self.with_retries(&md5_url, rep, || self.get_text(&md5_url)) {
            Ok(t) => t,
            Err(Failure::NotFound) => return Err(MirrorFailure::NotFound { url: md5_url }),
            Err(Failure::Transient(err) | Failure::Fatal(err)) => {
                return Err(MirrorFailure::Other { url: md5_url, err })
            }
        };
        let expected = parse_md5_txt(&md5_text).map_err(|err| MirrorFailure::Other {
            url: md5_url.clone(),
            err,
        })?;

        let url = self.url_for(mirror, item, "");
        let mut last = None;
        // An md5 mismatch may be a mirror caught mid-update or a bad proxy:
        // one more download, then the next mirror.
        for _ in 0..2 {
            match self.with_retries(&url, rep, || {
                self.download(&url, path, &item.file_name(), rep)
            }) {
                Ok((tmp, actual, bytes)) => {
                    if actual == expected {
                        // File first: a crash before the md5 lands leaves a
                        // file that fails verification and is fetched again.
                        tmp.commit()
                            .and_then(|()| write_atomic(md5_path, md5_text.as_bytes()))
                            .map_err(|err| MirrorFailure::Other {
                                url: url.clone(),
                                err,
                            })?;
                        // Best effort: without a stamp the next run hashes.
                        write_stamp(path, &expected);
                        return Ok((url, bytes));
                    }
                    if last.is_none() {
                        rep.line(&format!(
                            "md5 mismatch for {url}: expected {expected} got {actual}; \
                             downloading again"
                        ));
                    }
                    // `tmp` is dropped here: the bad bytes never reach the cache.
                    last = Some(MirrorFailure::Mismatch {
                        url: url.clone(),
                        expected: expected.clone(),
                        actual,
                    });
                }
                Err(Failure::NotFound) => return Err(MirrorFailure::NotFound { url }),
                Err(Failure::Transient(err) | Failure::Fatal(err)) => {
                    return Err(MirrorFailure::Other { url, err })
                }
            }
        }
        Err(last.expect("the loop ran at least once"))
    }

    /// Runs `op`, retrying transient failures with exponential backoff.
    fn with_retries<T>(
        &self,
        url: &str,
        rep: &Reporter,
        mut op: impl FnMut() -> std::result::Result<T, Failure>,
    ) -> std::result::Result<T, Failure> {
        let mut wait = self.cfg.backoff;
        let mut attempt = 0;
        loop {
            match op() {
                Err(Failure::Transient(e)) if attempt < self.cfg.retries => {
                    attempt += 1;
                    rep.line(&format!(
                        "{url}: {e:#}; retrying in {} ms ({attempt}/{})",
                        wait.as_millis(),
                        self.cfg.retries
                    ));
                    std::thread::sleep(wait);
                    wait = wait.saturating_mul(2);
                }
                Err(Failure::Transient(e)) if attempt > 0 => {
                    return Err(Failure::Transient(
                        e.context(format!("{} attempts failed", attempt + 1)),
                    ))
                }
                r => return r,
            }
        }
    }

    fn get(&self, url: &str) -> std::result::Result<ureq::http::Response<ureq::Body>, Failure> {
        match self.agent.get(url).call() {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match status {
                    200 => Ok(resp),
                    404 | 410 => Err(Failure::NotFound),
                    408 | 429 | 500..=599 => {
                        Err(Failure::Transient(anyhow!("server answered HTTP {status}")))
                    }
                    _ => Err(Failure::Fatal(anyhow!("server answered HTTP {status}"))),
                }
            }
            Err(e) => Err(classify(e)),
        }
    }

    fn get_text(&self, url: &str) -> std::result::Result<String, Failure> {
        let mut resp = self.get(url)?;
        resp.body_mut()
            .with_config()
            // .dep and .md5.txt files are tiny; a huge answer is a wrong URL.
            .limit(1 << 20)
            .read_to_string()
            .map_err(|e| match classify(e) {
                Failure::Transient(e) | Failure::Fatal(e) => {
                    Failure::Transient(e.context("reading the response failed"))
                }
                nf => nf,
            })
    }

    /// Streams `url` into a temporary file next to `dest`, hashing as it
    /// goes. The caller commits it only if the md5 matches.
    fn download(
        &self,
        url: &str,
        dest: &Utf8Path,
        label: &str,
        rep: &Reporter,
    ) -> std::result::Result<(AtomicFile, String, u64), Failure> {
        let mut resp = self.get(url)?;
        let len = resp.body().content_length();
        let mut tmp = AtomicFile::create(dest).map_err(Failure::Fatal)?;
        let bar = rep.file_bar(label, len);
        let mut reader = resp.body_mut().as_reader();
        let mut hasher = Md5::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut n: u64 = 0;
        loop {
            let k = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Failure::Transient(
                        anyhow!(e).context(format!("download interrupted after {n} bytes")),
                    ))
                }
            };
            hasher.update(&buf[..k]);
            tmp.write_all(&buf[..k]).map_err(|e| {
                Failure::Fatal(anyhow!(e).context(format!("cannot write the download to {dest}")))
            })?;
            n += k as u64;
            if let Some(b) = &bar {
                b.inc(k as u64);
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        if let Some(len) = len {
            if n != len {
                return Err(Failure::Transient(anyhow!(
                    "short download: got {n} of {len} bytes"
                )));
            }
        }
        Ok((tmp, format!("{:x}", hasher.finalize()), n))
    }

    /// GETs a text file: `None` on 404, an error naming the URL on any other
    /// failure (after retries).
    pub fn fetch_text(&self, url: &str) -> Result<Option<String>> {
        if self.cfg.offline {
            bail!("cannot fetch {url} in offline mode; run once without --offline");
        }
        let rep = Reporter::new(self.cfg.progress, 0);
        match self.with_retries(url, &rep, || self.get_text(url)) {
            Ok(t) => Ok(Some(t)),
            Err(Failure::NotFound) => Ok(None),
            Err(Failure::Transient(e) | Failure::Fatal(e)) => {
                Err(e.context(format!("cannot fetch {url}")))
            }
        }
    }

    /// The text of `NAME.tcz.dep`, `None` if the mirror has none (404).
    ///
    /// A cached copy is used as is unless `refresh` is set, so a warm
    /// setup makes no requests at all (like the verified `.tcz` cache);
    /// `--refresh` re-reads every `.dep` to notice changed dependencies.
    /// Fetched from the first answering mirror (a 404 there means "no
    /// dependencies", cached as an empty file). Offline, only the cache.
    pub fn fetch_dep(&self, name: &str) -> Result<Option<String>> {
        let item = Item::tcz(name);
        let file = format!("{}.dep", item.file_name());
        check_file_name(&file)?;
        let cached = self.cfg.tcz_dir.join(&file);
        if self.cfg.offline {
            return match std::fs::read_to_string(&cached) {
                Ok(t) => Ok(Some(t)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                    "{file} is not in the cache ({cached}); run once without --offline to \
                     resolve dependencies"
                ),
                Err(e) => Err(e).with_context(|| format!("cannot read {cached}")),
            };
        }
        if !self.cfg.refresh {
            if let Ok(t) = std::fs::read_to_string(&cached) {
                return Ok(Some(t));
            }
        }
        let rep = Reporter::new(self.cfg.progress, 0);
        let mut failures = Vec::new();
        for m in self.mirror_order() {
            let url = self.url_for(&self.cfg.mirrors[m], &item, ".dep");
            match self.with_retries(&url, &rep, || self.get_text(&url)) {
                Ok(t) => {
                    write_atomic(&cached, t.as_bytes())
                        .with_context(|| format!("cannot cache {url}"))?;
                    return Ok(Some(t));
                }
                Err(Failure::NotFound) => {
                    write_atomic(&cached, b"").with_context(|| format!("cannot cache {url}"))?;
                    return Ok(None);
                }
                Err(Failure::Transient(err) | Failure::Fatal(err)) => {
                    self.down[m].store(true, Ordering::Relaxed);
                    failures.push(format!("{url}: {err:#}"));
                }
            }
        }
        let mut msg = format!("cannot fetch {file}: {}", failures.join("; "));
        if cached.is_file() {
            msg.push_str("; a cached copy exists, --offline would use it");
        } else {
            msg.push_str("; check the network, or try another mirror with --mirror");
        }
        Err(anyhow!(msg))
    }

    /// Resolves `roots` through the mirror's (or, offline, the cache's)
    /// `.dep` files.
    pub fn resolve(&self, roots: &[String], kernel: KernelDeps) -> Result<Resolution> {
        deps::resolve_with_parallelism(
            roots,
            |n| self.fetch_dep(n),
            kernel,
            self.cfg.parallelism.max(1),
        )
    }
}

fn classify(e: ureq::Error) -> Failure {
    use ureq::Error as E;
    match e {
        E::Timeout(_)
        | E::Io(_)
        | E::ConnectionFailed
        | E::HostNotFound
        | E::Protocol(_)
        | E::BodyStalled => Failure::Transient(anyhow!(e)),
        other => Failure::Fatal(anyhow!(other)),
    }
}

/// Names come from the user and from `.dep` files on the network: they
/// must not reach outside the cache directory.
fn check_file_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\'])
        && !name.chars().any(|c| c.is_whitespace() || c.is_control());
    if !ok {
        bail!("invalid package or file name {name:?}: check the name in PACKAGES / guest.toml");
    }
    Ok(())
}

/// `md5sum` output: `<32 hex>  <file name>`; returns the lower-case hex.
pub fn parse_md5_txt(text: &str) -> Result<String> {
    let hex = text.split_whitespace().next().unwrap_or("");
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "not an md5sum line: {:?}",
            text.chars().take(80).collect::<String>()
        );
    }
    Ok(hex.to_ascii_lowercase())
}

/// The md5 of a file, lower-case hex.
pub fn md5_file(path: &Utf8Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {path}"))?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let k = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {path}"))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
    }
    Ok(format!("{:x}", h.finalize()))
}

enum CacheState {
    Valid,
    Missing,
    NoMd5,
    Bad(String),
}

fn verify_cached(path: &Utf8Path, md5_path: &Utf8Path) -> CacheState {
    let md = match std::fs::metadata(path) {
        Ok(md) if md.is_file() => md,
        _ => return CacheState::Missing,
    };
    let recorded = match std::fs::read_to_string(md5_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return CacheState::NoMd5,
        Err(e) => return CacheState::Bad(format!("cannot read {md5_path}: {e}")),
    };
    let expected = match parse_md5_txt(&recorded) {
        Ok(h) => h,
        Err(e) => return CacheState::Bad(format!("{md5_path}: {e:#}")),
    };
    if stamp_matches(path, &md, &expected) {
        return CacheState::Valid;
    }
    match md5_file(path) {
        Ok(actual) if actual == expected => {
            write_stamp(path, &expected);
            CacheState::Valid
        }
        Ok(actual) => CacheState::Bad(format!("md5 {actual}, expected {expected}")),
        Err(e) => CacheState::Bad(format!("{e:#}")),
    }
}

/// Where the verification stamp of a cache file lives.
pub fn stamp_path(path: &Utf8Path) -> Utf8PathBuf {
    Utf8PathBuf::from(format!("{path}.verified"))
}

/// The stamp line for a file with metadata `md` that matched `md5`.
fn stamp_line(md: &std::fs::Metadata, md5: &str) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "stamp1 size={} mtime={}.{:09} ctime={}.{:09} ino={} dev={} md5={md5}\n",
        md.size(),
        md.mtime(),
        md.mtime_nsec(),
        md.ctime(),
        md.ctime_nsec(),
        md.ino(),
        md.dev()
    )
}

/// True when `path` (with current metadata `md`) is the very file that was
/// verified against `md5` and nothing wrote to it since.
fn stamp_matches(path: &Utf8Path, md: &std::fs::Metadata, md5: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let stamp = stamp_path(path);
    let Ok(f) = std::fs::File::open(&stamp) else {
        return false;
    };
    let Ok(stamp_md) = f.metadata() else {
        return false;
    };
    let mut text = String::new();
    if (&f).take(512).read_to_string(&mut text).is_err() || text != stamp_line(md, md5) {
        return false;
    }
    // Racy stamp: written in the same clock tick as the file's last change,
    // so a write right after it might not have moved the times. Hash again
    // (the fresh stamp written then is trusted next time).
    (md.ctime(), md.ctime_nsec()) < (stamp_md.mtime(), stamp_md.mtime_nsec())
}

/// Records that `path` matched `md5`. Not synced: a stamp lost in a crash
/// only costs a re-hash, and a torn one does not match.
fn write_stamp(path: &Utf8Path, md5: &str) {
    let Ok(md) = std::fs::metadata(path) else {
        return;
    };
    let stamp = stamp_path(path);
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = Utf8PathBuf::from(format!("{stamp}.{}-{seq}.tmp", std::process::id()));
    let ok =
        std::fs::write(&tmp, stamp_line(&md, md5)).is_ok() && std::fs::rename(&tmp, &stamp).is_ok();
    if !ok {
        let _ = std::fs::remove_file(&tmp);
    }
}

fn human_size(bytes: u64) -> String {
    if bytes < 10 * 1024 * 1024 {
        format!("{} KiB", bytes.div_ceil(1024))
    } else {
        format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
    }
}

/// Progress output: a bar on a terminal, plain lines otherwise.
struct Reporter {
    mode: Mode,
}

enum Mode {
    Bar {
        multi: MultiProgress,
        total: ProgressBar,
    },
    Lines,
    Quiet,
}

impl Reporter {
    /// `total` files will be reported with [`Reporter::done_one`].
    pub fn new(progress: Progress, total: usize) -> Reporter {
        let mode = match progress {
            Progress::Quiet => Mode::Quiet,
            Progress::Lines => Mode::Lines,
            Progress::Auto if std::io::stderr().is_terminal() && total > 0 => {
                let multi = MultiProgress::new();
                let total = multi.add(ProgressBar::new(total as u64));
                total.set_style(
                    ProgressStyle::with_template("fetching {bar:30} {pos}/{len} files")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                Mode::Bar { multi, total }
            }
            Progress::Auto => Mode::Lines,
        };
        Reporter { mode }
    }

    fn line(&self, msg: &str) {
        match &self.mode {
            Mode::Bar { multi, .. } => {
                // Lines above the bars; the bar keeps its place.
                let _ = multi.println(msg);
            }
            Mode::Lines => eprintln!("{msg}"),
            Mode::Quiet => {}
        }
    }

    fn done_one(&self) {
        if let Mode::Bar { total, .. } = &self.mode {
            total.inc(1);
        }
    }

    fn file_bar(&self, label: &str, len: Option<u64>) -> Option<ProgressBar> {
        let Mode::Bar { multi, .. } = &self.mode else {
            return None;
        };
        let bar = multi.add(ProgressBar::new(len.unwrap_or(0)));
        bar.set_style(
            ProgressStyle::with_template("  {msg:30} {bytes}/{total_bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(label.to_string());
        Some(bar)
    }

    fn finish(&self) {
        if let Mode::Bar { total, .. } = &self.mode {
            total.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_have_single_slashes() {
        let l = Layout::new("16", "x86_64").unwrap();
        assert_eq!(l.version(), "16.x");
        for m in ["http://m", "http://m/", "http://m//"] {
            assert_eq!(
                l.release_url(m, "corepure64.gz"),
                "http://m/16.x/x86_64/release/distribution_files/corepure64.gz"
            );
            assert_eq!(
                l.tcz_url(m, "openssh.tcz.dep"),
                "http://m/16.x/x86_64/tcz/openssh.tcz.dep"
            );
        }
        assert_eq!(
            Layout::new("7.x", "x86")
                .unwrap()
                .tcz_url("http://d/tinycorelinux/", "a.tcz"),
            "http://d/tinycorelinux/7.x/x86/tcz/a.tcz"
        );
        assert_eq!(Arch::X86.core_file(), "core.gz");
        assert!(Layout::new("sixteen", "x86_64").is_err());
        assert!(Layout::new("16.x", "arm").is_err());
    }

    #[test]
    fn md5_txt() {
        let h = "D41D8CD98F00B204E9800998ECF8427E";
        assert_eq!(
            parse_md5_txt(&format!("{h}  a.tcz\n")).unwrap(),
            h.to_lowercase()
        );
        assert!(parse_md5_txt("<html>404</html>").is_err());
        assert!(parse_md5_txt("").is_err());
    }

    #[test]
    fn names_stay_in_the_cache() {
        assert!(check_file_name("openssh.tcz").is_ok());
        for bad in ["../x.tcz", "a/b.tcz", ".tcz", "", "a b.tcz", ".."] {
            assert!(check_file_name(bad).is_err(), "{bad}");
        }
    }
}
