//! The v1 flows every client relies on: register, login, user list, presence,
//! heartbeat, logout, req_id.

use serde_json::json;
use switchboard::tcp::MessageType as T;

use crate::support::{Client, TestServer};

/// REGISTER and LOGIN sent back to back in one write get both answers, in order.
#[test]
fn register_and_login_in_one_write_are_answered_in_order() {
    let server = TestServer::start();
    let mut c = server.client();
    let mut bytes = crate::support::encode(
        T::RegisterRequest,
        &json!({"username": "alice", "password_hash": "pw"}),
    );
    bytes.extend(crate::support::encode(
        T::LoginRequest,
        &json!({"username": "alice", "password_hash": "pw"}),
    ));
    c.send_raw(&bytes);
    let first = c.next();
    let second = c.next();
    assert_eq!(first.name(), "REGISTER_RESPONSE");
    assert_eq!(
        String::from_utf8_lossy(&first.raw[5..]),
        r#"{"success":true,"user_id":"1","username":"alice"}"#
    );
    assert_eq!(second.name(), "LOGIN_RESPONSE");
    assert_eq!(
        String::from_utf8_lossy(&second.raw[5..]),
        r#"{"success":true,"user_id":"1","username":"alice"}"#
    );
}

/// A wrong password and an unknown user get the same LOGIN_RESPONSE failure.
#[test]
fn bad_credentials_fail_alike_for_unknown_users_and_wrong_passwords() {
    let server = TestServer::start();
    let mut c = server.client();
    c.register("alice", "right");
    let wrong = c.login("alice", "wrong");
    let unknown = c.login("nobody", "right");
    assert_eq!(
        wrong.body,
        json!({"success": false, "error": "invalid username or password", "code": 401})
    );
    assert_eq!(unknown.body, wrong.body);
    c.login_ok("ALICE", "right");
}

/// A taken name (in any case) and a name breaking the rules are refused with a reason.
#[test]
fn registration_refuses_taken_and_invalid_names() {
    let server = TestServer::start();
    let mut c = server.client();
    c.register("Alice", "pw");
    for (name, code, needle) in [
        ("alice", 409, "taken"),
        ("a", 400, "3 to 32"),
        ("al\"ce", 400, "may only contain"),
        ("al}ce", 400, "may only contain"),
    ] {
        c.send(
            T::RegisterRequest,
            json!({"username": name, "password_hash": "pw"}),
        );
        let f = c.expect(T::RegisterResponse);
        assert_eq!(f.body["success"], false);
        assert_eq!(f.body["code"], code, "{name}: {}", f.body);
        assert!(f.str("error").contains(needle), "{name}: {}", f.body);
    }
    c.send(
        T::RegisterRequest,
        json!({"username": "carol", "password_hash": ""}),
    );
    assert_eq!(c.expect(T::RegisterResponse).body["code"], 400);
}

/// The user list holds every registered user with their state, as flat entries.
#[test]
fn the_user_list_shows_every_registered_user_with_state() {
    let server = TestServer::start();
    let (mut alice, alice_id) = server.user("alice");
    let mut bob = server.client();
    let bob_id = bob.register("bob", "pw");
    alice.send(T::UserListRequest, json!({}));
    let list = alice.expect(T::UserListResponse);
    assert_eq!(
        list.body,
        json!({"users": [
            {"user_id": alice_id, "username": "alice", "state": "Available"},
            {"user_id": bob_id, "username": "bob", "state": "Disconnected"},
        ]})
    );
}

/// Every login and logout is pushed to every other logged-in client, never to the user.
#[test]
fn presence_changes_reach_every_other_client() {
    let server = TestServer::start();
    let (mut alice, alice_id) = server.user("alice");
    let (mut bob, bob_id) = server.user("bob");
    let (mut carol, _) = server.user("carol");
    alice.expect_state(&bob_id, "Available");
    carol.send(T::LogoutRequest, json!({"req_id": 5}));
    let out = carol.expect(T::LogoutResponse);
    assert_eq!(
        String::from_utf8_lossy(&out.raw[5..]),
        r#"{"success":true,"error":null,"req_id":5}"#
    );
    alice.expect_state("3", "Disconnected");
    bob.expect_state("3", "Disconnected");
    // Her own changes never came back to her.
    let mut heard: Vec<_> = carol.skipped.drain(..).collect();
    heard.extend(carol.barrier_all());
    assert!(heard.iter().all(|f| f.body["user_id"] != "3"), "{heard:?}");
    bob.drop_connection();
    alice.expect_state(&bob_id, "Disconnected");
    let _ = alice_id;
}

