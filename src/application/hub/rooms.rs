//! Rooms: creating, joining and leaving, the door (password, invitations,
//! bans, capacity), knocking, moderation, the SDP/ICE relay between two
//! participants, chat in `seq` order, and what a room does when one of its
//! participants leaves.
//!
//! # Where things live
//! Who is in which room is in [`HubState`] (`rooms`), under the one state
//! lock, because it changes together with sessions ("the session ends, so
//! it leaves its rooms"). A room's durable description, invitations, bans
//! and knocks are records in the [`KvStore`]; its chat and its event log are
//! two conversation logs. A durable write is never made under the state
//! lock: a use case checks under the lock, releases it, writes, then applies
//! the change under the lock again. A room record is written from a snapshot
//! taken under the lock with the room's `version` and the change applied;
//! memory takes the change only if the version is unchanged, otherwise the
//! record is written again from the newer state. So memory never holds
//! settings the disk does not, and the disk never keeps an older version.
//!
//! # Chat order
//! A message's `seq` comes from the conversation store when it is durable,
//! and concurrent senders finish in any order. Each room delivers in `seq`
//! order: a message that arrives before its predecessor waits in `pending`
//! until the gap is filled. No seq is ever skipped: the store answers `Ok`
//! only for durable records and fails every record behind a failed one, which
//! then reuses those seqs, so every seq above `delivered` reaches this code.
//!
//! # Events
//! The event log is written by one background thread fed through a channel
//! in state order, so no leave path waits for a disk write.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::mpsc;

use log::warn;
use serde::{Deserialize, Serialize};

use super::inbox::InboxItem;
use super::*;
use crate::application::auth::Authenticator;
use crate::application::ports::{RoomExit, RoomLine, RoomView, Scope};
use crate::application::store::{
    Anchor, ConversationId, ConversationStore, IdKind, IdSource, Inbox, KvStore, NewMessage,
    StorageError,
};
use crate::domain::limits::Buckets;
use crate::domain::room::{
    Door, Invitation, Knock, MAX_KNOCK_CHARS, Refusal, Room, RoomSettings, room_name_key,
    validate_description, validate_room_name,
};
use crate::domain::{RoomId, RoomLimits};

const ROOMS: &str = "rooms";
const INVITES: &str = "room_invites";
const BANS: &str = "room_bans";
const KNOCKS: &str = "room_knocks";
/// The most users one ROOM_INVITE_REQUEST names.
pub const MAX_INVITEES: usize = 100;
/// The most messages or events one page returns.
pub const MAX_PAGE: usize = 200;
/// The longest client message id.
const MAX_CLIENT_MSG_ID: usize = 128;

/// The durable stores rooms use.
#[derive(Clone)]
pub struct RoomStores {
    pub kv: Arc<dyn KvStore>,
    pub logs: Arc<dyn ConversationStore>,
    pub inbox: Arc<dyn Inbox>,
    pub ids: Arc<dyn IdSource>,
}

/// Rooms' part of the hub outside the state lock.
pub(super) struct Rooms {
    pub(super) stores: RoomStores,
    limits: RoomLimits,
    events: mpsc::Sender<EventJob>,
    /// Knocks per user per minute.
    knocks: Mutex<Buckets<UserId>>,
}

impl Rooms {
    pub(super) fn new(stores: RoomStores, limits: RoomLimits) -> Rooms {
        let (tx, rx) = mpsc::channel::<EventJob>();
        let logs = stores.logs.clone();
        let keep = limits.events_per_room;
        let spawned = std::thread::Builder::new()
            .name("room-events".into())
            .spawn(move || write_events(&rx, &*logs, keep));
        if let Err(err) = spawned {
            warn!("cannot start the room event writer; room events will not be kept: {err}");
        }
        let rate = f64::from(limits.knocks_per_minute.max(1)) / 60.0;
        Rooms {
            stores,
            limits,
            events: tx,
            knocks: Mutex::new(Buckets::new(
                rate,
                f64::from(limits.knocks_per_minute.max(1)),
                100_000,
            )),
        }
    }
}

/// What the event writer does, in order.
enum EventJob {
    Append(EventRecord),
    /// A deleted room's event log goes, after every event queued for it.
    Drop(ConversationId),
}

/// An event on its way to a room's event log.
struct EventRecord {
    log: ConversationId,
    at: u64,
    user: UserId,
    username: Arc<str>,
    event: &'static str,
    by: Option<UserId>,
}

#[derive(Serialize, Deserialize)]
struct StoredEvent {
    username: String,
    event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    by: Option<u64>,
}

/// The event writer: appends in arrival order and keeps the latest `keep`.
fn write_events(rx: &mpsc::Receiver<EventJob>, logs: &dyn ConversationStore, keep: u64) {
    while let Ok(job) = rx.recv() {
        let e = match job {
            EventJob::Append(e) => e,
            EventJob::Drop(log) => {
                if let Err(err) = logs.delete_log(log) {
                    warn!("deleted room's event log not removed log={log}: {err}");
                }
                continue;
            }
        };
        let body = StoredEvent {
            username: e.username.to_string(),
            event: e.event.to_string(),
            by: e.by.map(|u| u.0),
        };
        let Ok(body) = serde_json::to_vec(&body) else {
            continue;
        };
        let msg = NewMessage {
            sender: e.user,
            sent_at: e.at,
            client_id: None,
            body: &body,
        };
        match logs.append(e.log, msg) {
            Ok(appended) if appended.seq > keep => {
                if let Err(err) = logs.delete(e.log, appended.seq - keep) {
                    warn!("room event not trimmed log={}: {err}", e.log);
                }
            }
            Ok(_) => {}
            Err(err) => warn!(
                "room event not stored log={} event={}: {err}",
                e.log, e.event
            ),
        }
    }
}

/// A room in memory: the domain's room plus chat delivery state.
#[derive(Debug)]
pub(super) struct RoomEntry {
    room: Room,
    /// Bumped by every change of what the room record holds.
    version: u64,
    /// The highest chat seq delivered to the participants.
    delivered: u64,
    /// Durable messages waiting for a smaller seq to be delivered first.
    pending: BTreeMap<u64, Arc<RoomLine>>,
}

/// Every room, and who is in which.
#[derive(Debug, Default)]
pub(super) struct RoomTable {
    by_id: BTreeMap<RoomId, RoomEntry>,
    /// Name key to room.
    names: HashMap<String, RoomId>,
    /// Names being created (the record is being written), with their owner.
    reserved: HashMap<String, UserId>,
    /// The rooms each user is in.
    of_user: HashMap<UserId, BTreeSet<RoomId>>,
}

impl RoomTable {
    fn entry(&self, id: RoomId) -> Result<&RoomEntry, AppError> {
        self.by_id
            .get(&id)
            .ok_or_else(|| AppError::NotFound("no such room".into()))
    }

