//! Storage ports for what comes after calls: conversation logs, receipts,
//! settings (key-value), the offline inbox, and ids from the store.
//!
//! Each is a trait with a flat-file adapter in `infrastructure` (on the
//! journal) and room for a Redis adapter in cluster mode, so every method
//! returns a typed [`StorageError`] (a network store can fail where a local
//! one cannot) and nothing here assumes a local file: ids come from
//! [`IdSource`] (INCR in Redis), sequence numbers from the conversation store.
//!
//! A method that writes returns only once the write is durable. When it
//! fails, nothing of it was acknowledged (see each method for what memory
//! keeps in the meantime).

use std::fmt;
use std::io;

use crate::domain::UserId;

/// Why a store refused or failed an operation.
#[derive(Debug)]
pub enum StorageError {
    /// The write did not reach the disk (or the store): nothing of it was acknowledged.
    Io(io::Error),
    /// A value over the store's limit.
    TooLarge { len: usize, max: usize },
    /// A name the store cannot hold (a namespace or key with a NUL byte, an
    /// empty kind).
    Invalid(&'static str),
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Io(err) => write!(f, "storage write failed: {err}"),
            StorageError::TooLarge { len, max } => {
                write!(f, "{len} bytes is over the limit of {max}")
            }
            StorageError::Invalid(why) => write!(f, "invalid: {why}"),
        }
    }
}

impl std::error::Error for StorageError {}

impl From<io::Error> for StorageError {
    fn from(err: io::Error) -> StorageError {
        StorageError::Io(err)
    }
}

/// The kinds of id the store hands out. Each counts on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdKind {
    User,
    Call,
    Guest,
    Room,
    Conversation,
    Message,
}

impl IdKind {
    pub const ALL: [IdKind; 6] = [
        IdKind::User,
        IdKind::Call,
        IdKind::Guest,
        IdKind::Room,
        IdKind::Conversation,
        IdKind::Message,
    ];

    /// A stable small number for storage.
    pub fn code(self) -> u8 {
        match self {
            IdKind::User => 1,
            IdKind::Call => 2,
            IdKind::Guest => 3,
            IdKind::Room => 4,
            IdKind::Conversation => 5,
            IdKind::Message => 6,
        }
    }

    pub fn from_code(code: u8) -> Option<IdKind> {
        IdKind::ALL.into_iter().find(|k| k.code() == code)
    }
}

/// Unique ids that are never reused, not even after a restart, and never
/// come from a clock. A Redis adapter is `INCR ids:<kind>`.
pub trait IdSource: Send + Sync {
    /// The next id of `kind`: larger than every id of that kind handed out before.
    ///
    /// # Errors
    /// The store could not make the reservation durable.
    fn next(&self, kind: IdKind) -> Result<u64, StorageError>;
}

/// One conversation log: a room's chat, a direct chat, a group, a stream's chat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConversationId(pub u64);

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A message to append.
#[derive(Clone, Copy, Debug)]
pub struct NewMessage<'a> {
    pub sender: UserId,
    /// Unix milliseconds.
    pub sent_at: u64,
    /// The client's own id for the message: a retry by the same sender with the same id is not
    /// stored twice (within the store's window; see the adapter).
    pub client_id: Option<&'a str>,
    /// Opaque to the store.
    pub body: &'a [u8],
}

/// A stored message as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Dense and increasing per conversation, from 1, assigned by the store.
    pub seq: u64,
    pub sender: UserId,
    pub sent_at: u64,
    /// When it was last edited, if it was.
    pub edited_at: Option<u64>,
    pub client_id: Option<String>,
    pub body: Vec<u8>,
}

/// What an append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    /// The client id was seen already: nothing new was stored, `seq` is the original's.
    pub duplicate: bool,
}

/// Where a page starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    /// The newest messages with a seq below this (`Before(u64::MAX)`: the latest).
    Before(u64),
    /// The oldest messages with a seq above this (`After(0)`: from the start).
    After(u64),
}

