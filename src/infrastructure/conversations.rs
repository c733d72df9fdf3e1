//! Conversation logs on one shared journal (`conversations.journal`): the
//! [`ConversationStore`] adapter.
//!
//! Every conversation's messages go into the same Framed journal, so appends
//! to thousands of conversations share fsyncs and the daemon holds one file
//! descriptor, not one per conversation. Records (payloads, little endian):
//!
//! | type | fields |
//! |---|---|
//! | 1 put | conv u64, seq u64, sender u64, sent_at u64, edited_at u64 (0: never), client_id bytes, body (rest) |
//! | 2 delete | conv u64, seq u64 |
//! | 3 drop | conv u64 (the whole log) |
//! | 4 conv | conv u64, last_seq u64 (written by compaction) |
//!
//! An edit is a put with the same seq; the last put of a seq wins.
//!
//! **Memory.** Per message, one 16-byte [`Entry`]: the record's offset, its
//! payload length (or the deleted mark) and a 32-bit hash of the client id;
//! never the text. Pages are read from disk with `pread` and their checksums
//! checked. Entries sit in one `Vec` per conversation indexed by seq, so
//! paging is a slice walk.
//!
//! **Sequence numbers** are assigned under the index lock at enqueue time, so
//! the order of seqs is the order of records in the file. A failed batch
//! fails every record not yet durable (see the journal); before the next
//! enqueue the store forgets the failed tail of each log, so seqs stay dense.
//! An append is visible to readers only once durable.
//!
//! **Idempotence.** A client id seen among the last [`DEDUP_WINDOW`] messages
//! of the same conversation, from the same sender, is a retry: the original's seq is returned and
//! nothing is written. The window costs no memory beyond the 4-byte hash in
//! each entry (a hash match is confirmed against the record on disk). A retry
//! arriving while its original is still being written waits for it (the
//! record cannot be read before it is durable), then is answered as its
//! duplicate. A retry arriving after more than that many newer messages is
//! stored again.
//!
//! **Edits.** An edit is visible once durable. Several edits of one message
//! may be in flight; each writer, once its edit is durable, points the entry
//! at it if it is newer (by LSN) than the edit already installed, so a later
//! edit that fails never hides an earlier acknowledged one.
//!
//! **Pages** are picked under the index lock and read after releasing it;
//! the entries are then checked again under the lock, and a message deleted
//! meanwhile is left out (one moved by an edit or a compaction is read again).
//!
//! **Deletion.** A deleted message (or log) is removed from the index before
//! its delete record is written, so it is never served from that moment
//! (should the write fail, it stays hidden until a restart, when it would
//! return: the delete was not acknowledged). Its content stays in the file
//! until the next compaction, which copies only live records into a new file
//! and renames it over the old one. A delete also forgets the message's edits
//! in flight: they are never installed, and never copied by a compaction.
//! A compaction snapshots the logs (their visible length, which its `conv`
//! records carry) and the durable edits not yet installed under one lock,
//! and moves offsets by their old value.
//!
//! **Compaction** runs in the background once dead bytes (deleted, edited
//! over, dropped) are at least half the file and 4 MiB, at once after a whole
//! log is dropped (a deleted room's history must leave the disk), or on
//! request ([`ConversationFile::compact`]). Writers wait only while the records
//! appended during it are copied and the new file is synced and renamed.
//!
//! **Locks.** `index` (Mutex) guards the logs, the in-flight appends and
//! edits, and the failure count already settled; it is held for memory work,
//! for the enqueue (a memcpy into the journal's buffer), and for the rare
//! `pread` that confirms a client-id match or reads a message being edited;
//! never across a write or an fsync. `settled` (Condvar, with `index`) wakes a
//! retry waiting for its original to become durable. Order: `index` ->
//! journal state; a compaction takes journal maintenance -> `index`.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use log::{info, warn};

use super::codec::{Dec, Enc};
use super::journal::{Format, Journal, OpenError, Outcome, Spec, Ticket};
use crate::application::store::{
    Anchor, Appended, ConversationId, ConversationStore, Message, NewMessage, StorageError,
};
use crate::domain::UserId;

/// The file in the data directory.
pub const CONVERSATIONS_FILE: &str = "conversations.journal";
/// How many of a conversation's latest messages a client id is checked against.
pub const DEDUP_WINDOW: usize = 256;
/// The largest message body.
pub const MAX_BODY: usize = 256 * 1024;
/// The longest client id.
pub const MAX_CLIENT_ID: usize = 128;
/// Dead bytes before a compaction starts by itself (and at least half the file).
const COMPACT_AFTER: u64 = 4 << 20;

const PUT: u8 = 1;
const DELETE: u8 = 2;
const DROP: u8 = 3;
const CONV: u8 = 4;

const DELETED: u32 = u32::MAX;
/// The largest seq a record may carry: a larger one is refused at open
/// rather than grown into (a damaged or hostile file must not exhaust memory).
const MAX_SEQ: u64 = 1 << 32;

/// One message in memory: where its record is, nothing of its content.
#[derive(Clone, Copy, Debug)]
struct Entry {
    offset: u64,
    /// Payload length, or [`DELETED`].
    len: u32,
    /// A hash of the client id (0: none).
    client: u32,
}

impl Entry {
    fn live(&self) -> bool {
        self.len != DELETED
    }

    const GONE: Entry = Entry {
        offset: 0,
        len: DELETED,
        client: 0,
    };
}

#[derive(Default)]
struct Log {
    /// `entries[i]` is seq `i + 1`.
    entries: Vec<Entry>,
}

impl Log {
    /// Makes room up to `seq` (missing seqs are deleted ones: compaction drops them).
    fn reach(&mut self, seq: u64) {
        while (self.entries.len() as u64) < seq {
            self.entries.push(Entry::GONE);
        }
    }
}

/// The edits of one message not yet settled by their writers.
#[derive(Default)]
struct Edits {
    /// Each edit in flight (enqueue order): its ticket, offset and length.
    inflight: Vec<(Ticket, u64, u32)>,
    /// The LSN of the edit the entry points at (0: the original put).
    installed: u64,
}

#[derive(Default)]
struct Index {
    logs: HashMap<ConversationId, Log>,
    /// Appends enqueued and not yet known to be durable.
    appends: HashMap<(ConversationId, u64), Ticket>,
    /// Edits in flight per message; the newest durable one is what the entry
    /// points at, whichever writer gets back first.
    edits: HashMap<(ConversationId, u64), Edits>,
    /// Journal failures already settled (the failed tails forgotten).
    failures_seen: u64,
    /// Bytes of records no longer live.
    dead: u64,
}

/// Called by `page` between picking entries and reading them (tests).
#[cfg(test)]
type PageHook = Box<dyn Fn() + Send + Sync>;

struct Inner {
    journal: Journal,
    index: Mutex<Index>,
    settled: Condvar,
    compacting: AtomicBool,
    /// A compaction was asked for while one ran: run again after it.
    compact_again: AtomicBool,
    #[cfg(test)]
    page_hook: Mutex<Option<PageHook>>,
    /// Called by `edit` between its wait and taking the lock again (tests).
    #[cfg(test)]
    edit_hook: Mutex<Option<PageHook>>,
}

