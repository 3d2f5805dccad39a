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
use rootfs::manifest::Manifest;
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
    #[arg(long, conflicts_with = "pack_only")]
    setup_only: bool,
    /// Only the packing comparison (one setup builds its tc_root)
    #[arg(long)]
    pack_only: bool,
    /// Also time our packing at these gzip levels (e.g. 7,9)
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=9))]
    extra_levels: Vec<u32>,
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
    clean_bench_dir(&dir)?;
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
    eprintln!("bench: setup (warm-up)");
    let first = setup::run(&plan, &|_| {})?;
    if f.pack_only {
        pack_bench(&mut table, &dir, &plan, f)?;
        note_load(&mut table);
        println!("{table}");
        return Ok(());
    }
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
    note_load(&mut table);
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

/// The load average at the end: on a shared machine our threads compete
/// with other work while the single-threaded `gzip` of the pipeline loses
/// less, so the ratios are only comparable at similar load.
fn note_load(table: &mut String) {
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let l: Vec<&str> = l.split_whitespace().take(3).collect();
        let _ = writeln!(table, "load average {} on {cpus} CPUs", l.join(" "));
    }
}

/// The synthetic tree is kept between runs (it takes a while to write and
/// never changes); everything else in the bench directory is rebuilt.
const SYNTHETIC: &str = "synthetic";

/// Empties `dir` except the synthetic tree.
fn clean_bench_dir(dir: &Utf8Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {dir}"))?;
    for ent in dir
        .read_dir_utf8()
        .with_context(|| format!("cannot list {dir}"))?
    {
        let ent = ent.with_context(|| format!("cannot list {dir}"))?;
        if ent.file_name() != SYNTHETIC {
            rootfs::contain::remove_tree(ent.path())?;
        }
    }
    Ok(())
}

/// The gzip level both sides use: the old script's (`gzip` = `-6`) and
/// `rebuild`'s default.
const PACK_LEVEL: u32 = 6;

/// `rebuild --skip-kernel`'s packing against `find | cpio | gzip`, on the
/// setup's tc_root and on a synthetic tree of `--synthetic-mb`.
fn pack_bench(table: &mut String, dir: &Utf8Path, plan: &Plan, f: &Flags) -> Result<()> {
    if testmirror::tools::find_on_path("gzip").is_none() {
        bail!("bench needs `gzip`: apt-get install gzip");
    }
    let tree_mb = du(&plan.tc_root())? as f64 / 1e6;
    pack_compare(
        table,
        &format!(
            "tc_root of the setup above ({tree_mb:.1} MB: core, openssh, strace, bench extensions)"
        ),
        &plan.build_dir,
        dir,
        f,
    )?;
    let synth = dir.join(SYNTHETIC);
    eprintln!("bench: synthetic tree ({} MB)", f.synthetic_mb);
    let made = synthetic_tree(&synth, f.synthetic_mb * 1_000_000)?;
    pack_compare(
        table,
        &format!(
            "synthetic tree ({:.1} MB, {} files: text, host executables and libraries, large blobs)",
            made.bytes as f64 / 1e6,
            made.files
        ),
        &synth,
        dir,
        f,
    )
}

