//! Sessions: one connection per user, takeover, logout, and nothing left behind.

use serde_json::json;
use switchboard::tcp::MessageType as T;

use crate::support::{TestServer, connect_call};

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
