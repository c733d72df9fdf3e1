//! JSON-line mode: once logged in ([`super::login`]), send one command per
//! input line and write every received frame as one compact JSON line.
//!
//! Every client message type can be sent, protocol 2's included (HELLO,
//! RESUME_REQUEST, TOKEN_REFRESH_REQUEST, GUEST_LOGIN_REQUEST,
//! ICE_SERVERS_REQUEST, PASSWORD_CHANGE_REQUEST, ACCOUNT_DELETE_REQUEST), and
//! every server message type prints, known or not.
//!
//! Input: `{"type":"CALL_REQUEST","to_user_id":"2"}`. `type` is a protocol name
//! (any case) or a numeric code (`8`, `"8"`, `"0x08"`); the rest of the object
//! is the payload, checked against the message's fields before it is sent.
//! Ids may be written bare (`"to_user_id":2`, `"room_id":3`), as `users` prints
//! them: they go out as the protocol's strings of digits (`"2"`). A line may
//! use a field of an earlier answer, `{{REQ_ID.PATH}}` ([`super::script`]): it
//! waits for that answer, and the lines after it wait behind it.
//!
//! Output: `{"type":"CALL_NOTIFICATION","code":9,"payload":{...}}`, the payload
//! exactly as the server sent it.
//!
//! Threads: a reader thread turns input lines into channel messages and signals
//! an eventfd; the session's own thread owns the connection and waits in poll(2)
//! on the socket and that eventfd. The socket is never shared.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, VecDeque};
use std::io::{self, BufRead, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::thread;
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, eventfd};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::script::{Answers, Resolution};
use super::token::TokenKeeper;
use super::{ClientError, Connection, Event, Frame};
use crate::tcp::frame;
use crate::tcp::message::{Empty, Heartbeat, MessageType, Request};

/// How long one write may take when the session itself has no deadline.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an input line is not a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    NotJson(String),
    NotAnObject,
    MissingType,
    /// `type` names no message type (the text is the value as written).
    UnknownType(String),
    /// The type exists but only servers send it.
    ServerOnly(MessageType),
    /// The payload does not fit the type (the decoder's message).
    InvalidPayload(String),
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandError::NotJson(e) => write!(f, "not JSON: {e}"),
            CommandError::NotAnObject => f.write_str("expected a JSON object"),
            CommandError::MissingType => f.write_str("the object has no \"type\""),
            CommandError::UnknownType(t) => write!(f, "unknown message type {t}"),
            CommandError::ServerOnly(t) => {
                write!(f, "{} is sent by the server, not by clients", t.name())
            }
            CommandError::InvalidPayload(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for CommandError {}

/// One input line, checked and encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub kind: MessageType,
    /// The payload as sent: the line's object without `type`, compact JSON.
    pub payload: String,
}

impl Command {
    /// The complete frame.
    pub fn to_frame(&self) -> Vec<u8> {
        frame::encode(self.kind.code(), self.payload.as_bytes())
    }
}

/// Resolves a message type written as a name (any case) or a code (`9`, `0x09`).
pub fn parse_type(text: &str) -> Option<MessageType> {
    let text = text.trim();
    let code = if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        u8::from_str_radix(hex, 16).ok()
    } else {
        text.parse::<u8>().ok()
    };
    match code {
        Some(code) => MessageType::from_code(code),
        None => MessageType::from_name(text),
    }
}

/// Parses one input line into a command a client may send.
///
/// # Errors
/// What is wrong with the line: not a JSON object, no or unknown `type`, a
/// server-only type, or a payload that does not fit the type.
pub fn parse_command(line: &str) -> Result<Command, CommandError> {
    let value: Value =
        serde_json::from_str(line).map_err(|e| CommandError::NotJson(e.to_string()))?;
    command_from_value(value)
}

