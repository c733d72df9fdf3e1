//! The byte stream under a connection: plain TCP or TLS over it, always non-blocking.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use native_tls::{HandshakeError, TlsAcceptor, TlsStream};
use rustix::event::{PollFd, PollFlags};

use super::poll::poll_until;

pub enum Transport {
    /// Shared with the connection's outbox, whose senders may write a relay
    /// straight to it (write-through, see `Outbox::push_through`); reads are
    /// the owner's alone.
    Plain(Arc<TcpStream>),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(s) => s.get_ref(),
        }
    }

    /// Decrypted bytes TLS holds that poll(2) cannot see.
    pub fn has_buffered_input(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(s) => s.buffered_read_size().is_ok_and(|n| n > 0),
        }
    }

    /// Ends the stream: TLS close_notify where possible, then our direction,
    /// then discards what the client still sends until it closes too or
    /// `linger` passes. Closing a socket with unread input sends an RST, and a
    /// client's stack may then drop our last frames (an ERROR saying why)
    /// before the client reads them.
    pub fn close(&mut self, linger: Duration) {
        if let Transport::Tls(s) = self {
            let _ = s.shutdown();
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
    pub fn read_append(&mut self, buf: &mut Vec<u8>, chunk: usize) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => {
                buf.reserve(chunk);
                rustix::io::read(&**s, rustix::buffer::spare_capacity(buf)).map_err(io::Error::from)
            }
            Transport::Tls(s) => {
                let mut scratch = [0u8; TLS_CHUNK];
                let n = s.read(&mut scratch)?;
                buf.extend_from_slice(&scratch[..n]);
                Ok(n)
            }
        }
    }
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
            Transport::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => (&**s).write(buf),
            Transport::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => (&**s).flush(),
            Transport::Tls(s) => s.flush(),
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
pub fn accept_tls(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    deadline: Instant,
    wake: Option<BorrowedFd<'_>>,
) -> Result<TlsStream<TcpStream>, HandshakeFailure> {
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
