//! Per-connection outbound queues and the registry that delivers into them.
//!
//! Any thread may push an encoded frame onto a connection's [`Outbox`] and
//! signal its eventfd; the connection's own thread (the owner) takes frames
//! off and writes them to the socket. The queue is bounded in bytes: a client
//! that does not read overflows it and is disconnected, and nobody else ever
//! waits on it.
//!
//! One exception saves the owner a wake-up per relayed frame: a relay (SDP,
//! ICE: one recipient) finding the queue empty and the owner idle is written
//! to the stream by the sender itself, under the queue's lock
//! ([`Outbox::push_through`]), over plain TCP and TLS alike. The stream is
//! the outbox's [`Sink`] while the connection serves. Over TLS the sender
//! also takes the stream's own lock inside the queue's (order: `Outbox.queue`
//! -> `SharedTls.stream`), for the SSL_write calls of that one frame; the
//! owner takes the stream's lock alone for each of its own reads and writes
//! and never takes the queue's inside it (see `transport.rs`). Neither lock
//! is held across anything that waits for the network: the socket is
//! non-blocking, and what it does not take is left for the owner.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use crate::sync::lock;

use log::{debug, warn};
use rustix::event::{EventfdFlags, eventfd};

use super::message::{
    CallAnswered, CallNotification, Hangup, IceCandidate, PeerStatus, RoomChat, RoomDeleted,
    RoomInvitation, RoomKnock, RoomMember, RoomPeerJoined, RoomPeerLeft, RoomUpdated, Sdp,
    ServerMessage, UserStateUpdate,
};
use super::transport::{Sink, Through};
use crate::application::ports::{FromInbox, Scope};
use crate::application::{Broadcast, ConnId, Delivery, Notice, SessionEnd, Signal};
use crate::domain::UserId;
use crate::metrics::Metrics;

/// Queue slots an empty queue keeps; a larger ring is released.
const KEEP_SLOTS: usize = 64;

/// An encoded frame, shared by every recipient of a broadcast.
pub type Frame = Arc<[u8]>;

/// Why the server closes a connection from outside its thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    SlowConsumer,
    TakenOver,
    ShuttingDown,
    GuestExpired,
    AccountDeleted,
    LoggedOut,
    Kicked,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::TakenOver => "logged in elsewhere",
            CloseReason::ShuttingDown => "server shutting down",
            CloseReason::GuestExpired => "guest session expired",
            CloseReason::AccountDeleted => "account deleted",
            CloseReason::LoggedOut => "logged out elsewhere",
            CloseReason::Kicked => "session ended by an operator",
        }
    }
}

#[derive(Default)]
struct Queue {
    /// The rest of a frame a sender wrote only in part: the next bytes
    /// written to the stream, before any frame and any answer of the owner's
    /// (over TLS, OpenSSL may hold a record of them and must be handed the
    /// same bytes again).
    partial: Option<Vec<u8>>,
    frames: VecDeque<Frame>,
    bytes: usize,
    close: Option<CloseReason>,
    /// The newest presence batch queued here ([`Outbox::push_batch`]).
    batch: u64,
    /// The stream, for write-through (plain or TLS). `None` before the
    /// connection runs and once it starts closing.
    sink: Option<Sink>,
    /// The owner thread has taken bytes it has not finished writing: nobody
    /// else may write to the socket until it says it is done.
    owner_writing: bool,
}

/// A connection's outbound queue and wake-up.
pub struct Outbox {
    queue: Mutex<Queue>,
    wake: OwnedFd,
    cap: usize,
}

