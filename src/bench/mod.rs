//! The load generator (`switchboard-bench`): workloads against the daemon run
//! as a separate process, and a floor relay to compare with.
//!
//! Every workload prints a human summary and then one JSON line (starting
//! with `{`) with its figures; `scripts/bench.sh` collects those lines.
//!
//! # Layout
//!
//! - [`relay`]: callers send ICE probes, callees echo them; closed and open loop;
//!   [`relay_storm_workload`] runs it idle and then during a login storm.
//! - [`floor`]: the minimal thread-per-connection relay the daemon is compared with.
//! - [`swarm`]: thousands of clients on a few poll(2) threads (`idle`, `storm`).
//! - [`setup`]: scripted calls, CALL_REQUEST to the last ICE candidate.
//! - [`rooms`]: rooms of several participants chatting (delivery rate, latency,
//!   encodings per message, RSS per participant).
//! - [`journal`]: the journal against SQLite, and conversation logs at a million messages.
//! - [`stats`]: percentiles, loss and reordering.
//! - [`client`]: a blocking client over [`crate::tcp::frame`] and [`crate::tcp::message`].
//! - [`daemon`]: starting the daemon, its users file, /proc and /metrics.
//! - [`tls`]: a self-signed identity for the daemon and a client that trusts it (`relay --tls`).

pub mod client;
pub mod daemon;
pub mod floor;
pub mod journal;
pub mod relay;
pub mod rooms;
pub mod setup;
pub mod stats;
pub mod swarm;
pub mod tls;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use daemon::{Daemon, DaemonOptions, ProcStats};
use floor::FloorProcess;
use relay::{RelayFigures, RelayOptions, Target};

/// What every workload needs: the binaries and the daemon's bcrypt cost.
#[derive(Debug, Clone)]
pub struct Common {
    /// The `switchboard` daemon binary.
    pub daemon: PathBuf,
    /// This load generator's own binary (it runs the floor as `... floor`).
    pub bench: PathBuf,
    pub bcrypt_cost: u32,
}

impl Common {
    fn start_daemon(&self, users: usize, connections: usize) -> io::Result<Daemon> {
        self.start_daemon_with(users, connections, None)
    }

