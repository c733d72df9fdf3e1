//! The `switchboard` daemon. With no subcommand it serves.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use log::{error, info, warn};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use switchboard::application::admin::{UserSummary, rfc3339_utc};
use switchboard::application::auth::AuthLimits;
use switchboard::application::{Authenticator, PasswordHasher, UserAdmin, UserStore};
use switchboard::client::password;
use switchboard::config::{Config, Overrides};
use switchboard::infrastructure::admin_socket::{self, ClientError, Request, Response, UserEntry};
use switchboard::infrastructure::{
    DataDirLock, Holder, LockError, RevocationFile, Role, UsersFile,
};
use switchboard::{daemon, systemd, tcp};

const EXIT_HELP: &str = "\
Exit codes:
  0  success (for serve: stopped by SIGTERM/SIGINT after draining)
  1  could not start or keep running, or an operation failed (data file, bind,
     data directory in use or missing, no such user, daemon not answering)
  2  invalid configuration or usage

Signals (serve): SIGTERM/SIGINT drain and exit; SIGHUP reloads the TLS identity.";

/// Signaling daemon, wire-compatible with RoomRTC protocol v1.0.
#[derive(Parser, Debug)]
#[command(name = "switchboard", version, after_help = EXIT_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (JSON, see CONFIG.md). Without it, built-in defaults apply.
    #[arg(long, global = true, value_name = "FILE", env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (server.bind_address).
    #[arg(long, global = true, value_name = "IP")]
    bind: Option<String>,
    /// Port to listen on; 0 picks a free one (server.port).
    #[arg(long, global = true)]
    port: Option<u16>,
    /// Directory holding users.txt (storage.data_dir).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// off, error, warn, info, debug or trace (logging.log_level); RUST_LOG overrides it.
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Serve TLS (server.enable_tls).
    #[arg(long, global = true)]
    tls: bool,
    /// PKCS#12 identity file; implies --tls. Its password comes from the file's
    /// server.pkcs12_password or SWITCHBOARD_PKCS12_PASSWORD.
    #[arg(long, global = true, value_name = "FILE")]
    pkcs12: Option<PathBuf>,
    /// PEM certificate (chain); implies --tls; needs --key.
    #[arg(long, global = true, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// PKCS#8 PEM private key for --cert.
    #[arg(long, global = true, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Serve /healthz and /metrics over HTTP on IP:PORT (admin.bind_address).
    #[arg(long, global = true, value_name = "IP:PORT")]
    admin_bind: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve clients (the default).
    Serve,
    /// Validate the configuration (TLS identity included) and print it, secrets masked.
    CheckConfig,
    /// Manage users: through the running daemon's admin socket
    /// (DATA_DIR/admin.sock) while it serves, else directly on users.txt.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
}

#[derive(clap::Args, Debug)]
struct PasswordArgs {
    /// Read the password from the first line of FILE.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// The password itself. Visible to other local users in the process list:
    /// prefer --password-file, SWITCHBOARD_PASSWORD or the prompt.
    #[arg(long)]
    password: Option<String>,
}

#[derive(Subcommand, Debug)]
enum UserAction {
    /// Register a user (the password is the secret clients send as password_hash).
    Add {
        username: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Delete a user; a running daemon ends their session (ERROR 401 "account deleted").
    Del { username: String },
    /// List users, one per line: id, username, created_at (UTC, RFC 3339), tab-separated.
    List,
    /// Set a user's password (the old one is not needed); their session tokens stop working.
    Passwd {
        username: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// End a user's session (ERROR 401 "session ended by an operator", then
    /// close) and revoke their session tokens; the account stays.
    Kick { username: String },
}

type Failure = (u8, String);

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("switchboard: {message}");
            ExitCode::from(code)
        }
    }
}

