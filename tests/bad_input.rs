//! Bad input: each gets a clear error, and the connection goes on where the
//! frame boundary is intact; nobody's misbehaviour delays anyone else.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use switchboard::application::{StoreError, UserListing, UserRecord, UserStore};
use switchboard::domain::UserId;
use switchboard::tcp::MessageType as T;

use crate::support::{Client, TestServer, connect_call};

fn raw(kind: u8, payload: &[u8]) -> Vec<u8> {
    switchboard::tcp::frame::encode(kind, payload)
}

/// Each malformed frame is answered with ERROR 400 naming the problem, and the
/// same connection keeps working afterwards.
#[test]
fn malformed_frames_get_400_and_the_connection_goes_on() {
    let server = TestServer::start();
    let (mut c, _) = server.user("alice");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (raw(0x90, b"{}"), "unknown message type 0x90"),
        (raw(0x00, b"{}"), "unknown message type 0x00"),
        (
            raw(0x08, &[b'{', 0xff, 0xfe, b'}']),
            "CALL_REQUEST payload is not valid UTF-8",
        ),
        (
            raw(0x08, b"{\"to_user_id\":"),
            "invalid CALL_REQUEST payload",
        ),
        (raw(0x08, b"not json"), "expected a JSON object"),
        (raw(0x08, b"[\"1\"]"), "expected a JSON object"),
        (
            raw(0x08, b"{\"to_user_id\":7}"),
            "to_user_id: invalid type: integer `7`, expected a string",
        ),
        (
            raw(0x0A, b"{\"call_id\":\"1\",\"accepted\":\"yes\"}"),
            "accepted: invalid type",
        ),
        (raw(0x08, b"{}"), "missing field `to_user_id`"),
        (
            raw(
                0x0F,
                b"{\"call_id\":\"1\",\"candidate\":\"c\",\"sdp_mid\":\"0\"}",
            ),
            "missing field `sdp_mline_index`",
        ),
        (
            raw(0x01, b"{\"username\":\"alice\"}"),
            "missing field `password_hash`",
        ),
        (
            raw(0x11, b"{\"timestamp\":\"now\"}"),
            "timestamp: invalid type",
        ),
        (
            raw(0x06, b"{\"users\":[]}"),
            "USER_LIST_RESPONSE is sent by the server, not by clients",
        ),
        (vec![0, 0, 0, 0], "empty frame"),
    ];
    for (bytes, needle) in cases {
        c.send_raw(&bytes);
        let e = c.expect_error(400);
        let message = e.body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle),
            "sent {bytes:02x?}: got {message:?}, wanted {needle:?}"
        );
        // Still usable: a request right after is served.
        c.send(T::UserListRequest, json!({}));
        c.expect(T::UserListResponse);
    }
}

