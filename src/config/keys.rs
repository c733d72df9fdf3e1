//! The configuration file as a JSON document: which keys exist, which belong
//! only to the RoomRTC reference, and typed reads that explain a wrong value.
//!
//! The file is parsed to a `serde_json::Value` first and walked against
//! [`SECTIONS`], instead of deserialized into structs, so that every message
//! speaks of keys and JSON values ("server.port: expected an integer from 0 to
//! 65535, got \"80\"") rather than Rust types, and so that an unknown key can be
//! refused with the nearest known one. A typo must stop the start: a
//! misspelled `server.port` would otherwise serve quietly on the default port.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::{Map, Value};

use super::ConfigError;

/// Every key Switchboard reads, by section, in the order CONFIG.md documents them.
pub const SECTIONS: &[(&str, &[&str])] = &[
    (
        "server",
        &[
            "bind_address",
            "port",
            "max_connections",
            "enable_tls",
            "pkcs12_path",
            "pkcs12_password",
            "cert_path",
            "key_path",
            "max_frame_bytes",
            "idle_timeout_secs",
            "tls_handshake_timeout_secs",
            "outbound_queue_bytes",
            "drain_timeout_secs",
        ],
    ),
    ("storage", &["data_dir", "users_file"]),
    ("auth", &["bcrypt_cost", "max_concurrent_hashes"]),
    ("calls", &["ringing_timeout_secs"]),
    ("logging", &["log_level"]),
    ("admin", &["bind_address"]),
    (
        "limits",
        &[
            "max_connections_per_ip",
            "exempt_networks",
            "login_timeout_secs",
            "frames_per_second",
            "frame_burst",
            "rate_violations_before_disconnect",
            "registrations_per_ip_per_minute",
            "registration_burst",
            "failed_logins_per_user",
            "failed_logins_per_ip",
            "login_backoff_initial_secs",
            "login_backoff_max_secs",
        ],
    ),
    (
        "sessions",
        &[
            "token_ttl_secs",
            "resume_grace_secs",
            "held_max_frames",
            "held_max_bytes",
        ],
    ),
    ("guests", &["enabled", "ttl_secs"]),
    (
        "webrtc",
        &[
            "stun_servers",
            "turn_servers",
            "turn_secret",
            "turn_credential_ttl_secs",
        ],
    ),
    (
        "rooms",
        &[
            "default_participants",
            "max_participants",
            "max_rooms_per_owner",
            "history_per_room",
            "events_per_room",
            "max_text_bytes",
            "max_invitations_per_room",
            "knocks_per_minute",
        ],
    ),
];

/// Keys of the RoomRTC reference server's configuration that Switchboard does
/// not use, each with what to know instead. They are accepted by name (their
/// values are not checked), so a reference configuration loads, and each one
/// found is reported as a warning. Everything else unknown is an error.
pub const REFERENCE_ONLY_KEYS: &[(&str, &str)] = &[
    (
        "logging.log_file_path",
        "Switchboard logs to stderr; redirect it or read the journal",
    ),
    (
        "logging.enable_console",
        "Switchboard always logs to stderr",
    ),
    (
        "logging.enable_file",
        "Switchboard logs to stderr; redirect it or read the journal",
    ),
    (
        "webrtc.rtp_port_range_start",
        "media never passes through Switchboard",
    ),
    (
        "webrtc.rtp_port_range_end",
        "media never passes through Switchboard",
    ),
    (
        "webrtc.ice_gathering_timeout_ms",
        "a client-side ICE setting",
    ),
    ("webrtc.connection_timeout_ms", "a client-side ICE setting"),
    ("webrtc.ice_policy", "a client-side ICE setting"),
    (
        "security.session_timeout_secs",
        "protocol 2 session tokens last sessions.token_ttl_secs",
    ),
    (
        "security.max_sessions_per_user",
        "a user has one session; a new login ends the previous one",
    ),
    (
        "security.enable_rate_limiting",
        "the limits.* keys always apply",
    ),
    (
        "security.max_requests_per_minute",
        "see limits.frames_per_second",
    ),
    (
        "persistence.enable_persistence",
        "users are always stored, in storage.users_file",
    ),
    ("persistence.data_directory", "see storage.data_dir"),
    (
        "persistence.auto_save_interval_secs",
        "every change is on disk before it is answered",
    ),
];

