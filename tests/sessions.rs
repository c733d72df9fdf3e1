//! Sessions: one connection per user, takeover, logout, and nothing left behind.

use serde_json::json;
use switchboard::tcp::MessageType as T;

use crate::support::{self, TestServer, connect_call};

/// A new login ends the old session: ERROR 409 "logged in elsewhere", close,
/// its call ends (peer gets HANGUP), and the new connection works.
#[test]
fn a_new_login_takes_over_the_old_session() {
    let server = TestServer::start();
    let (mut old, alice_id) = server.user("alice");
    let (mut bob, bob_id) = server.user("bob");
    let call_id = connect_call(&mut old, &mut bob, &bob_id);
    let mut new = server.client();
    new.login_ok("alice", "secret");
    let e = old.expect_error(409);
    assert_eq!(
        e.body,
        json!({"code": 409, "message": "logged in elsewhere"})
    );
    assert!(old.is_closed_by_server());
    assert_eq!(bob.expect(T::Hangup).body, json!({"call_id": call_id}));
    bob.expect_state(&alice_id, "Available");
    server.wait_until_clean(2);
    assert_eq!(server.stats().online_users, 2);
    // The new session is fully functional.
    new.send(T::CallRequest, json!({"to_user_id": bob_id}));
    bob.expect(T::CallNotification);
}

/// LOGOUT mid-call ends the call; the connection stays open and can log in again.
#[test]
fn logging_out_mid_call_hangs_up_the_peer() {
    let server = TestServer::start();
    let (mut alice, alice_id) = server.user("alice");
    let (mut bob, bob_id) = server.user("bob");
    let call_id = connect_call(&mut alice, &mut bob, &bob_id);
    alice.send(T::LogoutRequest, json!({}));
    assert_eq!(
        alice.expect(T::LogoutResponse).body,
        json!({"success": true, "error": null})
    );
    assert_eq!(bob.expect(T::Hangup).body, json!({"call_id": call_id}));
    bob.expect_state(&alice_id, "Disconnected");
    assert_eq!(server.stats().calls, 0);
    alice.login_ok("alice", "secret");
    bob.expect_state(&alice_id, "Available");
}

/// Many connect/login/call/hangup/disconnect cycles leave no connection,
/// session, call or outbox behind.
#[test]
fn repeated_cycles_leave_nothing_behind() {
    let server = TestServer::start();
    let mut setup = server.client();
    setup.register("alice", "secret");
    setup.register("bob", "secret");
    drop(setup);
    for round in 0..20 {
        let mut alice = server.client();
        alice.login_ok("alice", "secret");
        let mut bob = server.client();
        bob.login_ok("bob", "secret");
        let call_id = connect_call(&mut alice, &mut bob, "2");
        alice.send(T::IceCandidate, json!({"call_id": call_id, "candidate": format!("c{round}"), "sdp_mid": "0", "sdp_mline_index": 0}));
        bob.expect(T::IceCandidate);
        match round % 3 {
            0 => alice.send(T::Hangup, json!({"call_id": call_id})),
            1 => alice.drop_connection(),
            _ => {
                alice.send(T::LogoutRequest, json!({}));
            }
        }
        bob.expect(T::Hangup);
        drop(bob);
    }
    server.wait_until_clean(0);
    assert_eq!(server.stats().online_users, 0);
}

/// Presence goes out in batches, but never after what followed it: a client
/// that logs in and calls at once is seen Available before its call rings, and
/// Busy only after.
#[test]
fn presence_is_never_overtaken_by_a_call_event() {
    let server = TestServer::start();
    let (mut bob, bob_id) = server.user("bob");
    let mut alice = server.client();
    let alice_id = alice.register("alice", "secret");
    for _ in 0..20 {
        // LOGIN and CALL_REQUEST in one write: both changes fall in one batch window.
        let mut bytes = support::encode(
            T::LoginRequest,
            &json!({"username": "alice", "password_hash": "secret"}),
        );
        bytes.extend(support::encode(
            T::CallRequest,
            &json!({"to_user_id": bob_id}),
        ));
        alice.send_raw(&bytes);
        let mut seen = Vec::new();
        loop {
            let f = bob.next();
            if f.kind == T::CallNotification.code() {
                break;
            }
            if f.kind == T::UserStateUpdate.code() && f.str("user_id") == alice_id {
                seen.push(f.str("state").to_string());
            }
        }
        assert_eq!(
            seen.last().map(String::as_str),
            Some("Available"),
            "{seen:?}"
        );
        alice.expect(T::LoginResponse);
        alice.send(T::LogoutRequest, json!({}));
        alice.expect(T::LogoutResponse);
        bob.expect(T::Hangup);
        bob.expect_state(&alice_id, "Disconnected");
    }
}
