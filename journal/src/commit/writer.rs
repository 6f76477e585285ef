//! The batch writer: turns a batch of requests into frames, writes them into the active segment with one
//! vectored write per segment touched, fdatasyncs as the policy says, rolls over to a spare segment when the
//! active one is full, and completes each request.
//!
//! # Crash safety
//! - A segment is activated by writing its header together with its first frames; recovery treats a
//!   newest segment whose header never landed as a torn activation.
//! - Before anything is written into a new segment, the previous one is sealed and fdatasynced, so only the
//!   newest segment can ever hold a torn tail.
//! - `since_sync` in each frame tells recovery which frames could not yet have been acknowledged.
//!
//! # Failure
//! - A failed fdatasync poisons the journal: the kernel may have dropped the dirty pages, so the bytes in
//!   the file are unknown. Nothing is retried; every waiting and later caller gets the error.
//! - A failed write (ENOSPC) fails the requests of that write, reverts their effect on the writer's model
//!   and LSN counter, and overwrites what may have landed with zeros so that no stale frame survives; the
//!   next batch writes at the same offset.

use std::io::{self, IoSlice};
use std::path::PathBuf;
use std::sync::Arc;

use super::completion::Slot;
use super::model::{Model, Planned, Undo};
use super::{Request, RequestOp, Shared};
use crate::crypto::keys::KeyRing;
use crate::crypto::{unit, SegmentCipher};
use crate::error::AppendError;
use crate::format::frame::{FrameHeader, FrameType, HEADER_BYTES};
use crate::format::segment_header::{self, SegmentHeader};
use crate::format::{unix_ms_now, Binding};
use crate::index::Location;
use crate::limits::{
    FRAME_HEADER_BYTES, PAGE_BYTES, PIPELINE_MAX_BATCHES, PIPELINE_MIN_BATCH_BYTES, SEAL_FRAME_BYTES,
    SEGMENT_HEADER_BYTES,
};
use crate::segment::spares::{Spare, SparePool};
use crate::types::{Lsn, SyncPolicy, WriteStats};
use crate::vfs::VfsFile;

/// The segment being appended to.
#[derive(Debug)]
pub(crate) struct Active {
    pub path: PathBuf,
    pub file: Arc<dyn VfsFile>,
    pub binding: Binding,
    /// Where the next frame goes.
    pub offset: u64,
    pub capacity: u64,
    /// Frames in the segment, seal excluded.
    pub frames: u64,
    /// Frames written since the last completed fdatasync of this segment.
    pub since_sync: u32,
    /// The header, until the first write into this segment lands.
    pub header: Option<[u8; segment_header::BYTES]>,
    /// The segment's data key, if it is encrypted: every write is then one sealed unit.
    pub cipher: Option<SegmentCipher>,
}

impl Active {
    /// Bytes a write adds around its frames.
    fn unit_overhead(&self) -> u64 {
        if self.cipher.is_some() {
            unit::UNIT_OVERHEAD_BYTES
        } else {
            0
        }
    }

    /// Room that must stay free for the seal.
    fn seal_reserve(&self) -> u64 {
        SEAL_FRAME_BYTES + self.unit_overhead()
    }
}

#[derive(Debug)]
pub(crate) struct Writer {
    pub journal_id: [u8; 16],
    pub active: Option<Active>,
    pub last_seq: u64,
    pub next_lsn: Lsn,
    pub model: Model,
    pub spares: Arc<SparePool>,
    pub policy: SyncPolicy,
    /// Bytes were written since the last fdatasync.
    pub unsynced: bool,
    pub stats: WriteStats,
    /// The fdatasync that failed, if one did. From then on this writer performs no I/O that could make
    /// unknown bytes look durable: every later sync returns this error without touching the file.
    pub sync_failed: Option<AppendError>,
    /// Master keys; new segments are encrypted under the current one. `None`: plaintext.
    pub keys: Option<KeyRing>,
    /// The oldest segment not yet reclaimed.
    pub oldest_seq: u64,
    /// Told of every sealed segment.
    pub maintenance: Option<Arc<crate::maintenance::Maintenance>>,
    /// The buffer a batch is sealed in, kept between batches: a fresh one of a batch's size (up to MiBs)
    /// costs page faults on the leader, which at 64 writers is the one thread the CPU must not lose.
    pub unit_buf: Vec<u8>,
}

