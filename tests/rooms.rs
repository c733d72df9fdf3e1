//! Rooms (protocol 2): the full mesh and who offers, the door (password,
//! invitations, knocks, bans, capacity), moderation, durable chat and events,
//! the offline inbox, reconnects, guests, and v1 clients that see none of it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard::tcp::MessageType as T;

use crate::support::{Client, Frame, TestServer, WAIT, connect_call};

static REQ_IDS: AtomicU64 = AtomicU64::new(1);

/// Sends `body` with a fresh `req_id` and returns the answer to it (its
/// response or an ERROR); other frames meanwhile are kept in `skipped`.
fn ask(c: &mut Client, kind: T, mut body: Value) -> Frame {
    let req_id = format!("r{}", REQ_IDS.fetch_add(1, Ordering::Relaxed));
    body["req_id"] = json!(req_id);
    c.send(kind, body);
    if let Some(i) = c.skipped.iter().position(|f| f.body["req_id"] == req_id) {
        return c.skipped.remove(i);
    }
    loop {
        let frame = c.try_next().unwrap_or_else(|e| {
            panic!(
                "waiting for the answer to {}: {e}; skipped so far: {:?}",
                kind.name(),
                c.skipped
            )
        });
        if frame.body["req_id"] == req_id {
            return frame;
        }
        c.skipped.push(frame);
    }
}

/// A request that must succeed with `answer`; returns the answer's body.
fn ok(c: &mut Client, kind: T, body: Value, answer: T) -> Value {
    let f = ask(c, kind, body);
    assert_eq!(
        f.kind,
        answer.code(),
        "{} answered with {} {}",
        kind.name(),
        f.name(),
        f.body
    );
    assert_eq!(f.body["success"], true, "{}", f.body);
    f.body
}

/// A request that must fail with ERROR `code`; returns the ERROR's message.
fn refused(c: &mut Client, kind: T, body: Value, code: u64) -> String {
    let f = ask(c, kind, body);
    assert_eq!(
        f.kind,
        T::Error.code(),
        "{} answered with {} {}, not ERROR {code}",
        kind.name(),
        f.name(),
        f.body
    );
    assert_eq!(f.body["code"], code, "{}", f.body);
    f.str("message").to_string()
}

/// Creates a room (`body` holds at least the name); returns its id.
fn create_room(c: &mut Client, body: Value) -> String {
    let f = ok(c, T::RoomCreateRequest, body, T::RoomCreateResponse);
    f["room_id"]
        .as_str()
        .unwrap_or_else(|| panic!("room_id in {f}"))
        .to_string()
}

/// Joins `room` without a password; returns ROOM_JOIN_RESPONSE.
fn join(c: &mut Client, room: &str) -> Value {
    ok(
        c,
        T::RoomJoinRequest,
        json!({"room_id": room}),
        T::RoomJoinResponse,
    )
}

/// Joins `room` with `password`; returns ROOM_JOIN_RESPONSE.
fn join_with(c: &mut Client, room: &str, password: &str) -> Value {
    ok(
        c,
        T::RoomJoinRequest,
        json!({"room_id": room, "password": password}),
        T::RoomJoinResponse,
    )
}

/// A join that must fail with ERROR `code`; returns the message.
fn join_refused(c: &mut Client, room: &str, password: Option<&str>, code: u64) -> String {
    let mut body = json!({"room_id": room});
    if let Some(password) = password {
        body["password"] = json!(password);
    }
    refused(c, T::RoomJoinRequest, body, code)
}

/// Posts `text` to `room`; returns its seq.
fn say(c: &mut Client, room: &str, text: &str) -> u64 {
    let f = ok(
        c,
        T::RoomMessageRequest,
        json!({"room_id": room, "text": text}),
        T::RoomMessageResponse,
    );
    assert_eq!(f["room_id"], room, "{f}");
    f["seq"].as_u64().unwrap_or_else(|| panic!("seq in {f}"))
}

/// ROOM_LIST_REQUEST; returns the ids of the rooms listed.
fn room_ids(c: &mut Client) -> Vec<String> {
    list_rooms(c)
        .iter()
        .map(|r| r["room_id"].as_str().unwrap().to_string())
        .collect()
}

/// ROOM_LIST_REQUEST; returns the rooms.
fn list_rooms(c: &mut Client) -> Vec<Value> {
    let f = ask(c, T::RoomListRequest, json!({}));
    assert_eq!(f.kind, T::RoomListResponse.code(), "{}", f.body);
    f.body["rooms"].as_array().expect("rooms").clone()
}

/// ROOM_HISTORY_REQUEST with `query` (room_id added); returns the response.
fn history(c: &mut Client, room: &str, mut query: Value) -> Value {
    query["room_id"] = json!(room);
    let f = ask(c, T::RoomHistoryRequest, query);
    assert_eq!(f.kind, T::RoomHistoryResponse.code(), "{}", f.body);
    assert_eq!(f.body["room_id"], room, "{}", f.body);
    f.body
}

