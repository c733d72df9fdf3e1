//! A real coturn `turnserver` on 127.0.0.1 that checks TURN REST API credentials
//! (`--use-auth-secret`), and `turnutils_uclient` to try credentials against it.
//! `scripts/ensure_coturn.sh` installs coturn first when it is missing.

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

/// The realm turnserver runs with (TURN REST credentials do not depend on it).
pub const REALM: &str = "switchboard.test";

/// How long turnserver may take to answer on its port.
const START_WAIT: Duration = Duration::from_secs(10);
/// Ports are picked free, then released; another process may take one meanwhile.
const START_ATTEMPTS: usize = 5;
/// How long one `turnutils_uclient` run may take (a normal one takes milliseconds).
const CHECK_WAIT: Duration = Duration::from_secs(20);
/// Printed by `turnutils_uclient` once every allocation, permission and channel
/// binding succeeded; after it, the client only sends test traffic for 1 to 6 seconds.
const ALLOCATED: &str = "Total connect time";
/// Printed by `turnutils_uclient` after 32 allocation attempts in a row were
/// answered with a 401 challenge: the credentials were refused. Any other error
/// response is printed as `error CODE (REASON)` instead.
const REFUSED: &str = "Cannot complete Allocation";

/// A turnserver process on 127.0.0.1 (UDP and TCP, same port), its files in a
/// temporary directory; killed when dropped.
pub struct Coturn {
    child: Child,
    /// Where clients reach it, for `turn:` URLs.
    pub addr: SocketAddr,
    /// Its log (stdout and stderr).
    pub log_path: PathBuf,
    command: String,
    // Dropped after the process is killed.
    _dir: tempfile::TempDir,
}

