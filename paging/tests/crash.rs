//! Crash tests with real processes: a child process (this test binary run again with `KEEL_PAGING_CHILD`
//! set) produces into a paged address — plain sends and two-message transactions — while a consumer
//! receives and acknowledges, and it is killed with SIGKILL, at a random moment or at a named step
//! (`KEEL_CRASH_AT`). After each kill the parent reopens the store and checks: every send the child was
//! answered for is there, every acknowledged message stays acknowledged, every other one is delivered, a
//! transaction is all or nothing, payloads are intact, and the pending counts are exact.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use keel_journal::TxId;
use keel_paging::{PagingOptions, Sent};

const CHILD: &str = "KEEL_PAGING_CHILD";

/// Every message paged; with `objects`, complete pages go to a directory object store there.
fn options(objects: Option<&Path>) -> PagingOptions {
    match objects {
        Some(d) => common::with_objects(keel_s3::dir::DirStore::open(d).unwrap().into()),
        None => common::always_paged(),
    }
}

/// Message `i`: i, then filler whose length and bytes follow from i.
fn message(i: u64) -> Vec<u8> {
    let len = 8 + (i * 131 % 3000) as usize;
    let mut v: Vec<u8> = (0..len).map(|k| (k as u64 ^ i) as u8).collect();
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

fn index_of(payload: &[u8]) -> u64 {
    let i = u64::from_le_bytes(payload[..8].try_into().unwrap());
    assert_eq!(payload, &message(i)[..], "payload of message {i} damaged");
    i
}

/// Child: produce (plain, and every fifth round a two-message transaction) and consume with acks, printing
/// each answered step, until killed.
#[test]
fn child_produce_and_consume() {
    let Ok(dir) = std::env::var(CHILD) else { return };
    let first: u64 = std::env::var("KEEL_PAGING_FIRST").unwrap().parse().unwrap();
    // The parent names the object store (if any) in `KEEL_PAGING_OBJECTS`.
    let objects = std::env::var_os("KEEL_PAGING_OBJECTS").map(std::path::PathBuf::from);
    let (paging, _) = common::open(Path::new(&dir), options(objects.as_deref()));
    let paging = std::sync::Arc::new(paging);
    let a = paging.address("q").unwrap();
    let sub = a.subscribe("s").unwrap();
    let consumer = std::thread::spawn(move || loop {
        let Some(d) = sub.receive_timeout(Duration::from_millis(50)).unwrap() else { continue };
        println!("acking {}", d.seq);
        sub.ack(d.seq).unwrap();
        println!("acked {}", d.seq);
    });
    let mut i = first;
    let mut tx = first * 10 + 1;
    loop {
        if i.is_multiple_of(5) {
            let t = TxId::new(tx).unwrap();
            tx += 1;
            let Sent::Paged(s1) = a.send(&message(i), Some(t)).unwrap() else { unreachable!() };
            let Sent::Paged(s2) = a.send(&message(i + 1), Some(t)).unwrap() else { unreachable!() };
            println!("txsent {s1} {s2}");
            paging.commit(t).unwrap();
            println!("committed {s1} {s2}");
            i += 2;
        } else {
            let Sent::Paged(seq) = a.send(&message(i), None).unwrap() else { unreachable!() };
            println!("sent {seq} {i}");
            i += 1;
        }
        assert!(!consumer.is_finished());
    }
}

#[derive(Default)]
struct Log {
    sent: BTreeSet<u64>,
    acked: BTreeSet<u64>,
    /// Acknowledgements begun whose answer the kill may have cut off: either outcome is right.
    acking: BTreeSet<u64>,
    /// Transactions whose sends were answered: (seq, seq) → committed?
    txs: BTreeMap<(u64, u64), bool>,
    next_index: u64,
}

fn run_child(dir: &Path, objects: Option<&Path>, log: &mut Log, crash_at: Option<String>, kill_after: Duration) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["child_produce_and_consume", "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD, dir)
        .env("KEEL_PAGING_FIRST", (log.next_index + 10).to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(c) = &crash_at {
        cmd.env("KEEL_CRASH_AT", c);
    }
    if let Some(o) = objects {
        cmd.env("KEEL_PAGING_OBJECTS", o);
    }
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            // The harness prints its own text before the first line of ours.
            let Some(pos) =
                ["sent ", "acking ", "acked ", "txsent ", "committed "].iter().filter_map(|w| line.find(w)).min()
            else {
                continue;
            };
            let _ = tx.send(line[pos..].to_owned());
        }
    });
    if crash_at.is_none() {
        std::thread::sleep(kill_after);
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "the child died of something other than SIGKILL: {status}");
    reader.join().unwrap();
    for line in rx.try_iter() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let n = |k: usize| w[k].parse::<u64>().unwrap();
        match w[0] {
            "sent" => {
                log.sent.insert(n(1));
                log.next_index = log.next_index.max(n(2) + 1);
            }
            "acking" => {
                log.acking.insert(n(1));
            }
            "acked" => {
                log.acked.insert(n(1));
            }
            "txsent" => {
                log.txs.insert((n(1), n(2)), false);
            }
            "committed" => {
                log.txs.insert((n(1), n(2)), true);
                log.sent.extend([n(1), n(2)]);
            }
            _ => {}
        }
    }
    log.next_index += 1000;
}

