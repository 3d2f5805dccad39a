//! The shared libraries a CUSTOM_BINARIES program needs, copied from the
//! host when the guest lacks them.
//!
//! A host binary dropped into `/usr/local/bin` only runs in the guest if
//! the guest's dynamic linker finds its program interpreter and every
//! library in the `DT_NEEDED` closure. We read the ELF files ourselves
//! (`ldd` would run the host's loader on an arbitrary file and report the
//! host's view, not the guest's) and, for each needed name:
//!
//! 1. look in the guest first, the way its loader would (the requester's
//!    RUNPATH/RPATH seen from its guest location, the guest's
//!    `etc/ld.so.conf` directories, then `/lib`, `/usr/lib`, `/lib64`,
//!    `/usr/lib64`, `/usr/local/lib`; symlinks resolved inside tc_root, as
//!    the guest sees them). A library the guest has is used as it is: the
//!    guest's glibc stays the guest's glibc. Its version definitions are
//!    checked against the requester's version needs (`GLIBC_2.34` from a
//!    newer host), which gives a warning, not a copy;
//! 2. otherwise on the host, the way the host's loader found it when the
//!    binary ran there: DT_RUNPATH (or DT_RPATH) with `$ORIGIN`, the
//!    entries of `/etc/ld.so.cache` (parsed here), then the standard
//!    directories. The file (symlinks resolved) is copied under the needed
//!    name into `/usr/local/lib`, which TC's `ld.so.conf` lists and whose
//!    cache setup refreshes afterwards, and its own needs are followed;
//! 3. a library found nowhere is a warning naming the binary and the
//!    library: setup still succeeds, since the binary may be meant for a
//!    guest that gets the library some other way.
//!
//! Candidates of another ELF class or machine are skipped, as the loader
//! skips them. A program interpreter (`PT_INTERP`) the guest lacks is
//! copied to that exact path (through `lib64 -> lib`, never out of
//! tc_root). Copied files are written atomically, and any manifest record
//! of their path is dropped so they pack as root:root with their host mode
//! (the same rule as the binaries themselves).

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use goblin::elf::Elf;
use rootfs::manifest::Manifest;

use crate::edits::{put_file, EditReport};

/// Where copied libraries go in the guest (listed in TC's `ld.so.conf`).
pub const GUEST_LIB_DIR: &str = "/usr/local/lib";

/// The glibc loader's built-in directories on the guest side, after the
/// `ld.so.conf` ones. TC's glibc keeps its libraries in `/lib` and
/// `/usr/lib`; `/usr/local/lib` is where extensions put theirs.
const GUEST_DEFAULT_DIRS: [&str; 5] = ["/lib", "/usr/lib", "/lib64", "/usr/lib64", GUEST_LIB_DIR];

/// The host's standard library directories (Debian multiarch first), the
/// fallback after `/etc/ld.so.cache`.
pub const HOST_DEFAULT_DIRS: [&str; 6] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// Symlinks followed while resolving one guest path (the kernel's limit).
const MAX_SYMLINK_HOPS: usize = 40;

/// How the host finds libraries: its linker cache and default directories.
#[derive(Debug, Clone, Default)]
pub struct HostLibs {
    /// `(soname, path)` from the host's `ld.so.cache`, in cache order
    /// (glibc-hwcaps entries left out: they may need a newer CPU than the
    /// guest's).
    pub cache: Vec<(String, Utf8PathBuf)>,
    pub default_dirs: Vec<Utf8PathBuf>,
    /// Why the cache is empty, when it could not be read.
    pub cache_problem: Option<String>,
}

impl HostLibs {
    /// The running host: `/etc/ld.so.cache` and [`HOST_DEFAULT_DIRS`].
    pub fn system() -> HostLibs {
        Self::with_cache(Utf8Path::new("/etc/ld.so.cache"))
    }

    /// Like [`HostLibs::system`] with another cache file.
    pub fn with_cache(path: &Utf8Path) -> HostLibs {
        let default_dirs = HOST_DEFAULT_DIRS.iter().map(Utf8PathBuf::from).collect();
        let parsed = std::fs::read(path)
            .with_context(|| format!("cannot read {path}"))
            .and_then(|b| parse_ld_so_cache(&b).with_context(|| format!("cannot parse {path}")));
        match parsed {
            Ok(cache) => HostLibs {
                cache,
                default_dirs,
                cache_problem: None,
            },
            Err(e) => HostLibs {
                cache: vec![],
                default_dirs,
                cache_problem: Some(format!("{e:#}")),
            },
        }
    }
}