/// An oversized length gets ERROR 413 from the prefix alone (no payload is sent
/// or awaited, nothing of that size is allocated), then the connection closes.
#[test]
fn an_oversized_frame_gets_413_then_close() {
    let server = TestServer::start_with(|c| c.max_frame_bytes = 64 * 1024);
    let mut c = server.client();
    c.send_raw(&[0xFF, 0xFF, 0xFF, 0xF0, 0x01]);
    let e = c.expect_error(413);
    assert!(
        e.str("message")
            .contains("exceeds the limit of 65536 bytes"),
        "{}",
        e.body
    );
    assert!(c.is_closed_by_server());
    // The limit is on LEN: exactly the limit is fine.
    let mut ok = server.client();
    let filler = "x".repeat(64 * 1024 - 1 - r#"{"timestamp":1,"pad":""}"#.len());
    ok.send(T::Heartbeat, json!({"timestamp": 1, "pad": filler}));
    ok.expect(T::Heartbeat);
    server.wait_until_clean(1);
}

/// HTTP, typed text and a TLS ClientHello on the plain port are told at once
/// what the port speaks (ERROR 400 naming PROTOCOL.md), then closed; `hi\n`
/// does not wait for a fourth byte or the login timeout.
#[test]
fn other_protocols_are_told_what_the_port_speaks() {
    let server = TestServer::start_with(|c| c.limits.login_timeout = Duration::from_secs(300));
    for (bytes, says) in [
        (&b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"[..], "not HTTP"),
        (&b"hello\r\n"[..], "not text"),
        (&b"hi\n"[..], "not text"),
        (&[0x16, 0x03, 0x01, 0x00, 0xf1, 0x01, 0x00][..], "not TLS"),
    ] {
        let mut c = server.client();
        c.send_raw(bytes);
        let e = c.expect_error(400);
        let message = e.str("message");
        assert!(message.contains("binary protocol"), "{message}");
        assert!(message.contains("PROTOCOL.md"), "{message}");
        assert!(message.contains(says), "{says}: {message}");
        assert!(c.is_closed_by_server());
    }
    // After a real frame, the same bytes are a broken client: 413 as before.
    let mut c = server.client();
    c.send(T::Heartbeat, json!({"timestamp": 1}));
    c.expect(T::Heartbeat);
    c.send_raw(b"GET / HTTP/1.1\r\n\r\n");
    c.expect_error(413);
    server.wait_until_clean(0);
}

/// A relayed body that would not fit a frame once the server adds the ids gets 413; the connection goes on.
#[test]
fn a_relay_too_large_to_forward_gets_413() {
    let server = TestServer::start_with(|c| c.max_frame_bytes = 4096);
    let (mut alice, _) = server.user("alice");
    let (mut bob, bob_id) = server.user("bob");
    let call_id = connect_call(&mut alice, &mut bob, &bob_id);
    alice.send(
        T::SdpOffer,
        json!({"call_id": call_id, "sdp": "x".repeat(4000)}),
    );
    alice.expect_error(413);
    alice.send(T::SdpOffer, json!({"call_id": call_id, "sdp": "small"}));
    assert_eq!(bob.expect(T::SdpOffer).str("sdp"), "small");
}

/// A client that sends nothing and one that trickles a frame a byte at a time
/// hold no one up: a whole call completes meanwhile, and the trickled frame is
/// still answered once complete.
#[test]
fn silent_and_trickling_clients_delay_no_one() {
    let server = TestServer::start();
    let _silent = server.client();
    let mut trickler = server.client();
    let frame = crate::support::encode(T::Heartbeat, &json!({"timestamp": 77}));
    let (half, rest) = frame.split_at(frame.len() / 2);
    for b in half {
        trickler.send_raw(&[*b]);
    }
    // With half a frame pending on one connection and nothing on another, a call goes through.
    let (mut alice, _) = server.user("alice");
    let (mut bob, bob_id) = server.user("bob");
    let call_id = connect_call(&mut alice, &mut bob, &bob_id);
    alice.send(T::SdpOffer, json!({"call_id": call_id, "sdp": "v=0"}));
    bob.expect(T::SdpOffer);
    for b in rest {
        trickler.send_raw(&[*b]);
    }
    assert_eq!(trickler.expect(T::Heartbeat).body["timestamp"], 77);
}

/// A store that panics when asked about one name, to prove a panicking
/// connection thread does not take the daemon down.
struct PanickingStore(Arc<dyn UserStore>);

impl UserStore for PanickingStore {
    fn find_by_name(&self, username: &str) -> Option<UserRecord> {
        assert_ne!(username, "boom", "injected fault");
        self.0.find_by_name(username)
    }
    fn find_by_id(&self, id: UserId) -> Option<UserRecord> {
        self.0.find_by_id(id)
    }
    fn list(&self) -> UserListing {
        self.0.list()
    }
    fn create(&self, username: &str, hash: &str, at: u64) -> Result<UserRecord, StoreError> {
        self.0.create(username, hash, at)
    }
    fn set_password_hash_of(&self, id: UserId, hash: &str) -> Result<bool, StoreError> {
        self.0.set_password_hash_of(id, hash)
    }
    fn delete_user(&self, id: UserId) -> Result<bool, StoreError> {
        self.0.delete_user(id)
    }
}

/// A panic in one connection's thread closes that connection only; calls in
/// progress and new connections carry on, and nothing leaks.
#[test]
fn a_panic_in_one_connection_does_not_take_the_daemon_down() {
    let server = TestServer::start_with_store(|store| Arc::new(PanickingStore(store)));
    let (mut alice, _) = server.user("alice");
    let (mut bob, bob_id) = server.user("bob");
    let call_id = connect_call(&mut alice, &mut bob, &bob_id);
    let mut victim = server.client();
    victim.send(
        T::LoginRequest,
        json!({"username": "boom", "password_hash": "x"}),
    );
    assert!(victim.is_closed_by_server());
    alice.send(
        T::IceCandidate,
        json!({"call_id": call_id, "candidate": "after", "sdp_mid": "0", "sdp_mline_index": 0}),
    );
    assert_eq!(bob.expect(T::IceCandidate).str("candidate"), "after");
    let (mut carol, _) = server.user("carol");
    carol.send(T::UserListRequest, json!({}));
    assert_eq!(
        carol.expect(T::UserListResponse).body["users"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    server.wait_for_open_connections(3);
}

/// A connection silent for the idle timeout is closed; a logged-in user then shows Disconnected.
#[test]
fn silent_connections_are_closed_at_the_idle_timeout() {
    let server = TestServer::start_with(|c| c.idle_timeout = Duration::from_millis(500));
    let (mut watcher, _) = server.user("watcher");
    let (mut sleepy, sleepy_id) = server.user("sleepy");
    let mut anonymous = server.client();
    // The watcher keeps talking; the others say nothing.
    let keep_alive = std::thread::spawn(move || {
        let mut states = Vec::new();
        for _ in 0..30 {
            std::thread::sleep(Duration::from_millis(100));
            for f in watcher.barrier_all() {
                if f.kind == T::UserStateUpdate.code() {
                    states.push((f.str("user_id").to_string(), f.str("state").to_string()));
                }
            }
        }
        states
    });
    assert!(sleepy.is_closed_by_server());
    assert!(anonymous.is_closed_by_server());
    let states = keep_alive.join().expect("watcher");
    assert!(
        states.contains(&(sleepy_id, "Disconnected".to_string())),
        "{states:?}"
    );
}

/// Over max_connections a new client gets ERROR 503 and is closed; a slot frees on disconnect.
#[test]
fn over_max_connections_new_clients_get_503() {
    let server = TestServer::start_with(|c| c.max_connections = 2);
    let mut a = server.client();
    let b = server.client();
    a.barrier();
    let mut refused = server.client();
    let e = refused.expect_error(503);
    assert!(e.str("message").contains("max_connections"));
    assert!(refused.is_closed_by_server());
    b.drop_connection();
    server.wait_until_clean(1);
    let mut c = Client::connect(server.addr);
    c.barrier();
}

/// A client that half-closes after sending still gets its answers written.
#[test]
fn answers_are_written_even_after_the_client_stops_sending() {
    let server = TestServer::start();
    let mut c = server.client();
    let mut bytes = crate::support::encode(
        T::RegisterRequest,
        &json!({"username": "alice", "password_hash": "pw"}),
    );
    bytes.extend(crate::support::encode(
        T::Heartbeat,
        &json!({"timestamp": 1}),
    ));
    let mut tcp = c.tcp().try_clone().unwrap();
    tcp.write_all(&bytes).unwrap();
    tcp.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(c.expect(T::RegisterResponse).body["success"], true);
    assert_eq!(c.expect(T::Heartbeat).body["timestamp"], 1);
}

/// A client that stops reading while its peer floods ICE at it overflows its
/// outbound queue and is disconnected; the flooder is told HANGUP, and an
/// unrelated pair keeps talking throughout.
#[test]
fn a_client_that_stops_reading_is_disconnected_as_a_slow_consumer() {
    let server = TestServer::start_with(|c| {
        c.max_frame_bytes = 16 * 1024;
        c.outbound_queue_bytes = 64 * 1024;
        // This test is about the queue cap, not the frame rate limit.
        c.limits.frames_per_second = 1e6;
        c.limits.frame_burst = 1_000_000;
    });
    let (mut flooder, _) = server.user("flooder");
    let (mut sleeper, sleeper_id) = server.user("sleeper");
    let (mut carol, _) = server.user("carol");
    let (mut dave, dave_id) = server.user("dave");
    let call_id = connect_call(&mut flooder, &mut sleeper, &sleeper_id);
    let other_call = connect_call(&mut carol, &mut dave, &dave_id);
    // From here the sleeper never reads. The flood is written on another thread
    // so this one can keep reading the flooder's side.
    let mut out = flooder.tcp().try_clone().unwrap();
    let candidate = "a".repeat(8 * 1024);
    let writer = std::thread::spawn(move || {
        let frame = crate::support::encode(
            T::IceCandidate,
            &json!({"call_id": call_id, "candidate": candidate, "sdp_mid": "0", "sdp_mline_index": 0}),
        );
        // Far more than every socket buffer between here and the sleeper can hold.
        for _ in 0..4000 {
            if out.write_all(&frame).is_err() {
                break;
            }
        }
    });
    flooder.expect(T::Hangup);
    carol.send(T::IceCandidate, json!({"call_id": other_call, "candidate": "still here", "sdp_mid": "0", "sdp_mline_index": 0}));
    assert_eq!(dave.expect(T::IceCandidate).str("candidate"), "still here");
    writer.join().unwrap();
    assert!(
        sleeper.is_closed_by_server(),
        "the sleeper was disconnected"
    );
    assert_eq!(server.stats().online_users, 3);
}

/// A client that keeps sending requests but never reads the answers is not
/// buffered for: the server stops reading it, and once its output has not
/// moved for the idle timeout, closes it.
#[test]
fn a_client_that_never_reads_its_answers_is_closed_when_output_stalls() {
    let server = TestServer::start_with(|c| {
        c.idle_timeout = Duration::from_millis(500);
        c.limits.frames_per_second = 1e6;
        c.limits.frame_burst = 1_000_000;
        c.limits.registrations_per_ip_per_minute = 1000;
    });
    // Forty users make every USER_LIST_RESPONSE a few kilobytes, so the
    // socket buffers between here and the server fill within a second.
    let mut setup = server.client();
    for i in 0..40 {
        setup.register(&format!("user{i:02}_with_a_long_name"), "pw");
    }
    let mut client = crate::support::connect_small_receive_buffer(server.addr);
    client.login_ok("user00_with_a_long_name", "pw");
    let mut out = client.tcp().try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let burst = crate::support::encode(T::UserListRequest, &json!({})).repeat(1000);
        // Until the server stops reading and then closes the connection.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if out.write_all(&burst).is_err() {
                return true;
            }
        }
        false
    });
    // The server's own send buffer autotunes upward for several seconds before
    // the stall shows, so this waits longer than the shared WAIT.
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while server.stats().open_connections > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "still open: {:?}",
            server.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        writer.join().unwrap(),
        "the writer was cut off by the close"
    );
    drop(client);
}
