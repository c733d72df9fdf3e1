//! Use cases over ports: authentication, presence, calls and the signaling relay.
//!
//! Nothing here sees a socket or a file. Storage arrives as a [`UserStore`],
//! delivery to other connections as a [`Notifier`]; the tcp and infrastructure
//! layers implement them.

pub mod auth;
pub mod error;
pub mod hub;
pub mod ports;

pub use auth::{Authenticator, PasswordHasher};
pub use error::AppError;
pub use hub::{Hub, HubStats};
pub use ports::{
    ConnId, Notice, Notifier, Party, SessionEnd, Signal, StoreError, UserRecord, UserStore,
};
