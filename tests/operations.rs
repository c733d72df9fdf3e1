//! Operations: graceful shutdown, certificate rotation, health and metrics,
//! readiness notification, and the operator subcommands.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use serde_json::json;
use switchboard::application::UserStore;
use switchboard::infrastructure::UsersFile;
use switchboard::tcp::MessageType as T;

use crate::support::daemon::{Daemon, configured, run_with_env};
use crate::support::{Client, TestServer, certs, connect_call};

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("admin connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("admin response");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(line_start)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no metric {line_start:?} in:\n{text}"))
}

fn fast() -> serde_json::Value {
    json!({"auth": {"bcrypt_cost": 4}, "server": {"drain_timeout_secs": 5}})
}

/// SIGTERM with clients connected and in a call: the call ends (HANGUP),
/// every client is told ERROR 503 and closed, the daemon exits 0 within the
/// drain deadline, and users.txt is intact.
#[test]
fn sigterm_drains_clients_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = configured(dir.path(), &fast(), &[]);
    let mut daemon = Daemon::start(&args, &[], dir.path());
    let mut alice = Client::connect(daemon.addr);
    alice.register("alice", "pw");
    alice.login_ok("alice", "pw");
    let mut bob = Client::connect(daemon.addr);
    let bob_id = bob.register("bob", "pw");
    bob.login_ok("bob", "pw");
    connect_call(&mut alice, &mut bob, &bob_id);
    let mut anonymous = Client::connect(daemon.addr);
    anonymous.barrier();

    let started = Instant::now();
    daemon.signal(Signal::TERM);
    for c in [&mut alice, &mut bob, &mut anonymous] {
        let e = c.expect_error(503);
        assert_eq!(e.str("message"), "server shutting down");
        assert!(c.is_closed_by_server());
    }
    // Both parties were told the call ended, before being told of the shutdown.
    for (name, c) in [("alice", &alice), ("bob", &bob)] {
        assert!(
            c.skipped.iter().any(|f| f.kind == T::Hangup.code()),
            "{name} got no HANGUP: {:?}",
            c.skipped
        );
    }
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(10)),
        Some(0),
        "stderr:\n{}",
        daemon.stderr()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let users = UsersFile::open(&data.join("users.txt")).expect("users.txt loads");
    assert_eq!(users.list().len(), 2);
    assert!(daemon.stderr().contains("received SIGTERM"));
}

