//! The one-shot requests: register, login, the user list and ping, and the
//! waiting for an answer that every request shares.
//!
//! Each sends one request and waits for its answer, skipping what the server
//! pushes meanwhile (presence updates). An ERROR instead of the answer, or a
//! LOGIN/REGISTER response with `success:false`, is a [`ClientError::Server`].

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::{ClientError, Connection, Frame};
use crate::tcp::message::{
    AuthResponse, Credentials, Empty, ErrorMessage, Heartbeat, MessageType, Request, ServerMessage,
    UserList,
};

/// A user as LOGIN_RESPONSE and REGISTER_RESPONSE name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub user_id: String,
    pub username: String,
}

/// What answered a request: the expected frame, or the ERROR the server sent instead.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Answer(Frame),
    Refused { frame: Frame, error: ErrorMessage },
}

impl From<ErrorMessage> for ClientError {
    fn from(e: ErrorMessage) -> ClientError {
        ClientError::Server {
            code: Some(e.code),
            message: e.message,
        }
    }
}

/// Waits for the frame of type `kind` or an ERROR, handing every other frame
/// (pushes) to `other` in the order they came.
///
/// # Errors
/// As [`Connection::recv`]; [`ClientError::Protocol`] for an ERROR that does not decode.
pub fn await_reply(
    conn: &mut Connection,
    kind: MessageType,
    deadline: Instant,
    other: &mut dyn FnMut(Frame),
) -> Result<Reply, ClientError> {
    loop {
        let frame = conn.recv(deadline, kind.name())?;
        if frame.is(kind) {
            return Ok(Reply::Answer(frame));
        }
        if frame.is(MessageType::Error) {
            return match frame.decode()? {
                ServerMessage::Error(error) => Ok(Reply::Refused { frame, error }),
                _ => Err(ClientError::Protocol("ERROR frame without an error".into())),
            };
        }
        other(frame);
    }
}

/// Waits for the frame of type `kind`, skipping pushes of other types.
///
/// # Errors
/// [`ClientError::Server`] if an ERROR comes first; otherwise as [`Connection::recv`].
pub fn await_answer(
    conn: &mut Connection,
    kind: MessageType,
    deadline: Instant,
) -> Result<Frame, ClientError> {
    match await_reply(conn, kind, deadline, &mut |_| {})? {
        Reply::Answer(frame) => Ok(frame),
        Reply::Refused { error, .. } => Err(error.into()),
    }
}

fn credentials(username: &str, secret: &str) -> Credentials {
    Credentials {
        username: username.to_string(),
        password_hash: secret.to_string(),
        req_id: None,
    }
}

/// REGISTER_REQUEST: creates an account; the server answers once it is on disk.
///
/// # Errors
/// [`ClientError::Server`] when the server refuses (name taken, bad name); I/O
/// and timeouts as [`Connection::recv`].
pub fn register(
    conn: &mut Connection,
    username: &str,
    secret: &str,
    deadline: Instant,
) -> Result<Account, ClientError> {
    let request = Request::Register(credentials(username, secret));
    authenticate(conn, &request, MessageType::RegisterResponse, deadline)
}

/// LOGIN_REQUEST. The server ends any other session of the same user.
///
/// # Errors
/// [`ClientError::Server`] for wrong credentials; I/O and timeouts as [`Connection::recv`].
pub fn login(
    conn: &mut Connection,
    username: &str,
    secret: &str,
    deadline: Instant,
) -> Result<Account, ClientError> {
    let request = Request::Login(credentials(username, secret));
    authenticate(conn, &request, MessageType::LoginResponse, deadline)
}

fn authenticate(
    conn: &mut Connection,
    request: &Request,
    answer: MessageType,
    deadline: Instant,
) -> Result<Account, ClientError> {
    conn.send(request, deadline)?;
    match await_answer(conn, answer, deadline)?.decode()? {
        ServerMessage::LoginResponse(r) | ServerMessage::RegisterResponse(r) => account(r),
        other => Err(ClientError::Protocol(format!(
            "expected {}, got {}",
            answer.name(),
            other.message_type().name()
        ))),
    }
}

/// The account a successful response names, or the server's refusal.
///
/// # Errors
/// [`ClientError::Server`] for `success:false`, [`ClientError::Protocol`] for a
/// success that names no user.
pub fn account(response: AuthResponse) -> Result<Account, ClientError> {
    if !response.success {
        return Err(ClientError::Server {
            code: response.code,
            message: response
                .error
                .unwrap_or_else(|| "refused without a reason".into()),
        });
    }
    match (response.user_id, response.username) {
        (Some(user_id), Some(username)) => Ok(Account { user_id, username }),
        _ => Err(ClientError::Protocol(
            "a successful response without user_id and username".into(),
        )),
    }
}

