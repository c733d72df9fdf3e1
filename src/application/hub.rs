//! Sessions, presence and calls: the shared state every connection works on.
//!
//! # Locks, and their order
//! - `state` (one `Mutex<HubState>`) guards sessions, calls, deadlines and
//!   presence not yet broadcast together, because the rules span them ("is the
//!   callee online and free? then ring"). It is held for whole compound
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
//! route. A capability that keeps users somewhere (a call today; rooms and
//! streams next) adds its step there, once.
//!
//! Held calls: when the connection of a user who holds a session token drops
//! during a call, the session is detached instead of ended. The call and the
//! user's presence stay; what would be delivered to the user is kept in order
//! in a bounded gap buffer; a RESUME within the grace period reattaches the
//! session and delivers the gap. Past the grace period (or when the gap
//! overflows) the session ends as any disconnect does.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info};

use super::error::AppError;
use super::ports::{
    Broadcast, ConnId, Delivery, Notice, Party, SessionEnd, Signal, UserRecord, UserStore,
};
use crate::domain::call::Answer;
use crate::domain::user::username_key;
use crate::domain::{CallBook, CallId, EndReason, Ended, GUEST_ID_BASE, UserId, UserState};
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
    stopping: bool,
}

/// Presence changes not yet broadcast: the latest state of each user, in the
/// order the users first changed.
#[derive(Debug, Default)]
struct PendingPresence {
    order: Vec<UserId>,
    latest: HashMap<UserId, (Arc<str>, UserState)>,
}