/// The conversation logs. Cheap to clone (shared).
#[derive(Clone)]
pub struct ConversationFile {
    inner: Arc<Inner>,
}

use crate::sync::lock;

fn client_hash(id: Option<&str>) -> u32 {
    id.map_or(0, |id| crc32fast::hash(id.as_bytes()).max(1))
}

fn put_record(conv: ConversationId, seq: u64, m: &NewMessage<'_>, edited_at: u64) -> Vec<u8> {
    Enc::new(PUT)
        .u64(conv.0)
        .u64(seq)
        .u64(m.sender.0)
        .u64(m.sent_at)
        .u64(edited_at)
        .bytes(m.client_id.unwrap_or("").as_bytes())
        .tail(m.body)
        .done()
}

/// A put record's fields.
struct Put<'a> {
    conv: ConversationId,
    seq: u64,
    sender: u64,
    sent_at: u64,
    edited_at: u64,
    client_id: &'a str,
    body: &'a [u8],
}

fn parse_put(payload: &[u8]) -> Option<Put<'_>> {
    let mut d = Dec(payload);
    (d.u8()? == PUT).then_some(())?;
    Some(Put {
        conv: ConversationId(d.u64()?),
        seq: d.u64()?,
        sender: d.u64()?,
        sent_at: d.u64()?,
        edited_at: d.u64()?,
        client_id: d.str()?,
        body: d.tail(),
    })
}

fn bad_data(why: String) -> StorageError {
    StorageError::Io(io::Error::new(io::ErrorKind::InvalidData, why))
}

impl ConversationFile {
    /// Opens (or creates) the logs at `path`, rebuilding the index.
    ///
    /// # Errors
    /// I/O, corruption (with file and offset), or a record that does not decode.
    pub fn open(path: &Path) -> Result<ConversationFile, OpenError> {
        let mut index = Index::default();
        let spec = Spec {
            format: Format::Framed,
            initial: b"",
            record_name: "a message",
        };
        let journal = Journal::open(path, spec, |r| {
            replay(&mut index, r.offset, r.payload)
                .ok_or_else(|| "unreadable conversation record".to_string())
        })?;
        for log in index.logs.values_mut() {
            log.entries.shrink_to_fit();
        }
        info!(
            "loaded {} conversations ({} messages) from {}",
            index.logs.len(),
            index.logs.values().map(|l| l.entries.len()).sum::<usize>(),
            path.display()
        );
        Ok(ConversationFile {
            inner: Arc::new(Inner {
                journal,
                index: Mutex::new(index),
                settled: Condvar::new(),
                compacting: AtomicBool::new(false),
                compact_again: AtomicBool::new(false),
                #[cfg(test)]
                page_hook: Mutex::new(None),
                #[cfg(test)]
                edit_hook: Mutex::new(None),
            }),
        })
    }

    pub fn journal(&self) -> &Journal {
        &self.inner.journal
    }

    /// Bytes of records in the file that are no longer live (the compaction trigger).
    pub fn dead_bytes(&self) -> u64 {
        lock(&self.inner.index).dead
    }

    /// Messages held in memory (entries, deleted ones included), for figures.
    pub fn entries(&self) -> usize {
        lock(&self.inner.index)
            .logs
            .values()
            .map(|l| l.entries.len())
            .sum()
    }

    /// Copies the live records into a new file and switches to it. Runs
    /// beside appends (see the module documentation).
    ///
    /// # Errors
    /// I/O; the old file then stays in use, untouched.
    pub fn compact(&self) -> io::Result<()> {
        self.inner.compact()
    }
}

/// Applies one record at open. `None`: it does not decode.
fn replay(index: &mut Index, offset: u64, payload: &[u8]) -> Option<()> {
    let mut d = Dec(payload);
    match d.u8()? {
        PUT => {
            let put = parse_put(payload)?;
            let at = usize::try_from(put.seq.checked_sub(1)?).ok()?;
            (put.seq <= MAX_SEQ).then_some(())?;
            let log = index.logs.entry(put.conv).or_default();
            log.reach(put.seq - 1);
            let entry = Entry {
                offset,
                len: u32::try_from(payload.len()).ok()?,
                client: client_hash(Some(put.client_id).filter(|c| !c.is_empty())),
            };
            match log.entries.get_mut(at) {
                Some(old) => {
                    if old.live() {
                        index.dead += u64::from(old.len);
                    }
                    *old = entry;
                }
                None => log.entries.push(entry),
            }
        }
        DELETE => {
            let conv = ConversationId(d.u64()?);
            let seq = d.u64()?;
            d.end()?;
            let at = usize::try_from(seq.checked_sub(1)?).ok()?;
            (seq <= MAX_SEQ).then_some(())?;
            let log = index.logs.entry(conv).or_default();
            log.reach(seq);
            if let Some(e) = log.entries.get_mut(at) {
                if e.live() {
                    index.dead += u64::from(e.len);
                }
                *e = Entry::GONE;
            }
        }
        DROP => {
            let conv = ConversationId(d.u64()?);
            d.end()?;
            if let Some(log) = index.logs.remove(&conv) {
                index.dead += log
                    .entries
                    .iter()
                    .filter(|e| e.live())
                    .map(|e| u64::from(e.len))
                    .sum::<u64>();
            }
        }
        CONV => {
            let conv = ConversationId(d.u64()?);
            let last = d.u64()?;
            d.end()?;
            (last <= MAX_SEQ).then_some(())?;
            index.logs.entry(conv).or_default().reach(last);
        }
        _ => return None,
    }
    Some(())
}

impl Inner {
    /// Forgets the records of failed batches: appends (the failed tail of
    /// each log, so the next seq is the first failed one) and edits.
    fn settle(&self, idx: &mut Index) {
        let failures = self.journal.failure_count();
        if failures == idx.failures_seen {
            return;
        }
        let failed: Vec<(ConversationId, u64)> = idx
            .appends
            .iter()
            .filter(|(_, t)| self.journal.outcome(t) == Outcome::Failed)
            .map(|(k, _)| *k)
            .collect();
        let mut cut: HashMap<ConversationId, u64> = HashMap::new();
        for (conv, seq) in failed {
            idx.appends.remove(&(conv, seq));
            let first = cut.entry(conv).or_insert(seq);
            *first = (*first).min(seq);
        }
        for (conv, first) in cut {
            if let Some(log) = idx.logs.get_mut(&conv) {
                log.entries.truncate(first as usize - 1);
            }
        }
        for edits in idx.edits.values_mut() {
            edits
                .inflight
                .retain(|(t, _, _)| self.journal.outcome(t) != Outcome::Failed);
        }
        idx.edits.retain(|_, e| !e.inflight.is_empty());
        idx.failures_seen = failures;
        self.settled.notify_all();
    }

    /// How many of a log's seqs readers may see: up to the first append not yet durable.
    fn visible(&self, idx: &Index, conv: ConversationId, log: &Log) -> u64 {
        let mut n = log.entries.len() as u64;
        while n > 0 {
            match idx.appends.get(&(conv, n)) {
                Some(t) if self.journal.outcome(t) != Outcome::Durable => n -= 1,
                _ => break,
            }
        }
        n
    }

