//! Faults: a crash mid-write, a failing disk, and resources over many cycles.

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use serde_json::json;
use switchboard::application::{StoreError, UserListing, UserRecord, UserStore};
use switchboard::domain::UserId;
use switchboard::tcp::MessageType as T;

use crate::support::daemon::{Daemon, configured};
use crate::support::{Client, TestServer, connect_call};

fn config() -> serde_json::Value {
    json!({
        "auth": {"bcrypt_cost": 4},
        "limits": {"registrations_per_ip_per_minute": 1_000_000, "max_connections_per_ip": 1000, "frames_per_second": 1e6, "frame_burst": 1_000_000}
    })
}

/// kill -9 in the middle of a burst of registrations: after a restart every
/// acknowledged registration is there and the file loads.
#[test]
fn kill_9_during_registrations_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = configured(dir.path(), &config(), &[]);
    let daemon = Daemon::start(&args, &[], dir.path());
    let acked = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let (acked, addr) = (acked.clone(), daemon.addr);
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for n in 0.. {
                    let name = format!("w{w}_{n}");
                    c.send(
                        T::RegisterRequest,
                        json!({"username": name, "password_hash": "pw"}),
                    );
                    match c.try_next() {
                        Ok(f) if f.body["success"] == true => acked.lock().unwrap().push(name),
                        _ => return,
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 150 {
        assert!(Instant::now() < deadline, "registrations too slow");
        std::thread::sleep(Duration::from_millis(5));
    }
    daemon.signal(Signal::KILL);
    for w in workers {
        w.join().unwrap();
    }
    drop(daemon);
    let acked: Vec<String> = acked.lock().unwrap().clone();
    let restarted = Daemon::start(&args, &[], dir.path());
    let text = std::fs::read_to_string(data.join("users.txt")).unwrap();
    let stored: HashSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split('|').nth(1))
        .collect();
    let missing: Vec<&String> = acked
        .iter()
        .filter(|n| !stored.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged registrations lost: {missing:?}",
        missing.len()
    );
    let mut c = Client::connect(restarted.addr);
    c.login_ok(&acked[acked.len() - 1], "pw");
}

/// A store whose disk is full: every write fails as a full disk does.
struct FullDisk(Arc<dyn UserStore>);

impl UserStore for FullDisk {
    fn find_by_name(&self, username: &str) -> Option<UserRecord> {
        self.0.find_by_name(username)
    }
    fn find_by_id(&self, id: UserId) -> Option<UserRecord> {
        self.0.find_by_id(id)
    }
    fn list(&self) -> UserListing {
        self.0.list()
    }
    fn create(&self, username: &str, hash: &str, at: u64) -> Result<UserRecord, StoreError> {
        if username == "first" {
            return self.0.create(username, hash, at);
        }
        Err(StoreError::Io(io::Error::from_raw_os_error(28)))
    }
    fn set_password_hash_of(&self, _: UserId, _: &str) -> Result<bool, StoreError> {
        Err(StoreError::Io(io::Error::from_raw_os_error(28)))
    }
    fn delete_user(&self, _: UserId) -> Result<bool, StoreError> {
        Err(StoreError::Io(io::Error::from_raw_os_error(28)))
    }
}

/// When storage fails, registration answers 500 with the reason, nothing of it
/// remains (the name is free, the file unchanged), and logins keep working.
#[test]
fn a_failing_disk_fails_registration_with_500_and_logins_go_on() {
    let server = TestServer::start_with_store(|store| Arc::new(FullDisk(store)));
    let mut c = server.client();
    c.register("first", "pw");
    let before = std::fs::read(server.users_file()).unwrap();
    c.send(
        T::RegisterRequest,
        json!({"username": "second", "password_hash": "pw"}),
    );
    let f = c.expect(T::RegisterResponse);
    assert_eq!(f.body["code"], 500, "{}", f.body);
    assert!(
        f.str("error")
            .contains("could not store the account: No space left on device"),
        "{}",
        f.body
    );
    assert_eq!(std::fs::read(server.users_file()).unwrap(), before);
    c.login_ok("first", "pw");
    let mut other = server.client();
    assert_eq!(
        other.login("second", "pw").body["code"],
        401,
        "the failed account does not exist"
    );
}

