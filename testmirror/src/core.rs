//! The test core (`corepure64.gz` / `core.gz`): a Tiny Core-shaped root
//! that really boots, with the host's static busybox and glibc runtime.
//!
//! It is two gzip members, each a complete newc archive with its own
//! trailer: the base system, then the glibc runtime. Real cores have come
//! in several members/archives, and the kernel unpacks each in turn, so
//! consumers must not stop at the first `TRAILER!!!`.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use flate2::write::GzEncoder;
use flate2::Compression;

use crate::newc::{self, Entry, Kind};

/// Fixed mtime of every core entry (2025-01-01 UTC): reproducible, and not
/// zero, so consumers that drop mtimes are noticed.
pub const CORE_MTIME: u32 = 1_735_689_600;

/// TC's `staff` group, which owns most device nodes.
const STAFF: u32 = 50;

const INIT: &str = r#"#!/bin/sh
# /init of the testmirror core, shaped like Tiny Core's: look at the kernel
# command line, then hand over to busybox init (which runs rcS).
/bin/mount -t proc proc /proc
grep -qw multivt /proc/cmdline && sed -i s/^#tty/tty/ /etc/inittab
# The static nodes in /dev cover the console; fall back to devtmpfs when a
# kernel-provided /dev is needed anyway.
[ -c /dev/console ] || /bin/mount -t devtmpfs devtmpfs /dev
/bin/umount /proc
exec /sbin/init
"#;

const INITTAB: &str = "# /etc/inittab: init configuration for busybox init.
# Boot-time system configuration/initialization script.
#
::sysinit:/etc/init.d/rcS

# /sbin/getty respawn shell invocations for selected ttys.
tty1::respawn:/sbin/getty -nl /sbin/autologin 38400 tty1
#tty2::respawn:/sbin/getty 38400 tty2
#tty3::respawn:/sbin/getty 38400 tty3

# Stuff to do when restarting the init
# process, or before rebooting.
::restart:/etc/init.d/rc.shutdown
::restart:/sbin/init
::ctrlaltdel:/sbin/reboot
::shutdown:/etc/init.d/rc.shutdown
";

const AUTOLOGIN: &str = r#"#!/bin/sh
# Tiny Core's autologin: log in once as the configured user, then a plain getty.
if [ -f /var/log/autologin ] ; then
	exec /sbin/getty 38400 tty1
else
	touch /var/log/autologin
	if [ -f /etc/sysconfig/superuser ]; then
		exec login -f root
	else
		exec login -f "$(cat /etc/sysconfig/tcuser)"
	fi
fi
"#;

const RCS: &str = r#"#!/bin/sh
# RC Script for the testmirror core (shaped like Tiny Core's)

# Mount /proc.
[ -f /proc/cmdline ] || /bin/mount -t proc proc /proc

# Remount rootfs rw.
/bin/mount -o remount,rw /

# Mount system devices from /etc/fstab.
/bin/mount -a

clear
/etc/init.d/tc-config
"#;

const TC_CONFIG: &str = r#"#!/bin/sh
# tc-config: the testmirror's imitation of Tiny Core's boot configuration.
# Like the real one: functions first, then the kernel command line, then
# the system setup, and /opt/bootsync.sh last.
PATH="/usr/local/sbin:/usr/local/bin:/sbin:/bin:/usr/sbin:/usr/bin"
export PATH

say() { echo "tc-config: $*"; }

start_zswap() {
	# Real TC loads zram here; on a kernel without it the boot stalls
	# silently. Imitate the stall (bounded) so a missing NOZSWAP shows.
	say "waiting for /dev/zram0 (boot with nozswap to skip)"
	n=0
	while [ ! -b /dev/zram0 ] && [ $n -lt 60 ]; do sleep 1; n=$((n+1)); done
}

set_rtc() {
	hwclock -u -s 2>/dev/null || say "no RTC"
}

start_dhcp() {
	ifconfig eth0 >/dev/null 2>&1 || return 0
	udhcpc -b -i eth0 -x hostname:box -p /var/run/udhcpc.eth0.pid >/dev/null 2>&1 &
}
### END functions