    fn entry_mut(&mut self, id: RoomId) -> Result<&mut RoomEntry, AppError> {
        self.by_id
            .get_mut(&id)
            .ok_or_else(|| AppError::NotFound("no such room".into()))
    }

    /// The rooms `user` is in.
    pub(super) fn rooms_of(&self, user: UserId) -> Vec<RoomId> {
        self.of_user
            .get(&user)
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default()
    }

    pub(super) fn is_in_any(&self, user: UserId) -> bool {
        self.of_user.get(&user).is_some_and(|set| !set.is_empty())
    }

    fn owned_by(&self, user: UserId) -> usize {
        self.by_id.values().filter(|e| e.room.owner == user).count()
            + self.reserved.values().filter(|o| **o == user).count()
    }

    /// How many rooms exist and how many participants they hold.
    pub(super) fn counts(&self) -> (usize, usize) {
        (
            self.by_id.len(),
            self.by_id.values().map(|e| e.room.participants.len()).sum(),
        )
    }
}

/// The durable form of a room.
#[derive(Serialize, Deserialize)]
struct RoomRecord {
    name: String,
    owner: u64,
    created_at: u64,
    description: String,
    password_hash: Option<String>,
    invite_only: bool,
    max_participants: u32,
    members_invite: bool,
    chat_log: u64,
    event_log: u64,
}

impl RoomRecord {
    fn of(room: &Room) -> RoomRecord {
        RoomRecord {
            name: room.name.clone(),
            owner: room.owner.0,
            created_at: room.created_at,
            description: room.settings.description.clone(),
            password_hash: room.settings.password_hash.clone(),
            invite_only: room.settings.invite_only,
            max_participants: room.settings.max_participants,
            members_invite: room.settings.members_invite,
            chat_log: room.chat_log,
            event_log: room.event_log,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct StoredInvite {
    from: u64,
    at: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredKnock {
    text: String,
    at: u64,
}

/// A chat message as its log holds it (the sender's id is the log's own field).
#[derive(Serialize, Deserialize)]
struct StoredLine {
    username: String,
    text: String,
}

fn room_key(id: RoomId) -> String {
    format!("{:020}", id.0)
}

fn member_key(room: RoomId, user: UserId) -> String {
    format!("{:020}/{:020}", room.0, user.0)
}

pub(super) fn storage_failed(what: &str, err: &StorageError) -> AppError {
    warn!("{what}: {err}");
    AppError::Internal(format!("{what}; try again"))
}

fn refusal(r: Refusal) -> AppError {
    match r {
        Refusal::Banned => AppError::Forbidden("you are banned from this room".into()),
        Refusal::NotInvited => AppError::Forbidden("this room is invite-only".into()),
        Refusal::Password => AppError::Unauthorized("wrong room password".into()),
        Refusal::Full => AppError::Conflict("room full".into()),
        Refusal::AlreadyIn => AppError::Conflict("already in this room".into()),
    }
}

fn not_owner() -> AppError {
    AppError::Forbidden("only the owner may do this".into())
}

fn not_in_room() -> AppError {
    AppError::Forbidden("you are not in this room".into())
}

/// The exit reason and event word of a departure.
fn exit_of(why: Departure) -> RoomExit {
    match why {
        Departure::LoggedOut | Departure::Ended(SessionEnd::LoggedOut) => RoomExit::LoggedOut,
        Departure::TakenOver | Departure::Ended(SessionEnd::TakenOver) => RoomExit::TakenOver,
        Departure::Disconnected
        | Departure::HoldExpired
        | Departure::NothingHeld
        | Departure::Ended(SessionEnd::Kicked) => RoomExit::Disconnected,
        Departure::Ended(SessionEnd::GuestExpired) => RoomExit::Expired,
        Departure::Ended(SessionEnd::AccountDeleted) => RoomExit::DeletedAccount,
        Departure::Ended(SessionEnd::ShuttingDown) => RoomExit::ServerStopping,
    }
}

/// What a ROOM_CREATE or ROOM_UPDATE asks for; `None` keeps (or defaults).
#[derive(Clone, Debug, Default)]
pub struct RoomChanges {
    pub description: Option<String>,
    /// `Some("")` removes the password.
    pub password: Option<String>,
    pub invite_only: Option<bool>,
    pub max_participants: Option<u32>,
    pub members_invite: Option<bool>,
}

/// A participant as ROOM_JOIN_RESPONSE lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Joined {
    pub room: RoomId,
    pub name: Arc<str>,
    /// Those already in, in join order: the joiner offers to each.
    pub participants: Vec<Party>,
    /// The latest chat seq delivered before the join.
    pub last_seq: u64,
}

/// A chat message or event read back from a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub seq: u64,
    pub user: UserId,
    pub username: String,
    /// The chat text, or the event word.
    pub text: String,
    pub at: u64,
    /// Events: who did it, when someone else did.
    pub by: Option<UserId>,
}

/// A page of a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogPage {
    pub lines: Vec<LogLine>,
    pub has_more: bool,
}

fn view(entry: &RoomEntry) -> RoomView {
    let room = &entry.room;
    RoomView {
        id: room.id,
        name: Arc::from(room.name.as_str()),
        description: room.settings.description.clone(),
        owner: room.owner,
        has_password: room.settings.password_hash.is_some(),
        invite_only: room.settings.invite_only,
        members_invite: room.settings.members_invite,
        participants: room.participants.len(),
        max_participants: room.settings.max_participants,
    }
}

impl Hub {
    /// Loads every room, its invitations, bans and knocks, and where its
    /// chat stands. Called once, before the server accepts clients.
    ///
    /// # Errors
    /// A record that cannot be read or decoded.
    pub fn load_rooms(&self) -> Result<usize, StorageError> {
        let stores = &self.rooms.stores;
        let mut table = RoomTable::default();
        for (key, value) in stores.kv.list(ROOMS, "")? {
            let id = key
                .parse::<u64>()
                .map_err(|_| StorageError::Invalid("a room key is not a number"))?;
            let r: RoomRecord = serde_json::from_slice(&value)
                .map_err(|_| StorageError::Invalid("a room record does not decode"))?;
            let delivered = stores.logs.last_seq(ConversationId(r.chat_log))?;
            let room = Room {
                id: RoomId(id),
                name: r.name,
                owner: UserId(r.owner),
                created_at: r.created_at,
                settings: RoomSettings {
                    description: r.description,
                    password_hash: r.password_hash,
                    invite_only: r.invite_only,
                    max_participants: r.max_participants,
                    members_invite: r.members_invite,
                },
                chat_log: r.chat_log,
                event_log: r.event_log,
                participants: Vec::new(),
                invited: BTreeMap::new(),
                banned: BTreeSet::new(),
                knocks: BTreeMap::new(),
            };
            table.names.insert(room_name_key(&room.name), room.id);
            table.by_id.insert(
                room.id,
                RoomEntry {
                    room,
                    version: 0,
                    delivered,
                    pending: BTreeMap::new(),
                },
            );
        }
        let split = |key: &str| -> Option<(RoomId, UserId)> {
            let (room, user) = key.split_once('/')?;
            Some((RoomId(room.parse().ok()?), UserId(user.parse().ok()?)))
        };
        for (key, value) in stores.kv.list(INVITES, "")? {
            let (Some((room, user)), Ok(i)) =
                (split(&key), serde_json::from_slice::<StoredInvite>(&value))
            else {
                continue;
            };
            if let Some(e) = table.by_id.get_mut(&room) {
                e.room.invited.insert(
                    user,
                    Invitation {
                        from: UserId(i.from),
                        at: i.at,
                    },
                );
            }
        }
        for (key, _) in stores.kv.list(BANS, "")? {
            if let Some((room, user)) = split(&key)
                && let Some(e) = table.by_id.get_mut(&room)
            {
                e.room.banned.insert(user);
            }
        }
        for (key, value) in stores.kv.list(KNOCKS, "")? {
            let (Some((room, user)), Ok(k)) =
                (split(&key), serde_json::from_slice::<StoredKnock>(&value))
            else {
                continue;
            };
            if let Some(e) = table.by_id.get_mut(&room) {
                e.room.knocks.insert(
                    user,
                    Knock {
                        text: k.text,
                        at: k.at,
                    },
                );
            }
        }
        let count = table.by_id.len();
        lock(&self.state).rooms = table;
        Ok(count)
    }

