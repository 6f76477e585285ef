//! Damaged files give the documented outcome (docs/FORMAT.md, "Recovery"): a torn tail of the newest
//! segment is discarded and reported; anything else is corruption naming file and offset, unless salvaging.

use std::path::{Path, PathBuf};

use keel_journal::inspect::inspect;
use keel_journal::{CorruptionKind, Journal, OpenError, Options, RecoveryMode, SegmentEnd};

const SEGMENT_BYTES: u64 = 64 * 1024;

/// No checkpoint at close: these tests damage files behind the journal's back and check what a full scan
/// makes of it (with a checkpoint, `open` does not read what the checkpoint covers; `verify` and every
/// read of a record still check it — see `damage_under_a_checkpoint_is_found_by_reads_and_verify`).
fn options() -> Options {
    Options { segment_bytes: SEGMENT_BYTES, auto_maintenance: false, ..Options::default() }
}

fn payload(id: u64) -> Vec<u8> {
    (0..(50 + id % 70)).map(|i| (id as u8).wrapping_mul(13) ^ i as u8).collect()
}

/// A journal with records 0..n, one fdatasync each; returns the frames' (segment path, offset, end, id).
fn build(dir: &Path, n: u64) -> Vec<(PathBuf, u64, u64, u64)> {
    let (j, _) = Journal::open(dir, options()).unwrap();
    for id in 0..n {
        j.add(id, 1, &payload(id)).unwrap();
    }
    drop(j);
    frames(dir)
}

fn frames(dir: &Path) -> Vec<(PathBuf, u64, u64, u64)> {
    let mut out = Vec::new();
    inspect(dir, RecoveryMode::Strict, None, &mut |f| {
        out.push((f.path.to_path_buf(), f.offset, f.offset + f.header.frame_bytes(), f.header.id))
    })
    .unwrap();
    out
}

fn ids(dir: &Path, mode: RecoveryMode) -> Result<Vec<u64>, OpenError> {
    let i = inspect(dir, mode, None, &mut |_| {})?;
    for (id, r) in &i.recovered.records {
        assert_eq!(i.reader.read(r).unwrap(), payload(*id), "record {id} intact");
    }
    Ok(i.recovered.records.keys().copied().collect())
}

fn corruption(r: Result<Vec<u64>, OpenError>) -> keel_journal::Corruption {
    match r {
        Err(OpenError::Corrupt(c)) => c,
        other => panic!("expected corruption, got {other:?}"),
    }
}

fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = std::fs::read(path).unwrap();
    f(&mut b);
    std::fs::write(path, b).unwrap();
}

#[test]
fn torn_write_at_every_byte_of_the_last_frames_drops_exactly_the_torn_record() {
    let dir = tempfile::tempdir().unwrap();
    let all = build(dir.path(), 40);
    let (path, _, written_end, _) = all.last().unwrap().clone();
    let original = std::fs::read(&path).unwrap();
    let last_three: Vec<_> = all.iter().filter(|f| f.0 == path).rev().take(3).cloned().collect();
    let from = last_three.last().unwrap().1;
    for x in from..written_end {
        // A torn write: bytes from x on never reached the disk (the file was pre-allocated with zeros).
        let mut b = original.clone();
        b[x as usize..written_end as usize].fill(0);
        std::fs::write(&path, &b).unwrap();
        let want: Vec<u64> = all.iter().filter(|f| f.0 != path || f.2 <= x).map(|f| f.3).collect();
        let i = inspect(dir.path(), RecoveryMode::Strict, None, &mut |_| {}).unwrap();
        let got: Vec<u64> = i.recovered.records.keys().copied().collect();
        assert_eq!(got, want, "torn at byte {x}");
        let frame_start = all.iter().filter(|f| f.0 == path && f.1 <= x).map(|f| f.1).max().unwrap();
        match &i.recovered.report.torn_tail {
            Some(t) => {
                assert_eq!(t.offset, frame_start, "torn tail starts at the torn frame");
                assert!(x > frame_start, "a tail torn at a frame boundary is a clean end");
            }
            // The bytes that did reach the disk may all be zero (a frame's first byte is a checksum byte,
            // zero for 1 in 256 journals): then the tail is indistinguishable from a clean end.
            None => assert!(
                b[frame_start as usize..x as usize].iter().all(|&v| v == 0),
                "only a cut exactly at a frame boundary (or after only zero bytes) leaves no torn tail: torn at {x}, frame at {frame_start}"
            ),
        }
    }
    std::fs::write(&path, &original).unwrap();
}

