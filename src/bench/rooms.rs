//! The rooms workload: `rooms` rooms of `size` participants chatting.
//!
//! Every participant is a protocol 2 client on one of a few epoll threads
//! (as [`super::swarm`]); all participants of a room are on the same thread,
//! so a thread knows its rooms' ids and can account for every delivery.
//!
//! 1. Every client says HELLO and logs in. The daemon's RSS is read.
//! 2. The first participant of each room creates it (and owns it) and joins;
//!    then the others join at once. Each waits until it knows every other
//!    participant (ROOM_JOIN_RESPONSE plus ROOM_PEER_JOINED). RSS is read
//!    again: the difference over the participants is the RSS per participant.
//! 3. Every participant posts ROOM_MESSAGE_REQUESTs whose text carries the
//!    send time, for `duration`: closed loop (the next message once the
//!    previous one's ROOM_MESSAGE_RESPONSE came, so one in flight per sender)
//!    or open loop (`rate` messages/s over all senders, each on its own
//!    schedule; the time carried is the intended send time, so a stall counts
//!    in full). Every participant, the sender included, gets each message as
//!    ROOM_MESSAGE: latency is its arrival minus the carried time. After the
//!    window, the senders stop and the run waits (up to `grace`) for every
//!    acknowledged message to reach every participant.
//!
//! The daemon's `switchboard_push_frames_encoded_total` is read before and
//! after the chat: its growth over the messages posted says how many times a
//! message was encoded (once is the goal: one encoding shared by the room).

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustix::buffer::spare_capacity;
use rustix::event::{Timespec, epoll};
use serde::Serialize;
use serde_json::Value;

use super::client::{MAX_FRAME, scan_str};
use super::daemon::{SECRET, username};
use super::stats::{Latencies, Percentiles};
use crate::tcp::frame::{self, Decoded};
use crate::tcp::message::{Credentials, Hello, MessageType, Request, RoomJoin, RoomPost, RoomSpec};

#[derive(Debug, Clone)]
pub struct RoomsOptions {
    pub rooms: usize,
    /// Participants per room.
    pub size: usize,
    /// The chat window.
    pub duration: Duration,
    /// Open loop: messages per second over all senders; `None`: closed loop.
    pub rate: Option<f64>,
    /// Bytes of text per message.
    pub text: usize,
    /// Threads driving the clients.
    pub shards: usize,
    /// How long to wait for the last deliveries after the window.
    pub grace: Duration,
    /// Give up on the login and join phases after this long each.
    pub timeout: Duration,
}

/// What the chat phase measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatFigures {
    pub mode: &'static str,
    pub seconds: f64,
    /// ROOM_MESSAGE_REQUESTs sent in the window.
    pub sent: u64,
    /// Of those, acknowledged (ROOM_MESSAGE_RESPONSE), in the window and after.
    pub acknowledged: u64,
    /// Acknowledged within the window, per second.
    pub messages_per_s: f64,
    /// ROOM_MESSAGE frames received within the window, per second.
    pub delivered_per_s: f64,
    /// ROOM_MESSAGE frames received in all.
    pub delivered: u64,
    /// Deliveries of acknowledged messages that never came (after the grace).
    pub lost: u64,
    /// ROOM_MESSAGEs that arrived with a `seq` not above the previous one's.
    pub out_of_order: u64,
    /// Send (or intended send) to ROOM_MESSAGE at a participant.
    pub latency: Percentiles,
    /// Send to ROOM_MESSAGE_RESPONSE (the message is durable) at the sender.
    pub ack_latency: Percentiles,
    /// Open loop: sends that left more than 1 ms after their intended time.
    pub late_sends: u64,
}

/// One participant.
struct Member {
    stream: TcpStream,
    /// Bench user index.
    user: usize,
    /// Index of the room among this shard's rooms.
    room: usize,
    owner: bool,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    logged_in: bool,
    joined: bool,
    /// Other participants known: those in ROOM_JOIN_RESPONSE, then ROOM_PEER_JOINED.
    peers: usize,
    /// Chat: the next send time (open loop), a message in flight (closed loop).
    due: Option<Instant>,
    in_flight: bool,
    /// Send times (ns since the epoch) of messages not acknowledged yet, in order.
    unacked: std::collections::VecDeque<u64>,
    last_seq: u64,
    dead: bool,
}