/// The seqs of a history page.
fn seqs(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

/// The next `n` ROOM_MESSAGEs of `room` as (seq, text).
fn room_messages(c: &mut Client, room: &str, n: usize) -> Vec<(u64, String)> {
    (0..n)
        .map(|_| {
            let m = c.expect(T::RoomMessage);
            assert_eq!(m.str("room_id"), room, "{}", m.body);
            (m.body["seq"].as_u64().expect("seq"), m.str("text").into())
        })
        .collect()
}

/// The ROOM_PEER_LEFT every participant who stays gets.
fn peer_left(room: &str, user_id: &str, username: &str, reason: &str) -> Value {
    json!({"room_id": room, "user_id": user_id, "username": username, "reason": reason})
}

/// Waits until everything `c` was sent has been answered, then checks that
/// no frame of any of `kinds` came (among those read now or kept before).
fn got_none_of(c: &mut Client, kinds: &[T]) {
    let seen = c.barrier_all();
    let bad: Vec<&Frame> = seen
        .iter()
        .chain(c.skipped.iter())
        .filter(|f| kinds.iter().any(|k| k.code() == f.kind))
        .collect();
    assert!(bad.is_empty(), "unexpected: {bad:?}");
}

/// Logs in a guest on a new connection; returns it and its user id.
fn guest(server: &TestServer, name: &str) -> (Client, String) {
    let mut c = server.client();
    let f = ask(&mut c, T::GuestLoginRequest, json!({"display_name": name}));
    assert_eq!(f.kind, T::LoginResponse.code(), "{}", f.body);
    assert_eq!(f.body["success"], true, "{}", f.body);
    let id = f.str("user_id").to_string();
    (c, id)
}

/// Registers `name` without logging in (a user who is offline).
fn register_offline(server: &TestServer, name: &str) -> String {
    server.client().register(name, "secret")
}

/// Two distinct clients of a slice, both mutable.
fn two(clients: &mut [Client], a: usize, b: usize) -> (&mut Client, &mut Client) {
    assert_ne!(a, b);
    if a < b {
        let (low, high) = clients.split_at_mut(b);
        (&mut low[a], &mut high[0])
    } else {
        let (low, high) = clients.split_at_mut(a);
        (&mut high[0], &mut low[b])
    }
}

/// Polls `check` until it returns true, for up to `WAIT`.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "still not the case: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Four participants join one after the other: the joiner offers to everyone
/// already there and each of them waits, so every pair has exactly one
/// offerer; SDP and ICE go between each pair, stamped with the sender.
#[test]
fn a_four_party_mesh_has_one_offerer_per_pair_and_relays_between_each_pair() {
    let server = TestServer::start();
    let names = ["alice", "bob", "carol", "dave"];
    let mut clients = Vec::new();
    let mut ids = Vec::new();
    for name in names {
        let (c, id, _) = server.user_v2(name);
        clients.push(c);
        ids.push(id);
    }
    let room = create_room(&mut clients[0], json!({"name": "Mesh"}));

    // offerers[(i, j)]: who was told to offer between the i-th and j-th joiner.
    let mut offerers: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
    for j in 0..names.len() {
        let joined = join(&mut clients[j], &room);
        assert_eq!(joined["room_id"], room.as_str(), "{joined}");
        assert_eq!(joined["name"], "Mesh", "{joined}");
        let participants = joined["participants"].as_array().expect("participants");
        assert_eq!(participants.len(), j, "those already in: {joined}");
        for (i, p) in participants.iter().enumerate() {
            assert_eq!(p["user_id"], ids[i].as_str(), "in join order: {joined}");
            assert_eq!(p["username"], names[i], "{joined}");
            assert_eq!(p["create_offer"], true, "the joiner offers: {joined}");
            offerers.entry((i, j)).or_default().push(j);
        }
        for (i, already_in) in clients.iter_mut().enumerate().take(j) {
            let pushed = already_in.expect(T::RoomPeerJoined).body;
            assert_eq!(
                pushed,
                json!({"room_id": room, "user_id": ids[j], "username": names[j], "create_offer": false})
            );
            if pushed["create_offer"] == true {
                offerers.entry((i, j)).or_default().push(i);
            }
        }
    }
    assert_eq!(offerers.len(), 6, "{offerers:?}");
    for (pair, who) in &offerers {
        assert_eq!(who.len(), 1, "pair {pair:?} has offerers {who:?}");
    }
    for c in &mut clients {
        got_none_of(c, &[T::RoomPeerJoined, T::RoomPeerLeft]);
        c.skipped.clear();
    }

    // Each pair: the later joiner offers, the earlier answers, ICE both ways.
    for j in 1..names.len() {
        for i in 0..j {
            let (offerer, answerer) = two(&mut clients, j, i);
            let sdp = format!("v=0 offer {j}->{i}");
            offerer.send(
                T::SdpOffer,
                json!({"room_id": room, "to_user_id": ids[i], "sdp": sdp}),
            );
            assert_eq!(
                answerer.expect(T::SdpOffer).body,
                json!({"room_id": room, "from_user_id": ids[j], "to_user_id": ids[i], "sdp": sdp})
            );
            let sdp = format!("v=0 answer {i}->{j}");
            answerer.send(
                T::SdpAnswer,
                json!({"room_id": room, "to_user_id": ids[j], "from_user_id": "999", "sdp": sdp}),
            );
            assert_eq!(
                offerer.expect(T::SdpAnswer).body,
                json!({"room_id": room, "from_user_id": ids[i], "to_user_id": ids[j], "sdp": sdp}),
                "the real sender is stamped"
            );
            for way in 0..2 {
                let (from, to, from_id, to_id) = if way == 0 {
                    (&mut *offerer, &mut *answerer, &ids[j], &ids[i])
                } else {
                    (&mut *answerer, &mut *offerer, &ids[i], &ids[j])
                };
                let candidate = format!("candidate:{from_id}->{to_id}");
                from.send(
                    T::IceCandidate,
                    json!({"room_id": room, "to_user_id": to_id, "candidate": candidate, "sdp_mid": "0", "sdp_mline_index": 0}),
                );
                let ice = to.expect(T::IceCandidate);
                assert_eq!(ice.str("room_id"), room);
                assert_eq!(ice.str("from_user_id"), from_id.as_str());
                assert_eq!(ice.str("to_user_id"), to_id.as_str());
                assert_eq!(ice.str("candidate"), candidate);
                assert_eq!(ice.str("sdp_mid"), "0");
            }
        }
    }
    // Each relay reached its addressee only, and none was answered.
    for c in &mut clients {
        let seen = c.barrier();
        assert!(seen.is_empty(), "{seen:?}");
    }

    // Leaving: the others are told, the leaver is out of the relay.
    let left = ok(
        &mut clients[3],
        T::RoomLeaveRequest,
        json!({"room_id": room}),
        T::RoomLeaveResponse,
    );
    assert_eq!(left["room_id"], room.as_str());
    for c in &mut clients[..3] {
        assert_eq!(
            c.expect(T::RoomPeerLeft).body,
            peer_left(&room, &ids[3], "dave", "left")
        );
    }
    let message = refused(
        &mut clients[0],
        T::SdpOffer,
        json!({"room_id": room, "to_user_id": ids[3], "sdp": "x"}),
        403,
    );
    assert_eq!(message, "to_user_id is not in this room");
    got_none_of(&mut clients[3], &[T::SdpOffer]);
}

/// Signaling is relayed only between two participants of the same room: not
/// to or from an outsider, and not to a user who is in another room only.
#[test]
fn room_signaling_is_refused_to_outsiders_and_across_rooms() {
    let server = TestServer::start();
    let (mut alice, alice_id, _) = server.user_v2("alice");
    let (mut bob, bob_id, _) = server.user_v2("bob");
    let (mut eve, eve_id, _) = server.user_v2("eve");
    let (mut frank, frank_id, _) = server.user_v2("frank");
    let one = create_room(&mut alice, json!({"name": "One"}));
    let two = create_room(&mut frank, json!({"name": "Two"}));
    join(&mut alice, &one);
    join(&mut bob, &one);
    join(&mut frank, &two);

    // To someone logged in but in no room.
    for kind in [T::SdpOffer, T::SdpAnswer] {
        let message = refused(
            &mut alice,
            kind,
            json!({"room_id": one, "to_user_id": eve_id, "sdp": "x"}),
            403,
        );
        assert_eq!(message, "to_user_id is not in this room");
    }
    // From someone in no room.
    let message = refused(
        &mut eve,
        T::SdpOffer,
        json!({"room_id": one, "to_user_id": alice_id, "sdp": "evil"}),
        403,
    );
    assert_eq!(message, "you are not in this room");
    let message = refused(
        &mut eve,
        T::IceCandidate,
        json!({"room_id": one, "to_user_id": bob_id, "candidate": "evil", "sdp_mid": "0", "sdp_mline_index": 0}),
        403,
    );
    assert_eq!(message, "you are not in this room");
    // Across rooms: bob (room one) to frank (room two only), either room named.
    let message = refused(
        &mut bob,
        T::SdpOffer,
        json!({"room_id": one, "to_user_id": frank_id, "sdp": "x"}),
        403,
    );
    assert_eq!(message, "to_user_id is not in this room");
    let message = refused(
        &mut bob,
        T::IceCandidate,
        json!({"room_id": two, "to_user_id": frank_id, "candidate": "c", "sdp_mid": "0", "sdp_mline_index": 0}),
        403,
    );
    assert_eq!(message, "you are not in this room");
    // Frank (room two) to bob, naming room one.
    let message = refused(
        &mut frank,
        T::SdpOffer,
        json!({"room_id": one, "to_user_id": bob_id, "sdp": "x"}),
        403,
    );
    assert_eq!(message, "you are not in this room");
    // Nothing was relayed to anyone.
    for c in [&mut alice, &mut bob, &mut eve, &mut frank] {
        got_none_of(c, &[T::SdpOffer, T::SdpAnswer, T::IceCandidate]);
    }
    // The room's own relay still works.
    bob.send(
        T::SdpOffer,
        json!({"room_id": one, "to_user_id": alice_id, "sdp": "fine"}),
    );
    assert_eq!(alice.expect(T::SdpOffer).str("from_user_id"), bob_id);
}

/// A password room admits with the right password only; the owner needs none.
#[test]
fn a_password_room_admits_with_the_right_password_and_the_owner_without() {
    let server = TestServer::start();
    let (mut alice, _, _) = server.user_v2("alice");
    let (mut bob, bob_id, _) = server.user_v2("bob");
    let room = create_room(&mut alice, json!({"name": "Locked", "password": "s3cret"}));
    let view = &list_rooms(&mut bob)[0];
    assert_eq!(view["has_password"], true, "{view}");
    assert!(view.get("password").is_none(), "{view}");
    assert_eq!(
        join_refused(&mut bob, &room, None, 401),
        "wrong room password"
    );
    assert_eq!(
        join_refused(&mut bob, &room, Some("S3CRET"), 401),
        "wrong room password"
    );
    let owner = join(&mut alice, &room);
    assert_eq!(owner["participants"], json!([]));
    let joined = join_with(&mut bob, &room, "s3cret");
    assert_eq!(joined["participants"].as_array().unwrap().len(), 1);
    assert_eq!(alice.expect(T::RoomPeerJoined).str("user_id"), bob_id);
    assert_eq!(
        join_refused(&mut bob, &room, Some("s3cret"), 409),
        "already in this room"
    );
}

/// Wrong room passwords count in the login back-off: past the free failures
/// the answer is 429, even with the right password; another user is not held back.
#[test]
fn wrong_room_passwords_are_counted_by_the_login_back_off() {
    let server = TestServer::start_with(|c| {
        c.limits.failed_logins_per_user = 2;
        c.limits.failed_logins_per_ip = 1000;
        c.limits.login_backoff_initial = Duration::from_secs(60);
    });
    let (mut alice, _, _) = server.user_v2("alice");
    let (mut bob, _, _) = server.user_v2("bob");
    let (mut carol, _, _) = server.user_v2("carol");
    let room = create_room(&mut alice, json!({"name": "Vault", "password": "right"}));
    for _ in 0..2 {
        assert_eq!(
            join_refused(&mut bob, &room, Some("wrong"), 401),
            "wrong room password"
        );
    }
    let mut answers = Vec::new();
    for _ in 0..4 {
        let f = ask(
            &mut bob,
            T::RoomJoinRequest,
            json!({"room_id": room, "password": "wrong"}),
        );
        assert_eq!(f.kind, T::Error.code(), "{}", f.body);
        let code = f.body["code"].as_u64().unwrap();
        answers.push(code);
        if code == 429 {
            assert!(
                f.body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0),
                "{}",
                f.body
            );
            break;
        }
        assert_eq!(code, 401, "{}", f.body);
    }
    assert_eq!(answers.last(), Some(&429), "never backed off: {answers:?}");
    join_refused(&mut bob, &room, Some("right"), 429);
    join_with(&mut carol, &room, "right");
}

