//! Payloads of login, registration, heartbeat, errors and logout (RoomRTC v1.0).

use serde::{Deserialize, Serialize};

use super::{IceServerEntry, ReqId};

/// LOGIN_REQUEST and REGISTER_REQUEST.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub username: String,
    /// The client's opaque secret; the server bcrypts it. Never logged.
    pub password_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// USER_LIST_REQUEST and LOGOUT_REQUEST: `{}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// HEARTBEAT. The answer echoes `timestamp` and adds `server_time` (Unix ms).
///
/// RoomRTC clients always send `timestamp`; a script may leave it out
/// (`{"type":"HEARTBEAT"}`), and the answer then carries the server's time in
/// both fields, so a v1 client reading the answer always finds a timestamp.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<serde_json::Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_time: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// LOGIN_RESPONSE and REGISTER_RESPONSE (also the answer to RESUME_REQUEST and
/// GUEST_LOGIN_REQUEST). The fields after `retry_after_ms` are protocol 2: only
/// a client that said HELLO sees them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthResponse {
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// On failure, the error code (as in ERROR).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// With code 429: how long to wait before trying again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// For RESUME_REQUEST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    /// Unix seconds: when `session_token` (or a guest session) expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// The session is a guest's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<bool>,
    /// RESUME_REQUEST kept this call going.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    /// RESUME_REQUEST kept the user in these rooms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ice_servers: Option<Vec<IceServerEntry>>,
    /// Seconds the TURN credentials in `ice_servers` stay valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ice_ttl_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    pub code: u16,
    pub message: String,
    /// With code 429: how long to wait before trying again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// LOGOUT_RESPONSE: `error` is written as `null` on success, as v1 specifies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogoutResponse {
    pub success: bool,
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}
