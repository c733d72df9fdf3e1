//! Limits: each refusal is a clear ERROR, and honest clients keep being served.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use switchboard::tcp::MessageType as T;

use crate::support::{Client, TestServer, connect_call, connect_from};

/// Over the per-address limit a new connection gets ERROR 429 and is closed;
/// another address is still served, and a freed slot can be reused.
#[test]
fn connections_per_address_are_limited() {
    let server = TestServer::start_with(|c| c.limits.max_connections_per_ip = 3);
    let mut held: Vec<Client> = (0..3).map(|_| server.client()).collect();
    held[0].barrier();
    let mut refused = server.client();
    let e = refused.expect_error(429);
    assert!(
        e.str("message")
            .contains("too many connections from your address"),
        "{}",
        e.body
    );
    assert!(refused.is_closed_by_server());
    connect_from(Ipv4Addr::new(127, 0, 0, 2), server.addr).barrier();
    if let Some(one) = held.pop() {
        one.drop_connection();
    }
    server.wait_until_clean(2);
    server.client().barrier();
}

/// A connection that does not log in within the login timeout gets ERROR 401
/// and is closed; a logged-in one opened at the same time stays.
#[test]
fn connections_that_never_log_in_are_closed_at_the_login_timeout() {
    let server = TestServer::start_with(|c| c.limits.login_timeout = Duration::from_millis(400));
    let mut anonymous = server.client();
    let (mut alice, _) = server.user("alice");
    let e = anonymous.expect_error(401);
    assert!(e.str("message").starts_with("login timeout"), "{}", e.body);
    assert!(anonymous.is_closed_by_server());
    alice.send(T::UserListRequest, json!({}));
    alice.expect(T::UserListResponse);
}

/// max_connections holds under a flood of 2,000 connections that never speak,
/// while a logged-in pair's call keeps relaying.
#[test]
fn max_connections_holds_under_a_flood_of_silent_connections() {
    let server = TestServer::start_with(|c| {
        c.max_connections = 100;
        c.limits.max_connections_per_ip = 10_000;
        // Alice sends about 204 frames, and on a fast run the 200 relays take
        // well under a second: beyond the default bucket (200 frames, then
        // 100/s) her last candidates were refused with 429 and Bob waited for
        // them until his read timed out. The frame rate is not under test here.
        c.limits.frames_per_second = 1e6;
        c.limits.frame_burst = 1_000_000;
    });
    let (mut alice, _) = server.user("alice");
    let (mut bob, bob_id) = server.user("bob");
    let call_id = connect_call(&mut alice, &mut bob, &bob_id);
    let addr = server.addr;
    let flooding = Arc::new(AtomicBool::new(true));
    let opened = Arc::new(AtomicUsize::new(0));
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let (flooding, opened) = (flooding.clone(), opened.clone());
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for _ in 0..500 {
                    if let Ok(s) = std::net::TcpStream::connect(addr) {
                        held.push(s);
                        opened.fetch_add(1, Ordering::SeqCst);
                    }
                }
                // Held open, silent, until the test is done.
                while flooding.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                held.len()
            })
        })
        .collect();
    let mut peak = 0;
    for i in 0..200 {
        alice.send(T::IceCandidate, json!({"call_id": call_id, "candidate": format!("c{i}"), "sdp_mid": "0", "sdp_mline_index": 0}));
        assert_eq!(
            bob.expect(T::IceCandidate).str("candidate"),
            format!("c{i}")
        );
        peak = peak.max(server.stats().open_connections);
    }
    while opened.load(Ordering::SeqCst) < 2000 {
        peak = peak.max(server.stats().open_connections);
        std::thread::sleep(Duration::from_millis(5));
    }
    peak = peak.max(server.stats().open_connections);
    flooding.store(false, Ordering::SeqCst);
    let total: usize = flooders.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(total, 2000);
    assert!(peak <= 100, "open connections peaked at {peak}");
    // Nothing Alice sent was refused: no answer but presence before her barrier.
    let answers = alice.barrier();
    assert!(answers.is_empty(), "{answers:?}");
    alice.send(T::Hangup, json!({}));
    bob.expect(T::Hangup);
}

