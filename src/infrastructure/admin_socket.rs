//! The admin socket: how `switchboard user ...` administers a running daemon.
//!
//! A Unix stream socket at `DATA_DIR/admin.sock`, created by the daemon once it
//! holds the data-directory lock (so a socket left by a crashed daemon is
//! simply replaced) and removed when it stops. The socket file is mode 0600:
//! only the daemon's user (and root) can connect, which is the whole of the
//! authentication; the daemon also checks the peer's uid (SO_PEERCRED) and
//! refuses anyone else, should the file's mode ever be widened.
//!
//! The protocol is one JSON object per line each way: a [`Request`]
//! (`{"op":"add","username":"alice","password":"..."}`), answered by one
//! [`Response`] (`{"ok":true,"user":{...}}` or
//! `{"ok":false,"code":404,"error":"no such user: bob"}`). A connection may
//! send several requests; each is carried out by [`UserAdmin`], so it behaves
//! as the protocol's own requests do.
//!
//! Each connection has its own thread, at most [`MAX_CONNECTIONS`] at once, and
//! read and write timeouts, so a stuck operator cannot hold the daemon. No lock
//! is held here: the counter of open connections is an atomic.

use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use log::{debug, info, warn};
use serde::{Deserialize, Serialize};

use crate::application::AppError;
use crate::application::admin::{UserAdmin, UserSummary};
use crate::domain::UserId;

/// The socket's name in the data directory.
pub const ADMIN_SOCKET_FILE: &str = "admin.sock";
/// Operator connections served at once; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 4;
/// The longest request line (a secret is at most 1 KiB).
const MAX_REQUEST: u64 = 16 * 1024;
/// How long the daemon waits for a request line or for the client to read.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest path a Unix socket address holds (sun_path, without its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// One operator request.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    List,
    Add { username: String, password: String },
    Passwd { username: String, password: String },
    Del { username: String },
    Kick { username: String },
}

impl fmt::Debug for Request {
    /// Never shows a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::List => f.write_str("list"),
            Request::Add { username, .. } => write!(f, "add {username}"),
            Request::Passwd { username, .. } => write!(f, "passwd {username}"),
            Request::Del { username } => write!(f, "del {username}"),
            Request::Kick { username } => write!(f, "kick {username}"),
        }
    }
}

/// A user in an answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct UserEntry {
    pub id: u64,
    pub username: String,
    /// Unix seconds.
    pub created_at: u64,
}

impl From<UserSummary> for UserEntry {
    fn from(u: UserSummary) -> UserEntry {
        UserEntry {
            id: u.id.0,
            username: u.username,
            created_at: u.created_at,
        }
    }
}

impl From<UserEntry> for UserSummary {
    fn from(u: UserEntry) -> UserSummary {
        UserSummary {
            id: UserId(u.id),
            username: u.username,
            created_at: u.created_at,
        }
    }
}

/// The answer to one request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub ok: bool,
    /// On failure: the protocol's error code (400, 404, 409, 500, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The user an add, passwd, del or kick acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserEntry>,
    /// list: every registered user, in id order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<UserEntry>>,
    /// kick: whether the user had a session, now ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_ended: Option<bool>,
}

impl Response {
    fn failure(code: u16, error: String) -> Response {
        Response {
            ok: false,
            code: Some(code),
            error: Some(error),
            ..Response::default()
        }
    }

    fn user(user: UserSummary) -> Response {
        Response {
            ok: true,
            user: Some(user.into()),
            ..Response::default()
        }
    }
}