impl Coturn {
    /// Installs coturn if needed, then starts turnserver accepting TURN REST
    /// credentials made with `secret`, and waits until it answers.
    pub fn start(secret: &str) -> Result<Coturn, String> {
        ensure_installed()?;
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(secret) {
                Ok(coturn) => return Ok(coturn),
                Err(failure) => failures.push(failure),
            }
        }
        Err(format!(
            "turnserver did not start in {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n----\n")
        ))
    }

    fn try_start(secret: &str) -> Result<Coturn, String> {
        let port = free_port()?;
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let log_path = dir.path().join("turnserver.log");
        let log = std::fs::File::create(&log_path).map_err(|e| format!("turnserver.log: {e}"))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("turnserver.log: {e}"))?;
        let in_dir = |name: &str| dir.path().join(name).display().to_string();
        let args = [
            // No configuration file (not /etc/turnserver.conf): only these options.
            "-n".to_owned(),
            "--listening-ip=127.0.0.1".to_owned(),
            format!("--listening-port={port}"),
            "--relay-ip=127.0.0.1".to_owned(),
            // The client test relays between two allocations, both on 127.0.0.1.
            "--allow-loopback-peers".to_owned(),
            "--no-tls".to_owned(),
            "--no-dtls".to_owned(),
            // The CLI would listen on 127.0.0.1:5766, shared by every instance.
            "--no-cli".to_owned(),
            format!("--realm={REALM}"),
            "--use-auth-secret".to_owned(),
            format!("--static-auth-secret={secret}"),
            "--log-file=stdout".to_owned(),
            // Not /var/run/turnserver.pid nor /var/lib/turn/turndb.
            format!("--pidfile={}", in_dir("turnserver.pid")),
            format!("--userdb={}", in_dir("turndb")),
        ];
        let command = format!("turnserver {}", args.join(" "));
        let child = Command::new("turnserver")
            .args(&args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("`{command}`: {e}"))?;
        // From here on, an early return kills the process.
        let mut coturn = Coturn {
            child,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            log_path,
            command,
            _dir: dir,
        };
        let deadline = Instant::now() + START_WAIT;
        loop {
            if answers_stun(coturn.addr) && TcpStream::connect(coturn.addr).is_ok() {
                return Ok(coturn);
            }
            // Someone took the port: turnserver would retry binding forever.
            let busy = coturn.log().contains("Cannot bind");
            let exited = coturn.child.try_wait().ok().flatten();
            if busy || exited.is_some() || Instant::now() >= deadline {
                let why = match exited {
                    Some(status) => format!("exited ({status})"),
                    None if busy => "could not bind its port".to_owned(),
                    None => format!("did not answer within {START_WAIT:?}"),
                };
                return Err(format!(
                    "`{}` {why}; log:\n{}",
                    coturn.command,
                    coturn.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Whether turnserver accepts these TURN credentials: `turnutils_uclient`
    /// allocates two relays on them and binds them to each other (true), or every
    /// allocation is refused with 401 (false). Panics with the tool's output on
    /// anything else (server unreachable, other errors, no verdict in time).
    pub fn accepts(&self, username: &str, password: &str) -> bool {
        let refusal = format!("Cannot find credentials of user <{username}>");
        let refusals_before = self.log().matches(&refusal).count();
        let port = self.addr.port().to_string();
        // -y: client to client (no peer needed); -c: no RTCP allocations; -n 1: one message.
        let options = ["-y", "-c", "-n", "1", "-p", &port];
        let credentials = ["-u", username, "-w", password];
        let command = format!(
            "turnutils_uclient {} {} 127.0.0.1",
            options.join(" "),
            credentials.join(" ")
        );
        let mut child = Command::new("turnutils_uclient")
            .args(options)
            .args(credentials)
            .arg("127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("`{command}`: {e}"));
        let stdout = child.stdout.take().expect("turnutils_uclient stdout");
        let mut stderr = child.stderr.take().expect("turnutils_uclient stderr");
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let deadline = Instant::now() + CHECK_WAIT;
        let mut output = String::new();
        let (allocated, timed_out) = loop {
            match received.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    output.push_str(&line);
                    output.push('\n');
                    if line.contains(ALLOCATED) {
                        break (true, false);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break (false, false),
                Err(mpsc::RecvTimeoutError::Timeout) => break (false, true),
            }
        };
        // Allocated: the remaining test traffic proves nothing more about the credentials.
        let _ = child.kill();
        let status = child.wait().expect("wait for turnutils_uclient");
        output.push_str(&errors.join().unwrap_or_default());
        if allocated {
            return true;
        }
        let refused = !timed_out && !status.success() && output.contains(REFUSED);
        if refused && self.log_once(|log| log.matches(&refusal).count() > refusals_before) {
            return false;
        }
        panic!(
            "`{command}` neither allocated nor was refused for its credentials \
             ({status}{}); output:\n{output}\nturnserver log:\n{}",
            if timed_out { ", timed out" } else { "" },
            self.log()
        );
    }

    /// Whether the log satisfies `test` within a second (lines may lag the effect).
    fn log_once(&self, test: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            if test(&self.log()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `scripts/ensure_coturn.sh` once per test process (parallel tests must
/// not run apt-get side by side).
fn ensure_installed() -> Result<(), String> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ensure_coturn.sh");
            let out = Command::new(&script)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("{}: {e}", script.display()))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{} failed ({}); coturn is needed for the TURN tests:\n{}{}",
                    script.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        })
        .clone()
}

/// A port free for both UDP and TCP on 127.0.0.1 (released again on return).
fn free_port() -> Result<u16, String> {
    let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("UDP bind: {e}"))?;
    let port = udp
        .local_addr()
        .map_err(|e| format!("UDP address: {e}"))?
        .port();
    TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .map_err(|e| format!("TCP port {port} (free for UDP): {e}"))?;
    Ok(port)
}

/// Whether a STUN Binding request to `addr` over UDP gets a success response.
fn answers_stun(addr: SocketAddr) -> bool {
    let Ok(socket) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) else {
        return false;
    };
    // Type Binding request, length 0, the magic cookie, a transaction id.
    let mut request = [0u8; 20];
    request[..8].copy_from_slice(&[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42]);
    request[8..].copy_from_slice(b"switchboard!");
    let timeout = Some(Duration::from_millis(100));
    if socket.set_read_timeout(timeout).is_err() || socket.send_to(&request, addr).is_err() {
        return false;
    }
    // A Binding success response to this transaction.
    let mut response = [0u8; 512];
    match socket.recv_from(&mut response) {
        Ok((n, from)) => {
            from == addr
                && n >= 20
                && response[..2] == [0x01, 0x01]
                && response[8..20] == request[8..]
        }
        Err(_) => false,
    }
}
