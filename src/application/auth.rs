//! Registration and login: bcrypt outside every lock, through a gate that bounds
//! how many hashes run at once so a login flood cannot starve signaling.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, warn};
use sha2::{Digest, Sha256};

use super::error::AppError;
use super::ports::{StoreError, UserRecord, UserStore};
use crate::domain::limits::{Backoff, BackoffPolicy, Window};
use crate::domain::user::username_key;
use crate::domain::{validate_secret, validate_username};
use crate::metrics::Metrics;

/// bcrypt reads at most 72 bytes of input and ignores the rest.
const BCRYPT_INPUT_MAX: usize = 72;

/// bcrypt at a fixed cost, at most `limit` hashes at a time.
pub struct PasswordHasher {
    cost: u32,
    limit: usize,
    running: Mutex<usize>,
    freed: Condvar,
    /// A real hash of nothing anyone knows, verified against when a username is
    /// unknown, so that answer takes as long as a wrong password.
    decoy: String,
    metrics: Arc<Metrics>,
}

impl PasswordHasher {
    /// # Errors
    /// If bcrypt refuses the cost (outside 4..=31).
    pub fn new(
        cost: u32,
        limit: usize,
        metrics: Arc<Metrics>,
    ) -> Result<PasswordHasher, bcrypt::BcryptError> {
        let decoy = bcrypt::hash(b"switchboard decoy secret", cost)?;
        Ok(PasswordHasher {
            cost,
            limit: limit.max(1),
            running: Mutex::new(0),
            freed: Condvar::new(),
            decoy,
            metrics,
        })
    }

    /// Hashes a client secret for storage.
    ///
    /// # Errors
    /// If bcrypt fails (it does not for valid costs).
    pub fn hash(&self, secret: &str) -> Result<String, AppError> {
        self.gated(|| bcrypt::hash(bcrypt_input(secret), self.cost))
            .map_err(|e| AppError::Internal(format!("password hashing failed: {e}")))
    }

    /// Checks a secret against a stored hash; `None` checks against the decoy and
    /// fails, in the same time.
    pub fn verify(&self, secret: &str, stored: Option<&str>) -> bool {
        let hash = stored.unwrap_or(&self.decoy);
        let matches = self.gated(|| bcrypt::verify(bcrypt_input(secret), hash));
        match matches {
            Ok(ok) => ok && stored.is_some(),
            Err(err) => {
                warn!("stored password hash is unusable: {err}");
                false
            }
        }
    }

    fn gated<T>(&self, work: impl FnOnce() -> T) -> T {
        let queued = Instant::now();
        {
            let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            while *running >= self.limit {
                running = self
                    .freed
                    .wait(running)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            *running += 1;
        }
        self.metrics.hash_wait.observe(queued.elapsed());
        debug!("password hash waited {:?} for a slot", queued.elapsed());
        // Released by a guard so a panic inside bcrypt cannot leak the slot.
        struct Slot<'a>(&'a PasswordHasher);
        impl Drop for Slot<'_> {
            fn drop(&mut self) {
                let mut running = self
                    .0
                    .running
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                *running -= 1;
                self.0.freed.notify_one();
            }
        }
        let _slot = Slot(self);
        work()
    }
}

/// What bcrypt is given: the secret itself, or, when it is longer than bcrypt
/// reads, its SHA-256 in hex, so that no part of a long secret is ignored.
fn bcrypt_input(secret: &str) -> Cow<'_, [u8]> {
    if secret.len() <= BCRYPT_INPUT_MAX {
        Cow::Borrowed(secret.as_bytes())
    } else {
        let digest = Sha256::digest(secret.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Cow::Owned(hex.into_bytes())
    }
}

/// Limits on guessing and on account creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthLimits {
    /// Back-off for failed logins to one username, from anywhere.
    pub per_user: BackoffPolicy,
    /// Back-off for failed logins from one source address, to any username.
    pub per_ip: BackoffPolicy,
    pub registrations_per_ip_per_minute: u32,
}

impl AuthLimits {
    /// No limits (operator commands on the local machine).
    pub fn unlimited() -> AuthLimits {
        let never = BackoffPolicy {
            free_failures: u32::MAX,
            initial: Duration::ZERO,
            max: Duration::ZERO,
            forget_after: Duration::ZERO,
        };
        AuthLimits {
            per_user: never,
            per_ip: never,
            registrations_per_ip_per_minute: u32::MAX,
        }
    }
}

