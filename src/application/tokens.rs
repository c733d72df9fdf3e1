//! Session tokens: a login that RESUME can repeat without bcrypt.
//!
//! A token is `sb1.<payload>.<mac>`: the payload is URL-safe base64 of a small
//! JSON object (user id, revocation generation, password fingerprint, issue and
//! expiry times), the MAC is HMAC-SHA256 over `sb1.<payload>` with the server's
//! secret. Nothing is stored per token. A token stops working when it expires,
//! when the user's generation is raised (LOGOUT), when the password changes (the
//! fingerprint no longer matches) and when the account is deleted.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::error::AppError;
use super::ports::{RevocationStore, UserRecord, UserStore};
use crate::domain::UserId;

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "sb1.";
/// Tokens longer than this are not even decoded.
const MAX_TOKEN_LEN: usize = 512;

#[derive(Serialize, Deserialize)]
struct Claims {
    /// User id.
    u: u64,
    /// Revocation generation at issue.
    g: u64,
    /// Password fingerprint.
    p: String,
    /// Issued at, Unix seconds.
    i: u64,
    /// Expires at, Unix seconds.
    e: u64,
}

/// A token as handed to a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub token: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// Issues and checks session tokens.
pub struct SessionTokens {
    key: [u8; 32],
    ttl_secs: u64,
    users: Arc<dyn UserStore>,
    revocations: Arc<dyn RevocationStore>,
}

fn invalid() -> AppError {
    AppError::Unauthorized("invalid session token".into())
}

