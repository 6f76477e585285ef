//! Crash tests with real processes: `keel journal stress` is SIGKILLed at random moments — during start-up
//! and recovery, mid-batch, mid-roll-over — and after each kill every acknowledged record must be present
//! with its exact payload and the journal must verify. The next cycle's stress reopens (and repairs) the
//! journal, so recovery after recovery is exercised too.
//!
//! `KEEL_CRASH_CYCLES` sets the number of cycles (default 100; a soak run uses thousands).
//! `KEEL_TEST_SEED` replays a failing run.

use std::process::{Command, Stdio};
use std::time::Duration;

use keel_tests::{keel, keel_bin, stderr, stdout, Rng};

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_record() {
    let cycles: u64 = std::env::var("KEEL_CRASH_CYCLES").ok().and_then(|s| s.parse().ok()).unwrap_or(100);
    let mut rng = Rng::from_env("crash");
    let work = tempfile::tempdir().unwrap();
    // KEEL_CRASH_KEEP=1 keeps the journals for a post-mortem (the path is printed).
    let work_path = work.path().to_path_buf();
    let _work = if std::env::var_os("KEEL_CRASH_KEEP").is_some() {
        eprintln!("crash: keeping {}", work_path.display());
        Err(work.keep())
    } else {
        Ok(work)
    };
    let work = &work_path;
    let mut acked_total = 0usize;
    let (mut dir, mut ack_log) = (work.to_path_buf(), work.to_path_buf());
    let mut acked_in_journal = 0usize;
    let key_file = work.join("keys");
    std::fs::write(&key_file, format!("# crash test\n3:{}\n", "c7".repeat(32))).unwrap();
    let key_s = key_file.to_str().unwrap().to_owned();
    let mut key_args: Vec<String> = Vec::new();
    for cycle in 0..cycles {
        // Every ten cycles a fresh journal, so that verification does not re-read an ever larger one.
        if cycle % 10 == 0 {
            acked_total += acked_in_journal;
            acked_in_journal = 0;
            dir = work.join(format!("journal-{cycle}"));
            ack_log = work.join(format!("acks-{cycle}.log"));
            // Every other journal is encrypted.
            key_args = if (cycle / 10) % 2 == 1 { vec!["--key-file".into(), key_s.clone()] } else { Vec::new() };
        }
        let (dir_s, ack_s) = (dir.to_str().unwrap(), ack_log.to_str().unwrap());
        let sync = match rng.range(0, 6) {
            0 => "never".to_owned(),
            1 => format!("interval:{}", rng.range(1, 20)),
            _ => "always".to_owned(),
        };
        let size = [16u64, 100, 1000, 4000, 12_000][rng.range(0, 5) as usize].to_string();
        let writers = rng.range(1, 9).to_string();
        // One run in five: 32 writers of 16 KiB records into 4 MiB segments, so that batches are large
        // enough for the leader to overlap each fdatasync with the next batch's write, and get killed there.
        let (size, writers, segment_bytes) = if rng.range(0, 5) == 0 {
            ("16384".to_owned(), "32".to_owned(), "4194304")
        } else {
            (size, writers, "262144")
        };
        // A third of the runs commit records in transactions (half of them prepared first).
        let tx = if rng.range(0, 3) == 0 { rng.range(2, 6) } else { 0 }.to_string();
        // Most runs delete most of what they add, so segments die and background reclaim, compaction
        // (eager here) and checkpoints run — and get killed — under load.
        let delete_percent = ["0", "50", "90", "90"][rng.range(0, 4) as usize];
        let mut child = Command::new(keel_bin())
            .args(["journal", "stress", "--dir", dir_s, "--ack-log", ack_s, "--secs", "60"])
            .args([
                "--writers",
                &writers,
                "--size",
                &size,
                "--sync",
                &sync,
                "--segment-bytes",
                segment_bytes,
                "--tx",
                &tx,
            ])
            .args(["--delete-percent", delete_percent, "--compact-below", "0.6", "--checkpoint-every", "1"])
            .args(&key_args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Mostly mid-run, sometimes during start-up, where recovery seals torn tails and deletes spares.
        let delay_ms = if rng.range(0, 4) == 0 { rng.range(0, 30) } else { rng.range(30, 300) };
        std::thread::sleep(Duration::from_millis(delay_ms));
        let still_running = child.try_wait().unwrap().is_none();
        child.kill().unwrap();
        let status = child.wait().unwrap();
        if !still_running {
            let mut err = String::new();
            use std::io::Read;
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("cycle {cycle}: stress exited on its own ({status}): {err}");
        }
        let context = format!(
            "cycle {cycle} (sync {sync}, size {size}, writers {writers}, tx {tx}, delete {delete_percent} %, keys {}, killed after {delay_ms} ms)",
            !key_args.is_empty()
        );
        let with_keys = |args: &[&str]| {
            let mut v: Vec<&str> = args.to_vec();
            v.extend(key_args.iter().map(String::as_str));
            keel(&v)
        };
        let verify = with_keys(&["journal", "verify", "--dir", dir_s]);
        let nothing_acked = std::fs::metadata(&ack_log).map_or(true, |m| m.len() == 0);
        let not_created = stderr(&verify).contains("no journal here") || !dir.exists();
        if nothing_acked && not_created {
            // Killed before the journal's identity file was written: there is no journal yet, and nothing
            // was acknowledged. The next cycle creates it.
            continue;
        }
        assert!(verify.status.success(), "{context}: verify failed:\n{}{}", stdout(&verify), stderr(&verify));
        if std::fs::metadata(&ack_log).is_ok() {
            let acks = with_keys(&["journal", "verify-acks", "--dir", dir_s, "--ack-log", ack_s]);
            assert!(acks.status.success(), "{context}: verify-acks failed:\n{}{}", stdout(&acks), stderr(&acks));
            acked_in_journal =
                std::fs::read_to_string(&ack_log).unwrap().lines().filter(|l| !l.starts_with(['~', '-'])).count();
        }
    }
    acked_total += acked_in_journal;
    assert!(acked_total > 1000, "the runs acknowledged only {acked_total} records: the test proved little");

    // A final clean reopen repairs any torn tail; afterwards verify finds none and every ack is present.
    let keys = (!key_args.is_empty()).then(|| keel_journal::crypto::keys::KeyRing::from_file(&key_file).unwrap());
    let (dir_s, ack_s) = (dir.to_str().unwrap(), ack_log.to_str().unwrap());
    let (j, rec) =
        keel_journal::Journal::open(&dir, keel_journal::Options { segment_bytes: 262_144, keys, ..Default::default() })
            .unwrap();
    assert!(!rec.records.is_empty());
    j.close().unwrap();
    let with_keys = |args: &[&str]| {
        let mut v: Vec<&str> = args.to_vec();
        v.extend(key_args.iter().map(String::as_str));
        keel(&v)
    };
    let verify = with_keys(&["journal", "verify", "--dir", dir_s]);
    assert!(verify.status.success() && !stdout(&verify).contains("torn"), "{}", stdout(&verify));
    assert!(key_args.is_empty() || stdout(&verify).contains("authenticated"), "{}", stdout(&verify));
    let acks = with_keys(&["journal", "verify-acks", "--dir", dir_s, "--ack-log", ack_s]);
    assert!(acks.status.success(), "{}", stdout(&acks));
    eprintln!("crash: {cycles} kill-and-recover cycles, {acked_total} acknowledged records, all present");
}
