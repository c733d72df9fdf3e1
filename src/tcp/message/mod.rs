//! The message types of RoomRTC v1.0, Switchboard's protocol 2 additions, and
//! their JSON payloads, one enum per direction.
//!
//! This is the registry: [`MessageType`] lists every code once; [`Request`]
//! (client to server) and [`ServerMessage`] (server to client) map codes to
//! payload structs, generated from one table each (`requests!` also says each
//! request's capability and whether it may come before login). Payloads live
//! in a file per capability. Adding a request/response pair touches: this
//! registry, the capability's payload file, its handler in `tcp/handlers/`
//! and its use case in `application/hub/` (four files).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::frame;

mod auth;
mod calls;
mod presence;
mod rooms;
mod sessions;

pub use auth::*;
pub use calls::*;
pub use presence::*;
pub use rooms::*;
pub use sessions::*;

macro_rules! message_types {
    ($($variant:ident = $code:literal, $name:literal;)*) => {
        /// Every message type code. A retired code is never reused.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum MessageType {
            $($variant = $code,)*
        }

        impl MessageType {
            pub const ALL: &'static [MessageType] = &[$(MessageType::$variant,)*];

            pub fn from_code(code: u8) -> Option<MessageType> {
                match code {
                    $($code => Some(MessageType::$variant),)*
                    _ => None,
                }
            }

            /// The protocol name, as PROTOCOL.md writes it (`LOGIN_REQUEST`).
            pub fn name(self) -> &'static str {
                match self {
                    $(MessageType::$variant => $name,)*
                }
            }
        }
    };
}

message_types! {
    LoginRequest = 0x01, "LOGIN_REQUEST";
    LoginResponse = 0x02, "LOGIN_RESPONSE";
    RegisterRequest = 0x03, "REGISTER_REQUEST";
    RegisterResponse = 0x04, "REGISTER_RESPONSE";
    UserListRequest = 0x05, "USER_LIST_REQUEST";
    UserListResponse = 0x06, "USER_LIST_RESPONSE";
    UserStateUpdate = 0x07, "USER_STATE_UPDATE";
    CallRequest = 0x08, "CALL_REQUEST";
    CallNotification = 0x09, "CALL_NOTIFICATION";
    CallResponse = 0x0A, "CALL_RESPONSE";
    CallAccepted = 0x0B, "CALL_ACCEPTED";
    CallDeclined = 0x0C, "CALL_DECLINED";
    SdpOffer = 0x0D, "SDP_OFFER";
    SdpAnswer = 0x0E, "SDP_ANSWER";
    IceCandidate = 0x0F, "ICE_CANDIDATE";
    Hangup = 0x10, "HANGUP";
    Heartbeat = 0x11, "HEARTBEAT";
    Error = 0x12, "ERROR";
    LogoutRequest = 0x13, "LOGOUT_REQUEST";
    LogoutResponse = 0x14, "LOGOUT_RESPONSE";
    Hello = 0x15, "HELLO";
    Welcome = 0x16, "WELCOME";
    ResumeRequest = 0x17, "RESUME_REQUEST";
    TokenRefreshRequest = 0x18, "TOKEN_REFRESH_REQUEST";
    TokenRefreshResponse = 0x19, "TOKEN_REFRESH_RESPONSE";
    GuestLoginRequest = 0x1A, "GUEST_LOGIN_REQUEST";
    IceServersRequest = 0x1B, "ICE_SERVERS_REQUEST";
    IceServersResponse = 0x1C, "ICE_SERVERS_RESPONSE";
    PeerStatus = 0x1D, "PEER_STATUS";
    PasswordChangeRequest = 0x1E, "PASSWORD_CHANGE_REQUEST";
    PasswordChangeResponse = 0x1F, "PASSWORD_CHANGE_RESPONSE";
    AccountDeleteRequest = 0x20, "ACCOUNT_DELETE_REQUEST";
    AccountDeleteResponse = 0x21, "ACCOUNT_DELETE_RESPONSE";
    RoomCreateRequest = 0x22, "ROOM_CREATE_REQUEST";
    RoomCreateResponse = 0x23, "ROOM_CREATE_RESPONSE";
    RoomListRequest = 0x24, "ROOM_LIST_REQUEST";
    RoomListResponse = 0x25, "ROOM_LIST_RESPONSE";
    RoomJoinRequest = 0x26, "ROOM_JOIN_REQUEST";
    RoomJoinResponse = 0x27, "ROOM_JOIN_RESPONSE";
    RoomPeerJoined = 0x28, "ROOM_PEER_JOINED";
    RoomLeaveRequest = 0x29, "ROOM_LEAVE_REQUEST";
    RoomLeaveResponse = 0x2A, "ROOM_LEAVE_RESPONSE";
    RoomPeerLeft = 0x2B, "ROOM_PEER_LEFT";
    RoomInviteRequest = 0x2C, "ROOM_INVITE_REQUEST";
    RoomInviteResponse = 0x2D, "ROOM_INVITE_RESPONSE";
    RoomInvitation = 0x2E, "ROOM_INVITATION";
    RoomKnockRequest = 0x2F, "ROOM_KNOCK_REQUEST";
    RoomKnockResponse = 0x30, "ROOM_KNOCK_RESPONSE";
    RoomKnock = 0x31, "ROOM_KNOCK";
    RoomKnockDeny = 0x32, "ROOM_KNOCK_DENY";
    RoomKnockDenyResponse = 0x33, "ROOM_KNOCK_DENY_RESPONSE";
    RoomKickRequest = 0x34, "ROOM_KICK_REQUEST";
    RoomKickResponse = 0x35, "ROOM_KICK_RESPONSE";
    RoomUpdateRequest = 0x36, "ROOM_UPDATE_REQUEST";
    RoomUpdateResponse = 0x37, "ROOM_UPDATE_RESPONSE";
    RoomUpdated = 0x38, "ROOM_UPDATED";
    RoomDeleteRequest = 0x39, "ROOM_DELETE_REQUEST";
    RoomDeleteResponse = 0x3A, "ROOM_DELETE_RESPONSE";
    RoomDeleted = 0x3B, "ROOM_DELETED";
    RoomMessageRequest = 0x3C, "ROOM_MESSAGE_REQUEST";
    RoomMessageResponse = 0x3D, "ROOM_MESSAGE_RESPONSE";
    RoomMessage = 0x3E, "ROOM_MESSAGE";
    RoomHistoryRequest = 0x3F, "ROOM_HISTORY_REQUEST";
    RoomHistoryResponse = 0x40, "ROOM_HISTORY_RESPONSE";
    RoomEventsRequest = 0x41, "ROOM_EVENTS_REQUEST";
    RoomEventsResponse = 0x42, "ROOM_EVENTS_RESPONSE";
    InboxAckRequest = 0x78, "INBOX_ACK_REQUEST";
    InboxAckResponse = 0x79, "INBOX_ACK_RESPONSE";
}

