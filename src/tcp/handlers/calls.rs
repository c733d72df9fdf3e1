//! Calls and the SDP/ICE relay.

use super::*;

impl Connection {
    /// CALL_REQUEST, CALL_RESPONSE, the SDP/ICE relay and HANGUP: answered only when they fail, as v1 clients expect.
    pub(super) fn calls(&mut self, user: Option<UserId>, request: Request) -> Reply {
        // Every call request needs a login (the registry says so).
        let user = user.ok_or(AppError::LoginRequired)?;
        let hub = self.shared.hub.clone();
        let conn = self.id;
        match request {
            Request::Call(c) => {
                let callee = UserId::parse(&c.to_user_id)
                    .ok_or_else(|| AppError::NotFound("no such user".into()))?;
                hub.call(conn, user, callee)?;
                Ok(None)
            }
            Request::CallResponse(r) => {
                hub.answer(conn, user, call_id(&r.call_id)?, r.accepted)?;
                Ok(None)
            }
            Request::SdpOffer(m) => {
                let target = Target::of(m.call_id.as_deref(), m.room_id.as_deref())?;
                self.relay(user, target, &m.to_user_id, |scope, to| Signal::Offer {
                    scope,
                    from: user,
                    to,
                    sdp: m.sdp,
                })
            }
            Request::SdpAnswer(m) => {
                let target = Target::of(m.call_id.as_deref(), m.room_id.as_deref())?;
                self.relay(user, target, &m.to_user_id, |scope, to| Signal::Answer {
                    scope,
                    from: user,
                    to,
                    sdp: m.sdp,
                })
            }
            Request::IceCandidate(m) => {
                let target = Target::of(m.call_id.as_deref(), m.room_id.as_deref())?;
                self.relay(user, target, &m.to_user_id, |scope, to| Signal::Ice {
                    scope,
                    from: user,
                    to,
                    candidate: m.candidate,
                    sdp_mid: m.sdp_mid,
                    sdp_mline_index: m.sdp_mline_index,
                })
            }
            Request::Hangup(h) => {
                let id = match h.call_id.as_deref() {
                    None | Some("") => None,
                    Some(text) => Some(call_id(text)?),
                };
                hub.hang_up(conn, user, id)?;
                Ok(None)
            }
            other => Err(misrouted(&other)),
        }
    }

    /// SDP_OFFER, SDP_ANSWER, ICE_CANDIDATE: relayed to the peer of the call,
    /// or to `to_user_id` inside a room (`signal` builds the relayed message
    /// once the peer is known), answered only on failure.
    fn relay(
        &self,
        user: UserId,
        target: Target,
        to_user_id: &str,
        signal: impl FnOnce(Scope, UserId) -> Signal,
    ) -> Reply {
        let hub = &self.shared.hub;
        match target {
            Target::Call(id) => {
                hub.relay(self.id, user, id, named_peer(to_user_id)?, |to| {
                    signal(Scope::Call(id), to)
                })?;
            }
            Target::Room(id) => {
                let to = named_peer(to_user_id)?.ok_or_else(|| {
                    AppError::BadRequest("to_user_id is required in a room".into())
                })?;
                hub.room_relay(self.id, user, id, to, || signal(Scope::Room(id), to))?;
            }
        }
        self.relayed();
        Ok(None)
    }

    pub(super) fn relayed(&self) {
        self.shared.metrics.relay_time.observe(self.frame_age());
    }
}

/// Where a relayed frame goes: exactly one of `call_id` and `room_id`.
enum Target {
    Call(CallId),
    Room(RoomId),
}

impl Target {
    fn of(call: Option<&str>, room: Option<&str>) -> Result<Target, AppError> {
        match (
            call.filter(|c| !c.is_empty()),
            room.filter(|r| !r.is_empty()),
        ) {
            (Some(call), None) => Ok(Target::Call(call_id(call)?)),
            (None, Some(room)) => Ok(Target::Room(room_id(room)?)),
            (Some(_), Some(_)) => Err(AppError::BadRequest(
                "send call_id or room_id, not both".into(),
            )),
            (None, None) => Err(AppError::BadRequest(
                "call_id or room_id is required".into(),
            )),
        }
    }
}
