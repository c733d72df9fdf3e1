//! `switchboard-cli field`: one value out of a session's output, for scripts
//! that have neither jq nor the patience for sed.
//!
//! The input is what `session` prints, one JSON line per frame
//! (`{"type":"CALL_NOTIFICATION","code":9,"payload":{...}}`). A [`Query`] names a
//! message type, a path into the payload (`call_id`, `ice_servers.0.urls.0`, or
//! `.` for the whole payload), optional `KEY=VALUE` conditions on other payload
//! fields, and which match counts (the first by default). The value prints as
//! text: a string without quotes or escapes, anything else as compact JSON.
//!
//! [`Lines`] reads the input: a stream to its end, or a file another process is
//! still writing (`--wait`), polled until the line comes or a deadline passes.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::ClientError;
use crate::tcp::message::MessageType;

/// How often a followed file is read again.
const POLL: Duration = Duration::from_millis(20);

/// A path into a payload: keys, and indexes into arrays; empty for the whole payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    /// Parses `a.b.0`; `.` is the whole payload.
    ///
    /// # Errors
    /// A message for an empty path or an empty component (`a..b`).
    pub fn parse(text: &str) -> Result<FieldPath, String> {
        if text == "." {
            return Ok(FieldPath(Vec::new()));
        }
        let parts: Vec<String> = text.split('.').map(str::to_string).collect();
        if parts.iter().any(String::is_empty) {
            return Err(format!(
                "{text:?} is not a field path: write keys separated by dots (call_id, \
                 ice_servers.0.urls), or . for the whole payload"
            ));
        }
        Ok(FieldPath(parts))
    }

    /// The value at this path in `value`, if there is one. A number indexes an array.
    pub fn get<'a>(&self, value: &'a Value) -> Option<&'a Value> {
        self.0.iter().try_fold(value, |v, part| match v {
            Value::Object(map) => map.get(part),
            Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        })
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str(".")
        } else {
            f.write_str(&self.0.join("."))
        }
    }
}

/// A value as a script wants it: a string as its text, anything else as compact JSON.
pub fn render(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// `KEY=VALUE`: the payload's field KEY, rendered, equals VALUE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub path: FieldPath,
    pub value: String,
}

impl Condition {
    /// Parses `KEY=VALUE` (the first `=` splits; VALUE may be empty or hold `=`).
    ///
    /// # Errors
    /// A message when there is no `=` or KEY is no field path.
    pub fn parse(text: &str) -> Result<Condition, String> {
        let (key, value) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: expected KEY=VALUE"))?;
        Ok(Condition {
            path: FieldPath::parse(key)?,
            value: value.to_string(),
        })
    }

    fn holds(&self, payload: &Value) -> bool {
        self.path
            .get(payload)
            .is_some_and(|v| render(v) == self.value)
    }
}

/// Which value to pull out of which line.
#[derive(Debug, Clone)]
pub struct Query {
    pub kind: MessageType,
    pub path: FieldPath,
    pub conditions: Vec<Condition>,
    /// The how-manieth matching line counts, from 1.
    pub nth: usize,
}

impl Query {
    fn matches<'a>(&self, line: &'a Value) -> Option<&'a Value> {
        if line.get("code").and_then(Value::as_u64) != Some(u64::from(self.kind.code())) {
            return None;
        }
        let payload = line.get("payload")?;
        self.conditions
            .iter()
            .all(|c| c.holds(payload))
            .then_some(payload)
    }

    /// What the query says when no line answers it.
    pub fn describe(&self) -> String {
        let mut text = format!("{} line", self.kind.name());
        for (i, c) in self.conditions.iter().enumerate() {
            text.push_str(if i == 0 { " with " } else { " and " });
            text.push_str(&format!("{}={}", c.path, c.value));
        }
        if self.nth > 1 {
            text.push_str(&format!(" (--nth {})", self.nth));
        }
        text
    }
}

/// Runs a query over lines, one at a time.
#[derive(Debug)]
pub struct Search {
    query: Query,
    seen: usize,
    line_number: usize,
}

impl Search {
    pub fn new(query: Query) -> Search {
        Search {
            query,
            seen: 0,
            line_number: 0,
        }
    }

    /// Feeds one line. `Some(Ok(value))` once the query's line came;
    /// `Some(Err(..))` if it came without the field. Lines that are not JSON
    /// objects are skipped.
    pub fn feed(&mut self, line: &str) -> Option<Result<String, ClientError>> {
        self.line_number += 1;
        let value: Value = serde_json::from_str(line.trim()).ok()?;
        let payload = self.query.matches(&value)?;
        self.seen += 1;
        if self.seen < self.query.nth {
            return None;
        }
        Some(match self.query.path.get(payload) {
            Some(field) => Ok(render(field)),
            None => Err(ClientError::NotFound(format!(
                "the {} on input line {} has no field {}",
                self.query.kind.name(),
                self.line_number,
                self.query.path
            ))),
        })
    }