#[test]
fn torn_tail_is_sealed_on_open_and_writing_continues() {
    let dir = tempfile::tempdir().unwrap();
    let all = build(dir.path(), 30);
    let (path, start, end, last_id) = all.last().unwrap().clone();
    edit(&path, |b| b[(start + 45) as usize..end as usize].fill(0));
    let (j, rec) = Journal::open(dir.path(), options()).unwrap();
    let torn = rec.report.torn_tail.clone().expect("torn tail reported");
    assert_eq!((torn.path.as_path(), torn.offset), (path.as_path(), start));
    assert!(!rec.records.contains_key(&last_id));
    j.add(last_id, 1, &payload(last_id)).unwrap();
    j.add(1000, 1, &payload(1000)).unwrap();
    drop(j);
    let (_j, rec) = Journal::open(dir.path(), options()).unwrap();
    assert!(rec.report.torn_tail.is_none(), "the torn tail was sealed over");
    assert!(rec.records.contains_key(&last_id) && rec.records.contains_key(&1000));
    assert_eq!(rec.records.len(), 31);
}

#[test]
fn truncated_segment_file_is_refused_with_file_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let all = build(dir.path(), 20);
    let (path, _, end, _) = all.last().unwrap().clone();
    let from = all.iter().rev().nth(2).unwrap().1;
    // Every byte offset of the last three frames, and inside the header.
    let original = std::fs::read(&path).unwrap();
    for cut in (from..=end).chain([0, 100, 255, 256]) {
        std::fs::write(&path, &original[..cut as usize]).unwrap();
        let e = inspect(dir.path(), RecoveryMode::Strict, None, &mut |_| {}).map(|_| ()).unwrap_err();
        assert!(e.to_string().contains(&path.display().to_string()), "cut at {cut} names the file: {e}");
        std::fs::write(&path, &original).unwrap();
    }
    for cut in [from, from + 1, end - 1, end, 100, 0] {
        let original = std::fs::read(&path).unwrap();
        std::fs::write(&path, &original[..cut as usize]).unwrap();
        let r = Journal::open(dir.path(), options()).map(|_| ());
        let msg = r.expect_err("a truncated segment does not open").to_string();
        assert!(msg.contains(&path.display().to_string()), "names the file: {msg}");
        std::fs::write(&path, &original).unwrap();
    }
    assert_eq!(ids(dir.path(), RecoveryMode::Strict).unwrap().len(), 20, "nothing durable was lost");
}

#[test]
fn bit_flip_in_synced_frames_of_newest_segment_is_corruption_and_salvage_skips_it() {
    let dir = tempfile::tempdir().unwrap();
    let all = build(dir.path(), 30);
    let newest = all.last().unwrap().0.clone();
    let victim = all.iter().filter(|f| f.0 == newest).nth(3).unwrap().clone();
    edit(&newest, |b| b[(victim.1 + 41) as usize] ^= 0x04);
    let c = corruption(ids(dir.path(), RecoveryMode::Strict));
    assert_eq!((c.path.as_path(), c.offset), (newest.as_path(), victim.1));
    assert!(matches!(c.what, CorruptionKind::DamageBeforeSyncedData { .. }), "{c}");
    assert!(Journal::open(dir.path(), options()).is_err(), "open refuses too");
    let got = ids(dir.path(), RecoveryMode::Salvage).unwrap();
    let want: Vec<u64> = all.iter().map(|f| f.3).filter(|id| *id != victim.3).collect();
    assert_eq!(got, want, "salvage loses exactly the damaged record");
    let i = inspect(dir.path(), RecoveryMode::Salvage, None, &mut |_| {}).unwrap();
    assert_eq!(i.recovered.report.skipped.len(), 1);
    assert_eq!(i.recovered.report.skipped[0].offset, victim.1);
    assert_eq!(i.recovered.report.skipped[0].bytes, victim.2 - victim.1);
}

#[test]
fn bit_flip_in_a_sealed_segment_is_corruption_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let all = build(dir.path(), 1200);
    let first = all[0].0.clone();
    let in_first: Vec<_> = all.iter().filter(|f| f.0 == first).cloned().collect();
    assert!(in_first.len() < all.len(), "the journal spans several segments");
    let original = std::fs::read(&first).unwrap();
    // Including the last frame of the segment: sealed segments have no torn tail.
    for f in [&in_first[0], &in_first[in_first.len() / 2], in_first.last().unwrap()] {
        for at in [f.1, f.1 + 20, f.2 - 1] {
            edit(&first, |b| b[at as usize] ^= 0x80);
            let c = corruption(ids(dir.path(), RecoveryMode::Strict));
            assert_eq!((c.path.as_path(), c.offset), (first.as_path(), f.1), "{c}");
            std::fs::write(&first, &original).unwrap();
        }
    }
}

