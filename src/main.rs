//! The `switchboard` daemon. With no subcommand it serves.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use log::warn;

use switchboard::config::{Config, Overrides};
use switchboard::daemon;

const EXIT_HELP: &str = "\
Exit codes:
  0  stopped normally
  1  could not start or keep running (data file, bind, I/O)
  2  invalid configuration or usage";

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
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve clients (the default).
    Serve,
}

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("switchboard: {message}");
            ExitCode::from(code)
        }
    }
}

fn try_main() -> Result<(), (u8, String)> {
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
    };
    let loaded = Config::load(cli.config.as_deref(), &overrides, |k| std::env::var(k).ok())
        .map_err(|e| (2, format!("invalid configuration: {e}")))?;
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(loaded.config.log_level.as_str()),
    )
    .init();
    for warning in &loaded.warnings {
        warn!("{warning}");
    }
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(&loaded.config),
    }
}

fn serve(config: &Config) -> Result<(), (u8, String)> {
    let mut handle = daemon::start(config).map_err(|e| (e.exit_code() as u8, e.to_string()))?;
    // Scripts and tests read the chosen address from this line.
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "listening on {}", handle.local_addr());
    let _ = stdout.flush();
    handle.wait();
    Ok(())
}
