//! The client side, for `switchboard-cli` and anyone scripting the daemon.
//!
//! # Layout
//!
//! - [`connection`]: one TCP or TLS connection, frames in and out, every wait
//!   bounded by a deadline. The socket is non-blocking and waits are poll(2), so
//!   the thread that owns it can also wait on another descriptor.
//! - [`commands`]: the one-shot requests: register, login, user list, ping.
//! - [`login`]: HELLO (protocol 2) and logging in by password, session token
//!   (RESUME, falling back to the password on a 401) or as a guest.
//! - [`token`]: the session token file (`--token-file`), written atomically
//!   with mode 0600 and kept in step with a session.
//! - [`session`]: JSON-line mode: commands from a reader, every received frame
//!   out as one JSON line.
//! - [`script`]: `{{REQ_ID.PATH}}` in session input, filled in from earlier answers.
//! - [`field`]: one value out of a session's output, for scripts.
//! - [`password`]: where the secret comes from (flag, file, environment, prompt).
//! - [`ClientError`] and [`exit`]: what went wrong, and the documented exit code
//!   for each kind of failure.
//!
//! The codec and the type table are the daemon's own ([`crate::tcp::frame`],
//! [`crate::tcp::message`]): the client never re-implements them.

pub mod commands;
pub mod connection;
pub mod field;
pub mod login;
pub mod password;
pub mod script;
pub mod session;
pub mod token;

use std::fmt;
use std::io;
use std::time::Duration;

pub use connection::{ConnectOptions, Connection, Event, Frame, TlsTrust};

/// The exit codes of `switchboard-cli`, one per kind of outcome.
pub mod exit {
    pub const SUCCESS: u8 = 0;
    /// The server answered with an error (ERROR, or `success:false`); also
    /// `field` finding no such line or field.
    pub const SERVER_ERROR: u8 = 1;
    /// Bad arguments or input; also clap's code for usage errors.
    pub const USAGE: u8 = 2;
    /// No connection: TCP connect or TLS handshake failed, or the connection was lost.
    pub const CANNOT_CONNECT: u8 = 3;
    /// The deadline passed first.
    pub const TIMEOUT: u8 = 4;
}

/// Why a client operation failed. [`ClientError::exit_code`] maps each to [`exit`].
#[derive(Debug)]
pub enum ClientError {
    /// Bad arguments or input: a password source, a CA file, a session input line.
    Usage(String),
    /// No TCP connection to `addr` (refused, unreachable, unknown host).
    Connect { addr: String, source: io::Error },
    /// The TLS handshake failed: untrusted certificate, wrong hostname, not TLS.
    Handshake { addr: String, message: String },
    /// The connection broke, or the server closed it, before the answer came.
    ConnectionLost(String),
    /// The deadline passed while doing what the text says.
    Timeout(String),
    /// The server refused: an ERROR frame or a LOGIN/REGISTER response with
    /// `success:false`. `code` is the wire error code when the server sent one.
    Server { code: Option<u16>, message: String },
    /// The server sent something this client cannot read.
    Protocol(String),
    /// `field`: the input has no such line, or the line no such field.
    NotFound(String),
    /// Writing the output failed (stdout closed).
    Output(io::Error),
}

impl ClientError {
    /// The documented exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Usage(_) => exit::USAGE,
            ClientError::Connect { .. }
            | ClientError::Handshake { .. }
            | ClientError::ConnectionLost(_) => exit::CANNOT_CONNECT,
            ClientError::Timeout(_) => exit::TIMEOUT,
            ClientError::Server { .. }
            | ClientError::Protocol(_)
            | ClientError::NotFound(_)
            | ClientError::Output(_) => exit::SERVER_ERROR,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Usage(m) => f.write_str(m),
            ClientError::Connect { addr, source } => {
                write!(f, "cannot connect to {addr}: {source}")
            }
            ClientError::Handshake { addr, message } => {
                write!(f, "TLS handshake with {addr} failed: {message}")
            }
            ClientError::ConnectionLost(m) => write!(f, "connection lost: {m}"),
            ClientError::Timeout(what) => write!(f, "timed out {what}"),
            ClientError::Server {
                code: Some(code),
                message,
            } => write!(f, "server error {code}: {message}"),
            ClientError::Server {
                code: None,
                message,
            } => write!(f, "server error: {message}"),
            ClientError::Protocol(m) => write!(f, "protocol error: {m}"),
            ClientError::NotFound(m) => f.write_str(m),
            ClientError::Output(e) => write!(f, "cannot write output: {e}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Connect { source, .. } | ClientError::Output(source) => Some(source),
            _ => None,
        }
    }
}

/// Parses a duration in seconds, fractions allowed (`0.25`); `zero_ok` admits `0`.
///
/// # Errors
/// A message for anything that is not a finite, non-negative number of seconds.
pub fn parse_seconds(text: &str, zero_ok: bool) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !secs.is_finite() || secs < 0.0 || (secs == 0.0 && !zero_ok) {
        let least = if zero_ok { "0 or more" } else { "more than 0" };
        return Err(format!("{text:?}: seconds must be {least}"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kind of failure maps to its documented exit code.
    #[test]
    fn every_failure_has_its_documented_exit_code() {
        let io = || io::Error::from(io::ErrorKind::ConnectionRefused);
        let cases = [
            (ClientError::Usage("x".into()), 2),
            (
                ClientError::Connect {
                    addr: "a".into(),
                    source: io(),
                },
                3,
            ),
            (
                ClientError::Handshake {
                    addr: "a".into(),
                    message: "m".into(),
                },
                3,
            ),
            (ClientError::ConnectionLost("x".into()), 3),
            (ClientError::Timeout("x".into()), 4),
            (
                ClientError::Server {
                    code: Some(401),
                    message: "no".into(),
                },
                1,
            ),
            (ClientError::Protocol("x".into()), 1),
            (ClientError::NotFound("x".into()), 1),
            (ClientError::Output(io()), 1),
        ];
        for (err, code) in cases {
            assert_eq!(err.exit_code(), code, "{err}");
        }
    }

    /// Seconds accept fractions and refuse negatives, NaN and (unless allowed) zero.
    #[test]
    fn seconds_accept_fractions_and_refuse_nonsense() {
        assert_eq!(parse_seconds("0.25", false), Ok(Duration::from_millis(250)));
        assert_eq!(parse_seconds("10", false), Ok(Duration::from_secs(10)));
        assert_eq!(parse_seconds("0", true), Ok(Duration::ZERO));
        for bad in ["0", "-1", "NaN", "inf", "ten", ""] {
            assert!(parse_seconds(bad, false).is_err(), "{bad}");
        }
    }
}
