//! Append latency while a compaction runs: W writers append durably (`sync = always`) to a journal whose
//! old segments are sparse; latencies are taken first with no compaction, then while a background
//! compaction, paced to `bytes_per_sec`, copies the old segments' live records forward. Interleaved over
//! rounds, each on a fresh journal, so that the two phases see the same disk.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_journal::{CompactReport, CompactionPolicy, Journal, Options, SyncPolicy};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Latencies {
    pub appends: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub appends_per_sec: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompactionRound {
    pub without: Latencies,
    /// All appends while the compaction ran, then split: while it copied, and while it reclaimed.
    pub during: Latencies,
    pub copying: Latencies,
    pub reclaiming: Latencies,
    pub p99_during_vs_without: f64,
    pub compaction_secs: f64,
    pub records_moved: u64,
    pub bytes_moved: u64,
    pub segments_reclaimed: usize,
}

fn latencies(mut us: Vec<f64>, secs: f64) -> Latencies {
    us.sort_by(f64::total_cmp);
    let n = us.len();
    let pct = |p: f64| if n == 0 { 0.0 } else { us[((n as f64 * p) as usize).min(n - 1)] };
    Latencies {
        appends: n,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        max_us: us.last().copied().unwrap_or(0.0),
        appends_per_sec: n as f64 / secs,
    }
}

/// W writers appending `size`-byte records until `stop`; (start since `t0` in s, latency in µs) per append.
fn load(
    journal: &Arc<Journal>,
    writers: u32,
    size: usize,
    first_id: u64,
    stop: &Arc<AtomicBool>,
    t0: Instant,
) -> Vec<(f64, f64)> {
    let threads: Vec<_> = (0..u64::from(writers))
        .map(|w| {
            let (j, stop) = (journal.clone(), stop.clone());
            std::thread::spawn(move || {
                let body = vec![0x33u8; size];
                let mut out = Vec::new();
                let mut id = first_id + w * 100_000_000;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if j.add(id, 1, &body).is_err() {
                        break;
                    }
                    out.push(((t - t0).as_secs_f64(), t.elapsed().as_secs_f64() * 1e6));
                    id += 1;
                }
                out
            })
        })
        .collect();
    threads.into_iter().flat_map(|t| t.join().unwrap_or_default()).collect()
}

/// One round on a fresh journal in `dir`.
pub fn round(
    dir: &Path,
    sparse_bytes: u64,
    writers: u32,
    size: usize,
    measure: Duration,
    bytes_per_sec: u64,
    trim_bytes_per_sec: u64,
) -> io::Result<CompactionRound> {
    let segment_bytes = 16 << 20;
    let opts = Options {
        sync: SyncPolicy::Always,
        auto_maintenance: false,
        segment_bytes,
        spare_segments: 8,
        return_records: false,
        ..Options::default()
    };
    let (j, _) = Journal::open(dir, opts).map_err(io::Error::other)?;
    // Sparse old segments: 1 KiB records, nine in ten deleted again.
    let record = vec![0x77u8; 1024];
    let mut pending = Vec::new();
    let mut id = 0u64;
    while id * 1064 < sparse_bytes {
        pending.push(j.add_async(id, 1, &record));
        if !id.is_multiple_of(10) {
            pending.push(j.delete_async(id));
        }
        id += 1;
        if pending.len() > 4096 {
            for p in pending.drain(..) {
                p.wait().map_err(io::Error::other)?;
            }
        }
    }
    for p in pending.drain(..) {
        p.wait().map_err(io::Error::other)?;
    }
    j.sync().map_err(io::Error::other)?;
    j.wait_for_spares(Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    let j = Arc::new(j);

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let handle = {
        let (j, stop) = (j.clone(), stop.clone());
        std::thread::spawn(move || load(&j, writers, size, 1 << 40, &stop, started))
    };
    std::thread::sleep(measure);
    stop.store(true, Ordering::Relaxed);
    let samples: Vec<f64> = handle.join().unwrap_or_default().into_iter().map(|s| s.1).collect();
    let without = latencies(samples, started.elapsed().as_secs_f64());

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let handle = {
        let (j, stop) = (j.clone(), stop.clone());
        std::thread::spawn(move || load(&j, writers, size, 1 << 41, &stop, started))
    };
    let policy = CompactionPolicy { bytes_per_sec, trim_bytes_per_sec, min_segments: 1, ..CompactionPolicy::default() };
    let report: CompactReport = j.compact(&policy).map_err(io::Error::other)?;
    let compaction_secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let samples = handle.join().unwrap_or_default();
    let copy_end = report.copy_time.as_secs_f64();
    let during = latencies(samples.iter().map(|s| s.1).collect(), started.elapsed().as_secs_f64());
    let copying = latencies(samples.iter().filter(|s| s.0 < copy_end).map(|s| s.1).collect(), copy_end);
    let reclaiming = latencies(
        samples.iter().filter(|s| s.0 >= copy_end).map(|s| s.1).collect(),
        report.reclaim_time.as_secs_f64().max(1e-9),
    );
    Ok(CompactionRound {
        p99_during_vs_without: during.p99_us / without.p99_us,
        without,
        during,
        copying,
        reclaiming,
        compaction_secs,
        records_moved: report.records_moved,
        bytes_moved: report.bytes_moved,
        segments_reclaimed: report.reclaimed.segments.len(),
    })
}
