//! Calls: ringing, answering, the SDP/ICE relay between the two parties,
//! hang-ups, and what a call does when one of its parties leaves.

use super::*;
use crate::application::store::IdKind;

impl Hub {
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
        // From the id store (never reused after a restart; a cluster's store
        // hands them out across nodes). An id a refused call took is skipped.
        let id = self.rooms_ids().next(IdKind::Call).map_err(|err| {
            log::warn!("no call id: {err}");
            AppError::Internal("could not reserve a call id; try again".into())
        })?;
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
        let call = state.calls.ring(
            CallId(id),
            caller,
            callee,
            Instant::now() + self.ringing_timeout,
        )?;
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
            Answered::Accepted(call) => {
                info!(
                    "call accepted call_id={} caller={} callee={}",
                    call.id, call.caller, call.callee
                );
                let peer = state.party(call.callee);
                let accepted = Notice::CallAccepted { call_id, peer };
                state.tell(call.caller, accepted, &mut out, &self.hold);
            }
            Answered::Declined(ended) => self.ended_notices(&mut state, &ended, &mut out),
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
            self.delivery
                .relay_to_user(peer, Notice::Signal(signal(peer)));
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

    /// The calls capability's part of leaving: the user's call ends (the peer
    /// is told), whatever the reason.
    pub(super) fn calls_on_leave(
        &self,
        state: &mut HubState,
        user: UserId,
        _why: Departure,
        out: &mut Outgoing,
    ) {
        self.end_call_of(state, user, out);
    }

    pub(super) fn end_call_of(&self, state: &mut HubState, user: UserId, out: &mut Outgoing) {
        if let Some(ended) = state.calls.leave(user) {
            info!(
                "call ended call_id={} by={} reason=left",
                ended.call.id, user
            );
            self.ended_notices(state, &ended, out);
        }
    }

    /// What each party of an ended call is told.
    pub(super) fn ended_notices(&self, state: &mut HubState, ended: &Ended, out: &mut Outgoing) {
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
        // A session is held for its call and rooms: with the call gone and
        // no room, a held party has nothing to come back to, and must not
        // stay online (and callable) without a connection until its grace
        // period ends.
        for party in [call.caller, call.callee] {
            if state
                .online
                .get(&party)
                .is_some_and(|s| s.detached.is_some())
                && !state.rooms.is_in_any(party)
                && let Some(session) = self.leave(state, party, Departure::NothingHeld, out)
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
}