enum Stop {
    Poisoned(AppendError),
    Failed(AppendError),
}

/// What one run wrote, and what it owes its callers once it is durable.
struct Run {
    /// The callers of the run's requests and their LSNs (`None`: a sync or roll request, which is given
    /// `durable`).
    done: Vec<(Arc<Slot>, Option<Lsn>)>,
    /// Everything up to this LSN is durable once the run is.
    durable: Lsn,
    want_sync: bool,
    /// The active segment must be sealed after this run.
    segment_full: bool,
    /// Bytes the run wrote.
    bytes: u64,
    /// The run's write also wrote its segment's header (activated it).
    activated: bool,
}

impl Run {
    fn complete(self) {
        for (slot, lsn) in self.done {
            slot.complete(Ok(lsn.unwrap_or(self.durable)));
        }
    }

    fn fail(self, e: &AppendError) {
        for (slot, _) in self.done {
            slot.complete(Err(e.clone()));
        }
    }
}

/// A run whose fdatasync runs on the pipeline's helper thread.
struct InFlight {
    run: Run,
    /// `since_sync` of the active segment when the fdatasync started.
    frames: u32,
    seq: u64,
}

fn poisoned(path: &std::path::Path, op: &'static str, e: io::Error) -> Stop {
    Stop::Poisoned(AppendError::Poisoned { path: path.to_path_buf(), op, source: Arc::new(e) })
}

impl Writer {
    /// The newest segment that holds frames (reclaim never removes it: it carries the LSN the journal
    /// resumes from).
    pub fn newest_written_seq(&self) -> u64 {
        match &self.active {
            Some(a) if a.header.is_some() => self.last_seq - 1,
            _ => self.last_seq,
        }
    }

    /// The newest segment a reclaim may delete now, with every older one (`crate::index`).
    pub fn reclaim_bound(&self) -> Option<u64> {
        self.model.index.reclaim_bound(self.oldest_seq, self.newest_written_seq(), self.model.open_tx_first_seq())
    }

    /// Writes a batch and completes every request in it.
    pub fn process(&mut self, batch: Vec<Request<'_>>, shared: &Shared) {
        let mut batch: Vec<Option<Request<'_>>> = batch.into_iter().map(Some).collect();
        if let Some(p) = shared.poisoned() {
            fail_all(&mut batch, 0, &p);
            return;
        }
        self.run_batch(batch, 0, None, shared, true);
    }

    /// Writes and completes the requests of `batch` from `next` on, starting with `written` (a run of it
    /// already written) if given.
    fn run_batch(
        &mut self,
        mut batch: Vec<Option<Request<'_>>>,
        mut next: usize,
        mut written: Option<Result<Run, Stop>>,
        shared: &Shared,
        may_pipeline: bool,
    ) {
        loop {
            let result = match written.take() {
                Some(w) => w,
                None if next < batch.len() => self.write_run(&mut batch, &mut next),
                None => break,
            };
            let outcome = match result {
                // Only when another batch is already queued: otherwise nothing could be written during the
                // fdatasync, and the helper would add two wake-ups for nothing.
                Ok(run) if may_pipeline && next == batch.len() && self.can_pipeline(&run) && shared.has_pending() => {
                    match self.pipeline(run, shared) {
                        Ok(()) => return,
                        // The helper thread could not be started: finish the run here.
                        Err(run) => self.finish_run(run),
                    }
                }
                Ok(run) => self.finish_run(run),
                Err(stop) => Err(stop),
            };
            match outcome {
                Ok(()) => {}
                Err(Stop::Failed(e)) => {
                    fail_all(&mut batch, next, &e);
                    return;
                }
                Err(Stop::Poisoned(e)) => {
                    shared.poison(e.clone());
                    fail_all(&mut batch, 0, &e);
                    return;
                }
            }
        }
        debug_assert!(batch.iter().all(Option::is_none), "every request completed");
    }

