//! The pool of pre-allocated spare segments, kept full by a background thread so that a roll-over takes a
//! ready file instead of allocating one while writers wait.
//!
//! A spare is zero-filled under a temporary name, fsynced, renamed to its final name and the directory
//! fsynced: a crash leaves either a `.tmp` file (deleted by recovery) or a complete spare.
//! When the disk is full, taking a spare fails with [`AppendError::NoSpace`] at once, and the thread keeps
//! trying, so that writing resumes once space is freed. A failed fsync poisons the journal.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::error::AppendError;
use crate::limits::ZERO_FILL_CHUNK_BYTES;
use crate::sync_util::lock;
use crate::vfs::{OpenMode, Vfs, VfsFile};

/// How long the preparer waits before trying again after a failure.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub struct Spare {
    pub seq: u64,
    pub path: PathBuf,
    pub file: Box<dyn VfsFile>,
    pub bytes: u64,
}

#[derive(Debug)]
struct PoolState {
    ready: VecDeque<Spare>,
    next_seq: u64,
    error: Option<AppendError>,
    /// A failed fsync: no more spares, ever (the journal is poisoned).
    fatal: bool,
    shutdown: bool,
    /// `wait_full` asks for the pool to be topped up now.
    fill_requested: bool,
}

#[derive(Debug)]
pub struct SparePool {
    state: Mutex<PoolState>,
    cv: Condvar,
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    segment_bytes: u64,
    target: usize,
}

enum PrepareError {
    Transient(AppendError),
    Fatal(AppendError),
    /// The journal was poisoned or is closing while this spare was prepared: it is abandoned before its
    /// next write or fsync, so that no fsync is issued on this disk after one has failed.
    Stopped,
}

impl SparePool {
    pub fn new(
        vfs: Arc<dyn Vfs>,
        dir: PathBuf,
        segment_bytes: u64,
        target: usize,
        existing: Vec<Spare>,
        next_seq: u64,
    ) -> SparePool {
        assert!(target >= 1);
        SparePool {
            state: Mutex::new(PoolState {
                ready: existing.into(),
                next_seq,
                error: None,
                fatal: false,
                shutdown: false,
                fill_requested: false,
            }),
            cv: Condvar::new(),
            vfs,
            dir,
            segment_bytes,
            target,
        }
    }

