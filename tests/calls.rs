//! Calls and the signaling relay, over real sockets.

use serde_json::json;
use switchboard::tcp::MessageType as T;

use crate::support::{TestServer, connect_call, connect_small_receive_buffer, encode, relay_load};

/// A whole call: ring, accept, offer, answer, candidates both ways, hang up;
/// states follow, and nothing is left behind.
#[test]
fn a_whole_call_from_ring_to_hangup() {
    let server = TestServer::start();
    let (mut alice, alice_id) = server.user("alice");
    let (mut bob, bob_id) = server.user("bob");
    alice.send(T::CallRequest, json!({"to_user_id": bob_id}));
    let ring = bob.expect(T::CallNotification);
    let call_id = ring.str("call_id").to_string();
    assert_eq!(
        ring.body,
        json!({"call_id": call_id, "from_user_id": alice_id, "from_username": "alice"})
    );
    bob.expect_state(&alice_id, "Busy");
    bob.send(
        T::CallResponse,
        json!({"call_id": call_id, "accepted": true}),
    );
    let accepted = alice.expect(T::CallAccepted);
    assert_eq!(
        accepted.body,
        json!({"call_id": call_id, "peer_user_id": bob_id, "peer_username": "bob"})
    );
    alice.expect_state(&bob_id, "Busy");

    alice.send(T::SdpOffer, json!({"call_id": call_id, "from_user_id": alice_id, "to_user_id": bob_id, "sdp": "v=0 offer"}));
    let offer = bob.expect(T::SdpOffer);
    assert_eq!(
        offer.body,
        json!({"call_id": call_id, "from_user_id": alice_id, "to_user_id": bob_id, "sdp": "v=0 offer"})
    );
    bob.send(T::SdpAnswer, json!({"call_id": call_id, "from_user_id": bob_id, "to_user_id": alice_id, "sdp": "v=0 answer"}));
    assert_eq!(alice.expect(T::SdpAnswer).str("sdp"), "v=0 answer");
    for i in 0..2u64 {
        let (from, to) = if i == 0 {
            (&mut alice, &mut bob)
        } else {
            (&mut bob, &mut alice)
        };
        from.send(T::IceCandidate, json!({"call_id": call_id, "candidate": format!("candidate:{i}"), "sdp_mid": "0", "sdp_mline_index": i}));
        let ice = to.expect(T::IceCandidate);
        assert_eq!(ice.str("candidate"), format!("candidate:{i}"));
        assert_eq!(
            (ice.str("sdp_mid"), ice.body["sdp_mline_index"].as_u64()),
            ("0", Some(i))
        );
    }
    // Relays are not acknowledged: nothing but the heartbeat comes back.
    assert!(alice.barrier().is_empty());

    bob.send(T::Hangup, json!({"call_id": call_id}));
    assert_eq!(alice.expect(T::Hangup).body, json!({"call_id": call_id}));
    alice.expect_state(&bob_id, "Available");
    bob.expect_state(&alice_id, "Available");
    assert_eq!(server.stats().calls, 0);
    assert!(
        bob.barrier().is_empty(),
        "the one who hung up gets no answer"
    );
}

/// SDP with CRLF, quotes, backslashes, non-ASCII and 64 KiB arrives byte-faithful.
#[test]
fn relayed_sdp_arrives_byte_faithful() {
    let server = TestServer::start();
    let (mut alice, _) = server.user("alice");
    let (mut bob, bob_id) = server.user("bob");
    let call_id = connect_call(&mut alice, &mut bob, &bob_id);
    let mut sdp = String::from(
        "v=0\r\no=- 46117317 2 IN IP4 127.0.0.1\r\ns=\"quoted\" back\\slash é ü 漢字 🎧\r\n",
    );
    while sdp.len() < 64 * 1024 {
        sdp.push_str("a=candidate:842163049 1 udp 1677729535 203.0.113.7 49203 typ srflx\r\n");
    }
    alice.send(T::SdpOffer, json!({"call_id": call_id, "sdp": sdp}));
    assert_eq!(bob.expect(T::SdpOffer).str("sdp"), sdp);
    alice.send(T::IceCandidate, json!({"call_id": call_id, "candidate": "c\"\\\r\n✓", "sdp_mid": "audio", "sdp_mline_index": 1}));
    assert_eq!(bob.expect(T::IceCandidate).str("candidate"), "c\"\\\r\n✓");
}

