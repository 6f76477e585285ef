//! Crash tests for the directory backend, with real processes: a child process (this test binary, run
//! again with `KEEL_S3_CHILD` set) puts objects and is killed with SIGKILL — at a named step of a put
//! (`KEEL_CRASH_AT`) or at a random moment — and the parent then checks that every object is whole (its
//! checksum verifies), that acknowledged puts are there, that the store lock died with the child, and that
//! fencing still holds. Also: the "no credentials anywhere" configuration error, which needs an environment
//! with no AWS variables or profile, so it runs in a child too.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use keel_s3::dir::DirStore;
use keel_s3::{ObjectStore, PutBody, PutCondition, StoreError};

const CHILD: &str = "KEEL_S3_CHILD";

/// Runs the test `name` of this binary in a new process with `env`; stdout is piped.
fn spawn_child(name: &str, env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([name, "--exact", "--nocapture", "--test-threads", "1"]).stdout(Stdio::piped()).stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// The child's `acked N` lines, as they come.
fn acks(child: &mut Child) -> mpsc::Receiver<u64> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if let Some(n) = line.split_once("acked ").and_then(|(_, n)| n.trim().parse().ok()) {
                if tx.send(n).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

fn was_killed(status: std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(9) // SIGKILL
}

/// Object `i` of the put loop: the counter, then filler of a size that varies with `i` (up to 256 KiB,
/// so that a kill lands inside writes as well as between them).
fn versioned(i: u64) -> Bytes {
    let len = 8 + ((i * 7919) % (256 << 10)) as usize;
    let mut v = vec![(i % 251) as u8; len];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v.into()
}

fn counter_of(b: &[u8]) -> u64 {
    let i = u64::from_le_bytes(b[..8].try_into().unwrap());
    assert_eq!(b, &versioned(i)[..], "object {i} is not the bytes that were put");
    i
}

fn reserved_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_str().unwrap().starts_with(".keel-tmp-"))
        .count()
}

/// A put that must not block: the lock of a killed process must be gone.
async fn put_within(
    store: &DirStore,
    key: &str,
    v: Bytes,
    cond: PutCondition,
) -> Result<keel_s3::ObjectMeta, StoreError> {
    tokio::time::timeout(Duration::from_secs(10), store.put(key, PutBody::Bytes(v), cond))
        .await
        .expect("a put blocked: the killed process's store lock is still held")
}

/// Child: put `k` = 1 (acked), then put `k2` = 2 with the condition named by the parent, crashing at the
/// point the parent set (its second pass: the first put passes it once).
#[tokio::test]
async fn child_two_puts() {
    let Ok(dir) = std::env::var(CHILD) else { return };
    let store = DirStore::open(&dir).unwrap();
    store.put("k", PutBody::Bytes(versioned(1)), PutCondition::None).await.unwrap();
    println!("acked 1");
    let cond = match std::env::var("KEEL_S3_COND").unwrap().as_str() {
        "none" => PutCondition::None,
        "absent" => PutCondition::IfAbsent,
        "match" => PutCondition::IfMatch(store.head("k2").await.unwrap().etag),
        other => panic!("unknown condition {other}"),
    };
    store.put("k2", PutBody::Bytes(versioned(2)), cond).await.unwrap();
    println!("acked 2");
}

#[tokio::test]
async fn sigkill_at_each_step_of_a_put_leaves_whole_objects() {
    for point in ["dir-put-written", "dir-put-renamed"] {
        for cond in ["none", "absent", "match"] {
            let dir = tempfile::tempdir().unwrap();
            let store = DirStore::open(dir.path()).unwrap();
            let before = if cond == "match" {
                Some(store.put("k2", PutBody::Bytes(versioned(0)), PutCondition::None).await.unwrap())
            } else {
                None
            };
            let mut child = spawn_child(
                "child_two_puts",
                &[
                    (CHILD, dir.path().display().to_string()),
                    ("KEEL_S3_COND", cond.to_owned()),
                    ("KEEL_CRASH_AT", format!("{point}:2")),
                ],
            );
            let rx = acks(&mut child);
            let status = child.wait().unwrap();
            assert!(was_killed(status), "{point}/{cond}: the child was not killed at its crash point: {status}");
            let acked: Vec<u64> = rx.iter().collect();
            assert_eq!(acked, [1], "{point}/{cond}");

            let ctx = format!("killed at {point}, condition {cond}");
            let k = store.get("k").await.unwrap().bytes().await.unwrap();
            assert_eq!(counter_of(&k), 1, "{ctx}: the acknowledged put");
            let k2 = match store.get("k2").await {
                Ok(g) => Some(counter_of(&g.bytes().await.unwrap())),
                Err(StoreError::NotFound { .. }) => None,
                Err(e) => panic!("{ctx}: {e}"),
            };
            // Killed before the rename: the old state; after it: the new object, whole.
            let want = match (point, before.is_some()) {
                ("dir-put-written", true) => Some(0),
                ("dir-put-written", false) => None,
                _ => Some(2),
            };
            assert_eq!(k2, want, "{ctx}");
            let keys: Vec<String> = store.list("").map_ok(|m| m.key).try_collect().await.unwrap();
            let mut want_keys = vec!["k".to_owned()];
            want_keys.extend(want.map(|_| "k2".to_owned()));
            assert_eq!(keys, want_keys, "{ctx}: listing shows only whole objects");

            // The lock died with the child, and fencing still holds.
            let cur = store.head("k").await.unwrap();
            let again = put_within(&store, "k", versioned(5), PutCondition::IfAbsent).await;
            assert!(matches!(again, Err(StoreError::PreconditionFailed { .. })), "{ctx}: {again:?}");
            put_within(&store, "k", versioned(6), PutCondition::IfMatch(cur.etag.clone())).await.unwrap();
            let stale = put_within(&store, "k", versioned(7), PutCondition::IfMatch(cur.etag)).await;
            assert!(matches!(stale, Err(StoreError::PreconditionFailed { .. })), "{ctx}: {stale:?}");

            // A temporary file is left only when the kill came before the rename; cleanup removes it,
            // but not a young one unless asked to.
            let left = reserved_files(dir.path());
            assert_eq!(left, usize::from(point == "dir-put-written"), "{ctx}");
            assert_eq!(store.remove_stale_temporaries(Duration::from_secs(3600)).await.unwrap(), 0, "{ctx}");
            assert_eq!(store.remove_stale_temporaries(Duration::ZERO).await.unwrap(), left, "{ctx}");
            assert_eq!(reserved_files(dir.path()), 0, "{ctx}");
        }
    }
}

