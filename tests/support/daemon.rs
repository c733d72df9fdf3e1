//! Runs the real `switchboard` binary and reads its `listening on ADDR` line.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::WAIT;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// A daemon process; killed when dropped. stderr goes to a file for inspection.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub stderr_path: PathBuf,
    pub command: String,
}

impl Daemon {
    /// Starts `switchboard ARGS` with `envs`, waiting for its address line.
    pub fn start(args: &[impl AsRef<str>], envs: &[(&str, &str)], log_dir: &Path) -> Daemon {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let stderr_path = log_dir.join("daemon.stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut cmd = Command::new(BIN);
        cmd.args(&args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let command = format!("{BIN} {}", args.join(" "));
        let mut child = cmd.spawn().expect("spawn daemon");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "`{command}` printed no address; stderr:\n{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
        };
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("`{command}` printed {line:?}, not `listening on ADDR`"));
        Daemon {
            child,
            addr,
            stderr_path,
            command,
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The stderr once it contains `needle` (or after [`WAIT`], whatever it holds):
    /// a log line may be written just after the effect a test observed.
    pub fn stderr_once_it_has(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let stderr = self.stderr();
            if stderr.contains(needle) || Instant::now() >= deadline {
                return stderr;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the daemon and returns its stderr.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion (it must exit on its own); returns (code, stdout, stderr).
pub fn run_to_exit(args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = String::new();
    let mut err = String::new();
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let _ = stdout.read_to_string(&mut out);
    err.push_str(&errs.join().unwrap_or_default());
    let status = child.wait().expect("wait");
    (status.code().unwrap_or(-1), out, err)
}

impl Daemon {
    /// Sends a signal (`rustix::process::Signal::TERM`, `HUP`, ...).
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid");
        rustix::process::kill_process(pid, signal).expect("kill");
    }

    /// Waits up to `limit` for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Like [`run_to_exit`], with extra environment variables.
pub fn run_with_env(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("SWITCHBOARD_PASSWORD")
        .stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `config` to DIR/config.json and returns the arguments that serve it
/// on 127.0.0.1, port 0, with its data in DIR/data, followed by `extra`.
pub fn configured(dir: &Path, config: &serde_json::Value, extra: &[&str]) -> Vec<String> {
    let path = dir.join("config.json");
    std::fs::write(&path, config.to_string()).expect("write config");
    let data = dir.join("data");
    let mut args: Vec<String> = [
        "--config",
        path.to_str().expect("utf-8 path"),
        "--port",
        "0",
    ]
    .into_iter()
    .chain(["--data-dir", data.to_str().expect("utf-8 path")])
    .map(String::from)
    .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}
