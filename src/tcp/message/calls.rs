//! Payloads of calls and the SDP/ICE relay.

use serde::{Deserialize, Serialize};

use super::{ReqId, lenient_id};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRequest {
    pub to_user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallResponse {
    pub call_id: String,
    pub accepted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// SDP_OFFER and SDP_ANSWER, both directions. From a client, `from_user_id` is
/// ignored (the server writes the sender) and `to_user_id` is optional in a
/// call, required in a room. Exactly one of `call_id` and `room_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sdp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_id")]
    pub from_user_id: String,
    #[serde(default, deserialize_with = "lenient_id")]
    pub to_user_id: String,
    pub sdp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceCandidate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_id")]
    pub from_user_id: String,
    #[serde(default, deserialize_with = "lenient_id")]
    pub to_user_id: String,
    pub candidate: String,
    /// May be null (WebRTC allows a candidate without a media id); relayed as sent.
    pub sdp_mid: Option<String>,
    pub sdp_mline_index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// HANGUP. From a client `call_id` may be omitted: the sender's current call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hangup {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallNotification {
    pub call_id: String,
    pub from_user_id: String,
    pub from_username: String,
}

/// CALL_ACCEPTED and CALL_DECLINED. `reason` is `"timeout"` when nobody answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallAnswered {
    pub call_id: String,
    pub peer_user_id: String,
    pub peer_username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
