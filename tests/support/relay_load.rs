//! A call's relays under load, over plain TCP or TLS: the check that
//! write-through (a relay written to an idle peer's stream by the sender's
//! thread) keeps every relay whole and in order, even when a write stops
//! part-way and the peer's thread must finish it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard::config::Config;
use switchboard::tcp::MessageType as T;

use super::{Client, Stream, TestServer, connect_call, encode};

/// The server settings the load needs: 8 MB relays, a queue that holds
/// them, and no frame rate limit.
pub fn config(c: &mut Config) {
    c.max_frame_bytes = 16 << 20;
    c.outbound_queue_bytes = 64 << 20;
    c.limits.frames_per_second = 1e6;
    c.limits.frame_burst = 1_000_000;
}

/// On a server set up with [`config`], with two connected clients (`bob`
/// reading through a small receive buffer): a relay to an idle peer is
/// written through by the sender's thread
/// (`switchboard_relays_written_through_total` rises), and under load the
/// relays arrive whole and in order: ICE candidates both ways, and SDP
/// bodies of 8 MB, more than a socket's send buffer grows to (4 MB on
/// Linux by default), to bob, who reads slowly while sending HEARTBEATs. A
/// sender's write of such a relay stops part-way (over TLS, OpenSSL holds
/// a record of the rest and must be handed the same bytes again), and
/// bob's thread must finish it before anything else: its own HEARTBEAT
/// answers, or what was queued meanwhile.
pub fn run(server: &TestServer, mut alice: Client, mut bob: Client) {
    let written_through = || {
        let running = server.running.as_ref().expect("running");
        running
            .server
            .observer()
            .metrics()
            .written_through
            .load(Ordering::Relaxed)
    };
    alice.register("alice", "pw");
    alice.login_ok("alice", "pw");
    let bob_id = bob.register("bob", "pw");
    bob.login_ok("bob", "pw");
    let call_id = connect_call(&mut alice, &mut bob, &bob_id);
    alice.barrier();
    bob.barrier();

    // A relay that reaches bob's thread between its last write and its
    // saying so (a preemption on a busy machine) is queued, not written
    // through: a pause between relays leaves it time, and one written
    // through is enough to show the path is taken.
    let before = written_through();
    for i in 0..20 {
        std::thread::sleep(Duration::from_millis(5));
        let candidate = format!("idle {i}");
        alice.send(
            T::IceCandidate,
            json!({"call_id": call_id, "candidate": candidate, "sdp_mid": "0", "sdp_mline_index": 0}),
        );
        assert_eq!(bob.expect(T::IceCandidate).str("candidate"), candidate);
    }
    let idle = written_through() - before;
    assert!(
        idle >= 1,
        "none of 20 relays to an idle peer was written through"
    );

    // Each side's script: ICE candidates with HEARTBEATs and a few SDP
    // bodies among them, in segments; what the peer must receive, in order.
    // A segment that starts with an SDP waits until the peer has received
    // everything before it: the peer's thread is then idle, and the SDP is
    // written through by the sender's thread (part-way, when it is 8 MB).
    let script = |who: &str, sdp_kind: T, sdp_at: &[(usize, usize)]| {
        let mut segments = vec![(0, Vec::new())];
        let mut relayed = Vec::new();
        for i in 0..600 {
            if let Some((_, lines)) = sdp_at.iter().find(|(at, _)| *at == i) {
                let sdp = format!("{who} {i} {}", "sdp line ".repeat(*lines));
                let frame = encode(sdp_kind, &json!({"call_id": call_id, "sdp": sdp}));
                segments.push((relayed.len(), frame));
                relayed.push((sdp_kind.code(), sdp));
            }
            let candidate =
                format!("{who} {i} candidate:1 1 udp 2122260223 192.0.2.1 5000 typ host");
            let segment = &mut segments.last_mut().expect("a segment").1;
            segment.extend(encode(
                T::IceCandidate,
                &json!({"call_id": call_id, "candidate": candidate, "sdp_mid": "0", "sdp_mline_index": 0}),
            ));
            relayed.push((T::IceCandidate.code(), candidate));
            if i % 50 == 0 {
                segment.extend(encode(T::Heartbeat, &json!({"timestamp": i})));
            }
        }
        (segments, relayed)
    };
    let big = 900_000;
    let (alice_out, to_bob) = script(
        "alice",
        T::SdpOffer,
        &[(100, big), (300, 20_000), (500, big)],
    );
    let (bob_out, to_alice) = script("bob", T::SdpAnswer, &[(200, 20_000)]);
    let (alice_got, bob_got) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let (alice_stream, alice_tcp) = alice.into_stream();
    let (bob_stream, bob_tcp) = bob.into_stream();
    std::thread::scope(|s| {
        let a = s.spawn(|| {
            let alice = Peer {
                stream: alice_stream,
                tcp: &alice_tcp,
                got: &alice_got,
                slow: false,
            };
            alice.drive(&alice_out, &to_alice, &bob_got)
        });
        let b = s.spawn(|| {
            let bob = Peer {
                stream: bob_stream,
                tcp: &bob_tcp,
                got: &bob_got,
                slow: true,
            };
            bob.drive(&bob_out, &to_bob, &alice_got)
        });
        for (who, result) in [("alice", a.join()), ("bob", b.join())] {
            if let Err(err) = result.expect("driver thread") {
                panic!("{who}: {err}");
            }
        }
    });
    assert_eq!(server.stats().calls, 1, "both still in the call");
}