/// As [`parse_command`], from a line already parsed as JSON.
///
/// # Errors
/// As [`parse_command`], but for JSON syntax.
pub fn command_from_value(value: Value) -> Result<Command, CommandError> {
    let Value::Object(mut object) = value else {
        return Err(CommandError::NotAnObject);
    };
    let kind = match object.remove("type") {
        None => return Err(CommandError::MissingType),
        Some(Value::String(name)) => {
            parse_type(&name).ok_or_else(|| CommandError::UnknownType(format!("{name:?}")))?
        }
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|c| u8::try_from(c).ok())
            .and_then(MessageType::from_code)
            .ok_or_else(|| CommandError::UnknownType(n.to_string()))?,
        Some(other) => return Err(CommandError::UnknownType(other.to_string())),
    };
    ids_as_strings(&mut object);
    let payload = Value::Object(object).to_string();
    match Request::parse(kind, &payload) {
        Ok(Some(_)) => Ok(Command { kind, payload }),
        Ok(None) => Err(CommandError::ServerOnly(kind)),
        Err(message) => Err(CommandError::InvalidPayload(message.to_string())),
    }
}

/// Writes the payload's ids given as non-negative integers as the strings of
/// digits the protocol uses (PROTOCOL.md: ids are strings): user ids
/// (`user_id`, `to_user_id`, `from_user_id`, `peer_user_id`, ...), the
/// elements of `user_ids`, `room_id` and `call_id`. Anything else is left for
/// the type's check to judge.
fn ids_as_strings(object: &mut Map<String, Value>) {
    let digits = |value: &mut Value| {
        if let Value::Number(n) = value
            && let Some(id) = n.as_u64()
        {
            *value = Value::String(id.to_string());
        }
    };
    for (key, value) in object.iter_mut() {
        if key == "user_id" || key.ends_with("_user_id") || key == "room_id" || key == "call_id" {
            digits(value);
        } else if key == "user_ids"
            && let Value::Array(items) = value
        {
            items.iter_mut().for_each(digits);
        }
    }
}

#[derive(Serialize)]
struct Line<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    code: u8,
    payload: Option<&'a RawValue>,
    /// The payload as text when it is not JSON (a broken server).
    #[serde(skip_serializing_if = "Option::is_none")]
    invalid_payload: Option<String>,
}

/// A payload as one line of JSON: as received, unless it spans lines.
fn one_line_json(payload: &[u8]) -> Option<Box<RawValue>> {
    let text = std::str::from_utf8(payload).ok()?.trim();
    if text.contains(['\n', '\r']) {
        // Line breaks can only be whitespace between tokens: re-serialize compactly.
        let value: Value = serde_json::from_str(text).ok()?;
        RawValue::from_string(value.to_string()).ok()
    } else {
        RawValue::from_string(text.to_string()).ok()
    }
}

/// The JSON line for a received frame, without the newline.
pub fn frame_line(frame: &Frame) -> String {
    let name = frame.name();
    let raw = one_line_json(&frame.payload);
    let line = Line {
        kind: &name,
        code: frame.kind,
        payload: raw.as_deref(),
        invalid_payload: raw
            .is_none()
            .then(|| String::from_utf8_lossy(&frame.payload).into_owned()),
    };
    // Serializing strings, a number and validated JSON into a String cannot fail.
    serde_json::to_string(&line).unwrap_or_else(|_| {
        format!(
            "{{\"type\":\"{}\",\"code\":{},\"payload\":null}}",
            name, frame.kind
        )
    })
}

/// What the input reader thread reports.
#[derive(Debug)]
pub enum InputEvent {
    Line(String),
    End,
    Failed(io::Error),
}

/// An eventfd the reader thread signals after each message it sends.
struct Wake(OwnedFd);

impl Wake {
    fn new() -> io::Result<Wake> {
        Ok(Wake(eventfd(
            0,
            EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
        )?))
    }

    fn signal(&self) {
        // EAGAIN means the counter is already non-zero: the reader is woken anyway.
        let _ = rustix::io::write(&self.0, &1u64.to_ne_bytes());
    }

