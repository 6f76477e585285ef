//! Regression tests that need the simulated disk's power loss (issue 24).

use std::io::IoSlice;
use std::sync::Arc;

use keel_journal::vfs::OpenMode;
use keel_journal::{Journal, Options};
use keel_sim::disk::{Faults, SimDisk};

fn payload(id: u64) -> Vec<u8> {
    (0..6000).map(|i| (id as u8).wrapping_mul(31) ^ (i as u8)).collect()
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}.kseg")
}

/// Defect 6: a spare renamed into place whose directory entry was never fsynced (its preparer stopped
/// between the rename and the directory fsync, as at close) was taken as a spare by the next open, which
/// fsynced the directory only when it deleted something. Acknowledged records written into it were lost
/// with its directory entry at the next power loss.
#[test]
fn a_spare_whose_rename_was_not_durable_never_holds_acknowledged_records() {
    let disk = SimDisk::new(1);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let opts = |spares| Options {
        segment_bytes: 64 * 1024,
        spare_segments: spares,
        auto_maintenance: false,
        vfs: disk.vfs(),
        ..Options::default()
    };
    let (j, _) = Journal::open(dir, opts(1)).unwrap();
    j.add(0, 1, &payload(0)).unwrap();
    assert!(j.wait_for_spares(std::time::Duration::from_secs(5)));
    j.close().unwrap();

    // What the preparer leaves when it stops after the rename: a complete, fsynced spare under its final
    // name, with the rename not yet durable.
    let vfs = disk.vfs();
    let names = vfs.list(dir).unwrap();
    let last =
        names.iter().filter_map(|n| n.strip_suffix(".kseg")).filter_map(|s| s.parse::<u64>().ok()).max().unwrap();
    let tmp_path = dir.join(format!("{:020}.kseg.tmp", last + 1));
    let f = vfs.open(&tmp_path, OpenMode::CreateNew).unwrap();
    f.write_all_at(&[IoSlice::new(&vec![0u8; 64 * 1024])], 0).unwrap();
    f.sync_all().unwrap();
    drop(f);
    vfs.rename(&tmp_path, &dir.join(segment_name(last + 1))).unwrap();
    drop(vfs);

    // No new spare can be made (so no later directory fsync hides the defect): the records roll over into
    // the existing spares.
    let (j, _) = Journal::open(dir, opts(2)).unwrap();
    disk.set_faults(Faults { disk_full: true, ..Faults::default() });
    let mut acked = vec![0];
    for id in 1..40 {
        match j.add(id, 1, &payload(id)) {
            Ok(_) => acked.push(id),
            Err(keel_journal::AppendError::NoSpace { .. }) => break,
            Err(e) => panic!("add {id}: {e}"),
        }
    }
    assert!(acked.len() > 20, "the records reached the second spare: {}", acked.len());
    disk.crash_dropping_unsynced();
    drop(j);

    let (j, recovered) = Journal::open(dir, Options { vfs: disk.vfs(), ..opts(2) }).unwrap();
    let got: Vec<u64> = recovered.records.keys().copied().collect();
    assert_eq!(got, acked, "every acknowledged record survives the power loss");
    for (id, r) in &recovered.records {
        assert_eq!(j.read_version(r).unwrap(), payload(*id));
    }
    drop(Arc::new(j));
}

/// Found by the paging simulator: after a page's fdatasync failed, a reopen without a power loss read the
/// unsynced message from the page cache and delivered it (and numbered the next message after it); a
/// power loss then took it away, and its number was given to another message. Recovery now makes what
/// it read durable before building on it.
#[test]
fn a_message_an_open_found_in_the_page_cache_survives_the_next_power_loss() {
    send_fails_to_sync_then_reopen_then_power_loss(2, Faults { syncs_fail_after: Some(0), ..Faults::default() });
}