    fn event(
        &self,
        room: &Room,
        user: UserId,
        username: &Arc<str>,
        event: &'static str,
        by: Option<UserId>,
    ) {
        let record = EventRecord {
            log: ConversationId(room.event_log),
            at: crate::clock::unix_millis(),
            user,
            username: username.clone(),
            event,
            by,
        };
        // The writer is gone only if it could not start (logged then).
        let _ = self.rooms.events.send(EventJob::Append(record));
    }

    /// Tells each of `users` (attached: one encoding for all; held: kept in
    /// their gap).
    fn tell_all(&self, state: &mut HubState, users: &[UserId], notice: Notice, out: &mut Outgoing) {
        let mut attached = Vec::with_capacity(users.len());
        for user in users {
            if state.conn_of(*user).is_some() {
                attached.push(*user);
            } else {
                state.tell(*user, notice.clone(), out, &self.hold);
            }
        }
        if !attached.is_empty() {
            out.shared.push((attached, notice));
        }
    }

    /// ROOM_CREATE_REQUEST: a new room owned by `user`, on disk before it returns.
    ///
    /// # Errors
    /// 400 bad name or settings, 403 guests or too many rooms, 409 name taken, 500 storage.
    pub fn room_create(
        &self,
        conn: ConnId,
        user: UserId,
        name: &str,
        changes: RoomChanges,
        auth: &Authenticator,
    ) -> Result<RoomView, AppError> {
        if user.is_guest() {
            return Err(AppError::Forbidden("guests cannot create rooms".into()));
        }
        validate_room_name(name).map_err(AppError::BadRequest)?;
        let description = changes.description.clone().unwrap_or_default();
        validate_description(&description).map_err(AppError::BadRequest)?;
        let limits = self.rooms.limits;
        let max = changes
            .max_participants
            .unwrap_or(limits.default_participants);
        self.check_capacity(max)?;
        let key = room_name_key(name);
        {
            let mut state = lock(&self.state);
            state.check_session(conn, user)?;
            if state.rooms.names.contains_key(&key) || state.rooms.reserved.contains_key(&key) {
                return Err(AppError::Conflict("a room with that name exists".into()));
            }
            if state.rooms.owned_by(user) >= limits.max_rooms_per_owner {
                return Err(AppError::Forbidden(format!(
                    "you own the most rooms allowed ({})",
                    limits.max_rooms_per_owner
                )));
            }
            state.rooms.reserved.insert(key.clone(), user);
        }
        let made = self.write_new_room(user, name, description, changes, max, auth);
        let mut state = lock(&self.state);
        state.rooms.reserved.remove(&key);
        let room = made?;
        let id = room.id;
        let username = state.party(user).username;
        self.event(&room, user, &username, "created", None);
        info!("room created room_id={id} owner={user}");
        state.rooms.names.insert(key, id);
        let entry = RoomEntry {
            room,
            version: 0,
            delivered: 0,
            pending: BTreeMap::new(),
        };
        let shown = view(&entry);
        state.rooms.by_id.insert(id, entry);
        Ok(shown)
    }

    fn check_capacity(&self, max: u32) -> Result<(), AppError> {
        let limit = self.rooms.limits.max_participants;
        if !(2..=limit).contains(&max) {
            return Err(AppError::BadRequest(format!(
                "max_participants must be from 2 to {limit}"
            )));
        }
        Ok(())
    }

    /// Ids, the password hash and the record of a new room; no lock held.
    fn write_new_room(
        &self,
        owner: UserId,
        name: &str,
        description: String,
        changes: RoomChanges,
        max: u32,
        auth: &Authenticator,
    ) -> Result<Room, AppError> {
        let password_hash = match changes.password.as_deref() {
            None | Some("") => None,
            Some(password) => Some(auth.hash_room_password(password)?),
        };
        let ids = &self.rooms.stores.ids;
        let next = |kind| {
            ids.next(kind)
                .map_err(|err| storage_failed("could not reserve an id", &err))
        };
        let id = RoomId(next(IdKind::Room)?);
        let chat_log = next(IdKind::Conversation)?;
        let event_log = next(IdKind::Conversation)?;
        let room = Room {
            id,
            name: name.to_string(),
            owner,
            created_at: crate::clock::unix_millis(),
            settings: RoomSettings {
                description,
                password_hash,
                invite_only: changes.invite_only.unwrap_or(false),
                max_participants: max,
                members_invite: changes.members_invite.unwrap_or(false),
            },
            chat_log,
            event_log,
            participants: Vec::new(),
            invited: BTreeMap::new(),
            banned: BTreeSet::new(),
            knocks: BTreeMap::new(),
        };
        let bytes = serde_json::to_vec(&RoomRecord::of(&room))
            .map_err(|err| AppError::Internal(format!("cannot encode the room: {err}")))?;
        self.rooms
            .stores
            .kv
            .put(ROOMS, &room_key(id), &bytes)
            .map_err(|err| storage_failed("could not store the room", &err))?;
        Ok(room)
    }

    /// ROOM_LIST_REQUEST: public rooms, and invite-only ones `user` owns, is
    /// invited to or is in.
    pub fn room_list(&self, conn: ConnId, user: UserId) -> Result<Vec<RoomView>, AppError> {
        let state = lock(&self.state);
        state.check_session(conn, user)?;
        Ok(state
            .rooms
            .by_id
            .values()
            .filter(|e| e.room.visible_to(user))
            .map(view)
            .collect())
    }

