//! Running the xtask binary the way a user would, in a sandbox: a private
//! HOME, a given configuration file and build directory, nothing else from
//! the test's environment but PATH (and where cargo/rustup live, for the
//! tasks that build progs/).

#![allow(dead_code)] // each test binary uses its own part

use std::process::Command;
use std::time::{Duration, Instant};

use camino::Utf8PathBuf;

pub const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

pub struct Sandbox {
    pub config: Utf8PathBuf,
    pub build: Utf8PathBuf,
    pub home: Utf8PathBuf,
}

impl Sandbox {
    /// `xtask --config CONFIG --build-dir BUILD ARGS` with `env` added;
    /// panics with the output when it fails. Returns stdout+stderr and
    /// the wall time.
    pub fn run(&self, args: &[&str], env: &[(&str, &str)]) -> (String, Duration) {
        let real_home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        let t = Instant::now();
        let out = Command::new(XTASK)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("HOME", &self.home)
            .env(
                "RUSTUP_HOME",
                std::env::var("RUSTUP_HOME").unwrap_or_else(|_| format!("{real_home}/.rustup")),
            )
            .env(
                "CARGO_HOME",
                std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{real_home}/.cargo")),
            )
            .envs(env.iter().copied())
            .args([
                "--config",
                self.config.as_str(),
                "--build-dir",
                self.build.as_str(),
            ])
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "xtask {args:?} failed:\n{text}");
        (text, t.elapsed())
    }
}

/// The project kernel (kernel.config built from Debian's linux-source
/// tarball), from the build shared with the kernel crate's test and the
/// full-build test (testmirror::kernel_cache): a no-op make when one of
/// them already built it, a full build (~8 min) otherwise. `None` only
/// where missing tools may be skipped (see testmirror::tools).
pub fn project_kernel() -> Option<kernel::BuildOutputs> {
    use testmirror::kernel_cache;
    use testmirror::tools::require_tool;
    for (tool, pkg) in [
        ("make", "make"),
        ("gcc", "gcc"),
        ("flex", "flex"),
        ("bison", "bison"),
    ] {
        require_tool(tool, pkg)?;
    }
    let tarball = require_tool("/usr/src/linux-source-*.tar.xz", "linux-source-6.1")?;
    let tarball = Utf8PathBuf::from_path_buf(tarball).unwrap();
    let kernel_config = kernel_cache::workspace().join("kernel.config");
    let dir = kernel_cache::keyed_dir(&kernel_config, &tarball).unwrap();
    let src = kernel::Source::locate(&tarball, &kernel_cache::cache_root()).unwrap();
    let opts = kernel::BuildOptions {
        out_dir: Some(dir.join("obj")),
        ..kernel::BuildOptions::new(&dir)
    };
    kernel::configure(&src, &opts, &kernel_config).unwrap();
    Some(kernel::build(&src, &opts).unwrap())
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for QEMU's
/// hostfwd and the like).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
