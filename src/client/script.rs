//! References to earlier answers in a session's input, so one session can use
//! what the server answered (a `room_id`, a `seq`, a `call_id`) in a later
//! line without a second process reading its output.
//!
//! A command labels a request with its `req_id`; a later line writes
//! `{{LABEL.PATH}}` inside a string to mean "the field PATH of the answer to
//! the request whose `req_id` is LABEL" (PATH as `field` takes it:
//! `room_id`, `participants.0.user_id`). The server echoes `req_id` in every
//! answer and in the ERROR that refuses a request (PROTOCOL.md section 3), so
//! the answer is the first frame after that request carrying its `req_id`.
//!
//! ```text
//! {"type":"ROOM_CREATE_REQUEST","name":"standup","req_id":"c"}
//! {"type":"ROOM_JOIN_REQUEST","room_id":"{{c.room_id}}","req_id":"j"}
//! {"type":"ROOM_HISTORY_REQUEST","room_id":"{{c.room_id}}","after_seq":"{{j.last_seq}}"}
//! ```
//!
//! - A line with references waits until every answer it names has arrived;
//!   the lines after it wait behind it, so commands still go out in input order.
//! - A string that is exactly one reference becomes the referenced value with
//!   its JSON type (`"{{j.last_seq}}"` sends the number); a reference inside a
//!   longer string is replaced by the value's text, as `field` prints it.
//! - A reference to a label no earlier line declared is a bad line (exit 2);
//!   an answer that is an ERROR (or `success:false`) ends the session with
//!   exit 1; an answer without the field also exits 1.
//!
//! Only `{{LABEL.PATH}}` with LABEL of letters, digits, `_` and `-`, and PATH
//! of letters, digits, `_` and `.`, is a reference; other braces are text.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::field::{FieldPath, render};
use super::{ClientError, Frame};
use crate::tcp::message::MessageType;

/// `{{LABEL.PATH}}` found in a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The `req_id` of the request whose answer is meant, as it renders.
    pub label: String,
    pub path: FieldPath,
    /// The text as written, braces included.
    pub text: String,
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.'
}

/// The references in `text`, with their byte ranges, in order.
fn scan(text: &str) -> Vec<(std::ops::Range<usize>, Reference)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(open) = text.get(from..).and_then(|rest| rest.find("{{")) {
        let start = from + open;
        let inner_start = start + 2;
        let Some(close) = text.get(inner_start..).and_then(|rest| rest.find("}}")) else {
            break;
        };
        let inner = &text[inner_start..inner_start + close];
        let end = inner_start + close + 2;
        let reference = inner.split_once('.').and_then(|(label, path)| {
            let ok = !label.is_empty()
                && label.chars().all(is_label_char)
                && path.chars().all(is_path_char);
            ok.then(|| FieldPath::parse(path).ok())
                .flatten()
                .map(|path| Reference {
                    label: label.to_string(),
                    path,
                    text: text[start..end].to_string(),
                })
        });
        match reference {
            Some(r) => {
                found.push((start..end, r));
                from = end;
            }
            // Not a reference: look again from the next character.
            None => from = start + 1,
        }
    }
    found
}

/// Every reference in the strings of `value` (object keys are not looked at).
pub fn references(value: &Value) -> Vec<Reference> {
    let mut out = Vec::new();
    collect(value, &mut out);
    out
}

fn collect(value: &Value, out: &mut Vec<Reference>) {
    match value {
        Value::String(s) if s.contains("{{") => out.extend(scan(s).into_iter().map(|(_, r)| r)),
        Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect(v, out)),
        _ => {}
    }
}

/// The `req_id` of a command or a received payload, as it renders (`"r1"` and
/// `r1` alike, `7` for the number 7).
fn req_id_of(value: &Value) -> Option<String> {
    match value.get("req_id")? {
        Value::Null => None,
        v => Some(render(v)),
    }
}

/// What can be done with a line now.
#[derive(Debug)]
pub enum Resolution {
    /// Every reference replaced: send it.
    Ready(Value),
    /// An answer it names has not come yet.
    Waiting,
    /// An answer it names says the request failed, or lacks the field.
    Failed(ClientError),
}

/// The answers a session's input may refer to, by `req_id`.
#[derive(Debug, Default)]
pub struct Answers {
    /// Labels of the lines read so far (a reference must name one of them).
    declared: HashSet<String>,
    /// Sent, not answered yet.
    outstanding: HashSet<String>,
    /// The answer to each label: its type and payload.
    answers: HashMap<String, (u8, Value)>,
}