impl MessageType {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Looks a type up by protocol name, ignoring case.
    pub fn from_name(name: &str) -> Option<MessageType> {
        MessageType::ALL
            .iter()
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }
}

/// A client's correlation id, echoed in the answer: a JSON string or integer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ReqId {
    Int(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for ReqId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ReqId, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = ReqId;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ReqId, E> {
                Ok(ReqId::Text(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ReqId, E> {
                Ok(ReqId::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ReqId, E> {
                i64::try_from(v)
                    .map(ReqId::Int)
                    .map_err(|_| E::custom("req_id integer is too large"))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// The ids a client writes into SDP and ICE, which the server replaces anyway:
/// a string, an integer or null are all taken (an integer as its digits).
fn lenient_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Null => Ok(String::new()),
        _ => Err(serde::de::Error::custom("expected a user id (a string)")),
    }
}

/// Text for a client's `message`/`error` field. The v1 desktop client reads a
/// string up to the next `"`, so none may appear inside (they become `'`).
pub fn wire_text(text: impl Into<String>) -> String {
    let text = text.into();
    if text.contains('"') {
        text.replace('"', "'")
    } else {
        text
    }
}

/// What is wrong with a frame's payload, typed so callers can tell the cases
/// apart; `Display` gives the text a client sees in ERROR 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadFault {
    /// A type code the registry does not know.
    UnknownType(u8),
    /// The payload is not UTF-8.
    NotUtf8(MessageType),
    /// The payload is JSON but not an object (an array, a number).
    NotAnObject(MessageType),
    /// A client sent a type only the server sends.
    ServerOnly(MessageType),
    /// A server frame of a type only clients send.
    ClientOnly(MessageType),
    /// The object does not fit the type: `field` names the path at fault
    /// when there is one (`candidate.sdp_mid`), `reason` is serde's.
    Invalid {
        kind: MessageType,
        field: Option<String>,
        reason: String,
    },
}

impl std::fmt::Display for PayloadFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PayloadFault::UnknownType(code) => write!(f, "unknown message type 0x{code:02X}"),
            PayloadFault::NotUtf8(kind) => {
                write!(f, "{} payload is not valid UTF-8", kind.name())
            }
            PayloadFault::NotAnObject(kind) => {
                write!(f, "invalid {} payload: expected a JSON object", kind.name())
            }
            PayloadFault::ServerOnly(kind) => {
                write!(f, "{} is sent by the server, not by clients", kind.name())
            }
            PayloadFault::ClientOnly(kind) => {
                write!(f, "{} is not sent by the server", kind.name())
            }
            PayloadFault::Invalid {
                kind,
                field: Some(field),
                reason,
            } => write!(f, "invalid {} payload: {field}: {reason}", kind.name()),
            PayloadFault::Invalid {
                kind,
                field: None,
                reason,
            } => write!(f, "invalid {} payload: {reason}", kind.name()),
        }
    }
}

impl std::error::Error for PayloadFault {}

/// Why a client frame is not a valid request. Always answered with ERROR 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub fault: PayloadFault,
    /// The `req_id` if it could still be read from the payload.
    pub req_id: Option<ReqId>,
}

