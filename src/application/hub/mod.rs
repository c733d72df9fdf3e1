//! Sessions, presence, calls and rooms: the shared state every connection works on.
//!
//! # Layout
//! This file holds the state, the one lock, committing a change and the one
//! leave path; each capability's use cases are in a file of its own:
//! [`sessions`] (login, guests, RESUME and held calls, logout, disconnects),
//! [`calls`] (ringing, answering, the relay, hang-ups), [`presence`] (the
//! user list, batches), [`rooms`] (the door, the mesh relay, chat in seq
//! order, moderation), [`inbox`] (notices kept for users not attached,
//! delivered after a login). Streams come as a file beside
//! them, adding its step to [`ON_LEAVE`].
//!
//! # Locks, and their order
//! - `state` (one `Mutex<HubState>`) guards sessions, calls, rooms, deadlines
//!   and presence not yet broadcast together, because the rules span them ("is
//!   the callee online and free? then ring"; "the session ends, so it leaves
//!   its rooms"). It is held for whole compound
//!   operations and never during I/O, hashing, storage writes or a fan-out.
//!   While holding it, the hub calls [`Delivery`] for direct notices only (a
//!   few pushes onto bounded queues, each under that queue's own short lock),
//!   for route changes (the adapter's route table, a short write lock) and for
//!   session ends. Order: `state` -> the adapter's locks; never the reverse.
//! - `broadcasting` orders presence fan-outs (one at a time, in batch order).
//!   It guards no state and nothing else waits for it; `state` is taken and
//!   released inside it, never held across a broadcast.
//!
//! A panic while `state` is held stops the daemon (see [`lock`]): the state
//! may be half-updated, and serving it could misroute signaling.
//!
//! # Delivery and ordering
//! Everything goes to users through [`Delivery`], never to connections.
//! Direct notices (call events, PEER_STATUS, what a RESUME gets back) are
//! handed over under the state lock, so each recipient gets them in the order
//! the state changed. Presence is batched: a change waits (at most
//! [`PRESENCE_BATCH`]) in the pending batch, where a later change of the same
//! user replaces it; the timer then seals the batch and broadcasts it, outside
//! the state lock, to every online user in one push each (one wake-up, one
//! write). A direct notice decided after a presence change must not overtake
//! it: the commit seals the pending changes into a numbered batch and catches
//! the recipient up on every sealed batch first ([`Delivery::catch_up`]); the
//! broadcast later skips those who have it. So nobody waits behind a fan-out:
//! a commit costs a few pushes however many users are online.
//!
//! Relayed SDP/ICE take the state lock only to check the call, then deliver
//! after releasing it: each sender's relays are already ordered by its own
//! connection thread. The price: a relay racing the end of its call (the peer
//! hangs up, a takeover, shutdown) can reach the peer just after the HANGUP
//! for that call; clients ignore signaling for a call they ended.
//!
//! # Leaving
//! Every way a session ends (logout, disconnect, takeover, guest expiry, hold
//! expiry, deletion, a kick, shutdown) goes through [`Hub::leave`], which runs
//! each capability's part in [`ON_LEAVE`] and removes the session and its
//! route. A capability that keeps users somewhere (a call, rooms; streams
//! next) adds its step there, once.
//!
//! Held sessions: when the connection of a user who holds a session token
//! drops during a call or while in a room, the session is detached instead of
//! ended. The call, the rooms and the user's presence stay; what would be delivered to the user is kept in order
//! in a bounded gap buffer; a RESUME within the grace period reattaches the
//! session and delivers the gap. Past the grace period (or when the gap
//! overflows) the session ends as any disconnect does.

mod calls;
mod inbox;
mod presence;
mod rooms;
mod sessions;

pub use rooms::{Joined, LogLine, LogPage, MAX_PAGE, RoomChanges, RoomStores, room_scope};

use presence::PendingPresence;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use log::{debug, info};

use super::error::AppError;
use super::ports::{
    Broadcast, ConnId, Delivery, Notice, Party, SessionEnd, Signal, UserRecord, UserStore,
};
use crate::domain::call::Answered;
use crate::domain::user::username_key;
use crate::domain::{CallBook, CallId, EndReason, Ended, RoomId, RoomLimits, UserId, UserState};
use crate::metrics::Metrics;

