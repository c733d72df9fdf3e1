//! Where the password comes from: `--password` or `--password-file` (never
//! both: that is a usage error), else [`PASSWORD_ENV`], else a prompt on the
//! terminal. Shared by `switchboard-cli` and `switchboard user add|passwd`, so
//! the two agree.
//!
//! The password is sent as the protocol's `password_hash` field, the opaque
//! secret the server bcrypts.

use std::fs;
use std::io;
use std::path::Path;

use super::ClientError;

/// The environment variable read when no flag gives the password.
pub const PASSWORD_ENV: &str = "SWITCHBOARD_PASSWORD";

/// Reads the first line of `path`, without its line ending.
///
/// # Errors
/// A usage error if the file cannot be read, is not UTF-8, or its first line is empty.
pub fn read_password_file(path: &Path) -> Result<String, ClientError> {
    let text = fs::read_to_string(path).map_err(|e| {
        ClientError::Usage(format!("cannot read password file {}: {e}", path.display()))
    })?;
    let line = first_line(&text);
    if line.is_empty() {
        return Err(ClientError::Usage(format!(
            "password file {} has an empty first line",
            path.display()
        )));
    }
    Ok(line.to_string())
}

/// The text up to the first line ending (`\n` or `\r\n`).
fn first_line(text: &str) -> &str {
    let line = text.split('\n').next().unwrap_or("");
    line.strip_suffix('\r').unwrap_or(line)
}

/// Picks the password: the flag or the file (both is a usage error: which one
/// was meant cannot be told), else the environment, else the prompt.
///
/// `env` is the value of [`PASSWORD_ENV`] (an empty value counts as unset).
/// `prompt` asks on the terminal; pass `None` when stdin is not a terminal, so
/// that a script without a password fails at once instead of waiting.
///
/// # Errors
/// A usage error when both `given` and `file` are set, when no source has a
/// password, or when the chosen one fails.
pub fn resolve(
    given: Option<String>,
    file: Option<&Path>,
    env: Option<String>,
    prompt: Option<&mut dyn FnMut() -> io::Result<String>>,
) -> Result<String, ClientError> {
    if given.is_some() && file.is_some() {
        return Err(ClientError::Usage(
            "--password and --password-file both give the password: use only one".into(),
        ));
    }
    if let Some(password) = given {
        return Ok(password);
    }
    if let Some(path) = file {
        return read_password_file(path);
    }
    if let Some(password) = env.filter(|p| !p.is_empty()) {
        return Ok(password);
    }
    let Some(prompt) = prompt else {
        return Err(ClientError::Usage(format!(
            "no password given and stdin is not a terminal to prompt on: \
             use --password-file FILE or set {PASSWORD_ENV}"
        )));
    };
    let password = prompt().map_err(|e| {
        ClientError::Usage(format!("cannot read the password from the terminal: {e}"))
    })?;
    if password.is_empty() {
        return Err(ClientError::Usage("empty password".into()));
    }
    Ok(password)
}

/// The password from the sources that need no terminal: the flag, the file or
/// [`PASSWORD_ENV`], in [`resolve`]'s order; `None` when none of them gives one.
///
/// # Errors
/// As [`resolve`], for the flag and the file together or an unreadable file.
pub fn without_prompt(
    given: Option<String>,
    file: Option<&Path>,
) -> Result<Option<String>, ClientError> {
    if given.is_some() || file.is_some() {
        return resolve(given, file, None, None).map(Some);
    }
    Ok(std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty()))
}

/// Whether [`read`] may prompt: stdin is a terminal.
pub fn can_prompt() -> bool {
    use std::io::IsTerminal;
    io::stdin().is_terminal()
}

/// [`resolve`] with the real sources: `$SWITCHBOARD_PASSWORD`, and a prompt
/// (showing `prompt_text`, without echo) only when stdin is a terminal.
///
/// # Errors
/// As [`resolve`].
pub fn read(
    given: Option<String>,
    file: Option<&Path>,
    prompt_text: &str,
) -> Result<String, ClientError> {
    use std::io::IsTerminal;
    let mut ask = || rpassword::prompt_password(prompt_text);
    let prompt: Option<&mut dyn FnMut() -> io::Result<String>> = if io::stdin().is_terminal() {
        Some(&mut ask)
    } else {
        None
    };
    resolve(given, file, std::env::var(PASSWORD_ENV).ok(), prompt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage_message(result: Result<String, ClientError>) -> String {
        match result {
            Err(ClientError::Usage(m)) => m,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    /// Only the first line counts, with `\n` or `\r\n` stripped.
    #[test]
    fn a_password_file_gives_its_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("s3cret\n", "s3cret"),
            ("s3cret", "s3cret"),
            ("s3cret\r\nsecond line\n", "s3cret"),
            (" spaces kept \n", " spaces kept "),
        ];
        for (text, want) in cases {
            let path = dir.path().join("pw");
            fs::write(&path, text).unwrap();
            assert_eq!(read_password_file(&path).unwrap(), want, "{text:?}");
        }
        let path = dir.path().join("empty");
        fs::write(&path, "\nsecond\n").unwrap();
        assert!(usage_message(read_password_file(&path)).contains("empty first line"));
        let missing = dir.path().join("missing");
        assert!(usage_message(read_password_file(&missing)).contains("cannot read"));
    }

    /// The flag or the file wins over the environment, the environment over the prompt.
    #[test]
    fn sources_are_tried_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        fs::write(&file, "from-file\n").unwrap();
        let mut prompt = || Ok::<_, io::Error>("from-prompt".to_string());
        let env = || Some("from-env".to_string());
        assert_eq!(
            resolve(Some("flag".into()), None, env(), Some(&mut prompt)).unwrap(),
            "flag"
        );
        assert_eq!(
            resolve(None, Some(&file), env(), Some(&mut prompt)).unwrap(),
            "from-file"
        );
        assert_eq!(
            resolve(None, None, env(), Some(&mut prompt)).unwrap(),
            "from-env"
        );
        assert_eq!(
            resolve(None, None, Some(String::new()), Some(&mut prompt)).unwrap(),
            "from-prompt"
        );
    }

    /// --password and --password-file together are refused, whatever else is set,
    /// and even when the file cannot be read: neither silently wins.
    #[test]
    fn the_flag_and_the_file_together_are_a_usage_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        fs::write(&file, "from-file\n").unwrap();
        let missing = dir.path().join("missing");
        let mut prompt = || Ok::<_, io::Error>("from-prompt".to_string());
        for path in [&file, &missing] {
            let message = usage_message(resolve(
                Some("flag".into()),
                Some(path),
                Some("from-env".into()),
                Some(&mut prompt),
            ));
            assert!(
                message.contains("--password and --password-file"),
                "{message}"
            );
        }
        let message = usage_message(resolve(Some("flag".into()), Some(&file), None, None));
        assert!(message.contains("use only one"), "{message}");
    }

    /// Without a terminal and without a password, the answer is a usage error naming the ways out.
    #[test]
    fn no_terminal_and_no_password_is_a_usage_error() {
        let message = usage_message(resolve(None, None, None, None));
        assert!(
            message.contains("--password-file") && message.contains(PASSWORD_ENV),
            "{message}"
        );
        let mut failing = || Err(io::Error::other("no tty"));
        assert!(usage_message(resolve(None, None, None, Some(&mut failing))).contains("no tty"));
    }
}
