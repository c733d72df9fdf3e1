//! users.txt: durable registrations, restarts, torn lines and malformed files.

use std::fs;

use serde_json::json;
use switchboard::tcp::MessageType as T;

use crate::support::daemon::{Daemon, run_to_exit};
use crate::support::{Client, TestServer};

/// A registration is on disk by the time it is answered, in the documented format.
#[test]
fn a_registration_is_on_disk_when_answered() {
    let server = TestServer::start();
    let mut c = server.client();
    let id = c.register("alice", "pw");
    let content = fs::read_to_string(server.users_file()).unwrap();
    let line = content
        .lines()
        .find(|l| !l.starts_with('#'))
        .expect("a user line");
    let fields: Vec<&str> = line.split('|').collect();
    assert_eq!(fields.len(), 4, "{line}");
    assert_eq!((fields[0], fields[1]), (id.as_str(), "alice"));
    assert!(
        fields[2].starts_with("$2") && fields[2].len() == 60,
        "bcrypt hash: {}",
        fields[2]
    );
    assert!(fields[3].parse::<u64>().unwrap() > 1_700_000_000);
    assert!(
        !content.contains("|pw|"),
        "the secret itself is never stored"
    );
}

/// Users survive a restart with the same ids and passwords.
#[test]
fn users_survive_a_restart() {
    let server = TestServer::start();
    let mut c = server.client();
    let alice = c.register("alice", "pw-a");
    let bob = c.register("bob", "pw-b");
    drop(c);
    let server = server.restart();
    let mut c = server.client();
    let f = c.login("bob", "pw-b");
    assert_eq!(f.body["user_id"], bob);
    c.send(T::UserListRequest, json!({}));
    let list = c.expect(T::UserListResponse);
    assert_eq!(list.body["users"][0]["user_id"], alice);
    assert_eq!(
        c.register("carol", "pw"),
        "3",
        "ids continue after the highest"
    );
}

const HASH: &str = "$2b$04$J9iM3f8Oc1kqH5x2aWnUCe7tC3D0eKc1o0T1eO9B5mQf0sP0C7rOa";

/// A torn last line (a crash mid-append) is dropped with a warning; the rest loads.
#[test]
fn a_torn_last_line_is_dropped_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.txt");
    let good = {
        // A real hash of "pw", so the surviving user can log in.
        let hash = bcrypt::hash("pw", 4).unwrap();
        format!("# users\n1|alice|{hash}|1700000000\n")
    };
    fs::write(&users, format!("{good}2|bob|{HASH}|17000")).unwrap();
    let data = dir.path().to_str().unwrap();
    let daemon = Daemon::start(
        &["--bind", "127.0.0.1", "--port", "0", "--data-dir", data],
        &[],
        dir.path(),
    );
    let mut c = Client::connect(daemon.addr);
    c.login_ok("alice", "pw");
    assert_eq!(
        Client::connect(daemon.addr).login("bob", "pw").body["code"],
        401
    );
    assert_eq!(fs::read_to_string(&users).unwrap(), good);
    let stderr = daemon.stop();
    assert!(stderr.contains("dropping torn last line 3"), "{stderr}");
}

/// Any other malformed line refuses the start, naming file and line; exit code 1.
#[test]
fn a_malformed_users_file_refuses_the_start_with_the_line_number() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.txt");
    fs::write(
        &users,
        format!("# users\n1|alice|{HASH}|1\nnot a user line\n2|bob|{HASH}|2\n"),
    )
    .unwrap();
    let (code, stdout, stderr) =
        run_to_exit(&["--port", "0", "--data-dir", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "stderr: {stderr}");
    assert!(
        stderr.contains("users.txt:3: expected 4 fields"),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "nothing was bound: {stdout}");
}