impl Answers {
    /// Checks that every reference in the line `value` names a label declared
    /// by an earlier line, then declares the line's own `req_id`.
    ///
    /// # Errors
    /// The first reference to a label no earlier line declared.
    pub fn read(&mut self, value: &Value) -> Result<(), String> {
        if let Some(r) = references(value)
            .into_iter()
            .find(|r| !self.declared.contains(&r.label))
        {
            return Err(format!(
                "{} refers to req_id {:?}, which no earlier line sent",
                r.text, r.label
            ));
        }
        if let Some(label) = req_id_of(value) {
            self.declared.insert(label);
        }
        Ok(())
    }

    /// Notes a command sent with this payload: its answer is the next frame
    /// with its `req_id` (an earlier answer to the same label is forgotten).
    pub fn sent(&mut self, payload: &Value) {
        if let Some(label) = req_id_of(payload) {
            self.answers.remove(&label);
            self.outstanding.insert(label);
        }
    }

    /// Takes a received frame as the answer it may be.
    pub fn received(&mut self, frame: &Frame) {
        if self.outstanding.is_empty() {
            return;
        }
        let Ok(payload) = serde_json::from_slice::<Value>(&frame.payload) else {
            return;
        };
        if let Some(label) = req_id_of(&payload)
            && self.outstanding.remove(&label)
        {
            self.answers.insert(label, (frame.kind, payload));
        }
    }

    /// The value a reference stands for, if its answer is here.
    fn lookup(&self, r: &Reference) -> Option<Result<Value, ClientError>> {
        let (kind, payload) = self.answers.get(&r.label)?;
        if *kind == MessageType::Error.code() {
            let code = payload
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok());
            let message = payload
                .get("message")
                .map(render)
                .unwrap_or_else(|| "refused".into());
            return Some(Err(ClientError::Server {
                code,
                message: format!(
                    "{} cannot be filled in: the request with req_id {:?} was refused: {message}",
                    r.text, r.label
                ),
            }));
        }
        if payload.get("success") == Some(&Value::Bool(false)) {
            let message = payload
                .get("error")
                .map(render)
                .unwrap_or_else(|| "success:false".into());
            return Some(Err(ClientError::Server {
                code: payload
                    .get("code")
                    .and_then(Value::as_u64)
                    .and_then(|c| u16::try_from(c).ok()),
                message: format!(
                    "{} cannot be filled in: the request with req_id {:?} failed: {message}",
                    r.text, r.label
                ),
            }));
        }
        Some(r.path.get(payload).cloned().ok_or_else(|| {
            let name = MessageType::from_code(*kind).map_or("answer", |k| k.name());
            ClientError::NotFound(format!(
                "{} cannot be filled in: the {name} to req_id {:?} has no field {}",
                r.text, r.label, r.path
            ))
        }))
    }

    /// Replaces every reference in `value`, or says why it cannot yet.
    pub fn resolve(&self, value: &Value) -> Resolution {
        let refs = references(value);
        let mut values = HashMap::new();
        for r in refs {
            match self.lookup(&r) {
                None => return Resolution::Waiting,
                Some(Err(e)) => return Resolution::Failed(e),
                Some(Ok(v)) => {
                    values.insert(r.text, v);
                }
            }
        }
        if values.is_empty() {
            return Resolution::Ready(value.clone());
        }
        Resolution::Ready(substitute(value, &values))
    }
}