/// An invite-only room is hidden from and refuses those not invited; an
/// invitation (pushed at once to an online invitee) admits without the
/// password, once.
#[test]
fn an_invite_only_room_admits_the_invited_only() {
    let server = TestServer::start();
    let (mut alice, alice_id, _) = server.user_v2("alice");
    let (mut bob, bob_id, _) = server.user_v2("bob");
    let room = create_room(
        &mut alice,
        json!({"name": "Inner circle", "invite_only": true, "password": "pw"}),
    );
    assert!(room_ids(&mut alice).contains(&room), "the owner sees it");
    assert!(!room_ids(&mut bob).contains(&room), "hidden from bob");
    assert_eq!(
        join_refused(&mut bob, &room, Some("pw"), 403),
        "this room is invite-only"
    );

    let invited = ok(
        &mut alice,
        T::RoomInviteRequest,
        json!({"room_id": room, "user_ids": [bob_id]}),
        T::RoomInviteResponse,
    );
    assert_eq!(invited["room_id"], room.as_str());
    assert_eq!(invited["invited"], json!([bob_id]));
    let invitation = bob.expect(T::RoomInvitation).body;
    assert_eq!(
        invitation,
        json!({"room_id": room, "name": "Inner circle", "from_user_id": alice_id, "from_username": "alice"})
    );
    assert!(room_ids(&mut bob).contains(&room), "invited: listed");
    // A participant may not invite unless the owner allows it.
    let (_carol, carol_id, _) = server.user_v2("carol");
    join(&mut bob, &room);
    let message = refused(
        &mut bob,
        T::RoomInviteRequest,
        json!({"room_id": room, "user_ids": [carol_id]}),
        403,
    );
    assert_eq!(message, "only the owner may invite to this room");
    // The invitation was used up by joining.
    ok(
        &mut bob,
        T::RoomLeaveRequest,
        json!({"room_id": room}),
        T::RoomLeaveResponse,
    );
    assert_eq!(
        join_refused(&mut bob, &room, None, 403),
        "this room is invite-only"
    );
}

/// An invitation to an offline user waits in its inbox: it comes after the
/// LOGIN_RESPONSE of the next login, with an inbox_id, and again at every
/// login until acknowledged, never after.
#[test]
fn an_invitation_reaches_an_offline_invitee_at_each_login_until_acknowledged() {
    let server = TestServer::start();
    let (mut alice, alice_id, _) = server.user_v2("alice");
    let bob_id = register_offline(&server, "bob");
    let room = create_room(&mut alice, json!({"name": "Later", "invite_only": true}));
    let invited = ok(
        &mut alice,
        T::RoomInviteRequest,
        json!({"room_id": room, "user_ids": [bob_id]}),
        T::RoomInviteResponse,
    );
    assert_eq!(invited["invited"], json!([bob_id]));

    let mut inbox_id = None;
    for _ in 0..2 {
        let mut bob = server.client();
        bob.login_v2("bob", "secret");
        assert!(
            bob.skipped
                .iter()
                .all(|f| f.kind != T::RoomInvitation.code()),
            "before LOGIN_RESPONSE: {:?}",
            bob.skipped
        );
        let invitation = bob.expect(T::RoomInvitation).body;
        assert_eq!(invitation["room_id"], room.as_str(), "{invitation}");
        assert_eq!(invitation["name"], "Later");
        assert_eq!(invitation["from_user_id"], alice_id.as_str());
        assert_eq!(invitation["from_username"], "alice");
        let id = invitation["inbox_id"].as_u64().expect("inbox_id");
        assert_eq!(*inbox_id.get_or_insert(id), id, "the same notice again");
        got_none_of(&mut bob, &[T::RoomInvitation]);
        bob.drop_connection();
        server.wait_until_clean(1);
    }

    let mut bob = server.client();
    bob.login_v2("bob", "secret");
    bob.expect(T::RoomInvitation);
    let acked = ok(
        &mut bob,
        T::InboxAckRequest,
        json!({"through": inbox_id.unwrap()}),
        T::InboxAckResponse,
    );
    assert_eq!(acked["removed"], 1, "{acked}");
    bob.drop_connection();
    server.wait_until_clean(1);

    let mut bob = server.client();
    bob.login_v2("bob", "secret");
    got_none_of(&mut bob, &[T::RoomInvitation]);
    // The notice is gone, the invitation is not.
    join(&mut bob, &room);
}

/// Knock, then the owner invites, then the knocker joins; another knock is
/// denied and the knocker is told.
#[test]
fn a_knock_is_answered_by_an_invitation_or_a_denial() {
    let server = TestServer::start();
    let (mut alice, _, _) = server.user_v2("alice");
    let (mut bob, bob_id, _) = server.user_v2("bob");
    let (mut carol, carol_id, _) = server.user_v2("carol");
    let room = create_room(
        &mut alice,
        json!({"name": "Lobby", "invite_only": true, "password": "pw"}),
    );
    join(&mut alice, &room);

    let answer = ok(
        &mut bob,
        T::RoomKnockRequest,
        json!({"room_id": room, "text": "may I join?"}),
        T::RoomKnockResponse,
    );
    assert_eq!(answer["room_id"], room.as_str());
    assert_eq!(
        alice.expect(T::RoomKnock).body,
        json!({"room_id": room, "user_id": bob_id, "username": "bob", "text": "may I join?"})
    );
    ok(
        &mut alice,
        T::RoomInviteRequest,
        json!({"room_id": room, "user_ids": [bob_id]}),
        T::RoomInviteResponse,
    );
    bob.expect(T::RoomInvitation);
    let joined = join(&mut bob, &room);
    assert_eq!(joined["participants"].as_array().unwrap().len(), 1);
    assert_eq!(alice.expect(T::RoomPeerJoined).str("user_id"), bob_id);
    // Inside, there is nothing to knock for.
    refused(&mut bob, T::RoomKnockRequest, json!({"room_id": room}), 409);

    ok(
        &mut carol,
        T::RoomKnockRequest,
        json!({"room_id": room}),
        T::RoomKnockResponse,
    );
    assert_eq!(alice.expect(T::RoomKnock).str("user_id"), carol_id);
    // Only the owner decides.
    let message = refused(
        &mut bob,
        T::RoomKnockDeny,
        json!({"room_id": room, "user_id": carol_id}),
        403,
    );
    assert_eq!(message, "only the owner may do this");
    let denied = ok(
        &mut alice,
        T::RoomKnockDeny,
        json!({"room_id": room, "user_id": carol_id}),
        T::RoomKnockDenyResponse,
    );
    assert_eq!(
        (denied["room_id"].as_str(), denied["user_id"].as_str()),
        (Some(room.as_str()), Some(carol_id.as_str()))
    );
    let told = carol.expect(T::RoomKnockDeny).body;
    assert_eq!(told["room_id"], room.as_str(), "{told}");
    assert_eq!(told["user_id"], carol_id.as_str(), "{told}");
    assert!(told.get("inbox_id").is_none(), "delivered live: {told}");
    assert_eq!(
        refused(
            &mut alice,
            T::RoomKnockDeny,
            json!({"room_id": room, "user_id": carol_id}),
            404
        ),
        "no such knock"
    );
    join_refused(&mut carol, &room, Some("pw"), 403);
}

