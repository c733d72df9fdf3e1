//! Rooms (protocol 2): create, list, join, leave, invite, knock, kick,
//! update, delete, chat, history and events. Every request is answered with
//! its response or an ERROR.

use super::*;
use crate::application::hub::{LogLine, RoomChanges};
use crate::application::ports::RoomView;
use crate::application::store::Anchor;
use crate::tcp::message::{
    RoomChat, RoomCreated, RoomDone, RoomEntryView, RoomEvent, RoomEvents, RoomHistory,
    RoomInvited, RoomJoined, RoomList, RoomMember, RoomParticipant, RoomPosted, RoomSpec,
    RoomUpdated,
};

/// The default page of history or events.
const DEFAULT_PAGE: usize = 50;

impl Connection {
    /// Every room request: protocol 2 and a login.
    pub(super) fn rooms(&mut self, user: Option<UserId>, request: Request) -> Reply {
        let user = user.ok_or(AppError::LoginRequired)?;
        if !self.v2() {
            return Err(AppError::BadRequest(
                "rooms need protocol 2; send HELLO first".into(),
            ));
        }
        let hub = self.shared.hub.clone();
        let auth = self.shared.auth.clone();
        let conn = self.id;
        match request {
            Request::RoomCreate(spec) => {
                let name = spec.name.clone().unwrap_or_default();
                if spec.room_id.is_some() {
                    return Err(AppError::BadRequest(
                        "ROOM_CREATE_REQUEST takes a name, not a room_id".into(),
                    ));
                }
                let req_id = spec.req_id.clone();
                let view = hub.room_create(conn, user, &name, changes(spec), &auth)?;
                Ok(Some(ServerMessage::RoomCreateResponse(RoomCreated {
                    success: true,
                    room_id: view.id.to_string(),
                    name: view.name.to_string(),
                    room: room_view(&view),
                    req_id,
                })))
            }
            Request::RoomList(e) => {
                let rooms = hub.room_list(conn, user)?;
                Ok(Some(ServerMessage::RoomListResponse(RoomList {
                    rooms: rooms.iter().map(room_view).collect(),
                    req_id: e.req_id,
                })))
            }
            Request::RoomJoin(j) => {
                let id = room_id(&j.room_id)?;
                let joined =
                    hub.room_join(conn, user, self.peer_ip(), id, j.password.as_deref(), &auth)?;
                Ok(Some(ServerMessage::RoomJoinResponse(RoomJoined {
                    success: true,
                    room_id: id.to_string(),
                    name: joined.name.to_string(),
                    participants: joined
                        .participants
                        .into_iter()
                        .map(|p| RoomParticipant {
                            user_id: p.id.to_string(),
                            username: p.username.to_string(),
                            create_offer: true,
                        })
                        .collect(),
                    last_seq: joined.last_seq,
                    req_id: j.req_id,
                })))
            }
            Request::RoomLeave(r) => {
                let id = room_id(&r.room_id)?;
                hub.room_leave(conn, user, id)?;
                Ok(Some(ServerMessage::RoomLeaveResponse(done(id, r.req_id))))
            }
            Request::RoomInvite(i) => {
                let id = room_id(&i.room_id)?;
                let users = i
                    .user_ids
                    .iter()
                    .map(|text| {
                        UserId::parse(text)
                            .ok_or_else(|| AppError::NotFound(format!("no such user: {text}")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let invited = hub.room_invite(conn, user, id, &users)?;
                Ok(Some(ServerMessage::RoomInviteResponse(RoomInvited {
                    success: true,
                    room_id: id.to_string(),
                    invited: invited.iter().map(ToString::to_string).collect(),
                    req_id: i.req_id,
                })))
            }
            Request::RoomKnock(k) => {
                let id = room_id(&k.room_id)?;
                hub.room_knock(conn, user, id, k.text.as_deref().unwrap_or(""))?;
                Ok(Some(ServerMessage::RoomKnockResponse(done(id, k.req_id))))
            }
            Request::RoomKnockDeny(d) => {
                let id = room_id(&d.room_id)?;
                let knocker = UserId::parse(&d.user_id)
                    .ok_or_else(|| AppError::NotFound("no such knock".into()))?;
                hub.room_knock_deny(conn, user, id, knocker)?;
                Ok(Some(ServerMessage::RoomKnockDenyResponse(RoomMember {
                    success: Some(true),
                    room_id: id.to_string(),
                    user_id: knocker.to_string(),
                    banned: None,
                    inbox_id: None,
                    inbox_dropped: None,
                    req_id: d.req_id,
                })))
            }
            Request::RoomKick(k) => {
                let id = room_id(&k.room_id)?;
                let target = UserId::parse(&k.user_id)
                    .ok_or_else(|| AppError::Conflict("that user is not in this room".into()))?;
                let banned = hub.room_kick(conn, user, id, target, k.ban.unwrap_or(false))?;
                Ok(Some(ServerMessage::RoomKickResponse(RoomMember {
                    success: Some(true),
                    room_id: id.to_string(),
                    user_id: target.to_string(),
                    banned: Some(banned),
                    inbox_id: None,
                    inbox_dropped: None,
                    req_id: k.req_id,
                })))
            }
            Request::RoomUpdate(spec) => {
                if spec.name.is_some() {
                    return Err(AppError::BadRequest("a room cannot be renamed".into()));
                }
                let id = room_id(spec.room_id.as_deref().unwrap_or(""))?;
                let req_id = spec.req_id.clone();
                let view = hub.room_update(conn, user, id, changes(spec), &auth)?;
                Ok(Some(ServerMessage::RoomUpdateResponse(RoomUpdated {
                    success: Some(true),
                    room: room_view(&view),
                    req_id,
                })))
            }
            Request::RoomDelete(r) => {
                let id = room_id(&r.room_id)?;
                hub.room_delete(conn, user, id)?;
                Ok(Some(ServerMessage::RoomDeleteResponse(done(id, r.req_id))))
            }
            Request::RoomMessage(m) => {
                let id = room_id(&m.room_id)?;
                let seq = hub.room_message(conn, user, id, &m.text, m.client_msg_id.as_deref())?;
                Ok(Some(ServerMessage::RoomMessageResponse(RoomPosted {
                    success: true,
                    room_id: id.to_string(),
                    seq,
                    req_id: m.req_id,
                })))
            }
            Request::RoomHistory(h) => {
                let id = room_id(&h.room_id)?;
                let anchor = match (h.before_seq, h.after_seq) {
                    (Some(_), Some(_)) => {
                        return Err(AppError::BadRequest(
                            "send before_seq or after_seq, not both".into(),
                        ));
                    }
                    (Some(before), None) => Anchor::Before(before),
                    (None, Some(after)) => Anchor::After(after),
                    (None, None) => Anchor::Before(u64::MAX),
                };
                let page = hub.room_history(conn, user, id, anchor, page_limit(h.limit)?)?;
                Ok(Some(ServerMessage::RoomHistoryResponse(RoomHistory {
                    room_id: id.to_string(),
                    messages: page.lines.into_iter().map(chat_line).collect(),
                    has_more: page.has_more,
                    req_id: h.req_id,
                })))
            }
            Request::RoomEvents(e) => {
                let id = room_id(&e.room_id)?;
                let page = hub.room_events(conn, user, id, e.before, page_limit(e.limit)?)?;
                Ok(Some(ServerMessage::RoomEventsResponse(RoomEvents {
                    room_id: id.to_string(),
                    events: page.lines.into_iter().map(event_line).collect(),
                    has_more: page.has_more,
                    req_id: e.req_id,
                })))
            }
            other => Err(misrouted(&other)),
        }
    }
}

fn page_limit(limit: Option<usize>) -> Result<usize, AppError> {
    let max = crate::application::hub::MAX_PAGE;
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(AppError::BadRequest(format!(
            "limit must be from 1 to {max}"
        ))),
    }
}

fn changes(spec: RoomSpec) -> RoomChanges {
    RoomChanges {
        description: spec.description,
        password: spec.password,
        invite_only: spec.invite_only,
        max_participants: spec.max_participants,
        members_invite: spec.members_can_invite,
    }
}

fn done(id: RoomId, req_id: Option<ReqId>) -> RoomDone {
    RoomDone {
        success: true,
        room_id: id.to_string(),
        req_id,
    }
}

/// The wire form of a room.
pub(crate) fn room_view(v: &RoomView) -> RoomEntryView {
    RoomEntryView {
        room_id: v.id.to_string(),
        name: v.name.to_string(),
        description: v.description.clone(),
        owner_id: v.owner.to_string(),
        has_password: v.has_password,
        invite_only: v.invite_only,
        members_can_invite: v.members_invite,
        participants: v.participants,
        max_participants: v.max_participants,
    }
}

fn chat_line(l: LogLine) -> RoomChat {
    RoomChat {
        room_id: None,
        seq: l.seq,
        from_user_id: l.user.to_string(),
        from_username: l.username,
        text: l.text,
        sent_at: l.at,
    }
}

fn event_line(l: LogLine) -> RoomEvent {
    RoomEvent {
        seq: l.seq,
        at: l.at,
        user_id: l.user.to_string(),
        username: l.username,
        event: l.text,
        by_user_id: l.by.map(|u| u.to_string()),
    }
}
