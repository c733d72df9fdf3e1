//! Many clients on a few threads: non-blocking sockets driven by epoll.
//! Used by the `idle`, `storm` and `reconnect` workloads, where thousands of
//! clients log in at once.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use rustix::buffer::spare_capacity;
use rustix::event::{Timespec, epoll};

use super::client::{MAX_FRAME, scan_str, scan_user_list};
use super::daemon::{SECRET, username};
use crate::tcp::frame::{self, Decoded};
use crate::tcp::message::{Credentials, Empty, Hello, MessageType, Request, Resume, ServerMessage};

/// How the clients log in.
#[derive(Debug, Clone)]
pub enum Login {
    /// LOGIN_REQUEST with the password (protocol 1).
    Password,
    /// HELLO, then LOGIN_REQUEST: the answers carry session tokens.
    PasswordV2,
    /// RESUME_REQUEST with client `i`'s token at index `i`.
    Resume(Arc<Vec<String>>),
}

#[derive(Debug, Clone)]
pub struct SwarmOptions {
    pub clients: usize,
    /// Client `i` logs in as bench user `first_user + i` (`relay-storm` keeps
    /// the relay's users apart); users outside the swarm are not counted as seen.
    pub first_user: usize,
    /// Threads driving the clients.
    pub shards: usize,
    pub login: Login,
    /// Storm: request USER_LIST after login and track who each client has seen Available.
    pub track_presence: bool,
    /// Idle: wait until every presence broadcast of the logins has arrived.
    pub await_updates: bool,
    /// Give up waiting after this long.
    pub timeout: Duration,
}

/// What happened to the clients; instants are relative to the moment the logins were sent.
pub struct SwarmResult {
    /// When the logins were sent.
    pub t0: Instant,
    pub connect_secs: f64,
    /// When the last LOGIN_RESPONSE arrived (all clients that got one).
    pub logins_done_secs: f64,
    pub logins_ok: u64,
    /// Storm: when the last client had seen every other one Available.
    pub presence_done_secs: Option<f64>,
    pub presence_complete: u64,
    pub frames: u64,
    pub state_updates: u64,
    pub errors: u64,
    /// The open sockets, so the caller can measure the daemon while they stay.
    pub sockets: Vec<TcpStream>,
    /// Session tokens by client index (protocol 2 logins and resumes).
    pub tokens: Vec<Option<String>>,
}

struct Conn {
    stream: TcpStream,
    index: usize,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    logged_in: Option<Duration>,
    token: Option<String>,
    seen: Vec<bool>,
    seen_count: usize,
    presence_done: Option<Duration>,
    dead: bool,
}

struct Shared {
    updates: AtomicU64,
    expected_updates: u64,
}

/// Index of bench user `id` (ids are `index + 1`, see [`super::daemon::write_users`]).
fn index_of(id: &str) -> Option<usize> {
    id.parse::<usize>().ok()?.checked_sub(1)
}

impl Conn {
    fn queue(&mut self, request: &Request) {
        self.out.extend_from_slice(&request.to_frame());
    }

    fn flush(&mut self) -> io::Result<()> {
        super::client::write_pending(&mut self.stream, &mut self.out)
    }

    fn mark_seen(&mut self, id: &str, opts: &SwarmOptions) {
        if let Some(i) = index_of(id).and_then(|i| i.checked_sub(opts.first_user))
            && i < opts.clients
            && i != self.index
            && !self.seen[i]
        {
            self.seen[i] = true;
            self.seen_count += 1;
        }
    }