    /// Enqueues `record` under the index lock, after settling failures;
    /// `None` when a failure came in between (settle and try again).
    fn enqueue(&self, idx: &mut Index, record: &[u8]) -> Result<Option<Ticket>, StorageError> {
        Ok(self
            .journal
            .enqueue_checked(record, Some(idx.failures_seen))?)
    }

    fn read(&self, file: &File, e: &Entry) -> Result<Vec<u8>, StorageError> {
        Ok(self.journal.read_record(file, e.offset, Some(e.len))?)
    }

    /// Starts a background compaction when dead bytes call for one, or
    /// `now` (a whole log was dropped: its content should leave the disk
    /// soon, not when the file happens to be half dead). A request while one
    /// runs makes it run once more, since it may have copied the content.
    fn maybe_compact(self: &Arc<Self>, dead: u64, now: bool) {
        let len = self.journal.stats().durable_len;
        let due = now || (dead >= COMPACT_AFTER && dead * 2 >= len);
        if !due {
            return;
        }
        if now {
            self.compact_again.store(true, Ordering::Release);
        }
        if self.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.clone();
        let spawned = std::thread::Builder::new()
            .name("compact-conversations".into())
            .spawn(move || {
                loop {
                    inner.compact_again.store(false, Ordering::Release);
                    if let Err(err) = inner.compact() {
                        warn!("conversation compaction failed: {err}; the old file stays in use");
                        break;
                    }
                    if !inner.compact_again.load(Ordering::Acquire) {
                        break;
                    }
                }
                inner.compacting.store(false, Ordering::Release);
                // A request that came after the last look but before the
                // flag was cleared found a compaction running: serve it.
                if inner.compact_again.load(Ordering::Acquire) {
                    inner.maybe_compact(0, true);
                }
            });
        if spawned.is_err() {
            self.compacting.store(false, Ordering::Release);
        }
    }

    fn compact(&self) -> io::Result<()> {
        let mut rewrite = self.journal.begin_rewrite()?;
        let snapshot_end = rewrite.snapshot_end();
        // One snapshot, under one lock: each log's visible entries and the
        // durable edits not yet installed by their writers (live messages
        // only, newer than what the entry points at, in LSN order).
        type Snap = (ConversationId, u64, Vec<Entry>, Vec<(u64, u32)>);
        let (snapshot, dead_then): (Vec<Snap>, u64) = {
            let mut idx = lock(&self.index);
            self.settle(&mut idx);
            let mut snapshot = Vec::with_capacity(idx.logs.len());
            for (conv, log) in &idx.logs {
                let visible = self.visible(&idx, *conv, log);
                let entries = log.entries[..visible as usize].to_vec();
                let mut edits: Vec<(u64, u64, u32)> = Vec::new();
                for (seq, e) in entries.iter().enumerate() {
                    if !e.live() {
                        continue;
                    }
                    let Some(pending) = idx.edits.get(&(*conv, seq as u64 + 1)) else {
                        continue;
                    };
                    for (t, offset, len) in &pending.inflight {
                        if t.lsn > pending.installed
                            && *offset < snapshot_end
                            && self.journal.outcome(t) == Outcome::Durable
                        {
                            edits.push((t.lsn, *offset, *len));
                        }
                    }
                }
                edits.sort_unstable();
                let edits = edits.into_iter().map(|(_, o, l)| (o, l)).collect();
                snapshot.push((*conv, visible, entries, edits));
            }
            (snapshot, idx.dead)
        };
        // Old offset -> new offset, for every record copied.
        let mut moved: HashMap<u64, u64> = HashMap::new();
        let mut live = 0u64;
        for (conv, visible, entries, edits) in snapshot {
            rewrite.push(&Enc::new(CONV).u64(conv.0).u64(visible).done())?;
            // The entries' records first, then the edits: the last put of a seq wins.
            let records = entries
                .iter()
                .filter(|e| e.live())
                .map(|e| (e.offset, e.len))
                .chain(edits);
            for (offset, len) in records {
                if offset >= snapshot_end {
                    continue;
                }
                let payload = self
                    .journal
                    .read_record(rewrite.source(), offset, Some(len))?;
                moved.insert(offset, rewrite.push(&payload)?);
                live += u64::from(len);
            }
        }
        let before = self.journal.stats().durable_len;
        self.journal
            .finish_rewrite(rewrite, &self.index, |idx, shift| {
                for (conv, log) in idx.logs.iter_mut() {
                    for (i, e) in log.entries.iter_mut().enumerate() {
                        if !e.live() {
                            continue;
                        }
                        if let Some(new) = shift
                            .tail(e.offset)
                            .or_else(|| moved.get(&e.offset).copied())
                        {
                            e.offset = new;
                        } else {
                            // Cannot happen: a live entry before the snapshot point was copied.
                            warn!(
                                "conversation {conv} seq {} lost its record in compaction",
                                i + 1
                            );
                            *e = Entry::GONE;
                        }
                    }
                }
                for edits in idx.edits.values_mut() {
                    for (_, offset, _) in edits.inflight.iter_mut() {
                        // Edits not copied are never installed (older than
                        // what the entry shows, or of a deleted message).
                        if let Some(new) =
                            shift.tail(*offset).or_else(|| moved.get(offset).copied())
                        {
                            *offset = new;
                        }
                    }
                }
                // What died before the snapshot is gone with the old file;
                // what died since (deletes, edits) is in the new one.
                idx.dead = idx.dead.saturating_sub(dead_then);
            })?;
        info!(
            "compacted {} from {before} to {} bytes ({live} bytes of live messages)",
            self.journal.path().display(),
            self.journal.stats().durable_len
        );
        Ok(())
    }
}

impl ConversationStore for ConversationFile {
    fn append(&self, conv: ConversationId, msg: NewMessage<'_>) -> Result<Appended, StorageError> {
        if msg.body.len() > MAX_BODY {
            return Err(StorageError::TooLarge {
                len: msg.body.len(),
                max: MAX_BODY,
            });
        }
        let client_id = msg.client_id.filter(|c| !c.is_empty());
        if let Some(c) = client_id
            && c.len() > MAX_CLIENT_ID
        {
            return Err(StorageError::TooLarge {
                len: c.len(),
                max: MAX_CLIENT_ID,
            });
        }
        let hash = client_hash(client_id);
        let inner = &self.inner;
        let (seq, ticket) = {
            let mut idx = lock(&inner.index);
            loop {
                inner.settle(&mut idx);
                if let Some(id) = client_id {
                    match self.find_retry(&idx, conv, hash, msg.sender, id)? {
                        Retry::No => {}
                        Retry::Found(seq) => {
                            return Ok(Appended {
                                seq,
                                duplicate: true,
                            });
                        }
                        Retry::Wait(seq) => {
                            // A candidate still on its way to the disk (its
                            // record cannot be read before it is durable):
                            // wait for it, then look again.
                            while idx
                                .appends
                                .get(&(conv, seq))
                                .is_some_and(|t| inner.journal.outcome(t) == Outcome::Pending)
                            {
                                idx = inner
                                    .settled
                                    .wait(idx)
                                    .unwrap_or_else(PoisonError::into_inner);
                            }
                            continue;
                        }
                    }
                }
                if let Some(enqueued) = self.enqueue_put(&mut idx, conv, &msg, client_id, hash)? {
                    break enqueued;
                }
            }
        };
        let written = inner.journal.wait(&ticket);
        let mut idx = lock(&inner.index);
        match written {
            Ok(()) => {
                idx.appends.remove(&(conv, seq));
                inner.settled.notify_all();
                Ok(Appended {
                    seq,
                    duplicate: false,
                })
            }
            Err(err) => {
                inner.settle(&mut idx);
                Err(StorageError::Io(err))
            }
        }
    }