    /// ROOM_JOIN_REQUEST. A room password is checked with bcrypt with no lock
    /// held, through the login back-off (`auth`).
    ///
    /// # Errors
    /// The door's refusals (see [`Refusal`]), 404, 429 while backing off.
    pub fn room_join(
        &self,
        conn: ConnId,
        user: UserId,
        from: IpAddr,
        id: RoomId,
        password: Option<&str>,
        auth: &Authenticator,
    ) -> Result<Joined, AppError> {
        let door = {
            let state = lock(&self.state);
            state.check_session(conn, user)?;
            state.rooms.entry(id)?.room.door(user)
        };
        let checked = match door {
            Ok(Door::Open) => None,
            Ok(Door::Password(hash)) => {
                if let Err(err) =
                    auth.check_room_password(user, from, password.unwrap_or(""), &hash)
                {
                    self.count_refusal(Refusal::Password);
                    return Err(err);
                }
                Some(hash)
            }
            Err(r) => {
                self.count_refusal(r);
                return Err(refusal(r));
            }
        };
        let mut state = lock(&self.state);
        state.check_session(conn, user)?;
        let entry = state.rooms.entry(id)?;
        match entry.room.door(user) {
            Ok(Door::Open) => {}
            Ok(Door::Password(hash)) if Some(&hash) == checked.as_ref() => {}
            Ok(Door::Password(_)) => {
                return Err(AppError::Conflict(
                    "the room's password changed meanwhile; try again".into(),
                ));
            }
            Err(r) => {
                self.count_refusal(r);
                return Err(refusal(r));
            }
        }
        let was_invited = entry.room.invited.contains_key(&user);
        let had_knock = entry.room.knocks.contains_key(&user);
        let me = state.party(user);
        let entry = state.rooms.entry_mut(id)?;
        let before = entry.room.join(user);
        let last_seq = entry.delivered;
        let name: Arc<str> = Arc::from(entry.room.name.as_str());
        self.event(&entry.room, user, &me.username, "joined", None);
        state.rooms.of_user.entry(user).or_default().insert(id);
        let participants = before.iter().map(|u| state.party(*u)).collect();
        let mut out = Outgoing::default();
        let joined = Notice::RoomPeerJoined { room: id, peer: me };
        self.tell_all(&mut state, &before, joined, &mut out);
        info!(
            "room joined room_id={id} user_id={user} participants={}",
            before.len() + 1
        );
        self.commit(state, Before(Vec::new()), out);
        // Used up: forgotten on disk too (a failure only means it is offered
        // again after a restart).
        let key = member_key(id, user);
        if was_invited && let Err(err) = self.rooms.stores.kv.delete(INVITES, &key) {
            warn!("used invitation not removed room_id={id} user_id={user}: {err}");
        }
        if had_knock && let Err(err) = self.rooms.stores.kv.delete(KNOCKS, &key) {
            warn!("knock not removed room_id={id} user_id={user}: {err}");
        }
        Ok(Joined {
            room: id,
            name,
            participants,
            last_seq,
        })
    }

    fn count_refusal(&self, r: Refusal) {
        self.metrics.room_join_refused(r.as_str());
    }

    /// ROOM_LEAVE_REQUEST.
    ///
    /// # Errors
    /// 404 no such room, 409 not in it.
    pub fn room_leave(&self, conn: ConnId, user: UserId, id: RoomId) -> Result<(), AppError> {
        let mut state = lock(&self.state);
        state.check_session(conn, user)?;
        if !state.rooms.entry(id)?.room.has(user) {
            return Err(AppError::Conflict("you are not in this room".into()));
        }
        let mut out = Outgoing::default();
        self.put_out(&mut state, id, user, RoomExit::Left, None, &mut out);
        self.commit(state, Before(Vec::new()), out);
        Ok(())
    }

    /// Takes `user` out of room `id` and tells the others (and, for a kick,
    /// `user` too).
    fn put_out(
        &self,
        state: &mut HubState,
        id: RoomId,
        user: UserId,
        why: RoomExit,
        by: Option<UserId>,
        out: &mut Outgoing,
    ) {
        let peer = state.party(user);
        let Some(entry) = state.rooms.by_id.get_mut(&id) else {
            return;
        };
        if !entry.room.leave(user) {
            return;
        }
        let event = match why {
            RoomExit::Left => "left",
            RoomExit::Banned => "banned",
            other => other.as_str(),
        };
        self.event(&entry.room, user, &peer.username, event, by);
        let mut audience = entry.room.participants.clone();
        if let Some(rooms) = state.rooms.of_user.get_mut(&user) {
            rooms.remove(&id);
            if rooms.is_empty() {
                state.rooms.of_user.remove(&user);
            }
        }
        if matches!(why, RoomExit::Kicked | RoomExit::Banned) {
            audience.push(user);
        }
        debug!(
            "room left room_id={id} user_id={user} reason={}",
            why.as_str()
        );
        let left = Notice::RoomPeerLeft {
            room: id,
            peer,
            why,
        };
        self.tell_all(state, &audience, left, out);
    }

    /// The rooms capability's part of leaving: out of every room.
    pub(super) fn rooms_on_leave(
        &self,
        state: &mut HubState,
        user: UserId,
        why: Departure,
        out: &mut Outgoing,
    ) {
        let exit = exit_of(why);
        for id in state.rooms.rooms_of(user) {
            self.put_out(state, id, user, exit, None, out);
        }
    }

    /// Tells `user`'s room peers that the user's connection dropped
    /// (`reconnecting`) or is back. Under the state lock.
    pub(super) fn room_peer_status(
        &self,
        state: &mut HubState,
        user: UserId,
        reconnecting: bool,
        out: &mut Outgoing,
    ) {
        let peer = state.party(user);
        let grace_ms = self.hold.grace.as_millis() as u64;
        for id in state.rooms.rooms_of(user) {
            let Some(entry) = state.rooms.by_id.get(&id) else {
                continue;
            };
            let others: Vec<UserId> = entry
                .room
                .participants
                .iter()
                .copied()
                .filter(|u| *u != user)
                .collect();
            let notice = Notice::RoomPeerStatus {
                room: id,
                peer: peer.clone(),
                reconnecting,
                grace_ms,
            };
            self.tell_all(state, &others, notice, out);
        }
    }

