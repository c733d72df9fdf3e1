//! The ports: what the use cases need from storage and from delivery.

use std::fmt;
use std::io;
use std::sync::Arc;

use crate::domain::{CallId, UserId, UserState};

/// One registered user as storage keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    pub id: UserId,
    pub username: String,
    /// The bcrypt hash of the client's secret.
    pub password_hash: String,
    /// Unix seconds.
    pub created_at: u64,
}

/// Why storage refused or failed a write.
#[derive(Debug)]
pub enum StoreError {
    /// The username (compared without case) is taken.
    Conflict,
    /// The write did not reach the disk; nothing of it remains.
    Io(io::Error),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Conflict => f.write_str("username is taken"),
            StoreError::Io(err) => write!(f, "storage write failed: {err}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Every user, in id order, as (id, username): a snapshot shared by its readers.
pub type UserListing = Arc<[(UserId, Arc<str>)]>;

/// Registered users. Lookups by name ignore case.
pub trait UserStore: Send + Sync {
    fn find_by_name(&self, username: &str) -> Option<UserRecord>;
    fn find_by_id(&self, id: UserId) -> Option<UserRecord>;
    /// Every user, in id order, as (id, username): a shared snapshot, cheap
    /// to take again while nothing changes.
    fn list(&self) -> UserListing;
    /// Creates a user and returns only once the record is durable.
    ///
    /// # Errors
    /// `Conflict` if the name is taken; `Io` if it could not be made durable.
    fn create(
        &self,
        username: &str,
        password_hash: &str,
        created_at: u64,
    ) -> Result<UserRecord, StoreError>;
    /// Replaces a user's password hash; returns once the change is durable.
    /// `Ok(false)` if there is no such user.
    ///
    /// # Errors
    /// `Io` if it could not be made durable (the old hash stays).
    fn set_password_hash_of(&self, id: UserId, password_hash: &str) -> Result<bool, StoreError>;
    /// Deletes a user; returns once the deletion is durable. Their id is never
    /// given out again. `Ok(false)` if there is no such user.
    ///
    /// # Errors
    /// `Io` if it could not be made durable (the user stays).
    fn delete_user(&self, id: UserId) -> Result<bool, StoreError>;
}

/// Revocation of session tokens: each user has a generation, written into
/// every token issued to them; raising it revokes all of those tokens at once.
pub trait SessionStore: Send + Sync {
    fn generation(&self, user: UserId) -> u64;
    /// Raises `user`'s generation and returns the new one, once it is durable.
    ///
    /// # Errors
    /// It could not be made durable (the tokens stay valid).
    fn revoke_all(&self, user: UserId) -> io::Result<u64>;
}

/// Identifies one client connection for delivery. Unique for the process's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A user as the other party of a call is told about them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Party {
    pub id: UserId,
    pub username: Arc<str>,
}

/// Signaling relayed between the two parties of a call. `from` is always the
/// authenticated sender, `to` the peer the server looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    Offer {
        call_id: CallId,
        from: UserId,
        to: UserId,
        sdp: String,
    },
    Answer {
        call_id: CallId,
        from: UserId,
        to: UserId,
        sdp: String,
    },
    Ice {
        call_id: CallId,
        from: UserId,
        to: UserId,
        candidate: String,
        sdp_mid: Option<String>,
        sdp_mline_index: u32,
    },
}

impl Signal {
    pub fn call_id(&self) -> CallId {
        match self {
            Signal::Offer { call_id, .. }
            | Signal::Answer { call_id, .. }
            | Signal::Ice { call_id, .. } => *call_id,
        }
    }
}

/// Why the server ends a session on its own initiative.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The same user logged in on another connection.
    TakenOver,
    /// The daemon is stopping.
    ShuttingDown,
    /// A guest's time is up.
    GuestExpired,
    /// The account was deleted.
    AccountDeleted,
    /// The user logged out elsewhere while this session was being resumed.
    LoggedOut,
    /// An operator ended the user's sessions (`switchboard user kick`).
    Kicked,
}

/// Something a connection is told without having asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    Presence {
        user: UserId,
        username: Arc<str>,
        state: UserState,
    },
    IncomingCall {
        call_id: CallId,
        from: Party,
    },
    CallAccepted {
        call_id: CallId,
        peer: Party,
    },
    CallDeclined {
        call_id: CallId,
        peer: Party,
        timed_out: bool,
    },
    HungUp {
        call_id: CallId,
    },
    Signal(Signal),
    /// The other party of a call lost its connection and may resume
    /// (`reconnecting`), or has resumed. Only for clients that said HELLO.
    PeerStatus {
        call_id: CallId,
        peer: Party,
        reconnecting: bool,
        grace_ms: u64,
    },
    SessionEnded(SessionEnd),
}

/// Delivery to connections. Implementations queue and return at once: they
/// never block on a slow client.
pub trait Notifier: Send + Sync {
    /// Queues a notice for one connection; unknown connections are skipped.
    fn notify(&self, to: ConnId, notice: Notice);
    /// Queues notices about users (presence) for every connection in
    /// `audience`, each notice prepared once for all of them. A connection is
    /// not told about its own user; it gets the rest in order, as one batch.
    fn notify_each(&self, audience: &[(UserId, ConnId)], about: Vec<(UserId, Notice)>);
    /// Queues a final notice and closes the connection once it is sent.
    fn end_session(&self, conn: ConnId, why: SessionEnd);
}
