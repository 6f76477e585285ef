//! The public journal handle.

use std::fs::File;
use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::commit::completion::Pending;
use crate::commit::model::Model;
use crate::commit::writer::{seal_bytes, Active, Writer};
use crate::commit::{writer_thread, RequestOp, Shared};
use crate::crypto::keys::KeyRing;
use crate::error::{AppendError, OpenError};
use crate::format::frame::FrameType;
use crate::format::identity::{self, Identity};
use crate::format::{unix_ms_now, Binding};
use crate::index::{RecordRef, SegmentLive};
use crate::limits::{self, payload_bytes_max_for};
use crate::maintenance::checkpoint::CheckpointReport;
use crate::maintenance::compact::{CompactReport, CompactionPolicy};
use crate::maintenance::reclaim::ReclaimReport;
use crate::maintenance::Maintenance;
use crate::reader::{ReadError, Reader};
use crate::recovery::{recover_dir, Recovered, Resume};
use crate::segment::spares::{Spare, SparePool};
use crate::sync_util::lock;
use crate::types::{Lsn, RecordId, RecoveryMode, SyncPolicy, TxId, WriteStats};
use crate::vfs::{OpenMode, StdVfs, Vfs};

/// How a journal is opened and run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Size of each segment file; takes effect for segments created from now on.
    pub segment_bytes: u64,
    pub sync: SyncPolicy,
    /// Upper bound on the bytes one group-commit batch writes.
    pub max_batch_bytes: u64,
    /// How long a leader waits for more requests before writing a batch smaller than `max_batch_bytes`.
    /// Zero (the default) writes at once; requests that arrive during a write form the next batch anyway.
    /// `keel journal perf` measures whether waiting pays on a given disk.
    pub max_batch_wait: Duration,
    pub recovery: RecoveryMode,
    /// Spare segments kept pre-allocated.
    pub spare_segments: u32,
    /// Run reclaim, checkpoints and compaction on a background thread, and checkpoint at close. Off, they
    /// run only when called.
    pub auto_maintenance: bool,
    /// With `auto_maintenance`, write a checkpoint after this many segments were sealed, and not before
    /// 16 × the last checkpoint's bytes of journal were written since, because each one rewrites the whole
    /// live index (0: only at close and after a reclaim made the last one unusable).
    pub checkpoint_every_segments: u32,
    /// With `auto_maintenance`, when and how fast to compact; `None`: never in the background.
    pub compaction: Option<CompactionPolicy>,
    /// Return a copy of the live-record index in `Recovered::records`. Off, the journal holds its one copy
    /// and a broker walks it with [`Journal::for_each_record`] — half the memory after open.
    pub return_records: bool,
    /// The filesystem seam; tests substitute a fault-injecting one.
    pub vfs: Arc<dyn Vfs>,
    /// Master keys. With keys, new segments are encrypted under the current (highest-id) key and encrypted
    /// segments can be read; without, the journal writes plaintext and refuses encrypted segments.
    pub keys: Option<KeyRing>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            segment_bytes: limits::SEGMENT_BYTES_DEFAULT,
            sync: SyncPolicy::Always,
            max_batch_bytes: limits::BATCH_BYTES_DEFAULT,
            max_batch_wait: Duration::ZERO,
            recovery: RecoveryMode::Strict,
            spare_segments: 1,
            auto_maintenance: true,
            return_records: true,
            checkpoint_every_segments: 4,
            compaction: Some(CompactionPolicy::default()),
            vfs: Arc::new(StdVfs),
            keys: None,
        }
    }
}

