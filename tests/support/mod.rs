//! Helpers every integration test shares: a real server on port 0, a client that
//! speaks frames over TCP or TLS, certificates made at test time, and runners
//! for the daemon and CLI binaries.

#![allow(dead_code)]

pub mod certs;
pub mod cli;
pub mod coturn;
pub mod daemon;
pub mod relay_load;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard::application::UserStore;
use switchboard::config::Config;
use switchboard::daemon::Running;
use switchboard::infrastructure::DataDirLock;
use switchboard::tcp::{MessageType, Server, ServerStats};

/// How long a test waits for a frame before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// A server running in this process, on 127.0.0.1 and a free port, over its own data directory.
pub struct TestServer {
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config: Config,
}

/// The configuration tests start from: loopback, port 0, cheap bcrypt.
pub fn test_config(dir: &Path) -> Config {
    Config {
        port: 0,
        data_dir: dir.to_path_buf(),
        users_file: dir.join("users.txt"),
        bcrypt_cost: 4,
        ..Config::default()
    }
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::start_with(|_| {})
    }

    /// Starts with the test configuration changed by `tweak`.
    pub fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(dir.path());
        tweak(&mut config);
        let running = switchboard::daemon::start(&config).expect("server starts");
        TestServer {
            addr: running.server.local_addr(),
            running: Some(running),
            dir,
            config,
        }
    }

    /// Starts over `dir` again (a restart), with the same configuration.
    pub fn restart(mut self) -> TestServer {
        if let Some(running) = self.running.take() {
            assert!(running.shutdown(Duration::from_secs(5)), "server drained");
        }
        let running = switchboard::daemon::start(&self.config).expect("server restarts");
        self.addr = running.server.local_addr();
        self.running = Some(running);
        self
    }

    /// Starts a server on a store the test provides (to inject faults).
    pub fn start_with_store(
        wrap: impl FnOnce(Arc<dyn UserStore>) -> Arc<dyn UserStore>,
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = test_config(dir.path());
        let mut storage = switchboard::daemon::open_storage(&config).expect("storage");
        storage.users = wrap(storage.users);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let settings = switchboard::daemon::settings(&config, None);
        let handle = Server::new(listener, settings, storage)
            .expect("server")
            .start()
            .expect("start");
        let lock = DataDirLock::acquire(dir.path()).expect("data directory lock");
        TestServer {
            addr: handle.local_addr(),
            running: Some(Running::new(handle, None, lock)),
            dir,
            config,
        }
    }

    pub fn stats(&self) -> ServerStats {
        self.running.as_ref().expect("running").server.stats()
    }

    pub fn users_file(&self) -> PathBuf {
        self.config.users_file.clone()
    }

    /// Waits until the server holds exactly `open` connections and nothing else:
    /// the check that disconnects leave nothing behind.
    pub fn wait_until_clean(&self, open: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.stats();
            if s.open_connections == open
                && s.registered_outboxes == open
                && s.calls == 0
                && s.online_users <= open
            {
                return;
            }
            assert!(Instant::now() < deadline, "server still holds state: {s:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until exactly `open` connection threads are alive. A thread ends
    /// just after its client sees the connection close, so a count read at once can lag.
    pub fn wait_for_open_connections(&self, open: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.stats();
            if s.open_connections == open {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "still {} open connections, expected {open}: {s:?}",
                s.open_connections
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Registers and logs in a new user with HELLO (protocol 2); returns the
    /// client, its user id and its session token.
    pub fn user_v2(&self, name: &str) -> (Client, String, String) {
        let mut c = self.client();
        let id = c.register(name, "secret");
        let token = c.login_v2(name, "secret");
        (c, id, token)
    }

    /// Waits until `held` sessions are held for a resume.
    pub fn wait_for_held(&self, held: usize) {
        let deadline = Instant::now() + WAIT;
        while self.stats().sessions_held != held {
            assert!(
                Instant::now() < deadline,
                "held sessions: {:?}, expected {held}",
                self.stats()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Registers and logs in a new user; returns the client and its user id.
    pub fn user(&self, name: &str) -> (Client, String) {
        let mut c = self.client();
        let id = c.register(name, "secret");
        c.login_ok(name, "secret");
        (c, id)
    }
}

/// One received frame.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub body: Value,
    pub raw: Vec<u8>,
}

impl Frame {
    pub fn name(&self) -> &'static str {
        MessageType::from_code(self.kind).map_or("?", MessageType::name)
    }

    pub fn str(&self, key: &str) -> &str {
        self.body[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} missing in {} {}", self.name(), self.body))
    }
}

pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A protocol client for tests, blocking with timeouts.
pub struct Client {
    stream: Box<dyn Stream>,
    tcp: TcpStream,
    /// Frames read while looking for another type, in arrival order.
    pub skipped: Vec<Frame>,
}

pub fn encode(kind: MessageType, body: &Value) -> Vec<u8> {
    switchboard::tcp::frame::encode(kind.code(), body.to_string().as_bytes())
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(WAIT)).expect("timeout");
        tcp.set_nodelay(true).expect("nodelay");
        Client {
            stream: Box::new(tcp.try_clone().expect("clone")),
            tcp,
            skipped: Vec::new(),
        }
    }

    pub fn tls(addr: SocketAddr, ca_pem: &[u8]) -> Client {
        Client::try_tls(addr, ca_pem).expect("TLS handshake")
    }

    pub fn try_tls(addr: SocketAddr, ca_pem: &[u8]) -> Result<Client, String> {
        let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        Client::tls_over(tcp, ca_pem)
    }

    /// A TLS client on a connected socket, trusting `ca_pem` for localhost.
    fn tls_over(tcp: TcpStream, ca_pem: &[u8]) -> Result<Client, String> {
        tcp.set_read_timeout(Some(WAIT))
            .map_err(|e| e.to_string())?;
        let connector = native_tls::TlsConnector::builder()
            .add_root_certificate(
                native_tls::Certificate::from_pem(ca_pem).map_err(|e| e.to_string())?,
            )
            .build()
            .map_err(|e| e.to_string())?;
        let tls = connector
            .connect("localhost", tcp.try_clone().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        Ok(Client {
            stream: Box::new(tls),
            tcp,
            skipped: Vec::new(),
        })
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
        self.stream.flush().expect("flush");
    }

    pub fn send(&mut self, kind: MessageType, body: Value) {
        self.send_raw(&encode(kind, &body));
    }

    /// The next frame, or the I/O error (timeout, EOF).
    pub fn try_next(&mut self) -> io::Result<Frame> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        assert!(len >= 1, "server sent LEN 0");
        let mut rest = vec![0u8; len];
        self.stream.read_exact(&mut rest)?;
        let body = serde_json::from_slice(&rest[1..]).expect("server payload is JSON");
        let mut raw = (len as u32).to_be_bytes().to_vec();
        raw.extend_from_slice(&rest);
        Ok(Frame {
            kind: rest[0],
            body,
            raw,
        })
    }

    pub fn next(&mut self) -> Frame {
        if !self.skipped.is_empty() {
            return self.skipped.remove(0);
        }
        self.try_next().expect("a frame from the server")
    }

    /// The next frame of type `kind`; frames of other types are kept in `skipped`.
    pub fn expect(&mut self, kind: MessageType) -> Frame {
        if let Some(i) = self.skipped.iter().position(|f| f.kind == kind.code()) {
            return self.skipped.remove(i);
        }
        loop {
            let frame = self.try_next().unwrap_or_else(|e| {
                panic!(
                    "waiting for {}: {e}; skipped so far: {:?}",
                    kind.name(),
                    self.skipped
                )
            });
            if frame.kind == kind.code() {
                return frame;
            }
            self.skipped.push(frame);
        }
    }

    /// The next ERROR, checking its code.
    pub fn expect_error(&mut self, code: u64) -> Frame {
        let frame = self.expect(MessageType::Error);
        assert_eq!(frame.body["code"], code, "ERROR {}", frame.body);
        frame
    }

    /// Waits for a USER_STATE_UPDATE saying `user_id` is now `state`.
    pub fn expect_state(&mut self, user_id: &str, state: &str) {
        loop {
            let f = self.expect(MessageType::UserStateUpdate);
            if f.str("user_id") == user_id && f.str("state") == state {
                return;
            }
        }
    }

    /// A HEARTBEAT round trip. The connection answers in order, so every answer
    /// to what was sent before has arrived once this returns; they are returned,
    /// without presence updates.
    pub fn barrier(&mut self) -> Vec<Frame> {
        self.send(MessageType::Heartbeat, json!({"timestamp": 424242}));
        let mut before = Vec::new();
        loop {
            let f = self.next();
            if f.kind == MessageType::Heartbeat.code() && f.body["timestamp"] == 424242 {
                return before;
            }
            if f.kind != MessageType::UserStateUpdate.code() {
                before.push(f);
            }
        }
    }

    /// Like [`Client::barrier`], but returns every frame, presence updates included.
    pub fn barrier_all(&mut self) -> Vec<Frame> {
        self.send(MessageType::Heartbeat, json!({"timestamp": 434343}));
        let mut before = Vec::new();
        loop {
            let f = self.next();
            if f.kind == MessageType::Heartbeat.code() && f.body["timestamp"] == 434343 {
                return before;
            }
            before.push(f);
        }
    }

    /// Registers and returns the new user id.
    pub fn register(&mut self, name: &str, secret: &str) -> String {
        self.send(
            MessageType::RegisterRequest,
            json!({"username": name, "password_hash": secret}),
        );
        let f = self.expect(MessageType::RegisterResponse);
        assert_eq!(f.body["success"], true, "register {name}: {}", f.body);
        f.str("user_id").to_string()
    }

    pub fn login(&mut self, name: &str, secret: &str) -> Frame {
        self.send(
            MessageType::LoginRequest,
            json!({"username": name, "password_hash": secret}),
        );
        self.expect(MessageType::LoginResponse)
    }

    pub fn login_ok(&mut self, name: &str, secret: &str) {
        let f = self.login(name, secret);
        assert_eq!(f.body["success"], true, "login {name}: {}", f.body);
    }

    /// HELLO with protocol 2; returns the WELCOME.
    pub fn hello(&mut self) -> Frame {
        self.send(
            MessageType::Hello,
            json!({"protocol_version": 2, "client_name": "tests"}),
        );
        self.expect(MessageType::Welcome)
    }

    /// HELLO then LOGIN; returns the session token.
    pub fn login_v2(&mut self, name: &str, secret: &str) -> String {
        self.hello();
        let f = self.login(name, secret);
        assert_eq!(f.body["success"], true, "login {name}: {}", f.body);
        f.str("session_token").to_string()
    }

    /// RESUME_REQUEST with `token`; returns the answer (LOGIN_RESPONSE or ERROR).
    pub fn resume(&mut self, token: &str) -> Frame {
        self.send(
            MessageType::ResumeRequest,
            json!({"session_token": token, "req_id": "resume"}),
        );
        loop {
            let f = self.next();
            if f.body["req_id"] == "resume" {
                return f;
            }
            self.skipped.push(f);
        }
    }

    /// True once the server has closed the connection (EOF or reset), reading
    /// and discarding whatever frames come first.
    pub fn is_closed_by_server(&mut self) -> bool {
        loop {
            match self.try_next() {
                Ok(frame) => self.skipped.push(frame),
                Err(e) => {
                    return matches!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                    );
                }
            }
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The stream (TLS or plain) and its socket, for a test that drives them
    /// itself (non-blocking, say); frames already read and skipped are lost.
    pub fn into_stream(self) -> (Box<dyn Stream>, TcpStream) {
        (self.stream, self.tcp)
    }

    /// Closes without a goodbye (a lost connection).
    pub fn drop_connection(self) {
        let _ = self.tcp.shutdown(std::net::Shutdown::Both);
    }
}

/// Sets up a call from `a` to `b` and has `b` accept it; returns the call id.
pub fn connect_call(a: &mut Client, b: &mut Client, b_id: &str) -> String {
    a.send(MessageType::CallRequest, json!({"to_user_id": b_id}));
    let call_id = b
        .expect(MessageType::CallNotification)
        .str("call_id")
        .to_string();
    b.send(
        MessageType::CallResponse,
        json!({"call_id": call_id, "accepted": true}),
    );
    let accepted = a.expect(MessageType::CallAccepted);
    assert_eq!(accepted.str("call_id"), call_id);
    call_id
}

/// A client on a socket the test has set up (source address, buffer sizes).
fn client_on(socket: socket2::Socket, to: SocketAddr) -> Client {
    socket.connect(&to.into()).expect("connect");
    let tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(WAIT)).expect("timeout");
    tcp.set_nodelay(true).expect("nodelay");
    Client {
        stream: Box::new(tcp.try_clone().expect("clone")),
        tcp,
        skipped: Vec::new(),
    }
}

fn new_socket() -> socket2::Socket {
    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket")
}

/// Connects from a chosen loopback source address (127.0.0.x), to look like another host.
pub fn connect_from(source: std::net::Ipv4Addr, to: SocketAddr) -> Client {
    let socket = new_socket();
    socket
        .bind(&SocketAddr::from((source, 0)).into())
        .expect("bind source address");
    client_on(socket, to)
}

/// Connects with a small receive buffer, so that not reading fills it quickly
/// (the kernel otherwise absorbs megabytes for a client that never reads).
pub fn connect_small_receive_buffer(to: SocketAddr) -> Client {
    let socket = new_socket();
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    client_on(socket, to)
}

/// [`connect_small_receive_buffer`] over TLS, trusting `ca_pem`.
pub fn tls_small_receive_buffer(to: SocketAddr, ca_pem: &[u8]) -> Client {
    let socket = new_socket();
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&to.into()).expect("connect");
    Client::tls_over(socket.into(), ca_pem).expect("TLS handshake")
}