/// Parses glibc's linker cache in the format ldconfig has written since
/// glibc 2.32 (`glibc-ld.so.cache1.1`, no old-format prefix): a 48-byte
/// header, then 24-byte entries whose key (soname) and value (path) are
/// offsets from the start of the file to NUL-terminated strings. Entries
/// with hwcaps (glibc-hwcaps subdirectories) are skipped.
pub fn parse_ld_so_cache(bytes: &[u8]) -> Result<Vec<(String, Utf8PathBuf)>> {
    const MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
    const HEADER: usize = 48;
    const ENTRY: usize = 24;
    if !bytes.starts_with(MAGIC) {
        bail!("not a glibc-ld.so.cache1.1 file (older glibc formats are not read)");
    }
    if bytes.len() < HEADER {
        bail!("truncated header");
    }
    let u32_at = |off: usize| -> Result<u32> {
        let b = bytes
            .get(off..off + 4)
            .with_context(|| format!("truncated at byte {off}"))?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    // Byte 28 is the endianness flag: 0 (unknown, older ldconfig) or 2
    // (little) are fine on x86; 3 is big-endian, written for another host.
    match bytes[28] {
        0 | 2 => {}
        f => bail!("written for another byte order (flag {f})"),
    }
    let nlibs = u32_at(20)? as usize;
    if HEADER + nlibs * ENTRY > bytes.len() {
        bail!("{nlibs} entries do not fit in {} bytes", bytes.len());
    }
    let string_at = |off: u32| -> Result<&str> {
        let rest = bytes
            .get(off as usize..)
            .with_context(|| format!("string offset {off} beyond the end"))?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .with_context(|| format!("unterminated string at {off}"))?;
        std::str::from_utf8(&rest[..end]).with_context(|| format!("non-UTF-8 string at {off}"))
    };
    let mut out = Vec::with_capacity(nlibs);
    for i in 0..nlibs {
        let e = HEADER + i * ENTRY;
        let hwcap = u64::from_le_bytes(bytes[e + 16..e + 24].try_into().expect("8 bytes"));
        if hwcap != 0 {
            continue;
        }
        let key = string_at(u32_at(e + 4)?)?;
        let value = string_at(u32_at(e + 8)?)?;
        out.push((key.to_string(), Utf8PathBuf::from(value)));
    }
    Ok(out)
}

/// ELF class, machine and byte order: what the loader requires to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Class {
    is_64: bool,
    machine: u16,
    little_endian: bool,
}

/// What we need from one ELF file.
#[derive(Debug, Clone)]
struct ElfInfo {
    class: Class,
    interpreter: Option<String>,
    needed: Vec<String>,
    rpath: Vec<String>,
    runpath: Vec<String>,
    /// Version needs per needed file: (soname, [(version, weak)]).
    verneed: Vec<(String, Vec<(String, bool)>)>,
    /// Version names this object defines (empty: no version information).
    verdef: Vec<String>,
}

