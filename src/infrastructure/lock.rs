//! The data-directory lock: one writer of users.txt at a time.
//!
//! The daemon holds an exclusive flock(2) on `switchboard.lock` in the data
//! directory for its whole life, with its PID written inside. Operator
//! commands that write users.txt take the same lock and refuse while a daemon
//! (or another command) holds it. The kernel drops the lock when the process
//! dies, so a crash never leaves a stale lock behind.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

pub const LOCK_FILE: &str = "switchboard.lock";

/// Why the lock was not taken.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it; its PID if it wrote one.
    Held {
        path: PathBuf,
        pid: Option<u32>,
    },
    Io {
        path: PathBuf,
        err: io::Error,
    },
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::Held {
                path,
                pid: Some(pid),
            } => write!(
                f,
                "{} is held by a running switchboard (pid {pid}); stop it first, or change users while it runs through the protocol",
                path.display()
            ),
            LockError::Held { path, pid: None } => {
                write!(
                    f,
                    "{} is held by another switchboard process",
                    path.display()
                )
            }
            LockError::Io { path, err } => write!(f, "{}: {err}", path.display()),
        }
    }
}

impl std::error::Error for LockError {}

/// Held until dropped.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the lock of `data_dir` (creating the directory), without waiting.
    ///
    /// # Errors
    /// `Held` if another process has it; `Io` otherwise.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, LockError> {
        let path = data_dir.join(LOCK_FILE);
        let io_err = |err| LockError::Io {
            path: path.clone(),
            err,
        };
        fs::create_dir_all(data_dir).map_err(io_err)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        if let Err(err) = flock(&file, FlockOperation::NonBlockingLockExclusive) {
            if err == rustix::io::Errno::WOULDBLOCK {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Held {
                    path: path.clone(),
                    pid: text.trim().parse().ok(),
                });
            }
            return Err(io_err(err.into()));
        }
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        Ok(DataDirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second acquire fails naming this process; after release it succeeds.
    #[test]
    fn the_lock_is_exclusive_and_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = DataDirLock::acquire(dir.path()).unwrap();
        match DataDirLock::acquire(dir.path()) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(held);
        DataDirLock::acquire(dir.path()).unwrap();
    }
}
