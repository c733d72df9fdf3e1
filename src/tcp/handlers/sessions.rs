//! Protocol 2 sessions: HELLO/WELCOME, RESUME, guests, tokens, ICE servers,
//! password change and account deletion.

use super::*;

impl Connection {
    /// Protocol 2 sessions: HELLO, RESUME, GUEST_LOGIN (also before login), token refresh, ICE servers, password change and account deletion.
    pub(super) fn sessions(&mut self, user: Option<UserId>, request: Request) -> Reply {
        let hub = self.shared.hub.clone();
        let conn = self.id;
        match request {
            Request::Hello(h) => self.hello(h).map(Some),
            Request::Resume(r) => self.resume(r).map(Some),
            Request::GuestLogin(g) => self.guest_login(g).map(Some),
            Request::TokenRefresh(e) => {
                let user = user.ok_or(AppError::LoginRequired)?;
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
                let user = user.ok_or(AppError::LoginRequired)?;
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
                let user = user.ok_or(AppError::LoginRequired)?;
                hub.check_session(conn, user)?;
                self.change_password(user, p).map(Some)
            }
            Request::InboxAck(a) => {
                let user = user.ok_or(AppError::LoginRequired)?;
                if !self.v2() {
                    return Err(AppError::BadRequest(
                        "the inbox needs protocol 2; send HELLO first".into(),
                    ));
                }
                let removed = hub.inbox_ack(conn, user, a.through)?;
                Ok(Some(ServerMessage::InboxAckResponse(InboxAcked {
                    success: true,
                    removed,
                    req_id: a.req_id,
                })))
            }
            Request::AccountDelete(d) => {
                let user = user.ok_or(AppError::LoginRequired)?;
                hub.check_session(conn, user)?;
                self.delete_account(user, d).map(Some)
            }
            other => Err(misrouted(&other)),
        }
    }

    /// The ICE servers for `user`; a guest's TURN credentials end with the guest.
    pub(super) fn ice_servers(&self, user: UserId) -> IceServers {
        self.shared
            .ice
            .servers_for(user, unix_now(), self.guest_expires_at)
    }

    /// HELLO: settles the protocol version for this connection.
    pub(super) fn hello(&mut self, h: Hello) -> Result<ServerMessage, AppError> {
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
            h.client_name
                .as_deref()
                .map_or("-".into(), loggable_client_name)
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
    pub(super) fn resume(&mut self, r: Resume) -> Result<ServerMessage, AppError> {
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
        let call = resumed.call.map(|id| id.to_string());
        info!(
            "resume conn={} user_id={} username={} call={}",
            self.id,
            user.id,
            user.username,
            call.as_deref().unwrap_or("-")
        );
        let mut response = self.logged_in(&user, r.req_id);
        response.call_id = call;
        if !resumed.rooms.is_empty() {
            response.room_ids = Some(resumed.rooms.iter().map(ToString::to_string).collect());
        }
        Ok(ServerMessage::LoginResponse(response))
    }

    /// GUEST_LOGIN_REQUEST: a temporary identity, never stored, gone after the
    /// guest TTL. Answered with LOGIN_RESPONSE, or ERROR.
    pub(super) fn guest_login(&mut self, g: GuestLogin) -> Result<ServerMessage, AppError> {
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
    pub(super) fn registered(&self, user: UserId) -> Result<UserRecord, AppError> {
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

    pub(super) fn change_password(
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

    pub(super) fn delete_account(
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
}

pub(super) fn ice_entries(list: &IceServers) -> Vec<IceServerEntry> {
    list.servers
        .iter()
        .map(|s| IceServerEntry {
            urls: s.urls.clone(),
            username: s.username.clone(),
            credential: s.credential.clone(),
        })
        .collect()
}

/// HELLO's `client_name` for the log: a product token such as
/// `switchboard-cli/0.3.0` as sent; anything else only by its length, so a
/// client cannot write arbitrary text into the log.
fn loggable_client_name(name: &str) -> String {
    let plain = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b" -_./+()".contains(&b));
    if plain {
        name.to_string()
    } else {
        format!("<{} bytes>", name.len())
    }
}
