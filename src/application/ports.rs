//! The ports: what the use cases need from storage and from delivery.

use std::fmt;
use std::io;
use std::sync::Arc;

use crate::domain::{CallId, RoomId, UserId, UserState};

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
pub trait RevocationStore: Send + Sync {
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

/// Where relayed signaling belongs: a 1:1 call, or a pair inside a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Call(CallId),
    Room(RoomId),
}

/// Signaling relayed between two peers of a call or a room. `from` is always
/// the authenticated sender, `to` the peer the server checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    Offer {
        scope: Scope,
        from: UserId,
        to: UserId,
        sdp: String,
    },
    Answer {
        scope: Scope,
        from: UserId,
        to: UserId,
        sdp: String,
    },
    Ice {
        scope: Scope,
        from: UserId,
        to: UserId,
        candidate: String,
        sdp_mid: Option<String>,
        sdp_mline_index: u32,
    },
}

impl Signal {
    pub fn scope(&self) -> Scope {
        match self {
            Signal::Offer { scope, .. }
            | Signal::Answer { scope, .. }
            | Signal::Ice { scope, .. } => *scope,
        }
    }
}

/// A room as its participants and ROOM_LIST see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomView {
    pub id: RoomId,
    pub name: Arc<str>,
    pub description: String,
    pub owner: UserId,
    pub has_password: bool,
    pub invite_only: bool,
    pub members_invite: bool,
    pub participants: usize,
    pub max_participants: u32,
}

/// Why a participant left a room, as ROOM_PEER_LEFT says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoomExit {
    Left,
    Disconnected,
    LoggedOut,
    TakenOver,
    Expired,
    DeletedAccount,
    ServerStopping,
    Kicked,
    Banned,
}

impl RoomExit {
    /// The wire word (and the event log's).
    pub fn as_str(self) -> &'static str {
        match self {
            RoomExit::Left => "left",
            RoomExit::Disconnected => "disconnected",
            RoomExit::LoggedOut => "logged_out",
            RoomExit::TakenOver => "taken_over",
            RoomExit::Expired => "expired",
            RoomExit::DeletedAccount => "deleted_account",
            RoomExit::ServerStopping => "server_stopping",
            RoomExit::Kicked => "kicked",
            RoomExit::Banned => "banned",
        }
    }
}

/// A chat message of a room, as every participant gets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomLine {
    pub room: RoomId,
    pub seq: u64,
    pub from: Party,
    pub text: Arc<str>,
    /// Unix milliseconds.
    pub sent_at: u64,
}

/// Where a notice came from the offline inbox: its id there (the client
/// acknowledges up to it) and how many older notices the full inbox lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FromInbox {
    pub id: u64,
    pub dropped: u64,
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
    /// Someone joined a room the recipient is in; they will offer.
    RoomPeerJoined {
        room: RoomId,
        peer: Party,
    },
    /// Someone left a room the recipient is in (or the recipient was put out).
    RoomPeerLeft {
        room: RoomId,
        peer: Party,
        why: RoomExit,
    },
    /// A room participant's connection dropped (held for a RESUME) or is back.
    RoomPeerStatus {
        room: RoomId,
        peer: Party,
        reconnecting: bool,
        grace_ms: u64,
    },
    RoomInvitation {
        room: RoomId,
        name: Arc<str>,
        from: Party,
        inbox: Option<FromInbox>,
    },
    /// To a room's owner.
    RoomKnock {
        room: RoomId,
        knocker: Party,
        text: String,
        inbox: Option<FromInbox>,
    },
    /// To the knocker.
    RoomKnockDenied {
        room: RoomId,
        user: UserId,
        inbox: Option<FromInbox>,
    },
    RoomUpdated(Arc<RoomView>),
    RoomDeleted {
        room: RoomId,
    },
    RoomMessage(Arc<RoomLine>),
}

/// A numbered batch of notices about users (presence), for every online user
/// but the one each notice is about. Batches reach each recipient at most
/// once, in id order; [`Delivery::catch_up`] lets a direct notice overtake no
/// batch that was decided before it.
#[derive(Debug)]
pub struct Broadcast {
    /// Increasing: a recipient that has a batch never takes an older one.
    pub id: u64,
    /// Each notice with the user it is about (who is not told).
    pub about: Vec<(UserId, Notice)>,
}

/// Delivery to users: the port every use case sends through. The local
/// adapter maps each online user to their connection; a cluster adapter routes
/// to the node that holds the user. Implementations queue and return at once
/// (they never block on a slow client), and no caller holds a lock across a
/// [`Delivery::broadcast`].
pub trait Delivery: Send + Sync {
    /// Routes `user`'s deliveries to `session` from now on (login, resume).
    fn attach(&self, user: UserId, session: ConnId);
    /// Stops routing to `user`, if `session` is still their route (the
    /// session ended, or is held while its connection is gone).
    fn detach(&self, user: UserId, session: ConnId);
    /// Queues a notice for `user`; a user with no route gets nothing.
    fn to_user(&self, user: UserId, notice: Notice);
    /// Delivers a relayed frame (SDP, ICE) to `user`: like
    /// [`Delivery::to_user`], but the caller holds no lock, so an adapter may
    /// write it out on the caller's thread (write-through).
    fn relay_to_user(&self, user: UserId, notice: Notice) {
        self.to_user(user, notice);
    }
    /// Queues one notice for each of `users` (a room's participants), encoded
    /// once. The audience is a few users: callers may hold a lock.
    fn to_users(&self, users: &[UserId], notice: Notice) {
        for user in users {
            self.to_user(*user, notice.clone());
        }
    }
    /// Queues `batch` for every routed user but the one each notice is
    /// about, each notice encoded once. Skips users who already have it.
    fn broadcast(&self, batch: &Broadcast);
    /// Queues, for `user` alone, each of `batches` (in id order) that they do
    /// not have yet: called before a direct notice, so that it comes after
    /// every presence change decided before it.
    fn catch_up(&self, user: UserId, batches: &[Arc<Broadcast>]);
    /// Ends one session: a final notice, then its connection closes. The one
    /// call addressed by session rather than by user: a takeover ends the old
    /// session while the user's route already names the new one.
    fn end_session(&self, session: ConnId, why: SessionEnd);
}