/// A paged message whose fdatasync fails under `failure`; a reopen without a power loss, which delivers
/// what it finds; a power loss; another reopen must deliver the same.
fn send_fails_to_sync_then_reopen_then_power_loss(seed: u64, failure: Faults) {
    use keel_paging::{Paging, PagingOptions};
    let disk = SimDisk::new(seed);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("journal")).unwrap();
    let open = || {
        let jopts = Options { auto_maintenance: false, vfs: disk.vfs(), ..Options::default() };
        let (j, rec) = Journal::open(tmp.path().join("journal"), jopts).unwrap();
        let popts = PagingOptions { max_size_bytes: 0, vfs: disk.vfs(), ..PagingOptions::default() };
        Paging::open(tmp.path().join("pages"), Arc::new(j), &rec.prepared, popts).unwrap()
    };
    {
        let paging = open();
        let a = paging.address("q").unwrap();
        a.subscribe("s").unwrap();
        a.send(b"first", None).unwrap();
        disk.set_faults(failure);
        a.send(b"second", None).unwrap_err();
        disk.set_faults(Faults::default());
    }
    let delivered: Vec<u64> = {
        let paging = open();
        let s = paging.address("q").unwrap().subscription("s").unwrap();
        std::iter::from_fn(|| s.receive().unwrap().map(|d| d.seq)).collect()
    };
    disk.crash_dropping_unsynced();
    let paging = open();
    let s = paging.address("q").unwrap().subscription("s").unwrap();
    let after: Vec<u64> = std::iter::from_fn(|| s.receive().unwrap().map(|d| d.seq)).collect();
    assert_eq!(after, delivered, "what an open delivered is still there after a power loss");
}

/// Found by the paging simulator (and the journal simulator's open violation 2): an fdatasync failed
/// while a roll-over sealed one segment and began the next; the journal was reopened without a power loss
/// and resumed in the new segment, whose writes it fdatasynced, while the old segment's seal stayed only
/// in the page cache. The next power loss left a hole before the new segment's records, and strict open
/// refused the journal. Open now makes every segment it read durable before writing.
#[test]
fn a_reopen_after_a_failed_fdatasync_makes_what_it_read_durable() {
    // The failure lands on the write that rolls over for one of these counts of records before it.
    for before in 6..=12 {
        reopen_after_failed_fdatasync(before);
    }
}

fn reopen_after_failed_fdatasync(before: u64) {
    let disk = SimDisk::new(3);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let opts = || Options { segment_bytes: 64 * 1024, auto_maintenance: false, vfs: disk.vfs(), ..Options::default() };
    let (j, _) = Journal::open(dir, opts()).unwrap();
    let mut acked = Vec::new();
    for id in 0..before {
        j.add(id, 1, &payload(id)).unwrap();
        acked.push(id);
    }
    assert!(j.wait_for_spares(std::time::Duration::from_secs(5)));
    disk.set_faults(Faults { syncs_fail_after: Some(0), ..Faults::default() });
    let _ = j.add(before, 1, &payload(before));
    disk.set_faults(Faults::default());
    drop(j);

    let (j, rec) = Journal::open(dir, opts()).unwrap();
    let seen: Vec<u64> = rec.records.keys().copied().collect();
    for id in 20..30 {
        j.add(id, 1, &payload(id)).unwrap();
        acked.push(id);
    }
    drop(j);
    disk.crash_dropping_unsynced();
    let (_, rec) = Journal::open(dir, opts())
        .unwrap_or_else(|e| panic!("{before} records before the failure: strict open after the power loss: {e}"));
    for id in acked.iter().chain(&seen) {
        assert!(rec.records.contains_key(id), "{before} records before the failure: record {id} lost");
    }
}

/// The same on a filesystem that forgets dirty pages whose writeback failed (Linux): fdatasyncing at the
/// next open cannot save the unsynced message, so the address must not leave it in the page cache for that
/// open to find. After a failed fdatasync the address cuts its pages back to their durable end.
#[test]
fn a_message_whose_fdatasync_failed_is_not_found_by_the_next_open_when_the_kernel_forgets_it() {
    let forget = Faults { syncs_fail_after: Some(0), sync_failure_forgets: Some(".kpage"), ..Faults::default() };
    send_fails_to_sync_then_reopen_then_power_loss(4, forget);
}
