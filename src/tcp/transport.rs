//! The byte stream under a connection: plain TCP or TLS over it, always non-blocking.
//!
//! Both are shared between the connection's own thread (the owner: it reads,
//! writes its answers and queued frames, polls and closes) and the threads
//! that relay SDP/ICE to it, which may write a relay straight to it while the
//! owner is idle ([`Sink`], used by `Outbox::push_through`).
//!
//! A plain socket needs no lock of its own: write(2) on a socket is one
//! system call, and the outbox's queue lock keeps two writers apart. A TLS
//! stream does: OpenSSL's state (record sequence numbers, the cipher state,
//! buffered records) must never be touched by two threads at once. So the
//! TLS stream lives in a [`SharedTls`], behind a mutex (`SharedTls.stream`)
//! that every use of it takes, the owner's included, for one call only: one
//! read, one write, `pending()`, or the close_notify. The socket is
//! non-blocking, so that call never waits for the network, and nobody holds
//! the mutex across poll(2). It is the last lock in its chain: a sender takes
//! it inside the outbox's queue lock (a write-through), the owner with
//! nothing held, and nothing is taken inside it.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use native_tls::{HandshakeError, TlsAcceptor, TlsStream};
use rustix::event::{PollFd, PollFlags};

use super::poll::poll_until;
use crate::sync::lock;

/// A TCP socket that several handles share: TLS runs over it while the
/// owner polls and shuts down the same socket through another handle.
#[derive(Debug, Clone)]
pub struct Socket(Arc<TcpStream>);

impl Socket {
    pub fn new(tcp: TcpStream) -> Socket {
        Socket(Arc::new(tcp))
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.0
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self.0).flush()
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// A TLS stream shared by its connection's thread and write-through senders.
#[derive(Clone)]
pub struct SharedTls {
    /// The socket under the stream, for poll(2) and shutdown(2) without the lock.
    socket: Socket,
    /// Taken for each OpenSSL call, and only for that call (see the module doc).
    stream: Arc<Mutex<TlsStream<Socket>>>,
}

pub enum Transport {
    /// Shared with the connection's outbox, whose senders may write a relay
    /// straight to it (write-through, see `Outbox::push_through`); reads are
    /// the owner's alone.
    Plain(Arc<TcpStream>),
    /// Shared with the outbox in the same way; every use takes its lock.
    Tls(SharedTls),
}

/// What a write-through sender writes to: the connection's stream.
#[derive(Clone)]
pub enum Sink {
    Plain(Arc<TcpStream>),
    Tls(SharedTls),
}

/// How much of a frame a [`Sink`] took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Through {
    /// All of it is on its way to the client.
    All,
    /// The first `n` bytes (possibly none) went out and the rest is owed:
    /// it must be the next bytes written to this stream, before anything
    /// else. Over TLS this is also the case when OpenSSL would block: it may
    /// hold an encrypted record of the rest, and must be called again with
    /// the same bytes (SSL_write's retry rule).
    Part(usize),
    /// Nothing went out and nothing is owed: the frame is queued as any other.
    Nothing,
}

/// The most of one frame a sender writes through; the rest is owed and the
/// owner writes it. A sender writes under the recipient's queue lock (and,
/// over TLS, the stream's lock, encrypting as it goes): this bounds how long
/// a large relay (an SDP of megabytes) holds them, so the recipient's own
/// thread and other senders wait microseconds, not milliseconds.
pub const THROUGH_MAX: usize = 64 << 10;

impl Sink {
    /// Writes what the stream takes of `frame` now, up to [`THROUGH_MAX`],
    /// never waiting: one write(2) for a plain socket; for TLS, SSL_write
    /// record by record (16 KiB each), under the stream's lock, until the
    /// record that reaches [`THROUGH_MAX`] is written or OpenSSL would block.
    /// The second value says the TLS stream holds decrypted input poll(2)
    /// cannot see (OpenSSL read records while writing), which only the owner
    /// can take.
    pub fn write_through(&self, frame: &[u8]) -> (Through, bool) {
        match self {
            Sink::Plain(socket) => {
                let at_most = &frame[..frame.len().min(THROUGH_MAX)];
                let written = loop {
                    match (&**socket).write(at_most) {
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                        other => break other,
                    }
                };
                let through = match written {
                    Ok(n) if n == frame.len() => Through::All,
                    Ok(n) if n > 0 => Through::Part(n),
                    // A full socket, or an error the owner will meet itself.
                    _ => Through::Nothing,
                };
                (through, false)
            }
            Sink::Tls(tls) => {
                let mut stream = lock(&tls.stream);
                let mut pos = 0;
                // Each SSL_write sends at most one record (ENABLE_PARTIAL_WRITE,
                // set by rust-openssl): a frame over 16 KiB takes several.
                let through = loop {
                    if pos == frame.len() {
                        break Through::All;
                    }
                    if pos >= THROUGH_MAX {
                        break Through::Part(pos);
                    }
                    match stream.write(&frame[pos..]) {
                        Ok(0) => break Through::Part(pos),
                        Ok(n) => pos += n,
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                        // Would block, or failed: whatever OpenSSL holds of the
                        // rest is owed first. After a failure the owner meets
                        // the error on its own next call and closes.
                        Err(_) => break Through::Part(pos),
                    }
                };
                let buffered = stream.buffered_read_size().is_ok_and(|n| n > 0);
                (through, buffered)
            }
        }
    }
}

