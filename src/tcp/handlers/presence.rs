//! The user list.

use super::*;

impl Connection {
    /// USER_LIST_REQUEST.
    pub(super) fn presence(&mut self, user: Option<UserId>, request: Request) -> Reply {
        let hub = self.shared.hub.clone();
        match request {
            Request::UserList(e) => {
                user.ok_or(AppError::LoginRequired)?;
                let users: Vec<UserEntryView> = hub
                    .user_list()
                    .into_iter()
                    .map(|(user_id, username, state)| UserEntryView {
                        user_id,
                        username,
                        state,
                    })
                    .collect();
                let view = UserListView {
                    users: &users,
                    req_id: e.req_id.as_ref(),
                };
                self.reply_frame(
                    MessageType::UserListResponse,
                    &frame::encode_json(MessageType::UserListResponse.code(), &view),
                );
                Ok(None)
            }
            other => Err(misrouted(&other)),
        }
    }
}
