//! One client connection, run on its own thread, which alone reads its socket
//! and writes everything but relays written through by their senders.
//!
//! The thread blocks in poll(2) on two descriptors: the socket and the outbox's
//! eventfd. Requests are answered into the connection's own write buffer;
//! everything else arrives through the outbox, or, for a relay while this
//! thread is not writing, straight onto the stream (`Outbox::push_through`,
//! plain and TLS). Buffers stay small: while more than [`HIGH_WATER`] bytes
//! wait to be written the thread stops reading, so a client that sends
//! without reading is slowed by TCP, not buffered for.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, trace};
use rustix::event::{PollFd, PollFlags};

use super::frame::{self, Decoded, Foreign};
use super::message::{MessageType, Request, ServerMessage};
use super::outbox::{CloseReason, Outbox};
use super::poll::poll_until;
use super::server::Shared;
use super::transport::Transport;
use crate::application::{AppError, ConnId};
use crate::domain::UserId;
use crate::domain::limits::TokenBucket;
use crate::metrics::Metrics;

/// Stop reading and processing input while this much output is unsent.
pub const HIGH_WATER: usize = 64 * 1024;
/// Room made in the input buffer for one read(2): enough for a typical request
/// in one allocation; a read that fills it is followed by another, and the
/// buffer doubles as frames need. An idle connection holds none (see
/// `process_input`); a larger first reservation cost idle connections about
/// 4 KiB of RSS each in heap fragmentation.
const READ_CHUNK: usize = 1024;
/// At most this much is read before frames are processed again.
const READ_ROUND: usize = 256 * 1024;
/// How long a closing connection may take to write its last frames.
const FLUSH_GRACE: Duration = Duration::from_secs(2);
/// After the last frame, how long the client's unread input is drained so the
/// close is an orderly FIN, not an RST that would destroy that frame.
const LINGER: Duration = Duration::from_millis(500);
/// Buffers larger than this are released once empty: an idle connection keeps
/// at most this much, however large a burst it last wrote (9,000 idle
/// connections that each kept a presence storm's 64 KiB held 74 KiB of RSS each).
const KEEP_CAPACITY: usize = 1024;

/// Whether the client on the other end has logged in, and as whom (the
/// hub's session is the authority; this is the connection's own view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginState {
    Anonymous,
    Authenticated { user: UserId, username: String },
}

struct Closing {
    reason: String,
    deadline: Instant,
}

pub struct Connection {
    pub(super) id: ConnId,
    peer: SocketAddr,
    opened: Instant,
    /// Why the connection ended; `None` while running (or if a handler panicked).
    end_reason: Option<String>,
    /// `run` has left the hub already (Drop does it after a panic).
    left_hub: bool,
    pub(super) shared: Arc<Shared>,
    pub(super) login: LoginState,
    /// 1 until the client says HELLO with a higher version: a v1 client sees
    /// only v1 behaviour.
    pub(super) protocol: u32,
    /// A guest session's end (Unix seconds): its TURN credentials end with it.
    pub(super) guest_expires_at: Option<u64>,
    transport: Transport,
    outbox: Arc<Outbox>,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    out_pos: usize,
    /// Frames remain in the outbox beyond what was taken into `outbuf`.
    queue_pending: bool,
    /// The outbox knows this thread is writing (see `Outbox::begin_write`).
    /// While it is false the write buffer is empty: the flag is set before
    /// anything goes into it, and cleared only once it is all written.
    writing: bool,
    /// The peer sent EOF: answer what was read, then close.
    input_closed: bool,
    /// A whole frame has been read: from then on bad bytes are a broken
    /// client, not someone speaking another protocol to the port.
    framed: bool,
    last_frame: Instant,
    /// Since when the connection has had no session (opened, or logged out):
    /// the login timeout counts from here.
    anonymous_since: Instant,
    /// Since when output has been pending without the client taking it (see
    /// `track_stall`).
    stalled_since: Option<Instant>,
    /// Bytes written since the stall clock last started.
    written_while_stalled: usize,
    bucket: TokenBucket,
    /// Frames refused by the bucket in a row.
    violations: u32,
    closing: Option<Closing>,
}

