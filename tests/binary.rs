//! The daemon binary: no-config start, configuration errors, logging.

use std::fs;

use serde_json::json;
use switchboard::tcp::MessageType as T;

use crate::support::daemon::{Daemon, run_to_exit};
use crate::support::{Client, connect_call};

/// `switchboard --bind 127.0.0.1 --port 0 --data-dir DIR` serves with no config
/// file; the logs have one line per connection opened and closed (peer, user,
/// duration, reason) and never a password or an SDP body.
#[test]
fn the_daemon_serves_without_a_config_file_and_logs_connections_safely() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("fast.json");
    fs::write(&config, r#"{"auth":{"bcrypt_cost":4}}"#).unwrap();
    let args = [
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--data-dir",
        data.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    let daemon = Daemon::start(&args, &[], dir.path());
    let mut alice = Client::connect(daemon.addr);
    alice.register("alice", "PASSWORD-SECRET-1");
    alice.login_ok("alice", "PASSWORD-SECRET-1");
    let mut bob = Client::connect(daemon.addr);
    let bob_id = bob.register("bob", "PASSWORD-SECRET-2");
    bob.login_ok("bob", "PASSWORD-SECRET-2");
    let call_id = connect_call(&mut alice, &mut bob, &bob_id);
    alice.send(
        T::SdpOffer,
        json!({"call_id": call_id, "sdp": "SDP-BODY-SECRET"}),
    );
    bob.expect(T::SdpOffer);
    alice.drop_connection();
    bob.expect(T::Hangup);
    drop(bob);
    // The close line is logged after the hang-up it causes is sent: bob may be first.
    let stderr = daemon.stderr_once_it_has("user=1:alice");
    assert!(data.join("users.txt").exists());
    for needle in [
        "connection opened conn=",
        "peer=127.0.0.1:",
        "user=1:alice",
        "duration_ms=",
        "reason=peer closed",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    for secret in ["PASSWORD-SECRET", "SDP-BODY-SECRET"] {
        assert!(!stderr.contains(secret), "{secret} logged:\n{stderr}");
    }
    drop(daemon);

    // With no flags at all but a port, the embedded defaults apply (data/ under the working directory).
    let (code, _, stderr) = run_to_exit(&["--port", "70000"]);
    assert_eq!(code, 2, "{stderr}");
}

/// An invalid configuration stops the start before binding, names the key, exits 2.
#[test]
fn invalid_configuration_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (r#"{"server":{"port":"eighty"}}"#, "server.port"),
        (
            r#"{"server":{"max_connections":0}}"#,
            "server.max_connections",
        ),
        (r#"{"server":{"enable_tls":true}}"#, "server.enable_tls"),
        (r#"{"auth":{"bcrypt_cost":99}}"#, "auth.bcrypt_cost"),
        (r#"{"logging":{"log_level":"chatty"}}"#, "logging.log_level"),
        ("{not json", "invalid configuration"),
    ];
    for (json, key) in cases {
        let path = dir.path().join("bad.json");
        fs::write(&path, json).unwrap();
        let (code, stdout, stderr) =
            run_to_exit(&["--config", path.to_str().unwrap(), "--port", "0"]);
        assert_eq!(code, 2, "{json}: {stderr}");
        assert!(stderr.contains(key), "{json}: {stderr}");
        assert!(stdout.is_empty(), "{json}: bound anyway: {stdout}");
    }
    let (code, _, stderr) = run_to_exit(&["--bind", "not-an-ip", "--port", "0"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("server.bind_address"), "{stderr}");
    let (code, _, stderr) = run_to_exit(&["--config", "/nonexistent/switchboard.json"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("cannot read configuration file"),
        "{stderr}"
    );
}

/// RUST_LOG overrides the configured level; a RoomRTC reference key Switchboard does not use is noted, not fatal.
#[test]
fn rust_log_overrides_the_configured_level() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("quiet.json");
    fs::write(
        &config,
        r#"{"logging":{"log_level":"error","log_file_path":"x.log"},"auth":{"bcrypt_cost":4}}"#,
    )
    .unwrap();
    let data = dir.path().join("data");
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--port",
        "0",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let quiet = Daemon::start(&args, &[], dir.path());
    Client::connect(quiet.addr).barrier();
    let stderr = quiet.stop();
    assert!(!stderr.contains("connection opened"), "{stderr}");
    let loud = Daemon::start(&args, &[("RUST_LOG", "info")], dir.path());
    Client::connect(loud.addr).barrier();
    let stderr = loud.stop();
    assert!(stderr.contains("connection opened"), "{stderr}");
    assert!(
        stderr.contains("logging.log_file_path is a RoomRTC reference key"),
        "{stderr}"
    );
    // Unlike a key nobody knows: that is a typo, and stops the start.
    fs::write(&config, r#"{"switchboard_next":{"x":1}}"#).unwrap();
    let (code, _, stderr) = run_to_exit(&args);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("unknown key switchboard_next"), "{stderr}");
}

/// `--help` documents the exit codes.
#[test]
fn help_documents_the_exit_codes() {
    let (code, stdout, _) = run_to_exit(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("Exit codes") && stdout.contains("invalid configuration"),
        "{stdout}"
    );
}

/// The shipped examples stay valid: server_config.json passes check-config with no
/// warning, and users.txt.example loads.
#[test]
fn the_shipped_example_files_load() {
    let root = env!("CARGO_MANIFEST_DIR");
    let config = format!("{root}/server_config.json");
    let (code, stdout, stderr) = run_to_exit(&["--config", &config, "check-config"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("configuration is valid"), "{stdout}");
    assert!(!stderr.contains("warning"), "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.txt");
    fs::copy(format!("{root}/users.txt.example"), &users).unwrap();
    let store =
        switchboard::infrastructure::UsersFile::open(&users).expect("users.txt.example loads");
    assert_eq!(store.len(), 2);
}
