//! The operator's use cases: `switchboard user add|del|list|passwd|kick`.
//!
//! The same code serves both ways in: over the daemon's admin socket while it
//! runs (then `sessions` is the live hub, and a deletion or a kick ends the
//! user's session on the spot), and directly on the files while it is stopped
//! (no hub: nobody is online). Each change is on disk before it returns, as the
//! protocol's own requests are. Passwords are hashed through the
//! [`Authenticator`]'s gate, outside every lock. This module holds no lock of
//! its own.

use std::sync::Arc;

use log::{info, warn};

use super::auth::Authenticator;
use super::error::AppError;
use super::hub::Hub;
use super::ports::{RevocationStore, SessionEnd, StoreError, UserRecord, UserStore};
use crate::domain::UserId;

/// A registered user as the operator sees it: never the password hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSummary {
    pub id: UserId,
    pub username: String,
    /// Unix seconds.
    pub created_at: u64,
}

impl UserSummary {
    /// `created_at` as a UTC date and time, RFC 3339 (`2026-11-30T15:04:05Z`).
    pub fn created_at_utc(&self) -> String {
        rfc3339_utc(self.created_at)
    }
}

impl From<&UserRecord> for UserSummary {
    fn from(u: &UserRecord) -> UserSummary {
        UserSummary {
            id: u.id,
            username: u.username.clone(),
            created_at: u.created_at,
        }
    }
}

/// What a kick did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kicked {
    pub user: UserSummary,
    /// Whether the user had a session (which is now ended).
    pub session_ended: bool,
}

/// The operator's view of users and sessions.
pub struct UserAdmin {
    users: Arc<dyn UserStore>,
    auth: Arc<Authenticator>,
    revocations: Arc<dyn RevocationStore>,
    /// The running daemon's hub; `None` when working on the files of a stopped one.
    sessions: Option<Arc<Hub>>,
}

impl UserAdmin {
    pub fn new(
        users: Arc<dyn UserStore>,
        auth: Arc<Authenticator>,
        revocations: Arc<dyn RevocationStore>,
        sessions: Option<Arc<Hub>>,
    ) -> UserAdmin {
        UserAdmin {
            users,
            auth,
            revocations,
            sessions,
        }
    }

    fn find(&self, username: &str) -> Result<UserRecord, AppError> {
        self.users
            .find_by_name(username)
            .ok_or_else(|| AppError::NotFound(format!("no such user: {username}")))
    }

    /// Every registered user, in id order.
    pub fn list(&self) -> Vec<UserSummary> {
        self.users
            .list()
            .iter()
            .filter_map(|(id, _)| self.users.find_by_id(*id))
            .map(|u| UserSummary::from(&u))
            .collect()
    }

    /// Registers a user as REGISTER does (the same rules, durable before it
    /// returns, in every USER_LIST from then on), without the per-address limit.
    ///
    /// # Errors
    /// 400 bad name or secret, 409 name taken, 500 storage.
    pub fn add(&self, username: &str, secret: &str) -> Result<UserSummary, AppError> {
        let user = self.auth.register_by_operator(username, secret)?;
        info!(
            "operator added user_id={} username={}",
            user.id, user.username
        );
        Ok(UserSummary::from(&user))
    }

    /// Sets a user's password without the old one. Their session tokens stop
    /// working, as after PASSWORD_CHANGE; a session open now stays open (kick
    /// ends it).
    ///
    /// # Errors
    /// 400 bad secret, 404 no such user, 500 storage.
    pub fn passwd(&self, username: &str, secret: &str) -> Result<UserSummary, AppError> {
        let user = self.auth.reset_password(username, secret)?;
        info!(
            "operator changed the password of user_id={} username={}",
            user.id, user.username
        );
        Ok(UserSummary::from(&user))
    }

    /// Deletes an account as ACCOUNT_DELETE does: durably, then its session
    /// ends (the client is told "account deleted" and closed), its call ends
    /// and everyone sees it Disconnected. Its tokens die with the account.
    ///
    /// # Errors
    /// 404 no such user, 500 storage (the account stays).
    pub fn delete(&self, username: &str) -> Result<UserSummary, AppError> {
        let user = self.find(username)?;
        match self.users.delete_user(user.id) {
            Ok(true) => {}
            Ok(false) => return Err(AppError::NotFound(format!("no such user: {username}"))),
            Err(err) => {
                warn!("operator deletion not stored user_id={}: {err}", user.id);
                let cause = match err {
                    StoreError::Io(err) => err.to_string(),
                    StoreError::Conflict => "conflicting change".into(),
                };
                return Err(AppError::Internal(format!(
                    "could not delete the account: {cause}"
                )));
            }
        }
        if let Some(hub) = &self.sessions {
            hub.end_user(user.id, SessionEnd::AccountDeleted, None);
        }
        info!(
            "operator deleted user_id={} username={}",
            user.id, user.username
        );
        Ok(UserSummary::from(&user))
    }

    /// Ends a user's sessions: every session token issued to them is revoked
    /// (durably, first, so the client cannot RESUME), then a live session is
    /// ended: the client gets ERROR 401 "session ended by an operator" and is
    /// closed, its call ends. The account stays; the user may log in again
    /// with the password.
    ///
    /// # Errors
    /// 404 no such user, 500 if the revocation could not be stored (nothing
    /// was ended).
    pub fn kick(&self, username: &str) -> Result<Kicked, AppError> {
        let user = self.find(username)?;
        self.revocations
            .revoke_all(user.id)
            .map_err(|e| AppError::Internal(format!("could not revoke the session tokens: {e}")))?;
        let session_ended = self
            .sessions
            .as_ref()
            .is_some_and(|hub| hub.end_user(user.id, SessionEnd::Kicked, None));
        info!(
            "operator kicked user_id={} username={} session_ended={session_ended}",
            user.id, user.username
        );
        Ok(Kicked {
            user: UserSummary::from(&user),
            session_ended,
        })
    }
}

/// Unix seconds as an RFC 3339 UTC timestamp, `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339_utc(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// civil_from_days, for non-negative day counts): the calendar repeats every
/// 400 years (146,097 days), eras start on March 1st so the leap day is last.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, 0..=146_096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known instants, leap days and century rules included.
    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(rfc3339_utc(1_709_251_200), "2024-03-01T00:00:00Z");
        assert_eq!(rfc3339_utc(1_796_051_045), "2026-11-30T15:04:05Z");
        assert_eq!(rfc3339_utc(4_107_542_400), "2100-03-01T00:00:00Z");
        assert_eq!(rfc3339_utc(253_402_300_799), "9999-12-31T23:59:59Z");
    }

    /// Every day from 1970 for 1,000 years follows the previous one.
    #[test]
    fn consecutive_days_are_consecutive_dates() {
        let leap =
            |y: u64| y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400));
        let mut prev = civil_from_days(0);
        assert_eq!(prev, (1970, 1, 1));
        for days in 1..365_250 {
            let (y, m, d) = civil_from_days(days);
            let (py, pm, pd) = prev;
            let month_len = match pm {
                2 if leap(py) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            let expected = if pd < month_len {
                (py, pm, pd + 1)
            } else if pm < 12 {
                (py, pm + 1, 1)
            } else {
                (py + 1, 1, 1)
            };
            assert_eq!((y, m, d), expected, "day {days}");
            prev = (y, m, d);
        }
    }
}