    /// Reads what is there and handles every complete frame.
    fn read(
        &mut self,
        opts: &SwarmOptions,
        t0: Instant,
        stats: &mut Counts,
        shared: &Shared,
    ) -> io::Result<()> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let mut pos = 0;
        let mut updates = 0;
        let input = std::mem::take(&mut self.inbuf);
        let handled = (|| {
            while let Some((decoded, used)) = frame::decode(&input[pos..], MAX_FRAME)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            {
                if let Decoded::Frame { kind, payload } = decoded {
                    stats.frames += 1;
                    if kind == MessageType::UserStateUpdate.code() {
                        updates += 1;
                    }
                    self.handle(kind, payload, opts, t0, stats)?;
                }
                pos += used;
            }
            Ok::<(), io::Error>(())
        })();
        self.inbuf = input;
        handled?;
        self.inbuf.drain(..pos);
        if updates > 0 {
            stats.updates += updates;
            shared.updates.fetch_add(updates, Ordering::Relaxed);
        }
        if opts.track_presence
            && self.presence_done.is_none()
            && self.logged_in.is_some()
            && self.seen_count + 1 >= opts.clients
        {
            self.presence_done = Some(t0.elapsed());
        }
        Ok(())
    }

    fn handle(
        &mut self,
        kind: u8,
        payload: &[u8],
        opts: &SwarmOptions,
        t0: Instant,
        stats: &mut Counts,
    ) -> io::Result<()> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        match MessageType::from_code(kind) {
            Some(MessageType::UserStateUpdate) => {
                if opts.track_presence {
                    let text = std::str::from_utf8(payload).map_err(|e| bad(e.to_string()))?;
                    if scan_str(text, "state") == Some("Available")
                        && let Some(id) = scan_str(text, "user_id")
                    {
                        self.mark_seen(id, opts);
                    }
                }
            }
            Some(MessageType::LoginResponse) => match ServerMessage::decode(kind, payload) {
                Ok(ServerMessage::LoginResponse(r)) if r.success => {
                    self.logged_in = Some(t0.elapsed());
                    self.token = r.session_token;
                    stats.logins_ok += 1;
                    if opts.track_presence {
                        self.queue(&Request::UserList(Empty::default()));
                    }
                }
                other => return Err(bad(format!("login refused: {other:?}"))),
            },
            Some(MessageType::Welcome) => {}
            Some(MessageType::UserListResponse) => {
                let text = std::str::from_utf8(payload).map_err(|e| bad(e.to_string()))?;
                scan_user_list(text, |id, state| {
                    if state == "Available" {
                        self.mark_seen(id, opts);
                    }
                });
            }
            _ => {
                stats.errors += 1;
            }
        }
        Ok(())
    }

    fn done(&self, opts: &SwarmOptions, shared: &Shared) -> bool {
        self.dead
            || (self.logged_in.is_some()
                && if opts.track_presence {
                    self.presence_done.is_some()
                } else {
                    !opts.await_updates
                        || shared.updates.load(Ordering::Relaxed) >= shared.expected_updates
                })
    }
}

#[derive(Default)]
struct Counts {
    frames: u64,
    updates: u64,
    logins_ok: u64,
    errors: u64,
}

struct ShardOut {
    conns: Vec<Conn>,
    counts: Counts,
}

fn connect_all(addr: SocketAddr, indexes: &[usize], opts: &SwarmOptions) -> io::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(indexes.len());
    for &index in indexes {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        conns.push(Conn {
            stream,
            index,
            inbuf: Vec::new(),
            out: Vec::new(),
            logged_in: None,
            token: None,
            seen: if opts.track_presence {
                vec![false; opts.clients]
            } else {
                Vec::new()
            },
            seen_count: 0,
            presence_done: None,
            dead: false,
        });
    }
    Ok(conns)
}

/// Sends every LOGIN, then reads with epoll (level-triggered, readable only;
/// the rare unfinished write is retried on every pass) until each client is
/// done. poll(2) over thousands of mostly idle sockets made the load
/// generator itself the bottleneck.
fn drive(conns: &mut [Conn], opts: &SwarmOptions, t0: Instant, shared: &Shared) -> Counts {
    let mut counts = Counts::default();
    let Ok(epfd) = epoll::create(epoll::CreateFlags::CLOEXEC) else {
        counts.errors += 1;
        return counts;
    };
    for (i, c) in conns.iter_mut().enumerate() {
        let added = epoll::add(
            &epfd,
            &c.stream,
            epoll::EventData::new_u64(i as u64),
            epoll::EventFlags::IN,
        );
        let login = Request::Login(Credentials {
            username: username(opts.first_user + c.index),
            password_hash: SECRET.into(),
            req_id: None,
        });
        match &opts.login {
            Login::Password => c.queue(&login),
            Login::PasswordV2 => {
                c.queue(&Request::Hello(Hello {
                    protocol_version: 2,
                    client_name: Some("switchboard-bench".into()),
                    capabilities: Vec::new(),
                    req_id: None,
                }));
                c.queue(&login);
            }
            Login::Resume(tokens) => c.queue(&Request::Resume(Resume {
                session_token: tokens.get(c.index).cloned().unwrap_or_default(),
                req_id: None,
            })),
        }
        if added.is_err() || c.flush().is_err() {
            c.dead = true;
            counts.errors += 1;
        }
    }
    let deadline = t0 + opts.timeout;
    let mut events: Vec<epoll::Event> = Vec::with_capacity(1024);
    let mut pending = 0;
    let mut remaining = conns.len();
    let mut last_check = Instant::now();
    loop {
        if remaining == 0 || Instant::now() >= deadline {
            return counts;
        }
        events.clear();
        let timeout = Timespec {
            tv_sec: 0,
            tv_nsec: 50_000_000,
        };
        match epoll::wait(&epfd, spare_capacity(&mut events), Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => {
                counts.errors += 1;
                return counts;
            }
        }
        for event in &events {
            let Some(c) = conns.get_mut(event.data.u64() as usize) else {
                continue;
            };
            if c.dead {
                continue;
            }
            if c.read(opts, t0, &mut counts, shared).is_err() {
                c.dead = true;
                counts.errors += 1;
                let _ = epoll::delete(&epfd, &c.stream);
            }
        }
        if pending > 0 || !events.is_empty() {
            pending = 0;
            for c in conns.iter_mut().filter(|c| !c.dead && !c.out.is_empty()) {
                if c.flush().is_err() {
                    c.dead = true;
                    counts.errors += 1;
                } else if !c.out.is_empty() {
                    pending += 1;
                }
            }
        }
        // Re-checking every client after each wake-up would be quadratic;
        // every 10 ms is soon enough for the figures.
        if events.is_empty() || last_check.elapsed() >= Duration::from_millis(10) {
            last_check = Instant::now();
            remaining = conns.iter().filter(|c| !c.done(opts, shared)).count();
        }
    }
}