impl PendingPresence {
    fn add(&mut self, user: UserId, username: Arc<str>, state: UserState) {
        match self.latest.entry(user) {
            Entry::Occupied(mut e) => {
                e.insert((username, state));
            }
            Entry::Vacant(e) => {
                e.insert((username, state));
                self.order.push(user);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The first `limit` pending changes, in order; the rest stay pending.
    fn take_first(&mut self, limit: usize) -> Vec<(UserId, Notice)> {
        let rest = if limit < self.order.len() {
            self.order.split_off(limit)
        } else {
            Vec::new()
        };
        let first = std::mem::replace(&mut self.order, rest);
        first
            .into_iter()
            .filter_map(|user| {
                let (username, state) = self.latest.remove(&user)?;
                debug!("presence user_id={user} state={state}");
                Some((
                    user,
                    Notice::Presence {
                        user,
                        username,
                        state,
                    },
                ))
            })
            .collect()
    }
}

/// A rough size of a held notice, for the gap's byte limit.
fn held_size(notice: &Notice) -> usize {
    const OVERHEAD: usize = 160;
    OVERHEAD
        + match notice {
            Notice::Signal(Signal::Offer { sdp, .. } | Signal::Answer { sdp, .. }) => sdp.len(),
            Notice::Signal(Signal::Ice { candidate, .. }) => candidate.len(),
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
    /// A held session's call ended: there is nothing left to resume.
    CallEnded,
    /// The server ended the session (guest expiry, account deletion, an
    /// operator's kick, shutdown).
    Ended(SessionEnd),
}

/// A capability's part of a user leaving, run under the state lock.
type OnLeave = fn(&Hub, &mut HubState, UserId, Departure, &mut Outgoing);

/// What each capability does when a user leaves, in this order (rooms and
/// streams add theirs here). [`Hub::leave`] is the only caller.
const ON_LEAVE: &[OnLeave] = &[Hub::calls_on_leave];

/// Notices produced by one state change, delivered after the state lock is released.
#[derive(Default)]
struct Outgoing {
    /// Notices for attached users, delivered under the state lock in state order.
    direct: Vec<(UserId, Notice)>,
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
}

/// What a RESUME found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resumed {
    /// A new session (nothing was held).
    Fresh,
    /// The user's call goes on, on this connection.
    Call(CallId),
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
    /// The next guest id.
    next_guest: AtomicU64,
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
        metrics: Arc<Metrics>,
    ) -> Hub {
        let first_call_id = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        Hub {
            state: Mutex::new(HubState {
                online: HashMap::new(),
                calls: CallBook::new(first_call_id),
                deadlines: BTreeSet::new(),
                guests: BTreeSet::new(),
                presence_due: None,
                pending: PendingPresence::default(),
                in_flight: Vec::new(),
                next_batch: 1,
                stopping: false,
            }),
            timer_wake: Condvar::new(),
            broadcasting: Mutex::new(()),
            delivery,
            users,
            ringing_timeout: settings.ringing_timeout,
            hold: settings.hold,
            // Starting from the clock keeps ids of a restarted daemon's guests
            // apart from the last run's.
            next_guest: AtomicU64::new(GUEST_ID_BASE + first_call_id),
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
        }
    }

    /// Makes `user` online on `conn`. An older session of the same user is ended
    /// (its connection is told and closed, its call ends).
    ///
    /// # Errors
    /// `Unavailable` while the server is shutting down; `Unauthorized` if the
    /// account was deleted since the credentials were checked.
    pub fn login(
        &self,
        conn: ConnId,
        user: &UserRecord,
        kind: SessionKind,
    ) -> Result<(), AppError> {
        let state = self.lock_for_login(user.id)?;
        self.login_locked(state, conn, user, kind);
        Ok(())
    }

    fn login_locked(
        &self,
        mut state: MutexGuard<'_, HubState>,
        conn: ConnId,
        user: &UserRecord,
        kind: SessionKind,
    ) {
        let username: Arc<str> = Arc::from(user.username.as_str());
        let mut out = Outgoing::default();
        let mut touched = vec![(user.id, username.clone())];
        if let Some(call) = state.calls.call_of(user.id) {
            let peer = call.peer_of(user.id);
            touched.push((peer, state.party(peer).username));
        }
        let before = Before::take(&state, &touched);
        if let Some(old) = state.online.get(&user.id).map(|s| s.conn) {
            info!(
                "session taken over user_id={} username={} old_conn={} new_conn={}",
                user.id, user.username, old, conn
            );
            self.leave(&mut state, user.id, Departure::TakenOver, &mut out);
            out.end.push((old, SessionEnd::TakenOver));
        }
        state.insert_session(
            user.id,
            Session {
                conn,
                username,
                kind,
                detached: None,
            },
        );
        self.delivery.attach(user.id, conn);
        self.commit(state, before, out);
    }

    /// Fails unless `conn` holds `user`'s current session (it may have been
    /// taken over, or the account deleted, since the connection logged in).
    ///
    /// # Errors
    /// `LoginRequired`.
    pub fn check_session(&self, conn: ConnId, user: UserId) -> Result<(), AppError> {
        lock(&self.state).check_session(conn, user)
    }

    /// GUEST_LOGIN: a new guest identity, online on `conn` until `until`.
    /// Returns the guest's record (id and shown name; no password).
    ///
    /// # Errors
    /// `Unavailable` while the server is shutting down; `Conflict` if an
    /// online guest already has the name.
    pub fn guest_login(
        &self,
        conn: ConnId,
        name: String,
        until: Instant,
        v2: bool,
    ) -> Result<UserRecord, AppError> {
        let id = UserId(self.next_guest.fetch_add(1, Ordering::Relaxed));
        let guest = UserRecord {
            id,
            username: name,
            password_hash: String::new(),
            created_at: 0,
        };
        let kind = SessionKind {
            v2,
            resumable: false,
            guest_until: Some(until),
        };
        let state = self.lock_for_login(id)?;
        let taken = state.guests.iter().any(|id| {
            state
                .online
                .get(id)
                .is_some_and(|s| s.username.eq_ignore_ascii_case(&guest.username))
        });
        if taken {
            return Err(AppError::Conflict(
                "another guest is using that name; choose another display_name".into(),
            ));
        }
        self.login_locked(state, conn, &guest, kind);
        self.timer_wake.notify_one();
        Metrics::count(&self.metrics.guest_logins);
        Ok(guest)
    }

    /// The state lock for a login of `user`: refused while stopping, and for a
    /// registered user only while the account exists. Checked under the lock so
    /// that a deletion (storage first, then [`Hub::end_user`]) cannot miss a
    /// login racing it.
    fn lock_for_login(&self, user: UserId) -> Result<MutexGuard<'_, HubState>, AppError> {
        let state = lock(&self.state);
        if state.stopping {
            return Err(AppError::Unavailable("server shutting down".into()));
        }
        if !user.is_guest() && self.users.find_by_id(user).is_none() {
            return Err(AppError::Unauthorized("the account was deleted".into()));
        }
        Ok(state)
    }

    /// RESUME: like [`Hub::login`], but a held call goes on. If the session is
    /// detached it is reattached and what was held is delivered first, in
    /// order; if it is still attached to another connection (which the client
    /// gave up on before the server noticed), that connection is closed and
    /// the call moves here.
    ///
    /// # Errors
    /// As [`Hub::login`].
    pub fn resume(
        &self,
        conn: ConnId,
        user: &UserRecord,
        kind: SessionKind,
    ) -> Result<Resumed, AppError> {
        let mut state = self.lock_for_login(user.id)?;
        // A call to go on with: the user's, unless the hold overflowed.
        let call = state.calls.call_of(user.id).copied();
        let session = state
            .online
            .get_mut(&user.id)
            .filter(|s| !s.detached.as_ref().is_some_and(|gap| gap.overflowed));
        let (Some(call), Some(session)) = (call, session) else {
            self.login_locked(state, conn, user, kind);
            return Ok(Resumed::Fresh);
        };
        let mut out = Outgoing::default();
        let old_conn = std::mem::replace(&mut session.conn, conn);
        session.kind = kind;
        let held = session.detached.take();
        let peer = call.peer_of(user.id);
        match held {
            Some(gap) => {
                state.deadlines.remove(&(gap.until, user.id));
                self.delivery.attach(user.id, conn);
                info!(
                    "session resumed user_id={} conn={} call_id={} held_frames={}",
                    user.id,
                    conn,
                    call.id,
                    gap.notices.len()
                );
                // Delivered under the state lock: relays from the peer, which
                // need it to find this session, must not overtake what was held.
                self.delivery.catch_up(user.id, &state.in_flight);
                for notice in gap.notices {
                    self.delivery.to_user(user.id, notice);
                }
                let reconnected = Notice::PeerStatus {
                    call_id: call.id,
                    peer: state.party(user.id),
                    reconnecting: false,
                    grace_ms: 0,
                };
                if state.online.get(&peer).is_some_and(|s| s.kind.v2) {
                    state.tell(peer, reconnected, &mut out, &self.hold);
                }
            }
            None => {
                info!(
                    "session resumed over a live connection user_id={} old_conn={} new_conn={} call_id={}",
                    user.id, old_conn, conn, call.id
                );
                self.delivery.attach(user.id, conn);
                out.end.push((old_conn, SessionEnd::TakenOver));
            }
        }
        self.commit(state, Before(Vec::new()), out);
        Ok(Resumed::Call(call.id))
    }

    /// Ends `user`'s session on `conn` (LOGOUT). Their call ends.
    ///
    /// # Errors
    /// `LoginRequired` if `conn` does not hold the user's session.
    pub fn logout(&self, conn: ConnId, user: UserId) -> Result<(), AppError> {
        let state = lock(&self.state);
        state.check_session(conn, user)?;
        self.remove_session(state, user, Departure::LoggedOut);
        Ok(())
    }

    /// Ends whatever session `user` has (account deleted, guest expired, an
    /// operator's kick); its connection, unless it is `except`, is told why and
    /// closed. Returns whether there was a session to end.
    pub fn end_user(&self, user: UserId, why: SessionEnd, except: Option<ConnId>) -> bool {
        let mut state = lock(&self.state);
        let Some(session) = state.online.get(&user) else {
            return false;
        };
        let conn = session.conn;
        let attached = session.detached.is_none();
        let mut out = Outgoing::default();
        if attached && Some(conn) != except {
            out.end.push((conn, why));
        }
        let before = self.before_leaving(&state, user);
        self.leave(&mut state, user, Departure::Ended(why), &mut out);
        self.commit(state, before, out);
        true
    }

    /// Clean-up when a connection closes. A no-op if `conn` no longer holds the
    /// session (it was taken over, or the user logged out). A resumable session
    /// in a call is held for the grace period instead of ended.
    pub fn disconnect(&self, conn: ConnId, user: UserId) {
        let mut state = lock(&self.state);
        if state.check_session(conn, user).is_err() {
            return;
        }
        let held_call = state
            .calls
            .call_of(user)
            .copied()
            .filter(|_| !state.stopping && !self.hold.grace.is_zero());
        let resumable = state.online.get(&user).is_some_and(|s| s.kind.resumable);
        let (Some(call), true) = (held_call, resumable) else {
            self.remove_session(state, user, Departure::Disconnected);
            return;
        };
        let until = Instant::now() + self.hold.grace;
        // Nothing is routed to the closed connection: the gap keeps it instead.
        self.delivery.detach(user, conn);
        if let Some(session) = state.online.get_mut(&user) {
            session.detached = Some(Gap {
                until,
                notices: Vec::new(),
                bytes: 0,
                overflowed: false,
            });
        }
        state.deadlines.insert((until, user));
        self.timer_wake.notify_one();
        Metrics::count(&self.metrics.calls_held);
        info!(
            "call held for a resume user_id={} call_id={} grace_ms={}",
            user,
            call.id,
            self.hold.grace.as_millis()
        );
        let peer = call.peer_of(user);
        let mut out = Outgoing::default();
        if state.online.get(&peer).is_some_and(|s| s.kind.v2) {
            let notice = Notice::PeerStatus {
                call_id: call.id,
                peer: state.party(user),
                reconnecting: true,
                grace_ms: self.hold.grace.as_millis() as u64,
            };
            state.tell(peer, notice, &mut out, &self.hold);
        }
        self.commit(state, Before(Vec::new()), out);
    }

    /// The presence of `user` and their peer, before `user` leaves.
    fn before_leaving(&self, state: &HubState, user: UserId) -> Before {
        let mut touched = vec![(user, state.party(user).username)];
        if let Some(call) = state.calls.call_of(user) {
            let peer = call.peer_of(user);
            touched.push((peer, state.party(peer).username));
        }
        Before::take(state, &touched)
    }

    fn remove_session(&self, mut state: MutexGuard<'_, HubState>, user: UserId, why: Departure) {
        let before = self.before_leaving(&state, user);
        let mut out = Outgoing::default();
        self.leave(&mut state, user, why, &mut out);
        self.commit(state, before, out);
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

    /// CALL_REQUEST: rings `callee` on behalf of `caller`.
    ///
    /// # Errors
    /// 404 unknown callee, 409 offline or busy callee or busy caller, 400 self-call.
    pub fn call(&self, conn: ConnId, caller: UserId, callee: UserId) -> Result<CallId, AppError> {
        if caller == callee {
            return Err(AppError::BadRequest("you cannot call yourself".into()));
        }
        // Looked up before taking the hub lock: storage has its own.
        let known = self.users.find_by_id(callee).is_some();
        let mut state = lock(&self.state);
        state.check_session(conn, caller)?;
        if state.stopping {
            return Err(AppError::Unavailable("server shutting down".into()));
        }
        if !state.online.contains_key(&callee) {
            return Err(if known {
                AppError::Conflict("user is offline".into())
            } else {
                AppError::NotFound("no such user".into())
            });
        }
        let touched = [
            (caller, state.party(caller).username),
            (callee, state.party(callee).username),
        ];
        let before = Before::take(&state, &touched);
        let call = state
            .calls
            .ring(caller, callee, Instant::now() + self.ringing_timeout)?;
        let mut out = Outgoing::default();
        let ring = Notice::IncomingCall {
            call_id: call.id,
            from: state.party(caller),
        };
        state.tell(callee, ring, &mut out, &self.hold);
        Metrics::count(&self.metrics.calls_total);
        info!(
            "call ringing call_id={} caller={} callee={}",
            call.id, caller, callee
        );
        self.timer_wake.notify_one();
        self.commit(state, before, out);
        Ok(call.id)
    }

    /// CALL_RESPONSE: the callee accepts or declines.
    ///
    /// # Errors
    /// 404 if the call is gone, 403 if `user` is not its callee, 409 if answered.
    pub fn answer(
        &self,
        conn: ConnId,
        user: UserId,
        call_id: CallId,
        accepted: bool,
    ) -> Result<(), AppError> {
        let mut state = lock(&self.state);
        state.check_session(conn, user)?;
        let Some(call) = state.calls.get(call_id).copied() else {
            return Err(AppError::NotFound("no such call".into()));
        };
        let touched = [
            (call.caller, state.party(call.caller).username),
            (call.callee, state.party(call.callee).username),
        ];
        let before = Before::take(&state, &touched);
        let mut out = Outgoing::default();
        match state.calls.answer(call_id, user, accepted)? {
            Answer::Accepted(call) => {
                info!(
                    "call accepted call_id={} caller={} callee={}",
                    call.id, call.caller, call.callee
                );
                let peer = state.party(call.callee);
                let accepted = Notice::CallAccepted { call_id, peer };
                state.tell(call.caller, accepted, &mut out, &self.hold);
            }
            Answer::Declined(ended) => self.ended_notices(&mut state, &ended, &mut out),
        }
        self.commit(state, before, out);
        Ok(())
    }

    /// SDP_OFFER, SDP_ANSWER, ICE_CANDIDATE: relays to the peer of an active call.
    /// `named_peer` is the `to_user_id` the client wrote, if any: it must be the
    /// peer. `signal` builds the relayed message once the peer is known.
    ///
    /// # Errors
    /// 404 unknown call, 403 not a party or wrong `to_user_id`, 409 not accepted yet.
    pub fn relay(
        &self,
        conn: ConnId,
        user: UserId,
        call_id: CallId,
        named_peer: Option<UserId>,
        signal: impl FnOnce(UserId) -> Signal,
    ) -> Result<(), AppError> {
        let mut state = lock(&self.state);
        state.check_session(conn, user)?;
        let peer = state.calls.relay_peer(call_id, user)?;
        if named_peer.is_some_and(|named| named != peer) {
            return Err(AppError::Forbidden(
                "to_user_id is not your peer in this call".into(),
            ));
        }
        // Leaving ends the call, so the peer of an active call is online,
        // attached or held.
        if state.conn_of(peer).is_some() {
            drop(state);
            self.delivery.to_user(peer, Notice::Signal(signal(peer)));
            return Ok(());
        }
        let mut out = Outgoing::default();
        state.tell(peer, Notice::Signal(signal(peer)), &mut out, &self.hold);
        self.commit(state, Before(Vec::new()), out);
        Ok(())
    }

    /// HANGUP: ends the user's call (`call_id` may be omitted: the user's own call).
    ///
    /// # Errors
    /// 404 unknown call or no call, 403 not a party.
    pub fn hang_up(
        &self,
        conn: ConnId,
        user: UserId,
        call_id: Option<CallId>,
    ) -> Result<(), AppError> {
        let mut state = lock(&self.state);
        state.check_session(conn, user)?;
        let call = match call_id {
            Some(id) => state.calls.get(id).copied(),
            None => state.calls.call_of(user).copied(),
        };
        let touched: Vec<_> = call
            .iter()
            .flat_map(|c| [c.caller, c.callee])
            .map(|u| (u, state.party(u).username))
            .collect();
        let before = Before::take(&state, &touched);
        let ended = state.calls.hang_up(call_id, user)?;
        let mut out = Outgoing::default();
        self.ended_notices(&mut state, &ended, &mut out);
        self.commit(state, before, out);
        Ok(())
    }

    /// Every registered user with their presence, then the guests online, in id order.
    pub fn user_list(&self) -> Vec<(UserId, Arc<str>, UserState)> {
        let users = self.users.list();
        let state = lock(&self.state);
        let guests = state.guests.iter().filter_map(|id| {
            let session = state.online.get(id)?;
            Some((*id, session.username.clone(), state.presence(*id)))
        });
        let mut list = Vec::with_capacity(users.len() + state.guests.len());
        list.extend(
            users
                .iter()
                .map(|(id, name)| (*id, name.clone(), state.presence(*id))),
        );
        list.extend(guests);
        list
    }

    /// Whether a guest with this display name (its guest name) may be created:
    /// no registered user has the display name.
    pub fn guest_name_free(&self, display_name: &str) -> bool {
        self.users
            .find_by_name(&username_key(display_name))
            .is_none()
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

    /// The calls capability's part of leaving: the user's call ends (the peer
    /// is told), whatever the reason.
    fn calls_on_leave(
        &self,
        state: &mut HubState,
        user: UserId,
        _why: Departure,
        out: &mut Outgoing,
    ) {
        self.end_call_of(state, user, out);
    }

    fn end_call_of(&self, state: &mut HubState, user: UserId, out: &mut Outgoing) {
        if let Some(ended) = state.calls.leave(user) {
            info!(
                "call ended call_id={} by={} reason=left",
                ended.call.id, user
            );
            self.ended_notices(state, &ended, out);
        }
    }

    /// What each party of an ended call is told.
    fn ended_notices(&self, state: &mut HubState, ended: &Ended, out: &mut Outgoing) {
        let call = ended.call;
        let hung_up = Notice::HungUp { call_id: call.id };
        let hold = self.hold;
        let callee = state.party(call.callee);
        let mut tell = |out: &mut Outgoing, user: UserId, notice: Notice| {
            state.tell(user, notice, out, &hold);
        };
        match ended.reason {
            EndReason::Declined | EndReason::Timeout => {
                let timed_out = ended.reason == EndReason::Timeout;
                let declined = Notice::CallDeclined {
                    call_id: call.id,
                    peer: callee,
                    timed_out,
                };
                tell(out, call.caller, declined);
                if timed_out {
                    tell(out, call.callee, hung_up);
                }
            }
            EndReason::Cancelled | EndReason::HungUp | EndReason::Left => {
                let by = ended.by.unwrap_or(call.caller);
                tell(out, call.peer_of(by), hung_up);
            }
            EndReason::ServerStopping => {
                tell(out, call.caller, hung_up.clone());
                tell(out, call.callee, hung_up);
            }
        }
        // A session is held only for its call: with the call gone, a held
        // party has nothing to come back to, and must not stay online (and
        // callable) without a connection until its grace period ends.
        for party in [call.caller, call.callee] {
            if state
                .online
                .get(&party)
                .is_some_and(|s| s.detached.is_some())
                && let Some(session) = self.leave(state, party, Departure::CallEnded, out)
            {
                info!(
                    "held session ended with its call user_id={party} call_id={}",
                    call.id
                );
                out.gone.push((party, session.username));
            }
        }
        debug!("call ended call_id={} reason={:?}", call.id, ended.reason);
    }

    /// Delivers `out` and adds the presence changes since `before` to the
    /// pending batch, in state order (see the module docs). Direct notices
    /// and session ends go out under the state lock (a few pushes); the
    /// presence fan-out never does.
    fn commit(&self, mut state: MutexGuard<'_, HubState>, before: Before, out: Outgoing) {
        let mut changed = Vec::new();
        for (user, username, was) in before.0 {
            let now = state.presence(user);
            if now != was {
                changed.push((user, username, now));
            }
        }
        for (user, username) in out.gone {
            if !changed.iter().any(|(u, _, _)| *u == user) && !state.online.contains_key(&user) {
                changed.push((user, username, UserState::Disconnected));
            }
        }
        let mut wake = out.wake_timer;
        // What is said now comes after the presence changes decided before
        // it: seal them, so each direct recipient is caught up on them first.
        // This change's own presence goes in after (a ring is seen after
        // "Available", before "Busy").
        if !out.direct.is_empty() && !state.pending.is_empty() {
            state.seal(usize::MAX);
            // Everyone else gets the sealed batch from the timer, now.
            state.presence_due = Some(Instant::now());
            wake = true;
        }
        for (conn, why) in out.end {
            self.delivery.end_session(conn, why);
        }
        for (user, notice) in out.direct {
            self.delivery.catch_up(user, &state.in_flight);
            self.delivery.to_user(user, notice);
        }
        for (user, username, presence) in changed {
            state.pending.add(user, username, presence);
        }
        if !state.pending.is_empty() && state.presence_due.is_none() {
            state.presence_due = Some(Instant::now() + PRESENCE_BATCH);
            wake = true;
        }
        if wake {
            self.timer_wake.notify_one();
        }
        // Once stopping, the timer is gone: nothing waits for a batch.
        let now_too = state.stopping && !(state.pending.is_empty() && state.in_flight.is_empty());
        drop(state);
        if now_too {
            self.flush_presence();
        }
    }

    /// Seals the pending presence changes (at most [`FLUSH_PUSHES`] frames'
    /// worth per batch) and broadcasts every sealed batch, one at a time, in
    /// id order, with no state lock held across a fan-out. The timer calls it
    /// when a batch is due; a stop calls it too.
    fn flush_presence(&self) {
        let _order = self
            .broadcasting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            let batches = {
                let mut state = lock(&self.state);
                state.presence_due = None;
                let audience = state.online.len().max(1);
                state.seal((FLUSH_PUSHES / audience).max(1));
                if !state.pending.is_empty() {
                    // Capped: the rest goes out in the next round, at once.
                    state.presence_due = Some(Instant::now());
                }
                state.in_flight.clone()
            };
            let Some(last) = batches.last().map(|b| b.id) else {
                return;
            };
            for batch in &batches {
                self.delivery.broadcast(batch);
            }
            let mut state = lock(&self.state);
            state.in_flight.retain(|b| b.id > last);
            if state.in_flight.is_empty() && (state.pending.is_empty() || !state.stopping) {
                return;
            }
        }
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
        let hub = Hub::new(
            recorder.clone(),
            Arc::new(AnyUser),
            settings,
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
    /// presence, yet nobody else is sent anything until the batch is due: a
    /// commit never fans out to everyone online.
    #[test]
    fn a_direct_notice_catches_its_recipient_up_and_fans_out_to_nobody_else() {
        let (hub, told) = hub();
        for id in 1..=50 {
            hub.login(ConnId(id), &record(id), SessionKind::default())
                .unwrap();
        }
        hub.flush_presence();
        let bystanders = || -> usize { (2..=50).map(|c| told.told(ConnId(c)).len()).sum() };
        let before = bystanders();
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
        assert_eq!(bystanders(), before, "only the callee heard anything yet");
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
