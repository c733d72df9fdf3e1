//! Configuration: server_config.json, then command-line flags, then environment.
//!
//! Every key is optional with a documented default (CONFIG.md). Validation runs
//! before anything binds, and every error names the key it is about: a daemon
//! that starts on defaults after a typo serves somewhere nobody expects. Keys
//! the RoomRTC reference has but Switchboard does not use are the only unknown
//! keys accepted ([`REFERENCE_ONLY_KEYS`]), with a warning.

mod keys;

pub use keys::REFERENCE_ONLY_KEYS;

use std::fmt;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::domain::RoomLimits;
use crate::domain::limits::Cidr;
use crate::tcp::TlsIdentity;

/// The environment variable that supplies the PKCS#12 password, so it need not
/// sit in a file or on a command line.
pub const PKCS12_PASSWORD_ENV: &str = "SWITCHBOARD_PKCS12_PASSWORD";

/// A configuration problem. The daemon prints it (after "invalid
/// configuration: ") and exits with code 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key it is about, if any.
    pub key: Option<String>,
    pub message: String,
    /// The message already names the key ("unknown key server.prot; ..."),
    /// so it is shown without the `key: ` prefix.
    names_key: bool,
}

impl ConfigError {
    fn at(key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            key: Some(key.into()),
            message: message.into(),
            names_key: false,
        }
    }

    fn naming(key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            names_key: true,
            ..ConfigError::at(key, message)
        }
    }

    fn plain(message: impl Into<String>) -> ConfigError {
        ConfigError {
            key: None,
            message: message.into(),
            names_key: false,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) if !self.names_key => write!(f, "{key}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub bind_address: IpAddr,
    pub port: u16,
    pub max_connections: usize,
    pub tls: Option<TlsIdentity>,
    pub max_frame_bytes: usize,
    pub idle_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub outbound_queue_bytes: usize,
    pub data_dir: PathBuf,
    pub users_file: PathBuf,
    pub bcrypt_cost: u32,
    /// 0 in the file means "one per CPU core"; resolved here.
    pub max_concurrent_hashes: usize,
    pub ringing_timeout: Duration,
    pub log_level: log::LevelFilter,
    /// How long a shutdown waits for connections to close.
    pub drain_timeout: Duration,
    /// The admin HTTP listener (/healthz, /metrics); off when `None`.
    pub admin_bind: Option<SocketAddr>,
    pub limits: LimitsConfig,
    pub sessions: SessionsConfig,
    pub webrtc: WebrtcConfig,
    /// `rooms.*`: room capacity, history and per-user room limits.
    pub rooms: RoomLimits,
}

/// `sessions.*` and `guests.*`: protocol 2 session tokens, held calls, guests.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionsConfig {
    pub token_ttl: Duration,
    /// Zero: a dropped connection ends its call at once, as in v1.
    pub resume_grace: Duration,
    pub held_max_frames: usize,
    pub held_max_bytes: usize,
    pub guests_enabled: bool,
    pub guest_ttl: Duration,
}

impl Default for SessionsConfig {
    fn default() -> SessionsConfig {
        SessionsConfig {
            token_ttl: Duration::from_secs(24 * 3600),
            resume_grace: Duration::from_secs(15),
            held_max_frames: 256,
            held_max_bytes: 256 * 1024,
            guests_enabled: true,
            guest_ttl: Duration::from_secs(30 * 60),
        }
    }
}

/// `webrtc.*`: the STUN and TURN servers handed to clients.
#[derive(Debug, Clone, PartialEq)]
pub struct WebrtcConfig {
    pub stun_servers: Vec<String>,
    pub turn_servers: Vec<String>,
    pub turn_secret: Option<String>,
    pub turn_credential_ttl: Duration,
}

impl Default for WebrtcConfig {
    fn default() -> WebrtcConfig {
        WebrtcConfig {
            stun_servers: Vec::new(),
            turn_servers: Vec::new(),
            turn_secret: None,
            turn_credential_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// The `limits.*` keys: what one client, or one address, may do.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    pub max_connections_per_ip: usize,
    /// Networks whose clients the per-address limits do not count (many
    /// people behind one address); empty unless the operator opts in.
    pub exempt_networks: Vec<Cidr>,
    pub login_timeout: Duration,
    pub frames_per_second: f64,
    pub frame_burst: u32,
    pub rate_violations_before_disconnect: u32,
    /// The sustained rate of account creations per address.
    pub registrations_per_ip_per_minute: u32,
    /// Account creations one address may make at once (at least a minute's worth).
    pub registration_burst: u32,
    pub failed_logins_per_user: u32,
    pub failed_logins_per_ip: u32,
    pub login_backoff_initial: Duration,
    pub login_backoff_max: Duration,
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            max_connections_per_ip: 256,
            exempt_networks: Vec::new(),
            login_timeout: Duration::from_secs(10),
            frames_per_second: 100.0,
            frame_burst: 200,
            rate_violations_before_disconnect: 50,
            registrations_per_ip_per_minute: 10,
            registration_burst: 30,
            failed_logins_per_user: 5,
            failed_logins_per_ip: 20,
            login_backoff_initial: Duration::from_secs(1),
            login_backoff_max: Duration::from_secs(900),
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            bind_address: IpAddr::from([127, 0, 0, 1]),
            port: 8080,
            max_connections: 4096,
            tls: None,
            max_frame_bytes: 1024 * 1024,
            idle_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            outbound_queue_bytes: 4 * 1024 * 1024,
            data_dir: PathBuf::from("data"),
            users_file: PathBuf::from("data/users.txt"),
            bcrypt_cost: 10,
            max_concurrent_hashes: cores(),
            ringing_timeout: Duration::from_secs(30),
            log_level: log::LevelFilter::Info,
            drain_timeout: Duration::from_secs(5),
            admin_bind: None,
            limits: LimitsConfig::default(),
            sessions: SessionsConfig::default(),
            webrtc: WebrtcConfig::default(),
            rooms: RoomLimits::default(),
        }
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Values given on the command line; each replaces the file's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub bind_address: Option<String>,
    pub port: Option<u16>,
    pub data_dir: Option<PathBuf>,
    pub log_level: Option<String>,
    pub enable_tls: Option<bool>,
    pub pkcs12_path: Option<PathBuf>,
    pub cert_path: Option<PathBuf>,
    pub key_path: Option<PathBuf>,
    pub admin_bind: Option<String>,
}

/// The file's values, each `None` where the key is absent.
#[derive(Debug, Default)]
struct File {
    server: ServerSection,
    storage: StorageSection,
    auth: AuthSection,
    calls: CallsSection,
    logging: LoggingSection,
    admin: AdminSection,
    limits: LimitsSection,
    sessions: SessionsSection,
    guests: GuestsSection,
    webrtc: WebrtcSection,
    rooms: RoomsSection,
}

/// `rooms.*`, each read as any JSON integer 0 or more and range-checked in
/// [`resolve_rooms`], so an out-of-range value gets the key's own range.
#[derive(Debug, Default)]
struct RoomsSection {
    default_participants: Option<u64>,
    max_participants: Option<u64>,
    max_rooms_per_owner: Option<u64>,
    history_per_room: Option<u64>,
    events_per_room: Option<u64>,
    max_text_bytes: Option<u64>,
    max_invitations_per_room: Option<u64>,
    knocks_per_minute: Option<u64>,
}

#[derive(Debug, Default)]
struct SessionsSection {
    token_ttl_secs: Option<f64>,
    resume_grace_secs: Option<f64>,
    held_max_frames: Option<usize>,
    held_max_bytes: Option<usize>,
}

#[derive(Debug, Default)]
struct GuestsSection {
    enabled: Option<bool>,
    ttl_secs: Option<f64>,
}

#[derive(Debug, Default)]
struct WebrtcSection {
    stun_servers: Option<Vec<String>>,
    turn_servers: Option<Vec<String>>,
    turn_secret: Option<String>,
    turn_credential_ttl_secs: Option<f64>,
}

#[derive(Debug, Default)]
struct LimitsSection {
    max_connections_per_ip: Option<usize>,
    exempt_networks: Option<Vec<String>>,
    login_timeout_secs: Option<f64>,
    frames_per_second: Option<f64>,
    frame_burst: Option<u32>,
    rate_violations_before_disconnect: Option<u32>,
    registrations_per_ip_per_minute: Option<u32>,
    registration_burst: Option<u32>,
    failed_logins_per_user: Option<u32>,
    failed_logins_per_ip: Option<u32>,
    login_backoff_initial_secs: Option<f64>,
    login_backoff_max_secs: Option<f64>,
}

#[derive(Debug, Default)]
struct AdminSection {
    bind_address: Option<String>,
}

#[derive(Debug, Default)]
struct ServerSection {
    bind_address: Option<String>,
    port: Option<u16>,
    max_connections: Option<usize>,
    enable_tls: Option<bool>,
    pkcs12_path: Option<PathBuf>,
    pkcs12_password: Option<String>,
    cert_path: Option<PathBuf>,
    key_path: Option<PathBuf>,
    max_frame_bytes: Option<usize>,
    idle_timeout_secs: Option<f64>,
    tls_handshake_timeout_secs: Option<f64>,
    outbound_queue_bytes: Option<usize>,
    drain_timeout_secs: Option<f64>,
}

#[derive(Debug, Default)]
struct StorageSection {
    data_dir: Option<PathBuf>,
    users_file: Option<PathBuf>,
}

#[derive(Debug, Default)]
struct AuthSection {
    bcrypt_cost: Option<u32>,
    max_concurrent_hashes: Option<usize>,
}

#[derive(Debug, Default)]
struct CallsSection {
    ringing_timeout_secs: Option<f64>,
}

#[derive(Debug, Default)]
struct LoggingSection {
    log_level: Option<String>,
}

/// A loaded configuration and the warnings to log once logging is up.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// RoomRTC reference keys that Switchboard does not use, ignored
    /// ([`REFERENCE_ONLY_KEYS`]); any other unknown key is an error.
    pub warnings: Vec<String>,
}

