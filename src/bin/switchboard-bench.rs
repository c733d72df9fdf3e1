//! `switchboard-bench`: the load generator. See BENCHMARKS.md and `--help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use switchboard::bench::{
    self, Common, daemon, floor, journal, relay::RelayOptions, setup::SetupOptions,
};

/// Load generator for Switchboard: relay, relay-storm, idle, storm, reconnect, setup and rooms workloads, the floor relay,
/// and the storage workloads (journal, conversations).
///
/// Each workload starts its own daemon (and the floor, for relay), prints a
/// human summary and then one JSON line with its figures.
#[derive(Parser, Debug)]
#[command(name = "switchboard-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The daemon binary; by default `switchboard` next to this one.
    #[arg(long, global = true, value_name = "PATH")]
    daemon: Option<PathBuf>,
    /// The daemon's auth.bcrypt_cost.
    #[arg(long, global = true, default_value_t = 4)]
    bcrypt_cost: u32,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Callers send ICE probes, callees echo them; the floor runs first in the same run.
    Relay {
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Seconds of measurement.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Bytes of candidate text per probe.
        #[arg(long, default_value_t = 200)]
        size: usize,
        /// Open loop at this many probes per second over all pairs; closed loop without it.
        #[arg(long)]
        rate: Option<f64>,
        /// Skip the floor (Switchboard only).
        #[arg(long)]
        no_floor: bool,
        /// The daemon serves TLS (a self-signed certificate made for the run)
        /// and the pairs connect over it; closed loop only. The floor stays plain.
        #[arg(long, conflicts_with = "rate")]
        tls: bool,
    },
    /// The relay on an idle daemon, then in the same run while clients log in
    /// at once (storm); RTT percentiles of both phases and their ratio.
    RelayStorm {
        #[arg(long, default_value_t = 20)]
        pairs: usize,
        /// Clients logging in at once in the storm phase.
        #[arg(long, default_value_t = 2000)]
        clients: usize,
        /// Seconds of the idle phase.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Bytes of candidate text per probe.
        #[arg(long, default_value_t = 200)]
        size: usize,
        /// Open loop at this many probes per second over all pairs; closed loop without it.
        #[arg(long)]
        rate: Option<f64>,
        /// Threads driving the storm's clients.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Give up on the storm after this long.
        #[arg(long, default_value_t = 120.0)]
        timeout: f64,
    },
    /// Clients log in and stay; RSS, threads and descriptors of the daemon.
    Idle {
        #[arg(long, default_value_t = 9000)]
        clients: usize,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long, default_value_t = 240.0)]
        timeout: f64,
    },
    /// Clients log in at once; time until all see each other Available.
    Storm {
        #[arg(long, default_value_t = 2000)]
        clients: usize,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long, default_value_t = 120.0)]
        timeout: f64,
    },
    /// Clients log in at once (protocol 2, getting session tokens), disconnect,
    /// and reconnect at once by RESUME; run with --bcrypt-cost 10 for the default cost.
    Reconnect {
        #[arg(long, default_value_t = 2000)]
        clients: usize,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long, default_value_t = 600.0)]
        timeout: f64,
    },
    /// Rooms of --size participants chatting: delivered ROOM_MESSAGEs/s,
    /// send-to-delivery latency, pushes encoded per message, RSS per participant.
    Rooms {
        #[arg(long, default_value_t = 250)]
        rooms: usize,
        /// Participants per room (2 to the daemon's rooms.max_participants, 16).
        #[arg(long, default_value_t = 8)]
        size: usize,
        /// Seconds of chat.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Open loop at this many messages per second over all senders; closed
        /// loop (one message in flight per sender) without it.
        #[arg(long)]
        rate: Option<f64>,
        /// Bytes of text per message.
        #[arg(long, default_value_t = 100)]
        text: usize,
        /// Threads driving the clients.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Give up on the login and on the join phase after this long each.
        #[arg(long, default_value_t = 120.0)]
        timeout: f64,
    },
    /// Scripted calls: CALL_REQUEST to the last ICE candidate.
    Setup {
        #[arg(long, default_value_t = 10)]
        pairs: usize,
        #[arg(long, default_value_t = 100)]
        calls: usize,
    },
    /// Acknowledged (fsync'd) 200-byte appends: the journal's group commit
    /// against SQLite (WAL, synchronous=FULL); one JSON line per engine and writer count.
    Journal {
        /// Writer counts, comma-separated.
        #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
        writers: Vec<usize>,
        /// Seconds per engine and writer count.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Bytes per record.
        #[arg(long, default_value_t = 200)]
        size: usize,
        /// Where the files go (on the disk to measure; removed afterwards).
        #[arg(long, default_value = "bench-journal")]
        dir: PathBuf,
        /// Engines to run, comma-separated.
        #[arg(
            long,
            value_enum,
            default_value = "journal,sqlite",
            value_delimiter = ','
        )]
        engines: Vec<journal::Engine>,
    },
    /// Conversation logs: fill, then start-up time, RSS per message and
    /// 50-message page latency in a fresh process.
    Conversations {
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
        #[arg(long, default_value_t = 1000)]
        conversations: u64,
        /// Threads filling the logs.
        #[arg(long, default_value_t = 64)]
        writers: usize,
        /// Pages read after the restart.
        #[arg(long, default_value_t = 10_000)]
        pages: usize,
        /// Bytes per message body.
        #[arg(long, default_value_t = 200)]
        size: usize,
        #[arg(long, default_value = "bench-conversations")]
        dir: PathBuf,
        /// Only the second phase: open what is in --dir and page it.
        #[arg(long, hide = true)]
        open_only: bool,
    },
    /// Writers that print each acknowledged record (the kill -9 test).
    #[command(hide = true)]
    JournalWriter {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 64)]
        writers: usize,
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
    },
    /// Run the floor relay on 127.0.0.1 (prints `listening on ADDR`).
    Floor {
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
}

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("switchboard-bench: {err}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let limit = daemon::raise_nofile_limit();
    let bench_bin = std::env::current_exe()?;
    let daemon_bin = match cli.daemon {
        Some(p) => p,
        None => bench_bin.with_file_name("switchboard"),
    };
    let common = Common {
        daemon: daemon_bin,
        bench: bench_bin,
        bcrypt_cost: cli.bcrypt_cost,
    };
    let need = |fds: usize| {
        if let Some(limit) = limit
            && limit < fds as u64
        {
            eprintln!(
                "switchboard-bench: warning: open-files limit {limit} is below the {fds} this run needs; raise `ulimit -n`"
            );
        }
    };
    let line = match cli.command {
        Command::Floor { port } => {
            let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
            println!("listening on {}", listener.local_addr()?);
            floor::serve(listener)?;
            return Ok(());
        }
        Command::Relay {
            pairs,
            seconds,
            size,
            rate,
            no_floor,
            tls,
        } => {
            need(2 * pairs + 64);
            bench::relay_workload(
                &common,
                &RelayOptions {
                    pairs,
                    duration: Duration::from_secs_f64(seconds),
                    size,
                    rate,
                    grace: Duration::from_secs(2),
                    control: None,
                    tls: None,
                },
                !no_floor,
                tls,
            )?
        }
        Command::RelayStorm {
            pairs,
            clients,
            seconds,
            size,
            rate,
            threads,
            timeout,
        } => {
            need(2 * pairs + clients + 64);
            bench::relay_storm_workload(
                &common,
                &bench::RelayStormOptions {
                    relay: RelayOptions {
                        pairs,
                        duration: Duration::from_secs_f64(seconds),
                        size,
                        rate,
                        grace: Duration::from_secs(2),
                        control: None,
                        tls: None,
                    },
                    clients,
                    shards: threads,
                    timeout: Duration::from_secs_f64(timeout),
                },
            )?
        }
        Command::Idle {
            clients,
            threads,
            timeout,
        } => {
            need(clients + 64);
            bench::idle_workload(&common, clients, threads, Duration::from_secs_f64(timeout))?
        }
        Command::Storm {
            clients,
            threads,
            timeout,
        } => {
            need(clients + 64);
            bench::storm_workload(&common, clients, threads, Duration::from_secs_f64(timeout))?
        }
        Command::Reconnect {
            clients,
            threads,
            timeout,
        } => {
            need(clients + 64);
            bench::reconnect_workload(&common, clients, threads, Duration::from_secs_f64(timeout))?
        }
        Command::Journal {
            writers,
            seconds,
            size,
            dir,
            engines,
        } => {
            let lines = journal::journal_workload(&journal::JournalOptions {
                writers,
                duration: Duration::from_secs_f64(seconds),
                size,
                dir,
                engines,
            })?;
            for line in lines {
                println!("{line}");
            }
            return Ok(());
        }
        Command::Conversations {
            messages,
            conversations,
            writers,
            pages,
            size,
            dir,
            open_only,
        } => {
            if open_only {
                journal::conversations_open(&dir, pages)?
            } else {
                journal::conversations_workload(
                    &journal::ConversationOptions {
                        messages,
                        conversations,
                        writers,
                        pages,
                        size,
                        dir,
                    },
                    &common.bench,
                )?
            }
        }
        Command::JournalWriter {
            dir,
            writers,
            seconds,
        } => {
            journal::journal_writer(&dir, writers, seconds)?;
            return Ok(());
        }
        Command::Rooms {
            rooms,
            size,
            seconds,
            rate,
            text,
            threads,
            timeout,
        } => {
            need(rooms * size + 64);
            bench::rooms_workload(
                &common,
                &bench::rooms::RoomsOptions {
                    rooms,
                    size,
                    duration: Duration::from_secs_f64(seconds),
                    rate,
                    text,
                    shards: threads,
                    grace: Duration::from_secs(2),
                    timeout: Duration::from_secs_f64(timeout),
                },
            )?
        }
        Command::Setup { pairs, calls } => bench::setup_workload(
            &common,
            &SetupOptions {
                pairs,
                calls_per_pair: calls,
            },
        )?,
    };
    println!("{line}");
    Ok(())
}
