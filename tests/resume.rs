//! Protocol 2 sessions: HELLO/WELCOME, session tokens, RESUME, held calls.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use switchboard::tcp::MessageType as T;

use crate::support::{Client, TestServer, connect_call};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A client that never says HELLO gets exactly the v1 LOGIN_RESPONSE; after
/// HELLO the server says what it offers, and LOGIN_RESPONSE carries a token,
/// its expiry and the ICE servers.
#[test]
fn hello_opens_protocol_2_and_v1_clients_see_nothing_new() {
    let server = TestServer::start();
    let mut v1 = server.client();
    let id = v1.register("alice", "secret");
    let f = v1.login("alice", "secret");
    assert_eq!(
        f.body,
        json!({"success": true, "user_id": id, "username": "alice"})
    );

    let mut v2 = server.client();
    v2.register("bob", "secret");
    v2.send(
        T::Hello,
        json!({"protocol_version": 7, "client_name": "desk 2.1", "capabilities": ["resume"], "req_id": 1}),
    );
    let welcome = v2.expect(T::Welcome).body;
    assert_eq!(welcome["server_name"], "switchboard");
    assert_eq!(welcome["protocol_version"], 2, "the lower version wins");
    assert_eq!(welcome["max_frame_bytes"], 1024 * 1024);
    assert_eq!(welcome["idle_timeout_secs"], 60);
    assert_eq!(welcome["heartbeat_interval_secs"], 30);
    assert_eq!(welcome["req_id"], 1);
    for capability in ["resume", "ice_servers", "guest", "peer_status"] {
        assert!(
            welcome["capabilities"]
                .as_array()
                .unwrap()
                .contains(&json!(capability)),
            "{welcome}"
        );
    }
    let f = v2.login("bob", "secret");
    assert_eq!(f.body["success"], true);
    assert!(f.str("session_token").starts_with("sb1."));
    let expires = f.body["expires_at"].as_u64().unwrap();
    assert!(expires.abs_diff(unix_now() + 86400) <= 5, "{}", f.body);
    assert_eq!(f.body["ice_servers"], json!([]));

    // HELLO is for the start of a connection; version 0 does not exist.
    v2.send(T::Hello, json!({"protocol_version": 2}));
    assert!(
        v2.expect_error(409)
            .str("message")
            .contains("before logging in")
    );
    let mut bad = server.client();
    bad.send(T::Hello, json!({"protocol_version": 0}));
    bad.expect_error(400);
    // A protocol 1 HELLO changes nothing.
    let mut old = server.client();
    old.send(T::Hello, json!({"protocol_version": 1}));
    assert_eq!(old.expect(T::Welcome).body["capabilities"], json!([]));
    let f = old.login("alice", "secret");
    assert!(f.body.get("session_token").is_none(), "{}", f.body);
}

/// RESUME logs in with the token alone: no password hash runs, and the
/// answer is a LOGIN_RESPONSE with a fresh token; the old one keeps working
/// until it expires.
#[test]
fn resume_logs_in_without_bcrypt() {
    let server = TestServer::start();
    let (first, id, token) = server.user_v2("alice");
    first.drop_connection();
    server.wait_until_clean(0);
    let hashes = server.stats().password_hashes;
    let mut again = server.client();
    let f = again.resume(&token);
    assert_eq!(f.kind, T::LoginResponse.code(), "{}", f.body);
    assert_eq!(f.body["success"], true);
    assert_eq!(f.body["user_id"], id.as_str());
    assert_eq!(f.body["username"], "alice");
    assert!(f.body.get("call_id").is_none());
    let fresh = f.str("session_token").to_string();
    assert_eq!(server.stats().password_hashes, hashes, "RESUME ran bcrypt");
    assert_eq!(server.stats().online_users, 1);
    // The session is a real one.
    again.send(T::UserListRequest, json!({}));
    again.expect(T::UserListResponse);
    // Resuming while logged in is refused like a second LOGIN.
    assert_eq!(again.resume(&fresh).body["code"], 409);
    // A refresh hands out another token.
    again.send(T::TokenRefreshRequest, json!({"req_id": 5}));
    let refreshed = again.expect(T::TokenRefreshResponse).body;
    assert_eq!(refreshed["success"], true);
    assert_eq!(refreshed["req_id"], 5);
    let refreshed = refreshed["session_token"].as_str().unwrap().to_string();
    again.drop_connection();
    server.wait_until_clean(0);
    assert_eq!(server.client().resume(&refreshed).body["success"], true);
}

