//! The session token file (`--token-file FILE`): the newest session token the
//! server handed out, kept so that the next run logs in by RESUME_REQUEST,
//! without the password and without the server's bcrypt work.
//!
//! The file is one line of JSON naming whose token it is:
//!
//! ```json
//! {"username":"alice","user_id":"1","session_token":"sb1.eyJ1Ijox...","expires_at":1763942400}
//! ```
//!
//! It is replaced atomically (a temporary file beside it, fsync, rename, fsync of
//! the directory), and created with mode 0600, so it is never readable by other
//! users, not even while being written. A file that is not a token file is
//! refused, never overwritten: a mistyped `--token-file ~/.ssh/id_ed25519` does
//! not destroy a key.
//!
//! [`TokenKeeper`] follows a session: it writes every token the server hands out
//! (LOGIN_RESPONSE, TOKEN_REFRESH_RESPONSE, PASSWORD_CHANGE_RESPONSE) and
//! removes the file once the server has revoked them all (LOGOUT_RESPONSE,
//! ACCOUNT_DELETE_RESPONSE).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::commands::Account;
use super::{ClientError, Frame};
use crate::tcp::message::{AuthResponse, MessageType, ServerMessage};

/// What a token file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    /// The user the token logs in, as the server names it.
    pub username: String,
    pub user_id: String,
    /// Opaque; sent back as RESUME_REQUEST's `session_token`.
    pub session_token: String,
    /// Unix seconds, as the server said; informational (the server decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl StoredToken {
    /// The token a successful LOGIN_RESPONSE (or RESUME, GUEST_LOGIN answer)
    /// hands out, if it hands one out.
    pub fn from_response(response: &AuthResponse) -> Option<StoredToken> {
        if !response.success {
            return None;
        }
        Some(StoredToken {
            username: response.username.clone()?,
            user_id: response.user_id.clone()?,
            session_token: response.session_token.clone().filter(|t| !t.is_empty())?,
            expires_at: response.expires_at,
        })
    }
}

/// A token file named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFile {
    path: PathBuf,
}

impl TokenFile {
    pub fn new(path: impl Into<PathBuf>) -> TokenFile {
        TokenFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn usage(&self, what: impl std::fmt::Display) -> ClientError {
        ClientError::Usage(format!("token file {}: {what}", self.path.display()))
    }

    /// Reads the token; `None` when the file does not exist or is empty.
    /// Also checks that the file could be written later (its directory exists),
    /// so a login is not made only to fail at saving its token.
    ///
    /// # Errors
    /// A usage error for an unreadable file, a directory or device, or a file
    /// that is not a token file.
    pub fn load(&self) -> Result<Option<StoredToken>, ClientError> {
        let dir = parent(&self.path);
        if !dir.is_dir() {
            return Err(self.usage(format!("the directory {} does not exist", dir.display())));
        }
        match fs::metadata(&self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.usage(e)),
            Ok(meta) if !meta.is_file() => return Err(self.usage("not a regular file")),
            Ok(_) => {}
        }
        let text = fs::read_to_string(&self.path).map_err(|e| self.usage(e))?;
        parse(&text).map_err(|e| self.usage(e))
    }

    /// Replaces the file with `token`, atomically and with mode 0600. Follows a
    /// symbolic link to the file it names.
    ///
    /// # Errors
    /// A usage error naming the file and the I/O failure; the old file is then intact.
    pub fn save(&self, token: &StoredToken) -> Result<(), ClientError> {
        let mut text = serde_json::to_string(token).map_err(|e| self.usage(e))?;
        text.push('\n');
        let target = link_target(&self.path).map_err(|e| self.usage(e))?;
        write_atomically(&target, text.as_bytes()).map_err(|e| self.usage(e))
    }

    /// Removes the file (a token the server has revoked is of no use).
    ///
    /// # Errors
    /// A usage error if it exists and cannot be removed.
    pub fn remove(&self) -> Result<(), ClientError> {
        match fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(self.usage(e)),
            _ => Ok(()),
        }
    }
}

/// The file's text as a token; `None` for an empty file.
fn parse(text: &str) -> Result<Option<StoredToken>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let token: StoredToken = serde_json::from_str(text).map_err(|e| {
        format!(
            "not a switchboard-cli token file ({e}); it is neither used nor overwritten: \
             remove it or name another file"
        )
    })?;
    if token.session_token.is_empty() {
        return Err("the session_token is empty".into());
    }
    Ok(Some(token))
}

/// The file a chain of symbolic links ends at (the link itself if it dangles
/// there: the file is then created where it points).
fn link_target(path: &Path) -> io::Result<PathBuf> {
    let mut path = path.to_path_buf();
    for _ in 0..32 {
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let next = fs::read_link(&path)?;
                path = parent(&path).join(next);
            }
            _ => return Ok(path),
        }
    }
    Err(io::Error::other("too many levels of symbolic links"))
}

