//! Users: identifiers, username rules and presence states.

use std::fmt;

/// A registered user's identifier. On the wire it is a JSON string holding a
/// decimal number (`"user_id":"7"`), which is what v1 clients search for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub u64);

/// Guest ids start here; registered users are numbered from 1 and storage never
/// gives out an id this large, so the two can never collide.
pub const GUEST_ID_BASE: u64 = 1 << 62;

impl UserId {
    /// A temporary guest identity (GUEST_LOGIN), never a registered user.
    pub fn is_guest(self) -> bool {
        self.0 >= GUEST_ID_BASE
    }

    /// Parses the wire form. Anything but a plain decimal number is not an id.
    pub fn parse(text: &str) -> Option<UserId> {
        if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok().map(UserId)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Presence as v1 clients know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserState {
    Disconnected,
    Available,
    Busy,
}

impl UserState {
    pub fn as_str(self) -> &'static str {
        match self {
            UserState::Disconnected => "Disconnected",
            UserState::Available => "Available",
            UserState::Busy => "Busy",
        }
    }
}

impl fmt::Display for UserState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub const USERNAME_MIN: usize = 3;
pub const USERNAME_MAX: usize = 32;
/// Upper bound on the opaque secret a client sends as `password_hash`.
pub const SECRET_MAX: usize = 1024;

/// Why a username is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsernameError {
    Length(usize),
    Character(char),
}

impl fmt::Display for UsernameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsernameError::Length(n) => write!(
                f,
                "username must be {USERNAME_MIN} to {USERNAME_MAX} characters long (got {n})"
            ),
            UsernameError::Character(c) => write!(
                f,
                "username may only contain ASCII letters, digits, '_', '-' and '.' (found {c:?})"
            ),
        }
    }
}

/// Checks a username against the rules in PROTOCOL.md: 3 to 32 ASCII letters,
/// digits, `_`, `-` or `.`. The set excludes everything the v1 desktop client's
/// text search would trip over (`"`, `]`, `}`) and the `|` of users.txt.
/// Names are unique regardless of case; see [`username_key`].
///
/// # Errors
/// Returns the first rule the name breaks.
pub fn validate_username(name: &str) -> Result<(), UsernameError> {
    let len = name.chars().count();
    if !(USERNAME_MIN..=USERNAME_MAX).contains(&len) {
        return Err(UsernameError::Length(len));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        Some(c) => Err(UsernameError::Character(c)),
        None => Ok(()),
    }
}

/// The name a guest is shown under: the chosen display name (which follows the
/// username rules) plus a suffix with a space and parentheses, characters no
/// registered username may contain, so a guest can never pass for a user.
///
/// # Errors
/// The display name breaks the username rules.
pub fn guest_name(display_name: &str) -> Result<String, UsernameError> {
    validate_username(display_name)?;
    Ok(format!("{display_name} (guest)"))
}

/// The case-folded form under which names are unique: `Alice` and `alice` are
/// the same account, and logging in as either works.
pub fn username_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// Checks the opaque secret (`password_hash` on the wire).
///
/// # Errors
/// A message for the client when the secret is empty or too long.
pub fn validate_secret(secret: &str) -> Result<(), String> {
    if secret.is_empty() {
        return Err("password_hash must not be empty".into());
    }
    if secret.len() > SECRET_MAX {
        return Err(format!("password_hash must be at most {SECRET_MAX} bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Valid names pass, and each broken rule is reported.
    #[test]
    fn usernames_follow_the_documented_rules() {
        assert!(validate_username("alice").is_ok());
        assert!(validate_username("Bob_the-2nd.x").is_ok());
        assert_eq!(validate_username("al"), Err(UsernameError::Length(2)));
        assert_eq!(
            validate_username(&"a".repeat(33)),
            Err(UsernameError::Length(33))
        );
        for bad in ["ali\"ce", "ali]ce", "ali}ce", "ali|ce", "ali ce", "alicé"] {
            assert!(
                matches!(validate_username(bad), Err(UsernameError::Character(_))),
                "{bad}"
            );
        }
    }

    /// Ids are plain decimal numbers; anything else is rejected.
    #[test]
    fn user_ids_parse_only_decimal_numbers() {
        assert_eq!(UserId::parse("42"), Some(UserId(42)));
        assert_eq!(UserId::parse(""), None);
        assert_eq!(UserId::parse("-1"), None);
        assert_eq!(UserId::parse("4x"), None);
        assert_eq!(UserId::parse("99999999999999999999999"), None);
    }

    /// Case folding makes names unique regardless of case.
    #[test]
    fn guests_cannot_pass_for_registered_users() {
        let name = guest_name("alice").unwrap();
        assert_eq!(name, "alice (guest)");
        assert!(validate_username(&name).is_err());
        assert!(guest_name("al ice").is_err());
        assert!(UserId(GUEST_ID_BASE).is_guest());
        assert!(!UserId(GUEST_ID_BASE - 1).is_guest());
    }

    #[test]
    fn usernames_are_unique_regardless_of_case() {
        assert_eq!(username_key("Alice"), username_key("aLICE"));
    }
}
