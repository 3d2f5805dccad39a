//! A Tiny Core-shaped mirror, built on the fly (see SPEC.md section 3).
//!
//! ```text
//! <version>/<arch>/release/distribution_files/corepure64.gz (x86: core.gz) + .md5.txt
//! <version>/<arch>/tcz/NAME.tcz + .tcz.md5.txt .tcz.info .tcz.list [.tcz.dep]
//! ```
//!
//! Every build writes the same bytes: fixed mtimes, sorted entries,
//! reproducible mksquashfs flags. The expensive part (gcc, mksquashfs, the
//! core) is built once per process and cached; later builds, other
//! versions and other architectures only copy bytes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use md5::{Digest, Md5};

use crate::tools::find_on_path;

/// Which mirror tree to write: `version` is e.g. "16.x" or "7.x", `arch`
/// "x86_64" or "x86".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub version: String,
    pub arch: String,
}

impl Layout {
    pub fn new(version: &str, arch: &str) -> Layout {
        Layout {
            version: version.to_string(),
            arch: arch.to_string(),
        }
    }

    /// `16.x/x86_64`, the author's current choice.
    pub fn tc16_x86_64() -> Layout {
        Layout::new("16.x", "x86_64")
    }

    /// `7.x/x86_64`, the seed's choice.
    pub fn tc7_x86_64() -> Layout {
        Layout::new("7.x", "x86_64")
    }

    /// `corepure64.gz` on x86_64, `core.gz` on x86.
    pub fn core_name(&self) -> &'static str {
        if self.arch == "x86_64" {
            "corepure64.gz"
        } else {
            "core.gz"
        }
    }

    /// `<version>/<arch>/release/distribution_files` (relative, no slashes at the ends).
    pub fn release_dir(&self) -> String {
        format!("{}/{}/release/distribution_files", self.version, self.arch)
    }

    /// `<version>/<arch>/tcz` (relative, no slashes at the ends).
    pub fn tcz_dir(&self) -> String {
        format!("{}/{}/tcz", self.version, self.arch)
    }
}

/// What [`build`] wrote. `root` is the directory to serve.
#[derive(Debug, Clone)]
pub struct BuiltMirror {
    pub root: Utf8PathBuf,
    pub layout: Layout,
    /// Every extension name on the mirror (without `.tcz`), sorted.
    pub packages: Vec<String>,
}

impl BuiltMirror {
    /// The core on disk.
    pub fn core_path(&self) -> Utf8PathBuf {
        self.root
            .join(self.layout.release_dir())
            .join(self.layout.core_name())
    }

    /// `NAME.tcz` on disk.
    pub fn tcz_path(&self, name: &str) -> Utf8PathBuf {
        self.root
            .join(self.layout.tcz_dir())
            .join(format!("{name}.tcz"))
    }

    /// The URL path a correct client requests for a file in the tcz
    /// directory, e.g. `/16.x/x86_64/tcz/openssh.tcz.dep`.
    pub fn tcz_url_path(&self, file: &str) -> String {
        format!("/{}/{file}", self.layout.tcz_dir())
    }

    /// The URL path of the core, e.g. `/16.x/x86_64/release/distribution_files/corepure64.gz`.
    pub fn core_url_path(&self) -> String {
        format!("/{}/{}", self.layout.release_dir(), self.layout.core_name())
    }
}

/// The line `tcdemo` prints when the guest's linker cache finds libtcdemo.
pub const TCDEMO_OUTPUT: &str = "tcdemo: libtcdemo says hello";

/// The extensions a normal install uses (the rest are for containment tests).
pub const HOSTILE_PACKAGES: &[&str] = &["evil-dotdot", "evil-symlink", "evil-through"];

/// How an extension's squashfs is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builder {
    /// `mksquashfs -comp gzip -b 4k` (what TC uses).
    Mksquashfs,
    /// `mksquashfs -comp xz -b 4k`.
    MksquashfsXz,
    /// backhand's `FilesystemWriter`, gzip, 4 KiB blocks.
    Backhand,
    /// mksquashfs with uncompressed metadata, then directory names patched
    /// to `..` so entries escape the extraction root.
    DotDotPatched,
}

/// One extension's description, for tests that want to know what to expect.
#[derive(Debug, Clone)]
pub struct PackageInfo {
    pub name: String,
    /// The `.tcz.dep` bytes exactly as served (None: no .dep, a 404).
    pub dep_file: Option<Vec<u8>>,
    /// The dependencies after TC-style parsing (whitespace removed, `.tcz`
    /// suffix dropped, blank lines skipped), in file order.
    pub deps: Vec<String>,
    /// Non-directory paths in the archive (as in `.tcz.list`), sorted.
    pub files: Vec<String>,
    pub builder: Builder,
}