/// Remembered keys per back-off table.
const THROTTLE_CAPACITY: usize = 100_000;

struct Throttles {
    users: Backoff<String>,
    ips: Backoff<IpAddr>,
    registrations: Window<IpAddr>,
}

fn rate_limited(what: &str, wait: Duration) -> AppError {
    AppError::RateLimited {
        message: format!("{what}; retry in {} ms", wait.as_millis().max(1)),
        retry_after: wait,
    }
}

/// The REGISTER and LOGIN use cases.
pub struct Authenticator {
    users: Arc<dyn UserStore>,
    hasher: PasswordHasher,
    throttles: Mutex<Throttles>,
}

impl Authenticator {
    pub fn new(
        users: Arc<dyn UserStore>,
        hasher: PasswordHasher,
        limits: AuthLimits,
    ) -> Authenticator {
        let window = Duration::from_secs(60);
        Authenticator {
            users,
            hasher,
            throttles: Mutex::new(Throttles {
                users: Backoff::new(limits.per_user, THROTTLE_CAPACITY),
                ips: Backoff::new(limits.per_ip, THROTTLE_CAPACITY),
                registrations: Window::new(limits.registrations_per_ip_per_minute, window),
            }),
        }
    }

    fn throttles(&self) -> MutexGuard<'_, Throttles> {
        self.throttles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates an account for a client at `from`; returns once it is on disk.
    ///
    /// # Errors
    /// 400 for a bad name or secret, 409 if the name is taken, 429 past the
    /// per-address registration limit, 500 if storage failed.
    pub fn register(
        &self,
        username: &str,
        secret: &str,
        from: IpAddr,
    ) -> Result<UserRecord, AppError> {
        validate_username(username).map_err(|e| AppError::BadRequest(e.to_string()))?;
        validate_secret(secret).map_err(AppError::BadRequest)?;
        // Checked first so a taken name costs no hash; create() checks again.
        if self.users.find_by_name(username).is_some() {
            return Err(AppError::Conflict("username is taken".into()));
        }
        self.throttles()
            .registrations
            .admit(&from, Instant::now())
            .map_err(|wait| rate_limited("too many registrations from your address", wait))?;
        let hash = self.hasher.hash(secret)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.users
            .create(username, &hash, now)
            .map_err(|err| match err {
                StoreError::Conflict => AppError::Conflict("username is taken".into()),
                StoreError::Io(err) => {
                    warn!("registration not stored username={username}: {err}");
                    AppError::Internal(format!("could not store the account: {err}"))
                }
            })
    }

    /// Checks credentials from a client at `from`. Unknown users and wrong
    /// secrets fail alike, in the same time, and both count towards back-off
    /// for the username and for the address; while either is backing off, the
    /// attempt is refused before any hashing.
    ///
    /// # Errors
    /// 401 for bad credentials, 429 while backing off, 400 for a malformed secret.
    pub fn verify(
        &self,
        username: &str,
        secret: &str,
        from: IpAddr,
    ) -> Result<UserRecord, AppError> {
        validate_secret(secret).map_err(AppError::BadRequest)?;
        // A name that breaks the rules cannot exist: it fails like an unknown
        // user (same hash, same time) but is not remembered as a key, so huge
        // made-up names cannot grow the back-off table.
        let valid_name = validate_username(username).is_ok();
        let key = if valid_name {
            username_key(username)
        } else {
            String::new()
        };
        {
            let now = Instant::now();
            let throttles = self.throttles();
            throttles
                .users
                .check(&key, now)
                .map_err(|wait| rate_limited("too many failed logins for this username", wait))?;
            throttles
                .ips
                .check(&from, now)
                .map_err(|wait| rate_limited("too many failed logins from your address", wait))?;
        }
        let user = if valid_name {
            self.users.find_by_name(username)
        } else {
            None
        };
        let ok = self
            .hasher
            .verify(secret, user.as_ref().map(|u| u.password_hash.as_str()));
        let mut throttles = self.throttles();
        match user {
            Some(user) if ok => {
                throttles.users.succeed(&key);
                Ok(user)
            }
            _ => {
                let now = Instant::now();
                if valid_name {
                    throttles.users.fail(&key, now);
                }
                throttles.ips.fail(&from, now);
                Err(AppError::InvalidCredentials)
            }
        }
    }
}

