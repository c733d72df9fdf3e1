//! One client connection: TCP or TLS, frames in and out, every wait bounded.
//!
//! Once connected the socket is non-blocking and every wait is a poll(2) with a
//! deadline. That keeps the stream owned by one thread (an OpenSSL stream must
//! not be shared) while that thread still waits on a second descriptor, such as
//! the wake-up of a stdin reader in session mode.

use std::borrow::Cow;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use native_tls::{Certificate, HandshakeError, TlsConnector, TlsStream};
use rustix::event::{PollFd, PollFlags};

use super::ClientError;
use crate::tcp::frame::{self, Decoded};
use crate::tcp::message::{MessageType, Request, ServerMessage};
use crate::tcp::poll::poll_until;
use crate::tcp::transport::{Socket, Transport};

/// The largest frame accepted from a server. Generous: the daemon's own limit
/// is a configuration value, and a client should not be stricter than needed.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Bytes read per read(2) call.
const READ_CHUNK: usize = 16 * 1024;

/// Which certificates a TLS connection trusts. The hostname is always verified,
/// except with [`TlsTrust::Insecure`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsTrust {
    /// The TLS library's built-in roots.
    System,
    /// The built-in roots and every PEM certificate in this file.
    CaFile(PathBuf),
    /// Any certificate, any hostname: only for tests against self-signed servers.
    Insecure,
}

/// Where to connect and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// A hostname or an IP address (IPv6 without brackets); TLS verifies it.
    pub host: String,
    pub port: u16,
    /// `None`: plain TCP.
    pub tls: Option<TlsTrust>,
}

impl ConnectOptions {
    /// `host:port` for messages, with brackets around an IPv6 address.
    pub fn display_addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Splits `HOST:PORT` (`[IPV6]:PORT` for IPv6) into host and port.
///
/// # Errors
/// A usage error naming what is wrong with `addr`.
pub fn split_addr(addr: &str) -> Result<(String, u16), ClientError> {
    let bad = |why: &str| ClientError::Usage(format!("--addr {addr:?}: {why}"));
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| bad("expected HOST:PORT"))?;
    let host = match host.strip_prefix('[') {
        Some(inner) => inner
            .strip_suffix(']')
            .ok_or_else(|| bad("unbalanced '['"))?,
        None if host.contains(':') => return Err(bad("write an IPv6 address as [ADDR]:PORT")),
        None => host,
    };
    if host.is_empty() {
        return Err(bad("the host is empty"));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| bad("the port is not a number from 0 to 65535"))?;
    Ok((host.to_string(), port))
}

/// One received frame, undecoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn message_type(&self) -> Option<MessageType> {
        MessageType::from_code(self.kind)
    }

    pub fn is(&self, kind: MessageType) -> bool {
        self.kind == kind.code()
    }

    /// The protocol name, or `0xNN` for a code this build does not know.
    pub fn name(&self) -> Cow<'static, str> {
        match self.message_type() {
            Some(kind) => Cow::Borrowed(kind.name()),
            None => Cow::Owned(format!("0x{:02X}", self.kind)),
        }
    }

    /// Decodes the frame as a server message.
    ///
    /// # Errors
    /// [`ClientError::Protocol`] for an unknown type or a payload that does not fit.
    pub fn decode(&self) -> Result<ServerMessage, ClientError> {
        ServerMessage::decode(self.kind, &self.payload)
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }
}

/// What [`Connection::next_event`] saw first.
#[derive(Debug)]
pub enum Event {
    Frame(Frame),
    /// The extra descriptor became readable.
    Woken,
    /// The deadline passed.
    TimedOut,
    /// The server closed the connection; every frame before that was returned.
    Closed,
}

/// How the input side ended.
#[derive(Debug, Clone)]
enum InputEnd {
    Eof,
    Failed(String),
}

