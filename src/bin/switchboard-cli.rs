//! `switchboard-cli`: a Switchboard client for shell scripts. Argument parsing
//! only; the work is in `switchboard::client`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use switchboard::client::commands::{self, Pinger};
use switchboard::client::password;
use switchboard::client::session::{self, Input, SessionEnd, SessionOptions};
use switchboard::client::{ClientError, ConnectOptions, Connection, TlsTrust, connection};
use switchboard::tcp::MessageType;

/// How long a one-shot command (and a session's login) may take without --timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  the server answered with an error: an ERROR frame, or success:false in a
     LOGIN or REGISTER response (the server's message is printed on stderr);
     also an answer this client cannot read, or stdout failing
  2  usage: bad arguments, no password available, an unreadable password or
     CA file, a bad line on a session's stdin
  3  cannot connect: TCP connect or TLS handshake failed, or the connection
     was lost before the answer
  4  timeout: --timeout passed first

Password: --password (visible to other local users in the process list) or
--password-file FILE (its first line), never both (exit 2); else the environment
variable SWITCHBOARD_PASSWORD; else a prompt on the terminal without echo. With
none of them and stdin not a terminal, the command exits 2 instead of waiting.

login, users and session log in: the server ends any other session of that user.
login and users log out before they exit, so the user is offline again once
they return; a session's user goes offline when the server sees it close.";

/// A Switchboard client for shell scripts: one-shot commands and a JSON-line session mode.
#[derive(Parser, Debug)]
#[command(name = "switchboard-cli", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct Target {
    /// Server host name or IP address; TLS verifies the certificate against it.
    #[arg(long, global = true, default_value = "127.0.0.1")]
    host: String,
    /// Server port.
    #[arg(long, global = true, default_value_t = 8080)]
    port: u16,
    /// HOST:PORT in one ([IPV6]:PORT); instead of --host and --port.
    #[arg(long, global = true, value_name = "HOST:PORT", conflicts_with_all = ["host", "port"])]
    addr: Option<String>,
    /// Connect with TLS, trusting the system's certificate authorities.
    #[arg(long, global = true)]
    tls: bool,
    /// Also trust the PEM certificate(s) in FILE (a private CA or a self-signed server); implies --tls.
    #[arg(long, global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// TLS without verifying the certificate or the hostname, for self-signed
    /// test servers only; implies --tls.
    #[arg(long, global = true, conflicts_with = "ca")]
    insecure: bool,
    /// Give up after SECONDS (fractions allowed) with exit code 4. Default: 10 for
    /// one-shot commands; a session is unbounded (its login still gets 10).
    #[arg(long, global = true, value_name = "SECONDS", value_parser = positive_seconds)]
    timeout: Option<Duration>,
}

#[derive(Args, Debug)]
struct Login {
    /// The account's username.
    #[arg(long)]
    username: String,
    /// The password on the command line. Visible to other local users in the
    /// process list: prefer --password-file or SWITCHBOARD_PASSWORD.
    #[arg(long, value_name = "P", conflicts_with = "password_file")]
    password: Option<String>,
    /// Read the password from the first line of FILE.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create an account; prints `registered user_id=ID username=NAME`.
    Register(Login),
    /// Check credentials (logs in and out); prints `logged in user_id=ID username=NAME`.
    Login(Login),
    /// Log in and print every user: `ID<TAB>USERNAME<TAB>STATE`, one per line.
    Users {
        #[command(flatten)]
        login: Login,
        /// Print the raw USER_LIST_RESPONSE payload (JSON) instead.
        #[arg(long)]
        json: bool,
    },
    /// HEARTBEAT round trips (no login needed); prints `pong 0.213 ms` per round trip.
    Ping {
        /// How many round trips, one after the other.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        count: u32,
    },
    /// Log in, then send one JSON command per stdin line and print every
    /// received frame as one JSON line.
    ///
    /// Input, one command per line: {"type":"CALL_REQUEST","to_user_id":"2"}. The
    /// type is a name (any case) or a code; the rest of the object is the payload.
    /// User ids may be bare numbers, as `users` prints them ("to_user_id":2).
    ///
    /// Output, one line per frame, starting with the LOGIN_RESPONSE:
    /// {"type":"CALL_NOTIFICATION","code":9,"payload":{...}}
    ///
    /// After the end of stdin the session keeps printing until the --until frame,
    /// the server closing it (exit 0 without --until), or --timeout (exit 4).
    Session {
        #[command(flatten)]
        login: Login,
        /// Exit 0 once a frame of this type (name or code) has been printed.
        #[arg(long, value_name = "TYPE", value_parser = message_type)]
        until: Option<MessageType>,
        /// Send a HEARTBEAT after SECONDS without sending anything, so the
        /// server's idle timeout does not end a quiet session; 0 turns it off.
        #[arg(long, value_name = "SECONDS", default_value = "20", value_parser = any_seconds)]
        keepalive: Duration,
    },
}

