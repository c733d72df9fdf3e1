//! The listener: admits connections, spawns one thread each, and shuts down.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{error, info, warn};
use native_tls::TlsAcceptor;

use super::connection::Connection;
use super::message::{MessageType, ServerMessage};
use super::outbox::{Connections, Outbox};
use super::transport::{Socket, Transport, accept_tls};
use crate::application::auth::AuthLimits;
use crate::application::hub::{HoldLimits, HubSettings, RoomStores};
use crate::application::{
    Accounts, Authenticator, Delivery, Hub, IceSettings, PasswordHasher, RevocationStore,
    SessionEnd, SessionTokens, UserAdmin, UserStore,
};
use crate::domain::RoomLimits;
use crate::domain::limits::Cidr;
use crate::metrics::{Gauges, Metrics};

/// Connection threads need little stack: no recursion beyond serde_json's
/// bounded depth, and buffers live on the heap.
const CONNECTION_STACK: usize = 256 * 1024;
/// At most this many threads at once refuse TLS clients over `max_connections`.
const MAX_TLS_REJECTERS: usize = 16;

/// Per-connection limits, from the configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    /// Largest accepted LEN (type byte plus payload).
    pub max_frame: usize,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Cap on bytes queued for one connection before it counts as a slow consumer.
    pub outbound_queue_bytes: usize,
    /// Concurrent connections from one source address.
    pub max_connections_per_ip: usize,
    /// Source addresses many people share: not counted per address (the
    /// global `max_connections` still counts them).
    pub exempt_networks: Vec<Cidr>,
    /// A connection not logged in by then is closed.
    pub login_timeout: Duration,
    /// Frames per second per connection (token bucket rate) and burst.
    pub frames_per_second: f64,
    pub frame_burst: f64,
    /// Frames refused by the rate limit, in a row, before the connection is closed.
    pub rate_violations_before_disconnect: u32,
}

/// Everything the server is built from, besides the listener and the stores.
pub struct Settings {
    pub limits: Limits,
    pub auth_limits: AuthLimits,
    pub ringing_timeout: Duration,
    pub bcrypt_cost: u32,
    pub hash_concurrency: usize,
    pub tls: Option<TlsAcceptor>,
    pub sessions: SessionSettings,
    pub ice: IceSettings,
    pub rooms: RoomLimits,
}

/// Protocol 2 sessions: tokens, held calls, guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSettings {
    pub token_ttl_secs: u64,
    pub hold: HoldLimits,
    /// How long a guest session lasts; `None`: GUEST_LOGIN is refused.
    pub guest_ttl: Option<Duration>,
}

/// What the server keeps on disk: users, token revocations, the token secret.
pub struct Storage {
    pub users: Arc<dyn UserStore>,
    pub revocations: Arc<dyn RevocationStore>,
    pub session_secret: [u8; 32],
    /// Rooms' records, chat and event logs, inboxes and ids.
    pub rooms: RoomStores,
}

/// State shared by the listener and every connection thread.
pub struct Shared {
    pub hub: Arc<Hub>,
    pub auth: Arc<Authenticator>,
    /// Login, logout, resume, guests, tokens and account changes.
    pub accounts: Accounts,
    /// The token revocation journal (also inside `tokens`), for the operator's kick.
    revocations: Arc<dyn RevocationStore>,
    pub ice: IceSettings,
    pub connections: Arc<Connections>,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    /// Replaced on SIGHUP; each handshake takes the acceptor current at its start.
    tls: RwLock<Option<Arc<TlsAcceptor>>>,
    open: AtomicUsize,
    /// Open connections per source address; entries at zero are removed.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    rejecting: AtomicUsize,
    draining: AtomicBool,
}