    fn page(
        &self,
        conv: ConversationId,
        anchor: Anchor,
        limit: usize,
    ) -> Result<Vec<Message>, StorageError> {
        let inner = &self.inner;
        let (file, picked) = {
            let idx = lock(&inner.index);
            let Some(log) = idx.logs.get(&conv) else {
                return Ok(Vec::new());
            };
            let visible = inner.visible(&idx, conv, log);
            let mut picked: Vec<(u64, Entry)> = Vec::with_capacity(limit.min(1024));
            match anchor {
                Anchor::Before(before) => {
                    let mut seq = before.saturating_sub(1).min(visible);
                    while seq >= 1 && picked.len() < limit {
                        let e = log.entries[seq as usize - 1];
                        if e.live() {
                            picked.push((seq, e));
                        }
                        seq -= 1;
                    }
                    picked.reverse();
                }
                Anchor::After(after) => {
                    let mut seq = after.saturating_add(1).max(1);
                    while seq <= visible && picked.len() < limit {
                        let e = log.entries[seq as usize - 1];
                        if e.live() {
                            picked.push((seq, e));
                        }
                        seq += 1;
                    }
                }
            }
            (inner.journal.file(), picked)
        };
        #[cfg(test)]
        if let Some(hook) = &*lock(&inner.page_hook) {
            hook();
        }
        let mut read: Vec<(u64, Entry, Vec<u8>)> = Vec::with_capacity(picked.len());
        for (seq, e) in picked {
            read.push((seq, e, inner.read(&file, &e)?));
        }
        // Read without the lock: a message deleted (or edited, or moved by a
        // compaction) meanwhile is checked again under it. A deleted one is
        // left out (its delete may have been acknowledged); one whose record
        // moved is read again where it is now.
        for _ in 0..8 {
            let (file, stale) = {
                let idx = lock(&inner.index);
                let now = |seq: u64| {
                    idx.logs
                        .get(&conv)
                        .and_then(|l| l.entries.get(seq as usize - 1))
                        .copied()
                        .filter(Entry::live)
                };
                read.retain(|(seq, _, _)| now(*seq).is_some());
                let stale: Vec<(usize, Entry)> = read
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (seq, e, _))| {
                        now(*seq)
                            .filter(|n| n.offset != e.offset || n.len != e.len)
                            .map(|n| (i, n))
                    })
                    .collect();
                if stale.is_empty() {
                    break;
                }
                (inner.journal.file(), stale)
            };
            for (i, e) in stale {
                read[i].1 = e;
                read[i].2 = inner.read(&file, &e)?;
            }
        }
        read.into_iter()
            .map(|(seq, _, payload)| {
                let put = parse_put(&payload).ok_or_else(|| {
                    bad_data(format!("conversation {conv} seq {seq}: unreadable record"))
                })?;
                Ok(Message {
                    seq,
                    sender: UserId(put.sender),
                    sent_at: put.sent_at,
                    edited_at: (put.edited_at != 0).then_some(put.edited_at),
                    client_id: (!put.client_id.is_empty()).then(|| put.client_id.to_string()),
                    body: put.body.to_vec(),
                })
            })
            .collect()
    }

    fn edit(
        &self,
        conv: ConversationId,
        seq: u64,
        body: &[u8],
        edited_at: u64,
    ) -> Result<bool, StorageError> {
        if body.len() > MAX_BODY {
            return Err(StorageError::TooLarge {
                len: body.len(),
                max: MAX_BODY,
            });
        }
        let inner = &self.inner;
        let (ticket, len) = {
            let mut idx = lock(&inner.index);
            loop {
                inner.settle(&mut idx);
                let Some(log) = idx.logs.get(&conv) else {
                    return Ok(false);
                };
                if seq == 0 || seq > inner.visible(&idx, conv, log) {
                    return Ok(false);
                }
                let e = log.entries[seq as usize - 1];
                if !e.live() {
                    return Ok(false);
                }
                let original = inner.read(&inner.journal.file(), &e)?;
                let put = parse_put(&original).ok_or_else(|| {
                    bad_data(format!("conversation {conv} seq {seq}: unreadable record"))
                })?;
                let msg = NewMessage {
                    sender: UserId(put.sender),
                    sent_at: put.sent_at,
                    client_id: Some(put.client_id),
                    body,
                };
                let record = put_record(conv, seq, &msg, edited_at.max(1));
                let Some(ticket) = inner.enqueue(&mut idx, &record)? else {
                    continue;
                };
                let len = record.len() as u32;
                idx.edits.entry((conv, seq)).or_default().inflight.push((
                    ticket.clone(),
                    ticket.offset,
                    len,
                ));
                break (ticket, len);
            }
        };
        let written = inner.journal.wait(&ticket);
        #[cfg(test)]
        if let Some(hook) = &*lock(&inner.edit_hook) {
            hook();
        }
        let mut idx = lock(&inner.index);
        if let Err(err) = written {
            inner.settle(&mut idx);
            return Err(StorageError::Io(err));
        }
        // The entry points at the newest durable edit: each writer installs
        // its own if it is newer than the one installed, whatever the fate
        // of edits after it (a later one may still fail).
        let mut dead = u64::from(len);
        let key = (conv, seq);
        let mut install = None;
        if let Some(edits) = idx.edits.get_mut(&key) {
            if let Some(at) = edits.inflight.iter().position(|(t, _, _)| *t == ticket) {
                let (_, offset, len) = edits.inflight.remove(at);
                if ticket.lsn > edits.installed {
                    edits.installed = ticket.lsn;
                    install = Some((offset, len));
                }
            }
            if edits.inflight.is_empty() {
                idx.edits.remove(&key);
            }
        }
        // (No edits entry: the message was deleted meanwhile.)
        if let Some((offset, len)) = install
            && let Some(e) = idx
                .logs
                .get_mut(&conv)
                .and_then(|l| l.entries.get_mut(seq as usize - 1))
                .filter(|e| e.live())
        {
            dead = u64::from(e.len);
            e.offset = offset;
            e.len = len;
        }
        idx.dead += dead;
        let dead = idx.dead;
        drop(idx);
        inner.maybe_compact(dead, false);
        Ok(true)
    }

    fn delete(&self, conv: ConversationId, seq: u64) -> Result<bool, StorageError> {
        let inner = &self.inner;
        let record = Enc::new(DELETE).u64(conv.0).u64(seq).done();
        let ticket = {
            let mut idx = lock(&inner.index);
            loop {
                inner.settle(&mut idx);
                let Some(log) = idx.logs.get(&conv) else {
                    return Ok(false);
                };
                if seq == 0
                    || seq > inner.visible(&idx, conv, log)
                    || !log.entries[seq as usize - 1].live()
                {
                    return Ok(false);
                }
                let Some(ticket) = inner.enqueue(&mut idx, &record)? else {
                    continue;
                };
                // Hidden from now on, before the record is even written.
                if let Some(e) = idx
                    .logs
                    .get_mut(&conv)
                    .and_then(|l| l.entries.get_mut(seq as usize - 1))
                {
                    let len = e.len;
                    *e = Entry::GONE;
                    idx.dead += u64::from(len);
                }
                // Its edits in flight are forgotten: never installed (their
                // writers count them dead), never copied by a compaction
                // (which would bring the text back).
                idx.edits.remove(&(conv, seq));
                break ticket;
            }
        };
        inner.journal.wait(&ticket)?;
        let dead = lock(&inner.index).dead;
        inner.maybe_compact(dead, false);
        Ok(true)
    }

    fn last_seq(&self, conv: ConversationId) -> Result<u64, StorageError> {
        let idx = lock(&self.inner.index);
        Ok(idx
            .logs
            .get(&conv)
            .map_or(0, |log| self.inner.visible(&idx, conv, log)))
    }

    fn delete_log(&self, conv: ConversationId) -> Result<bool, StorageError> {
        let inner = &self.inner;
        let record = Enc::new(DROP).u64(conv.0).done();
        let ticket = {
            let mut idx = lock(&inner.index);
            loop {
                inner.settle(&mut idx);
                if !idx.logs.contains_key(&conv) {
                    return Ok(false);
                }
                let Some(ticket) = inner.enqueue(&mut idx, &record)? else {
                    continue;
                };
                if let Some(log) = idx.logs.remove(&conv) {
                    idx.dead += log
                        .entries
                        .iter()
                        .filter(|e| e.live())
                        .map(|e| u64::from(e.len))
                        .sum::<u64>();
                }
                idx.appends.retain(|(c, _), _| *c != conv);
                idx.edits.retain(|(c, _), _| *c != conv);
                break ticket;
            }
        };
        inner.journal.wait(&ticket)?;
        let dead = lock(&inner.index).dead;
        inner.maybe_compact(dead, true);
        Ok(true)
    }
}