/// What a session's client understands and how long the session may last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionKind {
    /// The client said HELLO with protocol 2: it is told about its peer's
    /// reconnects (PEER_STATUS).
    pub v2: bool,
    /// The client holds a session token: if its connection drops during a
    /// call, the call is held for a RESUME.
    pub resumable: bool,
    /// A guest: the session ends at this time.
    pub guest_until: Option<Instant>,
}

/// How long a detached session waits and how much it keeps meanwhile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldLimits {
    /// Zero: calls are never held.
    pub grace: Duration,
    pub max_frames: usize,
    pub max_bytes: usize,
}

/// The hub's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HubSettings {
    pub ringing_timeout: Duration,
    pub hold: HoldLimits,
}

/// What is kept for a detached session until it resumes.
#[derive(Debug)]
struct Gap {
    until: Instant,
    notices: Vec<Notice>,
    bytes: usize,
    /// More arrived than the limits allow: the session can no longer resume
    /// with its call (it ends at once).
    overflowed: bool,
}

#[derive(Debug)]
struct Session {
    conn: ConnId,
    username: Arc<str>,
    kind: SessionKind,
    /// Set while the connection is gone and the call is held.
    detached: Option<Gap>,
}

impl Session {
    /// When the session ends on its own, if it does.
    fn deadline(&self) -> Option<Instant> {
        match &self.detached {
            Some(gap) => Some(gap.until),
            None => self.kind.guest_until,
        }
    }
}

/// How long a presence change may wait to be broadcast with others.
pub const PRESENCE_BATCH: Duration = Duration::from_millis(10);
/// The most frames one timed flush queues (updates times recipients).
const FLUSH_PUSHES: usize = 1 << 20;

#[derive(Debug)]
struct HubState {
    online: HashMap<UserId, Session>,
    calls: CallBook,
    /// Session deadlines (guest expiry, end of a hold), for the timer.
    deadlines: BTreeSet<(Instant, UserId)>,
    /// The guests among `online`, in id order (user lists, name checks).
    guests: BTreeSet<UserId>,
    /// When the pending presence batch must go out, if one is pending.
    presence_due: Option<Instant>,
    /// Presence changes not yet sealed into a batch.
    pending: PendingPresence,
    /// Sealed batches not yet broadcast to everyone, in id order: a direct
    /// notice catches its recipient up on them first (module docs).
    in_flight: Vec<Arc<Broadcast>>,
    /// The id of the next sealed batch.
    next_batch: u64,
    /// Rooms and who is in them.
    rooms: rooms::RoomTable,
    stopping: bool,
}

/// A rough size of a held notice, for the gap's byte limit.
fn held_size(notice: &Notice) -> usize {
    const OVERHEAD: usize = 160;
    OVERHEAD
        + match notice {
            Notice::Signal(Signal::Offer { sdp, .. } | Signal::Answer { sdp, .. }) => sdp.len(),
            Notice::Signal(Signal::Ice { candidate, .. }) => candidate.len(),
            Notice::RoomMessage(line) => line.text.len(),
            _ => 0,
        }
}

impl HubState {
    fn presence(&self, user: UserId) -> UserState {
        if self.online.contains_key(&user) {
            self.calls.state_of(user)
        } else {
            UserState::Disconnected
        }
    }

    /// The connection to deliver to; `None` when offline or detached.
    fn conn_of(&self, user: UserId) -> Option<ConnId> {
        self.online
            .get(&user)
            .filter(|s| s.detached.is_none())
            .map(|s| s.conn)
    }

    /// Whether `user` is online on a protocol 2 connection right now (not held).
    fn attached_v2(&self, user: UserId) -> bool {
        self.online
            .get(&user)
            .is_some_and(|s| s.kind.v2 && s.detached.is_none())
    }