/// HEARTBEAT works before login and echoes the client's timestamp with the server's clock.
#[test]
fn heartbeats_are_answered_before_and_after_login() {
    let server = TestServer::start();
    let mut c = server.client();
    c.send(
        T::Heartbeat,
        json!({"timestamp": 1700000000123u64, "req_id": "hb"}),
    );
    let f = c.expect(T::Heartbeat);
    assert_eq!(f.body["timestamp"], 1700000000123u64);
    assert_eq!(f.body["req_id"], "hb");
    assert!(f.body["server_time"].as_u64().unwrap() > 1_700_000_000_000);
}

/// A HEARTBEAT without a timestamp (as scripts send it) is answered, with the server's clock in both fields, and the connection goes on.
#[test]
fn a_heartbeat_without_a_timestamp_is_answered_with_the_servers_time() {
    let server = TestServer::start();
    let mut c = server.client();
    c.send(T::Heartbeat, json!({}));
    let f = c.expect(T::Heartbeat);
    let server_time = f.body["server_time"].as_u64().unwrap();
    assert!(server_time > 1_700_000_000_000, "{:?}", f.body);
    assert_eq!(f.body["timestamp"], server_time);
    c.send(T::Heartbeat, json!({"timestamp": 7}));
    assert_eq!(c.expect(T::Heartbeat).body["timestamp"], 7);
}

/// Requests that need a session get ERROR 401 before login and after logout, with req_id echoed.
#[test]
fn requests_before_login_get_401() {
    let server = TestServer::start();
    let mut c = server.client();
    for (kind, body) in [
        (T::UserListRequest, json!({"req_id": 1})),
        (T::CallRequest, json!({"to_user_id": "1", "req_id": 1})),
        (
            T::SdpOffer,
            json!({"call_id": "1", "sdp": "x", "req_id": 1}),
        ),
        (T::Hangup, json!({"call_id": "1", "req_id": 1})),
        (T::LogoutRequest, json!({"req_id": 1})),
    ] {
        c.send(kind, body);
        let e = c.expect_error(401);
        assert_eq!(
            e.body,
            json!({"code": 401, "message": "login required", "req_id": 1}),
            "{}",
            kind.name()
        );
    }
    c.register("alice", "pw");
    c.login_ok("alice", "pw");
    c.send(T::LogoutRequest, json!({}));
    c.expect(T::LogoutResponse);
    c.send(T::UserListRequest, json!({}));
    c.expect_error(401);
}

/// req_id is echoed in every answer and every ERROR.
#[test]
fn req_id_is_echoed_in_answers_and_errors() {
    let server = TestServer::start();
    let mut c = server.client();
    c.send(
        T::RegisterRequest,
        json!({"username": "alice", "password_hash": "pw", "req_id": "r-1"}),
    );
    assert_eq!(c.expect(T::RegisterResponse).body["req_id"], "r-1");
    c.send(
        T::LoginRequest,
        json!({"username": "alice", "password_hash": "pw", "req_id": 2}),
    );
    assert_eq!(c.expect(T::LoginResponse).body["req_id"], 2);
    c.send(T::UserListRequest, json!({"req_id": 3}));
    assert_eq!(c.expect(T::UserListResponse).body["req_id"], 3);
    c.send(T::CallRequest, json!({"to_user_id": "99", "req_id": 4}));
    assert_eq!(c.expect_error(404).body["req_id"], 4);
    c.send(T::CallRequest, json!({"to_user_id": 99, "req_id": 5}));
    assert_eq!(c.expect_error(400).body["req_id"], 5);
}

/// A second LOGIN on a logged-in connection is refused; LOGOUT first.
#[test]
fn a_second_login_on_the_same_connection_is_refused() {
    let server = TestServer::start();
    let (mut c, _) = server.user("alice");
    let mut other = Client::connect(server.addr);
    other.register("bob", "pw");
    let f = c.login("bob", "pw");
    assert_eq!(f.body["code"], 409);
    assert!(f.str("error").contains("already logged in as alice"));
}