# Main
for i in $(cat /proc/cmdline); do
	case $i in
		nozswap) NOZSWAP=1 ;;
		nortc) NORTC=1 ;;
		nodhcp) NODHCP=1 ;;
		host=*) HOST=${i#*=} ;;
	esac
done

say "booting the testmirror core"
[ -n "$NOZSWAP" ] || start_zswap
[ -n "$NORTC" ] || set_rtc
hostname "${HOST:-box}"
ifconfig lo 127.0.0.1 up
[ -n "$NODHCP" ] || start_dhcp
[ -d /home/tc ] && chown -R tc:staff /home/tc
echo tc > /etc/sysconfig/tcuser
/opt/bootsync.sh
say "boot finished"
"#;

const RC_SHUTDOWN: &str = r#"#!/bin/sh
# rc.shutdown: flush and unmount before init powers off.
sync
/bin/umount -a -r 2>/dev/null
"#;

const BOOTSYNC: &str = r#"#!/bin/sh
# put other system startup commands here, the boot process will wait until they complete.
# Use bootlocal.sh for system startup commands that can run in the background
# and therefore not slow down the boot process.
/opt/bootlocal.sh &
"#;

const BOOTLOCAL: &str = "#!/bin/sh\n# put other system startup commands here\n";

const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
# udhcpc event script (busybox's example, trimmed)
case "$1" in
	deconfig) ifconfig "$interface" 0.0.0.0 ;;
	bound|renew)
		ifconfig "$interface" "$ip" ${subnet:+netmask $subnet} ${broadcast:+broadcast $broadcast}
		if [ -n "$router" ]; then
			while route del default gw 0.0.0.0 dev "$interface" 2>/dev/null; do :; done
			for r in $router; do route add default gw "$r" dev "$interface"; done
		fi
		: > /etc/resolv.conf
		for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
		;;
esac
exit 0
"#;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh
lp:x:7:7:lp:/var/spool/lpd:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
tc:x:1001:50:Linux User,,,:/home/tc:/bin/sh
";
const GROUP: &str = "root:x:0:
lp:x:7:lp
nogroup:x:65534:
staff:x:50:tc
";
const SHADOW: &str = "root:*:13525:0:99999:7:::
lp:*:13510:0:99999:7:::
nobody:*:13509:0:99999:7:::
tc:*:13646:0:99999:7:::
";
const FSTAB: &str = "# /etc/fstab
sysfs           /sys         sysfs   defaults          0       0
devpts          /dev/pts     devpts  defaults          0       0
tmpfs           /dev/shm     tmpfs   defaults          0       0
";
const PROFILE: &str = r#"# /etc/profile
PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PS1='\u@\h:\w\$ '
export PATH PS1
"#;

/// Busybox applets linked from each directory (TC puts them in the same
/// places). All exist in Debian's busybox-static.
const APPLETS: &[(&str, &[&str])] = &[
    (
        "bin",
        &[
            "ash", "cat", "chgrp", "chmod", "chown", "cp", "cpio", "date", "dd", "df", "dmesg",
            "echo", "egrep", "false", "grep", "gunzip", "gzip", "hostname", "kill", "ln", "login",
            "ls", "md5sum", "mkdir", "mknod", "more", "mount", "mv", "pidof", "ps", "pwd", "rm",
            "rmdir", "sed", "sh", "sleep", "stat", "stty", "sync", "tar", "touch", "true",
            "umount", "uname", "vi", "zcat",
        ],
    ),
    (
        "sbin",
        &[
            "fdisk",
            "getty",
            "halt",
            "hwclock",
            "ifconfig",
            "init",
            "insmod",
            "ip",
            "losetup",
            "mdev",
            "mkswap",
            "modprobe",
            "poweroff",
            "reboot",
            "route",
            "swapoff",
            "swapon",
            "switch_root",
            "sysctl",
            "udhcpc",
        ],
    ),
    (
        "usr/bin",
        &[
            "[", "awk", "basename", "clear", "cut", "dirname", "du", "env", "find", "free", "head",
            "id", "killall", "less", "nc", "printf", "seq", "sort", "tail", "tee", "test", "tr",
            "uniq", "uptime", "wc", "wget", "which", "xargs", "yes",
        ],
    ),
    ("usr/sbin", &["chroot", "crond"]),
];