/// Tokens are signed with the secret in the data directory (mode 0600): they
/// survive a restart of the daemon.
#[test]
fn a_token_survives_a_daemon_restart() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start();
    let (c, id, token) = server.user_v2("alice");
    drop(c);
    let key = server.dir.path().join("session.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let server = server.restart();
    let f = server.client().resume(&token);
    assert_eq!(f.body["success"], true, "{}", f.body);
    assert_eq!(f.body["user_id"], id.as_str());
}

/// The answer to a RESUME that must fail: ERROR 401; returns its message.
fn refused(server: &TestServer, token: &str) -> String {
    let f = server.client().resume(token);
    assert_eq!(f.kind, T::Error.code(), "{}", f.body);
    assert_eq!(f.body["code"], 401, "{}", f.body);
    assert_eq!(f.body["req_id"], "resume");
    f.str("message").to_string()
}

/// An expired token gets ERROR 401.
#[test]
fn an_expired_token_gets_401() {
    let server = TestServer::start_with(|c| c.sessions.token_ttl = Duration::from_secs(1));
    let (_alice, _, token) = server.user_v2("alice");
    // Past its expiry (tokens count whole seconds).
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(refused(&server, &token), "session token expired");
}

/// Forged and revoked (LOGOUT) tokens get ERROR 401.
#[test]
fn forged_and_revoked_tokens_get_401() {
    let server = TestServer::start();
    let (mut alice, _, token) = server.user_v2("alice");
    let refused = |token: &str| refused(&server, token);
    // One character of the payload changed; then another key's signature.
    let mut forged = token.clone().into_bytes();
    forged[6] = if forged[6] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(refused(&forged), "invalid session token");
    assert_eq!(refused("sb1.e30.AAAA"), "invalid session token");
    assert_eq!(refused("not a token"), "invalid session token");
    // LOGOUT revokes, durably, every token issued before it.
    let alive = {
        alice.send(T::TokenRefreshRequest, json!({}));
        alice
            .expect(T::TokenRefreshResponse)
            .str("session_token")
            .to_string()
    };
    alice.send(T::LogoutRequest, json!({}));
    assert_eq!(alice.expect(T::LogoutResponse).body["success"], true);
    assert_eq!(refused(&alive), "session token revoked");
    assert_eq!(refused(&token), "session token revoked");
    let revocations = std::fs::read_to_string(server.dir.path().join("revocations.txt")).unwrap();
    assert!(
        revocations.lines().any(|l| l.starts_with("1 ")),
        "{revocations}"
    );
}