    /// SDP_OFFER, SDP_ANSWER, ICE_CANDIDATE inside a room: relayed only
    /// between two current participants. As [`Hub::relay`], delivered after
    /// the lock is released when the peer is attached.
    ///
    /// # Errors
    /// 404 no room, 403 either side not a participant.
    pub fn room_relay(
        &self,
        conn: ConnId,
        user: UserId,
        id: RoomId,
        to: UserId,
        signal: impl FnOnce() -> Signal,
    ) -> Result<(), AppError> {
        let mut state = lock(&self.state);
        state.check_session(conn, user)?;
        let room = &state.rooms.entry(id)?.room;
        if !room.has(user) {
            return Err(not_in_room());
        }
        if to == user || !room.has(to) {
            return Err(AppError::Forbidden("to_user_id is not in this room".into()));
        }
        if state.conn_of(to).is_some() {
            drop(state);
            self.delivery.relay_to_user(to, Notice::Signal(signal()));
            return Ok(());
        }
        let mut out = Outgoing::default();
        state.tell(to, Notice::Signal(signal()), &mut out, &self.hold);
        self.commit(state, Before(Vec::new()), out);
        Ok(())
    }

    /// ROOM_INVITE_REQUEST: invites `users` (durably) and tells each, now or
    /// through the inbox. Returns who is invited (or already in).
    ///
    /// # Errors
    /// 403 may not invite, or a banned user invited by a participant; 404 an
    /// unknown user; 403 over the room's invitation limit; 500 storage.
    pub fn room_invite(
        &self,
        conn: ConnId,
        user: UserId,
        id: RoomId,
        users: &[UserId],
    ) -> Result<Vec<UserId>, AppError> {
        if users.is_empty() || users.len() > MAX_INVITEES {
            return Err(AppError::BadRequest(format!(
                "user_ids must name 1 to {MAX_INVITEES} users"
            )));
        }
        // Registered users are looked up before the state lock (storage has
        // its own), with their names for the event log.
        let registered: Vec<Option<Arc<str>>> = users
            .iter()
            .map(|u| {
                let record = (!u.is_guest()).then(|| self.users.find_by_id(*u)).flatten();
                record.map(|r| Arc::from(r.username.as_str()))
            })
            .collect();
        let (new, unban, inviter) = {
            let state = lock(&self.state);
            state.check_session(conn, user)?;
            let room = &state.rooms.entry(id)?.room;
            if !room.may_invite(user) {
                return Err(AppError::Forbidden(
                    "only the owner may invite to this room".into(),
                ));
            }
            let owner = room.owner == user;
            let mut new = Vec::new();
            let mut unban = Vec::new();
            for (invitee, known) in users.iter().zip(&registered) {
                let reachable =
                    known.is_some() || (invitee.is_guest() && state.online.contains_key(invitee));
                if !reachable {
                    return Err(AppError::NotFound(format!("no such user: {invitee}")));
                }
                if room.banned.contains(invitee) {
                    if !owner {
                        return Err(AppError::Forbidden(format!(
                            "{invitee} is banned from this room"
                        )));
                    }
                    unban.push(*invitee);
                }
                if *invitee != room.owner
                    && !room.has(*invitee)
                    && !room.invited.contains_key(invitee)
                    && !new.contains(invitee)
                {
                    new.push(*invitee);
                }
            }
            let max = self.rooms.limits.max_invitations_per_room;
            if room.invited.len() + new.len() > max {
                return Err(AppError::Forbidden(format!(
                    "this room has the most pending invitations allowed ({max})"
                )));
            }
            (new, unban, state.party(user))
        };
        let now = crate::clock::unix_millis();
        let kv = &self.rooms.stores.kv;
        let stored = serde_json::to_vec(&StoredInvite {
            from: user.0,
            at: now,
        })
        .map_err(|err| AppError::Internal(err.to_string()))?;
        // Either all of it reaches the disk and memory, or none of it
        // stays (what was written is taken back, as well as it can be).
        let undo = || {
            for invitee in &new {
                let _ = kv.delete(INVITES, &member_key(id, *invitee));
            }
            for banned in &unban {
                let _ = kv.put(BANS, &member_key(id, *banned), b"");
            }
        };
        let written = new
            .iter()
            .try_for_each(|invitee| kv.put(INVITES, &member_key(id, *invitee), &stored))
            .and_then(|()| {
                unban
                    .iter()
                    .try_for_each(|banned| kv.delete(BANS, &member_key(id, *banned)).map(|_| ()))
            });
        if let Err(err) = written {
            undo();
            return Err(storage_failed("could not store the invitation", &err));
        }
        let name_of = |u: UserId, state: &HubState| {
            users
                .iter()
                .position(|x| *x == u)
                .and_then(|i| registered[i].clone())
                .unwrap_or_else(|| state.party(u).username)
        };
        let mut offline = Vec::new();
        let name = {
            let mut state = lock(&self.state);
            let Ok(entry) = state.rooms.entry_mut(id) else {
                drop(state);
                // Deleted meanwhile: what was written must not outlive it.
                for invitee in &new {
                    let _ = kv.delete(INVITES, &member_key(id, *invitee));
                }
                for banned in &unban {
                    let _ = kv.delete(BANS, &member_key(id, *banned));
                }
                return Err(AppError::NotFound("no such room".into()));
            };
            // Checked again: concurrent invitations may have filled the room's
            // allowance since the first look.
            let max = self.rooms.limits.max_invitations_per_room;
            let adding: Vec<UserId> = new
                .iter()
                .copied()
                .filter(|u| !entry.room.invited.contains_key(u))
                .collect();
            if entry.room.invited.len() + adding.len() > max {
                drop(state);
                // Only what no other invitation stands behind is taken back.
                for invitee in &adding {
                    let _ = kv.delete(INVITES, &member_key(id, *invitee));
                }
                for banned in &unban {
                    let _ = kv.put(BANS, &member_key(id, *banned), b"");
                }
                return Err(AppError::Forbidden(format!(
                    "this room has the most pending invitations allowed ({max})"
                )));
            }
            let name: Arc<str> = Arc::from(entry.room.name.as_str());
            let mut knocked = Vec::new();
            for invitee in &new {
                entry.room.invited.insert(
                    *invitee,
                    Invitation {
                        from: user,
                        at: now,
                    },
                );
                if entry.room.knocks.remove(invitee).is_some() {
                    knocked.push(*invitee);
                }
            }
            for banned in &unban {
                entry.room.banned.remove(banned);
            }
            let room = entry.room.clone();
            let mut out = Outgoing::default();
            for invitee in &new {
                let username = name_of(*invitee, &state);
                self.event(&room, *invitee, &username, "invited", Some(user));
                let notice = Notice::RoomInvitation {
                    room: id,
                    name: name.clone(),
                    from: inviter.clone(),
                    inbox: None,
                };
                // A held session may never come back: the inbox keeps it.
                if state.attached_v2(*invitee) {
                    state.tell(*invitee, notice, &mut out, &self.hold);
                } else {
                    offline.push(*invitee);
                }
            }
            self.commit(state, Before(Vec::new()), out);
            for knocker in knocked {
                if let Err(err) = kv.delete(KNOCKS, &member_key(id, knocker)) {
                    warn!("answered knock not removed room_id={id} user_id={knocker}: {err}");
                }
            }
            name
        };
        for invitee in offline {
            let item = InboxItem::Invitation {
                room: id.0,
                name: name.to_string(),
                from: user.0,
                from_username: inviter.username.to_string(),
            };
            self.to_inbox(invitee, &item);
        }
        let mut invited: Vec<UserId> = Vec::with_capacity(users.len());
        for u in users {
            if !invited.contains(u) {
                invited.push(*u);
            }
        }
        Ok(invited)
    }

