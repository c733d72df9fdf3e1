//! The journal: the append-only files through which every durable record is
//! written, with group commit, checksums, torn-tail recovery and atomic
//! compaction. users.txt, revocations.txt, the conversation logs and the
//! state file (key-value, receipts, inbox, ids) all sit on it.
//!
//! # Formats
//!
//! A journal has one of two record formats ([`Format`]):
//!
//! - **Framed** (the journal's own files): an 8-byte magic `SBJRNL2\n`, then
//!   batches. A batch is what one group-commit write put down: a header
//!   `[len u64][crc32(body) u32][crc32(len, crc32(body)) u32]` ([`BATCH_HEADER`]
//!   bytes), then a body of `len` bytes holding whole records
//!   `[len u32][crc32(len) u32][crc32(payload) u32][payload]`, little endian.
//!   The batch checksum says whether the whole write landed; the record
//!   checksums (checked again on every read) find a record damaged later.
//! - **Lines** (users.txt and revocations.txt, whose formats are fixed): each
//!   record is one line ending in `\n`; the owner parses and validates lines.
//!
//! Framed files are written ahead with zeros ([`PREALLOCATE`] at a time) so
//! that an append overwrites existing blocks and its fdatasync has no
//! metadata to commit; a zero tail after the last record is that space.
//!
//! Zeros are written ahead off the batches' path. Once a durable batch leaves
//! less than half of [`PREALLOCATE`] of room (`allocated`, the end of the
//! zeros already durable), its leader hands the next [`PREALLOCATE`] to a
//! thread of their own (one at a time, short-lived; it goes on while
//! writers outrun it and the room stays short), which writes them
//! [`ZERO_STEP`] at a time, syncs each step through a file description of its
//! own (so that its fsync never stands for a batch's, and a write-back error
//! still reaches the batches' description) and only then counts it as room.
//! No caller waits for them: batches go on below the room, and one whose
//! fsync comes meanwhile flushes at most one step of zeros with its records.
//! While they are being written, a batch that would end past the room waits
//! for the next step (the zeros would land over its records). Otherwise a
//! batch past the room (the first after an open, a cut or a compaction, or
//! one larger than the room) writes its own zeros, its fsync flushing them
//! while everyone behind it waits (about 10 ms for 4 MiB on this disk: the
//! stall that writing ahead avoids). A cut after a failure, a compaction and
//! the close stop zeros being written for the file as it was: they are not
//! counted as room. After a cut, batches past the room still wait for the
//! step in progress (it may land after the cut); after a compaction they do
//! not (it lands in the replaced file); the close waits for it.
//!
//! # Recovery at open
//!
//! A crash during an append can leave the last write incomplete. Such a
//! record was never acknowledged (acknowledgement follows the fsync), so it is
//! dropped with a warning and the file cut back. A multi-page `pwrite` cut
//! by a power loss can leave any mix of its pages on disk (a header whose
//! length landed and zeros after it, a zeroed page between landed ones), in
//! space written ahead with zeros. So for Framed files the unit of tearing is
//! the batch: a batch whose header or body checksum does not verify (or that
//! runs past the end of the file) is torn when no verified batch follows it
//! anywhere in the file; it is dropped. A batch that does not verify but is
//! followed by a verified one, or a bad record inside a verified batch, is
//! corruption: the open fails naming the file and the byte offset, and the
//! file is left untouched for an operator. (A batch is written only after the
//! one before it is durable, so a verified batch after a bad one proves the
//! bad one had been acknowledged.) For Lines files a last line without its
//! newline is torn; every other line is the owner's to judge.
//!
//! # Group commit
//!
//! [`Journal::enqueue`] copies an encoded record into the pending buffer (the
//! first record of a batch reserves the batch header in front of it) and
//! returns a [`Ticket`] (a log sequence number, the record's offset and the
//! batch's outcome cell);
//! [`Journal::wait`] returns once the record is durable. The first waiter that
//! finds no write in progress and whose record is still pending becomes the
//! leader (unless a compaction holds batches, or the batch must wait for
//! zeros being written ahead): it takes the whole pending buffer, releases
//! the state lock, writes the buffer with one `pwrite` and calls `fdatasync`
//! once, then takes the lock again and settles the batch's outcome cell
//! (shared by its tickets: no per-failure history is kept). Records enqueued meanwhile form the next
//! batch, written by the next leader. Nobody holds a lock across the write or
//! the fsync. Waiters sleep on their batch's own condition variable: settling
//! a batch wakes its writers only, and one writer of the pending batch is
//! woken to lead it (64 writers woken per fsync to find most of them still
//! waiting cost more CPU than the writes). An owner that must keep its own
//! order (sequence numbers) enqueues under its own lock and waits after
//! releasing it.
//!
//! # Failures
//!
//! A failed write or fsync (ENOSPC, EIO) fails every record not yet durable:
//! the batch being written and everything enqueued behind it. Nothing of it is
//! acknowledged. The file is cut back to its last durable length (and that
//! cut synced), so the next batch starts on a clean end and the offsets handed
//! out stay true. If the cut itself fails, what is on disk past the durable
//! length is unknown, and the journal refuses every append until it is opened
//! again (a restart). After an fsync error the kernel may have dropped the
//! dirty pages; cutting them off rather than retrying the fsync is what keeps
//! "acknowledged means on disk" true (the fsyncgate lesson).
//!
//! # Compaction
//!
//! [`Journal::begin_rewrite`] notes the durable end (the snapshot point) and
//! opens a temporary file beside the journal; the owner writes the live
//! records into it while appends go on. [`Journal::finish_rewrite`] then
//! syncs the new file (writers going on), then pauses new batches, waits for
//! the write in progress, copies what was appended after the snapshot point,
//! syncs that small tail, renames the new file over the journal and syncs the
//! directory. Under the owner's lock it switches the
//! file and lets the owner move its offsets ([`Shift`]); then appends resume.
//! Writers are held only for the tail copy, its fsync, the rename and the
//! directory sync. Records
//! left out of the new file (deleted, replaced) are gone from disk once it has
//! taken the name.
//!
//! # Locks
//!
//! - `state` (Mutex): the pending buffer, the durable and enqueued marks, the
//!   room and the zeros' progress, the leader and pause flags, the file
//!   handles. Shared (an `Arc`) with the thread writing zeros ahead. Held only
//!   for memory work; never across a write or an fsync, nor a thread's start.
//!   A leaf: nothing else is taken while it is held. Waiters sleep with it on
//!   their batch's condition variable; a compaction (for the write in
//!   progress) and the close (for the zeros) wait with it on `changed`.
//! - `maintenance` (Mutex): one rewrite at a time. Held across the rewrite's
//!   I/O (by the compactor, never by an appender).
//!
//! Order: `maintenance` -> owner's index -> `state`. Owners may enqueue under
//! their own index lock (owner -> `state`); the journal never calls back into
//! an owner while it holds `state`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

use log::{debug, warn};

use super::fsutil::sync_dir;

/// The first bytes of every Framed journal file.
pub const MAGIC: &[u8; 8] = b"SBJRNL2\n";
/// Bytes in front of each Framed record's payload.
pub const RECORD_HEADER: u64 = 12;
/// Bytes in front of each Framed batch's body.
pub const BATCH_HEADER: u64 = 16;
/// The largest payload one record may carry.
pub const MAX_RECORD: usize = 16 << 20;
/// Framed files are extended with written zeros this far ahead of their
/// records: an append then overwrites blocks that exist, and its fdatasync
/// has no file size or block allocation to commit (on ext4 about 0.2 ms
/// instead of 3.4 ms here).
pub const PREALLOCATE: u64 = 4 << 20;
/// Zeros ahead are written and synced this much at a time, off the batches'
/// path: a batch's fsync, which flushes whatever of the file is dirty, then
/// meets at most this much of them.
pub const ZERO_STEP: u64 = 256 << 10;

/// How records are laid out in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Checksummed binary records after a magic header.
    Framed,
    /// One record per `\n`-terminated line, no checksum (users.txt, revocations.txt).
    Lines,
}

impl Format {
    fn encode(self, payload: &[u8], out: &mut Vec<u8>) {
        match self {
            Format::Framed => {
                let len = (payload.len() as u32).to_le_bytes();
                out.extend_from_slice(&len);
                out.extend_from_slice(&crc32fast::hash(&len).to_le_bytes());
                out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
                out.extend_from_slice(payload);
            }
            Format::Lines => {
                out.extend_from_slice(payload);
                out.push(b'\n');
            }
        }
    }

    /// Bytes a record takes on disk besides its payload.
    pub fn overhead(self) -> u64 {
        match self {
            Format::Framed => RECORD_HEADER,
            Format::Lines => 1,
        }
    }

    fn check(self, payload: &[u8]) -> io::Result<()> {
        let bad = |why: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, why.to_string()));
        match self {
            Format::Framed if payload.is_empty() => bad("an empty journal record"),
            Format::Framed if payload.len() > MAX_RECORD => bad("a journal record over 16 MiB"),
            Format::Lines if payload.contains(&b'\n') => bad("a line record holding a newline"),
            _ => Ok(()),
        }
    }
}

/// What a journal is and how a new one starts.
#[derive(Clone, Copy, Debug)]
pub struct Spec<'a> {
    pub format: Format,
    /// The content of a new Lines file (a header comment); Framed files start with [`MAGIC`].
    pub initial: &'a [u8],
    /// What one record is, for the torn-tail warning ("a registration").
    pub record_name: &'a str,
}

/// One record met while opening.
pub struct Record<'a> {
    /// Where the record starts in the file (its header, for Framed).
    pub offset: u64,
    pub payload: &'a [u8],
    /// 1-based: the line number for Lines, the record number for Framed.
    pub number: usize,
}

