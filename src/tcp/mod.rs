//! The network edge: framing, message types, the listener, one thread per
//! connection, outbound queues and TLS.

pub mod connection;
pub mod frame;
mod handlers;
pub mod message;
pub mod outbox;
pub(crate) mod poll;
#[cfg(test)]
mod properties;
pub mod server;
pub mod tls;
pub mod transport;

pub use message::{MessageType, ReqId, Request, ServerMessage};
pub use server::{Limits, Server, ServerHandle, ServerStats, SessionSettings, Settings, Storage};
pub use tls::{TlsError, TlsIdentity, build_acceptor};
