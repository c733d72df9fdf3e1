//! `state.journal`: the small keyed records the capabilities need, on one
//! shared journal so that their writes share fsyncs. One [`StateFile`]
//! implements four ports:
//!
//! - [`KvStore`]: settings by (namespace, key) — profiles, blocks, mutes,
//!   follows. Bitcask-style: memory holds, per key, only where its latest
//!   record is (an ordered map, so a prefix lists a user's set); values are
//!   read from disk. A put is visible once durable; of several puts of a key
//!   in flight, each durable one is installed if it is newer (by LSN) than
//!   the write in force, so a later one that fails never hides it. A delete
//!   hides the key at once.
//! - [`ReceiptStore`]: delivered and read seq per user and conversation, held
//!   in memory (two numbers each) and journaled. Values only rise; a raise is
//!   read back and acknowledged once durable (a mark that an earlier one in
//!   flight covers waits for that write; one the durable value covers is
//!   answered at once).
//! - [`Inbox`]: per user, an ordered queue of notices. Memory holds the ids
//!   and record locations; bodies stay on disk. See "The inbox" below.
//! - [`IdSource`]: ids reserved in blocks of [`ID_BLOCK`]: a durable
//!   high-water mark per kind is written before any id of its block is handed
//!   out, and after a restart counting resumes at the mark, so no id is ever
//!   reused and none comes from a clock.
//!
//! Records (payloads, little endian; strings and byte strings u32-length-prefixed):
//!
//! | type | fields |
//! |---|---|
//! | 10 kv put | namespace, key, value (rest) |
//! | 11 kv delete | namespace, key |
//! | 20 receipt | user u64, conv u64, delivered u64, read u64 |
//! | 21 receipts forgotten | user u64 |
//! | 30 inbox push | user u64, id u64, created_at u64, kind, body (rest) |
//! | 31 inbox ack | user u64, through u64 |
//! | 32 inbox state | user u64, next_id u64, dropped u64 (written by compaction) |
//! | 40 id mark | kind u8, mark u64 |
//!
//! **The inbox.** A notice is visible once durable, and only below the
//! oldest notice of the same user still being written, so the user always
//! sees notices in id order. Delivery is at least once: notices stay until
//! the client acknowledges them (`ack` up to an id); a connection lost before
//! the acknowledgement gets them again at the next login. Bound: at most
//! [`InboxLimits::max_notices`] notices and [`InboxLimits::max_bytes`] of
//! bodies per user. Overflow drops the **oldest** notices (the newest are the
//! ones still relevant: the latest invitation, the latest follower) and
//! counts them; the count comes with the next delivery
//! ([`InboxBatch::dropped`]) so the client can say "N older notices were
//! dropped", and an acknowledgement resets it.
//!
//! **Deletion and compaction.** A deleted key or an acknowledged notice
//! leaves memory at once; its record stays in the file until compaction,
//! which writes the live state into a new file (receipts, id marks and inbox
//! counters from memory; kv values and notices copied from their records) and
//! renames it over the old one. It runs in the background once dead bytes
//! are at least half the file and 1 MiB, or on request ([`StateFile::compact`]).
//!
//! **Locks.** `index` (Mutex) guards all of the maps; held for memory work and
//! the enqueue, never across a write or an fsync. `ids_changed` (Condvar,
//! with `index`) wakes callers waiting for a block reservation. Order:
//! `index` -> journal state; compaction: journal maintenance -> `index`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use log::{info, warn};

use super::codec::{Dec, Enc};
use super::journal::{Format, Journal, OpenError, Outcome, Spec, Ticket};
use crate::application::store::{
    ConversationId, IdKind, IdSource, Inbox, InboxBatch, InboxNotice, KvStore, Receipt,
    ReceiptStore, StorageError,
};
use crate::domain::{GUEST_ID_BASE, UserId};

/// The file in the data directory.
pub const STATE_FILE: &str = "state.journal";
/// Ids reserved per durable mark.
pub const ID_BLOCK: u64 = 1024;
/// The largest kv value and inbox notice body.
pub const MAX_VALUE: usize = 64 * 1024;
/// The longest namespace, key or notice kind.
pub const MAX_NAME: usize = 1024;
const COMPACT_AFTER: u64 = 1 << 20;

const KV_PUT: u8 = 10;
const KV_DELETE: u8 = 11;
const RECEIPT: u8 = 20;
const RECEIPTS_FORGOTTEN: u8 = 21;
const INBOX_PUSH: u8 = 30;
const INBOX_ACK: u8 = 31;
const INBOX_STATE: u8 = 32;
const ID_MARK: u8 = 40;

/// How much one user's inbox may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboxLimits {
    pub max_notices: usize,
    /// Bytes of notice bodies.
    pub max_bytes: usize,
}

impl Default for InboxLimits {
    fn default() -> InboxLimits {
        InboxLimits {
            max_notices: 1000,
            max_bytes: 1 << 20,
        }
    }
}

/// Where a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc {
    offset: u64,
    len: u32,
}

#[derive(Clone, Copy, Debug)]
struct Item {
    id: u64,
    loc: Loc,
    size: usize,
}

struct Queue {
    next_id: u64,
    dropped: u64,
    bytes: usize,
    items: VecDeque<Item>,
}

impl Default for Queue {
    fn default() -> Queue {
        Queue {
            next_id: 1,
            dropped: 0,
            bytes: 0,
            items: VecDeque::new(),
        }
    }
}

impl Queue {
    /// Adds a durable notice in id order, then drops the oldest over the
    /// bound; returns the bytes of the records dropped (dead in the file).
    fn insert(&mut self, item: Item, limits: &InboxLimits) -> u64 {
        let at = self.items.partition_point(|i| i.id < item.id);
        self.items.insert(at, item);
        self.bytes += item.size;
        let mut dead = 0;
        while self.items.len() > limits.max_notices || self.bytes > limits.max_bytes {
            let Some(old) = self.items.pop_front() else {
                break;
            };
            self.bytes -= old.size;
            self.dropped = self.dropped.saturating_add(1);
            dead += u64::from(old.loc.len);
        }
        dead
    }