/// Why a journal could not be opened. The daemon refuses to start on any.
#[derive(Debug)]
pub enum OpenError {
    Io {
        path: PathBuf,
        err: io::Error,
    },
    /// A damaged record before the tail: the file is left as it is.
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A record the owner refused (a malformed line, an unknown record type).
    Invalid {
        path: PathBuf,
        offset: u64,
        line: Option<usize>,
        reason: String,
    },
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Io { path, err } => write!(f, "{}: {err}", path.display()),
            OpenError::Corrupt {
                path,
                offset,
                reason,
            } => write!(
                f,
                "{}: corrupt record at offset {offset}: {reason}; the file was left as it is (restore it from a backup, or move it aside to start without it)",
                path.display()
            ),
            OpenError::Invalid {
                path,
                line: Some(line),
                reason,
                ..
            } => write!(f, "{}:{line}: {reason}", path.display()),
            OpenError::Invalid {
                path,
                offset,
                line: None,
                reason,
            } => write!(f, "{}: record at offset {offset}: {reason}", path.display()),
        }
    }
}

impl std::error::Error for OpenError {}

/// Writes a batch at an offset (replaceable to inject faults).
pub type WriteHook = Arc<dyn Fn(&File, &[u8], u64) -> io::Result<()> + Send + Sync>;
/// Makes written data durable (replaceable to observe or fail fsyncs).
pub type SyncHook = Arc<dyn Fn(&File) -> io::Result<()> + Send + Sync>;

/// Replacements for the leader's write and fsync, for tests and fault injection.
#[derive(Clone, Default)]
pub struct Hooks {
    pub write: Option<WriteHook>,
    pub sync: Option<SyncHook>,
}

/// How a batch ended, shared by its tickets.
type Cell = Arc<BatchCell>;

/// A batch's outcome (unset while pending, `None` durable, `Some` failed),
/// and where the waiters of its records sleep (with the state lock): all are
/// woken when the outcome is set, and one of them when the batch, still
/// pending, may be handed to a leader. Nobody else is woken.
#[derive(Debug, Default)]
struct BatchCell {
    outcome: OnceLock<Option<Failure>>,
    wake: Condvar,
}

impl BatchCell {
    fn get(&self) -> Option<&Option<Failure>> {
        self.outcome.get()
    }

    /// Sets the outcome (under the state lock) and wakes the batch's waiters.
    fn settle(&self, outcome: Option<Failure>) {
        let _ = self.outcome.set(outcome);
        self.wake.notify_all();
    }
}

/// A record handed to the journal: wait on it with [`Journal::wait`].
#[derive(Clone, Debug)]
pub struct Ticket {
    /// Log sequence number: the count of records enqueued before it, plus
    /// one. Rises with every enqueue, never reused (failed ones included).
    pub lsn: u64,
    /// Where the record starts, in the file current at enqueue time (a
    /// compaction moves it: owners keep offsets under their own lock).
    pub offset: u64,
    /// The outcome of the record's batch, shared by the batch's tickets.
    cell: Cell,
}

impl PartialEq for Ticket {
    fn eq(&self, other: &Ticket) -> bool {
        self.lsn == other.lsn
    }
}

impl Eq for Ticket {}

/// Whether a record is on disk yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    Durable,
    Failed,
}

/// How a compaction moved the records appended after its snapshot point: an
/// offset at or past `snapshot_end` becomes `offset - snapshot_end + new_base`.
#[derive(Clone, Copy, Debug)]
pub struct Shift {
    pub snapshot_end: u64,
    pub new_base: u64,
}

impl Shift {
    /// The new offset of a record appended after the snapshot point; `None`
    /// for one before it (the owner placed those itself).
    pub fn tail(&self, offset: u64) -> Option<u64> {
        (offset >= self.snapshot_end).then(|| offset - self.snapshot_end + self.new_base)
    }
}

/// Counters for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Records acknowledged as durable.
    pub appends: u64,
    /// Batches written, each with one fsync.
    pub fsyncs: u64,
    /// Batches that failed (write or fsync).
    pub failures: u64,
    /// The file's durable length.
    pub durable_len: u64,
    /// Compactions finished.
    pub rewrites: u64,
    /// Zeros written ahead by a batch that did not fit: its fsync flushed
    /// them while everyone behind it waited.
    pub preallocations_inline: u64,
    /// Runs of zeros written ahead off the batches' path, [`PREALLOCATE`]
    /// each (see "Formats").
    pub preallocations_ahead: u64,
    /// The fsyncs those zeros written ahead took, [`ZERO_STEP`] each (not
    /// counted in `fsyncs`).
    pub zero_syncs: u64,
}

/// A failure shared by every record of a failed batch (io::Error is not Clone).
#[derive(Clone, Debug)]
struct Failure {
    kind: io::ErrorKind,
    raw: Option<i32>,
    text: String,
}

impl Failure {
    fn of(err: &io::Error) -> Failure {
        Failure {
            kind: err.kind(),
            raw: err.raw_os_error(),
            text: err.to_string(),
        }
    }

    fn error(&self) -> io::Error {
        match self.raw {
            Some(raw) => io::Error::from_raw_os_error(raw),
            None => io::Error::new(self.kind, self.text.clone()),
        }
    }
}

struct State {
    file: Arc<File>,
    /// Offset just past everything enqueued.
    end: u64,
    /// Offset just past everything durable.
    durable_end: u64,
    /// Room: up to here the file holds durable zeros past `durable_end`
    /// (written ahead), so a batch that ends below it commits no metadata.
    allocated: u64,
    /// The file's own description for writing zeros ahead (Framed files):
    /// its fsyncs never stand for a batch's.
    zeros_fd: Option<Arc<File>>,
    /// Zeros are being written ahead, past `allocated`, to the file of this
    /// generation: while it is the current file, a batch that would end past
    /// `allocated` waits for them.
    extending: Option<u64>,
    /// Bumped when the file is cut back or replaced, and at close: zeros
    /// being written ahead stop and count for nothing.
    epoch: u64,
    /// Bumped when a compaction replaces the file.
    generation: u64,
    /// Encoded records not yet taken by a leader.
    pending: Vec<u8>,
    /// The last leader's buffer, kept for its capacity.
    spare: Vec<u8>,
    enqueued: u64,
    /// Records in `pending`.
    pending_records: u64,
    /// The outcome cell of the records in `pending`.
    batch: Cell,
    /// Batches failed since the open (a count: nothing per failure is kept).
    failure_count: u64,
    leader: bool,
    paused: bool,
    /// Set when a failed batch could not be cut off: appends are refused.
    broken: Option<Failure>,
    hooks: Hooks,
    /// Replaces the compaction's fsyncs of its new file (tests).
    rewrite_sync: Option<SyncHook>,
    /// Replaces the write and fsync of zeros written ahead (tests).
    zeros_hooks: Hooks,
}

/// An append-only file with group commit. See the module documentation.
pub struct Journal {
    path: PathBuf,
    format: Format,
    /// Shared with the thread writing zeros ahead, if one is running.
    state: Arc<Mutex<State>>,
    /// Compactions and the close wait here (for the write in progress, for
    /// zeros being written ahead).
    changed: Arc<Condvar>,
    maintenance: Mutex<()>,
    appends: AtomicU64,
    fsyncs: AtomicU64,
    failures: AtomicU64,
    rewrites: AtomicU64,
    preallocations_inline: AtomicU64,
    preallocations_ahead: AtomicU64,
    zero_syncs: Arc<AtomicU64>,
}

use crate::sync::lock;

/// Writes `content` to a new file beside `path`, syncs it, renames it over
/// `path` and syncs the directory; returns the new file open for reading and writing.
fn create_atomically(path: &Path, content: &[u8]) -> io::Result<File> {
    let tmp = sibling(path, ".new");
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all_at(content, 0)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(parent_of(path))?;
        Ok(file)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn parent_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    parent_of(path).join(name)
}

/// A second open file description of the file `file` has open at `path`
/// (its own write-back error cursor and fsyncs), checked to be the same file.
fn open_again(path: &Path, file: &File) -> io::Result<File> {
    let again = OpenOptions::new().read(true).write(true).open(path)?;
    let (a, b) = (file.metadata()?, again.metadata()?);
    if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
        return Err(io::Error::other(format!(
            "{} was replaced while the journal opened it",
            path.display()
        )));
    }
    Ok(again)
}

/// Whether every byte from the reader's position to its end is zero.
fn rest_is_zero(reader: &mut impl Read) -> io::Result<bool> {
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
    }
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The end of a Framed file: zeros written ahead, or blocks allocated by an
/// append that never landed. Either way nothing acknowledged is there.
const ZERO_TAIL: &str = "a zero-filled tail";

/// Where the valid batches end, and why the rest (if any) is dropped.
struct Scan {
    valid: u64,
    torn: Option<String>,
}

