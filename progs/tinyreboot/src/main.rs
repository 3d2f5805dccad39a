//! `tinyreboot [--halt | --reboot]`: `sync()`, then power the machine off
//! (or halt it, or restart it) at once through reboot(2), without init or a
//! shell. For guests whose rcS runs one job and must then end the VM.
//!
//! Power off is the default because it makes QEMU and Cloud Hypervisor
//! exit; RB_HALT_SYSTEM leaves the VMM running with stopped CPUs.
//!
//! `no_std` keeps the static binary a few KiB: a std "hello" is ~300 KiB,
//! too much for something that goes into every guest image.

#![no_std]
#![no_main]

use core::ffi::{c_char, c_int, CStr};

// The libc crate links the C library only as a dependency of std; without
// std we ask for it ourselves (static on musl: the target's crt-static).
#[link(name = "c")]
extern "C" {}

const USAGE: &str = "\
usage: tinyreboot [--poweroff | --halt | --reboot | --help]
sync(), then end the machine at once through reboot(2):
  (default), --poweroff  power off (RB_POWER_OFF): QEMU and Cloud Hypervisor exit
  --halt                 stop the CPUs (RB_HALT_SYSTEM): the VMM keeps running
  --reboot               restart the machine (RB_AUTOBOOT)
Needs CAP_SYS_BOOT (root). Services are not stopped, file systems not unmounted.
";

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

/// The prebuilt `core` refers to the unwinder's personality routine even
/// with panic = "abort"; release builds drop the reference (LTO), dev
/// builds need a definition to link. It is never called: nothing unwinds.
#[cfg(debug_assertions)]
#[no_mangle]
extern "C" fn rust_eh_personality() {}

/// Writes all of `bytes`; errors are ignored: there is nobody left to tell.
fn write_all(fd: c_int, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length describe a live slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n > 0 {
            bytes = &bytes[n as usize..];
        } else if n < 0 && errno() == libc::EINTR {
            continue;
        } else {
            return;
        }
    }
}

fn errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

fn eprint(parts: &[&[u8]]) {
    for p in parts {
        write_all(libc::STDERR_FILENO, p);
    }
}

/// # Safety
/// Called by the C runtime with `argc` valid C strings in `argv`.
#[no_mangle]
pub unsafe extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    let argc = usize::try_from(argc).unwrap_or(0);
    let mut action: Option<(c_int, &[u8])> = None;
    for i in 1..argc {
        // SAFETY: the C runtime passes argc valid, NUL-terminated strings.
        let arg = unsafe { CStr::from_ptr(*argv.add(i)) }.to_bytes();
        let this: (c_int, &[u8]) = match arg {
            b"-h" | b"--help" => {
                write_all(libc::STDOUT_FILENO, USAGE.as_bytes());
                return 0;
            }
            b"--poweroff" => (libc::RB_POWER_OFF, b"RB_POWER_OFF"),
            b"--halt" => (libc::RB_HALT_SYSTEM, b"RB_HALT_SYSTEM"),
            b"--reboot" => (libc::RB_AUTOBOOT, b"RB_AUTOBOOT"),
            _ => {
                eprint(&[b"tinyreboot: unknown argument '", arg, b"'\n"]);
                eprint(&[USAGE.as_bytes()]);
                return 2;
            }
        };
        if action.is_some() {
            eprint(&[b"tinyreboot: at most one of --poweroff, --halt, --reboot\n"]);
            eprint(&[USAGE.as_bytes()]);
            return 2;
        }
        action = Some(this);
    }
    let (cmd, name) = action.unwrap_or((libc::RB_POWER_OFF, b"RB_POWER_OFF"));

    // SAFETY: sync and reboot take no pointers; reboot returns only on error.
    unsafe { libc::sync() };
    unsafe { libc::reboot(cmd) };

    let e = errno();
    // SAFETY: strerror returns a NUL-terminated string valid until the next
    // strerror call; we are single-threaded.
    let text = unsafe { CStr::from_ptr(libc::strerror(e)) }.to_bytes();
    eprint(&[b"tinyreboot: reboot(", name, b") failed: ", text, b"\n"]);
    if e == libc::EPERM {
        eprint(&[b"tinyreboot: this needs CAP_SYS_BOOT: run it as root inside the guest\n"]);
    }
    1
}
