//! The call-setup workload: CALL_REQUEST to the last ICE candidate of a
//! scripted call (ring, accept, offer, answer, candidates both ways), repeated.

use std::io;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::client::Client;
use super::daemon::{SECRET, username};
use super::relay::{pair_users, place_call};
use super::stats::{Latencies, Percentiles};
use crate::tcp::message::{Hangup, IceCandidate, MessageType, Request, Sdp};

/// Candidates each side sends per call.
pub const CANDIDATES: usize = 4;

#[derive(Debug, Clone)]
pub struct SetupOptions {
    pub pairs: usize,
    pub calls_per_pair: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct SetupFigures {
    pub pairs: usize,
    pub calls: u64,
    pub seconds: f64,
    pub calls_per_s: f64,
    pub setup: Percentiles,
    pub errors: u64,
}

/// An SDP body of a typical size (about 1.2 KB) for one audio and one video section.
fn fake_sdp(kind: &str) -> String {
    let mut sdp =
        format!("v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns={kind}\r\nt=0 0\r\n");
    for media in [
        "audio 9 UDP/TLS/RTP/SAVPF 111",
        "video 9 UDP/TLS/RTP/SAVPF 96 97",
    ] {
        sdp.push_str(&format!("m={media}\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:bench\r\na=ice-pwd:benchbenchbenchbenchbench\r\na=fingerprint:sha-256 "));
        sdp.push_str(&"AB:".repeat(31));
        sdp.push_str("AB\r\na=setup:actpass\r\na=rtcp-mux\r\n");
        sdp.push_str(&"a=rtpmap:111 opus/48000/2\r\n".repeat(12));
    }
    sdp
}

fn ice(call_id: &str, n: usize) -> Request {
    Request::IceCandidate(IceCandidate {
        call_id: Some(call_id.into()),
        room_id: None,
        from_user_id: String::new(),
        to_user_id: String::new(),
        candidate: format!("candidate:{n} 1 udp 2122260223 10.0.0.{n} 5000{n} typ host"),
        sdp_mid: Some("0".into()),
        sdp_mline_index: 0,
        req_id: None,
    })
}

fn sdp(call_id: &str, body: &str) -> Sdp {
    Sdp {
        call_id: Some(call_id.into()),
        room_id: None,
        from_user_id: String::new(),
        to_user_id: String::new(),
        sdp: body.into(),
        req_id: None,
    }
}

/// One scripted call; returns the time from CALL_REQUEST to the last candidate received.
fn one_call(
    caller: &mut Client,
    callee: &mut Client,
    callee_id: &str,
    offer: &str,
    answer: &str,
) -> io::Result<Duration> {
    let start = Instant::now();
    let call_id = place_call(caller, callee, callee_id)?;
    caller.send(&Request::SdpOffer(sdp(&call_id, offer)))?;
    callee.expect(MessageType::SdpOffer, 20)?;
    callee.send(&Request::SdpAnswer(sdp(&call_id, answer)))?;
    caller.expect(MessageType::SdpAnswer, 20)?;
    for n in 0..CANDIDATES {
        caller.send(&ice(&call_id, n))?;
        callee.send(&ice(&call_id, n))?;
    }
    for _ in 0..CANDIDATES {
        callee.expect(MessageType::IceCandidate, 20)?;
        caller.expect(MessageType::IceCandidate, 20)?;
    }
    let took = start.elapsed();
    caller.send(&Request::Hangup(Hangup {
        call_id: Some(call_id),
        req_id: None,
    }))?;
    callee.expect(MessageType::Hangup, 20)?;
    Ok(took)
}

/// Runs `calls_per_pair` calls on each of `pairs` pairs in parallel.
///
/// # Errors
/// If a pair cannot log in or a thread cannot start.
pub fn run(addr: SocketAddr, opts: &SetupOptions) -> io::Result<SetupFigures> {
    let start = Instant::now();
    let mut handles = Vec::new();
    for i in 0..opts.pairs {
        let calls = opts.calls_per_pair;
        handles.push(thread::Builder::new().name(format!("setup{i}")).spawn(
            move || -> io::Result<(Latencies, u64)> {
                let (a, b) = pair_users(i);
                let mut caller = Client::connect(addr)?;
                let mut callee = Client::connect(addr)?;
                for c in [&caller, &callee] {
                    c.set_read_timeout(Some(Duration::from_millis(500)))?;
                }
                caller.login(&username(a), SECRET)?;
                let callee_id = callee.login(&username(b), SECRET)?;
                let (offer, answer) = (fake_sdp("offer"), fake_sdp("answer"));
                let mut lat = Latencies::default();
                let mut errors = 0;
                for _ in 0..calls {
                    match one_call(&mut caller, &mut callee, &callee_id, &offer, &answer) {
                        Ok(d) => lat.record(d.as_nanos() as u64),
                        Err(_) => {
                            errors += 1;
                            break;
                        }
                    }
                }
                Ok((lat, errors))
            },
        )?);
    }
    let mut all = Latencies::default();
    let mut errors = 0;
    for h in handles {
        match h.join() {
            Ok(Ok((lat, e))) => {
                all.merge(lat);
                errors += e;
            }
            Ok(Err(e)) => return Err(io::Error::other(format!("setup pair: {e}"))),
            Err(_) => errors += 1,
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let calls = all.len() as u64;
    Ok(SetupFigures {
        pairs: opts.pairs,
        calls,
        seconds,
        calls_per_s: calls as f64 / seconds,
        setup: all.percentiles(),
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scripted SDP is of the size a browser sends, not a toy string.
    #[test]
    fn the_scripted_sdp_is_realistically_sized() {
        let len = fake_sdp("offer").len();
        assert!((1000..4000).contains(&len), "{len}");
    }
}
