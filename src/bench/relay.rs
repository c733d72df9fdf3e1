//! The relay workload: callers send ICE_CANDIDATE probes, callees echo them,
//! callers time the round trip (two relay hops), against Switchboard or the floor.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::client::{Client, parse_probe, probe_text};
use super::floor::{HELLO, PAIRED};
use super::stats::{Latencies, Percentiles, Sequencer};
use crate::tcp::frame;
use crate::tcp::message::{
    CallRequest, CallResponse, IceCandidate, MessageType, Request, ServerMessage,
};

/// Where the pairs connect.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// The daemon, with users `bench0..` (caller `2i`, callee `2i+1`) in its users.txt.
    Switchboard(SocketAddr),
    Floor(SocketAddr),
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Switchboard(_) => "switchboard",
            Target::Floor(_) => "floor",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RelayOptions {
    pub pairs: usize,
    pub duration: Duration,
    /// Length of the candidate text of each probe.
    pub size: usize,
    /// Total probes per second over all pairs; `None` is the closed loop.
    pub rate: Option<f64>,
    /// How long callers wait for stragglers after the last send (open loop).
    pub grace: Duration,
    /// Lets another thread see when the probes start and end the run early
    /// (`relay-storm`); `None` runs for `duration`.
    pub control: Option<Arc<RunControl>>,
    /// Connect to the daemon over TLS with this connector (closed loop only:
    /// the open loop writes from a second thread). The floor is always plain.
    pub tls: Option<native_tls::TlsConnector>,
}

/// Shared with a run in progress: `started` is set when the probes start,
/// `stop` ends the run before its `duration` is up.
#[derive(Debug, Default)]
pub struct RunControl {
    pub started: OnceLock<Instant>,
    pub stop: AtomicBool,
}

impl RelayOptions {
    fn stopped(&self) -> bool {
        self.control
            .as_ref()
            .is_some_and(|c| c.stop.load(Ordering::Relaxed))
    }
}

/// Every round trip of a run with its send time, to split a run into phases.
#[derive(Debug, Default)]
pub struct Samples {
    /// The clock the send times count from.
    pub epoch: Option<Instant>,
    /// (send time in ns since `epoch`, round trip in ns); open loop: the intended send time.
    pub timed: Vec<(u64, u64)>,
}

impl Samples {
    /// The round trips sent in `[from, to)`.
    pub fn between(&self, from: Instant, to: Instant) -> Latencies {
        let mut l = Latencies::default();
        let Some(epoch) = self.epoch else { return l };
        let ns = |t: Instant| t.saturating_duration_since(epoch).as_nanos() as u64;
        let (from, to) = (ns(from), ns(to));
        for &(sent, rtt) in &self.timed {
            if (from..to).contains(&sent) {
                l.record(rtt);
            }
        }
        l
    }
}

/// What one run against one target measured.
#[derive(Debug, Clone, Serialize)]
pub struct RelayFigures {
    pub target: &'static str,
    pub mode: &'static str,
    pub pairs: usize,
    pub size: usize,
    pub target_rate: Option<f64>,
    pub seconds: f64,
    pub sent: u64,
    pub received: u64,
    /// Round trips completed per second (each is two relayed frames).
    pub round_trips_per_s: f64,
    pub relayed_msgs_per_s: f64,
    pub rtt: Percentiles,
    pub errors: u64,
    pub lost: u64,
    pub reordered: u64,
    /// Open loop: sends that left more than 1 ms after their intended time.
    pub late_sends: u64,
}

#[derive(Default)]
struct PairResult {
    latencies: Latencies,
    timed: Vec<(u64, u64)>,
    sent: u64,
    seq: Sequencer,
    errors: u64,
    late: u64,
}

/// Nanoseconds since `epoch`, the clock carried inside probes.
fn since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

fn probe(call_id: &str, seq: u64, sent_ns: u64, size: usize) -> Vec<u8> {
    Request::IceCandidate(IceCandidate {
        call_id: Some(call_id.into()),
        room_id: None,
        from_user_id: String::new(),
        to_user_id: String::new(),
        candidate: probe_text(seq, sent_ns, size),
        sdp_mid: Some("0".into()),
        sdp_mline_index: 0,
        req_id: None,
    })
    .to_frame()
}