fn try_main() -> Result<(), Failure> {
    let cli = Cli::parse();
    let overrides = Overrides {
        bind_address: cli.bind,
        port: cli.port,
        data_dir: cli.data_dir,
        log_level: cli.log_level,
        enable_tls: cli.tls.then_some(true),
        pkcs12_path: cli.pkcs12,
        cert_path: cli.cert,
        key_path: cli.key,
        admin_bind: cli.admin_bind,
    };
    let loaded = Config::load(cli.config.as_deref(), &overrides, |k| std::env::var(k).ok())
        .map_err(|e| (2, format!("invalid configuration: {e}")))?;
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(loaded.config.log_level.as_str()),
    )
    .init();
    // Printed directly: they must show whatever the log level is.
    for warning in &loaded.warnings {
        eprintln!("switchboard: warning: {warning}");
    }
    let config = loaded.config;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(&config),
        Command::CheckConfig => check_config(&config),
        Command::User { action } => user(&config, action),
    }
}

fn serve(config: &Config) -> Result<(), Failure> {
    // Registered before anything starts, so a signal during start-up is not lost.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| (1, format!("cannot handle signals: {e}")))?;
    let running = daemon::start(config).map_err(|e| (e.exit_code() as u8, e.to_string()))?;
    // Scripts and tests read the chosen addresses from these lines.
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "listening on {}", running.server.local_addr());
    if let Some(admin) = &running.admin {
        let _ = writeln!(stdout, "admin listening on {}", admin.local_addr());
    }
    let _ = stdout.flush();
    if let Err(err) = systemd::notify("READY=1") {
        warn!("cannot notify the service manager: {err}");
    }
    for signal in signals.forever() {
        if signal == SIGHUP {
            if let Err(err) = daemon::reload_tls(config, &running) {
                error!("SIGHUP: {err}");
            }
            continue;
        }
        info!(
            "received {}; draining for up to {:?}",
            if signal == SIGTERM {
                "SIGTERM"
            } else {
                "SIGINT"
            },
            config.drain_timeout
        );
        break;
    }
    let _ = systemd::notify("STOPPING=1");
    if running.shutdown(config.drain_timeout) {
        info!("stopped; every connection closed");
    } else {
        warn!("stopped at the drain deadline with connections still open");
    }
    Ok(())
}

fn check_config(config: &Config) -> Result<(), Failure> {
    if let Some(identity) = &config.tls {
        tcp::build_acceptor(identity).map_err(|e| (2, format!("invalid configuration: {e}")))?;
    }
    println!("{}", config.describe());
    println!("# configuration is valid");
    Ok(())
}

fn user(config: &Config, action: UserAction) -> Result<(), Failure> {
    let read = |p: &PasswordArgs| {
        password::read(p.password.clone(), p.password_file.as_deref(), "Password: ")
            .map_err(|e| (2, e.to_string()))
    };
    let request = match action {
        UserAction::Add { username, password } => Request::Add {
            password: read(&password)?,
            username,
        },
        UserAction::Del { username } => Request::Del { username },
        UserAction::List => Request::List,
        UserAction::Passwd { username, password } => Request::Passwd {
            password: read(&password)?,
            username,
        },
        UserAction::Kick { username } => Request::Kick { username },
    };
    let verb = match &request {
        Request::Add { .. } => "added",
        Request::Del { .. } => "deleted",
        Request::Passwd { .. } => "password changed",
        Request::List | Request::Kick { .. } => "",
    };
    let response = carry_out(config, request)?;
    print_response(verb, response)
}

/// Carries out `request` through the running daemon's admin socket if a
/// daemon holds the data directory, else directly on the files (under the
/// data-directory lock when writing). Only `add` may create the directory;
/// `list` creates nothing at all.
fn carry_out(config: &Config, request: Request) -> Result<Response, Failure> {
    let dir = &config.data_dir;
    let failed = |e: LockError| (1, e.to_string());
    if let Request::List = request {
        return match DataDirLock::holder(dir).map_err(failed)? {
            // A `user` command's writes replace users.txt atomically: reading beside it is safe.
            Some(holder) if holder.role != Some(Role::Operator) => {
                through_daemon(dir, &holder, &request)
            }
            _ => list_files(config),
        };
    }
    let create = matches!(request, Request::Add { .. });
    let _lock = match DataDirLock::acquire_as(dir, Role::Operator, create) {
        Ok(lock) => lock,
        Err(LockError::Held { holder, .. }) if holder.role != Some(Role::Operator) => {
            return through_daemon(dir, &holder, &request);
        }
        Err(e) => return Err(failed(e)),
    };
    if !create && !config.users_file.exists() {
        // Nothing to change, and no users.txt to create for it.
        let name = match &request {
            Request::Passwd { username, .. }
            | Request::Del { username }
            | Request::Kick { username }
            | Request::Add { username, .. } => username.as_str(),
            Request::List => "",
        };
        return Err((1, format!("no such user: {name}")));
    }
    let users = Arc::new(UsersFile::open(&config.users_file).map_err(|e| (1, e.to_string()))?);
    let hasher = PasswordHasher::new(config.bcrypt_cost, 1, Arc::default())
        .map_err(|e| (2, e.to_string()))?;
    let auth = Arc::new(Authenticator::new(
        users.clone(),
        hasher,
        AuthLimits::unlimited(),
    ));
    let revocations = Arc::new(
        RevocationFile::open(&dir.join(daemon::REVOCATIONS_FILE))
            .map_err(|e| (1, e.to_string()))?,
    );
    // No hub: with the daemon stopped nobody is online.
    let admin = UserAdmin::new(users, auth, revocations, None);
    Ok(admin_socket::execute(&admin, request))
}