/// A room of two refuses the third with 409 "room full"; its owner still gets in.
#[test]
fn a_full_room_refuses_the_next_but_never_its_owner() {
    let server = TestServer::start();
    let (mut alice, alice_id, _) = server.user_v2("alice");
    let (mut bob, _, _) = server.user_v2("bob");
    let (mut carol, carol_id, _) = server.user_v2("carol");
    let (mut dave, _, _) = server.user_v2("dave");
    let room = create_room(&mut alice, json!({"name": "Pair", "max_participants": 2}));
    join(&mut bob, &room);
    join(&mut carol, &room);
    assert_eq!(bob.expect(T::RoomPeerJoined).str("user_id"), carol_id);
    assert_eq!(join_refused(&mut dave, &room, None, 409), "room full");
    let view = list_rooms(&mut dave)
        .into_iter()
        .find(|r| r["room_id"] == room.as_str())
        .expect("listed");
    assert_eq!(
        (
            view["participants"].as_u64(),
            view["max_participants"].as_u64()
        ),
        (Some(2), Some(2)),
        "{view}"
    );
    let joined = join(&mut alice, &room);
    assert_eq!(joined["participants"].as_array().unwrap().len(), 2);
    for c in [&mut bob, &mut carol] {
        assert_eq!(c.expect(T::RoomPeerJoined).str("user_id"), alice_id);
    }
    assert_eq!(join_refused(&mut dave, &room, None, 409), "room full");
}

/// A kick removes a user (who is told, as are the others) but lets it come
/// back; a ban keeps it out of joining and knocking until the owner invites it again.
#[test]
fn kicks_and_bans_remove_users_and_an_owner_invitation_lifts_a_ban() {
    let server = TestServer::start();
    let (mut alice, alice_id, _) = server.user_v2("alice");
    let (mut bob, bob_id, _) = server.user_v2("bob");
    let (mut carol, carol_id, _) = server.user_v2("carol");
    let room = create_room(&mut alice, json!({"name": "Moderated"}));
    join(&mut alice, &room);
    join(&mut bob, &room);
    join(&mut carol, &room);

    let message = refused(
        &mut bob,
        T::RoomKickRequest,
        json!({"room_id": room, "user_id": carol_id}),
        403,
    );
    assert_eq!(message, "only the owner may do this");
    refused(
        &mut alice,
        T::RoomKickRequest,
        json!({"room_id": room, "user_id": alice_id}),
        400,
    );

    let kicked = ok(
        &mut alice,
        T::RoomKickRequest,
        json!({"room_id": room, "user_id": bob_id}),
        T::RoomKickResponse,
    );
    assert_eq!(kicked["user_id"], bob_id.as_str());
    assert_eq!(kicked["banned"], false, "{kicked}");
    let left = peer_left(&room, &bob_id, "bob", "kicked");
    assert_eq!(bob.expect(T::RoomPeerLeft).body, left, "told about itself");
    assert_eq!(alice.expect(T::RoomPeerLeft).body, left);
    assert_eq!(carol.expect(T::RoomPeerLeft).body, left);
    let message = refused(
        &mut bob,
        T::SdpOffer,
        json!({"room_id": room, "to_user_id": carol_id, "sdp": "x"}),
        403,
    );
    assert_eq!(message, "you are not in this room");
    refused(
        &mut alice,
        T::RoomKickRequest,
        json!({"room_id": room, "user_id": bob_id}),
        409,
    );
    // Kicked, not banned: back in.
    join(&mut bob, &room);

    let banned = ok(
        &mut alice,
        T::RoomKickRequest,
        json!({"room_id": room, "user_id": bob_id, "ban": true}),
        T::RoomKickResponse,
    );
    assert_eq!(banned["banned"], true, "{banned}");
    let left = peer_left(&room, &bob_id, "bob", "banned");
    assert_eq!(bob.expect(T::RoomPeerLeft).body, left);
    assert_eq!(carol.expect(T::RoomPeerLeft).body, left);
    assert_eq!(
        join_refused(&mut bob, &room, None, 403),
        "you are banned from this room"
    );
    assert_eq!(
        refused(&mut bob, T::RoomKnockRequest, json!({"room_id": room}), 403),
        "you are banned from this room"
    );
    // A ban works on someone who is not inside, too.
    let (mut dave, dave_id, _) = server.user_v2("dave");
    ok(
        &mut alice,
        T::RoomKickRequest,
        json!({"room_id": room, "user_id": dave_id, "ban": true}),
        T::RoomKickResponse,
    );
    join_refused(&mut dave, &room, None, 403);

    // The owner's invitation lifts the ban.
    ok(
        &mut alice,
        T::RoomInviteRequest,
        json!({"room_id": room, "user_ids": [bob_id]}),
        T::RoomInviteResponse,
    );
    bob.expect(T::RoomInvitation);
    let joined = join(&mut bob, &room);
    assert_eq!(joined["participants"].as_array().unwrap().len(), 2);
}

/// The owner changes the settings (participants get ROOM_UPDATED; "" removes
/// the password); nobody else may.
#[test]
fn the_owner_updates_a_room_and_participants_are_told() {
    let server = TestServer::start();
    let (mut alice, alice_id, _) = server.user_v2("alice");
    let (mut bob, _, _) = server.user_v2("bob");
    let (mut carol, _, _) = server.user_v2("carol");
    let (mut dave, _, _) = server.user_v2("dave");
    let room = create_room(
        &mut alice,
        json!({"name": "Settings", "password": "pw", "max_participants": 4}),
    );
    join(&mut alice, &room);
    join_with(&mut bob, &room, "pw");
    assert_eq!(
        refused(
            &mut bob,
            T::RoomUpdateRequest,
            json!({"room_id": room, "password": ""}),
            403
        ),
        "only the owner may do this"
    );

    let updated = ok(
        &mut alice,
        T::RoomUpdateRequest,
        json!({"room_id": room, "password": "", "description": "weekly"}),
        T::RoomUpdateResponse,
    );
    let view = json!({"room_id": room, "name": "Settings", "description": "weekly", "owner_id": alice_id,
        "has_password": false, "invite_only": false, "members_can_invite": false,
        "participants": 2, "max_participants": 4});
    assert_eq!(updated["room"], view);
    assert_eq!(bob.expect(T::RoomUpdated).body, json!({"room": view}));
    got_none_of(&mut carol, &[T::RoomUpdated]);
    // No password any more.
    join(&mut carol, &room);

    ok(
        &mut alice,
        T::RoomUpdateRequest,
        json!({"room_id": room, "invite_only": true}),
        T::RoomUpdateResponse,
    );
    let pushed = bob.expect(T::RoomUpdated).body;
    assert_eq!(pushed["room"]["invite_only"], true, "{pushed}");
    assert_eq!(
        pushed["room"]["description"], "weekly",
        "absent fields stay"
    );
    assert_eq!(pushed["room"]["participants"], 3);
    join_refused(&mut dave, &room, None, 403);
    refused(
        &mut alice,
        T::RoomUpdateRequest,
        json!({"room_id": room, "max_participants": 1}),
        400,
    );
}