impl Journal {
    /// Opens (or creates) the journal at `path`, calling `visit` for every
    /// record in order, then cuts off a torn tail (with a warning).
    ///
    /// # Errors
    /// I/O failures; corruption before the tail ([`OpenError::Corrupt`], with
    /// the offset); a record `visit` refused ([`OpenError::Invalid`]).
    pub fn open(
        path: &Path,
        spec: Spec<'_>,
        mut visit: impl FnMut(Record<'_>) -> Result<(), String>,
    ) -> Result<Journal, OpenError> {
        let io_err = |err| OpenError::Io {
            path: path.to_path_buf(),
            err,
        };
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let initial: &[u8] = match spec.format {
                    Format::Framed => MAGIC,
                    Format::Lines => spec.initial,
                };
                create_atomically(path, initial).map_err(io_err)?
            }
            Err(err) => return Err(io_err(err)),
        };
        let len = file.metadata().map_err(io_err)?.len();
        let scan = match spec.format {
            Format::Framed => scan_framed(path, &file, len, &mut visit)?,
            Format::Lines => scan_lines(path, &file, &mut visit)?,
        };
        if scan.torn.as_deref() == Some(ZERO_TAIL) {
            // Space written ahead by the journal itself (see PREALLOCATE).
            file.set_len(scan.valid)
                .and_then(|()| file.sync_all())
                .map_err(io_err)?;
        } else if let Some(what) = &scan.torn {
            warn!(
                "dropping {what} of {} ({} bytes at offset {}, {} interrupted before it was acknowledged)",
                path.display(),
                len - scan.valid,
                scan.valid,
                spec.record_name
            );
            file.set_len(scan.valid)
                .and_then(|()| file.sync_all())
                .map_err(io_err)?;
        }
        let zeros_fd = match spec.format {
            Format::Framed => Some(Arc::new(open_again(path, &file).map_err(io_err)?)),
            Format::Lines => None,
        };
        Ok(Journal {
            path: path.to_path_buf(),
            format: spec.format,
            state: Arc::new(Mutex::new(State {
                file: Arc::new(file),
                end: scan.valid,
                durable_end: scan.valid,
                allocated: scan.valid,
                zeros_fd,
                extending: None,
                epoch: 0,
                generation: 0,
                pending: Vec::new(),
                spare: Vec::new(),
                enqueued: 0,
                pending_records: 0,
                batch: Cell::default(),
                failure_count: 0,
                leader: false,
                paused: false,
                broken: None,
                hooks: Hooks::default(),
                rewrite_sync: None,
                zeros_hooks: Hooks::default(),
            })),
            changed: Arc::new(Condvar::new()),
            maintenance: Mutex::new(()),
            appends: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            rewrites: AtomicU64::new(0),
            preallocations_inline: AtomicU64::new(0),
            preallocations_ahead: AtomicU64::new(0),
            zero_syncs: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Replaces the leader's write and fsync (tests, fault injection).
    pub fn set_hooks(&self, hooks: Hooks) {
        lock(&self.state).hooks = hooks;
    }

    /// Replaces the fsyncs a compaction makes of its new file (tests).
    pub fn set_rewrite_sync(&self, hook: Option<SyncHook>) {
        lock(&self.state).rewrite_sync = hook;
    }

    /// Replaces the write and fsync of zeros written ahead (tests).
    pub fn set_zeros_hooks(&self, hooks: Hooks) {
        lock(&self.state).zeros_hooks = hooks;
    }

    pub fn stats(&self) -> JournalStats {
        JournalStats {
            appends: self.appends.load(Ordering::Relaxed),
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            durable_len: lock(&self.state).durable_end,
            rewrites: self.rewrites.load(Ordering::Relaxed),
            preallocations_inline: self.preallocations_inline.load(Ordering::Relaxed),
            preallocations_ahead: self.preallocations_ahead.load(Ordering::Relaxed),
            zero_syncs: self.zero_syncs.load(Ordering::Relaxed),
        }
    }

    /// The file records are read from now. Owners take it under the same lock
    /// that guards their offsets, so that a compaction cannot come between.
    pub fn file(&self) -> Arc<File> {
        lock(&self.state).file.clone()
    }

    /// Appends a record to the pending batch; it is durable once [`Journal::wait`]
    /// says so. Cheap: no I/O.
    ///
    /// # Errors
    /// A record the format cannot carry, or a journal that refuses writes
    /// after a failure it could not undo.
    pub fn enqueue(&self, payload: &[u8]) -> io::Result<Ticket> {
        self.enqueue_checked(payload, None)?
            .ok_or_else(|| io::Error::other("an unchecked enqueue yields a ticket"))
    }

    /// How many batches have failed since the journal was opened.
    pub fn failure_count(&self) -> u64 {
        lock(&self.state).failure_count
    }

    /// [`Journal::enqueue`], but only if no batch failed since the owner saw
    /// `failures` of them (`Ok(None)` otherwise): an owner that numbers its
    /// records (sequence numbers) first forgets the failed ones, so that no
    /// number is given to a record behind one that was lost.
    ///
    /// # Errors
    /// As [`Journal::enqueue`].
    pub fn enqueue_checked(
        &self,
        payload: &[u8],
        failures: Option<u64>,
    ) -> io::Result<Option<Ticket>> {
        self.format.check(payload)?;
        let mut st = lock(&self.state);
        if let Some(broken) = &st.broken {
            return Err(self.broken_error(broken));
        }
        if failures.is_some_and(|seen| seen != st.failure_count) {
            return Ok(None);
        }
        if self.format == Format::Framed && st.pending.is_empty() {
            // The batch header, filled in by the leader that writes the batch.
            st.pending.extend_from_slice(&[0u8; BATCH_HEADER as usize]);
            st.end += BATCH_HEADER;
        }
        let offset = st.end;
        let before = st.pending.len();
        self.format.encode(payload, &mut st.pending);
        st.end += (st.pending.len() - before) as u64;
        st.enqueued += 1;
        st.pending_records += 1;
        Ok(Some(Ticket {
            lsn: st.enqueued,
            offset,
            cell: st.batch.clone(),
        }))
    }

    fn broken_error(&self, why: &Failure) -> io::Error {
        io::Error::new(
            why.kind,
            format!(
                "{} refuses writes: a failed write could not be cut off ({}); restart to reopen it",
                self.path.display(),
                why.text
            ),
        )
    }

    /// Where a record stands, without waiting.
    pub fn outcome(&self, ticket: &Ticket) -> Outcome {
        // Cells are set under the state lock, with the durable length.
        let _st = lock(&self.state);
        outcome(ticket)
    }

    /// Returns once the record is durable, leading the write of its batch if
    /// no one else is writing and the batch has not been taken yet.
    ///
    /// # Errors
    /// The write or fsync of its batch failed (nothing of the batch is acknowledged).
    pub fn wait(&self, ticket: &Ticket) -> io::Result<()> {
        let mut st = lock(&self.state);
        loop {
            match ticket.cell.get() {
                Some(None) => return Ok(()),
                Some(Some(failure)) => return Err(failure.error()),
                None => {}
            }
            // Only a waiter of the pending batch leads: one whose record is
            // already being written would hold up its own answer.
            if Arc::ptr_eq(&ticket.cell, &st.batch) && can_lead(&st) {
                st = self.lead(st);
            } else {
                st = ticket
                    .cell
                    .wake
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
    }

    /// Enqueues and waits: returns the record's offset once it is durable
    /// (as of the file current then: see [`Ticket::offset`]).
    ///
    /// # Errors
    /// As [`Journal::enqueue`] and [`Journal::wait`].
    pub fn append(&self, payload: &[u8]) -> io::Result<u64> {
        let ticket = self.enqueue(payload)?;
        self.wait(&ticket)?;
        Ok(ticket.offset)
    }

    /// Writes and syncs everything pending, as the leader, with no lock held
    /// during the I/O.
    fn lead<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        st.leader = true;
        let mut batch = std::mem::take(&mut st.spare);
        std::mem::swap(&mut batch, &mut st.pending);
        let cell = std::mem::take(&mut st.batch);
        let records = std::mem::take(&mut st.pending_records);
        let base = st.durable_end;
        let file = st.file.clone();
        let hooks = st.hooks.clone();
        let allocated = st.allocated;
        drop(st);

        if self.format == Format::Framed {
            seal_batch(&mut batch);
        }
        let needed = base + batch.len() as u64;
        // Zeros only ever go past the durable end: never over a record.
        let from = allocated.max(base);
        let allocated = if self.format == Format::Framed && needed > from {
            self.preallocations_inline.fetch_add(1, Ordering::Relaxed);
            self.preallocate(&file, from, needed)
        } else {
            from.max(needed)
        };
        let written = match &hooks.write {
            Some(write) => write(&file, &batch, base),
            None => file.write_all_at(&batch, base),
        }
        .and_then(|()| {
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
            match &hooks.sync {
                Some(sync) => sync(&file),
                None => file.sync_data(),
            }
        });
        // On failure, cut the file back before anyone may write after it.
        let outcome = written.map_err(|err| {
            let cut = file.set_len(base).and_then(|()| file.sync_data());
            (Failure::of(&err), cut.err())
        });

        let mut st = lock(&self.state);
        st.leader = false;
        let durable = outcome.is_ok();
        match outcome {
            Ok(()) => {
                st.durable_end = base + batch.len() as u64;
                // Zeros written ahead meanwhile may have made more room.
                st.allocated = st.allocated.max(allocated);
                cell.settle(None);
                // Only the records this batch carried: failed ones never count.
                self.appends.fetch_add(records, Ordering::Relaxed);
            }
            Err((failure, cut)) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                warn!(
                    "journal write failed path={} records={} error={}; nothing of it was acknowledged",
                    self.path.display(),
                    records + st.pending_records,
                    failure.text
                );
                // Everything not durable fails: the batch and all behind it.
                st.failure_count += 1;
                cell.settle(Some(failure.clone()));
                let behind = std::mem::take(&mut st.batch);
                behind.settle(Some(failure.clone()));
                st.pending_records = 0;
                st.pending.clear();
                st.end = st.durable_end;
                st.allocated = st.durable_end;
                st.epoch += 1;
                if let Some(cut) = cut {
                    warn!(
                        "journal {} refuses writes until restarted: the failed batch could not be cut off ({cut})",
                        self.path.display()
                    );
                    st.broken = Some(failure);
                }
            }
        }
        batch.clear();
        st.spare = batch;
        if st.paused {
            // A compaction waits for this write.
            self.changed.notify_all();
        }
        // Zeros ahead only after a durable batch: after a cut, the next
        // batch writes its own (a disk that just failed is likely full).
        let ahead = if durable {
            self.plan_zeros_ahead(&mut st)
        } else {
            None
        };
        kick(&st);
        match ahead {
            Some(ahead) => {
                drop(st);
                self.start_zeros_ahead(ahead);
                lock(&self.state)
            }
            None => st,
        }
    }

    /// After a durable batch: zeros to write ahead now, if less than half of
    /// [`PREALLOCATE`] of room is left and nobody is at it (nor a compaction
    /// about to replace the file).
    fn plan_zeros_ahead(&self, st: &mut State) -> Option<ZerosAhead> {
        let fd = st.zeros_fd.clone()?;
        let room = st.allocated.saturating_sub(st.durable_end);
        if st.extending.is_some() || st.paused || st.broken.is_some() || room >= PREALLOCATE / 2 {
            return None;
        }
        st.extending = Some(st.generation);
        Some(ZerosAhead {
            fd,
            from: st.allocated,
            to: st.allocated + PREALLOCATE,
            epoch: st.epoch,
            hooks: st.zeros_hooks.clone(),
        })
    }

    /// Hands the zeros to a thread of their own, so that no caller waits for
    /// them. Without a thread (none can be made) there are none: batches
    /// then write their own.
    fn start_zeros_ahead(&self, ahead: ZerosAhead) {
        self.preallocations_ahead.fetch_add(1, Ordering::Relaxed);
        let (state, changed) = (self.state.clone(), self.changed.clone());
        let (syncs, path) = (self.zero_syncs.clone(), self.path.clone());
        let started = std::thread::Builder::new()
            .name("journal-zeros".into())
            .spawn(move || write_zeros_ahead(&state, &changed, &syncs, &path, ahead));
        if let Err(err) = started {
            warn!(
                "journal {}: no thread for writing zeros ahead ({err}); batches will write their own",
                self.path.display()
            );
            let mut st = lock(&self.state);
            st.extending = None;
            self.changed.notify_all();
            kick(&st);
        }
    }

    /// Writes zeros from `from` (at or past the durable end) to past
    /// `needed`, synced with the batch that follows. Returns the file's new
    /// length; on failure (a nearly full disk) cuts back to `from` and returns
    /// `needed`: the batch then grows the file itself.
    fn preallocate(&self, file: &File, from: u64, needed: u64) -> u64 {
        let target = (needed / PREALLOCATE + 1) * PREALLOCATE;
        let zeros = vec![0u8; 1 << 20];
        let mut at = from;
        while at < target {
            let n = ((target - at) as usize).min(zeros.len());
            if file.write_all_at(&zeros[..n], at).is_err() {
                let _ = file.set_len(from);
                return needed;
            }
            at += n as u64;
        }
        target
    }

    /// Reads one Framed record's payload at `offset` from `file`, checking its
    /// checksums. `len` is the payload length when known (one read instead of two).
    ///
    /// # Errors
    /// I/O, or a record whose checksums do not match (named by offset).
    pub fn read_record(&self, file: &File, offset: u64, len: Option<u32>) -> io::Result<Vec<u8>> {
        let bad = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: record at offset {offset}: {why}", self.path.display()),
            )
        };
        let mut buf = vec![0u8; RECORD_HEADER as usize + len.unwrap_or(0) as usize];
        file.read_exact_at(&mut buf, offset)?;
        let (n, len_crc, crc) = header(&buf);
        if crc32fast::hash(&n.to_le_bytes()) != len_crc || n as usize > MAX_RECORD {
            return Err(bad("bad length checksum"));
        }
        match len {
            Some(len) if len != n => return Err(bad("unexpected length")),
            Some(_) => {}
            None => {
                buf.resize(RECORD_HEADER as usize + n as usize, 0);
                file.read_exact_at(&mut buf[RECORD_HEADER as usize..], offset + RECORD_HEADER)?;
            }
        }
        let payload = buf.split_off(RECORD_HEADER as usize);
        if crc32fast::hash(&payload) != crc {
            return Err(bad("bad checksum"));
        }
        Ok(payload)
    }