    fn clear(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.0, &mut buf);
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Input lines read on their own thread, delivered through a channel and an eventfd.
pub struct Input {
    events: Receiver<InputEvent>,
    wake: Arc<Wake>,
}

impl Input {
    /// Starts a thread reading lines from `reader` until it ends. The thread
    /// ends at EOF, on a read error, or when the [`Input`] is dropped and the
    /// next line arrives.
    ///
    /// # Errors
    /// If no eventfd can be made or no thread started.
    pub fn spawn<R: BufRead + Send + 'static>(mut reader: R) -> io::Result<Input> {
        let wake = Arc::new(Wake::new()?);
        let (tx, events) = mpsc::channel();
        let signal = wake.clone();
        thread::Builder::new()
            .name("session-input".into())
            .spawn(move || {
                loop {
                    let mut line = String::new();
                    let event = match reader.read_line(&mut line) {
                        Ok(0) => InputEvent::End,
                        Ok(_) => InputEvent::Line(line),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => InputEvent::Failed(e),
                    };
                    let last = !matches!(event, InputEvent::Line(_));
                    if tx.send(event).is_err() {
                        return;
                    }
                    signal.signal();
                    if last {
                        return;
                    }
                }
            })?;
        Ok(Input { events, wake })
    }
}

/// How a session is bounded and when it stops.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Stop with success once a frame of this type has been written.
    pub until: Option<MessageType>,
    /// Give up with a timeout at this instant; `None`: never.
    pub deadline: Option<Instant>,
    /// Send a HEARTBEAT after this long without sending anything, so the
    /// server's idle timeout does not end a quiet session. `None`: never.
    pub keepalive: Option<Duration>,
    /// The connection speaks protocol 2 already (HELLO answered, or a RESUME or
    /// guest login). Frames on the way can switch it too.
    pub protocol_2: bool,
}

/// How a session ended successfully.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The `until` frame arrived (and was written).
    Until,
    /// The server closed the connection, and no `until` was asked for.
    ServerClosed,
}

