//! The composition root: configuration in, a running server out.

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use log::{info, warn};
use native_tls::TlsAcceptor;

use crate::admin::{self, AdminHandle};
use crate::application::auth::AuthLimits;
use crate::application::hub::HoldLimits;
use crate::application::{IceSettings, UserStore};
use crate::config::{Config, LimitsConfig};
use crate::domain::limits::BackoffPolicy;
use crate::infrastructure::{
    DataDirLock, LoadError, LockError, RevocationFile, SessionFileError, UsersFile,
    load_or_create_secret,
};
use crate::tcp::{
    Limits, Server, ServerHandle, SessionSettings, Settings, Storage, TlsError, build_acceptor,
};

/// Why the daemon did not start. [`StartError::exit_code`] maps it to the
/// documented exit codes.
#[derive(Debug)]
pub enum StartError {
    /// The TLS identity could not be loaded (a configuration problem).
    Tls(TlsError),
    /// users.txt is unreadable or malformed.
    Data(LoadError),
    /// The session secret or the revocation journal is unusable.
    Sessions(SessionFileError),
    /// Another process holds the data directory.
    Locked(LockError),
    /// The address could not be bound.
    Bind {
        addr: SocketAddr,
        err: std::io::Error,
    },
    /// Anything else the operating system refused (threads, settings).
    Io(std::io::Error),
}

impl StartError {
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Tls(_) => 2,
            StartError::Data(_)
            | StartError::Sessions(_)
            | StartError::Locked(_)
            | StartError::Bind { .. }
            | StartError::Io(_) => 1,
        }
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Tls(e) => write!(f, "{e}"),
            StartError::Data(e) => write!(f, "cannot load users: {e}"),
            StartError::Sessions(e) => write!(f, "cannot load session state: {e}"),
            StartError::Locked(e) => write!(f, "cannot use the data directory: {e}"),
            StartError::Bind { addr, err } => write!(f, "cannot listen on {addr}: {err}"),
            StartError::Io(e) => write!(f, "cannot start: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A running daemon: the server, the admin listener if configured, and the
/// data-directory lock, held until it stops.
pub struct Running {
    pub server: ServerHandle,
    pub admin: Option<AdminHandle>,
    _lock: DataDirLock,
}

impl Running {
    /// Assembles a running daemon from its parts (tests build servers on their own stores).
    pub fn new(server: ServerHandle, admin: Option<AdminHandle>, lock: DataDirLock) -> Running {
        Running {
            server,
            admin,
            _lock: lock,
        }
    }

    /// Drains (see [`ServerHandle::shutdown`]) and releases everything.
    /// Returns whether every connection closed within `drain`.
    pub fn shutdown(self, drain: std::time::Duration) -> bool {
        // The admin listener stays up while draining, so /healthz says 503.
        let Running {
            server,
            admin,
            _lock,
        } = self;
        let clean = server.shutdown(drain);
        drop(admin);
        clean
    }
}

/// Takes the data directory, loads the TLS identity and users.txt, binds, and
/// starts serving (and the admin listener, if configured).
///
/// # Errors
/// See [`StartError`]; nothing is bound unless everything before it succeeded.
pub fn start(config: &Config) -> Result<Running, StartError> {
    let lock = DataDirLock::acquire(&config.data_dir).map_err(StartError::Locked)?;
    let tls = match &config.tls {
        Some(identity) => Some(build_acceptor(identity).map_err(StartError::Tls)?),
        None => None,
    };
    let storage = open_storage(config)?;
    warn_if_descriptors_short(config.max_connections);
    let addr = SocketAddr::new(config.bind_address, config.port);
    let listener = bind_listener(addr).map_err(|err| StartError::Bind { addr, err })?;
    if let Ok(bound) = listener.local_addr() {
        info!("listening on {bound}");
    }
    let server = Server::new(listener, settings(config, tls), storage).map_err(StartError::Io)?;
    let server = server.start().map_err(StartError::Io)?;
    let admin = match config.admin_bind {
        Some(addr) => Some(
            admin::start(addr, server.observer()).map_err(|err| StartError::Bind { addr, err })?,
        ),
        None => None,
    };
    info!("serving {}", config.describe().replace('\n', " "));
    Ok(Running {
        server,
        admin,
        _lock: lock,
    })
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
    Ok(Storage {
        users,
        revocations,
        session_secret,
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