/// A shard's rooms: their ids once created, and acknowledged messages.
#[derive(Default)]
struct ShardRoom {
    id: Option<String>,
    acknowledged: u64,
}

#[derive(Default)]
struct Counts {
    errors: u64,
    first_error: Option<String>,
    sent: u64,
    acknowledged: u64,
    acknowledged_in_window: u64,
    delivered: u64,
    delivered_in_window: u64,
    out_of_order: u64,
    late_sends: u64,
    latency: Latencies,
    ack_latency: Latencies,
}

impl Counts {
    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what);
        }
    }
}

/// What a frame asks the shard to do beyond the member itself.
enum Action {
    None,
    /// The owner is in: the others may join.
    RoomReady(usize),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Login,
    Join,
    Chat,
    Drain,
}

/// Shared by every shard: the clock carried in message texts, and the chat window.
struct Clock {
    epoch: Instant,
    window: Mutex<Option<(Instant, Instant)>>,
}

fn ns_since(epoch: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(epoch).as_nanos() as u64
}

/// The text of a message: the send time, padded with `x` to `size` bytes.
pub fn chat_text(sent_ns: u64, size: usize) -> String {
    let mut text = format!("bench t={sent_ns} pad=");
    if text.len() < size {
        text.extend(std::iter::repeat_n('x', size - text.len()));
    }
    text
}

/// The send time back out of a message's text.
pub fn parse_chat_text(text: &str) -> Option<u64> {
    let rest = text.strip_prefix("bench t=")?;
    rest.split(' ').next()?.parse().ok()
}

/// The unsigned integer value of `"key":N` in compact JSON.
fn scan_u64(json: &str, key: &str) -> Option<u64> {
    let pattern = format!("\"{key}\":");
    let at = json.find(&pattern)? + pattern.len();
    let digits: &str = json.get(at..)?;
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits.get(..end)?.parse().ok()
}

impl Member {
    fn queue(&mut self, request: &Request) {
        self.out.extend_from_slice(&request.to_frame());
    }

    fn flush(&mut self) -> io::Result<()> {
        super::client::write_pending(&mut self.stream, &mut self.out)
    }

    fn join(&mut self, room_id: &str) {
        self.queue(&Request::RoomJoin(RoomJoin {
            room_id: room_id.to_string(),
            password: None,
            req_id: None,
        }));
    }

    fn post(&mut self, room_id: &str, sent_ns: u64, size: usize) {
        self.queue(&Request::RoomMessage(RoomPost {
            room_id: room_id.to_string(),
            text: chat_text(sent_ns, size),
            client_msg_id: None,
            req_id: None,
        }));
        self.unacked.push_back(sent_ns);
    }

    /// Reads what is there and handles every complete frame.
    fn read(&mut self, ctx: &mut Ctx<'_>) -> io::Result<Vec<Action>> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let input = std::mem::take(&mut self.inbuf);
        let mut pos = 0;
        let mut actions = Vec::new();
        let handled = (|| {
            while let Some((decoded, used)) = frame::decode(&input[pos..], MAX_FRAME)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            {
                if let Decoded::Frame { kind, payload } = decoded {
                    actions.push(self.handle(kind, payload, ctx)?);
                }
                pos += used;
            }
            Ok::<(), io::Error>(())
        })();
        self.inbuf = input;
        handled?;
        self.inbuf.drain(..pos);
        Ok(actions)
    }