    /// Delivers `notice` to `user` through `out`, or keeps it in the user's gap
    /// while detached. An overflowing gap ends the hold at once (the timer
    /// removes the session).
    fn tell(&mut self, user: UserId, notice: Notice, out: &mut Outgoing, hold: &HoldLimits) {
        let Some(session) = self.online.get_mut(&user) else {
            return;
        };
        let Some(gap) = &mut session.detached else {
            out.direct.push((user, notice));
            return;
        };
        if gap.overflowed {
            return;
        }
        let size = held_size(&notice);
        if gap.notices.len() >= hold.max_frames || gap.bytes + size > hold.max_bytes {
            info!(
                "held session overflowed user_id={user} frames={} bytes={}",
                gap.notices.len(),
                gap.bytes
            );
            gap.overflowed = true;
            gap.notices.clear();
            let now = Instant::now();
            self.deadlines.remove(&(gap.until, user));
            gap.until = now;
            self.deadlines.insert((now, user));
            out.wake_timer = true;
            return;
        }
        gap.bytes += size;
        gap.notices.push(notice);
    }

    /// Removes a session and its deadline; returns it.
    fn take_session(&mut self, user: UserId) -> Option<Session> {
        let session = self.online.remove(&user)?;
        if let Some(deadline) = session.deadline() {
            self.deadlines.remove(&(deadline, user));
        }
        self.guests.remove(&user);
        Some(session)
    }

    fn insert_session(&mut self, user: UserId, session: Session) {
        if let Some(deadline) = session.deadline() {
            self.deadlines.insert((deadline, user));
        }
        if user.is_guest() {
            self.guests.insert(user);
        }
        self.online.insert(user, session);
    }

    fn party(&self, user: UserId) -> Party {
        let username = match self.online.get(&user) {
            Some(s) => s.username.clone(),
            None => Arc::from(user.to_string()),
        };
        Party { id: user, username }
    }

    /// Moves up to `limit` pending presence changes into a new sealed batch.
    fn seal(&mut self, limit: usize) {
        if self.pending.is_empty() {
            return;
        }
        let about = self.pending.take_first(limit);
        let id = self.next_batch;
        self.next_batch += 1;
        self.in_flight.push(Arc::new(Broadcast { id, about }));
    }

    /// Fails unless `conn` holds `user`'s current session: a connection whose
    /// session was taken over must not act for the user any more.
    fn check_session(&self, conn: ConnId, user: UserId) -> Result<(), AppError> {
        match self.online.get(&user) {
            Some(s) if s.conn == conn && s.detached.is_none() => Ok(()),
            _ => Err(AppError::LoginRequired),
        }
    }
}

/// Why a user leaves: what each capability's leave step is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Departure {
    /// LOGOUT.
    LoggedOut,
    /// The connection closed (and nothing was held for a RESUME).
    Disconnected,
    /// The same user logged in on another connection.
    TakenOver,
    /// A held session's grace period ran out.
    HoldExpired,
    /// A held session's call ended, or it left its last room: there is
    /// nothing left to resume.
    NothingHeld,
    /// The server ended the session (guest expiry, account deletion, an
    /// operator's kick, shutdown).
    Ended(SessionEnd),
}

/// A capability's part of a user leaving, run under the state lock.
type OnLeave = fn(&Hub, &mut HubState, UserId, Departure, &mut Outgoing);

/// What each capability does when a user leaves, in this order (rooms and
/// streams add theirs here). [`Hub::leave`] is the only caller.
const ON_LEAVE: &[OnLeave] = &[Hub::calls_on_leave, Hub::rooms_on_leave];

/// Notices produced by one state change, delivered after the state lock is released.
#[derive(Default)]
struct Outgoing {
    /// Notices for attached users, delivered under the state lock in state order.
    direct: Vec<(UserId, Notice)>,
    /// Notices for several attached users at once (a room), each encoded
    /// once; delivered after `direct`, in order.
    shared: Vec<(Vec<UserId>, Notice)>,
    /// Held sessions ended as a side effect (their call ended): they leave,
    /// whatever the caller's `before` covered.
    gone: Vec<(UserId, Arc<str>)>,
    /// Sessions to end (takeover).
    end: Vec<(ConnId, SessionEnd)>,
    /// A deadline moved earlier: the timer must look again.
    wake_timer: bool,
}