/// A connection to a Switchboard server.
pub struct Connection {
    transport: Transport,
    addr: String,
    /// TLS was asked for (and the handshake succeeded).
    tls: bool,
    /// A whole frame has come from the server: it speaks this protocol.
    framed: bool,
    inbuf: Vec<u8>,
    /// Set once reading hit EOF or an error; frames already buffered still count.
    input_end: Option<InputEnd>,
}

/// Added to a plain connection's failure when the server closed it (or sent a
/// TLS record) before its first frame: a TLS server does exactly that.
pub const PLAIN_TO_TLS_HINT: &str = "the server may expect TLS: try --tls or --ca";

/// Added to a failed handshake whose cause says the other end is not TLS.
pub const NOT_TLS_HINT: &str =
    "the server on that port does not speak TLS (drop --tls/--ca) or is not a Switchboard server";

/// `message` followed by a `hint:` line.
fn with_hint(message: impl std::fmt::Display, hint: &str) -> String {
    format!("{message}\nhint: {hint}")
}

/// What the user can do about a failed handshake, read from OpenSSL's message
/// (the verification result in parentheses, or the record layer's complaint).
fn handshake_hint(message: &str, host: &str, trust: Option<&TlsTrust>) -> Option<String> {
    let m = message.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| m.contains(n));
    if has(&[
        "hostname mismatch",
        "ip address mismatch",
        "email address mismatch",
    ]) {
        return Some(format!(
            "the certificate is not valid for --host {host}; use the name the certificate was \
             issued for (or --insecure for a test server)"
        ));
    }
    if has(&["certificate has expired", "certificate is not yet valid"]) {
        return Some(
            "the server's certificate is outside its validity period: renew it, or check \
             this machine's clock"
                .into(),
        );
    }
    if has(&[
        "self-signed certificate",
        "self signed certificate",
        "unable to get local issuer certificate",
        "unable to get issuer certificate",
        "unable to verify the first certificate",
        "certificate verify failed",
    ]) {
        return Some(match trust {
            Some(TlsTrust::CaFile(path)) => format!(
                "the server's certificate is not signed by a certificate in --ca {}: pass the \
                 CA that issued it (or the server's own self-signed certificate) with --ca",
                path.display()
            ),
            _ => "the server's certificate is not signed by an authority this system trusts: \
                  pass the CA that issued it (or the server's own self-signed certificate) \
                  with --ca FILE (or --insecure for a test server)"
                .into(),
        });
    }
    if has(&[
        "wrong version number",
        "packet length too long",
        "record layer failure",
        "connection reset",
        "unexpected eof",
        "broken pipe",
    ]) {
        return Some(NOT_TLS_HINT.into());
    }
    None
}

/// The first bytes of a TLS record: alert (0x15) or handshake (0x16), version 3.x.
fn looks_like_tls_record(bytes: &[u8]) -> bool {
    matches!(bytes, [0x15 | 0x16, 0x03, ..])
}

fn timeout(what: String) -> ClientError {
    ClientError::Timeout(what)
}

