//! Where a password typed by a person comes from: a file, the environment, a
//! flag, or a prompt without echo.

use std::fmt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// The environment variable read for a password when no file or flag gives one.
pub const PASSWORD_ENV: &str = "SWITCHBOARD_PASSWORD";

/// Why no password could be read.
#[derive(Debug)]
pub enum SecretError {
    File { path: PathBuf, err: std::io::Error },
    Empty(String),
    NoTerminal,
    Prompt(std::io::Error),
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::File { path, err } => {
                write!(f, "cannot read password file {}: {err}", path.display())
            }
            SecretError::Empty(from) => write!(f, "the password from {from} is empty"),
            SecretError::NoTerminal => write!(
                f,
                "no password given: use --password-file FILE or {PASSWORD_ENV}, or run at a terminal to be prompted"
            ),
            SecretError::Prompt(err) => write!(f, "cannot read the password: {err}"),
        }
    }
}

impl std::error::Error for SecretError {}

/// Reads a password: the first line of `file`, else `flag` (visible to other
/// local users in the process list), else `$SWITCHBOARD_PASSWORD`, else a
/// prompt on the terminal. Never falls back to reading a non-terminal stdin.
///
/// # Errors
/// An unreadable file, an empty password, or nowhere to ask.
pub fn read_password(
    file: Option<&Path>,
    flag: Option<&str>,
    prompt: &str,
) -> Result<String, SecretError> {
    let (password, from) = if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|err| SecretError::File {
            path: path.to_path_buf(),
            err,
        })?;
        let first = text.lines().next().unwrap_or_default().to_string();
        (first, path.display().to_string())
    } else if let Some(flag) = flag {
        (flag.to_string(), "--password".to_string())
    } else if let Ok(env) = std::env::var(PASSWORD_ENV) {
        (env, PASSWORD_ENV.to_string())
    } else if std::io::stdin().is_terminal() {
        (
            rpassword::prompt_password(prompt).map_err(SecretError::Prompt)?,
            "the prompt".to_string(),
        )
    } else {
        return Err(SecretError::NoTerminal);
    };
    if password.is_empty() {
        return Err(SecretError::Empty(from));
    }
    Ok(password)
}