/// Deleting a room tells its participants, removes it from the list, and its
/// chat history leaves the disk once the background compaction has run.
#[test]
fn deleting_a_room_removes_it_and_its_history_from_disk() {
    let server = TestServer::start();
    let (mut alice, _, _) = server.user_v2("alice");
    let (mut bob, _, _) = server.user_v2("bob");
    let room = create_room(&mut alice, json!({"name": "Doomed"}));
    join(&mut alice, &room);
    join(&mut bob, &room);
    let secret = "the plan is 7f3a9c-unmistakable";
    say(&mut bob, &room, secret);
    say(&mut alice, &room, "noted");
    let journal = server.config.data_dir.join("conversations.journal");
    let on_disk = std::fs::read(&journal).expect("conversations.journal");
    assert!(
        contains(&on_disk, secret.as_bytes()),
        "the message is on disk"
    );

    assert_eq!(
        refused(
            &mut bob,
            T::RoomDeleteRequest,
            json!({"room_id": room}),
            403
        ),
        "only the owner may do this"
    );
    let deleted = ok(
        &mut alice,
        T::RoomDeleteRequest,
        json!({"room_id": room}),
        T::RoomDeleteResponse,
    );
    assert_eq!(deleted["room_id"], room.as_str());
    assert_eq!(bob.expect(T::RoomDeleted).body, json!({"room_id": room}));
    assert!(!room_ids(&mut bob).contains(&room));
    assert!(!room_ids(&mut alice).contains(&room));
    join_refused(&mut bob, &room, None, 404);
    let f = ask(&mut bob, T::RoomHistoryRequest, json!({"room_id": room}));
    assert_eq!(
        f.kind,
        T::Error.code(),
        "history is never served: {}",
        f.body
    );
    let f = ask(
        &mut bob,
        T::RoomMessageRequest,
        json!({"room_id": room, "text": "anyone?"}),
    );
    assert_eq!(f.kind, T::Error.code(), "{}", f.body);

    eventually("the deleted history left conversations.journal", || {
        let bytes = std::fs::read(&journal).unwrap_or_default();
        !contains(&bytes, secret.as_bytes())
    });
    // The name is free again, and the new room starts empty.
    let again = create_room(&mut alice, json!({"name": "Doomed"}));
    let joined = join(&mut alice, &again);
    assert_eq!(joined["last_seq"], 0, "{joined}");
    let page = history(&mut alice, &again, json!({}));
    assert_eq!(page["messages"], json!([]), "{page}");
}

/// Two participants post 50 messages each at the same time: every
/// participant sees seq 1 to 100 in order, with the same texts in the same
/// order, each sender's in the order sent; a retry with the same
/// client_msg_id gets the original seq and posts nothing.
#[test]
fn concurrent_chat_is_seen_in_one_order_by_everyone() {
    let server = TestServer::start();
    let (mut alice, _, _) = server.user_v2("alice");
    let (mut bob, bob_id, _) = server.user_v2("bob");
    let (mut carol, _, _) = server.user_v2("carol");
    let room = create_room(&mut alice, json!({"name": "Chatter"}));
    join(&mut alice, &room);
    join(&mut bob, &room);
    let joined = join(&mut carol, &room);
    assert_eq!(joined["last_seq"], 0, "{joined}");
    alice.expect(T::RoomPeerJoined);
    alice.expect(T::RoomPeerJoined);
    bob.expect(T::RoomPeerJoined);

    let start = Arc::new(Barrier::new(2));
    let senders: Vec<_> = [(alice, "a"), (bob, "b")]
        .into_iter()
        .map(|(mut c, tag)| {
            let start = Arc::clone(&start);
            let room = room.clone();
            std::thread::spawn(move || {
                start.wait();
                for i in 0..50 {
                    c.send(
                        T::RoomMessageRequest,
                        json!({"room_id": room, "text": format!("{tag}{i}"), "client_msg_id": format!("{tag}-{i}")}),
                    );
                }
                let answers: Vec<u64> = (0..50)
                    .map(|_| {
                        let f = c.expect(T::RoomMessageResponse);
                        assert_eq!(f.body["success"], true, "{}", f.body);
                        f.body["seq"].as_u64().expect("seq")
                    })
                    .collect();
                (c, answers)
            })
        })
        .collect();
    let carol_saw = room_messages(&mut carol, &room, 100);
    let mut results: Vec<(Client, Vec<u64>)> = senders
        .into_iter()
        .map(|h| h.join().expect("sender thread"))
        .collect();

    let expected_seqs: Vec<u64> = (1..=100).collect();
    assert_eq!(
        carol_saw.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        expected_seqs
    );
    for (c, _) in &mut results {
        assert_eq!(room_messages(c, &room, 100), carol_saw, "the same order");
    }
    for ((_, answers), tag) in results.iter().zip(["a", "b"]) {
        // Each sender's messages in the order sent, at the seqs it was answered.
        let mine: Vec<(u64, String)> = carol_saw
            .iter()
            .filter(|(_, text)| text.starts_with(tag))
            .cloned()
            .collect();
        let sent: Vec<(u64, String)> = answers
            .iter()
            .enumerate()
            .map(|(i, seq)| (*seq, format!("{tag}{i}")))
            .collect();
        assert_eq!(mine, sent);
    }
    let (mut alice, _) = results.remove(0);
    let (mut bob, _) = results.remove(0);

    // A retry: the original seq, nothing posted.
    let original = carol_saw.iter().find(|(_, t)| t == "a7").unwrap().0;
    let again = ok(
        &mut alice,
        T::RoomMessageRequest,
        json!({"room_id": room, "text": "a7", "client_msg_id": "a-7"}),
        T::RoomMessageResponse,
    );
    assert_eq!(again["seq"], original, "{again}");
    for c in [&mut alice, &mut bob, &mut carol] {
        got_none_of(c, &[T::RoomMessage]);
    }
    assert_eq!(say(&mut bob, &room, "next"), 101);
    let m = carol.expect(T::RoomMessage).body;
    assert_eq!(m["seq"], 101);
    assert_eq!(m["text"], "next");
    let m = alice.expect(T::RoomMessage).body;
    assert_eq!(m["seq"], 101);
    assert!(m["sent_at"].as_u64().is_some(), "{m}");
    assert_eq!(m["from_username"], "bob");
    assert_eq!(m["from_user_id"], bob_id.as_str());
}

