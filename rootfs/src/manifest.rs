//! The metadata manifest that sits next to `tc_root`.
//!
//! A plain user cannot put ownership, setuid/setgid bits, device nodes,
//! fifos or sockets on disk, so everything unpacked from an archive is also
//! recorded here, one line per entry, in the grammar of the kernel's
//! `usr/gen_init_cpio` spec files:
//!
//! ```text
//! dir   <name> <mode> <uid> <gid>
//! file  <name> <location> <mode> <uid> <gid>
//! slink <name> <target> <mode> <uid> <gid>
//! nod   <name> <mode> <uid> <gid> <c|b> <maj> <min>
//! pipe  <name> <mode> <uid> <gid>
//! sock  <name> <mode> <uid> <gid>
//! ```
//!
//! `<name>` is the absolute in-guest path (`/etc/passwd`), `<location>` the
//! same path relative to tc_root (so `gen_init_cpio` run inside tc_root
//! accepts the file as is), modes are octal with the special bits and without
//! the file-type bits. Lines are sorted by name. A comment line
//! `#@ source NAME` says which archive the following entries came from, until
//! the next such line; other `#` lines are comments. Names containing
//! whitespace, `#` or `\` are written with octal escapes (`\040`), as in
//! `/proc/mounts`.
//!
//! How the packer combines this with the tree on disk is described in
//! [`crate::meta`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{bail, Context, Result};
use camino::Utf8Path;

/// What kind of filesystem object an entry is, with what only that kind has.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Kind {
    Dir,
    File,
    Symlink { target: String },
    CharDev { major: u32, minor: u32 },
    BlockDev { major: u32, minor: u32 },
    Fifo,
    Socket,
}

impl Kind {
    /// The `S_IFMT` bits of this kind.
    pub fn type_bits(&self) -> u32 {
        match self {
            Kind::Dir => 0o040000,
            Kind::File => 0o100000,
            Kind::Symlink { .. } => 0o120000,
            Kind::CharDev { .. } => 0o020000,
            Kind::BlockDev { .. } => 0o060000,
            Kind::Fifo => 0o010000,
            Kind::Socket => 0o140000,
        }
    }

    /// Kinds that exist only in the manifest, never on disk.
    pub fn is_manifest_only(&self) -> bool {
        matches!(
            self,
            Kind::CharDev { .. } | Kind::BlockDev { .. } | Kind::Fifo | Kind::Socket
        )
    }
}

/// One recorded filesystem entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Permission and special bits (`0o7777`), no file-type bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub kind: Kind,
    /// The archive this entry came from (`corepure64.gz`, `openssh.tcz`).
    pub source: Option<String>,
}

/// All recorded entries, keyed by absolute in-guest path (`/etc/passwd`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    entries: BTreeMap<String, Entry>,
}

/// Turns `etc/passwd`, `/etc/passwd`, `./etc/passwd` into `/etc/passwd`.
/// Does not resolve `..`: callers that take names from archives must check
/// containment first (see [`crate::contain`]).
pub fn guest_path(name: &str) -> String {
    let trimmed = name.trim_start_matches("./").trim_start_matches('/');
    let trimmed = trimmed.trim_end_matches('/');
    if trimmed.is_empty() || trimmed == "." {
        "/".to_string()
    } else {
        format!("/{trimmed}")
    }
}

impl Manifest {
    pub fn new() -> Manifest {
        Manifest::default()
    }

    /// Records (or replaces: later archives overwrite earlier ones) an entry.
    pub fn insert(&mut self, path: &str, entry: Entry) {
        self.entries.insert(guest_path(path), entry);
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(&guest_path(path))
    }

    pub fn remove(&mut self, path: &str) -> Option<Entry> {
        self.entries.remove(&guest_path(path))
    }

