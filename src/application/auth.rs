//! Registration and login: bcrypt outside every lock, through a gate that bounds
//! how many hashes run at once so a login flood cannot starve signaling.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use log::{debug, warn};
use sha2::{Digest, Sha256};

use super::error::AppError;
use super::ports::{StoreError, UserRecord, UserStore};
use crate::domain::limits::{Backoff, BackoffPolicy, Buckets, Cidr};
use crate::domain::user::username_key;
use crate::domain::{UserId, validate_secret, validate_username};
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthLimits {
    /// Back-off for failed logins to one username, from anywhere.
    pub per_user: BackoffPolicy,
    /// Back-off for failed logins from one source address, to any username.
    pub per_ip: BackoffPolicy,
    /// The sustained rate of account creations (registrations and guests)
    /// per source address.
    pub registrations_per_ip_per_minute: u32,
    /// How many of them one address may make at once; never less than a
    /// minute's worth, so raising the rate alone raises the burst too.
    pub registration_burst: u32,
    /// Addresses that many people share (an office NAT, a test harness): the
    /// per-address limits (registrations, failed logins per address) do not
    /// count them. The per-username back-off still applies.
    pub exempt_networks: Vec<Cidr>,
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
            registration_burst: u32::MAX,
            exempt_networks: Vec::new(),
        }
    }
}

/// Remembered keys per back-off table.
const THROTTLE_CAPACITY: usize = 100_000;

struct Throttles {
    users: Backoff<String>,
    ips: Backoff<IpAddr>,
    registrations: Buckets<IpAddr>,
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
    exempt_networks: Vec<Cidr>,
}

impl Authenticator {
    pub fn new(
        users: Arc<dyn UserStore>,
        hasher: PasswordHasher,
        limits: AuthLimits,
    ) -> Authenticator {
        let per_minute = limits.registrations_per_ip_per_minute.max(1);
        let burst = limits.registration_burst.max(per_minute);
        Authenticator {
            users,
            hasher,
            throttles: Mutex::new(Throttles {
                users: Backoff::new(limits.per_user, THROTTLE_CAPACITY),
                ips: Backoff::new(limits.per_ip, THROTTLE_CAPACITY),
                registrations: Buckets::new(
                    f64::from(per_minute) / 60.0,
                    f64::from(burst),
                    THROTTLE_CAPACITY,
                ),
            }),
            exempt_networks: limits.exempt_networks,
        }
    }

    /// Whether `from` is in `limits.exempt_networks`.
    fn is_exempt(&self, from: IpAddr) -> bool {
        Cidr::any_contains(&self.exempt_networks, from)
    }

    /// Counts an account creation (registration or guest) against `from`'s
    /// allowance, unless `from` is exempt.
    fn admit_account(&self, from: IpAddr, refusal: &str) -> Result<(), AppError> {
        if self.is_exempt(from) {
            return Ok(());
        }
        self.throttles()
            .registrations
            .take(&from, Instant::now())
            .map_err(|wait| rate_limited(refusal, wait))
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
        check_new_account(&*self.users, username, secret)?;
        self.admit_account(from, "too many registrations from your address")?;
        self.create_account(username, secret)
    }

    /// An operator's `switchboard user add`: a registration like REGISTER's
    /// (same rules, on disk before it returns) without the per-address limit.
    ///
    /// # Errors
    /// 400 for a bad name or secret, 409 if the name is taken, 500 if storage failed.
    pub fn register_by_operator(
        &self,
        username: &str,
        secret: &str,
    ) -> Result<UserRecord, AppError> {
        check_new_account(&*self.users, username, secret)?;
        self.create_account(username, secret)
    }

    /// Hashes `secret` (no lock held) and stores the new account durably.
    fn create_account(&self, username: &str, secret: &str) -> Result<UserRecord, AppError> {
        let hash = self.hasher.hash(secret)?;
        let now = crate::clock::unix_secs();
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
    /// for the username and for the address (unless the address is exempt);
    /// while either is backing off, the attempt is refused before any hashing.
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
        let mut user = None;
        let matched = self.under_backoff(
            key,
            valid_name,
            from,
            "too many failed logins for this username",
            || {
                user = valid_name
                    .then(|| self.users.find_by_name(username))
                    .flatten();
                self.hasher
                    .verify(secret, user.as_ref().map(|u| u.password_hash.as_str()))
            },
        )?;
        match user {
            Some(user) if matched => Ok(user),
            _ => Err(AppError::InvalidCredentials),
        }
    }