impl Config {
    /// Reads `file` (if any), applies `overrides` and `env`, and validates.
    ///
    /// # Errors
    /// The first invalid value, naming its key; or an unreadable or non-JSON file.
    pub fn load(
        file: Option<&Path>,
        overrides: &Overrides,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Loaded, ConfigError> {
        let mut warnings = Vec::new();
        let parsed = match file {
            None => File::default(),
            Some(path) => {
                let text = fs::read_to_string(path).map_err(|e| {
                    ConfigError::plain(format!(
                        "cannot read configuration file {}: {e}",
                        path.display()
                    ))
                })?;
                parse_file(&text, &mut warnings).map_err(|mut e| {
                    e.message = format!("{} (in {})", e.message, path.display());
                    e
                })?
            }
        };
        let config = resolve(parsed, overrides, env)?;
        Ok(Loaded { config, warnings })
    }

    /// The effective configuration, one `key = value` per line, secrets masked.
    pub fn describe(&self) -> String {
        let path = |p: &Path| p.display().to_string();
        let (enable_tls, pkcs12, password, cert, key) = match &self.tls {
            None => (false, String::new(), "", String::new(), String::new()),
            Some(TlsIdentity::Pkcs12 { path: p, password }) => (
                true,
                path(p),
                if password.is_empty() { "" } else { "***" },
                String::new(),
                String::new(),
            ),
            Some(TlsIdentity::Pem { cert, key }) => {
                (true, String::new(), "", path(cert), path(key))
            }
        };
        let secs = |d: Duration| d.as_secs_f64();
        let lines = [
            format!("server.bind_address = {}", self.bind_address),
            format!("server.port = {}", self.port),
            format!("server.max_connections = {}", self.max_connections),
            format!("server.enable_tls = {enable_tls}"),
            format!("server.pkcs12_path = {pkcs12}"),
            format!("server.pkcs12_password = {password}"),
            format!("server.cert_path = {cert}"),
            format!("server.key_path = {key}"),
            format!("server.max_frame_bytes = {}", self.max_frame_bytes),
            format!("server.idle_timeout_secs = {}", secs(self.idle_timeout)),
            format!(
                "server.tls_handshake_timeout_secs = {}",
                secs(self.tls_handshake_timeout)
            ),
            format!(
                "server.outbound_queue_bytes = {}",
                self.outbound_queue_bytes
            ),
            format!("server.drain_timeout_secs = {}", secs(self.drain_timeout)),
            format!("storage.data_dir = {}", path(&self.data_dir)),
            format!("storage.users_file = {}", path(&self.users_file)),
            format!("auth.bcrypt_cost = {}", self.bcrypt_cost),
            format!(
                "auth.max_concurrent_hashes = {}",
                self.max_concurrent_hashes
            ),
            format!(
                "calls.ringing_timeout_secs = {}",
                secs(self.ringing_timeout)
            ),
            format!(
                "logging.log_level = {}",
                self.log_level.as_str().to_lowercase()
            ),
            format!(
                "admin.bind_address = {}",
                self.admin_bind.map(|a| a.to_string()).unwrap_or_default()
            ),
            format!(
                "limits.max_connections_per_ip = {}",
                self.limits.max_connections_per_ip
            ),
            format!(
                "limits.exempt_networks = {}",
                self.limits
                    .exempt_networks
                    .iter()
                    .map(Cidr::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            format!(
                "limits.login_timeout_secs = {}",
                secs(self.limits.login_timeout)
            ),
            format!(
                "limits.frames_per_second = {}",
                self.limits.frames_per_second
            ),
            format!("limits.frame_burst = {}", self.limits.frame_burst),
            format!(
                "limits.rate_violations_before_disconnect = {}",
                self.limits.rate_violations_before_disconnect
            ),
            format!(
                "limits.registrations_per_ip_per_minute = {}",
                self.limits.registrations_per_ip_per_minute
            ),
            format!(
                "limits.registration_burst = {}",
                self.limits.registration_burst
            ),
            format!(
                "limits.failed_logins_per_user = {}",
                self.limits.failed_logins_per_user
            ),
            format!(
                "limits.failed_logins_per_ip = {}",
                self.limits.failed_logins_per_ip
            ),
            format!(
                "limits.login_backoff_initial_secs = {}",
                secs(self.limits.login_backoff_initial)
            ),
            format!(
                "limits.login_backoff_max_secs = {}",
                secs(self.limits.login_backoff_max)
            ),
            format!(
                "sessions.token_ttl_secs = {}",
                secs(self.sessions.token_ttl)
            ),
            format!(
                "sessions.resume_grace_secs = {}",
                secs(self.sessions.resume_grace)
            ),
            format!(
                "sessions.held_max_frames = {}",
                self.sessions.held_max_frames
            ),
            format!("sessions.held_max_bytes = {}", self.sessions.held_max_bytes),
            format!("guests.enabled = {}", self.sessions.guests_enabled),
            format!("guests.ttl_secs = {}", secs(self.sessions.guest_ttl)),
            format!(
                "webrtc.stun_servers = {}",
                self.webrtc.stun_servers.join(",")
            ),
            format!(
                "webrtc.turn_servers = {}",
                self.webrtc.turn_servers.join(",")
            ),
            format!(
                "webrtc.turn_secret = {}",
                if self.webrtc.turn_secret.is_some() {
                    "***"
                } else {
                    ""
                }
            ),
            format!(
                "webrtc.turn_credential_ttl_secs = {}",
                secs(self.webrtc.turn_credential_ttl)
            ),
            format!(
                "rooms.default_participants = {}",
                self.rooms.default_participants
            ),
            format!("rooms.max_participants = {}", self.rooms.max_participants),
            format!(
                "rooms.max_rooms_per_owner = {}",
                self.rooms.max_rooms_per_owner
            ),
            format!("rooms.history_per_room = {}", self.rooms.history_per_room),
            format!("rooms.events_per_room = {}", self.rooms.events_per_room),
            format!("rooms.max_text_bytes = {}", self.rooms.max_text_bytes),
            format!(
                "rooms.max_invitations_per_room = {}",
                self.rooms.max_invitations_per_room
            ),
            format!("rooms.knocks_per_minute = {}", self.rooms.knocks_per_minute),
        ];
        lines.join("\n")
    }

    /// The lines of [`Config::describe`] that differ from the defaults', in
    /// the same order and format (secrets masked); empty if none differ. A
    /// start-up log line of every setting is long enough that nobody reads it.
    pub fn describe_non_default(&self) -> String {
        let defaults = Config::default().describe();
        let described = self.describe();
        described
            .lines()
            .zip(defaults.lines())
            .filter(|(line, default)| line != default)
            .map(|(line, _)| line)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The file's text as values by key. Unknown keys, nulls, syntax errors and
/// wrong JSON types are refused here, naming the key and the value.
fn parse_file(text: &str, warnings: &mut Vec<String>) -> Result<File, ConfigError> {
    let root = keys::parse(text)?;
    warnings.extend(keys::check_keys(&root)?);
    read_file(&keys::Doc::new(&root))
}

/// Reads every key of [`keys::SECTIONS`], and nothing else.
fn read_file(doc: &keys::Doc<'_>) -> Result<File, ConfigError> {
    const ANY: u64 = u64::MAX;
    let u32_max = u64::from(u32::MAX);
    Ok(File {
        server: ServerSection {
            bind_address: doc.string("server.bind_address")?,
            port: doc.integer("server.port", u64::from(u16::MAX))?,
            max_connections: doc.integer("server.max_connections", ANY)?,
            enable_tls: doc.boolean("server.enable_tls")?,
            pkcs12_path: doc.path("server.pkcs12_path")?,
            pkcs12_password: doc.string("server.pkcs12_password")?,
            cert_path: doc.path("server.cert_path")?,
            key_path: doc.path("server.key_path")?,
            max_frame_bytes: doc.integer("server.max_frame_bytes", ANY)?,
            idle_timeout_secs: doc.number("server.idle_timeout_secs")?,
            tls_handshake_timeout_secs: doc.number("server.tls_handshake_timeout_secs")?,
            outbound_queue_bytes: doc.integer("server.outbound_queue_bytes", ANY)?,
            drain_timeout_secs: doc.number("server.drain_timeout_secs")?,
        },
        storage: StorageSection {
            data_dir: doc.path("storage.data_dir")?,
            users_file: doc.path("storage.users_file")?,
        },
        auth: AuthSection {
            bcrypt_cost: doc.integer("auth.bcrypt_cost", u32_max)?,
            max_concurrent_hashes: doc.integer("auth.max_concurrent_hashes", ANY)?,
        },
        calls: CallsSection {
            ringing_timeout_secs: doc.number("calls.ringing_timeout_secs")?,
        },
        logging: LoggingSection {
            log_level: doc.string("logging.log_level")?,
        },
        admin: AdminSection {
            bind_address: doc.string("admin.bind_address")?,
        },
        limits: LimitsSection {
            max_connections_per_ip: doc.integer("limits.max_connections_per_ip", ANY)?,
            exempt_networks: doc.strings("limits.exempt_networks")?,
            login_timeout_secs: doc.number("limits.login_timeout_secs")?,
            frames_per_second: doc.number("limits.frames_per_second")?,
            frame_burst: doc.integer("limits.frame_burst", u32_max)?,
            rate_violations_before_disconnect: doc
                .integer("limits.rate_violations_before_disconnect", u32_max)?,
            registrations_per_ip_per_minute: doc
                .integer("limits.registrations_per_ip_per_minute", u32_max)?,
            registration_burst: doc.integer("limits.registration_burst", u32_max)?,
            failed_logins_per_user: doc.integer("limits.failed_logins_per_user", u32_max)?,
            failed_logins_per_ip: doc.integer("limits.failed_logins_per_ip", u32_max)?,
            login_backoff_initial_secs: doc.number("limits.login_backoff_initial_secs")?,
            login_backoff_max_secs: doc.number("limits.login_backoff_max_secs")?,
        },
        sessions: SessionsSection {
            token_ttl_secs: doc.number("sessions.token_ttl_secs")?,
            resume_grace_secs: doc.number("sessions.resume_grace_secs")?,
            held_max_frames: doc.integer("sessions.held_max_frames", ANY)?,
            held_max_bytes: doc.integer("sessions.held_max_bytes", ANY)?,
        },
        guests: GuestsSection {
            enabled: doc.boolean("guests.enabled")?,
            ttl_secs: doc.number("guests.ttl_secs")?,
        },
        webrtc: WebrtcSection {
            stun_servers: doc.strings("webrtc.stun_servers")?,
            turn_servers: doc.strings("webrtc.turn_servers")?,
            turn_secret: doc.string("webrtc.turn_secret")?,
            turn_credential_ttl_secs: doc.number("webrtc.turn_credential_ttl_secs")?,
        },
        rooms: RoomsSection {
            default_participants: doc.integer("rooms.default_participants", ANY)?,
            max_participants: doc.integer("rooms.max_participants", ANY)?,
            max_rooms_per_owner: doc.integer("rooms.max_rooms_per_owner", ANY)?,
            history_per_room: doc.integer("rooms.history_per_room", ANY)?,
            events_per_room: doc.integer("rooms.events_per_room", ANY)?,
            max_text_bytes: doc.integer("rooms.max_text_bytes", ANY)?,
            max_invitations_per_room: doc.integer("rooms.max_invitations_per_room", ANY)?,
            knocks_per_minute: doc.integer("rooms.knocks_per_minute", ANY)?,
        },
    })
}

fn seconds(
    key: &str,
    value: Option<f64>,
    default: Duration,
    max: f64,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(s) if s > 0.0 && s <= max => Ok(Duration::from_secs_f64(s)),
        Some(s) => Err(ConfigError::at(
            key,
            format!("must be more than 0 and at most {max} seconds (got {s})"),
        )),
    }
}

fn resolve(
    file: File,
    cli: &Overrides,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let d = Config::default();
    let server = file.server;

    let bind_text = cli.bind_address.clone().or(server.bind_address);
    let bind_address = match bind_text {
        None => d.bind_address,
        Some(text) => IpAddr::from_str(text.trim()).map_err(|_| {
            ConfigError::at(
                "server.bind_address",
                format!("{text:?} is not an IP address (such as 127.0.0.1 or 0.0.0.0)"),
            )
        })?,
    };
    let port = cli.port.or(server.port).unwrap_or(d.port);

    let max_connections = server.max_connections.unwrap_or(d.max_connections);
    if max_connections == 0 {
        return Err(ConfigError::at(
            "server.max_connections",
            "must be at least 1",
        ));
    }
    let max_frame_bytes = server.max_frame_bytes.unwrap_or(d.max_frame_bytes);
    if !(1024..=64 * 1024 * 1024).contains(&max_frame_bytes) {
        return Err(ConfigError::at(
            "server.max_frame_bytes",
            format!("must be between 1024 and 67108864 (got {max_frame_bytes})"),
        ));
    }
    let outbound_queue_bytes = server
        .outbound_queue_bytes
        .unwrap_or(d.outbound_queue_bytes.max(4 * max_frame_bytes));
    if outbound_queue_bytes < max_frame_bytes + 4 {
        return Err(ConfigError::at(
            "server.outbound_queue_bytes",
            format!(
                "must hold at least one frame of server.max_frame_bytes ({} bytes)",
                max_frame_bytes + 4
            ),
        ));
    }
    let idle_timeout = seconds(
        "server.idle_timeout_secs",
        server.idle_timeout_secs,
        d.idle_timeout,
        86400.0,
    )?;
    let tls_handshake_timeout = seconds(
        "server.tls_handshake_timeout_secs",
        server.tls_handshake_timeout_secs,
        d.tls_handshake_timeout,
        300.0,
    )?;

    let drain_timeout = seconds(
        "server.drain_timeout_secs",
        server.drain_timeout_secs,
        d.drain_timeout,
        3600.0,
    )?;
    let admin_bind = match cli.admin_bind.clone().or(file.admin.bind_address) {
        None => None,
        Some(text) => Some(SocketAddr::from_str(text.trim()).map_err(|_| {
            ConfigError::at(
                "admin.bind_address",
                format!("{text:?} is not an IP:PORT address (such as 127.0.0.1:9090)"),
            )
        })?),
    };
    let pkcs12_path = cli.pkcs12_path.clone().or(server.pkcs12_path);
    let cert_path = cli.cert_path.clone().or(server.cert_path);
    let key_path = cli.key_path.clone().or(server.key_path);
    let enable_tls =
        cli.enable_tls.or(server.enable_tls).unwrap_or(false) || cli_gave_identity(cli);
    let tls = if enable_tls {
        Some(match (pkcs12_path, cert_path, key_path) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(ConfigError::at(
                    "server.pkcs12_path",
                    "both a PKCS#12 identity and server.cert_path/server.key_path are set; choose one",
                ));
            }
            (Some(path), None, None) => TlsIdentity::Pkcs12 {
                path,
                password: env(PKCS12_PASSWORD_ENV)
                    .or(server.pkcs12_password)
                    .unwrap_or_default(),
            },
            (None, Some(cert), Some(key)) => TlsIdentity::Pem { cert, key },
            (None, Some(_), None) => {
                return Err(ConfigError::at(
                    "server.key_path",
                    "server.cert_path is set but the key is missing",
                ));
            }
            (None, None, Some(_)) => {
                return Err(ConfigError::at(
                    "server.cert_path",
                    "server.key_path is set but the certificate is missing",
                ));
            }
            (None, None, None) => {
                return Err(ConfigError::at(
                    "server.enable_tls",
                    "TLS is enabled but no identity is configured: set server.pkcs12_path, or server.cert_path and server.key_path",
                ));
            }
        })
    } else {
        None
    };

    let data_dir = cli
        .data_dir
        .clone()
        .or(file.storage.data_dir)
        .unwrap_or(d.data_dir);
    if data_dir.as_os_str().is_empty() {
        return Err(ConfigError::at("storage.data_dir", "must not be empty"));
    }
    let users_name = file
        .storage
        .users_file
        .unwrap_or_else(|| PathBuf::from("users.txt"));
    // The data-directory lock is what keeps two writers apart, so the file must
    // be inside it.
    let inside = users_name
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !inside || users_name.as_os_str().is_empty() {
        return Err(ConfigError::at(
            "storage.users_file",
            format!(
                "{} must be a relative path inside storage.data_dir",
                users_name.display()
            ),
        ));
    }
    let users_file = data_dir.join(users_name);

    let bcrypt_cost = file.auth.bcrypt_cost.unwrap_or(d.bcrypt_cost);
    if !(4..=31).contains(&bcrypt_cost) {
        return Err(ConfigError::at(
            "auth.bcrypt_cost",
            format!("must be between 4 and 31 (got {bcrypt_cost})"),
        ));
    }
    let max_concurrent_hashes = match file.auth.max_concurrent_hashes {
        None | Some(0) => cores(),
        Some(n) => n,
    };
    let ringing_timeout = seconds(
        "calls.ringing_timeout_secs",
        file.calls.ringing_timeout_secs,
        d.ringing_timeout,
        3600.0,
    )?;

    let level_text = cli.log_level.clone().or(file.logging.log_level);
    let log_level = match level_text {
        None => d.log_level,
        Some(text) => log::LevelFilter::from_str(text.trim()).map_err(|_| {
            ConfigError::at(
                "logging.log_level",
                format!("{text:?} is not one of off, error, warn, info, debug, trace"),
            )
        })?,
    };

    Ok(Config {
        bind_address,
        port,
        max_connections,
        tls,
        max_frame_bytes,
        idle_timeout,
        tls_handshake_timeout,
        outbound_queue_bytes,
        data_dir,
        users_file,
        bcrypt_cost,
        max_concurrent_hashes,
        ringing_timeout,
        log_level,
        drain_timeout,
        admin_bind,
        limits: resolve_limits(file.limits)?,
        sessions: {
            let sessions = resolve_sessions(file.sessions, file.guests)?;
            // What is held is delivered on RESUME into the connection's
            // outbound queue, together with whatever is new: it must fit.
            if sessions.held_max_bytes > outbound_queue_bytes / 4 {
                return Err(ConfigError::at(
                    "sessions.held_max_bytes",
                    format!(
                        "must be at most a quarter of server.outbound_queue_bytes ({}), got {}",
                        outbound_queue_bytes / 4,
                        sessions.held_max_bytes
                    ),
                ));
            }
            sessions
        },
        webrtc: resolve_webrtc(file.webrtc, &env)?,
        rooms: resolve_rooms(&file.rooms)?,
    })
}

fn resolve_sessions(s: SessionsSection, g: GuestsSection) -> Result<SessionsConfig, ConfigError> {
    let d = SessionsConfig::default();
    let resume_grace = match s.resume_grace_secs {
        None => d.resume_grace,
        Some(v) if (0.0..=3600.0).contains(&v) => Duration::from_secs_f64(v),
        Some(v) => {
            return Err(ConfigError::at(
                "sessions.resume_grace_secs",
                format!("must be between 0 (calls are not held) and 3600 seconds (got {v})"),
            ));
        }
    };
    Ok(SessionsConfig {
        token_ttl: seconds(
            "sessions.token_ttl_secs",
            s.token_ttl_secs,
            d.token_ttl,
            365.0 * 86400.0,
        )?,
        resume_grace,
        held_max_frames: match s.held_max_frames {
            None => d.held_max_frames,
            Some(n) if (1..=100_000).contains(&n) => n,
            Some(n) => {
                return Err(ConfigError::at(
                    "sessions.held_max_frames",
                    format!("must be between 1 and 100000 (got {n})"),
                ));
            }
        },
        held_max_bytes: match s.held_max_bytes {
            None => d.held_max_bytes,
            Some(n) if n >= 1024 => n,
            Some(n) => {
                return Err(ConfigError::at(
                    "sessions.held_max_bytes",
                    format!("must be at least 1024 (got {n})"),
                ));
            }
        },
        guests_enabled: g.enabled.unwrap_or(d.guests_enabled),
        guest_ttl: seconds("guests.ttl_secs", g.ttl_secs, d.guest_ttl, 7.0 * 86400.0)?,
    })
}

/// The environment variable that overrides `webrtc.turn_secret`.
pub const TURN_SECRET_ENV: &str = "SWITCHBOARD_TURN_SECRET";

fn resolve_webrtc(
    w: WebrtcSection,
    env: impl Fn(&str) -> Option<String>,
) -> Result<WebrtcConfig, ConfigError> {
    let d = WebrtcConfig::default();
    let urls = |key: &str, list: Option<Vec<String>>, schemes: &[&str]| {
        let list = list.unwrap_or_default();
        for url in &list {
            let scheme_ok = schemes.iter().any(|s| {
                url.strip_prefix(s)
                    .is_some_and(|rest| rest.starts_with(':'))
            });
            if !scheme_ok || url.len() > 512 || url.contains(char::is_whitespace) {
                return Err(ConfigError::at(
                    key,
                    format!(
                        "{url:?} is not a {} URL (such as {}:host:3478)",
                        schemes.join("/"),
                        schemes[0]
                    ),
                ));
            }
        }
        Ok(list)
    };
    let stun_servers = urls("webrtc.stun_servers", w.stun_servers, &["stun", "stuns"])?;
    let turn_servers = urls("webrtc.turn_servers", w.turn_servers, &["turn", "turns"])?;
    let turn_secret = env(TURN_SECRET_ENV)
        .or(w.turn_secret)
        .filter(|s| !s.is_empty());
    if !turn_servers.is_empty() && turn_secret.is_none() {
        return Err(ConfigError::at(
            "webrtc.turn_secret",
            format!(
                "webrtc.turn_servers are set but no shared secret is (set webrtc.turn_secret or {TURN_SECRET_ENV}, the static-auth-secret of the TURN server)"
            ),
        ));
    }
    Ok(WebrtcConfig {
        stun_servers,
        turn_servers,
        turn_secret,
        turn_credential_ttl: seconds(
            "webrtc.turn_credential_ttl_secs",
            w.turn_credential_ttl_secs,
            d.turn_credential_ttl,
            30.0 * 86400.0,
        )?,
    })
}

fn at_least_one<T: PartialOrd + From<u8> + Copy>(
    key: &str,
    value: Option<T>,
    default: T,
) -> Result<T, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if v >= T::from(1) => Ok(v),
        Some(_) => Err(ConfigError::at(key, "must be at least 1")),
    }
}

