//! Rooms: a named place several users join, each pair of participants
//! opening one WebRTC connection (a full mesh).
//!
//! The rules live here with no I/O: who may enter (owner, invitation,
//! password, ban, capacity), who offers to whom (the joiner offers to every
//! participant already there, so no pair ever has two offerers), who may
//! invite, kick and change the room. The application keeps the durable
//! records and delivers the notices.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::user::UserId;

/// A room's identifier; on the wire a JSON string of decimal digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(pub u64);

impl RoomId {
    pub fn parse(text: &str) -> Option<RoomId> {
        if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok().filter(|id| *id > 0).map(RoomId)
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The limits of `rooms.*` in the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomLimits {
    /// `max_participants` of a room created without one.
    pub default_participants: u32,
    /// The largest `max_participants` a room may have.
    pub max_participants: u32,
    /// Rooms one user may own.
    pub max_rooms_per_owner: usize,
    /// Chat messages kept per room; older ones are deleted.
    pub history_per_room: u64,
    /// Events kept per room (joins, leaves, kicks); older ones are deleted.
    pub events_per_room: u64,
    /// The longest chat message, in bytes of UTF-8.
    pub max_text_bytes: usize,
    /// Pending invitations per room.
    pub max_invitations_per_room: usize,
    /// Knocks one user may make per minute (any rooms).
    pub knocks_per_minute: u32,
}

impl Default for RoomLimits {
    fn default() -> RoomLimits {
        RoomLimits {
            default_participants: 8,
            max_participants: 16,
            max_rooms_per_owner: 10,
            history_per_room: 10_000,
            events_per_room: 1_000,
            max_text_bytes: 4_000,
            max_invitations_per_room: 500,
            knocks_per_minute: 5,
        }
    }
}

/// The longest room name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// The longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 500;
/// The longest knock text, in characters.
pub const MAX_KNOCK_CHARS: usize = 500;

/// Checks a room name: 1 to 64 characters, letters (any script), digits,
/// spaces and `-_.'()&`, not starting or ending with a space, no two spaces
/// in a row.
///
/// # Errors
/// What is wrong, for the client.
pub fn validate_room_name(name: &str) -> Result<(), String> {
    let chars = name.chars().count();
    if chars == 0 {
        return Err("a room name cannot be empty".into());
    }
    if chars > MAX_NAME_CHARS {
        return Err(format!(
            "a room name has at most {MAX_NAME_CHARS} characters"
        ));
    }
    if name.starts_with(' ') || name.ends_with(' ') || name.contains("  ") {
        return Err("a room name cannot start or end with a space or hold two in a row".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_alphanumeric() || *c == ' ' || "-_.'()&".contains(*c)))
    {
        return Err(format!(
            "a room name may hold letters, digits, spaces and -_.'()& only, not {bad:?}"
        ));
    }
    Ok(())
}

/// The key names are unique by: the name without case.
pub fn room_name_key(name: &str) -> String {
    name.to_lowercase()
}

/// Checks a description.
///
/// # Errors
/// What is wrong, for the client.
pub fn validate_description(text: &str) -> Result<(), String> {
    if text.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(format!(
            "a description has at most {MAX_DESCRIPTION_CHARS} characters"
        ));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err("a description cannot hold control characters".into());
    }
    Ok(())
}

/// What the owner decides about a room (ROOM_CREATE, ROOM_UPDATE).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomSettings {
    pub description: String,
    /// The bcrypt hash of the room password, if it has one.
    pub password_hash: Option<String>,
    pub invite_only: bool,
    pub max_participants: u32,
    /// Participants other than the owner may invite.
    pub members_invite: bool,
}

/// Why someone may not enter a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Banned,
    /// Invite-only, and no invitation.
    NotInvited,
    /// A password is needed and was not given or was wrong.
    Password,
    Full,
    AlreadyIn,
}

impl Refusal {
    /// The metric label and log word.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Banned => "banned",
            Refusal::NotInvited => "not_invited",
            Refusal::Password => "password",
            Refusal::Full => "full",
            Refusal::AlreadyIn => "already_in",
        }
    }
}

/// How a user gets past a room's door.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Door {
    /// No password needed: the owner, an invited user, or an open room.
    Open,
    /// The room's password must be checked against this hash.
    Password(String),
}

/// A pending invitation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Invitation {
    pub from: UserId,
    /// Unix milliseconds.
    pub at: u64,
}

/// A pending knock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Knock {
    pub text: String,
    /// Unix milliseconds.
    pub at: u64,
}

/// One room: its durable description and who is in it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Room {
    pub id: RoomId,
    pub name: String,
    pub owner: UserId,
    /// Unix milliseconds.
    pub created_at: u64,
    pub settings: RoomSettings,
    /// The conversation log of its chat.
    pub chat_log: u64,
    /// The conversation log of its events.
    pub event_log: u64,
    /// In the order they joined.
    pub participants: Vec<UserId>,
    pub invited: BTreeMap<UserId, Invitation>,
    pub banned: BTreeSet<UserId>,
    pub knocks: BTreeMap<UserId, Knock>,
}

impl Room {
    pub fn has(&self, user: UserId) -> bool {
        self.participants.contains(&user)
    }

