//! ICE servers: STUN/TURN lists with TURN REST credentials that a real coturn accepts.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use switchboard::tcp::MessageType as T;

use crate::support::TestServer;
use crate::support::coturn::Coturn;

const SECRET: &str = "shared-with-coturn";

/// The credentials the daemon hands out are accepted by coturn (started with
/// use-auth-secret and the same secret) until they expire; altered ones and
/// expired ones are refused.
#[test]
fn coturn_accepts_the_credentials_until_they_expire() {
    let coturn = Coturn::start(SECRET).unwrap_or_else(|e| panic!("{e}"));
    let turn_url = format!("turn:{}?transport=udp", coturn.addr);
    let ttl = 4;
    let server = TestServer::start_with(|c| {
        c.webrtc.stun_servers = vec![format!("stun:{}", coturn.addr)];
        c.webrtc.turn_servers = vec![turn_url.clone()];
        c.webrtc.turn_secret = Some(SECRET.into());
        c.webrtc.turn_credential_ttl = Duration::from_secs(ttl);
    });
    let mut alice = server.client();
    let alice_id = alice.register("alice", "secret");
    alice.hello();
    let login = alice.login("alice", "secret").body;
    assert_eq!(login["ice_ttl_secs"], ttl);
    assert_eq!(
        login["ice_servers"][0],
        json!({"urls": [format!("stun:{}", coturn.addr)]})
    );

    let asked = Instant::now();
    alice.send(T::IceServersRequest, json!({"req_id": 3}));
    let list = alice.expect(T::IceServersResponse).body;
    assert_eq!(
        (list["ttl_secs"].clone(), list["req_id"].clone()),
        (json!(ttl), json!(3))
    );
    let turn = &list["ice_servers"][1];
    assert_eq!(turn["urls"], json!([turn_url]));
    let username = turn["username"].as_str().unwrap();
    let password = turn["credential"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, alice_id);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        expiry.parse::<u64>().unwrap().abs_diff(now + ttl) <= 1,
        "{username}"
    );
    assert_eq!(list["expires_at"].to_string(), expiry);

    assert!(coturn.accepts(username, password), "{}", coturn.log());
    let mut altered = password.to_string().into_bytes();
    altered[0] = if altered[0] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    assert!(!coturn.accepts(username, &altered));
    assert!(
        !coturn.accepts(&format!("{expiry}:999"), password),
        "bound to the user"
    );

    // Expired: wait past the expiry the daemon wrote, then try again.
    let until = asked + Duration::from_secs(ttl + 2);
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    assert!(
        !coturn.accepts(username, password),
        "expired credentials accepted"
    );
}

/// Without HELLO nothing changes; ICE_SERVERS_REQUEST needs a login; with no
/// servers configured the list is empty.
#[test]
fn ice_servers_need_a_login_and_may_be_empty() {
    let server = TestServer::start();
    let mut c = server.client();
    c.send(T::IceServersRequest, json!({}));
    c.expect_error(401);
    c.register("alice", "secret");
    c.login_ok("alice", "secret");
    c.send(T::IceServersRequest, json!({}));
    assert_eq!(
        c.expect(T::IceServersResponse).body,
        json!({"ice_servers": [], "ttl_secs": 0, "expires_at": 0})
    );
}