fn resolve_limits(l: LimitsSection) -> Result<LimitsConfig, ConfigError> {
    let d = LimitsConfig::default();
    let limits = LimitsConfig {
        max_connections_per_ip: match l.max_connections_per_ip {
            None => d.max_connections_per_ip,
            Some(n) if n >= 1 => n,
            Some(_) => {
                return Err(ConfigError::at(
                    "limits.max_connections_per_ip",
                    "must be at least 1",
                ));
            }
        },
        login_timeout: seconds(
            "limits.login_timeout_secs",
            l.login_timeout_secs,
            d.login_timeout,
            3600.0,
        )?,
        frames_per_second: match l.frames_per_second {
            None => d.frames_per_second,
            Some(r) if (0.01..=1e9).contains(&r) => r,
            Some(r) => {
                return Err(ConfigError::at(
                    "limits.frames_per_second",
                    format!("must be between 0.01 and 1000000000 (got {r})"),
                ));
            }
        },
        frame_burst: at_least_one("limits.frame_burst", l.frame_burst, d.frame_burst)?,
        rate_violations_before_disconnect: at_least_one(
            "limits.rate_violations_before_disconnect",
            l.rate_violations_before_disconnect,
            d.rate_violations_before_disconnect,
        )?,
        exempt_networks: l
            .exempt_networks
            .unwrap_or_default()
            .iter()
            .map(|text| {
                Cidr::from_str(text)
                    .map_err(|e| ConfigError::at("limits.exempt_networks", e.to_string()))
            })
            .collect::<Result<_, _>>()?,
        registrations_per_ip_per_minute: at_least_one(
            "limits.registrations_per_ip_per_minute",
            l.registrations_per_ip_per_minute,
            d.registrations_per_ip_per_minute,
        )?,
        registration_burst: at_least_one(
            "limits.registration_burst",
            l.registration_burst,
            d.registration_burst,
        )?,
        failed_logins_per_user: l.failed_logins_per_user.unwrap_or(d.failed_logins_per_user),
        failed_logins_per_ip: l.failed_logins_per_ip.unwrap_or(d.failed_logins_per_ip),
        login_backoff_initial: seconds(
            "limits.login_backoff_initial_secs",
            l.login_backoff_initial_secs,
            d.login_backoff_initial,
            3600.0,
        )?,
        login_backoff_max: seconds(
            "limits.login_backoff_max_secs",
            l.login_backoff_max_secs,
            d.login_backoff_max,
            86400.0,
        )?,
    };
    if limits.login_backoff_max < limits.login_backoff_initial {
        return Err(ConfigError::at(
            "limits.login_backoff_max_secs",
            "must not be less than limits.login_backoff_initial_secs",
        ));
    }
    Ok(limits)
}