impl Shared {
    fn tls_acceptor(&self) -> Option<Arc<TlsAcceptor>> {
        self.tls
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn stats(&self) -> ServerStats {
        let hub = self.hub.stats();
        ServerStats {
            open_connections: self.open.load(Ordering::SeqCst),
            registered_outboxes: self.connections.len(),
            online_users: hub.online,
            calls: hub.calls,
            calls_ringing: hub.ringing,
            sessions_held: hub.held,
            guests_online: hub.guests,
            frames_encoded: self.connections.frames_encoded(),
            rooms: hub.rooms,
            room_participants: hub.room_participants,
            password_hashes: self.metrics.hash_wait.count(),
        }
    }
}

/// A bound server, not yet accepting.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Server {
    /// # Errors
    /// If bcrypt refuses the cost.
    pub fn new(listener: TcpListener, settings: Settings, storage: Storage) -> io::Result<Server> {
        let users = storage.users;
        let metrics = Arc::new(Metrics::default());
        let connections = Arc::new(Connections::new(metrics.clone()));
        let delivery: Arc<dyn Delivery> = connections.clone();
        let hub_settings = HubSettings {
            ringing_timeout: settings.ringing_timeout,
            hold: settings.sessions.hold,
        };
        let hub = Arc::new(Hub::new(
            delivery,
            users.clone(),
            hub_settings,
            (storage.rooms, settings.rooms),
            metrics.clone(),
        ));
        let rooms = hub
            .load_rooms()
            .map_err(|err| io::Error::other(format!("cannot load rooms: {err}")))?;
        log::info!("loaded {rooms} rooms");
        let revocations = storage.revocations;
        let tokens = SessionTokens::new(
            storage.session_secret,
            settings.sessions.token_ttl_secs,
            users.clone(),
            revocations.clone(),
        );
        let hasher = PasswordHasher::new(
            settings.bcrypt_cost,
            settings.hash_concurrency,
            metrics.clone(),
        )
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let auth = Arc::new(Authenticator::new(users, hasher, settings.auth_limits));
        let accounts = Accounts::new(
            hub.clone(),
            auth.clone(),
            tokens,
            metrics.clone(),
            settings.sessions.guest_ttl,
        );
        Ok(Server {
            listener,
            shared: Arc::new(Shared {
                hub,
                auth,
                accounts,
                revocations,
                ice: settings.ice,
                connections,
                limits: settings.limits,
                metrics,
                tls: RwLock::new(settings.tls.map(Arc::new)),
                open: AtomicUsize::new(0),
                per_ip: Mutex::default(),
                rejecting: AtomicUsize::new(0),
                draining: AtomicBool::new(false),
            }),
        })
    }

    /// # Errors
    /// As [`TcpListener::local_addr`].
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Starts the accept loop and the hub's timer on their own threads.
    ///
    /// # Errors
    /// If a thread cannot be spawned.
    pub fn start(self) -> io::Result<ServerHandle> {
        let addr = self.listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = mpsc::channel();
        let hub = self.shared.hub.clone();
        let timer = thread::Builder::new()
            .name("hub-timer".into())
            .spawn(move || hub.run_timer())?;
        let (shared, listener, flag) = (self.shared.clone(), self.listener, stop.clone());
        let accept = thread::Builder::new()
            .name("accept".into())
            .spawn(move || accept_loop(listener, shared, flag, done_tx))?;
        Ok(ServerHandle {
            addr,
            shared: self.shared,
            stop,
            accept: Some(accept),
            timer: Some(timer),
            done: done_rx,
        })
    }
}

/// Counts of what the server holds, for tests and operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerStats {
    /// Connection threads alive.
    pub open_connections: usize,
    /// Outboxes registered for delivery.
    pub registered_outboxes: usize,
    pub online_users: usize,
    pub calls: usize,
    pub calls_ringing: usize,
    /// Sessions whose connection dropped, their call held for a resume.
    pub sessions_held: usize,
    pub guests_online: usize,
    pub frames_encoded: u64,
    pub rooms: usize,
    pub room_participants: usize,
    /// bcrypt hashes and verifications run since start.
    pub password_hashes: u64,
}

/// A read-only view of a running server, for the admin listener.
#[derive(Clone)]
pub struct Observer(Arc<Shared>);

impl Observer {
    pub fn stats(&self) -> ServerStats {
        self.0.stats()
    }

    /// True once shutdown has begun: new connections are refused.
    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::SeqCst)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// Every metric in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        let s = self.stats();
        let gauges = Gauges {
            connections_open: s.open_connections,
            users_logged_in: s.online_users,
            calls_ringing: s.calls_ringing,
            calls_active: s.calls - s.calls_ringing,
            frames_encoded: s.frames_encoded,
            rooms: s.rooms,
            room_participants: s.room_participants,
        };
        self.0.metrics.render(gauges, |code| {
            MessageType::from_code(code).map(MessageType::name)
        })
    }
}