    /// Removes `path` and everything below it (a directory replaced by a
    /// file, or deleted by CUSTOM_REMOVALS).
    pub fn remove_tree(&mut self, path: &str) {
        let path = guest_path(path);
        let prefix = if path == "/" {
            "/".to_string()
        } else {
            format!("{path}/")
        };
        self.entries
            .retain(|p, _| *p != path && !p.starts_with(&prefix));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(p, e)| (p.as_str(), e))
    }

    /// The manifest as text (see the module docs for the grammar).
    pub fn to_text(&self) -> String {
        let mut out = String::from(
            "# linux-guest rootfs manifest: gen_init_cpio grammar, names absolute,\n\
             # locations relative to tc_root. Edit to change owners/modes/devices.\n",
        );
        let mut current_source: Option<&str> = None;
        for (path, e) in &self.entries {
            let src = e.source.as_deref();
            if src != current_source {
                let _ = writeln!(out, "#@ source {}", src.unwrap_or("-"));
                current_source = src;
            }
            let name = escape(path);
            let (mode, uid, gid) = (e.mode & 0o7777, e.uid, e.gid);
            let _ = match &e.kind {
                Kind::Dir => writeln!(out, "dir {name} {mode:04o} {uid} {gid}"),
                Kind::File => {
                    let loc = escape(path.trim_start_matches('/'));
                    writeln!(out, "file {name} {loc} {mode:04o} {uid} {gid}")
                }
                Kind::Symlink { target } => {
                    writeln!(
                        out,
                        "slink {name} {} {mode:04o} {uid} {gid}",
                        escape(target)
                    )
                }
                Kind::CharDev { major, minor } => {
                    writeln!(out, "nod {name} {mode:04o} {uid} {gid} c {major} {minor}")
                }
                Kind::BlockDev { major, minor } => {
                    writeln!(out, "nod {name} {mode:04o} {uid} {gid} b {major} {minor}")
                }
                Kind::Fifo => writeln!(out, "pipe {name} {mode:04o} {uid} {gid}"),
                Kind::Socket => writeln!(out, "sock {name} {mode:04o} {uid} {gid}"),
            };
        }
        out
    }

    /// Parses manifest text; `origin` names the file in error messages.
    pub fn from_text(text: &str, origin: &str) -> Result<Manifest> {
        let mut m = Manifest::new();
        let mut source: Option<String> = None;
        for (i, line) in text.lines().enumerate() {
            let lineno = i + 1;
            let line = line.trim();
            if let Some(s) = line.strip_prefix("#@ source ") {
                let s = s.trim();
                source = if s == "-" { None } else { Some(s.to_string()) };
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (path, entry) = parse_line(line, source.clone())
                .with_context(|| format!("{origin}:{lineno}: cannot parse `{line}`"))?;
            m.entries.insert(path, entry);
        }
        Ok(m)
    }

    pub fn load(path: &Utf8Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("cannot read the rootfs manifest {path} (run `cargo xtask setup-tinycore` to create it)")
        })?;
        Manifest::from_text(&text, path.as_str())
    }

    /// Writes atomically (temp file in the same directory, then rename).
    pub fn save(&self, path: &Utf8Path) -> Result<()> {
        crate::fsutil::write_atomic(path, self.to_text().as_bytes())
    }
}

fn parse_line(line: &str, source: Option<String>) -> Result<(String, Entry)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| -> Result<u32> {
        let s = f
            .get(i)
            .with_context(|| format!("missing field {}", i + 1))?;
        s.parse::<u32>()
            .with_context(|| format!("field {} `{s}` is not a number", i + 1))
    };
    let oct = |i: usize| -> Result<u32> {
        let s = f
            .get(i)
            .with_context(|| format!("missing field {}", i + 1))?;
        let v = u32::from_str_radix(s, 8)
            .with_context(|| format!("field {} `{s}` is not an octal mode", i + 1))?;
        if v > 0o7777 {
            bail!("mode {s} has bits beyond 07777");
        }
        Ok(v)
    };
    let name = || -> Result<String> {
        let n = f.get(1).context("missing name")?;
        let n = unescape(n)?;
        if !n.starts_with('/') {
            bail!("name `{n}` must be absolute");
        }
        Ok(guest_path(&n))
    };
    let (kind, mode, uid, gid) = match f[0] {
        "dir" => (Kind::Dir, oct(2)?, num(3)?, num(4)?),
        "file" => (Kind::File, oct(3)?, num(4)?, num(5)?),
        "slink" => {
            let target = unescape(f.get(2).context("missing symlink target")?)?;
            (Kind::Symlink { target }, oct(3)?, num(4)?, num(5)?)
        }
        "nod" => {
            let (major, minor) = (num(6)?, num(7)?);
            let kind = match f.get(5).copied() {
                Some("c") => Kind::CharDev { major, minor },
                Some("b") => Kind::BlockDev { major, minor },
                other => bail!("device type must be c or b, got {other:?}"),
            };
            (kind, oct(2)?, num(3)?, num(4)?)
        }
        "pipe" => (Kind::Fifo, oct(2)?, num(3)?, num(4)?),
        "sock" => (Kind::Socket, oct(2)?, num(3)?, num(4)?),
        other => bail!("unknown entry type `{other}` (dir, file, slink, nod, pipe, sock)"),
    };
    Ok((
        name()?,
        Entry {
            mode,
            uid,
            gid,
            kind,
            source,
        },
    ))
}