    /// fdatasyncs a written run if it needs it, completes its requests, and seals the segment if it is full.
    fn finish_run(&mut self, run: Run) -> Result<(), Stop> {
        // An activation is made durable before anything else is written into its segment, whatever the
        // policy: recovery judges a newest segment whose header did not land by whether a later write
        // exists (an encrypted one cannot be read without its header), which proves the activation
        // completed only if it was fdatasynced first.
        if (run.want_sync || run.activated) && self.unsynced {
            if let Err(stop) = self.sync_active() {
                let (Stop::Poisoned(e) | Stop::Failed(e)) = &stop;
                run.fail(e);
                return Err(stop);
            }
        }
        let full = run.segment_full;
        run.complete();
        if full {
            self.seal()?;
        }
        Ok(())
    }

    /// Whether the fdatasync of `run` may go to a helper thread while the next batch is written: only for
    /// batches large enough that the overlap (the next batch's copy into the page cache, and its sealing in
    /// an encrypted segment) pays for the two thread wake-ups it costs. A lone writer's batch never is.
    ///
    /// Never the write that activated its segment: recovery recognises a torn activation of an encrypted
    /// segment (whose header, and so its data key, did not land) by its being the segment's only unit, so
    /// nothing more is written into a segment until its activation is durable.
    fn can_pipeline(&self, run: &Run) -> bool {
        run.want_sync
            && !run.activated
            && self.unsynced
            && !run.segment_full
            && self.sync_failed.is_none()
            && run.bytes >= PIPELINE_MIN_BATCH_BYTES
    }

    /// Group commit with one fdatasync in flight on a helper thread: while batch N's fdatasync runs, the
    /// leader takes batch N+1, seals it (if encrypted) and writes it; then it waits for N's fdatasync, hands
    /// N+1's to the helper and completes N's callers. Callers are completed only after an fdatasync that
    /// began after their write, and in order; a failed fdatasync poisons the journal before anything written
    /// after it is completed. Chains at most `PIPELINE_MAX_BATCHES` batches, so that the leader's own caller
    /// is not held for long; every fdatasync has returned when this returns.
    ///
    /// `Err(first)` if the helper thread could not be started (nothing was done).
    fn pipeline(&mut self, first: Run, shared: &Shared) -> Result<(), Run> {
        std::thread::scope(|scope| {
            let (jobs, inbox) = std::sync::mpsc::channel::<Arc<dyn VfsFile>>();
            let helper = std::thread::Builder::new().name("keel-fdatasync".into()).spawn_scoped(scope, move || {
                for file in inbox {
                    shared.report_sync(file.sync_data());
                }
            });
            if helper.is_err() {
                return Err(first);
            }
            let mut in_flight = self.start_sync(first, &jobs);
            let mut chained = 0;
            loop {
                let (batch, outcome) = if chained < PIPELINE_MAX_BATCHES {
                    shared.next_while_syncing((in_flight.run.bytes / 2).max(1))
                } else {
                    (Vec::new(), None)
                };
                if batch.is_empty() {
                    let outcome = outcome.unwrap_or_else(|| shared.sync_outcome());
                    match self.end_sync(in_flight, outcome) {
                        Ok(durable) => durable.complete(),
                        Err(e) => shared.poison(e),
                    }
                    return Ok(());
                }
                chained += 1;
                let mut batch: Vec<Option<Request<'_>>> = batch.into_iter().map(Some).collect();
                let mut next = 0;
                // Sealed and written while the previous batch's fdatasync runs.
                let written = self.write_run(&mut batch, &mut next);
                let outcome = outcome.unwrap_or_else(|| shared.sync_outcome());
                let durable = match self.end_sync(in_flight, outcome) {
                    Ok(durable) => durable,
                    Err(e) => {
                        if let Ok(run) = written {
                            run.fail(&e);
                        }
                        shared.poison(e.clone());
                        fail_all(&mut batch, 0, &e);
                        return Ok(());
                    }
                };
                match written {
                    Ok(run) if next == batch.len() && self.can_pipeline(&run) => {
                        // The next fdatasync starts before the callers are woken: waking a batch's callers
                        // takes a while on a busy CPU, and the disk need not wait for it.
                        in_flight = self.start_sync(run, &jobs);
                        durable.complete();
                    }
                    written => {
                        durable.complete();
                        self.run_batch(batch, next, Some(written), shared, false);
                        return Ok(());
                    }
                }
            }
        })
    }

