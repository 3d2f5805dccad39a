//! AF_VSOCK stream sockets for vsock-cat and vsock-server: std has none.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Any CID (for listening), the local machine (loopback) and the host.
pub const CID_ANY: u32 = libc::VMADDR_CID_ANY;
pub const CID_LOCAL: u32 = 1;
pub const CID_HOST: u32 = libc::VMADDR_CID_HOST;

/// A connected vsock stream.
pub struct Stream {
    // A socket fd reads and writes like a file; shutdown is ours.
    file: File,
}

/// A listening vsock socket.
pub struct Listener {
    fd: OwnedFd,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a new fd we own.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_VSOCK,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        )
    })
    .map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{e} (is the vsock module loaded? the guest needs a vsock device or vsock_loopback)"),
        )
    })?;
    // SAFETY: fd was just returned by socket(2).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all-zero is valid.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

const ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

impl Stream {
    /// Connects to `cid`:`port`.
    pub fn connect(cid: u32, port: u32) -> io::Result<Stream> {
        let fd = socket()?;
        let a = addr(cid, port);
        loop {
            // SAFETY: `a` is a valid sockaddr_vm of ADDR_LEN bytes.
            let r = unsafe {
                libc::connect(
                    fd.as_raw_fd(),
                    (&a as *const libc::sockaddr_vm).cast(),
                    ADDR_LEN,
                )
            };
            match cvt(r) {
                Ok(_) => return Ok(Stream { file: fd.into() }),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(Stream {
            file: self.file.try_clone()?,
        })
    }

    /// Tells the peer we will send nothing more (it reads EOF) while we
    /// can still read its answer.
    pub fn shutdown_write(&self) -> io::Result<()> {
        // SAFETY: plain syscall on an fd we own.
        cvt(unsafe { libc::shutdown(self.file.as_raw_fd(), libc::SHUT_WR) }).map(drop)
    }

    pub fn into_owned_fd(self) -> OwnedFd {
        self.file.into()
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Listener {
    /// Listens on any CID at `port`.
    pub fn bind(port: u32) -> io::Result<Listener> {
        let fd = socket()?;
        let a = addr(CID_ANY, port);
        // SAFETY: `a` is a valid sockaddr_vm of ADDR_LEN bytes.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&a as *const libc::sockaddr_vm).cast(),
                ADDR_LEN,
            )
        })?;
        // SAFETY: plain syscall on an fd we own.
        cvt(unsafe { libc::listen(fd.as_raw_fd(), 16) })?;
        Ok(Listener { fd })
    }

    /// The next connection and the peer's CID.
    pub fn accept(&self) -> io::Result<(Stream, u32)> {
        loop {
            let mut a = addr(0, 0);
            let mut len = ADDR_LEN;
            // SAFETY: `a`/`len` describe a writable sockaddr_vm.
            let r = unsafe {
                libc::accept4(
                    self.fd.as_raw_fd(),
                    (&mut a as *mut libc::sockaddr_vm).cast(),
                    &mut len,
                    libc::SOCK_CLOEXEC,
                )
            };
            match cvt(r) {
                // SAFETY: r is a new fd returned by accept4.
                Ok(fd) => {
                    let file = unsafe { File::from_raw_fd(fd) };
                    return Ok((Stream { file }, a.svm_cid));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Parses a CID: a number, or `host` (2), `local` (1, loopback).
pub fn parse_cid(s: &str) -> Option<u32> {
    match s {
        "host" => Some(CID_HOST),
        "local" => Some(CID_LOCAL),
        _ => s.parse().ok(),
    }
}

/// Parses a port number (any u32 but VMADDR_PORT_ANY).
pub fn parse_port(s: &str) -> Option<u32> {
    s.parse().ok().filter(|p| *p != libc::VMADDR_PORT_ANY)
}

/// The program's arguments as UTF-8, or a usage error naming the bad one.
pub fn args() -> Result<Vec<String>, OsString> {
    std::env::args_os()
        .skip(1)
        .map(|a| a.into_string())
        .collect()
}