/// Octal-escapes whitespace, `#`, `\` and control characters.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_whitespace() || c == '\\' || c == '#' || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "\\{b:03o}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Reverses [`escape`].
pub fn unescape(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let digits = bytes.get(i + 1..i + 4).context("truncated \\ escape")?;
            let text = std::str::from_utf8(digits).context("bad \\ escape")?;
            out.push(u8::from_str_radix(text, 8).with_context(|| format!("bad escape \\{text}"))?);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).context("escaped name is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let mut m = Manifest::new();
        let core = Some("corepure64.gz".to_string());
        m.insert(
            "dev",
            Entry {
                mode: 0o755,
                uid: 0,
                gid: 0,
                kind: Kind::Dir,
                source: core.clone(),
            },
        );
        m.insert(
            "/dev/console",
            Entry {
                mode: 0o600,
                uid: 0,
                gid: 50,
                kind: Kind::CharDev { major: 5, minor: 1 },
                source: core.clone(),
            },
        );
        m.insert(
            "./bin/busybox.suid",
            Entry {
                mode: 0o4755,
                uid: 0,
                gid: 0,
                kind: Kind::File,
                source: core.clone(),
            },
        );
        m.insert(
            "bin/sh",
            Entry {
                mode: 0o777,
                uid: 0,
                gid: 0,
                kind: Kind::Symlink {
                    target: "busybox".into(),
                },
                source: core,
            },
        );
        m.insert(
            "usr/local/share/a file#1",
            Entry {
                mode: 0o644,
                uid: 1001,
                gid: 50,
                kind: Kind::File,
                source: Some("x.tcz".into()),
            },
        );
        m.insert(
            "dev/sda",
            Entry {
                mode: 0o660,
                uid: 0,
                gid: 6,
                kind: Kind::BlockDev { major: 8, minor: 0 },
                source: None,
            },
        );
        m.insert(
            "run/fifo",
            Entry {
                mode: 0o600,
                uid: 0,
                gid: 0,
                kind: Kind::Fifo,
                source: None,
            },
        );
        m
    }

    #[test]
    fn text_round_trips() {
        let m = sample();
        let text = m.to_text();
        assert!(
            text.contains("nod /dev/console 0600 0 50 c 5 1\n"),
            "{text}"
        );
        assert!(
            text.contains("file /bin/busybox.suid bin/busybox.suid 4755 0 0\n"),
            "{text}"
        );
        assert!(text.contains("slink /bin/sh busybox 0777 0 0\n"), "{text}");
        assert!(
            text.contains("/usr/local/share/a\\040file\\0431 "),
            "{text}"
        );
        assert!(text.contains("#@ source x.tcz\n"), "{text}");
        assert_eq!(Manifest::from_text(&text, "t").unwrap(), m);
    }

    #[test]
    fn remove_tree_removes_children_only() {
        let mut m = sample();
        m.insert(
            "/devices",
            Entry {
                mode: 0o755,
                uid: 0,
                gid: 0,
                kind: Kind::Dir,
                source: None,
            },
        );
        m.remove_tree("/dev");
        assert!(m.get("/dev/console").is_none());
        assert!(m.get("/dev").is_none());
        assert!(m.get("/devices").is_some());
    }

    #[test]
    fn bad_lines_name_the_line() {
        let err =
            Manifest::from_text("dir /a 0755 0 0\nnod /b 0600 0 0 x 1 2\n", "m.txt").unwrap_err();
        assert!(format!("{err:#}").contains("m.txt:2"), "{err:#}");
        let err = Manifest::from_text("dir a 0755 0 0\n", "m").unwrap_err();
        assert!(format!("{err:#}").contains("absolute"), "{err:#}");
        let err = Manifest::from_text("dir /a 0999 0 0\n", "m").unwrap_err();
        assert!(format!("{err:#}").contains("octal"), "{err:#}");
    }
}
