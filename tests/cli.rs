//! switchboard-cli against a real server: every subcommand, every exit code,
//! password sources, TLS, JSON-line sessions, protocol 2 (HELLO, token files and
//! RESUME, guests, every protocol 2 request), and `field`.

use std::fs;
use std::net::TcpListener;

use serde_json::json;
use switchboard::tcp::{MessageType as T, TlsIdentity};

use crate::support::cli::{Cli, cli};
use crate::support::{TestServer, certs};

/// Registers `name` with password `pw` through the CLI; returns the new user id.
fn register(server: &TestServer, name: &str, pw: &str) -> String {
    let out = cli(server.addr)
        .args(&["register", "--username", name, "--password", pw])
        .run();
    out.expect_code(0);
    let line = out.stdout.trim_end();
    let id = line
        .strip_prefix("registered user_id=")
        .and_then(|rest| rest.strip_suffix(&format!(" username={name}")))
        .unwrap_or_else(|| panic!("unexpected output\n{out}"));
    id.to_string()
}

/// `register` prints the new user's id line; a taken name exits 1 with the server's message.
#[test]
fn register_prints_the_new_id_and_a_taken_name_exits_1() {
    let server = TestServer::start();
    assert_eq!(register(&server, "alice", "pw-a"), "1");
    assert_eq!(register(&server, "bob", "pw-b"), "2");
    let out = cli(server.addr)
        .args(&["register", "--username", "alice", "--password", "other"])
        .run();
    out.expect_code(1);
    assert!(out.stdout.is_empty(), "{out}");
    assert!(out.stderr.contains("username is taken"), "{out}");
}

/// `login` names the user and logs out again with the right password, and exits 1 with the server's message otherwise.
#[test]
fn login_exits_0_with_the_right_password_and_1_with_a_wrong_one() {
    let server = TestServer::start();
    register(&server, "alice", "pw-a");
    let out = cli(server.addr)
        .args(&["login", "--username", "alice", "--password", "pw-a"])
        .run();
    out.expect_code(0);
    assert_eq!(out.stdout, "logged in user_id=1 username=alice\n", "{out}");
    assert_eq!(
        server.stats().online_users,
        0,
        "alice is offline once login returns"
    );
    for (user, pw) in [("alice", "wrong"), ("nobody", "pw-a")] {
        let out = cli(server.addr)
            .args(&["login", "--username", user, "--password", pw])
            .run();
        out.expect_code(1);
        assert!(
            out.stderr.contains("401") && out.stderr.contains("invalid username or password"),
            "{out}"
        );
    }
    server.wait_until_clean(0);
}

/// `users` prints one tab-separated line per user; `--json` prints the raw payload.
#[test]
fn users_prints_one_line_per_user_and_json_on_request() {
    let server = TestServer::start();
    register(&server, "alice", "pw-a");
    register(&server, "bob", "pw-b");
    let out = cli(server.addr)
        .args(&["users", "--username", "alice", "--password", "pw-a"])
        .run();
    out.expect_code(0);
    assert_eq!(
        out.lines(),
        ["1\talice\tAvailable", "2\tbob\tDisconnected"],
        "{out}"
    );
    // `users` logged alice out before it returned: bob sees her offline at once.
    let out = cli(server.addr)
        .args(&["users", "--json", "--username", "bob", "--password", "pw-b"])
        .run();
    out.expect_code(0);
    assert_eq!(
        out.stdout,
        "{\"users\":[{\"user_id\":\"1\",\"username\":\"alice\",\"state\":\"Disconnected\"},\
         {\"user_id\":\"2\",\"username\":\"bob\",\"state\":\"Available\"}]}\n",
        "{out}"
    );
}

/// `ping` needs no account and prints one `pong N.NNN ms` line per round trip.
#[test]
fn ping_needs_no_login_and_prints_each_round_trip() {
    let server = TestServer::start();
    let out = cli(server.addr).args(&["ping", "--count", "3"]).run();
    out.expect_code(0);
    let lines = out.lines();
    assert_eq!(lines.len(), 3, "{out}");
    for line in lines {
        let ms = line
            .strip_prefix("pong ")
            .and_then(|rest| rest.strip_suffix(" ms"))
            .unwrap_or_else(|| panic!("{line:?}\n{out}"));
        let (whole, frac) = ms.split_once('.').expect("a decimal point");
        assert!(whole.parse::<u64>().is_ok() && frac.len() == 3, "{line:?}");
    }
}

/// `--addr HOST:PORT` stands for --host and --port, and --host/--port work on their own.
#[test]
fn the_server_is_named_by_addr_or_by_host_and_port() {
    let server = TestServer::start();
    let port = server.addr.port().to_string();
    Cli::bare()
        .args(&["--host", "127.0.0.1", "--port", &port, "ping"])
        .run()
        .expect_code(0);
    // Global options may also follow the subcommand.
    Cli::bare()
        .args(&["ping", "--addr", &format!("127.0.0.1:{port}")])
        .run()
        .expect_code(0);
}

/// The password comes from the first line of --password-file, or from SWITCHBOARD_PASSWORD.
#[test]
fn passwords_come_from_a_file_or_the_environment() {
    let server = TestServer::start();
    let file = server.dir.path().join("alice.pw");
    fs::write(&file, "from-file\nsecond line is ignored\n").unwrap();
    let out = cli(server.addr)
        .args(&["register", "--username", "alice", "--password-file"])
        .args(&[file.to_str().unwrap()])
        .run();
    out.expect_code(0);
    // The file's first line is the password: login with it literally works.
    cli(server.addr)
        .args(&["login", "--username", "alice", "--password", "from-file"])
        .run()
        .expect_code(0);
    cli(server.addr)
        .args(&["register", "--username", "bob"])
        .env("SWITCHBOARD_PASSWORD", "from-env")
        .run()
        .expect_code(0);
    cli(server.addr)
        .args(&["login", "--username", "bob", "--password", "from-env"])
        .run()
        .expect_code(0);
    // The file wins over the environment.
    cli(server.addr)
        .args(&["login", "--username", "alice", "--password-file"])
        .args(&[file.to_str().unwrap()])
        .env("SWITCHBOARD_PASSWORD", "from-env")
        .run()
        .expect_code(0);
    let missing = server.dir.path().join("missing.pw");
    let out = cli(server.addr)
        .args(&["login", "--username", "alice", "--password-file"])
        .args(&[missing.to_str().unwrap()])
        .run();
    out.expect_code(2);
    assert!(out.stderr.contains("cannot read password file"), "{out}");
}

/// `switchboard-cli` and `switchboard user add|passwd` agree: --password together with
/// --password-file is a usage error (exit 2), neither wins, and nothing is written.
#[test]
fn both_binaries_refuse_a_password_and_a_password_file_together() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    fs::write(&file, "from-file\n").unwrap();
    let file = file.to_str().unwrap();
    let out = Cli::bare()
        .args(&["login", "--username", "alice", "--password", "x"])
        .args(&["--password-file", file])
        .run();
    out.expect_code(2);
    assert!(
        out.stderr.contains("--password") && out.stderr.contains("--password-file"),
        "{out}"
    );
    let data = dir.path().join("data");
    for action in ["add", "passwd"] {
        let (code, stdout, stderr) = crate::support::daemon::run_with_env(
            &[
                "user",
                action,
                "alice",
                "--password",
                "x",
                "--password-file",
                file,
            ]
            .into_iter()
            .chain(["--data-dir", data.to_str().unwrap()])
            .collect::<Vec<_>>(),
            &[],
        );
        assert_eq!(code, 2, "user {action}: {stdout}{stderr}");
        assert!(
            stderr.contains("--password and --password-file"),
            "user {action}: {stderr}"
        );
    }
    assert!(!data.join("users.txt").exists(), "nothing was written");
}