fn positive_seconds(text: &str) -> Result<Duration, String> {
    switchboard::client::parse_seconds(text, false)
}

fn any_seconds(text: &str) -> Result<Duration, String> {
    switchboard::client::parse_seconds(text, true)
}

fn message_type(text: &str) -> Result<MessageType, String> {
    session::parse_type(text).ok_or_else(|| format!("{text:?} is no message type name or code"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("switchboard-cli: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

fn connect_options(target: &Target) -> Result<ConnectOptions, ClientError> {
    let (host, port) = match &target.addr {
        Some(addr) => connection::split_addr(addr)?,
        None => (target.host.clone(), target.port),
    };
    let tls = if target.insecure {
        Some(TlsTrust::Insecure)
    } else if let Some(ca) = &target.ca {
        Some(TlsTrust::CaFile(ca.clone()))
    } else {
        target.tls.then_some(TlsTrust::System)
    };
    Ok(ConnectOptions { host, port, tls })
}

fn password(login: &Login) -> Result<String, ClientError> {
    let prompt = format!("Password for {}: ", login.username);
    password::read(
        login.password.clone(),
        login.password_file.as_deref(),
        &prompt,
    )
}

fn print(text: &str) -> Result<(), ClientError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(ClientError::Output)
}

fn run(cli: Cli) -> Result<(), ClientError> {
    let options = connect_options(&cli.target)?;
    // The password first: time spent typing it does not count against --timeout.
    let secret = match &cli.command {
        Command::Register(login)
        | Command::Login(login)
        | Command::Users { login, .. }
        | Command::Session { login, .. } => Some(password(login)?),
        Command::Ping { .. } => None,
    };
    let secret = secret.as_deref().unwrap_or_default();
    let started = Instant::now();
    let deadline = started + cli.target.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let mut conn = Connection::connect(&options, deadline)?;
    let result = execute(&cli, &mut conn, secret, started, deadline);
    conn.close();
    result
}

/// The command's requests and output, over an open connection.
fn execute(
    cli: &Cli,
    conn: &mut Connection,
    secret: &str,
    started: Instant,
    deadline: Instant,
) -> Result<(), ClientError> {
    match &cli.command {
        Command::Register(login) => {
            let account = commands::register(conn, &login.username, secret, deadline)?;
            print(&format!(
                "registered user_id={} username={}\n",
                account.user_id, account.username
            ))
        }
        Command::Login(login) => {
            let account = commands::login(conn, &login.username, secret, deadline)?;
            commands::logout(conn, deadline)?;
            print(&format!(
                "logged in user_id={} username={}\n",
                account.user_id, account.username
            ))
        }
        Command::Users { login, json } => {
            commands::login(conn, &login.username, secret, deadline)?;
            let (list, raw) = commands::user_list(conn, deadline)?;
            commands::logout(conn, deadline)?;
            if *json {
                print(&format!("{raw}\n"))
            } else {
                print(&commands::format_user_list(&list))
            }
        }
        Command::Ping { count } => {
            let mut pinger = Pinger::default();
            for _ in 0..*count {
                let rtt = pinger.ping(conn, deadline)?;
                print(&format!("{}\n", commands::format_pong(rtt)))?;
            }
            Ok(())
        }
        Command::Session {
            login,
            until,
            keepalive,
        } => {
            let stdin = std::io::BufReader::new(std::io::stdin());
            let input = Input::spawn(stdin)
                .map_err(|e| ClientError::Usage(format!("cannot start reading stdin: {e}")))?;
            let options = SessionOptions {
                until: *until,
                deadline: cli.target.timeout.map(|t| started + t),
                login_deadline: deadline,
                keepalive: (!keepalive.is_zero()).then_some(*keepalive),
            };
            let mut stdout = std::io::stdout().lock();
            // Both ends are success: the --until frame, or (without --until) the server's close.
            let _end: SessionEnd =
                session::run(conn, &login.username, secret, &input, &mut stdout, &options)?;
            Ok(())
        }
    }
}
