//! Logging in, as `login`, `users` and `session` do: connect, say HELLO
//! (protocol 2, unless the caller speaks protocol 1 on purpose), then log in
//! with a password (LOGIN_REQUEST), a session token (RESUME_REQUEST) or as a
//! guest (GUEST_LOGIN_REQUEST), or not at all.
//!
//! A token the server refuses with 401 (expired, revoked, forged) falls back to
//! the password when the caller can supply one; [`log_in`] asks for it only
//! then, so a run with a good token never needs the password. When the
//! password has to be typed at a prompt, the login starts over on a new
//! connection afterwards: typing must count neither against `--timeout` nor
//! against the server's login timeout.
//!
//! The frames of the login are collected, not printed: a session prints those
//! of the attempt that counted (a refused token's ERROR is left out when the
//! password login after it succeeds).

use std::time::{Duration, Instant};

use super::commands::{Account, Reply, account, await_reply};
use super::token::StoredToken;
use super::{ClientError, ConnectOptions, Connection, Frame};
use crate::tcp::message::{
    AuthResponse, Credentials, ErrorMessage, GuestLogin, Hello, MessageType, Request, Resume,
    ServerMessage, Welcome,
};

/// HELLO's `client_name`.
pub const CLIENT_NAME: &str = concat!("switchboard-cli ", env!("CARGO_PKG_VERSION"));

/// The protocol version HELLO asks for.
pub const PROTOCOL_VERSION: u32 = 2;

/// Added to a refused HELLO: the server may not know protocol 2.
pub const PROTOCOL_1_HINT: &str =
    "the server may speak only protocol 1: try --protocol 1 (no session tokens, no guests)";

/// How to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// Stay anonymous (HELLO only, if any).
    None,
    Password {
        username: String,
        secret: String,
    },
    /// RESUME_REQUEST with a stored token; a 401 asks the fallback for a password.
    Token(StoredToken),
    Guest {
        display_name: String,
    },
}

/// The password to log in with after a refused token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    pub username: String,
    pub secret: String,
    /// It was typed at a prompt: start over on a new connection.
    pub typed: bool,
}

/// Asked when the server refuses the token with 401: the password, or `None`
/// when there is none (the login then fails with the server's 401).
pub type AskFallback<'a> = dyn FnMut(&ErrorMessage) -> Result<Option<Fallback>, ClientError> + 'a;

/// A connection that is logged in as asked.
pub struct LoggedIn {
    pub conn: Connection,
    /// When the connection that counted was opened: deadlines count from here.
    pub started: Instant,
    /// Every frame received, in order, on the connection that counted.
    pub frames: Vec<Frame>,
    /// The server's WELCOME (protocol 2).
    pub welcome: Option<Welcome>,
    /// The login's answer; `None` for [`Method::None`].
    pub response: Option<AuthResponse>,
    /// The user logged in as; `None` for [`Method::None`].
    pub account: Option<Account>,
    /// The login was by token (no fallback to the password was needed).
    pub resumed: bool,
}

impl LoggedIn {
    /// The token the login handed out, if any (not for guests, nor in protocol 1).
    pub fn token(&self) -> Option<StoredToken> {
        self.response.as_ref().and_then(StoredToken::from_response)
    }
}

/// A failed login, with the frames received before it failed.
#[derive(Debug)]
pub struct LoginFailed {
    pub frames: Vec<Frame>,
    pub error: ClientError,
}

impl From<ClientError> for LoginFailed {
    fn from(error: ClientError) -> LoginFailed {
        LoginFailed {
            frames: Vec::new(),
            error,
        }
    }
}

/// Where and how: the target, whether to say HELLO, and how long each
/// attempt may take.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub options: &'a ConnectOptions,
    pub hello: bool,
    pub timeout: Duration,
}

/// One connection being logged in.
struct Attempt {
    conn: Connection,
    started: Instant,
    deadline: Instant,
    frames: Vec<Frame>,
    welcome: Option<Welcome>,
}