    /// Who may see the room in ROOM_LIST: everyone for a public room; the
    /// owner, the invited and the participants of an invite-only one.
    pub fn visible_to(&self, user: UserId) -> bool {
        !self.settings.invite_only
            || self.owner == user
            || self.invited.contains_key(&user)
            || self.has(user)
    }

    /// How `user` gets in, or why not. The owner always gets in (no
    /// password, no invitation, past a ban list that cannot name them, even
    /// into a full room: they are never locked out of their own room).
    ///
    /// # Errors
    /// The refusal.
    pub fn door(&self, user: UserId) -> Result<Door, Refusal> {
        if self.has(user) {
            return Err(Refusal::AlreadyIn);
        }
        if self.owner == user {
            return Ok(Door::Open);
        }
        if self.banned.contains(&user) {
            return Err(Refusal::Banned);
        }
        if self.participants.len() >= self.settings.max_participants as usize {
            return Err(Refusal::Full);
        }
        if self.invited.contains_key(&user) {
            return Ok(Door::Open);
        }
        if self.settings.invite_only {
            return Err(Refusal::NotInvited);
        }
        Ok(match &self.settings.password_hash {
            Some(hash) => Door::Password(hash.clone()),
            None => Door::Open,
        })
    }

    /// Adds `user` (whose door was checked) and returns who was there before:
    /// the joiner offers to each of them, they offer to nobody. An invitation
    /// is used up.
    pub fn join(&mut self, user: UserId) -> Vec<UserId> {
        let before = self.participants.clone();
        self.participants.push(user);
        self.invited.remove(&user);
        self.knocks.remove(&user);
        before
    }

    /// Removes `user`; whether they were in.
    pub fn leave(&mut self, user: UserId) -> bool {
        let len = self.participants.len();
        self.participants.retain(|u| *u != user);
        self.participants.len() != len
    }

    /// May `user` invite others?
    pub fn may_invite(&self, user: UserId) -> bool {
        self.owner == user || (self.settings.members_invite && self.has(user))
    }

    /// May `user` knock? Those who could walk in (the owner, the invited) or
    /// are in, or banned, may not.
    ///
    /// # Errors
    /// Why not, for the client.
    pub fn may_knock(&self, user: UserId) -> Result<(), &'static str> {
        if self.owner == user || self.has(user) {
            return Err("you are already able to enter this room");
        }
        if self.banned.contains(&user) {
            return Err("you are banned from this room");
        }
        if self.invited.contains_key(&user) {
            return Err("you are invited already; join the room");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(owner: u64) -> Room {
        Room {
            id: RoomId(1),
            name: "Team".into(),
            owner: UserId(owner),
            created_at: 0,
            settings: RoomSettings {
                description: String::new(),
                password_hash: None,
                invite_only: false,
                max_participants: 3,
                members_invite: false,
            },
            chat_log: 1,
            event_log: 2,
            participants: Vec::new(),
            invited: BTreeMap::new(),
            banned: BTreeSet::new(),
            knocks: BTreeMap::new(),
        }
    }

    /// The joiner offers to everyone already there, so every pair of a mesh
    /// has exactly one offerer whatever the join order.
    #[test]
    fn every_pair_gets_exactly_one_offerer() {
        let mut r = room(1);
        r.settings.max_participants = 8;
        let mut offers = BTreeSet::new();
        for user in 1..=6 {
            for earlier in r.join(UserId(user)) {
                assert!(offers.insert((user, earlier.0)));
                assert!(!offers.contains(&(earlier.0, user)));
            }
        }
        assert_eq!(offers.len(), 15, "6 participants make 15 pairs");
    }

    /// The owner gets in without the password, past capacity.
    #[test]
    fn the_owner_is_never_locked_out() {
        let mut r = room(1);
        r.settings.password_hash = Some("hash".into());
        r.settings.invite_only = true;
        for user in 2..=4 {
            r.participants.push(UserId(user));
        }
        assert_eq!(r.door(UserId(1)), Ok(Door::Open));
        assert_eq!(r.door(UserId(5)), Err(Refusal::Full));
    }

    /// Invite-only admits the invited without a password; a ban wins over
    /// an invitation; a password room asks for the hash.
    #[test]
    fn the_door_follows_invitations_bans_and_passwords() {
        let mut r = room(1);
        r.settings.password_hash = Some("hash".into());
        assert_eq!(r.door(UserId(2)), Ok(Door::Password("hash".into())));
        r.settings.invite_only = true;
        assert_eq!(r.door(UserId(2)), Err(Refusal::NotInvited));
        r.invited.insert(
            UserId(2),
            Invitation {
                from: UserId(1),
                at: 0,
            },
        );
        assert_eq!(r.door(UserId(2)), Ok(Door::Open));
        r.banned.insert(UserId(2));
        assert_eq!(r.door(UserId(2)), Err(Refusal::Banned));
    }

    /// Names follow the documented rules.
    #[test]
    fn room_names_follow_the_rules() {
        assert!(validate_room_name("Design review (weekly)").is_ok());
        assert!(validate_room_name("Café & Co").is_ok());
        for bad in ["", " x", "x ", "a  b", "a/b", "tab\there", &"x".repeat(65)] {
            assert!(validate_room_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(room_name_key("Team"), room_name_key("TEAM"));
    }
}
