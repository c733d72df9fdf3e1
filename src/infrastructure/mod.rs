//! Storage: the flat-file user store (users.txt) and the file-system rules it keeps.

pub mod fsutil;
pub mod users_file;

pub use users_file::{LoadError, UsersFile};
