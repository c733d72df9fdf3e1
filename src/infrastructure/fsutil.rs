//! Durable file writes: fsync the data, then the directory that names it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Makes a rename or a new file in `dir` survive a crash.
///
/// # Errors
/// If the directory cannot be opened or synced.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `content` atomically: readers and a crash see either the
/// old file or the new one, never a mix. Writes a temporary file beside it,
/// syncs it, renames it over, and syncs the directory. Returns the new file
/// opened for appending (opened before the rename, so no failure can come
/// after the switch).
///
/// # Errors
/// Any I/O failure; the original file is then untouched.
pub fn replace_atomically(path: &Path, content: &[u8]) -> io::Result<File> {
    replace_atomically_with_mode(path, content, 0o666)
}

/// [`replace_atomically`] with the new file's permission bits (before the
/// umask): 0o600 for a secret, which then is never readable by others, not
/// even while it is being written.
///
/// # Errors
/// As [`replace_atomically`].
pub fn replace_atomically_with_mode(path: &Path, content: &[u8], mode: u32) -> io::Result<File> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    // A temporary left by a crash is stale: it was never renamed into place.
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(content)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)?;
        Ok(file)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
