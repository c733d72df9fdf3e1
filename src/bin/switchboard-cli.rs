//! `switchboard-cli`: a Switchboard client for shell scripts. Argument parsing
//! only; the work is in `switchboard::client`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use switchboard::client::commands::{self, Pinger};
use switchboard::client::field::{self, Condition, FieldPath, Lines, Query, Search};
use switchboard::client::login::{self, Fallback, LoggedIn, Method};
use switchboard::client::password::{self, PASSWORD_ENV};
use switchboard::client::session::{self, Input, SessionOptions};
use switchboard::client::token::{TokenFile, TokenKeeper};
use switchboard::client::{ClientError, ConnectOptions, Connection, TlsTrust, connection};
use switchboard::tcp::MessageType;
use switchboard::tcp::message::ErrorMessage;

/// How long a one-shot command (and a session's login) may take without --timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  the server answered with an error: an ERROR frame, or success:false in a
     LOGIN or REGISTER response (the server's message is printed on stderr);
     also an answer this client cannot read, stdout failing, or (field) no
     such line or field
  2  usage: bad arguments, no password available, an unreadable password,
     CA or token file, a bad line on a session's stdin
  3  cannot connect: TCP connect or TLS handshake failed, or the connection
     was lost before the answer
  4  timeout: --timeout passed first

Password: --password (visible to other local users in the process list) or
--password-file FILE (its first line), never both (exit 2); else the environment
variable SWITCHBOARD_PASSWORD; else a prompt on the terminal without echo. With
none of them and stdin not a terminal, the command exits 2 instead of waiting.

Protocol 2 (the default; --protocol 1 speaks v1 on purpose): login, users and
session send HELLO before logging in, so the server hands out session tokens.
--token-file FILE keeps the token (mode 0600) and logs in with it by RESUME the
next time, without the password; only if the server refuses the token (401)
does the password take over, with a note on stderr.

login, users and session log in: the server ends any other session of that user.
login and users log out before they exit, so the user is offline again once
they return; a LOGOUT revokes every session token of the user, so with
--token-file they close the connection instead. A session's user goes offline
when the server sees it close.";

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
    /// one-shot commands and `field --wait`; a session is unbounded (its login still gets 10).
    #[arg(long, global = true, value_name = "SECONDS", value_parser = positive_seconds)]
    timeout: Option<Duration>,
    /// The protocol version to speak: 2 sends HELLO before logging in (session
    /// tokens, RESUME, guests, PEER_STATUS); 1 speaks RoomRTC v1 as the desktop
    /// client does, without HELLO.
    #[arg(long, global = true, value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=2))]
    protocol: u32,
}

