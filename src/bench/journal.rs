//! Storage workloads: the journal against SQLite, and conversation logs at
//! a million messages. They run in this process on files in `--dir`; no
//! daemon is started.
//!
//! - `journal`: writers append 200-byte records as fast as each append is
//!   acknowledged (durable), for 1, 16 and 64 writers; then the same with
//!   SQLite (WAL, synchronous=FULL, one transaction per append, a connection
//!   per writer: what a user would write). One JSON line per engine and writer
//!   count. `fsyncs` counts every fsync the engine issued: for the journal,
//!   one per batch (`batch_fsyncs`) plus those of zeros written ahead
//!   (`zero_syncs`). `--engines journal` leaves SQLite out.
//! - `conversations`: fills N messages over C conversations, then (in a fresh
//!   process, so the allocator's leftovers from filling do not count) measures
//!   the start-up time, the RSS the index adds per message, and the latency of
//!   50-message pages read from disk.
//! - `journal-writer` (hidden): writers that print each acknowledged record,
//!   for the kill -9 test.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::stats::Latencies;
use crate::application::store::{Anchor, ConversationId, ConversationStore, NewMessage};
use crate::domain::UserId;
use crate::infrastructure::conversations::{CONVERSATIONS_FILE, ConversationFile};
use crate::infrastructure::journal::{Format, Journal, Spec};

const FRAMED: Spec<'static> = Spec {
    format: Format::Framed,
    initial: b"",
    record_name: "a bench record",
};

/// What `journal` measures.
#[derive(Clone, Debug)]
pub struct JournalOptions {
    pub writers: Vec<usize>,
    pub duration: Duration,
    pub size: usize,
    pub dir: PathBuf,
    /// Which engines run, in this order.
    pub engines: Vec<Engine>,
}

/// An engine `journal` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    Journal,
    Sqlite,
}

fn other(err: impl std::fmt::Display) -> io::Error {
    io::Error::other(err.to_string())
}

/// Runs `writers` threads calling `append` until `duration` passes; returns
/// the acknowledged count, the elapsed time and the latencies.
fn drive<S: Send + 'static>(
    writers: usize,
    duration: Duration,
    make: impl Fn(usize) -> io::Result<S>,
    append: impl Fn(&mut S, &[u8]) -> io::Result<()> + Send + Sync + 'static,
    size: usize,
) -> io::Result<(u64, Duration, Latencies)> {
    let append = Arc::new(append);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let mut state = make(w)?;
            let (append, stop) = (append.clone(), stop.clone());
            Ok(std::thread::spawn(move || -> io::Result<Latencies> {
                let mut lat = Latencies::default();
                let mut payload = vec![b'x'; size];
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let tag = format!("w{w} r{i} ");
                    let n = tag.len().min(payload.len());
                    payload[..n].copy_from_slice(&tag.as_bytes()[..n]);
                    let t = Instant::now();
                    append(&mut state, &payload)?;
                    lat.record(t.elapsed().as_nanos() as u64);
                    i += 1;
                }
                Ok(lat)
            }))
        })
        .collect::<io::Result<_>>()?;
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut all = Latencies::default();
    for t in threads {
        all.merge(t.join().map_err(|_| other("a writer panicked"))??);
    }
    let elapsed = started.elapsed();
    Ok((all.len() as u64, elapsed, all))
}

fn line(
    engine: &str,
    writers: usize,
    acked: u64,
    elapsed: Duration,
    lat: &mut Latencies,
    fsyncs: Value,
    extra: Value,
) -> Value {
    let p = lat.percentiles();
    let mut v = json!({
        "workload": "journal",
        "engine": engine,
        "writers": writers,
        "acked": acked,
        "seconds": (elapsed.as_secs_f64() * 100.0).round() / 100.0,
        "acked_per_s": (acked as f64 / elapsed.as_secs_f64()).round(),
        "p50_us": p.p50_us,
        "p99_us": p.p99_us,
        "p999_us": p.p999_us,
        "max_us": p.max_us,
        "fsyncs": fsyncs,
    });
    if let (Some(v), Value::Object(extra)) = (v.as_object_mut(), extra) {
        v.extend(extra);
    }
    v
}

