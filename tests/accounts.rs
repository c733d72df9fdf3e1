//! Account management over the protocol: PASSWORD_CHANGE and ACCOUNT_DELETE.

use serde_json::json;
use switchboard::tcp::MessageType as T;

use crate::support::{TestServer, connect_call};

/// A password change needs the current secret, is durable, voids every token
/// issued before it and hands a protocol 2 client a new one.
#[test]
fn a_password_change_is_durable_and_revokes_tokens() {
    let server = TestServer::start();
    let (mut alice, _, old_token) = server.user_v2("alice");
    alice.send(
        T::PasswordChangeRequest,
        json!({"old_password_hash": "wrong", "new_password_hash": "n3w", "req_id": 1}),
    );
    let e = alice.expect_error(401);
    assert_eq!(
        (e.str("message"), e.body["req_id"].clone()),
        ("wrong password", json!(1))
    );
    alice.send(
        T::PasswordChangeRequest,
        json!({"old_password_hash": "secret", "new_password_hash": ""}),
    );
    alice.expect_error(400);
    alice.send(
        T::PasswordChangeRequest,
        json!({"old_password_hash": "secret", "new_password_hash": "n3w", "req_id": 2}),
    );
    let f = alice.expect(T::PasswordChangeResponse).body;
    assert_eq!(
        (f["success"].clone(), f["req_id"].clone()),
        (json!(true), json!(2))
    );
    let new_token = f["session_token"].as_str().unwrap().to_string();

    let f = server.client().resume(&old_token);
    assert_eq!(
        (f.kind, f.body["code"].clone()),
        (T::Error.code(), json!(401)),
        "{}",
        f.body
    );
    assert_eq!(f.str("message"), "session token revoked");
    alice.drop_connection();
    server.wait_until_clean(0);
    assert_eq!(server.client().resume(&new_token).body["success"], true);

    let server = server.restart();
    assert_eq!(server.client().login("alice", "secret").body["code"], 401);
    server.client().login_ok("alice", "n3w");
}

/// Deleting an account needs the secret; then the account is gone for good:
/// the session ends (the connection stays, logged out), a call ends, others
/// see the user leave and vanish from the list, tokens die, the name is free.
#[test]
fn a_deleted_account_is_gone() {
    let server = TestServer::start();
    let (mut alice, alice_id, token) = server.user_v2("alice");
    let (mut bob, bob_id) = server.user("bob");
    let call_id = connect_call(&mut alice, &mut bob, &bob_id);
    alice.send(T::AccountDeleteRequest, json!({"password_hash": "nope"}));
    alice.expect_error(401);
    alice.send(
        T::AccountDeleteRequest,
        json!({"password_hash": "secret", "req_id": "d"}),
    );
    let f = alice.expect(T::AccountDeleteResponse).body;
    assert_eq!(f, json!({"success": true, "req_id": "d"}));
    assert_eq!(bob.expect(T::Hangup).body, json!({"call_id": call_id}));
    bob.expect_state(&alice_id, "Disconnected");
    bob.send(T::UserListRequest, json!({}));
    let list = bob.expect(T::UserListResponse).body;
    assert_eq!(list["users"].as_array().unwrap().len(), 1, "{list}");
    // Alice's connection is open but no longer logged in.
    alice.send(T::UserListRequest, json!({}));
    alice.expect_error(401);

    assert_eq!(server.client().resume(&token).body["code"], 401);
    assert_eq!(server.client().login("alice", "secret").body["code"], 401);
    let stored = std::fs::read_to_string(server.users_file()).unwrap();
    assert!(!stored.contains("|alice|"), "{stored}");

    let server = server.restart();
    assert_eq!(server.client().login("alice", "secret").body["code"], 401);
    let new_id = server.client().register("alice", "other");
    assert_ne!(new_id, alice_id, "ids are never reused");
}