    /// Runs `attempt` (a password check) under the back-off of `key` and of
    /// the address `from`: refused with 429 before any hashing while either
    /// backs off; afterwards a failure counts for both (for `key` only if
    /// `remember`), a success clears `key`. Returns whether it succeeded.
    ///
    /// One person's typos must not lock out everyone behind a shared address,
    /// so an exempt address has no per-address back-off; each key still has
    /// its own.
    fn under_backoff(
        &self,
        key: String,
        remember: bool,
        from: IpAddr,
        too_many: &str,
        attempt: impl FnOnce() -> bool,
    ) -> Result<bool, AppError> {
        let count_address = !self.is_exempt(from);
        {
            let now = Instant::now();
            let throttles = self.throttles();
            throttles
                .users
                .check(&key, now)
                .map_err(|wait| rate_limited(too_many, wait))?;
            if count_address {
                throttles.ips.check(&from, now).map_err(|wait| {
                    rate_limited("too many failed logins from your address", wait)
                })?;
            }
        }
        let ok = attempt();
        let mut throttles = self.throttles();
        if ok {
            throttles.users.succeed(&key);
        } else {
            let now = Instant::now();
            if remember {
                throttles.users.fail(&key, now);
            }
            if count_address {
                throttles.ips.fail(&from, now);
            }
        }
        Ok(ok)
    }
}

impl Authenticator {
    /// Hashes a room password (1 to 1024 bytes) with the login hasher.
    ///
    /// # Errors
    /// 400 for an empty or too long password.
    pub fn hash_room_password(&self, password: &str) -> Result<String, AppError> {
        check_room_password_text(password)?;
        self.hasher.hash(password)
    }

    /// Checks a room password for `user` at `from` against `hash`: through
    /// the same hasher and back-off as logins (keyed per user for rooms, so
    /// a wrong room password never locks the user out of logging in, and per
    /// address). Refused before any hashing while backing off.
    ///
    /// # Errors
    /// 401 `wrong room password`, 429 while backing off.
    pub fn check_room_password(
        &self,
        user: UserId,
        from: IpAddr,
        password: &str,
        hash: &str,
    ) -> Result<(), AppError> {
        let key = format!("room-password:{user}");
        let matched =
            self.under_backoff(key, true, from, "too many wrong room passwords", || {
                check_room_password_text(password).is_ok()
                    && self.hasher.verify(password, Some(hash))
            })?;
        if matched {
            return Ok(());
        }
        Err(AppError::Unauthorized("wrong room password".into()))
    }

