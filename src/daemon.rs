//! The composition root: configuration in, a running server out.
//!
//! Start-up order: everything that can be checked without writing (the TLS
//! identity, then binding every listener) comes before anything is written to
//! the data directory, so a daemon that cannot serve leaves no files behind.
//! Only then the data directory is created and locked, storage opened, and
//! the admin socket created.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use log::{debug, info, warn};
use native_tls::TlsAcceptor;

use crate::admin::{self, AdminHandle};
use crate::application::auth::AuthLimits;
use crate::application::hub::{HoldLimits, RoomStores};
use crate::application::{IceSettings, UserStore};
use crate::config::{Config, LimitsConfig};
use crate::domain::limits::BackoffPolicy;
use crate::infrastructure::admin_socket::{self, ADMIN_SOCKET_FILE, AdminSocket, SocketError};
use crate::infrastructure::journal::OpenError;
use crate::infrastructure::{
    CONVERSATIONS_FILE, ConversationFile, InboxLimits, STATE_FILE, StateFile,
};
use crate::infrastructure::{
    DataDirLock, LoadError, LockError, RevocationFile, Role, TokenFileError, UsersFile,
    load_or_create_secret,
};
use crate::tcp::{
    Limits, Server, ServerHandle, SessionSettings, Settings, Storage, TlsError, build_acceptor,
};

/// Which listener a bind failure is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The clients' port (server.bind_address, server.port).
    Clients,
    /// The admin HTTP listener (admin.bind_address).
    AdminHttp,
}

/// Why the daemon did not start. [`StartError::exit_code`] maps it to the
/// documented exit codes. Each message says what is wrong and what to do.
#[derive(Debug)]
pub enum StartError {
    /// The TLS identity could not be loaded (a configuration problem).
    Tls(TlsError),
    /// users.txt is unreadable or malformed.
    Data(LoadError),
    /// The session secret or the revocation journal is unusable.
    Sessions(TokenFileError),
    /// A journal (rooms, messages, inboxes, ids) cannot be opened.
    Journal(OpenError),
    /// The data directory cannot be used: it cannot be created, is a file, or
    /// another process holds it.
    Locked(LockError),
    /// A listener's address could not be bound.
    Bind {
        listener: Listener,
        addr: SocketAddr,
        err: io::Error,
    },
    /// The admin socket could not be created in the data directory.
    AdminSocket(SocketError),
    /// Anything else the operating system refused (threads, settings).
    Io(io::Error),
}

impl StartError {
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Tls(_) => 2,
            StartError::Data(_)
            | StartError::Sessions(_)
            | StartError::Journal(_)
            | StartError::Locked(_)
            | StartError::Bind { .. }
            | StartError::AdminSocket(_)
            | StartError::Io(_) => 1,
        }
    }
}

/// The operating system's text for `err`, without its "(os error N)" suffix.
fn os_text(err: &io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text,
    }
}