/// The server writes the real sender into from_user_id, whatever the client claimed.
#[test]
fn a_spoofed_from_user_id_is_overwritten() {
    let server = TestServer::start();
    let (mut alice, alice_id) = server.user("alice");
    let (mut bob, bob_id) = server.user("bob");
    let call_id = connect_call(&mut alice, &mut bob, &bob_id);
    alice.send(
        T::SdpOffer,
        json!({"call_id": call_id, "from_user_id": "999", "to_user_id": bob_id, "sdp": "x"}),
    );
    assert_eq!(bob.expect(T::SdpOffer).str("from_user_id"), alice_id);
    alice.send(T::IceCandidate, json!({"call_id": call_id, "from_user_id": bob_id, "candidate": "c", "sdp_mid": "0", "sdp_mline_index": 0}));
    assert_eq!(bob.expect(T::IceCandidate).str("from_user_id"), alice_id);
}

/// An outsider cannot inject signaling into a call or hang it up; a wrong to_user_id is refused.
#[test]
fn signaling_is_relayed_only_between_the_two_parties() {
    let server = TestServer::start();
    let (mut alice, _) = server.user("alice");
    let (mut bob, bob_id) = server.user("bob");
    let (mut mallory, mallory_id) = server.user("mallory");
    let call_id = connect_call(&mut alice, &mut bob, &bob_id);
    for (kind, body) in [
        (
            T::SdpOffer,
            json!({"call_id": call_id, "to_user_id": bob_id, "sdp": "evil", "req_id": 1}),
        ),
        (
            T::SdpAnswer,
            json!({"call_id": call_id, "sdp": "evil", "req_id": 1}),
        ),
        (
            T::IceCandidate,
            json!({"call_id": call_id, "candidate": "evil", "sdp_mid": "0", "sdp_mline_index": 0, "req_id": 1}),
        ),
        (T::Hangup, json!({"call_id": call_id, "req_id": 1})),
    ] {
        mallory.send(kind, body);
        let e = mallory.expect_error(403);
        assert_eq!(e.body["message"], "you are not a party to this call");
        assert_eq!(e.body["req_id"], 1);
    }
    alice.send(
        T::SdpOffer,
        json!({"call_id": call_id, "to_user_id": mallory_id, "sdp": "x"}),
    );
    assert_eq!(
        alice.expect_error(403).body["message"],
        "to_user_id is not your peer in this call"
    );
    alice.send(T::SdpOffer, json!({"call_id": "12345", "sdp": "x"}));
    alice.expect_error(404);
    alice.send(T::SdpOffer, json!({"call_id": "not-a-call", "sdp": "x"}));
    alice.expect_error(404);
    // Nothing reached bob, and the call is intact.
    assert!(bob.barrier().is_empty());
    assert_eq!(server.stats().calls, 1);
}

/// Calling yourself, an unknown user, an offline user or a busy user is refused.
#[test]
fn call_requests_are_refused_with_the_right_code() {
    let server = TestServer::start();
    let (mut alice, alice_id) = server.user("alice");
    let (mut bob, bob_id) = server.user("bob");
    let (mut carol, carol_id) = server.user("carol");
    let mut dave = server.client();
    let dave_id = dave.register("dave", "pw");
    for (to, code, message) in [
        (alice_id.as_str(), 400, "you cannot call yourself"),
        ("4242", 404, "no such user"),
        (dave_id.as_str(), 409, "user is offline"),
    ] {
        alice.send(T::CallRequest, json!({"to_user_id": to}));
        assert_eq!(alice.expect_error(code).body["message"], message);
    }
    connect_call(&mut alice, &mut bob, &bob_id);
    carol.send(T::CallRequest, json!({"to_user_id": bob_id}));
    assert_eq!(carol.expect_error(409).body["message"], "user is busy");
    alice.send(T::CallRequest, json!({"to_user_id": carol_id}));
    assert_eq!(
        alice.expect_error(409).body["message"],
        "you are already in a call"
    );
}