impl Options {
    fn validate(&self) -> Result<(), OpenError> {
        let bad = |name, why: String| Err(OpenError::InvalidOption { name, why });
        if !(limits::SEGMENT_BYTES_MIN..=limits::SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return bad(
                "segment_bytes",
                format!(
                    "{} is outside {}..={}",
                    self.segment_bytes,
                    limits::SEGMENT_BYTES_MIN,
                    limits::SEGMENT_BYTES_MAX
                ),
            );
        }
        if !self.segment_bytes.is_multiple_of(limits::PAGE_BYTES) {
            return bad("segment_bytes", format!("{} is not a multiple of {}", self.segment_bytes, limits::PAGE_BYTES));
        }
        if self.max_batch_bytes == 0 || self.max_batch_bytes > limits::BATCH_BYTES_MAX {
            return bad(
                "max_batch_bytes",
                format!("{} is outside 1..={}", self.max_batch_bytes, limits::BATCH_BYTES_MAX),
            );
        }
        if self.max_batch_wait > Duration::from_millis(limits::BATCH_WAIT_MS_MAX) {
            return bad(
                "max_batch_wait",
                format!("{:?} exceeds {} ms", self.max_batch_wait, limits::BATCH_WAIT_MS_MAX),
            );
        }
        if let SyncPolicy::Interval(d) = self.sync {
            if d.is_zero() {
                return bad("sync", "interval must be positive".into());
            }
        }
        if let Some(c) = &self.compaction {
            if !(c.live_ratio_below > 0.0 && c.live_ratio_below <= 1.0) {
                return bad("compaction.live_ratio_below", format!("{} is outside (0, 1]", c.live_ratio_below));
            }
            if c.min_segments == 0 || c.max_segments_per_run == 0 || c.bytes_per_sec == 0 || c.trim_bytes_per_sec == 0 {
                let why = "min_segments, max_segments_per_run, bytes_per_sec and trim_bytes_per_sec must be positive";
                return bad("compaction", why.into());
            }
        }
        if self.spare_segments == 0 || self.spare_segments > 64 {
            return bad("spare_segments", format!("{} is outside 1..=64", self.spare_segments));
        }
        Ok(())
    }
}

/// An open journal. `Send + Sync`: share it by reference or in an `Arc` among threads and tasks.
///
/// Every append returns the record's LSN once it is durable under the [`SyncPolicy`]. Dropping the journal
/// closes it like [`Journal::close`], ignoring errors.
#[derive(Debug)]
pub struct Journal {
    core: Arc<Core>,
    threads: Vec<JoinHandle<()>>,
    auto_maintenance: bool,
    _lock: File,
}

/// What the journal's handle and its maintenance thread share.
#[derive(Debug)]
pub(crate) struct Core {
    pub shared: Arc<Shared>,
    pub spares: Arc<SparePool>,
    pub dir: PathBuf,
    pub payload_bytes_max: u64,
    pub vfs: Arc<dyn Vfs>,
    pub journal_id: [u8; 16],
    pub keys: Option<KeyRing>,
    pub reader: Reader,
    /// One rekey at a time.
    pub rekeying: std::sync::Mutex<()>,
    /// One checkpoint at a time.
    pub checkpointing: std::sync::Mutex<()>,
    /// One compaction at a time.
    pub compacting: std::sync::Mutex<()>,
    /// One reclaim at a time: each writes the horizon it computed, which must never go back.
    pub reclaiming: std::sync::Mutex<()>,
    pub compaction: Option<CompactionPolicy>,
    pub segment_bytes: u64,
    pub maintenance: Arc<Maintenance>,
    pub checkpoint_every_segments: u32,
    /// The checkpoint this open started from: the maintenance thread paces the next one from it.
    pub checkpoint_at_open: Option<crate::recovery::CheckpointUsed>,
}

/// What [`Journal::rekey`] did.
#[derive(Debug, Default)]
pub struct RekeyReport {
    /// Segments whose data key was re-wrapped: (file, old key id, new key id).
    pub rewrapped: Vec<(PathBuf, u32, u32)>,
    /// Sealed segments already under the current key.
    pub already_current: u32,
    /// Plaintext segments (rekey does not encrypt them; they hold no key to retire).
    pub plaintext: u32,
}

/// Why [`Journal::rekey`] failed. Segments rewrapped before the failure stay rewrapped; none is left
/// half-written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RekeyError {
    #[error("rekey needs master keys: the journal was opened without any")]
    NoKeys,
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Open(#[from] OpenError),
}