    /// The error for input that ended without the line.
    pub fn not_found(&self, source: &str) -> ClientError {
        ClientError::NotFound(format!("no {} in {source}", self.query.describe()))
    }

    pub fn query(&self) -> &Query {
        &self.query
    }
}

/// Where the lines come from.
pub enum Lines {
    /// A stream read to its end (stdin, or a finished file).
    Stream(Box<dyn BufRead>),
    /// A file another process may still be writing: read as it grows.
    Follow { path: PathBuf, deadline: Instant },
}

fn cannot_read(path: &Path, e: io::Error) -> ClientError {
    ClientError::Usage(format!("cannot read {}: {e}", path.display()))
}

/// Runs `search` over `lines` until it answers.
///
/// # Errors
/// [`ClientError::NotFound`] (exit 1) when the input ends without the line or
/// the line lacks the field, [`ClientError::Timeout`] when a followed file does
/// not get it in time, [`ClientError::Usage`] when the input cannot be read.
pub fn find(search: &mut Search, lines: Lines, source: &str) -> Result<String, ClientError> {
    match lines {
        Lines::Stream(mut reader) => {
            let mut line = String::new();
            loop {
                line.clear();
                let n = reader
                    .read_line(&mut line)
                    .map_err(|e| ClientError::Usage(format!("cannot read {source}: {e}")))?;
                if n == 0 {
                    return Err(search.not_found(source));
                }
                if let Some(found) = search.feed(&line) {
                    return found;
                }
            }
        }
        Lines::Follow { path, deadline } => follow(search, &path, deadline),
    }
}

fn follow(search: &mut Search, path: &Path, deadline: Instant) -> Result<String, ClientError> {
    let timed_out = |search: &Search| {
        ClientError::Timeout(format!(
            "waiting for {} in {}",
            search.query().describe(),
            path.display()
        ))
    };
    // The file may not exist yet: the session writing it may just be starting.
    let file = loop {
        match File::open(path) {
            Ok(file) => break file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if Instant::now() >= deadline {
                    return Err(timed_out(search));
                }
                thread::sleep(POLL);
            }
            Err(e) => return Err(cannot_read(path, e)),
        }
    };
    let mut reader = BufReader::new(file);
    // Bytes of a line whose end has not been written yet.
    let mut partial: Vec<u8> = Vec::new();
    loop {
        let n = reader
            .read_until(b'\n', &mut partial)
            .map_err(|e| cannot_read(path, e))?;
        if n > 0 && partial.ends_with(b"\n") {
            let line = String::from_utf8_lossy(&partial).into_owned();
            partial.clear();
            if let Some(found) = search.feed(&line) {
                return found;
            }
            continue;
        }
        // At the end of what is written so far.
        if Instant::now() >= deadline {
            return Err(timed_out(search));
        }
        thread::sleep(POLL);
    }
}

/// A reader over stdin for [`Lines::Stream`].
pub fn stdin_lines() -> Lines {
    Lines::Stream(Box::new(BufReader::new(io::stdin())))
}