/// Carries out one request.
pub fn execute(admin: &UserAdmin, request: Request) -> Response {
    let result: Result<Response, AppError> = match request {
        Request::List => Ok(Response {
            ok: true,
            users: Some(admin.list().into_iter().map(UserEntry::from).collect()),
            ..Response::default()
        }),
        Request::Add { username, password } => admin.add(&username, &password).map(Response::user),
        Request::Passwd { username, password } => {
            admin.passwd(&username, &password).map(Response::user)
        }
        Request::Del { username } => admin.delete(&username).map(Response::user),
        Request::Kick { username } => admin.kick(&username).map(|k| Response {
            session_ended: Some(k.session_ended),
            ..Response::user(k.user)
        }),
    };
    result.unwrap_or_else(|err| Response::failure(err.code(), err.to_string()))
}

/// Why the admin socket could not be set up.
#[derive(Debug)]
pub enum SocketError {
    /// The path does not fit in a socket address.
    TooLong {
        path: PathBuf,
    },
    Io {
        path: PathBuf,
        err: io::Error,
    },
}

impl fmt::Display for SocketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketError::TooLong { path } => write!(
                f,
                "admin socket path {} is longer than the {MAX_SOCKET_PATH} bytes a Unix socket address holds; use a data directory with a shorter path",
                path.display()
            ),
            SocketError::Io { path, err } => {
                write!(f, "cannot create admin socket {}: {err}", path.display())
            }
        }
    }
}

impl std::error::Error for SocketError {}

/// Removes the socket file when dropped.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// A bound admin socket, not yet serving: clients that connect wait in the
/// backlog. Removed when dropped.
pub struct BoundSocket {
    listener: UnixListener,
    file: SocketFile,
}

/// Creates the admin socket at `path`, mode 0600, replacing a stale one. The
/// caller holds the data-directory lock, so no other daemon uses `path`.
///
/// # Errors
/// A path too long for a socket address, something at `path` that is not a
/// socket, or what bind(2) and listen(2) refuse.
pub fn bind(path: &Path) -> Result<BoundSocket, SocketError> {
    use rustix::fs::{Mode, chmod};
    use rustix::net::{
        AddressFamily, SocketAddrUnix, SocketFlags, SocketType, listen, socket_with,
    };
    let io_err = |err: io::Error| SocketError::Io {
        path: path.to_path_buf(),
        err,
    };
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(SocketError::TooLong {
            path: path.to_path_buf(),
        });
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // Left by a daemon that crashed: nobody answers on it any more.
            fs::remove_file(path).map_err(io_err)?;
            info!("removed a stale admin socket path={}", path.display());
        }
        Ok(_) => {
            return Err(io_err(io::Error::other(
                "a file that is not a socket is in the way; move it elsewhere",
            )));
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_err(err)),
    }
    let addr = SocketAddrUnix::new(path).map_err(|_| SocketError::TooLong {
        path: path.to_path_buf(),
    })?;
    let fd = socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| io_err(e.into()))?;
    rustix::net::bind(&fd, &addr).map_err(|e| io_err(e.into()))?;
    let file = SocketFile(path.to_path_buf());
    // Nobody can connect before listen(2): the mode is in place first.
    chmod(path, Mode::from_raw_mode(0o600)).map_err(|e| io_err(e.into()))?;
    listen(&fd, 16).map_err(|e| io_err(e.into()))?;
    Ok(BoundSocket {
        listener: UnixListener::from(fd),
        file,
    })
}

/// A serving admin socket; stops and removes the socket file when dropped.
pub struct AdminSocket {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    file: SocketFile,
}

impl AdminSocket {
    pub fn path(&self) -> &Path {
        &self.file.0
    }
}

