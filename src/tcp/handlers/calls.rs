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
            Request::SdpOffer(m) => self.relay(user, &m.call_id, &m.to_user_id, |call_id, to| {
                Signal::Offer {
                    call_id,
                    from: user,
                    to,
                    sdp: m.sdp,
                }
            }),
            Request::SdpAnswer(m) => self.relay(user, &m.call_id, &m.to_user_id, |call_id, to| {
                Signal::Answer {
                    call_id,
                    from: user,
                    to,
                    sdp: m.sdp,
                }
            }),
            Request::IceCandidate(m) => {
                self.relay(user, &m.call_id, &m.to_user_id, |call_id, to| Signal::Ice {
                    call_id,
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

    /// SDP_OFFER, SDP_ANSWER, ICE_CANDIDATE: relayed to the peer of the call
    /// (`signal` builds the relayed message once the peer is known), answered
    /// only on failure.
    fn relay(
        &self,
        user: UserId,
        call: &str,
        to_user_id: &str,
        signal: impl FnOnce(CallId, UserId) -> Signal,
    ) -> Reply {
        let id = call_id(call)?;
        self.shared
            .hub
            .relay(self.id, user, id, named_peer(to_user_id)?, |to| {
                signal(id, to)
            })?;
        self.relayed();
        Ok(None)
    }

    pub(super) fn relayed(&self) {
        self.shared.metrics.relay_time.observe(self.frame_age());
    }
}