/// Times `rebuild --skip-kernel --force` (this binary, as a user runs it)
/// against the shell pipeline on `<build>/tc_root`, then the no-op rebuild,
/// then our other `--extra-levels`.
fn pack_compare(
    table: &mut String,
    label: &str,
    build: &Utf8Path,
    dir: &Utf8Path,
    f: &Flags,
) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the xtask binary to run `rebuild`")?;
    let root = build.join("tc_root");
    let shell_out = dir.join("shell-initramfs.cpio.gz");
    let output = |c: &str| build.join(format!("initramfs-{}.cpio", c.replace(':', "")));
    eprintln!("bench: packing {root}");
    // Returns the wall time and rebuild's report line.
    let rebuild = |compression: &str, force: bool| -> Result<(Duration, String)> {
        let mut cmd = Command::new(&exe);
        cmd.args(["rebuild", "--skip-kernel", "--compression", compression])
            .arg("--build-dir")
            .arg(build)
            .arg("--output")
            .arg(output(compression));
        if force {
            cmd.arg("--force");
        }
        let t = Instant::now();
        let out = cmd
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("cannot run {exe:?} rebuild"))?;
        let elapsed = t.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The pack report is rebuild's last line.
        let report = stderr.trim().lines().last().unwrap_or("").to_string();
        ensure!(
            out.status.success(),
            "`rebuild --skip-kernel --build-dir {build}` failed ({}):\n{stderr}",
            out.status
        );
        Ok((elapsed, report))
    };
    let size = |p: &Utf8Path| -> Result<u64> {
        Ok(std::fs::metadata(p)
            .with_context(|| format!("cannot stat {p}"))?
            .len())
    };
    let script = format!(
        "set -e -o pipefail; cd \"$1\"; find . | cpio -H newc -o --quiet | gzip -{PACK_LEVEL} > \"$2\""
    );
    let shell = || -> Result<Duration> {
        let t = Instant::now();
        let st = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .arg("bench")
            .arg(&root)
            .arg(&shell_out)
            .status()
            .context("cannot run bash")?;
        ensure!(
            st.success(),
            "`find | cpio -o | gzip` on {root} failed ({st})"
        );
        Ok(t.elapsed())
    };
    let ours_c = format!("gzip:{PACK_LEVEL}");
    // One of each first: rebuild removes TC's own kernel modules (so both
    // sides then pack the same tree) and both read a warm page cache.
    rebuild(&ours_c, true)?;
    shell()?;
    // Alternating, so load from elsewhere falls on both sides alike.
    let (mut ours, mut theirs, mut report) = (vec![], vec![], String::new());
    for _ in 0..f.runs {
        let (t, r) = rebuild(&ours_c, true)?;
        ours.push(t);
        report = r;
        theirs.push(shell()?);
    }
    // Nothing changed since the last forced pack: the state file decides.
    let mut noop = vec![];
    for _ in 0..f.runs.max(3) {
        let (t, r) = rebuild(&ours_c, false)?;
        ensure!(
            r.contains("up to date"),
            "a rebuild with nothing changed did not say \"up to date\": {r}"
        );
        noop.push(t);
    }
    let (ours, theirs, noop) = (median(ours), median(theirs), median(noop));
    let ours_size = size(&output(&ours_c))?;
    let shell_size = size(&shell_out)?;
    // GNU gzip on our own uncompressed archive: separates what the
    // compressor costs from what the archive contents (names, mtimes,
    // inode numbers) do.
    rebuild("none", true)?;
    let plain = output("none");
    let gz_ours = Command::new("gzip")
        .arg(format!("-{PACK_LEVEL}"))
        .arg("-c")
        .arg(&plain)
        .output()
        .context("cannot run gzip")?;
    ensure!(
        gz_ours.status.success(),
        "gzip -{PACK_LEVEL} {plain} failed"
    );
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let pct = |a: u64, b: u64| (a as f64 / b as f64 - 1.0) * 100.0;
    let _ = writeln!(
        table,
        "pack, {label}:\n  \
         ours  {ours:>9.2?}  {:>7.2} MiB  (rebuild --skip-kernel --force, {ours_c}: {report})\n  \
         shell {theirs:>9.2?}  {:>7.2} MiB  (find . | cpio -H newc -o | gzip -{PACK_LEVEL})\n  \
         speed-up x{:.2}, size ours/shell {:.3} ({:+.1}%; gzip -{PACK_LEVEL} of our own archive {:.2} MiB, \
         ours {:+.1}% against it)\n  \
         no-op rebuild {noop:.1?} (whole process, state file hit)",
        mib(ours_size),
        mib(shell_size),
        theirs.as_secs_f64() / ours.as_secs_f64(),
        ours_size as f64 / shell_size as f64,
        pct(ours_size, shell_size),
        mib(gz_ours.stdout.len() as u64),
        pct(ours_size, gz_ours.stdout.len() as u64),
    );
    for level in &f.extra_levels {
        let c = format!("gzip:{level}");
        let mut times = vec![];
        for _ in 0..f.runs {
            times.push(rebuild(&c, true)?.0);
        }
        let t = median(times);
        let n = size(&output(&c))?;
        let _ = writeln!(
            table,
            "  ours {c}: {t:.2?}, {:.2} MiB: x{:.2} the shell's speed, {:+.1}% its size",
            mib(n),
            theirs.as_secs_f64() / t.as_secs_f64(),
            pct(n, shell_size),
        );
    }
    Ok(())
}

/// What [`synthetic_tree`] made.
struct Synthetic {
    files: usize,
    bytes: u64,
}

/// Bump when the generator changes, so old trees are not reused.
const SYNTHETIC_VERSION: u32 = 1;