/// A relayed frame that is an ICE probe: its `(seq, sent_ns)`; `Err` for an ERROR frame.
fn read_probe(kind: u8, payload: &[u8]) -> Result<Option<(u64, u64)>, ()> {
    if kind == MessageType::Error.code() {
        return Err(());
    }
    if kind != MessageType::IceCandidate.code() {
        return Ok(None);
    }
    match ServerMessage::decode(kind, payload) {
        Ok(ServerMessage::IceCandidate(ice)) => parse_probe(&ice.candidate).map(Some).ok_or(()),
        _ => Err(()),
    }
}

/// The frame a callee sends back for a relayed ICE_CANDIDATE: the same
/// candidate over the same call. `None` if the frame is not an ICE candidate.
pub fn echo_of(kind: u8, payload: &[u8]) -> Option<Vec<u8>> {
    if kind != MessageType::IceCandidate.code() {
        return None;
    }
    let Ok(ServerMessage::IceCandidate(ice)) = ServerMessage::decode(kind, payload) else {
        return None;
    };
    Some(
        Request::IceCandidate(IceCandidate {
            from_user_id: String::new(),
            to_user_id: String::new(),
            req_id: None,
            ..ice
        })
        .to_frame(),
    )
}

/// Connects pair `i` and returns (caller, callee, call_id).
fn connect_pair(
    target: Target,
    i: usize,
    tls: Option<&native_tls::TlsConnector>,
) -> io::Result<(Client, Client, String)> {
    match target {
        Target::Floor(addr) => {
            let key = format!("pair{i}");
            let mut caller = Client::connect(addr)?;
            let mut callee = Client::connect(addr)?;
            caller.send_raw(&frame::encode(HELLO, key.as_bytes()))?;
            callee.send_raw(&frame::encode(HELLO, key.as_bytes()))?;
            for c in [&mut caller, &mut callee] {
                c.set_read_timeout(Some(Duration::from_secs(30)))?;
                match c.recv()? {
                    Some((PAIRED, _)) => {}
                    other => return Err(io::Error::other(format!("floor answered {other:?}"))),
                }
            }
            Ok((caller, callee, "floor".into()))
        }
        Target::Switchboard(addr) => {
            let (a, b) = pair_users(i);
            let mut caller = Client::connect_with(addr, tls)?;
            let mut callee = Client::connect_with(addr, tls)?;
            for c in [&caller, &callee] {
                c.set_read_timeout(Some(Duration::from_millis(500)))?;
            }
            caller.login(&super::daemon::username(a), super::daemon::SECRET)?;
            let callee_id = callee.login(&super::daemon::username(b), super::daemon::SECRET)?;
            let call_id = place_call(&mut caller, &mut callee, &callee_id)?;
            Ok((caller, callee, call_id))
        }
    }
}

/// The users of pair `i`: caller and callee indexes.
pub fn pair_users(i: usize) -> (usize, usize) {
    (2 * i, 2 * i + 1)
}

/// CALL_REQUEST, CALL_NOTIFICATION, CALL_RESPONSE accepted, CALL_ACCEPTED; returns the call id.
///
/// # Errors
/// If any step fails or answers something else.
pub fn place_call(caller: &mut Client, callee: &mut Client, callee_id: &str) -> io::Result<String> {
    caller.send(&Request::Call(CallRequest {
        to_user_id: callee_id.into(),
        req_id: None,
    }))?;
    let call_id = match callee.expect(MessageType::CallNotification, 60)? {
        ServerMessage::CallNotification(n) => n.call_id,
        other => return Err(io::Error::other(format!("{other:?}"))),
    };
    callee.send(&Request::CallResponse(CallResponse {
        call_id: call_id.clone(),
        accepted: true,
        req_id: None,
    }))?;
    caller.expect(MessageType::CallAccepted, 60)?;
    Ok(call_id)
}

/// Echoes every ICE probe back until `stop`; returns the ERROR frames seen.
fn echo_loop(mut callee: Client, stop: &AtomicBool) -> u64 {
    let mut errors = 0;
    if callee
        .set_read_timeout(Some(Duration::from_millis(50)))
        .is_err()
    {
        return 1;
    }
    while !stop.load(Ordering::Relaxed) {
        match callee.recv() {
            Ok(Some((kind, payload))) => {
                if kind == MessageType::Error.code() {
                    errors += 1;
                } else if let Some(echo) = echo_of(kind, &payload)
                    && callee.send_raw(&echo).is_err()
                {
                    return errors + 1;
                }
            }
            Ok(None) => {}
            // The floor passes a caller's close on as end of stream: the pair is done.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return errors,
            Err(_) => return errors + 1,
        }
    }
    errors
}

