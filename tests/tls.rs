//! TLS for real: certificates made at test time, PKCS#12 and PEM identities.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use rustix::process::Signal;

use serde_json::json;
use switchboard::tcp::{MessageType as T, TlsIdentity};

use crate::support::certs;
use crate::support::daemon::{Daemon, configured, run_to_exit, run_with_env};
use crate::support::{Client, TestServer, connect_call, relay_load, tls_small_receive_buffer};

/// A server on a PKCS#12 identity made for this test, and its certificates.
fn pkcs12_server(
    tweak: impl FnOnce(&mut switchboard::config::Config),
) -> (TestServer, certs::Certs) {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs::make(dir.path());
    let identity = TlsIdentity::Pkcs12 {
        path: certs.pkcs12.clone(),
        password: certs.pkcs12_password.clone(),
    };
    let server = TestServer::start_with(|c| {
        c.tls = Some(identity);
        tweak(c);
    });
    (server, certs)
}

/// A whole v1 session over TLS with the reference's PKCS#12 identity:
/// register, login, list, call, SDP and ICE relay, hangup.
#[test]
fn a_whole_call_over_tls_with_a_pkcs12_identity() {
    let (server, certs) = pkcs12_server(|_| {});
    let mut alice = Client::tls(server.addr, &certs.ca_pem);
    alice.register("alice", "pw");
    alice.login_ok("alice", "pw");
    let mut bob = Client::tls(server.addr, &certs.ca_pem);
    let bob_id = bob.register("bob", "pw");
    bob.login_ok("bob", "pw");
    bob.send(T::UserListRequest, json!({}));
    assert_eq!(
        bob.expect(T::UserListResponse).body["users"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let call_id = connect_call(&mut alice, &mut bob, &bob_id);
    let sdp = "v=0\r\n".repeat(10_000);
    alice.send(T::SdpOffer, json!({"call_id": call_id, "sdp": sdp}));
    assert_eq!(bob.expect(T::SdpOffer).str("sdp"), sdp);
    bob.send(
        T::IceCandidate,
        json!({"call_id": call_id, "candidate": "c", "sdp_mid": "0", "sdp_mline_index": 0}),
    );
    alice.expect(T::IceCandidate);
    alice.send(T::Hangup, json!({"call_id": call_id}));
    bob.expect(T::Hangup);
}

/// A PEM certificate with a PKCS#8 key works as well.
#[test]
fn a_pem_identity_serves_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs::make(dir.path());
    let identity = TlsIdentity::Pem {
        cert: certs.cert_pem.clone(),
        key: certs.key_pem.clone(),
    };
    let server = TestServer::start_with(|c| c.tls = Some(identity));
    let mut c = Client::tls(server.addr, &certs.ca_pem);
    c.register("alice", "pw");
    c.login_ok("alice", "pw");
}

/// A plain-TCP client on the TLS port is closed, never answered in the clear.
#[test]
fn a_plain_client_on_the_tls_port_is_closed() {
    let (server, _certs) = pkcs12_server(|_| {});
    let mut plain = TcpStream::connect(server.addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(&crate::support::encode(
            T::Heartbeat,
            &json!({"timestamp": 1}),
        ))
        .unwrap();
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf);
    // Whatever came back (a TLS alert at most) is not a v1 frame.
    assert!(buf.len() < 5 || buf[4] != T::Heartbeat.code(), "{buf:02x?}");
    server.wait_until_clean(0);
}

/// A client that never finishes the handshake is closed at the handshake timeout.
#[test]
fn a_stalled_handshake_times_out() {
    let (server, certs) = pkcs12_server(|c| c.tls_handshake_timeout = Duration::from_millis(300));
    let mut stalled = TcpStream::connect(server.addr).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        stalled.read(&mut buf).unwrap_or(0),
        0,
        "closed without a byte"
    );
    server.wait_until_clean(0);
    // Meanwhile, and after, TLS clients are served.
    Client::tls(server.addr, &certs.ca_pem).barrier();
}