/// Presence of the users a change may touch, taken before the change; compared
/// with the state after it to broadcast exactly what changed.
struct Before(Vec<(UserId, Arc<str>, UserState)>);

impl Before {
    fn take(state: &HubState, users: &[(UserId, Arc<str>)]) -> Before {
        Before(
            users
                .iter()
                .map(|(u, name)| (*u, name.clone(), state.presence(*u)))
                .collect(),
        )
    }
}

/// Counts of what the hub holds, for tests and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HubStats {
    pub online: usize,
    pub calls: usize,
    pub ringing: usize,
    /// Sessions whose connection dropped and whose call is held.
    pub held: usize,
    pub guests: usize,
    pub rooms: usize,
    /// Users in rooms, counted once per room.
    pub room_participants: usize,
}

/// What a RESUME found: what goes on, on this connection (nothing for a
/// fresh session).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resumed {
    pub call: Option<CallId>,
    pub rooms: Vec<RoomId>,
}

pub struct Hub {
    state: Mutex<HubState>,
    /// Wakes the ringing timer when a deadline is added or the hub stops.
    timer_wake: Condvar,
    /// Held by whoever broadcasts sealed presence batches (the timer, or a
    /// stop), so that batches go out one at a time and in id order. Nobody
    /// else waits for it: it guards no state, only the order of fan-outs.
    broadcasting: Mutex<()>,
    delivery: Arc<dyn Delivery>,
    users: Arc<dyn UserStore>,
    ringing_timeout: Duration,
    hold: HoldLimits,
    rooms: rooms::Rooms,
    metrics: Arc<Metrics>,
}

/// Takes the state lock. A panic while it was held may have left sessions,
/// calls and deadlines half-updated (a session gone but its call kept, a
/// route to the wrong user), and serving such state could relay one user's
/// signaling to another. So the daemon stops loudly instead: every
/// acknowledged write is already on disk, the service manager restarts it,
/// and protocol 2 clients come back by RESUME. Panics anywhere else (a
/// handler, a codec, storage) end only their own connection.
fn lock(m: &Mutex<HubState>) -> MutexGuard<'_, HubState> {
    match m.lock() {
        Ok(guard) => guard,
        Err(_) => {
            log::error!(
                "a thread panicked while changing sessions and calls; stopping the daemon rather than serving state that may be inconsistent"
            );
            std::process::abort();
        }
    }
}

impl Hub {
    pub fn new(
        delivery: Arc<dyn Delivery>,
        users: Arc<dyn UserStore>,
        settings: HubSettings,
        rooms: (RoomStores, RoomLimits),
        metrics: Arc<Metrics>,
    ) -> Hub {
        Hub {
            state: Mutex::new(HubState {
                online: HashMap::new(),
                calls: CallBook::new(),
                deadlines: BTreeSet::new(),
                guests: BTreeSet::new(),
                presence_due: None,
                pending: PendingPresence::default(),
                in_flight: Vec::new(),
                next_batch: 1,
                rooms: rooms::RoomTable::default(),
                stopping: false,
            }),
            timer_wake: Condvar::new(),
            broadcasting: Mutex::new(()),
            delivery,
            users,
            ringing_timeout: settings.ringing_timeout,
            hold: settings.hold,
            rooms: rooms::Rooms::new(rooms.0, rooms.1),
            metrics,
        }
    }

    pub fn users(&self) -> &Arc<dyn UserStore> {
        &self.users
    }

    pub fn stats(&self) -> HubStats {
        let state = lock(&self.state);
        HubStats {
            online: state.online.len(),
            calls: state.calls.len(),
            ringing: state.calls.ringing(),
            held: state
                .online
                .values()
                .filter(|s| s.detached.is_some())
                .count(),
            guests: state.guests.len(),
            rooms: state.rooms.counts().0,
            room_participants: state.rooms.counts().1,
        }
    }