/// The account REGISTER creates.
#[derive(Args, Debug)]
struct NewAccount {
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

#[derive(Args, Debug)]
struct Login {
    /// The account's username. Needed unless --token-file holds a token (it
    /// names its user).
    #[arg(long)]
    username: Option<String>,
    /// The password on the command line. Visible to other local users in the
    /// process list: prefer --password-file or SWITCHBOARD_PASSWORD.
    #[arg(long, value_name = "P", conflicts_with = "password_file")]
    password: Option<String>,
    /// Read the password from the first line of FILE.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Keep the session token in FILE (written atomically, mode 0600) and log
    /// in with it by RESUME when it holds one: no password needed. If the
    /// server refuses the token (401), the password is used instead, when one
    /// is given. Protocol 2 only.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create an account; prints `registered user_id=ID username=NAME`.
    Register(NewAccount),
    /// Check credentials (logs in and out); prints `logged in user_id=ID username=NAME`.
    /// With --token-file: saves the session token for later runs.
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
    /// type is a name (any case) or a code; the rest of the object is the payload,
    /// checked against the type's fields. Every client type can be sent, protocol 2's
    /// included. Ids may be bare numbers, as `users` prints them ("to_user_id":2).
    ///
    /// A later line may use an earlier answer: label the request with a req_id and
    /// write {{REQ_ID.PATH}} in a string ("room_id":"{{create.room_id}}"); the line
    /// waits for that answer, and a refused request (ERROR) exits 1.
    ///
    /// Output, one line per frame, starting with the WELCOME (protocol 2) and the
    /// LOGIN_RESPONSE: {"type":"CALL_NOTIFICATION","code":9,"payload":{...}}
    ///
    /// After the end of stdin the session keeps printing until the --until frame,
    /// the server closing it (exit 0 without --until), or --timeout (exit 4).
    ///
    /// Ending on purpose during a call or in a room, a session logs out first, so
    /// the peers get HANGUP or ROOM_PEER_LEFT at once; with --token-file it only
    /// closes, and the server holds the call and the rooms for a session started
    /// again with the same file (RESUME).
    Session {
        #[command(flatten)]
        login: Login,
        /// Log in as a guest named NAME (GUEST_LOGIN_REQUEST; the server calls it
        /// "NAME (guest)"): no account, no password, no token.
        #[arg(long, value_name = "NAME",
              conflicts_with_all = ["username", "password", "password_file", "token_file"])]
        guest: Option<String>,
        /// Do not log in: the commands on stdin do (LOGIN_REQUEST, RESUME_REQUEST,
        /// GUEST_LOGIN_REQUEST). With --protocol 1 not even HELLO is sent.
        #[arg(long, conflicts_with_all = ["username", "password", "password_file", "token_file", "guest"])]
        no_login: bool,
        /// Exit 0 once a frame of this type (name or code) has been printed.
        #[arg(long, value_name = "TYPE", value_parser = message_type)]
        until: Option<MessageType>,
        /// Send a HEARTBEAT after SECONDS without sending anything, so the
        /// server's idle timeout does not end a quiet session; 0 turns it off.
        #[arg(long, value_name = "SECONDS", default_value = "20", value_parser = any_seconds)]
        keepalive: Duration,
    },
    /// Print one field of a frame from a session's output (FILE, or stdin): a
    /// string as its text, anything else as compact JSON. No server involved.
    ///
    /// The first line of TYPE (name or code) counts, or the --nth one, among those
    /// whose payload matches every --where. PATH is a payload field (call_id), with
    /// dots into objects and arrays (ice_servers.0.urls.0), or . for the whole payload.
    /// Exit 1 when the input ends without such a line or the line lacks the field.
    ///
    ///   call_id=$(switchboard-cli field --wait CALL_NOTIFICATION call_id bob.out)
    Field {
        /// FILE is still being written (a running session's output): wait for the
        /// line to appear, up to --timeout (default 10 s), then exit 4.
        #[arg(long, requires = "file")]
        wait: bool,
        /// Take the N-th matching line, counting from 1.
        #[arg(long, value_name = "N", default_value_t = 1,
              value_parser = clap::value_parser!(u32).range(1..))]
        nth: u32,
        /// Only lines whose payload field KEY prints as VALUE (repeatable):
        /// --where call_id=17 --where req_id=r1.
        #[arg(long = "where", value_name = "KEY=VALUE", value_parser = Condition::parse)]
        conditions: Vec<Condition>,
        /// The frame's type: a name (any case) or a code.
        #[arg(value_name = "TYPE", value_parser = message_type)]
        kind: MessageType,
        /// The field, in the payload.
        #[arg(value_name = "PATH", value_parser = FieldPath::parse)]
        path: FieldPath,
        /// The session output to read; stdin without it (or with -).
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
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

fn prompt_text(username: &str) -> String {
    format!("Password for {username}: ")
}

fn password_for(
    username: &str,
    given: Option<&String>,
    file: Option<&Path>,
) -> Result<String, ClientError> {
    password::read(given.cloned(), file, &prompt_text(username))
}

fn print(text: &str) -> Result<(), ClientError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(ClientError::Output)
}

fn usage(message: impl Into<String>) -> ClientError {
    ClientError::Usage(message.into())
}

/// How to log in, decided before connecting: the password is read now (its
/// prompt not counted against --timeout) unless a token may make it unneeded.
fn login_method(
    cli: &Cli,
    login: &Login,
    guest: Option<&str>,
    no_login: bool,
) -> Result<(Method, Option<TokenFile>), ClientError> {
    let v1 = cli.target.protocol == 1;
    if no_login {
        return Ok((Method::None, None));
    }
    if let Some(display_name) = guest {
        if v1 {
            return Err(usage(
                "--guest needs protocol 2 (GUEST_LOGIN_REQUEST): drop --protocol 1",
            ));
        }
        let display_name = display_name.to_string();
        return Ok((Method::Guest { display_name }, None));
    }
    let with_password = |username: &str| -> Result<Method, ClientError> {
        Ok(Method::Password {
            username: username.to_string(),
            secret: password_for(
                username,
                login.password.as_ref(),
                login.password_file.as_deref(),
            )?,
        })
    };
    let Some(path) = &login.token_file else {
        let username = login
            .username
            .as_deref()
            .ok_or_else(|| usage("--username is required (or --token-file holding a token)"))?;
        return Ok((with_password(username)?, None));
    };
    if v1 {
        return Err(usage(
            "--token-file needs protocol 2 (session tokens, RESUME_REQUEST): drop --protocol 1",
        ));
    }
    let file = TokenFile::new(path);
    let method = match (file.load()?, login.username.as_deref()) {
        (Some(stored), Some(username)) if !stored.username.eq_ignore_ascii_case(username) => {
            return Err(usage(format!(
                "token file {} holds the session token of {}, not of {username}: name \
                 another file, or remove it to log in as {username}",
                path.display(),
                stored.username
            )));
        }
        (Some(stored), _) => Method::Token(stored),
        (None, Some(username)) => with_password(username)?,
        (None, None) => {
            return Err(usage(format!(
                "token file {} holds no session token yet: give --username (and a password) \
                 to log in and save one",
                path.display()
            )));
        }
    };
    Ok((method, Some(file)))
}

