//! A blocking client over the project's own codec, and the ICE probe text.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::tcp::frame::{self, Decoded};
use crate::tcp::message::{Credentials, MessageType, Request, ServerMessage};

/// Largest frame the bench accepts (a 2,000-user USER_LIST_RESPONSE fits easily).
pub const MAX_FRAME: usize = 16 << 20;

/// One frame as read: its type code and payload.
pub type RawFrame = (u8, Vec<u8>);

/// A blocking connection that reads whole frames.
pub struct Client {
    stream: Stream,
    inbuf: Vec<u8>,
}

/// Plain TCP or TLS over it, blocking (reads time out).
enum Stream {
    Plain(TcpStream),
    Tls(Box<native_tls::TlsStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

fn invalid(why: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

impl Client {
    /// Connects with TCP_NODELAY, as the daemon's own sockets are.
    ///
    /// # Errors
    /// If the connection fails.
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Client::from_stream(stream))
    }

    /// [`Client::connect`], then a TLS handshake with `tls` (for
    /// `localhost`) if given.
    ///
    /// # Errors
    /// If the connection or the handshake fails.
    pub fn connect_with(
        addr: SocketAddr,
        tls: Option<&native_tls::TlsConnector>,
    ) -> io::Result<Client> {
        let Some(connector) = tls else {
            return Client::connect(addr);
        };
        let tcp = TcpStream::connect(addr)?;
        tcp.set_nodelay(true)?;
        let stream = connector
            .connect("localhost", tcp)
            .map_err(|e| io::Error::other(format!("TLS handshake with {addr}: {e}")))?;
        Ok(Client {
            stream: Stream::Tls(Box::new(stream)),
            inbuf: Vec::with_capacity(4096),
        })
    }

    pub fn from_stream(stream: TcpStream) -> Client {
        Client {
            stream: Stream::Plain(stream),
            inbuf: Vec::with_capacity(4096),
        }
    }

    /// A second handle on the socket, for a thread that only writes.
    ///
    /// # Errors
    /// As [`TcpStream::try_clone`]; a TLS connection has none (its state
    /// cannot be shared by two threads).
    pub fn writer(&self) -> io::Result<TcpStream> {
        match &self.stream {
            Stream::Plain(s) => s.try_clone(),
            Stream::Tls(_) => Err(io::Error::other(
                "a TLS connection cannot be written from a second thread",
            )),
        }
    }

    /// # Errors
    /// As [`TcpStream::set_read_timeout`].
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.tcp().set_read_timeout(timeout)
    }

    /// Writes an already-encoded frame in one write.
    ///
    /// # Errors
    /// If the write fails.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// # Errors
    /// If the write fails.
    pub fn send(&mut self, request: &Request) -> io::Result<()> {
        self.send_raw(&request.to_frame())
    }