    /// Starts a compaction: a new file beside the journal, holding the
    /// maintenance lock until [`Journal::finish_rewrite`] (or drop).
    ///
    /// # Errors
    /// The temporary file cannot be created.
    pub fn begin_rewrite(&self) -> io::Result<Rewrite<'_>> {
        let guard = lock(&self.maintenance);
        let tmp_path = sibling(&self.path, ".compact");
        let _ = fs::remove_file(&tmp_path);
        let tmp = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp_path)?;
        let (source, snapshot_end, sync) = {
            let st = lock(&self.state);
            (st.file.clone(), st.durable_end, st.rewrite_sync.clone())
        };
        let mut rewrite = Rewrite {
            _guard: guard,
            format: self.format,
            tmp: None,
            tmp_path,
            buf: Vec::with_capacity(1 << 20),
            len: 0,
            source,
            snapshot_end,
            sync,
        };
        if self.format == Format::Framed {
            tmp.write_all_at(MAGIC, 0)?;
            rewrite.len = MAGIC.len() as u64;
        }
        rewrite.tmp = Some(tmp);
        Ok(rewrite)
    }

    /// Ends a compaction: copies the records appended since its snapshot
    /// point, syncs, renames the new file over the journal, then (under
    /// `owner`'s lock) switches to it and calls `remap` so the owner can move
    /// its offsets. Appends wait only for the copy, the sync and the rename.
    ///
    /// # Errors
    /// I/O before the rename: the journal then goes on with the old file as if
    /// nothing happened. A failed directory sync after the rename switches
    /// anyway but marks the journal broken (the rename may not survive a crash).
    pub fn finish_rewrite<T>(
        &self,
        mut rewrite: Rewrite<'_>,
        owner: &Mutex<T>,
        remap: impl FnOnce(&mut T, &Shift),
    ) -> io::Result<()> {
        rewrite.flush()?;
        // The bulk of the new file is synced while appends go on.
        rewrite.sync()?;
        let Some(tmp) = rewrite.tmp.take() else {
            return Err(io::Error::other("rewrite already finished"));
        };
        let new_base = rewrite.len;
        let snapshot_end = rewrite.snapshot_end;
        let sync_tail = |tmp: &File| match &rewrite.sync {
            Some(sync) => sync(tmp),
            None => tmp.sync_data(),
        };
        // Pause: no new batch starts; wait for the one being written.
        let (old, durable_end) = {
            let mut st = lock(&self.state);
            st.paused = true;
            while st.leader {
                st = self
                    .changed
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            (st.file.clone(), st.durable_end)
        };
        let copied = (|| {
            let mut at = snapshot_end;
            let mut buf = vec![0u8; 1 << 20];
            while at < durable_end {
                let n = ((durable_end - at) as usize).min(buf.len());
                old.read_exact_at(&mut buf[..n], at)?;
                tmp.write_all_at(&buf[..n], new_base + (at - snapshot_end))?;
                at += n as u64;
            }
            // Only the tail (and the new length) is left to make durable.
            sync_tail(&tmp)?;
            // The new file's description for zeros ahead, opened while the
            // name is still its own.
            let zeros_fd = match self.format {
                Format::Framed => Some(Arc::new(open_again(&rewrite.tmp_path, &tmp)?)),
                Format::Lines => None,
            };
            fs::rename(&rewrite.tmp_path, &self.path)?;
            Ok(zeros_fd)
        })();
        let zeros_fd = match copied {
            Ok(zeros_fd) => zeros_fd,
            Err(err) => {
                let _ = fs::remove_file(&rewrite.tmp_path);
                self.resume();
                return Err(err);
            }
        };
        let dir_synced = sync_dir(parent_of(&self.path));
        let shift = Shift {
            snapshot_end,
            new_base,
        };
        {
            let mut owner = lock(owner);
            {
                let mut st = lock(&self.state);
                st.file = Arc::new(tmp);
                st.durable_end = st.durable_end - snapshot_end + new_base;
                st.end = st.end - snapshot_end + new_base;
                st.allocated = st.durable_end;
                st.zeros_fd = zeros_fd;
                st.epoch += 1;
                st.generation += 1;
                if let Err(err) = &dir_synced {
                    st.broken = Some(Failure::of(err));
                }
            }
            remap(&mut owner, &shift);
        }
        self.rewrites.fetch_add(1, Ordering::Relaxed);
        self.resume();
        dir_synced
    }

    fn resume(&self) {
        let mut st = lock(&self.state);
        st.paused = false;
        kick(&st);
    }
}

impl Drop for Journal {
    /// Stops zeros being written ahead and waits for their step in progress,
    /// so that nothing writes to the file once it is closed (a reopen in the
    /// same process must not meet them).
    fn drop(&mut self) {
        let mut st = lock(&self.state);
        st.epoch += 1;
        while st.extending.is_some() {
            st = self
                .changed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Whether a waiter of the pending batch may lead its write now: nobody
/// else is writing, no compaction holds batches, and the batch does not
/// reach past the room while zeros are being written ahead to this file
/// (they would land over its records; zeros for a file a compaction
/// replaced cannot).
fn can_lead(st: &State) -> bool {
    !st.leader
        && !st.paused
        && !st.pending.is_empty()
        && (st.extending != Some(st.generation) || st.end <= st.allocated)
}

/// Wakes one waiter of the pending batch if it may be written now: called
/// wherever that may have become true (a write ended, a compaction ended,
/// zeros written ahead made room or stopped).
fn kick(st: &State) {
    if can_lead(st) {
        st.batch.wake.notify_one();
    }
}

/// Zeros to write ahead: `[from, to)` of the file of `epoch`, through the
/// zeros' own description.
struct ZerosAhead {
    fd: Arc<File>,
    from: u64,
    to: u64,
    epoch: u64,
    hooks: Hooks,
}

/// Writes zeros ahead on a thread of its own, [`ZERO_STEP`] at a time, each
/// step synced through the zeros' own description and only then counted as
/// room, with no lock held during the I/O. Goes on past `to` while less
/// than half of [`PREALLOCATE`] of room is left. Stops at a failure (the room is
/// wanted, not needed: a batch that does not fit writes its own zeros) or
/// once the epoch moved (a cut, a compaction, the close).
fn write_zeros_ahead(
    state: &Mutex<State>,
    changed: &Condvar,
    syncs: &AtomicU64,
    path: &Path,
    mut ahead: ZerosAhead,
) {
    /// Clears `extending` however the writer ends, a panic included: batches
    /// and the close wait for it.
    struct Done<'a>(&'a Mutex<State>, &'a Condvar);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            let mut st = lock(self.0);
            st.extending = None;
            self.1.notify_all();
            kick(&st);
        }
    }
    let _done = Done(state, changed);
    let zeros = vec![0u8; ZERO_STEP as usize];
    let mut at = ahead.from;
    while at < ahead.to {
        let n = (ahead.to - at).min(ZERO_STEP);
        let written = match &ahead.hooks.write {
            Some(write) => write(&ahead.fd, &zeros[..n as usize], at),
            None => ahead.fd.write_all_at(&zeros[..n as usize], at),
        }
        .and_then(|()| {
            syncs.fetch_add(1, Ordering::Relaxed);
            match &ahead.hooks.sync {
                Some(sync) => sync(&ahead.fd),
                None => ahead.fd.sync_data(),
            }
        });
        if let Err(err) = written {
            debug!(
                "journal {}: writing zeros ahead stopped ({err}); batches will write their own",
                path.display()
            );
            return;
        }
        at += n;
        let mut st = lock(state);
        if st.epoch != ahead.epoch || st.broken.is_some() {
            return;
        }
        st.allocated = st.allocated.max(at);
        // Writers outran the zeros (no run is planned while this one goes
        // on): keep going rather than leave the next batch to write its own.
        if at == ahead.to && st.allocated.saturating_sub(st.durable_end) < PREALLOCATE / 2 {
            ahead.to += PREALLOCATE;
        }
        kick(&st);
    }
}

fn outcome(ticket: &Ticket) -> Outcome {
    match ticket.cell.get() {
        None => Outcome::Pending,
        Some(None) => Outcome::Durable,
        Some(Some(_)) => Outcome::Failed,
    }
}

/// Fills in the header reserved at the front of a Framed batch.
fn seal_batch(batch: &mut [u8]) {
    let head = BATCH_HEADER as usize;
    if batch.len() < head {
        return;
    }
    let len = ((batch.len() - head) as u64).to_le_bytes();
    let body_crc = crc32fast::hash(&batch[head..]).to_le_bytes();
    batch[..8].copy_from_slice(&len);
    batch[8..12].copy_from_slice(&body_crc);
    let head_crc = crc32fast::hash(&batch[..12]).to_le_bytes();
    batch[12..16].copy_from_slice(&head_crc);
}

/// A batch header's length and body checksum, if its own checksum verifies.
fn batch_header(head: &[u8]) -> Option<(u64, u32)> {
    let mut len = [0u8; 8];
    len.copy_from_slice(head.get(..8)?);
    let word = |i: usize| -> Option<u32> {
        let mut w = [0u8; 4];
        w.copy_from_slice(head.get(i..i + 4)?);
        Some(u32::from_le_bytes(w))
    };
    let (body_crc, head_crc) = (word(8)?, word(12)?);
    let len = u64::from_le_bytes(len);
    (len > RECORD_HEADER && crc32fast::hash(&head[..12]) == head_crc).then_some((len, body_crc))
}

/// The CRC-32 of `n` bytes of `file` at `at`, read in pieces.
fn crc_of_range(file: &File, at: u64, n: u64) -> io::Result<u32> {
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; (n as usize).min(1 << 20)];
    let mut done = 0u64;
    while done < n {
        let k = ((n - done) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..k], at + done)?;
        hasher.update(&buf[..k]);
        done += k as u64;
    }
    Ok(hasher.finalize())
}

