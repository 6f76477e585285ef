//! Group commit.
//!
//! Callers put requests on one queue. One caller at a time is the **leader**: it takes everything queued (up
//! to `max_batch_bytes`), writes it with one vectored write, fdatasyncs once (under `SyncPolicy::Always`),
//! and completes every request of the batch. While it does, new requests gather for the next batch.
//!
//! Who leads: a blocking caller that finds no leader leads at once, on its own thread, so a lone writer
//! pays no thread hand-off (measured: two hand-offs per append cost ~20 % of an fdatasync on this class of
//! disk). If nothing is queued either, its request never enters the queue: it is written straight from the
//! caller's buffer, which outlives the call ([`Shared::append_blocking`]). When its own request is done, a
//! leader with work still queued hands leadership to the oldest blocking caller waiting, or to the journal's
//! writer thread, which leads for async (`.await`) callers and runs the periodic sync of
//! `SyncPolicy::Interval`.
//!
//! Overlap: under `SyncPolicy::Always`, a batch of at least `limits::PIPELINE_MIN_BATCH_BYTES` has its
//! fdatasync run on a helper thread while the leader takes, seals and writes the next batch
//! ([`writer::Writer::pipeline`]); a leader that finds enough queued for two such batches takes half, so
//! that the two halves alternate. Callers are still completed only after an fdatasync that began after
//! their write returned, in order, and a failed fdatasync poisons the journal before anything written
//! after it is completed. Small batches (a lone writer) never pay the helper's two wake-ups.
//!
//! Order: requests are logged in queue order, so the records of one caller keep the order of its calls.
//!
//! All file I/O of a batch happens in [`writer::Writer`], behind the [`crate::vfs`] seam; an io_uring path
//! replaces what is behind that seam, not this protocol.

pub(crate) mod completion;
pub(crate) mod model;
pub(crate) mod writer;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::error::AppendError;
use crate::format::frame::FrameType;
use crate::limits::PIPELINE_MIN_BATCH_BYTES;
use crate::sync_util::lock;
use crate::types::{RecordId, SyncPolicy};
use completion::{Outcome, Pending, Slot, Wake};
use writer::Writer;

/// What a request asks the writer to log.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RequestOp {
    Frame {
        frame_type: FrameType,
        id: RecordId,
        tx: u64,
        kind: u8,
    },
    /// Make everything written so far durable.
    Sync,
    /// Seal the active segment now (the next write starts a new one).
    Roll,
}

/// A request to the writer. Queued requests own their payload (`'static`); the request of a blocking caller
/// that finds the journal idle borrows the caller's buffer, since it is written before that call returns
/// ([`Shared::append_blocking`]).
pub(crate) struct Request<'a> {
    pub op: RequestOp,
    pub payload: Cow<'a, [u8]>,
    /// CRC32 of `payload`, computed on the caller's thread so the leader only combines it.
    pub payload_crc: crc32fast::Hasher,
    pub slot: Arc<Slot>,
    /// A blocking caller waits on `slot` and can be handed leadership.
    pub blocking: bool,
}

/// Never the payload: a journal's `Debug` output (a panic message, a log line) must not carry records,
/// which may be confidential and are encrypted at rest.
impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("op", &self.op)
            .field("payload_bytes", &self.payload.len())
            .field("blocking", &self.blocking)
            .finish_non_exhaustive()
    }
}

impl Request<'_> {
    fn sync() -> Request<'static> {
        let slot = Arc::new(Slot::new());
        Request {
            op: RequestOp::Sync,
            payload: Cow::Borrowed(&[]),
            payload_crc: crc32fast::Hasher::new(),
            slot,
            blocking: false,
        }
    }

    /// Bytes this request adds to a batch.
    fn bytes(&self) -> u64 {
        match self.op {
            RequestOp::Frame { .. } => crate::limits::FRAME_HEADER_BYTES + self.payload.len() as u64,
            RequestOp::Sync | RequestOp::Roll => 0,
        }
    }
}

#[derive(Debug, Default)]
struct Queue {
    pending: VecDeque<Request<'static>>,
    pending_bytes: u64,
    leader_active: bool,
    /// The writer thread is asked to lead.
    lead_requested: bool,
    /// The leader is waiting up to `max_batch_wait` for more requests.
    gathering: bool,
    /// A pipelining leader waits for the next request or the end of its in-flight fdatasync
    /// (`writer::Writer::pipeline`).
    awaiting: bool,
    /// The outcome of the in-flight fdatasync of a pipelining leader, once it has returned.
    sync_outcome: Option<std::io::Result<()>>,
    closed: bool,
    shutdown: bool,
}