/// History pages backwards (before_seq) and forwards (after_seq) with
/// has_more; only participants read or post.
#[test]
fn history_pages_backwards_and_forwards_for_participants_only() {
    let server = TestServer::start();
    let (mut alice, alice_id, _) = server.user_v2("alice");
    let (mut bob, bob_id, _) = server.user_v2("bob");
    let (mut eve, _, _) = server.user_v2("eve");
    let room = create_room(&mut alice, json!({"name": "Archive"}));
    join(&mut alice, &room);
    join(&mut bob, &room);
    for i in 1..=25u64 {
        let c = if i % 2 == 1 { &mut alice } else { &mut bob };
        assert_eq!(say(c, &room, &format!("m{i}")), i);
    }

    let all = history(&mut bob, &room, json!({}));
    assert_eq!(seqs(&all), (1..=25).collect::<Vec<_>>());
    assert_eq!(all["has_more"], false);
    let first = &all["messages"][0];
    assert_eq!(first["from_user_id"], alice_id.as_str(), "{first}");
    assert_eq!(first["from_username"], "alice");
    assert_eq!(first["text"], "m1");
    assert!(first["sent_at"].as_u64().is_some(), "{first}");
    assert!(first.get("room_id").is_none(), "{first}");
    assert_eq!(all["messages"][1]["from_user_id"], bob_id.as_str());

    let latest = history(&mut bob, &room, json!({"limit": 10}));
    assert_eq!(seqs(&latest), (16..=25).collect::<Vec<_>>());
    assert_eq!(latest["has_more"], true);
    let older = history(&mut bob, &room, json!({"before_seq": 16, "limit": 10}));
    assert_eq!(seqs(&older), (6..=15).collect::<Vec<_>>());
    assert_eq!(older["has_more"], true);
    let oldest = history(&mut bob, &room, json!({"before_seq": 6, "limit": 10}));
    assert_eq!(seqs(&oldest), (1..=5).collect::<Vec<_>>());
    assert_eq!(oldest["has_more"], false);

    let missed = history(&mut alice, &room, json!({"after_seq": 5, "limit": 10}));
    assert_eq!(seqs(&missed), (6..=15).collect::<Vec<_>>());
    assert_eq!(missed["has_more"], true);
    let rest = history(&mut alice, &room, json!({"after_seq": 20, "limit": 10}));
    assert_eq!(seqs(&rest), (21..=25).collect::<Vec<_>>());
    assert_eq!(rest["has_more"], false);
    let none = history(&mut alice, &room, json!({"after_seq": 25}));
    assert_eq!(none["messages"], json!([]));
    assert_eq!(none["has_more"], false);

    refused(
        &mut alice,
        T::RoomHistoryRequest,
        json!({"room_id": room, "before_seq": 10, "after_seq": 2}),
        400,
    );
    refused(
        &mut alice,
        T::RoomMessageRequest,
        json!({"room_id": room, "text": ""}),
        400,
    );
    assert_eq!(
        refused(
            &mut eve,
            T::RoomHistoryRequest,
            json!({"room_id": room}),
            403
        ),
        "you are not in this room"
    );
    assert_eq!(
        refused(
            &mut eve,
            T::RoomMessageRequest,
            json!({"room_id": room, "text": "let me in"}),
            403
        ),
        "you are not in this room"
    );
    // Having left, a former participant is an outsider too.
    ok(
        &mut bob,
        T::RoomLeaveRequest,
        json!({"room_id": room}),
        T::RoomLeaveResponse,
    );
    refused(
        &mut bob,
        T::RoomHistoryRequest,
        json!({"room_id": room}),
        403,
    );
    let page = history(&mut alice, &room, json!({"limit": 1}));
    assert_eq!(seqs(&page), vec![25], "nothing was posted by outsiders");
}

/// Rooms and their chat survive a daemon restart; the room is empty again
/// and the next message gets the next seq.
#[test]
fn rooms_and_history_survive_a_restart() {
    let server = TestServer::start();
    let (mut alice, alice_id, _) = server.user_v2("alice");
    let (mut bob, _, _) = server.user_v2("bob");
    let room = create_room(
        &mut alice,
        json!({"name": "Durable", "description": "kept", "password": "pw", "max_participants": 5}),
    );
    join(&mut alice, &room);
    join_with(&mut bob, &room, "pw");
    say(&mut alice, &room, "one");
    say(&mut bob, &room, "two");
    say(&mut alice, &room, "three");

    let server = server.restart();
    drop(alice);
    drop(bob);
    let mut alice = server.client();
    alice.login_v2("alice", "secret");
    let view = list_rooms(&mut alice)
        .into_iter()
        .find(|r| r["room_id"] == room.as_str())
        .expect("the room is still listed");
    assert_eq!(
        view,
        json!({"room_id": room, "name": "Durable", "description": "kept", "owner_id": alice_id,
            "has_password": true, "invite_only": false, "members_can_invite": false,
            "participants": 0, "max_participants": 5})
    );
    let joined = join(&mut alice, &room);
    assert_eq!(joined["participants"], json!([]), "a restart empties rooms");
    assert_eq!(joined["last_seq"], 3, "{joined}");
    let page = history(&mut alice, &room, json!({}));
    let texts: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["one", "two", "three"]);
    assert_eq!(seqs(&page), vec![1, 2, 3]);
    assert_eq!(say(&mut alice, &room, "four"), 4);

    let mut bob = server.client();
    bob.login_v2("bob", "secret");
    join_refused(&mut bob, &room, Some("wrong"), 401);
    let joined = join_with(&mut bob, &room, "pw");
    assert_eq!(joined["last_seq"], 4);
    assert_eq!(joined["participants"][0]["user_id"], alice_id.as_str());
}

/// A participant whose connection drops is held: the others get PEER_STATUS
/// "reconnecting" for the room and see no leave; what is sent to it meanwhile
/// follows its RESUME in order, the others get "reconnected", and it is
/// still in the room.
#[test]
fn a_dropped_participant_who_resumes_in_time_stays_in_the_room() {
    let server = TestServer::start();
    let (mut alice, alice_id, _) = server.user_v2("alice");
    let (mut bob, bob_id, token) = server.user_v2("bob");
    let (mut carol, _, _) = server.user_v2("carol");
    let room = create_room(&mut alice, json!({"name": "Steady"}));
    join(&mut alice, &room);
    join(&mut bob, &room);
    join(&mut carol, &room);
    alice.expect(T::RoomPeerJoined);
    alice.expect(T::RoomPeerJoined);
    bob.expect(T::RoomPeerJoined);

    bob.drop_connection();
    for c in [&mut alice, &mut carol] {
        let status = c.expect(T::PeerStatus).body;
        assert_eq!(status["room_id"], room.as_str(), "{status}");
        assert_eq!(status["peer_user_id"], bob_id.as_str(), "{status}");
        assert_eq!(status["status"], "reconnecting", "{status}");
    }
    server.wait_for_held(1);
    alice.send(
        T::SdpOffer,
        json!({"room_id": room, "to_user_id": bob_id, "sdp": "v=0 while away"}),
    );
    assert!(alice.barrier().is_empty(), "a held participant is still in");
    let seq = say(&mut carol, &room, "you missed this");

    let mut back = server.client();
    back.hello();
    let f = back.resume(&token);
    assert_eq!(f.kind, T::LoginResponse.code(), "{}", f.body);
    assert_eq!(f.body["success"], true, "{}", f.body);
    let rooms = f.body["room_ids"].as_array().expect("room_ids");
    assert!(rooms.contains(&json!(room)), "{}", f.body);
    let held = back.barrier();
    assert_eq!(
        held.iter().map(Frame::name).collect::<Vec<_>>(),
        ["SDP_OFFER", "ROOM_MESSAGE"],
        "{held:?}"
    );
    assert_eq!(held[0].str("from_user_id"), alice_id);
    assert_eq!(held[0].str("sdp"), "v=0 while away");
    assert_eq!(held[1].body["seq"], seq);
    for c in [&mut alice, &mut carol] {
        let status = c.expect(T::PeerStatus).body;
        assert_eq!(status["room_id"], room.as_str(), "{status}");
        assert_eq!(status["peer_user_id"], bob_id.as_str(), "{status}");
        assert_eq!(status["status"], "reconnected", "{status}");
    }

    alice.send(
        T::IceCandidate,
        json!({"room_id": room, "to_user_id": bob_id, "candidate": "c1", "sdp_mid": "0", "sdp_mline_index": 0}),
    );
    assert_eq!(back.expect(T::IceCandidate).str("candidate"), "c1");
    back.send(
        T::SdpAnswer,
        json!({"room_id": room, "to_user_id": alice_id, "sdp": "v=0 back"}),
    );
    assert_eq!(alice.expect(T::SdpAnswer).str("from_user_id"), bob_id);
    say(&mut back, &room, "back");
    for c in [&mut alice, &mut carol] {
        got_none_of(c, &[T::RoomPeerLeft, T::RoomPeerJoined]);
    }
    assert_eq!(server.stats().sessions_held, 0);
}