/// A whole-file problem, not about one key.
fn plain(message: impl Into<String>) -> ConfigError {
    ConfigError::plain(message)
}

/// `text` as a JSON document, or a message with the line and column of the
/// first syntax error.
pub(super) fn parse(text: &str) -> Result<Map<String, Value>, ConfigError> {
    if text.trim().is_empty() {
        return Err(plain(
            "the configuration file is empty; write {} to use every default",
        ));
    }
    let value: Value = serde_json::from_str(text).map_err(|e| {
        let (line, column) = (e.line(), e.column());
        let what = match e.classify() {
            serde_json::error::Category::Eof => {
                "the file ends inside a value (a } or ] missing?)".to_string()
            }
            _ => {
                let full = e.to_string();
                let suffix = format!(" at line {line} column {column}");
                full.strip_suffix(&suffix).unwrap_or(&full).to_string()
            }
        };
        plain(format!(
            "syntax error at line {line} column {column}: {what}"
        ))
    })?;
    match value {
        Value::Object(root) => Ok(root),
        other => Err(plain(format!(
            "the configuration must be a JSON object of sections, such as {{\"server\": {{\"port\": 8080}}}}; got {}",
            shown(&other)
        ))),
    }
}

fn reference_note(key: &str) -> Option<&'static str> {
    REFERENCE_ONLY_KEYS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, note)| *note)
}

fn section_keys(section: &str) -> Option<&'static [&'static str]> {
    SECTIONS
        .iter()
        .find(|(name, _)| *name == section)
        .map(|(_, keys)| *keys)
}

/// Sections that only the reference has (`security`, `persistence`).
fn is_reference_section(section: &str) -> bool {
    REFERENCE_ONLY_KEYS
        .iter()
        .any(|(k, _)| k.split_once('.').is_some_and(|(s, _)| s == section))
}

fn null_error(key: &str) -> ConfigError {
    ConfigError::at(
        key,
        "null is not a valid value; remove the key for the default",
    )
}

/// Refuses unknown keys (with the nearest known one), nulls, and sections that
/// are not objects; returns a warning for each reference-only key.
pub(super) fn check_keys(root: &Map<String, Value>) -> Result<Vec<String>, ConfigError> {
    let mut warnings = Vec::new();
    for (section, body) in root {
        let known = section_keys(section);
        if known.is_none() && !is_reference_section(section) {
            return Err(unknown_key(section));
        }
        let body = match body {
            Value::Object(body) => body,
            Value::Null => return Err(null_error(section)),
            other => {
                return Err(ConfigError::at(
                    section,
                    format!(
                        "expected an object of {section}.* keys, got {}",
                        shown(other)
                    ),
                ));
            }
        };
        for (name, value) in body {
            let key = format!("{section}.{name}");
            if known.is_some_and(|keys| keys.contains(&name.as_str())) {
                if value.is_null() {
                    return Err(null_error(&key));
                }
            } else if let Some(note) = reference_note(&key) {
                warnings.push(format!(
                    "{key} is a RoomRTC reference key that Switchboard does not use ({note}); ignored"
                ));
            } else {
                return Err(unknown_key(&key));
            }
        }
    }
    Ok(warnings)
}

/// Every key that may appear: Switchboard's and the reference's.
fn all_keys() -> impl Iterator<Item = String> {
    SECTIONS
        .iter()
        .flat_map(|(section, keys)| keys.iter().map(move |k| format!("{section}.{k}")))
        .chain(REFERENCE_ONLY_KEYS.iter().map(|(k, _)| (*k).to_string()))
}