    /// ROOM_KNOCK_REQUEST: asks the owner to be let in.
    ///
    /// # Errors
    /// 404, 409 could enter anyway, 403 banned, 429 knocking too often, 400 text.
    pub fn room_knock(
        &self,
        conn: ConnId,
        user: UserId,
        id: RoomId,
        text: &str,
    ) -> Result<(), AppError> {
        if text.chars().count() > MAX_KNOCK_CHARS {
            return Err(AppError::BadRequest(format!(
                "text has at most {MAX_KNOCK_CHARS} characters"
            )));
        }
        let knocker = {
            let state = lock(&self.state);
            state.check_session(conn, user)?;
            let room = &state.rooms.entry(id)?.room;
            room.may_knock(user).map_err(|why| {
                if why.contains("banned") {
                    AppError::Forbidden(why.into())
                } else {
                    AppError::Conflict(why.into())
                }
            })?;
            state.party(user)
        };
        {
            let mut knocks = self
                .rooms
                .knocks
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            knocks
                .take(&user, Instant::now())
                .map_err(|wait| AppError::RateLimited {
                    message: format!("too many knocks; retry in {} ms", wait.as_millis().max(1)),
                    retry_after: wait,
                })?;
        }
        let now = crate::clock::unix_millis();
        let stored = serde_json::to_vec(&StoredKnock {
            text: text.to_string(),
            at: now,
        })
        .map_err(|err| AppError::Internal(err.to_string()))?;
        self.rooms
            .stores
            .kv
            .put(KNOCKS, &member_key(id, user), &stored)
            .map_err(|err| storage_failed("could not store the knock", &err))?;
        let owner = {
            let mut state = lock(&self.state);
            let admitted = match state.rooms.entry(id) {
                Ok(entry) => entry
                    .room
                    .may_knock(user)
                    .map_err(|why| AppError::Conflict(why.into())),
                Err(err) => Err(err),
            };
            if let Err(err) = admitted {
                // Deleted, banned or invited meanwhile: the knock is void.
                drop(state);
                let _ = self.rooms.stores.kv.delete(KNOCKS, &member_key(id, user));
                return Err(err);
            }
            let entry = state.rooms.entry_mut(id)?;
            entry.room.knocks.insert(
                user,
                Knock {
                    text: text.to_string(),
                    at: now,
                },
            );
            let owner = entry.room.owner;
            if state.attached_v2(owner) {
                let mut out = Outgoing::default();
                let notice = Notice::RoomKnock {
                    room: id,
                    knocker: knocker.clone(),
                    text: text.to_string(),
                    inbox: None,
                };
                state.tell(owner, notice, &mut out, &self.hold);
                self.commit(state, Before(Vec::new()), out);
                None
            } else {
                Some(owner)
            }
        };
        info!("room knock room_id={id} user_id={user}");
        if let Some(owner) = owner {
            let item = InboxItem::Knock {
                room: id.0,
                user: user.0,
                username: knocker.username.to_string(),
                text: text.to_string(),
            };
            self.to_inbox(owner, &item);
        }
        Ok(())
    }

    /// ROOM_KNOCK_DENY from the owner: the knock goes, the knocker is told.
    ///
    /// # Errors
    /// 403 not the owner, 404 no such knock, 500 storage.
    pub fn room_knock_deny(
        &self,
        conn: ConnId,
        user: UserId,
        id: RoomId,
        knocker: UserId,
    ) -> Result<(), AppError> {
        {
            let state = lock(&self.state);
            state.check_session(conn, user)?;
            let room = &state.rooms.entry(id)?.room;
            if room.owner != user {
                return Err(not_owner());
            }
            if !room.knocks.contains_key(&knocker) {
                return Err(AppError::NotFound("no such knock".into()));
            }
        }
        self.rooms
            .stores
            .kv
            .delete(KNOCKS, &member_key(id, knocker))
            .map_err(|err| storage_failed("could not remove the knock", &err))?;
        let offline = {
            let mut state = lock(&self.state);
            if let Ok(entry) = state.rooms.entry_mut(id) {
                entry.room.knocks.remove(&knocker);
            }
            if state.attached_v2(knocker) {
                let mut out = Outgoing::default();
                let notice = Notice::RoomKnockDenied {
                    room: id,
                    user: knocker,
                    inbox: None,
                };
                state.tell(knocker, notice, &mut out, &self.hold);
                self.commit(state, Before(Vec::new()), out);
                false
            } else {
                true
            }
        };
        if offline {
            self.to_inbox(knocker, &InboxItem::KnockDenied { room: id.0 });
        }
        Ok(())
    }

    /// ROOM_KICK_REQUEST: the owner puts `target` out, and bans them if asked.
    /// Returns whether the target is banned now.
    ///
    /// # Errors
    /// 403 not the owner, 400 the owner, 409 not inside (without a ban), 500 storage.
    pub fn room_kick(
        &self,
        conn: ConnId,
        user: UserId,
        id: RoomId,
        target: UserId,
        ban: bool,
    ) -> Result<bool, AppError> {
        let name = (!target.is_guest())
            .then(|| self.users.find_by_id(target))
            .flatten()
            .map(|r| Arc::<str>::from(r.username.as_str()));
        {
            let state = lock(&self.state);
            state.check_session(conn, user)?;
            let room = &state.rooms.entry(id)?.room;
            if room.owner != user {
                return Err(not_owner());
            }
            if target == user {
                return Err(AppError::BadRequest("the owner cannot be kicked".into()));
            }
            if !ban && !room.has(target) {
                return Err(AppError::Conflict("that user is not in this room".into()));
            }
        }
        let kv = &self.rooms.stores.kv;
        let key = member_key(id, target);
        if ban {
            kv.put(BANS, &key, b"")
                .map_err(|err| storage_failed("could not store the ban", &err))?;
            // Whatever invitation or knock exists by now goes with the ban
            // (a missing key is no error). Should a removal fail, the ban
            // still wins at the door.
            for ns in [INVITES, KNOCKS] {
                if let Err(err) = kv.delete(ns, &key) {
                    warn!("not removed with a ban room_id={id} user_id={target} from={ns}: {err}");
                }
            }
        }
        let mut state = lock(&self.state);
        let Ok(entry) = state.rooms.entry_mut(id) else {
            drop(state);
            if ban {
                let _ = kv.delete(BANS, &key);
            }
            return Err(AppError::NotFound("no such room".into()));
        };
        if ban {
            entry.room.banned.insert(target);
            entry.room.invited.remove(&target);
            entry.room.knocks.remove(&target);
        }
        let inside = entry.room.has(target);
        let room = entry.room.clone();
        let mut out = Outgoing::default();
        if inside {
            let why = if ban {
                RoomExit::Banned
            } else {
                RoomExit::Kicked
            };
            self.put_out(&mut state, id, target, why, Some(user), &mut out);
            self.release_idle_hold(&mut state, target, &mut out);
        } else if ban {
            let username = name.unwrap_or_else(|| state.party(target).username);
            self.event(&room, target, &username, "banned", Some(user));
        } else {
            return Err(AppError::Conflict("that user is not in this room".into()));
        }
        info!("room kick room_id={id} user_id={target} by={user} ban={ban}");
        self.commit(state, Before(Vec::new()), out);
        Ok(ban)
    }

