//! Background upkeep of an open journal, on its own thread: reclaim dead segments, write checkpoints, and
//! compact. Each job is also callable directly (`Journal::reclaim`, `checkpoint`, `compact`); the thread
//! only decides *when*. It wakes when the writer seals a segment, since that is when each job can have
//! new work.

pub(crate) mod checkpoint;
pub(crate) mod compact;
pub(crate) mod reclaim;

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::journal::Core;
use crate::sync_util::lock;

/// Wake-ups for the maintenance thread.
#[derive(Debug, Default)]
pub(crate) struct Maintenance {
    state: Mutex<State>,
    cv: Condvar,
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

/// The maintenance thread's loop.
pub(crate) fn run(core: Arc<Core>) {
    let mut sealed_since_checkpoint = 0u64;
    // The segment the newest checkpoint resumes from (unknown at start: assume it may be stale).
    let mut checkpoint_resume_seq = 0u64;
    // A first pass at once: recovery may have found dead segments.
    let mut sealed = Some(0);
    while let Some(n) = sealed {
        if core.shared.poisoned().is_some() {
            return;
        }
        sealed_since_checkpoint += n;
        let pace = core.compaction.as_ref().map_or(
            Some(reclaim::TrimPace { bytes_per_sec: compact::CompactionPolicy::default().trim_bytes_per_sec }),
            |p| p.trim_pace(),
        );
        let mut reclaimed_through = match reclaim::reclaim(&core, pace) {
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
        let every = u64::from(core.checkpoint_every_segments);
        let due = (every > 0 && sealed_since_checkpoint >= every)
            || reclaimed_through.is_some_and(|s| s >= checkpoint_resume_seq);
        if due {
            match checkpoint::checkpoint(&core) {
                Ok(report) => {
                    sealed_since_checkpoint = 0;
                    checkpoint_resume_seq = report.map_or(checkpoint_resume_seq, |r| r.resume_seq);
                }
                Err(e) => tracing::warn!(error = %e, "checkpoint failed; the next open scans more"),
            }
        }
        sealed = core.maintenance.wait(Duration::from_secs(5));
    }
}