fn write_line(out: &mut dyn Write, frame: &Frame) -> Result<(), ClientError> {
    let mut line = frame_line(frame);
    line.push('\n');
    out.write_all(line.as_bytes())
        .and_then(|()| out.flush())
        .map_err(ClientError::Output)
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Writes the frames of the session's own login (WELCOME, LOGIN_RESPONSE, or
/// the ERROR that refused it), one line each. Stops after the `until` frame
/// and says so with [`SessionEnd::Until`].
///
/// # Errors
/// [`ClientError::Output`] if writing fails.
pub fn write_login(
    out: &mut dyn Write,
    frames: &[Frame],
    until: Option<MessageType>,
) -> Result<Option<SessionEnd>, ClientError> {
    for frame in frames {
        write_line(out, frame)?;
        if until.is_some_and(|until| frame.is(until)) {
            return Ok(Some(SessionEnd::Until));
        }
    }
    Ok(None)
}

/// Relays `input` lines to the server and every frame to `out` until the
/// `until` frame, the server's close, or the deadline. Call it once logged in
/// (or not: a session may log in from its input).
///
/// A protocol 2 session that ends on purpose (the `until` frame, the deadline,
/// a bad line) while it may be in a call logs out before returning, so the
/// call ends at once as it would for a v1 client; unless it keeps a token
/// file: then the server holds the call for a RESUME from that file.
///
/// With a `keeper`, every session token the server hands out is saved to its
/// file before the frame's line is written, and the file is removed once
/// LOGOUT or ACCOUNT_DELETE revoke the tokens; a file that cannot be written
/// is reported on stderr and the session goes on.
///
/// # Errors
/// [`ClientError::Usage`] for a bad input line (naming its number),
/// [`ClientError::Timeout`] at the deadline, [`ClientError::ConnectionLost`]
/// if the server closes before `until`.
pub fn run(
    conn: &mut Connection,
    input: &Input,
    out: &mut dyn Write,
    options: &SessionOptions,
    mut keeper: Option<&mut TokenKeeper>,
) -> Result<SessionEnd, ClientError> {
    let resumable = keeper.is_some();
    let call = CallTracker::default();
    call.protocol_2.set(options.protocol_2);
    let mut observe = |frame: &Frame| {
        call.received(frame);
        if let Some(keeper) = keeper.as_deref_mut()
            && let Err(e) = keeper.observe(frame)
        {
            eprintln!("switchboard-cli: {e}");
        }
    };
    let result = relay(conn, input, out, options, &mut observe, &mut |c| {
        call.sent(c)
    });
    // A protocol 2 session that ends on purpose in a call or a room, with no
    // token to resume it by, logs out: the server would otherwise hold the
    // session for a resume that cannot come, and the peers would wait out the
    // grace period. LOGOUT ends the call as a v1 disconnect does (the peer
    // gets HANGUP) and leaves the rooms (the others get ROOM_PEER_LEFT).
    let on_purpose = !matches!(
        result,
        Ok(SessionEnd::ServerClosed) | Err(ClientError::ConnectionLost(_))
    );
    if on_purpose && !resumable && call.may_be_held() && call.protocol_2.get() {
        let _ = conn.send(
            &Request::Logout(Empty::default()),
            Instant::now() + LEAVE_TIMEOUT,
        );
    }
    result
}

/// How long the LOGOUT at the end of a session may take to send.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether the session may be in a call (ringing or active), from the frames
/// it sent and received, and whether the connection speaks protocol 2 (whose
/// calls the server holds when the connection drops). It errs on the side of
/// "in a call": a CALL_REQUEST the server refused still counts, and costs at
/// most a LOGOUT at the end.
///
/// It follows rooms the same way: in a room from a successful
/// ROOM_JOIN_RESPONSE (or a RESUME's LOGIN_RESPONSE naming `room_ids`) until
/// ROOM_LEAVE_RESPONSE, ROOM_DELETED or a logout. A kick is not noticed: that
/// costs at most a LOGOUT at the end.
#[derive(Debug, Default)]
struct CallTracker {
    in_call: Cell<bool>,
    protocol_2: Cell<bool>,
    rooms: RefCell<BTreeSet<String>>,
}

impl CallTracker {
    fn sent(&self, command: &Command) {
        match command.kind {
            MessageType::CallRequest => self.in_call.set(true),
            MessageType::CallResponse => {
                let accepted = serde_json::from_str::<Value>(&command.payload)
                    .is_ok_and(|v| v["accepted"] == Value::Bool(true));
                self.in_call.set(accepted);
            }
            MessageType::Hangup => self.in_call.set(false),
            MessageType::LogoutRequest => {
                self.in_call.set(false);
                self.rooms.borrow_mut().clear();
            }
            _ => {}
        }
    }

    /// The session may be held by the server if its connection closes: in a
    /// call or in a room.
    fn may_be_held(&self) -> bool {
        self.in_call.get() || !self.rooms.borrow().is_empty()
    }

    fn received(&self, frame: &Frame) {
        let Some(kind) = frame.message_type() else {
            return;
        };
        match kind {
            MessageType::CallNotification | MessageType::CallAccepted => self.in_call.set(true),
            MessageType::CallDeclined | MessageType::Hangup => self.in_call.set(false),
            MessageType::LogoutResponse | MessageType::AccountDeleteResponse => {
                self.in_call.set(false);
                self.rooms.borrow_mut().clear();
            }
            MessageType::RoomJoinResponse
            | MessageType::RoomLeaveResponse
            | MessageType::RoomDeleted => {
                let Ok(v) = serde_json::from_slice::<Value>(&frame.payload) else {
                    return;
                };
                let Some(room) = v["room_id"].as_str() else {
                    return;
                };
                let mut rooms = self.rooms.borrow_mut();
                if kind == MessageType::RoomJoinResponse {
                    if v["success"] == Value::Bool(true) {
                        rooms.insert(room.to_string());
                    }
                } else {
                    rooms.remove(room);
                }
            }
            MessageType::LoginResponse => {
                let Ok(v) = serde_json::from_slice::<Value>(&frame.payload) else {
                    return;
                };
                if v["success"] == Value::Bool(true) {
                    // A RESUME that took a held call back names it, and the rooms it is still in.
                    self.in_call.set(v["call_id"].is_string());
                    let mut rooms = self.rooms.borrow_mut();
                    rooms.clear();
                    if let Some(ids) = v["room_ids"].as_array() {
                        rooms.extend(ids.iter().filter_map(Value::as_str).map(str::to_string));
                    }
                    // Only protocol 2 answers say when the session expires.
                    if v["expires_at"].is_u64() {
                        self.protocol_2.set(true);
                    }
                }
            }
            MessageType::Welcome => {
                let Ok(v) = serde_json::from_slice::<Value>(&frame.payload) else {
                    return;
                };
                self.protocol_2
                    .set(v["protocol_version"].as_u64().is_some_and(|p| p >= 2));
            }
            _ => {}
        }
    }
}

fn relay(
    conn: &mut Connection,
    input: &Input,
    out: &mut dyn Write,
    options: &SessionOptions,
    observe: &mut dyn FnMut(&Frame),
    sent: &mut dyn FnMut(&Command),
) -> Result<SessionEnd, ClientError> {
    let mut input_open = true;
    let mut line_number = 0usize;
    let mut last_sent = Instant::now();
    let mut script = Script::default();
    loop {
        let next_beat = options.keepalive.map(|k| last_sent + k);
        let wake = input_open.then(|| input.wake.fd());
        match conn.next_event(earliest(options.deadline, next_beat), wake)? {
            Event::Frame(frame) => {
                // The token file first: once a script sees the line, the file is current.
                observe(&frame);
                script.answers.received(&frame);
                write_line(out, &frame)?;
                if options.until.is_some_and(|until| frame.is(until)) {
                    return Ok(SessionEnd::Until);
                }
                if script.pump(conn, options, sent)? {
                    last_sent = Instant::now();
                }
            }
            Event::Woken => {
                input.wake.clear();
                loop {
                    let event = match input.events.try_recv() {
                        Ok(event) => event,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            input_open = false;
                            break;
                        }
                    };
                    match event {
                        InputEvent::Line(line) => {
                            line_number += 1;
                            if line.trim().is_empty() {
                                continue;
                            }
                            script.read(line_number, &line)?;
                            if script.pump(conn, options, sent)? {
                                last_sent = Instant::now();
                            }
                        }
                        InputEvent::End => input_open = false,
                        InputEvent::Failed(e) => {
                            return Err(ClientError::Usage(format!("cannot read input: {e}")));
                        }
                    }
                }
            }
            Event::TimedOut => {
                let now = Instant::now();
                if options.deadline.is_some_and(|d| now >= d) {
                    return Err(ClientError::Timeout(match options.until {
                        Some(until) => format!("waiting for {}", until.name()),
                        None => "at the end of the session's --timeout".into(),
                    }));
                }
                if next_beat.is_some_and(|beat| now >= beat) {
                    let deadline = options.deadline.unwrap_or(now + WRITE_TIMEOUT);
                    conn.send(&keepalive(), deadline)?;
                    last_sent = Instant::now();
                }
            }
            Event::Closed => {
                return match options.until {
                    Some(until) => Err(ClientError::ConnectionLost(format!(
                        "the server closed the connection before {}",
                        until.name()
                    ))),
                    None => Ok(SessionEnd::ServerClosed),
                };
            }
        }
    }
}