    /// ROOM_UPDATE_REQUEST: the owner changes the room; participants are told.
    ///
    /// # Errors
    /// 403 not the owner, 400 bad settings, 500 storage.
    pub fn room_update(
        &self,
        conn: ConnId,
        user: UserId,
        id: RoomId,
        changes: RoomChanges,
        auth: &Authenticator,
    ) -> Result<RoomView, AppError> {
        if let Some(d) = &changes.description {
            validate_description(d).map_err(AppError::BadRequest)?;
        }
        if let Some(max) = changes.max_participants {
            self.check_capacity(max)?;
        }
        {
            let state = lock(&self.state);
            state.check_session(conn, user)?;
            if state.rooms.entry(id)?.room.owner != user {
                return Err(not_owner());
            }
        }
        let new_hash = match changes.password.as_deref() {
            None => None,
            Some("") => Some(None),
            Some(password) => Some(Some(auth.hash_room_password(password)?)),
        };
        let apply = |s: &mut RoomSettings| {
            if let Some(d) = &changes.description {
                s.description.clone_from(d);
            }
            if let Some(hash) = &new_hash {
                s.password_hash.clone_from(hash);
            }
            if let Some(v) = changes.invite_only {
                s.invite_only = v;
            }
            if let Some(v) = changes.max_participants {
                s.max_participants = v;
            }
            if let Some(v) = changes.members_invite {
                s.members_invite = v;
            }
        };
        // Disk first: the new record is written from a snapshot with the
        // change applied, and memory takes it only if the room did not change
        // meanwhile (otherwise again, from the newer state).
        loop {
            let (record, version) = {
                let state = lock(&self.state);
                let entry = state.rooms.entry(id)?;
                let mut room = entry.room.clone();
                apply(&mut room.settings);
                (RoomRecord::of(&room), entry.version)
            };
            let bytes = serde_json::to_vec(&record)
                .map_err(|err| AppError::Internal(format!("cannot encode the room: {err}")))?;
            self.rooms
                .stores
                .kv
                .put(ROOMS, &room_key(id), &bytes)
                .map_err(|err| storage_failed("could not store the room", &err))?;
            let mut state = lock(&self.state);
            let Ok(entry) = state.rooms.entry_mut(id) else {
                // Deleted meanwhile: the record just written must not bring it back.
                drop(state);
                let _ = self.rooms.stores.kv.delete(ROOMS, &room_key(id));
                return Err(AppError::NotFound("no such room".into()));
            };
            if entry.version == version {
                apply(&mut entry.room.settings);
                entry.version += 1;
                break;
            }
        }
        let mut state = lock(&self.state);
        let entry = state.rooms.entry(id)?;
        let shown = Arc::new(view(entry));
        let room = entry.room.clone();
        let username = state.party(user).username;
        self.event(&room, user, &username, "updated", None);
        let mut out = Outgoing::default();
        self.tell_all(
            &mut state,
            &room.participants,
            Notice::RoomUpdated(shown.clone()),
            &mut out,
        );
        self.commit(state, Before(Vec::new()), out);
        Ok((*shown).clone())
    }

    /// ROOM_DELETE_REQUEST: the room, its chat, events, invitations, bans and
    /// knocks go; participants get ROOM_DELETED.
    ///
    /// # Errors
    /// 403 not the owner, 500 if the deletion could not be written.
    pub fn room_delete(&self, conn: ConnId, user: UserId, id: RoomId) -> Result<(), AppError> {
        let room = {
            let mut state = lock(&self.state);
            state.check_session(conn, user)?;
            if state.rooms.entry(id)?.room.owner != user {
                return Err(not_owner());
            }
            let Some(entry) = state.rooms.by_id.remove(&id) else {
                return Err(AppError::NotFound("no such room".into()));
            };
            state.rooms.names.remove(&room_name_key(&entry.room.name));
            for member in &entry.room.participants {
                if let Some(rooms) = state.rooms.of_user.get_mut(member) {
                    rooms.remove(&id);
                    if rooms.is_empty() {
                        state.rooms.of_user.remove(member);
                    }
                }
            }
            let mut out = Outgoing::default();
            self.tell_all(
                &mut state,
                &entry.room.participants,
                Notice::RoomDeleted { room: id },
                &mut out,
            );
            for member in &entry.room.participants {
                self.release_idle_hold(&mut state, *member, &mut out);
            }
            // Behind every event already queued for it.
            let _ = self
                .rooms
                .events
                .send(EventJob::Drop(ConversationId(entry.room.event_log)));
            info!("room deleted room_id={id} by={user}");
            self.commit(state, Before(Vec::new()), out);
            entry.room
        };
        // The record goes last: should anything before it fail, the room
        // comes back at the next restart (and can be deleted again) rather
        // than leaving its chat and invitations behind unreachable.
        let stores = &self.rooms.stores;
        let failed = |err: StorageError| storage_failed("could not delete the room", &err);
        stores
            .logs
            .delete_log(ConversationId(room.chat_log))
            .map_err(failed)?;
        for ns in [INVITES, BANS, KNOCKS] {
            for (key, _) in stores
                .kv
                .list(ns, &format!("{:020}/", id.0))
                .map_err(failed)?
            {
                stores.kv.delete(ns, &key).map_err(failed)?;
            }
        }
        stores.kv.delete(ROOMS, &room_key(id)).map_err(failed)?;
        Ok(())
    }

    /// Ends a held session that has nothing left to come back to: no call
    /// and no room (it was kicked, or its last room deleted). It must not
    /// stay online, and callable, without a connection.
    fn release_idle_hold(&self, state: &mut HubState, user: UserId, out: &mut Outgoing) {
        let idle = state
            .online
            .get(&user)
            .is_some_and(|s| s.detached.is_some())
            && state.calls.call_of(user).is_none()
            && !state.rooms.is_in_any(user);
        if idle && let Some(session) = self.leave(state, user, Departure::NothingHeld, out) {
            info!("held session ended with its last room user_id={user}");
            out.gone.push((user, session.username));
        }
    }

