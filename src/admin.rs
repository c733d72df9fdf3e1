//! The optional admin listener: `GET /healthz` and `GET /metrics` over HTTP.
//!
//! It runs on its own thread and only reads counters; it never touches a
//! client connection.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use log::{debug, info, warn};
use tiny_http::{Header, Method, Response, Server};

use crate::tcp::server::Observer;

/// A running admin listener; stops when dropped.
pub struct AdminHandle {
    server: Arc<Server>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl AdminHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds `addr` and serves health and metrics for `observer`.
///
/// # Errors
/// If the address cannot be bound or the thread cannot start.
pub fn start(addr: SocketAddr, observer: Observer) -> io::Result<AdminHandle> {
    start_on(TcpListener::bind(addr)?, observer)
}

/// Serves health and metrics for `observer` on a listener already bound (the
/// daemon binds every listener before it writes to the data directory).
///
/// # Errors
/// If the thread cannot start.
pub fn start_on(listener: TcpListener, observer: Observer) -> io::Result<AdminHandle> {
    let server = Arc::new(Server::from_listener(listener, None).map_err(io::Error::other)?);
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| io::Error::other("admin listener has no IP address"))?;
    let serving = server.clone();
    let thread = thread::Builder::new()
        .name("admin".into())
        .spawn(move || serve(&serving, &observer))?;
    info!("admin listening on {addr}");
    Ok(AdminHandle {
        server,
        addr,
        thread: Some(thread),
    })
}

/// The path of a request target, without its query string or fragment.
fn route_path(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

fn serve(server: &Server, observer: &Observer) {
    for request in server.incoming_requests() {
        // Probes and scrapers add query strings (`/healthz?probe=1`); the path alone routes.
        let path = route_path(request.url());
        let (status, body, content_type) = match (request.method(), path) {
            (Method::Get | Method::Head, "/healthz") => {
                if observer.is_draining() {
                    (503, "draining\n".to_string(), "text/plain; charset=utf-8")
                } else {
                    (200, "ok\n".to_string(), "text/plain; charset=utf-8")
                }
            }
            (Method::Get | Method::Head, "/metrics") => (
                200,
                observer.render_metrics(),
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            (Method::Get | Method::Head, _) => {
                (404, "not found\n".into(), "text/plain; charset=utf-8")
            }
            _ => (
                405,
                "method not allowed\n".into(),
                "text/plain; charset=utf-8",
            ),
        };
        debug!("admin {} {} -> {}", request.method(), request.url(), status);
        let mut response = Response::from_string(body).with_status_code(status);
        if let Ok(header) = Header::from_bytes("Content-Type", content_type) {
            response = response.with_header(header);
        }
        if let Err(err) = request.respond(response) {
            warn!("admin response failed: {err}");
        }
    }
}
