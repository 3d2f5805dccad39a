//! Small filesystem helpers shared by every crate that writes outputs.

use std::io::Write;

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

/// An output file that appears under its final name only when complete:
/// written to a temporary file in the same directory, renamed by
/// [`AtomicFile::commit`]. Dropped without commit, it leaves nothing behind
/// and the previous file (if any) untouched.
pub struct AtomicFile {
    dest: Utf8PathBuf,
    tmp: tempfile::NamedTempFile,
}

impl AtomicFile {
    pub fn create(dest: &Utf8Path) -> Result<AtomicFile> {
        let dir = match dest.parent() {
            Some(p) if !p.as_str().is_empty() => p,
            _ => Utf8Path::new("."),
        };
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create directory {dir}"))?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", dest.file_name().unwrap_or("out")))
            .suffix(".tmp")
            .tempfile_in(dir)
            .with_context(|| format!("cannot create a temporary file in {dir} for {dest}"))?;
        Ok(AtomicFile {
            dest: dest.to_owned(),
            tmp,
        })
    }

    pub fn file(&mut self) -> &mut std::fs::File {
        self.tmp.as_file_mut()
    }

    /// Flushes, syncs and renames over the destination.
    pub fn commit(mut self) -> Result<()> {
        let dest = self.dest.clone();
        self.tmp
            .as_file_mut()
            .flush()
            .with_context(|| format!("cannot write {dest}"))?;
        self.tmp
            .as_file()
            .sync_all()
            .with_context(|| format!("cannot sync {dest}"))?;
        self.tmp
            .persist(&dest)
            .map_err(|e| e.error)
            .with_context(|| format!("cannot rename the new {dest} into place"))?;
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tmp.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tmp.flush()
    }
}

/// Writes `bytes` to `dest` atomically.
pub fn write_atomic(dest: &Utf8Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(dest)?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {dest}"))?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncommitted_file_leaves_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let dest = Utf8PathBuf::from_path_buf(dir.path().join("out")).unwrap();
        write_atomic(&dest, b"old").unwrap();
        {
            let mut f = AtomicFile::create(&dest).unwrap();
            f.write_all(b"half-writ").unwrap();
            // dropped: an interrupted write
        }
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file left behind"
        );
    }
}