    /// GUEST_LOGIN from `from`: guests count as account creations for the
    /// per-address limit, so nobody can mint identities (and TURN
    /// credentials) in a loop.
    ///
    /// # Errors
    /// 429 past `limits.registration_burst` and `limits.registrations_per_ip_per_minute`.
    pub fn admit_guest(&self, from: IpAddr) -> Result<(), AppError> {
        self.admit_account(from, "too many new accounts from your address")
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

    /// An operator's `switchboard user passwd`: stores the new secret's hash
    /// durably without asking for the old one. Every session token issued
    /// before stops working, as after PASSWORD_CHANGE (tokens carry a
    /// fingerprint of the hash).
    ///
    /// # Errors
    /// 400 for a malformed secret, 404 for an unknown user, 500 if storage
    /// failed (the old password stays).
    pub fn reset_password(&self, username: &str, new: &str) -> Result<UserRecord, AppError> {
        validate_secret(new).map_err(AppError::BadRequest)?;
        let user = self
            .users
            .find_by_name(username)
            .ok_or_else(|| AppError::NotFound(format!("no such user: {username}")))?;
        let hash = self.hasher.hash(new)?;
        match self.users.set_password_hash_of(user.id, &hash) {
            Ok(true) => Ok(UserRecord {
                password_hash: hash,
                ..user
            }),
            Ok(false) => Err(AppError::NotFound(format!("no such user: {username}"))),
            Err(err) => {
                warn!("password reset not stored user_id={}: {err}", user.id);
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

/// The checks of a new account that cost no hash: the name and secret follow
/// the rules and the name is free (create() checks again, atomically).
/// A room password: 1 to 1024 bytes.
fn check_room_password_text(password: &str) -> Result<(), AppError> {
    if password.is_empty() || password.len() > 1024 {
        return Err(AppError::BadRequest(
            "a room password has 1 to 1024 bytes".into(),
        ));
    }
    Ok(())
}

fn check_new_account(users: &dyn UserStore, username: &str, secret: &str) -> Result<(), AppError> {
    validate_username(username).map_err(|e| AppError::BadRequest(e.to_string()))?;
    validate_secret(secret).map_err(AppError::BadRequest)?;
    if users.find_by_name(username).is_some() {
        return Err(AppError::Conflict("username is taken".into()));
    }
    Ok(())
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

    use crate::application::UserListing;
    use crate::domain::UserId;

    /// Users in memory; names compared without case, as storage does.
    #[derive(Default)]
    struct Users(Mutex<Vec<UserRecord>>);

    impl UserStore for Users {
        fn find_by_name(&self, name: &str) -> Option<UserRecord> {
            let users = self.0.lock().unwrap();
            users
                .iter()
                .find(|u| u.username.eq_ignore_ascii_case(name))
                .cloned()
        }
        fn find_by_id(&self, id: UserId) -> Option<UserRecord> {
            self.0.lock().unwrap().iter().find(|u| u.id == id).cloned()
        }
        fn list(&self) -> UserListing {
            Arc::from([])
        }
        fn create(&self, name: &str, hash: &str, at: u64) -> Result<UserRecord, StoreError> {
            let mut users = self.0.lock().unwrap();
            let user = UserRecord {
                id: UserId(users.len() as u64 + 1),
                username: name.into(),
                password_hash: hash.into(),
                created_at: at,
            };
            users.push(user.clone());
            Ok(user)
        }
        fn set_password_hash_of(&self, _: UserId, _: &str) -> Result<bool, StoreError> {
            Ok(false)
        }
        fn delete_user(&self, _: UserId) -> Result<bool, StoreError> {
            Ok(false)
        }
    }

    fn authenticator(exempt: &[&str]) -> Authenticator {
        let policy = |free_failures| BackoffPolicy {
            free_failures,
            initial: Duration::from_secs(60),
            max: Duration::from_secs(60),
            forget_after: Duration::from_secs(120),
        };
        let limits = AuthLimits {
            per_user: policy(3),
            per_ip: policy(2),
            registrations_per_ip_per_minute: 1,
            registration_burst: 2,
            exempt_networks: exempt.iter().map(|n| n.parse().unwrap()).collect(),
        };
        let hasher = PasswordHasher::new(4, 2, Arc::default()).unwrap();
        Authenticator::new(Arc::new(Users::default()), hasher, limits)
    }

    fn code(result: Result<impl Sized, AppError>) -> u16 {
        match result {
            Ok(_) => 200,
            Err(AppError::RateLimited { .. }) => 429,
            Err(AppError::InvalidCredentials) => 401,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    /// An address gets its burst of registrations (guests included), then waits.
    #[test]
    fn registrations_allow_the_burst_then_refuse_with_a_wait() {
        let auth = authenticator(&[]);
        let from: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(code(auth.register("ann1", "pw", from)), 200);
        assert_eq!(code(auth.admit_guest(from)), 200);
        match auth.register("ann3", "pw", from) {
            Err(AppError::RateLimited { retry_after, .. }) => {
                assert!(retry_after > Duration::from_secs(50), "{retry_after:?}");
            }
            other => panic!("expected 429, got {other:?}"),
        }
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(code(auth.register("ann3", "pw", other)), 200, "per address");
    }

    /// An exempt network's clients are not counted by the per-address limits
    /// (registrations, failed logins per address), but each username still
    /// backs off; an address outside the network is limited as before.
    #[test]
    fn exempt_networks_skip_per_address_limits_but_not_per_username_backoff() {
        let auth = authenticator(&["10.0.0.0/8", "::1/128"]);
        let office: IpAddr = "10.1.2.3".parse().unwrap();
        for i in 0..10 {
            assert_eq!(code(auth.register(&format!("user{i}"), "pw", office)), 200);
            assert_eq!(code(auth.admit_guest("::1".parse().unwrap())), 200);
        }
        // Many typos across usernames: no per-address back-off for the office.
        for i in 0..6 {
            assert_eq!(code(auth.verify(&format!("user{i}"), "typo", office)), 401);
        }
        assert_eq!(code(auth.verify("user9", "pw", office)), 200);
        // One username guessed at: it backs off, from the office too.
        for _ in 0..3 {
            assert_eq!(code(auth.verify("user8", "guess", office)), 401);
        }
        assert_eq!(code(auth.verify("user8", "guess", office)), 401);
        assert_eq!(
            code(auth.verify("user8", "pw", office)),
            429,
            "per username"
        );
        // Outside the network, the same sequence is limited per address.
        let outside: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(code(auth.register("vic1", "pw", outside)), 200);
        assert_eq!(code(auth.register("vic2", "pw", outside)), 200);
        assert_eq!(code(auth.register("vic3", "pw", outside)), 429);
        assert_eq!(code(auth.verify("user1", "typo", outside)), 401);
        assert_eq!(code(auth.verify("user2", "typo", outside)), 401);
        assert_eq!(code(auth.verify("user3", "typo", outside)), 401);
        assert_eq!(
            code(auth.verify("user4", "pw", outside)),
            429,
            "per address"
        );
    }
}