/// Reads an ELF file; `None` when it is not one (a script).
fn read_elf(path: &Utf8Path) -> Result<Option<ElfInfo>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
    if !bytes.starts_with(b"\x7fELF") {
        return Ok(None);
    }
    let elf = Elf::parse(&bytes).with_context(|| format!("{path} is not a valid ELF file"))?;
    let split = |v: &[&str]| -> Vec<String> {
        v.iter()
            .flat_map(|s| s.split(':'))
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut verneed = vec![];
    if let Some(vn) = &elf.verneed {
        for need in vn.iter() {
            let file = elf.dynstrtab.get_at(need.vn_file).unwrap_or("").to_string();
            let versions = need
                .iter()
                .filter_map(|aux| {
                    let name = elf.dynstrtab.get_at(aux.vna_name)?;
                    // VER_FLG_WEAK: the loader only notes a missing weak version.
                    Some((name.to_string(), aux.vna_flags & 0x2 != 0))
                })
                .collect();
            verneed.push((file, versions));
        }
    }
    let mut verdef = vec![];
    if let Some(vd) = &elf.verdef {
        for def in vd.iter() {
            // VER_FLG_BASE names the file itself, not a version.
            if def.vd_flags & 0x1 != 0 {
                continue;
            }
            if let Some(aux) = def.iter().next() {
                if let Some(name) = elf.dynstrtab.get_at(aux.vda_name) {
                    verdef.push(name.to_string());
                }
            }
        }
    }
    Ok(Some(ElfInfo {
        class: Class {
            is_64: elf.is_64,
            machine: elf.header.e_machine,
            little_endian: elf.little_endian,
        },
        interpreter: elf.interpreter.map(str::to_string),
        needed: elf.libraries.iter().map(|s| s.to_string()).collect(),
        rpath: split(&elf.rpaths),
        runpath: split(&elf.runpaths),
        verneed,
        verdef,
    }))
}

/// The class of an ELF file, `None` if it is not a readable ELF file.
fn class_of(path: &Utf8Path) -> Option<Class> {
    use std::io::Read;
    // e_ident and e_machine are in the first 20 bytes.
    let mut head = [0u8; 20];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    if &head[..4] != b"\x7fELF" {
        return None;
    }
    let little_endian = head[5] == 1;
    let m = [head[18], head[19]];
    Some(Class {
        is_64: head[4] == 2,
        machine: if little_endian {
            u16::from_le_bytes(m)
        } else {
            u16::from_be_bytes(m)
        },
        little_endian,
    })
}

/// Resolves an absolute guest path inside `root` as the guest would see
/// it: absolute symlink targets start at `root`, `..` stops at `root`.
/// Returns the physical path relative to `root` (no symlinks in it) if it
/// names a regular file. Only reads, never leaves `root`.
fn guest_file(root: &Utf8Path, guest: &str) -> Option<String> {
    let mut done: Vec<String> = vec![];
    let mut pending: std::collections::VecDeque<String> = guest
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    let mut hops = 0;
    while let Some(c) = pending.pop_front() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let rel = if done.is_empty() {
            c.clone()
        } else {
            format!("{}/{c}", done.join("/"))
        };
        let md = std::fs::symlink_metadata(root.join(&rel)).ok()?;
        if md.file_type().is_symlink() {
            hops += 1;
            if hops > MAX_SYMLINK_HOPS {
                return None;
            }
            let target = std::fs::read_link(root.join(&rel)).ok()?;
            let target = target.to_str()?;
            if target.starts_with('/') {
                done.clear();
            }
            for t in target.split('/').rev() {
                pending.push_front(t.to_string());
            }
        } else if pending.is_empty() {
            return md.is_file().then_some(rel);
        } else if md.is_dir() {
            done.push(c);
        } else {
            return None;
        }
    }
    None
}

/// Expands `$ORIGIN` / `${ORIGIN}`; `None` for entries with substitutions
/// we cannot know for the guest (`$LIB`, `$PLATFORM`).
fn expand_origin(entry: &str, origin: &str) -> Option<String> {
    let e = entry
        .replace("${ORIGIN}", origin)
        .replace("$ORIGIN", origin);
    (!e.contains('$')).then_some(e)
}