fn all_sections() -> Vec<&'static str> {
    let mut sections: Vec<&str> = SECTIONS.iter().map(|(s, _)| *s).collect();
    for (key, _) in REFERENCE_ONLY_KEYS {
        if let Some((section, _)) = key.split_once('.')
            && !sections.contains(&section)
        {
            sections.push(section);
        }
    }
    sections
}

/// "unknown key server.prot; did you mean server.port?", or the keys that
/// exist there when nothing is near.
fn unknown_key(key: &str) -> ConfigError {
    let message = match suggestion(key) {
        Some(near) => format!("unknown key {key}; did you mean {near}?"),
        None => match key.split_once('.') {
            None => format!(
                "unknown key {key}; the sections are {}",
                all_sections().join(", ")
            ),
            Some((section, _)) => {
                let keys: Vec<String> = all_keys()
                    .filter_map(|k| {
                        k.strip_prefix(section)
                            .and_then(|rest| rest.strip_prefix('.'))
                            .map(str::to_string)
                    })
                    .collect();
                format!(
                    "unknown key {key}; the {section} keys are {}",
                    keys.join(", ")
                )
            }
        },
    };
    ConfigError::naming(key, message)
}

/// How far a typo may be from a known name and still be suggested.
fn close_enough(typed: &str) -> usize {
    (typed.chars().count() / 3).max(2)
}

/// The nearest key to an unknown one: a close name in the same section; the
/// same name in another section (a key put in the wrong section, or at the top
/// level); or a close full key.
fn suggestion(key: &str) -> Option<String> {
    let nearest = |typed: &str, candidates: &mut dyn Iterator<Item = String>| {
        candidates
            .map(|c| (edit_distance(typed, &c), c))
            .filter(|(d, _)| *d <= close_enough(typed))
            .min_by_key(|(d, _)| *d)
            .map(|(_, c)| c)
    };
    match key.split_once('.') {
        None => nearest(key, &mut all_sections().into_iter().map(str::to_string)).or_else(|| {
            all_keys().find(|k| k.split_once('.').is_some_and(|(_, name)| name == key))
        }),
        Some((section, name)) => {
            let in_section = nearest(
                name,
                &mut all_keys().filter_map(|k| {
                    k.strip_prefix(section)
                        .and_then(|rest| rest.strip_prefix('.'))
                        .map(str::to_string)
                }),
            );
            in_section
                .map(|n| format!("{section}.{n}"))
                .or_else(|| all_keys().find(|k| k.split_once('.').is_some_and(|(_, n)| n == name)))
                .or_else(|| nearest(key, &mut all_keys()))
        }
    }
}