    fn handle(&mut self, kind: u8, payload: &[u8], ctx: &mut Ctx<'_>) -> io::Result<Action> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        let text = std::str::from_utf8(payload).map_err(|e| bad(e.to_string()))?;
        let now = Instant::now();
        match MessageType::from_code(kind) {
            // The hot path: scanned, not parsed.
            Some(MessageType::RoomMessage) => {
                ctx.counts.delivered += 1;
                if ctx.in_window(now) {
                    ctx.counts.delivered_in_window += 1;
                }
                if let Some(sent) = scan_str(text, "text").and_then(parse_chat_text) {
                    ctx.counts
                        .latency
                        .record(ns_since(ctx.clock.epoch, now).saturating_sub(sent));
                }
                match scan_u64(text, "seq") {
                    Some(seq) if seq > self.last_seq => self.last_seq = seq,
                    _ => ctx.counts.out_of_order += 1,
                }
            }
            Some(MessageType::RoomMessageResponse) => {
                ctx.counts.acknowledged += 1;
                if ctx.in_window(now) {
                    ctx.counts.acknowledged_in_window += 1;
                }
                if let Some(room) = ctx.rooms.get_mut(self.room) {
                    room.acknowledged += 1;
                }
                if let Some(sent) = self.unacked.pop_front() {
                    ctx.counts
                        .ack_latency
                        .record(ns_since(ctx.clock.epoch, now).saturating_sub(sent));
                }
                self.in_flight = false;
            }
            Some(MessageType::UserStateUpdate | MessageType::Welcome) => {}
            Some(MessageType::LoginResponse) => {
                let v: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
                if v["success"] != Value::Bool(true) {
                    return Err(bad(format!("login of {} refused: {text}", self.user)));
                }
                self.logged_in = true;
            }
            Some(MessageType::RoomCreateResponse) => {
                let v: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
                let id = v["room_id"]
                    .as_str()
                    .ok_or_else(|| bad(format!("ROOM_CREATE_RESPONSE without room_id: {text}")))?
                    .to_string();
                self.join(&id);
                if let Some(room) = ctx.rooms.get_mut(self.room) {
                    room.id = Some(id);
                }
            }
            Some(MessageType::RoomJoinResponse) => {
                let v: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
                if v["success"] != Value::Bool(true) {
                    return Err(bad(format!("join refused: {text}")));
                }
                self.joined = true;
                self.peers += v["participants"].as_array().map_or(0, Vec::len);
                if self.owner {
                    return Ok(Action::RoomReady(self.room));
                }
            }
            Some(MessageType::RoomPeerJoined) => self.peers += 1,
            _ => {
                let name = MessageType::from_code(kind).map_or("?", |k| k.name());
                ctx.counts.error(format!("{name} {text}"));
            }
        }
        Ok(Action::None)
    }
}

struct Ctx<'a> {
    counts: &'a mut Counts,
    rooms: &'a mut Vec<ShardRoom>,
    clock: &'a Clock,
    window: Option<(Instant, Instant)>,
}

impl Ctx<'_> {
    fn in_window(&self, t: Instant) -> bool {
        self.window.is_some_and(|(from, to)| t >= from && t < to)
    }
}

/// One shard: its participants, its rooms, its epoll.
struct Shard {
    members: Vec<Member>,
    rooms: Vec<ShardRoom>,
    epfd: rustix::fd::OwnedFd,
    counts: Counts,
}

impl Shard {
    fn connect(addr: SocketAddr, rooms: &[usize], size: usize) -> io::Result<Shard> {
        let epfd = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let mut members = Vec::with_capacity(rooms.len() * size);
        for (local, &room) in rooms.iter().enumerate() {
            for k in 0..size {
                let stream = TcpStream::connect(addr)?;
                stream.set_nodelay(true)?;
                stream.set_nonblocking(true)?;
                epoll::add(
                    &epfd,
                    &stream,
                    epoll::EventData::new_u64(members.len() as u64),
                    epoll::EventFlags::IN,
                )?;
                members.push(Member {
                    stream,
                    user: room * size + k,
                    room: local,
                    owner: k == 0,
                    inbuf: Vec::new(),
                    out: Vec::new(),
                    logged_in: false,
                    joined: false,
                    peers: 0,
                    due: None,
                    in_flight: false,
                    unacked: std::collections::VecDeque::new(),
                    last_seq: 0,
                    dead: false,
                });
            }
        }
        Ok(Shard {
            members,
            rooms: rooms.iter().map(|_| ShardRoom::default()).collect(),
            epfd,
            counts: Counts::default(),
        })
    }

    fn flush_all(&mut self) {
        for m in self
            .members
            .iter_mut()
            .filter(|m| !m.dead && !m.out.is_empty())
        {
            if let Err(e) = m.flush() {
                m.dead = true;
                self.counts.error(format!("write of {}: {e}", m.user));
            }
        }
    }