/// The time left before `deadline`, or `None` if it has passed.
fn left(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

fn connector(trust: &TlsTrust) -> Result<TlsConnector, ClientError> {
    let mut builder = TlsConnector::builder();
    match trust {
        TlsTrust::System => {}
        TlsTrust::CaFile(path) => {
            let pem = fs::read(path).map_err(|e| {
                ClientError::Usage(format!("cannot read CA file {}: {e}", path.display()))
            })?;
            let certs = Certificate::stack_from_pem(&pem).map_err(|e| {
                ClientError::Usage(format!(
                    "CA file {} is not PEM certificates: {e}",
                    path.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(ClientError::Usage(format!(
                    "CA file {} holds no PEM certificate",
                    path.display()
                )));
            }
            for cert in certs {
                builder.add_root_certificate(cert);
            }
        }
        TlsTrust::Insecure => {
            builder
                .danger_accept_invalid_certs(true)
                .danger_accept_invalid_hostnames(true);
        }
    }
    builder
        .build()
        .map_err(|e| ClientError::Usage(format!("TLS setup failed: {e}")))
}

impl Connection {
    /// Connects (and for TLS, completes the handshake) before `deadline`.
    ///
    /// # Errors
    /// [`ClientError::Usage`] for an unusable CA file, [`ClientError::Connect`]
    /// or [`ClientError::Handshake`] when the server cannot be reached or
    /// verified, [`ClientError::Timeout`] when `deadline` passes first.
    pub fn connect(options: &ConnectOptions, deadline: Instant) -> Result<Connection, ClientError> {
        // The TLS set-up first: a bad CA file is a usage error, whatever the network does.
        let tls = options.tls.as_ref().map(connector).transpose()?;
        let addr = options.display_addr();
        let tcp = connect_tcp(options, &addr, deadline)?;
        let lost = |e: io::Error| ClientError::Connect {
            addr: addr.clone(),
            source: e,
        };
        tcp.set_nodelay(true).map_err(lost)?;
        tcp.set_nonblocking(true).map_err(lost)?;
        let transport = match tls {
            None => Transport::Plain(std::sync::Arc::new(tcp)),
            Some(tls) => Transport::tls(
                handshake(&tls, &options.host, tcp, &addr, deadline).map_err(|e| match e {
                    ClientError::Handshake { addr, message } => {
                        let message =
                            match handshake_hint(&message, &options.host, options.tls.as_ref()) {
                                Some(hint) => with_hint(message, &hint),
                                None => message,
                            };
                        ClientError::Handshake { addr, message }
                    }
                    other => other,
                })?,
            ),
        };
        Ok(Connection {
            tls: matches!(transport, Transport::Tls(_)),
            transport,
            addr,
            framed: false,
            inbuf: Vec::new(),
            input_end: None,
        })
    }

    /// `host:port` as connected to, for messages.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The connection is lost; over plain TCP before the server's first frame,
    /// with the hint that the server may speak TLS.
    fn lost(&self, why: String) -> ClientError {
        if self.tls || self.framed {
            ClientError::ConnectionLost(why)
        } else {
            ClientError::ConnectionLost(with_hint(why, PLAIN_TO_TLS_HINT))
        }
    }

    /// Sends a request.
    ///
    /// # Errors
    /// As [`Connection::send_frame`].
    pub fn send(&mut self, request: &Request, deadline: Instant) -> Result<(), ClientError> {
        self.send_frame(&request.to_frame(), deadline)
    }

    /// Writes a whole encoded frame. While the socket does not take it, input is
    /// read and buffered, so a server that is itself waiting for us to read
    /// cannot deadlock the two.
    ///
    /// # Errors
    /// [`ClientError::ConnectionLost`] if writing fails, [`ClientError::Timeout`]
    /// if `deadline` passes first.
    pub fn send_frame(&mut self, bytes: &[u8], deadline: Instant) -> Result<(), ClientError> {
        let mut pos = 0;
        while pos < bytes.len() {
            match self.transport.write(&bytes[pos..]) {
                Ok(0) => return Err(self.lost("the connection takes no more data".into())),
                Ok(n) => pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait_writable(deadline)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.lost(format!("write failed: {e}"))),
            }
        }
        loop {
            match self.transport.flush() {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait_writable(deadline)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.lost(format!("write failed: {e}"))),
            }
        }
    }

    fn wait_writable(&mut self, deadline: Instant) -> Result<(), ClientError> {
        let mut events = PollFlags::OUT;
        if self.input_end.is_none() {
            events |= PollFlags::IN;
        }
        let ready = {
            let mut fds = [PollFd::new(&self.transport, events)];
            let n = poll_until(&mut fds, Some(deadline)).map_err(poll_failed)?;
            if n == 0 {
                return Err(timeout(format!("sending to {}", self.addr)));
            }
            fds[0].revents()
        };
        if self.input_end.is_none() && ready.intersects(PollFlags::IN | PollFlags::HUP) {
            self.fill();
        }
        Ok(())
    }

    /// The next frame, waiting until `deadline`.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] naming `waiting_for`, [`ClientError::ConnectionLost`]
    /// if the server closes first, [`ClientError::Protocol`] for a bad frame.
    pub fn recv(&mut self, deadline: Instant, waiting_for: &str) -> Result<Frame, ClientError> {
        loop {
            match self.next_event(Some(deadline), None)? {
                Event::Frame(frame) => return Ok(frame),
                Event::TimedOut => return Err(timeout(format!("waiting for {waiting_for}"))),
                Event::Closed => {
                    return Err(self.lost(format!(
                        "the server closed the connection before {waiting_for}"
                    )));
                }
                Event::Woken => {}
            }
        }
    }

    /// Waits for a frame, for `wake` to become readable, or for `deadline`
    /// (`None`: no deadline), whichever comes first. Buffered frames come first.
    ///
    /// # Errors
    /// [`ClientError::ConnectionLost`] when reading failed (not on a clean
    /// close, which is [`Event::Closed`]), [`ClientError::Protocol`] for a frame
    /// that cannot be decoded.
    pub fn next_event(
        &mut self,
        deadline: Option<Instant>,
        wake: Option<BorrowedFd<'_>>,
    ) -> Result<Event, ClientError> {
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(Event::Frame(frame));
            }
            match &self.input_end {
                Some(InputEnd::Eof) => return Ok(Event::Closed),
                Some(InputEnd::Failed(why)) => {
                    return Err(self.lost(why.clone()));
                }
                None => {}
            }
            // Decrypted bytes inside TLS are invisible to poll(2).
            if self.transport.has_buffered_input() {
                self.fill();
                continue;
            }
            let (socket, woken) = {
                let mut fds = vec![PollFd::new(&self.transport, PollFlags::IN)];
                if let Some(wake) = wake {
                    fds.push(PollFd::from_borrowed_fd(wake, PollFlags::IN));
                }
                if poll_until(&mut fds, deadline).map_err(poll_failed)? == 0 {
                    return Ok(Event::TimedOut);
                }
                (
                    fds[0].revents(),
                    fds.get(1).is_some_and(|f| !f.revents().is_empty()),
                )
            };
            if woken {
                return Ok(Event::Woken);
            }
            if !socket.is_empty() {
                self.fill();
            }
        }
    }

    /// Reads what the socket has; EOF and errors are recorded, not returned, so
    /// that frames which arrived before them are still handed out.
    fn fill(&mut self) {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match self.transport.read(&mut chunk) {
                Ok(0) => {
                    self.input_end = Some(InputEnd::Eof);
                    return;
                }
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.input_end = Some(InputEnd::Eof);
                    return;
                }
                Err(e) => {
                    self.input_end = Some(InputEnd::Failed(format!("read failed: {e}")));
                    return;
                }
            }
        }
    }

    fn take_frame(&mut self) -> Result<Option<Frame>, ClientError> {
        let (frame, used) = match frame::decode(&self.inbuf, MAX_FRAME) {
            Ok(None) => {
                if self.input_end.is_some() && !self.inbuf.is_empty() {
                    // A partial frame at EOF never completes.
                    self.inbuf.clear();
                }
                return Ok(None);
            }
            Ok(Some((Decoded::Frame { kind, payload }, used))) => (
                Frame {
                    kind,
                    payload: payload.to_vec(),
                },
                used,
            ),
            Ok(Some((Decoded::Empty, _))) => {
                return Err(ClientError::Protocol(
                    "the server sent a frame of length 0".into(),
                ));
            }
            Err(_) if !self.tls && !self.framed && looks_like_tls_record(&self.inbuf) => {
                // A TLS server answering a plain client (an alert, or its own hello).
                return Err(self.lost(format!(
                    "the server answered with a TLS record ({:02x?}), not a Switchboard frame",
                    &self.inbuf[..self.inbuf.len().min(5)]
                )));
            }
            Err(too_large) => {
                return Err(ClientError::Protocol(format!(
                    "the server sent a frame too large to read: {too_large}"
                )));
            }
        };
        self.inbuf.drain(..used);
        self.framed = true;
        Ok(Some(frame))
    }

    /// Ends the connection: TLS close_notify where possible, then both directions.
    pub fn close(mut self) {
        self.transport.close(std::time::Duration::ZERO);
    }
}

