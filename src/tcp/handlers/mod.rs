//! Dispatch: each request goes to its capability's handler (one file each:
//! [`auth`], [`presence`], [`calls`], [`sessions`]), which calls a use case
//! and chooses the answer. The registry in [`super::message`] says which
//! capability a request belongs to and whether it may come before login, so
//! adding a request type touches its capability's files, not this one.
//!
//! A request with a response type gets exactly one answer (its response or an
//! ERROR). Relayed messages (SDP, ICE, HANGUP) and CALL_REQUEST/CALL_RESPONSE
//! are answered only when they fail, as v1 clients expect.
//!
//! Protocol 2 (after HELLO): LOGIN_RESPONSE also carries a session token and
//! the ICE servers; the session is resumable and its calls are held when the
//! connection drops. RESUME_REQUEST and GUEST_LOGIN_REQUEST imply protocol 2.

use crate::clock::unix_secs as unix_now;

use log::info;

use super::connection::{Connection, LoginState};
use super::frame;
use super::message::{
    AccountDelete, AccountOutcome, AuthResponse, Capability, Credentials, GuestLogin, Heartbeat,
    Hello, IceServerEntry, IceServerList, InboxAcked, LogoutResponse, MessageType, PasswordChange,
    ReqId, Request, Resume, ServerMessage, UserEntryView, UserListView, Welcome,
};
use crate::application::hub::SessionKind;
use crate::application::ports::Scope;
use crate::application::{AppError, IceServers, Signal, UserRecord};
use crate::domain::{CallId, RoomId, UserId, validate_username};
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
    "rooms",
    "inbox",
];

/// Room left in a relayed frame for the ids the server writes into it.
const RELAY_HEADROOM: usize = 128;

/// What a handler decides: an answer to send, nothing (relays), or an ERROR.
type Reply = Result<Option<ServerMessage>, AppError>;

fn call_id(text: &str) -> Result<CallId, AppError> {
    CallId::parse(text).ok_or_else(|| AppError::NotFound("no such call".into()))
}

fn room_id(text: &str) -> Result<RoomId, AppError> {
    RoomId::parse(text).ok_or_else(|| AppError::NotFound("no such room".into()))
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

mod auth;
mod calls;
mod presence;
mod rooms;

pub(crate) use rooms::room_view;
mod sessions;

use sessions::*;

impl Connection {
    pub(super) fn dispatch(&mut self, request: Request, payload_len: usize) {
        let req_id = request.req_id().cloned();
        let user = self.user();
        if user.is_none() && !request.allowed_anonymously() {
            return self.reply_error(AppError::LoginRequired, req_id);
        }
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
        let answer = match request.capability() {
            Capability::Auth => self.auth(user, request),
            Capability::Presence => self.presence(user, request),
            Capability::Calls => self.calls(user, request),
            Capability::Sessions => self.sessions(user, request),
            Capability::Rooms => self.rooms(user, request),
        };
        self.answer(answer, req_id);
    }

    fn answer(&mut self, answer: Reply, req_id: Option<ReqId>) {
        match answer {
            Ok(Some(message)) => {
                self.reply(&message);
                let logged_in = matches!(&message, ServerMessage::LoginResponse(r) if r.success);
                if logged_in {
                    self.deliver_inbox();
                }
            }
            Ok(None) => {}
            Err(err) => self.reply_error(err, req_id),
        }
    }

    fn v2(&self) -> bool {
        self.protocol >= 2
    }

    /// After a protocol 2 login: what waits in the user's offline inbox,
    /// right behind LOGIN_RESPONSE on this connection's own buffer.
    fn deliver_inbox(&mut self) {
        let Some(user) = self.user().filter(|_| self.v2()) else {
            return;
        };
        for notice in self.shared.hub.inbox_notices(user) {
            self.reply(&super::outbox::notice_message(notice));
        }
    }
}

/// A request handed to a capability it does not belong to: a registry bug,
/// answered as a server error rather than a panic.
fn misrouted(request: &Request) -> AppError {
    AppError::Internal(format!(
        "{} reached the wrong handler",
        request.message_type().name()
    ))
}
