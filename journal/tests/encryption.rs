//! Encryption at rest: nothing readable on disk, tampering detected, keys named when missing or wrong.

use std::path::{Path, PathBuf};

use keel_journal::crypto::keys::KeyRing;
use keel_journal::inspect::inspect;
use keel_journal::{CorruptionKind, Journal, OpenError, Options, RecoveryMode, TxId};

const MARKER: &[u8] = b"PLAINTEXT-MARKER-";

fn ring(ids: &[(u32, u8)]) -> KeyRing {
    let text: String = ids.iter().map(|(id, b)| format!("{id}:{}\n", format!("{b:02x}").repeat(32))).collect();
    KeyRing::parse(&text, "test").unwrap()
}

/// No checkpoint at close: these tests tear and tamper with files after the fact and check what a full
/// scan makes of it (checkpoints have their own tests, encrypted ones included).
fn options(keys: Option<KeyRing>) -> Options {
    Options { segment_bytes: 64 * 1024, keys, auto_maintenance: false, ..Options::default() }
}

fn payload(id: u64) -> Vec<u8> {
    let mut p = MARKER.to_vec();
    p.extend_from_slice(format!("{id:08}").as_bytes());
    p.resize(40 + (id as usize * 37) % 1500, b'#');
    p
}

fn write(dir: &Path, keys: Option<KeyRing>, ids: std::ops::Range<u64>) {
    let (j, _) = Journal::open(dir, options(keys)).unwrap();
    for id in ids {
        j.add(id, 1, &payload(id)).unwrap();
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    files(dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "kseg")).collect()
}

#[test]
fn round_trip_across_rollovers_and_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let keys = ring(&[(1, 0xA1)]);
    let (j, _) = Journal::open(dir.path(), options(Some(keys.clone()))).unwrap();
    for id in 0..300 {
        j.add(id, 1, &payload(id)).unwrap();
    }
    let tx = TxId::new(9).unwrap();
    j.update_tx(tx, 5, 2, &payload(5000)).unwrap();
    j.delete_tx(tx, 6).unwrap();
    j.commit(tx).unwrap();
    let tx2 = TxId::new(10).unwrap();
    j.add_tx(tx2, 7000, 3, &payload(7000)).unwrap();
    j.prepare(tx2, b"xid").unwrap();
    drop(j);
    let (j, rec) = Journal::open(dir.path(), options(Some(keys))).unwrap();
    assert_eq!(rec.records.len(), 299);
    assert_eq!(j.read_version(&rec.records[&5]).unwrap(), payload(5000));
    assert_eq!(j.read(7).unwrap(), payload(7));
    assert!(!rec.records.contains_key(&6));
    assert_eq!(rec.prepared.len(), 1);
    assert!(rec.report.segments_read > 3, "several encrypted segments");
}

#[test]
fn plaintext_never_reaches_the_disk() {
    // Control: the scan finds the marker in a plaintext journal, so it can fail.
    let plain = tempfile::tempdir().unwrap();
    write(plain.path(), None, 0..50);
    assert!(files(plain.path()).iter().any(|f| contains(&std::fs::read(f).unwrap(), MARKER)));

    let dir = tempfile::tempdir().unwrap();
    let keys = ring(&[(1, 0xA1)]);
    write(dir.path(), Some(keys.clone()), 0..400);
    // A crash-torn tail sealed over, and more segments after it, spares included.
    let last = segments(dir.path()).into_iter().rev().find(|p| std::fs::read(p).unwrap()[..8] != [0; 8]).unwrap();
    let mut b = std::fs::read(&last).unwrap();
    let end = b.iter().rposition(|&x| x != 0).unwrap();
    b[end - 10..=end].fill(0);
    std::fs::write(&last, b).unwrap();
    write(dir.path(), Some(keys), 400..500);
    for f in files(dir.path()) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!contains(&bytes, MARKER), "{} holds plaintext", f.display());
        assert!(!contains(&bytes, b"########"), "{} holds payload padding", f.display());
    }
}

