//! The two files behind session tokens: the signing secret and the revocations.
//!
//! `session.key` holds 32 random bytes, created at the first start with mode
//! 0600 and never rewritten; a daemon restart keeps it, so tokens survive. A key
//! readable by anyone but its owner refuses the start: whoever reads it can
//! mint a session for any user.
//!
//! `revocations.txt` is an append-only journal, one `user_id generation` line
//! per revocation (LOGOUT), fsync'd before the LOGOUT is answered. The last
//! line of a user wins. It is compacted at start when it holds many stale lines.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use log::{info, warn};

use super::fsutil::{replace_atomically, replace_atomically_with_mode};
use crate::application::SessionStore;
use crate::domain::UserId;

pub const SECRET_LEN: usize = 32;
const REVOCATIONS_HEADER: &str = "# Switchboard session revocations: user_id generation\n";

/// Why a session file could not be used. The daemon refuses to start on these.
#[derive(Debug)]
pub enum SessionFileError {
    Io { path: PathBuf, err: io::Error },
    Invalid { path: PathBuf, reason: String },
}

impl fmt::Display for SessionFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionFileError::Io { path, err } => write!(f, "{}: {err}", path.display()),
            SessionFileError::Invalid { path, reason } => {
                write!(f, "{}: {reason}", path.display())
            }
        }
    }
}

impl std::error::Error for SessionFileError {}

/// Reads the signing secret at `path`, creating it (0600, synced) if missing.
///
/// # Errors
/// Unreadable, the wrong length, readable by group or others, or not creatable.
pub fn load_or_create_secret(path: &Path) -> Result<[u8; SECRET_LEN], SessionFileError> {
    let io_err = |err| SessionFileError::Io {
        path: path.to_path_buf(),
        err,
    };
    let invalid = |reason: String| SessionFileError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    match File::open(path) {
        Ok(file) => {
            let mode = file.metadata().map_err(io_err)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(invalid(format!(
                    "the session secret is readable by others (mode {:o}); run chmod 600 on it",
                    mode & 0o777
                )));
            }
            let mut bytes = Vec::with_capacity(SECRET_LEN);
            file.take(SECRET_LEN as u64 + 1)
                .read_to_end(&mut bytes)
                .map_err(io_err)?;
            <[u8; SECRET_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
                invalid(format!(
                    "expected {SECRET_LEN} bytes, found {}; delete it to make a new one (every session token then becomes invalid)",
                    bytes.len()
                ))
            })
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let mut secret = [0u8; SECRET_LEN];
            getrandom::fill(&mut secret)
                .map_err(|e| io_err(io::Error::other(format!("no random bytes: {e}"))))?;
            replace_atomically_with_mode(path, &secret, 0o600).map_err(io_err)?;
            info!("created session secret path={}", path.display());
            Ok(secret)
        }
        Err(err) => Err(io_err(err)),
    }
}

/// The revocation journal, a [`SessionStore`]. Token checks read the
/// generations and never wait for the disk: only revocations queue on the
/// writer, whose lock orders the appends.
pub struct RevocationFile {
    path: PathBuf,
    generations: Mutex<HashMap<UserId, u64>>,
    writer: Mutex<File>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RevocationFile {
    /// Loads `path`, creating it if missing. A torn last line (a crash during an
    /// append, never acknowledged) is dropped.
    ///
    /// # Errors
    /// I/O failures and malformed lines, with their number.
    pub fn open(path: &Path) -> Result<RevocationFile, SessionFileError> {
        let io_err = |err| SessionFileError::Io {
            path: path.to_path_buf(),
            err,
        };
        let content = match fs::read_to_string(path) {
            Ok(content) => content,
            Err(err) if err.kind() == io::ErrorKind::NotFound => String::new(),
            Err(err) => return Err(io_err(err)),
        };
        let complete = content.rfind('\n').map_or(0, |i| i + 1);
        if complete < content.len() {
            warn!(
                "dropping torn last line of {} (a revocation interrupted before it was acknowledged)",
                path.display()
            );
        }
        let mut generations = HashMap::new();
        let mut lines = 0;
        for (n, line) in content[..complete].lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let parsed = line
                .split_once(' ')
                .and_then(|(user, generation)| {
                    Some((UserId::parse(user)?, generation.parse::<u64>().ok()?))
                })
                .ok_or_else(|| SessionFileError::Invalid {
                    path: path.to_path_buf(),
                    reason: format!("line {}: expected `user_id generation`", n + 1),
                })?;
            let slot = generations.entry(parsed.0).or_insert(0);
            *slot = (*slot).max(parsed.1);
            lines += 1;
        }
        // Rewritten when new, torn, or mostly stale lines.
        let file =
            if content.is_empty() || complete < content.len() || lines > 2 * generations.len() + 64
            {
                let mut text = String::from(REVOCATIONS_HEADER);
                let mut users: Vec<_> = generations.iter().collect();
                users.sort();
                for (user, generation) in users {
                    text.push_str(&format!("{user} {generation}\n"));
                }
                replace_atomically(path, text.as_bytes()).map_err(io_err)?
            } else {
                OpenOptions::new().append(true).open(path).map_err(io_err)?
            };
        Ok(RevocationFile {
            path: path.to_path_buf(),
            generations: Mutex::new(generations),
            writer: Mutex::new(file),
        })
    }
}