    /// Hands the fdatasync that makes `run` durable to the helper thread.
    fn start_sync(&mut self, run: Run, jobs: &std::sync::mpsc::Sender<Arc<dyn VfsFile>>) -> InFlight {
        let active = self.active.as_ref().expect("a run that wants a sync has an active segment");
        let in_flight = InFlight { run, frames: active.since_sync, seq: active.binding.segment_seq };
        jobs.send(active.file.clone()).expect("the helper thread lives as long as the pipeline");
        self.stats.fdatasyncs += 1;
        self.stats.overlapped_fdatasyncs += 1;
        // Everything written so far is covered by this fdatasync; what is written next is not.
        self.unsynced = false;
        in_flight
    }

    /// Takes the outcome of an fdatasync started by `start_sync`: returns its run, now durable, for the
    /// caller to complete; or fails the run and poisons this writer.
    fn end_sync(&mut self, in_flight: InFlight, outcome: io::Result<()>) -> Result<Run, AppendError> {
        let active = self.active.as_mut().expect("a segment stays active while its fdatasync is in flight");
        assert_eq!(active.binding.segment_seq, in_flight.seq, "no roll-over while an fdatasync is in flight");
        match outcome {
            Ok(()) => {
                // Frames written after the fdatasync started may not be covered by it.
                assert!(active.since_sync >= in_flight.frames, "since_sync only grows while a sync is in flight");
                active.since_sync -= in_flight.frames;
                Ok(in_flight.run)
            }
            Err(e) => {
                let err = self.sync_failure(e);
                in_flight.run.fail(&err);
                Err(err)
            }
        }
    }