/// A reader over a finished file for [`Lines::Stream`].
///
/// # Errors
/// A usage error if the file cannot be opened.
pub fn file_lines(path: &Path) -> Result<Lines, ClientError> {
    let file = File::open(path).map_err(|e| cannot_read(path, e))?;
    Ok(Lines::Stream(Box::new(BufReader::new(file))))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const OUTPUT: &str = concat!(
        r#"{"type":"WELCOME","code":22,"payload":{"protocol_version":2}}"#,
        "\n",
        r#"{"type":"LOGIN_RESPONSE","code":2,"payload":{"success":true,"user_id":"2","username":"bob","session_token":"sb1.x","expires_at":7,"ice_servers":[{"urls":["stun:a:3478","stun:b:3478"]}]}}"#,
        "\n",
        "not json at all\n",
        r#"{"type":"CALL_NOTIFICATION","code":9,"payload":{"call_id":"11","from_user_id":"1","from_username":"alice"}}"#,
        "\n",
        r#"{"type":"ERROR","code":18,"payload":{"code":404,"message":"no such user","req_id":7}}"#,
        "\n",
        r#"{"type":"CALL_NOTIFICATION","code":9,"payload":{"call_id":"12","from_user_id":"3","from_username":"carol"}}"#,
        "\n",
    );

    fn query(kind: MessageType, path: &str, conditions: &[&str], nth: usize) -> Query {
        Query {
            kind,
            path: FieldPath::parse(path).unwrap(),
            conditions: conditions
                .iter()
                .map(|c| Condition::parse(c).unwrap())
                .collect(),
            nth,
        }
    }

    fn run(q: Query) -> Result<String, ClientError> {
        let mut search = Search::new(q);
        let lines = Lines::Stream(Box::new(io::Cursor::new(OUTPUT.as_bytes().to_vec())));
        find(&mut search, lines, "the test input")
    }

    /// Strings print bare, other values as compact JSON; arrays index by number.
    #[test]
    fn fields_print_as_text_or_compact_json() {
        use MessageType::*;
        assert_eq!(
            run(query(LoginResponse, "session_token", &[], 1)).unwrap(),
            "sb1.x"
        );
        assert_eq!(
            run(query(LoginResponse, "expires_at", &[], 1)).unwrap(),
            "7"
        );
        assert_eq!(
            run(query(LoginResponse, "success", &[], 1)).unwrap(),
            "true"
        );
        assert_eq!(
            run(query(LoginResponse, "ice_servers.0.urls.1", &[], 1)).unwrap(),
            "stun:b:3478"
        );
        assert_eq!(
            run(query(LoginResponse, "ice_servers.0", &[], 1)).unwrap(),
            r#"{"urls":["stun:a:3478","stun:b:3478"]}"#
        );
        assert_eq!(
            run(query(Welcome, ".", &[], 1)).unwrap(),
            r#"{"protocol_version":2}"#
        );
    }

    /// The first match counts, unless --nth or --where pick another; integers
    /// compare as their digits.
    #[test]
    fn nth_and_conditions_pick_the_line() {
        use MessageType::*;
        assert_eq!(
            run(query(CallNotification, "call_id", &[], 1)).unwrap(),
            "11"
        );
        assert_eq!(
            run(query(CallNotification, "call_id", &[], 2)).unwrap(),
            "12"
        );
        assert_eq!(
            run(query(
                CallNotification,
                "call_id",
                &["from_username=carol"],
                1
            ))
            .unwrap(),
            "12"
        );
        assert_eq!(
            run(query(Error, "message", &["req_id=7", "code=404"], 1)).unwrap(),
            "no such user"
        );
    }

    /// No matching line, or a line without the field, is exit 1 with a message
    /// naming what was looked for.
    #[test]
    fn a_missing_line_or_field_says_which() {
        use MessageType::*;
        let err = run(query(CallNotification, "call_id", &[], 3)).unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert!(
            err.to_string()
                .contains("no CALL_NOTIFICATION line (--nth 3)"),
            "{err}"
        );
        let err = run(query(Hangup, "call_id", &[], 1)).unwrap_err();
        assert!(
            err.to_string().contains("no HANGUP line in the test input"),
            "{err}"
        );
        let err = run(query(CallNotification, "sdp", &[], 1)).unwrap_err();
        assert!(
            err.to_string().contains("input line 4 has no field sdp"),
            "{err}"
        );
        let err = run(query(Error, "message", &["req_id=8"], 1)).unwrap_err();
        assert!(err.to_string().contains("with req_id=8"), "{err}");
    }

    /// Paths and conditions that cannot mean anything are refused.
    #[test]
    fn bad_paths_and_conditions_are_refused() {
        for bad in ["", "a..b", ".a", "a."] {
            assert!(FieldPath::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Condition::parse("call_id").is_err());
        assert_eq!(
            Condition::parse("sdp=a=b").unwrap().value,
            "a=b",
            "the first = splits"
        );
    }

    /// A followed file is read as it grows: a line written in two pieces counts
    /// once whole; a file that never gets the line times out.
    #[test]
    fn a_followed_file_is_read_as_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bob.out");
        let writer_path = path.clone();
        let writer = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            let mut f = File::create(&writer_path).unwrap();
            f.write_all(&OUTPUT.as_bytes()[..20]).unwrap();
            f.flush().unwrap();
            thread::sleep(Duration::from_millis(50));
            f.write_all(&OUTPUT.as_bytes()[20..]).unwrap();
        });
        let mut search = Search::new(query(MessageType::CallNotification, "call_id", &[], 2));
        let lines = Lines::Follow {
            path: path.clone(),
            deadline: Instant::now() + Duration::from_secs(10),
        };
        assert_eq!(find(&mut search, lines, "bob.out").unwrap(), "12");
        writer.join().unwrap();
        let mut search = Search::new(query(MessageType::Hangup, "call_id", &[], 1));
        let lines = Lines::Follow {
            path,
            deadline: Instant::now() + Duration::from_millis(100),
        };
        let err = find(&mut search, lines, "bob.out").unwrap_err();
        assert_eq!(err.exit_code(), 4, "{err}");
    }
}