/// Connects every client, logs them all in at once and waits until they are
/// done: logged in and, for the storm, each has seen every other Available;
/// for idle, every presence broadcast has arrived.
///
/// # Errors
/// If a shard thread cannot be started or a connection fails.
pub fn run(addr: SocketAddr, opts: &SwarmOptions) -> io::Result<SwarmResult> {
    let shards = opts.shards.clamp(1, opts.clients.max(1));
    let n = opts.clients as u64;
    let shared = Arc::new(Shared {
        updates: AtomicU64::new(0),
        expected_updates: n * n.saturating_sub(1) / 2,
    });
    let connected = Arc::new(Barrier::new(shards + 1));
    let go = Arc::new(Barrier::new(shards + 1));
    let t0_cell = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let started = Instant::now();
    let mut handles = Vec::new();
    for s in 0..shards {
        let indexes: Vec<usize> = (s..opts.clients).step_by(shards).collect();
        let (opts, shared, connected, go, t0_cell) = (
            opts.clone(),
            shared.clone(),
            connected.clone(),
            go.clone(),
            t0_cell.clone(),
        );
        handles.push(thread::Builder::new().name(format!("swarm{s}")).spawn(
            move || -> io::Result<ShardOut> {
                let conns = connect_all(addr, &indexes, &opts);
                connected.wait();
                go.wait();
                let mut conns = conns?;
                let t0 = t0_cell
                    .lock()
                    .ok()
                    .and_then(|t| *t)
                    .unwrap_or_else(Instant::now);
                let counts = drive(&mut conns, &opts, t0, &shared);
                Ok(ShardOut { conns, counts })
            },
        )?);
    }
    connected.wait();
    let connect_secs = started.elapsed().as_secs_f64();
    let t0 = Instant::now();
    if let Ok(mut t) = t0_cell.lock() {
        *t = Some(t0);
    }
    go.wait();
    let mut result = SwarmResult {
        t0,
        connect_secs,
        logins_done_secs: 0.0,
        logins_ok: 0,
        presence_done_secs: None,
        presence_complete: 0,
        frames: 0,
        state_updates: 0,
        errors: 0,
        sockets: Vec::with_capacity(opts.clients),
        tokens: vec![None; opts.clients],
    };
    let mut failure = None;
    for h in handles {
        let out = match h.join() {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                failure = Some(e);
                continue;
            }
            Err(_) => {
                result.errors += 1;
                continue;
            }
        };
        result.frames += out.counts.frames;
        result.state_updates += out.counts.updates;
        result.logins_ok += out.counts.logins_ok;
        result.errors += out.counts.errors;
        for c in out.conns {
            if let Some(t) = c.logged_in {
                result.logins_done_secs = result.logins_done_secs.max(t.as_secs_f64());
            }
            if let Some(t) = c.presence_done {
                result.presence_complete += 1;
                let t = t.as_secs_f64();
                result.presence_done_secs =
                    Some(result.presence_done_secs.map_or(t, |p: f64| p.max(t)));
            }
            if let Some(slot) = result.tokens.get_mut(c.index) {
                *slot = c.token;
            }
            result.sockets.push(c.stream);
        }
    }
    if let Some(e) = failure {
        return Err(io::Error::other(format!("swarm: {e}")));
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// User ids map back to the indexes they were written for; anything else is ignored.
    #[test]
    fn user_ids_map_to_client_indexes() {
        assert_eq!(index_of("1"), Some(0));
        assert_eq!(index_of("2000"), Some(1999));
        assert_eq!(index_of("0"), None);
        assert_eq!(index_of("x"), None);
    }
}
