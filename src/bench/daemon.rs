//! The daemon under test, run as its own process over a scratch data directory.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::application::PasswordHasher;
use crate::metrics::Metrics;

/// The secret every bench user logs in with.
pub const SECRET: &str = "bench-secret";

/// How the daemon is started.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub binary: PathBuf,
    pub bcrypt_cost: u32,
    pub max_connections: usize,
    /// Users `bench0..benchN` written to users.txt before the start.
    pub users: usize,
    /// Serve TLS with this identity (written into the scratch directory).
    pub tls: Option<super::tls::Identity>,
}

/// A running daemon; killed and its directory removed when dropped.
pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
}

/// What /proc says about a process.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct ProcStats {
    pub rss_kib: u64,
    pub threads: u64,
    pub fds: u64,
}

fn other(message: String) -> io::Error {
    io::Error::other(message)
}

/// A fresh scratch directory under the system temp dir.
///
/// # Errors
/// If it cannot be created.
pub fn scratch_dir(tag: &str) -> io::Result<PathBuf> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "switchboard-bench-{tag}-{}-{nanos}",
        std::process::id()
    ));
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Username of bench user `i`.
pub fn username(i: usize) -> String {
    format!("bench{i}")
}

/// Writes users.txt with `n` users sharing one bcrypt hash of [`SECRET`] at
/// `cost` (hashed once, by the daemon's own hasher: registering thousands of
/// users one fsync at a time is not what the bench measures). User `i` gets id `i + 1`.
///
/// # Errors
/// If hashing or writing fails.
pub fn write_users(path: &Path, n: usize, cost: u32) -> io::Result<()> {
    let hasher = PasswordHasher::new(cost, 1, Arc::new(Metrics::default()))
        .map_err(|e| other(format!("bcrypt cost {cost}: {e}")))?;
    let hash = hasher
        .hash(SECRET)
        .map_err(|e| other(format!("hashing: {e}")))?;
    let mut text = String::with_capacity(n * 90 + 128);
    text.push_str("# Switchboard users: id|username|bcrypt_hash|created_at (unix seconds)\n");
    for i in 0..n {
        text.push_str(&format!("{}|{}|{hash}|1700000000\n", i + 1, username(i)));
    }
    fs::write(path, text)
}

impl Daemon {
    /// Starts the daemon on 127.0.0.1, port 0, with its admin listener, and
    /// waits for both `listening on` lines.
    ///
    /// # Errors
    /// If it cannot be spawned or does not print its addresses within 30 s.
    pub fn start(opts: &DaemonOptions) -> io::Result<Daemon> {
        let dir = scratch_dir("daemon")?;
        write_users(&dir.join("users.txt"), opts.users, opts.bcrypt_cost)?;
        let config = dir.join("config.json");
        let json = serde_json::json!({
            "server": {
                "max_connections": opts.max_connections,
                "idle_timeout_secs": 3600,
            },
            "auth": { "bcrypt_cost": opts.bcrypt_cost },
            "logging": { "log_level": "warn" },
            // Every simulated client comes from 127.0.0.1 and sends as fast as
            // the workload says: the per-client limits would measure themselves.
            "limits": {
                "max_connections_per_ip": opts.max_connections,
                "frames_per_second": 1e9,
                "frame_burst": 1_000_000_000,
                "registrations_per_ip_per_minute": 1_000_000_000,
                "login_timeout_secs": 3600,
            },
        });
        fs::write(&config, json.to_string())?;
        let stderr = fs::File::create(dir.join("daemon.stderr"))?;
        let mut command = Command::new(&opts.binary);
        if let Some(identity) = &opts.tls {
            let (cert, key) = identity.write(&dir)?;
            command.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        let mut child = command
            .arg("--bind")
            .arg("127.0.0.1")
            .args(["--port", "0", "--admin-bind", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&dir)
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| other(format!("cannot run {}: {e}", opts.binary.display())))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| other("no stdout".into()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut addr = None;
        let mut admin = None;
        while addr.is_none() || admin.is_none() {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
                let _ = child.kill();
                let _ = child.wait();
                let err = fs::read_to_string(dir.join("daemon.stderr")).unwrap_or_default();
                return Err(other(format!("daemon printed no address; stderr: {err}")));
            };
            if let Some(a) = line.strip_prefix("admin listening on ") {
                admin = a.parse().ok();
            } else if let Some(a) = line.strip_prefix("listening on ") {
                addr = a.parse().ok();
            }
        }
        match (addr, admin) {
            (Some(addr), Some(admin)) => Ok(Daemon {
                child,
                addr,
                admin,
                dir,
            }),
            _ => Err(other("unreadable address lines".into())),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// # Errors
    /// If /proc cannot be read.
    pub fn proc_stats(&self) -> io::Result<ProcStats> {
        proc_stats(self.pid())
    }

    /// One counter from /metrics, e.g. `switchboard_push_frames_encoded_total` or
    /// `switchboard_frames_out_total{type="USER_STATE_UPDATE"}`; 0 if absent.
    /// `None` (with a warning) if the admin listener does not answer within
    /// 30 s: a daemon saturated with thousands of busy threads may not, and
    /// the run's other figures are still worth reporting.
    pub fn metric(&self, name: &str) -> Option<u64> {
        match http_get(self.admin, "/metrics") {
            Ok(text) => Some(metric_value(&text, name).unwrap_or(0)),
            Err(err) => {
                eprintln!("switchboard-bench: warning: /metrics did not answer: {err}");
                None
            }
        }
    }

    /// One counter from /metrics; `None` if this daemon does not have it
    /// (one older than the counter) or /metrics does not answer.
    pub fn metric_if_present(&self, name: &str) -> Option<u64> {
        http_get(self.admin, "/metrics")
            .ok()
            .and_then(|text| metric_value(&text, name))
    }

    /// The daemon's stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("daemon.stderr")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Reads VmRSS and Threads from /proc/PID/status and counts /proc/PID/fd.
///
/// # Errors
/// If /proc cannot be read (the process is gone).
pub fn proc_stats(pid: u32) -> io::Result<ProcStats> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    Ok(ProcStats {
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
        fds,
    })
}

/// A plain HTTP/1.0 GET; returns the body.
fn http_get(addr: SocketAddr, path: &str) -> io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default())
}

/// The value of a sample line `NAME VALUE` in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Raises the soft open-files limit to the hard limit (children inherit it);
/// returns the limit now in force.
pub fn raise_nofile_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            },
        );
    }
    getrlimit(Resource::Nofile).current
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Labelled and plain samples are found by their full name; comments are not.
    #[test]
    fn metric_values_are_read_by_full_name() {
        let text = "# HELP x_total y\nx_total 12\nf{type=\"A\"} 3\nf{type=\"AB\"} 4\n";
        assert_eq!(metric_value(text, "x_total"), Some(12));
        assert_eq!(metric_value(text, "f{type=\"AB\"}"), Some(4));
        assert_eq!(metric_value(text, "missing"), None);
    }

    /// This process's own /proc entry reads as a live process.
    #[test]
    fn proc_stats_read_this_process() {
        let stats = proc_stats(std::process::id()).unwrap();
        assert!(stats.rss_kib > 0 && stats.threads >= 1 && stats.fds >= 3);
    }
}
