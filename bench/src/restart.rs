//! Restart: how long `Journal::open` takes, and how much memory it peaks at, on a large journal with few
//! live records — with a fresh checkpoint, a stale one (half the journal old), and none (a full scan).
//!
//! The journal is built once: records are added, and all but `live_percent` % of them are deleted again a
//! little later, so the live records are spread evenly over the whole journal (a backlog, not a tail). A
//! checkpoint is written half-way through and another at the end. Each `open` runs in a child process
//! (`keel bench open-once`) so that its peak RSS (`VmHWM`) is its own.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use keel_journal::{Journal, Options, Pending, RecordRef, SyncPolicy};
use serde::{Deserialize, Serialize};

/// What the journal was built from.
#[derive(Clone, Debug, Serialize)]
pub struct Built {
    pub bytes_appended: u64,
    pub records_added: u64,
    pub live_records: u64,
    pub segments: u64,
    pub build_secs: f64,
}

/// Appends `bytes` of records of `record_bytes` into a new journal at `dir`, keeping `live_percent` % of
/// them live, with a checkpoint half-way and one at the end.
pub fn build(dir: &Path, bytes: u64, record_bytes: usize, live_percent: u64, segment_bytes: u64) -> io::Result<Built> {
    let started = Instant::now();
    let opts = Options {
        sync: SyncPolicy::Never,
        auto_maintenance: false,
        segment_bytes,
        spare_segments: 4,
        return_records: false,
        ..Options::default()
    };
    let (j, _) = Journal::open(dir, opts).map_err(io::Error::other)?;
    let record = vec![0x5Au8; record_bytes];
    const LAG: u64 = 1000;
    let keep = |id: u64| id.is_multiple_of(100 / live_percent.clamp(1, 100));
    let (mut appended, mut id, mut halfway_done) = (0u64, 0u64, false);
    let mut window: Vec<Pending> = Vec::with_capacity(8192);
    let settle = |w: &mut Vec<Pending>| -> io::Result<()> {
        for p in w.drain(..) {
            p.wait().map_err(io::Error::other)?;
        }
        Ok(())
    };
    while appended < bytes {
        window.push(j.add_async(id, 1, &record));
        appended += 40 + record_bytes as u64;
        if id >= LAG && !keep(id - LAG) {
            window.push(j.delete_async(id - LAG));
            appended += 40;
        }
        id += 1;
        if window.len() >= 8192 {
            settle(&mut window)?;
        }
        if !halfway_done && appended >= bytes / 2 {
            settle(&mut window)?;
            j.checkpoint().map_err(io::Error::other)?;
            halfway_done = true;
        }
    }
    // The last LAG records are deleted too (all but the kept ones), so the whole journal is 5 % live.
    for old in id.saturating_sub(LAG)..id {
        if !keep(old) {
            window.push(j.delete_async(old));
        }
    }
    settle(&mut window)?;
    j.checkpoint().map_err(io::Error::other)?;
    let live = j.live_records();
    j.close().map_err(io::Error::other)?;
    let segments = std::fs::read_dir(dir)?
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "kseg")))
        .count() as u64;
    Ok(Built {
        bytes_appended: appended,
        records_added: id,
        live_records: live,
        segments,
        build_secs: started.elapsed().as_secs_f64(),
    })
}

/// One timed `open`, as measured inside the child process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpenSample {
    pub open_secs: f64,
    pub from_checkpoint: bool,
    pub segments_read: u32,
    pub bytes_read: u64,
    pub live_records: u64,
    /// Bytes of the live index's entries: records × (id + `RecordRef`), without hash-table overhead.
    pub index_entry_bytes: u64,
    /// Bytes the journal's index table occupies (entries, empty buckets, control bytes).
    pub index_table_bytes: u64,
    pub rss_before_open_kib: u64,
    pub rss_after_open_kib: u64,
    pub peak_rss_kib: u64,
    pub return_records: bool,
}

/// Opens the journal at `dir` once and measures it (run this in a fresh process).
pub fn open_once(dir: &Path, segment_bytes: u64, return_records: bool) -> io::Result<OpenSample> {
    let rss_before = proc_status_kib("VmRSS")?;
    let opts = Options { auto_maintenance: false, segment_bytes, return_records, ..Options::default() };
    let t = Instant::now();
    let (j, rec) = Journal::open(dir, opts).map_err(io::Error::other)?;
    let open_secs = t.elapsed().as_secs_f64();
    let live = j.live_records();
    let sample = OpenSample {
        open_secs,
        from_checkpoint: rec.report.checkpoint.is_some(),
        segments_read: rec.report.segments_read,
        bytes_read: rec.report.bytes_read,
        live_records: live,
        index_entry_bytes: live * (8 + std::mem::size_of::<RecordRef>() as u64),
        index_table_bytes: j.index_bytes(),
        rss_before_open_kib: rss_before,
        rss_after_open_kib: proc_status_kib("VmRSS")?,
        peak_rss_kib: proc_status_kib("VmHWM")?,
        return_records,
    };
    drop(rec);
    j.close().map_err(io::Error::other)?;
    Ok(sample)
}

pub fn proc_status_kib(field: &str) -> io::Result<u64> {
    let s = std::fs::read_to_string("/proc/self/status")?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no {field} in /proc/self/status")))
}

/// Which checkpoints `open` may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointMode {
    /// Both: the newest covers all but nothing.
    Fresh,
    /// Only the half-way one.
    Stale,
    /// None: a full scan.
    None,
}

/// Hides checkpoints from `open` (by renaming) as `mode` says, until dropped.
pub struct Hidden(Vec<(PathBuf, PathBuf)>);

impl Hidden {
    pub fn new(dir: &Path, mode: CheckpointMode) -> io::Result<Hidden> {
        let mut cps: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "kcp"))
            .collect();
        cps.sort();
        let hide: Vec<PathBuf> = match mode {
            CheckpointMode::Fresh => Vec::new(),
            CheckpointMode::Stale => cps.last().cloned().into_iter().collect(),
            CheckpointMode::None => cps,
        };
        let mut moved = Vec::new();
        for p in hide {
            let to = p.with_extension("kcp-hidden");
            std::fs::rename(&p, &to)?;
            moved.push((to, p));
        }
        Ok(Hidden(moved))
    }
}

impl Drop for Hidden {
    fn drop(&mut self) {
        for (from, to) in &self.0 {
            let _ = std::fs::rename(from, to);
        }
    }
}
