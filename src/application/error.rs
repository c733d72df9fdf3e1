//! Typed failures of the use cases, and the one place that maps them to wire codes.

use std::fmt;
use std::time::Duration;

use crate::domain::CallError;

/// Why a request failed. Each variant has exactly one wire code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppError {
    /// 400: the request is malformed or breaks a rule.
    BadRequest(String),
    /// 401: the request needs a logged-in session.
    LoginRequired,
    /// 401: wrong username or password (never says which).
    InvalidCredentials,
    /// 401: a session token or guest session that is not (or no longer) valid.
    Unauthorized(String),
    /// 403: the requester may not do this.
    Forbidden(String),
    /// 404: the named user or call does not exist.
    NotFound(String),
    /// 409: the request conflicts with current state (name taken, user busy, ...).
    Conflict(String),
    /// 413: a frame or message is too large.
    TooLarge(String),
    /// 429: too many requests; try again after `retry_after`.
    RateLimited {
        message: String,
        retry_after: Duration,
    },
    /// 500: the server failed (storage); nothing was half-done.
    Internal(String),
    /// 503: the server cannot take this now (full, shutting down).
    Unavailable(String),
}

impl AppError {
    /// The wire code of this error (PROTOCOL.md, Error codes).
    pub fn code(&self) -> u16 {
        match self {
            AppError::BadRequest(_) => 400,
            AppError::LoginRequired | AppError::InvalidCredentials | AppError::Unauthorized(_) => {
                401
            }
            AppError::Forbidden(_) => 403,
            AppError::NotFound(_) => 404,
            AppError::Conflict(_) => 409,
            AppError::TooLarge(_) => 413,
            AppError::RateLimited { .. } => 429,
            AppError::Internal(_) => 500,
            AppError::Unavailable(_) => 503,
        }
    }
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppError::LoginRequired => f.write_str("login required"),
            AppError::InvalidCredentials => f.write_str("invalid username or password"),
            AppError::RateLimited { message, .. } => f.write_str(message),
            AppError::BadRequest(m)
            | AppError::Unauthorized(m)
            | AppError::Forbidden(m)
            | AppError::NotFound(m)
            | AppError::Conflict(m)
            | AppError::TooLarge(m)
            | AppError::Internal(m)
            | AppError::Unavailable(m) => f.write_str(m),
        }
    }
}

impl AppError {
    /// For 429: milliseconds until a retry can succeed (rounded up).
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            AppError::RateLimited { retry_after, .. } => Some(
                retry_after.as_millis() as u64
                    + u64::from(retry_after.subsec_nanos() % 1_000_000 != 0),
            ),
            _ => None,
        }
    }
}

impl std::error::Error for AppError {}

impl From<CallError> for AppError {
    fn from(err: CallError) -> AppError {
        let message = err.to_string();
        match err {
            CallError::SelfCall => AppError::BadRequest(message),
            CallError::NoSuchCall | CallError::NoCurrentCall => AppError::NotFound(message),
            CallError::NotAParty | CallError::NotCallee => AppError::Forbidden(message),
            CallError::CallerBusy
            | CallError::CalleeBusy
            | CallError::AlreadyAnswered
            | CallError::NotActive => AppError::Conflict(message),
        }
    }
}