/// Conversation logs: append, page, edit, delete. Deleted messages are never
/// served again from the moment of deletion, and their content leaves the
/// disk at the adapter's next compaction.
pub trait ConversationStore: Send + Sync {
    /// Appends a message; returns its seq once it is durable.
    ///
    /// # Errors
    /// `TooLarge`, or `Io` (the seq is then not used: the next append gets it).
    fn append(&self, conv: ConversationId, msg: NewMessage<'_>) -> Result<Appended, StorageError>;
    /// Up to `limit` live messages next to `anchor`, in seq order.
    ///
    /// # Errors
    /// `Io` if a record cannot be read.
    fn page(
        &self,
        conv: ConversationId,
        anchor: Anchor,
        limit: usize,
    ) -> Result<Vec<Message>, StorageError>;
    /// Replaces a message's body; `Ok(false)` if there is no such live message.
    ///
    /// # Errors
    /// `TooLarge`, `Io` (the old body stays).
    fn edit(
        &self,
        conv: ConversationId,
        seq: u64,
        body: &[u8],
        edited_at: u64,
    ) -> Result<bool, StorageError>;
    /// Deletes a message; `Ok(false)` if there is no such live message.
    ///
    /// # Errors
    /// `Io`: the message is not served any more but may come back after a restart.
    fn delete(&self, conv: ConversationId, seq: u64) -> Result<bool, StorageError>;
    /// The highest seq given out and durable (0 for an empty or unknown log).
    ///
    /// # Errors
    /// `Io` for stores that must ask elsewhere.
    fn last_seq(&self, conv: ConversationId) -> Result<u64, StorageError>;
    /// Deletes a whole log; `Ok(false)` if there is none.
    ///
    /// # Errors
    /// `Io`: as [`ConversationStore::delete`].
    fn delete_log(&self, conv: ConversationId) -> Result<bool, StorageError>;
}

/// How far a user got in a conversation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Receipt {
    pub delivered: u64,
    pub read: u64,
}

/// Delivered and read sequence numbers per user and conversation. They only rise.
pub trait ReceiptStore: Send + Sync {
    /// # Errors
    /// `Io` for stores that must ask elsewhere.
    fn receipt(&self, user: UserId, conv: ConversationId) -> Result<Receipt, StorageError>;
    /// Raises the receipt to at least `to` (field by field); returns the
    /// result once it is durable.
    ///
    /// # Errors
    /// `Io`.
    fn mark(
        &self,
        user: UserId,
        conv: ConversationId,
        to: Receipt,
    ) -> Result<Receipt, StorageError>;
    /// Every receipt of a user.
    ///
    /// # Errors
    /// `Io` for stores that must ask elsewhere.
    fn receipts_of(&self, user: UserId) -> Result<Vec<(ConversationId, Receipt)>, StorageError>;
    /// Forgets a user's receipts (account deletion).
    ///
    /// # Errors
    /// `Io`.
    fn forget_user(&self, user: UserId) -> Result<(), StorageError>;
}

/// Settings by namespace and key: profiles, blocks, mutes, follows. Values
/// are opaque; keys are ordered, so `list` with a prefix reads a user's set
/// (`blocks`, `"42/"`).
pub trait KvStore: Send + Sync {
    /// # Errors
    /// `Io` if the value cannot be read.
    fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Stores a value; returns once it is durable.
    ///
    /// # Errors
    /// `TooLarge`, `Invalid`, `Io`.
    fn put(&self, namespace: &str, key: &str, value: &[u8]) -> Result<(), StorageError>;
    /// Removes a key; `Ok(false)` if it was not there.
    ///
    /// # Errors
    /// `Io`: the key is gone from memory but may come back after a restart.
    fn delete(&self, namespace: &str, key: &str) -> Result<bool, StorageError>;
    /// Keys starting with `prefix` in `namespace`, in key order, with their values.
    ///
    /// # Errors
    /// `Io` if a value cannot be read.
    fn list(&self, namespace: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError>;
}

/// A notice waiting for its user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxNotice {
    /// Increasing per user; the client acknowledges up to one.
    pub id: u64,
    /// What it is ("invitation", "follower", "webhook", "knock"); the client decides.
    pub kind: String,
    /// Unix milliseconds.
    pub created_at: u64,
    /// Opaque (JSON, usually).
    pub body: Vec<u8>,
}

/// The notices for one user, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InboxBatch {
    pub notices: Vec<InboxNotice>,
    /// How many older notices were dropped because the inbox was full, since
    /// the last acknowledgement (the client should be told: "N notices lost").
    pub dropped: u64,
}

/// The offline inbox: per user, an ordered durable queue of notices that
/// must reach the user later. Delivered in order at the next login; removed
/// when the client acknowledges them (at least once: a connection lost
/// before the acknowledgement gets them again). Bounded per user: when full,
/// the oldest notice is dropped and counted in [`InboxBatch::dropped`].
pub trait Inbox: Send + Sync {
    /// Queues a notice; returns its id once it is durable.
    ///
    /// # Errors
    /// `TooLarge`, `Invalid` (an empty or too long kind), `Io`.
    fn push(
        &self,
        user: UserId,
        kind: &str,
        created_at: u64,
        body: &[u8],
    ) -> Result<u64, StorageError>;
    /// Up to `limit` notices, oldest first, without removing them.
    ///
    /// # Errors
    /// `Io` if a notice cannot be read.
    fn pending(&self, user: UserId, limit: usize) -> Result<InboxBatch, StorageError>;
    /// Removes every notice up to and including `through` (and resets the
    /// dropped count); returns how many went.
    ///
    /// # Errors
    /// `Io`: they are gone from memory but may come back after a restart.
    fn ack(&self, user: UserId, through: u64) -> Result<usize, StorageError>;
}