/// What the dedup window says about a client id.
enum Retry {
    No,
    /// The original, durable.
    Found(u64),
    /// A candidate not yet durable: wait for it before reading it.
    Wait(u64),
}

impl ConversationFile {
    /// A message among the last [`DEDUP_WINDOW`] with this client id.
    fn find_retry(
        &self,
        idx: &Index,
        conv: ConversationId,
        hash: u32,
        sender: UserId,
        client_id: &str,
    ) -> Result<Retry, StorageError> {
        let Some(log) = idx.logs.get(&conv) else {
            return Ok(Retry::No);
        };
        let n = log.entries.len();
        let file = self.inner.journal.file();
        for i in (n.saturating_sub(DEDUP_WINDOW)..n).rev() {
            let e = log.entries[i];
            if e.client != hash || !e.live() {
                continue;
            }
            let seq = i as u64 + 1;
            if idx
                .appends
                .get(&(conv, seq))
                .is_some_and(|t| self.inner.journal.outcome(t) != Outcome::Durable)
            {
                return Ok(Retry::Wait(seq));
            }
            let payload = self.inner.read(&file, &e)?;
            // Client ids are the sender's own: another sender's message with
            // the same id is a different message.
            if parse_put(&payload).is_some_and(|p| p.client_id == client_id && p.sender == sender.0)
            {
                return Ok(Retry::Found(seq));
            }
        }
        Ok(Retry::No)
    }

    /// Enqueues a new message under the index lock; `None` when a failure
    /// came in between (settle and go again).
    fn enqueue_put(
        &self,
        idx: &mut Index,
        conv: ConversationId,
        msg: &NewMessage<'_>,
        client_id: Option<&str>,
        hash: u32,
    ) -> Result<Option<(u64, Ticket)>, StorageError> {
        let inner = &self.inner;
        let seq = idx.logs.get(&conv).map_or(0, |l| l.entries.len() as u64) + 1;
        let record = put_record(conv, seq, &NewMessage { client_id, ..*msg }, 0);
        let Some(ticket) = inner.enqueue(idx, &record)? else {
            return Ok(None);
        };
        idx.logs.entry(conv).or_default().entries.push(Entry {
            offset: ticket.offset,
            len: record.len() as u32,
            client: hash,
        });
        idx.appends.insert((conv, seq), ticket.clone());
        Ok(Some((seq, ticket)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infrastructure::journal::Hooks;
    use std::fs;

    fn msg<'a>(body: &'a str, client_id: Option<&'a str>) -> NewMessage<'a> {
        NewMessage {
            sender: UserId(7),
            sent_at: 1000,
            client_id,
            body: body.as_bytes(),
        }
    }

    fn bodies(
        store: &ConversationFile,
        conv: u64,
        anchor: Anchor,
        limit: usize,
    ) -> Vec<(u64, String)> {
        store
            .page(ConversationId(conv), anchor, limit)
            .unwrap()
            .into_iter()
            .map(|m| (m.seq, String::from_utf8(m.body).unwrap()))
            .collect()
    }

    /// Seqs are dense per conversation; pages go before and after a seq; a
    /// reload rebuilds the same logs.
    #[test]
    fn appends_get_dense_seqs_and_pages_read_them_back_after_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONVERSATIONS_FILE);
        let store = ConversationFile::open(&path).unwrap();
        for i in 1..=10 {
            let a = store
                .append(ConversationId(1), msg(&format!("one {i}"), None))
                .unwrap();
            assert_eq!(
                a,
                Appended {
                    seq: i,
                    duplicate: false
                }
            );
            let b = store
                .append(ConversationId(2), msg(&format!("two {i}"), None))
                .unwrap();
            assert_eq!(b.seq, i);
        }
        for store in [store.clone(), ConversationFile::open(&path).unwrap()] {
            assert_eq!(store.last_seq(ConversationId(1)).unwrap(), 10);
            assert_eq!(store.last_seq(ConversationId(9)).unwrap(), 0);
            let latest = bodies(&store, 1, Anchor::Before(u64::MAX), 3);
            assert_eq!(
                latest,
                [
                    (8, "one 8".into()),
                    (9, "one 9".into()),
                    (10, "one 10".into())
                ]
            );
            assert_eq!(
                bodies(&store, 2, Anchor::Before(3), 5),
                [(1, "two 1".into()), (2, "two 2".into())]
            );
            assert_eq!(
                bodies(&store, 2, Anchor::After(8), 5),
                [(9, "two 9".into()), (10, "two 10".into())]
            );
            assert!(bodies(&store, 2, Anchor::After(10), 5).is_empty());
        }
    }

    /// Client ids are each sender's own: another sender's message with the
    /// same id is stored, not taken for a retry (nobody can suppress
    /// someone else's message by reusing its id).
    #[test]
    fn another_senders_message_with_the_same_client_id_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConversationFile::open(&dir.path().join(CONVERSATIONS_FILE)).unwrap();
        let first = store
            .append(ConversationId(1), msg("from 7", Some("c-1")))
            .unwrap();
        let other = NewMessage {
            sender: UserId(8),
            ..msg("from 8", Some("c-1"))
        };
        let second = store.append(ConversationId(1), other).unwrap();
        assert_eq!((first.seq, second.seq, second.duplicate), (1, 2, false));
        let retry = store.append(ConversationId(1), other).unwrap();
        assert_eq!((retry.seq, retry.duplicate), (2, true));
    }