    /// Runs the event loop until `done` says so or `deadline` passes; `tick`
    /// runs after every wake-up (sends that are due). Returns whether `done`.
    fn drive(
        &mut self,
        clock: &Clock,
        phase: Phase,
        opts: &RoomsOptions,
        deadline: Instant,
        done: &dyn Fn(&Shard) -> bool,
    ) -> bool {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(1024);
        let window = clock.window.lock().ok().and_then(|w| *w);
        let mut last_check = Instant::now();
        loop {
            self.tick(clock, phase, opts, window);
            self.flush_all();
            if last_check.elapsed() >= Duration::from_millis(10) || events.is_empty() {
                last_check = Instant::now();
                if done(self) {
                    return true;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            events.clear();
            let wait = if phase == Phase::Chat && opts.rate.is_some() {
                Duration::from_micros(500)
            } else {
                Duration::from_millis(20)
            }
            .min(deadline - now);
            let timeout = Timespec {
                tv_sec: 0,
                tv_nsec: wait.subsec_nanos().into(),
            };
            match epoll::wait(&self.epfd, spare_capacity(&mut events), Some(&timeout)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    self.counts.error(format!("epoll: {e}"));
                    return false;
                }
            }
            for event in &events {
                let i = event.data.u64() as usize;
                let Some(m) = self.members.get_mut(i) else {
                    continue;
                };
                if m.dead {
                    continue;
                }
                let mut ctx = Ctx {
                    counts: &mut self.counts,
                    rooms: &mut self.rooms,
                    clock,
                    window,
                };
                match m.read(&mut ctx) {
                    Ok(actions) => {
                        for action in actions {
                            if let Action::RoomReady(room) = action {
                                self.room_ready(room);
                            }
                        }
                    }
                    Err(e) => {
                        let m = &mut self.members[i];
                        m.dead = true;
                        let _ = epoll::delete(&self.epfd, &m.stream);
                        let user = m.user;
                        self.counts.error(format!("connection of bench{user}: {e}"));
                    }
                }
            }
        }
    }

    /// The owner of `room` is in: the other participants join, all at once.
    fn room_ready(&mut self, room: usize) {
        let Some(id) = self.rooms.get(room).and_then(|r| r.id.clone()) else {
            return;
        };
        for m in self
            .members
            .iter_mut()
            .filter(|m| m.room == room && !m.owner && !m.dead)
        {
            m.join(&id);
        }
    }

    /// Sends what is due in the chat phase.
    fn tick(
        &mut self,
        clock: &Clock,
        phase: Phase,
        opts: &RoomsOptions,
        window: Option<(Instant, Instant)>,
    ) {
        let (Phase::Chat, Some((_, end))) = (phase, window) else {
            return;
        };
        let now = Instant::now();
        if now >= end {
            return;
        }
        for m in self.members.iter_mut().filter(|m| !m.dead) {
            let Some(id) = self.rooms.get(m.room).and_then(|r| r.id.as_deref()) else {
                continue;
            };
            match opts.rate {
                None => {
                    if !m.in_flight {
                        m.in_flight = true;
                        m.post(id, ns_since(clock.epoch, now), opts.text);
                        self.counts.sent += 1;
                    }
                }
                Some(_) => {
                    let Some(due) = m.due else { continue };
                    if due > now || due >= end {
                        continue;
                    }
                    if now.duration_since(due) > Duration::from_millis(1) {
                        self.counts.late_sends += 1;
                    }
                    m.post(id, ns_since(clock.epoch, due), opts.text);
                    self.counts.sent += 1;
                    m.due = Some(due + interval(opts));
                }
            }
        }
    }
}

/// Open loop: the time between two messages of one sender.
fn interval(opts: &RoomsOptions) -> Duration {
    let senders = (opts.rooms * opts.size).max(1) as f64;
    let rate = opts.rate.unwrap_or(1.0).max(1e-3);
    Duration::from_secs_f64(senders / rate)
}

/// Everything a shard thread hands back.
struct ShardOut {
    counts: Counts,
    failed: Option<String>,
    streams: Vec<TcpStream>,
}

/// The phases, each ended by a barrier the main thread also waits at.
struct Gates {
    logged_in: Barrier,
    joined: Barrier,
    chat: Barrier,
    drained: Barrier,
}

fn shard_main(
    addr: SocketAddr,
    rooms: Vec<usize>,
    opts: RoomsOptions,
    clock: Arc<Clock>,
    gates: Arc<Gates>,
) -> ShardOut {
    let mut failed = None;
    let mut shard = match Shard::connect(addr, &rooms, opts.size) {
        Ok(s) => Some(s),
        Err(e) => {
            failed = Some(format!("connect: {e}"));
            None
        }
    };
    // Phase 1: HELLO and LOGIN.
    if let Some(s) = shard.as_mut() {
        for m in &mut s.members {
            m.queue(&Request::Hello(Hello {
                protocol_version: 2,
                client_name: Some("switchboard-bench".into()),
                capabilities: Vec::new(),
                req_id: None,
            }));
            m.queue(&Request::Login(Credentials {
                username: username(m.user),
                password_hash: SECRET.into(),
                req_id: None,
            }));
        }
        let all_in = |s: &Shard| s.members.iter().all(|m| m.logged_in || m.dead);
        if !s.drive(
            &clock,
            Phase::Login,
            &opts,
            Instant::now() + opts.timeout,
            &all_in,
        ) {
            failed = Some("not every client logged in in time".into());
        }
    }
    gates.logged_in.wait();
    // Phase 2: the owners create and join, then the others join.
    if let Some(s) = shard.as_mut().filter(|_| failed.is_none()) {
        for (local, room) in rooms.iter().enumerate() {
            if let Some(owner) = s.members.iter_mut().find(|m| m.room == local && m.owner) {
                owner.queue(&Request::RoomCreate(RoomSpec {
                    name: Some(format!("bench room {room}")),
                    max_participants: Some(opts.size as u32),
                    ..RoomSpec::default()
                }));
            }
        }
        let size = opts.size;
        let all_joined = |s: &Shard| {
            s.members
                .iter()
                .all(|m| m.dead || (m.joined && m.peers + 1 >= size))
        };
        if !s.drive(
            &clock,
            Phase::Join,
            &opts,
            Instant::now() + opts.timeout,
            &all_joined,
        ) {
            failed = Some("not every participant joined in time".into());
        }
    }
    gates.joined.wait();
    // The main thread reads RSS and the counters, then opens the window.
    gates.chat.wait();
    let window = clock.window.lock().ok().and_then(|w| *w);
    if let Some(s) = shard.as_mut().filter(|_| failed.is_none())
        && let Some((start, end)) = window
    {
        let n = s.members.len().max(1) as u32;
        let step = interval(&opts);
        for (i, m) in s.members.iter_mut().enumerate() {
            // Spread each sender's schedule over one interval.
            m.due = Some(start + step * (i as u32) / n);
        }
        let never = |_: &Shard| false;
        s.drive(&clock, Phase::Chat, &opts, end, &never);
        // Every acknowledged message reaches every participant of its room.
        let drained = |s: &Shard| {
            let in_flight = s.members.iter().any(|m| !m.dead && !m.unacked.is_empty());
            let expected: u64 = s
                .rooms
                .iter()
                .map(|r| r.acknowledged * size_u64(&opts))
                .sum();
            !in_flight && s.counts.delivered >= expected
        };
        s.drive(&clock, Phase::Drain, &opts, end + opts.grace, &drained);
    }
    gates.drained.wait();
    match shard {
        Some(s) => ShardOut {
            counts: s.counts,
            failed,
            streams: s.members.into_iter().map(|m| m.stream).collect(),
        },
        None => ShardOut {
            counts: Counts::default(),
            failed,
            streams: Vec::new(),
        },
    }
}

fn size_u64(opts: &RoomsOptions) -> u64 {
    opts.size as u64
}

/// What [`run`] hands back to the workload: the figures, and hooks into the
/// phases for /proc and /metrics.
pub struct RoomsRun {
    pub chat: ChatFigures,
    pub errors: u64,
    pub first_error: Option<String>,
    pub participants: usize,
    pub sockets: Vec<TcpStream>,
}

/// Callbacks between the phases, run on the main thread while the clients wait.
pub trait Observer {
    /// Every client is logged in (before any room exists).
    fn logged_in(&mut self);
    /// Every participant is in its room and knows the others.
    fn joined(&mut self);
    /// The chat is over and drained.
    fn drained(&mut self);
}

/// Runs the workload against the daemon at `addr`.
///
/// # Errors
/// If a shard thread cannot start, or the clients cannot log in or join.
pub fn run(
    addr: SocketAddr,
    opts: &RoomsOptions,
    observer: &mut dyn Observer,
) -> io::Result<RoomsRun> {
    if opts.size < 2 {
        return Err(io::Error::other("a room needs at least 2 participants"));
    }
    let shards = opts.shards.clamp(1, opts.rooms.max(1));
    let gates = Arc::new(Gates {
        logged_in: Barrier::new(shards + 1),
        joined: Barrier::new(shards + 1),
        chat: Barrier::new(shards + 1),
        drained: Barrier::new(shards + 1),
    });
    let clock = Arc::new(Clock {
        epoch: Instant::now(),
        window: Mutex::new(None),
    });
    let mut handles = Vec::new();
    for s in 0..shards {
        let rooms: Vec<usize> = (s..opts.rooms).step_by(shards).collect();
        let (opts, clock, gates) = (opts.clone(), clock.clone(), gates.clone());
        handles.push(
            thread::Builder::new()
                .name(format!("rooms{s}"))
                .spawn(move || shard_main(addr, rooms, opts, clock, gates))?,
        );
    }
    gates.logged_in.wait();
    observer.logged_in();
    gates.joined.wait();
    observer.joined();
    let start = Instant::now();
    if let Ok(mut w) = clock.window.lock() {
        *w = Some((start, start + opts.duration));
    }
    gates.chat.wait();
    gates.drained.wait();
    observer.drained();
    let mut counts = Counts::default();
    let mut sockets = Vec::new();
    let mut failures = Vec::new();
    for h in handles {
        match h.join() {
            Ok(out) => {
                let c = out.counts;
                counts.errors += c.errors;
                if counts.first_error.is_none() {
                    counts.first_error = c.first_error;
                }
                counts.sent += c.sent;
                counts.acknowledged += c.acknowledged;
                counts.acknowledged_in_window += c.acknowledged_in_window;
                counts.delivered += c.delivered;
                counts.delivered_in_window += c.delivered_in_window;
                counts.out_of_order += c.out_of_order;
                counts.late_sends += c.late_sends;
                counts.latency.merge(c.latency);
                counts.ack_latency.merge(c.ack_latency);
                failures.extend(out.failed);
                sockets.extend(out.streams);
            }
            Err(_) => failures.push("a shard thread panicked".into()),
        }
    }
    if let Some(f) = failures.first() {
        return Err(io::Error::other(format!(
            "rooms: {f}{}",
            counts
                .first_error
                .as_ref()
                .map(|e| format!(" (first error: {e})"))
                .unwrap_or_default()
        )));
    }
    let secs = opts.duration.as_secs_f64();
    let expected = counts.acknowledged * opts.size as u64;
    let chat = ChatFigures {
        mode: if opts.rate.is_some() {
            "open loop"
        } else {
            "closed loop"
        },
        seconds: secs,
        sent: counts.sent,
        acknowledged: counts.acknowledged,
        messages_per_s: counts.acknowledged_in_window as f64 / secs.max(1e-9),
        delivered_per_s: counts.delivered_in_window as f64 / secs.max(1e-9),
        delivered: counts.delivered,
        lost: expected.saturating_sub(counts.delivered),
        out_of_order: counts.out_of_order,
        latency: counts.latency.percentiles(),
        ack_latency: counts.ack_latency.percentiles(),
        late_sends: counts.late_sends,
    };
    Ok(RoomsRun {
        chat,
        errors: counts.errors,
        first_error: counts.first_error,
        participants: opts.rooms * opts.size,
        sockets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message's send time survives padding and a trip through compact JSON.
    #[test]
    fn the_send_time_round_trips_through_the_text() {
        let text = chat_text(123_456_789, 100);
        assert_eq!(text.len(), 100);
        assert_eq!(parse_chat_text(&text), Some(123_456_789));
        assert_eq!(
            parse_chat_text(&chat_text(7, 1)),
            Some(7),
            "never truncated"
        );
        assert_eq!(parse_chat_text("hello"), None);
        let json =
            format!(r#"{{"room_id":"3","seq":42,"from_user_id":"1","text":"{text}","sent_at":1}}"#);
        assert_eq!(
            scan_str(&json, "text").and_then(parse_chat_text),
            Some(123_456_789)
        );
        assert_eq!(scan_u64(&json, "seq"), Some(42));
        assert_eq!(scan_u64(&json, "missing"), None);
    }

    /// The open loop spreads the total rate over every sender.
    #[test]
    fn the_open_loop_interval_shares_the_rate() {
        let opts = RoomsOptions {
            rooms: 250,
            size: 8,
            duration: Duration::from_secs(1),
            rate: Some(20_000.0),
            text: 100,
            shards: 2,
            grace: Duration::from_secs(2),
            timeout: Duration::from_secs(60),
        };
        assert_eq!(interval(&opts), Duration::from_millis(100));
    }
}
