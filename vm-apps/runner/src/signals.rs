//! SIGINT, SIGTERM and SIGHUP are recorded instead of killing the app, so
//! it can stop its VMM and remove its private directory before exiting.

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

static LAST: AtomicI32 = AtomicI32::new(0);
static COUNT: AtomicU32 = AtomicU32::new(0);

extern "C" fn record(sig: libc::c_int) {
    // Only atomics: async-signal-safe.
    LAST.store(sig, Ordering::SeqCst);
    COUNT.fetch_add(1, Ordering::SeqCst);
}

/// Installs the handlers (idempotent). Children get the default actions
/// back on exec, as POSIX says for caught signals.
pub fn install() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is valid; the handler only touches
        // atomics; sigaction(2) has no other memory effects.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = record as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// The last signal received, if any.
pub fn pending() -> Option<i32> {
    match LAST.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// How many signals arrived so far (to notice new ones).
pub fn count() -> u32 {
    COUNT.load(Ordering::SeqCst)
}
