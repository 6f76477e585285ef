//! Background upkeep of an open journal, on its own thread: reclaim dead segments, write checkpoints, and
//! compact. Each job is also callable directly (`Journal::reclaim`, `checkpoint`, `compact`); the thread
//! only decides *when*. It wakes when the writer seals a segment, since that is when each job can have
//! new work.

pub(crate) mod checkpoint;
pub(crate) mod compact;
pub(crate) mod reclaim;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::journal::Core;
use crate::sync_util::lock;

/// Wake-ups for the maintenance thread.
#[derive(Debug, Default)]
pub(crate) struct Maintenance {
    state: Mutex<State>,
    cv: Condvar,
    checkpoints: AtomicU64,
    checkpoint_bytes: AtomicU64,
    checkpoint_pause_ns: AtomicU64,
}

/// What checkpoints have cost since open (see [`crate::Journal::maintenance_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaintenanceStats {
    /// Checkpoints written, by the maintenance thread or by [`crate::Journal::checkpoint`].
    pub checkpoints: u64,
    /// Their bytes, together.
    pub checkpoint_bytes: u64,
    /// How long checkpoints held the writer, so appends waited: to flush and to clone the index, which
    /// shares its shards. Not counted: the writer's copies of what it changes while a checkpoint still
    /// shares it, paid by the append that changes it: a shard of the region map (1/16 of the dense
    /// regions' entries, 16 bytes each), each dense region it touches (64 records), and a shard of the
    /// sparse map (1/16 of the records outside dense regions).
    pub checkpoint_pause: Duration,
}

#[derive(Debug, Default)]
struct State {
    /// Segments sealed since the thread last looked.
    sealed: u64,
    stop: bool,
}

impl Maintenance {
    /// Called by the writer after it sealed a segment.
    pub fn segment_sealed(&self) {
        lock(&self.state).sealed += 1;
        self.cv.notify_one();
    }

