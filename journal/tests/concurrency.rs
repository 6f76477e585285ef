//! Many threads and tasks appending at once, across roll-overs: everything acknowledged is recovered, and
//! each caller's records keep the order of its calls.

use std::sync::Arc;

use keel_journal::{Journal, Options, SyncPolicy};

fn payload(id: u64) -> Vec<u8> {
    let len = 16 + (id * 7919 % 3000) as usize;
    (0..len).map(|i| (id as usize ^ i) as u8).collect()
}

/// Segment files in `dir`.
fn segment_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "kseg"))
        .count()
}

fn options(sync: SyncPolicy) -> Options {
    Options { segment_bytes: 256 * 1024, sync, ..Options::default() }
}

fn threads_then_reopen(sync: SyncPolicy) {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), options(sync)).unwrap();
    let j = Arc::new(j);
    let per_thread = 300u64;
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                let mut last = 0;
                for k in 0..per_thread {
                    let id = t * per_thread + k;
                    let lsn = j.add(id, t as u8, &payload(id)).unwrap();
                    assert!(lsn.0 > last, "a caller's records keep their order");
                    last = lsn.0;
                    if k.is_multiple_of(3) {
                        j.update(id, 9, &payload(id + 1)).unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(j);
    let (j, rec) = Journal::open(dir.path(), options(sync)).unwrap();
    assert_eq!(rec.records.len() as u64, 8 * per_thread);
    for (id, r) in &rec.records {
        let want = if (id % per_thread).is_multiple_of(3) { payload(id + 1) } else { payload(*id) };
        assert_eq!(j.read_version(r).unwrap(), want, "record {id}");
        assert_eq!(j.read(*id).unwrap(), want, "record {id} by id");
    }
    assert!(segment_files(dir.path()) > 3, "roll-overs happened");
}

#[test]
fn threads_sync_always() {
    threads_then_reopen(SyncPolicy::Always);
}

#[test]
fn threads_sync_interval() {
    threads_then_reopen(SyncPolicy::Interval(std::time::Duration::from_millis(2)));
}

#[test]
fn threads_sync_never() {
    threads_then_reopen(SyncPolicy::Never);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_tasks_and_submission_order() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), options(SyncPolicy::Always)).unwrap();
    let j = Arc::new(j);
    let mut tasks = Vec::new();
    for t in 0..32u64 {
        let j = j.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..50 {
                let id = t * 1000 + k;
                j.add_async(id, 0, &payload(id)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Submitted without awaiting in between: logged in submission order.
    let pending: Vec<_> = (0..100u64).map(|k| j.add_async(100_000 + k, 0, &payload(k))).collect();
    let mut last = 0;
    for p in pending {
        let lsn = p.await.unwrap();
        assert!(lsn.0 > last);
        last = lsn.0;
    }
    j.sync_async().await.unwrap();
    drop(j);
    let (_j, rec) = Journal::open(dir.path(), options(SyncPolicy::Always)).unwrap();
    assert_eq!(rec.records.len(), 32 * 50 + 100);
}

/// Blocking threads and async tasks on one journal at once. A blocking caller that finds the journal idle
/// writes its own request straight from its buffer, one that finds a leader or a queue queues a copy, and
/// the writer thread leads for the tasks: leadership passes between all three. Every record is recovered
/// with its payload, and each caller's LSNs rise.
#[test]
fn blocking_threads_and_async_tasks_together() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), options(SyncPolicy::Always)).unwrap();
    let j = Arc::new(j);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let j = j.clone();
            rt.spawn(async move {
                let mut last = 0;
                for k in 0..100 {
                    let id = 1_000_000 + t * 1000 + k;
                    let lsn = j.add_async(id, 1, &payload(id)).await.unwrap();
                    assert!(lsn.0 > last, "a task's records keep their order");
                    last = lsn.0;
                }
            })
        })
        .collect();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                let mut last = 0;
                for k in 0..200 {
                    let id = t * 1000 + k;
                    let lsn = j.add(id, 2, &payload(id)).unwrap();
                    assert!(lsn.0 > last, "a thread's records keep their order");
                    last = lsn.0;
                    if k % 10 == 0 {
                        last = j.sync().unwrap().0.max(last);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for t in tasks {
        rt.block_on(t).unwrap();
    }
    drop(rt);
    drop(j);
    let (j, rec) = Journal::open(dir.path(), options(SyncPolicy::Always)).unwrap();
    assert_eq!(rec.records.len(), 8 * 100 + 4 * 200);
    for (id, r) in &rec.records {
        assert_eq!(j.read_version(r).unwrap(), payload(*id), "record {id}");
    }
    assert!(segment_files(dir.path()) > 3, "roll-overs happened");
}

#[test]
fn payload_over_the_limit_is_refused_with_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), options(SyncPolicy::Always)).unwrap();
    let max = j.payload_bytes_max();
    j.add(1, 0, &vec![1u8; max as usize]).unwrap();
    let e = j.add(2, 0, &vec![1u8; max as usize + 1]).unwrap_err();
    assert!(e.to_string().contains(&max.to_string()), "{e}");
}

/// Enough writers of large records that batches reach `PIPELINE_MIN_BATCH_BYTES`: their fdatasyncs run on
/// the helper thread while the next batch is written, across roll-overs (plaintext and encrypted). Every
/// acknowledged record is recovered, each caller's LSNs rise, and the journal closes cleanly.
fn overlapped_fdatasyncs(keys: Option<keel_journal::crypto::keys::KeyRing>) {
    let dir = tempfile::tempdir().unwrap();
    let opts = || Options { segment_bytes: 4 * 1024 * 1024, keys: keys.clone(), ..Options::default() };
    let big = |id: u64| vec![(id % 251) as u8; 16 * 1024 + (id % 7) as usize];
    let (j, _) = Journal::open(dir.path(), opts()).unwrap();
    let j = Arc::new(j);
    let (writers, per_thread) = (32u64, 60u64);
    let threads: Vec<_> = (0..writers)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                let mut last = 0;
                for k in 0..per_thread {
                    let id = t * per_thread + k;
                    let lsn = j.add(id, 0, &big(id)).unwrap();
                    assert!(lsn.0 > last, "a caller's records keep their order");
                    last = lsn.0;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = j.write_stats();
    assert_eq!(stats.frames, writers * per_thread);
    assert!(stats.overlapped_fdatasyncs > 0, "large batches overlapped their fdatasync: {stats:?}");
    assert!(stats.fdatasyncs < stats.frames, "group commit shared fdatasyncs: {stats:?}");
    match keys {
        None => assert_eq!(stats.sealed_units, 0),
        Some(_) => assert_eq!(stats.sealed_units, stats.writes, "one unit per write: {stats:?}"),
    }
    Arc::into_inner(j).unwrap().close().unwrap();
    let (j, rec) = Journal::open(dir.path(), opts()).unwrap();
    assert!(rec.report.torn_tail.is_none(), "a clean close leaves no torn tail");
    assert_eq!(rec.records.len() as u64, writers * per_thread);
    for (id, r) in &rec.records {
        assert_eq!(j.read_version(r).unwrap(), big(*id), "record {id}");
    }
    assert!(segment_files(dir.path()) > 3, "roll-overs happened");
}

#[test]
fn overlapped_fdatasyncs_plaintext() {
    overlapped_fdatasyncs(None);
}

#[test]
fn overlapped_fdatasyncs_encrypted() {
    let keys = keel_journal::crypto::keys::KeyRing::parse(&format!("1:{}", "5e".repeat(32)), "test").unwrap();
    overlapped_fdatasyncs(Some(keys));
}