#[derive(Debug, Clone)]
enum Item {
    File(&'static str, u32, Vec<u8>),
    Symlink(&'static str, &'static str),
    /// A hard link to an earlier file of the same package (mksquashfs only).
    HardLink(&'static str, &'static str),
    /// An explicit (empty) directory.
    Dir(&'static str),
}

impl Item {
    fn path(&self) -> &'static str {
        match self {
            Item::File(p, ..) | Item::Symlink(p, _) | Item::HardLink(p, _) | Item::Dir(p) => p,
        }
    }
}

struct Spec {
    name: &'static str,
    dep: Option<&'static [u8]>,
    builder: Builder,
    items: Vec<Item>,
    description: &'static str,
}

fn script(body: &str) -> Vec<u8> {
    format!("#!/bin/sh\n{body}").into_bytes()
}

fn text(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

const OPENSSH_INIT: &str = r#"# Starts and stops the OpenSSH server (Tiny Core style).
start() {
	[ -f /usr/local/etc/ssh/sshd_config ] || { echo "missing /usr/local/etc/ssh/sshd_config"; exit 1; }
	[ -d /var/lib/sshd ] || mkdir -p /var/lib/sshd
	/usr/local/sbin/sshd
}
stop() {
	[ -f /var/run/sshd.pid ] && kill $(cat /var/run/sshd.pid)
}
case $1 in
	start) start ;;
	stop) stop ;;
	restart) stop; start ;;
	status) [ -f /var/run/sshd.pid ] && echo "sshd is running" || echo "sshd is not running" ;;
	*) echo "Usage $0 {start|stop|restart|status}"; exit 1 ;;
esac
"#;

/// The openssh extension's `usr/local/sbin/sshd` when the host has Debian's
/// dropbear: dropbear serving what setup-tinycore configured for OpenSSH
/// (tinycore::openssh): its host keys, converted to dropbear's format once
/// per boot, sshd_config's `Port`, `PasswordAuthentication` and
/// `PermitRootLogin`, and the pid file the init script stops. It returns
/// once the port is listening, so at bootlocal.sh's ready marker the server
/// is up (with DHCP, eth0's lease may still be on its way).
const DROPBEAR_SSHD: &str = r#"# sshd of the linux-guest test mirror: Debian's dropbear standing in for
# OpenSSH, started by /usr/local/etc/init.d/openssh.
ETC=/usr/local/etc/ssh
KEYS=/usr/local/etc/dropbear
PID=/var/run/sshd.pid
LOG=/var/log/sshd.log
conf() { awk -v k="$1" 'tolower($1) == tolower(k) { print $2; exit }' "$ETC/sshd_config" 2>/dev/null; }
port=$(conf Port)
port=${port:-22}
opts=
[ "$(conf PasswordAuthentication)" = no ] && opts="$opts -s"
case "$(conf PermitRootLogin)" in
	no) opts="$opts -w" ;;
	prohibit-password|without-password) opts="$opts -g" ;;
esac
mkdir -p "$KEYS" /var/log /var/run
keys=0
for t in ed25519 ecdsa rsa; do
	key=$ETC/ssh_host_${t}_key
	out=$KEYS/dropbear_${t}_host_key
	[ -f "$key" ] || continue
	if [ ! -s "$out" ]; then
		if ! /usr/local/bin/dropbearconvert openssh dropbear "$key" "$out.tmp" >>"$LOG" 2>&1; then
			echo "sshd: dropbearconvert cannot read $key (see $LOG)" >&2
			rm -f "$out.tmp"
			continue
		fi
		mv "$out.tmp" "$out"
	fi
	opts="$opts -r $out"
	keys=$((keys + 1))
done
if [ $keys = 0 ]; then
	echo "sshd: no usable host keys in $ETC (setup-tinycore installs them with openssh)" >&2
	exit 1
fi
# dropbear forks into the background once its keys are loaded; errors
# before that (libraries, keys, options) land in the log.
if ! /usr/local/sbin/dropbear -E -p "$port" -P "$PID" $opts </dev/null >>"$LOG" 2>&1; then
	echo "sshd: dropbear failed to start:" >&2
	tail -n 5 "$LOG" >&2
	exit 1
