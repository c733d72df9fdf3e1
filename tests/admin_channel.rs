//! The admin channel and start-up errors, through the real binary: `switchboard
//! user ...` against a running daemon (its admin socket) and a stopped one
//! (the files), read-only commands that create nothing, and start-up failures
//! that say what is wrong and leave nothing behind.

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use rustix::process::Signal;
use serde_json::json;
use switchboard::tcp::MessageType as T;

use crate::support::Client;
use crate::support::daemon::{Daemon, configured, run_with_env};

fn fast() -> serde_json::Value {
    json!({"auth": {"bcrypt_cost": 4}, "server": {"drain_timeout_secs": 5}})
}

/// Runs `switchboard ARGS... EXTRA...`; returns (code, stdout, stderr).
fn run(base: &[String], extra: &[&str]) -> (i32, String, String) {
    let args: Vec<&str> = base
        .iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
        .collect();
    run_with_env(&args, &[])
}

/// The usernames `user list` printed, checking every line's shape:
/// ID, USERNAME, and created_at as an RFC 3339 UTC date.
fn listed(out: &str) -> Vec<String> {
    out.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 3, "{line:?}");
            assert!(fields[0].parse::<u64>().is_ok(), "{line:?}");
            let date = fields[2].as_bytes();
            assert_eq!(date.len(), 20, "{line:?}");
            assert!(
                fields[2].starts_with("20") && date[10] == b'T' && fields[2].ends_with('Z'),
                "created_at is not an RFC 3339 UTC date: {line:?}"
            );
            fields[1].to_string()
        })
        .collect()
}

