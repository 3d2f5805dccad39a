//! A minimal 9P2000.L client over TCP: enough to see that a guest's file
//! server answers, and to read files and directories from it (the tests'
//! host side, where mounting needs privileges and the `9p` module).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

const NOTAG: u16 = 0xffff;
const NOFID: u32 = 0xffff_ffff;
const MSIZE: u32 = 64 * 1024;
const ROOT_FID: u32 = 0;

const RLERROR: u8 = 7;
const TLOPEN: u8 = 12;
const TREADDIR: u8 = 40;
const TVERSION: u8 = 100;
const TATTACH: u8 = 104;
const TWALK: u8 = 110;
const TREAD: u8 = 116;
const TCLUNK: u8 = 120;

pub struct Client {
    stream: TcpStream,
    msize: u32,
    next_fid: u32,
}

/// Encodes one message body.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(self, s: &str) -> Self {
        let mut m = self.u16(s.len() as u16);
        m.0.extend_from_slice(s.as_bytes());
        m
    }
}

/// Decodes a reply body.
struct Reply<'a>(&'a [u8]);

impl Reply<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.0.len() < n {
            bail!("9p reply too short");
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }
    fn str(&mut self) -> Result<String> {
        let n = self.u16()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
}

impl Client {
    /// Connects, negotiates 9P2000.L and attaches to the export's root.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let mut c = Client {
            stream,
            msize: MSIZE,
            next_fid: ROOT_FID + 1,
        };
        let body = c.call(TVERSION, NOTAG, Msg::default().u32(MSIZE).str("9P2000.L"))?;
        let mut r = Reply(&body);
        c.msize = r.u32()?.min(MSIZE);
        let version = r.str()?;
        if version != "9P2000.L" {
            bail!("{addr} speaks {version:?}, not 9P2000.L");
        }
        c.call(
            TATTACH,
            1,
            Msg::default()
                .u32(ROOT_FID)
                .u32(NOFID)
                .str("root")
                .str("")
                .u32(0),
        )?;
        Ok(c)
    }

    fn call(&mut self, kind: u8, tag: u16, body: Msg) -> Result<Vec<u8>> {
        let mut frame = Msg::default().u32(0).u8(kind).u16(tag);
        frame.0.extend_from_slice(&body.0);
        let len = frame.0.len() as u32;
        frame.0[..4].copy_from_slice(&len.to_le_bytes());
        self.stream
            .write_all(&frame.0)
            .context("cannot send a 9p request")?;
        let mut head = [0u8; 7];
        self.stream.read_exact(&mut head).context("no 9p reply")?;
        let size = u32::from_le_bytes(head[..4].try_into()?) as usize;
        if size < 7 {
            bail!("bad 9p reply size {size}");
        }
        let mut body = vec![0u8; size - 7];
        self.stream
            .read_exact(&mut body)
            .context("short 9p reply")?;
        match head[4] {
            RLERROR => {
                let errno = Reply(&body).u32()?;
                bail!("{}", std::io::Error::from_raw_os_error(errno as i32))
            }
            k if k == kind + 1 => Ok(body),
            k => bail!("unexpected 9p reply type {k} to {kind}"),
        }
    }

    /// A new fid for `path` (relative to the export, `/`-separated).
    fn walk(&mut self, path: &str) -> Result<u32> {
        let names: Vec<&str> = path.split('/').filter(|n| !n.is_empty()).collect();
        let fid = self.next_fid;
        self.next_fid += 1;
        let mut m = Msg::default()
            .u32(ROOT_FID)
            .u32(fid)
            .u16(names.len() as u16);
        for n in &names {
            m = m.str(n);
        }
        let body = self
            .call(TWALK, 1, m)
            .with_context(|| format!("cannot walk to {path}"))?;
        if Reply(&body).u16()? as usize != names.len() {
            bail!("{path}: no such file or directory");
        }
        Ok(fid)
    }

    fn clunk(&mut self, fid: u32) {
        let _ = self.call(TCLUNK, 1, Msg::default().u32(fid));
    }

    /// The whole content of the file at `path`.
    pub fn read_file(&mut self, path: &str) -> Result<Vec<u8>> {
        let fid = self.walk(path)?;
        let result = (|| -> Result<_> {
            self.call(TLOPEN, 1, Msg::default().u32(fid).u32(0))?;
            let mut data = Vec::new();
            loop {
                let count = self.msize - 24;
                let body = self.call(
                    TREAD,
                    1,
                    Msg::default().u32(fid).u64(data.len() as u64).u32(count),
                )?;
                let mut r = Reply(&body);
                let n = r.u32()? as usize;
                if n == 0 {
                    return Ok(data);
                }
                data.extend_from_slice(r.take(n)?);
            }
        })();
        self.clunk(fid);
        result.with_context(|| format!("cannot read {path} over 9p"))
    }

    /// The names in the directory at `path`, without `.` and `..`, sorted.
    pub fn list_dir(&mut self, path: &str) -> Result<Vec<String>> {
        let fid = self.walk(path)?;
        let result = (|| -> Result<_> {
            self.call(TLOPEN, 1, Msg::default().u32(fid).u32(0o200000))?;
            let mut names = Vec::new();
            let mut offset = 0u64;
            loop {
                let count = self.msize - 24;
                let body =
                    self.call(TREADDIR, 1, Msg::default().u32(fid).u64(offset).u32(count))?;
                let mut r = Reply(&body);
                let n = r.u32()? as usize;
                if n == 0 {
                    break;
                }
                let mut e = Reply(r.take(n)?);
                while !e.0.is_empty() {
                    e.take(13)?; // qid
                    offset = e.u64()?;
                    e.u8()?; // type
                    let name = e.str()?;
                    if name != "." && name != ".." {
                        names.push(name);
                    }
                }
            }
            names.sort();
            Ok(names)
        })();
        self.clunk(fid);
        result.with_context(|| format!("cannot list {path} over 9p"))
    }
}