/// Input lines read but not sent yet: a line that refers to an answer still
/// to come waits, and every later line waits behind it.
#[derive(Default)]
struct Script {
    waiting: VecDeque<(usize, Value)>,
    answers: Answers,
}

impl Script {
    /// Takes an input line: checks it is JSON and that its references name
    /// earlier requests, and queues it.
    fn read(&mut self, number: usize, line: &str) -> Result<(), ClientError> {
        let bad = |e: String| ClientError::Usage(format!("input line {number}: {e}"));
        let value: Value = serde_json::from_str(line)
            .map_err(|e| bad(CommandError::NotJson(e.to_string()).to_string()))?;
        self.answers.read(&value).map_err(bad)?;
        self.waiting.push_back((number, value));
        Ok(())
    }

    /// Sends the waiting lines, in order, until one needs an answer that has
    /// not come. Says whether it sent anything.
    fn pump(
        &mut self,
        conn: &mut Connection,
        options: &SessionOptions,
        sent: &mut dyn FnMut(&Command),
    ) -> Result<bool, ClientError> {
        let mut any = false;
        while let Some((number, value)) = self.waiting.front() {
            let number = *number;
            let value = match self.answers.resolve(value) {
                Resolution::Waiting => break,
                Resolution::Failed(err) => return Err(at_line(number, err)),
                Resolution::Ready(value) => value,
            };
            self.waiting.pop_front();
            let command = command_from_value(value)
                .map_err(|e| ClientError::Usage(format!("input line {number}: {e}")))?;
            let deadline = options
                .deadline
                .unwrap_or_else(|| Instant::now() + WRITE_TIMEOUT);
            conn.send_frame(&command.to_frame(), deadline)?;
            if let Ok(payload) = serde_json::from_str::<Value>(&command.payload) {
                self.answers.sent(&payload);
            }
            sent(&command);
            any = true;
        }
        Ok(any)
    }
}