/// Reopens the store and checks it against what the child was told; consumes nothing.
fn check(dir: &Path, objects: Option<&Path>, log: &Log, round: &str) {
    let (paging, _) = common::open(dir, options(objects));
    let a = paging.address("q").unwrap();
    let Some(sub) = a.subscription("s") else {
        assert!(log.sent.is_empty() && log.acked.is_empty(), "{round}: the subscription is gone");
        return;
    };
    let pending = sub.pending();
    let mut delivered = BTreeSet::new();
    let mut bytes = 0;
    while let Some(d) = sub.receive().unwrap() {
        index_of(&d.payload);
        bytes += d.payload.len() as u64;
        assert!(delivered.insert(d.seq), "{round}: {} delivered twice", d.seq);
        assert!(!log.acked.contains(&d.seq), "{round}: acknowledged message {} delivered again", d.seq);
    }
    assert_eq!((pending.messages, pending.bytes), (delivered.len() as u64, bytes), "{round}: pending counts");
    for s in &log.sent {
        let in_doubt = log.acking.contains(s) && !log.acked.contains(s);
        assert!(log.acked.contains(s) || delivered.contains(s) || in_doubt, "{round}: answered send {s} lost");
    }
    for (&(s1, s2), &committed) in &log.txs {
        let seen = |s| delivered.contains(&s) || log.acking.contains(&s);
        assert_eq!(seen(s1), seen(s2), "{round}: transaction ({s1}, {s2}) only half visible");
        if committed {
            assert!(seen(s1), "{round}: committed transaction ({s1}, {s2}) lost");
        }
    }
}

#[test]
fn sigkill_at_random_moments_loses_no_answered_send_or_ack() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::default();
    let rounds: u64 = std::env::var("KEEL_PAGING_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    for round in 0..rounds {
        run_child(dir.path(), None, &mut log, None, Duration::from_millis(150 + round * 37 % 200));
        check(dir.path(), None, &log, &format!("random kill {round}"));
    }
    assert!(log.sent.len() > 20, "the child got little done: {} sends", log.sent.len());
}

#[test]
fn sigkill_with_pages_in_an_object_store() {
    let dir = tempfile::tempdir().unwrap();
    let objects = tempfile::tempdir().unwrap();
    let o = Some(objects.path());
    let mut log = Log::default();
    run_child(dir.path(), o, &mut log, Some("paging-uploaded:3".into()), Duration::ZERO);
    check(dir.path(), o, &log, "killed between upload and local delete");
    for round in 0..4u64 {
        run_child(dir.path(), o, &mut log, None, Duration::from_millis(200 + round * 53 % 150));
        check(dir.path(), o, &log, &format!("random kill {round}, object store"));
    }
}

#[test]
fn sigkill_at_each_paging_step() {
    for point in [
        "paging-page-header-written:4",
        "paging-page-created:3",
        "paging-written:40",
        "paging-acked:25",
        "paging-pages-deleted:1",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::default();
        run_child(dir.path(), None, &mut log, Some(point.to_owned()), Duration::ZERO);
        check(dir.path(), None, &log, point);
        // And the store works on: another life, killed at random.
        run_child(dir.path(), None, &mut log, None, Duration::from_millis(120));
        check(dir.path(), None, &log, &format!("after {point}"));
    }
}