/// `value` (or `default` when absent) if it lies in `low..=high`; otherwise an
/// error naming `key` and the range.
fn in_range<T: TryFrom<u64>>(
    key: &str,
    value: Option<u64>,
    default: T,
    low: u64,
    high: u64,
) -> Result<T, ConfigError> {
    let Some(n) = value else {
        return Ok(default);
    };
    let out_of_range =
        || ConfigError::at(key, format!("must be between {low} and {high} (got {n})"));
    if !(low..=high).contains(&n) {
        return Err(out_of_range());
    }
    T::try_from(n).map_err(|_| out_of_range())
}

fn resolve_rooms(r: &RoomsSection) -> Result<RoomLimits, ConfigError> {
    let d = RoomLimits::default();
    let rooms = RoomLimits {
        default_participants: in_range(
            "rooms.default_participants",
            r.default_participants,
            d.default_participants,
            2,
            64,
        )?,
        max_participants: in_range(
            "rooms.max_participants",
            r.max_participants,
            d.max_participants,
            2,
            64,
        )?,
        max_rooms_per_owner: in_range(
            "rooms.max_rooms_per_owner",
            r.max_rooms_per_owner,
            d.max_rooms_per_owner,
            1,
            10_000,
        )?,
        history_per_room: in_range(
            "rooms.history_per_room",
            r.history_per_room,
            d.history_per_room,
            1,
            10_000_000,
        )?,
        events_per_room: in_range(
            "rooms.events_per_room",
            r.events_per_room,
            d.events_per_room,
            1,
            1_000_000,
        )?,
        max_text_bytes: in_range(
            "rooms.max_text_bytes",
            r.max_text_bytes,
            d.max_text_bytes,
            1,
            65_536,
        )?,
        max_invitations_per_room: in_range(
            "rooms.max_invitations_per_room",
            r.max_invitations_per_room,
            d.max_invitations_per_room,
            1,
            100_000,
        )?,
        knocks_per_minute: in_range(
            "rooms.knocks_per_minute",
            r.knocks_per_minute,
            d.knocks_per_minute,
            1,
            10_000,
        )?,
    };
    if rooms.default_participants > rooms.max_participants {
        return Err(ConfigError::at(
            "rooms.default_participants",
            format!(
                "must not be more than rooms.max_participants ({}), got {}",
                rooms.max_participants, rooms.default_participants
            ),
        ));
    }
    Ok(rooms)
}