/// A running server.
pub struct ServerHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    timer: Option<JoinHandle<()>>,
    done: Receiver<()>,
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> ServerStats {
        self.shared.stats()
    }

    pub fn observer(&self) -> Observer {
        Observer(self.shared.clone())
    }

    /// The operator's use cases on this server's users and live sessions
    /// (the admin socket serves them).
    pub fn user_admin(&self) -> UserAdmin {
        UserAdmin::new(
            self.shared.hub.users().clone(),
            self.shared.auth.clone(),
            self.shared.revocations.clone(),
            Some(self.shared.hub.clone()),
        )
    }

    /// Serves new TLS handshakes with `acceptor` (certificate rotation);
    /// established connections keep theirs. Returns false if TLS is off.
    pub fn replace_tls(&self, acceptor: TlsAcceptor) -> bool {
        let mut tls = self
            .shared
            .tls
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if tls.is_none() {
            return false;
        }
        *tls = Some(Arc::new(acceptor));
        true
    }

    /// Blocks until the accept loop ends (it only ends through a shutdown).
    pub fn wait(&mut self) {
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }

    /// Stops accepting, ends every call (parties get HANGUP), and tells every
    /// client ERROR 503 "server shutting down"; connections close once that is
    /// written. See [`ServerHandle::finish_shutdown`].
    pub fn begin_shutdown(&mut self) {
        if self.shared.draining.swap(true, Ordering::SeqCst) {
            return;
        }
        self.stop.store(true, Ordering::SeqCst);
        // The accept loop blocks in accept(2): a connection to ourselves wakes it.
        let _ = TcpStream::connect_timeout(&wake_address(self.addr), Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        self.shared.hub.stop();
        self.shared.connections.end_all(SessionEnd::ShuttingDown);
        if let Some(timer) = self.timer.take() {
            let _ = timer.join();
        }
    }

    /// Waits until every connection has closed or `deadline` passes; returns
    /// whether they all closed.
    pub fn finish_shutdown(&mut self, deadline: Instant) -> bool {
        loop {
            match self
                .done
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(()) => {}
                Err(RecvTimeoutError::Disconnected) => return true,
                Err(RecvTimeoutError::Timeout) => {
                    warn!(
                        "{} connections still open at the drain deadline",
                        self.shared.open.load(Ordering::SeqCst)
                    );
                    return false;
                }
            }
        }
    }

    /// [`ServerHandle::begin_shutdown`], then waits up to `drain` for the
    /// connections to close. Returns whether they all closed in time.
    pub fn shutdown(mut self, drain: Duration) -> bool {
        let deadline = Instant::now() + drain;
        self.begin_shutdown();
        self.finish_shutdown(deadline)
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if !self.shared.draining.load(Ordering::SeqCst) {
            let deadline = Instant::now() + Duration::from_secs(2);
            self.begin_shutdown();
            self.finish_shutdown(deadline);
        }
    }
}

fn wake_address(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    done: Sender<()>,
) {
    for incoming in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        match incoming {
            Ok(stream) => admit(&shared, stream, &done),
            Err(err) => {
                warn!("accept failed: {err}");
                // Out of descriptors or memory: accept(2) would fail again at once.
                // Back off briefly instead of spinning; connections that close free them.
                if matches!(err.raw_os_error(), Some(23 | 24 | 105 | 12)) {
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
    info!(
        "listener stopped addr={}",
        listener
            .local_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string())
    );
}

/// Releases a connection's slot when its thread ends, however it ends.
struct Slot {
    shared: Arc<Shared>,
    id: crate::application::ConnId,
    ip: IpAddr,
    _done: Sender<()>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.connections.remove(self.id);
        self.shared.release(self.ip);
    }
}

impl Shared {
    /// Takes a connection slot, globally and for `ip`.
    ///
    /// # Errors
    /// The refusal's code and message when either limit is reached.
    fn reserve(&self, ip: IpAddr) -> Result<(), (u16, String)> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        if self.open.load(Ordering::SeqCst) >= self.limits.max_connections {
            return Err((503, "server is at max_connections; try again later".into()));
        }
        if Cidr::any_contains(&self.limits.exempt_networks, ip) {
            // Not counted per address, so release() finds no entry for it.
            self.open.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        }
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= self.limits.max_connections_per_ip {
            return Err((
                429,
                format!(
                    "too many connections from your address (limit {})",
                    self.limits.max_connections_per_ip
                ),
            ));
        }
        *count += 1;
        self.open.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn release(&self, ip: IpAddr) {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&ip);
            }
        }
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

