//! The data-directory lock: one writer of users.txt at a time.
//!
//! The daemon holds an exclusive flock(2) on `switchboard.lock` in the data
//! directory for its whole life, with its PID and role (`serve`) written
//! inside. Operator commands that change files take the same lock (role
//! `user`) while the daemon is stopped; while it runs they find the lock held
//! and go through the daemon's admin socket instead (see
//! [`super::admin_socket`]). The lock exists because two processes appending
//! to and rewriting users.txt independently would lose each other's changes
//! and hand out the same user id twice. The kernel drops the lock when the
//! process dies, so a crash never leaves a stale lock behind.
//!
//! Nothing here creates files unless asked to: [`DataDirLock::holder`] only
//! looks, for read-only commands.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

pub const LOCK_FILE: &str = "switchboard.lock";

/// Who holds (or takes) the lock, as written into the lock file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A daemon serving the directory.
    Daemon,
    /// A `switchboard user` command working on the files directly.
    Operator,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Daemon => "serve",
            Role::Operator => "user",
        }
    }

    fn parse(text: &str) -> Option<Role> {
        match text {
            "serve" => Some(Role::Daemon),
            "user" => Some(Role::Operator),
            _ => None,
        }
    }
}

/// The process that holds a data directory, as its lock file says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: Option<u32>,
    /// `None` when the file names no role (written by an older version).
    pub role: Option<Role>,
}

impl Holder {
    fn read(file: &mut File) -> Holder {
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        let mut words = text.split_whitespace();
        Holder {
            pid: words.next().and_then(|w| w.parse().ok()),
            role: words.next().and_then(Role::parse),
        }
    }

    /// "switchboard (pid 1234)" or "switchboard process".
    fn describe(&self) -> String {
        match self.pid {
            Some(pid) => format!("switchboard (pid {pid})"),
            None => "switchboard process".into(),
        }
    }
}

/// Why the lock was not taken. Each message says what to do.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it.
    Held { dir: PathBuf, holder: Holder },
    /// The data directory does not exist (and was not to be created).
    Missing { dir: PathBuf },
    /// The data directory's path names something that is not a directory.
    NotADirectory { dir: PathBuf },
    /// The data directory could not be created.
    CreateDir { dir: PathBuf, err: io::Error },
    /// The lock file could not be opened, locked or written.
    Io { path: PathBuf, err: io::Error },
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::Held { dir, holder } => match holder.role {
                Some(Role::Daemon) => write!(
                    f,
                    "another {} is already serving data directory {}; stop it or choose another --data-dir",
                    holder.describe(),
                    dir.display()
                ),
                Some(Role::Operator) => write!(
                    f,
                    "a `switchboard user` command ({}) is changing data directory {}; try again when it has finished",
                    holder
                        .pid
                        .map_or_else(|| "pid unknown".into(), |p| format!("pid {p}")),
                    dir.display()
                ),
                None => write!(
                    f,
                    "another {} holds data directory {}; stop it or choose another --data-dir",
                    holder.describe(),
                    dir.display()
                ),
            },
            LockError::Missing { dir } => write!(
                f,
                "data directory {} does not exist; check --data-dir (storage.data_dir)",
                dir.display()
            ),
            LockError::NotADirectory { dir } => write!(
                f,
                "data directory {} is a file, not a directory; choose a directory with --data-dir (storage.data_dir)",
                dir.display()
            ),
            LockError::CreateDir { dir, err } => write!(
                f,
                "cannot create data directory {}: {err}; create it with the daemon's user as owner, or choose another --data-dir (storage.data_dir)",
                dir.display()
            ),
            LockError::Io { path, err } => write!(
                f,
                "cannot lock {}: {err}; the daemon's user needs read and write access to the data directory",
                path.display()
            ),
        }
    }
}

impl std::error::Error for LockError {}

/// Held until dropped.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Fails unless `dir` is an existing directory.
fn check_dir(dir: &Path) -> Result<(), LockError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(LockError::NotADirectory {
            dir: dir.to_path_buf(),
        }),
        // ENOTDIR: a parent of the path is a file, so the directory is not there either.
        Err(err) if err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(20) => {
            Err(LockError::Missing {
                dir: dir.to_path_buf(),
            })
        }
        Err(err) => Err(LockError::Io {
            path: dir.to_path_buf(),
            err,
        }),
    }
}

