//! Payloads of the user list and presence updates.

use serde::{Deserialize, Serialize};

use super::ReqId;

/// One entry of USER_LIST_RESPONSE: flat, as the v1 client's text search needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEntry {
    pub user_id: String,
    pub username: String,
    pub state: String,
}

/// USER_LIST_RESPONSE as the server writes it: borrowed from the hub's list,
/// so a list of thousands of users is encoded without a string per entry.
/// Encodes exactly as [`UserList`].
#[derive(Serialize)]
pub struct UserListView<'a> {
    pub users: &'a [UserEntryView],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub req_id: Option<&'a ReqId>,
}

/// A user id as a JSON string of its digits, without an allocation.
struct Digits(crate::domain::UserId);

impl Serialize for Digits {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// One entry of [`UserListView`].
pub struct UserEntryView {
    pub user_id: crate::domain::UserId,
    pub username: std::sync::Arc<str>,
    pub state: crate::domain::UserState,
}

impl Serialize for UserEntryView {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut entry = s.serialize_struct("UserEntry", 3)?;
        // collect_str writes the digits straight into the output, quoted.
        entry.serialize_field("user_id", &Digits(self.user_id))?;
        entry.serialize_field("username", &*self.username)?;
        entry.serialize_field("state", self.state.as_str())?;
        entry.end()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserList {
    pub users: Vec<UserEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserStateUpdate {
    pub user_id: String,
    pub username: String,
    pub state: String,
}