/// On a full disk a password change or an account deletion answers ERROR 500
/// and changes nothing: the old password and the account stay.
#[test]
fn a_failing_disk_fails_password_changes_and_deletions_with_500() {
    let server = TestServer::start_with_store(|store| Arc::new(FullDisk(store)));
    let mut c = server.client();
    c.register("first", "pw");
    c.login_ok("first", "pw");
    c.send(
        T::PasswordChangeRequest,
        json!({"old_password_hash": "pw", "new_password_hash": "new"}),
    );
    let e = c.expect_error(500);
    assert!(
        e.str("message")
            .contains("could not store the new password: No space left on device"),
        "{}",
        e.body
    );
    c.send(T::AccountDeleteRequest, json!({"password_hash": "pw"}));
    let e = c.expect_error(500);
    assert!(
        e.str("message").contains("could not delete the account"),
        "{}",
        e.body
    );
    c.send(T::UserListRequest, json!({}));
    c.expect(T::UserListResponse);
    server.client().login_ok("first", "pw");
}

fn proc_count(pid: u32, what: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/{what}"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Connect/login/call/hangup/disconnect cycles leave no thread, descriptor or
/// table entry behind in the daemon. SWITCHBOARD_CYCLES sets the count
/// (scripts/leakcheck.sh runs 10,000 on a release build and prints the figures).
#[test]
fn cycles_leave_no_threads_descriptors_or_sessions_behind() {
    let cycles: usize = std::env::var("SWITCHBOARD_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let args = configured(dir.path(), &config(), &["--log-level", "warn"]);
    let daemon = Daemon::start(&args, &[], dir.path());
    let pid = daemon.child.id();
    let mut setup = Client::connect(daemon.addr);
    setup.register("alice", "pw");
    let bob_id = setup.register("bob", "pw");
    drop(setup);
    let settle = |threads: usize, fds: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while (proc_count(pid, "task"), proc_count(pid, "fd")) != (threads, fds)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        (proc_count(pid, "task"), proc_count(pid, "fd"))
    };
    // Baseline: the daemon with no client connected.
    let mut probe = Client::connect(daemon.addr);
    probe.barrier();
    drop(probe);
    std::thread::sleep(Duration::from_millis(100));
    let baseline = (proc_count(pid, "task"), proc_count(pid, "fd"));
    let started = Instant::now();
    for i in 0..cycles {
        let mut alice = Client::connect(daemon.addr);
        alice.login_ok("alice", "pw");
        let mut bob = Client::connect(daemon.addr);
        bob.login_ok("bob", "pw");
        let call_id = connect_call(&mut alice, &mut bob, &bob_id);
        alice.send(T::IceCandidate, json!({"call_id": call_id, "candidate": format!("c{i}"), "sdp_mid": "0", "sdp_mline_index": 0}));
        bob.expect(T::IceCandidate);
        alice.send(T::Hangup, json!({"call_id": call_id}));
        bob.expect(T::Hangup);
        alice.drop_connection();
        bob.drop_connection();
    }
    let elapsed = started.elapsed();
    let after = settle(baseline.0, baseline.1);
    println!(
        "cycles={cycles} seconds={:.1} threads before={} after={} fds before={} after={}",
        elapsed.as_secs_f64(),
        baseline.0,
        after.0,
        baseline.1,
        after.1
    );
    assert_eq!(after, baseline, "(threads, fds) after {cycles} cycles");
    // And the tables: a fresh user list shows both Disconnected.
    let mut check = Client::connect(daemon.addr);
    check.register("carol", "pw");
    check.login_ok("carol", "pw");
    check.send(T::UserListRequest, json!({}));
    let users = check.expect(T::UserListResponse);
    let states: Vec<&str> = users.body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["Disconnected", "Disconnected", "Available"]);
}
