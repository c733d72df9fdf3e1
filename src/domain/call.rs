//! The call state machine: who is ringing whom, who is talking, and how calls end.
//!
//! A user is in at most one call at a time, as caller or callee. A call starts
//! `Ringing` with a deadline and becomes `Active` when the callee accepts; any
//! other transition ends it, and an ended call leaves nothing behind.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::time::Instant;

use super::user::{UserId, UserState};

/// A call's identifier; on the wire a JSON string of decimal digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub u64);

impl CallId {
    pub fn parse(text: &str) -> Option<CallId> {
        if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok().map(CallId)
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallPhase {
    Ringing { deadline: Instant },
    Active,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    pub id: CallId,
    pub caller: UserId,
    pub callee: UserId,
    pub phase: CallPhase,
}

impl Call {
    pub fn involves(&self, user: UserId) -> bool {
        self.caller == user || self.callee == user
    }

    /// The other party, for a user who is a party.
    pub fn peer_of(&self, user: UserId) -> UserId {
        if self.caller == user {
            self.callee
        } else {
            self.caller
        }
    }

    pub fn is_ringing(&self) -> bool {
        matches!(self.phase, CallPhase::Ringing { .. })
    }
}

/// How a call ended; decides what each party is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The callee refused (CALL_RESPONSE accepted=false, or HANGUP while ringing).
    Declined,
    /// Nobody answered before the ringing deadline.
    Timeout,
    /// The caller gave up while it was ringing.
    Cancelled,
    /// A party hung up an active call.
    HungUp,
    /// A party went away: disconnect, logout or session takeover.
    Left,
    /// The server is stopping; both parties are told.
    ServerStopping,
}

/// A call that has just ended, with who ended it (none for a timeout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    pub call: Call,
    pub by: Option<UserId>,
    pub reason: EndReason,
}

/// Why a call operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallError {
    SelfCall,
    /// The requester already has a call (ringing or active).
    CallerBusy,
    /// The callee already has a call (ringing or active).
    CalleeBusy,
    NoSuchCall,
    /// The requester is not a party to that call.
    NotAParty,
    /// Only the callee may answer.
    NotCallee,
    /// The call was already answered.
    AlreadyAnswered,
    /// Signaling before the callee accepted.
    NotActive,
    /// A HANGUP without a call_id from a user who has no call.
    NoCurrentCall,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CallError::SelfCall => "you cannot call yourself",
            CallError::CallerBusy => "you are already in a call",
            CallError::CalleeBusy => "user is busy",
            CallError::NoSuchCall => "no such call",
            CallError::NotAParty => "you are not a party to this call",
            CallError::NotCallee => "only the callee can answer this call",
            CallError::AlreadyAnswered => "call was already answered",
            CallError::NotActive => "call has not been accepted yet",
            CallError::NoCurrentCall => "you are not in a call",
        })
    }
}

/// Every call in progress, indexed by id, by user and by ringing deadline.
#[derive(Debug)]
pub struct CallBook {
    calls: HashMap<CallId, Call>,
    by_user: HashMap<UserId, CallId>,
    deadlines: BTreeSet<(Instant, CallId)>,
}

impl Default for CallBook {
    fn default() -> CallBook {
        CallBook::new()
    }
}