/// A v2 caller drops in a call: the call is held. The peer is told (PEER_STATUS
/// "reconnecting"), never sees a HANGUP or a presence change, and what it sends
/// meanwhile reaches the caller in order after RESUME, which names the call.
#[test]
fn a_call_survives_a_dropped_connection() {
    let server = TestServer::start();
    let (mut alice, alice_id, token) = server.user_v2("alice");
    let (mut bob, bob_id, _) = server.user_v2("bob");
    let call_id = connect_call(&mut alice, &mut bob, &bob_id);
    alice.drop_connection();
    let status = bob.expect(T::PeerStatus).body;
    assert_eq!(
        status,
        json!({"call_id": call_id, "peer_user_id": alice_id, "peer_username": "alice",
               "status": "reconnecting", "grace_ms": 15000})
    );
    server.wait_for_held(1);
    for i in 0..5 {
        bob.send(
            T::IceCandidate,
            json!({"call_id": call_id, "candidate": format!("candidate:{i}"), "sdp_mid": "0", "sdp_mline_index": 0}),
        );
    }
    bob.send(
        T::SdpOffer,
        json!({"call_id": call_id, "sdp": "v=0 renegotiate"}),
    );
    assert!(bob.barrier().is_empty(), "the peer's relays are accepted");

    let mut back = server.client();
    back.hello();
    let f = back.resume(&token);
    assert_eq!(f.body["success"], true, "{}", f.body);
    assert_eq!(f.body["call_id"], call_id.as_str());
    for i in 0..5 {
        let ice = back.next();
        assert_eq!(ice.kind, T::IceCandidate.code(), "{}", ice.body);
        assert_eq!(ice.str("candidate"), format!("candidate:{i}"));
        assert_eq!(ice.str("from_user_id"), bob_id);
    }
    assert_eq!(back.next().str("sdp"), "v=0 renegotiate");
    let status = bob.expect(T::PeerStatus).body;
    assert_eq!(status["status"], "reconnected");
    assert!(status.get("grace_ms").is_none());

    // The call goes on both ways, and it is the same call.
    back.send(
        T::SdpAnswer,
        json!({"call_id": call_id, "sdp": "v=0 answer"}),
    );
    let answer = bob.expect(T::SdpAnswer);
    assert_eq!(answer.str("from_user_id"), alice_id);
    let seen = bob.barrier_all();
    assert!(
        seen.iter()
            .all(|f| f.kind != T::Hangup.code() && f.kind != T::UserStateUpdate.code()),
        "the peer saw the drop: {seen:?}"
    );
    assert!(bob.skipped.iter().all(|f| f.kind != T::Hangup.code()));
    back.send(T::Hangup, json!({"call_id": call_id}));
    bob.expect(T::Hangup);
    assert_eq!(server.stats().sessions_held, 0);
}

/// A v1 peer sees nothing new while its v2 partner drops and resumes.
#[test]
fn a_v1_peer_sees_nothing_of_a_resume() {
    let server = TestServer::start();
    let (mut alice, _, token) = server.user_v2("alice");
    let (mut bob, bob_id) = server.user("bob");
    let call_id = connect_call(&mut alice, &mut bob, &bob_id);
    bob.barrier_all();
    bob.skipped.clear();
    alice.drop_connection();
    server.wait_for_held(1);
    let mut back = server.client();
    back.hello();
    assert_eq!(back.resume(&token).body["call_id"], call_id.as_str());
    back.send(
        T::IceCandidate,
        json!({"call_id": call_id, "candidate": "c", "sdp_mid": "0", "sdp_mline_index": 0}),
    );
    bob.expect(T::IceCandidate);
    let seen = bob.barrier_all();
    assert!(seen.is_empty(), "{seen:?}");
    assert!(bob.skipped.is_empty(), "{:?}", bob.skipped);
}

/// A v1 client that drops ends its call at once, as in v1.
#[test]
fn a_v1_client_that_drops_ends_its_call_at_once() {
    let server = TestServer::start();
    let (mut alice, _) = server.user("alice");
    let (mut bob, bob_id, _) = server.user_v2("bob");
    let call_id = connect_call(&mut alice, &mut bob, &bob_id);
    alice.drop_connection();
    assert_eq!(bob.expect(T::Hangup).body, json!({"call_id": call_id}));
    assert_eq!(server.stats().sessions_held, 0);
}

/// Not back within the grace period: the call ends as before (HANGUP, presence
/// Disconnected), and a later RESUME is a fresh login without the call.
#[test]
fn a_held_call_ends_when_the_grace_period_passes() {
    let server = TestServer::start_with(|c| c.sessions.resume_grace = Duration::from_millis(300));
    let (mut alice, alice_id, token) = server.user_v2("alice");
    let (mut bob, bob_id, _) = server.user_v2("bob");
    let call_id = connect_call(&mut alice, &mut bob, &bob_id);
    alice.drop_connection();
    assert_eq!(bob.expect(T::PeerStatus).body["grace_ms"], 300);
    assert_eq!(bob.expect(T::Hangup).body, json!({"call_id": call_id}));
    bob.expect_state(&alice_id, "Disconnected");
    server.wait_until_clean(1);
    let mut back = server.client();
    let f = back.resume(&token);
    assert_eq!(f.body["success"], true);
    assert!(f.body.get("call_id").is_none(), "{}", f.body);
    bob.expect_state(&alice_id, "Available");
}