/// Frames beyond the token bucket get ERROR 429 with retry_after_ms; a client
/// that keeps going is disconnected; the bucket refills for one that waits.
#[test]
fn frames_beyond_the_rate_get_429_and_sustained_abuse_disconnects() {
    let server = TestServer::start_with(|c| {
        c.limits.frames_per_second = 20.0;
        c.limits.frame_burst = 5;
        c.limits.rate_violations_before_disconnect = 10;
    });
    let mut polite = server.client();
    let heartbeat = crate::support::encode(T::Heartbeat, &json!({"timestamp": 1}));
    polite.send_raw(&heartbeat.repeat(8));
    let answers: Vec<_> = (0..8).map(|_| polite.next()).collect();
    assert_eq!(
        answers
            .iter()
            .filter(|f| f.kind == T::Heartbeat.code())
            .count(),
        5,
        "the burst"
    );
    let refused: Vec<_> = answers
        .iter()
        .filter(|f| f.kind == T::Error.code())
        .collect();
    assert_eq!(refused.len(), 3);
    let wait = refused[2].body["retry_after_ms"]
        .as_u64()
        .expect("retry_after_ms");
    assert!(
        refused[2].body["code"] == 429 && (1..=50).contains(&wait),
        "{}",
        refused[2].body
    );

    let mut abuser = server.client();
    abuser.send_raw(&heartbeat.repeat(100));
    assert!(abuser.is_closed_by_server());
    let last = abuser.skipped.last().expect("told why");
    assert_eq!(last.body["code"], 429);
    assert!(last.str("message").contains("closing"), "{}", last.body);

    // The polite client, once its bucket has refilled, is served as before.
    std::thread::sleep(Duration::from_millis(wait));
    polite.send(T::Heartbeat, json!({"timestamp": 2}));
    assert_eq!(polite.expect(T::Heartbeat).body["timestamp"], 2);
}

/// Failed logins back off per username: after the free failures, attempts get
/// 429 with retry_after_ms before any password check, even with the right
/// password; after the wait, the right password works.
#[test]
fn failed_logins_back_off_per_username() {
    let server = TestServer::start_with(|c| {
        c.limits.failed_logins_per_user = 2;
        c.limits.failed_logins_per_ip = 1000;
        c.limits.login_backoff_initial = Duration::from_millis(300);
    });
    server.client().register("alice", "right");
    let mut guesser = connect_from(Ipv4Addr::new(127, 0, 0, 3), server.addr);
    for _ in 0..3 {
        assert_eq!(guesser.login("alice", "wrong").body["code"], 401);
    }
    let refused = guesser.login("ALICE", "right");
    assert_eq!(refused.body["code"], 429, "{}", refused.body);
    let wait = refused.body["retry_after_ms"]
        .as_u64()
        .expect("retry_after_ms");
    assert!(wait > 0 && wait <= 300, "{wait}");
    // Another address is refused too: the limit is on the username.
    let mut elsewhere = connect_from(Ipv4Addr::new(127, 0, 0, 4), server.addr);
    assert_eq!(elsewhere.login("alice", "right").body["code"], 429);
    std::thread::sleep(Duration::from_millis(wait + 50));
    elsewhere.login_ok("alice", "right");
}

/// Failed logins back off per source address, across usernames (known or not).
#[test]
fn failed_logins_back_off_per_address() {
    let server = TestServer::start_with(|c| {
        c.limits.failed_logins_per_user = 1000;
        c.limits.failed_logins_per_ip = 3;
        c.limits.login_backoff_initial = Duration::from_secs(60);
    });
    server.client().register("alice", "right");
    let mut sprayer = connect_from(Ipv4Addr::new(127, 0, 0, 5), server.addr);
    for name in ["u1", "u2", "u3", "u4"] {
        assert_eq!(sprayer.login(name, "x").body["code"], 401);
    }
    assert_eq!(sprayer.login("alice", "right").body["code"], 429);
    connect_from(Ipv4Addr::new(127, 0, 0, 6), server.addr).login_ok("alice", "right");
}

