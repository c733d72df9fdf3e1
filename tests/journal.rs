//! The journal under real faults: a writer process killed with SIGKILL in
//! the middle of 64 concurrent writers, and a file system that runs out of space.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard::application::store::{
    ConversationId, ConversationStore, NewMessage, StorageError,
};
use switchboard::domain::UserId;
use switchboard::infrastructure::conversations::ConversationFile;
use switchboard::infrastructure::journal::{Format, Journal, Spec};

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

/// On a full file system (a 256 KiB tmpfs), appends answer ENOSPC and are
/// not acknowledged; every acknowledged one survives a reopen, no failed
/// one does, and once space is freed appends succeed again. Conversation
/// seqs stay dense through it.
#[test]
fn a_full_disk_answers_enospc_and_acknowledges_nothing_lost() {
    let Some(fs) = Tmpfs::mount("256k") else {
        eprintln!(
            "skipped: cannot mount a tmpfs here (needs root); the journal's unit tests inject ENOSPC instead"
        );
        return;
    };
    let path = fs.path().join("full.journal");
    let store = ConversationFile::open(&fs.path().join("conversations.journal")).unwrap();
    let journal = Arc::new(Journal::open(&path, FRAMED, |_| Ok(())).unwrap());
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
    std::fs::remove_file(&path).unwrap();
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