fn substitute(value: &Value, values: &HashMap<String, Value>) -> Value {
    match value {
        Value::String(s) if s.contains("{{") => {
            if let Some(whole) = values.get(s.as_str()) {
                return whole.clone();
            }
            let mut text = String::with_capacity(s.len());
            let mut last = 0;
            for (range, r) in scan(s) {
                text.push_str(&s[last..range.start]);
                match values.get(&r.text) {
                    Some(v) => text.push_str(&render(v)),
                    None => text.push_str(&r.text),
                }
                last = range.end;
            }
            text.push_str(&s[last..]);
            Value::String(text)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| substitute(v, values)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), substitute(v, values)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn frame(kind: MessageType, payload: Value) -> Frame {
        Frame {
            kind: kind.code(),
            payload: payload.to_string().into_bytes(),
        }
    }

    /// Only `{{LABEL.PATH}}` with plain characters is a reference; other braces are text.
    #[test]
    fn references_are_found_only_in_their_own_shape() {
        let labels =
            |s: &str| -> Vec<String> { scan(s).into_iter().map(|(_, r)| r.text).collect() };
        assert_eq!(labels("{{c.room_id}}"), ["{{c.room_id}}"]);
        assert_eq!(
            labels("room {{c.room_id}} seq {{m-2.seq}}!"),
            ["{{c.room_id}}", "{{m-2.seq}}"]
        );
        assert_eq!(
            labels("{{j.participants.0.user_id}}"),
            ["{{j.participants.0.user_id}}"]
        );
        for text in [
            "{{ c.room_id }}",
            "{{c}}",
            "{{.x}}",
            "{{c.}}",
            "{{c..x}}",
            "{c.x}",
            "{{c.x",
        ] {
            assert!(labels(text).is_empty(), "{text}");
        }
        assert_eq!(labels("{{{c.x}}"), ["{{c.x}}"], "an extra brace is text");
    }

    /// A line may only refer to labels of earlier lines; its own label counts from the next line.
    #[test]
    fn references_must_name_an_earlier_request() {
        let mut answers = Answers::default();
        let err = answers
            .read(&json!({"type":"ROOM_JOIN_REQUEST","room_id":"{{c.room_id}}","req_id":"c"}))
            .unwrap_err();
        assert!(err.contains("req_id \"c\""), "{err}");
        answers
            .read(&json!({"type":"ROOM_CREATE_REQUEST","name":"x","req_id":"c"}))
            .unwrap();
        answers
            .read(&json!({"type":"ROOM_JOIN_REQUEST","room_id":"{{c.room_id}}"}))
            .unwrap();
        answers.read(&json!({"type":"X","req_id":7})).unwrap();
        answers
            .read(&json!({"type":"X","text":"{{7.seq}}"}))
            .unwrap();
    }

    /// A line waits for its answer; then a whole-string reference keeps the value's type
    /// and one inside a longer string becomes text.
    #[test]
    fn answers_fill_in_references() {
        let mut answers = Answers::default();
        let line = json!({"type":"ROOM_HISTORY_REQUEST","room_id":"{{c.room_id}}","after_seq":"{{j.last_seq}}","note":"in {{c.room_id}}: {{c.room.name}}"});
        for (label, _) in [("c", 0), ("j", 1)] {
            answers.read(&json!({"req_id": label})).unwrap();
            answers.sent(&json!({"req_id": label}));
        }
        assert!(matches!(answers.resolve(&line), Resolution::Waiting));
        answers.received(&frame(
            MessageType::RoomCreateResponse,
            json!({"success":true,"room_id":"3","name":"x","room":{"name":"x"},"req_id":"c"}),
        ));
        // Not an answer: pushes carry no req_id.
        answers.received(&frame(MessageType::RoomPeerJoined, json!({"room_id":"3"})));
        assert!(matches!(answers.resolve(&line), Resolution::Waiting));
        answers.received(&frame(
            MessageType::RoomJoinResponse,
            json!({"success":true,"room_id":"3","last_seq":41,"req_id":"j"}),
        ));
        let Resolution::Ready(v) = answers.resolve(&line) else {
            panic!("not ready");
        };
        assert_eq!(
            v,
            json!({"type":"ROOM_HISTORY_REQUEST","room_id":"3","after_seq":41,"note":"in 3: x"})
        );
    }

    /// An ERROR answer or a missing field fails the line with exit 1, naming the request.
    #[test]
    fn refused_requests_and_missing_fields_fail() {
        let mut answers = Answers::default();
        for label in ["c", "j"] {
            answers.read(&json!({"req_id": label})).unwrap();
            answers.sent(&json!({"req_id": label}));
        }
        answers.received(&frame(
            MessageType::Error,
            json!({"code":409,"message":"a room with that name exists","req_id":"c"}),
        ));
        answers.received(&frame(
            MessageType::RoomJoinResponse,
            json!({"success":true,"room_id":"3","req_id":"j"}),
        ));
        let Resolution::Failed(err) = answers.resolve(&json!({"room_id":"{{c.room_id}}"})) else {
            panic!("should fail");
        };
        assert_eq!(err.exit_code(), 1);
        assert!(err.to_string().contains("409"), "{err}");
        assert!(
            err.to_string().contains("a room with that name exists"),
            "{err}"
        );
        let Resolution::Failed(err) = answers.resolve(&json!({"seq":"{{j.seq}}"})) else {
            panic!("should fail");
        };
        assert_eq!(err.exit_code(), 1);
        assert!(err.to_string().contains("has no field seq"), "{err}");
    }

    /// Sending a label again waits for the new answer, not the old one.
    #[test]
    fn a_label_sent_again_refers_to_its_new_answer() {
        let mut answers = Answers::default();
        answers.read(&json!({"req_id":"m"})).unwrap();
        answers.sent(&json!({"req_id":"m"}));
        answers.received(&frame(
            MessageType::RoomMessageResponse,
            json!({"success":true,"seq":1,"req_id":"m"}),
        ));
        answers.sent(&json!({"req_id":"m"}));
        assert!(matches!(
            answers.resolve(&json!({"x":"{{m.seq}}"})),
            Resolution::Waiting
        ));
        answers.received(&frame(
            MessageType::RoomMessageResponse,
            json!({"success":true,"seq":2,"req_id":"m"}),
        ));
        let Resolution::Ready(v) = answers.resolve(&json!({"x":"{{m.seq}}"})) else {
            panic!("not ready");
        };
        assert_eq!(v, json!({"x":2}));
    }
}