    /// The one way a session ends, whatever the reason (logout, disconnect,
    /// takeover, expiry, deletion, a kick, shutdown): each capability in
    /// [`ON_LEAVE`] lets the user go, then the session and its route are
    /// removed. Returns the session, if there was one.
    fn leave(
        &self,
        state: &mut HubState,
        user: UserId,
        why: Departure,
        out: &mut Outgoing,
    ) -> Option<Session> {
        for on_leave in ON_LEAVE {
            on_leave(self, state, user, why, out);
        }
        let session = state.take_session(user)?;
        if session.detached.is_none() {
            self.delivery.detach(user, session.conn);
        }
        debug!("left user_id={user} reason={why:?}");
        Some(session)
    }

    /// Ends every ringing call whose deadline has passed at `now`, every held
    /// session whose grace period is over, and every expired guest.
    pub fn expire_due(&self, now: Instant) {
        let mut state = lock(&self.state);
        let due: Vec<_> = state.calls.expire(now).into_iter().collect();
        if !due.is_empty() {
            // The calls are already gone, so "before" is rebuilt from what they were.
            let before = Before(
                due.iter()
                    .map(|e| {
                        (
                            e.call.caller,
                            state.party(e.call.caller).username,
                            UserState::Busy,
                        )
                    })
                    .collect(),
            );
            let mut out = Outgoing::default();
            for ended in &due {
                info!(
                    "call timed out call_id={} caller={} callee={}",
                    ended.call.id, ended.call.caller, ended.call.callee
                );
                self.ended_notices(&mut state, ended, &mut out);
            }
            self.commit(state, before, out);
            state = lock(&self.state);
        }
        while let Some(&(deadline, user)) = state.deadlines.first() {
            if deadline > now {
                break;
            }
            state.deadlines.remove(&(deadline, user));
            let Some(session) = state.online.get(&user) else {
                continue;
            };
            if session.deadline() != Some(deadline) {
                // A stale entry: the session it was for is gone; this one has its own.
                continue;
            }
            let mut out = Outgoing::default();
            if session.detached.is_some() {
                info!("held session not resumed in time user_id={user}; ending its call");
            } else {
                info!(
                    "guest session expired user_id={user} username={}",
                    session.username
                );
                out.end.push((session.conn, SessionEnd::GuestExpired));
            }
            let why = if session.detached.is_some() {
                Departure::HoldExpired
            } else {
                Departure::Ended(SessionEnd::GuestExpired)
            };
            let before = self.before_leaving(&state, user);
            self.leave(&mut state, user, why, &mut out);
            self.commit(state, before, out);
            state = lock(&self.state);
        }
    }

