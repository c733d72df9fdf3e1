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
                if !self.v2() {
                    return Err(AppError::BadRequest(
                        "TOKEN_REFRESH_REQUEST needs protocol 2: send HELLO before logging in"
                            .into(),
                    ));
                }
                let issued = self.shared.accounts.refresh_token(conn, user)?;
                Ok(Some(ServerMessage::TokenRefreshResponse(AccountOutcome {
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
        let (user, resumed) =
            self.shared
                .accounts
                .resume(self.id, &r.session_token, Self::session_kind(true))?;
        self.protocol = self.protocol.max(PROTOCOL_VERSION);
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
        let admitted =
            self.shared
                .accounts
                .guest_login(self.id, &g.display_name, self.peer_ip())?;
        let guest = admitted.record;
        info!(
            "guest login conn={} user_id={} username={}",
            self.id, guest.id, guest.username
        );
        self.protocol = self.protocol.max(PROTOCOL_VERSION);
        let expires_at = admitted.expires_at;
        self.guest_expires_at = Some(expires_at);
        let mut response = self.logged_in(&guest, g.req_id);
        response.guest = Some(true);
        response.expires_at = Some(expires_at);
        Ok(ServerMessage::LoginResponse(response))
    }

    pub(super) fn change_password(
        &mut self,
        user: UserId,
        p: PasswordChange,
    ) -> Result<ServerMessage, AppError> {
        // A protocol 2 client gets a new token: every earlier one is void now.
        let issued = self.shared.accounts.change_password(
            self.id,
            user,
            &p.old_password_hash,
            &p.new_password_hash,
            self.peer_ip(),
            self.v2(),
        )?;
        info!("password changed conn={} user_id={}", self.id, user);
        Ok(ServerMessage::PasswordChangeResponse(AccountOutcome {
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
        let record =
            self.shared
                .accounts
                .delete_account(self.id, user, &d.password_hash, self.peer_ip())?;
        info!(
            "account deleted conn={} user_id={} username={}",
            self.id, record.id, record.username
        );
        self.end_session();
        Ok(ServerMessage::AccountDeleteResponse(AccountOutcome {
            success: true,
            req_id: d.req_id,
            ..AccountOutcome::default()
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