/// `--pkcs12` or `--cert` on the command line means "serve TLS".
fn cli_gave_identity(cli: &Overrides) -> bool {
    cli.pkcs12_path.is_some() || cli.cert_path.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str, cli: Overrides) -> Result<Loaded, ConfigError> {
        let mut warnings = Vec::new();
        let file = parse_file(json, &mut warnings)?;
        resolve(file, &cli, |_| None).map(|config| Loaded { config, warnings })
    }

    /// No file and no flags give the documented defaults.
    #[test]
    fn nothing_given_means_the_documented_defaults() {
        let c = load("{}", Overrides::default()).unwrap().config;
        assert_eq!(c, Config::default());
        assert_eq!(c.users_file, PathBuf::from("data/users.txt"));
    }

    /// The reference's keys are read, flags win over the file, and a
    /// reference key Switchboard does not use only warns.
    #[test]
    fn reference_keys_are_read_and_flags_win() {
        let json = r#"{"server":{"bind_address":"0.0.0.0","port":9443,"max_connections":50,"enable_tls":true,
            "pkcs12_path":"certs/server.p12","pkcs12_password":"pw"},"logging":{"log_level":"debug"},
            "webrtc":{"stun_servers":["stun:x"],"ice_policy":"all"}}"#;
        let cli = Overrides {
            port: Some(0),
            data_dir: Some("/tmp/d".into()),
            ..Overrides::default()
        };
        let loaded = load(json, cli).unwrap();
        let c = loaded.config;
        assert_eq!(
            (c.bind_address.to_string(), c.port, c.max_connections),
            ("0.0.0.0".into(), 0, 50)
        );
        assert_eq!(
            c.tls,
            Some(TlsIdentity::Pkcs12 {
                path: "certs/server.p12".into(),
                password: "pw".into()
            })
        );
        assert_eq!(c.log_level, log::LevelFilter::Debug);
        assert_eq!(c.users_file, PathBuf::from("/tmp/d/users.txt"));
        assert_eq!(c.webrtc.stun_servers, vec!["stun:x".to_string()]);
        assert_eq!(
            loaded.warnings,
            vec![
                "webrtc.ice_policy is a RoomRTC reference key that Switchboard does not use (a client-side ICE setting); ignored"
            ]
        );
    }

    /// CONFIG.md's complete example is a valid configuration with no unknown
    /// key: the documented keys are the real ones.
    #[test]
    fn the_documented_complete_example_loads() {
        let doc = include_str!("../../CONFIG.md");
        let start = doc.find("## Complete example").unwrap();
        let body = &doc[start..];
        let json_start = body.find("```json\n").unwrap() + 8;
        let json_len = body[json_start..].find("```").unwrap();
        let json = &body[json_start..json_start + json_len];
        let mut warnings = Vec::new();
        let file = parse_file(json, &mut warnings).unwrap();
        assert_eq!(warnings, Vec::<String>::new());
        let env = |k: &str| (k == TURN_SECRET_ENV).then(|| "from-env".to_string());
        let c = resolve(file, &Overrides::default(), env).unwrap();
        assert_eq!(c.webrtc.turn_servers.len(), 1);
        assert_eq!(c.sessions, SessionsConfig::default());
        assert_eq!(c.limits, LimitsConfig::default());
        assert_eq!(c.rooms, RoomLimits::default());
    }

    /// rooms.*: the defaults of RoomLimits when absent; values read; a value
    /// out of its range, or a default above the maximum, refused naming the key.
    #[test]
    fn room_keys() {
        let c = load("{}", Overrides::default()).unwrap().config;
        assert_eq!(c.rooms, RoomLimits::default());
        assert_eq!(
            (c.rooms.default_participants, c.rooms.max_participants),
            (8, 16)
        );
        let c = load(r#"{"rooms":{}}"#, Overrides::default())
            .unwrap()
            .config;
        assert_eq!(c.rooms, RoomLimits::default());

        let json = r#"{"rooms":{"default_participants":4,"max_participants":64,"max_rooms_per_owner":1,
            "history_per_room":10000000,"events_per_room":1,"max_text_bytes":65536,
            "max_invitations_per_room":100000,"knocks_per_minute":10000}}"#;
        let c = load(json, Overrides::default()).unwrap().config;
        assert_eq!(
            c.rooms,
            RoomLimits {
                default_participants: 4,
                max_participants: 64,
                max_rooms_per_owner: 1,
                history_per_room: 10_000_000,
                events_per_room: 1,
                max_text_bytes: 65_536,
                max_invitations_per_room: 100_000,
                knocks_per_minute: 10_000,
            }
        );
        let described = c.describe_non_default();
        assert!(
            described.contains("rooms.default_participants = 4\n")
                && described.ends_with("rooms.knocks_per_minute = 10000"),
            "{described}"
        );
        // Only max_participants given: the default of 8 still fits.
        let c = load(r#"{"rooms":{"max_participants":8}}"#, Overrides::default())
            .unwrap()
            .config;
        assert_eq!(
            (c.rooms.default_participants, c.rooms.max_participants),
            (8, 8)
        );

        for (json, key) in [
            (
                r#"{"rooms":{"default_participants":1}}"#,
                "rooms.default_participants",
            ),
            (
                r#"{"rooms":{"max_participants":65}}"#,
                "rooms.max_participants",
            ),
            (
                r#"{"rooms":{"max_rooms_per_owner":0}}"#,
                "rooms.max_rooms_per_owner",
            ),
            (
                r#"{"rooms":{"history_per_room":10000001}}"#,
                "rooms.history_per_room",
            ),
            (
                r#"{"rooms":{"events_per_room":0}}"#,
                "rooms.events_per_room",
            ),
            (
                r#"{"rooms":{"max_text_bytes":65537}}"#,
                "rooms.max_text_bytes",
            ),
            (
                r#"{"rooms":{"max_invitations_per_room":0}}"#,
                "rooms.max_invitations_per_room",
            ),
            (
                r#"{"rooms":{"knocks_per_minute":10001}}"#,
                "rooms.knocks_per_minute",
            ),
            (
                r#"{"rooms":{"knocks_per_minute":-1}}"#,
                "rooms.knocks_per_minute",
            ),
            (
                r#"{"rooms":{"max_text_bytes":"4000"}}"#,
                "rooms.max_text_bytes",
            ),
            (
                r#"{"rooms":{"max_participants":18446744073709551615}}"#,
                "rooms.max_participants",
            ),
        ] {
            let err = load(json, Overrides::default()).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{json}: {err}");
        }
        assert_eq!(
            message(r#"{"rooms":{"max_participants":100}}"#),
            "rooms.max_participants: must be between 2 and 64 (got 100)"
        );
        assert_eq!(
            message(r#"{"rooms":{"max_text_bytes":0}}"#),
            "rooms.max_text_bytes: must be between 1 and 65536 (got 0)"
        );
        // The default above the maximum: both keys named.
        assert_eq!(
            message(r#"{"rooms":{"max_participants":4}}"#),
            "rooms.default_participants: must not be more than rooms.max_participants (4), got 8"
        );
        assert_eq!(
            message(r#"{"rooms":{"default_participants":20,"max_participants":10}}"#),
            "rooms.default_participants: must not be more than rooms.max_participants (10), got 20"
        );
        assert_eq!(
            message(r#"{"rooms":{"max_participant":10}}"#),
            "unknown key rooms.max_participant; did you mean rooms.max_participants?"
        );
    }

    /// Sessions, guests and webrtc keys: defaults, values, and refusals that
    /// name the key; the TURN secret comes from the environment too and is masked.
    #[test]
    fn session_and_webrtc_keys() {
        let c = load("{}", Overrides::default()).unwrap().config;
        assert_eq!(c.sessions, SessionsConfig::default());
        assert_eq!(c.sessions.resume_grace, Duration::from_secs(15));
        assert_eq!(c.sessions.token_ttl, Duration::from_secs(86400));
        assert_eq!(c.sessions.guest_ttl, Duration::from_secs(1800));
        let json = r#"{"sessions":{"token_ttl_secs":60,"resume_grace_secs":0,"held_max_frames":4,"held_max_bytes":4096},
            "guests":{"enabled":false,"ttl_secs":5},
            "webrtc":{"turn_servers":["turn:127.0.0.1:3478?transport=udp"],"turn_secret":"s3","turn_credential_ttl_secs":30}}"#;
        let c = load(json, Overrides::default()).unwrap().config;
        assert_eq!(c.sessions.token_ttl, Duration::from_secs(60));
        assert!(c.sessions.resume_grace.is_zero());
        assert_eq!(
            (c.sessions.held_max_frames, c.sessions.held_max_bytes),
            (4, 4096)
        );
        assert!(!c.sessions.guests_enabled);
        assert_eq!(c.webrtc.turn_secret.as_deref(), Some("s3"));
        assert_eq!(c.webrtc.turn_credential_ttl, Duration::from_secs(30));
        assert!(c.describe().contains("webrtc.turn_secret = ***"));
        assert!(!c.describe().contains("s3"));
        for (json, key) in [
            (
                r#"{"sessions":{"resume_grace_secs":-1}}"#,
                "sessions.resume_grace_secs",
            ),
            (
                r#"{"sessions":{"token_ttl_secs":0}}"#,
                "sessions.token_ttl_secs",
            ),
            (
                r#"{"sessions":{"held_max_bytes":2000000}}"#,
                "sessions.held_max_bytes",
            ),
            (
                r#"{"sessions":{"held_max_frames":0}}"#,
                "sessions.held_max_frames",
            ),
            (
                r#"{"sessions":{"held_max_bytes":10}}"#,
                "sessions.held_max_bytes",
            ),
            (r#"{"guests":{"ttl_secs":0}}"#, "guests.ttl_secs"),
            (
                r#"{"webrtc":{"stun_servers":["http://x"]}}"#,
                "webrtc.stun_servers",
            ),
            (
                r#"{"webrtc":{"turn_servers":["stun:x"],"turn_secret":"s"}}"#,
                "webrtc.turn_servers",
            ),
            (
                r#"{"webrtc":{"turn_servers":["turn:x:3478"]}}"#,
                "webrtc.turn_secret",
            ),
        ] {
            let err = load(json, Overrides::default()).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{json}: {err}");
        }
        let env = |k: &str| (k == TURN_SECRET_ENV).then(|| "from-env".to_string());
        let file = r#"{"webrtc":{"turn_servers":["turns:x:5349"]}}"#;
        let c = resolve(
            parse_file(file, &mut Vec::new()).unwrap(),
            &Overrides::default(),
            env,
        )
        .unwrap();
        assert_eq!(c.webrtc.turn_secret.as_deref(), Some("from-env"));
    }

    /// Each invalid value is refused with its key named.
    #[test]
    fn invalid_values_name_their_key() {
        let cases = [
            (r#"{"server":{"port":"80"}}"#, "server.port"),
            (r#"{"server":{"port":70000}}"#, "server.port"),
            (
                r#"{"server":{"bind_address":"localhost:1"}}"#,
                "server.bind_address",
            ),
            (
                r#"{"server":{"max_connections":0}}"#,
                "server.max_connections",
            ),
            (r#"{"server":{"enable_tls":true}}"#, "server.enable_tls"),
            (
                r#"{"server":{"enable_tls":true,"cert_path":"c.pem"}}"#,
                "server.key_path",
            ),
            (
                r#"{"server":{"max_frame_bytes":10}}"#,
                "server.max_frame_bytes",
            ),
            (
                r#"{"server":{"outbound_queue_bytes":100}}"#,
                "server.outbound_queue_bytes",
            ),
            (
                r#"{"server":{"idle_timeout_secs":-1}}"#,
                "server.idle_timeout_secs",
            ),
            (r#"{"auth":{"bcrypt_cost":3}}"#, "auth.bcrypt_cost"),
            (
                r#"{"calls":{"ringing_timeout_secs":0}}"#,
                "calls.ringing_timeout_secs",
            ),
            (r#"{"logging":{"log_level":"loud"}}"#, "logging.log_level"),
            (r#"{"admin":{"bind_address":"9090"}}"#, "admin.bind_address"),
            (
                r#"{"storage":{"users_file":"/etc/users.txt"}}"#,
                "storage.users_file",
            ),
            (
                r#"{"storage":{"users_file":"../users.txt"}}"#,
                "storage.users_file",
            ),
            (
                r#"{"limits":{"max_connections_per_ip":0}}"#,
                "limits.max_connections_per_ip",
            ),
            (
                r#"{"limits":{"frames_per_second":-5}}"#,
                "limits.frames_per_second",
            ),
            (
                r#"{"limits":{"login_backoff_initial_secs":10,"login_backoff_max_secs":5}}"#,
                "limits.login_backoff_max_secs",
            ),
            (
                r#"{"server":{"drain_timeout_secs":0}}"#,
                "server.drain_timeout_secs",
            ),
            (
                r#"{"limits":{"registration_burst":0}}"#,
                "limits.registration_burst",
            ),
            (
                r#"{"limits":{"exempt_networks":["10.0.0.0/8","10.0.0.0/33"]}}"#,
                "limits.exempt_networks",
            ),
            (
                r#"{"limits":{"exempt_networks":"10.0.0.0/8"}}"#,
                "limits.exempt_networks",
            ),
        ];
        for (json, key) in cases {
            let err = load(json, Overrides::default()).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{json}: {err}");
        }
        let err = load("{", Overrides::default()).unwrap_err();
        assert!(err.message.starts_with("syntax error"), "{err}");
    }

    /// The message a configuration error ends up as (main.rs puts "invalid
    /// configuration: " before it).
    fn message(json: &str) -> String {
        load(json, Overrides::default()).unwrap_err().to_string()
    }

    /// An unknown key stops the start, naming the key and the nearest known one,
    /// for keys and misspelled sections alike; with nothing near, the keys that
    /// exist there are listed.
    #[test]
    fn unknown_keys_are_errors_that_suggest_the_nearest_key() {
        assert_eq!(
            message(r#"{"server":{"prot":9000}}"#),
            "unknown key server.prot; did you mean server.port?"
        );
        let err = load(r#"{"server":{"prot":9000}}"#, Overrides::default()).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("server.prot"));
        assert_eq!(
            message(r#"{"sever":{"port":9000}}"#),
            "unknown key sever; did you mean server?"
        );
        assert_eq!(
            message(r#"{"limits":{"max_conections_per_ip":5}}"#),
            "unknown key limits.max_conections_per_ip; did you mean limits.max_connections_per_ip?"
        );
        assert_eq!(
            message(r#"{"server":{"data_dir":"d"}}"#),
            "unknown key server.data_dir; did you mean storage.data_dir?"
        );
        assert_eq!(
            message(r#"{"port":9000}"#),
            "unknown key port; did you mean server.port?"
        );
        assert_eq!(
            message(r#"{"logging":{"log_levle":"info"}}"#),
            "unknown key logging.log_levle; did you mean logging.log_level?"
        );
        assert_eq!(
            message(r#"{"guests":{"colour":1}}"#),
            "unknown key guests.colour; the guests keys are enabled, ttl_secs"
        );
        let nothing_near = message(r#"{"switchboard_next":{"x":1}}"#);
        assert!(
            nothing_near
                .starts_with("unknown key switchboard_next; the sections are server, storage,"),
            "{nothing_near}"
        );
        // A typo inside a reference-only section is an error too.
        assert_eq!(
            message(r#"{"security":{"max_request_per_minute":5}}"#),
            "unknown key security.max_request_per_minute; did you mean security.max_requests_per_minute?"
        );
    }

    /// The RoomRTC reference's keys that Switchboard does not use load, with a
    /// warning each naming the key; their values are not checked.
    #[test]
    fn reference_only_keys_load_with_a_warning() {
        let json = r#"{
            "server": {"bind_address": "0.0.0.0", "port": 8081, "max_connections": 100},
            "logging": {"log_file_path": "roomrtc-server.log", "log_level": "info",
                        "enable_console": true, "enable_file": true},
            "webrtc": {"rtp_port_range_start": 5000, "rtp_port_range_end": 6000,
                       "ice_gathering_timeout_ms": 5000, "connection_timeout_ms": 10000},
            "security": {"session_timeout_secs": 3600, "max_sessions_per_user": 5,
                         "enable_rate_limiting": true, "max_requests_per_minute": 60},
            "persistence": {"enable_persistence": true, "data_directory": "./data",
                            "auto_save_interval_secs": null}
        }"#;
        let loaded = load(json, Overrides::default()).unwrap();
        assert_eq!(loaded.config.port, 8081);
        assert_eq!(loaded.warnings.len(), 14, "{:#?}", loaded.warnings);
        assert!(
            loaded.warnings.contains(
                &"persistence.data_directory is a RoomRTC reference key that Switchboard does not use (see storage.data_dir); ignored".to_string()
            ),
            "{:#?}",
            loaded.warnings
        );
        for (key, _) in REFERENCE_ONLY_KEYS {
            assert!(
                key == &"webrtc.ice_policy"
                    || loaded
                        .warnings
                        .iter()
                        .any(|w| w.starts_with(&format!("{key} "))),
                "{key}"
            );
        }
    }

    /// A file that is not an object of sections, a section that is not an
    /// object, and a null value are refused with messages about the file.
    #[test]
    fn non_objects_and_nulls_are_refused() {
        assert_eq!(
            message("[]"),
            r#"the configuration must be a JSON object of sections, such as {"server": {"port": 8080}}; got []"#
        );
        assert_eq!(
            message(r#"{"server":[]}"#),
            "server: expected an object of server.* keys, got []"
        );
        assert_eq!(
            message(r#"{"server":{"port":null}}"#),
            "server.port: null is not a valid value; remove the key for the default"
        );
        assert_eq!(
            message(r#"{"limits":null}"#),
            "limits: null is not a valid value; remove the key for the default"
        );
        assert_eq!(
            message("  \n"),
            "the configuration file is empty; write {} to use every default"
        );
        assert!(message("8080").ends_with("got 8080"));
    }

    /// Messages speak of keys and JSON values, never of Rust types, and say
    /// "invalid configuration" nowhere (main.rs says it once, in front).
    #[test]
    fn messages_speak_of_keys_and_values() {
        let cases = [
            (
                r#"{"server":{"port":"80"}}"#,
                r#"server.port: expected an integer from 0 to 65535, got "80""#,
            ),
            (
                r#"{"server":{"port":70000}}"#,
                "server.port: expected an integer from 0 to 65535, got 70000",
            ),
            (
                r#"{"server":{"port":80.5}}"#,
                "server.port: expected an integer from 0 to 65535, got 80.5",
            ),
            (
                r#"{"server":{"max_connections":-1}}"#,
                "server.max_connections: expected an integer, 0 or more, got -1",
            ),
            (
                r#"{"server":{"enable_tls":"yes"}}"#,
                r#"server.enable_tls: expected true or false, got "yes""#,
            ),
            (
                r#"{"server":{"idle_timeout_secs":"60"}}"#,
                r#"server.idle_timeout_secs: expected a number, got "60""#,
            ),
            (
                r#"{"logging":{"log_level":3}}"#,
                "logging.log_level: expected a string, got 3",
            ),
            (
                r#"{"webrtc":{"stun_servers":["stun:a",{"urls":"stun:b"}]}}"#,
                r#"webrtc.stun_servers: expected an array of strings, got ["stun:a",{"urls":"stun:b"}]"#,
            ),
            (
                r#"{"auth":{"bcrypt_cost":4294967296}}"#,
                "auth.bcrypt_cost: expected an integer from 0 to 4294967295, got 4294967296",
            ),
            (
                "{\n  \"server\": {\n    \"port\": 1,\n  }\n}",
                "syntax error at line 4 column 3: trailing comma",
            ),
            (
                "{\"server\": {\"port\": 1}",
                "syntax error at line 1 column 22: the file ends inside a value (a } or ] missing?)",
            ),
            (
                "{server: 1}",
                "syntax error at line 1 column 2: key must be a string",
            ),
        ];
        for (json, expected) in cases {
            let got = message(json);
            assert_eq!(got, expected, "{json}");
            for rust in [
                "u16",
                "u32",
                "usize",
                "struct",
                "invalid type",
                "invalid configuration",
                ".?",
            ] {
                assert!(!got.contains(rust), "{got}");
            }
        }
    }

    /// The key table and the reads agree: every key in the table is read, and
    /// nothing outside it.
    #[test]
    fn every_key_in_the_table_is_read() {
        let root = serde_json::Map::new();
        let doc = keys::Doc::new(&root);
        read_file(&doc).unwrap();
        let table: std::collections::BTreeSet<String> = keys::SECTIONS
            .iter()
            .flat_map(|(section, names)| names.iter().map(move |n| format!("{section}.{n}")))
            .collect();
        assert_eq!(doc.keys_read(), table);
    }

    /// CONFIG.md documents every key, and lists every reference-only key.
    #[test]
    fn config_md_documents_every_key() {
        let doc = include_str!("../../CONFIG.md");
        for (section, names) in keys::SECTIONS {
            for name in *names {
                let key = format!("`{section}.{name}`");
                assert!(doc.contains(&key), "CONFIG.md does not document {key}");
            }
        }
        for (key, _) in REFERENCE_ONLY_KEYS {
            assert!(
                doc.contains(&format!("`{key}`")),
                "CONFIG.md does not list {key}"
            );
        }
    }

    /// limits.exempt_networks takes IPv4 and IPv6 networks; the burst and
    /// per-address defaults fit shared addresses.
    #[test]
    fn exempt_networks_and_the_registration_burst() {
        let d = LimitsConfig::default();
        assert_eq!(
            (
                d.max_connections_per_ip,
                d.registration_burst,
                d.registrations_per_ip_per_minute
            ),
            (256, 30, 10)
        );
        assert!(d.exempt_networks.is_empty());
        let json = r#"{"limits":{"exempt_networks":["10.0.0.0/8","127.0.0.0/8","::1/128","192.0.2.7"],
            "registration_burst":5}}"#;
        let c = load(json, Overrides::default()).unwrap().config;
        let nets: Vec<String> = c
            .limits
            .exempt_networks
            .iter()
            .map(Cidr::to_string)
            .collect();
        assert_eq!(
            nets,
            ["10.0.0.0/8", "127.0.0.0/8", "::1/128", "192.0.2.7/32"]
        );
        assert_eq!(c.limits.registration_burst, 5);
        assert!(
            c.describe()
                .contains("limits.exempt_networks = 10.0.0.0/8,127.0.0.0/8,::1/128,192.0.2.7/32\n")
        );
        assert_eq!(
            message(r#"{"limits":{"exempt_networks":["10.1.2.3/8"]}}"#),
            r#"limits.exempt_networks: "10.1.2.3/8" has address bits set after the /8 prefix; did you mean 10.0.0.0/8?"#
        );
        assert_eq!(
            message(r#"{"limits":{"exempt_networks":["office"]}}"#),
            r#"limits.exempt_networks: "office" is not a network: "office" is not an IP address (write a network as 10.0.0.0/8 or fd00::/8)"#
        );
    }

    /// describe_non_default() keeps describe()'s lines that differ from the
    /// defaults, secrets masked, and nothing for the defaults.
    #[test]
    fn describe_non_default_shows_only_what_differs() {
        assert_eq!(Config::default().describe_non_default(), "");
        let json = r#"{"server":{"port":9000},"limits":{"exempt_networks":["10.0.0.0/8"]},
            "webrtc":{"turn_servers":["turn:t:3478"],"turn_secret":"hush"}}"#;
        let c = load(json, Overrides::default()).unwrap().config;
        assert_eq!(
            c.describe_non_default(),
            "server.port = 9000\nlimits.exempt_networks = 10.0.0.0/8\nwebrtc.turn_servers = turn:t:3478\nwebrtc.turn_secret = ***"
        );
    }

    /// The PKCS#12 password can come from the environment, and describe() masks it.
    #[test]
    fn the_pkcs12_password_comes_from_the_environment_and_is_masked() {
        let file = parse_file(
            r#"{"server":{"enable_tls":true,"pkcs12_path":"s.p12","pkcs12_password":"file"}}"#,
            &mut Vec::new(),
        )
        .unwrap();
        let c = resolve(file, &Overrides::default(), |k| {
            (k == PKCS12_PASSWORD_ENV).then(|| "env-secret".into())
        })
        .unwrap();
        assert_eq!(
            c.tls,
            Some(TlsIdentity::Pkcs12 {
                path: "s.p12".into(),
                password: "env-secret".into()
            })
        );
        assert!(!c.describe().contains("env-secret"));
    }
}