/// `user list` on the files of a stopped daemon, creating nothing.
fn list_files(config: &Config) -> Result<Response, Failure> {
    if !config.users_file.exists() {
        return Ok(Response {
            ok: true,
            users: Some(Vec::new()),
            ..Response::default()
        });
    }
    let users = UsersFile::open(&config.users_file).map_err(|e| (1, e.to_string()))?;
    let entries = users
        .list()
        .iter()
        .filter_map(|(id, _)| users.find_by_id(*id))
        .map(|u| UserEntry::from(UserSummary::from(&u)))
        .collect();
    Ok(Response {
        ok: true,
        users: Some(entries),
        ..Response::default()
    })
}

/// How long `switchboard user` waits for the daemon's answer (a password is
/// hashed meanwhile, behind the clients' logins).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);

fn through_daemon(dir: &Path, holder: &Holder, request: &Request) -> Result<Response, Failure> {
    let path = daemon::admin_socket_path(dir);
    let daemon = match holder.pid {
        Some(pid) => format!("the switchboard daemon (pid {pid})"),
        None => "a switchboard daemon".into(),
    };
    admin_socket::request(&path, request, ADMIN_TIMEOUT).map_err(|err| match err {
        ClientError::PermissionDenied(_) => (
            1,
            format!(
                "{daemon} serves data directory {} and only its own user (or root) may use its admin socket {}; run this command as that user",
                dir.display(),
                path.display()
            ),
        ),
        ClientError::NotListening(e) => (
            1,
            format!(
                "{daemon} serves data directory {} but does not answer on its admin socket {} ({e}); it may be starting or stopping: try again in a moment, or stop it to work on the files",
                dir.display(),
                path.display()
            ),
        ),
        ClientError::Failed(why) => (
            1,
            format!("{daemon} did not answer on {}: {why}", path.display()),
        ),
    })
}

/// Prints an answer as the subcommands always have: one line per user for
/// list, one line naming the user otherwise (`VERB user_id=ID username=NAME`).
fn print_response(verb: &str, response: Response) -> Result<(), Failure> {
    if !response.ok {
        let code = if response.code == Some(400) { 2 } else { 1 };
        return Err((code, response.error.unwrap_or_else(|| "failed".into())));
    }
    let user = || {
        response
            .user
            .clone()
            .ok_or_else(|| (1, "the answer names no user".to_string()))
    };
    let mut out = std::io::stdout().lock();
    let written = if let Some(users) = &response.users {
        users.iter().try_for_each(|u| {
            writeln!(
                out,
                "{}\t{}\t{}",
                u.id,
                u.username,
                rfc3339_utc(u.created_at)
            )
        })
    } else if let Some(ended) = response.session_ended {
        let u = user()?;
        if ended {
            writeln!(
                out,
                "ended the session of user_id={} username={}; its session tokens are revoked",
                u.id, u.username
            )
        } else {
            writeln!(
                out,
                "user_id={} username={} had no session; its session tokens are revoked",
                u.id, u.username
            )
        }
    } else {
        let u = user()?;
        writeln!(out, "{verb} user_id={} username={}", u.id, u.username)
    };
    written.map_err(|e| (1, format!("cannot write to stdout: {e}")))
}