impl Outbox {
    /// # Errors
    /// If no eventfd can be created (descriptor limit).
    pub fn new(cap: usize) -> std::io::Result<Outbox> {
        let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Outbox {
            queue: Mutex::new(Queue::default()),
            wake,
            cap,
        })
    }

    /// The descriptor the connection thread polls.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    fn signal(&self) {
        // EAGAIN means the counter is already non-zero: the thread is woken anyway.
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    /// Clears the wake-up; called by the connection thread before taking frames.
    pub fn clear_wake(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.wake, &mut buf);
    }

    /// Queues a frame. Over the byte cap the connection is marked as a slow
    /// consumer instead: its queue is dropped and its thread closes it.
    pub fn push(&self, frame: Frame) {
        self.push_all(std::iter::once(frame));
    }

    /// Queues frames in order under one lock, with at most one wake-up: a
    /// batch of presence updates costs the connection one wake-up and one
    /// write, not one per update.
    pub fn push_all(&self, frames: impl IntoIterator<Item = Frame>) {
        self.push_locked(lock(&self.queue), frames);
    }

    fn push_locked(
        &self,
        mut queue: MutexGuard<'_, Queue>,
        frames: impl IntoIterator<Item = Frame>,
    ) {
        if queue.close.is_some() {
            return;
        }
        let was_empty = queue.frames.is_empty();
        for frame in frames {
            if queue.bytes + frame.len() > self.cap {
                queue.close = Some(CloseReason::SlowConsumer);
                queue.frames.clear();
                queue.bytes = 0;
                drop(queue);
                self.signal();
                return;
            }
            queue.bytes += frame.len();
            queue.frames.push_back(frame);
        }
        let signal = was_empty && !queue.frames.is_empty();
        drop(queue);
        // Only the first frame needs a wake-up: the thread drains the whole queue
        // after clearing the eventfd, so later frames are picked up by that pass.
        if signal {
            self.signal();
        }
    }

    /// Queues broadcast batch `id` unless this connection has it (or a newer
    /// one) already: a batch can reach a connection both by its broadcast and
    /// by a catch-up before a direct notice, and must be queued once.
    pub fn push_batch<'a>(&self, id: u64, frames: impl IntoIterator<Item = &'a Frame>) {
        let mut queue = lock(&self.queue);
        if queue.batch >= id || queue.close.is_some() {
            return;
        }
        queue.batch = id;
        // Under the same lock as the check: a catch-up followed by a direct
        // notice on another thread cannot slip in between.
        self.push_locked(queue, frames.into_iter().cloned());
    }

    /// Lets senders write to `sink` directly (or stops them, with `None`:
    /// once this returns, no sender is writing or will write to it).
    pub fn set_sink(&self, sink: Option<Sink>) {
        lock(&self.queue).sink = sink;
    }

    /// The owner is about to put bytes of its own (answers) into `out`, its
    /// write buffer, or to write it: senders queue from now on, until
    /// [`Outbox::end_write`]. The rest of a relay a sender wrote in part is
    /// moved to the front of `out` (nothing of which may have been written
    /// yet): it goes out before any answer.
    pub fn begin_write(&self, out: &mut Vec<u8>) {
        let mut queue = lock(&self.queue);
        queue.owner_writing = true;
        take_rest(&mut queue, out);
    }

    /// The owner has written everything it took: senders may write through again.
    pub fn end_write(&self) {
        lock(&self.queue).owner_writing = false;
    }

    /// Delivers a frame with one recipient (a relay). When nothing is queued,
    /// no partly written frame waits and the owner is not writing, the sender
    /// writes it to the stream itself (non-blocking, under this queue's lock,
    /// so "idle? then write" and every enqueue are ordered) and wakes the
    /// owner only for what the stream did not take. This saves the owner a
    /// wake-up and a context switch per relayed frame. Anything else (a full
    /// socket, an error the owner will find itself, a busy owner) falls back
    /// to the queue.
    pub fn push_through(&self, frame: Frame, metrics: &Metrics) {
        let mut queue = lock(&self.queue);
        if queue.close.is_some() {
            return;
        }
        let idle = queue.frames.is_empty() && queue.partial.is_none() && !queue.owner_writing;
        if let (true, Some(sink)) = (idle, queue.sink.as_ref()) {
            let (through, input_buffered) = sink.write_through(&frame);
            let written = match through {
                Through::All => frame.len(),
                Through::Part(n) => n,
                // Only plain TCP takes nothing: it reports no buffered input.
                Through::Nothing => return self.push_locked(queue, std::iter::once(frame)),
            };
            // Counted here, once: take_into does not count a rest.
            Metrics::add(&metrics.bytes_out, written as u64);
            if let Some(kind) = frame.get(super::frame::PREFIX_LEN) {
                Metrics::count(&metrics.frames_out[usize::from(*kind)]);
            }
            if written > 0 {
                Metrics::count(&metrics.written_through);
            }
            let owed = written < frame.len();
            if owed {
                let rest = frame[written..].to_vec();
                queue.bytes += rest.len();
                queue.partial = Some(rest);
            }
            drop(queue);
            // The owner writes the rest, or reads what TLS decrypted meanwhile.
            if owed || input_buffered {
                self.signal();
            }
            return;
        }
        self.push_locked(queue, std::iter::once(frame));
    }

    /// Queues a last frame (past the cap: it is small) and asks the thread to
    /// close once everything queued is written.
    pub fn push_final(&self, frame: Frame, reason: CloseReason) {
        let mut queue = lock(&self.queue);
        if queue.close.is_some() {
            return;
        }
        queue.bytes += frame.len();
        queue.frames.push_back(frame);
        queue.close = Some(reason);
        drop(queue);
        self.signal();
    }

    /// Moves queued frames into `out` until it holds at least `budget` bytes.
    /// Returns the close request, if any, once the queue is empty.
    pub fn take_into(&self, out: &mut Vec<u8>, budget: usize, metrics: &Metrics) -> Drained {
        let mut queue = lock(&self.queue);
        // One allocation for the whole batch rather than a doubling per frame.
        let want = queue.bytes.min(budget.saturating_sub(out.len()));
        out.reserve(want);
        if queue.partial.is_some() || !queue.frames.is_empty() {
            Metrics::count(&metrics.outbox_drains);
        }
        take_rest(&mut queue, out);
        while out.len() < budget {
            let Some(frame) = queue.frames.pop_front() else {
                break;
            };
            queue.bytes -= frame.len();
            if let Some(kind) = frame.get(super::frame::PREFIX_LEN) {
                Metrics::count(&metrics.frames_out[usize::from(*kind)]);
            }
            out.extend_from_slice(&frame);
        }
        // A burst (a presence storm) can grow the ring to thousands of slots;
        // an idle connection should not keep them.
        if queue.frames.is_empty() && queue.frames.capacity() > KEEP_SLOTS {
            queue.frames = VecDeque::new();
        }
        // What was taken is the owner's to write now; senders queue behind it.
        if !out.is_empty() {
            queue.owner_writing = true;
        }
        Drained {
            more: !queue.frames.is_empty(),
            close: if queue.frames.is_empty() {
                queue.close
            } else {
                None
            },
            slow: queue.close == Some(CloseReason::SlowConsumer),
        }
    }

    /// The client overflowed its queue: close it now, whatever else is pending.
    pub fn overflowed(&self) -> bool {
        lock(&self.queue).close == Some(CloseReason::SlowConsumer)
    }

    /// Bytes waiting in the queue.
    pub fn queued_bytes(&self) -> usize {
        lock(&self.queue).bytes
    }
}

