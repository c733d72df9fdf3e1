//! Dispatch: one arm per request type, each calling a use case and choosing the answer.
//!
//! A request with a response type gets exactly one answer (its response or an
//! ERROR). Relayed messages (SDP, ICE, HANGUP) and CALL_REQUEST/CALL_RESPONSE
//! are answered only when they fail, as v1 clients expect.
//!
//! Protocol 2 (after HELLO): LOGIN_RESPONSE also carries a session token and
//! the ICE servers; the session is resumable and its calls are held when the
//! connection drops. RESUME_REQUEST and GUEST_LOGIN_REQUEST imply protocol 2.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use log::info;

use super::connection::{Connection, Session};
use super::frame;
use super::message::{
    AccountDelete, AuthResponse, Credentials, GuestLogin, Heartbeat, Hello, IceServerEntry,
    IceServerList, LogoutResponse, MessageType, PasswordChange, ReqId, Request, Resume,
    ServerMessage, SessionOutcome, UserEntryView, UserListView, Welcome,
};
use crate::application::hub::{Resumed, SessionKind};
use crate::application::{AppError, IceServers, SessionEnd, Signal, UserRecord};
use crate::domain::{CallId, UserId, guest_name, validate_username};
use crate::metrics::Metrics;

/// The highest protocol version this server speaks.
pub const PROTOCOL_VERSION: u32 = 2;
/// What protocol 2 offers, as WELCOME lists it.
const CAPABILITIES: &[&str] = &[
    "resume",
    "token_refresh",
    "peer_status",
    "ice_servers",
    "guest",
    "password_change",
    "account_delete",
];

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

    /// Requests that need no login: LOGIN, REGISTER, HEARTBEAT, HELLO, RESUME,
    /// GUEST_LOGIN.
    fn anonymous(&mut self, request: Request) -> Answer {
        match request {
            Request::Login(c) => Ok(Some(self.login(c))),
            Request::Register(c) => Ok(Some(self.register(c))),
            Request::Heartbeat(h) => Ok(Some(heartbeat(h))),
            Request::Hello(h) => self.hello(h).map(Some),
            Request::Resume(r) => self.resume(r).map(Some),
            Request::GuestLogin(g) => self.guest_login(g).map(Some),
            _ => Err(AppError::LoginRequired),
        }
    }

    fn v2(&self) -> bool {
        self.protocol >= 2
    }

    fn authenticated(&mut self, user: UserId, request: Request) -> Answer {
        let hub = self.shared.hub.clone();
        let conn = self.id;
        match request {
            Request::Login(c) => Ok(Some(self.login(c))),
            Request::Register(c) => Ok(Some(self.register(c))),
            Request::Heartbeat(h) => Ok(Some(heartbeat(h))),
            Request::Hello(h) => self.hello(h).map(Some),
            Request::Resume(r) => self.resume(r).map(Some),
            Request::GuestLogin(g) => self.guest_login(g).map(Some),
            Request::TokenRefresh(e) => {
                hub.check_session(conn, user)?;
                if !self.v2() {
                    return Err(AppError::BadRequest(
                        "TOKEN_REFRESH_REQUEST needs protocol 2: send HELLO before logging in"
                            .into(),
                    ));
                }
                let record = self.registered(user)?;
                let issued = self.shared.tokens.issue(&record, unix_now());
                Ok(Some(ServerMessage::TokenRefreshResponse(SessionOutcome {
                    success: true,
                    session_token: Some(issued.token),
                    expires_at: Some(issued.expires_at),
                    req_id: e.req_id,
                })))
            }
            Request::IceServers(e) => {
                hub.check_session(conn, user)?;
                let list = self.ice_servers(user);
                Ok(Some(ServerMessage::IceServersResponse(IceServerList {
                    ice_servers: ice_entries(&list),
                    ttl_secs: list.ttl_secs,
                    expires_at: list.expires_at,
                    req_id: e.req_id,
                })))
            }
            Request::PasswordChange(p) => {
                hub.check_session(conn, user)?;
                self.change_password(user, p).map(Some)
            }
            Request::AccountDelete(d) => {
                hub.check_session(conn, user)?;
                self.delete_account(user, d).map(Some)
            }
            Request::UserList(e) => {
                let users: Vec<UserEntryView> = hub
                    .user_list()
                    .into_iter()
                    .map(|(user_id, username, state)| UserEntryView {
                        user_id,
                        username,
                        state,
                    })
                    .collect();
                let view = UserListView {
                    users: &users,
                    req_id: e.req_id.as_ref(),
                };
                self.reply_frame(
                    MessageType::UserListResponse,
                    &frame::encode_json(MessageType::UserListResponse.code(), &view),
                );
                Ok(None)
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
                // The user's tokens die with the session, durably, before the
                // LOGOUT is acknowledged (whichever protocol logs out).
                hub.check_session(conn, user)?;
                if !user.is_guest() {
                    self.shared.tokens.revoke_all(user)?;
                }
                if let Err(err) = hub.logout(conn, user) {
                    // A RESUME took the session over while the tokens were
                    // being revoked: a session opened by a revoked token must
                    // not outlive the LOGOUT.
                    hub.end_user(user, SessionEnd::LoggedOut, Some(conn));
                    return Err(err);
                }
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
        let result = match self.already_logged_in() {
            Some(err) => Err(err),
            None => {
                let kind = Self::session_kind(self.v2());
                self.shared
                    .auth
                    .verify(&c.username, &c.password_hash, self.peer_ip())
                    .and_then(|user| self.shared.hub.login(self.id, &user, kind).map(|()| user))
            }
        };
        match result {
            Ok(user) => {
                info!(
                    "login conn={} user_id={} username={}",
                    self.id, user.id, user.username
                );
                ServerMessage::LoginResponse(self.logged_in(&user, c.req_id))
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

    /// The session a login opens: protocol 2 sessions hold a token, so their
    /// calls are held when the connection drops.
    fn session_kind(v2: bool) -> SessionKind {
        SessionKind {
            v2,
            resumable: v2,
            guest_until: None,
        }
    }

    /// The ICE servers for `user`; a guest's TURN credentials end with the guest.
    fn ice_servers(&self, user: UserId) -> IceServers {
        self.shared
            .ice
            .servers_for(user, unix_now(), self.guest_expires_at)
    }

    /// Records the session and builds the success answer: for protocol 2 with
    /// a fresh token and the ICE servers.
    fn logged_in(&mut self, user: &UserRecord, req_id: Option<ReqId>) -> AuthResponse {
        self.session = Session::Authenticated {
            user: user.id,
            username: user.username.clone(),
        };
        let mut response = success(user.id, user.username.clone(), req_id);
        if self.v2() {
            let now = unix_now();
            if !user.id.is_guest() {
                let issued = self.shared.tokens.issue(user, now);
                response.session_token = Some(issued.token);
                response.expires_at = Some(issued.expires_at);
            }
            let list = self.ice_servers(user.id);
            response.ice_ttl_secs = Some(list.ttl_secs);
            response.ice_servers = Some(ice_entries(&list));
        }
        response
    }

    fn already_logged_in(&self) -> Option<AppError> {
        match &self.session {
            Session::Authenticated { username, .. } => Some(AppError::Conflict(format!(
                "already logged in as {username}; send LOGOUT_REQUEST first"
            ))),
            Session::Anonymous => None,
        }
    }

    /// HELLO: settles the protocol version for this connection.
    fn hello(&mut self, h: Hello) -> Result<ServerMessage, AppError> {
        if h.protocol_version == 0 {
            return Err(AppError::BadRequest(
                "protocol_version must be 1 or more".into(),
            ));
        }
        if self.user().is_some() {
            return Err(AppError::Conflict(
                "HELLO must come before logging in".into(),
            ));
        }
        self.protocol = h.protocol_version.min(PROTOCOL_VERSION);
        info!(
            "hello conn={} protocol={} client={}",
            self.id,
            self.protocol,
            h.client_name.as_deref().map_or("-".into(), loggable_name)
        );
        let limits = &self.shared.limits;
        let idle = limits.idle_timeout.as_secs().max(1);
        Ok(ServerMessage::Welcome(Welcome {
            server_name: "switchboard".into(),
            server_version: env!("CARGO_PKG_VERSION").into(),
            protocol_version: self.protocol,
            capabilities: if self.v2() {
                CAPABILITIES.iter().map(|c| (*c).to_string()).collect()
            } else {
                Vec::new()
            },
            max_frame_bytes: limits.max_frame,
            heartbeat_interval_secs: (idle / 2).max(1),
            idle_timeout_secs: idle,
            req_id: h.req_id,
        }))
    }

    /// RESUME_REQUEST: a login by session token, without bcrypt. A held call
    /// goes on. Answered with LOGIN_RESPONSE, or ERROR (401 for a forged,
    /// expired or revoked token).
    fn resume(&mut self, r: Resume) -> Result<ServerMessage, AppError> {
        if let Some(err) = self.already_logged_in() {
            return Err(err);
        }
        let refused = |err: AppError| {
            Metrics::count(&self.shared.metrics.resumes_refused);
            info!("resume refused conn={} reason={}", self.id, err);
            err
        };
        let user = self
            .shared
            .tokens
            .verify(&r.session_token, unix_now())
            .map_err(refused)?;
        let hub = &self.shared.hub;
        let resumed = hub.resume(self.id, &user, Self::session_kind(true))?;
        // A LOGOUT (or password change) that revoked the token while this
        // RESUME was on its way must win: check again now that the session is
        // in place, and undo it if the token died meanwhile.
        if let Err(err) = self.shared.tokens.verify(&r.session_token, unix_now()) {
            let _ = hub.logout(self.id, user.id);
            return Err(refused(err));
        }
        self.protocol = self.protocol.max(PROTOCOL_VERSION);
        Metrics::count(&self.shared.metrics.resumes);
        let call = match resumed {
            Resumed::Call(id) => Some(id.to_string()),
            Resumed::Fresh => None,
        };
        info!(
            "resume conn={} user_id={} username={} call={}",
            self.id,
            user.id,
            user.username,
            call.as_deref().unwrap_or("-")
        );
        let mut response = self.logged_in(&user, r.req_id);
        response.call_id = call;
        Ok(ServerMessage::LoginResponse(response))
    }

    /// GUEST_LOGIN_REQUEST: a temporary identity, never stored, gone after the
    /// guest TTL. Answered with LOGIN_RESPONSE, or ERROR.
    fn guest_login(&mut self, g: GuestLogin) -> Result<ServerMessage, AppError> {
        if let Some(err) = self.already_logged_in() {
            return Err(err);
        }
        let ttl = self.shared.sessions.guest_ttl.ok_or_else(|| {
            AppError::Forbidden("guest logins are disabled on this server".into())
        })?;
        let name = guest_name(&g.display_name)
            .map_err(|e| AppError::BadRequest(format!("display_name: {e}")))?;
        if !self.shared.hub.guest_name_free(&g.display_name) {
            return Err(AppError::Conflict(
                "that name belongs to a registered user; choose another display_name".into(),
            ));
        }
        self.shared.auth.admit_guest(self.peer_ip())?;
        let until = Instant::now() + ttl;
        let guest = self.shared.hub.guest_login(self.id, name, until, true)?;
        info!(
            "guest login conn={} user_id={} username={}",
            self.id, guest.id, guest.username
        );
        self.protocol = self.protocol.max(PROTOCOL_VERSION);
        let expires_at = unix_now() + ttl.as_secs();
        self.guest_expires_at = Some(expires_at);
        let mut response = self.logged_in(&guest, g.req_id);
        response.guest = Some(true);
        response.expires_at = Some(expires_at);
        Ok(ServerMessage::LoginResponse(response))
    }

    /// The stored record of a logged-in registered user; guests have none.
    fn registered(&self, user: UserId) -> Result<UserRecord, AppError> {
        if user.is_guest() {
            return Err(AppError::Forbidden(
                "guests have no account or session token".into(),
            ));
        }
        self.shared
            .hub
            .users()
            .find_by_id(user)
            .ok_or_else(|| AppError::Unauthorized("the account was deleted".into()))
    }

    fn change_password(
        &mut self,
        user: UserId,
        p: PasswordChange,
    ) -> Result<ServerMessage, AppError> {
        let record = self.registered(user)?;
        let record = self.shared.auth.change_password(
            &record.username,
            &p.old_password_hash,
            &p.new_password_hash,
            self.peer_ip(),
        )?;
        info!("password changed conn={} user_id={}", self.id, user);
        // Every earlier token is void now; a protocol 2 client gets a new one.
        let issued = self
            .v2()
            .then(|| self.shared.tokens.issue(&record, unix_now()));
        Ok(ServerMessage::PasswordChangeResponse(SessionOutcome {
            success: true,
            expires_at: issued.as_ref().map(|i| i.expires_at),
            session_token: issued.map(|i| i.token),
            req_id: p.req_id,
        }))
    }

    fn delete_account(
        &mut self,
        user: UserId,
        d: AccountDelete,
    ) -> Result<ServerMessage, AppError> {
        let record = self.registered(user)?;
        let record =
            self.shared
                .auth
                .delete_account(&record.username, &d.password_hash, self.peer_ip())?;
        info!(
            "account deleted conn={} user_id={} username={}",
            self.id, record.id, record.username
        );
        self.shared
            .hub
            .end_user(user, SessionEnd::AccountDeleted, Some(self.id));
        self.end_session();
        Ok(ServerMessage::AccountDeleteResponse(SessionOutcome {
            success: true,
            req_id: d.req_id,
            ..SessionOutcome::default()
        }))
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

fn ice_entries(list: &IceServers) -> Vec<IceServerEntry> {
    list.servers
        .iter()
        .map(|s| IceServerEntry {
            urls: s.urls.clone(),
            username: s.username.clone(),
            credential: s.credential.clone(),
        })
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn heartbeat(h: Heartbeat) -> ServerMessage {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    ServerMessage::Heartbeat(Heartbeat {
        timestamp: Some(h.timestamp.unwrap_or_else(|| now.into())),
        server_time: Some(now),
        req_id: h.req_id,
    })
}
