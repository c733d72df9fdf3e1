//! Login, registration, heartbeat and logout (RoomRTC v1.0).

use super::*;

impl Connection {
    /// LOGIN, REGISTER, HEARTBEAT (RoomRTC v1.0; also before login) and LOGOUT.
    pub(super) fn auth(&mut self, user: Option<UserId>, request: Request) -> Reply {
        let conn = self.id;
        match request {
            Request::Login(c) => Ok(Some(self.login(c))),
            Request::Register(c) => Ok(Some(self.register(c))),
            Request::Heartbeat(h) => Ok(Some(heartbeat(h))),
            Request::Logout(e) => {
                let user = user.ok_or(AppError::LoginRequired)?;
                self.shared.accounts.logout(conn, user)?;
                info!("logout conn={} user_id={}", conn, user);
                self.end_session();
                Ok(Some(ServerMessage::LogoutResponse(LogoutResponse {
                    success: true,
                    error: None,
                    req_id: e.req_id,
                })))
            }
            other => Err(misrouted(&other)),
        }
    }

    pub(super) fn login(&mut self, c: Credentials) -> ServerMessage {
        let result = match self.already_logged_in() {
            Some(err) => Err(err),
            None => {
                let kind = Self::session_kind(self.v2());
                self.shared.accounts.login(
                    self.id,
                    &c.username,
                    &c.password_hash,
                    self.peer_ip(),
                    kind,
                )
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
    pub(super) fn session_kind(v2: bool) -> SessionKind {
        SessionKind {
            v2,
            resumable: v2,
            guest_until: None,
        }
    }

    /// Records the session and builds the success answer: for protocol 2 with
    /// a fresh token and the ICE servers.
    pub(super) fn logged_in(&mut self, user: &UserRecord, req_id: Option<ReqId>) -> AuthResponse {
        self.login = LoginState::Authenticated {
            user: user.id,
            username: user.username.clone(),
        };
        let mut response = success(user.id, user.username.clone(), req_id);
        if self.v2() {
            if !user.id.is_guest() {
                let issued = self.shared.accounts.issue_token(user);
                response.session_token = Some(issued.token);
                response.expires_at = Some(issued.expires_at);
            }
            let list = self.ice_servers(user.id);
            response.ice_ttl_secs = Some(list.ttl_secs);
            response.ice_servers = Some(ice_entries(&list));
        }
        response
    }

    pub(super) fn already_logged_in(&self) -> Option<AppError> {
        match &self.login {
            LoginState::Authenticated { username, .. } => Some(AppError::Conflict(format!(
                "already logged in as {username}; send LOGOUT_REQUEST first"
            ))),
            LoginState::Anonymous => None,
        }
    }

    pub(super) fn register(&mut self, c: Credentials) -> ServerMessage {
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
pub(super) fn loggable_name(name: &str) -> String {
    match validate_username(name) {
        Ok(()) => name.to_string(),
        Err(_) => format!("<invalid, {} bytes>", name.len()),
    }
}

pub(super) fn success(id: UserId, username: String, req_id: Option<ReqId>) -> AuthResponse {
    AuthResponse {
        success: true,
        user_id: Some(id.to_string()),
        username: Some(username),
        req_id,
        ..AuthResponse::default()
    }
}

pub(super) fn failure(err: AppError, req_id: Option<ReqId>) -> AuthResponse {
    AuthResponse {
        success: false,
        error: Some(crate::tcp::message::wire_text(err.to_string())),
        code: Some(err.code()),
        retry_after_ms: err.retry_after_ms(),
        req_id,
        ..AuthResponse::default()
    }
}

pub(super) fn heartbeat(h: Heartbeat) -> ServerMessage {
    let now = crate::clock::unix_millis();
    ServerMessage::Heartbeat(Heartbeat {
        timestamp: Some(h.timestamp.unwrap_or_else(|| now.into())),
        server_time: Some(now),
        req_id: h.req_id,
    })
}