/// With no password and stdin not a terminal, the CLI exits 2 at once instead of prompting.
#[test]
fn no_password_without_a_terminal_exits_2() {
    let server = TestServer::start();
    let out = cli(server.addr)
        .args(&["login", "--username", "alice"])
        .stdin("typed-password\n")
        .run();
    out.expect_code(2);
    assert!(
        out.stderr.contains("stdin is not a terminal")
            && out.stderr.contains("--password-file")
            && out.stderr.contains("SWITCHBOARD_PASSWORD"),
        "{out}"
    );
    assert_eq!(
        server.stats().open_connections,
        0,
        "no connection was even opened"
    );
}

/// Usage errors exit 2: an unknown flag, two password flags, a bad --addr, --until or --timeout.
#[test]
fn usage_errors_exit_2() {
    let cases: &[&[&str]] = &[
        &["ping", "--bogus"],
        &["frobnicate"],
        &[
            "login",
            "--username",
            "a",
            "--password",
            "x",
            "--password-file",
            "f",
        ],
        &["login", "--password", "x"],
        &["--addr", "no-port", "ping"],
        &["--addr", "127.0.0.1:1", "--host", "h", "ping"],
        &["--timeout", "-1", "ping"],
        &["--timeout", "0", "ping"],
        &["ping", "--count", "0"],
        &[
            "session",
            "--username",
            "a",
            "--password",
            "x",
            "--until",
            "CALL_ME",
        ],
        &["--ca", "a.pem", "--insecure", "ping"],
        &["--protocol", "3", "ping"],
        &["--protocol", "0", "ping"],
        &["session", "--guest", "v", "--username", "a"],
        &["session", "--guest", "v", "--token-file", "t"],
        &["session", "--no-login", "--password", "x"],
        &["--protocol", "1", "session", "--guest", "visitor"],
        &[
            "--protocol",
            "1",
            "login",
            "--token-file",
            "t",
            "--username",
            "a",
        ],
        &[
            "login",
            "--token-file",
            "/nonexistent-dir/t",
            "--username",
            "a",
        ],
        &["field", "CALL_ME", "call_id"],
        &["field", "HANGUP", "a..b"],
        &["field", "HANGUP"],
        &["field", "--wait", "HANGUP", "call_id"],
        &["field", "--where", "nokey", "HANGUP", "call_id"],
        &["field", "--nth", "0", "HANGUP", "call_id"],
        &["field", "HANGUP", "call_id", "/nonexistent-dir/out"],
    ];
    for args in cases {
        let out = Cli::bare().args(args).run();
        out.expect_code(2);
        assert!(!out.stderr.is_empty(), "{out}");
    }
}

/// A closed port exits 3, and so does a TLS client on a plain port.
#[test]
fn a_closed_port_or_a_failed_handshake_exits_3() {
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let out = cli(closed).args(&["ping"]).run();
    out.expect_code(3);
    assert!(out.stderr.contains("cannot connect"), "{out}");

    let server = TestServer::start();
    let out = cli(server.addr).args(&["--insecure", "ping"]).run();
    out.expect_code(3);
    assert!(out.stderr.contains("TLS handshake"), "{out}");
}

/// A server that accepts but never answers makes the CLI exit 4 at --timeout.
#[test]
fn a_silent_server_exits_4_at_the_timeout() {
    // Never accepted: the kernel completes the TCP handshake, nobody ever answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let out = cli(addr).args(&["--timeout", "0.3", "ping"]).run();
    out.expect_code(4);
    assert!(
        out.stderr.contains("timed out waiting for HEARTBEAT"),
        "{out}"
    );
    let out = cli(addr)
        .args(&["--timeout", "0.3", "--insecure", "ping"])
        .run();
    out.expect_code(4);
    assert!(out.stderr.contains("TLS handshake"), "{out}");
    drop(silent);
}

/// The test CA written as ca.pem, and the server identity it signed (valid for
/// localhost and 127.0.0.1 only).
fn tls_certs(dir: &std::path::Path) -> (TlsIdentity, std::path::PathBuf) {
    let certs = certs::make(dir);
    let ca = dir.join("ca.pem");
    fs::write(&ca, &certs.ca_pem).unwrap();
    let identity = TlsIdentity::Pem {
        cert: certs.cert_pem.clone(),
        key: certs.key_pem.clone(),
    };
    (identity, ca)
}

/// A TLS test server listening on the loopback address `ip`.
fn tls_server(identity: &TlsIdentity, ip: [u8; 4]) -> TestServer {
    TestServer::start_with(|c| {
        c.tls = Some(identity.clone());
        c.bind_address = ip.into();
    })
}

/// --ca trusts the test CA and the host name is verified (127.0.0.2 is not in the certificate); without a CA, exit 3.
#[test]
fn tls_with_a_ca_verifies_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (identity, ca) = tls_certs(dir.path());
    let server = tls_server(&identity, [127, 0, 0, 1]);
    let port = server.addr.port().to_string();
    let ca = ca.to_str().unwrap();
    let out = Cli::bare()
        .args(&["--port", &port, "--tls", "--ca", ca])
        .args(&["register", "--username", "alice", "--password", "pw"])
        .run();
    out.expect_code(0);
    assert_eq!(out.stdout, "registered user_id=1 username=alice\n");
    // --ca alone implies --tls.
    let out = Cli::bare()
        .args(&["--host", "localhost", "--port", &port, "--ca", ca])
        .args(&["users", "--username", "alice", "--password", "pw"])
        .run();
    out.expect_code(0);
    assert_eq!(out.stdout, "1\talice\tAvailable\n");
    let out = Cli::bare().args(&["--port", &port, "--tls", "ping"]).run();
    out.expect_code(3);
    assert!(out.stderr.contains("certificate"), "{out}");
    // The same certificate served on an address it does not name.
    let elsewhere = tls_server(&identity, [127, 0, 0, 2]);
    let out = Cli::bare()
        .args(&["--addr", &elsewhere.addr.to_string(), "--ca", ca, "ping"])
        .run();
    out.expect_code(3);
    assert!(
        out.stderr.contains("TLS handshake") && out.stderr.contains("mismatch"),
        "{out}"
    );
}

/// TLS mistakes exit 3 with a hint after OpenSSL's words: a certificate for another name,
/// an untrusted certificate, --tls against a plain server, and a plain client on a TLS port.
#[test]
fn tls_mistakes_come_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let (identity, ca) = tls_certs(dir.path());
    let ca = ca.to_str().unwrap();
    let hinted = |out: &crate::support::cli::Output, hint: &str| {
        out.expect_code(3);
        let last = out.stderr.trim_end().lines().last().unwrap_or_default();
        assert!(
            last.starts_with("hint: ") && last.contains(hint),
            "expected the hint {hint:?}\n{out}"
        );
    };

    // The certificate names localhost and 127.0.0.1, not 127.0.0.2.
    let elsewhere = tls_server(&identity, [127, 0, 0, 2]);
    let port = elsewhere.addr.port().to_string();
    let out = Cli::bare()
        .args(&["--host", "127.0.0.2", "--port", &port, "--ca", ca, "ping"])
        .run();
    hinted(
        &out,
        "the certificate is not valid for --host 127.0.0.2; use the name the certificate was issued for (or --insecure for a test server)",
    );

    // Signed by the test CA, which only --ca makes trusted.
    let server = tls_server(&identity, [127, 0, 0, 1]);
    let out = cli(server.addr).args(&["--tls", "ping"]).run();
    hinted(&out, "--ca FILE");
    let other = tempfile::tempdir().unwrap();
    let (_, other_ca) = tls_certs(other.path());
    let out = cli(server.addr)
        .args(&["--ca", other_ca.to_str().unwrap(), "ping"])
        .run();
    hinted(&out, "not signed by a certificate in --ca");

    // --tls (or --ca) against a plain server.
    let plain = TestServer::start();
    let flags: [&[&str]; 2] = [&["--tls"], &["--ca", ca]];
    for flag in flags {
        let out = cli(plain.addr).args(flag).args(&["ping"]).run();
        hinted(
            &out,
            "the server on that port does not speak TLS (drop --tls/--ca) or is not a Switchboard server",
        );
    }

    // A plain client on the TLS port: the server closes (or resets) without a frame.
    let commands: [&[&str]; 3] = [
        &["ping"],
        &["login", "--username", "alice", "--password", "pw"],
        &["session", "--username", "alice", "--password", "pw"],
    ];
    for command in commands {
        let out = cli(server.addr).args(command).run();
        hinted(&out, "the server may expect TLS: try --tls or --ca");
    }
    // Over TLS the same server answers.
    cli(server.addr)
        .args(&["--ca", ca, "ping"])
        .run()
        .expect_code(0);
}

