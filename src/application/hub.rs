//! Sessions, presence and calls: the shared state every connection works on.
//!
//! One mutex guards the sessions and the calls together, because the rules span
//! both ("is the callee online and free? then ring"). It is held for whole
//! compound operations and never during I/O or hashing.
//!
//! Ordering: control notices (presence, call events, takeovers) are handed to the
//! [`Notifier`] in the order the state changed. The state lock is traded for a
//! delivery lock before delivering (hand over hand), so the next state change can
//! be computed while this one is being queued, yet it cannot be queued first.
//! Relayed SDP/ICE skip that lock: each sender's relays are already ordered by
//! its own connection thread. The price: a relay racing the end of its call (the
//! peer hangs up, a takeover, shutdown) can reach the peer just after the
//! HANGUP for that call; clients ignore signaling for a call they ended.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info};

use super::error::AppError;
use super::ports::{ConnId, Notice, Notifier, Party, SessionEnd, Signal, UserRecord, UserStore};
use crate::domain::call::Answer;
use crate::domain::{CallBook, CallId, EndReason, Ended, UserId, UserState};
use crate::metrics::Metrics;

#[derive(Debug)]
struct Session {
    conn: ConnId,
    username: Arc<str>,
}

#[derive(Debug)]
struct HubState {
    online: HashMap<UserId, Session>,
    calls: CallBook,
    stopping: bool,
}

impl HubState {
    fn presence(&self, user: UserId) -> UserState {
        if self.online.contains_key(&user) {
            self.calls.state_of(user)
        } else {
            UserState::Disconnected
        }
    }

    fn conn_of(&self, user: UserId) -> Option<ConnId> {
        self.online.get(&user).map(|s| s.conn)
    }

    fn party(&self, user: UserId) -> Party {
        let username = match self.online.get(&user) {
            Some(s) => s.username.clone(),
            None => Arc::from(user.to_string()),
        };
        Party { id: user, username }
    }

    /// Fails unless `conn` holds `user`'s current session: a connection whose
    /// session was taken over must not act for the user any more.
    fn check_session(&self, conn: ConnId, user: UserId) -> Result<(), AppError> {
        match self.online.get(&user) {
            Some(s) if s.conn == conn => Ok(()),
            _ => Err(AppError::LoginRequired),
        }
    }
}

/// Notices produced by one state change, delivered after the state lock is released.
#[derive(Default)]
struct Outgoing {
    direct: Vec<(ConnId, Notice)>,
    /// Presence changes, each broadcast to every other online user.
    presence: Vec<(UserId, Arc<str>, UserState)>,
    /// Sessions to end (takeover).
    end: Vec<(ConnId, SessionEnd)>,
    /// Every online connection, captured with the state, for the broadcasts.
    audience: Vec<(UserId, ConnId)>,
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
}