/// SIGHUP reloads the certificate: new handshakes use the new one, and a
/// connection made before the rotation keeps working.
#[test]
fn sighup_rotates_the_tls_certificate_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let old = certs::make(dir.path());
    let newer_dir = dir.path().join("new");
    std::fs::create_dir_all(&newer_dir).unwrap();
    let newer = certs::make(&newer_dir);
    let args = configured(
        dir.path(),
        &fast(),
        &[
            "--cert",
            old.cert_pem.to_str().unwrap(),
            "--key",
            old.key_pem.to_str().unwrap(),
        ],
    );
    let daemon = Daemon::start(&args, &[], dir.path());
    let mut before = Client::tls(daemon.addr, &old.ca_pem);
    before.register("alice", "pw");
    before.login_ok("alice", "pw");
    assert!(
        Client::try_tls(daemon.addr, &newer.ca_pem).is_err(),
        "the new CA is not trusted yet"
    );

    std::fs::copy(&newer.cert_pem, &old.cert_pem).unwrap();
    std::fs::copy(&newer.key_pem, &old.key_pem).unwrap();
    daemon.signal(Signal::HUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = loop {
        match Client::try_tls(daemon.addr, &newer.ca_pem) {
            Ok(client) => break client,
            Err(e) => assert!(
                Instant::now() < deadline,
                "new certificate never served: {e}\n{}",
                daemon.stderr()
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let bob_id = after.register("bob", "pw");
    after.login_ok("bob", "pw");
    assert!(
        Client::try_tls(daemon.addr, &old.ca_pem).is_err(),
        "the old certificate is retired"
    );
    // The connection from before the rotation still works and sees bob arrive.
    before.expect_state(&bob_id, "Available");
    before.send(T::UserListRequest, json!({}));
    assert_eq!(
        before.expect(T::UserListResponse).body["users"][1]["state"],
        "Available"
    );
    assert!(daemon.stderr().contains("TLS identity reloaded"));
}

/// /metrics after a scripted call reports what happened; /healthz is 200
/// while serving and 503 once draining. A presence broadcast is encoded once.
#[test]
fn metrics_and_health_report_a_scripted_call() {
    let mut server =
        TestServer::start_with(|c| c.admin_bind = Some("127.0.0.1:0".parse().unwrap()));
    let admin = server
        .running
        .as_ref()
        .and_then(|r| r.admin.as_ref())
        .expect("admin")
        .local_addr();
    assert_eq!(http_get(admin, "/healthz"), (200, "ok\n".into()));
    // Probes that add a query string get the same answer.
    assert_eq!(http_get(admin, "/healthz?probe=1"), (200, "ok\n".into()));
    let (mut alice, _) = server.user("alice");
    let (mut bob, bob_id) = server.user("bob");
    let (_carol, carol_id) = server.user("carol");
    // Presence goes out in batches: wait until carol's has gone out.
    alice.expect_state(&carol_id, "Available");
    let encoded_before = server.stats().frames_encoded;
    let (_dave, dave_id) = server.user("dave");
    alice.expect_state(&dave_id, "Available");
    bob.expect_state(&dave_id, "Available");
    assert_eq!(
        server.stats().frames_encoded - encoded_before,
        1,
        "dave's Available went to three clients, encoded once"
    );
    let mut stranger = server.client();
    assert_eq!(stranger.login("nobody", "x").body["code"], 401);
    let call_id = connect_call(&mut alice, &mut bob, &bob_id);
    alice.send(T::SdpOffer, json!({"call_id": call_id, "sdp": "o"}));
    bob.expect(T::SdpOffer);
    bob.send(T::SdpAnswer, json!({"call_id": call_id, "sdp": "a"}));
    alice.expect(T::SdpAnswer);
    for _ in 0..2 {
        alice.send(
            T::IceCandidate,
            json!({"call_id": call_id, "candidate": "c", "sdp_mid": "0", "sdp_mline_index": 0}),
        );
        bob.expect(T::IceCandidate);
    }
    alice.send(T::CallRequest, json!({"to_user_id": bob_id}));
    alice.expect_error(409);
    let (status, text) = http_get(admin, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "switchboard_connections_open "), 5.0);
    assert_eq!(metric(&text, "switchboard_connections_total "), 5.0);
    assert_eq!(metric(&text, "switchboard_users_logged_in "), 4.0);
    assert_eq!(metric(&text, "switchboard_calls_active "), 1.0);
    assert_eq!(metric(&text, "switchboard_calls_ringing "), 0.0);
    assert_eq!(metric(&text, "switchboard_calls_total "), 1.0);
    assert_eq!(
        metric(&text, "switchboard_frames_in_total{type=\"SDP_OFFER\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "switchboard_frames_in_total{type=\"ICE_CANDIDATE\"}"),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "switchboard_frames_out_total{type=\"ICE_CANDIDATE\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "switchboard_frames_out_total{type=\"CALL_ACCEPTED\"}"
        ),
        1.0
    );
    assert_eq!(metric(&text, "switchboard_errors_total{code=\"409\"}"), 1.0);
    assert_eq!(metric(&text, "switchboard_errors_total{code=\"401\"}"), 1.0);
    assert_eq!(metric(&text, "switchboard_failed_logins_total "), 1.0);
    assert_eq!(metric(&text, "switchboard_relay_seconds_count "), 4.0);
    assert!(
        metric(&text, "switchboard_password_hash_wait_seconds_count ") >= 9.0,
        "4 registrations, 5 logins"
    );
    assert!(metric(&text, "switchboard_bytes_in_total ") > 0.0);
    assert_eq!(
        metric(&text, "switchboard_slow_consumer_disconnects_total "),
        0.0
    );
    // Carol's Available and dave's went out in two batches at least (alice
    // had carol's before dave logged in); dave's alone woke three threads.
    assert!(metric(&text, "switchboard_presence_batches_total ") >= 2.0);
    assert!(metric(&text, "switchboard_outbox_drains_total ") >= 3.0);
    assert_eq!(http_get(admin, "/nope").0, 404);

    let running = server.running.as_mut().expect("running");
    running.server.begin_shutdown();
    assert_eq!(http_get(admin, "/healthz"), (503, "draining\n".into()));
    assert!(
        running
            .server
            .finish_shutdown(Instant::now() + Duration::from_secs(5))
    );
}

/// With NOTIFY_SOCKET set, the daemon sends READY=1 once it is listening.
#[test]
fn the_daemon_notifies_systemd_when_ready() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let args = configured(dir.path(), &fast(), &[]);
    let mut daemon = Daemon::start(
        &args,
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
        dir.path(),
    );
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf).expect("a notification");
    assert_eq!(&buf[..n], b"READY=1");
    Client::connect(daemon.addr).barrier();
    daemon.signal(Signal::TERM);
    let n = socket.recv(&mut buf).expect("a second notification");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)), Some(0));
}

