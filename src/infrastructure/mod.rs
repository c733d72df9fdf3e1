//! Storage: the flat-file user store (users.txt) and the file-system rules it keeps.

pub mod fsutil;
pub mod lock;
pub mod session_files;
pub mod users_file;

pub use lock::{DataDirLock, LockError};
pub use session_files::{RevocationFile, SessionFileError, load_or_create_secret};
pub use users_file::{LoadError, UsersFile};