/// The whole journal as it should read: one line per user.
fn journal_text(generations: &HashMap<UserId, u64>) -> String {
    let mut text = String::from(REVOCATIONS_HEADER);
    let mut users: Vec<_> = generations.iter().collect();
    users.sort();
    for (user, generation) in users {
        text.push_str(&format!("{user} {generation}\n"));
    }
    text
}

impl SessionStore for RevocationFile {
    fn generation(&self, user: UserId) -> u64 {
        lock(&self.generations).get(&user).copied().unwrap_or(0)
    }

    fn revoke_all(&self, user: UserId) -> io::Result<u64> {
        let mut file = lock(&self.writer);
        // Only revocations change generations, and they hold the writer.
        let next = self.generation(user) + 1;
        // In force before it is on disk: a RESUME checked meanwhile must fail.
        // Should the write fail, it stays in force until a restart (fail closed).
        lock(&self.generations).insert(user, next);
        let line = format!("{user} {next}\n");
        let before = file.metadata()?.len();
        let written = file
            .write_all(line.as_bytes())
            .and_then(|()| file.sync_data());
        if let Err(err) = written {
            // No half line may stay for the next append to run into: cut it
            // off, or failing that replace the whole file with what is known.
            if file
                .set_len(before)
                .and_then(|()| file.sync_data())
                .is_err()
            {
                let text = journal_text(&lock(&self.generations));
                if let Ok(fresh) = replace_atomically(&self.path, text.as_bytes()) {
                    *file = fresh;
                }
            }
            return Err(err);
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_created_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("session.key");
        let first = load_or_create_secret(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create_secret(&path).unwrap(), first);
        assert_ne!(first, [0u8; SECRET_LEN]);
    }

    #[test]
    fn a_secret_others_can_read_or_of_the_wrong_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("session.key");
        load_or_create_secret(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create_secret(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        fs::write(&path, b"short").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = load_or_create_secret(&path).unwrap_err().to_string();
        assert!(err.contains("expected 32 bytes, found 5"), "{err}");
    }

    #[test]
    fn revocations_survive_a_reload_and_torn_lines_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revocations.txt");
        let store = RevocationFile::open(&path).unwrap();
        assert_eq!(store.generation(UserId(7)), 0);
        assert_eq!(store.revoke_all(UserId(7)).unwrap(), 1);
        assert_eq!(store.revoke_all(UserId(7)).unwrap(), 2);
        drop(store);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"7 9").unwrap();
        let store = RevocationFile::open(&path).unwrap();
        assert_eq!(store.generation(UserId(7)), 2);
        assert_eq!(store.generation(UserId(8)), 0);
        assert_eq!(store.revoke_all(UserId(7)).unwrap(), 3);
        assert_eq!(
            RevocationFile::open(&path).unwrap().generation(UserId(7)),
            3
        );
    }

    #[test]
    fn a_malformed_revocation_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revocations.txt");
        fs::write(&path, "# header\n1 2\nx y\n").unwrap();
        let err = RevocationFile::open(&path).err().unwrap().to_string();
        assert!(err.contains("line 3"), "{err}");
    }
}