/// Device nodes: (name, char?, major, minor, mode, gid). Mostly root:staff
/// 0660 like TC; the ones everybody uses are root:root.
const DEVICES: &[(&str, bool, u32, u32, u32, u32)] = &[
    ("console", true, 5, 1, 0o600, 0),
    ("hvc0", true, 229, 0, 0o660, STAFF),
    ("kmsg", true, 1, 11, 0o644, 0),
    ("loop0", false, 7, 0, 0o660, STAFF),
    ("mem", true, 1, 1, 0o640, STAFF),
    ("null", true, 1, 3, 0o666, 0),
    ("ptmx", true, 5, 2, 0o666, 0),
    ("ram0", false, 1, 0, 0o660, STAFF),
    ("random", true, 1, 8, 0o666, 0),
    ("sda", false, 8, 0, 0o660, STAFF),
    ("sda1", false, 8, 1, 0o660, STAFF),
    ("tty", true, 5, 0, 0o666, 0),
    ("tty0", true, 4, 0, 0o660, STAFF),
    ("tty1", true, 4, 1, 0o660, STAFF),
    ("tty2", true, 4, 2, 0o660, STAFF),
    ("ttyS0", true, 4, 64, 0o660, STAFF),
    ("ttyS1", true, 4, 65, 0o660, STAFF),
    ("urandom", true, 1, 9, 0o666, 0),
    ("vda", false, 254, 0, 0o660, STAFF),
    ("vda1", false, 254, 1, 0o660, STAFF),
    ("zero", true, 1, 5, 0o666, 0),
];

/// Host glibc runtime: (path in the core, candidate host paths).
const GLIBC: &[(&str, &[&str])] = &[
    (
        "lib/ld-linux-x86-64.so.2",
        &[
            "/lib64/ld-linux-x86-64.so.2",
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        ],
    ),
    (
        "lib/libc.so.6",
        &[
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
        ],
    ),
    (
        "lib/libm.so.6",
        &[
            "/lib/x86_64-linux-gnu/libm.so.6",
            "/usr/lib/x86_64-linux-gnu/libm.so.6",
        ],
    ),
    (
        "lib/libresolv.so.2",
        &[
            "/lib/x86_64-linux-gnu/libresolv.so.2",
            "/usr/lib/x86_64-linux-gnu/libresolv.so.2",
        ],
    ),
    ("sbin/ldconfig", &["/sbin/ldconfig", "/usr/sbin/ldconfig"]),
];

/// Whether the core carries the shared library `name` (a file name such as
/// `libc.so.6`), so an extension need not bring it.
pub(crate) fn has_library(name: &str) -> bool {
    GLIBC
        .iter()
        .any(|(path, _)| path.starts_with("lib/") && path.rsplit('/').next() == Some(name))
}

fn read_host(candidates: &[&str], what: &str, package: &str) -> Result<(Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    for c in candidates {
        let p = Path::new(c);
        if let Ok(meta) = std::fs::metadata(p) {
            let data =
                std::fs::read(p).with_context(|| format!("reading {c} for the test core"))?;
            return Ok((data, meta.permissions().mode() & 0o7777));
        }
    }
    anyhow::bail!(
        "the test core needs the host's {what} ({}), which is missing: apt-get install {package}",
        candidates.join(" or ")
    )
}

fn file(path: &str, mode: u32, text: &str) -> Entry {
    Entry::new(path, mode, Kind::File(text.as_bytes().to_vec()))
}