fn journal_run(opts: &JournalOptions, writers: usize) -> io::Result<Value> {
    let path = opts.dir.join(format!("bench-{writers}.journal"));
    let _ = std::fs::remove_file(&path);
    let journal = Arc::new(Journal::open(&path, FRAMED, |_| Ok(())).map_err(other)?);
    let j = journal.clone();
    let (acked, elapsed, mut lat) = drive(
        writers,
        opts.duration,
        |_| Ok(()),
        move |_, payload| j.append(payload).map(drop),
        opts.size,
    )?;
    let stats = journal.stats();
    drop(journal);
    let _ = std::fs::remove_file(&path);
    let per_fsync = acked as f64 / stats.fsyncs.max(1) as f64;
    Ok(line(
        "journal",
        writers,
        acked,
        elapsed,
        &mut lat,
        json!(stats.fsyncs + stats.zero_syncs),
        json!({
            "records_per_fsync": (per_fsync * 10.0).round() / 10.0,
            "batch_fsyncs": stats.fsyncs,
            "zero_syncs": stats.zero_syncs,
            "preallocations_inline": stats.preallocations_inline,
        }),
    ))
}

fn sqlite_connection(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

fn sqlite_run(opts: &JournalOptions, writers: usize) -> io::Result<Value> {
    let path = opts.dir.join(format!("bench-{writers}.sqlite"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    sqlite_connection(&path)
        .and_then(|c| {
            c.execute_batch("CREATE TABLE records (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        })
        .map_err(other)?;
    let (acked, elapsed, mut lat) = drive(
        writers,
        opts.duration,
        |_| sqlite_connection(&path).map_err(other),
        |conn, payload| {
            // Autocommit: one transaction, so one WAL commit, per append.
            let mut stmt = conn
                .prepare_cached("INSERT INTO records (body) VALUES (?1)")
                .map_err(other)?;
            stmt.execute([payload]).map(drop).map_err(other)
        },
        opts.size,
    )?;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    // SQLite does not count its syncs. With WAL and synchronous=FULL each
    // commit syncs the WAL once; checkpoints add a few more (BENCHMARKS.md
    // shows a strace count).
    Ok(line(
        "sqlite",
        writers,
        acked,
        elapsed,
        &mut lat,
        json!(acked),
        json!({"fsyncs_counted": "one WAL sync per commit (a lower bound; checkpoints add more)"}),
    ))
}

/// `switchboard-bench journal`: one JSON line per engine and writer count.
///
/// # Errors
/// The directory cannot be used, or an engine fails.
pub fn journal_workload(opts: &JournalOptions) -> io::Result<Vec<Value>> {
    std::fs::create_dir_all(&opts.dir)?;
    let mut lines = Vec::new();
    for engine in &opts.engines {
        for &writers in &opts.writers {
            let v = match engine {
                Engine::Journal => journal_run(opts, writers)?,
                Engine::Sqlite => sqlite_run(opts, writers)?,
            };
            eprintln!("{}", human(&v));
            lines.push(v);
        }
    }
    Ok(lines)
}

fn human(v: &Value) -> String {
    format!(
        "  {:<8} writers {:>3}  {:>8} acked/s  wait p50 {:>8.1} us  p99 {:>8.1} us  fsyncs {}",
        v["engine"].as_str().unwrap_or(""),
        v["writers"],
        v["acked_per_s"],
        v["p50_us"].as_f64().unwrap_or(0.0),
        v["p99_us"].as_f64().unwrap_or(0.0),
        v["fsyncs"]
    )
}

/// What `conversations` measures.
#[derive(Clone, Debug)]
pub struct ConversationOptions {
    pub messages: u64,
    pub conversations: u64,
    pub writers: usize,
    pub pages: usize,
    pub size: usize,
    pub dir: PathBuf,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Fills the logs, then runs `bench` again with `--open-only` to measure a
/// fresh start over them.
///
/// # Errors
/// The directory cannot be used, or the store fails.
pub fn conversations_workload(opts: &ConversationOptions, bench: &Path) -> io::Result<Value> {
    std::fs::create_dir_all(&opts.dir)?;
    let path = opts.dir.join(CONVERSATIONS_FILE);
    let _ = std::fs::remove_file(&path);
    let store = ConversationFile::open(&path).map_err(other)?;
    let started = Instant::now();
    let per_writer = opts.messages / opts.writers as u64;
    let threads: Vec<_> = (0..opts.writers as u64)
        .map(|w| {
            let (store, opts) = (store.clone(), opts.clone());
            std::thread::spawn(move || -> io::Result<()> {
                let body = vec![b'm'; opts.size];
                for i in 0..per_writer {
                    let n = w * per_writer + i;
                    let conv = ConversationId(n % opts.conversations + 1);
                    store
                        .append(
                            conv,
                            NewMessage {
                                sender: UserId(w + 1),
                                sent_at: n,
                                client_id: None,
                                body: &body,
                            },
                        )
                        .map_err(other)?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| other("a writer panicked"))??;
    }
    let fill = started.elapsed();
    let stored = per_writer * opts.writers as u64;
    let fsyncs = store.journal().stats().fsyncs;
    drop(store);
    let file_bytes = std::fs::metadata(&path)?.len();
    eprintln!(
        "  filled {stored} messages in {} conversations in {:.1} s ({:.0}/s, {fsyncs} fsyncs), file {} MiB",
        opts.conversations,
        fill.as_secs_f64(),
        stored as f64 / fill.as_secs_f64(),
        file_bytes >> 20
    );
    let out = Command::new(bench)
        .args(["conversations", "--open-only", "--pages"])
        .arg(opts.pages.to_string())
        .arg("--dir")
        .arg(&opts.dir)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let opened: Value = text
        .lines()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| {
            other(format!(
                "no figures from the open phase: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        })?;
    let _ = std::fs::remove_file(&path);
    let mut v = json!({
        "workload": "conversations",
        "messages": stored,
        "conversations": opts.conversations,
        "body_bytes": opts.size,
        "fill_writers": opts.writers,
        "fill_per_s": (stored as f64 / fill.as_secs_f64()).round(),
        "fill_fsyncs": fsyncs,
        "file_bytes": file_bytes,
    });
    if let (Some(v), Value::Object(opened)) = (v.as_object_mut(), opened) {
        v.extend(opened);
    }
    Ok(v)
}

/// The second phase: open the filled logs in a fresh process and page them.
///
/// # Errors
/// The store cannot be opened or read.
pub fn conversations_open(dir: &Path, pages: usize) -> io::Result<Value> {
    let path = dir.join(CONVERSATIONS_FILE);
    let before = rss_kib();
    let started = Instant::now();
    let store = ConversationFile::open(&path).map_err(other)?;
    let startup = started.elapsed();
    let after = rss_kib();
    let messages = store.entries() as u64;
    let convs: Vec<(ConversationId, u64)> = (1..)
        .map(ConversationId)
        .map(|c| (c, store.last_seq(c).unwrap_or(0)))
        .take_while(|(_, last)| *last > 0)
        .collect();
    if convs.is_empty() {
        return Err(other("no conversations to page"));
    }
    // A small deterministic generator: no dependency for randomness.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut lat = Latencies::default();
    let mut read = 0usize;
    for _ in 0..pages {
        let (conv, last) = convs[(next() % convs.len() as u64) as usize];
        let anchor = Anchor::Before(next() % last + 1 + 50.min(last));
        let t = Instant::now();
        let page = store.page(conv, anchor, 50).map_err(other)?;
        lat.record(t.elapsed().as_nanos() as u64);
        read += page.len();
    }
    let p = lat.percentiles();
    let added = (after.saturating_sub(before)) * 1024;
    let v = json!({
        "startup_ms": (startup.as_secs_f64() * 1000.0).round(),
        "rss_before_open_kib": before,
        "rss_after_open_kib": after,
        "rss_bytes_per_message": (added as f64 / messages.max(1) as f64 * 10.0).round() / 10.0,
        "pages": pages,
        "messages_read": read,
        "page_p50_us": p.p50_us,
        "page_p99_us": p.p99_us,
        "page_max_us": p.max_us,
    });
    eprintln!(
        "  start-up {:.0} ms, RSS +{} KiB ({} B/message), 50-message page p50 {:.1} us p99 {:.1} us",
        startup.as_secs_f64() * 1000.0,
        after.saturating_sub(before),
        v["rss_bytes_per_message"],
        p.p50_us,
        p.p99_us
    );
    Ok(v)
}

/// The hidden `journal-writer`: `writers` threads append `w<T>-<N>` records
/// to `dir/writer.journal` and print `ack w<T>-<N>` once each is durable,
/// for at most `seconds` (the kill -9 test kills it long before).
///
/// # Errors
/// The journal cannot be opened.
pub fn journal_writer(dir: &Path, writers: usize, seconds: f64) -> io::Result<()> {
    let journal =
        Arc::new(Journal::open(&dir.join("writer.journal"), FRAMED, |_| Ok(())).map_err(other)?);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let journal = journal.clone();
            std::thread::spawn(move || -> io::Result<()> {
                for n in 0.. {
                    if Instant::now() > deadline {
                        return Ok(());
                    }
                    let record = format!("w{w}-{n}");
                    journal.append(record.as_bytes())?;
                    let mut out = io::stdout().lock();
                    writeln!(out, "ack {record}")?;
                    out.flush()?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| other("a writer panicked"))??;
    }
    Ok(())
}
