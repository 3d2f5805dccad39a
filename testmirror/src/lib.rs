//! A Tiny Core-shaped mirror that tests and benchmarks build themselves,
//! and the HTTP server that serves it on 127.0.0.1.

pub mod core;
pub mod kernel_cache;
pub mod mirror;
pub mod newc;
pub mod qemu;
pub mod server;
pub mod tools;

pub use mirror::{build, BuiltMirror, Layout};
pub use server::{refused_url, Fault, Server};

/// Builds the mirror for `layout` under `dir` and serves `dir`: the usual
/// first two lines of a test. Keep the `Server` alive while you use it.
pub fn serve(dir: &camino::Utf8Path, layout: &Layout) -> anyhow::Result<(BuiltMirror, Server)> {
    let mirror = build(dir, layout)?;
    let server = Server::start(mirror.root.as_std_path())?;
    Ok((mirror, server))
}
