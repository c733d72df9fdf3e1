//! The two files behind session tokens: the signing secret and the revocations.
//!
//! `session.key` holds 32 random bytes, created at the first start with mode
//! 0600 and never rewritten; a daemon restart keeps it, so tokens survive. A key
//! readable by anyone but its owner refuses the start: whoever reads it can
//! mint a session for any user.
//!
//! `revocations.txt` is an append-only journal, one `user_id generation` line
//! per revocation (LOGOUT), written through the journal's Lines format: the
//! LOGOUT is answered once the fsync covering its line returns, and
//! concurrent revocations share that fsync. The highest generation of a user
//! wins. When stale lines outnumber the users (twice over, plus 64) it is
//! compacted to one line per user: at start, and in the background while
//! running.
//!
//! Locks: `generations` guards the generation per user and the line count;
//! held for memory work and the enqueue, never across I/O (generations ->
//! journal state; a compaction: journal maintenance -> generations).

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use log::{info, warn};

use super::fsutil::replace_atomically_with_mode;
use super::journal::{Format, Journal, OpenError, Spec};
use crate::application::RevocationStore;
use crate::domain::UserId;

pub const SECRET_LEN: usize = 32;
const REVOCATIONS_HEADER: &str = "# Switchboard session revocations: user_id generation\n";

/// Why a session file could not be used. The daemon refuses to start on these.
#[derive(Debug)]
pub enum TokenFileError {
    Io { path: PathBuf, err: io::Error },
    Invalid { path: PathBuf, reason: String },
}

impl fmt::Display for TokenFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenFileError::Io { path, err } => write!(f, "{}: {err}", path.display()),
            TokenFileError::Invalid { path, reason } => {
                write!(f, "{}: {reason}", path.display())
            }
        }
    }
}

impl std::error::Error for TokenFileError {}

/// Reads the signing secret at `path`, creating it (0600, synced) if missing.
///
/// # Errors
/// Unreadable, the wrong length, readable by group or others, or not creatable.
pub fn load_or_create_secret(path: &Path) -> Result<[u8; SECRET_LEN], TokenFileError> {
    let io_err = |err| TokenFileError::Io {
        path: path.to_path_buf(),
        err,
    };
    let invalid = |reason: String| TokenFileError::Invalid {
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

/// The revocation journal, a [`RevocationStore`]. Token checks read the
/// generations and never wait for the disk; revocations share fsyncs.
pub struct RevocationFile {
    inner: Arc<Revocations>,
}

struct Revocations {
    journal: Journal,
    generations: Mutex<Generations>,
    compacting: AtomicBool,
}

#[derive(Default)]
struct Generations {
    by_user: HashMap<UserId, u64>,
    /// Lines in the file (a compaction is due when most are stale).
    lines: usize,
}

impl Generations {
    fn stale(&self) -> bool {
        self.lines > 2 * self.by_user.len() + 64
    }
}

use crate::sync::lock;

impl RevocationFile {
    /// Loads `path`, creating it if missing. A torn last line (a crash during an
    /// append, never acknowledged) is dropped.
    ///
    /// # Errors
    /// I/O failures and malformed lines, with their number.
    pub fn open(path: &Path) -> Result<RevocationFile, TokenFileError> {
        let mut generations = Generations::default();
        let spec = Spec {
            format: Format::Lines,
            initial: REVOCATIONS_HEADER.as_bytes(),
            record_name: "a revocation",
        };
        let journal = Journal::open(path, spec, |r| {
            let line = std::str::from_utf8(r.payload).map_err(|_| "not valid UTF-8".to_string())?;
            if line.trim().is_empty() || line.starts_with('#') {
                return Ok(());
            }
            let (user, generation) = line
                .split_once(' ')
                .and_then(|(user, generation)| {
                    Some((UserId::parse(user)?, generation.parse::<u64>().ok()?))
                })
                .ok_or_else(|| "expected `user_id generation`".to_string())?;
            let slot = generations.by_user.entry(user).or_insert(0);
            *slot = (*slot).max(generation);
            generations.lines += 1;
            Ok(())
        })
        .map_err(|e| match e {
            OpenError::Io { err, .. } => TokenFileError::Io {
                path: path.to_path_buf(),
                err,
            },
            OpenError::Invalid { line, reason, .. } => TokenFileError::Invalid {
                path: path.to_path_buf(),
                reason: format!("line {}: {reason}", line.unwrap_or(0)),
            },
            OpenError::Corrupt { reason, .. } => TokenFileError::Invalid {
                path: path.to_path_buf(),
                reason,
            },
        })?;
        let stale = generations.stale();
        let inner = Arc::new(Revocations {
            journal,
            generations: Mutex::new(generations),
            compacting: AtomicBool::new(false),
        });
        if stale {
            inner.compact().map_err(|err| TokenFileError::Io {
                path: path.to_path_buf(),
                err,
            })?;
        }
        Ok(RevocationFile { inner })
    }
}

impl Revocations {
    /// Rewrites the journal as one line per user.
    fn compact(&self) -> io::Result<()> {
        let mut rewrite = self.journal.begin_rewrite()?;
        let mut users: Vec<(UserId, u64)> = lock(&self.generations)
            .by_user
            .iter()
            .map(|(u, g)| (*u, *g))
            .collect();
        users.sort();
        rewrite.push(REVOCATIONS_HEADER.trim_end().as_bytes())?;
        for (user, generation) in &users {
            rewrite.push(format!("{user} {generation}").as_bytes())?;
        }
        self.journal
            .finish_rewrite(rewrite, &self.generations, |g, _| {
                g.lines = g.by_user.len();
            })?;
        info!(
            "compacted {} to {} users",
            self.journal.path().display(),
            users.len()
        );
        Ok(())
    }

    fn compact_in_background(self: &Arc<Self>) {
        if self.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.clone();
        let spawned = std::thread::Builder::new()
            .name("compact-revocations".into())
            .spawn(move || {
                if let Err(err) = inner.compact() {
                    warn!("revocation journal compaction failed: {err}; the old file stays in use");
                }
                inner.compacting.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.compacting.store(false, Ordering::Release);
        }
    }
}

impl RevocationStore for RevocationFile {
    fn generation(&self, user: UserId) -> u64 {
        lock(&self.inner.generations)
            .by_user
            .get(&user)
            .copied()
            .unwrap_or(0)
    }

    fn revoke_all(&self, user: UserId) -> io::Result<u64> {
        let inner = &self.inner;
        let (next, ticket) = {
            let mut g = lock(&inner.generations);
            let next = g.by_user.get(&user).copied().unwrap_or(0) + 1;
            // In force before it is on disk: a RESUME checked meanwhile must fail.
            // Should the write fail, it stays in force until a restart (fail closed).
            g.by_user.insert(user, next);
            g.lines += 1;
            // Enqueued under the lock: a user's lines reach the file in order.
            (
                next,
                inner.journal.enqueue(format!("{user} {next}").as_bytes())?,
            )
        };
        inner.journal.wait(&ticket)?;
        if lock(&inner.generations).stale() {
            inner.compact_in_background();
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, OpenOptions};
    use std::io::Write;

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