pub struct Hub {
    state: Mutex<HubState>,
    /// Wakes the ringing timer when a deadline is added or the hub stops.
    timer_wake: Condvar,
    delivery_order: Mutex<()>,
    notifier: Arc<dyn Notifier>,
    users: Arc<dyn UserStore>,
    ringing_timeout: Duration,
    metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere never leaves these maps half-updated (every mutation is a
    // single map call), so a poisoned lock is still consistent: keep serving.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hub {
    pub fn new(
        notifier: Arc<dyn Notifier>,
        users: Arc<dyn UserStore>,
        ringing_timeout: Duration,
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
                stopping: false,
            }),
            timer_wake: Condvar::new(),
            delivery_order: Mutex::new(()),
            notifier,
            users,
            ringing_timeout,
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
        }
    }

    /// Makes `user` online on `conn`. An older session of the same user is ended
    /// (its connection is told and closed, its call ends).
    ///
    /// # Errors
    /// `Unavailable` while the server is shutting down.
    pub fn login(&self, conn: ConnId, user: &UserRecord) -> Result<(), AppError> {
        let mut state = lock(&self.state);
        if state.stopping {
            return Err(AppError::Unavailable("server shutting down".into()));
        }
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
            self.end_call_of(&mut state, user.id, &mut out);
            state.online.remove(&user.id);
            out.end.push((old, SessionEnd::TakenOver));
        }
        state.online.insert(user.id, Session { conn, username });
        self.commit(state, before, out);
        Ok(())
    }

    /// Ends `user`'s session on `conn` (LOGOUT). Their call ends.
    ///
    /// # Errors
    /// `LoginRequired` if `conn` does not hold the user's session.
    pub fn logout(&self, conn: ConnId, user: UserId) -> Result<(), AppError> {
        let state = lock(&self.state);
        state.check_session(conn, user)?;
        self.remove_session(state, user);
        Ok(())
    }

    /// Clean-up when a connection closes. A no-op if `conn` no longer holds the
    /// session (it was taken over, or the user logged out).
    pub fn disconnect(&self, conn: ConnId, user: UserId) {
        let state = lock(&self.state);
        if state.check_session(conn, user).is_ok() {
            self.remove_session(state, user);
        }
    }

    fn remove_session(&self, mut state: MutexGuard<'_, HubState>, user: UserId) {
        let mut touched = vec![(user, state.party(user).username)];
        if let Some(call) = state.calls.call_of(user) {
            let peer = call.peer_of(user);
            touched.push((peer, state.party(peer).username));
        }
        let before = Before::take(&state, &touched);
        let mut out = Outgoing::default();
        self.end_call_of(&mut state, user, &mut out);
        state.online.remove(&user);
        self.commit(state, before, out);
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
        let touched = [(caller, state.party(caller).username)];
        let before = Before::take(&state, &touched);
        let call = state
            .calls
            .ring(caller, callee, Instant::now() + self.ringing_timeout)?;
        let mut out = Outgoing::default();
        if let Some(to) = state.conn_of(callee) {
            out.direct.push((
                to,
                Notice::IncomingCall {
                    call_id: call.id,
                    from: state.party(caller),
                },
            ));
        }
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
                if let Some(to) = state.conn_of(call.caller) {
                    let peer = state.party(call.callee);
                    out.direct
                        .push((to, Notice::CallAccepted { call_id, peer }));
                }
            }
            Answer::Declined(ended) => self.ended_notices(&state, &ended, &mut out),
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
        let (peer, peer_conn) = {
            let state = lock(&self.state);
            state.check_session(conn, user)?;
            let peer = state.calls.relay_peer(call_id, user)?;
            if named_peer.is_some_and(|named| named != peer) {
                return Err(AppError::Forbidden(
                    "to_user_id is not your peer in this call".into(),
                ));
            }
            // Leaving ends the call, so the peer of an active call is online.
            let peer_conn = state
                .conn_of(peer)
                .ok_or_else(|| AppError::NotFound("peer is offline".into()))?;
            (peer, peer_conn)
        };
        self.notifier
            .notify(peer_conn, Notice::Signal(signal(peer)));
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
        self.ended_notices(&state, &ended, &mut out);
        self.commit(state, before, out);
        Ok(())
    }

    /// Every registered user with their presence, in id order.
    pub fn user_list(&self) -> Vec<(UserId, String, UserState)> {
        let users = self.users.list();
        let state = lock(&self.state);
        users
            .into_iter()
            .map(|(id, name)| {
                let presence = state.presence(id);
                (id, name, presence)
            })
            .collect()
    }

    /// Ends every ringing call whose deadline has passed at `now`.
    pub fn expire_due(&self, now: Instant) {
        let mut state = lock(&self.state);
        let due: Vec<_> = state.calls.expire(now).into_iter().collect();
        if due.is_empty() {
            return;
        }
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
            self.ended_notices(&state, ended, &mut out);
        }
        self.commit(state, before, out);
    }

    /// Runs the ringing timer until [`Hub::stop`]: sleeps until the earliest
    /// deadline (or until a new call wakes it) and expires what is due.
    pub fn run_ringing_timer(&self) {
        let mut state = lock(&self.state);
        while !state.stopping {
            let now = Instant::now();
            match state.calls.next_deadline() {
                Some(deadline) if deadline <= now => {
                    drop(state);
                    self.expire_due(now);
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
            self.ended_notices(&state, &ended, &mut out);
        }
        self.commit(state, before, out);
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
    fn ended_notices(&self, state: &HubState, ended: &Ended, out: &mut Outgoing) {
        let call = ended.call;
        let hung_up = Notice::HungUp { call_id: call.id };
        let tell = |out: &mut Outgoing, user: UserId, notice: Notice| {
            if let Some(conn) = state.conn_of(user) {
                out.direct.push((conn, notice));
            }
        };
        match ended.reason {
            EndReason::Declined | EndReason::Timeout => {
                let timed_out = ended.reason == EndReason::Timeout;
                let declined = Notice::CallDeclined {
                    call_id: call.id,
                    peer: state.party(call.callee),
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
        debug!("call ended call_id={} reason={:?}", call.id, ended.reason);
    }

    /// Broadcasts the presence changes since `before`, then delivers `out`, in
    /// state order (see the module docs).
    fn commit(&self, state: MutexGuard<'_, HubState>, before: Before, mut out: Outgoing) {
        for (user, username, was) in before.0 {
            let now = state.presence(user);
            if now != was {
                out.presence.push((user, username, now));
            }
        }
        if !out.presence.is_empty() {
            out.audience = state.online.iter().map(|(u, s)| (*u, s.conn)).collect();
        }
        let order = lock(&self.delivery_order);
        drop(state);
        for (conn, why) in out.end {
            self.notifier.end_session(conn, why);
        }
        for (conn, notice) in out.direct {
            self.notifier.notify(conn, notice);
        }
        for (user, username, presence) in out.presence {
            debug!("presence user_id={user} state={presence}");
            let to: Vec<ConnId> = out
                .audience
                .iter()
                .filter(|(u, _)| *u != user)
                .map(|(_, c)| *c)
                .collect();
            self.notifier.notify_many(
                &to,
                Notice::Presence {
                    user,
                    username,
                    state: presence,
                },
            );
        }
        drop(order);
    }
}