/// Joins a directory (absolute, or relative) with a name, for guest paths.
fn join_guest(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// Where one needed library came from.
#[derive(Debug, Clone)]
enum Source {
    /// The guest had it: its physical path relative to tc_root.
    Guest(String),
    /// Copied from the host in this run.
    Copied,
    Missing,
}

/// One object whose needs are followed: the binary or a copied library.
#[derive(Clone)]
struct Object {
    info: ElfInfo,
    /// Where it was found on the host (for `$ORIGIN`).
    host: Utf8PathBuf,
    /// Its directory in the guest (for `$ORIGIN` on the guest side).
    guest_dir: String,
}

/// Follows the needs of each `(host file, guest path)` binary already
/// installed in `root`, copying what the guest lacks (see the module
/// docs). Files that are not ELF (scripts) and static binaries need
/// nothing. Missing libraries and version mismatches are warnings.
pub fn install_deps(
    root: &Utf8Path,
    manifest: &mut Manifest,
    host: &HostLibs,
    binaries: &[(Utf8PathBuf, String)],
) -> Result<EditReport> {
    let mut r = EditReport::default();
    let guest_dirs = guest_search_dirs(root)?;
    let mut done: BTreeMap<String, Source> = BTreeMap::new();
    let mut verdefs: HashMap<String, Vec<String>> = HashMap::new();
    let mut noted_cache = false;
    for (src, guest) in binaries {
        let name = guest.rsplit('/').next().unwrap_or(guest);
        let Some(info) = read_elf(src).with_context(|| format!("CUSTOM_BINARIES: {src}"))? else {
            continue;
        };
        if info.interpreter.is_none() && info.needed.is_empty() {
            r.record(
                false,
                format!("{guest}: statically linked, needs no libraries"),
            );
            continue;
        }
        if let (Some(problem), false) = (&host.cache_problem, noted_cache) {
            r.unchanged.push(format!(
                "host linker cache not used ({problem}); searched the standard directories"
            ));
            noted_cache = true;
        }
        let interp_copied = match &info.interpreter {
            Some(interp) => {
                install_interpreter(root, manifest, name, src, interp, info.class, &mut r)?
            }
            None => false,
        };
        let exe_host = src.canonicalize_utf8().unwrap_or_else(|_| src.clone());
        let exe_rpath = if info.runpath.is_empty() {
            info.rpath.clone()
        } else {
            vec![]
        };
        let guest_dir = guest.rsplit_once('/').map_or("/", |(d, _)| d).to_string();
        let exe = Object {
            info,
            host: exe_host,
            guest_dir,
        };
        let mut queue = vec![exe.clone()];
        let mut used_from_guest = vec![];
        let mut copied = vec![];
        let mut missing = vec![];
        while let Some(obj) = queue.pop() {
            for lib in &obj.info.needed {
                if let Some(s) = done.get(lib) {
                    if let Source::Guest(p) = s {
                        let p = p.clone();
                        check_versions(root, &obj, lib, &p, name, &mut verdefs, &mut r);
                    }
                    continue;
                }
                if lib.contains('/') {
                    r.warn(format!(
                        "CUSTOM_BINARIES: {name} needs the library by path `{lib}`; not looked up, \
                         make sure the guest has it"
                    ));
                    done.insert(lib.clone(), Source::Missing);
                    continue;
                }
                if let Some(p) = find_in_guest(root, &obj, lib, &guest_dirs) {
                    check_versions(root, &obj, lib, &p, name, &mut verdefs, &mut r);
                    used_from_guest.push(lib.clone());
                    done.insert(lib.clone(), Source::Guest(p));
                    continue;
                }
                let Some(found) = find_on_host(host, &obj, &exe_rpath, lib) else {
                    r.warn(format!(
                        "CUSTOM_BINARIES: {name} needs {lib}, which neither the guest nor the host \
                         has (host: RUNPATH, /etc/ld.so.cache, {}); {name} will not start in the \
                         guest: add the extension that provides {lib} to PACKAGES, or link {name} \
                         statically",
                        host.default_dirs
                            .iter()
                            .map(|d| d.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    missing.push(lib.clone());
                    done.insert(lib.clone(), Source::Missing);
                    continue;
                };
                copy_library(root, manifest, lib, &found, name, &mut r)?;
                copied.push(lib.clone());
                done.insert(lib.clone(), Source::Copied);
                if let Some(info) = read_elf(&found)? {
                    queue.push(Object {
                        info,
                        host: found,
                        guest_dir: GUEST_LIB_DIR.to_string(),
                    });
                }
            }
        }
        // glibc's loader and libc.so.6 share private interfaces: one from
        // the host with the other from the guest breaks at startup unless
        // both are the same glibc build.
        let libc_copied = copied.iter().any(|l| l == "libc.so.6");
        let guest_libc = match done.get("libc.so.6") {
            Some(Source::Guest(p)) if used_from_guest.iter().any(|l| l == "libc.so.6") => {
                Some(p.clone())
            }
            _ => None,
        };
        let mixed = match (interp_copied, libc_copied, &guest_libc) {
            // The host's loader with the guest's libc: fine if that libc
            // is the host's too.
            (true, _, Some(rel)) => !same_as_host_libc(root, rel, host, &exe, &exe_rpath),
            (false, true, _) => true,
            _ => false,
        };
        if mixed {
            let (from_host, from_guest) = if interp_copied {
                ("the program interpreter", "libc.so.6")
            } else {
                ("libc.so.6", "the program interpreter")
            };
            r.warn(format!(
                "CUSTOM_BINARIES: {name}: {from_host} came from the host and {from_guest} from \
                 the guest; glibc's loader and libc.so.6 only work together when they are the \
                 same build, so {name} will probably not start in the guest"
            ));
        }
        let mut summary = format!("{guest}: dynamically linked");
        if !used_from_guest.is_empty() {
            summary.push_str(&format!("; guest has {}", used_from_guest.join(" ")));
        }
        if !copied.is_empty() {
            summary.push_str(&format!("; copied {}", copied.join(" ")));
        }
        if !missing.is_empty() {
            summary.push_str(&format!("; missing {}", missing.join(" ")));
        }
        r.unchanged.push(summary);
    }
    Ok(r)
}

/// True when the guest's libc.so.6 (at `rel`) is byte for byte the one
/// the host's loader gives `exe`.
fn same_as_host_libc(
    root: &Utf8Path,
    rel: &str,
    host: &HostLibs,
    exe: &Object,
    exe_rpath: &[String],
) -> bool {
    let Some(h) = find_on_host(host, exe, exe_rpath, "libc.so.6") else {
        return false;
    };
    let same_size = match (std::fs::metadata(&h), std::fs::metadata(root.join(rel))) {
        (Ok(a), Ok(b)) => a.len() == b.len(),
        _ => false,
    };
    same_size && std::fs::read(&h).ok() == std::fs::read(root.join(rel)).ok()
}

/// The guest loader's directories: `etc/ld.so.conf` (TC lists
/// `/usr/local/lib` there), then the built-in ones.
fn guest_search_dirs(root: &Utf8Path) -> Result<Vec<String>> {
    let mut dirs: Vec<String> = vec![];
    let conf = root.join("etc/ld.so.conf");
    let text = match std::fs::read(&conf) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {conf}")),
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        // `include` and `hwcap` lines are rare in TC; directories only.
        if line.is_empty() || line.starts_with("include ") || line.starts_with("hwcap ") {
            continue;
        }
        for d in line
            .split([' ', '\t', ',', ':'])
            .filter(|d| d.starts_with('/'))
        {
            if !dirs.iter().any(|x| x == d) {
                dirs.push(d.to_string());
            }
        }
    }
    for d in GUEST_DEFAULT_DIRS {
        if !dirs.iter().any(|x| x == d) {
            dirs.push(d.to_string());
        }
    }
    Ok(dirs)
}

/// Looks `lib` up in the guest; its physical path relative to `root`.
fn find_in_guest(root: &Utf8Path, obj: &Object, lib: &str, dirs: &[String]) -> Option<String> {
    let own = if obj.info.runpath.is_empty() {
        &obj.info.rpath
    } else {
        &obj.info.runpath
    };
    let own = own
        .iter()
        .filter_map(|e| expand_origin(e, &obj.guest_dir))
        .filter(|d| d.starts_with('/'));
    own.chain(dirs.iter().cloned()).find_map(|d| {
        let p = guest_file(root, &join_guest(&d, lib))?;
        (class_of(&root.join(&p)) == Some(obj.info.class)).then_some(p)
    })
}

/// Looks `lib` up on the host as the host's loader would for `obj`.
fn find_on_host(
    host: &HostLibs,
    obj: &Object,
    exe_rpath: &[String],
    lib: &str,
) -> Option<Utf8PathBuf> {
    let origin = obj
        .host
        .parent()
        .map_or_else(|| "/".to_string(), |p| p.to_string());
    // DT_RUNPATH applies to the object's own needs only; without it, the
    // object's DT_RPATH and then the executable's.
    let own: Vec<String> = if obj.info.runpath.is_empty() {
        obj.info.rpath.iter().chain(exe_rpath).cloned().collect()
    } else {
        obj.info.runpath.clone()
    };
    let ok = |p: &Utf8Path| p.is_file() && class_of(p) == Some(obj.info.class);
    own.iter()
        .filter_map(|e| expand_origin(e, &origin))
        .map(|d| Utf8PathBuf::from(d).join(lib))
        .chain(
            host.cache
                .iter()
                .filter(|(k, _)| k == lib)
                .map(|(_, p)| p.clone()),
        )
        .chain(host.default_dirs.iter().map(|d| d.join(lib)))
        .find(|p| ok(p))
}

/// Compares `obj`'s version needs from `lib` with what the guest's copy
/// (at `rel` in `root`) defines; a missing non-weak version is a warning.
fn check_versions(
    root: &Utf8Path,
    obj: &Object,
    lib: &str,
    rel: &str,
    name: &str,
    cache: &mut HashMap<String, Vec<String>>,
    r: &mut EditReport,
) {
    let Some((_, wanted)) = obj.info.verneed.iter().find(|(f, _)| f == lib) else {
        return;
    };
    let defined = cache.entry(rel.to_string()).or_insert_with(|| {
        read_elf(&root.join(rel))
            .ok()
            .flatten()
            .map(|i| i.verdef)
            .unwrap_or_default()
    });
    // A library without version information satisfies everything (the
    // loader only notes it).
    if defined.is_empty() {
        return;
    }
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(v, weak)| !weak && !defined.contains(v))
        .map(|(v, _)| v.as_str())
        .collect();
    if missing.is_empty() {
        return;
    }
    let newest = newest_version(defined, missing[0]);
    let msg = format!(
        "CUSTOM_BINARIES: {name} needs {} from {lib}, but the guest's /{rel} {}; it will not \
         start in the guest: build it against the guest's release (or statically)",
        missing.join(" "),
        match newest {
            Some(v) => format!("provides only up to {v}"),
            None => "does not provide it".to_string(),
        }
    );
    if !r.warnings.contains(&msg) {
        r.warn(msg);
    }
}

/// The highest version of `like`'s family (`GLIBC_2.34` -> newest
/// `GLIBC_x.y`) among `defined`.
fn newest_version<'a>(defined: &'a [String], like: &str) -> Option<&'a str> {
    let prefix = like.split('_').next()?;
    let key = |v: &str| -> Vec<u32> {
        v.rsplit('_')
            .next()
            .unwrap_or("")
            .split('.')
            .map(|n| n.parse().unwrap_or(0))
            .collect()
    };
    defined
        .iter()
        .filter(|v| v.starts_with(&format!("{prefix}_")))
        .max_by_key(|v| key(v))
        .map(String::as_str)
}

