//! STUN/TURN servers for clients, with time-limited TURN credentials.
//!
//! The credentials follow the TURN REST API scheme that coturn accepts with
//! `use-auth-secret`: the username is `<expiry unix time>:<user id>`, the
//! password is base64 of HMAC-SHA1 over that username keyed with the secret the
//! daemon and the TURN server share. The TURN server checks the MAC and the
//! expiry itself; nothing is stored.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

use crate::domain::UserId;

/// The `webrtc.*` configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IceSettings {
    /// `stun:` URLs, handed out as they are.
    pub stun_servers: Vec<String>,
    /// `turn:`/`turns:` URLs, handed out with credentials.
    pub turn_servers: Vec<String>,
    /// The secret shared with the TURN server; without it TURN URLs go out
    /// without credentials.
    pub turn_secret: Option<String>,
    /// How long issued TURN credentials stay valid, in seconds.
    pub credential_ttl_secs: u64,
}

/// One entry of the list, in the shape of WebRTC's `RTCIceServer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: Option<String>,
    pub credential: Option<String>,
}

/// The list for one user, and how long its credentials last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IceServers {
    pub servers: Vec<IceServer>,
    /// Seconds the credentials stay valid (0 when there are none).
    pub ttl_secs: u64,
    /// Unix seconds when they expire (0 when there are none).
    pub expires_at: u64,
}

/// The TURN REST password for `username`.
pub fn turn_password(secret: &str, username: &str) -> String {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!());
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

impl IceSettings {
    /// The servers for `user`, with credentials minted at `now` (Unix seconds)
    /// that expire after the configured time, or at `not_after` if sooner.
    pub fn servers_for(&self, user: UserId, now: u64, not_after: Option<u64>) -> IceServers {
        let mut servers = Vec::new();
        if !self.stun_servers.is_empty() {
            servers.push(IceServer {
                urls: self.stun_servers.clone(),
                username: None,
                credential: None,
            });
        }
        let mut ttl_secs = 0;
        let mut expires_at = 0;
        if !self.turn_servers.is_empty() {
            let (username, credential) = match &self.turn_secret {
                Some(secret) => {
                    expires_at = not_after.map_or(now + self.credential_ttl_secs, |end| {
                        end.clamp(now, now + self.credential_ttl_secs)
                    });
                    ttl_secs = expires_at - now;
                    let username = format!("{expires_at}:{user}");
                    let password = turn_password(secret, &username);
                    (Some(username), Some(password))
                }
                None => (None, None),
            };
            servers.push(IceServer {
                urls: self.turn_servers.clone(),
                username,
                credential,
            });
        }
        IceServers {
            servers,
            ttl_secs,
            expires_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checked against `openssl dgst -sha1 -hmac`.
    #[test]
    fn passwords_are_base64_hmac_sha1_of_the_username() {
        // echo -n 1700000000:42 | openssl dgst -sha1 -hmac north -binary | base64
        assert_eq!(
            turn_password("north", "1700000000:42"),
            "DWX3FI7DiPIpadEYQAZsnZBAagI="
        );
    }

    #[test]
    fn turn_entries_carry_fresh_credentials_and_stun_entries_none() {
        let settings = IceSettings {
            stun_servers: vec!["stun:stun.example.org:3478".into()],
            turn_servers: vec!["turn:turn.example.org:3478?transport=udp".into()],
            turn_secret: Some("north".into()),
            credential_ttl_secs: 600,
        };
        let list = settings.servers_for(UserId(42), 1_700_000_000, None);
        assert_eq!(list.ttl_secs, 600);
        assert_eq!(list.expires_at, 1_700_000_600);
        assert_eq!(list.servers[0].username, None);
        let turn = &list.servers[1];
        assert_eq!(turn.username.as_deref(), Some("1700000600:42"));
        assert_eq!(
            turn.credential.as_deref(),
            Some(turn_password("north", "1700000600:42").as_str())
        );
        assert!(
            IceSettings::default()
                .servers_for(UserId(1), 5, None)
                .servers
                .is_empty()
        );
    }
}