/// More held than the limits allow ends the hold at once: the peer gets
/// HANGUP instead of waiting for the grace period; nothing is delivered partly.
#[test]
fn an_overflowing_hold_ends_the_call() {
    let server = TestServer::start_with(|c| {
        c.sessions.held_max_frames = 3;
        c.sessions.resume_grace = Duration::from_secs(60);
    });
    let (mut alice, _, token) = server.user_v2("alice");
    let (mut bob, bob_id, _) = server.user_v2("bob");
    let call_id = connect_call(&mut alice, &mut bob, &bob_id);
    alice.drop_connection();
    server.wait_for_held(1);
    for i in 0..4 {
        bob.send(
            T::IceCandidate,
            json!({"call_id": call_id, "candidate": format!("c{i}"), "sdp_mid": "0", "sdp_mline_index": 0}),
        );
    }
    assert_eq!(bob.expect(T::Hangup).body, json!({"call_id": call_id}));
    server.wait_until_clean(1);
    let mut back = server.client();
    let f = back.resume(&token);
    assert!(f.body.get("call_id").is_none(), "{}", f.body);
    let seen = back.barrier();
    assert!(
        seen.iter().all(|f| f.kind != T::IceCandidate.code()),
        "{seen:?}"
    );
}

/// A client that gives up on a connection the server still thinks alive
/// resumes on a new one: the old is closed (409), the call moves over.
#[test]
fn resume_over_a_live_connection_moves_the_call() {
    let server = TestServer::start();
    let (mut alice, _, token) = server.user_v2("alice");
    let (mut bob, bob_id, _) = server.user_v2("bob");
    let call_id = connect_call(&mut alice, &mut bob, &bob_id);
    let mut back = Client::connect(server.addr);
    back.hello();
    assert_eq!(back.resume(&token).body["call_id"], call_id.as_str());
    alice.expect_error(409);
    assert!(alice.is_closed_by_server());
    bob.send(
        T::IceCandidate,
        json!({"call_id": call_id, "candidate": "c", "sdp_mid": "0", "sdp_mline_index": 0}),
    );
    back.expect(T::IceCandidate);
    assert!(bob.barrier().is_empty());
    assert!(bob.skipped.iter().all(|f| f.kind != T::Hangup.code()));
}

/// Shutting down ends held calls too: the peer gets its HANGUP.
#[test]
fn held_calls_end_with_the_daemon() {
    let mut server = TestServer::start();
    let (mut alice, _, _) = server.user_v2("alice");
    let (mut bob, bob_id, _) = server.user_v2("bob");
    connect_call(&mut alice, &mut bob, &bob_id);
    alice.drop_connection();
    server.wait_for_held(1);
    let running = server.running.take().unwrap();
    assert!(running.shutdown(Duration::from_secs(5)));
    bob.expect(T::Hangup);
}

/// A hold exists only for its call: if the peer hangs up meanwhile, the held
/// user leaves at once (Disconnected, not callable), and a later RESUME is a
/// fresh login without the call.
#[test]
fn a_hold_ends_when_its_call_ends() {
    let server = TestServer::start();
    let (mut alice, alice_id, token) = server.user_v2("alice");
    let (mut bob, bob_id, _) = server.user_v2("bob");
    let (mut carol, _) = server.user("carol");
    let call_id = connect_call(&mut alice, &mut bob, &bob_id);
    alice.drop_connection();
    server.wait_for_held(1);
    bob.send(T::Hangup, json!({"call_id": call_id}));
    bob.expect_state(&alice_id, "Disconnected");
    carol.expect_state(&alice_id, "Disconnected");
    assert_eq!(server.stats().sessions_held, 0);
    assert_eq!(server.stats().online_users, 2);
    carol.send(T::CallRequest, json!({"to_user_id": alice_id}));
    assert_eq!(carol.expect_error(409).str("message"), "user is offline");
    let f = server.client().resume(&token);
    assert_eq!(f.body["success"], true);
    assert!(f.body.get("call_id").is_none(), "{}", f.body);
}

