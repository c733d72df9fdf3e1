//! The `switchboard` daemon. With no subcommand it serves.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use log::{error, info, warn};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use switchboard::application::auth::AuthLimits;
use switchboard::application::{Authenticator, PasswordHasher, UserStore};
use switchboard::client::password;
use switchboard::config::{Config, Overrides};
use switchboard::infrastructure::{DataDirLock, UsersFile};
use switchboard::{daemon, systemd, tcp};

const EXIT_HELP: &str = "\
Exit codes:
  0  success (for serve: stopped by SIGTERM/SIGINT after draining)
  1  could not start or keep running, or an operation failed (data file, bind,
     data directory held by a running daemon, no such user)
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
    /// Manage users in users.txt; refused while a daemon uses the data directory.
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
    /// Delete a user.
    Del { username: String },
    /// List users: id, username, created_at (Unix seconds).
    List,
    /// Set a user's password.
    Passwd {
        username: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
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
    let _lock = DataDirLock::acquire(&config.data_dir).map_err(|e| (1, e.to_string()))?;
    let store = Arc::new(UsersFile::open(&config.users_file).map_err(|e| (1, e.to_string()))?);
    let hasher = || {
        PasswordHasher::new(config.bcrypt_cost, 1, Arc::default()).map_err(|e| (2, e.to_string()))
    };
    let read = |p: &PasswordArgs| {
        password::read(p.password.clone(), p.password_file.as_deref(), "Password: ")
            .map_err(|e| (2, e.to_string()))
    };
    match action {
        UserAction::Add { username, password } => {
            let secret = read(&password)?;
            let auth = Authenticator::new(store.clone(), hasher()?, AuthLimits::unlimited());
            let user = auth
                .register(&username, &secret, std::net::IpAddr::from([127, 0, 0, 1]))
                .map_err(|e| (if e.code() == 400 { 2 } else { 1 }, e.to_string()))?;
            println!("added user_id={} username={}", user.id, user.username);
        }
        UserAction::Del { username } => match store.delete(&username) {
            Ok(Some(user)) => println!("deleted user_id={} username={}", user.id, user.username),
            Ok(None) => return Err((1, format!("no such user: {username}"))),
            Err(e) => return Err((1, format!("cannot rewrite {}: {e}", store.path().display()))),
        },
        UserAction::List => {
            for (id, _) in store.list().iter() {
                if let Some(u) = store.find_by_id(*id) {
                    println!("{}\t{}\t{}", u.id, u.username, u.created_at);
                }
            }
        }
        UserAction::Passwd { username, password } => {
            if store.find_by_name(&username).is_none() {
                return Err((1, format!("no such user: {username}")));
            }
            let secret = read(&password)?;
            switchboard::domain::validate_secret(&secret).map_err(|e| (2, e))?;
            let hash = hasher()?.hash(&secret).map_err(|e| (1, e.to_string()))?;
            match store.set_password_hash(&username, &hash) {
                Ok(Some(user)) => println!(
                    "password changed user_id={} username={}",
                    user.id, user.username
                ),
                Ok(None) => return Err((1, format!("no such user: {username}"))),
                Err(e) => {
                    return Err((1, format!("cannot rewrite {}: {e}", store.path().display())));
                }
            }
        }
    }
    Ok(())
}