impl Journal {
    /// Opens the journal in `dir`, creating it if `dir` is empty or absent, and recovers it.
    ///
    /// # Crash safety
    /// What `open` returns is durable: a clean newest segment is fdatasynced before use; a torn tail is
    /// sealed over; transactions left neither committed nor prepared are rolled back with a logged rollback.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<(Journal, Recovered), OpenError> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let vfs = options.vfs.clone();
        create_dir_durably(vfs.as_ref(), &dir)?;
        let lock_path = dir.join("LOCK");
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(OpenError::io(&lock_path, "open"))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(OpenError::Locked { path: dir }),
            Err(std::fs::TryLockError::Error(e)) => return Err(OpenError::io(&lock_path, "lock")(e)),
        }
        create_identity_if_new(vfs.as_ref(), &dir)?;
        let mut dr = recover_dir(vfs.as_ref(), &dir, options.recovery, options.keys.as_ref(), true, &mut |_| {})?;

        // Spares of another size (the option changed) are discarded: a roll-over relies on the size.
        let mut spares = Vec::new();
        let mut first_dropped = None;
        for (seq, path) in std::mem::take(&mut dr.spares) {
            let file = vfs.open(&path, OpenMode::ReadWrite).map_err(OpenError::io(&path, "open"))?;
            let bytes = file.size().map_err(OpenError::io(&path, "stat"))?;
            if bytes == options.segment_bytes && first_dropped.is_none() {
                spares.push(Spare { seq, path, file, bytes });
            } else {
                first_dropped.get_or_insert(seq);
                dr.delete.push(path);
            }
        }
        // The first dropped spare's number is the next one free: the spares kept precede it, the active
        // segments precede them. (Counting from the segments recovery read is wrong when a checkpoint
        // covered them all: the next segment would be numbered 1, over a live one.)
        let next_seq = first_dropped.unwrap_or(dr.next_seq);
        let torn = dr.recovered.report.torn_activation.as_deref();
        let in_use_last = dr
            .present
            .iter()
            .copied()
            .filter(|s| torn != Some(dir.join(crate::segment::file_name(*s)).as_path()))
            .max();
        assert!(in_use_last.is_none_or(|last| next_seq > last), "a new segment is never numbered over one in use");
        // What recovery read may be only in the page cache: the writes of a process that stopped without a
        // power loss, or those after an fdatasync that failed (a roll-over's seal, say). Nothing new may
        // become durable ahead of them, or a later power loss leaves a hole before it that strict recovery
        // refuses: make every segment read durable first, before any delete can be.
        for s in dr.segments.iter().filter(|s| !dr.delete.contains(&s.path)) {
            let file = vfs.open(&s.path, OpenMode::Read).map_err(OpenError::io(&s.path, "open"))?;
            file.sync_data().map_err(OpenError::io(&s.path, "fdatasync"))?;
        }
        // Highest numbers first: a crash in the middle leaves the spares that remain contiguous.
        dr.delete.sort_unstable_by(|a, b| b.cmp(a));
        for path in &dr.delete {
            vfs.remove_file(path).map_err(OpenError::io(path, "delete"))?;
        }
        // Always, not only after a delete: an earlier process may have renamed a spare (or a checkpoint)
        // into place and stopped before fsyncing the directory; records written into that spare would go
        // with its name at a power loss.
        vfs.sync_dir(&dir).map_err(OpenError::io(&dir, "fsync directory"))?;

        let journal_id = dr.identity.journal_id;
        // With keys, nothing new may go into a plaintext segment: seal it where it ends and start an
        // encrypted one.
        if let (Some(_), Resume::InPlace { seq, path, offset, frames, next_lsn, cipher: None }) =
            (&options.keys, &dr.resume)
        {
            dr.resume = Resume::SealThenNew {
                path: path.clone(),
                segment_seq: *seq,
                offset: *offset,
                frames: *frames,
                seal_lsn: *next_lsn,
                cipher: None,
            };
        }
        let (active, next_lsn, last_seq) = match &dr.resume {
            Resume::InPlace { seq, path, offset, frames, next_lsn, cipher } => {
                let file = vfs.open(path, OpenMode::ReadWrite).map_err(OpenError::io(path, "open"))?;
                file.sync_data().map_err(OpenError::io(path, "fdatasync"))?;
                let capacity = file.size().map_err(OpenError::io(path, "stat"))?;
                let active = Active {
                    path: path.clone(),
                    file: Arc::from(file),
                    binding: Binding { journal_id, segment_seq: *seq },
                    offset: *offset,
                    capacity,
                    frames: *frames,
                    since_sync: 0,
                    header: None,
                    cipher: cipher.clone(),
                };
                (Some(active), *next_lsn, *seq)
            }
            Resume::SealThenNew { path, segment_seq, offset, frames, seal_lsn, cipher } => {
                let file = vfs.open(path, OpenMode::ReadWrite).map_err(OpenError::io(path, "open"))?;
                let binding = Binding { journal_id, segment_seq: *segment_seq };
                let frame = seal_bytes(&binding, cipher.as_ref(), *offset, *seal_lsn, *frames, 0);
                file.write_all_at(&[IoSlice::new(&frame)], *offset).map_err(OpenError::io(path, "write seal"))?;
                file.sync_data().map_err(OpenError::io(path, "fdatasync"))?;
                (None, Lsn(seal_lsn.0 + 1), *segment_seq)
            }
            Resume::New { next_lsn } => {
                // The last segment in use, whether read, covered by a checkpoint, or skipped by salvage.
                let last_seq = in_use_last.unwrap_or(next_seq - 1 - spares.len() as u64);
                (None, *next_lsn, last_seq)
            }
        };
        if let Some(first) = spares.first() {
            assert_eq!(first.seq, last_seq + 1, "spares continue the active segments");
        }

        if options.return_records {
            dr.recovered.records = dr.index.records.iter().map(|(id, r)| (id, *r)).collect();
        }
        let model = Model::new(std::mem::take(&mut dr.index), std::mem::take(&mut dr.open_txs));

        let spare_pool = Arc::new(SparePool::new(
            vfs.clone(),
            dir.clone(),
            options.segment_bytes,
            options.spare_segments as usize,
            spares,
            next_seq,
        ));
        let maintenance = Arc::new(Maintenance::default());
        let writer = Writer {
            journal_id,
            active,
            last_seq,
            next_lsn,
            model,
            spares: spare_pool.clone(),
            policy: options.sync,
            unsynced: false,
            stats: WriteStats::default(),
            sync_failed: None,
            keys: options.keys.clone(),
            oldest_seq: dr.oldest_seq.unwrap_or(last_seq + 1),
            maintenance: Some(maintenance.clone()),
            unit_buf: Vec::new(),
        };
        let shared = Arc::new(Shared::new(writer, options.max_batch_bytes, options.max_batch_wait, options.sync));
        let mut threads = Vec::new();
        let s = shared.clone();
        threads.push(
            spawn("keel-journal-writer", move || writer_thread(s))
                .map_err(OpenError::io(&dir, "spawn writer thread"))?,
        );
        let (pool, s) = (spare_pool.clone(), shared.clone());
        threads.push(
            spawn("keel-journal-spares", move || pool.run(&|e| s.poison(e), &|| s.poisoned().is_some()))
                .map_err(OpenError::io(&dir, "spawn spare thread"))?,
        );
        let reader = Reader::new(vfs.clone(), &dir, journal_id, options.keys.clone());
        let core = Arc::new(Core {
            reader,
            shared,
            spares: spare_pool,
            dir,
            payload_bytes_max: payload_bytes_max_for(options.segment_bytes),
            vfs,
            journal_id,
            keys: options.keys.clone(),
            rekeying: std::sync::Mutex::new(()),
            checkpointing: std::sync::Mutex::new(()),
            compacting: std::sync::Mutex::new(()),
            reclaiming: std::sync::Mutex::new(()),
            compaction: options.compaction.clone(),
            segment_bytes: options.segment_bytes,
            maintenance,
            checkpoint_every_segments: options.checkpoint_every_segments,
            checkpoint_at_open: dr.checkpoint_used,
        });
        if options.auto_maintenance {
            let c = core.clone();
            threads.push(
                spawn("keel-journal-maintenance", move || crate::maintenance::run(c))
                    .map_err(OpenError::io(&core.dir, "spawn maintenance thread"))?,
            );
        }
        let journal = Journal { core, threads, auto_maintenance: options.auto_maintenance, _lock: lock_file };
        for tx in &dr.recovered.report.incomplete_txs {
            journal.rollback(*tx).map_err(|e| OpenError::Io {
                path: journal.core.dir.clone(),
                op: "log rollback of an incomplete transaction",
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        Ok((journal, dr.recovered))
    }

    pub fn dir(&self) -> &Path {
        &self.core.dir
    }

    /// The largest payload an append accepts.
    pub fn payload_bytes_max(&self) -> u64 {
        self.core.payload_bytes_max
    }

    fn check_payload(&self, payload: &[u8]) -> Result<(), AppendError> {
        let (len, max) = (payload.len() as u64, self.core.payload_bytes_max);
        if len > max {
            return Err(AppendError::PayloadTooLarge { len, max });
        }
        Ok(())
    }

    /// An async append: queued before this returns.
    fn submit(&self, frame_type: FrameType, id: RecordId, tx: u64, kind: u8, payload: &[u8]) -> Pending {
        if let Err(e) = self.check_payload(payload) {
            return Pending::ready(Err(e));
        }
        self.core.shared.submit(RequestOp::Frame { frame_type, id, tx, kind }, payload.to_vec())
    }

    /// A blocking append: durable under the sync policy when it returns.
    fn append(
        &self,
        frame_type: FrameType,
        id: RecordId,
        tx: u64,
        kind: u8,
        payload: &[u8],
    ) -> Result<Lsn, AppendError> {
        self.check_payload(payload)?;
        self.core.shared.append_blocking(RequestOp::Frame { frame_type, id, tx, kind }, payload)
    }

    /// Adds record `id`, which must not be live.
    pub fn add(&self, id: RecordId, kind: u8, payload: &[u8]) -> Result<Lsn, AppendError> {
        self.append(FrameType::Add, id, 0, kind, payload)
    }
    /// Replaces live record `id`.
    pub fn update(&self, id: RecordId, kind: u8, payload: &[u8]) -> Result<Lsn, AppendError> {
        self.append(FrameType::Update, id, 0, kind, payload)
    }
    /// Deletes live record `id`.
    pub fn delete(&self, id: RecordId) -> Result<Lsn, AppendError> {
        self.append(FrameType::Delete, id, 0, 0, &[])
    }
    /// Stages an add in transaction `tx` (opening it if needed).
    pub fn add_tx(&self, tx: TxId, id: RecordId, kind: u8, payload: &[u8]) -> Result<Lsn, AppendError> {
        self.append(FrameType::AddTx, id, tx.get(), kind, payload)
    }
    pub fn update_tx(&self, tx: TxId, id: RecordId, kind: u8, payload: &[u8]) -> Result<Lsn, AppendError> {
        self.append(FrameType::UpdateTx, id, tx.get(), kind, payload)
    }
    pub fn delete_tx(&self, tx: TxId, id: RecordId) -> Result<Lsn, AppendError> {
        self.append(FrameType::DeleteTx, id, tx.get(), 0, &[])
    }
    /// First phase of two-phase commit: after this returns, the transaction survives a crash as prepared,
    /// with `data`, until `commit` or `rollback`.
    pub fn prepare(&self, tx: TxId, data: &[u8]) -> Result<Lsn, AppendError> {
        self.append(FrameType::Prepare, 0, tx.get(), 0, data)
    }
    pub fn commit(&self, tx: TxId) -> Result<Lsn, AppendError> {
        self.append(FrameType::Commit, 0, tx.get(), 0, &[])
    }
    pub fn rollback(&self, tx: TxId) -> Result<Lsn, AppendError> {
        self.append(FrameType::Rollback, 0, tx.get(), 0, &[])
    }
    /// Makes everything written so far durable, whatever the policy; returns the last LSN written.
    pub fn sync(&self) -> Result<Lsn, AppendError> {
        self.core.shared.append_blocking(RequestOp::Sync, &[])
    }

    /// The async form of [`Journal::add`]. The request is queued before this returns (see [`Pending`]).
    pub fn add_async(&self, id: RecordId, kind: u8, payload: &[u8]) -> Pending {
        self.submit(FrameType::Add, id, 0, kind, payload)
    }
    pub fn update_async(&self, id: RecordId, kind: u8, payload: &[u8]) -> Pending {
        self.submit(FrameType::Update, id, 0, kind, payload)
    }
    pub fn delete_async(&self, id: RecordId) -> Pending {
        self.submit(FrameType::Delete, id, 0, 0, &[])
    }
    pub fn add_tx_async(&self, tx: TxId, id: RecordId, kind: u8, payload: &[u8]) -> Pending {
        self.submit(FrameType::AddTx, id, tx.get(), kind, payload)
    }
    pub fn update_tx_async(&self, tx: TxId, id: RecordId, kind: u8, payload: &[u8]) -> Pending {
        self.submit(FrameType::UpdateTx, id, tx.get(), kind, payload)
    }
    pub fn delete_tx_async(&self, tx: TxId, id: RecordId) -> Pending {
        self.submit(FrameType::DeleteTx, id, tx.get(), 0, &[])
    }
    pub fn prepare_async(&self, tx: TxId, data: &[u8]) -> Pending {
        self.submit(FrameType::Prepare, 0, tx.get(), 0, data)
    }
    pub fn commit_async(&self, tx: TxId) -> Pending {
        self.submit(FrameType::Commit, 0, tx.get(), 0, &[])
    }
    pub fn rollback_async(&self, tx: TxId) -> Pending {
        self.submit(FrameType::Rollback, 0, tx.get(), 0, &[])
    }
    pub fn sync_async(&self) -> Pending {
        self.core.shared.submit(RequestOp::Sync, Vec::new())
    }

    /// Re-wraps the data key of every segment encrypted under an older master key under the current
    /// (highest-id) key, so that the old key can be retired. The active segment is sealed first, so that
    /// afterwards no segment needs an old key. Data is not re-encrypted: only each segment's header
    /// changes.
    ///
    /// # Crash safety
    /// Each segment is rewritten as a copy (`.tmp`), fsynced, renamed over the original, and the directory
    /// fsynced: a crash leaves either the old or the new file, and recovery deletes a leftover `.tmp`.
    /// Appends continue meanwhile: only sealed segments, which never change, are rewritten.
    pub fn rekey(&self) -> Result<RekeyReport, RekeyError> {
        use crate::format::segment_header::{self, SegmentHeader};
        use crate::segment::{file_name, tmp_name};
        let keys = self.core.keys.as_ref().ok_or(RekeyError::NoKeys)?;
        let _one_at_a_time = lock(&self.core.rekeying);
        self.core.shared.append_blocking(RequestOp::Roll, &[])?;
        let sealed_below = {
            let w = lock(self.core.shared.writer_mutex());
            if w.active.is_some() {
                w.last_seq
            } else {
                w.last_seq + 1
            }
        };
        // No reclaim meanwhile: it shrinks and deletes the segments this lists and rewrites (and a rewrite
        // renamed over a reclaimed one would bring its file back). After the roll: the lock order is
        // compacting → reclaiming → writer, and the roll needs the writer.
        let _no_reclaim = lock(&self.core.reclaiming);
        let (current_id, current) = keys.current();
        let listing = crate::segment::list(self.core.vfs.as_ref(), &self.core.dir)
            .map_err(OpenError::io(&self.core.dir, "list directory"))?;
        let mut report = RekeyReport::default();
        for seq in listing.segments.into_iter().filter(|s| *s < sealed_below) {
            let path = self.core.dir.join(file_name(seq));
            let file = self.core.vfs.open(&path, OpenMode::Read).map_err(OpenError::io(&path, "open"))?;
            let mut data = vec![0u8; file.size().map_err(OpenError::io(&path, "stat"))? as usize];
            file.read_exact_at(&mut data, 0).map_err(OpenError::io(&path, "read"))?;
            let mut header = match SegmentHeader::decode(&data) {
                Ok(h) => h,
                Err(segment_header::HeaderError::Zero) => continue,
                Err(e) => {
                    let what = crate::error::CorruptionKind::Header(e);
                    return Err(OpenError::Corrupt(crate::error::Corruption { path, offset: 0, what }).into());
                }
            };
            if header.key_id == 0 {
                report.plaintext += 1;
                continue;
            }
            if header.key_id == current_id {
                report.already_current += 1;
                continue;
            }
            let unavailable = |why| OpenError::KeyUnavailable { path: path.clone(), key_id: header.key_id, why };
            let old = keys.get(header.key_id).ok_or_else(|| unavailable("which is not in the key ring"))?;
            let binding = Binding { journal_id: self.core.journal_id, segment_seq: seq };
            let wrapped = crate::crypto::SegmentCipher::rewrap(
                old,
                header.key_id,
                current,
                current_id,
                &binding,
                &header.wrapped_key,
            )
            .ok_or_else(|| unavailable("and the key listed under that id does not unwrap its data key (wrong key)"))?;
            let old_id = header.key_id;
            header.key_id = current_id;
            header.wrapped_key = wrapped;
            data[..segment_header::BYTES].copy_from_slice(&header.encode());
            let tmp = self.core.dir.join(tmp_name(seq));
            let _ = self.core.vfs.remove_file(&tmp);
            let out = self.core.vfs.open(&tmp, OpenMode::CreateNew).map_err(OpenError::io(&tmp, "create"))?;
            out.write_all_at(&[IoSlice::new(&data)], 0).map_err(OpenError::io(&tmp, "write"))?;
            out.sync_all().map_err(OpenError::io(&tmp, "fsync"))?;
            self.core.vfs.rename(&tmp, &path).map_err(OpenError::io(&tmp, "rename"))?;
            self.core.vfs.sync_dir(&self.core.dir).map_err(OpenError::io(&self.core.dir, "fsync directory"))?;
            report.rewrapped.push((path, old_id, current_id));
        }
        Ok(report)
    }

    /// Deletes the oldest segments that no longer hold anything live (see docs/FORMAT.md, "Reclaim"). The
    /// maintenance thread does this after every roll-over; call it to reclaim at a moment of your choice.
    pub fn reclaim(&self) -> Result<ReclaimReport, AppendError> {
        crate::maintenance::reclaim::reclaim(&self.core, None)
    }

    /// Writes a checkpoint of the live-record index, so that the next `open` reads it plus only what was
    /// written after it. The maintenance thread does this periodically and at close.
    pub fn checkpoint(&self) -> Result<Option<CheckpointReport>, AppendError> {
        crate::maintenance::checkpoint::checkpoint(&self.core)
    }

    /// Copies the live records of the oldest segments forward and reclaims those segments, if `policy`
    /// says they are sparse enough. Appends continue meanwhile. The maintenance thread runs this with
    /// `Options::compaction`; `keel journal compact` with [`CompactionPolicy::offline`].
    pub fn compact(&self, policy: &CompactionPolicy) -> Result<CompactReport, AppendError> {
        crate::maintenance::compact::compact(&self.core, policy)
    }

    /// Per segment holding live records: their count and frame bytes; and the newest segment a reclaim
    /// would delete now, if any.
    pub fn live_by_segment(&self) -> (std::collections::BTreeMap<u64, SegmentLive>, Option<u64>) {
        let w = lock(self.core.shared.writer_mutex());
        let bound = w.reclaim_bound();
        (w.model.index.segments.clone(), bound)
    }

    /// Calls `f` for every live record, in no particular order, with appends held off meanwhile: a broker
    /// loads its queues with this at start-up without a second copy of the index.
    pub fn for_each_record(&self, mut f: impl FnMut(RecordId, &RecordRef)) {
        let w = lock(self.core.shared.writer_mutex());
        for (id, r) in w.model.index.records.iter() {
            f(id, r);
        }
    }

    /// Bytes of memory the live-record index occupies.
    pub fn index_bytes(&self) -> u64 {
        lock(self.core.shared.writer_mutex()).model.index.table_bytes()
    }

    /// What the group-commit writer has done since open: how many writes and fdatasyncs the appends took
    /// (frames ÷ fdatasyncs is the average batch), how many fdatasyncs overlapped the next write, and how
    /// often, and for how long, a roll-over waited for a spare segment.
    pub fn write_stats(&self) -> WriteStats {
        lock(self.core.shared.writer_mutex()).stats
    }

    /// What checkpoints have written, and how long appends waited for them, since open.
    pub fn maintenance_stats(&self) -> crate::MaintenanceStats {
        self.core.maintenance.stats()
    }

    /// The number of live records.
    pub fn live_records(&self) -> u64 {
        lock(self.core.shared.writer_mutex()).model.index.records.len() as u64
    }

    /// Where the live version of record `id` lies, if it is live.
    pub fn get(&self, id: RecordId) -> Option<RecordRef> {
        lock(self.shared_writer()).model.index.records.get(&id).copied()
    }

    /// The payload of live record `id`, read from its segment (checked by CRC or authentication tag).
    pub fn read(&self, id: RecordId) -> Result<Vec<u8>, ReadError> {
        // Compaction may move the record and reclaim its old segment between the lookup and the read; the
        // second lookup then finds the new place.
        let mut last = None;
        for _ in 0..3 {
            let r = self.get(id).ok_or(ReadError::NoSuchRecord(id))?;
            match self.core.reader.read(&r) {
                Ok(p) => return Ok(p),
                Err(e) if self.get(id).is_some_and(|now| now != r) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("the loop ran"))
    }

    /// The payload of a record version (a recovered record or a prepared transaction's staged record).
    pub fn read_version(&self, r: &RecordRef) -> Result<Vec<u8>, ReadError> {
        self.core.reader.read(r)
    }

    /// The error that stopped the journal, if an fdatasync failed.
    pub fn poisoned(&self) -> Option<AppendError> {
        self.core.shared.poisoned()
    }

    /// Blocks until the spare pool is full or `timeout` passes; true if full. For benchmarks and callers
    /// about to write a burst that should not compete with pre-allocation.
    pub fn wait_for_spares(&self, timeout: Duration) -> bool {
        self.core.spares.wait_full(timeout)
    }

    /// Makes everything durable and stops the journal's threads.
    pub fn close(mut self) -> Result<(), AppendError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), AppendError> {
        if self.threads.is_empty() {
            return Ok(());
        }
        let maintained = self.auto_maintenance;
        self.core.maintenance.stop();
        let synced = self.sync().map(|_| ());
        if maintained && synced.is_ok() {
            if let Err(e) = self.checkpoint() {
                tracing::warn!(error = %e, "checkpoint at close failed; the next open scans instead");
            }
        }
        self.core.shared.shutdown_writer_thread();
        self.core.spares.shutdown();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let flushed = lock(self.shared_writer()).flush();
        synced.and(flushed)
    }

    fn shared_writer(&self) -> &std::sync::Mutex<Writer> {
        self.core.shared.writer_mutex()
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name.to_owned()).spawn(f)
}

/// Creates `dir` and any missing ancestors, fsyncing each new directory's parent so that the new entries
/// survive a power loss (the journal's files are only as durable as the directory that names them).
fn create_dir_durably(vfs: &dyn Vfs, dir: &Path) -> Result<(), OpenError> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        at = d.parent();
    }
    vfs.create_dir_all(dir).map_err(OpenError::io(dir, "create directory"))?;
    for d in missing.iter().rev() {
        if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            vfs.sync_dir(parent).map_err(OpenError::io(parent, "fsync directory"))?;
        }
    }
    Ok(())
}