/// Moves a relay's unwritten rest to the front of `out`, the owner's
/// unsent bytes. None of them has been written yet: a rest is left only
/// while the owner is not writing, and the owner says it is writing
/// ([`Outbox::begin_write`], [`Outbox::take_into`]) before it puts anything
/// into its buffer. The rest was counted as a frame already, by the sender
/// that wrote its start.
fn take_rest(queue: &mut Queue, out: &mut Vec<u8>) {
    if let Some(rest) = queue.partial.take() {
        queue.bytes -= rest.len();
        out.splice(0..0, rest);
    }
}

/// The result of [`Outbox::take_into`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Frames remain queued (the budget was reached).
    pub more: bool,
    /// Close after writing what was taken.
    pub close: Option<CloseReason>,
    /// Close now: the client stopped reading and overflowed its queue.
    pub slow: bool,
}

/// Every open connection's outbox, and which one each online user is routed
/// to: the local adapter of the [`Delivery`] port.
///
/// Locks: `map` (connections; written at accept and close) and `routes`
/// (users; written at login, logout, hold and resume, under the hub's state
/// lock) are read-mostly and never held across a push to more than one
/// outbox: a broadcast takes a snapshot and releases them first. Neither is
/// taken while the other is held, except `map` inside `routes`' write lock in
/// [`Delivery::attach`] (order: `routes` -> `map` -> an outbox's queue).
/// `batches` caches the last few broadcasts' frames, so that a catch-up and
/// the broadcast encode a batch once; it is held only to look up or insert.
pub struct Connections {
    map: RwLock<HashMap<ConnId, Arc<Outbox>>>,
    routes: RwLock<HashMap<UserId, Route>>,
    batches: Mutex<VecDeque<(u64, EncodedBatch)>>,
    next_id: AtomicU64,
    /// Frames encoded for delivery, for tests and metrics: a broadcast counts once.
    encoded: AtomicU64,
    metrics: Arc<Metrics>,
}

/// Where a user's deliveries go.
#[derive(Clone)]
struct Route {
    conn: ConnId,
    outbox: Arc<Outbox>,
}

/// A broadcast's frames, each with the user it is about (who skips it).
type EncodedBatch = Arc<[(UserId, Frame)]>;

/// Encoded broadcasts kept for catch-ups: batches in flight at once are few.
const BATCH_CACHE: usize = 8;

impl Connections {
    pub fn new(metrics: Arc<Metrics>) -> Connections {
        Connections {
            map: RwLock::default(),
            routes: RwLock::default(),
            batches: Mutex::default(),
            next_id: AtomicU64::new(1),
            encoded: AtomicU64::new(0),
            metrics,
        }
    }

    pub fn next_id(&self) -> ConnId {
        ConnId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    pub fn insert(&self, id: ConnId, outbox: Arc<Outbox>) {
        self.map
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, outbox);
    }