/// The daemon binary serves TLS from --pkcs12 with the password from the environment.
#[test]
fn the_daemon_serves_tls_from_flags_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs::make(dir.path());
    let data = dir.path().join("data");
    let args = [
        "--port",
        "0",
        "--data-dir",
        data.to_str().unwrap(),
        "--pkcs12",
        certs.pkcs12.to_str().unwrap(),
    ];
    let daemon = Daemon::start(
        &args,
        &[("SWITCHBOARD_PKCS12_PASSWORD", &certs.pkcs12_password)],
        dir.path(),
    );
    let mut c = Client::tls(daemon.addr, &certs.ca_pem);
    c.register("alice", "pw");
}

/// A wrong PKCS#12 password refuses the start before binding, naming the key; exit code 2.
#[test]
fn a_wrong_pkcs12_password_refuses_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs::make(dir.path());
    let (code, stdout, stderr) = run_to_exit(&[
        "--port",
        "0",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--pkcs12",
        certs.pkcs12.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("server.pkcs12_path"), "{stderr}");
    assert!(stdout.is_empty());
}

/// Garbage on the TLS port is closed, and every connection thread ends.
#[test]
fn garbage_on_the_tls_port_is_closed_without_leaking_threads() {
    let (server, certs) = pkcs12_server(|_| {});
    let garbage: Vec<Vec<u8>> = vec![
        vec![0u8; 64],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        (0..=255u8).cycle().take(5000).collect(),
        vec![0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x00],
    ];
    for bytes in garbage {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(&bytes);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    server.wait_until_clean(0);
    Client::tls(server.addr, &certs.ca_pem).barrier();
}

const KEY_MISMATCH: &str =
    "server.key_path: the private key does not match the certificate in server.cert_path";

/// A certificate and a key that do not belong together are refused when the identity is
/// loaded, PEM and PKCS#12 alike, naming the key; a PEM chain whose server certificate
/// is not first says so. (OpenSSL alone would take the pair and fail every handshake.)
#[test]
fn a_key_that_does_not_match_the_certificate_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs::make(dir.path());
    let stray = dir.path().join("stray.key");
    certs::write_stray_key(&stray);
    let refused = |identity: TlsIdentity| match switchboard::tcp::build_acceptor(&identity) {
        Ok(_) => panic!("{identity:?} was accepted"),
        Err(e) => e.to_string(),
    };
    let message = refused(TlsIdentity::Pem {
        cert: certs.cert_pem.clone(),
        key: stray.clone(),
    });
    assert!(
        message.starts_with(KEY_MISMATCH) && message.contains("stray.key"),
        "{message}"
    );

    // The CA first, the server's own certificate second: the key matches the wrong one.
    let reversed = dir.path().join("reversed.pem");
    let mut chain = certs.ca_pem.clone();
    chain.extend(std::fs::read(&certs.cert_pem).unwrap());
    std::fs::write(&reversed, chain).unwrap();
    let message = refused(TlsIdentity::Pem {
        cert: reversed,
        key: certs.key_pem.clone(),
    });
    assert!(
        message.starts_with(KEY_MISMATCH) && message.contains("must come first"),
        "{message}"
    );

    let foreign = certs::write_pkcs12_with_a_foreign_key(dir.path(), &certs);
    let message = refused(TlsIdentity::Pkcs12 {
        path: foreign,
        password: certs.pkcs12_password.clone(),
    });
    assert!(
        message.starts_with("server.pkcs12_path: the private key does not match")
            && message.contains("foreign.p12"),
        "{message}"
    );

    // The matching pairs still load.
    for identity in [
        TlsIdentity::Pem {
            cert: certs.cert_pem.clone(),
            key: certs.key_pem.clone(),
        },
        TlsIdentity::Pkcs12 {
            path: certs.pkcs12.clone(),
            password: certs.pkcs12_password.clone(),
        },
    ] {
        switchboard::tcp::build_acceptor(&identity).expect("a matching pair loads");
    }
}

