//! QEMU puts a terminal on stdin into raw mode and normally restores it;
//! if QEMU is killed it cannot, so the app restores what it saw first.

pub struct Restore {
    saved: Option<libc::termios>,
}

impl Restore {
    pub fn save() -> Restore {
        // SAFETY: isatty/tcgetattr on fd 0 write only into `t`.
        unsafe {
            if libc::isatty(0) != 1 {
                return Restore { saved: None };
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return Restore { saved: None };
            }
            Restore { saved: Some(t) }
        }
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            // SAFETY: restores attributes read from the same fd.
            unsafe { libc::tcsetattr(0, libc::TCSADRAIN, t) };
        }
    }
}