fi
hex=$(printf %04X "$port")
n=0
until grep -q ":$hex [0-9A-F]*:[0-9A-F]* 0A " /proc/net/tcp /proc/net/tcp6 2>/dev/null; do
	n=$((n + 1))
	if [ $n -gt 200 ]; then
		echo "sshd: dropbear is not listening on port $port after 20 s (see $LOG)" >&2
		exit 1
	fi
	sleep 0.1
done
"#;

/// Where Debian's dropbear-bin installs the server and the key converter.
const DROPBEAR: &str = "/usr/sbin/dropbear";
const DROPBEARCONVERT: &[&str] = &[
    "/usr/bin/dropbearconvert",
    "/usr/lib/dropbear/dropbearconvert",
];

/// A host file carried in an extension.
struct Bundled {
    path: String,
    mode: u32,
    data: Vec<u8>,
}

/// Read once per process: [`catalog`] and the build must agree.
type Bundle = std::result::Result<Option<Vec<Bundled>>, String>;
static DROPBEAR_BUNDLE: OnceLock<Bundle> = OnceLock::new();

fn dropbear_bundle() -> &'static Bundle {
    DROPBEAR_BUNDLE.get_or_init(|| bundle_dropbear().map_err(|e| format!("{e:#}")))
}

/// Whether the mirror's `openssh` extension carries a working sshd: the
/// host's Debian dropbear (`apt-get install dropbear-bin`), with the shared
/// libraries the test core lacks and a `usr/local/sbin/sshd` that runs it
/// on OpenSSH's configuration. Without dropbear on the host, `sshd` is a
/// placeholder that prints one line (enough for every test that does not
/// log in), so only the ssh tests need dropbear-bin.
pub fn openssh_has_real_sshd() -> bool {
    matches!(dropbear_bundle(), Ok(Some(_)))
}