/// LOGOUT_REQUEST: ends the session before the connection closes, so the user
/// is offline as soon as this returns (a closed connection is noticed later).
///
/// # Errors
/// [`ClientError::Server`] if the server refuses (no session, taken over); I/O
/// and timeouts as [`Connection::recv`].
pub fn logout(conn: &mut Connection, deadline: Instant) -> Result<(), ClientError> {
    conn.send(&Request::Logout(Empty::default()), deadline)?;
    match await_answer(conn, MessageType::LogoutResponse, deadline)?.decode()? {
        ServerMessage::LogoutResponse(r) if r.success => Ok(()),
        ServerMessage::LogoutResponse(r) => Err(ClientError::Server {
            code: None,
            message: r.error.unwrap_or_else(|| "logout refused".into()),
        }),
        _ => Err(ClientError::Protocol("expected LOGOUT_RESPONSE".into())),
    }
}

/// USER_LIST_REQUEST (needs a login): the list, and the payload exactly as received.
///
/// # Errors
/// [`ClientError::Server`] if the server refuses (not logged in); I/O and timeouts
/// as [`Connection::recv`].
pub fn user_list(
    conn: &mut Connection,
    deadline: Instant,
) -> Result<(UserList, String), ClientError> {
    conn.send(&Request::UserList(Empty::default()), deadline)?;
    let frame = await_answer(conn, MessageType::UserListResponse, deadline)?;
    let ServerMessage::UserListResponse(list) = frame.decode()? else {
        return Err(ClientError::Protocol("expected USER_LIST_RESPONSE".into()));
    };
    let raw = String::from_utf8_lossy(&frame.payload).into_owned();
    Ok((list, raw))
}

/// One line per user: `ID<TAB>USERNAME<TAB>STATE`.
pub fn format_user_list(list: &UserList) -> String {
    let mut out = String::new();
    for user in &list.users {
        let _ = writeln!(out, "{}\t{}\t{}", user.user_id, user.username, user.state);
    }
    out
}

/// HEARTBEAT round trips. Works without a login.
#[derive(Debug, Default)]
pub struct Pinger {
    last: u64,
}

impl Pinger {
    /// Sends a HEARTBEAT and waits for the one echoing its timestamp; returns the
    /// round-trip time. Timestamps are Unix milliseconds, made unique per ping.
    ///
    /// # Errors
    /// [`ClientError::Server`] if an ERROR comes back; I/O and timeouts as
    /// [`Connection::recv`].
    pub fn ping(
        &mut self,
        conn: &mut Connection,
        deadline: Instant,
    ) -> Result<Duration, ClientError> {
        let now_ms = crate::clock::unix_millis();
        let timestamp = now_ms.max(self.last + 1);
        self.last = timestamp;
        let request = Request::Heartbeat(Heartbeat {
            timestamp: Some(timestamp.into()),
            server_time: None,
            req_id: None,
        });
        let sent = Instant::now();
        conn.send(&request, deadline)?;
        loop {
            let frame = await_answer(conn, MessageType::Heartbeat, deadline)?;
            if let ServerMessage::Heartbeat(h) = frame.decode()?
                && h.timestamp.as_ref().and_then(|t| t.as_u64()) == Some(timestamp)
            {
                return Ok(sent.elapsed());
            }
        }
    }
}

/// `pong 0.213 ms`.
pub fn format_pong(rtt: Duration) -> String {
    format!("pong {:.3} ms", rtt.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::message::UserEntry;

    /// A refusal carries the server's message and code; a success names the user.
    #[test]
    fn responses_become_accounts_or_server_errors() {
        let ok = AuthResponse {
            success: true,
            user_id: Some("1".into()),
            username: Some("alice".into()),
            ..Default::default()
        };
        assert_eq!(
            account(ok).unwrap(),
            Account {
                user_id: "1".into(),
                username: "alice".into()
            }
        );
        let refused = AuthResponse {
            success: false,
            error: Some("username is taken".into()),
            code: Some(409),
            ..Default::default()
        };
        match account(refused) {
            Err(ClientError::Server { code, message }) => {
                assert_eq!((code, message.as_str()), (Some(409), "username is taken"));
            }
            other => panic!("{other:?}"),
        }
        let nameless = AuthResponse {
            success: true,
            ..Default::default()
        };
        assert!(matches!(account(nameless), Err(ClientError::Protocol(_))));
    }

    /// The user list prints one tab-separated line per user.
    #[test]
    fn the_user_list_prints_tab_separated_lines() {
        let list = UserList {
            users: vec![
                UserEntry {
                    user_id: "1".into(),
                    username: "alice".into(),
                    state: "Available".into(),
                },
                UserEntry {
                    user_id: "2".into(),
                    username: "bob".into(),
                    state: "Disconnected".into(),
                },
            ],
            req_id: None,
        };
        assert_eq!(
            format_user_list(&list),
            "1\talice\tAvailable\n2\tbob\tDisconnected\n"
        );
    }

    /// Round-trip times print in milliseconds with three decimals.
    #[test]
    fn pongs_print_milliseconds() {
        assert_eq!(format_pong(Duration::from_micros(213)), "pong 0.213 ms");
        assert_eq!(format_pong(Duration::from_millis(12)), "pong 12.000 ms");
    }
}