fn parse_payload<T: DeserializeOwned>(kind: MessageType, text: &str) -> Result<T, PayloadFault> {
    // serde would also read a struct from a JSON array; the protocol says object.
    if !text.trim_start().starts_with('{') {
        return Err(PayloadFault::NotAnObject(kind));
    }
    // The common case parses once; only a failure is parsed again to name
    // the field at fault (the path tracking costs on every field).
    if let Ok(value) = serde_json::from_str(text) {
        return Ok(value);
    }
    let invalid = |field: Option<String>, reason: &dyn std::fmt::Display| PayloadFault::Invalid {
        kind,
        field,
        reason: reason.to_string(),
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let field = (!matches!(path.as_str(), "" | "." | "?")).then_some(path);
        invalid(field, err.inner())
    })?;
    de.end().map_err(|err| invalid(None, &err))?;
    Ok(value)
}

macro_rules! direction {
    ($(#[$meta:meta])* $name:ident { $($variant:ident($ty:ty) = $code:ident,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq)]
        pub enum $name {
            $($variant($ty),)*
        }

        impl $name {
            pub fn message_type(&self) -> MessageType {
                match self {
                    $($name::$variant(_) => MessageType::$code,)*
                }
            }

            /// Parses a payload of type `kind`; `Ok(None)` if this direction has no such type.
            ///
            /// # Errors
            /// What is wrong with the payload.
            pub fn parse(kind: MessageType, payload: &str) -> Result<Option<$name>, PayloadFault> {
                Ok(Some(match kind {
                    $(MessageType::$code => $name::$variant(parse_payload(kind, payload)?),)*
                    #[allow(unreachable_patterns)]
                    _ => return Ok(None),
                }))
            }

            /// The complete frame, header and compact JSON payload.
            pub fn to_frame(&self) -> Vec<u8> {
                match self {
                    $($name::$variant(body) => frame::encode_json(MessageType::$code.code(), body),)*
                }
            }
        }
    };
}

/// Which part of the protocol a request belongs to: its handler and use
/// cases live in files of that name (`tcp/handlers/`, `application/hub/`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    /// Login, registration, heartbeat, logout (RoomRTC v1.0).
    Auth,
    /// The user list.
    Presence,
    /// Calls and the SDP/ICE relay.
    Calls,
    /// Protocol 2 sessions, guests, ICE servers, accounts, the inbox.
    Sessions,
    /// Rooms (protocol 2).
    Rooms,
}