/// dropbear, dropbearconvert and the libraries they need (per the host's
/// `ldd`) that the test core does not carry; the core's glibc is the
/// host's, so the versions match. None when dropbear is not installed.
fn bundle_dropbear() -> Result<Option<Vec<Bundled>>> {
    let Some(convert) = DROPBEARCONVERT.iter().find(|p| Path::new(p).is_file()) else {
        return Ok(None);
    };
    if !Path::new(DROPBEAR).is_file() {
        return Ok(None);
    }
    let ldd = tool("ldd", "libc-bin")?;
    let read = |p: &str| {
        std::fs::read(p).with_context(|| format!("reading {p} for the test mirror's openssh"))
    };
    let mut files = vec![
        Bundled {
            path: "usr/local/sbin/dropbear".into(),
            mode: 0o755,
            data: read(DROPBEAR)?,
        },
        Bundled {
            path: "usr/local/bin/dropbearconvert".into(),
            mode: 0o755,
            data: read(convert)?,
        },
    ];
    let mut libs = BTreeMap::new();
    for bin in [DROPBEAR, convert] {
        let out = Command::new(&ldd)
            .arg(bin)
            .output()
            .with_context(|| format!("running ldd {bin}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "`ldd {bin}` failed ({}): {stdout}{}; reinstall dropbear-bin",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for line in stdout.lines() {
            // "\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)"; the
            // vDSO and the loader have no `=>`.
            let Some((name, rest)) = line.trim().split_once(" => ") else {
                continue;
            };
            let host = rest.split(" (").next().unwrap_or_default().trim();
            if !host.starts_with('/') {
                bail!("{bin} needs {name}, which the host's loader does not find (`ldd {bin}`: {}); reinstall dropbear-bin", line.trim());
            }
            if !crate::core::has_library(name) {
                libs.insert(name.to_string(), host.to_string());
            }
        }
    }
    for (name, host) in libs {
        files.push(Bundled {
            path: format!("usr/local/lib/{name}"),
            mode: 0o644,
            data: read(&host)?,
        });
    }
    Ok(Some(files))
}

fn specs(libtcdemo: &[u8], tcdemo: &[u8]) -> Vec<Spec> {
    use Builder::*;
    use Item::*;
    // The openssh extension's server: dropbear when the host has it.
    let (sshd, openssh_description, dropbear) = match dropbear_bundle() {
        Ok(Some(files)) => (
            script(DROPBEAR_SSHD),
            "OpenSSH stand-in: Debian's dropbear as sshd, with its libraries (test mirror)",
            files
                .iter()
                .map(|b| File(b.path.as_str(), b.mode, b.data.clone()))
                .collect(),
        ),
        _ => (
            script("echo 'testmirror placeholder sshd (install dropbear-bin for a real one)'\n"),
            "OpenSSH placeholder (test mirror; with dropbear-bin on the host, a working sshd)",
            Vec::new(),
        ),
    };
    vec![
        Spec {
            name: "openssh",
            // CRLF, a tab and stray spaces, no suffix on the second line.
            dep: Some(b"openssl.tcz\r\n\t libtcdemo  \r\n"),
            builder: Mksquashfs,
            description: openssh_description,
            items: [
                File("usr/local/sbin/sshd", 0o755, sshd),
                File("usr/local/bin/ssh", 0o755, script("echo 'testmirror placeholder ssh'\n")),
                File("usr/local/bin/ssh-keygen", 0o755, script("echo 'testmirror placeholder ssh-keygen'\n")),
                File(
                    "usr/local/etc/ssh/sshd_config.orig",
                    0o644,
                    text("#Port 22\n#PermitRootLogin prohibit-password\nSubsystem sftp /usr/local/lib/openssh/sftp-server\n"),
                ),
                File("usr/local/etc/init.d/openssh", 0o755, script(OPENSSH_INIT)),
                File(
                    "usr/local/tce.installed/openssh",
                    0o755,
                    script("[ -f /usr/local/etc/ssh/sshd_config ] || cp /usr/local/etc/ssh/sshd_config.orig /usr/local/etc/ssh/sshd_config\n"),
                ),
            ]
            .into_iter()
            .chain(dropbear)
            .collect(),
        },
        Spec {
            name: "openssl",
            // A blank first line, a kernel dep, and no final newline.
            dep: Some(b"\nca-certificates.tcz\n\nfuse-KERNEL.tcz"),
            builder: Mksquashfs,
            description: "OpenSSL placeholder (test mirror)",
            items: vec![
                File("usr/local/lib/libssl-demo.so.3", 0o755, text("not really a library\n")),
                Symlink("usr/local/lib/libssl-demo.so", "libssl-demo.so.3"),
                File("usr/local/bin/openssl", 0o755, script("echo 'OpenSSL 3.0.0 (testmirror)'\n")),
                // A hard link inside a squashfs: unpackers see it twice.
                HardLink("usr/local/bin/openssl3", "usr/local/bin/openssl"),
                File("usr/local/etc/ssl/openssl.cnf", 0o644, text("# openssl.cnf (testmirror)\n")),
            ],
        },
        Spec {
            name: "ca-certificates",
            dep: None,
            builder: Backhand,
            description: "CA certificates placeholder (test mirror)",
            items: vec![
                File(
                    "usr/local/etc/ssl/certs/ca-certificates.crt",
                    0o644,
                    text("-----BEGIN CERTIFICATE-----\nTUlSUk9SIFRFU1QgQ0EK\n-----END CERTIFICATE-----\n"),
                ),
                Symlink("usr/local/etc/ssl/cert.pem", "certs/ca-certificates.crt"),
                Dir("usr/local/share/ca-certificates"),
            ],
        },
        Spec {
            name: "strace",
            dep: None,
            builder: MksquashfsXz,
            description: "strace placeholder, xz-compressed (test mirror)",
            items: vec![File("usr/local/bin/strace", 0o755, script("echo 'strace -- version 6.0 (testmirror)'\n"))],
        },
        Spec {
            name: "libtcdemo",
            dep: None,
            builder: Mksquashfs,
            description: "a real shared library for linker-cache tests",
            items: vec![
                File("usr/local/lib/libtcdemo.so.1", 0o755, libtcdemo.to_vec()),
                Symlink("usr/local/lib/libtcdemo.so", "libtcdemo.so.1"),
            ],
        },
        Spec {
            name: "tcdemo",
            dep: Some(b"libtcdemo.tcz\n"),
            builder: Mksquashfs,
            description: "a real program linked against libtcdemo (no rpath)",
            items: vec![File("usr/local/bin/tcdemo", 0o755, tcdemo.to_vec())],
        },
        Spec {
            name: "cyc-a",
            dep: Some(b"cyc-b\n"),
            builder: Mksquashfs,
            description: "one half of a dependency cycle",
            items: vec![File("usr/local/share/cyc/a.txt", 0o644, text("cyc-a\n"))],
        },
        Spec {
            name: "cyc-b",
            dep: Some(b"cyc-a.tcz\n"),
            builder: Mksquashfs,
            description: "the other half of a dependency cycle",
            items: vec![File("usr/local/share/cyc/b.txt", 0o644, text("cyc-b\n"))],
        },
        Spec {
            name: "cycle-demo",
            dep: Some(b"  cyc-a\n"),
            builder: Mksquashfs,
            description: "depends on a cycle",
            items: vec![File("usr/local/share/cycle-demo.txt", 0o644, text("cycle-demo\n"))],
        },
        Spec {
            name: "chain-top",
            dep: Some(b"chain-mid.tcz\n"),
            builder: Mksquashfs,
            description: "top of a three-deep chain",
            items: vec![File("usr/local/bin/chain-top", 0o755, script("cat /usr/local/share/overlap.txt\n"))],
        },
        Spec {
            name: "chain-mid",
            dep: Some(b"chain-bottom.tcz\t\n"),
            builder: Backhand,
            description: "middle of the chain; overwrites chain-bottom's overlap.txt",
            items: vec![
                File("usr/local/share/overlap.txt", 0o644, text("from chain-mid\n")),
                File("usr/local/share/chain-mid.txt", 0o644, text("chain-mid\n")),
            ],
        },
        Spec {
            name: "chain-bottom",
            // Whitespace only: a .dep that exists but names nothing.
            dep: Some(b" \n\t\n"),
            builder: Mksquashfs,
            description: "bottom of the chain",
            items: vec![File("usr/local/share/overlap.txt", 0o644, text("from chain-bottom\n"))],
        },
        Spec {
            name: "evil-symlink",
            dep: None,
            builder: Mksquashfs,
            description: "HOSTILE: an absolute symlink out of the root",
            items: vec![Symlink("usr/local/evil", "/etc")],
        },
        Spec {
            name: "evil-through",
            dep: Some(b"evil-symlink.tcz\n"),
            builder: Mksquashfs,
            description: "HOSTILE: writes through evil-symlink's link",
            items: vec![File("usr/local/evil/pwned", 0o644, text("pwned through a symlink\n"))],
        },
        Spec {
            name: "evil-dotdot",
            dep: None,
            builder: DotDotPatched,
            description: "HOSTILE: directory entries named `..`",
            items: vec![
                File("usr/local/share/evil-dotdot/README", 0o644, text("looks harmless\n")),
                // Z1 and Z2 are patched to `..`: the file lands at ../../pwned-dotdot.
                File("Z1/Z2/pwned-dotdot", 0o644, text("pwned through ..\n")),
            ],
        },
    ]
}

/// TC's parsing of a .dep file: drop all whitespace per line, skip blank
/// lines, strip a `.tcz` suffix.
fn parse_dep(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| l.chars().filter(|c| !c.is_whitespace()).collect::<String>())
        .filter(|l| !l.is_empty())
        .map(|l| l.strip_suffix(".tcz").unwrap_or(&l).to_string())
        .collect()
}