impl Connection {
    pub fn new(
        id: ConnId,
        peer: SocketAddr,
        opened: Instant,
        shared: Arc<Shared>,
        transport: Transport,
        outbox: Arc<Outbox>,
    ) -> Connection {
        let limits = &shared.limits;
        let bucket = TokenBucket::new(limits.frames_per_second, limits.frame_burst, opened);
        Connection {
            id,
            peer,
            opened,
            end_reason: None,
            left_hub: false,
            shared,
            login: LoginState::Anonymous,
            protocol: 1,
            guest_expires_at: None,
            transport,
            outbox,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            out_pos: 0,
            queue_pending: false,
            writing: false,
            input_closed: false,
            framed: false,
            last_frame: Instant::now(),
            anonymous_since: opened,
            stalled_since: None,
            written_while_stalled: 0,
            bucket,
            violations: 0,
            closing: None,
        }
    }

    pub fn user(&self) -> Option<UserId> {
        match self.login {
            LoginState::Authenticated { user, .. } => Some(user),
            LoginState::Anonymous => None,
        }
    }

    /// Serves the connection until it ends.
    pub fn run(&mut self) {
        // From here senders may write relays to the stream while this thread
        // is not writing (plain and TLS alike).
        self.outbox.set_sink(Some(self.transport.sink()));
        let reason = self
            .serve()
            .unwrap_or_else(|err| format!("i/o error: {err}"));
        // No sender writes to the socket once it starts closing.
        self.outbox.set_sink(None);
        // Leave the hub before lingering over the close: from here on nothing
        // sent to this connection can arrive, so it must go elsewhere (a held
        // session keeps it for a RESUME) rather than into this outbox.
        if let Some(user) = self.user() {
            self.shared.hub.disconnect(self.id, user);
            self.left_hub = true;
        }
        self.transport.close(LINGER);
        self.end_reason = Some(reason);
    }

    fn unsent(&self) -> usize {
        self.outbuf.len() - self.out_pos
    }