    /// Runs the timer until [`Hub::stop`]: sleeps until the earliest deadline
    /// (a ringing call, a held session, a guest's expiry, a presence batch),
    /// or until a new one wakes it, and handles what is due.
    pub fn run_timer(&self) {
        let mut state = lock(&self.state);
        while !state.stopping {
            let now = Instant::now();
            let sessions = state.deadlines.first().map(|(at, _)| *at);
            let next = [state.calls.next_deadline(), sessions, state.presence_due]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(deadline) if deadline <= now => {
                    let presence_due = state.presence_due.is_some_and(|due| due <= now);
                    drop(state);
                    self.expire_due(now);
                    if presence_due {
                        self.flush_presence();
                    }
                    state = lock(&self.state);
                }
                Some(deadline) => {
                    state = self
                        .timer_wake
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                None => {
                    state = self
                        .timer_wake
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
    }

    /// Refuses new logins, ends every call (parties are told) and stops the timer.
    /// Sessions stay until their connections close.
    pub fn stop(&self) {
        let mut state = lock(&self.state);
        state.stopping = true;
        self.timer_wake.notify_all();
        let touched: Vec<_> = state
            .online
            .iter()
            .map(|(user, session)| (*user, session.username.clone()))
            .collect();
        let before = Before::take(&state, &touched);
        let mut out = Outgoing::default();
        for ended in state.calls.end_all() {
            self.ended_notices(&mut state, &ended, &mut out);
        }
        // Held sessions have no connection left to drain: they end now.
        let held: Vec<UserId> = state
            .online
            .iter()
            .filter(|(_, s)| s.detached.is_some())
            .map(|(u, _)| *u)
            .collect();
        for user in held {
            self.leave(
                &mut state,
                user,
                Departure::Ended(SessionEnd::ShuttingDown),
                &mut out,
            );
        }
        self.commit(state, before, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::application::StoreError;
    use crate::application::ports::UserListing;

    /// What each connection was told, as `Debug` text: a delivery adapter
    /// with a route table, as the tcp one has.
    #[derive(Default)]
    struct Recorder {
        routes: Mutex<HashMap<UserId, ConnId>>,
        /// The newest batch each connection has.
        epochs: Mutex<HashMap<ConnId, u64>>,
        seen: Mutex<Vec<(ConnId, String)>>,
    }

    impl Recorder {
        fn told(&self, conn: ConnId) -> Vec<String> {
            let seen = self.seen.lock().unwrap();
            seen.iter()
                .filter(|(c, _)| *c == conn)
                .map(|(_, n)| n.clone())
                .collect()
        }

        fn push(&self, conn: ConnId, notice: &Notice) {
            self.seen
                .lock()
                .unwrap()
                .push((conn, format!("{notice:?}")));
        }

        fn deliver(&self, user: UserId, conn: ConnId, batch: &Broadcast) {
            let mut epochs = self.epochs.lock().unwrap();
            let epoch = epochs.entry(conn).or_default();
            if *epoch >= batch.id {
                return;
            }
            *epoch = batch.id;
            for (about, notice) in &batch.about {
                if *about != user {
                    self.push(conn, notice);
                }
            }
        }
    }

    impl Delivery for Recorder {
        fn attach(&self, user: UserId, session: ConnId) {
            self.routes.lock().unwrap().insert(user, session);
        }
        fn detach(&self, user: UserId, session: ConnId) {
            let mut routes = self.routes.lock().unwrap();
            if routes.get(&user) == Some(&session) {
                routes.remove(&user);
            }
        }
        fn to_user(&self, user: UserId, notice: Notice) {
            let conn = self.routes.lock().unwrap().get(&user).copied();
            if let Some(conn) = conn {
                self.push(conn, &notice);
            }
        }
        fn broadcast(&self, batch: &Broadcast) {
            let routes: Vec<_> = self.routes.lock().unwrap().clone().into_iter().collect();
            for (user, conn) in routes {
                self.deliver(user, conn, batch);
            }
        }
        fn catch_up(&self, user: UserId, batches: &[Arc<Broadcast>]) {
            let conn = self.routes.lock().unwrap().get(&user).copied();
            if let Some(conn) = conn {
                for batch in batches {
                    self.deliver(user, conn, batch);
                }
            }
        }
        fn end_session(&self, session: ConnId, why: SessionEnd) {
            self.push(session, &Notice::SessionEnded(why));
        }
    }

    /// Every id below the guest range exists.
    struct AnyUser;

    impl UserStore for AnyUser {
        fn find_by_name(&self, _: &str) -> Option<UserRecord> {
            None
        }
        fn find_by_id(&self, id: UserId) -> Option<UserRecord> {
            Some(record(id.0))
        }
        fn list(&self) -> UserListing {
            Arc::from([])
        }
        fn create(&self, _: &str, _: &str, _: u64) -> Result<UserRecord, StoreError> {
            Err(StoreError::Conflict)
        }
        fn set_password_hash_of(&self, _: UserId, _: &str) -> Result<bool, StoreError> {
            Ok(false)
        }
        fn delete_user(&self, _: UserId) -> Result<bool, StoreError> {
            Ok(false)
        }
    }

    fn record(id: u64) -> UserRecord {
        UserRecord {
            id: UserId(id),
            username: format!("user{id}"),
            password_hash: String::new(),
            created_at: 0,
        }
    }

    /// A hub without its timer: batches go out only when something sends them.
    fn hub() -> (Hub, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        let settings = HubSettings {
            ringing_timeout: Duration::from_secs(30),
            hold: HoldLimits {
                grace: Duration::from_secs(15),
                max_frames: 16,
                max_bytes: 64 * 1024,
            },
        };
        let dir = tempfile::tempdir().unwrap();
        let logs = crate::infrastructure::ConversationFile::open(&dir.path().join("c")).unwrap();
        let state = Arc::new(
            crate::infrastructure::StateFile::open(&dir.path().join("s"), Default::default())
                .unwrap(),
        );
        let stores = RoomStores {
            kv: state.clone(),
            logs: Arc::new(logs),
            inbox: state.clone(),
            ids: state,
        };
        // The files stay open after the directory's name is gone.
        drop(dir);
        let hub = Hub::new(
            recorder.clone(),
            Arc::new(AnyUser),
            settings,
            (stores, RoomLimits::default()),
            Arc::new(Metrics::default()),
        );
        (hub, recorder)
    }

    fn presence(told: &[String]) -> Vec<&String> {
        told.iter().filter(|n| n.starts_with("Presence")).collect()
    }

    /// A user who leaves and comes back within one batch is reported once,
    /// with the state they ended in.
    #[test]
    fn a_batch_reports_each_user_once_with_the_latest_state() {
        let (hub, told) = hub();
        hub.login(ConnId(1), &record(1), SessionKind::default())
            .unwrap();
        hub.flush_presence();
        hub.login(ConnId(2), &record(2), SessionKind::default())
            .unwrap();
        hub.logout(ConnId(2), UserId(2)).unwrap();
        hub.login(ConnId(3), &record(2), SessionKind::default())
            .unwrap();
        assert!(
            presence(&told.told(ConnId(1))).is_empty(),
            "batched, not sent yet"
        );
        hub.flush_presence();
        let seen = told.told(ConnId(1));
        let seen = presence(&seen);
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(
            seen[0].contains("UserId(2)") && seen[0].contains("Available"),
            "{seen:?}"
        );
    }

    /// A call decided while presence is pending reaches its callee after that
    /// presence; everyone else gets the same sealed batch once (the
    /// committing thread broadcasts it), and the call's own change (Busy)
    /// only with the next batch.
    #[test]
    fn a_direct_notice_catches_its_recipient_up_on_sealed_presence() {
        let (hub, told) = hub();
        for id in 1..=50 {
            hub.login(ConnId(id), &record(id), SessionKind::default())
                .unwrap();
        }
        hub.flush_presence();
        hub.login(ConnId(51), &record(51), SessionKind::default())
            .unwrap();
        hub.call(ConnId(51), UserId(51), UserId(1)).unwrap();
        let callee = told.told(ConnId(1));
        let new = &callee[callee.len() - 2..];
        assert!(
            new[0].contains("UserId(51)") && new[0].contains("Available"),
            "{new:?}"
        );
        assert!(new[1].starts_with("IncomingCall"), "{new:?}");
        let about_51 = |conn| {
            told.told(ConnId(conn))
                .into_iter()
                .filter(|n| n.contains("UserId(51)"))
                .collect::<Vec<_>>()
        };
        for conn in 2..=50 {
            let seen = about_51(conn);
            assert!(
                seen.len() == 1 && seen[0].contains("Available"),
                "{conn}: {seen:?}"
            );
        }
        hub.flush_presence();
        let bystander = told.told(ConnId(2));
        assert!(
            bystander
                .iter()
                .any(|n| n.contains("UserId(51)") && n.contains("Busy")),
            "{bystander:?}"
        );
        assert_eq!(
            bystander
                .iter()
                .filter(|n| n.contains("UserId(51)"))
                .count(),
            2,
            "Available, then Busy, each once: {bystander:?}"
        );
    }

    /// Stopping sends what is pending and what the stop itself changes: no
    /// timer is left to send it later.
    #[test]
    fn stopping_sends_the_pending_batch() {
        let (hub, told) = hub();
        hub.login(ConnId(1), &record(1), SessionKind::default())
            .unwrap();
        hub.login(ConnId(2), &record(2), SessionKind::default())
            .unwrap();
        hub.flush_presence();
        hub.logout(ConnId(2), UserId(2)).unwrap();
        hub.stop();
        let seen = told.told(ConnId(1));
        let seen = presence(&seen);
        assert!(
            seen.iter()
                .any(|n| n.contains("UserId(2)") && n.contains("Disconnected")),
            "{seen:?}"
        );
    }
}