/// What to do about a listener that could not be bound.
fn bind_hint(listener: Listener, err: &io::Error) -> &'static str {
    match (listener, err.kind()) {
        (Listener::Clients, io::ErrorKind::AddrInUse) => {
            "another program uses that port; stop it or choose another port (--port, server.port)"
        }
        (Listener::AdminHttp, io::ErrorKind::AddrInUse) => {
            "another program uses that port; choose another port (--admin-bind, admin.bind_address)"
        }
        (Listener::Clients, io::ErrorKind::AddrNotAvailable) => {
            "that address is not one of this machine's; choose another (--bind, server.bind_address)"
        }
        (Listener::AdminHttp, io::ErrorKind::AddrNotAvailable) => {
            "that address is not one of this machine's; choose another (--admin-bind, admin.bind_address)"
        }
        (_, io::ErrorKind::PermissionDenied) => {
            "ports below 1024 need privileges; choose a port above 1023 or grant the daemon CAP_NET_BIND_SERVICE"
        }
        (Listener::Clients, _) => "check --bind and --port (server.bind_address, server.port)",
        (Listener::AdminHttp, _) => "check --admin-bind (admin.bind_address)",
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Tls(e) => write!(f, "{e}"),
            StartError::Data(e) => write!(f, "cannot load users: {e}"),
            StartError::Sessions(e) => write!(f, "cannot load session state: {e}"),
            StartError::Journal(e) => write!(f, "cannot load rooms and messages: {e}"),
            StartError::Locked(e) => write!(f, "{e}"),
            StartError::Bind {
                listener,
                addr,
                err,
            } => {
                let what = match listener {
                    Listener::Clients => "clients (server.bind_address, server.port)",
                    Listener::AdminHttp => "the admin HTTP listener (admin.bind_address)",
                };
                write!(
                    f,
                    "cannot listen for {what} on {addr}: {}; {}",
                    os_text(err),
                    bind_hint(*listener, err)
                )
            }
            StartError::AdminSocket(e) => write!(f, "{e}"),
            StartError::Io(e) => write!(f, "cannot start: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A running daemon: the server, the admin listener if configured, the admin
/// socket, and the data-directory lock, held until it stops.
pub struct Running {
    pub server: ServerHandle,
    pub admin: Option<AdminHandle>,
    admin_socket: Option<AdminSocket>,
    // Declared last: dropped after everything else (the socket file is
    // removed while the directory is still ours).
    _lock: DataDirLock,
}

impl Running {
    /// Assembles a running daemon from its parts (tests build servers on their
    /// own stores); it has no admin socket.
    pub fn new(server: ServerHandle, admin: Option<AdminHandle>, lock: DataDirLock) -> Running {
        Running {
            server,
            admin,
            admin_socket: None,
            _lock: lock,
        }
    }

    /// Where `switchboard user` reaches this daemon, if it can.
    pub fn admin_socket_path(&self) -> Option<&Path> {
        self.admin_socket.as_ref().map(AdminSocket::path)
    }

    /// Drains (see [`ServerHandle::shutdown`]) and releases everything.
    /// Returns whether every connection closed within `drain`.
    pub fn shutdown(self, drain: std::time::Duration) -> bool {
        // The admin listener stays up while draining, so /healthz says 503;
        // the admin socket too, so operators are not refused meanwhile.
        let Running {
            server,
            admin,
            admin_socket,
            _lock,
        } = self;
        let clean = server.shutdown(drain);
        drop(admin);
        drop(admin_socket);
        clean
    }
}

/// The admin socket of `data_dir`.
pub fn admin_socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(ADMIN_SOCKET_FILE)
}

/// Loads the TLS identity, binds every listener, then takes the data
/// directory (creating it), loads users.txt and the session files, starts
/// serving, and opens the admin HTTP listener (if configured) and the admin
/// socket.
///
/// # Errors
/// See [`StartError`]. Nothing is written to the data directory unless the
/// TLS identity loads and every listener is bound.
pub fn start(config: &Config) -> Result<Running, StartError> {
    let tls = match &config.tls {
        Some(identity) => Some(build_acceptor(identity).map_err(StartError::Tls)?),
        None => None,
    };
    // Bound before the data directory is touched; nothing accepts yet.
    let addr = SocketAddr::new(config.bind_address, config.port);
    let listener = bind_listener(addr).map_err(|err| clients_bind_error(config, addr, err))?;
    let admin_listener = match config.admin_bind {
        Some(addr) => Some(TcpListener::bind(addr).map_err(|err| StartError::Bind {
            listener: Listener::AdminHttp,
            addr,
            err,
        })?),
        None => None,
    };
    let lock = DataDirLock::acquire(&config.data_dir).map_err(StartError::Locked)?;
    let storage = open_storage(config)?;
    warn_if_descriptors_short(config.max_connections);
    if let Ok(bound) = listener.local_addr() {
        info!("listening on {bound}");
    }
    let server = Server::new(listener, settings(config, tls), storage).map_err(StartError::Io)?;
    let server = server.start().map_err(StartError::Io)?;
    let admin = match admin_listener {
        Some(listener) => {
            Some(admin::start_on(listener, server.observer()).map_err(StartError::Io)?)
        }
        None => None,
    };
    let admin_socket = start_admin_socket(&config.data_dir, &server)?;
    // The whole configuration is long (dozens of keys): debug. What an operator
    // changed from the defaults is what explains this daemon's behaviour.
    debug!("configuration {}", config.describe().replace('\n', " "));
    let changed = config.describe_non_default();
    if changed.is_empty() {
        info!("serving with the default configuration");
    } else {
        info!("serving with {}", changed.replace('\n', ", "));
    }
    Ok(Running {
        server,
        admin,
        admin_socket,
        _lock: lock,
    })
}

/// The clients' listener failed: when the port is busy because another daemon
/// serves this very data directory, that is what the operator is told.
fn clients_bind_error(config: &Config, addr: SocketAddr, err: io::Error) -> StartError {
    if err.kind() == io::ErrorKind::AddrInUse
        && let Ok(Some(holder)) = DataDirLock::holder(&config.data_dir)
        && holder.role == Some(Role::Daemon)
    {
        return StartError::Locked(LockError::Held {
            dir: config.data_dir.clone(),
            holder,
        });
    }
    StartError::Bind {
        listener: Listener::Clients,
        addr,
        err,
    }
}

/// Creates the admin socket and serves it. A data directory whose path is
/// too long for a socket address only costs the socket (with a warning).
fn start_admin_socket(
    data_dir: &Path,
    server: &ServerHandle,
) -> Result<Option<AdminSocket>, StartError> {
    let bound = match admin_socket::bind(&admin_socket_path(data_dir)) {
        Ok(bound) => bound,
        Err(err @ SocketError::TooLong { .. }) => {
            warn!("{err}; until then `switchboard user` cannot reach this daemon while it runs");
            return Ok(None);
        }
        Err(err) => return Err(StartError::AdminSocket(err)),
    };
    bound
        .serve(server.user_admin())
        .map(Some)
        .map_err(StartError::Io)
}

/// Opens what the server keeps in the data directory: users.txt, the session
/// secret (created on first start) and the revocation journal. The caller holds
/// the data-directory lock.
///
/// # Errors
/// A file that cannot be read, created or parsed.
pub fn open_storage(config: &Config) -> Result<Storage, StartError> {
    let users: Arc<dyn UserStore> =
        Arc::new(UsersFile::open(&config.users_file).map_err(StartError::Data)?);
    let session_secret = load_or_create_secret(&config.data_dir.join(SESSION_SECRET_FILE))
        .map_err(StartError::Sessions)?;
    let revocations = Arc::new(
        RevocationFile::open(&config.data_dir.join(REVOCATIONS_FILE))
            .map_err(StartError::Sessions)?,
    );
    // Both journals are shared by everything durable after users: room and
    // chat logs in one, keyed records, inboxes and ids in the other.
    let logs = Arc::new(
        ConversationFile::open(&config.data_dir.join(CONVERSATIONS_FILE))
            .map_err(StartError::Journal)?,
    );
    let state = Arc::new(
        StateFile::open(&config.data_dir.join(STATE_FILE), InboxLimits::default())
            .map_err(StartError::Journal)?,
    );
    Ok(Storage {
        users,
        revocations,
        session_secret,
        rooms: RoomStores {
            kv: state.clone(),
            logs,
            inbox: state.clone(),
            ids: state,
        },
    })
}

/// The session-token signing secret, in the data directory.
pub const SESSION_SECRET_FILE: &str = "session.key";
/// The token revocation journal, in the data directory.
pub const REVOCATIONS_FILE: &str = "revocations.txt";

/// The server's settings from the configuration.
pub fn settings(config: &Config, tls: Option<TlsAcceptor>) -> Settings {
    Settings {
        limits: Limits {
            max_connections: config.max_connections,
            max_frame: config.max_frame_bytes,
            idle_timeout: config.idle_timeout,
            handshake_timeout: config.tls_handshake_timeout,
            outbound_queue_bytes: config.outbound_queue_bytes,
            max_connections_per_ip: config.limits.max_connections_per_ip,
            exempt_networks: config.limits.exempt_networks.clone(),
            login_timeout: config.limits.login_timeout,
            frames_per_second: config.limits.frames_per_second,
            frame_burst: f64::from(config.limits.frame_burst),
            rate_violations_before_disconnect: config.limits.rate_violations_before_disconnect,
        },
        auth_limits: auth_limits(&config.limits),
        ringing_timeout: config.ringing_timeout,
        bcrypt_cost: config.bcrypt_cost,
        hash_concurrency: config.max_concurrent_hashes,
        tls,
        sessions: SessionSettings {
            token_ttl_secs: config.sessions.token_ttl.as_secs().max(1),
            hold: HoldLimits {
                grace: config.sessions.resume_grace,
                max_frames: config.sessions.held_max_frames,
                max_bytes: config.sessions.held_max_bytes,
            },
            guest_ttl: config
                .sessions
                .guests_enabled
                .then_some(config.sessions.guest_ttl),
        },
        ice: IceSettings {
            stun_servers: config.webrtc.stun_servers.clone(),
            turn_servers: config.webrtc.turn_servers.clone(),
            turn_secret: config.webrtc.turn_secret.clone(),
            credential_ttl_secs: config.webrtc.turn_credential_ttl.as_secs().max(1),
        },
        rooms: config.rooms,
    }
}

fn auth_limits(l: &LimitsConfig) -> AuthLimits {
    let policy = |free_failures| BackoffPolicy {
        free_failures,
        initial: l.login_backoff_initial,
        max: l.login_backoff_max,
        // Forgotten once a full maximum wait has passed without a failure.
        forget_after: l.login_backoff_max * 2,
    };
    AuthLimits {
        per_user: policy(l.failed_logins_per_user),
        per_ip: policy(l.failed_logins_per_ip),
        registrations_per_ip_per_minute: l.registrations_per_ip_per_minute,
        registration_burst: l.registration_burst,
        exempt_networks: l.exempt_networks.clone(),
    }
}

/// Reloads the TLS identity from disk for new handshakes (SIGHUP). On failure
/// the current identity stays in use.
///
/// # Errors
/// If TLS is off or the files do not load.
pub fn reload_tls(config: &Config, running: &Running) -> Result<(), TlsError> {
    let Some(identity) = &config.tls else {
        return Err(TlsError("TLS is not enabled; nothing to reload".into()));
    };
    let acceptor = build_acceptor(identity)?;
    running.server.replace_tls(acceptor);
    info!("TLS identity reloaded; new handshakes use it");
    Ok(())
}

/// Each connection holds two descriptors (socket and eventfd).
fn warn_if_descriptors_short(max_connections: usize) {
    use rustix::process::{Resource, getrlimit};
    let limit = getrlimit(Resource::Nofile).current;
    let needed = 2 * max_connections as u64 + 64;
    if let Some(limit) = limit
        && limit < needed
    {
        warn!(
            "open-files limit {limit} is below the {needed} descriptors that server.max_connections={max_connections} needs (2 per connection); raise LimitNOFILE or lower max_connections"
        );
    }
}

/// Connections the kernel may hold completed but not yet accepted (it caps
/// this at net.core.somaxconn).
const LISTEN_BACKLOG: i32 = 4096;

/// Binds like [`TcpListener::bind`] (SO_REUSEADDR, close-on-exec) but with a
/// backlog of [`LISTEN_BACKLOG`]: std listens with 128, and a burst of
/// connections beyond that (clients reconnecting after a restart) has its SYNs
/// dropped and retried after 1 s, 3 s, ... (seen as ListenOverflows in nstat).
fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, bind, listen, socket_with, sockopt};
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    bind(&fd, &addr)?;
    listen(&fd, LISTEN_BACKLOG)?;
    Ok(TcpListener::from(fd))
}