/// The requests, generated from one table: each line names the variant, its
/// payload, its type code, its capability and whether it may come before
/// login. `req_id()` reads every payload's `req_id` field, so a request
/// payload without one does not compile.
macro_rules! requests {
    ($($variant:ident($ty:ty) = $code:ident, $cap:ident, $before_login:literal;)*) => {
        direction! {
            /// What a client sends.
            Request {
                $($variant($ty) = $code,)*
            }
        }

        impl Request {
            /// May be sent before LOGIN.
            pub fn allowed_anonymously(&self) -> bool {
                match self {
                    $(Request::$variant(_) => $before_login,)*
                }
            }

            /// The capability whose handler answers it.
            pub fn capability(&self) -> Capability {
                match self {
                    $(Request::$variant(_) => Capability::$cap,)*
                }
            }

            /// The client's correlation id, echoed in the answer.
            pub fn req_id(&self) -> Option<&ReqId> {
                match self {
                    $(Request::$variant(m) => m.req_id.as_ref(),)*
                }
            }
        }
    };
}

requests! {
    Login(Credentials) = LoginRequest, Auth, true;
    Register(Credentials) = RegisterRequest, Auth, true;
    Heartbeat(Heartbeat) = Heartbeat, Auth, true;
    Logout(Empty) = LogoutRequest, Auth, false;
    UserList(Empty) = UserListRequest, Presence, false;
    Call(CallRequest) = CallRequest, Calls, false;
    CallResponse(CallResponse) = CallResponse, Calls, false;
    SdpOffer(Sdp) = SdpOffer, Calls, false;
    SdpAnswer(Sdp) = SdpAnswer, Calls, false;
    IceCandidate(IceCandidate) = IceCandidate, Calls, false;
    Hangup(Hangup) = Hangup, Calls, false;
    Hello(Hello) = Hello, Sessions, true;
    Resume(Resume) = ResumeRequest, Sessions, true;
    GuestLogin(GuestLogin) = GuestLoginRequest, Sessions, true;
    TokenRefresh(Empty) = TokenRefreshRequest, Sessions, false;
    IceServers(Empty) = IceServersRequest, Sessions, false;
    PasswordChange(PasswordChange) = PasswordChangeRequest, Sessions, false;
    AccountDelete(AccountDelete) = AccountDeleteRequest, Sessions, false;
    InboxAck(InboxAck) = InboxAckRequest, Sessions, false;
    RoomCreate(RoomSpec) = RoomCreateRequest, Rooms, false;
    RoomList(Empty) = RoomListRequest, Rooms, false;
    RoomJoin(RoomJoin) = RoomJoinRequest, Rooms, false;
    RoomLeave(RoomRef) = RoomLeaveRequest, Rooms, false;
    RoomInvite(RoomInvite) = RoomInviteRequest, Rooms, false;
    RoomKnock(RoomKnockRequest) = RoomKnockRequest, Rooms, false;
    RoomKnockDeny(RoomMember) = RoomKnockDeny, Rooms, false;
    RoomKick(RoomKick) = RoomKickRequest, Rooms, false;
    RoomUpdate(RoomSpec) = RoomUpdateRequest, Rooms, false;
    RoomDelete(RoomRef) = RoomDeleteRequest, Rooms, false;
    RoomMessage(RoomPost) = RoomMessageRequest, Rooms, false;
    RoomHistory(RoomHistoryRequest) = RoomHistoryRequest, Rooms, false;
    RoomEvents(RoomEventsRequest) = RoomEventsRequest, Rooms, false;
}

