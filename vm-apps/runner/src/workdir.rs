//! The app's private directory (mode 0700, in $TMPDIR or /tmp), removed
//! when the app ends.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub struct Workdir {
    path: PathBuf,
}

impl Workdir {
    pub fn create(app: &str) -> Result<Workdir> {
        let parent = std::env::temp_dir();
        let template = parent.join(format!("vm-app-{app}.XXXXXX"));
        let mut bytes = CString::new(template.as_os_str().as_bytes())
            .context("the temporary directory's path contains a NUL byte")?
            .into_bytes_with_nul();
        // SAFETY: `bytes` is a NUL-terminated buffer mkdtemp may rewrite.
        let p = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
        if p.is_null() {
            return Err(std::io::Error::last_os_error()).with_context(|| {
                format!(
                    "cannot create a private directory in {} (set TMPDIR elsewhere?)",
                    parent.display()
                )
            });
        }
        bytes.pop();
        Ok(Workdir {
            path: PathBuf::from(OsString::from_vec(bytes)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: cannot remove {}: {e}", self.path.display());
        }
    }
}