    fn ack(&mut self, through: u64) -> Vec<Item> {
        let n = self.items.partition_point(|i| i.id <= through);
        let gone: Vec<Item> = self.items.drain(..n).collect();
        self.bytes -= gone.iter().map(|i| i.size).sum::<usize>();
        self.dropped = 0;
        self.next_id = self.next_id.max(through.saturating_add(1));
        gone
    }
}

#[derive(Clone, Copy, Default)]
struct Ids {
    next: u64,
    mark: u64,
    reserving: bool,
}

fn floor(kind: IdKind) -> u64 {
    match kind {
        IdKind::Guest => GUEST_ID_BASE,
        _ => 1,
    }
}

/// The kv writes of one key not yet settled by their writers.
#[derive(Default)]
struct KvPending {
    /// Each write in flight (enqueue order): a put's location, or a delete.
    inflight: Vec<(Ticket, Option<Loc>)>,
    /// The LSN of the newest write in force (a put installed, or a delete
    /// enqueued): an older put that becomes durable later is not installed.
    installed: u64,
}

#[derive(Default)]
struct Index {
    /// "namespace\0key" -> the latest put.
    kv: BTreeMap<String, Loc>,
    /// Kv writes in flight per key.
    kv_pending: HashMap<String, KvPending>,
    /// Durable receipts.
    receipts: HashMap<UserId, HashMap<ConversationId, Receipt>>,
    /// Receipt writes in flight (enqueue order) with the value each writes.
    receipts_pending: HashMap<(UserId, ConversationId), Vec<(Ticket, Receipt)>>,
    inbox: HashMap<UserId, Queue>,
    /// Notices in flight, with where their records are and their body size.
    inbox_pending: HashMap<(UserId, u64), (Ticket, Loc, usize)>,
    ids: HashMap<u8, Ids>,
    dead: u64,
}

struct Inner {
    journal: Journal,
    index: Mutex<Index>,
    ids_changed: Condvar,
    limits: InboxLimits,
    compacting: AtomicBool,
}

/// The state file. Cheap to clone (shared).
#[derive(Clone)]
pub struct StateFile {
    inner: Arc<Inner>,
}

use crate::sync::lock;

fn kv_key(namespace: &str, key: &str) -> Result<String, StorageError> {
    if namespace.contains('\0') || key.contains('\0') {
        return Err(StorageError::Invalid(
            "a namespace or key holding a NUL byte",
        ));
    }
    if namespace.is_empty() {
        return Err(StorageError::Invalid("an empty namespace"));
    }
    if namespace.len() + key.len() > MAX_NAME {
        return Err(StorageError::TooLarge {
            len: namespace.len() + key.len(),
            max: MAX_NAME,
        });
    }
    Ok(format!("{namespace}\0{key}"))
}

fn too_large(len: usize) -> Result<(), StorageError> {
    if len > MAX_VALUE {
        return Err(StorageError::TooLarge {
            len,
            max: MAX_VALUE,
        });
    }
    Ok(())
}

fn receipt_record(user: UserId, conv: ConversationId, r: Receipt) -> Vec<u8> {
    Enc::new(RECEIPT)
        .u64(user.0)
        .u64(conv.0)
        .u64(r.delivered)
        .u64(r.read)
        .done()
}

fn bad_data(why: &str) -> StorageError {
    StorageError::Io(io::Error::new(io::ErrorKind::InvalidData, why.to_string()))
}