/// Child: compare-and-swap a counter object forever, printing each acknowledged value.
#[tokio::test]
async fn child_put_loop() {
    let Ok(dir) = std::env::var(CHILD) else { return };
    let store = DirStore::open(&dir).unwrap();
    let mut cur = match store.get("counter").await {
        Ok(g) => {
            let etag = g.meta.etag.clone();
            (counter_of(&g.bytes().await.unwrap()), etag)
        }
        Err(StoreError::NotFound { .. }) => {
            let m = store.put("counter", PutBody::Bytes(versioned(0)), PutCondition::IfAbsent).await.unwrap();
            (0, m.etag)
        }
        Err(e) => panic!("{e}"),
    };
    loop {
        let next = cur.0 + 1;
        let m = store.put("counter", PutBody::Bytes(versioned(next)), PutCondition::IfMatch(cur.1)).await.unwrap();
        println!("acked {next}");
        cur = (next, m.etag);
    }
}

#[tokio::test]
async fn sigkill_during_a_put_loop_loses_no_acknowledged_put() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::open(dir.path()).unwrap();
    let mut last = 0;
    for round in 0..6u64 {
        let mut child = spawn_child("child_put_loop", &[(CHILD, dir.path().display().to_string())]);
        let rx = acks(&mut child);
        // Wait for a few acknowledged puts, then kill at a moment that varies from round to round.
        let mut seen = 0;
        while seen < 3 {
            last = rx.recv_timeout(Duration::from_secs(30)).expect("the child acknowledged no put");
            seen += 1;
        }
        std::thread::sleep(Duration::from_micros(700 * (round * 37 % 11)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(was_killed(status), "{status}");
        last = rx.iter().last().unwrap_or(last).max(last);

        let now = counter_of(&store.get("counter").await.unwrap().bytes().await.unwrap());
        // The object is the last acknowledged put or the one in flight, never older and never torn.
        assert!(now == last || now == last + 1, "round {round}: stored {now}, last acknowledged {last}");
        last = now;
    }
    store.remove_stale_temporaries(Duration::ZERO).await.unwrap();
    assert_eq!(reserved_files(dir.path()), 0);
}

/// Child: an S3 store with no credentials anywhere must fail with one line saying how to give them.
#[tokio::test]
async fn child_no_credentials() {
    let Ok(endpoint) = std::env::var(CHILD) else { return };
    let mut cfg = keel_s3::s3::S3Config::new("some-bucket");
    cfg.endpoint = Some(endpoint);
    cfg.max_attempts = 1;
    let s = keel_s3::s3::S3Store::connect(cfg).await.unwrap();
    let e = s.head("some/key").await.unwrap_err();
    let line = e.to_string();
    assert!(matches!(e, StoreError::Config { .. }), "{line}");
    assert!(line.contains("no AWS credentials") && line.contains("AWS_ACCESS_KEY_ID"), "{line}");
    assert!(!line.contains('\n'), "one line: {line}");
    println!("acked 1");
}

#[test]
fn missing_credentials_is_one_clear_error() {
    let server = common::start_in_process();
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["child_no_credentials", "--exact", "--nocapture", "--test-threads", "1"]);
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    // No profile files, no instance metadata: nothing in the chain can answer.
    cmd.env("HOME", home.path()).env("AWS_EC2_METADATA_DISABLED", "true").env(CHILD, format!("http://{}", server.addr));
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("acked 1"), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
}
