//! Accounts: the use cases that open, renew and end a user's session, each of
//! which coordinates several components: the authenticator (passwords and
//! back-off), the session tokens and their revocation journal, and the hub
//! (who is online where).
//!
//! The order of the steps is what these use cases are for:
//! - LOGOUT revokes the user's tokens durably *before* it ends the session,
//!   and ends a session a RESUME opened meanwhile, so a revoked token never
//!   keeps a session alive;
//! - RESUME checks the token, opens the session, then checks the token again
//!   and undoes the session if a LOGOUT or password change revoked it in
//!   between;
//! - a guest login checks the name, the per-address allowance, then opens the
//!   session.
//!
//! The tcp handlers call these and only shape the answers; this module holds
//! no lock of its own (the components it calls each take theirs, one at a
//! time, and none is held across bcrypt or an fsync).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::info;

use super::hub::{Resumed, SessionKind};
use super::{AppError, Authenticator, ConnId, Hub, Issued, SessionEnd, SessionTokens, UserRecord};
use crate::clock::unix_secs;
use crate::domain::{UserId, guest_name};
use crate::metrics::Metrics;

pub struct Accounts {
    hub: Arc<Hub>,
    auth: Arc<Authenticator>,
    tokens: SessionTokens,
    metrics: Arc<Metrics>,
    /// How long a guest session lasts; `None`: guest logins are refused.
    guest_ttl: Option<Duration>,
}

/// A guest that was let in.
pub struct GuestAdmitted {
    pub record: UserRecord,
    /// When the guest session ends (Unix seconds).
    pub expires_at: u64,
}

impl Accounts {
    pub fn new(
        hub: Arc<Hub>,
        auth: Arc<Authenticator>,
        tokens: SessionTokens,
        metrics: Arc<Metrics>,
        guest_ttl: Option<Duration>,
    ) -> Accounts {
        Accounts {
            hub,
            auth,
            tokens,
            metrics,
            guest_ttl,
        }
    }

    /// LOGIN: checks the password (with back-off) and opens the session on
    /// `conn`, taking over an older one.
    ///
    /// # Errors
    /// As [`Authenticator::verify`] and [`Hub::login`].
    pub fn login(
        &self,
        conn: ConnId,
        username: &str,
        secret: &str,
        from: IpAddr,
        kind: SessionKind,
    ) -> Result<UserRecord, AppError> {
        let user = self.auth.verify(username, secret, from)?;
        self.hub.login(conn, &user, kind)?;
        Ok(user)
    }

    /// LOGOUT: the user's tokens die with the session, durably, before the
    /// LOGOUT is acknowledged (whichever protocol logs out).
    ///
    /// # Errors
    /// `LoginRequired`/`Conflict` if `conn` does not hold `user`'s session;
    /// `Internal` if the revocation cannot be stored (nothing ends then).
    pub fn logout(&self, conn: ConnId, user: UserId) -> Result<(), AppError> {
        self.hub.check_session(conn, user)?;
        if !user.is_guest() {
            self.tokens.revoke_all(user)?;
        }
        if let Err(err) = self.hub.logout(conn, user) {
            // A RESUME took the session over while the tokens were being
            // revoked: a session opened by a revoked token must not outlive
            // the LOGOUT.
            self.hub.end_user(user, SessionEnd::LoggedOut, Some(conn));
            return Err(err);
        }
        Ok(())
    }

    /// RESUME: a login by session token, without bcrypt. A held call or
    /// held rooms go on.
    ///
    /// # Errors
    /// [`ResumeError::Refused`] for a forged, expired or revoked token (also
    /// one revoked while this RESUME was on its way), counted;
    /// [`ResumeError::Failed`] when the hub refuses the session.
    pub fn resume(
        &self,
        conn: ConnId,
        token: &str,
        kind: SessionKind,
    ) -> Result<(UserRecord, Resumed), ResumeError> {
        let refused = |err: AppError| {
            Metrics::count(&self.metrics.resumes_refused);
            info!("resume refused conn={conn} reason={err}");
            ResumeError::Refused(err)
        };
        let user = self.tokens.verify(token, unix_secs()).map_err(refused)?;
        let resumed = self
            .hub
            .resume(conn, &user, kind)
            .map_err(ResumeError::Failed)?;
        // A LOGOUT (or password change) that revoked the token while this
        // RESUME was on its way must win: check again now that the session is
        // in place, and undo it if the token died meanwhile.
        if let Err(err) = self.tokens.verify(token, unix_secs()) {
            let _ = self.hub.logout(conn, user.id);
            return Err(refused(err));
        }
        Metrics::count(&self.metrics.resumes);
        Ok((user, resumed))
    }