    /// A retry with the same client id gets the original seq and stores nothing.
    #[test]
    fn an_append_is_idempotent_on_the_client_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONVERSATIONS_FILE);
        let store = ConversationFile::open(&path).unwrap();
        let first = store
            .append(ConversationId(1), msg("hi", Some("c-1")))
            .unwrap();
        store
            .append(ConversationId(1), msg("other", Some("c-2")))
            .unwrap();
        let again = store
            .append(ConversationId(1), msg("hi", Some("c-1")))
            .unwrap();
        assert_eq!(
            again,
            Appended {
                seq: first.seq,
                duplicate: true
            }
        );
        // Another conversation has its own ids.
        assert_eq!(
            store
                .append(ConversationId(2), msg("hi", Some("c-1")))
                .unwrap()
                .seq,
            1
        );
        let reopened = ConversationFile::open(&path).unwrap();
        assert!(
            reopened
                .append(ConversationId(1), msg("hi", Some("c-1")))
                .unwrap()
                .duplicate
        );
        assert_eq!(reopened.last_seq(ConversationId(1)).unwrap(), 2);
    }

    /// Edits replace the body and mark it; deletes hide at once; both survive a reload.
    #[test]
    fn edits_and_deletes_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONVERSATIONS_FILE);
        let store = ConversationFile::open(&path).unwrap();
        for i in 1..=4 {
            store
                .append(ConversationId(5), msg(&format!("m{i}"), None))
                .unwrap();
        }
        assert!(
            store
                .edit(ConversationId(5), 2, b"m2 edited", 2000)
                .unwrap()
        );
        assert!(store.delete(ConversationId(5), 3).unwrap());
        assert!(!store.delete(ConversationId(5), 3).unwrap());
        assert!(!store.edit(ConversationId(5), 3, b"x", 1).unwrap());
        assert!(!store.edit(ConversationId(5), 9, b"x", 1).unwrap());
        for store in [store.clone(), ConversationFile::open(&path).unwrap()] {
            let page = store.page(ConversationId(5), Anchor::After(0), 10).unwrap();
            let seen: Vec<(u64, &[u8], Option<u64>)> = page
                .iter()
                .map(|m| (m.seq, m.body.as_slice(), m.edited_at))
                .collect();
            assert_eq!(
                seen,
                [
                    (1, &b"m1"[..], None),
                    (2, &b"m2 edited"[..], Some(2000)),
                    (4, &b"m4"[..], None)
                ]
            );
            assert_eq!(store.last_seq(ConversationId(5)).unwrap(), 4);
        }
        // A whole log goes, and stays gone.
        assert!(store.delete_log(ConversationId(5)).unwrap());
        assert!(
            store
                .page(ConversationId(5), Anchor::After(0), 10)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            ConversationFile::open(&path)
                .unwrap()
                .last_seq(ConversationId(5))
                .unwrap(),
            0
        );
    }

    /// After a compaction no file under the data directory holds a deleted
    /// message's text, an edited message's old text, or a dropped log's; the
    /// rest reads back the same, before and after a reload, and seqs go on.
    #[test]
    fn deleted_text_is_absent_from_every_file_after_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONVERSATIONS_FILE);
        let store = ConversationFile::open(&path).unwrap();
        for i in 1..=20 {
            store
                .append(ConversationId(1), msg(&format!("keep-{i}"), None))
                .unwrap();
        }
        store
            .append(ConversationId(1), msg("SECRET-DELETED", None))
            .unwrap();
        store
            .append(ConversationId(1), msg("SECRET-EDITED", None))
            .unwrap();
        store
            .append(ConversationId(2), msg("SECRET-DROPPED", None))
            .unwrap();
        store.delete(ConversationId(1), 21).unwrap();
        store.edit(ConversationId(1), 22, b"now public", 5).unwrap();
        store.delete_log(ConversationId(2)).unwrap();
        let grep = |needle: &str| -> Vec<String> {
            fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    fs::read(p)
                        .unwrap()
                        .windows(needle.len())
                        .any(|w| w == needle.as_bytes())
                })
                .map(|p| p.display().to_string())
                .collect()
        };
        assert!(
            !grep("SECRET-DELETED").is_empty(),
            "still on disk before compaction"
        );
        store.compact().unwrap();
        for secret in ["SECRET-DELETED", "SECRET-EDITED", "SECRET-DROPPED"] {
            assert_eq!(grep(secret), Vec::<String>::new(), "{secret} still on disk");
        }
        for store in [store.clone(), ConversationFile::open(&path).unwrap()] {
            let page = bodies(&store, 1, Anchor::After(0), 100);
            assert_eq!(page.len(), 21);
            assert_eq!(page[20], (22, "now public".into()));
            assert_eq!(store.last_seq(ConversationId(1)).unwrap(), 22);
        }
        assert_eq!(
            store
                .append(ConversationId(1), msg("after", None))
                .unwrap()
                .seq,
            23
        );
        // A log whose last message was deleted keeps its seq after compaction.
        store.delete(ConversationId(1), 23).unwrap();
        store.compact().unwrap();
        assert_eq!(
            ConversationFile::open(&path)
                .unwrap()
                .last_seq(ConversationId(1))
                .unwrap(),
            23
        );
    }

    /// Writers on many conversations keep appending while compactions run:
    /// every acknowledged message reads back with its seq, before and after a reload.
    #[test]
    fn compaction_runs_concurrently_with_writers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONVERSATIONS_FILE);
        let store = ConversationFile::open(&path).unwrap();
        let writers: Vec<_> = (0..8u64)
            .map(|w| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut acked = Vec::new();
                    for i in 0..300u64 {
                        let conv = ConversationId(w % 4);
                        let body = format!("w{w} m{i}");
                        let a = store.append(conv, msg(&body, None)).unwrap();
                        if i % 3 == 0 {
                            store.delete(conv, a.seq).unwrap();
                        } else {
                            acked.push((conv, a.seq, body));
                        }
                    }
                    acked
                })
            })
            .collect();
        let compactor = {
            let store = store.clone();
            std::thread::spawn(move || {
                for _ in 0..10 {
                    store.compact().unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            })
        };
        let acked: Vec<_> = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        compactor.join().unwrap();
        assert!(store.journal().stats().rewrites >= 10);
        for store in [store.clone(), ConversationFile::open(&path).unwrap()] {
            let mut all = HashMap::new();
            for conv in 0..4 {
                for m in store
                    .page(ConversationId(conv), Anchor::After(0), 10_000)
                    .unwrap()
                {
                    all.insert((conv, m.seq), String::from_utf8(m.body).unwrap());
                }
                assert_eq!(store.last_seq(ConversationId(conv)).unwrap(), 600);
            }
            assert_eq!(all.len(), acked.len());
            for (conv, seq, body) in &acked {
                assert_eq!(all.get(&(conv.0, *seq)), Some(body));
            }
        }
    }

    /// A failed batch (disk full) answers an error, and the seq it would have
    /// had goes to the next append: seqs stay dense.
    #[test]
    fn a_failed_append_leaves_no_gap_in_the_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONVERSATIONS_FILE);
        let store = ConversationFile::open(&path).unwrap();
        store.append(ConversationId(1), msg("one", None)).unwrap();
        store.journal().set_hooks(Hooks {
            write: Some(Arc::new(|_: &File, _: &[u8], _: u64| {
                Err(io::Error::from_raw_os_error(28))
            })),
            sync: None,
        });
        match store.append(ConversationId(1), msg("lost", None)) {
            Err(StorageError::Io(err)) => assert_eq!(err.raw_os_error(), Some(28)),
            other => panic!("expected ENOSPC, got {other:?}"),
        }
        assert_eq!(store.last_seq(ConversationId(1)).unwrap(), 1);
        store.journal().set_hooks(Hooks::default());
        assert_eq!(
            store
                .append(ConversationId(1), msg("two", None))
                .unwrap()
                .seq,
            2
        );
        let reopened = ConversationFile::open(&path).unwrap();
        assert_eq!(
            bodies(&reopened, 1, Anchor::After(0), 10),
            [(1, "one".into()), (2, "two".into())]
        );
    }

    /// A gate a hook waits at until the test opens it; counts who arrived.
    struct Gate {
        open: Mutex<bool>,
        cv: Condvar,
        arrived: std::sync::atomic::AtomicUsize,
    }

    impl Gate {
        fn new() -> Arc<Gate> {
            Arc::new(Gate {
                open: Mutex::new(false),
                cv: Condvar::new(),
                arrived: std::sync::atomic::AtomicUsize::new(0),
            })
        }

        fn pass(&self) {
            self.arrived.fetch_add(1, Ordering::SeqCst);
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.cv.wait(open).unwrap();
            }
        }

        fn open(&self) {
            *self.open.lock().unwrap() = true;
            self.cv.notify_all();
        }

        fn await_arrivals(&self, n: usize) {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while self.arrived.load(Ordering::SeqCst) < n {
                assert!(
                    std::time::Instant::now() < deadline,
                    "nobody came to the gate"
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }

    fn until(what: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !what() {
            assert!(std::time::Instant::now() < deadline, "timed out");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Edit A of a message succeeds while edit B of the same message, after
    /// it, fails: A is what the message reads, before and after a reload.
    #[test]
    fn a_failed_later_edit_does_not_hide_an_acknowledged_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONVERSATIONS_FILE);
        let store = ConversationFile::open(&path).unwrap();
        let conv = ConversationId(1);
        store.append(conv, msg("original", None)).unwrap();
        // A's fsync is held until B has been enqueued; B's batch fails.
        let gate = Gate::new();
        let (g, count) = (
            gate.clone(),
            Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        );
        store.journal().set_hooks(Hooks {
            write: Some(Arc::new(|file: &File, buf: &[u8], at: u64| {
                if buf.windows(6).any(|w| w == b"edit B") {
                    return Err(io::Error::from_raw_os_error(28));
                }
                file.write_all_at(buf, at)
            })),
            sync: Some(Arc::new(move |file: &File| {
                if count.fetch_add(1, Ordering::SeqCst) == 0 {
                    g.pass();
                }
                file.sync_data()
            })),
        });
        use std::os::unix::fs::FileExt;
        let a = {
            let store = store.clone();
            std::thread::spawn(move || store.edit(conv, 1, b"edit A", 10))
        };
        gate.await_arrivals(1);
        let b = {
            let store = store.clone();
            std::thread::spawn(move || store.edit(conv, 1, b"edit B", 20))
        };
        until(|| {
            lock(&store.inner.index)
                .edits
                .get(&(conv, 1))
                .is_some_and(|e| e.inflight.len() == 2)
        });
        gate.open();
        assert!(a.join().unwrap().unwrap());
        assert!(b.join().unwrap().is_err());
        store.journal().set_hooks(Hooks::default());
        for store in [store.clone(), ConversationFile::open(&path).unwrap()] {
            assert_eq!(
                bodies(&store, 1, Anchor::After(0), 10),
                [(1, "edit A".into())]
            );
        }
    }

    /// An edit acknowledged while a compaction runs (its writer installs it
    /// between the compaction's snapshot and its switch) is kept.
    #[test]
    fn an_edit_installed_during_a_compaction_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONVERSATIONS_FILE);
        let store = ConversationFile::open(&path).unwrap();
        let conv = ConversationId(1);
        for i in 1..=3 {
            store.append(conv, msg(&format!("m{i}"), None)).unwrap();
        }
        // The edit is durable, its writer held before it installs it.
        let edit_gate = Gate::new();
        let g = edit_gate.clone();
        *lock(&store.inner.edit_hook) = Some(Box::new(move || g.pass()));
        let editor = {
            let store = store.clone();
            std::thread::spawn(move || store.edit(conv, 2, b"m2 edited", 5))
        };
        edit_gate.await_arrivals(1);
        // The compaction takes its snapshot, then waits in its first sync.
        let sync_gate = Gate::new();
        let g = sync_gate.clone();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        store
            .journal()
            .set_rewrite_sync(Some(Arc::new(move |file: &File| {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    g.pass();
                }
                file.sync_data()
            })));
        let compactor = {
            let store = store.clone();
            std::thread::spawn(move || store.compact())
        };
        sync_gate.await_arrivals(1);
        edit_gate.open();
        assert!(editor.join().unwrap().unwrap());
        sync_gate.open();
        compactor.join().unwrap().unwrap();
        for store in [store.clone(), ConversationFile::open(&path).unwrap()] {
            assert_eq!(
                bodies(&store, 1, Anchor::After(0), 10),
                [(1, "m1".into()), (2, "m2 edited".into()), (3, "m3".into())]
            );
        }
    }

    /// A message deleted while an edit of it is in flight stays deleted
    /// through a compaction: the edit is not copied, its text leaves the disk.
    #[test]
    fn a_deleted_message_does_not_come_back_through_its_edit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONVERSATIONS_FILE);
        let store = ConversationFile::open(&path).unwrap();
        let conv = ConversationId(1);
        store.append(conv, msg("m1", None)).unwrap();
        store.append(conv, msg("m2", None)).unwrap();
        let gate = Gate::new();
        let g = gate.clone();
        *lock(&store.inner.edit_hook) = Some(Box::new(move || g.pass()));
        let editor = {
            let store = store.clone();
            std::thread::spawn(move || store.edit(conv, 2, b"SECRET-EDIT", 5))
        };
        gate.await_arrivals(1);
        assert!(store.delete(conv, 2).unwrap());
        store.compact().unwrap();
        gate.open();
        assert!(editor.join().unwrap().unwrap());
        store.compact().unwrap();
        let disk = fs::read(&path).unwrap();
        assert!(
            !disk.windows(11).any(|w| w == b"SECRET-EDIT"),
            "the edit's text is on disk"
        );
        for store in [store.clone(), ConversationFile::open(&path).unwrap()] {
            assert_eq!(bodies(&store, 1, Anchor::After(0), 10), [(1, "m1".into())]);
        }
    }

    /// Two appends with the same client id at once: the second waits for
    /// the first to be durable (its record is not on disk before) and is
    /// answered as its duplicate.
    #[test]
    fn concurrent_retries_with_one_client_id_get_the_same_seq() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONVERSATIONS_FILE);
        let store = ConversationFile::open(&path).unwrap();
        let conv = ConversationId(1);
        store.append(conv, msg("before", None)).unwrap();
        // The original's batch is held before it is written.
        let gate = Gate::new();
        let (g, count) = (
            gate.clone(),
            Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        );
        store.journal().set_hooks(Hooks {
            write: Some(Arc::new(move |file: &File, buf: &[u8], at: u64| {
                if count.fetch_add(1, Ordering::SeqCst) == 0 {
                    g.pass();
                }
                use std::os::unix::fs::FileExt;
                file.write_all_at(buf, at)
            })),
            sync: None,
        });
        let first = {
            let store = store.clone();
            std::thread::spawn(move || store.append(conv, msg("hi", Some("c-1"))))
        };
        gate.await_arrivals(1);
        let retry = {
            let store = store.clone();
            std::thread::spawn(move || store.append(conv, msg("hi", Some("c-1"))))
        };
        std::thread::sleep(std::time::Duration::from_millis(30));
        gate.open();
        let first = first.join().unwrap().unwrap();
        let retry = retry.join().unwrap().unwrap();
        assert_eq!(
            first,
            Appended {
                seq: 2,
                duplicate: false
            }
        );
        assert_eq!(
            retry,
            Appended {
                seq: 2,
                duplicate: true
            }
        );
        assert_eq!(store.last_seq(conv).unwrap(), 2);
    }

    /// The dead-byte count after a compaction keeps what died during it.
    #[test]
    fn deletes_during_a_compaction_stay_counted_as_dead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONVERSATIONS_FILE);
        let store = ConversationFile::open(&path).unwrap();
        let conv = ConversationId(1);
        for i in 1..=3 {
            store
                .append(conv, msg(&format!("message {i}"), None))
                .unwrap();
        }
        store.delete(conv, 1).unwrap();
        assert!(store.dead_bytes() > 0);
        let gate = Gate::new();
        let (g, calls) = (
            gate.clone(),
            Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        );
        store
            .journal()
            .set_rewrite_sync(Some(Arc::new(move |file: &File| {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    g.pass();
                }
                file.sync_data()
            })));
        let compactor = {
            let store = store.clone();
            std::thread::spawn(move || store.compact())
        };
        gate.await_arrivals(1);
        let before = store.dead_bytes();
        assert!(store.delete(conv, 2).unwrap());
        let died = store.dead_bytes() - before;
        assert!(died > 0);
        gate.open();
        compactor.join().unwrap().unwrap();
        assert_eq!(
            store.dead_bytes(),
            died,
            "the delete made during the compaction"
        );
    }

    /// A compaction's CONV record holds the visible length: an append in
    /// flight that then fails is not counted, so no seq is skipped after a reload.
    #[test]
    fn a_compaction_writes_the_visible_length_of_a_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONVERSATIONS_FILE);
        let store = ConversationFile::open(&path).unwrap();
        let conv = ConversationId(1);
        store.append(conv, msg("one", None)).unwrap();
        let gate = Gate::new();
        let g = gate.clone();
        store.journal().set_hooks(Hooks {
            write: Some(Arc::new(move |_: &File, _: &[u8], _: u64| {
                g.pass();
                Err(io::Error::from_raw_os_error(28))
            })),
            sync: None,
        });
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || store.append(conv, msg("lost", None)))
        };
        gate.await_arrivals(1);
        let synced = Gate::new();
        let s = synced.clone();
        store
            .journal()
            .set_rewrite_sync(Some(Arc::new(move |file: &File| {
                s.arrived.fetch_add(1, Ordering::SeqCst);
                file.sync_data()
            })));
        let compactor = {
            let store = store.clone();
            std::thread::spawn(move || store.compact())
        };
        synced.await_arrivals(1);
        gate.open();
        assert!(writer.join().unwrap().is_err());
        compactor.join().unwrap().unwrap();
        store.journal().set_hooks(Hooks::default());
        assert_eq!(store.last_seq(conv).unwrap(), 1);
        assert_eq!(
            ConversationFile::open(&path)
                .unwrap()
                .last_seq(conv)
                .unwrap(),
            1
        );
    }

    /// A page read while a message of it is deleted (after the page picked
    /// it, before it read it) leaves the message out.
    #[test]
    fn a_page_does_not_return_a_message_deleted_while_it_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONVERSATIONS_FILE);
        let store = ConversationFile::open(&path).unwrap();
        let conv = ConversationId(1);
        for i in 1..=3 {
            store.append(conv, msg(&format!("m{i}"), None)).unwrap();
        }
        let deleter = store.clone();
        *lock(&store.inner.page_hook) = Some(Box::new(move || {
            assert!(deleter.delete(conv, 2).unwrap());
        }));
        assert_eq!(
            bodies(&store, 1, Anchor::After(0), 10),
            [(1, "m1".into()), (3, "m3".into())]
        );
    }

    /// Many edits of the same messages while compactions run: every message
    /// reads back with its last acknowledged edit, before and after a reload.
    #[test]
    fn edits_concurrent_with_compactions_are_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONVERSATIONS_FILE);
        let store = ConversationFile::open(&path).unwrap();
        for i in 1..=8 {
            store
                .append(ConversationId(1), msg(&format!("m{i}"), None))
                .unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let compactor = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    store.compact().unwrap();
                }
            })
        };
        let editors: Vec<_> = (1..=8u64)
            .map(|seq| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut last = String::new();
                    for n in 0..150 {
                        last = format!("m{seq} edit {n}");
                        assert!(
                            store
                                .edit(ConversationId(1), seq, last.as_bytes(), 1)
                                .unwrap()
                        );
                    }
                    (seq, last)
                })
            })
            .collect();
        let last: Vec<(u64, String)> = editors.into_iter().map(|e| e.join().unwrap()).collect();
        stop.store(true, Ordering::SeqCst);
        compactor.join().unwrap();
        for store in [store.clone(), ConversationFile::open(&path).unwrap()] {
            assert_eq!(bodies(&store, 1, Anchor::After(0), 10), last);
        }
    }
}