/// Creates the identity file in a directory that holds no journal yet.
fn create_identity_if_new(vfs: &dyn Vfs, dir: &Path) -> Result<(), OpenError> {
    if crate::recovery::read_identity(vfs, dir)?.is_some() {
        return Ok(());
    }
    if !crate::segment::list(vfs, dir).map_err(OpenError::io(dir, "list directory"))?.segments.is_empty() {
        return Err(OpenError::MissingIdentity { dir: dir.to_path_buf() });
    }
    let mut journal_id = [0u8; 16];
    getrandom::fill(&mut journal_id).map_err(|e| OpenError::Io {
        path: dir.to_path_buf(),
        op: "generate journal id",
        source: std::io::Error::other(e.to_string()),
    })?;
    let bytes = Identity { journal_id, created_unix_ms: unix_ms_now() }.encode();
    let tmp = dir.join(format!("{}.tmp", identity::FILE_NAME));
    let path = dir.join(identity::FILE_NAME);
    let _ = vfs.remove_file(&tmp);
    let file = vfs.open(&tmp, OpenMode::CreateNew).map_err(OpenError::io(&tmp, "create"))?;
    file.write_all_at(&[IoSlice::new(&bytes)], 0).map_err(OpenError::io(&tmp, "write"))?;
    file.sync_all().map_err(OpenError::io(&tmp, "fsync"))?;
    vfs.rename(&tmp, &path).map_err(OpenError::io(&tmp, "rename"))?;
    vfs.sync_dir(dir).map_err(OpenError::io(dir, "fsync directory"))?;
    Ok(())
}
