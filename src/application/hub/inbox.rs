//! The offline inbox over sockets: what must reach a user who is not
//! attached right now (a room invitation, a knock on a room they own, the
//! denial of their knock) waits durably in their [`Inbox`] and follows the
//! next protocol 2 login, until the client acknowledges it (INBOX_ACK).

use log::warn;
use serde::{Deserialize, Serialize};

use super::rooms::storage_failed;
use super::*;
use crate::application::ports::FromInbox;
use crate::domain::RoomId;

/// Pending inbox notices delivered at one login.
const INBOX_BATCH: usize = 1000;

/// What the offline inbox holds for rooms.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind")]
pub(super) enum InboxItem {
    #[serde(rename = "room_invitation")]
    Invitation {
        room: u64,
        name: String,
        from: u64,
        from_username: String,
    },
    #[serde(rename = "room_knock")]
    Knock {
        room: u64,
        user: u64,
        username: String,
        text: String,
    },
    #[serde(rename = "room_knock_denied")]
    KnockDenied { room: u64 },
}

impl InboxItem {
    fn kind(&self) -> &'static str {
        match self {
            InboxItem::Invitation { .. } => "room_invitation",
            InboxItem::Knock { .. } => "room_knock",
            InboxItem::KnockDenied { .. } => "room_knock_denied",
        }
    }

    fn into_notice(self, user: UserId, inbox: FromInbox) -> Notice {
        let party = |id: u64, name: String| Party {
            id: UserId(id),
            username: Arc::from(name),
        };
        match self {
            InboxItem::Invitation {
                room,
                name,
                from,
                from_username,
            } => Notice::RoomInvitation {
                room: RoomId(room),
                name: Arc::from(name),
                from: party(from, from_username),
                inbox: Some(inbox),
            },
            InboxItem::Knock {
                room,
                user: knocker,
                username,
                text,
            } => Notice::RoomKnock {
                room: RoomId(room),
                knocker: party(knocker, username),
                text,
                inbox: Some(inbox),
            },
            InboxItem::KnockDenied { room } => Notice::RoomKnockDenied {
                room: RoomId(room),
                user,
                inbox: Some(inbox),
            },
        }
    }
}

impl Hub {
    /// Queues `item` in `user`'s inbox; if the user came online meanwhile,
    /// delivers what is pending at once (the login may have read the inbox
    /// before this push). Guests have no inbox.
    pub(super) fn to_inbox(&self, user: UserId, item: &InboxItem) {
        if user.is_guest() {
            return;
        }
        let Ok(body) = serde_json::to_vec(item) else {
            return;
        };
        if let Err(err) =
            self.rooms
                .stores
                .inbox
                .push(user, item.kind(), crate::clock::unix_millis(), &body)
        {
            warn!(
                "inbox notice not stored user_id={user} kind={}: {err}",
                item.kind()
            );
            return;
        }
        let online = lock(&self.state).attached_v2(user);
        if online {
            for notice in self.inbox_notices(user) {
                self.delivery.to_user(user, notice);
            }
        }
    }

    /// What `user`'s inbox holds, as the notices to deliver after a login.
    pub fn inbox_notices(&self, user: UserId) -> Vec<Notice> {
        if user.is_guest() {
            return Vec::new();
        }
        let batch = match self.rooms.stores.inbox.pending(user, INBOX_BATCH) {
            Ok(batch) => batch,
            Err(err) => {
                warn!("inbox not read user_id={user}: {err}");
                return Vec::new();
            }
        };
        let mut dropped = batch.dropped;
        batch
            .notices
            .into_iter()
            .filter_map(|n| {
                let item: InboxItem = serde_json::from_slice(&n.body).ok()?;
                let from = FromInbox {
                    id: n.id,
                    dropped: std::mem::take(&mut dropped),
                };
                Some(item.into_notice(user, from))
            })
            .collect()
    }

    /// INBOX_ACK_REQUEST: removes `user`'s notices up to `through`.
    ///
    /// # Errors
    /// 500 if the removal could not be written.
    pub fn inbox_ack(&self, conn: ConnId, user: UserId, through: u64) -> Result<usize, AppError> {
        self.check_session(conn, user)?;
        if user.is_guest() {
            return Ok(0);
        }
        self.rooms
            .stores
            .inbox
            .ack(user, through)
            .map_err(|err| storage_failed("could not remove the notices", &err))
    }
}