/// Not back within the grace period: the others get PEER_STATUS
/// "reconnecting", then ROOM_PEER_LEFT "disconnected"; a later RESUME is a
/// login outside the room.
#[test]
fn a_dropped_participant_who_does_not_resume_leaves_as_disconnected() {
    let server = TestServer::start_with(|c| c.sessions.resume_grace = Duration::from_millis(300));
    let (mut alice, _, _) = server.user_v2("alice");
    let (mut bob, bob_id, token) = server.user_v2("bob");
    let room = create_room(&mut alice, json!({"name": "Leaky"}));
    join(&mut alice, &room);
    join(&mut bob, &room);
    alice.expect(T::RoomPeerJoined);

    bob.drop_connection();
    let status = alice.expect(T::PeerStatus).body;
    assert_eq!(status["status"], "reconnecting", "{status}");
    assert_eq!(status["room_id"], room.as_str(), "{status}");
    assert_eq!(
        alice.expect(T::RoomPeerLeft).body,
        peer_left(&room, &bob_id, "bob", "disconnected")
    );
    server.wait_for_held(0);

    let mut back = server.client();
    back.hello();
    let f = back.resume(&token);
    assert_eq!(f.body["success"], true, "{}", f.body);
    let rooms = f.body.get("room_ids").cloned().unwrap_or(json!([]));
    assert_eq!(rooms, json!([]), "{}", f.body);
    let message = refused(
        &mut alice,
        T::SdpOffer,
        json!({"room_id": room, "to_user_id": bob_id, "sdp": "x"}),
        403,
    );
    assert_eq!(message, "to_user_id is not in this room");
    got_none_of(&mut alice, &[T::PeerStatus]);
}

/// Guests join rooms (they cannot create them); a guest has no token, so when
/// its connection drops it leaves at once as "disconnected", with no hold.
#[test]
fn a_guest_joins_rooms_and_leaves_at_once_when_it_drops() {
    let server = TestServer::start();
    let (mut alice, alice_id, _) = server.user_v2("alice");
    let room = create_room(&mut alice, json!({"name": "Open house"}));
    join(&mut alice, &room);
    let (mut visitor, guest_id) = guest(&server, "visitor");
    assert_eq!(
        refused(
            &mut visitor,
            T::RoomCreateRequest,
            json!({"name": "Mine"}),
            403
        ),
        "guests cannot create rooms"
    );
    assert!(room_ids(&mut visitor).contains(&room));
    let joined = join(&mut visitor, &room);
    assert_eq!(joined["participants"][0]["user_id"], alice_id.as_str());
    let pushed = alice.expect(T::RoomPeerJoined).body;
    assert_eq!(
        pushed,
        json!({"room_id": room, "user_id": guest_id, "username": "visitor (guest)", "create_offer": false})
    );
    visitor.send(
        T::SdpOffer,
        json!({"room_id": room, "to_user_id": alice_id, "sdp": "v=0 guest"}),
    );
    assert_eq!(alice.expect(T::SdpOffer).str("from_user_id"), guest_id);
    say(&mut visitor, &room, "hello from a guest");
    assert_eq!(
        alice.expect(T::RoomMessage).str("from_username"),
        "visitor (guest)"
    );

    visitor.drop_connection();
    assert_eq!(
        alice.expect(T::RoomPeerLeft).body,
        peer_left(&room, &guest_id, "visitor (guest)", "disconnected")
    );
    got_none_of(&mut alice, &[T::PeerStatus]);
    assert_eq!(server.stats().sessions_held, 0);
}

/// When a guest's time is up it leaves its rooms: the others get
/// ROOM_PEER_LEFT "expired".
#[test]
fn an_expired_guest_leaves_its_rooms() {
    let server = TestServer::start_with(|c| c.sessions.guest_ttl = Duration::from_secs(2));
    let (mut alice, _, _) = server.user_v2("alice");
    let room = create_room(&mut alice, json!({"name": "Timed"}));
    join(&mut alice, &room);
    let (mut visitor, guest_id) = guest(&server, "visitor");
    join(&mut visitor, &room);
    alice.expect(T::RoomPeerJoined);
    assert_eq!(
        visitor.expect_error(401).str("message"),
        "guest session expired"
    );
    assert_eq!(
        alice.expect(T::RoomPeerLeft).body,
        peer_left(&room, &guest_id, "visitor (guest)", "expired")
    );
    let view = list_rooms(&mut alice)
        .into_iter()
        .find(|r| r["room_id"] == room.as_str())
        .unwrap();
    assert_eq!(view["participants"], 1, "{view}");
}

/// A v1 client gets ERROR 400 for every room request and sees no room
/// traffic (no room pushes, no PEER_STATUS) while others use rooms; room
/// participants look Available to it, and its calls work as before.
#[test]
fn a_v1_client_is_refused_rooms_and_sees_none_of_them() {
    let server = TestServer::start();
    let (mut vic, vic_id) = server.user("vic");
    for (kind, body) in [
        (T::RoomCreateRequest, json!({"name": "Old"})),
        (T::RoomListRequest, json!({})),
        (T::RoomJoinRequest, json!({"room_id": "1"})),
        (T::RoomMessageRequest, json!({"room_id": "1", "text": "hi"})),
        (T::RoomHistoryRequest, json!({"room_id": "1"})),
    ] {
        let message = refused(&mut vic, kind, body, 400);
        assert!(message.contains("HELLO"), "{message}");
    }

    let (mut alice, alice_id, _) = server.user_v2("alice");
    let (mut bob, bob_id, _) = server.user_v2("bob");
    let room = create_room(&mut alice, json!({"name": "Modern"}));
    join(&mut alice, &room);
    join(&mut bob, &room);
    alice.expect(T::RoomPeerJoined);
    bob.send(
        T::SdpOffer,
        json!({"room_id": room, "to_user_id": alice_id, "sdp": "v=0 room"}),
    );
    alice.expect(T::SdpOffer);
    say(&mut alice, &room, "hello room");
    bob.expect(T::RoomMessage);

    let list = ask(&mut vic, T::UserListRequest, json!({}));
    for id in [&alice_id, &bob_id] {
        let state = list.body["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["user_id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} listed: {}", list.body))["state"]
            .clone();
        assert_eq!(state, "Available", "{}", list.body);
    }

    // A call with a room participant, as in v1.
    let call_id = connect_call(&mut vic, &mut alice, &alice_id);
    alice.send(T::SdpOffer, json!({"call_id": call_id, "sdp": "v=0 call"}));
    let offer = vic.expect(T::SdpOffer);
    assert_eq!(offer.str("call_id"), call_id);
    assert_eq!(offer.str("from_user_id"), alice_id);
    assert_eq!(offer.str("sdp"), "v=0 call");
    assert!(offer.body.get("room_id").is_none(), "{}", offer.body);
    vic.send(
        T::SdpAnswer,
        json!({"call_id": call_id, "to_user_id": alice_id, "sdp": "v=0 call answer"}),
    );
    assert_eq!(alice.expect(T::SdpAnswer).str("from_user_id"), vic_id);
    // The room goes on meanwhile, and a participant drops and is held.
    say(&mut bob, &room, "still here");
    bob.drop_connection();
    alice.expect(T::PeerStatus);
    vic.send(T::Hangup, json!({"call_id": call_id}));
    assert_eq!(alice.expect(T::Hangup).body, json!({"call_id": call_id}));

    let seen = vic.barrier_all();
    let room_traffic: Vec<&Frame> = seen
        .iter()
        .chain(vic.skipped.iter())
        .filter(|f| {
            (T::RoomCreateRequest.code()..=T::RoomEventsResponse.code()).contains(&f.kind)
                || f.kind == T::PeerStatus.code()
                || f.kind == T::InboxAckResponse.code()
                || f.body.get("room_id").is_some()
        })
        .collect();
    assert!(room_traffic.is_empty(), "{room_traffic:?}");
}