impl SessionTokens {
    pub fn new(
        key: [u8; 32],
        ttl_secs: u64,
        users: Arc<dyn UserStore>,
        revocations: Arc<dyn RevocationStore>,
    ) -> SessionTokens {
        SessionTokens {
            key,
            ttl_secs,
            users,
            revocations,
        }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes a key of any length; 32 bytes cannot be refused.
        <HmacSha256 as KeyInit>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!())
    }

    /// A keyed digest of the stored password hash: changes with the password,
    /// says nothing about it.
    fn fingerprint(&self, password_hash: &str) -> String {
        let mut mac = self.mac();
        mac.update(b"password:");
        mac.update(password_hash.as_bytes());
        URL_SAFE_NO_PAD.encode(&mac.finalize().into_bytes()[..12])
    }

    /// A new token for `user`, valid from `now` (Unix seconds) for the configured time.
    pub fn issue(&self, user: &UserRecord, now: u64) -> Issued {
        let claims = Claims {
            u: user.id.0,
            g: self.revocations.generation(user.id),
            p: self.fingerprint(&user.password_hash),
            i: now,
            e: now + self.ttl_secs,
        };
        let json = serde_json::to_vec(&claims).unwrap_or_default();
        let signed = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json));
        let mut mac = self.mac();
        mac.update(signed.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        Issued {
            token: format!("{signed}.{tag}"),
            expires_at: claims.e,
        }
    }

    /// The user a token logs in, if it is genuine and still valid at `now`.
    ///
    /// # Errors
    /// 401: forged or malformed, expired, revoked, or the account is gone.
    pub fn verify(&self, token: &str, now: u64) -> Result<UserRecord, AppError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(invalid());
        }
        let (signed, tag) = token.rsplit_once('.').ok_or_else(invalid)?;
        let payload = signed.strip_prefix(PREFIX).ok_or_else(invalid)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| invalid())?;
        let mut mac = self.mac();
        mac.update(signed.as_bytes());
        mac.verify_slice(&tag).map_err(|_| invalid())?;
        // Genuine from here on: the payload is ours.
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| invalid())?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| invalid())?;
        if now >= claims.e {
            return Err(AppError::Unauthorized("session token expired".into()));
        }
        let revoked = || AppError::Unauthorized("session token revoked".into());
        let user = self
            .users
            .find_by_id(UserId(claims.u))
            .ok_or_else(revoked)?;
        if claims.g != self.revocations.generation(user.id)
            || claims.p != self.fingerprint(&user.password_hash)
        {
            return Err(revoked());
        }
        Ok(user)
    }

    /// Revokes every token issued to `user` so far (LOGOUT).
    ///
    /// # Errors
    /// 500 if the revocation could not be made durable.
    pub fn revoke_all(&self, user: UserId) -> Result<(), AppError> {
        self.revocations
            .revoke_all(user)
            .map(|_| ())
            .map_err(|e| AppError::Internal(format!("could not revoke the session: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::application::{StoreError, UserListing};
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Users(Mutex<HashMap<UserId, UserRecord>>);

    impl UserStore for Users {
        fn find_by_name(&self, _: &str) -> Option<UserRecord> {
            None
        }
        fn find_by_id(&self, id: UserId) -> Option<UserRecord> {
            self.0.lock().unwrap().get(&id).cloned()
        }
        fn list(&self) -> UserListing {
            Arc::from([])
        }
        fn create(&self, _: &str, _: &str, _: u64) -> Result<UserRecord, StoreError> {
            Err(StoreError::Conflict)
        }
        fn set_password_hash_of(&self, id: UserId, hash: &str) -> Result<bool, StoreError> {
            let mut users = self.0.lock().unwrap();
            let user = users.get_mut(&id).unwrap();
            user.password_hash = hash.into();
            Ok(true)
        }
        fn delete_user(&self, id: UserId) -> Result<bool, StoreError> {
            Ok(self.0.lock().unwrap().remove(&id).is_some())
        }
    }

    #[derive(Default)]
    struct Generations(Mutex<HashMap<UserId, u64>>);

    impl RevocationStore for Generations {
        fn generation(&self, user: UserId) -> u64 {
            *self.0.lock().unwrap().get(&user).unwrap_or(&0)
        }
        fn revoke_all(&self, user: UserId) -> std::io::Result<u64> {
            let mut g = self.0.lock().unwrap();
            let slot = g.entry(user).or_insert(0);
            *slot += 1;
            Ok(*slot)
        }
    }

    fn setup() -> (SessionTokens, Arc<Users>, UserRecord) {
        let users = Arc::new(Users::default());
        let alice = UserRecord {
            id: UserId(1),
            username: "alice".into(),
            password_hash: "$2b$04$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".into(),
            created_at: 0,
        };
        users.0.lock().unwrap().insert(alice.id, alice.clone());
        let tokens = SessionTokens::new(
            [7; 32],
            100,
            users.clone(),
            Arc::new(Generations::default()),
        );
        (tokens, users, alice)
    }

    fn message(err: AppError) -> String {
        assert_eq!(err.code(), 401);
        err.to_string()
    }

    #[test]
    fn a_token_logs_its_user_in_until_it_expires() {
        let (tokens, _, alice) = setup();
        let issued = tokens.issue(&alice, 1000);
        assert_eq!(issued.expires_at, 1100);
        assert_eq!(tokens.verify(&issued.token, 1099).unwrap(), alice);
        assert!(message(tokens.verify(&issued.token, 1100).unwrap_err()).contains("expired"));
    }

    #[test]
    fn forged_tokens_are_refused() {
        let (tokens, users, alice) = setup();
        let issued = tokens.issue(&alice, 1000);
        let (signed, tag) = issued.token.rsplit_once('.').unwrap();
        // Another user's id in the payload, the original MAC.
        let claims = r#"{"u":2,"g":0,"p":"x","i":1000,"e":1100}"#;
        let forged = format!("{PREFIX}{}.{tag}", URL_SAFE_NO_PAD.encode(claims));
        assert!(message(tokens.verify(&forged, 1001).unwrap_err()).contains("invalid"));
        // A token signed with another key.
        let other = SessionTokens::new([8; 32], 100, users, Arc::new(Generations::default()));
        let foreign = other.issue(&alice, 1000).token;
        assert!(message(tokens.verify(&foreign, 1001).unwrap_err()).contains("invalid"));
        for junk in [
            "",
            "sb1.",
            "sb1..",
            "x.y.z",
            &format!("{signed}.AAAA"),
            &"a".repeat(600),
        ] {
            assert!(message(tokens.verify(junk, 1001).unwrap_err()).contains("invalid"));
        }
    }

    #[test]
    fn logout_password_change_and_deletion_revoke() {
        let (tokens, users, alice) = setup();
        let before_logout = tokens.issue(&alice, 1000).token;
        tokens.revoke_all(alice.id).unwrap();
        assert!(message(tokens.verify(&before_logout, 1001).unwrap_err()).contains("revoked"));
        let fresh = tokens.issue(&alice, 1000).token;
        assert!(tokens.verify(&fresh, 1001).is_ok());
        users
            .set_password_hash_of(alice.id, "$2b$04$other")
            .unwrap();
        assert!(message(tokens.verify(&fresh, 1001).unwrap_err()).contains("revoked"));
        let alice = users.find_by_id(alice.id).unwrap();
        let fresh = tokens.issue(&alice, 1000).token;
        users.delete_user(alice.id).unwrap();
        assert!(message(tokens.verify(&fresh, 1001).unwrap_err()).contains("revoked"));
    }
}
