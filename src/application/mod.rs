//! Use cases over ports: authentication, presence, calls and the signaling relay.
//!
//! Nothing here sees a socket or a file. Storage arrives as a [`UserStore`],
//! delivery to other users through [`Delivery`] (addressed by user, never by
//! connection); the tcp and infrastructure layers implement them.

pub mod accounts;
pub mod admin;
pub mod auth;
pub mod error;
pub mod hub;
pub mod ice;
pub mod ports;
pub mod store;
pub mod tokens;

pub use accounts::{Accounts, GuestAdmitted, ResumeError};
pub use admin::UserAdmin;
pub use auth::{Authenticator, PasswordHasher};
pub use error::AppError;
pub use hub::{Hub, HubStats};
pub use ice::{IceServer, IceServers, IceSettings};
pub use ports::{
    Broadcast, ConnId, Delivery, Notice, Party, RevocationStore, SessionEnd, Signal, StoreError,
    UserListing, UserRecord, UserStore,
};
pub use tokens::{Issued, SessionTokens};