/// What to do when the server refuses the token with 401: say so on stderr,
/// and log in with the password if one is available (a prompt only on a terminal).
fn fallback(
    login: &Login,
    file: Option<&TokenFile>,
    refusal: &ErrorMessage,
    token_user: &str,
) -> Result<Option<Fallback>, ClientError> {
    let username = login
        .username
        .clone()
        .unwrap_or_else(|| token_user.to_string());
    let refused = format!(
        "the session token in {} was refused ({} {})",
        file.map_or_else(
            || "the token file".into(),
            |f| f.path().display().to_string()
        ),
        refusal.code,
        refusal.message
    );
    if let Some(secret) =
        password::without_prompt(login.password.clone(), login.password_file.as_deref())?
    {
        eprintln!("switchboard-cli: {refused}; logging in with the password");
        return Ok(Some(Fallback {
            username,
            secret,
            typed: false,
        }));
    }
    if password::can_prompt() {
        eprintln!("switchboard-cli: {refused}; logging in with the password");
        let secret = password::read(None, None, &prompt_text(&username))?;
        return Ok(Some(Fallback {
            username,
            secret,
            typed: true,
        }));
    }
    eprintln!(
        "switchboard-cli: {refused}, and no password was given to fall back on \
         (--password-file FILE or {PASSWORD_ENV})"
    );
    Ok(None)
}

/// Saves the token the login handed out, if there is a token file.
fn keep_token(file: Option<&TokenFile>, logged_in: &LoggedIn) -> Result<(), ClientError> {
    let Some(file) = file else {
        return Ok(());
    };
    match logged_in.token() {
        Some(token) => file.save(&token),
        None => {
            eprintln!(
                "switchboard-cli: the server handed out no session token; {} is unchanged",
                file.path().display()
            );
            Ok(())
        }
    }
}

fn run(cli: Cli) -> Result<(), ClientError> {
    let timeout = cli.target.timeout.unwrap_or(DEFAULT_TIMEOUT);
    match &cli.command {
        Command::Field {
            wait,
            nth,
            conditions,
            kind,
            path,
            file,
        } => {
            let mut search = Search::new(Query {
                kind: *kind,
                path: path.clone(),
                conditions: conditions.clone(),
                nth: *nth as usize,
            });
            let (lines, source) = match file {
                Some(file) if file.as_os_str() == "-" => (field::stdin_lines(), "stdin".into()),
                Some(file) if *wait => (
                    Lines::Follow {
                        path: file.clone(),
                        deadline: Instant::now() + timeout,
                    },
                    file.display().to_string(),
                ),
                Some(file) => (field::file_lines(file)?, file.display().to_string()),
                None => (field::stdin_lines(), "stdin".to_string()),
            };
            let value = field::find(&mut search, lines, &source)?;
            print(&format!("{value}\n"))
        }
        Command::Register(account) => {
            let options = connect_options(&cli.target)?;
            // The password first: time spent typing it does not count against --timeout.
            let secret = password_for(
                &account.username,
                account.password.as_ref(),
                account.password_file.as_deref(),
            )?;
            let deadline = Instant::now() + timeout;
            let mut conn = Connection::connect(&options, deadline)?;
            let result = commands::register(&mut conn, &account.username, &secret, deadline);
            conn.close();
            let account = result?;
            print(&format!(
                "registered user_id={} username={}\n",
                account.user_id, account.username
            ))
        }
        Command::Ping { count } => {
            let options = connect_options(&cli.target)?;
            let deadline = Instant::now() + timeout;
            let mut conn = Connection::connect(&options, deadline)?;
            let mut pinger = Pinger::default();
            let result = (0..*count).try_for_each(|_| {
                let rtt = pinger.ping(&mut conn, deadline)?;
                print(&format!("{}\n", commands::format_pong(rtt)))
            });
            conn.close();
            result
        }
        Command::Login(login) => {
            let options = connect_options(&cli.target)?;
            one_shot(&cli, &options, login, timeout, |_, _| Ok(None))
        }
        Command::Users { login, json } => {
            let options = connect_options(&cli.target)?;
            one_shot(&cli, &options, login, timeout, |conn, deadline| {
                let (list, raw) = commands::user_list(conn, deadline)?;
                Ok(Some(if *json {
                    format!("{raw}\n")
                } else {
                    commands::format_user_list(&list)
                }))
            })
        }
        Command::Session {
            login,
            guest,
            no_login,
            until,
            keepalive,
        } => run_session(
            &cli,
            &connect_options(&cli.target)?,
            login,
            guest.as_deref(),
            *no_login,
            *until,
            *keepalive,
            timeout,
        ),
    }
}

