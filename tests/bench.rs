//! Smoke runs of every `switchboard-bench` workload: a few clients for a
//! second or two against the real daemon binary. Counts must be consistent;
//! no timing is asserted (the machine may be busy).

use std::process::Command;

use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_switchboard-bench");
const DAEMON: &str = env!("CARGO_BIN_EXE_switchboard");

/// Runs a workload and returns its JSON line, failing with the whole output.
fn run(args: &[&str]) -> Value {
    let out = Command::new(BENCH)
        .args(["--daemon", DAEMON])
        .args(args)
        .output()
        .expect("run switchboard-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "`{BENCH} {}` failed\nstdout:\n{stdout}\nstderr:\n{stderr}",
        args.join(" ")
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line in:\n{stdout}\nstderr:\n{stderr}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn count(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no {path} in {v}"))
}

/// Closed loop: against both servers every probe sent comes back, none lost or reordered.
#[test]
fn the_closed_loop_relay_gets_every_probe_back_from_both_servers() {
    let v = run(&["relay", "--pairs", "3", "--seconds", "1", "--size", "64"]);
    for target in ["/switchboard", "/floor"] {
        let sent = count(&v, &format!("{target}/sent"));
        assert!(sent > 0, "{v}");
        assert_eq!(count(&v, &format!("{target}/received")), sent, "{v}");
        assert_eq!(count(&v, &format!("{target}/rtt/count")), sent, "{v}");
        for zero in ["errors", "lost", "reordered"] {
            assert_eq!(count(&v, &format!("{target}/{zero}")), 0, "{zero}: {v}");
        }
    }
    assert!(v["ratio_to_floor"]["throughput"].as_f64().is_some(), "{v}");
}

/// Over TLS (closed loop, the daemon on a self-signed certificate made for
/// the run): every probe comes back, and relays are written through.
#[test]
fn the_relay_over_tls_gets_every_probe_back() {
    let v = run(&[
        "relay",
        "--pairs",
        "2",
        "--seconds",
        "1",
        "--size",
        "64",
        "--tls",
        "--no-floor",
    ]);
    assert_eq!(v["tls"], true, "{v}");
    let sent = count(&v, "/switchboard/sent");
    assert!(sent > 0, "{v}");
    assert_eq!(count(&v, "/switchboard/received"), sent, "{v}");
    for zero in ["errors", "lost", "reordered"] {
        assert_eq!(count(&v, &format!("/switchboard/{zero}")), 0, "{zero}: {v}");
    }
    assert!(count(&v, "/daemon_relays_written_through") > 0, "{v}");
}

/// Open loop: probes are sent on schedule and, after the grace period, none is missing.
#[test]
fn the_open_loop_relay_accounts_for_every_probe() {
    let v = run(&[
        "relay",
        "--pairs",
        "2",
        "--seconds",
        "1",
        "--rate",
        "200",
        "--no-floor",
    ]);
    let sent = count(&v, "/switchboard/sent");
    assert!(sent > 0, "{v}");
    assert_eq!(
        count(&v, "/switchboard/received") + count(&v, "/switchboard/lost"),
        sent,
        "{v}"
    );
    assert_eq!(count(&v, "/switchboard/errors"), 0, "{v}");
}

/// Idle: every client logs in, each holds one thread and two descriptors in the daemon.
#[test]
fn idle_clients_all_log_in_and_are_counted_in_the_daemon() {
    let v = run(&["idle", "--clients", "20"]);
    assert_eq!(count(&v, "/logins_ok"), 20, "{v}");
    assert_eq!(count(&v, "/connections_open"), 20, "{v}");
    // Each login's Available reaches every client already logged in (and,
    // when it is batched with later logins, those too).
    let updates = count(&v, "/state_updates");
    assert!((20 * 19 / 2..=20 * 19).contains(&updates), "{v}");
    assert_eq!(count(&v, "/errors"), 0, "{v}");
    assert_eq!(
        count(&v, "/after/fds") - count(&v, "/before/fds"),
        40,
        "{v}"
    );
}

/// Storm: everyone sees everyone, and each presence broadcast is encoded once.
#[test]
fn a_login_storm_settles_and_encodes_each_broadcast_once() {
    let v = run(&["storm", "--clients", "30"]);
    assert_eq!(count(&v, "/logins_ok"), 30, "{v}");
    assert_eq!(count(&v, "/presence_complete"), 30, "{v}");
    assert_eq!(count(&v, "/errors"), 0, "{v}");
    let sent = count(&v, "/daemon_state_updates_sent");
    assert!((30 * 29 / 2..=30 * 29).contains(&sent), "{v}");
    // One encoding per login (at most), however many clients it reached.
    assert!(count(&v, "/daemon_frames_encoded") <= 30, "{v}");
}

/// Setup: every scripted call completes.
#[test]
fn scripted_calls_all_complete() {
    let v = run(&["setup", "--pairs", "2", "--calls", "5"]);
    assert_eq!(count(&v, "/calls"), 10, "{v}");
    assert_eq!(count(&v, "/errors"), 0, "{v}");
}

/// Reconnect: every client logs in with its password and gets a token, then
/// every client resumes with it, and no password hash runs for the resumes.
#[test]
fn the_reconnect_workload_resumes_every_client_without_hashing() {
    let v = run(&["reconnect", "--clients", "20"]);
    assert_eq!(count(&v, "/login/ok"), 20, "{v}");
    assert_eq!(count(&v, "/login/tokens_missing"), 0, "{v}");
    assert_eq!(count(&v, "/resume/ok"), 20, "{v}");
    assert_eq!(count(&v, "/resume/daemon_resumes"), 20, "{v}");
    assert_eq!(
        count(&v, "/password_hashes/after_resume"),
        count(&v, "/password_hashes/after_login"),
        "{v}"
    );
    assert_eq!(
        count(&v, "/login/errors") + count(&v, "/resume/errors"),
        0,
        "{v}"
    );
}

/// Relay during a storm: both phases come from one run, every probe comes
/// back (none lost or reordered) and every storm client logs in and sees the others.
#[test]
fn the_relay_under_a_login_storm_loses_nothing() {
    let v = run(&[
        "relay-storm",
        "--pairs",
        "2",
        "--clients",
        "30",
        "--seconds",
        "1",
        "--size",
        "64",
    ]);
    let sent = count(&v, "/sent");
    assert!(count(&v, "/idle/round_trips") > 0, "{v}");
    assert_eq!(count(&v, "/received"), sent, "{v}");
    for zero in ["/lost", "/reordered", "/errors", "/storm_errors"] {
        assert_eq!(count(&v, zero), 0, "{zero}: {v}");
    }
    assert_eq!(count(&v, "/storm_logins_ok"), 30, "{v}");
    assert_eq!(count(&v, "/storm_presence_complete"), 30, "{v}");
    // The storm phase may be too short for a round trip to start in it; its
    // figures are there either way.
    assert!(v.pointer("/storm/rtt/p99_us").is_some(), "{v}");
    assert!(v["ratio_storm_to_idle"]["p99"].as_f64().is_some(), "{v}");
}

/// Rooms: every participant joins, every acknowledged message reaches every
/// participant of its room in seq order, and each message is encoded once.
#[test]
fn rooms_deliver_every_message_to_every_participant_encoded_once() {
    let v = run(&[
        "rooms",
        "--rooms",
        "3",
        "--size",
        "4",
        "--seconds",
        "1",
        "--text",
        "64",
    ]);
    assert_eq!(count(&v, "/participants"), 12, "{v}");
    let acknowledged = count(&v, "/chat/acknowledged");
    assert!(acknowledged > 0, "{v}");
    assert_eq!(count(&v, "/chat/sent"), acknowledged, "{v}");
    assert_eq!(count(&v, "/chat/delivered"), acknowledged * 4, "{v}");
    assert_eq!(count(&v, "/chat/latency/count"), acknowledged * 4, "{v}");
    for zero in ["/chat/lost", "/chat/out_of_order", "/errors"] {
        assert_eq!(count(&v, zero), 0, "{zero}: {v}");
    }
    assert_eq!(count(&v, "/daemon_room_messages"), acknowledged, "{v}");
    // One encoding per message, shared by its four recipients.
    assert_eq!(count(&v, "/push_frames_encoded"), acknowledged, "{v}");
    assert!(v["rss_per_participant_kib"].as_f64().is_some(), "{v}");
}

/// Rooms, open loop: messages leave on schedule and none is lost.
#[test]
fn open_loop_rooms_lose_nothing() {
    let v = run(&[
        "rooms",
        "--rooms",
        "2",
        "--size",
        "3",
        "--seconds",
        "1",
        "--rate",
        "120",
    ]);
    let acknowledged = count(&v, "/chat/acknowledged");
    assert!(acknowledged > 0, "{v}");
    assert_eq!(count(&v, "/chat/sent"), acknowledged, "{v}");
    assert_eq!(count(&v, "/chat/delivered"), acknowledged * 3, "{v}");
    assert_eq!(count(&v, "/chat/lost") + count(&v, "/errors"), 0, "{v}");
}
