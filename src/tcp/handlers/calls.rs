//! Calls and the SDP/ICE relay.

use super::*;

impl Connection {
    /// CALL_REQUEST, CALL_RESPONSE, the SDP/ICE relay and HANGUP: answered only when they fail, as v1 clients expect.
    pub(super) fn calls(&mut self, user: Option<UserId>, request: Request) -> Reply {
        let hub = self.shared.hub.clone();
        let conn = self.id;
        match request {
            Request::Call(c) => {
                let user = user.ok_or(AppError::LoginRequired)?;
                let callee = UserId::parse(&c.to_user_id)
                    .ok_or_else(|| AppError::NotFound("no such user".into()))?;
                hub.call(conn, user, callee)?;
                Ok(None)
            }
            Request::CallResponse(r) => {
                let user = user.ok_or(AppError::LoginRequired)?;
                hub.answer(conn, user, call_id(&r.call_id)?, r.accepted)?;
                Ok(None)
            }
            Request::SdpOffer(m) => {
                let user = user.ok_or(AppError::LoginRequired)?;
                let id = call_id(&m.call_id)?;
                hub.relay(conn, user, id, named_peer(&m.to_user_id)?, |to| {
                    Signal::Offer {
                        call_id: id,
                        from: user,
                        to,
                        sdp: m.sdp,
                    }
                })?;
                self.relayed();
                Ok(None)
            }
            Request::SdpAnswer(m) => {
                let user = user.ok_or(AppError::LoginRequired)?;
                let id = call_id(&m.call_id)?;
                hub.relay(conn, user, id, named_peer(&m.to_user_id)?, |to| {
                    Signal::Answer {
                        call_id: id,
                        from: user,
                        to,
                        sdp: m.sdp,
                    }
                })?;
                self.relayed();
                Ok(None)
            }
            Request::IceCandidate(m) => {
                let user = user.ok_or(AppError::LoginRequired)?;
                let id = call_id(&m.call_id)?;
                hub.relay(conn, user, id, named_peer(&m.to_user_id)?, |to| {
                    Signal::Ice {
                        call_id: id,
                        from: user,
                        to,
                        candidate: m.candidate,
                        sdp_mid: m.sdp_mid,
                        sdp_mline_index: m.sdp_mline_index,
                    }
                })?;
                self.relayed();
                Ok(None)
            }
            Request::Hangup(h) => {
                let user = user.ok_or(AppError::LoginRequired)?;
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

    pub(super) fn relayed(&self) {
        self.shared.metrics.relay_time.observe(self.frame_age());
    }
}