/// Compaction (relocate frames), reclaim and checkpoints (prepare data and the index): none of it puts
/// plaintext on the disk either. (The crash test runs the background maintenance on encrypted journals.)
#[test]
fn compacted_segments_and_checkpoints_hold_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let keys = ring(&[(1, 0xA1)]);
    let opts = Options {
        segment_bytes: 64 * 1024,
        keys: Some(keys),
        // Compaction and the checkpoint are run explicitly below, so that they certainly happen here.
        auto_maintenance: false,
        ..Options::default()
    };
    let (j, _) = Journal::open(dir.path(), opts.clone()).unwrap();
    for id in 0..600 {
        j.add(id, 1, &payload(id)).unwrap();
        if id % 10 != 0 {
            j.delete(id).unwrap();
        }
    }
    let tx = keel_journal::TxId::new(77).unwrap();
    j.add_tx(tx, 9000, 1, &payload(9000)).unwrap();
    j.prepare(tx, b"PLAINTEXT-MARKER-xid").unwrap();
    let moved = j.compact(&keel_journal::CompactionPolicy::offline()).unwrap();
    assert!(moved.records_moved > 0 && !moved.reclaimed.segments.is_empty(), "{moved:?}");
    j.checkpoint().unwrap().unwrap();
    drop(j);
    let (j, rec) = Journal::open(dir.path(), opts).unwrap();
    assert!(rec.report.checkpoint.is_some());
    assert_eq!(j.read(590).unwrap(), payload(590));
    drop(j);
    let all = files(dir.path());
    assert!(all.iter().any(|f| f.extension().is_some_and(|e| e == "kcp")), "{all:?}");
    for f in all {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!contains(&bytes, MARKER), "{} holds plaintext", f.display());
        assert!(!contains(&bytes, b"########"), "{} holds payload padding", f.display());
    }
}

#[test]
fn missing_or_wrong_key_is_an_error_naming_the_key_id() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), Some(ring(&[(4, 0x44)])), 0..10);
    for (keys, why) in [
        (None, "no key was given"),
        (Some(ring(&[(5, 0x55)])), "not in the key ring"),
        (Some(ring(&[(4, 0x45)])), "wrong key"),
    ] {
        let e = Journal::open(dir.path(), options(keys)).unwrap_err();
        assert!(matches!(e, OpenError::KeyUnavailable { key_id: 4, .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("key id 4") && msg.contains(why) && msg.contains(".kseg"), "{msg}");
    }
}

#[test]
fn rotation_new_segments_use_the_new_key_and_old_ones_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), Some(ring(&[(1, 0x11)])), 0..100);
    write(dir.path(), Some(ring(&[(1, 0x11), (2, 0x22)])), 100..200);
    let i = inspect(dir.path(), RecoveryMode::Strict, Some(&ring(&[(1, 0x11), (2, 0x22)])), &mut |_| {}).unwrap();
    assert_eq!(i.recovered.records.len(), 200);
    let key_ids: Vec<u32> = segments(dir.path())
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .filter(|b| b[..8] != [0; 8])
        .map(|b| u32::from_le_bytes(b[64..68].try_into().unwrap()))
        .collect();
    assert!(key_ids.contains(&1) && key_ids.contains(&2), "{key_ids:?}");
    assert_eq!(key_ids.iter().rposition(|k| *k == 1).unwrap() + 1, key_ids.iter().position(|k| *k == 2).unwrap());
    // Without the old key, its segments are named as unreadable.
    let e = Journal::open(dir.path(), options(Some(ring(&[(2, 0x22)])))).unwrap_err();
    assert!(matches!(e, OpenError::KeyUnavailable { key_id: 1, .. }), "{e}");
}

/// The offsets of the sealed units of a segment, walking their length fields.
fn unit_offsets(seg: &[u8]) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    let mut at = 256;
    while at + 48 <= seg.len() {
        let ct = u32::from_le_bytes(seg[at..at + 4].try_into().unwrap()) as usize;
        if ct == 0 && seg[at..at + 48].iter().all(|b| *b == 0) {
            break;
        }
        v.push((at, 48 + ct));
        at += 48 + ct;
    }
    v
}

fn corrupt_at(dir: &Path, keys: &KeyRing) -> keel_journal::Corruption {
    match inspect(dir, RecoveryMode::Strict, Some(keys), &mut |_| {}) {
        Err(OpenError::Corrupt(c)) => c,
        other => panic!("expected corruption, got {:?}", other.map(|i| i.recovered.records.len())),
    }
}

