//! Online compaction: copies the live records of the oldest segments forward — as relocate frames
//! appended through the ordinary group-commit path, while other appends continue — and then reclaims the
//! segments they left (docs/FORMAT.md, "Compaction").
//!
//! # Why it is crash-safe at every step
//! A relocate frame is an ordinary append: the writer validates it against the live-record index under
//! its lock (the copied version must still be the live one, else it is dropped as superseded), and replay
//! applies it the same way. So at any crash point the journal holds either the old copy alone, or both
//! copies, of which replay keeps the newest valid one; the old segments are deleted only by reclaim, after
//! the relocations are durable, under reclaim's own rule. No phase needs its own recovery.
//!
//! # Why appends stay smooth
//! Reads and relocations are paced to `bytes_per_sec`, and relocations go in batches of at most
//! `BATCH_BYTES`, so one compaction never holds the writer for more than one batch at a time.

use std::time::{Duration, Instant};

use crate::commit::RequestOp;
use crate::error::AppendError;
use crate::format::frame::{FrameType, RELOCATE_PREFIX_BYTES};
use crate::index::RecordRef;
use crate::journal::Core;
use crate::maintenance::reclaim::{self, ReclaimReport};
use crate::reader::ReadError;
use crate::sync_util::lock;
use crate::types::RecordId;

/// Bytes of relocations submitted before waiting for them.
const BATCH_BYTES: usize = 64 << 10;

/// When and how fast the journal compacts.
#[derive(Clone, Debug, PartialEq)]
pub struct CompactionPolicy {
    /// Compact a run of the oldest segments once their live bytes fall below this fraction of their size.
    pub live_ratio_below: f64,
    /// ...and only once the run is at least this many segments long.
    pub min_segments: u32,
    /// Upper bound on the segments one compaction pass empties.
    pub max_segments_per_run: u32,
    /// Upper bound on the bytes per second a compaction reads and rewrites.
    pub bytes_per_sec: u64,
    /// Upper bound on the bytes per second reclaim gives back to the filesystem (see `reclaim`: a large
    /// TRIM stalls fdatasync). `u64::MAX`: delete each segment at once.
    pub trim_bytes_per_sec: u64,
}

impl Default for CompactionPolicy {
    fn default() -> CompactionPolicy {
        CompactionPolicy {
            live_ratio_below: 0.5,
            min_segments: 4,
            max_segments_per_run: 64,
            bytes_per_sec: 16 * 1024 * 1024,
            trim_bytes_per_sec: 64 * 1024 * 1024,
        }
    }
}

impl CompactionPolicy {
    /// What `keel journal compact` uses: any run with dead bytes, unpaced.
    pub fn offline() -> CompactionPolicy {
        CompactionPolicy {
            live_ratio_below: 1.0,
            min_segments: 1,
            max_segments_per_run: u32::MAX,
            bytes_per_sec: u64::MAX,
            trim_bytes_per_sec: u64::MAX,
        }
    }

    pub(crate) fn trim_pace(&self) -> Option<reclaim::TrimPace> {
        (self.trim_bytes_per_sec != u64::MAX).then_some(reclaim::TrimPace { bytes_per_sec: self.trim_bytes_per_sec })
    }
}

/// What a compaction pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// The segments whose live records were copied forward (oldest..=newest), if any.
    pub segments: Option<(u64, u64)>,
    pub records_moved: u64,
    pub bytes_moved: u64,
    /// Records updated or deleted while the pass ran: nothing to move.
    pub superseded: u64,
    pub reclaimed: ReclaimReport,
    /// Time spent copying (until the copies were durable), and then reclaiming.
    pub copy_time: Duration,
    pub reclaim_time: Duration,
}

struct Plan {
    from: u64,
    to: u64,
    records: Vec<(RecordId, RecordRef)>,
}