fn closed_loop(
    caller: &mut Client,
    call_id: &str,
    opts: &RelayOptions,
    epoch: Instant,
    end: Instant,
) -> PairResult {
    let mut r = PairResult::default();
    if caller
        .set_read_timeout(Some(Duration::from_millis(100)))
        .is_err()
    {
        r.errors += 1;
        return r;
    }
    while Instant::now() < end && !opts.stopped() {
        let seq = r.sent;
        let sent_ns = since(epoch);
        if caller
            .send_raw(&probe(call_id, seq, sent_ns, opts.size))
            .is_err()
        {
            r.errors += 1;
            return r;
        }
        r.sent += 1;
        let give_up = Instant::now() + Duration::from_secs(5);
        loop {
            match caller.recv() {
                Ok(Some((kind, payload))) => match read_probe(kind, &payload) {
                    Ok(Some((got, t))) => {
                        let now = since(epoch);
                        r.seq.observe(got);
                        if got == seq {
                            r.latencies.record(now.saturating_sub(t));
                            r.timed.push((t, now.saturating_sub(t)));
                            break;
                        }
                    }
                    Ok(None) => {}
                    Err(()) => r.errors += 1,
                },
                Ok(None) if Instant::now() > give_up => break,
                Ok(None) => {}
                Err(_) => {
                    r.errors += 1;
                    return r;
                }
            }
        }
    }
    r
}

fn open_loop(
    mut caller: Client,
    call_id: &str,
    opts: &RelayOptions,
    index: usize,
    epoch: Instant,
    start: Instant,
    end: Instant,
) -> PairResult {
    let mut r = PairResult::default();
    let rate = opts.rate.unwrap_or(1.0).max(1e-3);
    let interval = Duration::from_secs_f64(opts.pairs as f64 / rate);
    // Pairs are spread over one interval so the sends do not come in bursts.
    let offset = interval.mul_f64(index as f64 / opts.pairs as f64);
    let mut writer = match caller.writer() {
        Ok(w) => w,
        Err(_) => {
            r.errors += 1;
            return r;
        }
    };
    let sent = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (sent, done, grace) = (sent.clone(), done.clone(), opts.grace);
        thread::spawn(move || {
            let mut r = PairResult::default();
            if caller
                .set_read_timeout(Some(Duration::from_millis(50)))
                .is_err()
            {
                r.errors += 1;
                return r;
            }
            let mut done_at = None;
            loop {
                if done_at.is_none() && done.load(Ordering::Acquire) {
                    done_at = Some(Instant::now());
                }
                if let Some(at) = done_at
                    && (r.seq.received >= sent.load(Ordering::Acquire) || at.elapsed() > grace)
                {
                    return r;
                }
                match caller.recv() {
                    Ok(Some((kind, payload))) => match read_probe(kind, &payload) {
                        Ok(Some((seq, t))) => {
                            let rtt = since(epoch).saturating_sub(t);
                            r.latencies.record(rtt);
                            r.timed.push((t, rtt));
                            r.seq.observe(seq);
                        }
                        Ok(None) => {}
                        Err(()) => r.errors += 1,
                    },
                    Ok(None) => {}
                    Err(_) => {
                        r.errors += 1;
                        return r;
                    }
                }
            }
        })
    };
    let first = start + offset;
    for k in 0.. {
        let intended = first + interval * k;
        if intended >= end || opts.stopped() {
            break;
        }
        let now = Instant::now();
        if intended > now {
            thread::sleep(intended - now);
        } else if now - intended > Duration::from_millis(1) {
            r.late += 1;
        }
        let t = intended.saturating_duration_since(epoch).as_nanos() as u64;
        if std::io::Write::write_all(&mut writer, &probe(call_id, u64::from(k), t, opts.size))
            .is_err()
        {
            r.errors += 1;
            break;
        }
        r.sent += 1;
        sent.store(r.sent, Ordering::Release);
    }
    done.store(true, Ordering::Release);
    match receiver.join() {
        Ok(got) => {
            r.latencies = got.latencies;
            r.timed = got.timed;
            r.seq = got.seq;
            r.errors += got.errors;
        }
        Err(_) => r.errors += 1,
    }
    r
}

/// Runs the relay workload against `target`.
///
/// # Errors
/// If pairs cannot be set up (threads, connections, logins, calls).
pub fn run(target: Target, opts: &RelayOptions) -> io::Result<RelayFigures> {
    run_timed(target, opts).map(|(figures, _)| figures)
}