/// A ringing call is held too: the callee answers while the caller is away,
/// and the caller finds CALL_ACCEPTED waiting when it resumes.
#[test]
fn a_ringing_call_is_held_and_its_answer_kept() {
    let server = TestServer::start();
    let (mut alice, _, token) = server.user_v2("alice");
    let (mut bob, bob_id, _) = server.user_v2("bob");
    alice.send(T::CallRequest, json!({"to_user_id": bob_id}));
    let call_id = bob.expect(T::CallNotification).str("call_id").to_string();
    alice.drop_connection();
    server.wait_for_held(1);
    assert_eq!(bob.expect(T::PeerStatus).body["status"], "reconnecting");
    bob.send(
        T::CallResponse,
        json!({"call_id": call_id, "accepted": true}),
    );
    assert!(bob.barrier().is_empty());
    let mut back = server.client();
    back.hello();
    assert_eq!(back.resume(&token).body["call_id"], call_id.as_str());
    let accepted = back.next();
    assert_eq!(accepted.kind, T::CallAccepted.code(), "{}", accepted.body);
    assert_eq!(accepted.str("call_id"), call_id);
}

/// A LOGIN with the password while the session is held is a new session, as
/// in v1: the held call ends.
#[test]
fn a_password_login_while_held_ends_the_call() {
    let server = TestServer::start();
    let (mut alice, _, _) = server.user_v2("alice");
    let (mut bob, bob_id, _) = server.user_v2("bob");
    let call_id = connect_call(&mut alice, &mut bob, &bob_id);
    alice.drop_connection();
    server.wait_for_held(1);
    server.client().login_ok("alice", "secret");
    assert_eq!(bob.expect(T::Hangup).body, json!({"call_id": call_id}));
    assert_eq!(server.stats().sessions_held, 0);
}

/// The byte limit of a hold counts too: one large SDP past it ends the call.
#[test]
fn a_hold_over_its_byte_limit_ends_the_call() {
    let server = TestServer::start_with(|c| c.sessions.held_max_bytes = 2048);
    let (mut alice, _, _) = server.user_v2("alice");
    let (mut bob, bob_id, _) = server.user_v2("bob");
    let call_id = connect_call(&mut alice, &mut bob, &bob_id);
    alice.drop_connection();
    server.wait_for_held(1);
    bob.expect(T::PeerStatus);
    bob.send(
        T::SdpOffer,
        json!({"call_id": call_id, "sdp": "v".repeat(1000)}),
    );
    assert!(bob.barrier().is_empty(), "within the limit");
    bob.send(
        T::SdpOffer,
        json!({"call_id": call_id, "sdp": "v".repeat(1000)}),
    );
    assert_eq!(bob.expect(T::Hangup).body, json!({"call_id": call_id}));
}

/// LOGOUT revokes the user's tokens whichever protocol logs out; TOKEN_REFRESH
/// needs protocol 2.
#[test]
fn a_v1_logout_revokes_tokens_too() {
    let server = TestServer::start();
    let (alice, _, token) = server.user_v2("alice");
    drop(alice);
    let mut v1 = server.client();
    v1.login_ok("alice", "secret");
    v1.send(T::TokenRefreshRequest, json!({}));
    assert!(v1.expect_error(400).str("message").contains("send HELLO"));
    v1.send(T::LogoutRequest, json!({}));
    v1.expect(T::LogoutResponse);
    assert_eq!(refused(&server, &token), "session token revoked");
}