#[test]
fn tampering_is_detected_flip_swap_splice() {
    let dir = tempfile::tempdir().unwrap();
    let keys = ring(&[(1, 0xA1)]);
    let (j, _) = Journal::open(dir.path(), options(Some(keys.clone()))).unwrap();
    for id in 0..600 {
        // Equal sizes, so units can be swapped in place.
        j.add(id, 1, &[7u8; 100]).unwrap();
    }
    drop(j);
    let segs = segments(dir.path());
    let (first, second) = (segs[0].clone(), segs[1].clone());
    let original = std::fs::read(&first).unwrap();
    let units = unit_offsets(&original);
    assert!(units.len() > 10);

    // Flip any byte of a unit (header, ciphertext or tag) of a sealed segment.
    let (u, len) = units[3];
    for at in [u, u + 5, u + 20, u + 40, u + len / 2, u + len - 1] {
        let mut b = original.clone();
        b[at] ^= 0x01;
        std::fs::write(&first, &b).unwrap();
        let c = corrupt_at(dir.path(), &keys);
        assert_eq!((c.path.as_path(), c.offset), (first.as_path(), u as u64), "flip at {at}: {c}");
    }
    // Swap two units of equal size.
    let ((a, la), (b_, lb)) = (units[2], units[4]);
    assert_eq!(la, lb);
    let mut b = original.clone();
    let (ua, ub) = (original[a..a + la].to_vec(), original[b_..b_ + lb].to_vec());
    b[a..a + la].copy_from_slice(&ub);
    b[b_..b_ + lb].copy_from_slice(&ua);
    std::fs::write(&first, &b).unwrap();
    assert_eq!(corrupt_at(dir.path(), &keys).offset, a as u64);
    // Splice a unit from another segment into the same offset.
    let other = std::fs::read(&second).unwrap();
    let (ou, olen) = unit_offsets(&other)[3];
    assert_eq!((ou, olen), units[3]);
    let mut b = original.clone();
    b[ou..ou + olen].copy_from_slice(&other[ou..ou + olen]);
    std::fs::write(&first, &b).unwrap();
    let c = corrupt_at(dir.path(), &keys);
    assert!(matches!(c.what, CorruptionKind::Unit(_)), "{c}");
    std::fs::write(&first, &original).unwrap();
    assert_eq!(
        inspect(dir.path(), RecoveryMode::Strict, Some(&keys), &mut |_| {}).unwrap().recovered.records.len(),
        600
    );
}

#[test]
fn torn_encrypted_tail_is_discarded_sealed_and_writing_continues() {
    let dir = tempfile::tempdir().unwrap();
    let keys = ring(&[(1, 0xA1)]);
    write(dir.path(), Some(keys.clone()), 0..30);
    let seg = segments(dir.path())[0].clone();
    let original = std::fs::read(&seg).unwrap();
    let units = unit_offsets(&original);
    let (last, len) = *units.last().unwrap();
    // Tear the last unit at every tenth byte: always a torn tail losing exactly record 29.
    for cut in (last..last + len).step_by(10) {
        let mut b = original.clone();
        b[cut..last + len].fill(0);
        if b == original {
            // The cut bytes (the tag's last) were zero already: nothing was torn.
            continue;
        }
        std::fs::write(&seg, &b).unwrap();
        let i = inspect(dir.path(), RecoveryMode::Strict, Some(&keys), &mut |_| {}).unwrap();
        assert_eq!(i.recovered.records.len(), 29, "cut at {cut}");
        if cut > last {
            assert_eq!(i.recovered.report.torn_tail.as_ref().map(|t| t.offset), Some(last as u64));
        }
    }
    let (j, rec) = Journal::open(dir.path(), options(Some(keys.clone()))).unwrap();
    assert_eq!(rec.records.len(), 29);
    j.add(29, 1, &payload(29)).unwrap();
    drop(j);
    let (_j, rec) = Journal::open(dir.path(), options(Some(keys))).unwrap();
    assert!(rec.report.torn_tail.is_none());
    assert_eq!(rec.records.len(), 30);
}

#[test]
fn a_plaintext_journal_can_turn_encryption_on_and_nothing_after_is_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), None, 0..100);
    write(dir.path(), Some(ring(&[(1, 0xA1)])), 100..200);
    let (_j, rec) = Journal::open(dir.path(), options(Some(ring(&[(1, 0xA1)])))).unwrap();
    assert_eq!(rec.records.len(), 200);
    // Records written once the keys were given never reach the disk in plaintext, even though the
    // plaintext segment that was active at that moment had room left.
    for f in files(dir.path()) {
        let bytes = std::fs::read(&f).unwrap();
        for id in 100..200u64 {
            assert!(!contains(&bytes, &payload(id)[..25]), "record {id} in plaintext in {}", f.display());
        }
    }
}

#[test]
fn rekey_while_appending_then_retire_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), Some(ring(&[(1, 0x11)])), 0..300);
    let both = ring(&[(1, 0x11), (2, 0x22)]);
    let (j, _) = Journal::open(dir.path(), options(Some(both.clone()))).unwrap();
    let j = std::sync::Arc::new(j);
    let appender = {
        let j = j.clone();
        std::thread::spawn(move || {
            for id in 300..600 {
                j.add(id, 1, &payload(id)).unwrap();
            }
        })
    };
    let report = j.rekey().unwrap();
    appender.join().unwrap();
    assert!(!report.rewrapped.is_empty());
    assert!(report.rewrapped.iter().all(|(_, from, to)| (*from, *to) == (1, 2)), "{report:?}");
    // Segments sealed after the rekey started are already under key 2; a second pass finds nothing to do.
    assert!(j.rekey().unwrap().rewrapped.is_empty());
    drop(j);
    let (_j, rec) = Journal::open(dir.path(), options(Some(ring(&[(2, 0x22)])))).unwrap();
    assert_eq!(rec.records.len(), 600, "readable with the new key alone");
    for f in files(dir.path()) {
        assert!(!contains(&std::fs::read(&f).unwrap(), MARKER), "{} holds plaintext", f.display());
    }
}