/// `check-config` with a key that is not the certificate's exits 2 naming the key, and does
/// not call the configuration valid; the same for a PKCS#12 file.
#[test]
fn check_config_refuses_a_key_that_does_not_match_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs::make(dir.path());
    let stray = dir.path().join("stray.key");
    certs::write_stray_key(&stray);
    let data = dir.path().join("data");
    let (code, stdout, stderr) = run_to_exit(&[
        "check-config",
        "--data-dir",
        data.to_str().unwrap(),
        "--cert",
        certs.cert_pem.to_str().unwrap(),
        "--key",
        stray.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stderr.contains(KEY_MISMATCH), "{stderr}");
    assert!(!stdout.contains("configuration is valid"), "{stdout}");

    let foreign = certs::write_pkcs12_with_a_foreign_key(dir.path(), &certs);
    let (code, stdout, stderr) = run_with_env(
        &[
            "check-config",
            "--data-dir",
            data.to_str().unwrap(),
            "--pkcs12",
            foreign.to_str().unwrap(),
        ],
        &[("SWITCHBOARD_PKCS12_PASSWORD", &certs.pkcs12_password)],
    );
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(
        stderr.contains("server.pkcs12_path: the private key does not match"),
        "{stderr}"
    );
}

/// `serve` with a key that is not the certificate's exits 2 naming the key, before listening.
#[test]
fn serve_refuses_a_key_that_does_not_match_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs::make(dir.path());
    let stray = dir.path().join("stray.key");
    certs::write_stray_key(&stray);
    let (code, stdout, stderr) = run_to_exit(&[
        "--port",
        "0",
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
        "--cert",
        certs.cert_pem.to_str().unwrap(),
        "--key",
        stray.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(KEY_MISMATCH), "{stderr}");
    assert!(!stdout.contains("listening on"), "{stdout}");
}

/// SIGHUP after the key file was replaced by a key that is not the certificate's: an
/// error is logged, nothing claims a reload, and new handshakes still get the old
/// identity, as do the connections made before.
#[test]
fn sighup_with_a_mismatched_key_keeps_the_old_identity() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs::make(dir.path());
    let args = configured(
        dir.path(),
        &json!({"auth": {"bcrypt_cost": 4}}),
        &[
            "--cert",
            certs.cert_pem.to_str().unwrap(),
            "--key",
            certs.key_pem.to_str().unwrap(),
        ],
    );
    let daemon = Daemon::start(&args, &[], dir.path());
    let mut before = Client::tls(daemon.addr, &certs.ca_pem);
    before.register("alice", "pw");
    before.login_ok("alice", "pw");

    certs::write_stray_key(&certs.key_pem);
    daemon.signal(Signal::HUP);
    let stderr = daemon.stderr_once_it_has(KEY_MISMATCH);
    let logged = stderr
        .lines()
        .find(|l| l.contains(KEY_MISMATCH))
        .unwrap_or_else(|| panic!("no mismatch logged:\n{stderr}"));
    assert!(
        logged.contains("ERROR") && logged.contains("SIGHUP"),
        "{logged}"
    );
    assert!(!stderr.contains("TLS identity reloaded"), "{stderr}");

    // The reload was refused before the error was logged: new handshakes get the old
    // certificate and its key.
    let mut after = Client::try_tls(daemon.addr, &certs.ca_pem)
        .unwrap_or_else(|e| panic!("handshake after SIGHUP failed: {e}\n{}", daemon.stderr()));
    let bob_id = after.register("bob", "pw");
    after.login_ok("bob", "pw");
    before.expect_state(&bob_id, "Available");
}

/// Relays over TLS are written through by the sender's thread when the peer
/// is idle, and under load (ICE both ways, 8 MB SDP bodies to a slow reader,
/// so that OpenSSL holds a record of a relay's unwritten rest) they arrive
/// whole and in order (`support::relay_load`).
#[test]
fn tls_relays_are_written_through_and_arrive_whole_and_in_order_under_load() {
    let (server, certs) = pkcs12_server(relay_load::config);
    let alice = Client::tls(server.addr, &certs.ca_pem);
    let bob = tls_small_receive_buffer(server.addr, &certs.ca_pem);
    relay_load::run(&server, alice, bob);
}
