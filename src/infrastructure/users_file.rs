//! users.txt: one line per user, `id|username|bcrypt_hash|created_at`, `#` comments.
//!
//! The whole file is loaded into memory at start. Appends go through the
//! journal in its Lines format: a registration's line is enqueued, and the
//! user becomes visible (and the client is answered) only once the fsync
//! covering it returns; concurrent registrations share that fsync. A crash
//! mid-append leaves a last line without its newline; that line was never
//! acknowledged, so the next start drops it (with a warning) and cuts the
//! file back. Password changes and deletions rewrite the file through the
//! journal's compaction: the new content is built from the file as it is
//! (not from memory, so a registration durable but not yet published is not
//! lost), lines appended meanwhile are carried over, and the new file is
//! synced and renamed over the old one. Registrations wait only for that
//! carry-over, the sync and the rename.
//!
//! Locks: `index` guards the users in memory; it is never held across I/O.
//! A rewrite holds the journal's maintenance lock across its I/O and takes
//! `index` only to read the next id and to switch (journal maintenance ->
//! `index` -> journal state).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::sync::lock;

use log::info;

use super::fsutil::sync_dir;
use super::journal::{Format, Journal, OpenError, Spec};
use crate::application::{StoreError, UserListing, UserRecord, UserStore};
use crate::domain::user::username_key;
use crate::domain::validate_username;
use crate::domain::{GUEST_ID_BASE, UserId};

/// A comment line that records the next id to give out, so that ids of
/// deleted users are not reused. Other readers see an ordinary comment.
const NEXT_ID: &str = "# next_id ";
const HEADER: &str = "# Switchboard users: id|username|bcrypt_hash|created_at (unix seconds)\n";

/// Why users.txt could not be loaded. The daemon refuses to start on any of these.
#[derive(Debug)]
pub enum LoadError {
    Io {
        path: PathBuf,
        err: io::Error,
    },
    Malformed {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Io { path, err } => write!(f, "{}: {err}", path.display()),
            LoadError::Malformed { path, line, reason } => {
                write!(f, "{}:{line}: {reason}", path.display())
            }
        }
    }
}

impl std::error::Error for LoadError {}

#[derive(Default)]
struct Index {
    by_id: BTreeMap<UserId, UserRecord>,
    by_name: HashMap<String, UserId>,
    /// Names whose registration is being written; taken to everyone else.
    reserved: HashSet<String>,
    next_id: u64,
    /// What `list` hands out, built on first use after each change.
    listing: Option<UserListing>,
}

/// The flat-file [`UserStore`].
pub struct UsersFile {
    path: PathBuf,
    index: Mutex<Index>,
    /// Appends (group commit) and rewrites.
    journal: Journal,
}