impl BoundSocket {
    /// Starts answering requests with `admin`, on a thread of its own.
    ///
    /// # Errors
    /// If the thread cannot be spawned.
    pub fn serve(self, admin: UserAdmin) -> io::Result<AdminSocket> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let listener = self.listener;
        let admin = Arc::new(admin);
        let thread = thread::Builder::new()
            .name("admin-socket".into())
            .spawn(move || accept_loop(&listener, &admin, &flag))?;
        info!("admin socket listening path={}", self.file.0.display());
        Ok(AdminSocket {
            stop,
            thread: Some(thread),
            file: self.file,
        })
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // The accept loop blocks in accept(2): a connection wakes it. Should
        // that fail, the thread is left to end with the process.
        if UnixStream::connect(&self.file.0).is_ok()
            && let Some(thread) = self.thread.take()
        {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: &UnixListener, admin: &Arc<UserAdmin>, stop: &AtomicBool) {
    let active = Arc::new(AtomicUsize::new(0));
    for incoming in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match incoming {
            Ok(stream) => stream,
            Err(err) => {
                warn!("admin socket accept failed: {err}");
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let busy = Response::failure(503, "too many operator connections; try again".into());
            let _ = write_line(&stream, &busy);
            continue;
        }
        /// Gives the connection's place back however its thread ends.
        struct Slot(Arc<AtomicUsize>);
        impl Drop for Slot {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let slot = Slot(active.clone());
        let admin = admin.clone();
        let spawned = thread::Builder::new()
            .name("admin-conn".into())
            .spawn(move || {
                let _slot = slot;
                serve_connection(&stream, &admin);
            });
        if let Err(err) = spawned {
            warn!("cannot spawn a thread for an operator connection: {err}");
        }
    }
}

/// Whether the peer may administer this daemon: the daemon's own user or root.
fn peer_allowed(stream: &UnixStream) -> Result<(), String> {
    let cred = rustix::net::sockopt::socket_peercred(stream)
        .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    let me = rustix::process::geteuid();
    if cred.uid == me || cred.uid.is_root() {
        Ok(())
    } else {
        Err(format!(
            "uid {} may not administer this daemon (it runs as uid {})",
            cred.uid.as_raw(),
            me.as_raw()
        ))
    }
}

fn serve_connection(stream: &UnixStream, admin: &UserAdmin) {
    if let Err(why) = peer_allowed(stream) {
        warn!("admin socket connection refused: {why}");
        let _ = write_line(stream, &Response::failure(403, why));
        return;
    }
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        match (&mut reader).take(MAX_REQUEST).read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(err) => {
                if !matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) {
                    warn!("admin socket read failed: {err}");
                }
                return;
            }
        }
        if !line.ends_with(b"\n") && line.len() as u64 >= MAX_REQUEST {
            let too_long = format!("request line longer than {MAX_REQUEST} bytes");
            let _ = write_line(stream, &Response::failure(413, too_long));
            return;
        }
        let response = match serde_json::from_slice::<Request>(&line) {
            Ok(request) => {
                debug!("admin request {request:?}");
                execute(admin, request)
            }
            // The reason names fields, never their values' text (a password
            // is always a string, so it is never the one quoted).
            Err(err) => Response::failure(400, format!("not a valid request: {err}")),
        };
        if write_line(stream, &response).is_err() {
            return;
        }
    }
}

fn write_line(mut stream: &UnixStream, response: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)
}

/// Why a request to the admin socket got no answer.
#[derive(Debug)]
pub enum ClientError {
    /// Nobody answers at the path (no socket, or nobody listening).
    NotListening(io::Error),
    /// The socket file's mode keeps this user out.
    PermissionDenied(io::Error),
    /// The connection failed midway, timed out, or the answer was unreadable.
    Failed(String),
}

