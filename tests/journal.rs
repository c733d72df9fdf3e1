//! The journal under real faults: a writer process killed with SIGKILL in
//! the middle of 64 concurrent writers, and a file system that runs out of
//! space (a real small tmpfs where this process may mount one, else writes
//! past a small budget sent to /dev/full for the kernel's own ENOSPC).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use switchboard::application::store::{
    ConversationId, ConversationStore, NewMessage, StorageError,
};
use switchboard::domain::UserId;
use switchboard::infrastructure::conversations::ConversationFile;
use switchboard::infrastructure::journal::{Format, Hooks, Journal, Spec};

const BENCH: &str = env!("CARGO_BIN_EXE_switchboard-bench");

const FRAMED: Spec<'static> = Spec {
    format: Format::Framed,
    initial: b"",
    record_name: "a test record",
};

fn records(path: &Path) -> Vec<String> {
    let mut seen = Vec::new();
    Journal::open(path, FRAMED, |r| {
        seen.push(String::from_utf8_lossy(r.payload).into_owned());
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{} does not reopen: {e}", path.display()));
    seen
}

/// kill -9 in the middle of 64 concurrent writers (a real process): after
/// the restart every record the writer had acknowledged is there, the file
/// opens (a torn tail, if any, dropped), and appends go on.
#[test]
fn kill_9_during_64_concurrent_writers_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BENCH)
        .args([
            "journal-writer",
            "--writers",
            "64",
            "--seconds",
            "60",
            "--dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start switchboard-bench journal-writer");
    let stdout = child.stdout.take().unwrap();
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(record) = line.strip_prefix("ack ") {
            acked.push(record.to_string());
        }
        if acked.len() >= 3000 {
            // SIGKILL (std's kill on Unix) mid-flight: the other writers are inside appends.
            child.kill().unwrap();
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writers too slow: {} acks",
            acked.len()
        );
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed, not finished: {status}");
    let path = dir.path().join("writer.journal");
    let stored: HashSet<String> = records(&path).into_iter().collect();
    let missing: Vec<&String> = acked.iter().filter(|r| !stored.contains(*r)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged records lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    let journal = Journal::open(&path, FRAMED, |_| Ok(())).unwrap();
    journal.append(b"after the crash").unwrap();
    drop(journal);
    assert_eq!(
        records(&path).last().map(String::as_str),
        Some("after the crash")
    );
}

/// A small tmpfs mounted for the test; unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` when this process may not mount (not root, no CAP_SYS_ADMIN).
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A small disk: a 256 KiB tmpfs, or (where this process may not mount)
/// a directory whose journals write through a hook that spends a 256 KiB
/// budget and sends what does not fit to /dev/full (the kernel's ENOSPC).
enum SmallDisk {
    Tmpfs(Tmpfs),
    Budget {
        dir: tempfile::TempDir,
        left: Arc<AtomicU64>,
    },
}

impl SmallDisk {
    fn new() -> SmallDisk {
        if let Some(fs) = Tmpfs::mount("256k") {
            return SmallDisk::Tmpfs(fs);
        }
        assert!(
            Path::new("/dev/full").exists(),
            "neither a tmpfs nor /dev/full: this test cannot fill a disk here"
        );
        eprintln!("no tmpfs (cannot mount here): a 256 KiB budget and /dev/full stand in");
        SmallDisk::budget()
    }

    fn budget() -> SmallDisk {
        SmallDisk::Budget {
            dir: tempfile::tempdir().unwrap(),
            left: Arc::new(AtomicU64::new(256 << 10)),
        }
    }

    fn path(&self) -> PathBuf {
        match self {
            SmallDisk::Tmpfs(fs) => fs.path(),
            SmallDisk::Budget { dir, .. } => dir.path().to_path_buf(),
        }
    }

    /// Makes a journal on this disk write as it would on a full one.
    fn attach(&self, journal: &Journal) {
        let SmallDisk::Budget { left, .. } = self else {
            return;
        };
        let left = left.clone();
        journal.set_hooks(Hooks {
            write: Some(Arc::new(move |file: &File, buf: &[u8], at: u64| {
                let n = buf.len() as u64;
                let fits = left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(n))
                    .is_ok();
                if fits {
                    return file.write_all_at(buf, at);
                }
                OpenOptions::new()
                    .write(true)
                    .open("/dev/full")?
                    .write_all(buf)
            })),
            sync: None,
        });
    }

    /// Removes a file, its space coming back.
    fn remove(&self, path: &Path) {
        let len = std::fs::metadata(path).unwrap().len();
        std::fs::remove_file(path).unwrap();
        if let SmallDisk::Budget { left, .. } = self {
            left.fetch_add(len, Ordering::SeqCst);
        }
    }
}

/// On a full file system, appends answer ENOSPC and are not acknowledged;
/// every acknowledged one survives a reopen, no failed one does, the
/// journal counts exactly the acknowledged ones, and once space is freed
/// appends succeed again. Conversation seqs stay dense through it.
#[test]
fn a_full_disk_answers_enospc_and_acknowledges_nothing_lost() {
    fill_up(SmallDisk::new());
}

/// The same with the budget and /dev/full, wherever this runs (so the
/// guarantee is checked even where no tmpfs can be mounted).
#[test]
fn a_full_disk_by_budget_and_dev_full_acknowledges_nothing_lost() {
    fill_up(SmallDisk::budget());
}

fn fill_up(fs: SmallDisk) {
    let path = fs.path().join("full.journal");
    let store = ConversationFile::open(&fs.path().join("conversations.journal")).unwrap();
    fs.attach(store.journal());
    let journal = Arc::new(Journal::open(&path, FRAMED, |_| Ok(())).unwrap());
    fs.attach(&journal);
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let journal = journal.clone();
            std::thread::spawn(move || {
                let (mut acked, mut failed) = (Vec::new(), Vec::new());
                for n in 0..200 {
                    let record = format!("w{w}-{n}-{}", "x".repeat(1000));
                    match journal.append(record.as_bytes()) {
                        Ok(_) => acked.push(record),
                        Err(err) => {
                            assert_eq!(err.raw_os_error(), Some(28), "{err}");
                            failed.push(record);
                        }
                    }
                }
                (acked, failed)
            })
        })
        .collect();
    let (mut acked, mut failed) = (Vec::new(), Vec::new());
    for w in writers {
        let (a, f) = w.join().unwrap();
        acked.extend(a);
        failed.extend(f);
    }
    assert!(!failed.is_empty(), "the tmpfs never filled up");
    assert!(!acked.is_empty());
    assert_eq!(journal.stats().appends, acked.len() as u64);
    drop(journal);
    let stored: HashSet<String> = records(&path).into_iter().collect();
    assert_eq!(
        stored.len(),
        acked.len(),
        "exactly the acknowledged records"
    );
    for r in &acked {
        assert!(stored.contains(r));
    }
    // Conversation logs on the same full disk: errors, and no gap in the seqs.
    let msg = |body: &'static str| NewMessage {
        sender: UserId(1),
        sent_at: 1,
        client_id: None,
        body: body.as_bytes(),
    };
    let result = store.append(ConversationId(1), msg("y".repeat(5000).leak()));
    match result {
        Err(StorageError::Io(err)) => assert_eq!(err.raw_os_error(), Some(28), "{err}"),
        other => panic!("expected ENOSPC, got {other:?}"),
    }
    assert_eq!(store.last_seq(ConversationId(1)).unwrap(), 0);
    fs.remove(&path);
    assert_eq!(
        store
            .append(ConversationId(1), msg("room now"))
            .unwrap()
            .seq,
        1
    );
    drop(store);
    let reopened = ConversationFile::open(&fs.path().join("conversations.journal")).unwrap();
    assert_eq!(reopened.last_seq(ConversationId(1)).unwrap(), 1);
}