#[test]
fn interrupted_rekey_leaves_the_old_segment_and_a_tmp_that_recovery_removes() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), Some(ring(&[(1, 0x11)])), 0..300);
    let first = segments(dir.path())[0].clone();
    // A crash between the copy and the rename: a partial copy under the temporary name.
    let tmp = PathBuf::from(format!("{}.tmp", first.display()));
    std::fs::write(&tmp, &std::fs::read(&first).unwrap()[..5000]).unwrap();
    let (_j, rec) = Journal::open(dir.path(), options(Some(ring(&[(1, 0x11), (2, 0x22)])))).unwrap();
    assert_eq!(rec.records.len(), 300);
    assert!(!tmp.exists(), "recovery deleted the leftover copy");
}

#[test]
fn rekey_without_keys_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), options(None)).unwrap();
    assert!(matches!(j.rekey(), Err(keel_journal::RekeyError::NoKeys)));
}

#[test]
fn structure_check_without_keys_reports_what_it_can_and_finds_header_damage() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), Some(ring(&[(7, 0x77)])), 0..300);
    let s = keel_journal::inspect::check_structure(dir.path()).unwrap();
    assert!(s.encrypted_segments >= 2 && s.units >= 300, "{s:?}");
    assert_eq!(s.key_ids.iter().copied().collect::<Vec<_>>(), vec![7]);
    assert!(s.unit_chain_stops.is_empty(), "{s:?}");
    let first = segments(dir.path())[0].clone();
    let mut b = std::fs::read(&first).unwrap();
    b[20] ^= 0x01; // inside the journal id
    std::fs::write(&first, b).unwrap();
    match keel_journal::inspect::check_structure(dir.path()) {
        Err(OpenError::Corrupt(c)) => assert_eq!((c.path, c.offset), (first, 0)),
        other => panic!("expected corruption, got {other:?}"),
    }
}

/// A large write that activates a segment is one sealed unit: a torn activation has lost the header that
/// held its data key, so recovery can only tell it from damage by its being the segment's single unit. Here
/// the header's sector is lost while the rest of the write landed (the file looks like a spare): recovery
/// deletes it as a torn activation, nothing of it comes back, and the same batch written later is one unit
/// too.
#[test]
fn a_large_activation_is_one_unit_and_a_torn_one_is_dropped_whole() {
    use keel_journal::SyncPolicy;
    use std::time::Duration;
    let keys = ring(&[(1, 0x42)]);
    let dir = tempfile::tempdir().unwrap();
    // `interval`, so that the six requests form one batch (under `always` a large queue is taken in halves
    // to overlap fdatasyncs); the activation is made durable before anything else either way.
    let opts = || Options {
        segment_bytes: 1 << 20,
        max_batch_wait: Duration::from_millis(100),
        sync: SyncPolicy::Interval(Duration::from_secs(1)),
        ..options(Some(keys.clone()))
    };
    let big = |id: u64| vec![(id % 251) as u8; 64 * 1024];
    let batch = |j: &Journal, ids: std::ops::Range<u64>| {
        let pending: Vec<_> = ids.map(|id| j.add_async(id, 1, &big(id))).collect();
        for p in pending {
            p.wait().unwrap();
        }
    };
    {
        let (j, _) = Journal::open(dir.path(), opts()).unwrap();
        batch(&j, 0..6);
        let s = j.write_stats();
        assert_eq!((s.activations, s.writes, s.sealed_units), (1, 1, 1), "one activating write, one unit: {s:?}");
    }
    let seg = segments(dir.path())[0].clone();
    let bytes = std::fs::read(&seg).unwrap();
    assert_eq!(unit_offsets(&bytes).len(), 1);
    std::fs::write(&seg, [&[0u8; 256][..], &bytes[256..]].concat()).unwrap();

    let (j, rec) = Journal::open(dir.path(), opts()).unwrap();
    assert_eq!(rec.report.torn_activation.as_deref(), Some(seg.as_path()));
    assert!(rec.records.is_empty());
    j.add(100, 1, &big(100)).unwrap();
    let before = j.write_stats();
    batch(&j, 10..16);
    let s = j.write_stats();
    assert_eq!((s.writes - before.writes, s.sealed_units - before.sealed_units), (1, 1), "one write, one unit: {s:?}");
    drop(j);
    let (j, rec) = Journal::open(dir.path(), opts()).unwrap();
    let mut got: Vec<u64> = rec.records.keys().copied().collect();
    got.sort();
    assert_eq!(got, [10, 11, 12, 13, 14, 15, 100]);
    for (id, r) in &rec.records {
        assert_eq!(j.read_version(r).unwrap(), big(*id));
    }
}