    pub fn checkpoint_written(&self, bytes: u64, pause: Duration) {
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.checkpoint_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.checkpoint_pause_ns.fetch_add(u64::try_from(pause.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn stats(&self) -> MaintenanceStats {
        MaintenanceStats {
            checkpoints: self.checkpoints.load(Ordering::Relaxed),
            checkpoint_bytes: self.checkpoint_bytes.load(Ordering::Relaxed),
            checkpoint_pause: Duration::from_nanos(self.checkpoint_pause_ns.load(Ordering::Relaxed)),
        }
    }

    pub fn stop(&self) {
        lock(&self.state).stop = true;
        self.cv.notify_one();
    }

    /// Blocks until there is work (`Some(segments sealed)`) or the thread must stop (`None`). A pass also
    /// runs every `idle` even without seals, so that work left by a failed pass is retried.
    fn wait(&self, idle: Duration) -> Option<u64> {
        let mut s = lock(&self.state);
        if s.sealed == 0 && !s.stop {
            s = self.cv.wait_timeout(s, idle).unwrap_or_else(|e| e.into_inner()).0;
        }
        if s.stop {
            return None;
        }
        Some(std::mem::take(&mut s.sealed))
    }
}

/// A periodic checkpoint rewrites the whole live index and holds the writer while it copies it, so its
/// cost grows with the live set. Its interval grows with it: at least this many times the last
/// checkpoint's bytes of journal are written between two, which keeps checkpoints under about 1/16 of
/// the disk's writes and of the writer's time (copying the index runs at roughly the disk's write rate),
/// while a restart still replays at most this multiple of a checkpoint's size on top of it.
pub(crate) const CHECKPOINT_INTERVAL_GROWTH: u64 = 16;

/// When the next periodic checkpoint is due.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CheckpointPace {
    /// `Options::checkpoint_every_segments`; 0 turns periodic checkpoints off.
    pub every_segments: u64,
    pub segment_bytes: u64,
    /// Bytes of the last checkpoint written (0 before the first).
    pub last_bytes: u64,
    /// Segments sealed since.
    pub sealed_since: u64,
}

impl CheckpointPace {
    pub fn due(&self) -> bool {
        if self.every_segments == 0 || self.sealed_since < self.every_segments {
            return false;
        }
        let written = self.sealed_since.saturating_mul(self.segment_bytes);
        written >= self.last_bytes.saturating_mul(CHECKPOINT_INTERVAL_GROWTH)
    }
}

/// The maintenance thread's loop.
pub(crate) fn run(core: Arc<Core>) {
    // The checkpoint the open started from counts as the last one written, so that a restart does not
    // bring the next one forward (with a large live set, by many times the interval).
    let mut pace = CheckpointPace {
        every_segments: u64::from(core.checkpoint_every_segments),
        segment_bytes: core.segment_bytes,
        last_bytes: core.checkpoint_at_open.map_or(0, |c| c.bytes),
        sealed_since: 0,
    };
    // The segment the newest checkpoint resumes from (without one from the open: 0, so that the first
    // reclaim of anything brings a checkpoint).
    let mut checkpoint_resume_seq = core.checkpoint_at_open.map_or(0, |c| c.resume_seq);
    // A first pass at once: recovery may have found dead segments.
    let mut sealed = Some(0);
    while let Some(n) = sealed {
        if core.shared.poisoned().is_some() {
            return;
        }
        pace.sealed_since += n;
        let trim = core.compaction.as_ref().map_or(
            Some(reclaim::TrimPace { bytes_per_sec: compact::CompactionPolicy::default().trim_bytes_per_sec }),
            |p| p.trim_pace(),
        );
        let mut reclaimed_through = match reclaim::reclaim(&core, trim) {
            Ok(r) => r.segments.last().copied(),
            Err(e) => {
                tracing::warn!(error = %e, "reclaim failed; retrying later");
                None
            }
        };
        if let Some(policy) = &core.compaction {
            match compact::compact(&core, policy) {
                Ok(r) => {
                    if r.records_moved > 0 || !r.reclaimed.segments.is_empty() {
                        tracing::debug!(?r, "compacted");
                    }
                    reclaimed_through = r.reclaimed.segments.last().copied().or(reclaimed_through);
                }
                Err(e) => tracing::warn!(error = %e, "compaction failed; retrying later"),
            }
        }
        // A reclaim that deleted the segment the newest checkpoint resumes from has made it useless: replace
        // it whatever its size.
        let due = pace.due() || reclaimed_through.is_some_and(|s| s >= checkpoint_resume_seq);
        if due {
            match checkpoint::checkpoint(&core) {
                Ok(report) => {
                    pace.sealed_since = 0;
                    if let Some(r) = report {
                        pace.last_bytes = r.bytes;
                        checkpoint_resume_seq = r.resume_seq;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "checkpoint failed; the next open scans more"),
            }
        }
        sealed = core.maintenance.wait(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace(every: u64, last_bytes: u64, sealed_since: u64) -> CheckpointPace {
        CheckpointPace { every_segments: every, segment_bytes: 1 << 20, last_bytes, sealed_since }
    }

    #[test]
    fn a_small_index_is_checkpointed_every_n_segments() {
        assert!(!pace(4, 0, 3).due());
        assert!(pace(4, 0, 4).due());
        assert!(pace(4, 64 << 10, 4).due(), "a 64 KiB checkpoint x 16 is 1 MiB, under 4 segments");
    }

    #[test]
    fn the_interval_grows_with_the_last_checkpoint() {
        // 1 MiB checkpoint: 16 MiB of journal, 16 segments, between two.
        assert!(!pace(4, 1 << 20, 4).due());
        assert!(!pace(4, 1 << 20, 15).due());
        assert!(pace(4, 1 << 20, 16).due());
        // The growth is linear in the checkpoint's size.
        assert!(!pace(4, 2 << 20, 31).due());
        assert!(pace(4, 2 << 20, 32).due());
    }

    #[test]
    fn zero_turns_periodic_checkpoints_off() {
        assert!(!pace(0, 0, 1_000).due());
        assert!(!pace(0, 1, u64::MAX).due());
    }

    #[test]
    fn huge_values_do_not_overflow() {
        assert!(pace(1, u64::MAX, u64::MAX).due());
        assert!(!pace(1, u64::MAX, 1).due());
    }
}