/// A ringing callee cannot be rung by someone else.
#[test]
fn a_ringing_callee_is_busy_for_other_callers() {
    let server = TestServer::start();
    let (mut alice, _) = server.user("alice");
    let (mut bob, bob_id) = server.user("bob");
    let (mut carol, _) = server.user("carol");
    alice.send(T::CallRequest, json!({"to_user_id": bob_id}));
    bob.expect(T::CallNotification);
    carol.send(T::CallRequest, json!({"to_user_id": bob_id}));
    carol.expect_error(409);
}

/// Declining tells the caller with CALL_DECLINED, and both are Available again.
#[test]
fn a_declined_call_tells_the_caller() {
    let server = TestServer::start();
    let (mut alice, alice_id) = server.user("alice");
    let (mut bob, bob_id) = server.user("bob");
    alice.send(T::CallRequest, json!({"to_user_id": bob_id}));
    let call_id = bob.expect(T::CallNotification).str("call_id").to_string();
    bob.send(
        T::CallResponse,
        json!({"call_id": call_id, "accepted": false}),
    );
    let declined = alice.expect(T::CallDeclined);
    assert_eq!(
        declined.body,
        json!({"call_id": call_id, "peer_user_id": bob_id, "peer_username": "bob"})
    );
    bob.expect_state(&alice_id, "Available");
    // The call is gone: answering it again is an error.
    bob.send(
        T::CallResponse,
        json!({"call_id": call_id, "accepted": true}),
    );
    assert_eq!(bob.expect_error(404).body["message"], "no such call");
    assert_eq!(server.stats().calls, 0);
}

/// Only the callee may answer; the caller gets 403.
#[test]
fn only_the_callee_can_answer() {
    let server = TestServer::start();
    let (mut alice, _) = server.user("alice");
    let (mut bob, bob_id) = server.user("bob");
    alice.send(T::CallRequest, json!({"to_user_id": bob_id}));
    let call_id = bob.expect(T::CallNotification).str("call_id").to_string();
    alice.send(
        T::CallResponse,
        json!({"call_id": call_id, "accepted": true}),
    );
    alice.expect_error(403);
    bob.send(
        T::CallResponse,
        json!({"call_id": call_id, "accepted": true}),
    );
    alice.expect(T::CallAccepted);
    bob.send(
        T::CallResponse,
        json!({"call_id": call_id, "accepted": true}),
    );
    assert_eq!(
        bob.expect_error(409).body["message"],
        "call was already answered"
    );
}

/// SDP before the callee accepts is refused with 409.
#[test]
fn signaling_before_acceptance_is_refused() {
    let server = TestServer::start();
    let (mut alice, _) = server.user("alice");
    let (mut bob, bob_id) = server.user("bob");
    alice.send(T::CallRequest, json!({"to_user_id": bob_id}));
    let call_id = bob.expect(T::CallNotification).str("call_id").to_string();
    alice.send(T::SdpOffer, json!({"call_id": call_id, "sdp": "early"}));
    assert_eq!(
        alice.expect_error(409).body["message"],
        "call has not been accepted yet"
    );
}

/// An unanswered call ends at the ringing timeout: CALL_DECLINED reason timeout, callee HANGUP.
#[test]
fn an_unanswered_call_times_out() {
    let server =
        TestServer::start_with(|c| c.ringing_timeout = std::time::Duration::from_millis(300));
    let (mut alice, alice_id) = server.user("alice");
    let (mut bob, bob_id) = server.user("bob");
    alice.send(T::CallRequest, json!({"to_user_id": bob_id}));
    let call_id = bob.expect(T::CallNotification).str("call_id").to_string();
    let declined = alice.expect(T::CallDeclined);
    assert_eq!(
        declined.body,
        json!({"call_id": call_id, "peer_user_id": bob_id, "peer_username": "bob", "reason": "timeout"})
    );
    assert_eq!(bob.expect(T::Hangup).body, json!({"call_id": call_id}));
    bob.expect_state(&alice_id, "Available");
    bob.send(
        T::CallResponse,
        json!({"call_id": call_id, "accepted": true}),
    );
    bob.expect_error(404);
    assert_eq!(server.stats().calls, 0);
}

