//! Dispatch: one arm per request type, each calling a use case and choosing the answer.
//!
//! A request with a response type gets exactly one answer (its response or an
//! ERROR). Relayed messages (SDP, ICE, HANGUP) and CALL_REQUEST/CALL_RESPONSE
//! are answered only when they fail, as v1 clients expect.

use std::time::{SystemTime, UNIX_EPOCH};

use log::info;

use super::connection::{Connection, Session};
use super::message::{
    AuthResponse, Credentials, Heartbeat, LogoutResponse, ReqId, Request, ServerMessage, UserEntry,
    UserList,
};
use crate::application::{AppError, Signal};
use crate::domain::{CallId, UserId, validate_username};
use crate::metrics::Metrics;

/// Room left in a relayed frame for the ids the server writes into it.
const RELAY_HEADROOM: usize = 128;

type Answer = Result<Option<ServerMessage>, AppError>;

fn call_id(text: &str) -> Result<CallId, AppError> {
    CallId::parse(text).ok_or_else(|| AppError::NotFound("no such call".into()))
}

/// The peer a client named in `to_user_id`; empty means "not said".
fn named_peer(text: &str) -> Result<Option<UserId>, AppError> {
    if text.is_empty() {
        return Ok(None);
    }
    UserId::parse(text)
        .map(Some)
        .ok_or_else(|| AppError::Forbidden("to_user_id is not your peer in this call".into()))
}

impl Connection {
    pub(super) fn dispatch(&mut self, request: Request, payload_len: usize) {
        let req_id = request.req_id().cloned();
        let Some(user) = self.user() else {
            if request.allowed_anonymously() {
                let answer = self.anonymous(request);
                return self.answer(answer, req_id);
            }
            return self.reply_error(AppError::LoginRequired, req_id);
        };
        let relayed = matches!(
            request,
            Request::SdpOffer(_) | Request::SdpAnswer(_) | Request::IceCandidate(_)
        );
        if relayed && payload_len + RELAY_HEADROOM > self.shared.limits.max_frame {
            let err = AppError::TooLarge(format!(
                "relayed messages are limited to {} bytes of payload",
                self.shared.limits.max_frame - RELAY_HEADROOM
            ));
            return self.reply_error(err, req_id);
        }
        let answer = self.authenticated(user, request);
        self.answer(answer, req_id);
    }

    fn answer(&mut self, answer: Answer, req_id: Option<ReqId>) {
        match answer {
            Ok(Some(message)) => self.reply(&message),
            Ok(None) => {}
            Err(err) => self.reply_error(err, req_id),
        }
    }

    /// Requests that need no login: LOGIN, REGISTER, HEARTBEAT.
    fn anonymous(&mut self, request: Request) -> Answer {
        match request {
            Request::Login(c) => Ok(Some(self.login(c))),
            Request::Register(c) => Ok(Some(self.register(c))),
            Request::Heartbeat(h) => Ok(Some(heartbeat(h))),
            _ => Err(AppError::LoginRequired),
        }
    }

    fn authenticated(&mut self, user: UserId, request: Request) -> Answer {
        let hub = self.shared.hub.clone();
        let conn = self.id;
        match request {
            Request::Login(c) => Ok(Some(self.login(c))),
            Request::Register(c) => Ok(Some(self.register(c))),
            Request::Heartbeat(h) => Ok(Some(heartbeat(h))),
            Request::UserList(e) => {
                let users = hub
                    .user_list()
                    .into_iter()
                    .map(|(id, username, state)| UserEntry {
                        user_id: id.to_string(),
                        username,
                        state: state.as_str().to_string(),
                    })
                    .collect();
                Ok(Some(ServerMessage::UserListResponse(UserList {
                    users,
                    req_id: e.req_id,
                })))
            }
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
                let id = match h.call_id.as_deref() {
                    None | Some("") => None,
                    Some(text) => Some(call_id(text)?),
                };
                hub.hang_up(conn, user, id)?;
                Ok(None)
            }
            Request::Logout(e) => {
                hub.logout(conn, user)?;
                info!("logout conn={} user_id={}", conn, user);
                self.end_session();
                Ok(Some(ServerMessage::LogoutResponse(LogoutResponse {
                    success: true,
                    error: None,
                    req_id: e.req_id,
                })))
            }
        }
    }

    fn relayed(&self) {
        self.shared.metrics.relay_time.observe(self.frame_age());
    }

    fn login(&mut self, c: Credentials) -> ServerMessage {
        let result = match &self.session {
            Session::Authenticated { username, .. } => Err(AppError::Conflict(format!(
                "already logged in as {username}; send LOGOUT_REQUEST first"
            ))),
            Session::Anonymous => self
                .shared
                .auth
                .verify(&c.username, &c.password_hash, self.peer_ip())
                .and_then(|user| self.shared.hub.login(self.id, &user).map(|()| user)),
        };
        match result {
            Ok(user) => {
                info!(
                    "login conn={} user_id={} username={}",
                    self.id, user.id, user.username
                );
                self.session = Session::Authenticated {
                    user: user.id,
                    username: user.username.clone(),
                };
                ServerMessage::LoginResponse(success(user.id, user.username, c.req_id))
            }
            Err(err) => {
                Metrics::count(&self.shared.metrics.failed_logins);
                info!(
                    "login failed conn={} username={} code={}",
                    self.id,
                    loggable_name(&c.username),
                    err.code()
                );
                ServerMessage::LoginResponse(failure(err, c.req_id))
            }
        }
    }

    fn register(&mut self, c: Credentials) -> ServerMessage {
        match self
            .shared
            .auth
            .register(&c.username, &c.password_hash, self.peer_ip())
        {
            Ok(user) => {
                info!(
                    "registered conn={} user_id={} username={}",
                    self.id, user.id, user.username
                );
                ServerMessage::RegisterResponse(success(user.id, user.username, c.req_id))
            }
            Err(err) => ServerMessage::RegisterResponse(failure(err, c.req_id)),
        }
    }
}

/// A client-supplied name for a log line: as is if it follows the username
/// rules (short, no control characters), else only its length.
fn loggable_name(name: &str) -> String {
    match validate_username(name) {
        Ok(()) => name.to_string(),
        Err(_) => format!("<invalid, {} bytes>", name.len()),
    }
}

fn success(id: UserId, username: String, req_id: Option<ReqId>) -> AuthResponse {
    AuthResponse {
        success: true,
        user_id: Some(id.to_string()),
        username: Some(username),
        req_id,
        ..AuthResponse::default()
    }
}

fn failure(err: AppError, req_id: Option<ReqId>) -> AuthResponse {
    AuthResponse {
        success: false,
        error: Some(super::message::wire_text(err.to_string())),
        code: Some(err.code()),
        retry_after_ms: err.retry_after_ms(),
        req_id,
        ..AuthResponse::default()
    }
}

fn heartbeat(h: Heartbeat) -> ServerMessage {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    ServerMessage::Heartbeat(Heartbeat {
        timestamp: h.timestamp,
        server_time: Some(now),
        req_id: h.req_id,
    })
}
