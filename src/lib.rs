//! Switchboard: a thread-per-connection signaling daemon, wire-compatible with
//! RoomRTC protocol v1.0.
//!
//! Native clients hold one TCP or TLS connection to register, log in, see
//! presence, ring each other and relay WebRTC SDP and ICE. Media never passes
//! through the server.
//!
//! # Layout
//!
//! - [`domain`]: users, presence and the call state machine; no I/O, no locks.
//! - [`application`]: use cases (auth, presence, calls, relay) over ports.
//! - [`infrastructure`]: the flat-file user store (users.txt).
//! - [`tcp`]: framing, message types, the listener, one thread per connection,
//!   bounded outbound queues, TLS.
//! - [`config`]: server_config.json, flags and environment, validated at start.
//! - [`daemon`]: wires them together.
//! - [`bench`]: the load generator behind `switchboard-bench` (not used by the daemon).
//! - [`client`]: the other end of the wire, for `switchboard-cli` and scripts:
//!   connections over TCP or TLS, one-shot requests, JSON-line sessions.
//!
//! Dependencies point inward: tcp -> application -> domain; infrastructure
//! implements the application's ports. The client reuses the tcp codec, message
//! types and transport, and nothing else of the daemon.

pub mod admin;
pub mod application;
pub mod bench;
pub mod client;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod domain;
pub mod infrastructure;
pub mod metrics;
pub mod sync;
pub mod systemd;
pub mod tcp;