/// user add, list, passwd and del work on users.txt while no daemon runs; a
/// daemon started after sees the result; bad input gets the documented exit
/// codes; while it runs, the commands go through it.
#[test]
fn user_subcommands_manage_users_txt() {
    let dir = tempfile::tempdir().unwrap();
    let pwfile = dir.path().join("pw");
    std::fs::write(&pwfile, "from-file\n").unwrap();
    // The daemon's arguments; the operator subcommands take the same ones.
    let base = configured(dir.path(), &fast(), &[]);
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let args: Vec<&str> = base
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
            .collect();
        run_with_env(&args, env)
    };
    let (code, out, err) = run(
        &[
            "user",
            "add",
            "alice",
            "--password-file",
            pwfile.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "added user_id=1 username=alice\n"),
        "{err}"
    );
    let (code, out, _) = run(
        &["user", "add", "bob"],
        &[("SWITCHBOARD_PASSWORD", "from-env")],
    );
    assert_eq!((code, out.as_str()), (0, "added user_id=2 username=bob\n"));
    assert_eq!(
        run(&["user", "add", "ALICE", "--password", "x"], &[]).0,
        1,
        "taken"
    );
    assert_eq!(
        run(&["user", "add", "a|b", "--password", "x"], &[]).0,
        2,
        "invalid name"
    );
    let (code, _, err) = run(&["user", "add", "carol"], &[]);
    assert_eq!(code, 2, "no password and no terminal");
    assert!(err.contains("no password given"), "{err}");
    let (code, out, _) = run(&["user", "list"], &[]);
    assert_eq!(code, 0);
    let names: Vec<&str> = out
        .lines()
        .map(|l| l.split('\t').nth(1).unwrap_or_default())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(
        run(&["user", "passwd", "alice", "--password", "changed"], &[]).0,
        0
    );
    assert_eq!(run(&["user", "del", "bob"], &[]).0, 0);
    assert_eq!(run(&["user", "del", "bob"], &[]).0, 1, "no such user");
    assert_eq!(
        run(&["user", "passwd", "nobody", "--password", "x"], &[]).0,
        1
    );

    let daemon = Daemon::start(&base, &[], dir.path());
    let mut c = Client::connect(daemon.addr);
    assert_eq!(c.login("alice", "from-file").body["success"], false);
    c.login_ok("alice", "changed");
    assert_eq!(
        Client::connect(daemon.addr).login("bob", "from-env").body["success"],
        false
    );

    // While the daemon holds the data directory, the commands go through it
    // (tests/admin_channel.rs has the details).
    let (code, out, err) = run(&["user", "add", "dave", "--password", "x"], &[]);
    assert_eq!(
        (code, out.as_str()),
        (0, "added user_id=3 username=dave\n"),
        "{err}"
    );
    let (code, out, _) = run(&["user", "list"], &[]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2, "{out}");
    drop(daemon);
}

/// check-config prints the effective configuration with secrets masked, and
/// exits 2 for a TLS identity that does not load.
#[test]
fn check_config_prints_the_configuration_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs::make(dir.path());
    let config = dir.path().join("tls.json");
    let json = json!({"server": {"enable_tls": true, "pkcs12_path": certs.pkcs12, "pkcs12_password": certs.pkcs12_password, "port": 9443}});
    std::fs::write(&config, json.to_string()).unwrap();
    let (code, out, err) =
        run_with_env(&["--config", config.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("server.port = 9443\n"), "{out}");
    assert!(out.contains("server.enable_tls = true\n"), "{out}");
    assert!(out.contains("server.pkcs12_password = ***\n"), "{out}");
    assert!(!out.contains(&certs.pkcs12_password), "{out}");
    let (code, _, err) = run_with_env(
        &["--config", config.to_str().unwrap(), "check-config"],
        &[("SWITCHBOARD_PKCS12_PASSWORD", "wrong")],
    );
    assert_eq!(code, 2);
    assert!(err.contains("server.pkcs12_path"), "{err}");
}