/// Whether a batch that verifies (header and body) starts anywhere at or
/// after `from` in the file's first `len` bytes: what tells a damaged
/// acknowledged batch (one follows) from a torn last one (none does).
fn verified_batch_after(file: &File, from: u64, len: u64) -> io::Result<bool> {
    let head = BATCH_HEADER as usize;
    let mut buf = vec![0u8; 1 << 20];
    let mut base = from;
    while base.saturating_add(BATCH_HEADER) <= len {
        let n = ((len - base) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], base)?;
        for i in 0..=(n - head) {
            let at = base + i as u64;
            let Some((blen, body_crc)) = batch_header(&buf[i..i + head]) else {
                continue;
            };
            let room = len - at - BATCH_HEADER;
            if blen <= room && crc_of_range(file, at + BATCH_HEADER, blen)? == body_crc {
                return Ok(true);
            }
        }
        base += (n - head + 1) as u64;
    }
    Ok(false)
}

fn header(buf: &[u8]) -> (u32, u32, u32) {
    let word = |i: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&buf[i..i + 4]);
        u32::from_le_bytes(w)
    };
    (word(0), word(4), word(8))
}

fn scan_framed(
    path: &Path,
    file: &File,
    len: u64,
    visit: &mut impl FnMut(Record<'_>) -> Result<(), String>,
) -> Result<Scan, OpenError> {
    let io_err = |err| OpenError::Io {
        path: path.to_path_buf(),
        err,
    };
    let corrupt = |offset, reason: &str| OpenError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: reason.to_string(),
    };
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    let got = read_full(&mut reader, &mut magic).map_err(io_err)?;
    if got < magic.len() || &magic != MAGIC {
        return Err(corrupt(0, "not a Switchboard journal (bad magic)"));
    }
    let mut pos = MAGIC.len() as u64;
    let mut body = Vec::new();
    let mut number = 0;
    loop {
        if pos == len {
            return Ok(Scan {
                valid: pos,
                torn: None,
            });
        }
        let torn = |what: &str| {
            Ok(Scan {
                valid: pos,
                torn: Some(what.to_string()),
            })
        };
        let mut head = [0u8; BATCH_HEADER as usize];
        let got = read_full(&mut reader, &mut head).map_err(io_err)?;
        if head[..got].iter().all(|b| *b == 0) && rest_is_zero(&mut reader).map_err(io_err)? {
            // Zeros to the end: space written ahead, or an append that never landed.
            return torn(ZERO_TAIL);
        }
        let end = match batch_header(&head[..got]) {
            Some((blen, _)) if got == head.len() => pos
                .checked_add(BATCH_HEADER)
                .and_then(|p| p.checked_add(blen)),
            _ => None,
        };
        let Some(end) = end.filter(|end| *end <= len) else {
            // A header that did not land whole (or a length past the end).
            if verified_batch_after(file, pos + 1, len).map_err(io_err)? {
                return Err(corrupt(pos, "bad batch header (a verified batch follows)"));
            }
            return torn("a torn last batch");
        };
        let (_, body_crc) = batch_header(&head).unwrap_or_default();
        body.resize((end - pos - BATCH_HEADER) as usize, 0);
        let got = read_full(&mut reader, &mut body).map_err(io_err)?;
        if got < body.len() {
            return torn("a torn last batch");
        }
        if crc32fast::hash(&body) != body_crc {
            // Some of its pages did not land: torn, unless a batch follows.
            if verified_batch_after(file, end, len).map_err(io_err)? {
                return Err(corrupt(
                    pos,
                    "bad batch checksum (a verified batch follows)",
                ));
            }
            return torn("a torn last batch");
        }
        // A verified batch: every record in it must be whole and good.
        let mut at = 0usize;
        while at < body.len() {
            let offset = pos + BATCH_HEADER + at as u64;
            let Some(rec) = body.get(at..at + RECORD_HEADER as usize) else {
                return Err(corrupt(offset, "bad record length (past its batch)"));
            };
            let (n, len_crc, crc) = header(rec);
            if crc32fast::hash(&n.to_le_bytes()) != len_crc || n == 0 || n as usize > MAX_RECORD {
                return Err(corrupt(
                    offset,
                    "bad record length (its checksum does not match)",
                ));
            }
            let from = at + RECORD_HEADER as usize;
            let Some(payload) = body.get(from..from + n as usize) else {
                return Err(corrupt(offset, "bad record length (past its batch)"));
            };
            if crc32fast::hash(payload) != crc {
                return Err(corrupt(offset, "bad checksum"));
            }
            number += 1;
            visit(Record {
                offset,
                payload,
                number,
            })
            .map_err(|reason| OpenError::Invalid {
                path: path.to_path_buf(),
                offset,
                line: None,
                reason,
            })?;
            at = from + n as usize;
        }
        pos = end;
    }
}

fn scan_lines(
    path: &Path,
    file: &File,
    visit: &mut impl FnMut(Record<'_>) -> Result<(), String>,
) -> Result<Scan, OpenError> {
    use std::io::BufRead;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut line = Vec::new();
    let mut pos = 0u64;
    let mut number = 0;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|err| OpenError::Io {
                path: path.to_path_buf(),
                err,
            })?;
        if n == 0 {
            return Ok(Scan {
                valid: pos,
                torn: None,
            });
        }
        number += 1;
        if line.last() != Some(&b'\n') {
            return Ok(Scan {
                valid: pos,
                torn: Some(format!("torn last line {number}")),
            });
        }
        line.pop();
        visit(Record {
            offset: pos,
            payload: &line,
            number,
        })
        .map_err(|reason| OpenError::Invalid {
            path: path.to_path_buf(),
            offset: pos,
            line: Some(number),
            reason,
        })?;
        pos += n as u64;
    }
}

/// A compaction in progress: the new file being written. Dropped without
/// [`Journal::finish_rewrite`], it removes its temporary file.
pub struct Rewrite<'a> {
    _guard: MutexGuard<'a, ()>,
    format: Format,
    tmp: Option<File>,
    tmp_path: PathBuf,
    buf: Vec<u8>,
    /// Bytes in the new file, flushed or buffered.
    len: u64,
    source: Arc<File>,
    snapshot_end: u64,
    sync: Option<SyncHook>,
}

impl Rewrite<'_> {
    /// Records before this offset are the owner's to copy; the rest follows by itself.
    pub fn snapshot_end(&self) -> u64 {
        self.snapshot_end
    }

    /// The journal's file as it was at the snapshot point, to read live records from.
    pub fn source(&self) -> &File {
        &self.source
    }

    /// Adds a record to the new file; returns its offset there.
    ///
    /// # Errors
    /// A record the format cannot carry, or I/O.
    pub fn push(&mut self, payload: &[u8]) -> io::Result<u64> {
        self.format.check(payload)?;
        if self.format == Format::Framed && self.buf.is_empty() {
            // Each flush is one batch, with its header (see `flush`).
            self.buf.extend_from_slice(&[0u8; BATCH_HEADER as usize]);
            self.len += BATCH_HEADER;
        }
        let offset = self.len;
        let before = self.buf.len();
        self.format.encode(payload, &mut self.buf);
        self.len += (self.buf.len() - before) as u64;
        if self.buf.len() >= 1 << 20 {
            self.flush()?;
        }
        Ok(offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.format == Format::Framed {
            seal_batch(&mut self.buf);
        }
        if let Some(tmp) = &self.tmp {
            let at = self.len - self.buf.len() as u64;
            tmp.write_all_at(&self.buf, at)?;
        }
        self.buf.clear();
        Ok(())
    }

    /// Makes the new file durable so far (`fdatasync`, or the test hook).
    fn sync(&self) -> io::Result<()> {
        let Some(tmp) = &self.tmp else {
            return Ok(());
        };
        match &self.sync {
            Some(sync) => sync(tmp),
            None => tmp.sync_all(),
        }
    }
}

