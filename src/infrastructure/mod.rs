//! Storage: the flat-file user store (users.txt) and the file-system rules it
//! keeps; the data-directory lock; the admin socket operators reach a running
//! daemon through.

pub mod admin_socket;
pub mod fsutil;
pub mod lock;
pub mod session_files;
pub mod users_file;

pub use lock::{DataDirLock, Holder, LockError, Role};
pub use session_files::{RevocationFile, SessionFileError, load_or_create_secret};
pub use users_file::{LoadError, UsersFile};