/// The caller cancels a ringing call with HANGUP (call_id omitted: a v1 caller does not know it yet).
#[test]
fn the_caller_cancels_a_ringing_call() {
    let server = TestServer::start();
    let (mut alice, alice_id) = server.user("alice");
    let (mut bob, bob_id) = server.user("bob");
    alice.send(T::CallRequest, json!({"to_user_id": bob_id}));
    let call_id = bob.expect(T::CallNotification).str("call_id").to_string();
    alice.send(T::Hangup, json!({}));
    assert_eq!(bob.expect(T::Hangup).body, json!({"call_id": call_id}));
    bob.expect_state(&alice_id, "Available");
    bob.send(
        T::CallResponse,
        json!({"call_id": call_id, "accepted": true}),
    );
    bob.expect_error(404);
    alice.send(T::Hangup, json!({}));
    assert_eq!(
        alice.expect_error(404).body["message"],
        "you are not in a call"
    );
}

/// A party who disconnects mid-call: the peer gets HANGUP and both states are broadcast.
#[test]
fn disconnecting_mid_call_hangs_up_the_peer() {
    let server = TestServer::start();
    let (mut alice, alice_id) = server.user("alice");
    let (mut bob, bob_id) = server.user("bob");
    let (mut carol, _) = server.user("carol");
    let call_id = connect_call(&mut alice, &mut bob, &bob_id);
    bob.drop_connection();
    assert_eq!(alice.expect(T::Hangup).body, json!({"call_id": call_id}));
    carol.expect_state(&bob_id, "Disconnected");
    carol.expect_state(&alice_id, "Available");
    server.wait_until_clean(2);
    assert_eq!(server.stats().online_users, 2);
}

/// A backlog queued while the callee did not read is delivered in full once it
/// reads, without the callee sending anything (no wake-up is lost when a
/// write round empties the buffer but frames are still queued).
#[test]
fn a_backlog_is_delivered_whole_once_the_reader_catches_up() {
    let server = TestServer::start_with(|c| {
        c.outbound_queue_bytes = 256 << 20;
        // The burst is the point here, not the frame rate limit.
        c.limits.frames_per_second = 1e6;
        c.limits.frame_burst = 1_000_000;
    });
    let (mut alice, _) = server.user("alice");
    let (mut bob, bob_id) = server.user("bob");
    let call_id = connect_call(&mut alice, &mut bob, &bob_id);
    let candidate = "x".repeat(8 * 1024);
    let frames = 2000;
    let mut burst = Vec::new();
    for i in 0..frames {
        let body = json!({"call_id": call_id, "candidate": format!("{i} {candidate}"), "sdp_mid": "0", "sdp_mline_index": 0});
        burst.extend(encode(T::IceCandidate, &body));
    }
    alice.send_raw(&burst);
    // Alice's requests are handled in order: once her heartbeat is answered,
    // every candidate is queued for Bob, who has read nothing yet.
    alice.send(T::Heartbeat, json!({"timestamp": 1}));
    alice.expect(T::Heartbeat);
    for i in 0..frames {
        let got = bob.expect(T::IceCandidate);
        assert!(
            got.str("candidate").starts_with(&format!("{i} ")),
            "frame {i}"
        );
    }
}

/// Relays over plain TCP are written through by the sender's thread when the
/// peer is idle, and under load (ICE both ways, 8 MB SDP bodies to a slow
/// reader that keeps sending HEARTBEATs) they arrive whole and in order: the
/// rest of a relay written part-way goes out before the peer's own answers
/// (`support::relay_load`).
#[test]
fn relays_are_written_through_and_arrive_whole_and_in_order_under_load() {
    let server = TestServer::start_with(relay_load::config);
    let alice = server.client();
    let bob = connect_small_receive_buffer(server.addr);
    relay_load::run(&server, alice, bob);
}