#[test]
fn garbage_tail_after_the_last_frame_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let all = build(dir.path(), 10);
    let (path, _, end, _) = all.last().unwrap().clone();
    edit(&path, |b| {
        for (i, byte) in b[end as usize..end as usize + 500].iter_mut().enumerate() {
            *byte = (i * 7 + 3) as u8;
        }
    });
    let i = inspect(dir.path(), RecoveryMode::Strict, None, &mut |_| {}).unwrap();
    assert_eq!(i.recovered.records.len(), 10);
    let t = i.recovered.report.torn_tail.unwrap();
    assert_eq!((t.offset, t.bytes), (end, 500));
}

#[test]
fn zero_filled_tail_is_a_clean_end() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 10);
    let i = inspect(dir.path(), RecoveryMode::Strict, None, &mut |_| {}).unwrap();
    assert!(i.recovered.report.torn_tail.is_none());
    assert!(matches!(i.segments.last().unwrap().end, SegmentEnd::Open { .. }));
}

#[test]
fn zeroed_frames_inside_a_sealed_segment_are_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let all = build(dir.path(), 1200);
    let first = all[0].0.clone();
    let f = all.iter().filter(|f| f.0 == first).nth(100).unwrap().clone();
    edit(&first, |b| b[f.1 as usize..].fill(0));
    let c = corruption(ids(dir.path(), RecoveryMode::Strict));
    assert_eq!((c.path.as_path(), c.offset), (first.as_path(), f.1));
}

#[test]
fn segment_from_another_journal_is_refused_by_name() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    build(a.path(), 5);
    build(b.path(), 5);
    let seg_a = frames(a.path())[0].0.clone();
    let seg_b = frames(b.path())[0].0.clone();
    std::fs::copy(&seg_b, &seg_a).unwrap();
    let c = corruption(ids(a.path(), RecoveryMode::Strict));
    assert_eq!(c.path, seg_a);
    assert!(matches!(c.what, CorruptionKind::ForeignSegment { .. }), "{c}");
    assert!(c.to_string().contains("belongs to journal"), "{c}");
}

#[test]
fn torn_activation_of_a_new_segment_loses_nothing_acknowledged() {
    // Find how many records fill the first segment, then build a journal whose newest segment holds one.
    let probe = tempfile::tempdir().unwrap();
    let all = build(probe.path(), 1200);
    let first_seg = all[0].0.clone();
    let n = all.iter().filter(|f| f.0 == first_seg).count() as u64 + 1;
    let dir = tempfile::tempdir().unwrap();
    let all = build(dir.path(), n);
    let newest = all.last().unwrap().0.clone();
    assert_eq!(all.iter().filter(|f| f.0 == newest).count(), 1);
    let (_, _, end, id) = all.last().unwrap().clone();
    // Header and first frame went down as one write that tore inside the header.
    edit(&newest, |b| b[100..end as usize].fill(0));
    let (j, rec) = Journal::open(dir.path(), options()).unwrap();
    assert_eq!(rec.report.torn_activation.as_deref(), Some(newest.as_path()));
    assert_eq!(rec.records.len() as u64, n - 1);
    j.add(id, 1, &payload(id)).unwrap();
    drop(j);
    assert_eq!(ids(dir.path(), RecoveryMode::Strict).unwrap().len() as u64, n);
}

/// How many records (one fdatasync each, from id 0) fill the first segment.
fn records_in_first_segment() -> u64 {
    let probe = tempfile::tempdir().unwrap();
    let all = build(probe.path(), 1200);
    all.iter().filter(|f| f.0 == all[0].0).count() as u64
}

/// A power loss can land the later sectors of an activation write without the header's: the newest file
/// then has an all-zero header, like a spare, but holds the batch's frames. They bind the segment's
/// sequence number, which the next activation reuses, so kept as a spare they could line up behind new
/// frames and come back (replayed after records written since, over newer versions). Recovery reads the
/// spare after the active segments whole and treats such a file as a torn activation: deleted, nothing
/// resurrected, however the new frames line up.
#[test]
fn torn_activation_that_lost_only_its_header_never_comes_back() {
    let n1 = records_in_first_segment();
    let dir = tempfile::tempdir().unwrap();
    let batch: Vec<u64> = (n1..n1 + 6).collect();
    build(dir.path(), n1);
    {
        let opts = Options { max_batch_wait: std::time::Duration::from_millis(100), ..options() };
        let (j, _) = Journal::open(dir.path(), opts).unwrap();
        // Submitted together, they form one batch, which does not fit in the first segment: it activates
        // the second one in a single write and one sync group.
        let pending: Vec<_> = batch.iter().map(|id| j.add_async(*id, 1, &payload(*id))).collect();
        for p in pending {
            p.wait().unwrap();
        }
    }
    let all = frames(dir.path());
    let second = all.last().unwrap().0.clone();
    let in_second: Vec<u64> = all.iter().filter(|f| f.0 == second).map(|f| f.3).collect();
    assert_eq!(in_second, batch, "the batch alone activated the second segment");
    assert_eq!(all.iter().filter(|f| f.0 == second).map(|f| f.1).min(), Some(256));
    // The header's sector never landed.
    edit(&second, |b| b[..256].fill(0));

    let (j, rec) = Journal::open(dir.path(), options()).unwrap();
    assert_eq!(rec.report.torn_activation.as_deref(), Some(second.as_path()));
    assert_eq!(rec.records.len() as u64, n1, "nothing of the torn batch");
    // A new record whose frame is exactly as long as the torn batch's first: the next frame expected after
    // it is where the torn batch's second frame lies, with the LSN that frame had.
    let newer = n1 + 70 * 1000;
    assert_eq!(payload(newer).len(), payload(n1).len());
    j.add(newer, 1, &payload(newer)).unwrap();
    drop(j);
    let mut want: Vec<u64> = (0..n1).chain([newer]).collect();
    want.sort();
    assert_eq!(ids(dir.path(), RecoveryMode::Strict).unwrap(), want);
}

