//! Storage: the flat-file user store (users.txt) and the file-system rules it
//! keeps; the data-directory lock; the admin socket operators reach a running
//! daemon through.

pub mod admin_socket;
pub mod codec;
pub mod conversations;
pub mod fsutil;
pub mod journal;
pub mod lock;
pub mod state_file;
pub mod token_files;
pub mod users_file;

pub use conversations::{CONVERSATIONS_FILE, ConversationFile};
pub use journal::{Journal, OpenError as JournalOpenError};
pub use lock::{DataDirLock, Holder, LockError, Role};
pub use state_file::{InboxLimits, STATE_FILE, StateFile};
pub use token_files::{RevocationFile, TokenFileError, load_or_create_secret};
pub use users_file::{LoadError, UsersFile};
