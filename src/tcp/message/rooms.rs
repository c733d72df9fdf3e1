//! Payloads of rooms (PROTOCOL.md section 16) and the offline inbox (section 17).

use serde::{Deserialize, Serialize};

use super::ReqId;

/// A request naming only a room: ROOM_JOIN (with `password`), ROOM_LEAVE,
/// ROOM_DELETE, and the answers that echo the room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRef {
    pub room_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// A plain success answer about a room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomDone {
    pub success: bool,
    pub room_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// A room as ROOM_LIST, ROOM_CREATE_RESPONSE and ROOM_UPDATED show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomEntryView {
    pub room_id: String,
    pub name: String,
    pub description: String,
    pub owner_id: String,
    pub has_password: bool,
    pub invite_only: bool,
    pub members_can_invite: bool,
    pub participants: usize,
    pub max_participants: u32,
}

/// ROOM_CREATE_REQUEST and ROOM_UPDATE_REQUEST (`name` only for create,
/// `room_id` only for update).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_participants: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members_can_invite: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomCreated {
    pub success: bool,
    pub room_id: String,
    pub name: String,
    pub room: RoomEntryView,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomList {
    pub rooms: Vec<RoomEntryView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomJoin {
    pub room_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomParticipant {
    pub user_id: String,
    pub username: String,
    pub create_offer: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomJoined {
    pub success: bool,
    pub room_id: String,
    pub name: String,
    pub participants: Vec<RoomParticipant>,
    pub last_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// ROOM_PEER_JOINED.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomPeerJoined {
    pub room_id: String,
    pub user_id: String,
    pub username: String,
    pub create_offer: bool,
}

/// ROOM_PEER_LEFT.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomPeerLeft {
    pub room_id: String,
    pub user_id: String,
    pub username: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInvite {
    pub room_id: String,
    pub user_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInvited {
    pub success: bool,
    pub room_id: String,
    pub invited: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// ROOM_INVITATION.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInvitation {
    pub room_id: String,
    pub name: String,
    pub from_user_id: String,
    pub from_username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox_dropped: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomKnockRequest {
    pub room_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// ROOM_KNOCK, to the owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomKnock {
    pub room_id: String,
    pub user_id: String,
    pub username: String,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox_dropped: Option<u64>,
}

/// ROOM_KNOCK_DENY, from the owner and to the knocker; and
/// ROOM_KNOCK_DENY_RESPONSE and ROOM_KICK_RESPONSE (with `success`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMember {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
    pub room_id: String,
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub banned: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox_dropped: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomKick {
    pub room_id: String,
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ban: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// ROOM_UPDATE_RESPONSE and ROOM_UPDATED.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomUpdated {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
    pub room: RoomEntryView,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// ROOM_DELETED.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomDeleted {
    pub room_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomPost {
    pub room_id: String,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomPosted {
    pub success: bool,
    pub room_id: String,
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// ROOM_MESSAGE, and (without `room_id`) a message in a history page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomChat {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    pub seq: u64,
    pub from_user_id: String,
    pub from_username: String,
    pub text: String,
    pub sent_at: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomHistoryRequest {
    pub room_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomHistory {
    pub room_id: String,
    pub messages: Vec<RoomChat>,
    pub has_more: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomEventsRequest {
    pub room_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomEvent {
    pub seq: u64,
    pub at: u64,
    pub user_id: String,
    pub username: String,
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_user_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomEvents {
    pub room_id: String,
    pub events: Vec<RoomEvent>,
    pub has_more: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// INBOX_ACK_REQUEST.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxAck {
    pub through: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// INBOX_ACK_RESPONSE.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxAcked {
    pub success: bool,
    pub removed: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}