    /// The next frame; `Ok(None)` if the read timeout passed first.
    ///
    /// # Errors
    /// End of stream, a read error or an oversized frame.
    pub fn recv(&mut self) -> io::Result<Option<RawFrame>> {
        loop {
            let decoded =
                frame::decode(&self.inbuf, MAX_FRAME)
                    .map_err(invalid)?
                    .map(|(d, used)| {
                        let owned = match d {
                            Decoded::Frame { kind, payload } => Some((kind, payload.to_vec())),
                            Decoded::Empty => None,
                        };
                        (owned, used)
                    });
            if let Some((owned, used)) = decoded {
                self.inbuf.drain(..used);
                match owned {
                    Some(f) => return Ok(Some(f)),
                    None => continue,
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads until a frame of type `want` arrives, skipping presence pushes
    /// (USER_STATE_UPDATE). An ERROR or anything else unexpected is an error.
    ///
    /// # Errors
    /// Timeout (`limit` read timeouts in a row), end of stream, or an unexpected frame.
    pub fn expect(&mut self, want: MessageType, limit: u32) -> io::Result<ServerMessage> {
        let mut waits = 0;
        loop {
            let Some((kind, payload)) = self.recv()? else {
                waits += 1;
                if waits >= limit {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no {} in time", want.name()),
                    ));
                }
                continue;
            };
            if kind == MessageType::UserStateUpdate.code() {
                continue;
            }
            let message = ServerMessage::decode(kind, &payload).map_err(invalid)?;
            if kind == want.code() {
                return Ok(message);
            }
            return Err(invalid(format!(
                "expected {}, got {message:?}",
                want.name()
            )));
        }
    }

    /// Logs in and returns the user id.
    ///
    /// # Errors
    /// If the login fails or is refused.
    pub fn login(&mut self, username: &str, secret: &str) -> io::Result<String> {
        self.send(&Request::Login(Credentials {
            username: username.into(),
            password_hash: secret.into(),
            req_id: None,
        }))?;
        match self.expect(MessageType::LoginResponse, 60)? {
            ServerMessage::LoginResponse(r) if r.success => r
                .user_id
                .ok_or_else(|| invalid("LOGIN_RESPONSE without user_id")),
            other => Err(invalid(format!("login of {username} failed: {other:?}"))),
        }
    }
}

/// The candidate text of a probe: sequence number and send time (nanoseconds
/// since the run's epoch), padded with `x` to `size` bytes when shorter.
pub fn probe_text(seq: u64, sent_ns: u64, size: usize) -> String {
    let mut text = format!("candidate:bench seq={seq} t={sent_ns} pad=");
    if text.len() < size {
        text.extend(std::iter::repeat_n('x', size - text.len()));
    }
    text
}

/// Reads `(seq, sent_ns)` back from a probe's candidate text.
pub fn parse_probe(text: &str) -> Option<(u64, u64)> {
    let rest = text.strip_prefix("candidate:bench seq=")?;
    let (seq, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix("t=")?;
    let (t, _) = rest.split_once(' ')?;
    Some((seq.parse().ok()?, t.parse().ok()?))
}

/// The value of a string field in compact JSON, found the way the v1 desktop
/// client finds it (search for `"key":"`, read to the next `"`). Used on the
/// hot path of the presence storm, where a full parse per frame would make the
/// load generator, not the daemon, the bottleneck.
pub fn scan_str<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    scan_span(json, key).and_then(|(start, end)| json.get(start..end))
}

/// The byte range of the string value of `key` (see [`scan_str`]).
fn scan_span(json: &str, key: &str) -> Option<(usize, usize)> {
    let at = find_key(json.as_bytes(), key.as_bytes())?;
    let start = at + key.len() + 4;
    let len = json.get(start..)?.find('"')?;
    Some((start, start + len))
}

/// Where `"key":"` starts in `json`. The load generator scans millions of
/// small payloads: no allocation, no searcher set-up per call.
fn find_key(json: &[u8], key: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = json.get(from..)?.iter().position(|b| *b == b'"') {
        let at = from + i;
        let rest = json.get(at + 1..)?;
        if rest.starts_with(key) && rest.get(key.len()..key.len() + 3) == Some(b"\":\"") {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// Calls `each(user_id, state)` for every entry of a USER_LIST_RESPONSE payload
/// as the server writes it (flat entries, `user_id` before `state`).
pub fn scan_user_list(json: &str, mut each: impl FnMut(&str, &str)) {
    let mut rest = json;
    while let Some((start, end)) = scan_span(rest, "user_id") {
        let id = &rest[start..end];
        rest = &rest[end..];
        let Some((start, end)) = scan_span(rest, "state") else {
            return;
        };
        each(id, &rest[start..end]);
        rest = &rest[end..];
    }
}

/// Writes what `out` holds to a non-blocking `stream` until it would block;
/// what was written leaves `out`.
///
/// # Errors
/// The socket's, or `WriteZero`.
pub(super) fn write_pending(stream: &mut TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    while !out.is_empty() {
        match stream.write(out) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::message::IceCandidate;

    /// A probe's numbers survive padding and a trip through an encoded ICE_CANDIDATE.
    #[test]
    fn a_probe_round_trips_through_an_ice_candidate() {
        let text = probe_text(42, 123_456_789, 200);
        assert_eq!(text.len(), 200);
        let frame = Request::IceCandidate(IceCandidate {
            call_id: Some("7".into()),
            room_id: None,
            from_user_id: String::new(),
            to_user_id: String::new(),
            candidate: text,
            sdp_mid: Some("0".into()),
            sdp_mline_index: 0,
            req_id: None,
        })
        .to_frame();
        let (kind, payload) = match frame::decode(&frame, MAX_FRAME) {
            Ok(Some((Decoded::Frame { kind, payload }, _))) => (kind, payload),
            other => panic!("{other:?}"),
        };
        let Ok(ServerMessage::IceCandidate(ice)) = ServerMessage::decode(kind, payload) else {
            panic!("not an ICE candidate");
        };
        assert_eq!(parse_probe(&ice.candidate), Some((42, 123_456_789)));
    }

    /// A probe shorter than its header is not truncated, and still parses.
    #[test]
    fn a_small_size_keeps_the_whole_header() {
        let text = probe_text(1, 2, 4);
        assert_eq!(parse_probe(&text), Some((1, 2)));
        assert_eq!(parse_probe("candidate:1 1 udp"), None);
    }

    /// The field scan reads compact JSON as the daemon writes it.
    #[test]
    fn scanning_finds_string_fields_in_compact_json() {
        let json = r#"{"user_id":"12","username":"bench3","state":"Available"}"#;
        assert_eq!(scan_str(json, "user_id"), Some("12"));
        assert_eq!(scan_str(json, "state"), Some("Available"));
        assert_eq!(scan_str(json, "call_id"), None);
        let list = r#"{"users":[{"user_id":"1","username":"a","state":"Available"},{"user_id":"22","username":"state","state":"Busy"}]}"#;
        let mut seen = Vec::new();
        scan_user_list(list, |id, state| {
            seen.push((id.to_string(), state.to_string()))
        });
        assert_eq!(
            seen,
            vec![
                ("1".into(), "Available".into()),
                ("22".into(), "Busy".into())
            ]
        );
    }
}