fn admit(shared: &Arc<Shared>, stream: TcpStream, done: &Sender<()>) {
    let Ok(peer) = stream.peer_addr() else { return };
    if let Err(err) = stream
        .set_nodelay(true)
        .and_then(|()| stream.set_nonblocking(true))
    {
        warn!("socket setup failed peer={peer}: {err}");
        return;
    }
    if let Err((code, message)) = shared.reserve(peer.ip()) {
        refuse(shared, stream, peer, code, message);
        return;
    }
    Metrics::count(&shared.metrics.connections_total);
    let id = shared.connections.next_id();
    let outbox = match Outbox::new(shared.limits.outbound_queue_bytes) {
        Ok(outbox) => Arc::new(outbox),
        Err(err) => {
            shared.release(peer.ip());
            warn!("cannot create wake-up for peer={peer}: {err}");
            return;
        }
    };
    shared.connections.insert(id, outbox.clone());
    let slot = Slot {
        shared: shared.clone(),
        id,
        ip: peer.ip(),
        _done: done.clone(),
    };
    let spawned = thread::Builder::new()
        .name(format!("conn-{id}"))
        .stack_size(CONNECTION_STACK)
        .spawn(move || run_connection(slot, stream, peer, outbox));
    if let Err(err) = spawned {
        // The closure, and with it the slot, is dropped: the slot is released.
        error!("cannot spawn a thread for peer={peer}: {err}");
    }
}

fn run_connection(slot: Slot, stream: TcpStream, peer: std::net::SocketAddr, outbox: Arc<Outbox>) {
    let shared = slot.shared.clone();
    let id = slot.id;
    let opened = Instant::now();
    let acceptor = shared.tls_acceptor();
    info!(
        "connection opened conn={id} peer={peer} tls={}",
        acceptor.is_some()
    );
    let transport = match acceptor {
        None => Transport::Plain(std::sync::Arc::new(stream)),
        Some(acceptor) => {
            let deadline = opened + shared.limits.handshake_timeout;
            match accept_tls(
                &acceptor,
                Socket::new(stream),
                deadline,
                Some(outbox.wake_fd()),
            ) {
                Ok(tls) => Transport::tls(tls),
                Err(err) => {
                    info!(
                        "connection closed conn={id} peer={peer} user=- duration_ms={} reason={err}",
                        opened.elapsed().as_millis()
                    );
                    return;
                }
            }
        }
    };
    // The connection logs its own close line and leaves the hub when dropped,
    // which also happens when a handler panics.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        Connection::new(id, peer, opened, shared.clone(), transport, outbox).run();
    }));
    if outcome.is_err() {
        error!("connection thread panicked conn={id} peer={peer}; the daemon carries on");
    }
    drop(slot);
}

/// Answers a client over a connection limit with an ERROR and closes it.
fn refuse(
    shared: &Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    code: u16,
    message: String,
) {
    warn!("connection refused peer={peer} code={code} reason={message}");
    shared.metrics.error(code);
    let frame = ServerMessage::error(code, message, None).to_frame();
    let Some(acceptor) = shared.tls_acceptor() else {
        // A fresh socket's send buffer takes these few bytes at once.
        let _ = stream.write_all(&frame);
        return;
    };
    // Over TLS the refusal needs a handshake; a few threads may do that, beyond them clients are just closed.
    if shared.rejecting.fetch_add(1, Ordering::SeqCst) >= MAX_TLS_REJECTERS {
        shared.rejecting.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let counter = shared.clone();
    let shared = shared.clone();
    let spawned = thread::Builder::new()
        .name("reject".into())
        .stack_size(CONNECTION_STACK)
        .spawn(move || {
            let deadline =
                Instant::now() + shared.limits.handshake_timeout.min(Duration::from_secs(2));
            if let Ok(mut tls) = accept_tls(&acceptor, stream, deadline, None) {
                let _ = tls.write_all(&frame);
                let _ = tls.shutdown();
            }
            shared.rejecting.fetch_sub(1, Ordering::SeqCst);
        });
    if spawned.is_err() {
        counter.rejecting.fetch_sub(1, Ordering::SeqCst);
        warn!("cannot spawn a thread to refuse peer={peer}");
    }
}