    fn start_daemon_with(
        &self,
        users: usize,
        connections: usize,
        tls: Option<tls::Identity>,
    ) -> io::Result<Daemon> {
        Daemon::start(&DaemonOptions {
            binary: self.daemon.clone(),
            bcrypt_cost: self.bcrypt_cost,
            max_connections: connections + 64,
            users,
            tls,
        })
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

fn relay_line(f: &RelayFigures) -> String {
    format!(
        "  {:<11} {:>9.0} round trips/s  rtt p50 {:>7.1} us  p90 {:>7.1}  p99 {:>7.1}  p99.9 {:>7.1}  max {:>8.1}  sent {} received {} lost {} reordered {} errors {} late sends {}",
        f.target,
        f.round_trips_per_s,
        f.rtt.p50_us,
        f.rtt.p90_us,
        f.rtt.p99_us,
        f.rtt.p999_us,
        f.rtt.max_us,
        f.sent,
        f.received,
        f.lost,
        f.reordered,
        f.errors,
        f.late_sends
    )
}

/// The relay workload against the floor and then Switchboard, in the same run;
/// Switchboard's figures are also given as ratios to the floor's. With
/// `tls`, the daemon serves TLS (a self-signed identity made for the run) and
/// the pairs connect over it; the floor stays plain TCP, the same yardstick
/// for both.
///
/// # Errors
/// If either server cannot be started or the pairs cannot be set up.
pub fn relay_workload(
    common: &Common,
    opts: &RelayOptions,
    with_floor: bool,
    tls: bool,
) -> io::Result<Value> {
    let floor = if with_floor {
        let server = FloorProcess::start(&common.bench)?;
        let figures = relay::run(Target::Floor(server.addr), opts)?;
        drop(server);
        Some(figures)
    } else {
        None
    };
    let identity = if tls {
        Some(tls::Identity::self_signed()?)
    } else {
        None
    };
    let mut sb_opts = opts.clone();
    sb_opts.tls = identity
        .as_ref()
        .map(tls::Identity::connector)
        .transpose()?;
    let daemon = common.start_daemon_with(2 * opts.pairs, 2 * opts.pairs, identity)?;
    let sb = relay::run(Target::Switchboard(daemon.addr), &sb_opts)?;
    let relay_count = daemon.metric("switchboard_relay_seconds_count");
    let written_through = daemon.metric("switchboard_relays_written_through_total");
    drop(daemon);
    let mode = if opts.rate.is_some() {
        "open loop"
    } else {
        "closed loop"
    };
    println!(
        "relay ({mode}, {} pairs, {} B candidates, {:.0} s{}{})",
        opts.pairs,
        opts.size,
        opts.duration.as_secs_f64(),
        opts.rate
            .map(|r| format!(", {r:.0} msgs/s"))
            .unwrap_or_default(),
        if tls {
            ", daemon over TLS, floor plain"
        } else {
            ""
        }
    );
    if let Some(f) = &floor {
        println!("{}", relay_line(f));
    }
    println!("{}", relay_line(&sb));
    let ratios = floor.as_ref().map(|f| {
        json!({
            "throughput": ratio(sb.round_trips_per_s, f.round_trips_per_s),
            "p50": ratio(sb.rtt.p50_us, f.rtt.p50_us),
            "p99": ratio(sb.rtt.p99_us, f.rtt.p99_us),
            "p999": ratio(sb.rtt.p999_us, f.rtt.p999_us),
        })
    });
    if let Some(r) = &ratios {
        println!(
            "  ratio to floor: throughput {:.2}x  p50 {:.2}x  p99 {:.2}x  p99.9 {:.2}x",
            r["throughput"].as_f64().unwrap_or(0.0),
            r["p50"].as_f64().unwrap_or(0.0),
            r["p99"].as_f64().unwrap_or(0.0),
            r["p999"].as_f64().unwrap_or(0.0)
        );
    }
    if let (Some(relays), Some(through)) = (relay_count, written_through) {
        println!("  daemon: {through} of {relays} relays written through by their senders");
    }
    Ok(json!({
        "workload": "relay",
        "mode": sb.mode,
        "tls": tls,
        "pairs": opts.pairs,
        "size": opts.size,
        "rate": opts.rate,
        "switchboard": sb,
        "floor": floor,
        "ratio_to_floor": ratios,
        "daemon_relay_histogram_count": relay_count,
        "daemon_relays_written_through": written_through,
    }))
}

/// The daemon's open-files limit, from /proc/PID/limits.
fn nofile_limit(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// `clients` log in at once and stay; the daemon's RSS, threads and
/// descriptors are read before the first connection and once every presence
/// broadcast has arrived, with all connections open.
///
/// # Errors
/// If the daemon cannot start or the clients cannot connect.
pub fn idle_workload(
    common: &Common,
    clients: usize,
    shards: usize,
    timeout: Duration,
) -> io::Result<Value> {
    let daemon = common.start_daemon(clients, clients)?;
    let limit = nofile_limit(daemon.pid());
    if let Some(limit) = limit
        && limit < 2 * clients as u64 + 64
    {
        eprintln!(
            "switchboard-bench: warning: the daemon's open-files limit {limit} is below the {} that {clients} connections need (2 per connection)",
            2 * clients + 64
        );
    }
    let before = daemon.proc_stats()?;
    let result = swarm::run(
        daemon.addr,
        &swarm::SwarmOptions {
            clients,
            first_user: 0,
            shards,
            login: swarm::Login::Password,
            track_presence: false,
            await_updates: true,
            timeout,
        },
    )?;
    // Let the connection threads go back to sleep before reading /proc.
    std::thread::sleep(Duration::from_millis(500));
    let after = daemon.proc_stats()?;
    let encoded = daemon.metric("switchboard_push_frames_encoded_total");
    let open = daemon.metric("switchboard_connections_open");
    drop(result.sockets);
    let n = clients.max(1) as f64;
    let expected = (clients as u64) * (clients as u64).saturating_sub(1) / 2;
    let settled = result.state_updates >= expected;
    let rss_per_conn_kib = (after.rss_kib as f64 - before.rss_kib as f64) / n;
    let fds_per_conn = (after.fds as f64 - before.fds as f64) / n;
    let threads_per_conn = (after.threads as f64 - before.threads as f64) / n;
    let login_rate = ratio(result.logins_ok as f64, result.logins_done_secs);
    let show = |p: ProcStats| {
        format!(
            "RSS {} KiB, {} threads, {} fds",
            p.rss_kib, p.threads, p.fds
        )
    };
    println!(
        "idle ({clients} clients, bcrypt cost {})",
        common.bcrypt_cost
    );
    println!(
        "  connected in {:.2} s; {} logins in {:.2} s ({login_rate:.0}/s); presence updates {} of {expected}{}",
        result.connect_secs,
        result.logins_ok,
        result.logins_done_secs,
        result.state_updates,
        if settled {
            " (settled)"
        } else {
            " (NOT settled: measured while still delivering)"
        }
    );
    println!("  daemon before: {}", show(before));
    println!(
        "  daemon after:  {} ({} connections open)",
        show(after),
        open.map_or_else(|| "?".into(), |n| n.to_string())
    );
    println!(
        "  per connection: {rss_per_conn_kib:.1} KiB RSS, {fds_per_conn:.2} fds, {threads_per_conn:.2} threads; errors {}",
        result.errors
    );
    Ok(json!({
        "workload": "idle",
        "clients": clients,
        "bcrypt_cost": common.bcrypt_cost,
        "connect_secs": result.connect_secs,
        "logins_ok": result.logins_ok,
        "logins_secs": result.logins_done_secs,
        "login_rate_per_s": login_rate,
        "before": before,
        "after": after,
        "connections_open": open,
        "rss_per_conn_kib": rss_per_conn_kib,
        "fds_per_conn": fds_per_conn,
        "threads_per_conn": threads_per_conn,
        "daemon_nofile_limit": limit,
        "state_updates": result.state_updates,
        "state_updates_expected": expected,
        "settled": settled,
        "frames_encoded": encoded,
        "errors": result.errors,
    }))
}

/// `clients` log in at the same moment; each asks for the user list and
/// counts who it has seen Available.
///
/// # Errors
/// If the daemon cannot start or the clients cannot connect.
pub fn storm_workload(
    common: &Common,
    clients: usize,
    shards: usize,
    timeout: Duration,
) -> io::Result<Value> {
    let daemon = common.start_daemon(clients, clients)?;
    let result = swarm::run(
        daemon.addr,
        &swarm::SwarmOptions {
            clients,
            first_user: 0,
            shards,
            login: swarm::Login::Password,
            track_presence: true,
            await_updates: false,
            timeout,
        },
    )?;
    let encoded = daemon.metric("switchboard_push_frames_encoded_total");
    let updates_out = daemon.metric("switchboard_frames_out_total{type=\"USER_STATE_UPDATE\"}");
    // Absent from daemons older than these counters.
    let batches = daemon.metric_if_present("switchboard_presence_batches_total");
    let drains = daemon.metric_if_present("switchboard_outbox_drains_total");
    drop(result.sockets);
    drop(daemon);
    println!(
        "storm ({clients} clients, bcrypt cost {})",
        common.bcrypt_cost
    );
    println!(
        "  every LOGIN_RESPONSE after {:.3} s ({} ok); presence settled for {}/{clients} clients after {}",
        result.logins_done_secs,
        result.logins_ok,
        result.presence_complete,
        result
            .presence_done_secs
            .map(|s| format!("{s:.3} s"))
            .unwrap_or_else(|| "never".into())
    );
    println!(
        "  frames received {} (USER_STATE_UPDATE {}); daemon: {} USER_STATE_UPDATE sent from {} frames encoded; errors {}",
        result.frames,
        result.state_updates,
        updates_out.map_or_else(|| "?".into(), |n| n.to_string()),
        encoded.map_or_else(|| "?".into(), |n| n.to_string()),
        result.errors
    );
    if let (Some(batches), Some(drains)) = (batches, drains) {
        println!(
            "  daemon: {batches} presence batches, {drains} queue drains ({:.1} per client)",
            drains as f64 / clients.max(1) as f64
        );
    }
    Ok(json!({
        "workload": "storm",
        "clients": clients,
        "bcrypt_cost": common.bcrypt_cost,
        "logins_ok": result.logins_ok,
        "all_logins_secs": result.logins_done_secs,
        "presence_settled_secs": result.presence_done_secs,
        "presence_complete": result.presence_complete,
        "frames_received": result.frames,
        "state_updates_received": result.state_updates,
        "daemon_state_updates_sent": updates_out,
        "daemon_frames_encoded": encoded,
        "daemon_presence_batches": batches,
        "daemon_outbox_drains": drains,
        "errors": result.errors,
    }))
}

/// `clients` log in at once with their passwords (protocol 2, so each gets a
/// session token), all disconnect, then all reconnect at once by RESUME: the
/// time until every LOGIN_RESPONSE, both ways, at the daemon's bcrypt cost.
///
/// # Errors
/// If the daemon cannot start, the clients cannot connect, or a login fails.
pub fn reconnect_workload(
    common: &Common,
    clients: usize,
    shards: usize,
    timeout: Duration,
) -> io::Result<Value> {
    let daemon = common.start_daemon(clients, clients)?;
    let options = |login| swarm::SwarmOptions {
        clients,
        first_user: 0,
        shards,
        login,
        track_presence: false,
        await_updates: false,
        timeout,
    };
    let by_login = swarm::run(daemon.addr, &options(swarm::Login::PasswordV2))?;
    let hashes_after_login = daemon.metric("switchboard_password_hash_wait_seconds_count");
    let tokens: Vec<String> = by_login
        .tokens
        .iter()
        .map(|t| t.clone().unwrap_or_default())
        .collect();
    let missing = tokens.iter().filter(|t| t.is_empty()).count();
    drop(by_login.sockets);
    // Every session must be gone before the reconnect, or RESUME would take
    // sessions over instead of opening them.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while daemon.metric("switchboard_users_logged_in") != Some(0) {
        if std::time::Instant::now() >= deadline {
            return Err(io::Error::other("sessions did not end after disconnecting"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let by_resume = swarm::run(
        daemon.addr,
        &options(swarm::Login::Resume(Arc::new(tokens))),
    )?;
    let hashes_after_resume = daemon.metric("switchboard_password_hash_wait_seconds_count");
    let resumes = daemon.metric("switchboard_resumes_total");
    drop(by_resume.sockets);
    drop(daemon);
    let speedup = ratio(by_login.logins_done_secs, by_resume.logins_done_secs);
    println!(
        "reconnect ({clients} clients, bcrypt cost {})",
        common.bcrypt_cost
    );
    println!(
        "  by LOGIN:  every LOGIN_RESPONSE after {:.3} s ({} ok, {} without a token)",
        by_login.logins_done_secs, by_login.logins_ok, missing
    );
    println!(
        "  by RESUME: every LOGIN_RESPONSE after {:.3} s ({} ok); {speedup:.1}x faster; password hashes during RESUME: {}",
        by_resume.logins_done_secs,
        by_resume.logins_ok,
        match (hashes_after_login, hashes_after_resume) {
            (Some(a), Some(b)) => (b - a.min(b)).to_string(),
            _ => "?".into(),
        }
    );
    Ok(json!({
        "workload": "reconnect",
        "clients": clients,
        "bcrypt_cost": common.bcrypt_cost,
        "login": {
            "ok": by_login.logins_ok,
            "all_logins_secs": by_login.logins_done_secs,
            "errors": by_login.errors,
            "tokens_missing": missing,
        },
        "resume": {
            "ok": by_resume.logins_ok,
            "all_logins_secs": by_resume.logins_done_secs,
            "errors": by_resume.errors,
            "daemon_resumes": resumes,
        },
        "password_hashes": {
            "after_login": hashes_after_login,
            "after_resume": hashes_after_resume,
        },
        "resume_speedup": speedup,
    }))
}

/// Scripted calls on `pairs` pairs.
///
/// # Errors
/// If the daemon cannot start or a pair cannot log in.
pub fn setup_workload(common: &Common, opts: &setup::SetupOptions) -> io::Result<Value> {
    let daemon = common.start_daemon(2 * opts.pairs, 2 * opts.pairs)?;
    let f = setup::run(daemon.addr, opts)?;
    drop(daemon);
    println!(
        "setup ({} pairs, {} calls): {:.0} calls/s; CALL_REQUEST to last ICE p50 {:.1} us p90 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}; errors {}",
        f.pairs,
        f.calls,
        f.calls_per_s,
        f.setup.p50_us,
        f.setup.p90_us,
        f.setup.p99_us,
        f.setup.p999_us,
        f.setup.max_us,
        f.errors
    );
    let mut v = serde_json::to_value(&f).map_err(io::Error::other)?;
    v["workload"] = json!("setup");
    Ok(v)
}

/// Options of [`relay_storm_workload`].
#[derive(Debug, Clone)]
pub struct RelayStormOptions {
    /// The relay: pairs, candidate size, closed loop or `rate`; its `duration`
    /// is the idle phase.
    pub relay: RelayOptions,
    /// Clients logging in at once in the storm phase.
    pub clients: usize,
    pub shards: usize,
    /// Give up on the storm after this long.
    pub timeout: Duration,
}

fn phase_json(p: &stats::Percentiles, secs: f64) -> Value {
    json!({
        "seconds": secs,
        "round_trips": p.count,
        "round_trips_per_s": ratio(p.count as f64, secs),
        "rtt": p,
    })
}

/// The relay on one daemon, first idle for `relay.duration`, then while
/// `clients` log in at once (the storm workload) until every client has seen
/// every other Available. Round trips count in the phase they were sent in
/// (those sent while the storm's clients connect count in neither); both
/// phases are read from the same run, so the storm's effect is their ratio.
///
/// # Errors
/// If the daemon cannot start, the pairs cannot be set up or the swarm fails.
pub fn relay_storm_workload(common: &Common, opts: &RelayStormOptions) -> io::Result<Value> {
    let pairs = opts.relay.pairs;
    let daemon = common.start_daemon(2 * pairs + opts.clients, 2 * pairs + opts.clients)?;
    let control = Arc::new(relay::RunControl::default());
    let idle = opts.relay.duration;
    let relay_opts = RelayOptions {
        // Ended by `control.stop` once the storm has settled.
        duration: idle + opts.timeout + Duration::from_secs(60),
        control: Some(control.clone()),
        ..opts.relay.clone()
    };
    let addr = daemon.addr;
    let relay_run = std::thread::Builder::new()
        .name("relay-storm".into())
        .spawn(move || relay::run_timed(Target::Switchboard(addr), &relay_opts))?;
    let finish = |control: &relay::RunControl, handle: std::thread::JoinHandle<_>| {
        control
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        match handle.join() {
            Ok(r) => r,
            Err(_) => Err(io::Error::other("the relay thread panicked")),
        }
    };
    let start = loop {
        if let Some(&t) = control.started.get() {
            break t;
        }
        if relay_run.is_finished() {
            finish(&control, relay_run)?;
            return Err(io::Error::other("the relay ended before it started"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    std::thread::sleep((start + idle).saturating_duration_since(std::time::Instant::now()));
    let storm = swarm::run(
        daemon.addr,
        &swarm::SwarmOptions {
            clients: opts.clients,
            first_user: 2 * pairs,
            shards: opts.shards,
            login: swarm::Login::Password,
            track_presence: true,
            await_updates: false,
            timeout: opts.timeout,
        },
    );
    let storm_end = std::time::Instant::now();
    let (figures, samples) = finish(&control, relay_run)?;
    let storm = storm?;
    drop(storm.sockets);
    drop(daemon);
    let storm_secs = storm_end.saturating_duration_since(storm.t0).as_secs_f64();
    let idle_p = samples.between(start, start + idle).percentiles();
    let storm_p = samples.between(storm.t0, storm_end).percentiles();
    let ratios = json!({
        "p50": ratio(storm_p.p50_us, idle_p.p50_us),
        "p99": ratio(storm_p.p99_us, idle_p.p99_us),
        "p999": ratio(storm_p.p999_us, idle_p.p999_us),
        "max": ratio(storm_p.max_us, idle_p.max_us),
    });
    let mode = match opts.relay.rate {
        Some(r) => format!("open loop, {r:.0} msgs/s"),
        None => "closed loop".into(),
    };
    println!(
        "relay-storm ({pairs} pairs, {mode}, {} B candidates; {} clients log in at once, bcrypt cost {})",
        opts.relay.size, opts.clients, common.bcrypt_cost
    );
    let show = |name: &str, p: &stats::Percentiles, secs: f64| {
        println!(
            "  {name:<6} {:>5.1} s {:>7} round trips  rtt p50 {:>8.1} us  p99 {:>8.1}  p99.9 {:>8.1}  max {:>9.1}",
            secs, p.count, p.p50_us, p.p99_us, p.p999_us, p.max_us
        );
    };
    show("idle", &idle_p, idle.as_secs_f64());
    show("storm", &storm_p, storm_secs);
    println!(
        "  storm / idle: p50 {:.2}x  p99 {:.2}x  p99.9 {:.2}x  max {:.2}x",
        ratios["p50"].as_f64().unwrap_or(0.0),
        ratios["p99"].as_f64().unwrap_or(0.0),
        ratios["p999"].as_f64().unwrap_or(0.0),
        ratios["max"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  relay: sent {} received {} lost {} reordered {} errors {}; storm: {} logins in {:.3} s, presence settled for {}/{} after {}, errors {}",
        figures.sent,
        figures.received,
        figures.lost,
        figures.reordered,
        figures.errors,
        storm.logins_ok,
        storm.logins_done_secs,
        storm.presence_complete,
        opts.clients,
        storm
            .presence_done_secs
            .map(|s| format!("{s:.3} s"))
            .unwrap_or_else(|| "never".into()),
        storm.errors
    );
    Ok(json!({
        "workload": "relay-storm",
        "mode": figures.mode,
        "pairs": pairs,
        "size": opts.relay.size,
        "rate": opts.relay.rate,
        "clients": opts.clients,
        "bcrypt_cost": common.bcrypt_cost,
        "idle": phase_json(&idle_p, idle.as_secs_f64()),
        "storm": phase_json(&storm_p, storm_secs),
        "ratio_storm_to_idle": ratios,
        "sent": figures.sent,
        "received": figures.received,
        "lost": figures.lost,
        "reordered": figures.reordered,
        "errors": figures.errors,
        "late_sends": figures.late_sends,
        "storm_logins_ok": storm.logins_ok,
        "storm_all_logins_secs": storm.logins_done_secs,
        "storm_presence_settled_secs": storm.presence_done_secs,
        "storm_presence_complete": storm.presence_complete,
        "storm_errors": storm.errors,
    }))
}

/// Reads /proc and /metrics between the phases of the rooms workload.
struct RoomsProbe<'a> {
    daemon: &'a Daemon,
    before_join: Option<ProcStats>,
    after_join: Option<ProcStats>,
    after_chat: Option<ProcStats>,
    encoded_before: Option<u64>,
    encoded_after: Option<u64>,
    messages_before: Option<u64>,
    messages_after: Option<u64>,
}

impl rooms::Observer for RoomsProbe<'_> {
    fn logged_in(&mut self) {
        // Let the presence broadcasts of the logins settle before reading /proc.
        std::thread::sleep(Duration::from_millis(500));
        self.before_join = self.daemon.proc_stats().ok();
    }

    fn joined(&mut self) {
        std::thread::sleep(Duration::from_millis(500));
        self.after_join = self.daemon.proc_stats().ok();
        self.encoded_before = self.daemon.metric("switchboard_push_frames_encoded_total");
        self.messages_before = self.daemon.metric("switchboard_room_messages_total");
    }

    fn drained(&mut self) {
        self.encoded_after = self.daemon.metric("switchboard_push_frames_encoded_total");
        self.messages_after = self.daemon.metric("switchboard_room_messages_total");
        self.after_chat = self.daemon.proc_stats().ok();
    }
}

/// `rooms` rooms of `size` participants chatting (see [`rooms`]): delivered
/// ROOM_MESSAGEs per second, send-to-delivery latency, pushes encoded per
/// message, and the daemon's RSS per participant.
///
/// # Errors
/// If the daemon cannot start or the clients cannot log in or join.
pub fn rooms_workload(common: &Common, opts: &rooms::RoomsOptions) -> io::Result<Value> {
    let participants = opts.rooms * opts.size;
    let daemon = common.start_daemon(participants, participants)?;
    let mut probe = RoomsProbe {
        daemon: &daemon,
        before_join: None,
        after_join: None,
        after_chat: None,
        encoded_before: None,
        encoded_after: None,
        messages_before: None,
        messages_after: None,
    };
    let result = rooms::run(daemon.addr, opts, &mut probe);
    let result = match result {
        Ok(r) => r,
        Err(e) => {
            let stderr = daemon.stderr();
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            return Err(io::Error::other(format!(
                "{e}; daemon stderr (last lines, newest first): {tail:?}"
            )));
        }
    };
    drop(result.sockets);
    let c = &result.chat;
    let diff = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let encoded = diff(probe.encoded_before, probe.encoded_after);
    let daemon_messages = diff(probe.messages_before, probe.messages_after);
    let per_message = encoded.map(|e| ratio(e as f64, c.acknowledged as f64));
    let rss_per_participant_kib = match (probe.before_join, probe.after_join) {
        (Some(b), Some(a)) => {
            Some((a.rss_kib as f64 - b.rss_kib as f64) / participants.max(1) as f64)
        }
        _ => None,
    };
    let mode = match opts.rate {
        Some(r) => format!("open loop, {r:.0} msgs/s"),
        None => "closed loop, one message in flight per sender".into(),
    };
    println!(
        "rooms ({} rooms of {}, {participants} participants, {mode}, {} B texts, {:.0} s)",
        opts.rooms,
        opts.size,
        opts.text,
        opts.duration.as_secs_f64()
    );
    println!(
        "  {:>9.0} messages/s posted, {:>9.0} ROOM_MESSAGE/s delivered; latency p50 {:.1} us  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        c.messages_per_s,
        c.delivered_per_s,
        c.latency.p50_us,
        c.latency.p90_us,
        c.latency.p99_us,
        c.latency.p999_us,
        c.latency.max_us
    );
    println!(
        "  durable (ROOM_MESSAGE_RESPONSE) p50 {:.1} us  p99 {:.1}; sent {} acknowledged {} delivered {} lost {} out of order {} errors {} late sends {}",
        c.ack_latency.p50_us,
        c.ack_latency.p99_us,
        c.sent,
        c.acknowledged,
        c.delivered,
        c.lost,
        c.out_of_order,
        result.errors,
        c.late_sends
    );
    println!(
        "  pushes encoded per message {}; RSS per participant {} (before join {} KiB, after {} KiB, after chat {} KiB)",
        per_message.map_or_else(|| "?".into(), |p| format!("{p:.3}")),
        rss_per_participant_kib.map_or_else(|| "?".into(), |r| format!("{r:.1} KiB")),
        probe.before_join.map_or(0, |p| p.rss_kib),
        probe.after_join.map_or(0, |p| p.rss_kib),
        probe.after_chat.map_or(0, |p| p.rss_kib),
    );
    if let Some(e) = &result.first_error {
        println!("  first error: {e}");
    }
    Ok(json!({
        "workload": "rooms",
        "mode": c.mode,
        "rooms": opts.rooms,
        "size": opts.size,
        "participants": participants,
        "text_bytes": opts.text,
        "rate": opts.rate,
        "chat": c,
        "daemon_room_messages": daemon_messages,
        "push_frames_encoded": encoded,
        "push_frames_encoded_per_message": per_message,
        "rss_before_join": probe.before_join,
        "rss_after_join": probe.after_join,
        "rss_after_chat": probe.after_chat,
        "rss_per_participant_kib": rss_per_participant_kib,
        "errors": result.errors,
    }))
}