    /// GUEST_LOGIN: a temporary identity, never stored, gone after the guest
    /// TTL; it counts against the per-address account allowance.
    ///
    /// # Errors
    /// `Forbidden` when guests are disabled, `BadRequest` for an unusable
    /// display name, `Conflict` for a registered user's or an online guest's
    /// name, 429 over the address's allowance.
    pub fn guest_login(
        &self,
        conn: ConnId,
        display_name: &str,
        from: IpAddr,
    ) -> Result<GuestAdmitted, AppError> {
        let ttl = self.guest_ttl.ok_or_else(|| {
            AppError::Forbidden("guest logins are disabled on this server".into())
        })?;
        let name = guest_name(display_name)
            .map_err(|e| AppError::BadRequest(format!("display_name: {e}")))?;
        if !self.hub.guest_name_free(display_name) {
            return Err(AppError::Conflict(
                "that name belongs to a registered user; choose another display_name".into(),
            ));
        }
        self.auth.admit_guest(from)?;
        let record = self
            .hub
            .guest_login(conn, name, Instant::now() + ttl, true)?;
        Ok(GuestAdmitted {
            record,
            expires_at: unix_secs() + ttl.as_secs(),
        })
    }

    /// A fresh session token for a registered user (a protocol 2 login).
    pub fn issue_token(&self, user: &UserRecord) -> Issued {
        self.tokens.issue(user, unix_secs())
    }

    /// TOKEN_REFRESH: a fresh token for the session on `conn`.
    ///
    /// # Errors
    /// Not `user`'s session on `conn`; a guest; a deleted account.
    pub fn refresh_token(&self, conn: ConnId, user: UserId) -> Result<Issued, AppError> {
        self.hub.check_session(conn, user)?;
        let record = self.registered(user)?;
        Ok(self.issue_token(&record))
    }

    /// PASSWORD_CHANGE: checks the current password (with back-off) and
    /// stores the new one durably. Every earlier token is void afterwards
    /// (tokens carry a fingerprint of the stored hash); a fresh one is issued
    /// when `issue` is set (protocol 2).
    ///
    /// # Errors
    /// As [`Authenticator::change_password`], plus the session checks.
    pub fn change_password(
        &self,
        conn: ConnId,
        user: UserId,
        old: &str,
        new: &str,
        from: IpAddr,
        issue: bool,
    ) -> Result<Option<Issued>, AppError> {
        self.hub.check_session(conn, user)?;
        let record = self.registered(user)?;
        let record = self
            .auth
            .change_password(&record.username, old, new, from)?;
        Ok(issue.then(|| self.issue_token(&record)))
    }

    /// ACCOUNT_DELETE: checks the password, removes the account durably, then
    /// ends the user's session everywhere but on `conn` (which stays open,
    /// logged out).
    ///
    /// # Errors
    /// As [`Authenticator::delete_account`], plus the session checks.
    pub fn delete_account(
        &self,
        conn: ConnId,
        user: UserId,
        secret: &str,
        from: IpAddr,
    ) -> Result<UserRecord, AppError> {
        self.hub.check_session(conn, user)?;
        let record = self.registered(user)?;
        let record = self.auth.delete_account(&record.username, secret, from)?;
        self.hub
            .end_user(user, SessionEnd::AccountDeleted, Some(conn));
        Ok(record)
    }

    /// The stored record of a logged-in registered user; guests have none.
    ///
    /// # Errors
    /// `Forbidden` for a guest, `Unauthorized` for a deleted account.
    pub fn registered(&self, user: UserId) -> Result<UserRecord, AppError> {
        if user.is_guest() {
            return Err(AppError::Forbidden(
                "guests have no account or session token".into(),
            ));
        }
        self.hub
            .users()
            .find_by_id(user)
            .ok_or_else(|| AppError::Unauthorized("the account was deleted".into()))
    }
}

/// Why a RESUME did not open a session.
#[derive(Debug)]
pub enum ResumeError {
    /// The token is forged, expired or revoked (counted as a refused resume).
    Refused(AppError),
    /// The token is good but the session could not be opened (shutting down,
    /// account deleted since).
    Failed(AppError),
}

impl From<ResumeError> for AppError {
    fn from(err: ResumeError) -> AppError {
        match err {
            ResumeError::Refused(e) | ResumeError::Failed(e) => e,
        }
    }
}