    /// Writes the requests from `*next` that fit into the active segment (activating one if needed) and
    /// advances `*next`. The run's requests are completed by `finish_run` or the pipeline, once durable.
    fn write_run(&mut self, batch: &mut [Option<Request<'_>>], next: &mut usize) -> Result<Run, Stop> {
        let has_frames = batch[*next..].iter().flatten().any(|r| matches!(r.op, RequestOp::Frame { .. }));
        if self.active.is_none() {
            if !has_frames {
                // Only syncs, nothing unsynced: every earlier segment was sealed and synced.
                let durable = Lsn(self.next_lsn.0 - 1);
                let done = batch[*next..].iter_mut().filter_map(Option::take).map(|r| (r.slot, None)).collect();
                *next = batch.len();
                return Ok(Run { done, durable, want_sync: false, segment_full: false, bytes: 0, activated: false });
            }
            let (spare, waited) = self.spares.take().map_err(|e| match e {
                AppendError::Poisoned { .. } => Stop::Poisoned(e),
                e => Stop::Failed(e),
            })?;
            self.stats.activations += 1;
            if !waited.is_zero() {
                self.stats.spare_waits += 1;
                self.stats.spare_wait_time += waited;
                tracing::debug!(waited_ms = waited.as_millis() as u64, "roll-over waited for a spare segment");
            }
            self.activate(spare);
        }
        let active = self.active.as_mut().expect("activated above");
        let activated = active.header.is_some();
        let start_offset = active.offset;
        let start_lsn = self.next_lsn;
        let mut undo: Vec<Undo> = Vec::new();
        let mut headers: Vec<[u8; HEADER_BYTES]> = Vec::new();
        let mut planned: Vec<(usize, Option<Lsn>)> = Vec::new();
        let mut end = active.offset + active.unit_overhead();
        // Relocations (compaction's copies) need no fdatasync of their own: until compaction's final sync
        // the originals stay, so losing a copy loses nothing. A run of only relocations skips it.
        let mut want_sync = self.policy == SyncPolicy::Always
            && batch[*next..]
                .iter()
                .flatten()
                .any(|r| !matches!(r.op, RequestOp::Frame { frame_type: FrameType::Relocate, .. }));
        let mut segment_full = false;
        // An encrypted write is one sealed unit, at `start_offset`, sealed by this thread. (Splitting large
        // writes into one unit per core, sealed on scoped threads, was slower once the disk was fast enough
        // for the seal to matter: the extra thread had to be scheduled behind the woken callers;
        // docs/BENCHMARKS.md, 2026-11-27.)
        let mut plain_bytes = 0u64;
        let mut i = *next;
        while i < batch.len() {
            let Some(req) = batch[i].as_ref() else {
                i += 1;
                continue;
            };
            let (frame_type, id, tx, kind) = match req.op {
                RequestOp::Frame { frame_type, id, tx, kind } => (frame_type, id, tx, kind),
                RequestOp::Sync => {
                    want_sync = true;
                    planned.push((i, None));
                    i += 1;
                    continue;
                }
                RequestOp::Roll => {
                    planned.push((i, None));
                    i += 1;
                    segment_full = true;
                    break;
                }
            };
            let bytes = FRAME_HEADER_BYTES + req.payload.len() as u64;
            if end + bytes + active.seal_reserve() > active.capacity {
                assert!(end > SEGMENT_HEADER_BYTES || active.frames > 0, "a frame larger than an empty segment");
                segment_full = true;
                break;
            }
            let lsn = self.next_lsn;
            let at = match active.cipher {
                None => Location { seq: active.binding.segment_seq, offset: end, inner: 0, frame_bytes: bytes as u32 },
                Some(_) => Location {
                    seq: active.binding.segment_seq,
                    offset: start_offset,
                    inner: plain_bytes as u32,
                    frame_bytes: bytes as u32,
                },
            };
            let planned_frame = Planned { frame_type, id, tx, kind, lsn, at, payload: &req.payload };
            match self.model.apply(&planned_frame, &mut undo) {
                Ok(id_field) => {
                    let header = FrameHeader {
                        payload_len: req.payload.len() as u32,
                        lsn,
                        id: id_field,
                        tx,
                        since_sync: active.since_sync + headers.len() as u32,
                        frame_type,
                        kind,
                    };
                    headers.push(header.encode(&active.binding, &req.payload_crc));
                    planned.push((i, Some(lsn)));
                    self.next_lsn = Lsn(lsn.0 + 1);
                    end += bytes;
                    plain_bytes += bytes;
                }
                Err(e) => {
                    if let Some(r) = batch[i].take() {
                        r.slot.complete(Err(e));
                    }
                }
            }
            i += 1;
        }

        if !headers.is_empty() {
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(2 * headers.len() + 3);
            let mut sealed = None;
            let mut plain = std::mem::take(&mut self.unit_buf);
            plain.clear();
            if let Some(cipher) = &active.cipher {
                // The write's frames, then sealed in place.
                plain.reserve(plain_bytes as usize);
                let mut h = headers.iter();
                for (idx, lsn) in &planned {
                    if lsn.is_some() {
                        plain.extend_from_slice(h.next().expect("one header per frame"));
                        plain.extend_from_slice(&batch[*idx].as_ref().expect("planned").payload);
                    }
                }
                debug_assert_eq!(plain.len() as u64, plain_bytes);
                sealed = Some(unit::seal(cipher, &active.binding, start_offset, &mut plain));
            }
            let write_at = match &active.header {
                Some(h) => {
                    slices.push(IoSlice::new(h));
                    0
                }
                None => start_offset,
            };
            match &sealed {
                Some((uh, tag)) => {
                    slices.push(IoSlice::new(uh));
                    slices.push(IoSlice::new(&plain));
                    slices.push(IoSlice::new(tag));
                }
                None => {
                    let mut h = headers.iter();
                    for (idx, lsn) in &planned {
                        if lsn.is_some() {
                            let req = batch[*idx].as_ref().expect("planned requests are present");
                            slices.push(IoSlice::new(h.next().expect("one header per frame")));
                            if !req.payload.is_empty() {
                                slices.push(IoSlice::new(&req.payload));
                            }
                        }
                    }
                }
            }
            // The bytes after `end` are zeros already (a spare is zero-filled, an in-place resume checked
            // them, a failed write is zeroed). Writing zeros to the end of the last page makes that page
            // whole, so the kernel need not read it from disk first when the page cache no longer holds it.
            let pad = page_pad(end, active.capacity);
            if pad > 0 {
                slices.push(IoSlice::new(&PAGE_OF_ZEROS[..pad]));
            }
            if let Err(e) = active.file.write_all_at(&slices, write_at) {
                drop(slices);
                self.model.revert(undo);
                self.next_lsn = start_lsn;
                let active = self.active.as_mut().expect("still active");
                // Whatever part of the write landed must not survive as frames a later batch could line up with.
                let zeros = vec![0u8; (end - write_at) as usize];
                active
                    .file
                    .write_all_at(&[IoSlice::new(&zeros)], write_at)
                    .map_err(|z| poisoned(&active.path, "zero a failed write", z))?;
                let source = Arc::new(e);
                let err = if source.raw_os_error() == Some(libc::ENOSPC) {
                    AppendError::NoSpace { path: active.path.clone(), source }
                } else {
                    AppendError::Poisoned { path: active.path.clone(), op: "write", source }
                };
                fail_planned(batch, &planned, &err);
                *next = i;
                return match err {
                    AppendError::Poisoned { .. } => Err(Stop::Poisoned(err)),
                    _ => Err(Stop::Failed(err)),
                };
            }
            drop(slices);
            self.unit_buf = plain;
            let active = self.active.as_mut().expect("still active");
            active.header = None;
            active.offset = end;
            // The seal must always fit: a segment that cannot be sealed cannot be rolled over.
            assert!(active.offset + active.seal_reserve() <= active.capacity, "seal room reserved");
            debug_assert_eq!(self.next_lsn.0 - start_lsn.0, headers.len() as u64, "one LSN per frame");
            active.frames += headers.len() as u64;
            active.since_sync += headers.len() as u32;
            self.unsynced = true;
            self.stats.writes += 1;
            self.stats.frames += headers.len() as u64;
            self.stats.sealed_units += u64::from(sealed.is_some());
        }
        let durable = Lsn(self.next_lsn.0 - 1);
        let done = planned.into_iter().filter_map(|(idx, lsn)| batch[idx].take().map(|r| (r.slot, lsn))).collect();
        *next = i;
        Ok(Run { done, durable, want_sync, segment_full, bytes: end - start_offset, activated })
    }

    fn sync_active(&mut self) -> Result<(), Stop> {
        self.fdatasync_active()?;
        let active = self.active.as_mut().expect("sync needs an active segment");
        active.since_sync = 0;
        self.unsynced = false;
        Ok(())
    }

    /// The one place this writer fdatasyncs. After a failure it never tries again (the kernel may have
    /// dropped the dirty pages, so a later success would prove nothing).
    fn fdatasync_active(&mut self) -> Result<(), Stop> {
        if let Some(e) = &self.sync_failed {
            return Err(Stop::Poisoned(e.clone()));
        }
        let active = self.active.as_ref().expect("sync needs an active segment");
        self.stats.fdatasyncs += 1;
        if let Err(e) = active.file.sync_data() {
            return Err(Stop::Poisoned(self.sync_failure(e)));
        }
        Ok(())
    }

    /// Records that an fdatasync of the active segment failed: from now on this writer never syncs again.
    fn sync_failure(&mut self, e: io::Error) -> AppendError {
        let active = self.active.as_ref().expect("only the active segment is fdatasynced");
        let err = AppendError::Poisoned { path: active.path.clone(), op: "fdatasync", source: Arc::new(e) };
        self.sync_failed = Some(err.clone());
        err
    }

    fn activate(&mut self, spare: Spare) {
        assert!(self.active.is_none(), "activate only after the previous segment was sealed");
        assert_eq!(spare.seq, self.last_seq + 1, "segments are used in sequence order");
        let binding = Binding { journal_id: self.journal_id, segment_seq: spare.seq };
        let (cipher, key_id, wrapped_key) = match &self.keys {
            Some(keys) => {
                let (id, master) = keys.current();
                let (cipher, wrapped) = SegmentCipher::create(master, id, &binding);
                (Some(cipher), id, wrapped)
            }
            None => (None, 0, [0; segment_header::WRAPPED_KEY_BYTES]),
        };
        let header = SegmentHeader {
            journal_id: self.journal_id,
            segment_seq: spare.seq,
            first_lsn: self.next_lsn,
            created_unix_ms: unix_ms_now(),
            segment_bytes: spare.bytes,
            key_id,
            wrapped_key,
        };
        self.last_seq = spare.seq;
        self.active = Some(Active {
            path: spare.path,
            file: Arc::from(spare.file),
            binding,
            offset: SEGMENT_HEADER_BYTES,
            capacity: spare.bytes,
            frames: 0,
            since_sync: 0,
            header: Some(header.encode()),
            cipher,
        });
    }

    /// Writes the seal frame, fdatasyncs, and retires the active segment.
    fn seal(&mut self) -> Result<(), Stop> {
        let Some(active) = self.active.as_mut() else { return Ok(()) };
        if active.header.is_some() {
            // Never written: the spare stays usable as it is. Keep it active.
            return Ok(());
        }
        assert!(active.offset + active.seal_reserve() <= active.capacity, "room for the seal is always reserved");
        let lsn = self.next_lsn;
        let bytes =
            seal_bytes(&active.binding, active.cipher.as_ref(), active.offset, lsn, active.frames, active.since_sync);
        active
            .file
            .write_all_at(&[IoSlice::new(&bytes)], active.offset)
            .map_err(|e| poisoned(&active.path, "write seal", e))?;
        self.fdatasync_active()?;
        self.next_lsn = Lsn(lsn.0 + 1);
        self.unsynced = false;
        self.active = None;
        if let Some(m) = &self.maintenance {
            m.segment_sealed();
        }
        Ok(())
    }

    /// fdatasync if anything is unsynced: close runs this after the writer thread has drained requests that
    /// were queued before close (under `never` or `interval` they may be unsynced). Never after a failed sync.
    pub fn flush(&mut self) -> Result<(), AppendError> {
        if self.unsynced && self.active.is_some() {
            return self.sync_active().map_err(|s| match s {
                Stop::Poisoned(e) | Stop::Failed(e) => e,
            });
        }
        Ok(())
    }
}

/// Zeros to pad a write to the end of its last page with.
static PAGE_OF_ZEROS: [u8; PAGE_BYTES as usize] = [0; PAGE_BYTES as usize];

/// How many zero bytes take a write that ends at `end` to the end of its page, within `capacity`.
fn page_pad(end: u64, capacity: u64) -> usize {
    let page_end = end.next_multiple_of(PAGE_BYTES).min(capacity);
    page_end.saturating_sub(end) as usize
}

/// The bytes that seal a segment at `offset`: the seal frame, in a sealed unit if the segment is encrypted.
pub(crate) fn seal_bytes(
    binding: &Binding,
    cipher: Option<&SegmentCipher>,
    offset: u64,
    lsn: Lsn,
    frames: u64,
    since_sync: u32,
) -> Vec<u8> {
    let mut frame = seal_frame(binding, lsn, frames, since_sync).to_vec();
    match cipher {
        None => frame,
        Some(c) => {
            let (uh, tag) = unit::seal(c, binding, offset, &mut frame);
            [&uh[..], &frame, &tag[..]].concat()
        }
    }
}

/// The bytes of a seal frame.
fn seal_frame(binding: &Binding, lsn: Lsn, frames: u64, since_sync: u32) -> [u8; HEADER_BYTES] {
    let header =
        FrameHeader { payload_len: 0, lsn, id: frames, tx: 0, since_sync, frame_type: FrameType::Seal, kind: 0 };
    header.encode(binding, &crc32fast::Hasher::new())
}

fn fail_all(batch: &mut [Option<Request<'_>>], from: usize, e: &AppendError) {
    for r in batch[from..].iter_mut().filter_map(Option::take) {
        r.slot.complete(Err(e.clone()));
    }
}

fn fail_planned(batch: &mut [Option<Request<'_>>], planned: &[(usize, Option<Lsn>)], e: &AppendError) {
    for (idx, _) in planned {
        if let Some(r) = batch[*idx].take() {
            r.slot.complete(Err(e.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_padded_to_the_end_of_their_page_within_the_segment() {
        assert_eq!(page_pad(4096, 1 << 20), 0, "already at a page boundary");
        // A 16 KiB record's frame after the segment header ends 296 bytes into its fifth page.
        assert_eq!(page_pad(256 + 16_424, 1 << 20), 4096 - 296);
        assert_eq!(page_pad(4097, 1 << 20), 4095);
        assert_eq!(page_pad(65_000, 65_100), 100, "never past the end of the segment");
        assert_eq!(page_pad(65_100, 65_100), 0);
    }
}