/// Sends one request to the admin socket at `path` and waits up to `timeout`
/// for the answer.
///
/// # Errors
/// See [`ClientError`].
pub fn request(path: &Path, request: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let stream = UnixStream::connect(path).map_err(|err| match err.kind() {
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(err),
        _ => ClientError::NotListening(err),
    })?;
    let failed = |e: io::Error| ClientError::Failed(e.to_string());
    stream.set_read_timeout(Some(timeout)).map_err(failed)?;
    stream.set_write_timeout(Some(timeout)).map_err(failed)?;
    let mut line = serde_json::to_vec(request).map_err(|e| ClientError::Failed(e.to_string()))?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(failed)?;
    let mut answer = Vec::new();
    BufReader::new(&stream)
        .take(64 * 1024 * 1024)
        .read_until(b'\n', &mut answer)
        .map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                ClientError::Failed(format!("no answer within {} s", timeout.as_secs()))
            }
            _ => failed(e),
        })?;
    if answer.is_empty() {
        return Err(ClientError::Failed(
            "the daemon closed the connection without answering".into(),
        ));
    }
    serde_json::from_slice(&answer)
        .map_err(|e| ClientError::Failed(format!("unreadable answer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::application::auth::{AuthLimits, Authenticator, PasswordHasher};
    use crate::infrastructure::{RevocationFile, UsersFile};

    fn admin(dir: &Path) -> UserAdmin {
        let users = Arc::new(UsersFile::open(&dir.join("users.txt")).unwrap());
        let hasher = PasswordHasher::new(4, 1, Arc::default()).unwrap();
        let auth = Arc::new(Authenticator::new(
            users.clone(),
            hasher,
            AuthLimits::unlimited(),
        ));
        let revocations = Arc::new(RevocationFile::open(&dir.join("revocations.txt")).unwrap());
        UserAdmin::new(users, auth, revocations, None)
    }

    /// Requests and answers round-trip as one JSON line each; a password never
    /// shows in Debug output.
    #[test]
    fn the_wire_format_is_one_json_object_per_request() {
        let add = Request::Add {
            username: "alice".into(),
            password: "s3cret".into(),
        };
        let json = serde_json::to_string(&add).unwrap();
        assert_eq!(
            json,
            r#"{"op":"add","username":"alice","password":"s3cret"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), add);
        assert_eq!(format!("{add:?}"), "add alice");
        assert!(serde_json::from_str::<Request>(r#"{"op":"del","username":"x","y":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"delete","username":"x"}"#).is_err());
        let failure = Response::failure(404, "no such user: bob".into());
        assert_eq!(
            serde_json::to_string(&failure).unwrap(),
            r#"{"ok":false,"code":404,"error":"no such user: bob"}"#
        );
    }

    /// Over a real socket: mode 0600, requests carried out in order, errors
    /// with their codes, a stale socket replaced, the file gone after drop.
    #[test]
    fn a_bound_socket_serves_requests_and_cleans_up() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ADMIN_SOCKET_FILE);
        // A stale socket, as a crashed daemon leaves it.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let socket = bind(&path).unwrap().serve(admin(dir.path())).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let ask = |r: Request| request(&path, &r, Duration::from_secs(10)).unwrap();
        let added = ask(Request::Add {
            username: "alice".into(),
            password: "pw".into(),
        });
        assert!(added.ok, "{added:?}");
        assert_eq!(added.user.as_ref().map(|u| u.id), Some(1));
        let again = ask(Request::Add {
            username: "ALICE".into(),
            password: "pw".into(),
        });
        assert_eq!((again.ok, again.code), (false, Some(409)));
        let kicked = ask(Request::Kick {
            username: "alice".into(),
        });
        assert_eq!(kicked.session_ended, Some(false));
        let list = ask(Request::List);
        assert_eq!(list.users.map(|u| u.len()), Some(1));
        let gone = ask(Request::Del {
            username: "bob".into(),
        });
        assert_eq!(
            (gone.code, gone.error.as_deref()),
            (Some(404), Some("no such user: bob"))
        );
        drop(socket);
        assert!(!path.exists());
        assert!(matches!(
            request(&path, &Request::List, Duration::from_secs(1)),
            Err(ClientError::NotListening(_))
        ));
    }

    /// A path too long for a socket address is refused by name, not truncated.
    #[test]
    fn a_path_too_long_is_refused() {
        let long = PathBuf::from(format!("/tmp/{}/admin.sock", "d".repeat(120)));
        assert!(matches!(bind(&long), Err(SocketError::TooLong { .. })));
    }
}