/// A build directory `build` whose `tc_root` holds about `bytes` of
/// deterministic content of mixed compressibility, like a guest's: ~45%
/// small text-like files (docs, scripts, configs), ~35% copies of host
/// executables and libraries, ~20% a few large files (half incompressible,
/// like compressed firmware; half structured tables). Reused when a tree of
/// the same size and generator version is already there.
fn synthetic_tree(build: &Utf8Path, bytes: u64) -> Result<Synthetic> {
    let root = build.join("tc_root");
    let stamp = build.join("stamp");
    let want = format!("v{SYNTHETIC_VERSION} {bytes}\n");
    if root.is_dir() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        let mut v = vec![];
        collect_files(&root, &mut v)?;
        return Ok(Synthetic {
            files: v.len(),
            bytes: v.iter().map(|(_, l)| l).sum(),
        });
    }
    if build.exists() {
        rootfs::contain::remove_tree(build)?;
    }
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {root}"))?;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut made = Synthetic { files: 0, bytes: 0 };
    let put = |rel: &str, data: &[u8], mode: u32, made: &mut Synthetic| -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().context("no parent")?)
            .with_context(|| format!("cannot create the directory of {path}"))?;
        std::fs::write(&path, data).with_context(|| format!("cannot write {path}"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot chmod {path}"))?;
        made.files += 1;
        made.bytes += data.len() as u64;
        Ok(())
    };

    // Text: words from a fixed made-up vocabulary, in lines.
    let vocab: Vec<String> = (0..4000)
        .map(|_| {
            let len = 2 + rng.below(9) as usize;
            (0..len)
                .map(|_| (b'a' + rng.below(26) as u8) as char)
                .collect()
        })
        .collect();
    let text_budget = bytes * 45 / 100;
    let mut text_bytes = 0;
    let mut n = 0;
    while text_bytes < text_budget {
        // Mostly small files, some up to 64 KiB (log-uniform-ish).
        let size = 64usize << rng.below(11);
        let size = size / 2 + rng.below(size as u64 / 2 + 1) as usize;
        let mut body = String::with_capacity(size + 80);
        while body.len() < size {
            // Zipf-like: low indices much more often, as in real text.
            let r = rng.below(4000) as usize;
            let w = &vocab[r * r / 4000];
            body.push_str(w);
            body.push(if rng.below(12) == 0 { '\n' } else { ' ' });
        }
        let rel = format!("usr/share/doc/pkg{:03}/file{n:05}.txt", n / 40);
        put(&rel, body.as_bytes(), 0o644, &mut made)?;
        text_bytes += body.len() as u64;
        n += 1;
    }

    // Executables and libraries: real machine code, copied from the host.
    let mut host = vec![];
    for d in ["/usr/bin", "/usr/lib/x86_64-linux-gnu"] {
        collect_files(Utf8Path::new(d), &mut host)?;
    }
    host.retain(|(_, len)| (16 << 10..4 << 20).contains(len));
    host.sort();
    ensure!(
        !host.is_empty(),
        "no host executables to copy for the synthetic tree"
    );
    let bin_budget = bytes * 35 / 100;
    let mut bin_bytes = 0;
    for (i, (src, _)) in host.iter().cycle().enumerate() {
        if bin_bytes >= bin_budget {
            break;
        }
        let Ok(data) = std::fs::read(src) else {
            continue;
        };
        let rel = format!("usr/local/bin/{i:05}-{}", src.file_name().unwrap_or("x"));
        put(&rel, &data, 0o755, &mut made)?;
        bin_bytes += data.len() as u64;
    }

    // Large files: two of random bytes, two of structured records.
    let big = (bytes - text_bytes.min(bytes) - bin_bytes.min(bytes)) / 4;
    for i in 0..4 {
        let mut data = vec![0u8; big as usize];
        if i % 2 == 0 {
            rng.fill(&mut data);
        } else {
            let mut t: u64 = 0;
            for rec in data.chunks_mut(16) {
                t += 1 + rng.below(100);
                let mut r = [0u8; 16];
                r[..8].copy_from_slice(&t.to_le_bytes());
                r[8..12].copy_from_slice(&(rng.below(1000) as u32).to_le_bytes());
                r[12..16].copy_from_slice(&(i as u32).to_le_bytes());
                rec.copy_from_slice(&r[..rec.len()]);
            }
        }
        put(&format!("opt/data/blob{i}.bin"), &data, 0o644, &mut made)?;
    }
    Manifest::new().save(&build.join("tc_root.manifest"))?;
    std::fs::write(&stamp, want).with_context(|| format!("cannot write {stamp}"))?;
    Ok(made)
}

/// A small deterministic generator (xorshift64*): the same tree on every
/// machine, for the text and blob parts.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform-enough in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}