/// Creates `dir` (and its parents) unless it exists; refuses a file.
fn create_dir(dir: &Path) -> Result<(), LockError> {
    match check_dir(dir) {
        Err(LockError::Missing { .. }) => {
            fs::create_dir_all(dir).map_err(|err| LockError::CreateDir {
                dir: dir.to_path_buf(),
                err,
            })
        }
        other => other,
    }
}

impl DataDirLock {
    /// Takes the lock of `data_dir` for a daemon (creating the directory),
    /// without waiting.
    ///
    /// # Errors
    /// See [`LockError`].
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, LockError> {
        DataDirLock::acquire_as(data_dir, Role::Daemon, true)
    }

    /// Takes the lock of `data_dir` as `role`, without waiting. A missing
    /// directory is created only if `create_missing_dir` says so; the lock
    /// file always is.
    ///
    /// # Errors
    /// See [`LockError`]: `Held` if another process has it, `Missing` for a
    /// directory that does not exist and was not to be created.
    pub fn acquire_as(
        data_dir: &Path,
        role: Role,
        create_missing_dir: bool,
    ) -> Result<DataDirLock, LockError> {
        if create_missing_dir {
            create_dir(data_dir)?;
        } else {
            check_dir(data_dir)?;
        }
        let path = data_dir.join(LOCK_FILE);
        let io_err = |err| LockError::Io {
            path: path.clone(),
            err,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        if let Err(err) = flock(&file, FlockOperation::NonBlockingLockExclusive) {
            if err == rustix::io::Errno::WOULDBLOCK {
                return Err(LockError::Held {
                    dir: data_dir.to_path_buf(),
                    holder: Holder::read(&mut file),
                });
            }
            return Err(io_err(err.into()));
        }
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        writeln!(file, "{} {}", std::process::id(), role.as_str()).map_err(io_err)?;
        Ok(DataDirLock { _file: file })
    }

    /// Who holds the lock of `data_dir` right now, if anyone; creates and
    /// changes nothing (read-only commands use it). A directory without a
    /// lock file has never been served, so nobody holds it.
    ///
    /// # Errors
    /// `Missing` or `NotADirectory` for a bad path; `Io` if the lock file
    /// cannot be read.
    pub fn holder(data_dir: &Path) -> Result<Option<Holder>, LockError> {
        check_dir(data_dir)?;
        let path = data_dir.join(LOCK_FILE);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(LockError::Io { path, err }),
        };
        match flock(&file, FlockOperation::NonBlockingLockShared) {
            // Free: let go at once (closing the file would too).
            Ok(()) => {
                let _ = flock(&file, FlockOperation::Unlock);
                Ok(None)
            }
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(Some(Holder::read(&mut file))),
            Err(err) => Err(LockError::Io {
                path,
                err: err.into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second acquire fails naming this process and its role; after release it succeeds.
    #[test]
    fn the_lock_is_exclusive_and_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = DataDirLock::acquire(dir.path()).unwrap();
        let me = Holder {
            pid: Some(std::process::id()),
            role: Some(Role::Daemon),
        };
        match DataDirLock::acquire_as(dir.path(), Role::Operator, false) {
            Err(LockError::Held { holder, .. }) => assert_eq!(holder, me),
            other => panic!("expected Held, got {other:?}"),
        }
        assert_eq!(DataDirLock::holder(dir.path()).unwrap(), Some(me));
        drop(held);
        assert_eq!(DataDirLock::holder(dir.path()).unwrap(), None);
        DataDirLock::acquire(dir.path()).unwrap();
    }

    /// Looking creates nothing; a missing directory and a file are told apart.
    #[test]
    fn looking_creates_nothing_and_bad_paths_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("typo");
        assert!(matches!(
            DataDirLock::holder(&missing),
            Err(LockError::Missing { .. })
        ));
        assert!(matches!(
            DataDirLock::acquire_as(&missing, Role::Operator, false),
            Err(LockError::Missing { .. })
        ));
        assert!(!missing.exists());
        assert_eq!(DataDirLock::holder(dir.path()).unwrap(), None);
        assert!(!dir.path().join(LOCK_FILE).exists());

        let file = dir.path().join("file");
        fs::write(&file, "").unwrap();
        let err = DataDirLock::acquire(&file).unwrap_err();
        assert!(matches!(err, LockError::NotADirectory { .. }), "{err:?}");
        assert!(err.to_string().contains("is a file"), "{err}");
        let below_a_file = file.join("data");
        let err = DataDirLock::acquire(&below_a_file).unwrap_err();
        assert!(matches!(err, LockError::CreateDir { .. }), "{err:?}");
    }
}