/// The directory a file is in; `.` for a bare name.
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Writes a temporary file beside `path` (mode 0600, created exclusively under
/// a name no other process uses), syncs it, renames it over `path`, and syncs
/// the directory.
fn write_atomically(path: &Path, content: &[u8]) -> io::Result<()> {
    let dir = parent(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.{nanos}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(content)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Keeps a token file in step with a session: see the module documentation.
#[derive(Debug)]
pub struct TokenKeeper {
    file: TokenFile,
    /// Who the session is logged in as; TOKEN_REFRESH and PASSWORD_CHANGE
    /// answers do not say.
    account: Option<Account>,
}

/// What [`TokenKeeper::observe`] did with the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenChange {
    Unchanged,
    Saved(StoredToken),
    Removed,
}

impl TokenKeeper {
    /// `account`: the session's user, if it is already logged in.
    pub fn new(file: TokenFile, account: Option<Account>) -> TokenKeeper {
        TokenKeeper { file, account }
    }

    pub fn file(&self) -> &TokenFile {
        &self.file
    }

    /// Updates the file for a received frame that hands out or revokes tokens;
    /// other frames, and frames that do not decode, change nothing.
    ///
    /// # Errors
    /// A usage error if the file cannot be written or removed.
    pub fn observe(&mut self, frame: &Frame) -> Result<TokenChange, ClientError> {
        let relevant = [
            MessageType::LoginResponse,
            MessageType::TokenRefreshResponse,
            MessageType::PasswordChangeResponse,
            MessageType::LogoutResponse,
            MessageType::AccountDeleteResponse,
        ];
        if !relevant.iter().any(|&kind| frame.is(kind)) {
            return Ok(TokenChange::Unchanged);
        }
        let Ok(message) = frame.decode() else {
            return Ok(TokenChange::Unchanged);
        };
        match message {
            ServerMessage::LoginResponse(response) if response.success => {
                if let (Some(user_id), Some(username)) = (&response.user_id, &response.username) {
                    self.account = Some(Account {
                        user_id: user_id.clone(),
                        username: username.clone(),
                    });
                }
                match StoredToken::from_response(&response) {
                    Some(token) => self.save(token),
                    None => Ok(TokenChange::Unchanged),
                }
            }
            ServerMessage::TokenRefreshResponse(outcome)
            | ServerMessage::PasswordChangeResponse(outcome)
                if outcome.success =>
            {
                match (&self.account, outcome.session_token) {
                    (Some(account), Some(session_token)) if !session_token.is_empty() => {
                        let token = StoredToken {
                            username: account.username.clone(),
                            user_id: account.user_id.clone(),
                            session_token,
                            expires_at: outcome.expires_at,
                        };
                        self.save(token)
                    }
                    _ => Ok(TokenChange::Unchanged),
                }
            }
            ServerMessage::LogoutResponse(response) if response.success => self.revoked(),
            ServerMessage::AccountDeleteResponse(outcome) if outcome.success => self.revoked(),
            _ => Ok(TokenChange::Unchanged),
        }
    }

    fn save(&mut self, token: StoredToken) -> Result<TokenChange, ClientError> {
        self.file.save(&token)?;
        Ok(TokenChange::Saved(token))
    }

    fn revoked(&mut self) -> Result<TokenChange, ClientError> {
        self.account = None;
        self.file.remove()?;
        Ok(TokenChange::Removed)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::tcp::message::{AccountOutcome, LogoutResponse};

    fn token(name: &str, value: &str) -> StoredToken {
        StoredToken {
            username: name.into(),
            user_id: "1".into(),
            session_token: value.into(),
            expires_at: Some(1_763_942_400),
        }
    }

    fn frame(message: &ServerMessage) -> Frame {
        let bytes = message.to_frame();
        Frame {
            kind: bytes[4],
            payload: bytes[5..].to_vec(),
        }
    }

    /// A saved token reads back, the file has mode 0600 whatever the umask
    /// allowed, and no temporary file is left behind.
    #[test]
    fn a_saved_token_reads_back_from_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = TokenFile::new(dir.path().join("alice.token"));
        assert_eq!(file.load().unwrap(), None, "a missing file holds no token");
        file.save(&token("alice", "sb1.a")).unwrap();
        assert_eq!(file.load().unwrap(), Some(token("alice", "sb1.a")));
        let mode = fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        // A readable old file is replaced by a private one.
        fs::set_permissions(file.path(), fs::Permissions::from_mode(0o644)).unwrap();
        file.save(&token("alice", "sb1.b")).unwrap();
        let mode = fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["alice.token"]);
        let text = fs::read_to_string(file.path()).unwrap();
        assert_eq!(
            text,
            "{\"username\":\"alice\",\"user_id\":\"1\",\"session_token\":\"sb1.b\",\"expires_at\":1763942400}\n"
        );
    }

    /// A file that is not a token file, a directory, or a file in a missing
    /// directory is a usage error, and the file is left as it was.
    #[test]
    fn what_is_not_a_token_file_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_ed25519");
        fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
        let err = TokenFile::new(&key).load().unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string().contains("not a switchboard-cli token file"),
            "{err}"
        );
        assert_eq!(
            fs::read_to_string(&key).unwrap(),
            "-----BEGIN OPENSSH PRIVATE KEY-----\n"
        );
        let empty_token = dir.path().join("empty-token");
        fs::write(
            &empty_token,
            r#"{"username":"a","user_id":"1","session_token":""}"#,
        )
        .unwrap();
        assert!(TokenFile::new(&empty_token).load().is_err());
        assert!(TokenFile::new(dir.path()).load().is_err(), "a directory");
        let nowhere = TokenFile::new(dir.path().join("missing").join("t"));
        assert!(
            nowhere
                .load()
                .unwrap_err()
                .to_string()
                .contains("does not exist")
        );
        let blank = dir.path().join("blank");
        fs::write(&blank, "\n").unwrap();
        assert_eq!(TokenFile::new(&blank).load().unwrap(), None);
    }

    /// Saving through a symbolic link replaces the file it points to, not the link.
    #[test]
    fn a_symlinked_token_file_is_written_through_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.token");
        let link = dir.path().join("link.token");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let file = TokenFile::new(&link);
        file.save(&token("alice", "sb1.a")).unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            TokenFile::new(&real).load().unwrap(),
            Some(token("alice", "sb1.a"))
        );
    }

    /// The keeper saves each token the server hands out, under the session's
    /// user, and removes the file when LOGOUT or ACCOUNT_DELETE revoke them.
    #[test]
    fn the_keeper_follows_the_tokens_of_a_session() {
        let dir = tempfile::tempdir().unwrap();
        let file = TokenFile::new(dir.path().join("t"));
        let mut keeper = TokenKeeper::new(file.clone(), None);
        let login = ServerMessage::LoginResponse(AuthResponse {
            success: true,
            user_id: Some("7".into()),
            username: Some("bob".into()),
            session_token: Some("sb1.login".into()),
            expires_at: Some(5),
            ..Default::default()
        });
        let saved = keeper.observe(&frame(&login)).unwrap();
        let expected = StoredToken {
            username: "bob".into(),
            user_id: "7".into(),
            session_token: "sb1.login".into(),
            expires_at: Some(5),
        };
        assert_eq!(saved, TokenChange::Saved(expected.clone()));
        assert_eq!(file.load().unwrap(), Some(expected));
        let outcome = |token: &str| AccountOutcome {
            success: true,
            session_token: Some(token.into()),
            expires_at: Some(6),
            req_id: None,
        };
        for (refresh, value) in [
            (
                ServerMessage::TokenRefreshResponse(outcome("sb1.refresh")),
                "sb1.refresh",
            ),
            (
                ServerMessage::PasswordChangeResponse(outcome("sb1.changed")),
                "sb1.changed",
            ),
        ] {
            keeper.observe(&frame(&refresh)).unwrap();
            let stored = file.load().unwrap().unwrap();
            assert_eq!(
                (
                    stored.username.as_str(),
                    stored.user_id.as_str(),
                    stored.session_token.as_str()
                ),
                ("bob", "7", value)
            );
        }
        // A frame that hands out nothing changes nothing.
        let unrelated = ServerMessage::error(404, "no such user", None);
        assert_eq!(
            keeper.observe(&frame(&unrelated)).unwrap(),
            TokenChange::Unchanged
        );
        let failed = ServerMessage::LoginResponse(AuthResponse {
            success: false,
            code: Some(401),
            ..Default::default()
        });
        assert_eq!(
            keeper.observe(&frame(&failed)).unwrap(),
            TokenChange::Unchanged
        );
        let logout = ServerMessage::LogoutResponse(LogoutResponse {
            success: true,
            error: None,
            req_id: None,
        });
        assert_eq!(
            keeper.observe(&frame(&logout)).unwrap(),
            TokenChange::Removed
        );
        assert!(!file.path().exists());
        // Logged out: a refresh answer (there cannot be one) has no user to save under.
        let refresh = ServerMessage::TokenRefreshResponse(AccountOutcome {
            success: true,
            session_token: Some("sb1.x".into()),
            ..Default::default()
        });
        assert_eq!(
            keeper.observe(&frame(&refresh)).unwrap(),
            TokenChange::Unchanged
        );
        keeper.observe(&frame(&login)).unwrap();
        let deleted = ServerMessage::AccountDeleteResponse(AccountOutcome {
            success: true,
            ..Default::default()
        });
        assert_eq!(
            keeper.observe(&frame(&deleted)).unwrap(),
            TokenChange::Removed
        );
        assert!(!file.path().exists());
    }
}