/// --insecure accepts the test server's certificate without a CA, even under a wrong name.
#[test]
fn tls_insecure_accepts_an_untrusted_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (identity, _) = tls_certs(dir.path());
    let server = tls_server(&identity, [127, 0, 0, 1]);
    let elsewhere = tls_server(&identity, [127, 0, 0, 2]);
    for addr in [server.addr, elsewhere.addr] {
        let out = cli(addr)
            .args(&["--insecure", "ping", "--count", "2"])
            .run();
        out.expect_code(0);
        assert_eq!(out.lines().len(), 2, "{out}");
    }
    let port = server.addr.port().to_string();
    let out = Cli::bare()
        .args(&["--port", &port, "--insecure", "session", "--username"])
        .args(&["nobody", "--password", "pw", "--until", "LOGIN_RESPONSE"])
        .run();
    out.expect_code(1);
}

/// A session's LOGIN_RESPONSE is printed; `--until LOGIN_RESPONSE` exits right after it.
/// `--protocol 1` speaks v1: no HELLO, so no WELCOME and no protocol 2 fields.
#[test]
fn a_session_prints_its_own_login_response() {
    let server = TestServer::start();
    register(&server, "alice", "pw-a");
    let out = cli(server.addr)
        .args(&["--protocol", "1"])
        .args(&["session", "--username", "alice", "--password", "pw-a"])
        .args(&["--until", "login_response"])
        .run();
    out.expect_code(0);
    assert_eq!(
        out.stdout,
        "{\"type\":\"LOGIN_RESPONSE\",\"code\":2,\"payload\":{\"success\":true,\"user_id\":\"1\",\"username\":\"alice\"}}\n",
        "{out}"
    );
}