impl Drop for Rewrite<'_> {
    fn drop(&mut self) {
        if self.tmp.take().is_some() {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    const FRAMED: Spec<'static> = Spec {
        format: Format::Framed,
        initial: b"",
        record_name: "a test record",
    };

    fn open_collect(path: &Path) -> Result<(Journal, Vec<Vec<u8>>), OpenError> {
        let mut seen = Vec::new();
        let journal = Journal::open(path, FRAMED, |r| {
            seen.push(r.payload.to_vec());
            Ok(())
        })?;
        Ok((journal, seen))
    }

    fn record(i: u32) -> Vec<u8> {
        format!("record {i} {}", "x".repeat(i as usize % 50)).into_bytes()
    }

    /// Records come back in order after a reopen, and read_record finds each by offset.
    #[test]
    fn records_survive_a_reopen_and_are_read_by_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (journal, seen) = open_collect(&path).unwrap();
        assert!(seen.is_empty());
        let offsets: Vec<u64> = (0..100)
            .map(|i| journal.append(&record(i)).unwrap())
            .collect();
        let file = journal.file();
        for (i, off) in offsets.iter().enumerate() {
            assert_eq!(
                journal.read_record(&file, *off, None).unwrap(),
                record(i as u32)
            );
        }
        drop(journal);
        let (_, seen) = open_collect(&path).unwrap();
        assert_eq!(seen, (0..100).map(record).collect::<Vec<_>>());
    }

    /// Group commit: nobody is answered before the fsync that covers their
    /// record. The first writer's batch is held in its fsync while the
    /// others enqueue; they form the second batch, whose fsync the hook holds
    /// too: none of them is answered until that second fsync completes, and
    /// the 32 records take exactly two fsyncs.
    #[test]
    fn group_commit_answers_nobody_before_the_covering_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(open_collect(&dir.path().join("j")).unwrap().0);
        // gates[i]: fsync i+1 may complete; entered/completed: fsyncs begun and done.
        let gates = Arc::new([
            (Mutex::new(false), Condvar::new()),
            (Mutex::new(false), Condvar::new()),
        ]);
        let entered = Arc::new(AtomicU64::new(0));
        let completed = Arc::new(AtomicU64::new(0));
        let (g, e, c) = (gates.clone(), entered.clone(), completed.clone());
        journal.set_hooks(Hooks {
            write: None,
            sync: Some(Arc::new(move |file: &File| {
                let n = e.fetch_add(1, Ordering::SeqCst) as usize;
                if let Some((open, cv)) = g.get(n) {
                    let mut open = open.lock().unwrap();
                    while !*open {
                        open = cv.wait(open).unwrap();
                    }
                }
                let done = file.sync_data();
                c.fetch_add(1, Ordering::SeqCst);
                done
            })),
        });
        let release = |i: usize| {
            *gates[i].0.lock().unwrap() = true;
            gates[i].1.notify_all();
        };
        let wait_for = |what: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !what() {
                assert!(std::time::Instant::now() < deadline, "timed out");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        let answered = Arc::new(AtomicU64::new(0));
        let spawn = |i: u32| {
            let (journal, answered, completed) =
                (journal.clone(), answered.clone(), completed.clone());
            std::thread::spawn(move || {
                journal.append(&record(i)).unwrap();
                let syncs = completed.load(Ordering::SeqCst);
                answered.fetch_add(1, Ordering::SeqCst);
                syncs
            })
        };
        // Batch 1: one writer, held in its fsync.
        let first = spawn(0);
        wait_for(&|| entered.load(Ordering::SeqCst) == 1);
        // Batch 2: 31 writers enqueue behind it.
        let second: Vec<_> = (1..32).map(spawn).collect();
        wait_for(&|| lock(&journal.state).enqueued == 32);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            answered.load(Ordering::SeqCst),
            0,
            "answered before fsync 1"
        );
        release(0);
        assert!(first.join().unwrap() >= 1);
        // The second batch's leader is in fsync 2: its writers wait.
        wait_for(&|| entered.load(Ordering::SeqCst) == 2);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            answered.load(Ordering::SeqCst),
            1,
            "a batch-2 writer was answered before fsync 2 completed"
        );
        release(1);
        for w in second {
            assert!(w.join().unwrap() >= 2, "answered before its covering fsync");
        }
        assert_eq!(answered.load(Ordering::SeqCst), 32);
        let stats = journal.stats();
        assert_eq!(stats.appends, 32);
        assert_eq!(stats.fsyncs, 2, "31 appends shared one fsync: {stats:?}");
    }

    /// A directory on tmpfs when there is one (these tests reopen files
    /// thousands of times, each with an fsync), else a plain one.
    fn scratch() -> tempfile::TempDir {
        tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap())
    }

    /// Five one-record batches, then a last batch of three records spanning
    /// more than two pages. Returns the file as written up to its durable
    /// end, and where the last batch starts.
    fn five_and_a_big_batch(path: &Path) -> (Vec<u8>, usize) {
        let (journal, _) = open_collect(path).unwrap();
        for i in 0..5 {
            journal.append(&record(i)).unwrap();
        }
        let start = journal.stats().durable_len as usize;
        let tickets: Vec<Ticket> = (0..3).map(|i| journal.enqueue(&big(i)).unwrap()).collect();
        for t in &tickets {
            journal.wait(t).unwrap();
        }
        assert_eq!(journal.stats().fsyncs, 6, "the three records are one batch");
        let end = journal.stats().durable_len as usize;
        assert!(end - start > 2 * 4096 + 100);
        drop(journal);
        (fs::read(path).unwrap()[..end].to_vec(), start)
    }

    fn big(i: u8) -> Vec<u8> {
        vec![b'a' + i; 3000]
    }

    /// A power loss during the last batch's pwrite can leave any of its
    /// pages on disk, in space written ahead with zeros: cut at every byte
    /// with zeros after the cut (a header whose length landed, the rest
    /// zeros, included), cut with nothing after it, and a zeroed page in the
    /// middle of the batch with the pages around it landed. Each is a torn
    /// tail: the five earlier records load, the file is cut back to them, and
    /// the journal appends on.
    #[test]
    fn a_torn_last_batch_is_dropped_in_every_shape() {
        let dir = scratch();
        let path = dir.path().join("j");
        let (full, start) = five_and_a_big_batch(&path);
        let mut whole = full.clone();
        whole.extend_from_slice(&[0u8; 8192]);
        fs::write(&path, &whole).unwrap();
        let (_, seen) = open_collect(&path).unwrap();
        assert_eq!(seen.len(), 8, "the file as written loads whole");
        let five: Vec<Vec<u8>> = (0..5).map(record).collect();
        let torn = dir.path().join("torn");
        let check = |content: &[u8], what: &str, append: bool| {
            fs::write(&torn, content).unwrap();
            let (journal, seen) = open_collect(&torn).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(seen, five, "{what}");
            assert_eq!(fs::metadata(&torn).unwrap().len(), start as u64, "{what}");
            if append {
                journal.append(&record(9)).unwrap();
                drop(journal);
                assert_eq!(open_collect(&torn).unwrap().1.len(), 6, "{what}");
            }
        };
        for cut in start..full.len() {
            let mut padded = full[..cut].to_vec();
            padded.resize(full.len() + 8192, 0);
            check(
                &padded,
                &format!("cut at {cut}, zeros after"),
                cut % 101 == 0,
            );
            check(&full[..cut], &format!("cut at {cut}"), false);
        }
        // Every page of the batch zeroed in turn, the others landed.
        let first_page = start / 4096;
        for page in first_page..full.len().div_ceil(4096) {
            let mut holed = whole.clone();
            let from = (page * 4096).max(start);
            let to = ((page + 1) * 4096).min(full.len());
            holed[from..to].fill(0);
            check(&holed, &format!("page {page} zeroed"), true);
        }
    }

    /// Rewrites the header of the batch holding `record_at` so that it
    /// verifies again (a record damaged inside a batch that landed whole).
    fn reseal(content: &mut [u8], record_at: usize) {
        let mut at = MAGIC.len();
        loop {
            let (len, _) = batch_header(&content[at..at + 16]).unwrap();
            let end = at + 16 + len as usize;
            if record_at < end {
                seal_batch(&mut content[at..end]);
                return;
            }
            at = end;
        }
    }

    /// A damaged batch followed by a verified one, or a bad record inside a
    /// verified batch, is corruption: refused, naming the file and the
    /// offset, and the file is not touched.
    #[test]
    fn corruption_before_the_tail_is_refused_with_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (journal, _) = open_collect(&path).unwrap();
        let offsets: Vec<u64> = (0..4)
            .map(|i| journal.append(&record(i)).unwrap())
            .collect();
        drop(journal);
        let good = fs::read(&path).unwrap();
        let batch = |i: usize| offsets[i] - BATCH_HEADER;
        let cases: Vec<(Vec<u8>, u64, &str)> = vec![
            // Inside a verified batch: the record's own checksums.
            {
                let mut bad = good.clone();
                bad[(offsets[1] + RECORD_HEADER + 2) as usize] ^= 0x40;
                reseal(&mut bad, offsets[1] as usize);
                (bad, offsets[1], "bad checksum")
            },
            {
                let mut bad = good.clone();
                bad[offsets[2] as usize] ^= 0x40;
                reseal(&mut bad, offsets[2] as usize);
                (bad, offsets[2], "bad record length")
            },
            // A batch that does not verify, with verified ones after it.
            {
                let mut bad = good.clone();
                bad[(offsets[1] + RECORD_HEADER + 2) as usize] ^= 0x40;
                (bad, batch(1), "bad batch checksum")
            },
            {
                let mut bad = good.clone();
                bad[batch(2) as usize..offsets[2] as usize].fill(0);
                (bad, batch(2), "bad batch header")
            },
        ];
        for (bad, at, what) in cases {
            fs::write(&path, &bad).unwrap();
            let err = open_collect(&path).err().unwrap();
            match &err {
                OpenError::Corrupt { offset, .. } => assert_eq!(*offset, at, "{what}"),
                other => panic!("expected corruption, got {other}"),
            }
            let text = err.to_string();
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(
                text.contains(&format!("offset {at}")) && text.contains(what),
                "{text}"
            );
            assert_eq!(fs::read(&path).unwrap(), bad, "left as it was");
        }
        fs::write(&path, b"not a journal at all").unwrap();
        assert!(matches!(
            open_collect(&path),
            Err(OpenError::Corrupt { offset: 0, .. })
        ));
    }

    /// Failures keep no history: each batch's outcome lives in a cell its
    /// tickets share, so many failed batches leave the journal's state as
    /// small as before, and a ticket from before them still answers right.
    #[test]
    fn failed_batches_leave_nothing_behind_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open_collect(&dir.path().join("j")).unwrap().0;
        let early = journal.enqueue(&record(0)).unwrap();
        journal.wait(&early).unwrap();
        let failing = journal.enqueue(&record(1)).unwrap();
        journal.set_hooks(Hooks {
            write: Some(Arc::new(|_: &File, _: &[u8], _: u64| {
                Err(io::Error::from_raw_os_error(28))
            })),
            sync: None,
        });
        for i in 0..2000 {
            assert!(journal.append(&record(i)).is_err());
        }
        // The first failed batch carried `failing` too.
        assert_eq!(journal.failure_count(), 2000);
        assert_eq!(journal.outcome(&early), Outcome::Durable);
        assert_eq!(journal.outcome(&failing), Outcome::Failed);
        assert!(journal.wait(&failing).is_err());
        // Nothing per failure: the only per-batch memory is the cell the
        // pending batch's tickets share.
        let st = lock(&journal.state);
        assert!(st.pending.is_empty() && st.pending_records == 0);
        assert_eq!(Arc::strong_count(&st.batch), 1);
        drop(st);
        journal.set_hooks(Hooks::default());
        journal.append(&record(7)).unwrap();
        assert_eq!(journal.stats().appends, 2, "failed records never count");
    }

    /// A compaction syncs the bulk of its new file while appends go on:
    /// writers are paused only for the tail copy, its small sync and the rename.
    #[test]
    fn appends_go_on_while_a_compaction_syncs_its_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let journal = Arc::new(open_collect(&path).unwrap().0);
        let keep = journal.append(&record(1)).unwrap();
        let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let go_rx = Mutex::new(go_rx);
        let calls = AtomicU64::new(0);
        journal.set_rewrite_sync(Some(Arc::new(move |file: &File| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                let _ = entered_tx.send(());
                let _ = go_rx.lock().unwrap().recv();
            }
            file.sync_data()
        })));
        let compactor = {
            let journal = journal.clone();
            std::thread::spawn(move || {
                let mut rewrite = journal.begin_rewrite().unwrap();
                let payload = journal.read_record(rewrite.source(), keep, None).unwrap();
                rewrite.push(&payload).unwrap();
                let owner = Mutex::new(Vec::new());
                journal
                    .finish_rewrite(rewrite, &owner, |v, shift| v.push(*shift))
                    .unwrap();
            })
        };
        entered_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the compaction syncs its new file");
        // The big sync is in progress: an append is answered meanwhile.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let writer = {
            let journal = journal.clone();
            std::thread::spawn(move || {
                let at = journal.append(&record(2));
                let _ = done_tx.send(());
                at
            })
        };
        let answered = done_rx.recv_timeout(Duration::from_secs(5));
        go_tx.send(()).unwrap();
        compactor.join().unwrap();
        writer.join().unwrap().unwrap();
        assert!(
            answered.is_ok(),
            "an append waited for the compaction's sync of the whole new file"
        );
        drop(Arc::try_unwrap(journal).ok().unwrap());
        assert_eq!(open_collect(&path).unwrap().1, vec![record(1), record(2)]);
    }

    /// A write that fails (the disk is full: /dev/full) fails the whole
    /// batch, acknowledges nothing, leaves the file as it was, and the next
    /// append succeeds.
    #[test]
    fn a_failed_write_fails_the_batch_and_acknowledges_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let journal = Arc::new(open_collect(&path).unwrap().0);
        journal.append(&record(0)).unwrap();
        let before = fs::read(&path).unwrap();
        let full = Arc::new(AtomicBool::new(true));
        let f = full.clone();
        journal.set_hooks(Hooks {
            write: Some(Arc::new(move |file: &File, buf: &[u8], at: u64| {
                if f.load(Ordering::SeqCst) {
                    // Half the batch lands, then the disk is full.
                    file.write_all_at(&buf[..buf.len() / 2], at)?;
                    let mut dev_full = OpenOptions::new().write(true).open("/dev/full")?;
                    std::io::Write::write_all(&mut dev_full, buf)
                } else {
                    file.write_all_at(buf, at)
                }
            })),
            sync: None,
        });
        let results: Vec<_> = (0..8)
            .map(|i| {
                let journal = journal.clone();
                std::thread::spawn(move || journal.append(&record(100 + i)))
            })
            .map(|t| t.join().unwrap())
            .collect();
        for r in &results {
            let err = r.as_ref().expect_err("nothing is acknowledged");
            assert_eq!(err.raw_os_error(), Some(28), "{err}");
        }
        let durable = journal.stats().durable_len as usize;
        assert_eq!(
            fs::read(&path).unwrap(),
            before[..durable],
            "cut back to the durable length"
        );
        assert_eq!(journal.stats().appends, 1);
        full.store(false, Ordering::SeqCst);
        journal.append(&record(1)).unwrap();
        // Only acknowledged records count: the failed eight do not.
        assert_eq!(journal.stats().appends, 2);
        assert_eq!(journal.stats().failures, journal.failure_count());
        drop(results);
        let journal = Arc::try_unwrap(journal).ok().unwrap();
        drop(journal);
        assert_eq!(open_collect(&path).unwrap().1, vec![record(0), record(1)]);
    }

    /// An fsync error (EIO) fails the batch the same way.
    #[test]
    fn a_failed_fsync_fails_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let journal = open_collect(&path).unwrap().0;
        journal.append(&record(0)).unwrap();
        journal.set_hooks(Hooks {
            write: None,
            sync: Some(Arc::new(|_: &File| Err(io::Error::from_raw_os_error(5)))),
        });
        assert_eq!(
            journal.append(&record(1)).unwrap_err().raw_os_error(),
            Some(5)
        );
        journal.set_hooks(Hooks::default());
        journal.append(&record(2)).unwrap();
        drop(journal);
        assert_eq!(open_collect(&path).unwrap().1, vec![record(0), record(2)]);
    }

    /// Lines: a last line without its newline is dropped with its number.
    #[test]
    fn a_torn_last_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lines");
        fs::write(&path, "a\nb\nc").unwrap();
        let spec = Spec {
            format: Format::Lines,
            initial: b"# header\n",
            record_name: "a line",
        };
        let mut lines = Vec::new();
        let journal = Journal::open(&path, spec, |r| {
            lines.push((r.number, String::from_utf8_lossy(r.payload).to_string()));
            Ok(())
        })
        .unwrap();
        assert_eq!(lines, [(1, "a".to_string()), (2, "b".to_string())]);
        journal.append(b"d").unwrap();
        assert!(journal.append(b"e\nf").is_err());
        assert_eq!(fs::read_to_string(&path).unwrap(), "a\nb\nd\n");
        let err = Journal::open(&path, spec, |r| {
            if r.payload == b"b" {
                Err("no b".into())
            } else {
                Ok(())
            }
        })
        .err()
        .unwrap();
        assert!(err.to_string().ends_with("lines:2: no b"), "{err}");
    }

    /// A compaction keeps what the owner copies plus everything appended
    /// meanwhile, at shifted offsets; the rest is gone from the file.
    #[test]
    fn a_rewrite_keeps_copied_and_later_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let journal = open_collect(&path).unwrap().0;
        let secret = b"drop me".to_vec();
        journal.append(&secret).unwrap();
        let keep = journal.append(&record(1)).unwrap();
        let mut rewrite = journal.begin_rewrite().unwrap();
        let payload = journal.read_record(rewrite.source(), keep, None).unwrap();
        let moved = rewrite.push(&payload).unwrap();
        // Appended after the snapshot point: carried over by the journal.
        let later = journal.append(&record(2)).unwrap();
        let owner = Mutex::new(Vec::new());
        journal
            .finish_rewrite(rewrite, &owner, |offsets, shift| {
                offsets.push(shift.tail(later).unwrap());
                assert_eq!(shift.tail(keep), None);
            })
            .unwrap();
        let later_now = owner.lock().unwrap()[0];
        let file = journal.file();
        assert_eq!(journal.read_record(&file, moved, None).unwrap(), record(1));
        assert_eq!(
            journal.read_record(&file, later_now, None).unwrap(),
            record(2)
        );
        journal.append(&record(3)).unwrap();
        drop(journal);
        let content = fs::read(&path).unwrap();
        assert!(!content.windows(secret.len()).any(|w| w == secret));
        assert_eq!(
            open_collect(&path).unwrap().1,
            vec![record(1), record(2), record(3)]
        );
        assert!(!dir.path().join("j.compact").exists());
    }

    fn wait_for(what: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !what() {
            assert!(std::time::Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn extending(journal: &Journal) -> bool {
        lock(&journal.state).extending.is_some()
    }

    /// Zeros ahead are written off the batches' path, not by a batch that
    /// found no room: past the first batch of a new file no batch writes
    /// zeros, and every record is there, in order, after a reopen.
    #[test]
    fn zeros_are_written_ahead_off_the_batches_path() {
        let dir = scratch();
        let path = dir.path().join("j");
        let journal = Arc::new(open_collect(&path).unwrap().0);
        let threads: Vec<_> = (0..4u8)
            .map(|w| {
                let journal = journal.clone();
                std::thread::spawn(move || {
                    for i in 0..450u32 {
                        let mut payload = vec![b'a' + w; 8000];
                        payload[..4].copy_from_slice(&i.to_le_bytes());
                        journal.append(&payload).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // The last zeros may still be on their way; one more batch after
        // them plans more if the room is short.
        wait_for(|| !extending(&journal));
        journal.append(&record(0)).unwrap();
        wait_for(|| !extending(&journal));
        let stats = journal.stats();
        assert_eq!(stats.preallocations_inline, 1, "{stats:?}");
        assert!(stats.preallocations_ahead >= 2, "{stats:?}");
        assert!(stats.zero_syncs >= 2 * PREALLOCATE / ZERO_STEP, "{stats:?}");
        {
            let st = lock(&journal.state);
            assert!(st.allocated >= st.durable_end + PREALLOCATE / 2);
            assert!(fs::metadata(&path).unwrap().len() >= st.allocated);
        }
        drop(journal);
        let seen = open_collect(&path).unwrap().1;
        assert_eq!(seen.len(), 1801);
        for w in 0..4u8 {
            let mine: Vec<u32> = seen
                .iter()
                .filter(|r| r.len() == 8000 && r[4] == b'a' + w)
                .map(|r| u32::from_le_bytes([r[0], r[1], r[2], r[3]]))
                .collect();
            assert_eq!(mine, (0..450).collect::<Vec<_>>(), "writer {w}");
        }
    }

    /// A gate a hook can be held at until the test opens it. It opens when
    /// dropped too, so that a failing test ends instead of hanging in the
    /// journal's close (which waits for the held zeros).
    struct Gate(Arc<(Mutex<bool>, Condvar)>);

    /// Waits until the gate shared as `gate` is open.
    fn pass(gate: &(Mutex<bool>, Condvar)) {
        let mut open = gate.0.lock().unwrap_or_else(PoisonError::into_inner);
        while !*open {
            open = gate.1.wait(open).unwrap_or_else(PoisonError::into_inner);
        }
    }

    impl Gate {
        fn open(&self) {
            *(self.0).0.lock().unwrap_or_else(PoisonError::into_inner) = true;
            (self.0).1.notify_all();
        }
    }

    impl Drop for Gate {
        fn drop(&mut self) {
            self.open();
        }
    }

    /// Where the zero writer is held.
    #[derive(Clone, Copy, PartialEq)]
    enum Hold {
        /// Before its first step's pwrite: its zeros land only once released.
        Write,
        /// In its first step's fsync: its zeros are written, not yet synced.
        Sync,
    }

    /// Appends 30 kB records until zeros are being written ahead, holding
    /// their writer at `at` until the returned gate opens. The appends
    /// themselves return: nobody waits for the zeros.
    fn hold_zeros_ahead(journal: &Journal, at: Hold) -> Gate {
        let shared = Arc::new((Mutex::new(false), Condvar::new()));
        let held = Arc::new(AtomicBool::new(false));
        let hook = |hold: Hold| {
            let (gate, held) = (shared.clone(), held.clone());
            move || {
                if hold == at {
                    held.store(true, Ordering::SeqCst);
                    pass(&gate);
                }
            }
        };
        let (before_write, before_sync) = (hook(Hold::Write), hook(Hold::Sync));
        journal.set_zeros_hooks(Hooks {
            write: Some(Arc::new(move |file: &File, buf: &[u8], at: u64| {
                before_write();
                file.write_all_at(buf, at)
            })),
            sync: Some(Arc::new(move |file: &File| {
                before_sync();
                file.sync_data()
            })),
        });
        let big = vec![b'z'; 30_000];
        for _ in 0..100 {
            journal.append(&big).unwrap();
            if extending(journal) {
                wait_for(|| held.load(Ordering::SeqCst));
                return Gate(shared);
            }
        }
        panic!("no zeros were written ahead after 3 MB of records");
    }

    /// Batches go on while zeros are written ahead; a failure meanwhile cuts
    /// the file back, and the zeros then stop and count for nothing: the next
    /// batch writes its own, and lands.
    #[test]
    fn a_cut_stops_zeros_being_written_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let journal = Arc::new(open_collect(&path).unwrap().0);
        let gate = hold_zeros_ahead(&journal, Hold::Sync);
        // Batches go on meanwhile, below the room already there.
        journal.append(&record(1)).unwrap();
        let durable = journal.stats().durable_len;
        journal.set_hooks(Hooks {
            write: Some(Arc::new(|_: &File, _: &[u8], _: u64| {
                Err(io::Error::from_raw_os_error(28))
            })),
            sync: None,
        });
        assert!(journal.append(&record(2)).is_err());
        assert_eq!(fs::metadata(&path).unwrap().len(), durable, "cut back");
        gate.open();
        wait_for(|| !extending(&journal));
        assert_eq!(
            lock(&journal.state).allocated,
            durable,
            "zeros written before the cut are not counted as room"
        );
        journal.set_hooks(Hooks::default());
        journal.set_zeros_hooks(Hooks::default());
        journal.append(&record(3)).unwrap();
        assert_eq!(journal.stats().preallocations_inline, 2);
        drop(Arc::try_unwrap(journal).ok().unwrap());
        let seen = open_collect(&path).unwrap().1;
        assert_eq!(&seen[seen.len() - 2..], &[record(1), record(3)]);
    }

    /// Zeros held before their write across a cut land after it, past the
    /// old room: a batch after the cut that reaches there waits for them,
    /// and is whole after a reopen.
    #[test]
    fn zeros_that_land_after_a_cut_never_cover_a_later_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let journal = Arc::new(open_collect(&path).unwrap().0);
        let gate = hold_zeros_ahead(&journal, Hold::Write);
        let old_room = lock(&journal.state).allocated;
        journal.set_hooks(Hooks {
            write: Some(Arc::new(|_: &File, _: &[u8], _: u64| {
                Err(io::Error::from_raw_os_error(5))
            })),
            sync: None,
        });
        assert!(journal.append(&record(1)).is_err());
        journal.set_hooks(Hooks::default());
        // Reaches past the old room, where the held zeros will land.
        assert!(journal.stats().durable_len + HUGE as u64 > old_room);
        a_huge_append_waits_for(gate, journal, &path, "written before stale zeros landed");
    }

    /// Bytes of a record that reaches past the room zeros are held short of.
    const HUGE: usize = 2_500_000;

    /// Appends a [`HUGE`] record that must wait for the zeros held at
    /// `gate`: it is still pending after a while (`early` says what it would
    /// mean otherwise), lands whole once the gate opens, and is the last
    /// record after a reopen.
    fn a_huge_append_waits_for(gate: Gate, journal: Arc<Journal>, path: &Path, early: &str) {
        let huge = vec![b'h'; HUGE];
        let append = {
            let (journal, huge) = (journal.clone(), huge.clone());
            std::thread::spawn(move || journal.append(&huge).unwrap())
        };
        wait_for(|| lock(&journal.state).pending_records == 1);
        // It cannot be written while the zeros are held; give a wrong
        // journal the time to show it.
        std::thread::sleep(Duration::from_millis(100));
        assert!(!append.is_finished(), "{early}");
        gate.open();
        let at = append.join().unwrap();
        let file = journal.file();
        assert_eq!(journal.read_record(&file, at, None).unwrap(), huge);
        drop(file);
        drop(Arc::try_unwrap(journal).ok().unwrap());
        assert_eq!(open_collect(path).unwrap().1.last(), Some(&huge));
    }

    /// A batch that would end past the room written so far waits for the
    /// zeros being written ahead (they would land over its records), then
    /// lands whole.
    #[test]
    fn a_batch_that_does_not_fit_waits_for_zeros_being_written_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let journal = Arc::new(open_collect(&path).unwrap().0);
        let gate = hold_zeros_ahead(&journal, Hold::Write);
        a_huge_append_waits_for(
            gate,
            journal,
            &path,
            "written beside zeros being written ahead",
        );
    }

    /// A compaction while zeros are written ahead for the old file: batches
    /// on the new file do not wait for them, they count for nothing there,
    /// and the new file gets zeros ahead of its own through its own
    /// description.
    #[test]
    fn a_compaction_replaces_the_file_zeros_are_written_ahead_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let journal = Arc::new(open_collect(&path).unwrap().0);
        let gate = hold_zeros_ahead(&journal, Hold::Write);
        let keep = journal.append(&record(1)).unwrap();
        let mut rewrite = journal.begin_rewrite().unwrap();
        let payload = journal.read_record(rewrite.source(), keep, None).unwrap();
        rewrite.push(&payload).unwrap();
        let owner = Mutex::new(());
        journal.finish_rewrite(rewrite, &owner, |_, _| {}).unwrap();
        // Past the new file's room, with the old file's zeros still held:
        // lands without waiting for them.
        let second = {
            let journal = journal.clone();
            std::thread::spawn(move || journal.append(&record(2)).unwrap())
        };
        wait_for(|| second.is_finished());
        second.join().unwrap();
        assert!(extending(&journal));
        gate.open();
        wait_for(|| !extending(&journal));
        let ahead = journal.stats().preallocations_ahead;
        let durable = {
            let st = lock(&journal.state);
            assert!(
                st.allocated < st.durable_end + PREALLOCATE,
                "old zeros count for nothing"
            );
            st.durable_end
        };
        journal.set_zeros_hooks(Hooks::default());
        let big = vec![b'y'; 30_000];
        for _ in 0..100 {
            journal.append(&big).unwrap();
        }
        wait_for(|| !extending(&journal));
        let stats = journal.stats();
        assert_eq!(stats.preallocations_ahead, ahead + 1, "{stats:?}");
        let allocated = lock(&journal.state).allocated;
        assert!(fs::metadata(&path).unwrap().len() >= allocated);
        assert!(
            allocated > durable + PREALLOCATE,
            "the new file has room ahead"
        );
        drop(Arc::try_unwrap(journal).ok().unwrap());
        let seen = open_collect(&path).unwrap().1;
        assert_eq!(seen.len(), 102);
        assert_eq!(&seen[..2], &[record(1), record(2)]);
    }

    /// Closing the journal waits for the zeros' step in progress, so that a
    /// reopen in the same process never meets zeros written for the old one.
    #[test]
    fn closing_waits_for_zeros_being_written_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let journal = open_collect(&path).unwrap().0;
        let gate = hold_zeros_ahead(&journal, Hold::Write);
        let durable = journal.stats().durable_len;
        let closing = std::thread::spawn(move || drop(journal));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!closing.is_finished(), "closed with zeros still to land");
        gate.open();
        closing.join().unwrap();
        let (journal, seen) = open_collect(&path).unwrap();
        assert_eq!(journal.stats().durable_len, durable);
        assert!(seen.iter().all(|r| r == &vec![b'z'; 30_000]));
    }
}