/// The entries of `dir`, sorted, for "nothing was created" checks.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// While the daemon runs, `user add|list|passwd|kick|del` work through its admin
/// socket: an added user is registered as REGISTER would (online clients list
/// it), passwd needs no old password and voids the user's tokens, kick ends
/// the live session with a clear ERROR and revokes the tokens, del ends the
/// session as ACCOUNT_DELETE does. Once the daemon stops, the socket is gone
/// and the same commands work on the files.
#[test]
fn user_commands_administer_a_running_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let base = configured(dir.path(), &fast(), &[]);
    let mut daemon = Daemon::start(&base, &[], dir.path());
    assert!(data.join("admin.sock").exists(), "no admin socket");

    let mut bob = Client::connect(daemon.addr);
    let bob_id = bob.register("bob", "bob-pw");
    bob.login_ok("bob", "bob-pw");

    let (code, out, err) = run(&base, &["user", "add", "alice", "--password", "pw-1"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "added user_id=2 username=alice\n"),
        "{err}"
    );
    // Registered as REGISTER does: in every USER_LIST from now on, and logs in.
    bob.send(T::UserListRequest, json!({}));
    let users = bob.expect(T::UserListResponse).body["users"].clone();
    assert_eq!(users[1]["username"], "alice", "{users}");
    assert_eq!(users[1]["state"], "Disconnected", "{users}");
    let mut alice = Client::connect(daemon.addr);
    let old_token = alice.login_v2("alice", "pw-1");
    bob.expect_state("2", "Available");

    let (code, _, err) = run(&base, &["user", "add", "ALICE", "--password", "x"]);
    assert_eq!(code, 1, "a taken name: {err}");
    assert!(err.contains("username is taken"), "{err}");
    let (code, _, err) = run(&base, &["user", "add", "a|b", "--password", "x"]);
    assert_eq!(code, 2, "an invalid name: {err}");

    let (code, out, err) = run(&base, &["user", "list"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(listed(&out), ["bob", "alice"]);

    // passwd: no old password; the old one and the old token stop working.
    let (code, out, err) = run(&base, &["user", "passwd", "alice", "--password", "pw-2"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "password changed user_id=2 username=alice\n"),
        "{err}"
    );
    let mut check = Client::connect(daemon.addr);
    assert_eq!(check.resume(&old_token).body["code"], 401);
    assert_eq!(check.login("alice", "pw-1").body["success"], false);
    let mut again = Client::connect(daemon.addr);
    let new_token = again.login_v2("alice", "pw-2");
    // That login took alice's session over from the first connection.
    alice.expect_error(409);

    // kick: the session ends with a clear ERROR, the tokens are revoked.
    let (code, out, err) = run(&base, &["user", "kick", "alice"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "ended the session of user_id=2 username=alice; its session tokens are revoked\n"
    );
    let e = again.expect_error(401);
    assert_eq!(e.str("message"), "session ended by an operator");
    assert!(again.is_closed_by_server());
    bob.expect_state("2", "Disconnected");
    assert_eq!(
        Client::connect(daemon.addr).resume(&new_token).body["code"],
        401
    );
    let (code, out, _) = run(&base, &["user", "kick", "alice"]);
    assert_eq!(code, 0);
    assert!(out.contains("had no session"), "{out}");
    Client::connect(daemon.addr).login_ok("alice", "pw-2");

    // del: as ACCOUNT_DELETE, the session ends and the account is gone.
    let (code, out, err) = run(&base, &["user", "del", "bob"]);
    assert_eq!(
        (code, out.as_str()),
        (0, &*format!("deleted user_id={bob_id} username=bob\n")),
        "{err}"
    );
    let e = bob.expect_error(401);
    assert_eq!(e.str("message"), "account deleted");
    assert!(bob.is_closed_by_server());
    assert_eq!(
        Client::connect(daemon.addr).login("bob", "bob-pw").body["success"],
        false
    );
    let (code, _, err) = run(&base, &["user", "del", "bob"]);
    assert_eq!(code, 1);
    assert!(err.contains("no such user: bob"), "{err}");

    // Stopped: the socket is removed, and the commands work on the files.
    daemon.signal(Signal::TERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        !data.join("admin.sock").exists(),
        "admin socket left behind"
    );
    let (code, out, err) = run(&base, &["user", "list"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(listed(&out), ["alice"]);
    let (code, out, err) = run(&base, &["user", "kick", "alice"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("had no session"), "{out}");
}

/// A daemon killed without a chance to clean up leaves its socket; the files
/// are then free (the commands work on them), and the next daemon replaces the
/// socket and answers on it.
#[test]
fn a_stale_admin_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let base = configured(dir.path(), &fast(), &[]);
    let crashed = Daemon::start(&base, &[], dir.path());
    drop(crashed); // SIGKILL
    assert!(data.join("admin.sock").exists());
    let (code, out, err) = run(&base, &["user", "add", "carol", "--password", "pw"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "added user_id=1 username=carol\n"),
        "{err}"
    );

    let daemon = Daemon::start(&base, &[], dir.path());
    let (code, out, err) = run(&base, &["user", "add", "dave", "--password", "pw"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "added user_id=2 username=dave\n"),
        "{err}"
    );
    Client::connect(daemon.addr).login_ok("dave", "pw");
    let (code, out, _) = run(&base, &["user", "list"]);
    assert_eq!(code, 0);
    assert_eq!(listed(&out), ["carol", "dave"]);
}

/// Read-only and changing commands on a data directory that does not exist
/// say so (exit 1) and create nothing; only `add` creates it.
#[test]
fn user_commands_on_a_missing_data_directory_say_so_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("TYPO");
    let typo_arg = typo.to_str().unwrap();
    for command in [
        &["user", "list"][..],
        &["user", "del", "alice"],
        &["user", "kick", "alice"],
        &["user", "passwd", "alice", "--password", "x"],
    ] {
        let mut args = vec!["--data-dir", typo_arg];
        args.extend_from_slice(command);
        let (code, out, err) = run_with_env(&args, &[]);
        assert_eq!(code, 1, "{command:?}: {err}");
        assert!(out.is_empty(), "{command:?}: {out}");
        assert!(
            err.contains(&format!("data directory {typo_arg} does not exist")),
            "{command:?}: {err}"
        );
        assert!(!typo.exists(), "{command:?} created {typo_arg}");
    }
    // An existing directory that was never served: no users, and still nothing created.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (code, out, err) = run_with_env(
        &["--data-dir", empty.to_str().unwrap(), "user", "list"],
        &[],
    );
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert!(entries(&empty).is_empty(), "{:?}", entries(&empty));
}

/// Start-up failures name what is wrong and what to do, exit 1, and write
/// nothing: a busy admin port (named as the admin listener), a busy client
/// port, a data directory that is a file or cannot be created, and a second
/// daemon on the same data directory.
#[test]
fn start_up_errors_say_what_is_wrong_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, fast().to_string()).unwrap();
    let config_arg = config.to_str().unwrap();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let busy_port = busy.local_addr().unwrap().port().to_string();
    let serve = |extra: &[&str]| {
        let mut args = vec!["--config", config_arg, "--bind", "127.0.0.1"];
        args.extend_from_slice(extra);
        run_with_env(&args, &[])
    };

    let (code, out, err) = serve(&[
        "--port",
        "0",
        "--data-dir",
        data_arg,
        "--admin-bind",
        busy_addr.as_str(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "cannot listen for the admin HTTP listener (admin.bind_address) on {busy_addr}: Address already in use; "
        )) && err.contains("choose another port"),
        "{err}"
    );
    assert!(!out.contains("listening on"), "{out}");
    assert!(
        !data.exists(),
        "the data directory was created: {:?}",
        entries(&data)
    );

    let (code, _, err) = serve(&["--port", busy_port.as_str(), "--data-dir", data_arg]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("cannot listen for clients (server.bind_address, server.port) on {busy_addr}: Address already in use; ")),
        "{err}"
    );
    assert!(
        !data.exists(),
        "the data directory was created: {:?}",
        entries(&data)
    );

    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let file_arg = file.to_str().unwrap();
    let (code, _, err) = serve(&["--port", "0", "--data-dir", file_arg]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "data directory {file_arg} is a file, not a directory; choose a directory"
        )),
        "{err}"
    );
    let below = file.join("data");
    let (code, _, err) = serve(&["--port", "0", "--data-dir", below.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "cannot create data directory {}: Not a directory",
            below.display()
        )),
        "{err}"
    );
    if !rustix::process::geteuid().is_root() {
        use std::os::unix::fs::PermissionsExt;
        let locked = dir.path().join("read-only");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).unwrap();
        let inside = locked.join("data");
        let (code, _, err) = serve(&["--port", "0", "--data-dir", inside.to_str().unwrap()]);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains(&format!(
                "cannot create data directory {}: Permission denied",
                inside.display()
            )),
            "{err}"
        );
        assert!(!err.contains("switchboard.lock"), "{err}");
    }

    // A second daemon on the same data directory, on another port or the same one.
    let first = Daemon::start(
        &[
            "--config",
            config_arg,
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--data-dir",
            data_arg,
        ],
        &[],
        dir.path(),
    );
    let before = entries(&data);
    let expected = format!(
        "another switchboard (pid {}) is already serving data directory {data_arg}; stop it or choose another --data-dir",
        first.child.id()
    );
    let (code, out, err) = serve(&["--port", "0", "--data-dir", data_arg]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&expected), "{err}");
    assert!(out.is_empty(), "{out}");
    let same_port = first.addr.port().to_string();
    let (code, _, err) = serve(&["--port", same_port.as_str(), "--data-dir", data_arg]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&expected), "{err}");
    assert_eq!(entries(&data), before);
    drop(busy);
}