impl UsersFile {
    /// Loads `path`, creating it (and its directory) if missing.
    ///
    /// # Errors
    /// I/O failures, and any malformed line other than a torn last one, with its number.
    pub fn open(path: &Path) -> Result<UsersFile, LoadError> {
        let io_err = |err| LoadError::Io {
            path: path.to_path_buf(),
            err,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        if !dir.as_os_str().is_empty() && !dir.exists() {
            fs::create_dir_all(dir).map_err(io_err)?;
            // The new directory's own entry must survive a crash too.
            if let Some(parent) = dir.parent() {
                sync_dir(parent).map_err(io_err)?;
            }
        }
        let existed = path.exists();
        let mut index = Index {
            next_id: 1,
            listing: None,
            ..Index::default()
        };
        let spec = Spec {
            format: Format::Lines,
            initial: HEADER.as_bytes(),
            record_name: "a registration",
        };
        let journal = Journal::open(path, spec, |r| parse_record(&mut index, r.payload)).map_err(
            |e| match e {
                OpenError::Io { err, .. } => io_err(err),
                OpenError::Invalid {
                    line,
                    reason,
                    offset,
                    ..
                } => LoadError::Malformed {
                    path: path.to_path_buf(),
                    line: line.unwrap_or(offset as usize),
                    reason,
                },
                OpenError::Corrupt { reason, .. } => io_err(io::Error::other(reason)),
            },
        )?;
        if !existed {
            info!("created users file path={}", path.display());
        }
        sync_dir(dir).map_err(io_err)?;
        info!("loaded {} users from {}", index.by_id.len(), path.display());
        Ok(UsersFile {
            path: path.to_path_buf(),
            index: Mutex::new(index),
            journal,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        lock(&self.index).by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The users.txt line of a user, newline included.
fn line_of(u: &UserRecord) -> String {
    format!(
        "{}|{}|{}|{}\n",
        u.id, u.username, u.password_hash, u.created_at
    )
}

impl UsersFile {
    /// Removes a user. The file is rewritten atomically without their line.
    ///
    /// # Errors
    /// `Ok(None)` if there is no such user; `Err` if the rewrite failed (the
    /// file and the store are then unchanged).
    pub fn delete(&self, username: &str) -> io::Result<Option<UserRecord>> {
        match self.find_by_name(username) {
            Some(user) => self.rewrite(user.id, |_| None),
            None => Ok(None),
        }
    }

    /// Replaces a user's password hash, rewriting the file atomically.
    ///
    /// # Errors
    /// As [`UsersFile::delete`].
    pub fn set_password_hash(&self, username: &str, hash: &str) -> io::Result<Option<UserRecord>> {
        match self.find_by_name(username) {
            Some(user) => self.rewrite(user.id, |user| with_hash(user, hash)),
            None => Ok(None),
        }
    }

    /// Applies `change` to one user (None deletes): rewrites the file from
    /// its current content with that line changed, renames it over
    /// users.txt, then updates memory at the switch.
    fn rewrite(
        &self,
        id: UserId,
        change: impl FnOnce(&UserRecord) -> Option<UserRecord>,
    ) -> io::Result<Option<UserRecord>> {
        // Rewrites are serialized by the journal's maintenance lock, so the
        // user checked here is still there at the switch.
        let mut rewrite = self.journal.begin_rewrite()?;
        let (old, new, next_id) = {
            let index = lock(&self.index);
            let Some(old) = index.by_id.get(&id).cloned() else {
                return Ok(None);
            };
            let new = change(&old);
            (old, new, index.next_id)
        };
        // Every published user's line is durable, so it is in this snapshot;
        // lines appended after it are carried over by the journal.
        let mut content = vec![0u8; rewrite.snapshot_end() as usize];
        rewrite.source().read_exact_at(&mut content, 0)?;
        // Deleted ids are never given out again: the high-water mark is kept.
        rewrite.push(HEADER.trim_end().as_bytes())?;
        rewrite.push(format!("{NEXT_ID}{next_id}").as_bytes())?;
        for line in content.split(|b| *b == b'\n') {
            let text = String::from_utf8_lossy(line);
            if text.trim().is_empty() || text.trim_start().starts_with('#') {
                continue;
            }
            let first = text.split('|').next().unwrap_or("");
            if UserId::parse(first) == Some(id) {
                if let Some(user) = &new {
                    rewrite.push(line_of(user).trim_end().as_bytes())?;
                }
            } else {
                rewrite.push(line)?;
            }
        }
        self.journal
            .finish_rewrite(rewrite, &self.index, |index, _| {
                index.listing = None;
                match &new {
                    Some(user) => {
                        index.by_id.insert(id, user.clone());
                    }
                    None => {
                        index.by_id.remove(&id);
                        index.by_name.remove(&username_key(&old.username));
                    }
                }
            })?;
        Ok(Some(old))
    }
}

fn with_hash(user: &UserRecord, hash: &str) -> Option<UserRecord> {
    Some(UserRecord {
        password_hash: hash.to_string(),
        ..user.clone()
    })
}

/// Adds one line of the file to the index (comments, blank lines and the
/// next-id mark included).
fn parse_record(index: &mut Index, raw: &[u8]) -> Result<(), String> {
    let line = std::str::from_utf8(raw).map_err(|_| "not valid UTF-8".to_string())?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    if let Some(n) = line.strip_prefix(NEXT_ID) {
        let n: u64 = n
            .trim()
            .parse()
            .map_err(|_| format!("{NEXT_ID}{n:?} is not a number"))?;
        index.next_id = index.next_id.max(n);
        return Ok(());
    }
    if line.trim().is_empty() || line.trim_start().starts_with('#') {
        return Ok(());
    }
    let record = parse_line(line)?;
    let key = username_key(&record.username);
    if index.by_id.contains_key(&record.id) {
        return Err(format!("duplicate user id {}", record.id));
    }
    if index.by_name.contains_key(&key) {
        return Err(format!("duplicate username {:?}", record.username));
    }
    index.next_id = index.next_id.max(record.id.0 + 1);
    index.by_name.insert(key, record.id);
    index.by_id.insert(record.id, record);
    Ok(())
}

fn parse_line(line: &str) -> Result<UserRecord, String> {
    let fields: Vec<&str> = line.split('|').collect();
    let [id, username, hash, created_at] = fields[..] else {
        return Err(format!(
            "expected 4 fields id|username|bcrypt_hash|created_at, found {}",
            fields.len()
        ));
    };
    let id = UserId::parse(id).ok_or_else(|| format!("user id {id:?} is not a number"))?;
    if id.is_guest() {
        return Err(format!(
            "user id {id} is in the range kept for guests (from {GUEST_ID_BASE})"
        ));
    }
    validate_username(username).map_err(|e| format!("username {username:?}: {e}"))?;
    if !(hash.len() == 60 && hash.starts_with("$2")) {
        return Err("password hash is not a bcrypt hash".into());
    }
    let created_at = created_at
        .parse()
        .map_err(|_| format!("created_at {created_at:?} is not a number of seconds"))?;
    Ok(UserRecord {
        id,
        username: username.to_string(),
        password_hash: hash.to_string(),
        created_at,
    })
}

impl UserStore for UsersFile {
    fn find_by_name(&self, username: &str) -> Option<UserRecord> {
        let index = lock(&self.index);
        let id = index.by_name.get(&username_key(username))?;
        index.by_id.get(id).cloned()
    }

    fn find_by_id(&self, id: UserId) -> Option<UserRecord> {
        lock(&self.index).by_id.get(&id).cloned()
    }

    fn list(&self) -> UserListing {
        let mut index = lock(&self.index);
        if let Some(listing) = &index.listing {
            return listing.clone();
        }
        let listing: UserListing = index
            .by_id
            .values()
            .map(|u| (u.id, Arc::from(u.username.as_str())))
            .collect();
        index.listing = Some(listing.clone());
        listing
    }

    fn set_password_hash_of(&self, id: UserId, hash: &str) -> Result<bool, StoreError> {
        self.rewrite(id, |user| with_hash(user, hash))
            .map(|old| old.is_some())
            .map_err(StoreError::Io)
    }

    fn delete_user(&self, id: UserId) -> Result<bool, StoreError> {
        self.rewrite(id, |_| None)
            .map(|old| old.is_some())
            .map_err(StoreError::Io)
    }

    fn create(
        &self,
        username: &str,
        password_hash: &str,
        created_at: u64,
    ) -> Result<UserRecord, StoreError> {
        let key = username_key(username);
        let id = {
            let mut index = lock(&self.index);
            if index.by_name.contains_key(&key) || !index.reserved.insert(key.clone()) {
                return Err(StoreError::Conflict);
            }
            let id = UserId(index.next_id);
            if id.is_guest() {
                index.reserved.remove(&key);
                return Err(StoreError::Io(io::Error::other(
                    "no user ids left below the guest range",
                )));
            }
            index.next_id += 1;
            id
        };
        let record = UserRecord {
            id,
            username: username.to_string(),
            password_hash: password_hash.to_string(),
            created_at,
        };
        // No lock held: concurrent registrations share the fsync.
        let written = self
            .journal
            .append(line_of(&record).trim_end().as_bytes())
            .map(drop);
        let mut index = lock(&self.index);
        index.reserved.remove(&key);
        match written {
            Ok(()) => {
                index.by_name.insert(key, id);
                index.by_id.insert(id, record.clone());
                index.listing = None;
                Ok(record)
            }
            Err(err) => Err(StoreError::Io(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2b$04$abcdefghijklmnopqrstuu5Y1GA3GY8mDrU2ia/Cn9yrPF2kqEvXu";

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    /// A created user survives a reload with all its fields, and names stay unique without case.
    #[test]
    fn created_users_survive_a_reload() {
        let dir = dir();
        let path = dir.path().join("users.txt");
        let store = UsersFile::open(&path).unwrap();
        let alice = store.create("Alice", HASH, 1700000000).unwrap();
        assert!(matches!(
            store.create("alice", HASH, 1),
            Err(StoreError::Conflict)
        ));
        let again = UsersFile::open(&path).unwrap();
        assert_eq!(again.find_by_name("ALICE"), Some(alice.clone()));
        assert_eq!(again.find_by_id(alice.id), Some(alice));
        assert_eq!(again.create("bob", HASH, 1).unwrap().id, UserId(2));
    }

    /// A last line without its newline is dropped and the file rewritten without it.
    #[test]
    fn a_torn_last_line_is_dropped() {
        let dir = dir();
        let path = dir.path().join("users.txt");
        fs::write(&path, format!("# c\n1|alice|{HASH}|5\n2|bob|$2b$04$abc")).unwrap();
        let store = UsersFile::open(&path).unwrap();
        assert_eq!(*store.list(), [(UserId(1), Arc::from("alice"))]);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("# c\n1|alice|{HASH}|5\n")
        );
        store.create("bob", HASH, 6).unwrap();
        assert_eq!(UsersFile::open(&path).unwrap().len(), 2);
    }

    /// Any other malformed line refuses the load and names its line.
    #[test]
    fn malformed_lines_are_reported_with_their_number() {
        let cases = [
            (
                format!("1|alice|{HASH}|5\n\n2|bob|{HASH}\n"),
                3,
                "expected 4 fields",
            ),
            (format!("x|alice|{HASH}|5\n"), 1, "not a number"),
            (
                format!("1|alice|{HASH}|5\n1|bob|{HASH}|5\n"),
                2,
                "duplicate user id",
            ),
            (
                format!("1|alice|{HASH}|5\n2|ALICE|{HASH}|5\n"),
                2,
                "duplicate username",
            ),
            ("1|alice|plainhash|5\n".to_string(), 1, "not a bcrypt hash"),
            (format!("1|al\"ce|{HASH}|5\n"), 1, "may only contain"),
            (
                format!("# next_id x\n1|alice|{HASH}|5\n"),
                1,
                "is not a number",
            ),
            (format!("1|alice|{HASH}|yesterday\n"), 1, "created_at"),
        ];
        for (content, line, reason) in cases {
            let dir = dir();
            let path = dir.path().join("users.txt");
            fs::write(&path, &content).unwrap();
            match UsersFile::open(&path) {
                Err(LoadError::Malformed {
                    line: l, reason: r, ..
                }) => {
                    assert_eq!(l, line, "{content}");
                    assert!(r.contains(reason), "{r}");
                }
                other => panic!("{content}: expected malformed, got {:?}", other.map(|_| ())),
            }
        }
    }

    /// Deleting and changing a password rewrite the file; a reload sees the change
    /// and appends keep working afterwards.
    #[test]
    fn rewrites_are_visible_after_a_reload_and_appends_continue() {
        let dir = dir();
        let path = dir.path().join("users.txt");
        let store = UsersFile::open(&path).unwrap();
        store.create("alice", HASH, 1).unwrap();
        store.create("bob", HASH, 2).unwrap();
        let other = HASH.replace("abc", "xyz");
        assert!(store.set_password_hash("ALICE", &other).unwrap().is_some());
        assert!(store.delete("bob").unwrap().is_some());
        assert!(store.delete("bob").unwrap().is_none());
        store.create("carol", HASH, 3).unwrap();
        let again = UsersFile::open(&path).unwrap();
        assert_eq!(again.find_by_name("alice").unwrap().password_hash, other);
        assert_eq!(
            *again.list(),
            [
                (UserId(1), Arc::from("alice")),
                (UserId(3), Arc::from("carol"))
            ]
        );
        assert!(!dir.path().join("users.txt.tmp").exists());
        // The highest id deleted is not given out again, even after a reload.
        again.delete("carol").unwrap();
        let reloaded = UsersFile::open(&path).unwrap();
        assert_eq!(reloaded.create("dave", HASH, 4).unwrap().id, UserId(4));
    }

    /// A write that fails (a full disk: /dev/full) leaves nothing behind: no
    /// user, no reserved name, no id consumed from the file, and the name can
    /// be registered once the disk has room again.
    #[test]
    fn a_failed_append_leaves_nothing_behind() {
        let dir = dir();
        let path = dir.path().join("users.txt");
        let store = UsersFile::open(&path).unwrap();
        store.create("alice", HASH, 1).unwrap();
        let before = fs::read(&path).unwrap();
        // The journal's writes go to /dev/full: the kernel's own ENOSPC.
        store.journal.set_hooks(super::super::journal::Hooks {
            write: Some(Arc::new(|_: &fs::File, buf: &[u8], _: u64| {
                use std::io::Write;
                fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/full")?
                    .write_all(buf)
            })),
            sync: None,
        });
        match store.create("bob", HASH, 2) {
            Err(StoreError::Io(err)) => assert_eq!(err.raw_os_error(), Some(28), "{err}"),
            other => panic!("expected ENOSPC, got {other:?}"),
        }
        assert!(store.find_by_name("bob").is_none());
        assert_eq!(fs::read(&path).unwrap(), before);
        store.journal.set_hooks(Default::default());
        store.create("bob", HASH, 3).unwrap();
        assert_eq!(UsersFile::open(&path).unwrap().len(), 2);
    }

    /// A missing file is created (with its directory) holding only the header comment.
    #[test]
    fn a_missing_file_is_created() {
        let dir = dir();
        let path = dir.path().join("nested/users.txt");
        let store = UsersFile::open(&path).unwrap();
        assert!(store.is_empty());
        assert_eq!(fs::read_to_string(&path).unwrap(), HEADER);
    }
}