/// The same zero header on a segment that went on to take later batches (one fdatasync each): its
/// activation was durable before they were written, so the header was lost afterwards. That is
/// corruption of acknowledged data, named, not a torn write to drop.
#[test]
fn zero_header_on_a_segment_with_later_sync_groups_is_corruption() {
    let n1 = records_in_first_segment();
    let dir = tempfile::tempdir().unwrap();
    let all = build(dir.path(), n1 + 3);
    let second = all.last().unwrap().0.clone();
    assert_eq!(all.iter().filter(|f| f.0 == second).count(), 3);
    edit(&second, |b| b[..256].fill(0));
    let c = corruption(ids(dir.path(), RecoveryMode::Strict));
    assert_eq!((c.path.as_path(), c.offset), (second.as_path(), 0));
    assert!(c.to_string().contains("all zero but the segment holds data"), "{c}");
    // Salvage reads on, past the damaged header, and reports it.
    let i = inspect(dir.path(), RecoveryMode::Salvage, None, &mut |_| {}).unwrap();
    assert!(i.recovered.records.len() as u64 >= n1, "the first segment's records survive a salvage");
}

#[test]
fn missing_segment_in_the_middle_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let all = build(dir.path(), 2500);
    let mut segs: Vec<PathBuf> = all.iter().map(|f| f.0.clone()).collect();
    segs.dedup();
    assert!(segs.len() >= 3);
    std::fs::remove_file(&segs[1]).unwrap();
    let c = corruption(ids(dir.path(), RecoveryMode::Strict));
    assert_eq!(c.path, segs[2]);
    assert!(matches!(c.what, CorruptionKind::MissingSegment { .. }), "{c}");
}

#[test]
fn damaged_identity_file_and_missing_identity_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 3);
    let id = dir.path().join("KEEL-JOURNAL");
    edit(&id, |b| b[20] ^= 1);
    let e = Journal::open(dir.path(), options()).unwrap_err();
    assert!(matches!(e, OpenError::Identity { .. }), "{e}");
    std::fs::remove_file(&id).unwrap();
    let e = Journal::open(dir.path(), options()).unwrap_err();
    assert!(matches!(e, OpenError::MissingIdentity { .. }), "{e}");
}

#[test]
fn a_second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_j, _) = Journal::open(dir.path(), options()).unwrap();
    let e = Journal::open(dir.path(), options()).unwrap_err();
    assert!(matches!(e, OpenError::Locked { .. }), "{e}");
    let e = inspect(dir.path(), RecoveryMode::Strict, None, &mut |_| {}).unwrap_err();
    assert!(matches!(e, OpenError::Locked { .. }), "{e}");
}

#[test]
fn damage_under_a_checkpoint_is_found_by_reads_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let frames = build(dir.path(), 400);
    let (j, _) = Journal::open(dir.path(), options()).unwrap();
    j.checkpoint().unwrap().unwrap();
    drop(j);
    // Flip a payload byte of record 10, in the oldest segment, which the checkpoint covers.
    let (path, offset, _, id) = frames.iter().find(|f| f.3 == 10).unwrap().clone();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset as usize + 45] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let (j, rec) = Journal::open(dir.path(), options()).unwrap();
    assert!(rec.report.checkpoint.is_some(), "open trusted the checkpoint and did not read the old segment");
    match j.read(id) {
        Err(keel_journal::ReadError::Corrupt(c)) => assert_eq!((c.path, c.offset), (path.clone(), offset)),
        other => panic!("a read of the damaged record must fail naming file and offset, got {other:?}"),
    }
    assert_eq!(j.read(11).unwrap(), payload(11), "its neighbours read fine");
    drop(j);
    let c = corruption(ids(dir.path(), RecoveryMode::Strict));
    assert_eq!((c.path, c.offset), (path, offset), "a full scan (verify) names it too");
}