impl Queue {
    fn push(&mut self, r: Request<'static>) {
        self.pending_bytes += r.bytes();
        self.pending.push_back(r);
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writer thread.
    writer_cv: Condvar,
    /// Wakes a gathering leader.
    gather_cv: Condvar,
    writer: Mutex<Writer>,
    poison: OnceLock<AppendError>,
    max_batch_bytes: u64,
    max_batch_wait: Duration,
    pub policy: SyncPolicy,
}

impl Shared {
    pub fn new(writer: Writer, max_batch_bytes: u64, max_batch_wait: Duration, policy: SyncPolicy) -> Shared {
        Shared {
            queue: Mutex::new(Queue::default()),
            writer_cv: Condvar::new(),
            gather_cv: Condvar::new(),
            writer: Mutex::new(writer),
            poison: OnceLock::new(),
            max_batch_bytes,
            max_batch_wait,
            policy,
        }
    }

    /// Queues a request for an async caller (the writer thread leads for it). Ordered: requests are logged
    /// in the order this and [`Shared::append_blocking`] are called.
    pub fn submit(self: &Arc<Self>, op: RequestOp, payload: Vec<u8>) -> Pending {
        let mut payload_crc = crc32fast::Hasher::new();
        payload_crc.update(&payload);
        self.queue_request(op, payload, payload_crc, false)
    }

    /// Why no request can be accepted now, if none can.
    fn refusal(&self, q: &Queue) -> Option<AppendError> {
        match self.poison.get() {
            Some(p) => Some(p.clone()),
            None => q.closed.then_some(AppendError::Closed),
        }
    }

    fn queue_request(
        self: &Arc<Self>,
        op: RequestOp,
        payload: Vec<u8>,
        payload_crc: crc32fast::Hasher,
        blocking: bool,
    ) -> Pending {
        let slot = Arc::new(Slot::new());
        let mut q = lock(&self.queue);
        if let Some(e) = self.refusal(&q) {
            return Pending::ready(Err(e));
        }
        q.push(Request { op, payload: Cow::Owned(payload), payload_crc, slot: slot.clone(), blocking });
        let mut lead_first = false;
        if !q.leader_active {
            q.leader_active = true;
            if blocking {
                lead_first = true;
            } else {
                q.lead_requested = true;
                self.writer_cv.notify_one();
            }
        } else if (q.gathering && q.pending_bytes >= self.max_batch_bytes) || q.awaiting {
            self.gather_cv.notify_one();
        }
        drop(q);
        Pending::queued(self.clone(), slot, lead_first)
    }

    /// Appends on behalf of a blocking caller and waits for the outcome. A caller that finds the journal
    /// idle (no leader, nothing queued, no batch wait configured) leads at once with its own request,
    /// written straight from `payload`: a lone writer then neither copies its payload nor allocates for it
    /// (at 16 KiB that copy, its allocation and its free were ~2 µs of an append's ~8 µs of user time;
    /// docs/BENCHMARKS.md, "Runs 18–32"). Anyone else queues a copy, as an async caller does.
    pub fn append_blocking(self: &Arc<Self>, op: RequestOp, payload: &[u8]) -> Outcome {
        let mut payload_crc = crc32fast::Hasher::new();
        payload_crc.update(payload);
        {
            let mut q = lock(&self.queue);
            if let Some(e) = self.refusal(&q) {
                return Err(e);
            }
            let idle = !q.leader_active && q.pending.is_empty() && self.max_batch_wait.is_zero();
            if !idle {
                drop(q);
                return self.queue_request(op, payload.to_vec(), payload_crc, true).wait();
            }
            q.leader_active = true;
        }
        let slot = Arc::new(Slot::new());
        let own = Request { op, payload: Cow::Borrowed(payload), payload_crc, slot: slot.clone(), blocking: true };
        lead_from(self, Some(&slot), Some(vec![own]));
        // `own` is gone with its batch (the borrow ends here). The writer completed it, and leadership was
        // passed on or given up, before `lead_from` returned; and a request that never entered the queue is
        // never made leader.
        match slot.wait() {
            Wake::Done(o) => o,
            Wake::Lead => unreachable!("a request that was never queued was made leader"),
        }
    }

