//! Guest accounts: temporary identities that are never stored.

use std::time::Duration;

use serde_json::json;
use switchboard::domain::GUEST_ID_BASE;
use switchboard::tcp::MessageType as T;

use crate::support::{Client, TestServer, connect_call};

/// A guest login; returns the LOGIN_RESPONSE body.
fn guest(c: &mut Client, name: &str) -> serde_json::Value {
    c.send(
        T::GuestLoginRequest,
        json!({"display_name": name, "req_id": "g"}),
    );
    loop {
        let f = c.next();
        if f.body["req_id"] == "g" {
            return f.body;
        }
        c.skipped.push(f);
    }
}

/// A guest gets an id in its own range and a name no user can have, is listed
/// and can call and be called, and is never written to users.txt.
#[test]
fn a_guest_can_call_and_be_called_and_is_never_stored() {
    let server = TestServer::start();
    let (mut alice, alice_id) = server.user("alice");
    let mut visitor = server.client();
    let f = guest(&mut visitor, "visitor");
    assert_eq!(f["success"], true, "{f}");
    assert_eq!(f["guest"], true);
    assert_eq!(f["username"], "visitor (guest)");
    let guest_id = f["user_id"].as_str().unwrap().to_string();
    assert!(
        guest_id.parse::<u64>().unwrap() >= GUEST_ID_BASE,
        "{guest_id}"
    );
    assert!(
        f.get("session_token").is_none(),
        "guests cannot resume: {f}"
    );
    assert!(f["expires_at"].as_u64().is_some());
    alice.expect_state(&guest_id, "Available");

    alice.send(T::UserListRequest, json!({}));
    let list = alice.expect(T::UserListResponse).body;
    assert!(
        list["users"].as_array().unwrap().contains(
            &json!({"user_id": guest_id, "username": "visitor (guest)", "state": "Available"})
        ),
        "{list}"
    );

    // Called by a user, then calling one.
    let call_id = connect_call(&mut alice, &mut visitor, &guest_id);
    visitor.send(T::SdpOffer, json!({"call_id": call_id, "sdp": "v=0"}));
    assert_eq!(alice.expect(T::SdpOffer).str("from_user_id"), guest_id);
    visitor.send(T::Hangup, json!({"call_id": call_id}));
    alice.expect(T::Hangup);
    let call_id = connect_call(&mut visitor, &mut alice, &alice_id);
    alice.send(T::Hangup, json!({"call_id": call_id}));
    visitor.expect(T::Hangup);

    // What only accounts have is refused.
    visitor.send(
        T::PasswordChangeRequest,
        json!({"old_password_hash": "x", "new_password_hash": "y"}),
    );
    visitor.expect_error(403);
    visitor.send(T::TokenRefreshRequest, json!({}));
    visitor.expect_error(403);

    let stored = std::fs::read_to_string(server.users_file()).unwrap();
    assert!(!stored.contains("visitor"), "{stored}");
    visitor.drop_connection();
    alice.expect_state(&guest_id, "Disconnected");
    alice.send(T::UserListRequest, json!({}));
    let list = alice.expect(T::UserListResponse).body;
    assert_eq!(list["users"].as_array().unwrap().len(), 1, "{list}");
}

/// When its time is up a guest is told (ERROR 401), disconnected, and gone
/// from every list; a call it was in ends.
#[test]
fn a_guest_expires() {
    let server = TestServer::start_with(|c| c.sessions.guest_ttl = Duration::from_millis(700));
    let (mut alice, _) = server.user("alice");
    let mut visitor = server.client();
    let guest_id = guest(&mut visitor, "visitor")["user_id"]
        .as_str()
        .unwrap()
        .to_string();
    let call_id = connect_call(&mut alice, &mut visitor, &guest_id);
    let e = visitor.expect_error(401);
    assert_eq!(e.str("message"), "guest session expired");
    assert!(visitor.is_closed_by_server());
    assert_eq!(alice.expect(T::Hangup).body, json!({"call_id": call_id}));
    alice.expect_state(&guest_id, "Disconnected");
    alice.send(T::UserListRequest, json!({}));
    let list = alice.expect(T::UserListResponse).body;
    assert!(!list.to_string().contains("guest"), "{list}");
    server.wait_until_clean(1);
    assert_eq!(server.stats().guests_online, 0);
}

/// Display names follow the username rules, may not be a registered user's
/// name, and guests can be switched off.
#[test]
fn guest_names_are_checked_and_guests_can_be_disabled() {
    let server = TestServer::start();
    server.user("alice");
    let mut c = server.client();
    let f = guest(&mut c, "Alice");
    assert_eq!((f["code"].clone(), c.skipped.len()), (json!(409), 0), "{f}");
    let f = guest(&mut c, "bad name");
    assert_eq!(f["code"], 400, "{f}");
    assert!(
        f["message"].as_str().unwrap().contains("display_name"),
        "{f}"
    );
    assert_eq!(guest(&mut c, "bob")["success"], true);
    assert_eq!(guest(&mut c, "carol")["code"], 409, "already logged in");

    let off = TestServer::start_with(|c| c.sessions.guests_enabled = false);
    let f = guest(&mut off.client(), "visitor");
    assert_eq!(f["code"], 403, "{f}");
}

/// Two guests cannot share a name; guest logins (refused ones too) count
/// against the per-address account limit; a guest's TURN credentials end with the guest.
#[test]
fn guests_are_unique_limited_and_their_turn_credentials_end_with_them() {
    let server = TestServer::start_with(|c| {
        c.limits.registrations_per_ip_per_minute = 3;
        c.limits.registration_burst = 3;
        c.sessions.guest_ttl = Duration::from_secs(600);
        c.webrtc.turn_servers = vec!["turn:127.0.0.1:3478".into()];
        c.webrtc.turn_secret = Some("s".into());
    });
    let mut first = server.client();
    let f = guest(&mut first, "visitor");
    let expires_at = f["expires_at"].as_u64().unwrap();
    assert_eq!(f["ice_ttl_secs"], 600, "{f}");
    let turn_user = f["ice_servers"][0]["username"].as_str().unwrap();
    assert_eq!(
        turn_user,
        format!("{expires_at}:{}", f["user_id"].as_str().unwrap())
    );
    first.send(T::IceServersRequest, json!({}));
    let list = first.expect(T::IceServersResponse).body;
    assert_eq!(list["expires_at"], expires_at, "{list}");

    let f = guest(&mut server.client(), "VISITOR");
    assert_eq!(f["code"], 409, "{f}");
    assert!(
        f["message"].as_str().unwrap().contains("another guest"),
        "{f}"
    );
    assert_eq!(guest(&mut server.client(), "other")["success"], true);
    let f = guest(&mut server.client(), "third");
    assert_eq!(f["code"], 429, "{f}");
    assert!(f["retry_after_ms"].as_u64().is_some(), "{f}");
}
