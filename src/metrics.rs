//! Counters and histograms for operators, rendered in the Prometheus text format.
//!
//! Everything is a relaxed atomic: counting never takes a lock and never
//! blocks a connection thread.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const ERROR_CODES: [u16; 9] = [400, 401, 403, 404, 409, 413, 429, 500, 503];
/// Upper bounds of the histogram buckets, in seconds.
const BUCKETS: [f64; 16] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0,
];

/// A cumulative histogram of durations.
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Gauges read from the server's state when metrics are rendered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub connections_open: usize,
    pub users_logged_in: usize,
    pub calls_ringing: usize,
    pub calls_active: usize,
    /// Frames encoded for delivery; a broadcast counts once, whatever its recipients.
    pub frames_encoded: u64,
    pub rooms: usize,
    pub room_participants: usize,
}

/// Why joins were refused, as the metric labels them (domain `Refusal`).
pub const ROOM_REFUSALS: [&str; 5] = ["banned", "not_invited", "password", "full", "already_in"];

/// Every counter the daemon keeps.
pub struct Metrics {
    pub connections_total: AtomicU64,
    pub frames_in: [AtomicU64; 256],
    pub frames_out: [AtomicU64; 256],
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    errors: [AtomicU64; ERROR_CODES.len()],
    pub slow_consumer_disconnects: AtomicU64,
    /// Relayed frames the sender wrote to the recipient's socket itself.
    pub written_through: AtomicU64,
    /// Presence batches broadcast (each reaches every connection online).
    pub presence_batches: AtomicU64,
    /// Times a connection's thread took frames other threads queued for it.
    pub outbox_drains: AtomicU64,
    pub failed_logins: AtomicU64,
    pub calls_total: AtomicU64,
    /// Logins by RESUME (no bcrypt).
    pub resumes: AtomicU64,
    /// RESUMEs refused (forged, expired or revoked token).
    pub resumes_refused: AtomicU64,
    /// Calls held for a resume after a connection dropped.
    pub calls_held: AtomicU64,
    pub guest_logins: AtomicU64,
    /// Room chat messages stored and delivered.
    pub room_messages: AtomicU64,
    /// Room joins refused, by [`ROOM_REFUSALS`].
    room_refusals: [AtomicU64; ROOM_REFUSALS.len()],
    pub hash_wait: Histogram,
    pub relay_time: Histogram,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            connections_total: AtomicU64::new(0),
            frames_in: std::array::from_fn(|_| AtomicU64::new(0)),
            frames_out: std::array::from_fn(|_| AtomicU64::new(0)),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            slow_consumer_disconnects: AtomicU64::new(0),
            written_through: AtomicU64::new(0),
            presence_batches: AtomicU64::new(0),
            outbox_drains: AtomicU64::new(0),
            failed_logins: AtomicU64::new(0),
            calls_total: AtomicU64::new(0),
            resumes: AtomicU64::new(0),
            resumes_refused: AtomicU64::new(0),
            calls_held: AtomicU64::new(0),
            guest_logins: AtomicU64::new(0),
            room_messages: AtomicU64::new(0),
            room_refusals: std::array::from_fn(|_| AtomicU64::new(0)),
            hash_wait: Histogram::default(),
            relay_time: Histogram::default(),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    pub fn count(counter: &AtomicU64) {
        bump(counter);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one error answered with `code` (ERROR frames and failed LOGIN/REGISTER).
    pub fn error(&self, code: u16) {
        if let Some(i) = ERROR_CODES.iter().position(|c| *c == code) {
            bump(&self.errors[i]);
        }
    }

    /// Counts a refused room join; `reason` is one of [`ROOM_REFUSALS`].
    pub fn room_join_refused(&self, reason: &str) {
        if let Some(i) = ROOM_REFUSALS.iter().position(|r| *r == reason) {
            bump(&self.room_refusals[i]);
        }
    }

    pub fn errors_with(&self, code: u16) -> u64 {
        ERROR_CODES
            .iter()
            .position(|c| *c == code)
            .map_or(0, |i| self.errors[i].load(Ordering::Relaxed))
    }

    /// The Prometheus text exposition (format 0.0.4). `type_name` names a
    /// message type code for the frame counters' labels.
    pub fn render(&self, gauges: Gauges, type_name: impl Fn(u8) -> Option<&'static str>) -> String {
        let mut out = String::with_capacity(8192);
        let gauge = |out: &mut String, name: &str, help: &str, v: usize| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let v = v.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        gauge(
            &mut out,
            "switchboard_connections_open",
            "Client connections open now.",
            gauges.connections_open,
        );
        counter(
            &mut out,
            "switchboard_connections_total",
            "Client connections accepted since start.",
            &self.connections_total,
        );
        gauge(
            &mut out,
            "switchboard_users_logged_in",
            "Users logged in now.",
            gauges.users_logged_in,
        );
        gauge(
            &mut out,
            "switchboard_calls_ringing",
            "Calls ringing now.",
            gauges.calls_ringing,
        );
        gauge(
            &mut out,
            "switchboard_calls_active",
            "Calls accepted and not yet ended.",
            gauges.calls_active,
        );
        let _ = writeln!(
            out,
            "# HELP switchboard_push_frames_encoded_total Frames encoded for delivery to other connections: relays, presence updates, notifications (a broadcast counts once; direct answers are counted in switchboard_frames_out_total).\n# TYPE switchboard_push_frames_encoded_total counter\nswitchboard_push_frames_encoded_total {}",
            gauges.frames_encoded
        );
        counter(
            &mut out,
            "switchboard_calls_total",
            "Calls started (CALL_REQUESTs that rang) since start.",
            &self.calls_total,
        );
        for (name, help, frames) in [
            (
                "switchboard_frames_in_total",
                "Frames received, by message type.",
                &self.frames_in,
            ),
            (
                "switchboard_frames_out_total",
                "Frames sent, by message type.",
                &self.frames_out,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (code, n) in frames.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                let kind = u8::try_from(code)
                    .ok()
                    .and_then(&type_name)
                    .unwrap_or("UNKNOWN");
                let _ = writeln!(out, "{name}{{type=\"{kind}\"}} {n}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP switchboard_errors_total Errors answered, by code.\n# TYPE switchboard_errors_total counter"
        );
        for (code, n) in ERROR_CODES.iter().zip(&self.errors) {
            let _ = writeln!(
                out,
                "switchboard_errors_total{{code=\"{code}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        counter(
            &mut out,
            "switchboard_bytes_in_total",
            "Bytes read from clients (after TLS).",
            &self.bytes_in,
        );
        counter(
            &mut out,
            "switchboard_bytes_out_total",
            "Bytes written to clients (before TLS).",
            &self.bytes_out,
        );
        counter(
            &mut out,
            "switchboard_slow_consumer_disconnects_total",
            "Clients disconnected for overflowing their outbound queue.",
            &self.slow_consumer_disconnects,
        );
        counter(
            &mut out,
            "switchboard_relays_written_through_total",
            "Relayed frames written to the recipient's socket by the sender's thread (write-through), wholly or in part; the recipient's thread is woken only to write a rest or read what TLS decrypted.",
            &self.written_through,
        );
        counter(
            &mut out,
            "switchboard_presence_batches_total",
            "Presence batches broadcast; each reaches every connection online once.",
            &self.presence_batches,
        );
        counter(
            &mut out,
            "switchboard_outbox_drains_total",
            "Times a connection's thread took frames other threads had queued for it (a wake-up and a write each); against presence batches times connections online, how well broadcasts coalesce.",
            &self.outbox_drains,
        );
        counter(
            &mut out,
            "switchboard_failed_logins_total",
            "LOGIN_REQUESTs that failed.",
            &self.failed_logins,
        );
        counter(
            &mut out,
            "switchboard_resumes_total",
            "Logins by RESUME_REQUEST with a session token (no password hash).",
            &self.resumes,
        );
        counter(
            &mut out,
            "switchboard_resumes_refused_total",
            "RESUME_REQUESTs refused: forged, expired or revoked tokens.",
            &self.resumes_refused,
        );
        counter(
            &mut out,
            "switchboard_calls_held_total",
            "Calls held for a resume after a party's connection dropped.",
            &self.calls_held,
        );
        gauge(
            &mut out,
            "switchboard_rooms",
            "Rooms that exist (durable; empty ones included).",
            gauges.rooms,
        );
        gauge(
            &mut out,
            "switchboard_room_participants",
            "Users in rooms now, counted once per room.",
            gauges.room_participants,
        );
        counter(
            &mut out,
            "switchboard_room_messages_total",
            "Room chat messages stored and delivered (retries with a known client_msg_id not counted).",
            &self.room_messages,
        );
        let _ = writeln!(
            out,
            "# HELP switchboard_room_joins_refused_total Room joins refused, by reason.\n# TYPE switchboard_room_joins_refused_total counter"
        );
        for (reason, n) in ROOM_REFUSALS.iter().zip(&self.room_refusals) {
            let _ = writeln!(
                out,
                "switchboard_room_joins_refused_total{{reason=\"{reason}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        counter(
            &mut out,
            "switchboard_guest_logins_total",
            "Guest sessions created by GUEST_LOGIN_REQUEST.",
            &self.guest_logins,
        );
        self.hash_wait.render(
            &mut out,
            "switchboard_password_hash_wait_seconds",
            "Time a password hash waited for a hashing slot.",
        );
        self.relay_time.render(
            &mut out,
            "switchboard_relay_seconds",
            "Server-side relay time: SDP/ICE frame read to relayed frame queued for the peer.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Histogram buckets are cumulative and the +Inf bucket equals the count.
    #[test]
    fn histograms_render_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(5));
        h.observe(Duration::from_millis(2));
        h.observe(Duration::from_secs(3));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.00001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.0025\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"1\"} 2\n"), "{out}");
        assert!(
            out.contains("x_bucket{le=\"+Inf\"} 3\nx_sum 3.002005\nx_count 3\n"),
            "{out}"
        );
    }

    /// Frames are labelled by protocol name, errors by code, gauges as given.
    #[test]
    fn counters_render_with_labels() {
        let m = Metrics::default();
        Metrics::count(&m.frames_in[0x0D]);
        Metrics::count(&m.frames_out[0x42]);
        m.error(409);
        let name = |code| (code == 0x0D).then_some("SDP_OFFER");
        let text = m.render(
            Gauges {
                users_logged_in: 2,
                frames_encoded: 7,
                ..Gauges::default()
            },
            name,
        );
        assert!(
            text.contains("switchboard_frames_in_total{type=\"SDP_OFFER\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("switchboard_frames_out_total{type=\"UNKNOWN\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("switchboard_errors_total{code=\"409\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("switchboard_users_logged_in 2\n"), "{text}");
        assert!(
            text.contains("switchboard_push_frames_encoded_total 7\n"),
            "{text}"
        );
    }
}
