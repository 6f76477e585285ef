//! Online compaction: live records of sparse old segments move forward while appends continue; the old
//! segments go; every record reads back and reopens the same, from a checkpoint or a full scan.

use std::collections::BTreeMap;
use std::sync::Arc;

use keel_journal::crypto::keys::KeyRing;
use keel_journal::{CompactionPolicy, Journal, Options, RecoveryMode};

fn options(keys: Option<KeyRing>) -> Options {
    Options { segment_bytes: 64 * 1024, auto_maintenance: false, keys, ..Options::default() }
}

fn payload(id: u64, version: u64) -> Vec<u8> {
    let mut p = format!("{id}:{version}:").into_bytes();
    p.resize(1500 + (id % 7) as usize * 100, (id ^ version) as u8);
    p
}

fn segment_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "kseg"))
        .count()
}

fn check(j: &Journal, dir: &std::path::Path, keys: Option<&KeyRing>, want: &BTreeMap<u64, Vec<u8>>) {
    for (id, p) in want {
        assert_eq!(&j.read(*id).unwrap(), p, "record {id}");
    }
    let i = keel_journal::inspect::inspect(dir, RecoveryMode::Strict, keys, &mut |_| {});
    // The journal is open (it holds the lock); inspect refuses, which is right. Reopen checks below.
    assert!(i.is_err());
}

fn reopen_matches(dir: &std::path::Path, keys: Option<KeyRing>, want: &BTreeMap<u64, Vec<u8>>) {
    let (j, rec) = Journal::open(dir, options(keys.clone())).unwrap();
    let got: BTreeMap<u64, Vec<u8>> = rec.records.iter().map(|(id, r)| (*id, j.read_version(r).unwrap())).collect();
    assert_eq!(&got, want, "reopen (checkpoint: {:?})", rec.report.checkpoint);
    drop(j);
    // And a full scan, which ignores checkpoints.
    let i = keel_journal::inspect::inspect(dir, RecoveryMode::Strict, keys.as_ref(), &mut |_| {}).unwrap();
    let got: BTreeMap<u64, Vec<u8>> =
        i.recovered.records.iter().map(|(id, r)| (*id, i.reader.read(r).unwrap())).collect();
    assert_eq!(&got, want, "full scan");
}

fn sparse_then_compact(keys: Option<KeyRing>) {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), options(keys.clone())).unwrap();
    let mut want = BTreeMap::new();
    for id in 0..400u64 {
        j.add(id, (id % 5) as u8, &payload(id, 0)).unwrap();
        if id % 10 == 0 {
            want.insert(id, payload(id, 0));
        }
    }
    for id in 0..400u64 {
        if id % 10 != 0 {
            j.delete(id).unwrap();
        }
    }
    let before = segment_count(dir.path());
    // One live record in ten pins every segment: reclaim alone frees nothing.
    assert!(j.reclaim().unwrap().segments.is_empty());
    let r = j.compact(&CompactionPolicy::offline()).unwrap();
    assert!((30..=40).contains(&r.records_moved), "the live records of every segment but the newest: {r:?}");
    assert!(r.reclaimed.segments.len() >= 8, "{r:?}");
    assert!(segment_count(dir.path()) < before / 2, "{before} -> {}", segment_count(dir.path()));
    for (id, rec) in &want {
        assert_eq!(j.get(*id).unwrap().kind, (*id % 5) as u8, "kind kept");
        assert!(rec.len() > 1000);
    }
    check(&j, dir.path(), keys.as_ref(), &want);
    // The moved records keep their LSNs: a broker's ordering survives compaction.
    j.checkpoint().unwrap();
    drop(j);
    reopen_matches(dir.path(), keys, &want);
}

#[test]
fn compaction_empties_sparse_segments_plaintext() {
    sparse_then_compact(None);
}

#[test]
fn compaction_empties_sparse_segments_encrypted() {
    sparse_then_compact(Some(KeyRing::parse(&format!("1:{}", "77".repeat(32)), "test").unwrap()));
}

#[test]
fn compaction_under_concurrent_updates_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), options(None)).unwrap();
    let j = Arc::new(j);
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let j = j.clone();
            std::thread::spawn(move || {
                let mut want = BTreeMap::new();
                let mut state = w.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for step in 0..1500u64 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let id = w * 1_000_000 + state % 200;
                    match (want.contains_key(&id), state % 4) {
                        (false, _) => {
                            j.add(id, 1, &payload(id, step)).unwrap();
                            want.insert(id, payload(id, step));
                        }
                        (true, 0) => {
                            j.delete(id).unwrap();
                            want.remove(&id);
                        }
                        (true, _) => {
                            j.update(id, 1, &payload(id, step)).unwrap();
                            want.insert(id, payload(id, step));
                        }
                    }
                }
                want
            })
        })
        .collect();
    let mut passes = 0;
    let mut moved = 0;
    while writers.iter().any(|w| !w.is_finished()) {
        let r = j
            .compact(&CompactionPolicy { min_segments: 1, live_ratio_below: 0.9, ..CompactionPolicy::offline() })
            .unwrap();
        moved += r.records_moved;
        passes += 1;
    }
    let mut want = BTreeMap::new();
    for w in writers {
        want.extend(w.join().unwrap());
    }
    assert!(passes > 1 && moved > 0, "compaction ran during the writes: {passes} passes, {moved} moved");
    let j = Arc::try_unwrap(j).unwrap();
    let got: BTreeMap<u64, Vec<u8>> = want.keys().map(|id| (*id, j.read(*id).unwrap())).collect();
    assert_eq!(got, want);
    drop(j);
    reopen_matches(dir.path(), None, &want);
}