/// Connects and logs in as `login` says, with the fallback to the password.
fn log_in(
    cli: &Cli,
    options: &ConnectOptions,
    method: &Method,
    login: &Login,
    file: Option<&TokenFile>,
    timeout: Duration,
) -> Result<LoggedIn, login::LoginFailed> {
    let target = login::Target {
        options,
        hello: cli.target.protocol >= 2,
        timeout,
    };
    let token_user = match method {
        Method::Token(stored) => stored.username.clone(),
        _ => String::new(),
    };
    login::log_in(&target, method, &mut |refusal| {
        fallback(login, file, refusal, &token_user)
    })
}

/// `login` and `users`: log in, do `work`, then log out, or with a token file
/// save the token and only close (a LOGOUT would revoke it). Prints `work`'s
/// text, or the `logged in` line.
fn one_shot(
    cli: &Cli,
    options: &ConnectOptions,
    login: &Login,
    timeout: Duration,
    work: impl FnOnce(&mut Connection, Instant) -> Result<Option<String>, ClientError>,
) -> Result<(), ClientError> {
    let (method, file) = login_method(cli, login, None, false)?;
    let logged_in =
        log_in(cli, options, &method, login, file.as_ref(), timeout).map_err(|f| f.error)?;
    let deadline = logged_in.started + timeout;
    let saved = keep_token(file.as_ref(), &logged_in);
    let LoggedIn {
        mut conn, account, ..
    } = logged_in;
    let account =
        account.ok_or_else(|| ClientError::Protocol("the login named no account".into()))?;
    let result = saved
        .and_then(|()| work(&mut conn, deadline))
        .and_then(|text| {
            if file.is_none() {
                commands::logout(&mut conn, deadline)?;
            }
            Ok(text)
        });
    conn.close();
    match result? {
        Some(text) => print(&text),
        None => print(&format!(
            "logged in user_id={} username={}\n",
            account.user_id, account.username
        )),
    }
}

#[allow(clippy::too_many_arguments)]
fn run_session(
    cli: &Cli,
    options: &ConnectOptions,
    login: &Login,
    guest: Option<&str>,
    no_login: bool,
    until: Option<MessageType>,
    keepalive: Duration,
    timeout: Duration,
) -> Result<(), ClientError> {
    let (method, file) = login_method(cli, login, guest, no_login)?;
    let logged_in = match log_in(cli, options, &method, login, file.as_ref(), timeout) {
        Ok(logged_in) => logged_in,
        Err(failed) => {
            let mut stdout = std::io::stdout().lock();
            session::write_login(&mut stdout, &failed.frames, None)?;
            return Err(failed.error);
        }
    };
    let saved = keep_token(file.as_ref(), &logged_in);
    let mut stdout = std::io::stdout().lock();
    let end = session::write_login(&mut stdout, &logged_in.frames, until)?;
    saved?;
    let LoggedIn {
        mut conn,
        started,
        account,
        welcome,
        ..
    } = logged_in;
    if end.is_some() {
        conn.close();
        return Ok(());
    }
    // Only now: a password prompt during the login must not race a reader of stdin.
    let stdin = std::io::BufReader::new(std::io::stdin());
    let input = Input::spawn(stdin)
        .map_err(|e| ClientError::Usage(format!("cannot start reading stdin: {e}")))?;
    let options = SessionOptions {
        until,
        deadline: cli.target.timeout.map(|t| started + t),
        keepalive: (!keepalive.is_zero()).then_some(keepalive),
        protocol_2: welcome.is_some_and(|w| w.protocol_version >= 2),
    };
    let mut keeper = file.map(|file| TokenKeeper::new(file, account));
    // Both ends are success: the --until frame, or (without --until) the server's close.
    let result = session::run(&mut conn, &input, &mut stdout, &options, keeper.as_mut());
    conn.close();
    result.map(|_| ())
}