direction! {
    /// What the server sends.
    ServerMessage {
        LoginResponse(AuthResponse) = LoginResponse,
        RegisterResponse(AuthResponse) = RegisterResponse,
        UserListResponse(UserList) = UserListResponse,
        UserStateUpdate(UserStateUpdate) = UserStateUpdate,
        CallNotification(CallNotification) = CallNotification,
        CallAccepted(CallAnswered) = CallAccepted,
        CallDeclined(CallAnswered) = CallDeclined,
        SdpOffer(Sdp) = SdpOffer,
        SdpAnswer(Sdp) = SdpAnswer,
        IceCandidate(IceCandidate) = IceCandidate,
        Hangup(Hangup) = Hangup,
        Heartbeat(Heartbeat) = Heartbeat,
        Error(ErrorMessage) = Error,
        LogoutResponse(LogoutResponse) = LogoutResponse,
        Welcome(Welcome) = Welcome,
        TokenRefreshResponse(AccountOutcome) = TokenRefreshResponse,
        IceServersResponse(IceServerList) = IceServersResponse,
        PeerStatus(PeerStatus) = PeerStatus,
        PasswordChangeResponse(AccountOutcome) = PasswordChangeResponse,
        AccountDeleteResponse(AccountOutcome) = AccountDeleteResponse,
        InboxAckResponse(InboxAcked) = InboxAckResponse,
        RoomCreateResponse(RoomCreated) = RoomCreateResponse,
        RoomListResponse(RoomList) = RoomListResponse,
        RoomJoinResponse(RoomJoined) = RoomJoinResponse,
        RoomPeerJoined(RoomPeerJoined) = RoomPeerJoined,
        RoomLeaveResponse(RoomDone) = RoomLeaveResponse,
        RoomPeerLeft(RoomPeerLeft) = RoomPeerLeft,
        RoomInviteResponse(RoomInvited) = RoomInviteResponse,
        RoomInvitation(RoomInvitation) = RoomInvitation,
        RoomKnockResponse(RoomDone) = RoomKnockResponse,
        RoomKnock(RoomKnock) = RoomKnock,
        RoomKnockDeny(RoomMember) = RoomKnockDeny,
        RoomKnockDenyResponse(RoomMember) = RoomKnockDenyResponse,
        RoomKickResponse(RoomMember) = RoomKickResponse,
        RoomUpdateResponse(RoomUpdated) = RoomUpdateResponse,
        RoomUpdated(RoomUpdated) = RoomUpdated,
        RoomDeleteResponse(RoomDone) = RoomDeleteResponse,
        RoomDeleted(RoomDeleted) = RoomDeleted,
        RoomMessageResponse(RoomPosted) = RoomMessageResponse,
        RoomMessage(RoomChat) = RoomMessage,
        RoomHistoryResponse(RoomHistory) = RoomHistoryResponse,
        RoomEventsResponse(RoomEvents) = RoomEventsResponse,
    }
}

impl Request {
    /// Decodes a client frame.
    ///
    /// # Errors
    /// Unknown type, a server-only type, invalid UTF-8 or a payload that does not fit.
    pub fn decode(kind: u8, payload: &[u8]) -> Result<Request, DecodeError> {
        let fail = |fault, req_id| DecodeError { fault, req_id };
        let Some(kind) = MessageType::from_code(kind) else {
            return Err(fail(PayloadFault::UnknownType(kind), None));
        };
        let Ok(text) = std::str::from_utf8(payload) else {
            return Err(fail(PayloadFault::NotUtf8(kind), None));
        };
        match Request::parse(kind, text) {
            Ok(Some(request)) => Ok(request),
            Ok(None) => Err(fail(PayloadFault::ServerOnly(kind), req_id_of(text))),
            Err(fault) => Err(fail(fault, req_id_of(text))),
        }
    }
}

impl ServerMessage {
    /// Decodes a server frame (clients and tests).
    ///
    /// # Errors
    /// Unknown type, a client-only type, or a payload that does not fit.
    pub fn decode(kind: u8, payload: &[u8]) -> Result<ServerMessage, PayloadFault> {
        let kind = MessageType::from_code(kind).ok_or(PayloadFault::UnknownType(kind))?;
        let text = std::str::from_utf8(payload).map_err(|_| PayloadFault::NotUtf8(kind))?;
        ServerMessage::parse(kind, text)?.ok_or(PayloadFault::ClientOnly(kind))
    }

    pub fn error(code: u16, message: impl Into<String>, req_id: Option<ReqId>) -> ServerMessage {
        ServerMessage::Error(ErrorMessage {
            code,
            message: wire_text(message),
            retry_after_ms: None,
            req_id,
        })
    }
}