/// Registrations per address are limited: the burst at once, then the rate
/// per minute, with retry_after_ms.
#[test]
fn registrations_per_address_are_limited() {
    let server = TestServer::start_with(|c| {
        c.limits.registrations_per_ip_per_minute = 1;
        c.limits.registration_burst = 2;
    });
    let mut c = connect_from(Ipv4Addr::new(127, 0, 0, 7), server.addr);
    c.register("user1", "pw");
    c.register("user2", "pw");
    c.send(
        T::RegisterRequest,
        json!({"username": "user3", "password_hash": "pw"}),
    );
    let f = c.expect(T::RegisterResponse);
    assert_eq!(
        (f.body["success"].as_bool(), f.body["code"].as_u64()),
        (Some(false), Some(429)),
        "{}",
        f.body
    );
    assert!(
        f.body["retry_after_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 50_000),
        "{}",
        f.body
    );
    connect_from(Ipv4Addr::new(127, 0, 0, 8), server.addr).register("user3", "pw");
}

/// After LOGOUT the connection stays open and the login timeout starts afresh.
#[test]
fn the_login_timeout_starts_afresh_after_logout() {
    let server = TestServer::start_with(|c| c.limits.login_timeout = Duration::from_millis(400));
    let (mut alice, _) = server.user("alice");
    // Logged in for longer than the login timeout.
    std::thread::sleep(Duration::from_millis(600));
    alice.send(T::LogoutRequest, json!({}));
    alice.expect(T::LogoutResponse);
    alice.send(T::Heartbeat, json!({"timestamp": 5}));
    assert_eq!(
        alice.expect(T::Heartbeat).body["timestamp"],
        5,
        "still open after logout"
    );
    alice.login_ok("alice", "secret");
    alice.send(T::LogoutRequest, json!({}));
    alice.expect(T::LogoutResponse);
    assert!(
        alice
            .expect_error(401)
            .str("message")
            .starts_with("login timeout")
    );
}

/// A login with a huge made-up username fails like any unknown user and does
/// not count against (or lock out) real usernames.
#[test]
fn huge_invalid_usernames_fail_like_unknown_users() {
    let server = TestServer::start_with(|c| {
        c.limits.failed_logins_per_user = 0;
        c.limits.failed_logins_per_ip = 1000;
    });
    server.client().register("alice", "right");
    let mut c = server.client();
    let huge = "x".repeat(200_000);
    for _ in 0..3 {
        let f = c.login(&huge, "pw");
        assert_eq!(f.body["code"], 401, "{}", f.body["error"]);
    }
    c.login_ok("alice", "right");
}

/// Clients in `limits.exempt_networks` are not counted per address: one exempt
/// address exceeds the connection, registration and per-address failed-login
/// limits, while an address outside the networks is held to all three, and
/// the per-username back-off still applies inside.
#[test]
fn exempt_networks_are_not_limited_per_address() {
    let server = TestServer::start_with(|c| {
        c.limits.max_connections_per_ip = 3;
        c.limits.registrations_per_ip_per_minute = 1;
        c.limits.registration_burst = 2;
        c.limits.failed_logins_per_ip = 2;
        c.limits.failed_logins_per_user = 3;
        c.limits.login_backoff_initial = Duration::from_secs(60);
        c.limits.exempt_networks =
            vec!["127.0.0.16/28".parse().unwrap(), "::1/128".parse().unwrap()];
    });
    let office = Ipv4Addr::new(127, 0, 0, 20);
    let elsewhere = Ipv4Addr::new(127, 0, 0, 40);

    // Ten connections from one exempt address, over a limit of three.
    let mut desks: Vec<Client> = (0..10).map(|_| connect_from(office, server.addr)).collect();
    for desk in &mut desks {
        assert!(desk.barrier().is_empty());
    }
    // Six registrations from it, over a burst of two.
    for (i, desk) in desks.iter_mut().take(6).enumerate() {
        desk.register(&format!("desk{i}"), "pw");
    }
    // Failed logins to several names do not back the address off...
    for i in 0..4 {
        assert_eq!(
            desks[6].login(&format!("desk{i}"), "typo").body["code"],
            401
        );
    }
    desks[7].login_ok("desk5", "pw");
    // ...but one username guessed at still backs off, from the office too.
    for _ in 0..4 {
        assert_eq!(desks[8].login("desk4", "guess").body["code"], 401);
    }
    assert_eq!(desks[9].login("desk4", "pw").body["code"], 429);

    // An address outside the networks: three connections, the fourth refused.
    let mut outside: Vec<Client> = (0..3)
        .map(|_| connect_from(elsewhere, server.addr))
        .collect();
    for c in &mut outside {
        assert!(c.barrier().is_empty());
    }
    let mut refused = connect_from(elsewhere, server.addr);
    let e = refused.expect_error(429);
    assert!(
        e.str("message")
            .contains("too many connections from your address (limit 3)"),
        "{}",
        e.body
    );
    // Two registrations, the third refused.
    outside[0].register("visitor1", "pw");
    outside[0].register("visitor2", "pw");
    outside[0].send(
        T::RegisterRequest,
        json!({"username": "visitor3", "password_hash": "pw"}),
    );
    assert_eq!(outside[0].expect(T::RegisterResponse).body["code"], 429);
    // Two failed logins, then the address backs off, even with the right password.
    assert_eq!(outside[1].login("desk0", "typo").body["code"], 401);
    assert_eq!(outside[1].login("desk1", "typo").body["code"], 401);
    assert_eq!(outside[1].login("desk2", "typo").body["code"], 401);
    assert_eq!(outside[2].login("visitor1", "pw").body["code"], 429);
    assert_eq!(server.stats().open_connections, 13);
}