/// The base archive's entries (everything but the glibc runtime), sorted.
fn base_entries() -> Result<Vec<Entry>> {
    let (busybox, _) = read_host(&["/bin/busybox"], "static busybox", "busybox-static")?;
    let mut e = vec![Entry::new(".", 0o755, Kind::Dir)];
    for d in [
        "bin",
        "dev",
        "dev/pts",
        "etc",
        "etc/init.d",
        "etc/sysconfig",
        "home",
        "lib",
        "lib/modules",
        "lib/modules/6.12.11-tinycore64",
        "lib/modules/6.12.11-tinycore64/kernel",
        "lib/modules/6.12.11-tinycore64/kernel/drivers",
        "mnt",
        "proc",
        "root",
        "run",
        "sbin",
        "sys",
        "usr",
        "usr/bin",
        "usr/local",
        "usr/local/bin",
        "usr/local/etc",
        "usr/local/lib",
        "usr/local/sbin",
        "usr/sbin",
        "usr/share",
        "usr/share/udhcpc",
        "etc/udhcpc",
        "var",
        "var/lib",
        "var/log",
        "var/run",
    ] {
        e.push(Entry::new(d, 0o755, Kind::Dir));
    }
    e.push(Entry::new("tmp", 0o1777, Kind::Dir));
    e.push(Entry::new("dev/shm", 0o1777, Kind::Dir));
    // TC lets staff write /opt (bootlocal.sh and friends).
    e.push(Entry::new("opt", 0o2775, Kind::Dir).owner(0, STAFF));

    e.push(Entry::new(
        "bin/busybox",
        0o755,
        Kind::File(busybox.clone()),
    ));
    // The setuid busybox and a hard link to it, like TC's sudo.
    e.push(Entry::new("bin/busybox.suid", 0o4755, Kind::File(busybox.clone())).hard_link_group(1));
    e.push(Entry::new("usr/bin/sudo", 0o4755, Kind::File(busybox)).hard_link_group(1));
    e.push(Entry::new(
        "bin/su",
        0o777,
        Kind::Symlink("busybox.suid".into()),
    ));
    for (dir, names) in APPLETS {
        let up = "../".repeat(dir.matches('/').count() + 1);
        for name in *names {
            let target = if *dir == "bin" {
                "busybox".to_string()
            } else {
                format!("{up}bin/busybox")
            };
            e.push(Entry::new(
                &format!("{dir}/{name}"),
                0o777,
                Kind::Symlink(target),
            ));
        }
    }
    for (name, chr, maj, min, mode, gid) in DEVICES {
        let kind = if *chr {
            Kind::Char(*maj, *min)
        } else {
            Kind::Block(*maj, *min)
        };
        e.push(Entry::new(&format!("dev/{name}"), *mode, kind).owner(0, *gid));
    }
    e.push(Entry::new("dev/initctl", 0o600, Kind::Fifo));

    e.push(file("init", 0o755, INIT));
    e.push(file("etc/inittab", 0o644, INITTAB));
    e.push(file("sbin/autologin", 0o755, AUTOLOGIN));
    e.push(file("etc/init.d/rcS", 0o775, RCS));
    e.push(file("etc/init.d/tc-config", 0o775, TC_CONFIG));
    e.push(file("etc/init.d/rc.shutdown", 0o775, RC_SHUTDOWN));
    e.push(file("opt/bootsync.sh", 0o775, BOOTSYNC).owner(0, STAFF));
    e.push(file("opt/bootlocal.sh", 0o775, BOOTLOCAL).owner(0, STAFF));
    e.push(file("etc/passwd", 0o644, PASSWD));
    e.push(file("etc/group", 0o644, GROUP));
    e.push(file("etc/shadow", 0o640, SHADOW));
    e.push(file("etc/fstab", 0o644, FSTAB));
    e.push(file("etc/profile", 0o644, PROFILE));
    e.push(file("etc/shells", 0o644, "/bin/sh\n/bin/ash\n"));
    e.push(file("etc/hostname", 0o644, "box\n"));
    e.push(file("etc/ld.so.conf", 0o644, "/usr/local/lib\n"));
    e.push(file("etc/sysconfig/tcuser", 0o644, "tc\n"));
    e.push(file(
        "usr/share/udhcpc/default.script",
        0o755,
        UDHCPC_SCRIPT,
    ));
    // The test core's busybox is Debian's, which looks for its DHCP event
    // script where Debian keeps it; TC's is in usr/share/udhcpc.
    e.push(Entry::new(
        "etc/udhcpc/default.script",
        0o777,
        Kind::Symlink("/usr/share/udhcpc/default.script".into()),
    ));
    // TC's own modules, which a rebuild with SKIP_KERNEL removes.
    let kmod = "lib/modules/6.12.11-tinycore64";
    e.push(file(
        &format!("{kmod}/modules.dep"),
        0o644,
        "kernel/drivers/tc-placeholder.ko.gz:\n",
    ));
    e.push(file(
        &format!("{kmod}/kernel/drivers/tc-placeholder.ko.gz"),
        0o644,
        "not a module\n",
    ));
    e.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(e)
}

fn glibc_entries() -> Result<Vec<Entry>> {
    let mut e = Vec::new();
    for (path, candidates) in GLIBC {
        let (data, mode) = read_host(candidates, path, "libc6 libc-bin")?;
        e.push(Entry::new(path, mode, Kind::File(data)));
    }
    e.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(e)
}

/// The whole core: two gzip members, each one newc archive.
pub fn build_core() -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut ino = 1;
    for entries in [base_entries()?, glibc_entries()?] {
        let mut archive = Vec::new();
        ino = newc::write_archive(&mut archive, &entries, CORE_MTIME, ino);
        // gzip header mtime stays 0 and no file name: reproducible.
        let mut gz = GzEncoder::new(Vec::new(), Compression::new(6));
        gz.write_all(&archive)
            .context("compressing the test core")?;
        out.extend(gz.finish().context("compressing the test core")?);
    }
    Ok(out)
}