/// The owner reads the room's events (joined, left, kicked, with who did
/// it), written in the background; nobody else may.
#[test]
fn the_owner_reads_room_events_and_others_may_not() {
    let server = TestServer::start();
    let (mut alice, alice_id, _) = server.user_v2("alice");
    let (mut bob, bob_id, _) = server.user_v2("bob");
    let (mut carol, carol_id, _) = server.user_v2("carol");
    let room = create_room(&mut alice, json!({"name": "Logged"}));
    join(&mut alice, &room);
    join(&mut bob, &room);
    ok(
        &mut bob,
        T::RoomLeaveRequest,
        json!({"room_id": room}),
        T::RoomLeaveResponse,
    );
    join(&mut carol, &room);
    ok(
        &mut alice,
        T::RoomKickRequest,
        json!({"room_id": room, "user_id": carol_id}),
        T::RoomKickResponse,
    );

    let expected = [
        ("joined", &alice_id),
        ("joined", &bob_id),
        ("left", &bob_id),
        ("joined", &carol_id),
        ("kicked", &carol_id),
    ];
    let mut events = Vec::new();
    eventually("the events are written", || {
        let f = ask(&mut alice, T::RoomEventsRequest, json!({"room_id": room}));
        assert_eq!(f.kind, T::RoomEventsResponse.code(), "{}", f.body);
        events = f.body["events"].as_array().expect("events").clone();
        let mut wanted = expected.iter().peekable();
        for e in &events {
            if let Some((event, user)) = wanted.peek()
                && e["event"] == *event
                && e["user_id"] == user.as_str()
            {
                wanted.next();
            }
        }
        wanted.peek().is_none()
    });
    let mut last = 0;
    for e in &events {
        let seq = e["seq"].as_u64().expect("seq");
        assert!(seq > last, "oldest first: {events:?}");
        last = seq;
        assert!(e["at"].as_u64().is_some(), "{e}");
        assert!(e["username"].as_str().is_some(), "{e}");
    }
    let kick = events.iter().rfind(|e| e["event"] == "kicked").unwrap();
    assert_eq!(kick["by_user_id"], alice_id.as_str(), "{kick}");
    assert_eq!(kick["username"], "carol");

    let page = ok_events(&mut alice, json!({"room_id": room, "limit": 1}));
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["has_more"], true);
    assert_eq!(page["events"][0]["seq"], last, "the latest");

    join(&mut bob, &room);
    refused(
        &mut bob,
        T::RoomEventsRequest,
        json!({"room_id": room}),
        403,
    );
    refused(
        &mut carol,
        T::RoomEventsRequest,
        json!({"room_id": room}),
        403,
    );
}

/// ROOM_EVENTS_REQUEST that must succeed; returns the response.
fn ok_events(c: &mut Client, body: Value) -> Value {
    let f = ask(c, T::RoomEventsRequest, body);
    assert_eq!(f.kind, T::RoomEventsResponse.code(), "{}", f.body);
    f.body
}

/// Bad names, descriptions, sizes and passwords get 400; a name taken in any
/// case 409; an unknown room 404; room requests before login 401 (as every
/// request but the login ones); a relay
/// naming both or neither of call and room, or no to_user_id, 400.
#[test]
fn bad_room_requests_get_the_right_errors() {
    let server = TestServer::start();
    let mut anonymous = server.client();
    refused(
        &mut anonymous,
        T::RoomCreateRequest,
        json!({"name": "Early"}),
        401,
    );
    refused(&mut anonymous, T::RoomListRequest, json!({}), 401);

    let (mut alice, _, _) = server.user_v2("alice");
    let (_bob, bob_id, _) = server.user_v2("bob");
    for name in [
        json!(""),
        json!(" leading"),
        json!("trailing "),
        json!("two  spaces"),
        json!("a".repeat(65)),
        json!("slash/no"),
        json!("party 🎉"),
        json!("tab\there"),
        json!(42),
    ] {
        refused(&mut alice, T::RoomCreateRequest, json!({"name": name}), 400);
    }
    refused(&mut alice, T::RoomCreateRequest, json!({}), 400);
    for bad in [
        json!({"name": "Desc", "description": "d".repeat(501)}),
        json!({"name": "Size", "max_participants": 1}),
        json!({"name": "Size", "max_participants": 17}),
        json!({"name": "Pass", "password": "p".repeat(1025)}),
    ] {
        refused(&mut alice, T::RoomCreateRequest, bad, 400);
    }
    let name = "Café crème's (R&D) - 2.0_x";
    let room = create_room(&mut alice, json!({"name": name}));
    assert_eq!(
        refused(
            &mut alice,
            T::RoomCreateRequest,
            json!({"name": name.to_uppercase()}),
            409
        ),
        "a room with that name exists"
    );
    create_room(&mut alice, json!({"name": "a".repeat(64)}));

    let unknown = "987654321";
    assert_eq!(join_refused(&mut alice, unknown, None, 404), "no such room");
    for (kind, body) in [
        (T::RoomLeaveRequest, json!({"room_id": unknown})),
        (T::RoomKnockRequest, json!({"room_id": unknown})),
        (
            T::SdpOffer,
            json!({"room_id": unknown, "to_user_id": bob_id, "sdp": "x"}),
        ),
    ] {
        assert_eq!(refused(&mut alice, kind, body, 404), "no such room");
    }
    assert_eq!(
        refused(
            &mut alice,
            T::RoomLeaveRequest,
            json!({"room_id": room}),
            409
        ),
        "you are not in this room"
    );
    join(&mut alice, &room);
    assert_eq!(
        refused(
            &mut alice,
            T::SdpOffer,
            json!({"room_id": room, "sdp": "x"}),
            400
        ),
        "to_user_id is required in a room"
    );
    assert_eq!(
        refused(
            &mut alice,
            T::SdpOffer,
            json!({"room_id": room, "call_id": "1", "to_user_id": bob_id, "sdp": "x"}),
            400
        ),
        "send call_id or room_id, not both"
    );
    assert_eq!(
        refused(
            &mut alice,
            T::IceCandidate,
            json!({"to_user_id": bob_id, "candidate": "c", "sdp_mid": "0", "sdp_mline_index": 0}),
            400
        ),
        "call_id or room_id is required"
    );
    refused(
        &mut alice,
        T::RoomMessageRequest,
        json!({"room_id": room, "text": "x".repeat(4001)}),
        400,
    );
    say(&mut alice, &room, &"é".repeat(2000));
}

/// The `rooms.*` limits of the configuration apply: the default and largest
/// size, rooms per owner, the text limit and knocks per minute.
#[test]
fn room_limits_come_from_the_configuration() {
    let server = TestServer::start_with(|c| {
        c.rooms.default_participants = 3;
        c.rooms.max_participants = 4;
        c.rooms.max_rooms_per_owner = 3;
        c.rooms.max_text_bytes = 16;
        c.rooms.knocks_per_minute = 2;
    });
    let (mut alice, _, _) = server.user_v2("alice");
    let (mut bob, _, _) = server.user_v2("bob");
    let first = ok(
        &mut alice,
        T::RoomCreateRequest,
        json!({"name": "R1", "invite_only": true}),
        T::RoomCreateResponse,
    );
    assert_eq!(first["room"]["max_participants"], 3, "{first}");
    let r1 = first["room_id"].as_str().unwrap().to_string();
    refused(
        &mut alice,
        T::RoomCreateRequest,
        json!({"name": "Big", "max_participants": 5}),
        400,
    );
    let r2 = create_room(
        &mut alice,
        json!({"name": "R2", "invite_only": true, "max_participants": 4}),
    );
    let r3 = create_room(&mut alice, json!({"name": "R3", "invite_only": true}));
    let message = refused(&mut alice, T::RoomCreateRequest, json!({"name": "R4"}), 403);
    assert!(message.contains('3'), "{message}");

    join(&mut alice, &r1);
    say(&mut alice, &r1, &"x".repeat(16));
    refused(
        &mut alice,
        T::RoomMessageRequest,
        json!({"room_id": r1, "text": "x".repeat(17)}),
        400,
    );

    for room in [&r1, &r2] {
        ok(
            &mut bob,
            T::RoomKnockRequest,
            json!({"room_id": room}),
            T::RoomKnockResponse,
        );
    }
    let f = ask(&mut bob, T::RoomKnockRequest, json!({"room_id": r3}));
    assert_eq!(f.kind, T::Error.code(), "{}", f.body);
    assert_eq!(f.body["code"], 429, "{}", f.body);
}