    /// Stops the journal for good: every queued and later request fails with `error`.
    pub fn poison(&self, error: AppendError) {
        if self.poison.set(error.clone()).is_ok() {
            tracing::error!(%error, "journal poisoned");
        }
        let drained: Vec<Request<'static>> = {
            let mut q = lock(&self.queue);
            q.pending_bytes = 0;
            q.pending.drain(..).collect()
        };
        let error = self.poison.get().cloned().unwrap_or(error);
        for r in drained {
            r.slot.complete(Err(error.clone()));
        }
    }

    pub fn writer_mutex(&self) -> &Mutex<Writer> {
        &self.writer
    }

    pub fn poisoned(&self) -> Option<AppendError> {
        self.poison.get().cloned()
    }

    /// Refuses new requests and stops the writer thread once the queue is drained.
    pub fn shutdown_writer_thread(&self) {
        let mut q = lock(&self.queue);
        q.closed = true;
        q.shutdown = true;
        self.writer_cv.notify_all();
    }

    fn take_batch(&self) -> Option<Vec<Request<'static>>> {
        let mut q = lock(&self.queue);
        if !self.max_batch_wait.is_zero() && q.pending_bytes < self.max_batch_bytes {
            let deadline = Instant::now() + self.max_batch_wait;
            q.gathering = true;
            while q.pending_bytes < self.max_batch_bytes && !q.shutdown {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                q = self.gather_cv.wait_timeout(q, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
            }
            q.gathering = false;
        }
        // Large batches are written through `writer::Writer::pipeline` (under `SyncPolicy::Always`): a
        // leader that finds enough queued for two such batches takes half, so that the other half can be
        // written while the first one's fdatasync runs.
        let limit = if self.policy == SyncPolicy::Always && q.pending_bytes >= 2 * PIPELINE_MIN_BATCH_BYTES {
            (q.pending_bytes / 2).min(self.max_batch_bytes)
        } else {
            self.max_batch_bytes
        };
        let batch = self.pop_batch(&mut q, limit);
        if batch.is_empty() {
            q.leader_active = false;
            return None;
        }
        Some(batch)
    }

    /// Whether any request is queued.
    fn has_pending(&self) -> bool {
        !lock(&self.queue).pending.is_empty()
    }

    /// Takes queued requests, in order, up to `limit` bytes (at least one if any is queued).
    fn pop_batch(&self, q: &mut Queue, limit: u64) -> Vec<Request<'static>> {
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        while let Some(r) = q.pending.front() {
            let b = r.bytes();
            if !batch.is_empty() && bytes + b > limit {
                break;
            }
            bytes += b;
            batch.push(q.pending.pop_front().expect("front exists"));
        }
        debug_assert!(q.pending_bytes >= bytes);
        q.pending_bytes -= bytes;
        batch
    }

    /// For a leader whose fdatasync runs on a helper thread: waits until `want` bytes are queued or the
    /// fdatasync has returned, whichever is first. Returns the next batch (possibly empty) and the
    /// fdatasync's outcome if it has returned. Leadership is unchanged: the caller is still the leader.
    fn next_while_syncing(&self, want: u64) -> (Vec<Request<'static>>, Option<std::io::Result<()>>) {
        let mut q = lock(&self.queue);
        q.awaiting = true;
        while q.sync_outcome.is_none() && q.pending_bytes < want && !q.shutdown {
            q = self.gather_cv.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        q.awaiting = false;
        let outcome = q.sync_outcome.take();
        let batch = self.pop_batch(&mut q, self.max_batch_bytes);
        (batch, outcome)
    }

    /// Waits for the helper's fdatasync to return.
    fn sync_outcome(&self) -> std::io::Result<()> {
        let mut q = lock(&self.queue);
        loop {
            if let Some(o) = q.sync_outcome.take() {
                return o;
            }
            q.awaiting = true;
            q = self.gather_cv.wait(q).unwrap_or_else(|e| e.into_inner());
            q.awaiting = false;
        }
    }

    /// The helper thread reports its fdatasync's outcome.
    fn report_sync(&self, outcome: std::io::Result<()>) {
        let mut q = lock(&self.queue);
        debug_assert!(q.sync_outcome.is_none(), "one fdatasync in flight at a time");
        q.sync_outcome = Some(outcome);
        drop(q);
        self.gather_cv.notify_all();
    }
}

/// Leads batches until `mine` (a blocking caller's request) is done, then hands leadership on; with `mine`
/// absent (the writer thread), leads until the queue is empty.
pub(crate) fn lead(shared: &Arc<Shared>, mine: Option<&Slot>) {
    lead_from(shared, mine, None)
}