/// Copies the host library `found` (symlinks resolved) into the guest's
/// `/usr/local/lib` under the needed name.
fn copy_library(
    root: &Utf8Path,
    manifest: &mut Manifest,
    lib: &str,
    found: &Utf8Path,
    name: &str,
    r: &mut EditReport,
) -> Result<()> {
    let real = found
        .canonicalize_utf8()
        .with_context(|| format!("cannot resolve the host library {found}"))?;
    let dest = join_guest(GUEST_LIB_DIR, lib);
    let (rel, changed) = put_guest_file(root, &dest, &real, &format!("{lib} for {name}"))?;
    manifest.remove(&format!("/{rel}"));
    let via = if real == found {
        String::new()
    } else {
        format!(" (via {found})")
    };
    r.record(changed, format!("{rel} from {real}{via}, needed by {name}"));
    Ok(())
}

/// Copies the host's program interpreter to `interp` in the guest when
/// the guest has none there; returns whether the guest now uses the
/// host's.
fn install_interpreter(
    root: &Utf8Path,
    manifest: &mut Manifest,
    name: &str,
    src: &Utf8Path,
    interp: &str,
    class: Class,
    r: &mut EditReport,
) -> Result<bool> {
    if let Some(rel) = guest_file(root, interp) {
        if class_of(&root.join(&rel)) == Some(class) {
            return Ok(false);
        }
    }
    let host = Utf8Path::new(interp);
    if !interp.starts_with('/') || !host.is_file() || class_of(host) != Some(class) {
        r.warn(format!(
            "CUSTOM_BINARIES: {name} ({src}) needs the program interpreter {interp}, which \
             neither the guest nor the host has; {name} will not start in the guest"
        ));
        return Ok(false);
    }
    let real = host
        .canonicalize_utf8()
        .with_context(|| format!("cannot resolve the host's {interp}"))?;
    let (rel, changed) = put_guest_file(root, interp, &real, &format!("interpreter of {name}"))?;
    manifest.remove(&format!("/{rel}"));
    r.record(
        changed,
        format!("{rel} from {real} (program interpreter {interp} of {name})"),
    );
    Ok(true)
}