impl Attempt {
    fn open(target: &Target<'_>) -> Result<Attempt, LoginFailed> {
        let started = Instant::now();
        let deadline = started + target.timeout;
        let conn = Connection::connect(target.options, deadline)?;
        let mut attempt = Attempt {
            conn,
            started,
            deadline,
            frames: Vec::new(),
            welcome: None,
        };
        if target.hello
            && let Err(e) = attempt.hello()
        {
            return Err(attempt.fail(e));
        }
        Ok(attempt)
    }

    fn fail(self, error: ClientError) -> LoginFailed {
        LoginFailed {
            frames: self.frames,
            error,
        }
    }

    /// Sends `request` and waits for `kind` or an ERROR; frames in between are kept.
    fn exchange(&mut self, request: &Request, kind: MessageType) -> Result<Reply, ClientError> {
        self.conn.send(request, self.deadline)?;
        let frames = &mut self.frames;
        await_reply(&mut self.conn, kind, self.deadline, &mut |f| frames.push(f))
    }

    /// HELLO, answered by WELCOME. A refusal with 400 (an unknown type to an
    /// older server) comes with the hint to speak protocol 1.
    fn hello(&mut self) -> Result<(), ClientError> {
        let hello = Request::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: Some(CLIENT_NAME.into()),
            capabilities: Vec::new(),
            req_id: None,
        });
        match self.exchange(&hello, MessageType::Welcome)? {
            Reply::Answer(frame) => {
                let decoded = frame.decode();
                self.frames.push(frame);
                match decoded? {
                    ServerMessage::Welcome(welcome) => {
                        self.welcome = Some(welcome);
                        Ok(())
                    }
                    _ => Err(ClientError::Protocol("expected WELCOME".into())),
                }
            }
            Reply::Refused { frame, error } => {
                self.frames.push(frame);
                let message = if error.code == 400 {
                    format!("{}\nhint: {PROTOCOL_1_HINT}", error.message)
                } else {
                    error.message
                };
                Err(ClientError::Server {
                    code: Some(error.code),
                    message,
                })
            }
        }
    }

    /// Sends a login request answered by LOGIN_RESPONSE (or ERROR).
    fn log_in(mut self, request: &Request) -> Result<LoggedIn, LoginFailed> {
        match self.exchange(request, MessageType::LoginResponse) {
            Ok(Reply::Answer(frame)) => self.answered(frame),
            Ok(Reply::Refused { frame, error }) => {
                self.frames.push(frame);
                Err(self.fail(error.into()))
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    fn answered(mut self, frame: Frame) -> Result<LoggedIn, LoginFailed> {
        let decoded = frame.decode();
        self.frames.push(frame);
        let response = match decoded {
            Ok(ServerMessage::LoginResponse(response)) => response,
            Ok(_) => return Err(self.fail(ClientError::Protocol("expected LOGIN_RESPONSE".into()))),
            Err(e) => return Err(self.fail(e)),
        };
        match account(response.clone()) {
            Ok(account) => Ok(LoggedIn {
                conn: self.conn,
                started: self.started,
                frames: self.frames,
                welcome: self.welcome,
                response: Some(response),
                account: Some(account),
                resumed: false,
            }),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn done(self) -> LoggedIn {
        LoggedIn {
            conn: self.conn,
            started: self.started,
            frames: self.frames,
            welcome: self.welcome,
            response: None,
            account: None,
            resumed: false,
        }
    }
}

fn password_login(username: &str, secret: &str) -> Request {
    Request::Login(Credentials {
        username: username.to_string(),
        password_hash: secret.to_string(),
        req_id: None,
    })
}

/// Connects and logs in as `method` says.
///
/// # Errors
/// [`LoginFailed`] with the frames received, and why: [`ClientError::Server`]
/// for a refusal (a wrong password, a token refused without a fallback, a
/// guest name taken), or the connection's errors.
pub fn log_in(
    target: &Target<'_>,
    method: &Method,
    fallback: &mut AskFallback<'_>,
) -> Result<LoggedIn, LoginFailed> {
    let attempt = Attempt::open(target)?;
    match method {
        Method::None => Ok(attempt.done()),
        Method::Password { username, secret } => attempt.log_in(&password_login(username, secret)),
        Method::Guest { display_name } => attempt.log_in(&Request::GuestLogin(GuestLogin {
            display_name: display_name.clone(),
            req_id: None,
        })),
        Method::Token(token) => resume(attempt, target, token, fallback),
    }
}

fn resume(
    mut attempt: Attempt,
    target: &Target<'_>,
    token: &StoredToken,
    fallback: &mut AskFallback<'_>,
) -> Result<LoggedIn, LoginFailed> {
    let request = Request::Resume(Resume {
        session_token: token.session_token.clone(),
        req_id: None,
    });
    let (frame, error) = match attempt.exchange(&request, MessageType::LoginResponse) {
        Ok(Reply::Answer(frame)) => {
            let mut logged_in = attempt.answered(frame)?;
            logged_in.resumed = true;
            return Ok(logged_in);
        }
        Ok(Reply::Refused { frame, error }) => (frame, error),
        Err(e) => return Err(attempt.fail(e)),
    };
    if error.code != 401 {
        attempt.frames.push(frame);
        return Err(attempt.fail(error.into()));
    }
    let password = match fallback(&error) {
        Ok(Some(password)) => password,
        Ok(None) => {
            attempt.frames.push(frame);
            return Err(attempt.fail(error.into()));
        }
        Err(e) => {
            attempt.frames.push(frame);
            return Err(attempt.fail(e));
        }
    };
    let login = password_login(&password.username, &password.secret);
    if password.typed {
        attempt.conn.close();
        return Attempt::open(target)?.log_in(&login);
    }
    attempt.log_in(&login)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::thread;

    use super::*;

    /// A scripted server: for each connection, answers each frame it reads with
    /// the next frame of its script (type, JSON payload), then waits for the close.
    /// Returns the address and a handle that yields the (type, payload) received.
    fn fake_server(
        script: Vec<Vec<(MessageType, &'static str)>>,
    ) -> (u16, thread::JoinHandle<Vec<(u8, String)>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = thread::spawn(move || {
            let mut received = Vec::new();
            for answers in script {
                let (mut s, _) = listener.accept().unwrap();
                for (kind, payload) in answers {
                    received.push(read_frame(&mut s));
                    let mut frame = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
                    frame.push(kind.code());
                    frame.extend_from_slice(payload.as_bytes());
                    s.write_all(&frame).unwrap();
                }
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
            }
            received
        });
        (port, handle)
    }

    fn read_frame(s: &mut TcpStream) -> (u8, String) {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).unwrap();
        (body[0], String::from_utf8(body[1..].to_vec()).unwrap())
    }

    const WELCOME: &str = r#"{"server_name":"s","server_version":"1","protocol_version":2,"capabilities":[],"max_frame_bytes":1024,"heartbeat_interval_secs":30,"idle_timeout_secs":60}"#;
    const LOGGED_IN: &str = r#"{"success":true,"user_id":"1","username":"alice","session_token":"sb1.new","expires_at":9}"#;

    fn options(port: u16) -> ConnectOptions {
        ConnectOptions {
            host: "127.0.0.1".into(),
            port,
            tls: None,
        }
    }

    fn stored() -> StoredToken {
        StoredToken {
            username: "alice".into(),
            user_id: "1".into(),
            session_token: "sb1.old".into(),
            expires_at: None,
        }
    }

    /// A server that does not know HELLO (ERROR 400) fails the login with the
    /// hint to speak protocol 1, and the ERROR is among the frames to print.
    #[test]
    fn a_refused_hello_hints_at_protocol_1() {
        let (port, server) = fake_server(vec![vec![(
            MessageType::Error,
            r#"{"code":400,"message":"unknown message type 0x15"}"#,
        )]]);
        let options = options(port);
        let target = Target {
            options: &options,
            hello: true,
            timeout: Duration::from_secs(10),
        };
        let method = Method::Password {
            username: "alice".into(),
            secret: "pw".into(),
        };
        let Err(failed) = log_in(&target, &method, &mut |_| panic!("no token here")) else {
            panic!("the login went through");
        };
        assert_eq!(failed.error.exit_code(), 1);
        let message = failed.error.to_string();
        assert!(message.contains("unknown message type 0x15"), "{message}");
        assert!(message.contains(PROTOCOL_1_HINT), "{message}");
        assert_eq!(failed.frames.len(), 1);
        assert!(failed.frames[0].is(MessageType::Error));
        let received = server.join().unwrap();
        assert_eq!(received[0].0, MessageType::Hello.code());
        assert!(
            received[0].1.contains(r#""protocol_version":2"#),
            "{:?}",
            received
        );
        assert!(received[0].1.contains(CLIENT_NAME), "{:?}", received);
    }

    /// A token refused with 401 asks for the password; a typed one logs in on a
    /// new connection, whose frames alone are kept; one given on the command line
    /// logs in on the same connection.
    #[test]
    fn a_refused_token_falls_back_on_the_same_or_a_new_connection() {
        let refused = r#"{"code":401,"message":"session token expired"}"#;
        for typed in [true, false] {
            let script = if typed {
                vec![
                    vec![
                        (MessageType::Welcome, WELCOME),
                        (MessageType::Error, refused),
                    ],
                    vec![
                        (MessageType::Welcome, WELCOME),
                        (MessageType::LoginResponse, LOGGED_IN),
                    ],
                ]
            } else {
                vec![vec![
                    (MessageType::Welcome, WELCOME),
                    (MessageType::Error, refused),
                    (MessageType::LoginResponse, LOGGED_IN),
                ]]
            };
            let (port, server) = fake_server(script);
            let options = options(port);
            let target = Target {
                options: &options,
                hello: true,
                timeout: Duration::from_secs(10),
            };
            let mut asked = Vec::new();
            let logged_in = log_in(&target, &Method::Token(stored()), &mut |refusal| {
                asked.push(refusal.message.clone());
                Ok(Some(Fallback {
                    username: "alice".into(),
                    secret: "pw".into(),
                    typed,
                }))
            })
            .map_err(|f| f.error)
            .unwrap();
            assert_eq!(asked, ["session token expired"]);
            assert!(!logged_in.resumed);
            let kinds: Vec<u8> = logged_in.frames.iter().map(|f| f.kind).collect();
            assert_eq!(
                kinds,
                [
                    MessageType::Welcome.code(),
                    MessageType::LoginResponse.code()
                ],
                "typed: {typed}"
            );
            assert_eq!(logged_in.token().unwrap().session_token, "sb1.new");
            logged_in.conn.close();
            let received: Vec<u8> = server.join().unwrap().iter().map(|r| r.0).collect();
            let mut expected = vec![MessageType::Hello.code(), MessageType::ResumeRequest.code()];
            if typed {
                expected.push(MessageType::Hello.code());
            }
            expected.push(MessageType::LoginRequest.code());
            assert_eq!(received, expected, "typed: {typed}");
        }
    }

    /// Without a password to fall back on, the 401 is the login's answer, printed.
    #[test]
    fn a_refused_token_without_a_password_fails_with_the_401() {
        let (port, server) = fake_server(vec![vec![
            (MessageType::Welcome, WELCOME),
            (
                MessageType::Error,
                r#"{"code":401,"message":"session token revoked"}"#,
            ),
        ]]);
        let options = options(port);
        let target = Target {
            options: &options,
            hello: true,
            timeout: Duration::from_secs(10),
        };
        let Err(failed) = log_in(&target, &Method::Token(stored()), &mut |_| Ok(None)) else {
            panic!("the login went through");
        };
        assert!(
            matches!(
                failed.error,
                ClientError::Server {
                    code: Some(401),
                    ..
                }
            ),
            "{:?}",
            failed.error
        );
        assert_eq!(failed.frames.len(), 2, "WELCOME and the ERROR");
        drop(failed);
        server.join().unwrap();
    }
}
