//! Integration tests: a real server on port 0, real sockets, real TLS.
//! One binary with modules keeps link time down.

mod support;

mod accounts;
mod admin_channel;
mod bad_input;
mod bench;
mod binary;
mod calls;
mod cli;
mod faults;
mod guests;
mod ice;
mod journal;
mod limits;
mod operations;
mod persistence;
mod protocol;
mod resume;
mod rooms;
mod sessions;
mod tls;