    /// Drops the bytes already written, so the buffer holds only what is unsent
    /// and never grows with what has gone out.
    fn compact(&mut self) {
        if self.out_pos > 0 {
            self.outbuf.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    fn serve(&mut self) -> io::Result<String> {
        loop {
            if let Some(reason) = self.pump_out()? {
                return Ok(reason);
            }
            if let Some(closing) = &self.closing {
                if self.unsent() == 0 && !self.queue_pending {
                    return Ok(closing.reason.clone());
                }
                if Instant::now() >= closing.deadline {
                    return Ok(format!("{} (unsent output dropped)", closing.reason));
                }
            } else {
                self.process_input();
                if self.closing.is_some() {
                    continue;
                }
                // Checked after the buffered frames are handled, so a LOGIN
                // that arrived just at the deadline is answered, not cut off.
                if let Some(reason) = self.check_timeouts() {
                    return Ok(reason);
                }
                if self.closing.is_some() {
                    continue;
                }
                if !self.input_closed
                    && self.unsent() < HIGH_WATER
                    && self.transport.has_buffered_input()
                {
                    if let Some(reason) = self.read_input()? {
                        return Ok(reason);
                    }
                    continue;
                }
            }

            // Frames are still queued and there is room to take them: take them
            // now. Their wake-up was already consumed (a push signals only an
            // empty queue), so waiting in poll here would strand them until the
            // client happened to send something.
            if self.queue_pending && self.unsent() < HIGH_WATER {
                continue;
            }
            let reading =
                self.closing.is_none() && !self.input_closed && self.unsent() < HIGH_WATER;
            let mut events = PollFlags::empty();
            if reading {
                events |= PollFlags::IN;
            }
            if self.unsent() > 0 {
                events |= PollFlags::OUT;
            }
            // While reading is paused because the client does not read our
            // output, the client is not idle; the output must move instead.
            let idle = self.shared.limits.idle_timeout;
            let paused = self.closing.is_none() && !self.input_closed && !reading;
            if paused {
                self.last_frame = Instant::now();
            }
            let idle_deadline = (self.last_frame + idle).min(self.stall_deadline());
            let login_deadline = match self.login {
                LoginState::Anonymous => {
                    Some(self.anonymous_since + self.shared.limits.login_timeout)
                }
                LoginState::Authenticated { .. } => None,
            };
            let deadline = match &self.closing {
                Some(closing) => closing.deadline,
                None => login_deadline.map_or(idle_deadline, |login| login.min(idle_deadline)),
            };
            let (sock_ready, woken) = {
                let mut fds = [
                    PollFd::new(&self.transport, events),
                    PollFd::from_borrowed_fd(self.outbox.wake_fd(), PollFlags::IN),
                ];
                poll_until(&mut fds, Some(deadline))?;
                (fds[0].revents(), !fds[1].revents().is_empty())
            };
            if woken {
                self.outbox.clear_wake();
                self.queue_pending = true;
            }
            let hung_up = sock_ready.intersects(PollFlags::HUP | PollFlags::ERR);
            if reading && (sock_ready.contains(PollFlags::IN) || hung_up) {
                if let Some(reason) = self.read_input()? {
                    return Ok(reason);
                }
            } else if hung_up && !sock_ready.contains(PollFlags::OUT) {
                return Ok("connection lost".into());
            }
        }
    }

    /// The login and idle timeouts. The login timeout answers with ERROR 401 and
    /// starts closing; an idle (or stalled) connection ends at once.
    fn check_timeouts(&mut self) -> Option<String> {
        let now = Instant::now();
        let limits = &self.shared.limits;
        if matches!(self.login, LoginState::Anonymous)
            && now >= self.anonymous_since + limits.login_timeout
        {
            let message = format!(
                "login timeout: no login within {} s",
                limits.login_timeout.as_secs_f64()
            );
            self.reply(&ServerMessage::error(401, message, None));
            self.start_closing("login timeout");
            return None;
        }
        if now >= self.stall_deadline() {
            return Some("output stalled".into());
        }
        if now >= self.last_frame + limits.idle_timeout {
            return Some("idle timeout".into());
        }
        None
    }

    /// The stall clock runs while output is pending. It restarts when the client
    /// has caught up, or has taken a high-water mark's worth since it started:
    /// the kernel frees a few bytes of a full receive queue now and then even
    /// for a client that never reads, and that must not count as reading.
    fn track_stall(&mut self) {
        if self.unsent() == 0 {
            self.stalled_since = None;
        } else if self.stalled_since.is_none() || self.written_while_stalled >= HIGH_WATER {
            self.stalled_since = Some(Instant::now());
        } else {
            return;
        }
        self.written_while_stalled = 0;
    }

    /// When pending output that the client is not taking ends the connection.
    fn stall_deadline(&self) -> Instant {
        match self.stalled_since {
            Some(since) => since + self.shared.limits.idle_timeout,
            None => Instant::now() + self.shared.limits.idle_timeout,
        }
    }

    /// Moves queued frames into the write buffer and writes what the socket takes.
    /// Returns a reason when the connection must end now.
    fn pump_out(&mut self) -> io::Result<Option<String>> {
        // Checked on every wake-up: with the socket full and the write buffer
        // over the high-water mark, the queue is not drained, but an overflow
        // must still end the connection at once.
        if self.queue_pending && self.outbox.overflowed() {
            Metrics::count(&self.shared.metrics.slow_consumer_disconnects);
            return Ok(Some(CloseReason::SlowConsumer.as_str().into()));
        }
        if self.queue_pending && self.unsent() < HIGH_WATER {
            self.compact();
            let drained = self
                .outbox
                .take_into(&mut self.outbuf, HIGH_WATER, &self.shared.metrics);
            self.queue_pending = drained.more;
            if drained.slow {
                Metrics::count(&self.shared.metrics.slow_consumer_disconnects);
                return Ok(Some(CloseReason::SlowConsumer.as_str().into()));
            }
            if let Some(reason) = drained.close {
                self.start_closing(reason.as_str());
            }
        }
        // Senders write relays through only while the owner is not writing:
        // say so before writing (what take_into took, it has said already).
        if self.unsent() > 0 {
            self.claim_output();
        }
        while self.unsent() > 0 {
            match self.transport.write(&self.outbuf[self.out_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out_pos += n;
                    self.written_while_stalled += n;
                    Metrics::add(&self.shared.metrics.bytes_out, n as u64);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Ok(Some(format!("write failed: {err}"))),
            }
        }
        self.track_stall();
        if self.unsent() == 0 {
            if self.writing {
                self.outbox.end_write();
                self.writing = false;
            }
            self.out_pos = 0;
            self.outbuf.clear();
            if self.outbuf.capacity() > KEEP_CAPACITY {
                self.outbuf = Vec::new();
            }
        }
        Ok(None)
    }

    /// Reads what is available (up to a round's worth). Returns a reason when
    /// reading failed; EOF only marks the input closed.
    fn read_input(&mut self) -> io::Result<Option<String>> {
        let mut total = 0;
        while total < READ_ROUND {
            match self.transport.read_append(&mut self.inbuf, READ_CHUNK) {
                Ok(read) if read.bytes == 0 => {
                    self.input_closed = true;
                    break;
                }
                Ok(read) => {
                    Metrics::add(&self.shared.metrics.bytes_in, read.bytes as u64);
                    total += read.bytes;
                    // The socket had less than there was room for: it is
                    // drained, and poll says when more comes (one read(2)
                    // per wake-up, not a second one for EAGAIN).
                    if !read.maybe_more {
                        break;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Ok(Some(format!("read failed: {err}"))),
            }
        }
        Ok(None)
    }

    /// Handles every complete frame in the input buffer, unless output backs up.
    fn process_input(&mut self) {
        let input = std::mem::take(&mut self.inbuf);
        let max = self.shared.limits.max_frame;
        let mut pos = 0;
        while self.closing.is_none() && self.unsent() < HIGH_WATER {
            match frame::decode(&input[pos..], max) {
                Ok(None) => {
                    if self.input_closed {
                        // Every complete frame is answered; a partial one never will be.
                        self.start_closing("peer closed");
                    }
                    break;
                }
                Ok(Some((decoded, used))) => {
                    pos += used;
                    self.framed = true;
                    self.last_frame = Instant::now();
                    if !self.admit_frame() {
                        continue;
                    }
                    match decoded {
                        Decoded::Empty => self.reply_error(
                            AppError::BadRequest(
                                "empty frame: length 0 leaves no room for the type byte".into(),
                            ),
                            None,
                        ),
                        Decoded::Frame { kind, payload } => self.handle_frame(kind, payload),
                    }
                }
                Err(too_large) => {
                    let foreign = if self.framed {
                        None
                    } else {
                        Foreign::sniff(&input[pos..])
                    };
                    match foreign {
                        Some(foreign) => {
                            self.reply_error(
                                AppError::BadRequest(foreign.explanation().into()),
                                None,
                            );
                            self.start_closing(match foreign {
                                Foreign::Http => "not the Switchboard protocol (HTTP)",
                                Foreign::Tls => "not the Switchboard protocol (TLS)",
                                Foreign::Text => "not the Switchboard protocol (text)",
                            });
                        }
                        None => {
                            self.reply_error(AppError::TooLarge(too_large.to_string()), None);
                            self.start_closing("frame too large");
                        }
                    }
                    pos = input.len();
                }
            }
        }
        self.inbuf = input;
        self.inbuf.drain(..pos);
        // Reads reserve room in it, so an idle connection would keep a chunk:
        // it keeps nothing instead.
        if self.inbuf.is_empty() {
            self.inbuf = Vec::new();
        }
    }

    fn handle_frame(&mut self, kind: u8, payload: &[u8]) {
        // From here until its answers are written, whatever this request
        // decides (a RESUME attaching the session, a LOGIN) comes before any
        // relay a sender might otherwise write straight to the socket: the
        // answer is the client's first news of it. A relayed SDP/ICE frame
        // changes nothing and is answered only when it fails, so it leaves
        // write-through open (its ERROR, if any, claims the output then).
        if !is_relay(kind) {
            self.claim_output();
        }
        trace!(
            "conn={} recv type=0x{:02X} bytes={}",
            self.id,
            kind,
            payload.len()
        );
        Metrics::count(&self.shared.metrics.frames_in[usize::from(kind)]);
        match Request::decode(kind, payload) {
            Ok(request) => self.dispatch(request, payload.len()),
            Err(err) => self.reply_error(AppError::BadRequest(err.fault.to_string()), err.req_id),
        }
    }

    /// Tells the outbox this thread is writing, so senders queue behind it
    /// from now on, before anything goes into the write buffer. The rest of
    /// a relay a sender wrote in part comes into the buffer first: those are
    /// the next bytes the client must get (and over TLS, the bytes OpenSSL
    /// must be handed again).
    fn claim_output(&mut self) {
        if !self.writing {
            self.outbox.begin_write(&mut self.outbuf);
            self.writing = true;
        }
    }

    /// Queues an already encoded answer on this connection's own write buffer.
    pub(super) fn reply_frame(&mut self, kind: MessageType, frame: &[u8]) {
        self.compact();
        self.claim_output();
        self.outbuf.extend_from_slice(frame);
        Metrics::count(&self.shared.metrics.frames_out[usize::from(kind.code())]);
    }

    /// Queues a message on this connection's own write buffer.
    pub(super) fn reply(&mut self, message: &ServerMessage) {
        self.reply_frame(message.message_type(), &message.to_frame());
        let metrics = &self.shared.metrics;
        match message {
            ServerMessage::Error(e) => metrics.error(e.code),
            ServerMessage::LoginResponse(r) | ServerMessage::RegisterResponse(r) => {
                if let Some(code) = r.code {
                    metrics.error(code);
                }
            }
            _ => {}
        }
    }

    /// After LOGOUT: no session, and a fresh login timeout.
    pub(super) fn end_session(&mut self) {
        self.login = LoginState::Anonymous;
        self.guest_expires_at = None;
        self.anonymous_since = Instant::now();
    }

    pub(super) fn peer_ip(&self) -> std::net::IpAddr {
        self.peer.ip()
    }

    /// Takes a token for one incoming frame. Without one the frame is refused
    /// with ERROR 429; too many refusals in a row close the connection.
    fn admit_frame(&mut self) -> bool {
        match self.bucket.take(self.last_frame) {
            Ok(()) => {
                self.violations = 0;
                true
            }
            Err(wait) => {
                self.violations += 1;
                let limits = &self.shared.limits;
                if self.violations >= limits.rate_violations_before_disconnect {
                    let message =
                        "rate limit exceeded repeatedly; closing the connection".to_string();
                    self.reply_error(
                        AppError::RateLimited {
                            message,
                            retry_after: wait,
                        },
                        None,
                    );
                    self.start_closing("rate limit");
                } else {
                    let message = format!(
                        "too many frames: at most {} per second",
                        limits.frames_per_second
                    );
                    self.reply_error(
                        AppError::RateLimited {
                            message,
                            retry_after: wait,
                        },
                        None,
                    );
                }
                false
            }
        }
    }

    /// Time since the frame being handled was read.
    pub(super) fn frame_age(&self) -> Duration {
        self.last_frame.elapsed()
    }

    pub(super) fn reply_error(&mut self, err: AppError, req_id: Option<super::message::ReqId>) {
        debug!("conn={} error code={} message={}", self.id, err.code(), err);
        let mut message = ServerMessage::error(err.code(), err.to_string(), req_id);
        if let ServerMessage::Error(e) = &mut message {
            e.retry_after_ms = err.retry_after_ms();
        }
        self.reply(&message);
    }

    pub(super) fn start_closing(&mut self, reason: &str) {
        if self.closing.is_none() {
            self.closing = Some(Closing {
                reason: reason.into(),
                deadline: Instant::now() + FLUSH_GRACE,
            });
        }
    }
}

impl Drop for Connection {
    /// Leaves the hub (ending any call, broadcasting presence) if `run` did not
    /// get to it (a handler panicked), and logs the close line.
    fn drop(&mut self) {
        self.outbox.set_sink(None);
        if let Some(user) = self.user().filter(|_| !self.left_hub) {
            self.shared.hub.disconnect(self.id, user);
        }
        let user = match &self.login {
            LoginState::Authenticated { user, username } => format!("{user}:{username}"),
            LoginState::Anonymous => "-".into(),
        };
        info!(
            "connection closed conn={} peer={} user={} duration_ms={} reason={}",
            self.id,
            self.peer,
            user,
            self.opened.elapsed().as_millis(),
            self.end_reason.as_deref().unwrap_or("panic")
        );
    }
}

/// SDP and ICE frames: relayed to a peer, answered only when they fail.
fn is_relay(kind: u8) -> bool {
    matches!(
        MessageType::from_code(kind),
        Some(MessageType::SdpOffer | MessageType::SdpAnswer | MessageType::IceCandidate)
    )
}