/// Chooses the run of oldest segments to empty, and the live records in it.
fn plan(core: &Core, policy: &CompactionPolicy) -> Option<Plan> {
    let w = lock(core.shared.writer_mutex());
    let newest_written = w.newest_written_seq();
    // Segments holding open transactions' frames stay (compaction moves live records, not staged ones).
    let limit = w.model.open_tx_first_seq().map_or(newest_written, |t| t.min(newest_written));
    let from = w.oldest_seq;
    let (mut live, mut best) = (0u64, None);
    let max_run = u64::from(policy.max_segments_per_run);
    for (n, seq) in (from..limit).enumerate() {
        if n as u64 >= max_run {
            break;
        }
        let own = w.model.index.segments.get(&seq).map_or(0, |s| s.bytes);
        live += own;
        let size = (n as u64 + 1) * core.segment_bytes;
        // The run is sparse as a whole, and does not end on a dense segment (moving a dense tail costs as
        // much as it frees; a dense segment inside a sparse run is worth moving to free the run).
        let sparse = |live: u64, size: u64| (live as f64) < policy.live_ratio_below * size as f64;
        if (n as u64 + 1) >= u64::from(policy.min_segments) && sparse(live, size) && sparse(own, core.segment_bytes) {
            best = Some(seq);
        }
    }
    let to = best?;
    // A copy-on-write clone: the records are picked out after the writer is released.
    let table = w.model.index.records.clone();
    drop(w);
    let mut records: Vec<(RecordId, RecordRef)> =
        table.iter().filter(|(_, r)| r.location.seq <= to).map(|(id, r)| (id, *r)).collect();
    drop(table);
    records.sort_by_key(|(_, r)| (r.location.seq, r.location.offset, r.location.inner));
    Some(Plan { from, to, records })
}

pub(crate) fn compact(core: &Core, policy: &CompactionPolicy) -> Result<CompactReport, AppendError> {
    let _one_at_a_time = lock(&core.compacting);
    let mut report = CompactReport::default();
    let Some(plan) = plan(core, policy) else { return Ok(report) };
    report.segments = Some((plan.from, plan.to));
    let started = Instant::now();
    let mut paced = 0u64;
    let mut in_flight = Vec::new();
    let mut in_flight_bytes = 0usize;
    for (id, r) in plan.records {
        let payload = match core.reader.read(&r) {
            Ok(p) => p,
            Err(e) => {
                // Changed since the plan (and perhaps its segment already reclaimed): nothing to move.
                if lock(core.shared.writer_mutex()).model.index.records.get(&id) != Some(&r) {
                    report.superseded += 1;
                    continue;
                }
                return Err(read_failed(e));
            }
        };
        let mut body = Vec::with_capacity(RELOCATE_PREFIX_BYTES + payload.len());
        body.extend_from_slice(&r.lsn.0.to_le_bytes());
        body.extend_from_slice(&payload);
        paced += body.len() as u64;
        pace(started, paced, policy.bytes_per_sec);
        in_flight_bytes += body.len();
        let op = RequestOp::Frame { frame_type: FrameType::Relocate, id, tx: 0, kind: r.kind };
        in_flight.push((body.len(), core.shared.submit(op, body)));
        if in_flight_bytes >= BATCH_BYTES {
            settle(&mut in_flight, &mut report)?;
            in_flight_bytes = 0;
            keel_crashpoint::hook("compact-relocated");
        }
    }
    settle(&mut in_flight, &mut report)?;
    keel_crashpoint::hook("compact-relocated");
    core.shared.append_blocking(RequestOp::Sync, &[])?;
    keel_crashpoint::hook("compact-synced");
    report.copy_time = started.elapsed();
    report.reclaimed = reclaim::reclaim(core, policy.trim_pace())?;
    report.reclaim_time = started.elapsed() - report.copy_time;
    Ok(report)
}

fn settle(
    in_flight: &mut Vec<(usize, crate::commit::completion::Pending)>,
    report: &mut CompactReport,
) -> Result<(), AppendError> {
    for (bytes, p) in in_flight.drain(..) {
        match p.wait() {
            Ok(_) => {
                report.records_moved += 1;
                report.bytes_moved += bytes as u64;
            }
            Err(AppendError::Superseded(_)) => report.superseded += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sleeps as long as `done` bytes are ahead of `rate` bytes per second since `started`.
fn pace(started: Instant, done: u64, rate: u64) {
    if rate == u64::MAX || rate == 0 {
        return;
    }
    let due = Duration::from_secs_f64(done as f64 / rate as f64);
    let elapsed = started.elapsed();
    if due > elapsed {
        std::thread::sleep(due - elapsed);
    }
}

fn read_failed(e: ReadError) -> AppendError {
    let path = match &e {
        ReadError::Corrupt(c) => c.path.clone(),
        ReadError::Mismatch { path, .. } => path.clone(),
        _ => std::path::PathBuf::new(),
    };
    AppendError::Io {
        path,
        op: "read a live record for compaction",
        source: std::sync::Arc::new(std::io::Error::other(e.to_string())),
    }
}
