//! Runs `switchboard-cli`: to completion, or as a session whose stdin is fed over time.
//! Every run is bounded: a CLI that hangs is killed and the test fails with its output.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;

use super::WAIT;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchboard-cli");

/// A CLI process still running after this long is killed and the test fails.
const LIMIT: Duration = Duration::from_secs(30);

/// How a run ended.
pub struct Output {
    pub command: String,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// The stdout lines parsed as JSON (session output).
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}\n{self}")))
            .collect()
    }

    /// Asserts the exit code, showing everything when it differs.
    pub fn expect_code(&self, code: i32) -> &Output {
        assert_eq!(self.code, code, "unexpected exit code\n{self}");
        self
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "$ {}\nexit code: {}\n--- stdout\n{}--- stderr\n{}---",
            self.command, self.code, self.stdout, self.stderr
        )
    }
}

/// A `switchboard-cli` command line being built.
pub struct Cli {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    stdin: Option<Vec<u8>>,
    /// stdout goes to this file instead of a pipe (what `field --wait` follows).
    stdout_file: Option<PathBuf>,
}

/// `switchboard-cli --addr ADDR`.
pub fn cli(addr: SocketAddr) -> Cli {
    Cli::bare().args(&["--addr", &addr.to_string()])
}

fn collect(mut reader: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = reader.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Waits for `child`, killing it if it outlives [`LIMIT`]; returns its exit code.
fn wait_bounded(child: &mut Child, command: &str) -> i32 {
    let (done, finished) = mpsc::channel::<()>();
    let pid = Pid::from_raw(child.id() as i32);
    let watchdog = thread::spawn(move || {
        if finished.recv_timeout(LIMIT) == Err(RecvTimeoutError::Timeout) {
            if let Some(pid) = pid {
                let _ = kill_process(pid, Signal::KILL);
            }
            return true;
        }
        false
    });
    let status = child.wait().expect("wait for switchboard-cli");
    let _ = done.send(());
    let killed = watchdog.join().unwrap_or(false);
    assert!(
        !killed,
        "`{command}` ran longer than {LIMIT:?} and was killed"
    );
    status.code().unwrap_or(-1)
}

impl Cli {
    /// `switchboard-cli` with no arguments yet.
    pub fn bare() -> Cli {
        Cli {
            args: Vec::new(),
            envs: Vec::new(),
            stdin: None,
            stdout_file: None,
        }
    }

    pub fn args(mut self, args: &[&str]) -> Cli {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Cli {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Bytes for stdin (default: an empty stdin, which is not a terminal).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Cli {
        self.stdin = Some(bytes.into());
        self
    }

    /// Sends stdout to `path` (created or truncated), as a shell's `>path` does;
    /// the output's `stdout` is then empty.
    pub fn stdout_to(mut self, path: &Path) -> Cli {
        self.stdout_file = Some(path.to_path_buf());
        self
    }

    fn command_line(&self) -> String {
        format!("switchboard-cli {}", self.args.join(" "))
    }

    fn spawn_child(&self) -> Child {
        let mut cmd = Command::new(BIN);
        let stdout = match &self.stdout_file {
            Some(path) => Stdio::from(File::create(path).expect("create the stdout file")),
            None => Stdio::piped(),
        };
        cmd.args(&self.args)
            .env_remove("SWITCHBOARD_PASSWORD")
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(Stdio::piped());
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd.spawn().expect("spawn switchboard-cli")
    }

    /// Runs to completion with the given stdin, then closed.
    pub fn run(self) -> Output {
        let command = self.command_line();
        let mut child = self.spawn_child();
        let mut stdin = child.stdin.take().expect("stdin");
        let bytes = self.stdin.unwrap_or_default();
        let feeder = thread::spawn(move || {
            // The CLI may exit without reading everything; a broken pipe is fine.
            let _ = stdin.write_all(&bytes);
        });
        let stdout = match child.stdout.take() {
            Some(out) => collect(out),
            None => thread::spawn(String::new),
        };
        let stderr = collect(child.stderr.take().expect("stderr"));
        let code = wait_bounded(&mut child, &command);
        let _ = feeder.join();
        Output {
            command,
            code,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        }
    }

    /// Starts a session-like process whose stdin is written line by line.
    pub fn spawn(self) -> Running {
        let command = self.command_line();
        let mut child = self.spawn_child();
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        // None with `stdout_to`: the lines go to the file, `expect` sees none.
        let stdout = child.stdout.take();
        let reader = thread::spawn(move || {
            let Some(stdout) = stdout else { return };
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = collect(child.stderr.take().expect("stderr"));
        Running {
            command,
            child,
            stdin,
            lines,
            seen: Vec::new(),
            reader: Some(reader),
            stderr: Some(stderr),
        }
    }
}

/// A running CLI: write lines to its stdin, wait for lines on its stdout.
pub struct Running {
    command: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Every stdout line so far, in order.
    pub seen: Vec<String>,
    reader: Option<JoinHandle<()>>,
    stderr: Option<JoinHandle<String>>,
}

impl Running {
    /// Writes one line to stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{line}").expect("write to the session's stdin");
        stdin.flush().expect("flush");
    }

    /// Closes stdin (EOF for the session).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the next output line of the given frame type and returns it parsed;
    /// lines of other types are kept in `seen` only.
    pub fn expect(&mut self, kind: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(e) => panic!(
                    "`{}`: no {kind} line ({e:?}); output so far:\n{}",
                    self.command,
                    self.seen.join("\n")
                ),
            };
            self.seen.push(line.clone());
            let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                panic!("`{}` printed a non-JSON line {line:?}: {e}", self.command)
            });
            if value["type"] == kind {
                return value;
            }
        }
    }

    /// Waits for the process to end (stdin closed first) and returns everything it printed.
    pub fn finish(mut self) -> Output {
        self.stdin = None;
        let code = wait_bounded(&mut self.child, &self.command);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.seen.extend(self.lines.try_iter());
        let mut stdout = self.seen.join("\n");
        if !stdout.is_empty() {
            stdout.push('\n');
        }
        Output {
            command: self.command.clone(),
            code,
            stdout,
            stderr: self
                .stderr
                .take()
                .map(|h| h.join().unwrap_or_default())
                .unwrap_or_default(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