fn list_of(spec: &Spec) -> Vec<String> {
    let mut files: Vec<String> = spec
        .items
        .iter()
        .filter(|i| !matches!(i, Item::Dir(_)))
        .map(|i| {
            if spec.builder == Builder::DotDotPatched {
                i.path().replace("Z1/Z2", "../..")
            } else {
                i.path().to_string()
            }
        })
        .collect();
    files.sort();
    files
}

/// What each extension on the mirror is (names, deps, files, builder).
/// Cheap: does not build anything.
pub fn catalog() -> Vec<PackageInfo> {
    let mut v: Vec<PackageInfo> = specs(&[], &[])
        .iter()
        .map(|s| PackageInfo {
            name: s.name.to_string(),
            dep_file: s.dep.map(<[u8]>::to_vec),
            deps: s.dep.map(parse_dep).unwrap_or_default(),
            files: list_of(s),
            builder: s.builder,
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// One extension's files as served.
struct BuiltTcz {
    name: String,
    tcz: Vec<u8>,
    dep: Option<Vec<u8>>,
    info: String,
    list: String,
}

struct Artifacts {
    core: Vec<u8>,
    tczs: Vec<BuiltTcz>,
}

/// Built once per process: every layout serves the same bytes.
static CACHE: Mutex<Option<Arc<Artifacts>>> = Mutex::new(None);

fn artifacts() -> Result<Arc<Artifacts>> {
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(a) = cache.as_ref() {
        return Ok(Arc::clone(a));
    }
    let a = Arc::new(build_artifacts()?);
    *cache = Some(Arc::clone(&a));
    Ok(a)
}

/// Writes the mirror under `dir` (creating `dir/<version>/<arch>/...`).
/// Existing files are overwritten; the result is byte-identical each time.
pub fn build(dir: &Utf8Path, layout: &Layout) -> Result<BuiltMirror> {
    write_mirror(dir, layout, &*artifacts()?)
}

/// Like [`build`], but rebuilds everything (gcc, mksquashfs, the core)
/// instead of using this process's cache: for determinism tests.
pub fn build_fresh(dir: &Utf8Path, layout: &Layout) -> Result<BuiltMirror> {
    write_mirror(dir, layout, &build_artifacts()?)
}

fn write_mirror(dir: &Utf8Path, layout: &Layout, art: &Artifacts) -> Result<BuiltMirror> {
    let release = dir.join(layout.release_dir());
    let tcz = dir.join(layout.tcz_dir());
    for d in [&release, &tcz] {
        std::fs::create_dir_all(d).with_context(|| format!("creating mirror directory {d}"))?;
    }
    write_with_md5(&release, layout.core_name(), &art.core)?;
    for t in &art.tczs {
        let file = format!("{}.tcz", t.name);
        write_with_md5(&tcz, &file, &t.tcz)?;
        write(&tcz.join(format!("{file}.info")), t.info.as_bytes())?;
        write(&tcz.join(format!("{file}.list")), t.list.as_bytes())?;
        if let Some(dep) = &t.dep {
            write(&tcz.join(format!("{file}.dep")), dep)?;
        }
    }
    let mut packages: Vec<String> = art.tczs.iter().map(|t| t.name.clone()).collect();
    packages.sort();
    Ok(BuiltMirror {
        root: dir.to_path_buf(),
        layout: layout.clone(),
        packages,
    })
}

fn write(path: &Utf8Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).with_context(|| format!("writing mirror file {path}"))
}

/// Writes `name` and `name.md5.txt` (md5sum format: `<hex>  <name>`).
fn write_with_md5(dir: &Utf8Path, name: &str, data: &[u8]) -> Result<()> {
    write(&dir.join(name), data)?;
    write(
        &dir.join(format!("{name}.md5.txt")),
        md5_line(name, data).as_bytes(),
    )
}

/// `md5sum` output for `data` named `name`.
pub fn md5_line(name: &str, data: &[u8]) -> String {
    let digest = Md5::digest(data);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}  {name}\n")
}

fn build_artifacts() -> Result<Artifacts> {
    let tmp = tempfile::Builder::new()
        .prefix("testmirror-build-")
        .tempdir()
        .context("creating a temporary directory for the test mirror build")?;
    let tmp = Utf8Path::from_path(tmp.path())
        .context("the temporary directory path is not UTF-8; set TMPDIR to a UTF-8 path")?
        .to_path_buf();
    let (libtcdemo, tcdemo) = build_tcdemo(&tmp.join("cc"))?;
    if let Err(e) = dropbear_bundle() {
        bail!("packaging the host's dropbear as the test mirror's openssh: {e}");
    }
    let mut tczs = Vec::new();
    for spec in specs(&libtcdemo, &tcdemo) {
        let tcz = build_tcz(&spec, &tmp)
            .with_context(|| format!("building test extension {}.tcz", spec.name))?;
        let list = list_of(&spec).iter().map(|f| format!("{f}\n")).collect();
        let info = format!(
            "Title:          {name}.tcz\nDescription:    {desc}\nVersion:        1.0\n\
             Author:         testmirror\nOriginal-site:  none\nCopying-policy: MIT\n\
             Size:           {size}\nExtension_by:   testmirror\nTags:           test\n\
             Comments:       built by the linux-guest test mirror\n\
             Change-log:     2025/01/01 first version\nCurrent:        2025/01/01 first version\n",
            name = spec.name,
            desc = spec.description,
            size = human_size(tcz.len()),
        );
        tczs.push(BuiltTcz {
            name: spec.name.to_string(),
            tcz,
            dep: spec.dep.map(<[u8]>::to_vec),
            info,
            list,
        });
    }
    let core = crate::core::build_core()?;
    // Best effort: the directory holds only intermediate files.
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(Artifacts { core, tczs })
}

fn human_size(n: usize) -> String {
    if n < 1024 * 1024 {
        format!("{:.1}K", n as f64 / 1024.0)
    } else {
        format!("{:.1}M", n as f64 / 1024.0 / 1024.0)
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running {what}: {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {cmd:?}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn tool(name: &str, package: &str) -> Result<std::path::PathBuf> {
    find_on_path(name).with_context(|| {
        format!("building the test mirror needs `{name}`: apt-get install {package}")
    })
}

const LIBTCDEMO_C: &str = "const char *tcdemo_hello(void) { return \"libtcdemo says hello\"; }\n";
const TCDEMO_C: &str = "#include <stdio.h>\nconst char *tcdemo_hello(void);\n\
int main(void) { printf(\"tcdemo: %s\\n\", tcdemo_hello()); return 0; }\n";

/// Compiles libtcdemo.so.1 and tcdemo with the host gcc. Relative source
/// names and `-s` keep temporary paths out of the binaries (reproducible).
fn build_tcdemo(dir: &Utf8Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let gcc = tool("gcc", "gcc")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
    write(&dir.join("libtcdemo.c"), LIBTCDEMO_C.as_bytes())?;
    write(&dir.join("tcdemo.c"), TCDEMO_C.as_bytes())?;
    run(
        Command::new(&gcc).current_dir(dir).args([
            "-O2",
            "-s",
            "-fPIC",
            "-shared",
            "-Wl,-soname,libtcdemo.so.1",
            "-o",
            "libtcdemo.so.1",
            "libtcdemo.c",
        ]),
        "gcc (libtcdemo.so.1)",
    )?;
    std::os::unix::fs::symlink("libtcdemo.so.1", dir.join("libtcdemo.so"))
        .with_context(|| format!("linking {dir}/libtcdemo.so"))?;
    run(
        Command::new(&gcc)
            .current_dir(dir)
            .args(["-O2", "-s", "-o", "tcdemo", "tcdemo.c", "-L.", "-ltcdemo"]),
        "gcc (tcdemo)",
    )?;
    let read = |n: &str| std::fs::read(dir.join(n)).with_context(|| format!("reading {dir}/{n}"));
    Ok((read("libtcdemo.so.1")?, read("tcdemo")?))
}

/// Lays a spec's items out under `root` with exact modes (umask-proof).
fn stage(spec: &Spec, root: &Utf8Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let set_mode = |p: &Utf8Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting mode {mode:o} on {p}"))
    };
    std::fs::create_dir_all(root).with_context(|| format!("creating {root}"))?;
    for item in &spec.items {
        let path = root.join(item.path());
        let parent = path.parent().context("item path has no parent")?;
        std::fs::create_dir_all(parent).with_context(|| format!("creating {parent}"))?;
        match item {
            Item::File(_, mode, data) => {
                write(&path, data)?;
                set_mode(&path, *mode)?;
            }
            Item::Symlink(_, target) => std::os::unix::fs::symlink(target, &path)
                .with_context(|| format!("creating symlink {path}"))?,
            Item::HardLink(_, existing) => std::fs::hard_link(root.join(existing), &path)
                .with_context(|| format!("creating hard link {path}"))?,
            Item::Dir(_) => {
                std::fs::create_dir_all(&path).with_context(|| format!("creating {path}"))?
            }
        }
    }
    // Directories get 0755 whatever the umask made of them.
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        set_mode(&d, 0o755)?;
        for e in d.read_dir_utf8().with_context(|| format!("listing {d}"))? {
            let e = e.with_context(|| format!("listing {d}"))?;
            if e.file_type()
                .with_context(|| format!("inspecting {}", e.path()))?
                .is_dir()
            {
                dirs.push(e.path().to_path_buf());
            }
        }
    }
    Ok(())
}

fn build_tcz(spec: &Spec, tmp: &Utf8Path) -> Result<Vec<u8>> {
    let out = tmp.join(format!("{}.tcz", spec.name));
    match spec.builder {
        Builder::Mksquashfs => mksquashfs(spec, tmp, &out, "gzip", false)?,
        Builder::MksquashfsXz => mksquashfs(spec, tmp, &out, "xz", false)?,
        Builder::DotDotPatched => {
            mksquashfs(spec, tmp, &out, "gzip", true)?;
            let mut data = std::fs::read(&out).with_context(|| format!("reading {out}"))?;
            patch_dir_names(&mut data, &[b"Z1", b"Z2"], b"..")
                .with_context(|| format!("patching directory names in {out}"))?;
            return Ok(data);
        }
        Builder::Backhand => return backhand_tcz(spec),
    }
    std::fs::read(&out).with_context(|| format!("reading {out}"))
}

fn mksquashfs(
    spec: &Spec,
    tmp: &Utf8Path,
    out: &Utf8Path,
    comp: &str,
    raw_meta: bool,
) -> Result<()> {
    let src = tmp.join(format!("{}.src", spec.name));
    stage(spec, &src)?;
    let mut cmd = Command::new(tool("mksquashfs", "squashfs-tools")?);
    cmd.arg(&src).arg(out);
    cmd.args([
        "-comp",
        comp,
        "-b",
        "4k",
        "-no-xattrs",
        "-noappend",
        "-all-root",
    ]);
    // Fixed times and one processor: same bytes every build, and no
    // fighting the other builds on a small machine.
    cmd.args([
        "-mkfs-time",
        "0",
        "-all-time",
        "0",
        "-reproducible",
        "-processors",
        "1",
        "-quiet",
    ]);
    cmd.args(["-no-progress"]);
    if raw_meta {
        // Uncompressed metadata, so directory entries can be patched.
        cmd.args(["-noI", "-noD", "-noF", "-noX"]);
    }
    run(&mut cmd, "mksquashfs")
}

/// Replaces each unique `from` name inside the squashfs directory table
/// with `to` (same length, so no offsets change).
fn patch_dir_names(data: &mut [u8], froms: &[&[u8]], to: &[u8]) -> Result<()> {
    let u64_at = |off: usize| u64::from_le_bytes(data[off..off + 8].try_into().expect("8 bytes"));
    anyhow::ensure!(
        data.len() > 96 && &data[0..4] == b"hsqs",
        "not a squashfs 4.0 image"
    );
    let dir_start = u64_at(72) as usize;
    // The directory table ends where the next table starts.
    let dir_end = [80, 88, 48, 56]
        .iter()
        .map(|&o| u64_at(o))
        .filter(|&v| v != u64::MAX && v as usize > dir_start)
        .min()
        .context("no table after the directory table")? as usize;
    for from in froms {
        anyhow::ensure!(
            from.len() == to.len(),
            "patched names must keep their length"
        );
        let region = &data[dir_start..dir_end];
        let hits: Vec<usize> = region
            .windows(from.len())
            .enumerate()
            .filter(|(_, w)| w == from)
            .map(|(i, _)| i)
            .collect();
        anyhow::ensure!(
            hits.len() == 1,
            "expected {:?} once in the directory table, found {} times",
            String::from_utf8_lossy(from),
            hits.len()
        );
        data[dir_start + hits[0]..dir_start + hits[0] + to.len()].copy_from_slice(to);
    }
    Ok(())
}

fn backhand_tcz(spec: &Spec) -> Result<Vec<u8>> {
    use backhand::compression::Compressor;
    use backhand::{FilesystemCompressor, FilesystemWriter, NodeHeader};
    let mut fs = FilesystemWriter::default();
    fs.set_time(0);
    fs.set_block_size(4096);
    fs.set_root_mode(0o755);
    fs.set_compressor(
        FilesystemCompressor::new(Compressor::Gzip, None).context("choosing gzip for backhand")?,
    );
    let dir = NodeHeader::new(0o755, 0, 0, 0);
    // Parents first, each once, in sorted order.
    let mut dirs = std::collections::BTreeSet::new();
    for item in &spec.items {
        let p = Path::new(item.path());
        for a in p.ancestors().skip(1) {
            if !a.as_os_str().is_empty() {
                dirs.insert(a.to_path_buf());
            }
        }
        if let Item::Dir(d) = item {
            dirs.insert(Path::new(d).to_path_buf());
        }
    }
    for d in &dirs {
        fs.push_dir(d, dir)
            .with_context(|| format!("adding directory {}", d.display()))?;
    }
    let mut items: Vec<&Item> = spec.items.iter().collect();
    items.sort_by_key(|i| i.path());
    for item in items {
        match item {
            Item::File(p, mode, data) => fs
                .push_file(
                    std::io::Cursor::new(data.clone()),
                    p,
                    NodeHeader::new(*mode as u16, 0, 0, 0),
                )
                .with_context(|| format!("adding {p}"))?,
            Item::Symlink(p, target) => fs
                .push_symlink(*target, p, NodeHeader::new(0o777, 0, 0, 0))
                .with_context(|| format!("adding symlink {p}"))?,
            Item::Dir(_) => {}
            Item::HardLink(p, _) => bail!("backhand cannot write hard links ({p}); use mksquashfs"),
        }
    }
    let mut out = std::io::Cursor::new(Vec::new());
    fs.write(&mut out)
        .context("writing the squashfs with backhand")?;
    Ok(out.into_inner())
}