/// [`run`], also returning every round trip with its send time.
///
/// # Errors
/// As [`run`].
pub fn run_timed(target: Target, opts: &RelayOptions) -> io::Result<(RelayFigures, Samples)> {
    let epoch = Instant::now();
    let pairs = opts.pairs;
    let ready = Arc::new(Barrier::new(pairs + 1));
    let start_cell = Arc::new(OnceLock::<Instant>::new());
    let stop_echo = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::with_capacity(pairs);
    for i in 0..pairs {
        let (ready, start_cell, stop_echo, opts) = (
            ready.clone(),
            start_cell.clone(),
            stop_echo.clone(),
            opts.clone(),
        );
        let handle = thread::Builder::new()
            .name(format!("pair{i}"))
            .stack_size(256 * 1024)
            .spawn(
                move || -> io::Result<(PairResult, thread::JoinHandle<u64>)> {
                    let connected = connect_pair(target, i, opts.tls.as_ref());
                    ready.wait();
                    let (mut caller, callee, call_id) = connected?;
                    let stop = stop_echo.clone();
                    let echo = thread::Builder::new()
                        .stack_size(256 * 1024)
                        .spawn(move || echo_loop(callee, &stop))?;
                    let start = *start_cell.wait();
                    let end = start + opts.duration;
                    let result = match opts.rate {
                        None => closed_loop(&mut caller, &call_id, &opts, epoch, end),
                        Some(_) => open_loop(caller, &call_id, &opts, i, epoch, start, end),
                    };
                    Ok((result, echo))
                },
            )?;
        handles.push(handle);
    }
    ready.wait();
    let start = Instant::now();
    let _ = start_cell.set(start);
    if let Some(control) = &opts.control {
        let _ = control.started.set(start);
    }
    let mut total = PairResult::default();
    let mut echoes = Vec::new();
    let mut setup_error = None;
    let mut received = 0;
    for h in handles {
        match h.join() {
            Ok(Ok((r, echo))) => {
                total.latencies.merge(r.latencies);
                total.timed.extend(r.timed);
                total.sent += r.sent;
                received += r.seq.received;
                total.seq.reordered += r.seq.reordered;
                total.errors += r.errors;
                total.late += r.late;
                echoes.push(echo);
            }
            Ok(Err(e)) => setup_error = Some(e),
            Err(_) => total.errors += 1,
        }
    }
    // A run ended early (`RunControl::stop`) counts the time it ran.
    let seconds = opts.duration.min(start.elapsed()).as_secs_f64();
    stop_echo.store(true, Ordering::Relaxed);
    for e in echoes {
        total.errors += e.join().unwrap_or(1);
    }
    if let Some(e) = setup_error {
        return Err(io::Error::other(format!(
            "{} pair setup: {e}",
            target.name()
        )));
    }
    let completed = total.latencies.len() as u64;
    let figures = RelayFigures {
        target: target.name(),
        mode: if opts.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        pairs,
        size: opts.size,
        target_rate: opts.rate,
        seconds,
        sent: total.sent,
        received,
        round_trips_per_s: completed as f64 / seconds,
        relayed_msgs_per_s: 2.0 * completed as f64 / seconds,
        rtt: total.latencies.percentiles(),
        errors: total.errors,
        lost: total.sent.saturating_sub(received),
        reordered: total.seq.reordered,
        late_sends: total.late,
    };
    let samples = Samples {
        epoch: Some(epoch),
        timed: total.timed,
    };
    Ok((figures, samples))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relayed probe is echoed as the same candidate over the same call, and nothing else is.
    #[test]
    fn the_echo_keeps_the_call_and_the_candidate() {
        let sent = probe("42", 9, 1234, 64);
        let (kind, payload) = match frame::decode(&sent, 1 << 20) {
            Ok(Some((frame::Decoded::Frame { kind, payload }, _))) => (kind, payload.to_vec()),
            other => panic!("{other:?}"),
        };
        let echo = echo_of(kind, &payload).unwrap();
        assert_eq!(echo, sent);
        assert_eq!(read_probe(kind, &payload), Ok(Some((9, 1234))));
        assert_eq!(echo_of(MessageType::Heartbeat.code(), b"{}"), None);
        assert_eq!(read_probe(MessageType::Error.code(), b"{}"), Err(()));
    }

    /// Pair `i` uses two users of its own; no two pairs share one.
    #[test]
    fn pairs_use_distinct_users() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..100 {
            let (a, b) = pair_users(i);
            assert!(seen.insert(a) && seen.insert(b));
        }
    }
}
