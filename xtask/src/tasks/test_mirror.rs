//! `cargo xtask test-mirror`: build the Tiny Core-shaped test mirror that
//! the tests use and serve it on 127.0.0.1, so setup can be tried offline.

use anyhow::{Context, Result};
use camino::Utf8PathBuf;

use crate::config::Config;

#[derive(clap::Args)]
pub struct Flags {
    /// Release directory to build (16.x or 7.x)
    #[arg(long, default_value = "16.x")]
    tc_version: String,
    /// x86_64 or x86
    #[arg(long, default_value = "x86_64")]
    arch: String,
    /// Where to build it [default: <build dir>/test-mirror]
    #[arg(long, value_name = "DIR")]
    dir: Option<Utf8PathBuf>,
    /// Build only; do not serve
    #[arg(long)]
    no_serve: bool,
}

pub fn run(c: &Config, f: &Flags) -> Result<()> {
    let dir = f
        .dir
        .clone()
        .unwrap_or_else(|| c.build_dir.value.join("test-mirror"));
    let layout = testmirror::mirror::Layout::new(&f.tc_version, &f.arch);
    let built = testmirror::mirror::build(&dir, &layout)
        .with_context(|| format!("cannot build the test mirror in {dir}"))?;
    println!(
        "test mirror: {} ({} packages)",
        built.root,
        built.packages.len()
    );
    if f.no_serve {
        return Ok(());
    }
    let server = testmirror::server::Server::start(built.root.as_std_path())?;
    println!("serving on {} (Ctrl-C to stop)", server.url());
    println!(
        "try: cargo xtask setup-tinycore --mirror {} -p openssh -p strace",
        server.url()
    );
    loop {
        std::thread::park();
    }
}