    /// The next spare, waiting only while one is being prepared without error; and how long it waited
    /// (zero when one was ready).
    pub fn take(&self) -> Result<(Spare, Duration), AppendError> {
        let mut s = lock(&self.state);
        let mut waiting_since = None;
        loop {
            if let Some(spare) = s.ready.pop_front() {
                self.cv.notify_all();
                return Ok((spare, waiting_since.map_or(Duration::ZERO, |t: Instant| t.elapsed())));
            }
            waiting_since.get_or_insert_with(Instant::now);
            if let Some(e) = &s.error {
                return Err(e.clone());
            }
            if s.shutdown {
                return Err(AppendError::Closed);
            }
            if s.fatal {
                // The journal was poisoned elsewhere (the maintenance thread's fsync): no spare will come.
                return Err(AppendError::Poisoned {
                    path: self.dir.clone(),
                    op: "take a spare segment",
                    source: Arc::new(io::Error::other("the journal was stopped by an earlier failure")),
                });
            }
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Blocks until the pool holds its target number of spares, or `timeout` passes. True if it does.
    pub fn wait_full(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = lock(&self.state);
        s.fill_requested = true;
        self.cv.notify_all();
        while s.ready.len() < self.target && !s.fatal && !s.shutdown {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self.cv.wait_timeout(s, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        s.ready.len() >= self.target
    }

    pub fn shutdown(&self) {
        lock(&self.state).shutdown = true;
        self.cv.notify_all();
    }

    /// The preparer thread's body. `poison` is called once if an fsync fails; `poisoned` says whether the
    /// journal has been poisoned (by this thread or the writer), after which nothing more is prepared.
    ///
    /// Refills in bursts: it starts once the pool is down to half its target (a pool of one refills at
    /// once) and goes on up to the target, so that a burst of roll-overs is not slowed by zero-filling that
    /// competes for the disk.
    pub fn run(&self, poison: &dyn Fn(AppendError), poisoned: &dyn Fn() -> bool) {
        let mut refilling = false;
        loop {
            let seq = {
                let mut s = lock(&self.state);
                loop {
                    if s.shutdown {
                        return;
                    }
                    if !s.fatal && poisoned() {
                        s.fatal = true;
                        // A roll-over waiting in `take` must learn that no spare will come.
                        self.cv.notify_all();
                    }
                    if s.ready.len() >= self.target {
                        refilling = false;
                    } else if s.ready.len() <= self.target / 2 || s.fill_requested {
                        refilling = true;
                    }
                    s.fill_requested = false;
                    if refilling && !s.fatal {
                        break;
                    }
                    s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
                }
                s.next_seq
            };
            let stopping = || poisoned() || lock(&self.state).shutdown;
            match self.prepare(seq, &stopping) {
                Ok(spare) => {
                    let mut s = lock(&self.state);
                    s.ready.push_back(spare);
                    s.next_seq += 1;
                    s.error = None;
                    self.cv.notify_all();
                }
                Err(PrepareError::Transient(e)) => {
                    tracing::warn!(error = %e, "could not prepare a spare segment; retrying");
                    let mut s = lock(&self.state);
                    s.error = Some(e);
                    self.cv.notify_all();
                    let _ = self.cv.wait_timeout(s, RETRY_BACKOFF);
                }
                Err(PrepareError::Fatal(e)) => {
                    poison(e.clone());
                    let mut s = lock(&self.state);
                    s.error = Some(e);
                    s.fatal = true;
                    self.cv.notify_all();
                }
                Err(PrepareError::Stopped) => {
                    // Shutdown is seen at the top of the loop; a poisoned journal makes the pool fatal there.
                    self.cv.notify_all();
                }
            }
        }
    }

    fn prepare(&self, seq: u64, stopping: &dyn Fn() -> bool) -> Result<Spare, PrepareError> {
        let tmp = self.dir.join(super::tmp_name(seq));
        let path = self.dir.join(super::file_name(seq));
        let transient = |e: io::Error, p: &PathBuf, op: &'static str| {
            let source = Arc::new(e);
            if source.raw_os_error() == Some(libc::ENOSPC) {
                PrepareError::Transient(AppendError::NoSpace { path: p.clone(), source })
            } else {
                PrepareError::Transient(AppendError::Io { path: p.clone(), op, source })
            }
        };
        let fatal = |e: io::Error, p: &PathBuf, op: &'static str| {
            PrepareError::Fatal(AppendError::Poisoned { path: p.clone(), op, source: Arc::new(e) })
        };
        let _ = self.vfs.remove_file(&tmp);
        let file = self.vfs.open(&tmp, OpenMode::CreateNew).map_err(|e| transient(e, &tmp, "create"))?;
        let zeros = vec![0u8; ZERO_FILL_CHUNK_BYTES];
        let mut written = 0u64;
        // An abandoned `.tmp` is deleted here on the next attempt or by recovery on the next open; it is
        // not removed now because a poisoned journal touches the disk no more.
        while written < self.segment_bytes {
            if stopping() {
                return Err(PrepareError::Stopped);
            }
            let n = (self.segment_bytes - written).min(zeros.len() as u64) as usize;
            if let Err(e) = file.write_all_at(&[IoSlice::new(&zeros[..n])], written) {
                drop(file);
                let _ = self.vfs.remove_file(&tmp);
                return Err(transient(e, &tmp, "zero-fill"));
            }
            written += n as u64;
        }
        if stopping() {
            return Err(PrepareError::Stopped);
        }
        file.sync_all().map_err(|e| fatal(e, &tmp, "fsync"))?;
        self.vfs.rename(&tmp, &path).map_err(|e| transient(e, &tmp, "rename"))?;
        if stopping() {
            // A renamed but not yet directory-fsynced spare: recovery keeps it if the rename survived (its
            // contents are fsynced zeros) and otherwise deletes the `.tmp`. Either is a valid spare state.
            return Err(PrepareError::Stopped);
        }
        self.vfs.sync_dir(&self.dir).map_err(|e| fatal(e, &self.dir, "fsync directory"))?;
        Ok(Spare { seq, path, file, bytes: self.segment_bytes })
    }
}