/// Writes the host file `src` at the guest path `guest` (absolute),
/// following symlinks on the way only while they stay in tc_root and
/// creating missing directories (0755). Returns the physical path relative
/// to `root` and whether anything changed.
fn put_guest_file(
    root: &Utf8Path,
    guest: &str,
    src: &Utf8Path,
    what: &str,
) -> Result<(String, bool)> {
    let origin = Utf8Path::new(what);
    let comps = rootfs::contain::entry_components(guest, origin, true)?;
    let Some((file, parent)) = comps.split_last() else {
        bail!("{what}: `{guest}` names tc_root itself");
    };
    let resolved = rootfs::contain::resolve_parent(root, parent, origin, guest)?;
    let dir_rel = resolved.rel();
    let dir = root.join(&dir_rel);
    if resolved.first_missing.is_some() {
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {dir}"))?;
        for (i, _) in resolved
            .components
            .iter()
            .enumerate()
            .skip(resolved.first_missing.unwrap_or(0))
        {
            let d = root.join(resolved.components[..=i].join("/"));
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot chmod 755 {d}"))?;
        }
    }
    let bytes = std::fs::read(src).with_context(|| format!("cannot read {src}"))?;
    let mode = std::fs::metadata(src)
        .with_context(|| format!("cannot stat {src}"))?
        .permissions()
        .mode()
        & 0o755;
    let rel = if dir_rel.is_empty() {
        file.to_string()
    } else {
        format!("{dir_rel}/{file}")
    };
    // Owner-writable so the user can edit tc_root; readable by everyone.
    let changed = put_file(&root.join(&rel), &bytes, mode | 0o644)?;
    Ok((rel, changed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_expansion() {
        assert_eq!(
            expand_origin("$ORIGIN/../lib", "/a/bin").as_deref(),
            Some("/a/bin/../lib")
        );
        assert_eq!(expand_origin("${ORIGIN}/x", "/o").as_deref(), Some("/o/x"));
        assert_eq!(expand_origin("/opt/$LIB", "/o"), None);
    }

    #[test]
    fn newest_version_orders_numerically() {
        let d: Vec<String> = ["GLIBC_2.2.5", "GLIBC_2.9", "GLIBC_2.28", "GLIBC_PRIVATE"]
            .map(String::from)
            .to_vec();
        assert_eq!(newest_version(&d, "GLIBC_2.34"), Some("GLIBC_2.28"));
    }

    #[test]
    fn guest_paths_resolve_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(d.path()).unwrap();
        std::fs::create_dir_all(root.join("lib")).unwrap();
        std::fs::write(root.join("lib/libc.so.6"), b"x").unwrap();
        std::os::unix::fs::symlink("lib", root.join("lib64")).unwrap();
        std::os::unix::fs::symlink("/lib/libc.so.6", root.join("lib/abs")).unwrap();
        std::os::unix::fs::symlink("../../../../lib/libc.so.6", root.join("lib/up")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("lib/host")).unwrap();
        assert_eq!(
            guest_file(root, "/lib64/libc.so.6").as_deref(),
            Some("lib/libc.so.6")
        );
        assert_eq!(
            guest_file(root, "/lib/abs").as_deref(),
            Some("lib/libc.so.6")
        );
        assert_eq!(
            guest_file(root, "/lib/up").as_deref(),
            Some("lib/libc.so.6")
        );
        // The guest's /etc/passwd, not the host's.
        assert_eq!(guest_file(root, "/lib/host"), None);
        assert_eq!(guest_file(root, "/lib"), None, "directories are not files");
    }
}