impl Authenticator {
    /// GUEST_LOGIN from `from`: guests count as account creations for the
    /// per-address limit, so nobody can mint identities (and TURN
    /// credentials) in a loop.
    ///
    /// # Errors
    /// 429 past `limits.registrations_per_ip_per_minute`.
    pub fn admit_guest(&self, from: IpAddr) -> Result<(), AppError> {
        self.throttles()
            .registrations
            .admit(&from, Instant::now())
            .map_err(|wait| rate_limited("too many new accounts from your address", wait))
    }

    /// Checks a logged-in user's current secret, as a login would (same
    /// back-off), answering a mismatch with "wrong password".
    fn confirm(&self, username: &str, secret: &str, from: IpAddr) -> Result<UserRecord, AppError> {
        self.verify(username, secret, from)
            .map_err(|err| match err {
                AppError::InvalidCredentials => AppError::Unauthorized("wrong password".into()),
                other => other,
            })
    }

    /// PASSWORD_CHANGE: checks the current secret, then stores the new one's
    /// hash durably. Returns the updated record.
    ///
    /// # Errors
    /// 400 for a malformed new secret, 401 for a wrong current one, 429 while
    /// backing off, 500 if storage failed (the old password stays).
    pub fn change_password(
        &self,
        username: &str,
        old: &str,
        new: &str,
        from: IpAddr,
    ) -> Result<UserRecord, AppError> {
        validate_secret(new).map_err(|e| AppError::BadRequest(format!("new {e}")))?;
        let user = self.confirm(username, old, from)?;
        let hash = self.hasher.hash(new)?;
        match self.users.set_password_hash_of(user.id, &hash) {
            Ok(true) => Ok(UserRecord {
                password_hash: hash,
                ..user
            }),
            Ok(false) => Err(AppError::Unauthorized("the account was deleted".into())),
            Err(err) => {
                warn!("password change not stored user_id={}: {err}", user.id);
                Err(AppError::Internal(format!(
                    "could not store the new password: {}",
                    store_cause(err)
                )))
            }
        }
    }

    /// ACCOUNT_DELETE: checks the secret, then deletes the account durably.
    ///
    /// # Errors
    /// 401 for a wrong secret, 429 while backing off, 500 if storage failed
    /// (the account stays).
    pub fn delete_account(
        &self,
        username: &str,
        secret: &str,
        from: IpAddr,
    ) -> Result<UserRecord, AppError> {
        let user = self.confirm(username, secret, from)?;
        match self.users.delete_user(user.id) {
            Ok(_) => Ok(user),
            Err(err) => {
                warn!("account deletion not stored user_id={}: {err}", user.id);
                Err(AppError::Internal(format!(
                    "could not delete the account: {}",
                    store_cause(err)
                )))
            }
        }
    }
}

fn store_cause(err: StoreError) -> String {
    match err {
        StoreError::Io(err) => err.to_string(),
        StoreError::Conflict => "conflicting change".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored hash verifies only its own secret, and the decoy never verifies.
    #[test]
    fn hashes_verify_only_their_secret() {
        let hasher = PasswordHasher::new(4, 2, Arc::default()).unwrap();
        let hash = hasher.hash("s3cret").unwrap();
        assert!(hasher.verify("s3cret", Some(&hash)));
        assert!(!hasher.verify("S3cret", Some(&hash)));
        assert!(!hasher.verify("switchboard decoy secret", None));
    }

    /// Two long secrets sharing their first 72 bytes are different passwords.
    #[test]
    fn long_secrets_are_not_truncated() {
        let hasher = PasswordHasher::new(4, 1, Arc::default()).unwrap();
        let a = format!("{}a", "x".repeat(100));
        let b = format!("{}b", "x".repeat(100));
        let hash = hasher.hash(&a).unwrap();
        assert!(hasher.verify(&a, Some(&hash)));
        assert!(!hasher.verify(&b, Some(&hash)));
    }

    /// The gate never lets more than `limit` hashes run at once.
    #[test]
    fn the_gate_bounds_concurrent_hashes() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let hasher = Arc::new(PasswordHasher::new(4, 2, Arc::default()).unwrap());
        let inside = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (hasher, inside, peak) = (hasher.clone(), inside.clone(), peak.clone());
                std::thread::spawn(move || {
                    hasher.gated(|| {
                        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(n, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        inside.fetch_sub(1, Ordering::SeqCst);
                    })
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 2);
    }
}