/// README's trick works as written: input ending with `{"type":"HEARTBEAT"}` and `--until HEARTBEAT` exits 0 once everything before it was answered.
#[test]
fn a_session_ending_with_a_bare_heartbeat_exits_0() {
    let server = TestServer::start();
    register(&server, "alice", "pw-a");
    let out = cli(server.addr)
        .args(&["session", "--username", "alice", "--password", "pw-a"])
        .args(&["--until", "HEARTBEAT", "--timeout", "10"])
        .stdin("{\"type\":\"USER_LIST_REQUEST\"}\n{\"type\":\"HEARTBEAT\"}\n")
        .run();
    out.expect_code(0);
    let types: Vec<_> = out
        .json_lines()
        .iter()
        .map(|l| l["type"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        types,
        [
            "WELCOME",
            "LOGIN_RESPONSE",
            "USER_LIST_RESPONSE",
            "HEARTBEAT"
        ],
        "{out}"
    );
}

/// Types work by name and by code, in commands and in --until: a ring by name ends bob's `--until 9`, then alice's `--until 0x10`.
#[test]
fn sessions_take_types_by_name_and_by_code() {
    let server = TestServer::start();
    register(&server, "alice", "pw-a");
    let bob_id = register(&server, "bob", "pw-b");
    let mut bob = cli(server.addr)
        .args(&["session", "--username", "bob", "--password", "pw-b"])
        .args(&["--until", "9", "--timeout", "10"])
        .spawn();
    bob.expect("LOGIN_RESPONSE");
    let mut alice = cli(server.addr)
        .args(&["session", "--username", "alice", "--password", "pw-a"])
        .args(&["--until", "0x10", "--timeout", "10"])
        .spawn();
    alice.expect("LOGIN_RESPONSE");
    alice.send(&format!(
        r#"{{"type":"call_request","to_user_id":"{bob_id}"}}"#
    ));
    let bob_out = bob.finish();
    bob_out.expect_code(0);
    let lines = bob_out.json_lines();
    let ring = lines.last().unwrap();
    assert_eq!(ring["type"], "CALL_NOTIFICATION", "{bob_out}");
    assert_eq!(ring["code"], 9);
    assert_eq!(ring["payload"]["from_user_id"], "1");
    assert_eq!(ring["payload"]["from_username"], "alice");
    let call_id = ring["payload"]["call_id"].as_str().unwrap().to_string();
    let alice_out = alice.finish();
    alice_out.expect_code(0);
    let last = alice_out.json_lines().pop().unwrap();
    assert_eq!(
        last,
        json!({"type": "HANGUP", "code": T::Hangup.code(), "payload": {"call_id": call_id}}),
        "{alice_out}"
    );
    server.wait_until_clean(0);
}

/// Two sessions fed over time carry a whole call (ring, accept, SDP, ICE both ways, hang-up); an ERROR does not end a session.
#[test]
fn a_whole_call_between_two_sessions() {
    let server = TestServer::start();
    let alice_id = register(&server, "alice", "pw-a");
    let bob_id = register(&server, "bob", "pw-b");
    let session = |name: &str, pw: &str, until: &str| {
        cli(server.addr)
            .args(&[
                "--timeout",
                "20",
                "session",
                "--username",
                name,
                "--password",
                pw,
            ])
            .args(&["--until", until])
            .spawn()
    };
    let mut bob = session("bob", "pw-b", "HANGUP");
    bob.expect("LOGIN_RESPONSE");
    let mut alice = session("alice", "pw-a", "HEARTBEAT");
    alice.expect("LOGIN_RESPONSE");
    let presence = bob.expect("USER_STATE_UPDATE");
    assert_eq!(
        presence["payload"],
        json!({"user_id": alice_id, "username": "alice", "state": "Available"})
    );

    // A refused command is printed as an ERROR line; the session carries on.
    alice.send(r#"{"type":"CALL_REQUEST","to_user_id":"99"}"#);
    assert_eq!(alice.expect("ERROR")["payload"]["code"], 404);

    alice.send(&format!(
        r#"{{"type":"CALL_REQUEST","to_user_id":"{bob_id}"}}"#
    ));
    let ring = bob.expect("CALL_NOTIFICATION");
    let call_id = ring["payload"]["call_id"].as_str().unwrap().to_string();
    bob.send(&format!(
        r#"{{"type":10,"call_id":"{call_id}","accepted":true}}"#
    ));
    assert_eq!(
        alice.expect("CALL_ACCEPTED")["payload"],
        json!({"call_id": call_id, "peer_user_id": bob_id, "peer_username": "bob"})
    );

    let offer_sdp = "v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=\"quoted\" é\r\n";
    let offer =
        json!({"type": "SDP_OFFER", "call_id": call_id, "to_user_id": bob_id, "sdp": offer_sdp});
    alice.send(&offer.to_string());
    assert_eq!(
        bob.expect("SDP_OFFER")["payload"],
        json!({"call_id": call_id, "from_user_id": alice_id, "to_user_id": bob_id, "sdp": offer_sdp})
    );
    bob.send(&format!(
        r#"{{"type":"0x0E","call_id":"{call_id}","to_user_id":"{alice_id}","sdp":"v=0 answer"}}"#
    ));
    let answer = alice.expect("SDP_ANSWER");
    assert_eq!(
        (
            answer["code"].as_u64(),
            &answer["payload"]["sdp"],
            &answer["payload"]["from_user_id"]
        ),
        (Some(14), &json!("v=0 answer"), &json!(bob_id))
    );
    for i in 0..2 {
        let (from, to) = if i == 0 {
            (&mut alice, &mut bob)
        } else {
            (&mut bob, &mut alice)
        };
        let candidate = format!("candidate:{i} 1 udp 2122260223 10.0.0.{i} 5000 typ host");
        from.send(&json!({"type": "ice_candidate", "call_id": call_id, "candidate": candidate, "sdp_mid": "0", "sdp_mline_index": i}).to_string());
        let ice = to.expect("ICE_CANDIDATE");
        assert_eq!(ice["payload"]["candidate"], candidate.as_str());
        assert_eq!(ice["payload"]["sdp_mid"], "0");
        assert_eq!(ice["payload"]["sdp_mline_index"], i);
    }

    alice.send(&format!(r#"{{"type":"HANGUP","call_id":"{call_id}"}}"#));
    // The heartbeat's answer comes after anything the hang-up caused for alice.
    alice.send(r#"{"type":"HEARTBEAT","timestamp":1}"#);
    let bob_out = bob.finish();
    bob_out.expect_code(0);
    assert_eq!(
        bob_out.json_lines().pop().unwrap(),
        json!({"type": "HANGUP", "code": 16, "payload": {"call_id": call_id}})
    );
    let alice_out = alice.finish();
    alice_out.expect_code(0);
    let errors = alice_out
        .json_lines()
        .into_iter()
        .filter(|l| l["type"] == "ERROR")
        .count();
    assert_eq!(errors, 1, "only the call to user 99 failed\n{alice_out}");
    server.wait_until_clean(0);
}

/// A session waiting for a frame that never comes exits 4 at --timeout, having printed its login.
#[test]
fn a_session_that_never_sees_its_until_frame_exits_4() {
    let server = TestServer::start();
    register(&server, "alice", "pw-a");
    let out = cli(server.addr)
        .args(&["session", "--username", "alice", "--password", "pw-a"])
        .args(&["--until", "CALL_NOTIFICATION", "--timeout", "0.5"])
        .run();
    out.expect_code(4);
    assert_eq!(out.json_lines()[1]["type"], "LOGIN_RESPONSE", "{out}");
    assert!(
        out.stderr
            .contains("timed out waiting for CALL_NOTIFICATION"),
        "{out}"
    );
    // Without --until, --timeout bounds the whole session the same way.
    let out = cli(server.addr)
        .args(&["session", "--username", "alice", "--password", "pw-a"])
        .args(&["--timeout", "0.5"])
        .run();
    out.expect_code(4);
}

/// Without --until a session outlives its stdin and exits 0 when the server closes it; with --until that is exit 3.
#[test]
fn a_session_without_until_ends_when_the_server_closes() {
    let server = TestServer::start();
    register(&server, "alice", "pw-a");
    let mut first = cli(server.addr)
        .args(&["session", "--username", "alice", "--password", "pw-a"])
        .spawn();
    first.expect("LOGIN_RESPONSE");
    first.send(r#"{"type":"USER_LIST_REQUEST"}"#);
    first.expect("USER_LIST_RESPONSE");
    first.close_stdin();
    cli(server.addr)
        .args(&["login", "--username", "alice", "--password", "pw-a"])
        .run()
        .expect_code(0);
    let out = first.finish();
    out.expect_code(0);
    let last = out.json_lines().pop().unwrap();
    assert_eq!(
        last,
        json!({"type": "ERROR", "code": 18, "payload": {"code": 409, "message": "logged in elsewhere"}}),
        "{out}"
    );

    // With --until, the server closing first is a lost connection: exit 3.
    let mut waiting = cli(server.addr)
        .args(&["session", "--username", "alice", "--password", "pw-a"])
        .args(&["--until", "CALL_NOTIFICATION", "--timeout", "10"])
        .spawn();
    waiting.expect("LOGIN_RESPONSE");
    cli(server.addr)
        .args(&["login", "--username", "alice", "--password", "pw-a"])
        .run()
        .expect_code(0);
    let out = waiting.finish();
    out.expect_code(3);
    assert!(out.stderr.contains("before CALL_NOTIFICATION"), "{out}");
}

/// User ids as `users` prints them, bare numbers, work in session commands: sent as the
/// protocol's strings, so the server rings bob rather than refusing the request.
#[test]
fn sessions_take_numeric_user_ids() {
    let server = TestServer::start();
    register(&server, "alice", "pw-a");
    register(&server, "bob", "pw-b");
    let out = cli(server.addr)
        .args(&["users", "--username", "bob", "--password", "pw-b"])
        .run();
    out.expect_code(0);
    let bob_id: u64 = out
        .lines()
        .iter()
        .find_map(|l| l.strip_suffix("\tbob\tAvailable"))
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no numeric id for bob\n{out}"));
    let mut bob = cli(server.addr)
        .args(&["session", "--username", "bob", "--password", "pw-b"])
        .args(&["--until", "CALL_NOTIFICATION", "--timeout", "10"])
        .spawn();
    bob.expect("LOGIN_RESPONSE");
    let mut alice = cli(server.addr)
        .args(&["session", "--username", "alice", "--password", "pw-a"])
        .args(&["--timeout", "10"])
        .spawn();
    alice.expect("LOGIN_RESPONSE");
    alice.send(&format!(
        r#"{{"type":"CALL_REQUEST","to_user_id":{bob_id}}}"#
    ));
    let bob_out = bob.finish();
    bob_out.expect_code(0);
    let ring = bob_out.json_lines().pop().unwrap();
    assert_eq!(ring["type"], "CALL_NOTIFICATION", "{bob_out}");
    assert_eq!(ring["payload"]["from_username"], "alice");
    assert!(
        !alice.seen.iter().any(|l| l.contains("\"ERROR\"")),
        "the request was refused: {:?}",
        alice.seen
    );
}

/// A bad input line (not JSON, unknown type, server-only type, bad field) exits 2 naming the line.
#[test]
fn a_bad_session_line_exits_2() {
    let server = TestServer::start();
    register(&server, "alice", "pw-a");
    let cases = [
        ("CALL_REQUEST 2", "not JSON"),
        (r#"{"type":"CALL_ME"}"#, "unknown message type"),
        (r#"{"type":77}"#, "unknown message type 77"),
        (r#"{"type":"LOGIN_RESPONSE"}"#, "sent by the server"),
        (r#"{"type":"CALL_REQUEST","to_user_id":true}"#, "to_user_id"),
    ];
    for (line, why) in cases {
        let out = cli(server.addr)
            .args(&["session", "--username", "alice", "--password", "pw-a"])
            .args(&["--until", "CALL_NOTIFICATION", "--timeout", "10"])
            .stdin(format!(
                "\n{{\"type\":\"HEARTBEAT\",\"timestamp\":5}}\n{line}\n"
            ))
            .run();
        out.expect_code(2);
        assert!(
            out.stderr.contains("input line 3") && out.stderr.contains(why),
            "{line}: {out}"
        );
    }
}

/// A session whose login fails prints the LOGIN_RESPONSE and exits 1 with the server's message.
#[test]
fn a_session_with_a_wrong_password_exits_1() {
    let server = TestServer::start();
    register(&server, "alice", "pw-a");
    let out = cli(server.addr)
        .args(&["session", "--username", "alice", "--password", "nope"])
        .run();
    out.expect_code(1);
    let lines = out.json_lines();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0]["type"], "WELCOME");
    assert_eq!(lines[1]["type"], "LOGIN_RESPONSE");
    assert_eq!(lines[1]["payload"]["success"], false);
    assert!(out.stderr.contains("invalid username or password"), "{out}");
}

/// `--help` documents the exit codes, the password sources and that --password is visible.
#[test]
fn help_documents_exit_codes_and_password_sources() {
    let out = Cli::bare().args(&["--help"]).run();
    out.expect_code(0);
    for needle in [
        "Exit codes",
        "0  success",
        "1  the server answered with an error",
        "2  usage",
        "3  cannot connect",
        "4  timeout",
        "SWITCHBOARD_PASSWORD",
        "process list",
    ] {
        assert!(out.stdout.contains(needle), "missing {needle:?}\n{out}");
    }
    let out = Cli::bare().args(&["login", "--help"]).run();
    out.expect_code(0);
    assert!(out.stdout.contains("process list"), "{out}");
}

/// The JSON lines' `type` fields, in order.
fn types(out: &crate::support::cli::Output) -> Vec<String> {
    out.json_lines()
        .iter()
        .map(|l| l["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The token file's content, parsed.
fn token_file(path: &std::path::Path) -> serde_json::Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// By default a session says HELLO first: the WELCOME is printed, and the LOGIN_RESPONSE
/// carries protocol 2's session token. `--no-login` stops at the WELCOME; with
/// `--protocol 1` it sends nothing of its own.
#[test]
fn sessions_say_hello_first_unless_protocol_1() {
    let server = TestServer::start();
    register(&server, "alice", "pw-a");
    let out = cli(server.addr)
        .args(&["session", "--username", "alice", "--password", "pw-a"])
        .args(&["--until", "LOGIN_RESPONSE"])
        .run();
    out.expect_code(0);
    let lines = out.json_lines();
    assert_eq!(types(&out), ["WELCOME", "LOGIN_RESPONSE"], "{out}");
    assert_eq!(lines[0]["payload"]["protocol_version"], 2);
    let login = &lines[1]["payload"];
    assert_eq!(
        (&login["success"], &login["username"]),
        (&json!(true), &json!("alice"))
    );
    assert!(
        login["session_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{out}"
    );
    assert!(login["expires_at"].as_u64().is_some(), "{out}");

    let out = cli(server.addr)
        .args(&["session", "--no-login", "--until", "WELCOME"])
        .run();
    out.expect_code(0);
    assert_eq!(types(&out), ["WELCOME"], "{out}");
    let out = cli(server.addr)
        .args(&[
            "--protocol",
            "1",
            "session",
            "--no-login",
            "--until",
            "HEARTBEAT",
        ])
        .stdin("{\"type\":\"HEARTBEAT\",\"timestamp\":3}\n")
        .run();
    out.expect_code(0);
    assert_eq!(types(&out), ["HEARTBEAT"], "{out}");
    // login and users speak protocol 2 as well, and still log out before they return.
    cli(server.addr)
        .args(&["users", "--username", "alice", "--password", "pw-a"])
        .run()
        .expect_code(0);
    assert_eq!(server.stats().online_users, 0);
}

/// `login --token-file` saves the session token (mode 0600, naming its user); later runs
/// with the file log in by RESUME with no password at all, `users` included, and leave
/// the token valid (no LOGOUT). Each RESUME's fresh token replaces the file's.
#[test]
fn a_token_file_logs_in_again_without_the_password() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start();
    register(&server, "alice", "pw-a");
    let file = server.dir.path().join("alice.token");
    let file_arg = file.to_str().unwrap();
    let out = cli(server.addr)
        .args(&["login", "--username", "alice", "--password", "pw-a"])
        .args(&["--token-file", file_arg])
        .run();
    out.expect_code(0);
    assert_eq!(out.stdout, "logged in user_id=1 username=alice\n", "{out}");
    assert!(out.stderr.is_empty(), "{out}");
    let mode = fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let saved = token_file(&file);
    assert_eq!(
        (&saved["username"], &saved["user_id"]),
        (&json!("alice"), &json!("1"))
    );
    assert!(saved["session_token"].as_str().unwrap().starts_with("sb1."));
    server.wait_until_clean(0);

    // No --username, no password anywhere: only the token can log alice in.
    let out = cli(server.addr)
        .args(&[
            "session",
            "--token-file",
            file_arg,
            "--until",
            "LOGIN_RESPONSE",
        ])
        .run();
    out.expect_code(0);
    assert!(out.stderr.is_empty(), "{out}");
    let lines = out.json_lines();
    assert_eq!(types(&out), ["WELCOME", "LOGIN_RESPONSE"], "{out}");
    assert_eq!(lines[1]["payload"]["username"], "alice");
    assert_eq!(
        token_file(&file)["session_token"],
        lines[1]["payload"]["session_token"],
        "the file holds the token the RESUME handed out"
    );

    for _ in 0..2 {
        let out = cli(server.addr)
            .args(&["users", "--token-file", file_arg])
            .run();
        out.expect_code(0);
        assert_eq!(out.stdout, "1\talice\tAvailable\n", "{out}");
    }
    // --username may be given too, in any case; it must match the file's user.
    cli(server.addr)
        .args(&["login", "--username", "ALICE", "--token-file", file_arg])
        .run()
        .expect_code(0);
    server.wait_until_clean(0);
}

/// A token the server refuses (LOGOUT revoked it) falls back to the password when one is
/// given, saying so on stderr; the refused RESUME's ERROR is not printed, and the new
/// token is saved. Without a password the ERROR is the answer: exit 1, file unchanged.
#[test]
fn a_refused_token_falls_back_to_the_password_and_says_so() {
    let server = TestServer::start();
    register(&server, "alice", "pw-a");
    let dir = server.dir.path();
    let file = dir.join("alice.token");
    let file_arg = file.to_str().unwrap();
    let pw_file = dir.join("alice.pw");
    fs::write(&pw_file, "pw-a\n").unwrap();
    let revoke = || {
        // `login` without a token file ends with LOGOUT: every token of alice is revoked.
        cli(server.addr)
            .args(&["login", "--username", "alice", "--password", "pw-a"])
            .run()
            .expect_code(0);
    };
    cli(server.addr)
        .args(&["login", "--username", "alice", "--password", "pw-a"])
        .args(&["--token-file", file_arg])
        .run()
        .expect_code(0);
    revoke();
    let out = cli(server.addr)
        .args(&[
            "session",
            "--token-file",
            file_arg,
            "--until",
            "LOGIN_RESPONSE",
        ])
        .args(&["--password-file", pw_file.to_str().unwrap()])
        .run();
    out.expect_code(0);
    assert_eq!(types(&out), ["WELCOME", "LOGIN_RESPONSE"], "{out}");
    assert!(
        out.stderr.contains(&format!(
            "the session token in {file_arg} was refused (401 session token revoked); \
             logging in with the password"
        )),
        "{out}"
    );
    let token = out.json_lines()[1]["payload"]["session_token"].clone();
    assert_eq!(token_file(&file)["session_token"], token);

    revoke();
    let before = fs::read_to_string(&file).unwrap();
    let out = cli(server.addr)
        .args(&[
            "session",
            "--token-file",
            file_arg,
            "--until",
            "LOGIN_RESPONSE",
        ])
        .run();
    out.expect_code(1);
    assert_eq!(types(&out), ["WELCOME", "ERROR"], "{out}");
    assert_eq!(out.json_lines()[1]["payload"]["code"], 401);
    assert!(
        out.stderr.contains("no password was given to fall back on")
            && out
                .stderr
                .contains("server error 401: session token revoked"),
        "{out}"
    );
    assert_eq!(fs::read_to_string(&file).unwrap(), before, "left as it was");
    // The environment counts as a password source too.
    cli(server.addr)
        .args(&["login", "--token-file", file_arg])
        .env("SWITCHBOARD_PASSWORD", "pw-a")
        .run()
        .expect_code(0);
    assert_ne!(fs::read_to_string(&file).unwrap(), before);
}

/// A session keeps its token file current: TOKEN_REFRESH and PASSWORD_CHANGE answers
/// replace the token before their line is printed, and LOGOUT removes the file.
#[test]
fn a_session_keeps_its_token_file_current() {
    let server = TestServer::start();
    register(&server, "alice", "pw-a");
    let file = server.dir.path().join("alice.token");
    let file_arg = file.to_str().unwrap();
    let mut alice = cli(server.addr)
        .args(&["session", "--username", "alice", "--password", "pw-a"])
        .args(&["--token-file", file_arg, "--timeout", "20"])
        .spawn();
    let login = alice.expect("LOGIN_RESPONSE");
    assert_eq!(
        token_file(&file)["session_token"],
        login["payload"]["session_token"]
    );
    alice.send(r#"{"type":"TOKEN_REFRESH_REQUEST","req_id":"r1"}"#);
    let refreshed = alice.expect("TOKEN_REFRESH_RESPONSE");
    assert_eq!(refreshed["payload"]["req_id"], "r1");
    assert_eq!(
        token_file(&file)["session_token"],
        refreshed["payload"]["session_token"]
    );
    assert_eq!(token_file(&file)["username"], "alice");
    alice.send(
        r#"{"type":"PASSWORD_CHANGE_REQUEST","old_password_hash":"pw-a","new_password_hash":"pw-b"}"#,
    );
    let changed = alice.expect("PASSWORD_CHANGE_RESPONSE");
    assert_eq!(
        token_file(&file)["session_token"],
        changed["payload"]["session_token"]
    );
    alice.send(r#"{"type":"LOGOUT_REQUEST"}"#);
    alice.expect("LOGOUT_RESPONSE");
    assert!(
        !file.exists(),
        "LOGOUT revoked the tokens: the file is gone"
    );
    let out = alice.finish();
    assert!(out.stderr.is_empty(), "{out}");
    // The new password works, and saves a token again.
    cli(server.addr)
        .args(&["login", "--username", "alice", "--password", "pw-b"])
        .args(&["--token-file", file_arg])
        .run()
        .expect_code(0);
    assert!(file.exists());
}

/// A token file that is not one, or holds another user's token, is refused (exit 2)
/// before anything is sent, and left as it was; an empty one needs --username.
#[test]
fn a_foreign_or_garbled_token_file_is_refused_and_left_alone() {
    let server = TestServer::start();
    register(&server, "alice", "pw-a");
    register(&server, "bob", "pw-b");
    let dir = server.dir.path();
    let garbled = dir.join("garbled");
    fs::write(&garbled, "not a token\n").unwrap();
    let alices = dir.join("alice.token");
    cli(server.addr)
        .args(&["login", "--username", "alice", "--password", "pw-a"])
        .args(&["--token-file", alices.to_str().unwrap()])
        .run()
        .expect_code(0);
    let alice_token = fs::read_to_string(&alices).unwrap();
    let empty = dir.join("empty");
    fs::write(&empty, "").unwrap();
    let cases: [(&std::path::Path, &[&str], &str); 3] = [
        (
            &garbled,
            &["--username", "bob", "--password", "pw-b"],
            "not a switchboard-cli token file",
        ),
        (
            &alices,
            &["--username", "bob", "--password", "pw-b"],
            "holds the session token of alice, not of bob",
        ),
        (&empty, &["--password", "pw-b"], "give --username"),
    ];
    // Pointed at a port that records connections: none may come.
    let watch = TcpListener::bind("127.0.0.1:0").unwrap();
    watch.set_nonblocking(true).unwrap();
    for (file, args, why) in cases {
        let out = cli(watch.local_addr().unwrap())
            .args(&["session", "--token-file", file.to_str().unwrap()])
            .args(args)
            .run();
        out.expect_code(2);
        assert!(out.stderr.contains(why), "{out}");
    }
    assert!(watch.accept().is_err(), "nothing was sent");
    assert_eq!(fs::read_to_string(&garbled).unwrap(), "not a token\n");
    assert_eq!(fs::read_to_string(&alices).unwrap(), alice_token);
}

/// `--guest NAME` logs in without an account: the server's guest name, no token.
/// A registered user's name is refused with the server's 409 (exit 1).
#[test]
fn a_guest_session_needs_no_account() {
    let server = TestServer::start();
    register(&server, "alice", "pw-a");
    let out = cli(server.addr)
        .args(&["session", "--guest", "visitor", "--until", "LOGIN_RESPONSE"])
        .run();
    out.expect_code(0);
    let login = &out.json_lines()[1]["payload"];
    assert_eq!(login["username"], "visitor (guest)", "{out}");
    assert_eq!(login["guest"], true);
    assert!(login.get("session_token").is_none(), "{out}");
    let out = cli(server.addr)
        .args(&["session", "--guest", "alice", "--until", "LOGIN_RESPONSE"])
        .run();
    out.expect_code(1);
    assert_eq!(types(&out), ["WELCOME", "ERROR"], "{out}");
    assert!(out.stderr.contains("409"), "{out}");
}

/// Every protocol 2 request goes through a session's stdin and every answer prints:
/// HELLO, GUEST_LOGIN and ICE_SERVERS as an anonymous v1 session's commands, then
/// RESUME (with a token pulled out by `field`), TOKEN_REFRESH, PASSWORD_CHANGE and
/// ACCOUNT_DELETE.
#[test]
fn every_protocol_2_request_can_be_sent_from_a_session() {
    let server = TestServer::start();
    register(&server, "alice", "pw-a");
    let lines = [
        r#"{"type":"HELLO","protocol_version":2,"client_name":"script"}"#,
        r#"{"type":"GUEST_LOGIN_REQUEST","display_name":"visitor"}"#,
        r#"{"type":"ICE_SERVERS_REQUEST","req_id":1}"#,
        r#"{"type":"TOKEN_REFRESH_REQUEST"}"#,
        r#"{"type":"HEARTBEAT"}"#,
    ];
    let out = cli(server.addr)
        .args(&[
            "--protocol",
            "1",
            "session",
            "--no-login",
            "--until",
            "HEARTBEAT",
        ])
        .stdin(lines.join("\n") + "\n")
        .run();
    out.expect_code(0);
    assert_eq!(
        types(&out),
        [
            "WELCOME",
            "LOGIN_RESPONSE",
            "ICE_SERVERS_RESPONSE",
            "ERROR",
            "HEARTBEAT"
        ],
        "{out}"
    );
    let lines_out = out.json_lines();
    assert_eq!(lines_out[1]["payload"]["guest"], true);
    assert_eq!(lines_out[2]["payload"]["req_id"], 1);
    assert_eq!(lines_out[3]["payload"]["code"], 403, "guests have no token");

    // A token, pulled out of a session's output by `field`.
    let login = cli(server.addr)
        .args(&["session", "--username", "alice", "--password", "pw-a"])
        .args(&["--until", "LOGIN_RESPONSE"])
        .run();
    login.expect_code(0);
    let token = cli(server.addr)
        .args(&["field", "LOGIN_RESPONSE", "session_token"])
        .stdin(login.stdout.clone())
        .run();
    token.expect_code(0);
    let token = token.stdout.trim_end().to_string();
    assert!(token.starts_with("sb1."), "{token}");
    server.wait_until_clean(0);
    let lines = [
        json!({"type": "RESUME_REQUEST", "session_token": token, "req_id": "r"}).to_string(),
        r#"{"type":"TOKEN_REFRESH_REQUEST"}"#.into(),
        r#"{"type":"PASSWORD_CHANGE_REQUEST","old_password_hash":"pw-a","new_password_hash":"pw-b"}"#.into(),
        r#"{"type":"ACCOUNT_DELETE_REQUEST","password_hash":"pw-b"}"#.into(),
        r#"{"type":"HEARTBEAT"}"#.into(),
    ];
    let out = cli(server.addr)
        .args(&["session", "--no-login", "--until", "HEARTBEAT"])
        .stdin(lines.join("\n") + "\n")
        .run();
    out.expect_code(0);
    assert_eq!(
        types(&out),
        [
            "WELCOME",
            "LOGIN_RESPONSE",
            "TOKEN_REFRESH_RESPONSE",
            "PASSWORD_CHANGE_RESPONSE",
            "ACCOUNT_DELETE_RESPONSE",
            "HEARTBEAT"
        ],
        "{out}"
    );
    let lines_out = out.json_lines();
    assert_eq!(lines_out[1]["payload"]["req_id"], "r");
    assert_eq!(lines_out[4]["payload"], json!({"success": true}));
    // Protocol 2 fields are checked before anything is sent.
    for (line, why) in [
        (r#"{"type":"RESUME_REQUEST"}"#, "session_token"),
        (
            r#"{"type":"HELLO","protocol_version":"two"}"#,
            "protocol_version",
        ),
        (r#"{"type":"WELCOME"}"#, "sent by the server"),
    ] {
        let out = cli(server.addr)
            .args(&["session", "--no-login", "--until", "HEARTBEAT"])
            .stdin(format!("{line}\n"))
            .run();
        out.expect_code(2);
        assert!(
            out.stderr.contains("input line 1") && out.stderr.contains(why),
            "{out}"
        );
    }
}

/// A session started again from its token file takes back its held call: the peer sees
/// PEER_STATUS reconnecting when the first process dies and reconnected on the RESUME,
/// and the LOGIN_RESPONSE names the call.
#[test]
fn a_held_call_resumes_from_the_token_file() {
    let server = TestServer::start();
    register(&server, "alice", "pw-a");
    let bob_id = register(&server, "bob", "pw-b");
    let file = server.dir.path().join("alice.token");
    let file_arg = file.to_str().unwrap();
    let mut bob = cli(server.addr)
        .args(&[
            "session",
            "--username",
            "bob",
            "--password",
            "pw-b",
            "--timeout",
            "20",
        ])
        .spawn();
    bob.expect("LOGIN_RESPONSE");
    let mut alice = cli(server.addr)
        .args(&["session", "--username", "alice", "--password", "pw-a"])
        .args(&["--token-file", file_arg, "--timeout", "20"])
        .spawn();
    alice.expect("LOGIN_RESPONSE");
    alice.send(&format!(
        r#"{{"type":"CALL_REQUEST","to_user_id":{bob_id}}}"#
    ));
    let ring = bob.expect("CALL_NOTIFICATION");
    let call_id = ring["payload"]["call_id"].as_str().unwrap().to_string();
    bob.send(&format!(
        r#"{{"type":"CALL_RESPONSE","call_id":"{call_id}","accepted":true}}"#
    ));
    alice.expect("CALL_ACCEPTED");
    drop(alice); // killed: the connection drops without LOGOUT
    let status = bob.expect("PEER_STATUS");
    assert_eq!(status["payload"]["status"], "reconnecting");
    assert_eq!(status["payload"]["call_id"], call_id.as_str());

    let mut alice = cli(server.addr)
        .args(&["session", "--token-file", file_arg, "--timeout", "20"])
        .args(&["--until", "HANGUP"])
        .spawn();
    let login = alice.expect("LOGIN_RESPONSE");
    assert_eq!(
        login["payload"]["call_id"],
        call_id.as_str(),
        "the call goes on"
    );
    assert_eq!(
        bob.expect("PEER_STATUS")["payload"]["status"],
        "reconnected"
    );
    bob.send(&format!(r#"{{"type":"HANGUP","call_id":"{call_id}"}}"#));
    let out = alice.finish();
    out.expect_code(0);
    assert!(out.stderr.is_empty(), "{out}");
}

/// `field` pulls one value out of session output: from stdin, from a finished file, or
/// (`--wait`) from the file a running session is still writing; no such line is exit 1,
/// and a line that never comes is exit 4 at --timeout.
#[test]
fn field_pulls_a_value_out_of_session_output() {
    let server = TestServer::start();
    register(&server, "alice", "pw-a");
    let bob_id = register(&server, "bob", "pw-b");
    let bob_out = server.dir.path().join("bob.out");
    let bob_out_arg = bob_out.to_str().unwrap();
    let mut bob = cli(server.addr)
        .args(&["session", "--username", "bob", "--password", "pw-b"])
        .args(&["--until", "HANGUP", "--timeout", "20"])
        .stdout_to(&bob_out)
        .spawn();
    // bob's session writes its file while `field --wait` reads it.
    let user_id = cli(server.addr)
        .args(&["field", "--wait", "LOGIN_RESPONSE", "user_id", bob_out_arg])
        .run();
    user_id.expect_code(0);
    assert_eq!(user_id.stdout, format!("{bob_id}\n"));
    let mut alice = cli(server.addr)
        .args(&["session", "--username", "alice", "--password", "pw-a"])
        .args(&["--timeout", "20"])
        .spawn();
    alice.expect("LOGIN_RESPONSE");
    alice.send(&format!(
        r#"{{"type":"CALL_REQUEST","to_user_id":"{bob_id}"}}"#
    ));
    let call_id = cli(server.addr)
        .args(&[
            "field",
            "--wait",
            "CALL_NOTIFICATION",
            "call_id",
            bob_out_arg,
        ])
        .run();
    call_id.expect_code(0);
    let call_id = call_id.stdout.trim_end().to_string();
    assert!(call_id.parse::<u64>().is_ok(), "{call_id:?}");
    bob.send(&format!(
        r#"{{"type":"CALL_RESPONSE","call_id":"{call_id}","accepted":true}}"#
    ));
    alice.expect("CALL_ACCEPTED");
    alice.send(&format!(r#"{{"type":"HANGUP","call_id":"{call_id}"}}"#));
    bob.finish().expect_code(0);

    // The finished file: --where and --nth pick the line, . is the whole payload.
    let field = |args: &[&str]| cli(server.addr).args(&["field"]).args(args).run();
    let out = field(&[
        "--where",
        &format!("call_id={call_id}"),
        "HANGUP",
        ".",
        bob_out_arg,
    ]);
    out.expect_code(0);
    assert_eq!(out.stdout, format!("{{\"call_id\":\"{call_id}\"}}\n"));
    let out = field(&["--nth", "2", "CALL_NOTIFICATION", "call_id", bob_out_arg]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("no CALL_NOTIFICATION line (--nth 2)"),
        "{out}"
    );
    let out = field(&["HANGUP", "sdp", bob_out_arg]);
    out.expect_code(1);
    assert!(out.stderr.contains("has no field sdp"), "{out}");
    let out = field(&[
        "--timeout",
        "0.3",
        "--wait",
        "SDP_OFFER",
        "sdp",
        bob_out_arg,
    ]);
    out.expect_code(4);
    assert!(
        out.stderr.contains("timed out waiting for SDP_OFFER line"),
        "{out}"
    );
}

/// The lines of `out` of frame type `kind`, parsed.
fn frames_of(out: &crate::support::cli::Output, kind: &str) -> Vec<serde_json::Value> {
    out.json_lines()
        .into_iter()
        .filter(|l| l["type"] == kind)
        .collect()
}

/// One scripted session drives a room from a here-document: create (with a
/// password), join, post, history; later lines use earlier answers through
/// `{{REQ_ID.PATH}}`, and a string that is one reference keeps the value's type.
#[test]
fn a_scripted_session_creates_joins_posts_and_reads_a_room() {
    let server = TestServer::start();
    register(&server, "alice", "pw-a");
    let script = r#"{"type":"ROOM_CREATE_REQUEST","name":"Standup","password":"door","req_id":"create"}
{"type":"ROOM_JOIN_REQUEST","room_id":"{{create.room_id}}","req_id":"join"}
{"type":"ROOM_MESSAGE_REQUEST","room_id":"{{create.room_id}}","text":"hello {{join.name}}","client_msg_id":"m1","req_id":"post"}
{"type":"ROOM_HISTORY_REQUEST","room_id":"{{create.room_id}}","after_seq":"{{join.last_seq}}","req_id":"history"}
"#;
    let out = cli(server.addr)
        .args(&["session", "--username", "alice", "--password", "pw-a"])
        .args(&["--until", "ROOM_HISTORY_RESPONSE", "--timeout", "10"])
        .stdin(script)
        .run();
    out.expect_code(0);
    assert!(out.stderr.is_empty(), "{out}");
    let created = &frames_of(&out, "ROOM_CREATE_RESPONSE")[0]["payload"];
    let room_id = created["room_id"].as_str().expect("a room_id").to_string();
    assert_eq!(created["room"]["has_password"], true, "{out}");
    let joined = &frames_of(&out, "ROOM_JOIN_RESPONSE")[0]["payload"];
    assert_eq!(
        (
            &joined["room_id"],
            &joined["participants"],
            &joined["last_seq"]
        ),
        (&json!(room_id), &json!([]), &json!(0)),
        "the owner joins an empty room\n{out}"
    );
    let posted = &frames_of(&out, "ROOM_MESSAGE_RESPONSE")[0]["payload"];
    assert_eq!(posted["seq"], 1, "{out}");
    assert_eq!(posted["req_id"], "post", "{out}");
    // alice's own ROOM_MESSAGE is a push: it may come after the history's
    // answer (pushes and answers are not ordered, PROTOCOL.md section 5), so
    // the history is what shows the message.
    let history = out.json_lines().pop().unwrap();
    assert_eq!(history["type"], "ROOM_HISTORY_RESPONSE", "{out}");
    let messages = history["payload"]["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{out}");
    assert_eq!(
        (
            &messages[0]["seq"],
            &messages[0]["text"],
            &messages[0]["from_username"]
        ),
        (&json!(1), &json!("hello Standup"), &json!("alice"))
    );
    assert!(frames_of(&out, "ERROR").is_empty(), "{out}");
    server.wait_until_clean(0);
}

/// A second user joins the scripted room with its password (the room id written
/// bare, as `field` prints it), posts and reads the history; the owner, in a
/// session fed over time, sees the join and the message; a session that ends
/// in a room logs out, so the owner sees it leave at once.
#[test]
fn a_scripted_room_between_two_sessions() {
    let server = TestServer::start();
    register(&server, "alice", "pw-a");
    let bob_id = register(&server, "bob", "pw-b");
    let mut alice = cli(server.addr)
        .args(&["--timeout", "20", "session", "--username", "alice"])
        .args(&["--password", "pw-a", "--until", "ROOM_PEER_LEFT"])
        .spawn();
    alice.expect("LOGIN_RESPONSE");
    alice.send(r#"{"type":"ROOM_CREATE_REQUEST","name":"Design","password":"door","req_id":"c"}"#);
    alice.send(r#"{"type":"ROOM_JOIN_REQUEST","room_id":"{{c.room_id}}","req_id":"j"}"#);
    let room_id = alice.expect("ROOM_CREATE_RESPONSE")["payload"]["room_id"]
        .as_str()
        .unwrap()
        .to_string();
    alice.expect("ROOM_JOIN_RESPONSE");

    // A wrong password first: the reference to the refused join exits 1 with the server's message.
    let wrong = format!(
        "{{\"type\":\"ROOM_JOIN_REQUEST\",\"room_id\":{room_id},\"password\":\"nope\",\"req_id\":\"j\"}}\n\
         {{\"type\":\"ROOM_HISTORY_REQUEST\",\"room_id\":\"{{{{j.room_id}}}}\"}}\n"
    );
    let out = cli(server.addr)
        .args(&["session", "--username", "bob", "--password", "pw-b"])
        .args(&["--until", "ROOM_HISTORY_RESPONSE", "--timeout", "10"])
        .stdin(wrong)
        .run();
    out.expect_code(1);
    assert!(
        out.stderr.contains("input line 2")
            && out.stderr.contains("401")
            && out.stderr.contains("wrong room password"),
        "{out}"
    );
    assert_eq!(
        frames_of(&out, "ERROR")[0]["payload"]["req_id"],
        "j",
        "{out}"
    );

    let script = format!(
        "{{\"type\":\"ROOM_JOIN_REQUEST\",\"room_id\":{room_id},\"password\":\"door\",\"req_id\":\"j\"}}\n\
         {{\"type\":\"ROOM_MESSAGE_REQUEST\",\"room_id\":\"{{{{j.room_id}}}}\",\"text\":\"hi from bob\",\"req_id\":\"m\"}}\n\
         {{\"type\":\"ROOM_HISTORY_REQUEST\",\"room_id\":\"{{{{j.room_id}}}}\",\"before_seq\":\"{{{{m.seq}}}}\",\"req_id\":\"h\"}}\n"
    );
    let out = cli(server.addr)
        .args(&["session", "--username", "bob", "--password", "pw-b"])
        .args(&["--until", "ROOM_HISTORY_RESPONSE", "--timeout", "10"])
        .stdin(script)
        .run();
    out.expect_code(0);
    let joined = &frames_of(&out, "ROOM_JOIN_RESPONSE")[0]["payload"];
    assert_eq!(
        joined["participants"],
        json!([{"user_id": "1", "username": "alice", "create_offer": true}]),
        "the joiner offers to alice\n{out}"
    );
    let history = &frames_of(&out, "ROOM_HISTORY_RESPONSE")[0]["payload"];
    assert_eq!(
        history["messages"],
        json!([]),
        "nothing before bob's message\n{out}"
    );

    let peer = alice.expect("ROOM_PEER_JOINED")["payload"].clone();
    assert_eq!(
        peer,
        json!({"room_id": room_id, "user_id": bob_id, "username": "bob", "create_offer": false})
    );
    assert_eq!(
        alice.expect("ROOM_MESSAGE")["payload"]["text"],
        "hi from bob"
    );
    // bob's session ended in the room, without a token file: it logged out, so
    // alice is told at once, not after the resume grace period.
    let left = alice.expect("ROOM_PEER_LEFT")["payload"].clone();
    assert_eq!(left["user_id"], bob_id.as_str());
    assert_eq!(left["reason"], "logged_out", "{left}");
    alice.finish().expect_code(0);
    server.wait_until_clean(0);
}

/// A reference to a req_id no earlier line sent is a bad line (exit 2), and nothing is sent.
#[test]
fn a_reference_to_an_unknown_request_exits_2() {
    let server = TestServer::start();
    register(&server, "alice", "pw-a");
    let out = cli(server.addr)
        .args(&["session", "--username", "alice", "--password", "pw-a"])
        .args(&["--until", "ROOM_JOIN_RESPONSE", "--timeout", "10"])
        .stdin("{\"type\":\"ROOM_JOIN_REQUEST\",\"room_id\":\"{{create.room_id}}\"}\n")
        .run();
    out.expect_code(2);
    assert!(
        out.stderr.contains("input line 1") && out.stderr.contains("\"create\""),
        "{out}"
    );
    assert!(frames_of(&out, "ERROR").is_empty(), "{out}");
}