/// Edits (insert, delete, substitute, swap two neighbours) from `a` to `b`:
/// the optimal-string-alignment distance, so "prot" is one edit from "port".
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows: two back (for swaps), the previous one, the current one.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        current[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (previous[j] + 1)
                .min(current[j - 1] + 1)
                .min(previous[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(before[j - 2] + 1);
            }
            current[j] = best;
        }
        std::mem::swap(&mut before, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// A JSON value as it would appear in the file, shortened if long.
fn shown(value: &Value) -> String {
    const MAX: usize = 60;
    let text = value.to_string();
    if text.chars().count() <= MAX {
        text
    } else {
        let cut: String = text.chars().take(MAX).collect();
        format!("{cut}...")
    }
}

/// Typed reads of a checked document. Each read names a key of [`SECTIONS`];
/// the keys read are remembered, so a test can show that every key in the
/// table is read and nothing else is.
pub(super) struct Doc<'a> {
    root: &'a Map<String, Value>,
    read: RefCell<BTreeSet<String>>,
}

impl<'a> Doc<'a> {
    pub(super) fn new(root: &'a Map<String, Value>) -> Doc<'a> {
        Doc {
            root,
            read: RefCell::default(),
        }
    }

    #[cfg(test)]
    pub(super) fn keys_read(&self) -> BTreeSet<String> {
        self.read.borrow().clone()
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.read.borrow_mut().insert(key.to_string());
        let (section, name) = key.split_once('.')?;
        self.root
            .get(section)?
            .as_object()?
            .get(name)
            .filter(|v| !v.is_null())
    }

    fn expected(key: &str, what: &str, got: &Value) -> ConfigError {
        ConfigError::at(key, format!("expected {what}, got {}", shown(got)))
    }

    /// A JSON integer from 0 to `max` (a fraction such as `10.0` is refused).
    pub(super) fn integer<T: TryFrom<u64>>(
        &self,
        key: &str,
        max: u64,
    ) -> Result<Option<T>, ConfigError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let what = if max == u64::MAX {
            "an integer, 0 or more".to_string()
        } else {
            format!("an integer from 0 to {max}")
        };
        value
            .as_u64()
            .filter(|&n| n <= max)
            .and_then(|n| T::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| Self::expected(key, &what, value))
    }

    pub(super) fn number(&self, key: &str) -> Result<Option<f64>, ConfigError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        value
            .as_f64()
            .map(Some)
            .ok_or_else(|| Self::expected(key, "a number", value))
    }

    pub(super) fn boolean(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        value
            .as_bool()
            .map(Some)
            .ok_or_else(|| Self::expected(key, "true or false", value))
    }

    pub(super) fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        value
            .as_str()
            .map(|s| Some(s.to_string()))
            .ok_or_else(|| Self::expected(key, "a string", value))
    }

    pub(super) fn path(&self, key: &str) -> Result<Option<PathBuf>, ConfigError> {
        Ok(self.string(key)?.map(PathBuf::from))
    }

    pub(super) fn strings(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let list = value.as_array().and_then(|items| {
            items
                .iter()
                .map(|item| item.as_str().map(str::to_string))
                .collect::<Option<Vec<String>>>()
        });
        list.map(Some)
            .ok_or_else(|| Self::expected(key, "an array of strings", value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The distance counts a swap of neighbours as one edit.
    #[test]
    fn edit_distance_counts_swaps_as_one() {
        assert_eq!(edit_distance("port", "port"), 0);
        assert_eq!(edit_distance("prot", "port"), 1);
        assert_eq!(edit_distance("prt", "port"), 1);
        assert_eq!(edit_distance("portt", "port"), 1);
        assert_eq!(edit_distance("sever", "server"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("limts", "limits"), 1);
    }

    /// Suggestions: a near name in the section, the same name elsewhere, a
    /// near section, a top-level key that belongs in a section; none when
    /// nothing is near.
    #[test]
    fn unknown_keys_get_the_nearest_known_one() {
        let s = |k: &str| suggestion(k);
        assert_eq!(s("server.prot").as_deref(), Some("server.port"));
        assert_eq!(s("server.Port").as_deref(), Some("server.port"));
        assert_eq!(
            s("limits.max_conections_per_ip").as_deref(),
            Some("limits.max_connections_per_ip")
        );
        assert_eq!(s("server.data_dir").as_deref(), Some("storage.data_dir"));
        assert_eq!(s("sever").as_deref(), Some("server"));
        assert_eq!(s("limit").as_deref(), Some("limits"));
        assert_eq!(s("port").as_deref(), Some("server.port"));
        assert_eq!(
            s("security.max_request_per_minute").as_deref(),
            Some("security.max_requests_per_minute")
        );
        assert_eq!(s("server.colour"), None);
        assert_eq!(s("switchboard_next"), None);
    }

    /// The table has no duplicates, and no reference key shadows a real one.
    #[test]
    fn the_key_tables_are_consistent() {
        let keys: Vec<String> = all_keys().collect();
        let unique: BTreeSet<&String> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len());
        for (key, note) in REFERENCE_ONLY_KEYS {
            assert!(key.contains('.') && !note.is_empty(), "{key}");
        }
    }
}