/// One side of the loaded call, on a non-blocking stream.
struct Peer<'a> {
    stream: Box<dyn Stream>,
    tcp: &'a TcpStream,
    /// Relays received so far, for the peer's gates.
    got: &'a AtomicUsize,
    /// Reads at most 8 KiB a millisecond.
    slow: bool,
}

impl Peer<'_> {
    /// Writes the segments (each once the peer has received as many relays
    /// as it says) and reads at the same time until every frame of `relayed`
    /// has arrived, in order and byte for byte, and a HEARTBEAT answer for
    /// each one sent.
    fn drive(
        mut self,
        segments: &[(usize, Vec<u8>)],
        relayed: &[(u8, String)],
        peer_got: &AtomicUsize,
    ) -> Result<(), String> {
        use std::io::ErrorKind::WouldBlock;
        self.tcp.set_nonblocking(true).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(120);
        // HEARTBEATs: 12 in the script, and the slow side sends 20 more
        // whenever it has nothing else to write, so that its thread is busy
        // answering while relays (and rests of relays) arrive for it.
        let (mut heartbeats, mut beats) = (12, 0);
        let (mut segment, mut next) = (0, 0);
        let (mut out, mut pos) = (Vec::new(), 0);
        let mut inbuf = Vec::new();
        while segment < segments.len()
            || pos < out.len()
            || next < relayed.len()
            || beats < heartbeats
        {
            if Instant::now() > deadline {
                return Err(format!(
                    "timed out: at segment {segment} of {}, got {next} of {} relays and {beats} of {heartbeats} heartbeats",
                    segments.len(),
                    relayed.len()
                ));
            }
            let mut moved = false;
            if pos == out.len() {
                if let Some((gate, bytes)) = segments.get(segment)
                    && peer_got.load(Ordering::SeqCst) >= *gate
                {
                    (out, pos, segment) = (bytes.clone(), 0, segment + 1);
                } else if self.slow && next < relayed.len() {
                    (out, pos) = (Vec::new(), 0);
                    for _ in 0..20 {
                        let beat = json!({"timestamp": heartbeats});
                        out.extend(encode(T::Heartbeat, &beat));
                        heartbeats += 1;
                    }
                }
            }
            if pos < out.len() {
                // After WouldBlock TLS must be given the same bytes again: it is.
                match self.stream.write(&out[pos..]) {
                    Ok(n) => {
                        pos += n;
                        moved = true;
                    }
                    Err(e) if e.kind() == WouldBlock => {}
                    Err(e) => return Err(format!("write: {e}")),
                }
            }
            let budget = if self.slow { 8 << 10 } else { 1 << 20 };
            let mut chunk = [0u8; 16 * 1024];
            let mut read = 0;
            while read < budget {
                let want = chunk.len().min(budget - read);
                match self.stream.read(&mut chunk[..want]) {
                    Ok(0) => return Err("the server closed the connection".into()),
                    Ok(n) => {
                        inbuf.extend_from_slice(&chunk[..n]);
                        read += n;
                        moved = true;
                    }
                    Err(e) if e.kind() == WouldBlock => break,
                    Err(e) => return Err(format!("read: {e}")),
                }
            }
            while inbuf.len() >= 5 {
                let len = u32::from_be_bytes([inbuf[0], inbuf[1], inbuf[2], inbuf[3]]) as usize;
                if inbuf.len() < 4 + len {
                    break;
                }
                let kind = inbuf[4];
                let body: serde_json::Value =
                    serde_json::from_slice(&inbuf[5..4 + len]).map_err(|e| {
                        format!("after relay {next}: not JSON ({e}): the stream is corrupt")
                    })?;
                inbuf.drain(..4 + len);
                let text = if kind == T::IceCandidate.code() {
                    body["candidate"].as_str()
                } else if kind == T::SdpOffer.code() || kind == T::SdpAnswer.code() {
                    body["sdp"].as_str()
                } else if kind == T::Heartbeat.code() {
                    beats += 1;
                    continue;
                } else if kind == T::Error.code() {
                    return Err(format!("ERROR {body}"));
                } else {
                    continue;
                };
                let Some((want_kind, want)) = relayed.get(next) else {
                    return Err(format!("an extra relay of type 0x{kind:02X}"));
                };
                if kind != *want_kind || text != Some(want.as_str()) {
                    return Err(format!(
                        "relay {next}: got type 0x{kind:02X} starting {:?}, expected 0x{want_kind:02X} starting {:?}",
                        text.map(|t| &t[..t.len().min(40)]),
                        &want[..want.len().min(40)]
                    ));
                }
                next += 1;
                self.got.store(next, Ordering::SeqCst);
            }
            if self.slow || !moved {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    }
}