/// The `req_id` of a payload that failed to decode, if it is readable at all.
fn req_id_of(text: &str) -> Option<ReqId> {
    #[derive(Deserialize)]
    struct Only {
        req_id: Option<ReqId>,
    }
    serde_json::from_str::<Only>(text)
        .ok()
        .and_then(|o| o.req_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::frame::{Decoded, decode};

    fn body(frame: &[u8]) -> (u8, &[u8]) {
        match decode(frame, 1 << 20).unwrap().unwrap() {
            (Decoded::Frame { kind, payload }, used) if used == frame.len() => (kind, payload),
            other => panic!("not one frame: {other:?}"),
        }
    }

    fn sdp() -> Sdp {
        Sdp {
            call_id: Some("9".into()),
            room_id: None,
            from_user_id: "1".into(),
            to_user_id: "2".into(),
            sdp: "v=0\r\no=- \"q\" \\ é\r\n".into(),
            req_id: None,
        }
    }

    fn ice() -> IceCandidate {
        IceCandidate {
            call_id: Some("9".into()),
            room_id: None,
            from_user_id: "1".into(),
            to_user_id: "2".into(),
            candidate: "candidate:1 1 udp 2122260223 10.0.0.1 5000 typ host".into(),
            sdp_mid: Some("0".into()),
            sdp_mline_index: 0,
            req_id: Some(ReqId::Int(3)),
        }
    }

    /// Every client message survives encode then decode unchanged.
    #[test]
    fn every_request_round_trips() {
        let creds = Credentials {
            username: "alice".into(),
            password_hash: "x".into(),
            req_id: Some(ReqId::Text("r1".into())),
        };
        let all = vec![
            Request::Login(creds.clone()),
            Request::Register(creds),
            Request::UserList(Empty::default()),
            Request::Call(CallRequest {
                to_user_id: "2".into(),
                req_id: None,
            }),
            Request::CallResponse(CallResponse {
                call_id: "9".into(),
                accepted: true,
                req_id: None,
            }),
            Request::SdpOffer(sdp()),
            Request::SdpAnswer(sdp()),
            Request::IceCandidate(ice()),
            Request::Hangup(Hangup {
                call_id: Some("9".into()),
                req_id: None,
            }),
            Request::Heartbeat(Heartbeat {
                timestamp: Some(1700000000123u64.into()),
                server_time: None,
                req_id: None,
            }),
            Request::Logout(Empty {
                req_id: Some(ReqId::Int(-4)),
            }),
            Request::Hello(Hello {
                protocol_version: 2,
                client_name: Some("desk".into()),
                capabilities: vec!["resume".into()],
                req_id: None,
            }),
            Request::Resume(Resume {
                session_token: "sb1.x.y".into(),
                req_id: None,
            }),
            Request::TokenRefresh(Empty::default()),
            Request::GuestLogin(GuestLogin {
                display_name: "visitor".into(),
                req_id: None,
            }),
            Request::IceServers(Empty::default()),
            Request::PasswordChange(PasswordChange {
                old_password_hash: "a".into(),
                new_password_hash: "b".into(),
                req_id: None,
            }),
            Request::AccountDelete(AccountDelete {
                password_hash: "a".into(),
                req_id: None,
            }),
        ];
        for request in all {
            let frame = request.to_frame();
            let (kind, payload) = body(&frame);
            assert_eq!(kind, request.message_type().code());
            assert_eq!(Request::decode(kind, payload), Ok(request));
        }
    }

    /// Every server message survives encode then decode unchanged.
    #[test]
    fn every_server_message_round_trips() {
        let answered = CallAnswered {
            call_id: "9".into(),
            peer_user_id: "2".into(),
            peer_username: "bob".into(),
            reason: Some("timeout".into()),
        };
        let all = vec![
            ServerMessage::LoginResponse(AuthResponse {
                success: true,
                user_id: Some("1".into()),
                username: Some("alice".into()),
                ..Default::default()
            }),
            ServerMessage::RegisterResponse(AuthResponse {
                success: false,
                error: Some("username is taken".into()),
                code: Some(409),
                ..Default::default()
            }),
            ServerMessage::UserListResponse(UserList {
                users: vec![UserEntry {
                    user_id: "1".into(),
                    username: "alice".into(),
                    state: "Available".into(),
                }],
                req_id: None,
            }),
            ServerMessage::UserStateUpdate(UserStateUpdate {
                user_id: "1".into(),
                username: "alice".into(),
                state: "Busy".into(),
            }),
            ServerMessage::CallNotification(CallNotification {
                call_id: "9".into(),
                from_user_id: "1".into(),
                from_username: "alice".into(),
            }),
            ServerMessage::CallAccepted(CallAnswered {
                reason: None,
                ..answered.clone()
            }),
            ServerMessage::CallDeclined(answered),
            ServerMessage::SdpOffer(sdp()),
            ServerMessage::SdpAnswer(sdp()),
            ServerMessage::IceCandidate(ice()),
            ServerMessage::Hangup(Hangup {
                call_id: Some("9".into()),
                req_id: None,
            }),
            ServerMessage::Heartbeat(Heartbeat {
                timestamp: Some(5.into()),
                server_time: Some(6),
                req_id: None,
            }),
            ServerMessage::error(409, "user is busy", Some(ReqId::Int(7))),
            ServerMessage::LogoutResponse(LogoutResponse {
                success: true,
                error: None,
                req_id: None,
            }),
            ServerMessage::Welcome(Welcome {
                server_name: "switchboard".into(),
                server_version: "0.1.0".into(),
                protocol_version: 2,
                capabilities: vec!["resume".into()],
                max_frame_bytes: 1024,
                heartbeat_interval_secs: 30,
                idle_timeout_secs: 60,
                req_id: None,
            }),
            ServerMessage::TokenRefreshResponse(AccountOutcome {
                success: true,
                session_token: Some("sb1.x.y".into()),
                expires_at: Some(9),
                req_id: None,
            }),
            ServerMessage::IceServersResponse(IceServerList {
                ice_servers: vec![IceServerEntry {
                    urls: vec!["turn:h:3478".into()],
                    username: Some("9:1".into()),
                    credential: Some("c".into()),
                }],
                ttl_secs: 60,
                expires_at: 9,
                req_id: None,
            }),
            ServerMessage::PeerStatus(PeerStatus {
                call_id: Some("9".into()),
                room_id: None,
                peer_user_id: "2".into(),
                peer_username: "bob".into(),
                status: "reconnecting".into(),
                grace_ms: Some(15000),
            }),
            ServerMessage::PasswordChangeResponse(AccountOutcome::default()),
            ServerMessage::AccountDeleteResponse(AccountOutcome::default()),
        ];
        for message in all {
            let frame = message.to_frame();
            let (kind, payload) = body(&frame);
            assert_eq!(kind, message.message_type().code());
            assert_eq!(ServerMessage::decode(kind, payload), Ok(message));
        }
    }

    /// The JSON is compact, ids are strings, and LOGOUT_RESPONSE carries `"error":null`,
    /// exactly what the v1 client's text search expects.
    #[test]
    fn payloads_are_compact_json_as_v1_clients_search_it() {
        let frame = ServerMessage::UserListResponse(UserList {
            users: vec![
                UserEntry {
                    user_id: "1".into(),
                    username: "alice".into(),
                    state: "Available".into(),
                },
                UserEntry {
                    user_id: "2".into(),
                    username: "bob".into(),
                    state: "Disconnected".into(),
                },
            ],
            req_id: None,
        })
        .to_frame();
        assert_eq!(
            std::str::from_utf8(&frame[5..]).unwrap(),
            r#"{"users":[{"user_id":"1","username":"alice","state":"Available"},{"user_id":"2","username":"bob","state":"Disconnected"}]}"#
        );
        let frame = ServerMessage::LogoutResponse(LogoutResponse {
            success: true,
            error: None,
            req_id: None,
        })
        .to_frame();
        assert_eq!(&frame[5..], br#"{"success":true,"error":null}"#);
    }

    /// Decode errors name the problem and keep the req_id when it is readable.
    #[test]
    fn decode_errors_name_the_problem() {
        let err = |kind: u8, payload: &str| Request::decode(kind, payload.as_bytes()).unwrap_err();
        assert_eq!(err(0x90, "{}").fault, PayloadFault::UnknownType(0x90));
        assert_eq!(
            err(0x90, "{}").fault.to_string(),
            "unknown message type 0x90"
        );
        assert!(
            err(0x08, "{")
                .fault
                .to_string()
                .contains("invalid CALL_REQUEST payload")
        );
        let e = err(0x08, r#"{"to_user_id":5,"req_id":"a"}"#);
        assert!(
            e.fault
                .to_string()
                .contains("to_user_id: invalid type: integer"),
            "{}",
            e.fault.to_string()
        );
        assert_eq!(e.req_id, Some(ReqId::Text("a".into())));
        assert!(
            err(0x01, r#"{"username":"a"}"#)
                .fault
                .to_string()
                .contains("missing field `password_hash`")
        );
        assert_eq!(
            err(0x02, "{}").fault,
            PayloadFault::ServerOnly(MessageType::LoginResponse)
        );
        assert!(
            err(0x02, "{}")
                .fault
                .to_string()
                .contains("sent by the server")
        );
        assert!(matches!(
            err(0x08, r#"{"to_user_id":5}"#).fault,
            PayloadFault::Invalid { field: Some(ref f), .. } if f == "to_user_id"
        ));
        assert!(
            err(0x05, "[]")
                .fault
                .to_string()
                .contains("invalid USER_LIST_REQUEST payload")
        );
        assert!(
            err(0x05, "{} x")
                .fault
                .to_string()
                .contains("trailing characters")
        );
        assert!(
            Request::decode(0x05, &[0x7b, 0xff, 0x7d])
                .unwrap_err()
                .fault
                .to_string()
                .contains("not valid UTF-8")
        );
    }

    /// A bad req_id is named plainly; ids the server overwrites take any scalar;
    /// a null sdp_mid is relayed as null.
    #[test]
    fn lenient_fields_and_a_plain_req_id_error() {
        let e = Request::decode(0x05, br#"{"req_id":[1]}"#).unwrap_err();
        assert!(
            e.fault
                .to_string()
                .contains("req_id: invalid type: sequence, expected a string or an integer"),
            "{}",
            e.fault.to_string()
        );
        let ice = br#"{"call_id":"9","from_user_id":7,"to_user_id":null,"candidate":"c","sdp_mid":null,"sdp_mline_index":0}"#;
        let Ok(Request::IceCandidate(ice)) = Request::decode(0x0F, ice) else {
            panic!("lenient ICE")
        };
        assert_eq!(
            (
                ice.from_user_id.as_str(),
                ice.to_user_id.as_str(),
                ice.sdp_mid
            ),
            ("7", "", None)
        );
        let frame = ServerMessage::IceCandidate(IceCandidate {
            sdp_mid: None,
            ..super::tests::ice()
        })
        .to_frame();
        assert!(String::from_utf8_lossy(&frame).contains(r#""sdp_mid":null"#));
    }

    /// The borrowed USER_LIST_RESPONSE the server sends encodes byte for byte
    /// like the owned one clients decode.
    #[test]
    fn the_user_list_view_encodes_like_the_owned_list() {
        use crate::domain::{UserId, UserState};
        let view = [
            UserEntryView {
                user_id: UserId(1),
                username: "alice".into(),
                state: UserState::Available,
            },
            UserEntryView {
                user_id: UserId(u64::MAX),
                username: "bo.b_-9".into(),
                state: UserState::Disconnected,
            },
            UserEntryView {
                user_id: UserId(0),
                username: "carol (guest)".into(),
                state: UserState::Busy,
            },
        ];
        let owned = UserList {
            users: view
                .iter()
                .map(|e| UserEntry {
                    user_id: e.user_id.to_string(),
                    username: e.username.to_string(),
                    state: e.state.as_str().into(),
                })
                .collect(),
            req_id: Some(ReqId::Int(4)),
        };
        let req_id = ReqId::Int(4);
        assert_eq!(
            frame::encode_json(
                MessageType::UserListResponse.code(),
                &UserListView {
                    users: &view,
                    req_id: Some(&req_id),
                }
            ),
            ServerMessage::UserListResponse(owned).to_frame()
        );
    }

    /// Error text never carries a double quote, which the v1 client's search would stop at.
    #[test]
    fn error_text_has_no_double_quotes() {
        let frame = ServerMessage::error(400, r#"found '"' in "name""#, None).to_frame();
        assert_eq!(
            &frame[5..],
            br#"{"code":400,"message":"found ''' in 'name'"}"#
        );
    }

    /// Every code 0x01-0x21 (v1's twenty, then protocol 2's) is known by name
    /// and code, and names resolve back.
    #[test]
    fn the_registry_covers_every_type_without_gaps() {
        // 0x01-0x42 without a gap, then the inbox's 0x78-0x79.
        assert_eq!(MessageType::ALL.len(), 0x42 + 2);
        for (i, t) in MessageType::ALL.iter().enumerate() {
            let expected = if i < 0x42 { i + 1 } else { 0x78 + i - 0x42 };
            assert_eq!(t.code() as usize, expected);
            assert_eq!(MessageType::from_code(t.code()), Some(*t));
            assert_eq!(MessageType::from_name(&t.name().to_lowercase()), Some(*t));
        }
    }
}