fn poll_failed(e: io::Error) -> ClientError {
    ClientError::ConnectionLost(format!("poll failed: {e}"))
}

fn connect_tcp(
    options: &ConnectOptions,
    addr: &str,
    deadline: Instant,
) -> Result<TcpStream, ClientError> {
    let failed = |source: io::Error| ClientError::Connect {
        addr: addr.to_string(),
        source,
    };
    let candidates: Vec<SocketAddr> = (options.host.as_str(), options.port)
        .to_socket_addrs()
        .map_err(failed)?
        .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
    for candidate in candidates {
        let Some(left) = left(deadline) else {
            return Err(timeout(format!("connecting to {addr}")));
        };
        match TcpStream::connect_timeout(&candidate, left) {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = e,
        }
    }
    if last.kind() == io::ErrorKind::TimedOut {
        return Err(timeout(format!("connecting to {addr}")));
    }
    Err(failed(last))
}

/// A client handshake on the non-blocking socket, waiting in poll(2) until `deadline`.
fn handshake(
    connector: &TlsConnector,
    host: &str,
    tcp: TcpStream,
    addr: &str,
    deadline: Instant,
) -> Result<TlsStream<Socket>, ClientError> {
    let failed = |message: String| ClientError::Handshake {
        addr: addr.to_string(),
        message,
    };
    let mut attempt = connector.connect(host, Socket::new(tcp));
    loop {
        match attempt {
            Ok(tls) => return Ok(tls),
            Err(HandshakeError::Failure(e)) => return Err(failed(e.to_string())),
            Err(HandshakeError::WouldBlock(mid)) => {
                // The client's flights are small: the socket always takes them,
                // so the handshake only ever waits for the server.
                let ready = {
                    let mut fds = [PollFd::new(mid.get_ref(), PollFlags::IN)];
                    poll_until(&mut fds, Some(deadline)).map_err(|e| failed(e.to_string()))?
                };
                if ready == 0 {
                    return Err(timeout(format!("during the TLS handshake with {addr}")));
                }
                attempt = mid.handshake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HOST:PORT and [IPV6]:PORT split; ambiguous or broken forms are usage errors.
    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(
            split_addr("127.0.0.1:8080").unwrap(),
            ("127.0.0.1".into(), 8080)
        );
        assert_eq!(split_addr("localhost:1").unwrap(), ("localhost".into(), 1));
        assert_eq!(split_addr("[::1]:443").unwrap(), ("::1".into(), 443));
        for bad in [
            "localhost",
            "::1:443",
            "[::1:443",
            ":80",
            "host:http",
            "host:70000",
        ] {
            let err = split_addr(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}: {err}");
        }
    }

    /// IPv6 hosts are shown in brackets so the port stays readable.
    #[test]
    fn display_addresses_bracket_ipv6() {
        let options = |host: &str| ConnectOptions {
            host: host.into(),
            port: 7,
            tls: None,
        };
        assert_eq!(options("::1").display_addr(), "[::1]:7");
        assert_eq!(options("example.org").display_addr(), "example.org:7");
    }

    /// Frames name their type, or their code in hex when the type is unknown.
    #[test]
    fn frames_name_their_type_or_code() {
        let frame = |kind| Frame {
            kind,
            payload: b"{}".to_vec(),
        };
        assert_eq!(frame(0x09).name(), "CALL_NOTIFICATION");
        assert_eq!(frame(0x90).name(), "0x90");
        assert!(frame(0x09).is(MessageType::CallNotification));
    }

    /// OpenSSL's words for a failed handshake map to the hint for the user's mistake.
    #[test]
    fn handshake_failures_get_the_hint_for_their_cause() {
        let verify = |result: &str| {
            format!(
                "error:0A000086:SSL routines:tls_post_process_server_certificate:certificate \
                 verify failed:ssl/statem/statem_clnt.c:2125: ({result})"
            )
        };
        let ca = TlsTrust::CaFile(PathBuf::from("ca.pem"));
        let hint = |message: &str, trust: &TlsTrust| {
            handshake_hint(message, "127.0.0.2", Some(trust)).unwrap_or_default()
        };
        for result in ["IP address mismatch", "hostname mismatch"] {
            let h = hint(&verify(result), &ca);
            assert!(
                h.contains("not valid for --host 127.0.0.2") && h.contains("--insecure"),
                "{h}"
            );
        }
        let h = hint(&verify("self-signed certificate"), &TlsTrust::System);
        assert!(h.contains("--ca FILE"), "{h}");
        let h = hint(&verify("unable to get local issuer certificate"), &ca);
        assert!(
            h.contains("not signed by a certificate in --ca ca.pem"),
            "{h}"
        );
        assert!(hint(&verify("certificate has expired"), &ca).contains("validity"));
        for not_tls in [
            "error:0A00010B:SSL routines:tls_validate_record_header:wrong version number:ssl/record/methods/tlsany_meth.c:77:",
            "the operation failed due to an I/O error: Connection reset by peer (os error 104)",
            "error:0A000126:SSL routines::unexpected eof while reading",
        ] {
            assert_eq!(hint(not_tls, &TlsTrust::System), NOT_TLS_HINT, "{not_tls}");
        }
        assert_eq!(handshake_hint("something else", "h", None), None);
    }

    /// A plain connection whose server answers with a TLS alert (and closes) is a lost
    /// connection (exit 3) with the hint to try TLS; the first bytes are shown.
    #[test]
    fn a_tls_record_on_a_plain_connection_hints_at_tls() {
        use std::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // A TLS 1.2 fatal alert, protocol_version, as a TLS server sends to a stranger.
            s.write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46])
                .unwrap();
        });
        let options = ConnectOptions {
            host: "127.0.0.1".into(),
            port,
            tls: None,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut conn = Connection::connect(&options, deadline).unwrap();
        let err = conn.recv(deadline, "HEARTBEAT").unwrap_err();
        server.join().unwrap();
        assert_eq!(err.exit_code(), 3, "{err}");
        let message = err.to_string();
        assert!(
            message.contains("TLS record") && message.contains(PLAIN_TO_TLS_HINT),
            "{message}"
        );
        assert!(looks_like_tls_record(&[0x16, 0x03, 0x01]));
        assert!(!looks_like_tls_record(&[0x00, 0x00, 0x00, 0x10, 0x11]));
    }

    /// A CA file that is missing or holds no certificate is a usage error, before any connect.
    #[test]
    fn an_unusable_ca_file_is_a_usage_error() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        fs::write(&empty, "not a certificate\n").unwrap();
        for path in [dir.path().join("missing.pem"), empty] {
            let options = ConnectOptions {
                host: "127.0.0.1".into(),
                // Port 0 cannot be connected to: only the CA check can answer first.
                port: 0,
                tls: Some(TlsTrust::CaFile(path.clone())),
            };
            let err = Connection::connect(&options, Instant::now() + Duration::from_secs(5))
                .err()
                .unwrap();
            assert_eq!(err.exit_code(), 2, "{}: {err}", path.display());
        }
    }
}
