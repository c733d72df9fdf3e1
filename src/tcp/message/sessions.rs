//! Payloads of protocol 2 sessions: HELLO/WELCOME, RESUME, tokens, guests,
//! ICE servers, PEER_STATUS, password change and account deletion.

use serde::{Deserialize, Serialize};

use super::ReqId;

/// HELLO: the client's protocol version (2 for the additions) and what it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// WELCOME: the answer to HELLO.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub server_name: String,
    pub server_version: String,
    /// The version this connection speaks: the lower of the two.
    pub protocol_version: u32,
    pub capabilities: Vec<String>,
    pub max_frame_bytes: usize,
    pub heartbeat_interval_secs: u64,
    pub idle_timeout_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    pub session_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestLogin {
    pub display_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordChange {
    pub old_password_hash: String,
    pub new_password_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountDelete {
    pub password_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// TOKEN_REFRESH_RESPONSE, PASSWORD_CHANGE_RESPONSE and ACCOUNT_DELETE_RESPONSE.
/// They are sent on success only (`success` is always true); a failure is an ERROR.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountOutcome {
    pub success: bool,
    /// A new token (refresh, password change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// One STUN or TURN server, shaped like WebRTC's `RTCIceServer`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServerEntry {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServerList {
    pub ice_servers: Vec<IceServerEntry>,
    /// Seconds the TURN credentials stay valid (0: none issued).
    pub ttl_secs: u64,
    /// Unix seconds when they expire (0: none issued).
    pub expires_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// PEER_STATUS: the other party of the call lost its connection
/// (`"reconnecting"`, held for `grace_ms`) or came back (`"reconnected"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    pub peer_user_id: String,
    pub peer_username: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_ms: Option<u64>,
}