    /// ROOM_MESSAGE_REQUEST: stores the message, then delivers it to every
    /// participant in `seq` order. Returns its seq once durable.
    ///
    /// # Errors
    /// 403 not a participant, 400 text or client id, 500 storage.
    pub fn room_message(
        &self,
        conn: ConnId,
        user: UserId,
        id: RoomId,
        text: &str,
        client_msg_id: Option<&str>,
    ) -> Result<u64, AppError> {
        let max = self.rooms.limits.max_text_bytes;
        if text.is_empty() {
            return Err(AppError::BadRequest("text is empty".into()));
        }
        if text.len() > max {
            return Err(AppError::BadRequest(format!("text is over {max} bytes")));
        }
        let client_id = client_msg_id.filter(|c| !c.is_empty());
        if client_id.is_some_and(|c| c.len() > MAX_CLIENT_MSG_ID) {
            return Err(AppError::BadRequest(format!(
                "client_msg_id is over {MAX_CLIENT_MSG_ID} bytes"
            )));
        }
        let (log, from) = {
            let state = lock(&self.state);
            state.check_session(conn, user)?;
            let room = &state.rooms.entry(id)?.room;
            if !room.has(user) {
                return Err(not_in_room());
            }
            (ConversationId(room.chat_log), state.party(user))
        };
        let body = serde_json::to_vec(&StoredLine {
            username: from.username.to_string(),
            text: text.to_string(),
        })
        .map_err(|err| AppError::Internal(err.to_string()))?;
        let sent_at = crate::clock::unix_millis();
        let appended = self
            .rooms
            .stores
            .logs
            .append(
                log,
                NewMessage {
                    sender: user,
                    sent_at,
                    client_id,
                    body: &body,
                },
            )
            .map_err(|err| storage_failed("could not store the message", &err))?;
        let seq = appended.seq;
        if appended.duplicate {
            return Ok(seq);
        }
        Metrics::count(&self.metrics.room_messages);
        let line = Arc::new(RoomLine {
            room: id,
            seq,
            from,
            text: Arc::from(text),
            sent_at,
        });
        let mut state = lock(&self.state);
        let mut out = Outgoing::default();
        let live = state
            .rooms
            .by_id
            .get(&id)
            .is_some_and(|e| e.room.chat_log == log.0);
        if !live {
            // Deleted while this was written: the append made the log
            // exist again; it goes with the room.
            drop(state);
            let _ = self.rooms.stores.logs.delete_log(log);
            return Err(AppError::NotFound("no such room".into()));
        }
        if let Some(entry) = state.rooms.by_id.get_mut(&id) {
            entry.pending.insert(seq, line);
            let mut ready = Vec::new();
            while let Some(next) = entry.pending.remove(&(entry.delivered + 1)) {
                entry.delivered += 1;
                ready.push(next);
            }
            let audience = entry.room.participants.clone();
            for line in ready {
                self.tell_all(&mut state, &audience, Notice::RoomMessage(line), &mut out);
            }
        }
        self.commit(state, Before(Vec::new()), out);
        let keep = self.rooms.limits.history_per_room;
        if seq > keep
            && let Err(err) = self.rooms.stores.logs.delete(log, seq - keep)
        {
            warn!("old room message not trimmed room_id={id}: {err}");
        }
        Ok(seq)
    }

    /// ROOM_HISTORY_REQUEST, for participants.
    ///
    /// # Errors
    /// 403 not a participant, 500 a page that cannot be read.
    pub fn room_history(
        &self,
        conn: ConnId,
        user: UserId,
        id: RoomId,
        anchor: Anchor,
        limit: usize,
    ) -> Result<LogPage, AppError> {
        let log = {
            let state = lock(&self.state);
            state.check_session(conn, user)?;
            let room = &state.rooms.entry(id)?.room;
            if !room.has(user) {
                return Err(not_in_room());
            }
            room.chat_log
        };
        self.read_log(log, anchor, limit, |body| {
            let line: StoredLine = serde_json::from_slice(body).ok()?;
            Some((line.username, line.text, None))
        })
    }

    /// ROOM_EVENTS_REQUEST, for the owner.
    ///
    /// # Errors
    /// 403 not the owner, 500 a page that cannot be read.
    pub fn room_events(
        &self,
        conn: ConnId,
        user: UserId,
        id: RoomId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<LogPage, AppError> {
        let log = {
            let state = lock(&self.state);
            state.check_session(conn, user)?;
            let room = &state.rooms.entry(id)?.room;
            if room.owner != user {
                return Err(not_owner());
            }
            room.event_log
        };
        self.read_log(
            log,
            Anchor::Before(before.unwrap_or(u64::MAX)),
            limit,
            |body| {
                let e: StoredEvent = serde_json::from_slice(body).ok()?;
                Some((e.username, e.event, e.by.map(UserId)))
            },
        )
    }

    /// A page of a log with `has_more`, no lock held.
    fn read_log(
        &self,
        log: u64,
        anchor: Anchor,
        limit: usize,
        decode: impl Fn(&[u8]) -> Option<(String, String, Option<UserId>)>,
    ) -> Result<LogPage, AppError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut page = self
            .rooms
            .stores
            .logs
            .page(ConversationId(log), anchor, limit + 1)
            .map_err(|err| storage_failed("could not read the history", &err))?;
        let has_more = page.len() > limit;
        if has_more {
            match anchor {
                Anchor::Before(_) => {
                    page.remove(0);
                }
                Anchor::After(_) => {
                    page.pop();
                }
            }
        }
        let lines = page
            .into_iter()
            .filter_map(|m| {
                let (username, text, by) = decode(&m.body)?;
                Some(LogLine {
                    seq: m.seq,
                    user: m.sender,
                    username,
                    text,
                    at: m.sent_at,
                    by,
                })
            })
            .collect();
        Ok(LogPage { lines, has_more })
    }

    /// The id source rooms use (guests take theirs from it too).
    pub(super) fn rooms_ids(&self) -> &Arc<dyn IdSource> {
        &self.rooms.stores.ids
    }

    /// The rooms `user` is in (for a RESUME's answer).
    pub fn rooms_of(&self, user: UserId) -> Vec<RoomId> {
        lock(&self.state).rooms.rooms_of(user)
    }

    /// Rooms and their participants, for metrics.
    pub fn room_counts(&self) -> (usize, usize) {
        lock(&self.state).rooms.counts()
    }
}

/// The scope of room signaling (for the tcp layer's relay builder).
pub fn room_scope(id: RoomId) -> Scope {
    Scope::Room(id)
}