impl StateFile {
    /// Opens (or creates) the state file at `path`.
    ///
    /// # Errors
    /// I/O, corruption (with file and offset), or a record that does not decode.
    pub fn open(path: &Path, limits: InboxLimits) -> Result<StateFile, OpenError> {
        let mut index = Index::default();
        let spec = Spec {
            format: Format::Framed,
            initial: b"",
            record_name: "a state record",
        };
        let journal = Journal::open(path, spec, |r| {
            replay(&mut index, &limits, r.offset, r.payload)
                .ok_or_else(|| "unreadable state record".to_string())
        })?;
        for ids in index.ids.values_mut() {
            ids.next = ids.mark;
        }
        info!(
            "loaded {} settings, {} users' receipts, {} inboxes from {}",
            index.kv.len(),
            index.receipts.len(),
            index.inbox.len(),
            path.display()
        );
        Ok(StateFile {
            inner: Arc::new(Inner {
                journal,
                index: Mutex::new(index),
                ids_changed: Condvar::new(),
                limits,
                compacting: AtomicBool::new(false),
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

    /// Writes the live state into a new file and switches to it.
    ///
    /// # Errors
    /// I/O; the old file then stays in use, untouched.
    pub fn compact(&self) -> io::Result<()> {
        self.inner.compact()
    }
}

fn replay(index: &mut Index, limits: &InboxLimits, offset: u64, payload: &[u8]) -> Option<()> {
    let mut d = Dec(payload);
    let loc = Loc {
        offset,
        len: u32::try_from(payload.len()).ok()?,
    };
    match d.u8()? {
        KV_PUT => {
            let key = kv_key(d.str()?, d.str()?).ok()?;
            if let Some(old) = index.kv.insert(key, loc) {
                index.dead = index.dead.saturating_add(u64::from(old.len));
            }
        }
        KV_DELETE => {
            let key = kv_key(d.str()?, d.str()?).ok()?;
            d.end()?;
            if let Some(old) = index.kv.remove(&key) {
                index.dead = index.dead.saturating_add(u64::from(old.len));
            }
        }
        RECEIPT => {
            let (user, conv) = (UserId(d.u64()?), ConversationId(d.u64()?));
            let (delivered, read) = (d.u64()?, d.u64()?);
            d.end()?;
            let r = index
                .receipts
                .entry(user)
                .or_default()
                .entry(conv)
                .or_default();
            r.delivered = r.delivered.max(delivered);
            r.read = r.read.max(read);
        }
        RECEIPTS_FORGOTTEN => {
            let user = UserId(d.u64()?);
            d.end()?;
            index.receipts.remove(&user);
        }
        INBOX_PUSH => {
            let (user, id, _created_at) = (UserId(d.u64()?), d.u64()?, d.u64()?);
            let _kind = d.str()?;
            let size = d.tail().len();
            let q = index.inbox.entry(user).or_default();
            q.next_id = q.next_id.max(id.checked_add(1)?);
            let dead = q.insert(Item { id, loc, size }, limits);
            index.dead = index.dead.saturating_add(dead);
        }
        INBOX_ACK => {
            let (user, through) = (UserId(d.u64()?), d.u64()?);
            d.end()?;
            let q = index.inbox.entry(user).or_default();
            let dead = q
                .ack(through)
                .iter()
                .map(|i| u64::from(i.loc.len))
                .sum::<u64>();
            index.dead = index.dead.saturating_add(dead);
        }
        INBOX_STATE => {
            let (user, next_id, dropped) = (UserId(d.u64()?), d.u64()?, d.u64()?);
            d.end()?;
            let q = index.inbox.entry(user).or_default();
            q.next_id = q.next_id.max(next_id);
            q.dropped = dropped;
        }
        ID_MARK => {
            let kind = IdKind::from_code(d.u8()?)?;
            let mark = d.u64()?;
            d.end()?;
            // A mark so high that counting on from it would overflow is damage.
            mark.checked_add(ID_BLOCK)?;
            let ids = index.ids.entry(kind.code()).or_default();
            ids.mark = ids.mark.max(mark);
        }
        _ => return None,
    }
    Some(())
}

impl Inner {
    fn read(&self, file: &std::fs::File, loc: Loc) -> Result<Vec<u8>, StorageError> {
        Ok(self.journal.read_record(file, loc.offset, Some(loc.len))?)
    }

    fn enqueue(&self, record: &[u8]) -> Result<Ticket, StorageError> {
        Ok(self.journal.enqueue(record)?)
    }

    fn maybe_compact(self: &Arc<Self>, dead: u64) {
        let len = self.journal.stats().durable_len;
        if dead < COMPACT_AFTER || dead * 2 < len || self.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.clone();
        let spawned = std::thread::Builder::new()
            .name("compact-state".into())
            .spawn(move || {
                if let Err(err) = inner.compact() {
                    warn!("state compaction failed: {err}; the old file stays in use");
                }
                inner.compacting.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.compacting.store(false, Ordering::Release);
        }
    }

    fn compact(&self) -> io::Result<()> {
        let mut rewrite = self.journal.begin_rewrite()?;
        let snapshot_end = rewrite.snapshot_end();
        // What to write from memory, and which records to copy.
        let (marks, receipts, queues, copy, dead_then) = {
            let idx = lock(&self.index);
            let durable = |t: &Ticket| self.journal.outcome(t) == Outcome::Durable;
            let marks: Vec<(u8, u64)> = idx.ids.iter().map(|(k, ids)| (*k, ids.mark)).collect();
            // Durable receipts, raised by writes durable but not yet installed.
            let mut all: HashMap<(UserId, ConversationId), Receipt> = idx
                .receipts
                .iter()
                .flat_map(|(u, rs)| rs.iter().map(move |(c, r)| ((*u, *c), *r)))
                .collect();
            for (key, writes) in &idx.receipts_pending {
                for (t, v) in writes {
                    if durable(t) {
                        let r = all.entry(*key).or_default();
                        *r = raise(*r, *v);
                    }
                }
            }
            let receipts: Vec<(UserId, ConversationId, Receipt)> =
                all.into_iter().map(|((u, c), r)| (u, c, r)).collect();
            let queues: Vec<(UserId, u64, u64)> = idx
                .inbox
                .iter()
                .map(|(u, q)| (*u, q.next_id, q.dropped))
                .collect();
            // Kv values first, then durable puts not yet installed that are
            // newer than what is in force (in LSN order: the last put wins),
            // then notices.
            let mut copy: Vec<Loc> = idx.kv.values().copied().collect();
            let mut newer: Vec<(u64, Loc)> = idx
                .kv_pending
                .values()
                .flat_map(|p| {
                    p.inflight.iter().filter_map(move |(t, loc)| {
                        loc.filter(|_| t.lsn > p.installed && durable(t))
                            .map(|loc| (t.lsn, loc))
                    })
                })
                .collect();
            newer.sort_unstable_by_key(|(lsn, _)| *lsn);
            copy.extend(newer.into_iter().map(|(_, loc)| loc));
            copy.extend(
                idx.inbox
                    .values()
                    .flat_map(|q| q.items.iter().map(|i| i.loc)),
            );
            copy.extend(
                idx.inbox_pending
                    .values()
                    .filter(|(t, _, _)| durable(t))
                    .map(|(_, loc, _)| *loc),
            );
            copy.retain(|loc| loc.offset < snapshot_end);
            (marks, receipts, queues, copy, idx.dead)
        };
        for (kind, mark) in marks {
            rewrite.push(&Enc::new(ID_MARK).u8(kind).u64(mark).done())?;
        }
        for (user, conv, r) in receipts {
            rewrite.push(&receipt_record(user, conv, r))?;
        }
        for (user, next_id, dropped) in queues {
            rewrite.push(
                &Enc::new(INBOX_STATE)
                    .u64(user.0)
                    .u64(next_id)
                    .u64(dropped)
                    .done(),
            )?;
        }
        let mut moved: HashMap<u64, u64> = HashMap::with_capacity(copy.len());
        for loc in copy {
            let payload = self
                .journal
                .read_record(rewrite.source(), loc.offset, Some(loc.len))?;
            moved.insert(loc.offset, rewrite.push(&payload)?);
        }
        self.journal
            .finish_rewrite(rewrite, &self.index, |idx, shift| {
                let place = |loc: &mut Loc| {
                    if let Some(new) = shift
                        .tail(loc.offset)
                        .or_else(|| moved.get(&loc.offset).copied())
                    {
                        loc.offset = new;
                    }
                };
                idx.kv.values_mut().for_each(place);
                idx.kv_pending
                    .values_mut()
                    .flat_map(|p| p.inflight.iter_mut())
                    .filter_map(|(_, loc)| loc.as_mut())
                    .for_each(place);
                idx.inbox
                    .values_mut()
                    .flat_map(|q| q.items.iter_mut())
                    .for_each(|i| place(&mut i.loc));
                idx.inbox_pending
                    .values_mut()
                    .for_each(|(_, loc, _)| place(loc));
                // What died before the snapshot is gone with the old file;
                // what died since is in the new one.
                idx.dead = idx.dead.saturating_sub(dead_then);
            })
    }
}

/// A kv writer back from its wait: forgets its write, and says where the
/// value now in force is if it was a durable put newer than the one installed.
fn settle_kv(idx: &mut Index, key: &str, ticket: &Ticket, durable: bool) -> Option<Loc> {
    let pending = idx.kv_pending.get_mut(key)?;
    let mut install = None;
    if let Some(at) = pending.inflight.iter().position(|(t, _)| t == ticket) {
        let (_, loc) = pending.inflight.remove(at);
        if durable && ticket.lsn > pending.installed {
            pending.installed = ticket.lsn;
            install = loc;
        }
    }
    if pending.inflight.is_empty() {
        idx.kv_pending.remove(key);
    }
    install
}

/// Field by field, the higher of two receipts.
fn raise(a: Receipt, b: Receipt) -> Receipt {
    Receipt {
        delivered: a.delivered.max(b.delivered),
        read: a.read.max(b.read),
    }
}

impl KvStore for StateFile {
    fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let key = kv_key(namespace, key)?;
        let (loc, file) = {
            let idx = lock(&self.inner.index);
            let Some(loc) = idx.kv.get(&key).copied() else {
                return Ok(None);
            };
            (loc, self.inner.journal.file())
        };
        let payload = self.inner.read(&file, loc)?;
        let mut d = Dec(&payload);
        d.u8();
        d.str();
        d.str().ok_or_else(|| bad_data("unreadable kv record"))?;
        Ok(Some(d.tail().to_vec()))
    }

    fn put(&self, namespace: &str, key: &str, value: &[u8]) -> Result<(), StorageError> {
        let k = kv_key(namespace, key)?;
        too_large(value.len())?;
        let record = Enc::new(KV_PUT)
            .bytes(namespace.as_bytes())
            .bytes(key.as_bytes())
            .tail(value)
            .done();
        let inner = &self.inner;
        let ticket = {
            let mut idx = lock(&inner.index);
            let ticket = inner.enqueue(&record)?;
            let loc = Loc {
                offset: ticket.offset,
                len: record.len() as u32,
            };
            idx.kv_pending
                .entry(k.clone())
                .or_default()
                .inflight
                .push((ticket.clone(), Some(loc)));
            ticket
        };
        let written = inner.journal.wait(&ticket);
        let mut idx = lock(&inner.index);
        let loc = settle_kv(&mut idx, &k, &ticket, written.is_ok());
        written?;
        match loc {
            Some(loc) => {
                if let Some(old) = idx.kv.insert(k, loc) {
                    idx.dead += u64::from(old.len);
                }
            }
            // A newer write of the same key is in force.
            None => idx.dead += record.len() as u64,
        }
        let dead = idx.dead;
        drop(idx);
        inner.maybe_compact(dead);
        Ok(())
    }

    fn delete(&self, namespace: &str, key: &str) -> Result<bool, StorageError> {
        let k = kv_key(namespace, key)?;
        let record = Enc::new(KV_DELETE)
            .bytes(namespace.as_bytes())
            .bytes(key.as_bytes())
            .done();
        let inner = &self.inner;
        let ticket = {
            let mut idx = lock(&inner.index);
            if !idx.kv.contains_key(&k) && !idx.kv_pending.contains_key(&k) {
                return Ok(false);
            }
            let ticket = inner.enqueue(&record)?;
            // Gone from now on, even before the record is durable; puts
            // older than the delete are never installed.
            if let Some(old) = idx.kv.remove(&k) {
                idx.dead += u64::from(old.len);
            }
            let pending = idx.kv_pending.entry(k.clone()).or_default();
            pending.installed = pending.installed.max(ticket.lsn);
            pending.inflight.push((ticket.clone(), None));
            ticket
        };
        let written = inner.journal.wait(&ticket);
        let mut idx = lock(&inner.index);
        settle_kv(&mut idx, &k, &ticket, false);
        idx.dead += record.len() as u64;
        let dead = idx.dead;
        drop(idx);
        written?;
        inner.maybe_compact(dead);
        Ok(true)
    }

    fn list(&self, namespace: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        let start = kv_key(namespace, prefix)?;
        let skip = namespace.len() + 1;
        let (found, file) = {
            let idx = lock(&self.inner.index);
            let found: Vec<(String, Loc)> = idx
                .kv
                .range(start.clone()..)
                .take_while(|(k, _)| k.starts_with(&start))
                .map(|(k, loc)| (k[skip..].to_string(), *loc))
                .collect();
            (found, self.inner.journal.file())
        };
        found
            .into_iter()
            .map(|(key, loc)| {
                let payload = self.inner.read(&file, loc)?;
                let mut d = Dec(&payload);
                d.u8();
                d.str();
                d.str().ok_or_else(|| bad_data("unreadable kv record"))?;
                Ok((key, d.tail().to_vec()))
            })
            .collect()
    }
}

impl ReceiptStore for StateFile {
    fn receipt(&self, user: UserId, conv: ConversationId) -> Result<Receipt, StorageError> {
        let idx = lock(&self.inner.index);
        Ok(idx
            .receipts
            .get(&user)
            .and_then(|rs| rs.get(&conv))
            .copied()
            .unwrap_or_default())
    }

    fn mark(
        &self,
        user: UserId,
        conv: ConversationId,
        to: Receipt,
    ) -> Result<Receipt, StorageError> {
        let inner = &self.inner;
        let key = (user, conv);
        let (now, ticket) = {
            let mut idx = lock(&inner.index);
            let durable = idx
                .receipts
                .get(&user)
                .and_then(|rs| rs.get(&conv))
                .copied()
                .unwrap_or_default();
            let now = raise(durable, to);
            if now == durable {
                // Already durable: nothing to write, nothing to wait for.
                return Ok(now);
            }
            // A write in flight that covers it: wait for that one.
            let covering = idx.receipts_pending.get(&key).and_then(|writes| {
                writes
                    .iter()
                    .rev()
                    .find(|(_, v)| raise(*v, now) == *v)
                    .cloned()
            });
            match covering {
                Some((ticket, v)) => (v, ticket),
                None => {
                    let record = receipt_record(user, conv, now);
                    let ticket = inner.enqueue(&record)?;
                    idx.receipts_pending
                        .entry(key)
                        .or_default()
                        .push((ticket.clone(), now));
                    idx.dead += record.len() as u64;
                    (now, ticket)
                }
            }
        };
        let written = inner.journal.wait(&ticket);
        let mut idx = lock(&inner.index);
        // Each durable write installs its value (receipts only rise), unless
        // the user's receipts were forgotten meanwhile; a later write that
        // fails does not undo it.
        let mut mine = false;
        if let Some(writes) = idx.receipts_pending.get_mut(&key) {
            if let Some(at) = writes.iter().position(|(t, _)| *t == ticket) {
                writes.remove(at);
                mine = true;
            }
            if writes.is_empty() {
                idx.receipts_pending.remove(&key);
            }
        }
        written?;
        if mine {
            let r = idx
                .receipts
                .entry(user)
                .or_default()
                .entry(conv)
                .or_default();
            *r = raise(*r, now);
        }
        Ok(now)
    }

    fn receipts_of(&self, user: UserId) -> Result<Vec<(ConversationId, Receipt)>, StorageError> {
        let idx = lock(&self.inner.index);
        let mut all: Vec<(ConversationId, Receipt)> = idx
            .receipts
            .get(&user)
            .map(|rs| rs.iter().map(|(c, r)| (*c, *r)).collect())
            .unwrap_or_default();
        all.sort_by_key(|(c, _)| *c);
        Ok(all)
    }

    fn forget_user(&self, user: UserId) -> Result<(), StorageError> {
        let inner = &self.inner;
        let ticket = {
            let mut idx = lock(&inner.index);
            if !idx.receipts.contains_key(&user)
                && !idx.receipts_pending.keys().any(|(u, _)| *u == user)
            {
                return Ok(());
            }
            let ticket = inner.enqueue(&Enc::new(RECEIPTS_FORGOTTEN).u64(user.0).done())?;
            idx.receipts.remove(&user);
            // Writes in flight before the forget are not installed.
            idx.receipts_pending.retain(|(u, _), _| *u != user);
            ticket
        };
        inner.journal.wait(&ticket)?;
        Ok(())
    }
}

impl Inbox for StateFile {
    fn push(
        &self,
        user: UserId,
        kind: &str,
        created_at: u64,
        body: &[u8],
    ) -> Result<u64, StorageError> {
        if kind.is_empty() || kind.len() > MAX_NAME {
            return Err(StorageError::Invalid(
                "a notice kind must have 1 to 1024 bytes",
            ));
        }
        too_large(body.len())?;
        let inner = &self.inner;
        let (id, ticket) = {
            let mut idx = lock(&inner.index);
            let q = idx.inbox.entry(user).or_default();
            let id = q.next_id;
            let record = Enc::new(INBOX_PUSH)
                .u64(user.0)
                .u64(id)
                .u64(created_at)
                .bytes(kind.as_bytes())
                .tail(body)
                .done();
            let next = id
                .checked_add(1)
                .ok_or(StorageError::Invalid("the inbox ran out of notice ids"))?;
            let ticket = inner.enqueue(&record)?;
            if let Some(q) = idx.inbox.get_mut(&user) {
                q.next_id = next;
            }
            let loc = Loc {
                offset: ticket.offset,
                len: record.len() as u32,
            };
            idx.inbox_pending
                .insert((user, id), (ticket.clone(), loc, body.len()));
            (id, ticket)
        };
        let written = inner.journal.wait(&ticket);
        let mut idx = lock(&inner.index);
        let pending = idx.inbox_pending.remove(&(user, id));
        written?;
        if let Some((_, loc, size)) = pending {
            let limits = inner.limits;
            let q = idx.inbox.entry(user).or_default();
            let dropped = q.dropped;
            let dead = q.insert(Item { id, loc, size }, &limits);
            let lost = q.dropped.saturating_sub(dropped);
            // The dropped notices' records are dead in the file.
            idx.dead += dead;
            if lost > 0 {
                warn!("inbox full user={user} dropped={lost} (oldest notices)");
            }
        }
        Ok(id)
    }

    fn pending(&self, user: UserId, limit: usize) -> Result<InboxBatch, StorageError> {
        let inner = &self.inner;
        let (items, dropped, file) = {
            let idx = lock(&inner.index);
            let Some(q) = idx.inbox.get(&user) else {
                return Ok(InboxBatch::default());
            };
            // Never past a notice still being written: order first.
            let writing = idx
                .inbox_pending
                .iter()
                .filter(|((u, _), (t, _, _))| {
                    *u == user && inner.journal.outcome(t) != Outcome::Failed
                })
                .map(|((_, id), _)| *id)
                .min()
                .unwrap_or(u64::MAX);
            let items: Vec<Item> = q
                .items
                .iter()
                .take_while(|i| i.id < writing)
                .take(limit)
                .copied()
                .collect();
            (items, q.dropped, inner.journal.file())
        };
        let notices = items
            .into_iter()
            .map(|item| {
                let payload = inner.read(&file, item.loc)?;
                let mut d = Dec(&payload);
                d.u8();
                let (_, _, created_at) = (d.u64(), d.u64(), d.u64());
                let kind = d.str().ok_or_else(|| bad_data("unreadable inbox record"))?;
                Ok(InboxNotice {
                    id: item.id,
                    kind: kind.to_string(),
                    created_at: created_at.unwrap_or(0),
                    body: d.tail().to_vec(),
                })
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        Ok(InboxBatch { notices, dropped })
    }

    fn ack(&self, user: UserId, through: u64) -> Result<usize, StorageError> {
        let inner = &self.inner;
        let (gone, ticket) = {
            let mut idx = lock(&inner.index);
            // Never past what the client can have seen: a notice still being
            // written is not acknowledged by a larger id.
            let writing = idx
                .inbox_pending
                .keys()
                .filter(|(u, _)| *u == user)
                .map(|(_, id)| *id)
                .min()
                .unwrap_or(u64::MAX);
            let Some(q) = idx.inbox.get(&user) else {
                return Ok(0);
            };
            let through = through.min(writing - 1).min(q.next_id - 1);
            if q.items.front().is_none_or(|i| i.id > through) && q.dropped == 0 {
                return Ok(0);
            }
            let ticket = inner.enqueue(&Enc::new(INBOX_ACK).u64(user.0).u64(through).done())?;
            let gone = idx
                .inbox
                .get_mut(&user)
                .map(|q| q.ack(through))
                .unwrap_or_default();
            idx.dead += gone.iter().map(|i| u64::from(i.loc.len)).sum::<u64>();
            (gone.len(), ticket)
        };
        inner.journal.wait(&ticket)?;
        let dead = lock(&inner.index).dead;
        inner.maybe_compact(dead);
        Ok(gone)
    }
}

impl IdSource for StateFile {
    fn next(&self, kind: IdKind) -> Result<u64, StorageError> {
        let inner = &self.inner;
        let code = kind.code();
        let mut idx = lock(&inner.index);
        loop {
            let ids = idx.ids.entry(code).or_default();
            ids.next = ids.next.max(floor(kind));
            ids.mark = ids.mark.max(floor(kind));
            if ids.next < ids.mark {
                ids.next += 1;
                return Ok(ids.next - 1);
            }
            if ids.reserving {
                idx = inner
                    .ids_changed
                    .wait(idx)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            // Reserve the next block: durable before any id of it goes out.
            let mark = ids.mark + ID_BLOCK;
            let ticket = inner.enqueue(&Enc::new(ID_MARK).u8(code).u64(mark).done())?;
            if let Some(ids) = idx.ids.get_mut(&code) {
                ids.reserving = true;
            }
            drop(idx);
            let written = inner.journal.wait(&ticket);
            idx = lock(&inner.index);
            let ids = idx.ids.entry(code).or_default();
            ids.reserving = false;
            if written.is_ok() {
                ids.mark = ids.mark.max(mark);
            }
            idx.dead += 10;
            inner.ids_changed.notify_all();
            written?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infrastructure::journal::Hooks;
    use std::collections::HashSet;
    use std::fs;
    use std::os::unix::fs::FileExt;
    use std::time::Duration;

    fn open(dir: &Path) -> StateFile {
        StateFile::open(&dir.join(STATE_FILE), InboxLimits::default()).unwrap()
    }

    /// Values survive a reload; a prefix lists a user's set in key order; a
    /// deleted key is gone, and after compaction its value is gone from disk.
    #[test]
    fn kv_values_survive_a_reload_and_deleted_ones_leave_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path());
        state.put("profiles", "7", b"{\"name\":\"alice\"}").unwrap();
        state.put("blocks", "7/9", b"1").unwrap();
        state.put("blocks", "7/8", b"1").unwrap();
        state.put("blocks", "70/1", b"1").unwrap();
        state.put("mutes", "7/9", b"SECRET-MUTE").unwrap();
        state
            .put("profiles", "7", b"{\"name\":\"alice2\"}")
            .unwrap();
        assert!(state.delete("mutes", "7/9").unwrap());
        assert!(!state.delete("mutes", "7/9").unwrap());
        assert!(matches!(
            state.put("a\0b", "k", b"v"),
            Err(StorageError::Invalid(_))
        ));
        for state in [state.clone(), open(dir.path())] {
            assert_eq!(
                state.get("profiles", "7").unwrap().unwrap(),
                b"{\"name\":\"alice2\"}"
            );
            assert_eq!(state.get("mutes", "7/9").unwrap(), None);
            let blocks: Vec<String> = state
                .list("blocks", "7/")
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            assert_eq!(blocks, ["7/8", "7/9"]);
        }
        state.compact().unwrap();
        let disk = fs::read(dir.path().join(STATE_FILE)).unwrap();
        assert!(!disk.windows(11).any(|w| w == b"SECRET-MUTE"));
        assert!(
            !disk.windows(6).any(|w| w == b"alice\""),
            "the old profile is gone too"
        );
        assert_eq!(
            open(dir.path()).get("profiles", "7").unwrap().unwrap(),
            b"{\"name\":\"alice2\"}"
        );
    }

    /// Receipts only rise, field by field, and survive reloads and compaction.
    #[test]
    fn receipts_only_rise_and_survive_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path());
        let (u, c) = (UserId(1), ConversationId(5));
        let r = |delivered, read| Receipt { delivered, read };
        assert_eq!(state.mark(u, c, r(10, 4)).unwrap(), r(10, 4));
        assert_eq!(state.mark(u, c, r(8, 6)).unwrap(), r(10, 6));
        state.mark(u, ConversationId(2), r(1, 1)).unwrap();
        state.compact().unwrap();
        let again = open(dir.path());
        assert_eq!(again.receipt(u, c).unwrap(), r(10, 6));
        assert_eq!(
            again.receipts_of(u).unwrap(),
            [(ConversationId(2), r(1, 1)), (c, r(10, 6))]
        );
        again.forget_user(u).unwrap();
        assert!(open(dir.path()).receipts_of(u).unwrap().is_empty());
    }

    /// Ids rise, are never handed out twice, not even across restarts (one
    /// durable mark per block), and guests keep their own range.
    #[test]
    fn ids_are_never_reused_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = HashSet::new();
        let mut last = 0;
        for _ in 0..3 {
            let state = open(dir.path());
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let state = state.clone();
                    std::thread::spawn(move || {
                        (0..700)
                            .map(|_| state.next(IdKind::Message).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for t in threads {
                for id in t.join().unwrap() {
                    assert!(seen.insert(id), "id {id} handed out twice");
                    assert!(id > 0);
                }
            }
            let fsyncs = state.journal().stats().fsyncs;
            assert!(
                fsyncs <= 4,
                "one durable mark per block of {ID_BLOCK}: {fsyncs}"
            );
            let now = state.next(IdKind::Message).unwrap();
            assert!(now > last);
            last = now;
            seen.insert(now);
            assert!(state.next(IdKind::Guest).unwrap() >= GUEST_ID_BASE);
            assert_eq!(state.next(IdKind::Room).unwrap() % ID_BLOCK, 1 % ID_BLOCK);
        }
        let state = open(dir.path());
        state.compact().unwrap();
        assert!(open(dir.path()).next(IdKind::Message).unwrap() > last);
    }

    fn kinds(batch: &InboxBatch) -> Vec<String> {
        batch.notices.iter().map(|n| n.kind.clone()).collect()
    }

    /// Notices come out in the order they went in, stay until acknowledged,
    /// and survive a reload; ids rise and are not reused after an ack.
    #[test]
    fn inbox_notices_keep_their_order_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path());
        let alice = UserId(1);
        for (i, kind) in ["invitation", "follower", "knock"].iter().enumerate() {
            let id = state
                .push(
                    alice,
                    kind,
                    100 + i as u64,
                    format!("{{\"n\":{i}}}").as_bytes(),
                )
                .unwrap();
            assert_eq!(id, i as u64 + 1);
        }
        state.push(UserId(2), "other", 1, b"{}").unwrap();
        let batch = open(dir.path()).pending(alice, 10).unwrap();
        assert_eq!(kinds(&batch), ["invitation", "follower", "knock"]);
        assert_eq!(batch.notices[1].body, b"{\"n\":1}");
        assert_eq!(batch.notices[2].created_at, 102);
        assert_eq!(
            kinds(&state.pending(alice, 2).unwrap()),
            ["invitation", "follower"]
        );
        assert_eq!(state.ack(alice, 2).unwrap(), 2);
        assert_eq!(kinds(&state.pending(alice, 10).unwrap()), ["knock"]);
        state.compact().unwrap();
        let again = open(dir.path());
        assert_eq!(kinds(&again.pending(alice, 10).unwrap()), ["knock"]);
        assert_eq!(
            again.push(alice, "new", 5, b"{}").unwrap(),
            4,
            "ids go on after a compaction"
        );
        assert_eq!(kinds(&again.pending(UserId(2), 10).unwrap()), ["other"]);
    }

    /// Over the bound the oldest notices go, counted, and the count is
    /// reported until the next acknowledgement; the bound holds after a reload.
    #[test]
    fn a_full_inbox_drops_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let limits = InboxLimits {
            max_notices: 3,
            max_bytes: 1000,
        };
        let path = dir.path().join(STATE_FILE);
        let state = StateFile::open(&path, limits).unwrap();
        let bob = UserId(2);
        for i in 1..=5 {
            state.push(bob, &format!("n{i}"), i, b"{}").unwrap();
        }
        let batch = state.pending(bob, 10).unwrap();
        assert_eq!(kinds(&batch), ["n3", "n4", "n5"]);
        assert_eq!(batch.dropped, 2);
        let reloaded = StateFile::open(&path, limits).unwrap();
        assert_eq!(reloaded.pending(bob, 10).unwrap(), batch);
        // The byte bound: one large notice pushes out older ones.
        reloaded.push(bob, "big", 9, &[b'x'; 997]).unwrap();
        let batch = reloaded.pending(bob, 10).unwrap();
        assert_eq!(kinds(&batch), ["n5", "big"]);
        assert_eq!(batch.dropped, 4);
        assert_eq!(reloaded.ack(bob, 6).unwrap(), 2);
        assert_eq!(reloaded.pending(bob, 10).unwrap(), InboxBatch::default());
        assert!(matches!(
            reloaded.push(bob, "", 1, b""),
            Err(StorageError::Invalid(_))
        ));
        assert!(matches!(
            reloaded.push(bob, "k", 1, &vec![0; MAX_VALUE + 1]),
            Err(StorageError::TooLarge { .. })
        ));
    }

    /// Blocks the first call at a gate until the test opens it.
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
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while self.arrived.load(Ordering::SeqCst) < n {
                assert!(
                    std::time::Instant::now() < deadline,
                    "nobody came to the gate"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Holds the journal's first fsync at the gate; fails writes holding `fail`.
    fn hooks(state: &StateFile, gate: &Arc<Gate>, fail: &'static [u8]) {
        let (g, count) = (
            gate.clone(),
            Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        );
        state.journal().set_hooks(Hooks {
            write: Some(Arc::new(
                move |file: &std::fs::File, buf: &[u8], at: u64| {
                    if !fail.is_empty() && buf.windows(fail.len()).any(|w| w == fail) {
                        return Err(io::Error::from_raw_os_error(28));
                    }
                    file.write_all_at(buf, at)
                },
            )),
            sync: Some(Arc::new(move |file: &std::fs::File| {
                if count.fetch_add(1, Ordering::SeqCst) == 0 {
                    g.pass();
                }
                file.sync_data()
            })),
        });
    }

    /// Put A of a key succeeds while put B of the same key, after it, fails:
    /// A is what the key reads, before and after a reload.
    #[test]
    fn a_failed_later_put_does_not_hide_an_acknowledged_one() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path());
        state.put("profiles", "7", b"old").unwrap();
        let gate = Gate::new();
        hooks(&state, &gate, b"value B");
        let a = {
            let state = state.clone();
            std::thread::spawn(move || state.put("profiles", "7", b"value A"))
        };
        gate.await_arrivals(1);
        let b = {
            let state = state.clone();
            std::thread::spawn(move || state.put("profiles", "7", b"value B"))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lock(&state.inner.index)
            .kv_pending
            .get("profiles\u{0}7")
            .is_none_or(|p| p.inflight.len() < 2)
        {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
        gate.open();
        a.join().unwrap().unwrap();
        assert!(b.join().unwrap().is_err());
        state.journal().set_hooks(Hooks::default());
        for state in [state.clone(), open(dir.path())] {
            assert_eq!(state.get("profiles", "7").unwrap().unwrap(), b"value A");
        }
    }

    /// `mark` answers only once its value is durable: a second, equal mark
    /// arriving while the first is being written waits for that write; a
    /// mark that failed leaves nothing in force, and its retry writes.
    #[test]
    fn a_mark_is_answered_only_once_durable() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path());
        let (u, c) = (UserId(1), ConversationId(5));
        let r = |delivered, read| Receipt { delivered, read };
        let gate = Gate::new();
        hooks(&state, &gate, b"");
        let first = {
            let state = state.clone();
            std::thread::spawn(move || state.mark(u, c, r(10, 4)))
        };
        gate.await_arrivals(1);
        let (tx, rx) = std::sync::mpsc::channel();
        let second = {
            let state = state.clone();
            std::thread::spawn(move || {
                let got = state.mark(u, c, r(10, 4));
                let _ = tx.send(());
                got
            })
        };
        assert!(
            rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "an equal mark was answered before the write covering it was durable"
        );
        assert_eq!(
            state.receipt(u, c).unwrap(),
            r(0, 0),
            "not in force before durable"
        );
        gate.open();
        assert_eq!(first.join().unwrap().unwrap(), r(10, 4));
        assert_eq!(second.join().unwrap().unwrap(), r(10, 4));
        // A failed mark, then its retry: the retry writes.
        state.journal().set_hooks(Hooks {
            write: Some(Arc::new(|_: &std::fs::File, _: &[u8], _: u64| {
                Err(io::Error::from_raw_os_error(28))
            })),
            sync: None,
        });
        assert!(state.mark(u, c, r(12, 6)).is_err());
        assert_eq!(state.receipt(u, c).unwrap(), r(10, 4));
        state.journal().set_hooks(Hooks::default());
        let appends = state.journal().stats().appends;
        assert_eq!(state.mark(u, c, r(12, 6)).unwrap(), r(12, 6));
        assert_eq!(
            state.journal().stats().appends,
            appends + 1,
            "the retry wrote"
        );
        assert_eq!(open(dir.path()).receipt(u, c).unwrap(), r(12, 6));
    }

    /// Notices dropped by the bound are dead bytes in the file (they count
    /// toward the next compaction), and a compaction takes them off the disk.
    #[test]
    fn notices_dropped_by_the_bound_count_as_dead() {
        let dir = tempfile::tempdir().unwrap();
        let limits = InboxLimits {
            max_notices: 1,
            max_bytes: 1000,
        };
        let path = dir.path().join(STATE_FILE);
        let state = StateFile::open(&path, limits).unwrap();
        state
            .push(UserId(2), "first", 1, b"SECRET-DROPPED")
            .unwrap();
        assert_eq!(state.dead_bytes(), 0);
        state.push(UserId(2), "second", 2, b"{}").unwrap();
        assert!(
            state.dead_bytes() >= 14,
            "the dropped notice's record is dead"
        );
        assert_eq!(
            StateFile::open(&path, limits).unwrap().dead_bytes(),
            state.dead_bytes(),
            "the same count after a reload"
        );
        state.compact().unwrap();
        assert_eq!(state.dead_bytes(), 0);
        let disk = fs::read(&path).unwrap();
        assert!(!disk.windows(14).any(|w| w == b"SECRET-DROPPED"));
    }

    /// Numbers read from the file are checked before any arithmetic: a
    /// notice id at the top of the range is refused at open, not wrapped.
    #[test]
    fn a_record_whose_numbers_would_overflow_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        let spec = Spec {
            format: Format::Framed,
            initial: b"",
            record_name: "a state record",
        };
        let journal = Journal::open(&path, spec, |_| Ok(())).unwrap();
        let push = Enc::new(INBOX_PUSH)
            .u64(1)
            .u64(u64::MAX)
            .u64(0)
            .bytes(b"k")
            .tail(b"{}")
            .done();
        journal.append(&push).unwrap();
        drop(journal);
        match StateFile::open(&path, InboxLimits::default()) {
            Err(OpenError::Invalid { .. }) => {}
            Err(other) => panic!("expected a refused record, got {other}"),
            Ok(_) => panic!("a notice id of u64::MAX was accepted"),
        }
    }
}
