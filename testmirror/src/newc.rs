//! A tiny newc ("070701") cpio writer for the test core.
//!
//! Written here rather than with the `cpio` crate because the core needs
//! exactly what a plain user cannot put on disk and that crate cannot
//! express: device nodes, fifos, owners, setuid bits and hard links (one
//! inode number, nlink 2, data on the last link only, as GNU cpio does).

/// What an entry is; the permission bits live in [`Entry::mode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    /// Permission bits only (e.g. 0o4755); the file type comes from `kind`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub kind: Kind,
    /// Entries with the same `Some(group)` are hard links of one inode.
    pub link_group: Option<u32>,
}

impl Entry {
    pub fn new(path: &str, mode: u32, kind: Kind) -> Entry {
        Entry {
            path: path.to_string(),
            mode,
            uid: 0,
            gid: 0,
            kind,
            link_group: None,
        }
    }

    pub fn owner(mut self, uid: u32, gid: u32) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn hard_link_group(mut self, group: u32) -> Entry {
        self.link_group = Some(group);
        self
    }

    fn type_bits(&self) -> u32 {
        match self.kind {
            Kind::Dir => 0o040000,
            Kind::File(_) => 0o100000,
            Kind::Symlink(_) => 0o120000,
            Kind::Char(..) => 0o020000,
            Kind::Block(..) => 0o060000,
            Kind::Fifo => 0o010000,
        }
    }
}

/// Writes one complete archive (entries in the given order, then the
/// trailer, padded to 512 bytes like GNU cpio). Inode numbers start at
/// `first_ino` so that several archives of one core never share numbers;
/// returns the next free inode number.
pub fn write_archive(out: &mut Vec<u8>, entries: &[Entry], mtime: u32, first_ino: u32) -> u32 {
    let start = out.len();
    let mut ino = first_ino;
    // Hard-link groups: one inode number, the link count, and which entry
    // (the last in archive order) carries the data.
    let mut group_ino = std::collections::HashMap::new();
    let mut group_count = std::collections::HashMap::new();
    let mut group_last = std::collections::HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let Some(g) = e.link_group {
            *group_count.entry(g).or_insert(0u32) += 1;
            group_last.insert(g, i);
        }
    }
    for (i, e) in entries.iter().enumerate() {
        let (this_ino, nlink, carries_data) = match e.link_group {
            Some(g) => {
                let n = *group_ino.entry(g).or_insert_with(|| {
                    ino += 1;
                    ino - 1
                });
                (n, group_count[&g], group_last[&g] == i)
            }
            None => {
                ino += 1;
                (ino - 1, if e.kind == Kind::Dir { 2 } else { 1 }, true)
            }
        };
        let data: &[u8] = match &e.kind {
            Kind::File(d) if carries_data => d,
            Kind::Symlink(t) => t.as_bytes(),
            _ => &[],
        };
        let (rmaj, rmin) = match e.kind {
            Kind::Char(a, b) | Kind::Block(a, b) => (a, b),
            _ => (0, 0),
        };
        let fields = [
            this_ino,
            e.type_bits() | e.mode,
            e.uid,
            e.gid,
            nlink,
            mtime,
            data.len() as u32,
            0,
            0,
            rmaj,
            rmin,
            e.path.len() as u32 + 1,
            0,
        ];
        push_header(out, &fields, &e.path);
        out.extend_from_slice(data);
        pad(out, 4);
    }
    push_header(out, &[0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0], "TRAILER!!!");
    let len = out.len() - start;
    out.resize(start + len.div_ceil(512) * 512, 0);
    ino
}

fn push_header(out: &mut Vec<u8>, fields: &[u32; 13], name: &str) {
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad(out, 4);
}

fn pad(out: &mut Vec<u8>, to: usize) {
    out.resize(out.len().next_multiple_of(to), 0);
}