impl Transport {
    /// A TLS stream whose handshake is done, made shareable.
    pub fn tls(stream: TlsStream<Socket>) -> Transport {
        Transport::Tls(SharedTls {
            socket: stream.get_ref().clone(),
            stream: Arc::new(Mutex::new(stream)),
        })
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(s) => s.socket.tcp(),
        }
    }

    /// What the connection's outbox writes relays through.
    pub fn sink(&self) -> Sink {
        match self {
            Transport::Plain(s) => Sink::Plain(s.clone()),
            Transport::Tls(s) => Sink::Tls(s.clone()),
        }
    }

    /// Decrypted bytes TLS holds that poll(2) cannot see.
    pub fn has_buffered_input(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(s) => lock(&s.stream).buffered_read_size().is_ok_and(|n| n > 0),
        }
    }

    /// Ends the stream: TLS close_notify where possible, then our direction,
    /// then discards what the client still sends until it closes too or
    /// `linger` passes. Closing a socket with unread input sends an RST, and a
    /// client's stack may then drop our last frames (an ERROR saying why)
    /// before the client reads them. The outbox must have given the stream
    /// back first (`set_sink(None)`): nothing may follow the close_notify.
    pub fn close(&mut self, linger: Duration) {
        if let Transport::Tls(s) = self {
            let _ = lock(&s.stream).shutdown();
        }
        let mut tcp = self.tcp();
        let _ = tcp.shutdown(std::net::Shutdown::Write);
        let deadline = Instant::now() + linger;
        let mut sink = [0u8; 4096];
        // Bounded by time, not by what arrives: a client that keeps sending
        // must not hold the thread.
        while Instant::now() < deadline {
            match tcp.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut fds = [PollFd::new(tcp, PollFlags::IN)];
                    if !matches!(poll_until(&mut fds, Some(deadline)), Ok(n) if n > 0) {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = tcp.shutdown(std::net::Shutdown::Both);
    }
}

impl Transport {
    /// Reads what is available onto the end of `buf`, at most about `chunk`
    /// bytes more. Plain TCP reads straight into the vector's spare capacity:
    /// no zeroed scratch buffer, no copy. TLS decrypts through a scratch chunk.
    pub fn read_append(&mut self, buf: &mut Vec<u8>, chunk: usize) -> io::Result<ReadOutcome> {
        match self {
            Transport::Plain(s) => {
                buf.reserve(chunk);
                let room = buf.capacity() - buf.len();
                let bytes = rustix::io::read(&**s, rustix::buffer::spare_capacity(buf))?;
                Ok(ReadOutcome {
                    bytes,
                    maybe_more: bytes == room,
                })
            }
            Transport::Tls(s) => {
                let mut scratch = [0u8; TLS_CHUNK];
                let bytes = lock(&s.stream).read(&mut scratch)?;
                buf.extend_from_slice(&scratch[..bytes]);
                // A TLS read ends at a record boundary, not when the socket
                // is drained: read on until it says WouldBlock.
                Ok(ReadOutcome {
                    bytes,
                    maybe_more: true,
                })
            }
        }
    }
}

/// What one [`Transport::read_append`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOutcome {
    /// Bytes appended; 0 is end of stream.
    pub bytes: usize,
    /// The read may have left bytes behind (it filled the room it had, or
    /// TLS): read again before waiting in poll.
    pub maybe_more: bool,
}

/// Decrypted bytes taken per TLS read (the largest TLS record's plaintext).
const TLS_CHUNK: usize = 16 * 1024;

impl AsFd for Transport {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.tcp().as_fd()
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => (&**s).read(buf),
            Transport::Tls(s) => lock(&s.stream).read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => (&**s).write(buf),
            Transport::Tls(s) => lock(&s.stream).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => (&**s).flush(),
            Transport::Tls(s) => lock(&s.stream).flush(),
        }
    }
}

/// Why a TLS handshake did not complete.
#[derive(Debug)]
pub enum HandshakeFailure {
    TimedOut,
    /// The server is stopping (the wake-up fired).
    Interrupted,
    Failed(String),
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeFailure::TimedOut => f.write_str("tls handshake timed out"),
            HandshakeFailure::Interrupted => f.write_str("tls handshake interrupted"),
            HandshakeFailure::Failed(e) => write!(f, "tls handshake failed: {e}"),
        }
    }
}

/// Runs a server handshake on a non-blocking socket until `deadline`, waiting
/// in poll(2) on the socket and `wake` (which aborts it).
///
/// # Errors
/// Timeout, interruption, or the TLS error (a plain-TCP client lands here).
pub fn accept_tls<S: Read + Write + AsFd>(
    acceptor: &TlsAcceptor,
    stream: S,
    deadline: Instant,
    wake: Option<BorrowedFd<'_>>,
) -> Result<TlsStream<S>, HandshakeFailure> {
    let mut attempt = acceptor.accept(stream);
    loop {
        match attempt {
            Ok(tls) => return Ok(tls),
            Err(HandshakeError::Failure(err)) => {
                return Err(HandshakeFailure::Failed(err.to_string()));
            }
            Err(HandshakeError::WouldBlock(mid)) => {
                // A handshake waits on the peer's next flight; the socket's send
                // buffer always holds the server's own few kilobytes.
                let mut fds = vec![PollFd::new(mid.get_ref(), PollFlags::IN)];
                if let Some(wake) = wake {
                    fds.push(PollFd::from_borrowed_fd(wake, PollFlags::IN));
                }
                match poll_until(&mut fds, Some(deadline)) {
                    Ok(0) => return Err(HandshakeFailure::TimedOut),
                    Ok(_) if fds.get(1).is_some_and(|f| !f.revents().is_empty()) => {
                        return Err(HandshakeFailure::Interrupted);
                    }
                    Ok(_) => {}
                    Err(err) => return Err(HandshakeFailure::Failed(err.to_string())),
                }
                attempt = mid.handshake();
            }
        }
    }
}