    pub fn remove(&self, id: ConnId) {
        self.map
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    pub fn len(&self) -> usize {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn frames_encoded(&self) -> u64 {
        self.encoded.load(Ordering::Relaxed)
    }

    fn get(&self, id: ConnId) -> Option<Arc<Outbox>> {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    fn route(&self, user: UserId) -> Option<Route> {
        self.routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&user)
            .cloned()
    }

    /// The frames of `batch`, encoded once however often it is asked for.
    fn encoded(&self, batch: &Broadcast) -> EncodedBatch {
        let cached = lock(&self.batches)
            .iter()
            .find(|(id, _)| *id == batch.id)
            .map(|(_, frames)| frames.clone());
        if let Some(frames) = cached {
            return frames;
        }
        let frames: EncodedBatch = batch
            .about
            .iter()
            .map(|(user, notice)| (*user, self.encode(&notice_message(notice.clone()))))
            .collect();
        let mut cache = lock(&self.batches);
        if !cache.iter().any(|(id, _)| *id == batch.id) {
            if cache.len() >= BATCH_CACHE {
                cache.pop_front();
            }
            cache.push_back((batch.id, frames.clone()));
        }
        frames
    }

    fn encode(&self, message: &ServerMessage) -> Frame {
        self.encoded.fetch_add(1, Ordering::Relaxed);
        Arc::from(message.to_frame())
    }

    /// Tells every connection, logged in or not, that the server is stopping,
    /// and has each close once that is written.
    pub fn end_all(&self, why: SessionEnd) {
        let message = session_end_message(why);
        let frame = self.encode(&message);
        let outboxes: Vec<Arc<Outbox>> = self
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for outbox in outboxes {
            self.count_error(&message);
            outbox.push_final(frame.clone(), close_reason(why));
        }
    }

    fn count_error(&self, message: &ServerMessage) {
        if let ServerMessage::Error(e) = message {
            self.metrics.error(e.code);
        }
    }
}

impl Delivery for Connections {
    fn attach(&self, user: UserId, session: ConnId) {
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        match self.get(session) {
            Some(outbox) => {
                routes.insert(
                    user,
                    Route {
                        conn: session,
                        outbox,
                    },
                );
            }
            // The connection closed before its login was recorded.
            None => {
                routes.remove(&user);
            }
        }
    }

    fn detach(&self, user: UserId, session: ConnId) {
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        if routes.get(&user).is_some_and(|r| r.conn == session) {
            routes.remove(&user);
        }
    }

    fn to_user(&self, user: UserId, notice: Notice) {
        match self.route(user) {
            Some(route) => route.outbox.push(self.encode(&notice_message(notice))),
            None => debug!("notice for offline user_id={user} skipped"),
        }
    }

    fn relay_to_user(&self, user: UserId, notice: Notice) {
        match self.route(user) {
            Some(route) => route
                .outbox
                .push_through(self.encode(&notice_message(notice)), &self.metrics),
            None => debug!("relay for offline user_id={user} skipped"),
        }
    }

    fn to_users(&self, users: &[UserId], notice: Notice) {
        let routes: Vec<Route> = {
            let table = self.routes.read().unwrap_or_else(PoisonError::into_inner);
            users.iter().filter_map(|u| table.get(u).cloned()).collect()
        };
        if routes.is_empty() {
            return;
        }
        let frame = self.encode(&notice_message(notice));
        for route in routes {
            route.outbox.push(frame.clone());
        }
    }

    fn broadcast(&self, batch: &Broadcast) {
        if batch.about.is_empty() {
            return;
        }
        Metrics::count(&self.metrics.presence_batches);
        let frames = self.encoded(batch);
        // A snapshot: the route table is not held across the fan-out, so
        // logins, logouts and relays never wait for it.
        let audience: Vec<(UserId, Arc<Outbox>)> = self
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(user, route)| (*user, route.outbox.clone()))
            .collect();
        for (reader, outbox) in audience {
            outbox.push_batch(
                batch.id,
                frames
                    .iter()
                    .filter(|(about, _)| *about != reader)
                    .map(|(_, frame)| frame),
            );
        }
    }

    fn catch_up(&self, user: UserId, batches: &[Arc<Broadcast>]) {
        if batches.is_empty() {
            return;
        }
        let Some(route) = self.route(user) else {
            return;
        };
        for batch in batches {
            let frames = self.encoded(batch);
            route.outbox.push_batch(
                batch.id,
                frames
                    .iter()
                    .filter(|(about, _)| *about != user)
                    .map(|(_, frame)| frame),
            );
        }
    }

    fn end_session(&self, session: ConnId, why: SessionEnd) {
        match self.get(session) {
            Some(outbox) => {
                let message = session_end_message(why);
                self.count_error(&message);
                outbox.push_final(self.encode(&message), close_reason(why));
            }
            None => warn!("session end for closed conn={session} skipped"),
        }
    }
}

fn close_reason(why: SessionEnd) -> CloseReason {
    match why {
        SessionEnd::TakenOver => CloseReason::TakenOver,
        SessionEnd::ShuttingDown => CloseReason::ShuttingDown,
        SessionEnd::GuestExpired => CloseReason::GuestExpired,
        SessionEnd::AccountDeleted => CloseReason::AccountDeleted,
        SessionEnd::LoggedOut => CloseReason::LoggedOut,
        SessionEnd::Kicked => CloseReason::Kicked,
    }
}

fn session_end_message(why: SessionEnd) -> ServerMessage {
    match why {
        SessionEnd::TakenOver => ServerMessage::error(409, "logged in elsewhere", None),
        SessionEnd::ShuttingDown => ServerMessage::error(503, "server shutting down", None),
        SessionEnd::GuestExpired => ServerMessage::error(401, "guest session expired", None),
        SessionEnd::AccountDeleted => ServerMessage::error(401, "account deleted", None),
        SessionEnd::LoggedOut => ServerMessage::error(401, "logged out elsewhere", None),
        SessionEnd::Kicked => ServerMessage::error(401, "session ended by an operator", None),
    }
}

/// The wire form of a notice.
pub fn notice_message(notice: Notice) -> ServerMessage {
    match notice {
        Notice::Presence {
            user,
            username,
            state,
        } => ServerMessage::UserStateUpdate(UserStateUpdate {
            user_id: user.to_string(),
            username: username.to_string(),
            state: state.as_str().to_string(),
        }),
        Notice::IncomingCall { call_id, from } => {
            ServerMessage::CallNotification(CallNotification {
                call_id: call_id.to_string(),
                from_user_id: from.id.to_string(),
                from_username: from.username.to_string(),
            })
        }
        Notice::CallAccepted { call_id, peer } => ServerMessage::CallAccepted(CallAnswered {
            call_id: call_id.to_string(),
            peer_user_id: peer.id.to_string(),
            peer_username: peer.username.to_string(),
            reason: None,
        }),
        Notice::CallDeclined {
            call_id,
            peer,
            timed_out,
        } => ServerMessage::CallDeclined(CallAnswered {
            call_id: call_id.to_string(),
            peer_user_id: peer.id.to_string(),
            peer_username: peer.username.to_string(),
            reason: timed_out.then(|| "timeout".to_string()),
        }),
        Notice::HungUp { call_id } => ServerMessage::Hangup(Hangup {
            call_id: Some(call_id.to_string()),
            req_id: None,
        }),
        Notice::Signal(signal) => signal_message(signal),
        Notice::PeerStatus {
            call_id,
            peer,
            reconnecting,
            grace_ms,
        } => ServerMessage::PeerStatus(PeerStatus {
            call_id: Some(call_id.to_string()),
            room_id: None,
            peer_user_id: peer.id.to_string(),
            peer_username: peer.username.to_string(),
            status: if reconnecting {
                "reconnecting"
            } else {
                "reconnected"
            }
            .into(),
            grace_ms: reconnecting.then_some(grace_ms),
        }),
        Notice::SessionEnded(why) => session_end_message(why),
        room => match room_message(room) {
            Some(message) => message,
            None => ServerMessage::error(500, "a notice the server cannot encode", None),
        },
    }
}

/// `call_id` and `room_id` of a scope, as the wire carries them.
fn scope_ids(scope: Scope) -> (Option<String>, Option<String>) {
    match scope {
        Scope::Call(id) => (Some(id.to_string()), None),
        Scope::Room(id) => (None, Some(id.to_string())),
    }
}

fn signal_message(signal: Signal) -> ServerMessage {
    match signal {
        Signal::Offer {
            scope,
            from,
            to,
            sdp,
        } => {
            let (call_id, room_id) = scope_ids(scope);
            ServerMessage::SdpOffer(Sdp {
                call_id,
                room_id,
                from_user_id: from.to_string(),
                to_user_id: to.to_string(),
                sdp,
                req_id: None,
            })
        }
        Signal::Answer {
            scope,
            from,
            to,
            sdp,
        } => {
            let (call_id, room_id) = scope_ids(scope);
            ServerMessage::SdpAnswer(Sdp {
                call_id,
                room_id,
                from_user_id: from.to_string(),
                to_user_id: to.to_string(),
                sdp,
                req_id: None,
            })
        }
        Signal::Ice {
            scope,
            from,
            to,
            candidate,
            sdp_mid,
            sdp_mline_index,
        } => {
            let (call_id, room_id) = scope_ids(scope);
            ServerMessage::IceCandidate(IceCandidate {
                call_id,
                room_id,
                from_user_id: from.to_string(),
                to_user_id: to.to_string(),
                candidate,
                sdp_mid,
                sdp_mline_index,
                req_id: None,
            })
        }
    }
}

/// The wire form of a room notice.
fn room_message(notice: Notice) -> Option<ServerMessage> {
    let inbox = |i: Option<FromInbox>| (i.map(|i| i.id), i.map(|i| i.dropped).filter(|d| *d > 0));
    Some(match notice {
        Notice::RoomPeerJoined { room, peer } => ServerMessage::RoomPeerJoined(RoomPeerJoined {
            room_id: room.to_string(),
            user_id: peer.id.to_string(),
            username: peer.username.to_string(),
            create_offer: false,
        }),
        Notice::RoomPeerLeft { room, peer, why } => ServerMessage::RoomPeerLeft(RoomPeerLeft {
            room_id: room.to_string(),
            user_id: peer.id.to_string(),
            username: peer.username.to_string(),
            reason: why.as_str().to_string(),
        }),
        Notice::RoomPeerStatus {
            room,
            peer,
            reconnecting,
            grace_ms,
        } => ServerMessage::PeerStatus(PeerStatus {
            call_id: None,
            room_id: Some(room.to_string()),
            peer_user_id: peer.id.to_string(),
            peer_username: peer.username.to_string(),
            status: if reconnecting {
                "reconnecting"
            } else {
                "reconnected"
            }
            .into(),
            grace_ms: reconnecting.then_some(grace_ms),
        }),
        Notice::RoomInvitation {
            room,
            name,
            from,
            inbox: i,
        } => {
            let (inbox_id, inbox_dropped) = inbox(i);
            ServerMessage::RoomInvitation(RoomInvitation {
                room_id: room.to_string(),
                name: name.to_string(),
                from_user_id: from.id.to_string(),
                from_username: from.username.to_string(),
                inbox_id,
                inbox_dropped,
            })
        }
        Notice::RoomKnock {
            room,
            knocker,
            text,
            inbox: i,
        } => {
            let (inbox_id, inbox_dropped) = inbox(i);
            ServerMessage::RoomKnock(RoomKnock {
                room_id: room.to_string(),
                user_id: knocker.id.to_string(),
                username: knocker.username.to_string(),
                text,
                inbox_id,
                inbox_dropped,
            })
        }
        Notice::RoomKnockDenied {
            room,
            user,
            inbox: i,
        } => {
            let (inbox_id, inbox_dropped) = inbox(i);
            ServerMessage::RoomKnockDeny(RoomMember {
                success: None,
                room_id: room.to_string(),
                user_id: user.to_string(),
                banned: None,
                inbox_id,
                inbox_dropped,
                req_id: None,
            })
        }
        Notice::RoomUpdated(view) => ServerMessage::RoomUpdated(RoomUpdated {
            success: None,
            room: super::handlers::room_view(&view),
            req_id: None,
        }),
        Notice::RoomDeleted { room } => ServerMessage::RoomDeleted(RoomDeleted {
            room_id: room.to_string(),
        }),
        Notice::RoomMessage(line) => ServerMessage::RoomMessage(RoomChat {
            room_id: Some(line.room.to_string()),
            seq: line.seq,
            from_user_id: line.from.id.to_string(),
            from_username: line.from.username.to_string(),
            text: line.text.to_string(),
            sent_at: line.sent_at,
        }),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::transport::{Socket, Transport};
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn frame(n: usize) -> Frame {
        Arc::from(vec![7u8; n])
    }

    /// A connected pair: the server side (non-blocking, as connections run) and the client.
    fn socket_pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (Arc::new(server), client)
    }

    /// A TLS connection as the daemon runs one: the server's [`Transport`]
    /// (non-blocking, after the handshake) and the client's stream. The
    /// server speaks with a self-signed certificate made here, which this
    /// client does not check.
    fn tls_pair() -> (Transport, native_tls::TlsStream<TcpStream>) {
        use openssl::{asn1::Asn1Time, ec, hash::MessageDigest, nid::Nid, pkey::PKey, x509};
        let group = ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(ec::EcKey::generate(&group).unwrap()).unwrap();
        let mut name = x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "localhost").unwrap();
        let name = name.build();
        let mut cert = x509::X509::builder().unwrap();
        cert.set_version(2).unwrap();
        cert.set_subject_name(&name).unwrap();
        cert.set_issuer_name(&name).unwrap();
        cert.set_pubkey(&key).unwrap();
        cert.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        cert.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        cert.sign(&key, MessageDigest::sha256()).unwrap();
        let identity = native_tls::Identity::from_pkcs8(
            &cert.build().to_pem().unwrap(),
            &key.private_key_to_pem_pkcs8().unwrap(),
        )
        .unwrap();
        let acceptor = native_tls::TlsAcceptor::new(identity).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let connector = native_tls::TlsConnector::builder()
                .danger_accept_invalid_certs(true)
                .build()
                .unwrap();
            connector
                .connect("localhost", TcpStream::connect(addr).unwrap())
                .unwrap()
        });
        let (server, _) = listener.accept().unwrap();
        let server = acceptor.accept(Socket::new(server)).unwrap();
        let client = client.join().unwrap();
        server.get_ref().tcp().set_nonblocking(true).unwrap();
        (Transport::tls(server), client)
    }

    /// Writes all of `bytes` as the owner does, waiting while the socket is full.
    fn owner_writes(transport: &mut Transport, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match transport.write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => panic!("owner's write: {e}"),
            }
        }
    }

    /// An idle outbox writes a relay straight to the socket and queues
    /// nothing; while the owner writes, relays queue behind it instead.
    #[test]
    fn relays_are_written_through_only_while_the_owner_is_idle() {
        let metrics = Metrics::default();
        let (server, mut client) = socket_pair();
        let outbox = Outbox::new(1 << 20).unwrap();
        outbox.set_sink(Some(Sink::Plain(server)));
        outbox.push_through(Arc::from(&b"\0\0\0\x01\x0fa"[..]), &metrics);
        assert_eq!(outbox.queued_bytes(), 0);
        let mut got = [0u8; 6];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"\0\0\0\x01\x0fa");
        assert_eq!(metrics.written_through.load(Ordering::Relaxed), 1);

        outbox.begin_write(&mut Vec::new());
        outbox.push_through(Arc::from(&b"queued"[..]), &metrics);
        assert_eq!(outbox.queued_bytes(), 6, "queued while the owner writes");
        outbox.end_write();
        outbox.push_through(Arc::from(&b"after"[..]), &metrics);
        assert_eq!(outbox.queued_bytes(), 11, "queued behind what is queued");
        let mut out = Vec::new();
        outbox.take_into(&mut out, 100, &metrics);
        assert_eq!(out, b"queuedafter");
    }

    /// What the socket does not take is the next thing written: the rest of a
    /// partly written frame comes out before anything queued after it.
    #[test]
    fn a_partly_written_relay_is_finished_before_anything_else() {
        let metrics = Metrics::default();
        let (server, mut client) = socket_pair();
        let outbox = Outbox::new(64 << 20).unwrap();
        outbox.set_sink(Some(Sink::Plain(server)));
        let big: Frame = Arc::from(vec![b'x'; 16 << 20]);
        outbox.push_through(big.clone(), &metrics);
        let queued = outbox.queued_bytes();
        assert!(queued > 0 && queued < big.len(), "partly written: {queued}");
        outbox.push_through(Arc::from(&b"next"[..]), &metrics);
        let mut out = Vec::new();
        outbox.take_into(&mut out, usize::MAX, &metrics);
        assert_eq!(out.len(), queued + 4);
        assert!(out.ends_with(b"xnext"));
        let written = big.len() - queued;
        let mut got = vec![0u8; written];
        client.read_exact(&mut got).unwrap();
        assert!(got.iter().all(|b| *b == b'x'));
    }

    /// The rest of a partly written relay goes before the owner's own
    /// answers: once the owner says it writes, the rest is at the front of
    /// its buffer, and relays queue behind both.
    #[test]
    fn the_rest_of_a_relay_goes_out_before_the_owners_answers() {
        let metrics = Metrics::default();
        let (server, _client) = socket_pair();
        let outbox = Outbox::new(64 << 20).unwrap();
        outbox.set_sink(Some(Sink::Plain(server)));
        outbox.push_through(Arc::from(vec![b'x'; 16 << 20]), &metrics);
        let rest = outbox.queued_bytes();
        assert!(rest > 0, "partly written");
        let mut out = Vec::new();
        outbox.begin_write(&mut out);
        out.extend_from_slice(b"answer");
        outbox.push_through(Arc::from(&b"relay"[..]), &metrics);
        assert_eq!(out.len(), rest + 6);
        assert!(out.ends_with(b"xanswer"));
        assert_eq!(outbox.queued_bytes(), 5, "queued behind the owner's write");
    }

    /// Over TLS as over plain TCP: an idle outbox encrypts a relay straight
    /// onto the stream and queues nothing; while the owner writes, relays
    /// queue behind it.
    #[test]
    fn tls_relays_are_written_through_only_while_the_owner_is_idle() {
        let metrics = Metrics::default();
        let (transport, mut client) = tls_pair();
        let outbox = Outbox::new(1 << 20).unwrap();
        outbox.set_sink(Some(transport.sink()));
        outbox.push_through(Arc::from(&b"\0\0\0\x01\x0fa"[..]), &metrics);
        assert_eq!(outbox.queued_bytes(), 0);
        let mut got = [0u8; 6];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"\0\0\0\x01\x0fa");
        assert_eq!(metrics.written_through.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.bytes_out.load(Ordering::Relaxed), 6);

        outbox.begin_write(&mut Vec::new());
        outbox.push_through(Arc::from(&b"queued"[..]), &metrics);
        assert_eq!(outbox.queued_bytes(), 6, "queued while the owner writes");
        outbox.end_write();
        outbox.push_through(Arc::from(&b"after"[..]), &metrics);
        assert_eq!(outbox.queued_bytes(), 11, "queued behind what is queued");
        let mut out = Vec::new();
        outbox.take_into(&mut out, 100, &metrics);
        assert_eq!(out, b"queuedafter");
        assert_eq!(metrics.written_through.load(Ordering::Relaxed), 1);
    }

    /// A TLS relay the socket takes only in part: OpenSSL may hold an
    /// encrypted record of the rest, and SSL_write must be handed those bytes
    /// again. The owner does so (the rest comes first in its buffer), and the
    /// client decrypts the whole relay and then what was queued after it.
    #[test]
    fn a_partly_written_tls_relay_is_finished_before_anything_else() {
        let metrics = Metrics::default();
        let (mut transport, mut client) = tls_pair();
        let outbox = Outbox::new(64 << 20).unwrap();
        outbox.set_sink(Some(transport.sink()));
        let big: Frame = (0..16usize << 20).map(|i| (i % 251) as u8).collect();
        outbox.push_through(big.clone(), &metrics);
        let queued = outbox.queued_bytes();
        assert!(queued > 0 && queued < big.len(), "partly written: {queued}");
        outbox.push_through(Arc::from(&b"next"[..]), &metrics);
        let mut out = Vec::new();
        outbox.take_into(&mut out, usize::MAX, &metrics);
        assert_eq!(out.len(), queued + 4);
        assert!(out.ends_with(b"next"));
        let total = big.len() + 4;
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; total];
            client.read_exact(&mut got).map(|()| got)
        });
        owner_writes(&mut transport, &out);
        outbox.end_write();
        let got = reader.join().unwrap().unwrap();
        assert!(got[..big.len()] == big[..], "the relay arrives whole");
        assert_eq!(&got[big.len()..], b"next");
        outbox.set_sink(None);
        transport.close(std::time::Duration::ZERO);
    }

    /// A sender writes at most THROUGH_MAX of a large relay, plain or TLS;
    /// the owner writes the rest, first, and the client gets it whole.
    #[test]
    fn a_large_relay_is_written_through_only_in_part() {
        use crate::tcp::transport::THROUGH_MAX;
        let metrics = Metrics::default();
        let big: Frame = (0..1usize << 20).map(|i| (i % 251) as u8).collect();

        let (server, mut client) = socket_pair();
        let outbox = Outbox::new(64 << 20).unwrap();
        outbox.set_sink(Some(Sink::Plain(server)));
        outbox.push_through(big.clone(), &metrics);
        let queued = outbox.queued_bytes();
        assert!(
            queued >= big.len() - THROUGH_MAX && queued < big.len(),
            "plain: at most {THROUGH_MAX} written through, queued {queued}"
        );
        let mut out = Vec::new();
        outbox.take_into(&mut out, usize::MAX, &metrics);
        let mut got = vec![0u8; big.len() - queued];
        client.read_exact(&mut got).unwrap();
        got.extend_from_slice(&out);
        assert!(got == big[..], "plain: the relay arrives whole");

        let (mut transport, mut client) = tls_pair();
        let outbox = Outbox::new(64 << 20).unwrap();
        outbox.set_sink(Some(transport.sink()));
        outbox.push_through(big.clone(), &metrics);
        let queued = outbox.queued_bytes();
        assert!(
            queued >= big.len() - THROUGH_MAX && queued < big.len(),
            "TLS: at most {THROUGH_MAX} written through, queued {queued}"
        );
        let mut out = Vec::new();
        outbox.take_into(&mut out, usize::MAX, &metrics);
        let total = big.len();
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; total];
            client.read_exact(&mut got).map(|()| got)
        });
        owner_writes(&mut transport, &out);
        outbox.end_write();
        let got = reader.join().unwrap().unwrap();
        assert!(got == big[..], "TLS: the relay arrives whole");
        outbox.set_sink(None);
        transport.close(std::time::Duration::ZERO);
    }

    /// Frames come out in order and the byte count follows them.
    #[test]
    fn frames_come_out_in_order_within_the_budget() {
        let outbox = Outbox::new(100).unwrap();
        outbox.push(Arc::from(&b"ab"[..]));
        outbox.push(Arc::from(&b"cd"[..]));
        outbox.push(Arc::from(&b"ef"[..]));
        let mut out = Vec::new();
        let drained = outbox.take_into(&mut out, 3, &Metrics::default());
        assert_eq!(
            (out.as_slice(), drained.more, outbox.queued_bytes()),
            (&b"abcd"[..], true, 2)
        );
        outbox.take_into(&mut out, 100, &Metrics::default());
        assert_eq!(out, b"abcdef");
    }

    /// Overflowing the cap marks the connection slow and drops its queue.
    #[test]
    fn overflowing_the_cap_marks_a_slow_consumer() {
        let outbox = Outbox::new(10).unwrap();
        outbox.push(frame(6));
        outbox.push(frame(6));
        assert_eq!(outbox.queued_bytes(), 0);
        let mut out = Vec::new();
        let drained = outbox.take_into(&mut out, 100, &Metrics::default());
        assert!(drained.slow && out.is_empty());
        outbox.push(frame(1));
        assert_eq!(outbox.queued_bytes(), 0, "nothing is queued once closing");
    }

    /// A final frame is delivered after what was queued, then the close is reported.
    #[test]
    fn a_final_frame_closes_after_the_queue() {
        let outbox = Outbox::new(10).unwrap();
        outbox.push(frame(8));
        outbox.push_final(frame(8), CloseReason::TakenOver);
        let mut out = Vec::new();
        assert_eq!(
            outbox.take_into(&mut out, 1, &Metrics::default()).close,
            None
        );
        assert_eq!(
            outbox.take_into(&mut out, 100, &Metrics::default()).close,
            Some(CloseReason::TakenOver)
        );
        assert_eq!(out.len(), 16);
    }
}