/// Names the input line in a failure to fill in its references.
fn at_line(number: usize, err: ClientError) -> ClientError {
    match err {
        ClientError::Server { code, message } => ClientError::Server {
            code,
            message: format!("input line {number}: {message}"),
        },
        ClientError::NotFound(message) => {
            ClientError::NotFound(format!("input line {number}: {message}"))
        }
        other => other,
    }
}

fn keepalive() -> Request {
    let now_ms = crate::clock::unix_millis();
    Request::Heartbeat(Heartbeat {
        timestamp: Some(now_ms.into()),
        server_time: None,
        req_id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(line: &str) -> Command {
        parse_command(line).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    /// `type` by name in any case, by number, by decimal or hex string, all the same command.
    #[test]
    fn a_type_is_a_name_in_any_case_or_a_code() {
        let lines = [
            r#"{"type":"CALL_REQUEST","to_user_id":"2"}"#,
            r#"{"type":"call_request","to_user_id":"2"}"#,
            r#"{"to_user_id":"2","type":8}"#,
            r#"{"type":"8","to_user_id":"2"}"#,
            r#"{"type":"0x08","to_user_id":"2"}"#,
        ];
        for line in lines {
            assert_eq!(
                command(line),
                Command {
                    kind: MessageType::CallRequest,
                    payload: r#"{"to_user_id":"2"}"#.into()
                },
                "{line}"
            );
        }
    }

    /// The payload keeps every field but `type`, unknown ones included, under the type's code.
    #[test]
    fn the_rest_of_the_object_is_the_payload() {
        let c = command(
            r#"{"type":"SDP_OFFER","call_id":"7","sdp":"v=0\r\n","req_id":3,"extra":true}"#,
        );
        let payload: Value = serde_json::from_str(&c.payload).unwrap();
        assert_eq!(
            payload,
            serde_json::json!({"call_id":"7","sdp":"v=0\r\n","req_id":3,"extra":true})
        );
        let frame = c.to_frame();
        assert_eq!(frame[4], MessageType::SdpOffer.code());
        assert_eq!(&frame[5..], c.payload.as_bytes());
        assert_eq!(command(r#"{"type":"USER_LIST_REQUEST"}"#).payload, "{}");
    }

    /// Lines that are not commands say why.
    #[test]
    fn bad_lines_say_what_is_wrong() {
        let err = |line: &str| parse_command(line).unwrap_err();
        assert!(matches!(err("CALL_REQUEST 2"), CommandError::NotJson(_)));
        assert_eq!(err(r#"["CALL_REQUEST"]"#), CommandError::NotAnObject);
        assert_eq!(err(r#"{"to_user_id":"2"}"#), CommandError::MissingType);
        assert_eq!(
            err(r#"{"type":"CALL_ME"}"#),
            CommandError::UnknownType("\"CALL_ME\"".into())
        );
        assert_eq!(
            err(r#"{"type":99}"#),
            CommandError::UnknownType("99".into())
        );
        assert_eq!(
            err(r#"{"type":-1}"#),
            CommandError::UnknownType("-1".into())
        );
        assert_eq!(
            err(r#"{"type":null}"#),
            CommandError::UnknownType("null".into())
        );
        assert_eq!(
            err(r#"{"type":"CALL_NOTIFICATION"}"#),
            CommandError::ServerOnly(MessageType::CallNotification)
        );
        let CommandError::InvalidPayload(message) =
            err(r#"{"type":"CALL_REQUEST","to_user_id":true}"#)
        else {
            panic!("expected an invalid payload");
        };
        assert!(message.contains("to_user_id"), "{message}");
        assert!(
            err(r#"{"type":"CALL_REQUEST"}"#)
                .to_string()
                .contains("to_user_id")
        );
    }

    /// User ids written bare, as `users` prints them, are sent as the protocol's strings;
    /// other numbers stay as written, and ids that are not whole non-negative numbers are refused.
    #[test]
    fn numeric_user_ids_are_sent_as_strings() {
        assert_eq!(
            command(r#"{"type":"CALL_REQUEST","to_user_id":2}"#),
            command(r#"{"type":"CALL_REQUEST","to_user_id":"2"}"#)
        );
        assert_eq!(
            command(r#"{"type":"CALL_REQUEST","to_user_id":2}"#).payload,
            r#"{"to_user_id":"2"}"#
        );
        let ice = command(
            r#"{"type":"ICE_CANDIDATE","call_id":"7","from_user_id":1,"to_user_id":18446744073709551615,"candidate":"c","sdp_mid":"0","sdp_mline_index":0,"req_id":5}"#,
        );
        let payload: Value = serde_json::from_str(&ice.payload).unwrap();
        assert_eq!(payload["from_user_id"], "1");
        assert_eq!(payload["to_user_id"], "18446744073709551615");
        assert_eq!(payload["sdp_mline_index"], 0, "not an id: stays a number");
        assert_eq!(payload["req_id"], 5, "not an id: stays a number");
        for bad in [
            r#"{"type":"CALL_REQUEST","to_user_id":-2}"#,
            r#"{"type":"CALL_REQUEST","to_user_id":2.5}"#,
        ] {
            assert!(
                matches!(parse_command(bad), Err(CommandError::InvalidPayload(ref m)) if m.contains("to_user_id")),
                "{bad}"
            );
        }
    }

    /// Every protocol 2 client type (0x15 to 0x21) can be sent, its fields checked by
    /// name; the others in that range are the server's, refused as input, and every
    /// type, the server's included, prints under its name.
    #[test]
    fn every_protocol_2_type_can_be_sent_or_printed() {
        use MessageType::*;
        let requests = [
            (
                Hello,
                r#"{"protocol_version":2,"client_name":"x","capabilities":["resume"]}"#,
                r#"{"protocol_version":"two"}"#,
                "protocol_version",
            ),
            (
                ResumeRequest,
                r#"{"session_token":"sb1.x","req_id":"r1"}"#,
                r#"{"session_token":5}"#,
                "session_token",
            ),
            (TokenRefreshRequest, "{}", r#"{"req_id":1.5}"#, "req_id"),
            (
                GuestLoginRequest,
                r#"{"display_name":"visitor"}"#,
                r#"{"display_name":null}"#,
                "display_name",
            ),
            (
                IceServersRequest,
                r#"{"req_id":7}"#,
                r#"{"req_id":true}"#,
                "req_id",
            ),
            (
                PasswordChangeRequest,
                r#"{"old_password_hash":"a","new_password_hash":"b"}"#,
                r#"{"old_password_hash":"a"}"#,
                "new_password_hash",
            ),
            (
                AccountDeleteRequest,
                r#"{"password_hash":"a"}"#,
                r#"{"password_hash":[]}"#,
                "password_hash",
            ),
        ];
        let with_type = |kind: MessageType, payload: &str| {
            let mut object: Map<String, Value> = serde_json::from_str(payload).unwrap();
            object.insert("type".into(), Value::String(kind.name().into()));
            Value::Object(object).to_string()
        };
        for (kind, good, bad, field) in requests {
            let sent = command(&with_type(kind, good));
            assert_eq!(sent.kind, kind);
            let sent: Value = serde_json::from_str(&sent.payload).unwrap();
            assert_eq!(sent, serde_json::from_str::<Value>(good).unwrap());
            match parse_command(&with_type(kind, bad)) {
                Err(CommandError::InvalidPayload(m)) => {
                    assert!(m.contains(field), "{}: {m}", kind.name())
                }
                other => panic!("{}: {bad} gave {other:?}", kind.name()),
            }
        }
        for &kind in MessageType::ALL {
            if (0x15..=0x21).contains(&kind.code()) && !requests.iter().any(|(k, ..)| *k == kind) {
                assert_eq!(
                    parse_command(&with_type(kind, "{}")),
                    Err(CommandError::ServerOnly(kind))
                );
            }
            let line = frame_line(&Frame {
                kind: kind.code(),
                payload: b"{}".to_vec(),
            });
            assert!(
                line.starts_with(&format!(
                    r#"{{"type":"{}","code":{},"#,
                    kind.name(),
                    kind.code()
                )),
                "{line}"
            );
        }
    }

    /// The tracker thinks the session is in a call from a ring or an accepted call on,
    /// and out of it after a decline, a HANGUP either way, or a logout.
    #[test]
    fn the_call_tracker_follows_rings_and_hangups() {
        let got = |kind: MessageType, payload: &str| Frame {
            kind: kind.code(),
            payload: payload.as_bytes().to_vec(),
        };
        let call = CallTracker::default();
        call.sent(&command(r#"{"type":"CALL_REQUEST","to_user_id":"2"}"#));
        assert!(call.in_call.get());
        call.received(&got(MessageType::CallDeclined, "{}"));
        assert!(!call.in_call.get());
        call.received(&got(MessageType::CallNotification, "{}"));
        assert!(call.in_call.get());
        call.sent(&command(
            r#"{"type":"CALL_RESPONSE","call_id":"5","accepted":false}"#,
        ));
        assert!(!call.in_call.get());
        call.received(&got(MessageType::CallNotification, "{}"));
        call.sent(&command(
            r#"{"type":"CALL_RESPONSE","call_id":"5","accepted":true}"#,
        ));
        assert!(call.in_call.get());
        call.received(&got(MessageType::UserStateUpdate, "{}"));
        assert!(call.in_call.get());
        call.received(&got(MessageType::Hangup, r#"{"call_id":"5"}"#));
        assert!(!call.in_call.get());
        call.received(&got(
            MessageType::LoginResponse,
            r#"{"success":true,"user_id":"1","username":"a","call_id":"5","expires_at":9}"#,
        ));
        assert!(call.in_call.get(), "a RESUME took a held call back");
        assert!(call.protocol_2.get(), "its expires_at says protocol 2");
        call.sent(&command(r#"{"type":"HANGUP"}"#));
        assert!(!call.in_call.get());
        call.received(&got(MessageType::Welcome, r#"{"protocol_version":1}"#));
        assert!(!call.protocol_2.get());
    }

    /// --until and commands resolve types the same way; unknown names and codes resolve to nothing.
    #[test]
    fn types_resolve_by_name_or_code() {
        assert_eq!(parse_type("hangup"), Some(MessageType::Hangup));
        assert_eq!(parse_type("16"), Some(MessageType::Hangup));
        assert_eq!(parse_type("0x10"), Some(MessageType::Hangup));
        assert_eq!(parse_type("0X10"), Some(MessageType::Hangup));
        assert_eq!(parse_type("0"), None);
        assert_eq!(parse_type("0x99"), None);
        assert_eq!(parse_type("HANG_UP"), None);
    }

    /// A frame's line is compact, names type and code, and keeps the payload as sent.
    #[test]
    fn frames_become_one_compact_json_line() {
        let frame = |kind: u8, payload: &str| Frame {
            kind,
            payload: payload.as_bytes().to_vec(),
        };
        assert_eq!(
            frame_line(&frame(
                9,
                r#"{"call_id":"5","from_user_id":"1","from_username":"alice"}"#
            )),
            r#"{"type":"CALL_NOTIFICATION","code":9,"payload":{"call_id":"5","from_user_id":"1","from_username":"alice"}}"#
        );
        // A payload spread over lines is made compact so the output stays one line per frame.
        assert_eq!(
            frame_line(&frame(0x10, "{\n  \"call_id\": \"5\"\n}")),
            r#"{"type":"HANGUP","code":16,"payload":{"call_id":"5"}}"#
        );
        assert_eq!(
            frame_line(&frame(0x90, "{}")),
            r#"{"type":"0x90","code":144,"payload":{}}"#
        );
        assert_eq!(
            frame_line(&frame(0x12, "{broken")),
            r#"{"type":"ERROR","code":18,"payload":null,"invalid_payload":"{broken"}"#
        );
    }

    /// The reader thread delivers lines in order, then the end, and signals each.
    #[test]
    fn the_input_thread_delivers_lines_then_the_end() {
        let input = Input::spawn(io::Cursor::new(b"one\ntwo\n".to_vec())).unwrap();
        let mut got = Vec::new();
        for event in input.events.iter() {
            match event {
                InputEvent::Line(line) => got.push(line),
                InputEvent::End => break,
                InputEvent::Failed(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, ["one\n", "two\n"]);
    }
}