/// [`lead`], writing `first` (a batch not taken from the queue) before anything queued.
fn lead_from<'a>(shared: &Arc<Shared>, mine: Option<&Slot>, mut first: Option<Vec<Request<'a>>>) {
    let _guard = LeaderPanicGuard(shared);
    loop {
        let batch: Vec<Request<'a>> = match first.take() {
            Some(b) => b,
            None => match shared.take_batch() {
                Some(b) => b,
                None => return,
            },
        };
        {
            let mut writer = lock(&shared.writer);
            writer.process(batch, shared);
            debug_assert!(lock(&shared.queue).sync_outcome.is_none(), "no fdatasync outlives its batch");
        }
        let mut q = lock(&shared.queue);
        if q.pending.is_empty() {
            q.leader_active = false;
            return;
        }
        if mine.is_some_and(|s| s.is_done()) {
            match q.pending.iter().find(|r| r.blocking) {
                Some(next) => next.slot.designate_leader(),
                None => {
                    q.lead_requested = true;
                    shared.writer_cv.notify_one();
                }
            }
            return;
        }
    }
}

/// If a leader panics (a broken invariant), nobody else would ever lead: stop the journal instead, so that
/// every waiting and later caller gets an error rather than hanging.
struct LeaderPanicGuard<'a>(&'a Shared);

impl Drop for LeaderPanicGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poison(AppendError::Poisoned {
                path: std::path::PathBuf::new(),
                op: "group commit (internal invariant violated; see the panic message)",
                source: Arc::new(std::io::Error::other("group-commit leader panicked")),
            });
        }
    }
}

/// How long a closing writer thread waits before it reports why it cannot stop.
const SHUTDOWN_STALL: Duration = Duration::from_secs(5);

/// The writer thread: leads for async callers and runs the periodic sync of `SyncPolicy::Interval`.
pub(crate) fn writer_thread(shared: Arc<Shared>) {
    let interval = match shared.policy {
        SyncPolicy::Interval(d) => Some(d),
        _ => None,
    };
    let mut next_tick = interval.map(|d| Instant::now() + d);
    // When this thread first saw the journal closing, and whether it has said it cannot stop.
    let mut closing: Option<(Instant, bool)> = None;
    loop {
        let mut q = lock(&shared.queue);
        let tick = loop {
            if q.lead_requested {
                break false;
            }
            if q.shutdown && q.pending.is_empty() && !q.leader_active {
                return;
            }
            let now = Instant::now();
            if next_tick.is_some_and(|t| now >= t) {
                break true;
            }
            let until_tick = next_tick.map(|t| t - now);
            // Closing waits for this thread. If it cannot stop, it says why (the queue's `Debug` is free of
            // payloads): a request queued with no leader, or a leader marked active that never came.
            if q.shutdown {
                let (since, said) = closing.get_or_insert((now, false));
                if !*said && now.duration_since(*since) >= SHUTDOWN_STALL {
                    *said = true;
                    tracing::error!(queue = ?*q, "the journal's writer thread cannot stop: requests are queued or a leader is marked active");
                }
            }
            let limit = if q.shutdown {
                Some(until_tick.map_or(SHUTDOWN_STALL, |d| d.min(SHUTDOWN_STALL)))
            } else {
                until_tick
            };
            match limit {
                Some(d) => q = shared.writer_cv.wait_timeout(q, d).unwrap_or_else(|e| e.into_inner()).0,
                None => q = shared.writer_cv.wait(q).unwrap_or_else(|e| e.into_inner()),
            }
        };
        if !tick {
            q.lead_requested = false;
            drop(q);
            lead(&shared, None);
            continue;
        }
        next_tick = interval.map(|d| Instant::now() + d);
        if shared.poison.get().is_some() {
            continue;
        }
        q.push(Request::sync());
        if q.leader_active {
            // The active leader takes it with its next batch.
            continue;
        }
        q.leader_active = true;
        drop(q);
        lead(&shared, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queued_request_never_prints_its_payload() {
        let r = Request {
            op: RequestOp::Frame { frame_type: FrameType::Add, id: 7, tx: 0, kind: 1 },
            payload: Cow::Borrowed(b"card 4111-1111-1111-1111"),
            payload_crc: crc32fast::Hasher::new(),
            slot: Arc::new(Slot::new()),
            blocking: false,
        };
        let mut q = Queue::default();
        q.push(r);
        let printed = format!("{q:?}");
        assert!(!printed.contains("4111") && !printed.contains("52, 49, 49, 49"), "{printed}");
        assert!(printed.contains("payload_bytes: 24"), "{printed}");
    }
}