impl CallBook {
    pub fn new() -> CallBook {
        CallBook {
            calls: HashMap::new(),
            by_user: HashMap::new(),
            deadlines: BTreeSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Calls not yet answered.
    pub fn ringing(&self) -> usize {
        self.deadlines.len()
    }

    pub fn get(&self, id: CallId) -> Option<&Call> {
        self.calls.get(&id)
    }

    pub fn call_of(&self, user: UserId) -> Option<&Call> {
        self.by_user.get(&user).and_then(|id| self.calls.get(id))
    }

    /// Presence of a connected user: Busy while calling out or talking; a callee
    /// whose phone is ringing still shows Available, as in the reference.
    pub fn state_of(&self, user: UserId) -> UserState {
        match self.call_of(user) {
            Some(call) if call.caller == user || !call.is_ringing() => UserState::Busy,
            _ => UserState::Available,
        }
    }

    /// Starts ringing `callee` as call `id` (new, from the id store),
    /// provided neither party is in a call.
    ///
    /// # Errors
    /// `SelfCall`, `CallerBusy` or `CalleeBusy`.
    pub fn ring(
        &mut self,
        id: CallId,
        caller: UserId,
        callee: UserId,
        deadline: Instant,
    ) -> Result<Call, CallError> {
        if caller == callee {
            return Err(CallError::SelfCall);
        }
        if self.by_user.contains_key(&caller) {
            return Err(CallError::CallerBusy);
        }
        if self.by_user.contains_key(&callee) {
            return Err(CallError::CalleeBusy);
        }
        let call = Call {
            id,
            caller,
            callee,
            phase: CallPhase::Ringing { deadline },
        };
        self.calls.insert(id, call);
        self.by_user.insert(caller, id);
        self.by_user.insert(callee, id);
        self.deadlines.insert((deadline, id));
        Ok(call)
    }

    /// The callee's answer. Accepting makes the call active; declining ends it.
    ///
    /// # Errors
    /// `NoSuchCall`, `NotCallee` or `AlreadyAnswered`.
    pub fn answer(
        &mut self,
        id: CallId,
        by: UserId,
        accepted: bool,
    ) -> Result<Answered, CallError> {
        let call = self.calls.get_mut(&id).ok_or(CallError::NoSuchCall)?;
        if call.callee != by {
            return Err(if call.caller == by {
                CallError::NotCallee
            } else {
                CallError::NotAParty
            });
        }
        let CallPhase::Ringing { deadline } = call.phase else {
            return Err(CallError::AlreadyAnswered);
        };
        if accepted {
            call.phase = CallPhase::Active;
            let call = *call;
            self.deadlines.remove(&(deadline, id));
            Ok(Answered::Accepted(call))
        } else {
            self.remove(id, Some(by), EndReason::Declined)
                .map(Answered::Declined)
                .ok_or(CallError::NoSuchCall)
        }
    }

    /// The peer to relay SDP or ICE to, if `by` may signal on this call.
    ///
    /// # Errors
    /// `NoSuchCall`, `NotAParty` or `NotActive`.
    pub fn relay_peer(&self, id: CallId, by: UserId) -> Result<UserId, CallError> {
        let call = self.calls.get(&id).ok_or(CallError::NoSuchCall)?;
        if !call.involves(by) {
            return Err(CallError::NotAParty);
        }
        if call.is_ringing() {
            return Err(CallError::NotActive);
        }
        Ok(call.peer_of(by))
    }

    /// Ends a call on a party's HANGUP. Without an id it means the user's own call.
    ///
    /// # Errors
    /// `NoSuchCall`, `NotAParty` or `NoCurrentCall`.
    pub fn hang_up(&mut self, id: Option<CallId>, by: UserId) -> Result<Ended, CallError> {
        let id = match id {
            Some(id) => id,
            None => *self.by_user.get(&by).ok_or(CallError::NoCurrentCall)?,
        };
        let call = self.calls.get(&id).ok_or(CallError::NoSuchCall)?;
        if !call.involves(by) {
            return Err(CallError::NotAParty);
        }
        let reason = match (call.is_ringing(), call.caller == by) {
            (true, true) => EndReason::Cancelled,
            (true, false) => EndReason::Declined,
            (false, _) => EndReason::HungUp,
        };
        self.remove(id, Some(by), reason)
            .ok_or(CallError::NoSuchCall)
    }

    /// Ends the call of a user who went away, if they had one.
    pub fn leave(&mut self, user: UserId) -> Option<Ended> {
        let id = *self.by_user.get(&user)?;
        self.remove(id, Some(user), EndReason::Left)
    }

    /// Ends every call (the server is stopping).
    pub fn end_all(&mut self) -> Vec<Ended> {
        let ids: Vec<CallId> = self.calls.keys().copied().collect();
        ids.into_iter()
            .filter_map(|id| self.remove(id, None, EndReason::ServerStopping))
            .collect()
    }

    /// Ends every call still ringing at `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Ended> {
        let due: Vec<CallId> = self
            .deadlines
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .map(|(_, id)| *id)
            .collect();
        due.into_iter()
            .filter_map(|id| self.remove(id, None, EndReason::Timeout))
            .collect()
    }

    /// The earliest ringing deadline, for the timer to sleep until.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }

    fn remove(&mut self, id: CallId, by: Option<UserId>, reason: EndReason) -> Option<Ended> {
        let call = self.calls.remove(&id)?;
        self.by_user.remove(&call.caller);
        self.by_user.remove(&call.callee);
        if let CallPhase::Ringing { deadline } = call.phase {
            self.deadlines.remove(&(deadline, id));
        }
        Some(Ended { call, by, reason })
    }

    /// Checks the indexes agree; used by tests after every sequence of steps.
    pub fn check_invariants(&self) {
        let ringing = self.calls.values().filter(|c| c.is_ringing()).count();
        assert_eq!(
            self.deadlines.len(),
            ringing,
            "one deadline per ringing call"
        );
        assert_eq!(
            self.by_user.len(),
            self.calls.len() * 2,
            "two users per call"
        );
        for (user, id) in &self.by_user {
            assert!(self.calls[id].involves(*user));
        }
    }
}

/// The outcome of a CALL_RESPONSE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answered {
    Accepted(Call),
    Declined(Ended),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh call id, as the id store would give.
    fn next_id() -> CallId {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(100);
        CallId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
    use std::time::Duration;

    const A: UserId = UserId(1);
    const B: UserId = UserId(2);
    const C: UserId = UserId(3);

    fn book() -> (CallBook, Instant) {
        (CallBook::new(), Instant::now())
    }

    /// Ringing makes the caller Busy and leaves the callee Available until accepted.
    #[test]
    fn accepting_a_call_makes_both_parties_busy() {
        let (mut book, now) = book();
        let call = book
            .ring(next_id(), A, B, now + Duration::from_secs(30))
            .unwrap();
        assert_eq!(book.state_of(A), UserState::Busy);
        assert_eq!(book.state_of(B), UserState::Available);
        assert_eq!(
            book.answer(call.id, B, true),
            Ok(Answered::Accepted(Call {
                phase: CallPhase::Active,
                ..call
            }))
        );
        assert_eq!(book.state_of(B), UserState::Busy);
        assert_eq!(
            book.next_deadline(),
            None,
            "an answered call has no deadline"
        );
        book.check_invariants();
    }

    /// A user cannot call themselves, nor start a second call, nor reach a user in a call.
    #[test]
    fn one_call_per_user_at_a_time() {
        let (mut book, now) = book();
        assert_eq!(book.ring(next_id(), A, A, now), Err(CallError::SelfCall));
        book.ring(next_id(), A, B, now).unwrap();
        assert_eq!(book.ring(next_id(), A, C, now), Err(CallError::CallerBusy));
        assert_eq!(book.ring(next_id(), C, B, now), Err(CallError::CalleeBusy));
        assert_eq!(book.ring(next_id(), C, A, now), Err(CallError::CalleeBusy));
        assert_eq!(book.ring(next_id(), B, C, now), Err(CallError::CallerBusy));
        book.check_invariants();
    }

    /// Declining ends the call and clears every index.
    #[test]
    fn declining_ends_the_call() {
        let (mut book, now) = book();
        let call = book.ring(next_id(), A, B, now).unwrap();
        let Ok(Answered::Declined(ended)) = book.answer(call.id, B, false) else {
            panic!()
        };
        assert_eq!(ended.reason, EndReason::Declined);
        assert!(book.is_empty());
        assert_eq!(book.state_of(A), UserState::Available);
        book.check_invariants();
    }

    /// Only the callee answers, and only once; a gone call is NoSuchCall.
    #[test]
    fn answers_are_checked() {
        let (mut book, now) = book();
        let call = book.ring(next_id(), A, B, now).unwrap();
        assert_eq!(book.answer(call.id, A, true), Err(CallError::NotCallee));
        assert_eq!(book.answer(call.id, C, true), Err(CallError::NotAParty));
        book.answer(call.id, B, true).unwrap();
        assert_eq!(
            book.answer(call.id, B, true),
            Err(CallError::AlreadyAnswered)
        );
        assert_eq!(book.answer(CallId(1), B, true), Err(CallError::NoSuchCall));
    }

    /// Relays go only between the two parties of an active call.
    #[test]
    fn relay_needs_an_active_call_and_a_party() {
        let (mut book, now) = book();
        let call = book.ring(next_id(), A, B, now).unwrap();
        assert_eq!(book.relay_peer(call.id, A), Err(CallError::NotActive));
        book.answer(call.id, B, true).unwrap();
        assert_eq!(book.relay_peer(call.id, A), Ok(B));
        assert_eq!(book.relay_peer(call.id, B), Ok(A));
        assert_eq!(book.relay_peer(call.id, C), Err(CallError::NotAParty));
        assert_eq!(book.relay_peer(CallId(7), A), Err(CallError::NoSuchCall));
    }

    /// HANGUP while ringing cancels (caller) or declines (callee); later it hangs up.
    #[test]
    fn hangup_reason_depends_on_phase_and_party() {
        let (mut book, now) = book();
        let call = book.ring(next_id(), A, B, now).unwrap();
        assert_eq!(book.hang_up(Some(call.id), C), Err(CallError::NotAParty));
        assert_eq!(book.hang_up(None, A).unwrap().reason, EndReason::Cancelled);
        let call = book.ring(next_id(), A, B, now).unwrap();
        assert_eq!(
            book.hang_up(Some(call.id), B).unwrap().reason,
            EndReason::Declined
        );
        let call = book.ring(next_id(), A, B, now).unwrap();
        book.answer(call.id, B, true).unwrap();
        assert_eq!(
            book.hang_up(Some(call.id), B).unwrap().reason,
            EndReason::HungUp
        );
        assert_eq!(book.hang_up(Some(call.id), B), Err(CallError::NoSuchCall));
        assert_eq!(book.hang_up(None, B), Err(CallError::NoCurrentCall));
        book.check_invariants();
    }

    /// Only calls past their deadline expire, earliest first, and answered calls never do.
    #[test]
    fn ringing_calls_expire_at_their_deadline() {
        let (mut book, now) = book();
        let s = Duration::from_secs;
        let early = book.ring(next_id(), A, B, now + s(10)).unwrap();
        let late = book.ring(next_id(), C, UserId(4), now + s(20)).unwrap();
        let answered = book
            .ring(next_id(), UserId(5), UserId(6), now + s(5))
            .unwrap();
        book.answer(answered.id, UserId(6), true).unwrap();
        assert_eq!(book.next_deadline(), Some(now + s(10)));
        assert!(book.expire(now + s(9)).is_empty());
        let ended = book.expire(now + s(15));
        assert_eq!(ended.len(), 1);
        assert_eq!(
            (ended[0].call.id, ended[0].reason, ended[0].by),
            (early.id, EndReason::Timeout, None)
        );
        assert_eq!(book.next_deadline(), Some(now + s(20)));
        assert_eq!(book.expire(now + s(60))[0].call.id, late.id);
        assert_eq!(book.len(), 1);
        book.check_invariants();
    }

    /// Stopping ends every call, ringing or active, with nobody as the ender.
    #[test]
    fn end_all_ends_every_call() {
        let (mut book, now) = book();
        book.ring(next_id(), A, B, now).unwrap();
        let active = book.ring(next_id(), C, UserId(4), now).unwrap();
        book.answer(active.id, UserId(4), true).unwrap();
        let ended = book.end_all();
        assert_eq!(ended.len(), 2);
        assert!(
            ended
                .iter()
                .all(|e| e.reason == EndReason::ServerStopping && e.by.is_none())
        );
        assert!(book.is_empty());
        book.check_invariants();
    }

    /// A user who leaves ends their call in any phase.
    #[test]
    fn leaving_ends_the_call() {
        let (mut book, now) = book();
        assert_eq!(book.leave(A), None);
        let call = book.ring(next_id(), A, B, now).unwrap();
        let ended = book.leave(B).unwrap();
        assert_eq!(
            (ended.call.id, ended.reason, ended.by),
            (call.id, EndReason::Left, Some(B))
        );
        assert!(book.is_empty());
        book.check_invariants();
    }
}
