//! Keel's benchmarks: closed loops of W writer threads appending records durably, against two baselines
//! measured in the same run over a pre-allocated, zero-filled file, and against a peer engine.
//!
//! - `raw_fdatasync_loop`: one thread, `pwrite` + `fdatasync` per record. The physical bound for one writer.
//! - `raw_group_commit`: W threads, classic leader/follower: followers append their bytes to a shared
//!   buffer; whoever finds no flush running writes the buffer with one `pwrite` and one `fdatasync`.
//!   The bound for a closed loop of W writers is W appends per fdatasync; this is that bound, done simply.
//! - `journal_run`: `keel_journal::Journal::add` under `SyncPolicy::Always`.
//! - `okaywal_run`: okaywal 0.3, one entry of one chunk per record, committed (it fsyncs with group commit).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant};

pub mod backup;
pub mod compaction;
pub mod paging;
pub mod paging_open;
pub mod restart;
pub mod s3;

use keel_journal::{Journal, Options, SyncPolicy};
use serde::Serialize;

/// One measured configuration.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub writers: u32,
    pub size: usize,
    pub duration: Duration,
    /// For the journal only.
    pub max_batch_wait: Duration,
}

/// What one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub appends: u64,
    pub secs: f64,
    pub appends_per_sec: f64,
    pub mb_per_sec: f64,
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
    /// CPU time the whole process used during the measurement (user + system, every thread), ÷ its wall
    /// time: how many of the machine's cores the system kept busy.
    pub cpu_cores: f64,
    /// The same for the whole machine (`/proc/stat`: everything but idle and iowait, kernel threads and
    /// interrupts included), out of `available_parallelism` cores. `None` where `/proc/stat` is unreadable.
    pub machine_busy_cores: Option<f64>,
}

impl Measurement {
    /// Combines the rounds of one system into one measurement.
    fn merge(parts: &[Measurement], size: usize) -> Measurement {
        let appends: u64 = parts.iter().map(|m| m.appends).sum();
        let secs: f64 = parts.iter().map(|m| m.secs).sum();
        let weighted = |f: fn(&Measurement) -> f64| {
            parts.iter().map(|m| f(m) * m.appends as f64).sum::<f64>() / appends.max(1) as f64
        };
        Measurement {
            appends,
            secs,
            appends_per_sec: appends as f64 / secs,
            mb_per_sec: appends as f64 * size as f64 / secs / 1e6,
            // Percentiles are not additive; the append-weighted mean of the rounds' percentiles is reported.
            latency_p50_us: weighted(|m| m.latency_p50_us),
            latency_p99_us: weighted(|m| m.latency_p99_us),
            cpu_cores: parts.iter().map(|m| m.cpu_cores * m.secs).sum::<f64>() / secs,
            machine_busy_cores: parts
                .iter()
                .map(|m| m.machine_busy_cores.map(|c| c * m.secs))
                .sum::<Option<f64>>()
                .map(|t| t / secs),
        }
    }

    fn from_latencies(mut latencies_ns: Vec<u64>, secs: f64, size: usize, cpu: CpuUse) -> Measurement {
        latencies_ns.sort_unstable();
        let n = latencies_ns.len();
        let pct =
            |p: f64| if n == 0 { 0.0 } else { latencies_ns[((n as f64 * p) as usize).min(n - 1)] as f64 / 1000.0 };
        Measurement {
            appends: n as u64,
            secs,
            appends_per_sec: n as f64 / secs,
            mb_per_sec: n as f64 * size as f64 / secs / 1e6,
            latency_p50_us: pct(0.50),
            latency_p99_us: pct(0.99),
            cpu_cores: cpu.process_secs / secs,
            machine_busy_cores: cpu.machine_busy_secs.map(|b| b / secs),
        }
    }
}

/// Runs `append` in a closed loop on `writers` threads for `duration`; each thread gets its index and a
/// per-thread sequence number.
fn closed_loop<F>(writers: u32, duration: Duration, size: usize, append: F) -> io::Result<Measurement>
where
    F: Fn(u32, u64) -> io::Result<()> + Send + Sync + 'static,
{
    let append = Arc::new(append);
    let stop = Arc::new(AtomicBool::new(false));
    let start_line = Arc::new(Barrier::new(writers as usize + 1));
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let (append, stop, start_line) = (append.clone(), stop.clone(), start_line.clone());
            std::thread::spawn(move || -> io::Result<Vec<u64>> {
                let mut lat = Vec::with_capacity(1 << 16);
                start_line.wait();
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    append(w, seq)?;
                    lat.push(t.elapsed().as_nanos() as u64);
                    seq += 1;
                }
                Ok(lat)
            })
        })
        .collect();
    start_line.wait();
    let start = Instant::now();
    let cpu_start = CpuUse::now();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().map_err(|_| io::Error::other("writer thread panicked"))??);
    }
    // Appends in flight when `stop` was set finish after the window; counting them over the time they
    // actually took keeps the rate honest.
    let secs = start.elapsed().as_secs_f64();
    let cpu = CpuUse::now().since(&cpu_start);
    Ok(Measurement::from_latencies(all, secs, size, cpu))
}

/// CPU seconds used so far: by this process (user + system, all threads), and by the whole machine.
#[derive(Clone, Copy, Debug)]
struct CpuUse {
    process_secs: f64,
    machine_busy_secs: Option<f64>,
}

impl CpuUse {
    fn now() -> CpuUse {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        CpuUse { process_secs: t.tv_sec as f64 + t.tv_nsec as f64 / 1e9, machine_busy_secs: machine_busy_secs() }
    }

    fn since(&self, earlier: &CpuUse) -> CpuUse {
        CpuUse {
            process_secs: self.process_secs - earlier.process_secs,
            machine_busy_secs: self.machine_busy_secs.zip(earlier.machine_busy_secs).map(|(a, b)| a - b),
        }
    }
}

/// Busy CPU seconds of the whole machine since boot: the first line of `/proc/stat` (in USER_HZ, 100 per
/// second on Linux) without idle and iowait.
fn machine_busy_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> =
        stat.lines().next()?.split_whitespace().skip(1).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let (user, nice, system, irq, softirq, steal) =
        (fields.first()?, fields.get(1)?, fields.get(2)?, fields.get(5)?, fields.get(6)?, fields.get(7)?);
    Some((user + nice + system + irq + softirq + steal) as f64 / 100.0)
}

/// Bytes of the pre-allocated file the raw baselines write into (wrapping around at the end).
const RAW_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// A zero-filled, fsynced file of `bytes`.
pub fn preallocated_file(path: &Path, bytes: u64) -> io::Result<File> {
    filled_file(path, bytes, 0)
}

/// A file of `bytes` (rounded up to MiB) all `byte`, fsynced. Non-zero for files that are read back, so
/// that a host that detects zero writes cannot serve the reads from holes.
pub fn filled_file(path: &Path, bytes: u64, byte: u8) -> io::Result<File> {
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
    let chunk = vec![byte; 1 << 20];
    let mut at = 0;
    while at < bytes {
        f.write_all_at(&chunk, at)?;
        at += chunk.len() as u64;
    }
    f.sync_all()?;
    Ok(f)
}

/// The pre-allocated file the raw baselines write into.
pub fn raw_file(dir: &Path) -> io::Result<Arc<File>> {
    Ok(Arc::new(preallocated_file(&dir.join("raw.dat"), RAW_FILE_BYTES)?))
}

/// One writer: pwrite + fdatasync per record into a pre-allocated file.
pub fn raw_fdatasync_loop(file: &Arc<File>, size: usize, duration: Duration) -> io::Result<Measurement> {
    sync_loop(file, size, duration, size as u64, false)
}

/// One writer, writing the bytes Keel's format writes for a record of `size` without the engine: a frame
/// of Keel's header length plus `size`, packed right after the previous one and padded with zeros to the
/// end of its last page (docs/FORMAT.md, "Segment files"), then fdatasync. A 16 KiB record's frame spans
/// five pages where the raw loop's 16 KiB write spans four, so this loop ÷ the raw loop is what the format
/// alone costs on this disk, and Keel ÷ this loop is what the engine costs.
pub fn raw_framed_loop(file: &Arc<File>, size: usize, duration: Duration) -> io::Result<Measurement> {
    sync_loop(file, size, duration, keel_journal::limits::FRAME_HEADER_BYTES + size as u64, true)
}

/// One writer, pwrite + fdatasync per append: `stride` bytes of 0xA5 after the previous append's, and with
/// `pad_to_page` the zeros up to the end of the last page they touch in the same write.
fn sync_loop(
    file: &Arc<File>,
    size: usize,
    duration: Duration,
    stride: u64,
    pad_to_page: bool,
) -> io::Result<Measurement> {
    let file = file.clone();
    let page = keel_journal::limits::PAGE_BYTES;
    let pad_room = if pad_to_page { page } else { 0 };
    let mut buf = vec![0xA5u8; (stride + pad_room) as usize];
    buf[stride as usize..].fill(0);
    let offset = Mutex::new(0u64);
    closed_loop(1, duration, size, move |_, _| {
        let mut off = offset.lock().unwrap();
        if *off + stride + pad_room > RAW_FILE_BYTES {
            *off = 0;
        }
        let len = if pad_to_page { (*off + stride).next_multiple_of(page) - *off } else { stride };
        file.write_all_at(&buf[..len as usize], *off)?;
        file.sync_data()?;
        *off += stride;
        Ok(())
    })
}

struct GroupState {
    buf: Vec<u8>,
    enqueued: u64,
    durable: u64,
    flushing: bool,
    offset: u64,
}

/// W writers, leader/follower: one pwrite + one fdatasync per batch.
pub fn raw_group_commit(file: &Arc<File>, writers: u32, size: usize, duration: Duration) -> io::Result<Measurement> {
    let file = file.clone();
    let shared = Arc::new((
        Mutex::new(GroupState { buf: Vec::new(), enqueued: 0, durable: 0, flushing: false, offset: 0 }),
        Condvar::new(),
        file,
    ));
    let record = vec![0x5Au8; size];
    closed_loop(writers, duration, size, move |_, _| {
        let (state, cv, file) = &*shared;
        let mut s = state.lock().unwrap();
        s.buf.extend_from_slice(&record);
        s.enqueued += 1;
        let mine = s.enqueued;
        loop {
            if s.durable >= mine {
                return Ok(());
            }
            if !s.flushing {
                s.flushing = true;
                let buf = std::mem::take(&mut s.buf);
                let upto = s.enqueued;
                if s.offset + buf.len() as u64 > RAW_FILE_BYTES {
                    s.offset = 0;
                }
                let at = s.offset;
                s.offset += buf.len() as u64;
                drop(s);
                let r = file.write_all_at(&buf, at).and_then(|_| file.sync_data());
                s = state.lock().unwrap();
                r?;
                s.durable = upto;
                s.flushing = false;
                cv.notify_all();
            } else {
                s = cv.wait(s).unwrap();
            }
        }
    })
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Opens a journal for benchmarking: 64 MiB segments, `spares` pre-allocated before the clock starts (the
/// baselines write into a pre-allocated file too).
pub fn open_bench_journal(
    dir: &Path,
    max_batch_wait: Duration,
    spares: u32,
    segment_bytes: u64,
    encrypt: bool,
    checkpoint_every_segments: u32,
) -> io::Result<Journal> {
    let keys = encrypt.then(bench_keys);
    let opts = Options {
        sync: SyncPolicy::Always,
        max_batch_wait,
        spare_segments: spares,
        segment_bytes,
        keys,
        checkpoint_every_segments,
        ..Options::default()
    };
    let (j, _) = Journal::open(dir, opts).map_err(io::Error::other)?;
    Ok(j)
}

/// Closed-loop durable appends on an open journal. The caller sees to its spare pool: topping it up here,
/// right before the clock starts, would put the zero-fill's write-back into this very measurement.
pub fn journal_on(journal: Arc<Journal>, writers: u32, size: usize, duration: Duration) -> io::Result<Measurement> {
    let record = vec![0x3Cu8; size];
    closed_loop(writers, duration, size, move |_, _| {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        journal.add(id, 0, &record).map(|_| ()).map_err(io::Error::other)
    })
}

/// A fixed master key for benchmarks (never for data anyone keeps).
fn bench_keys() -> keel_journal::crypto::keys::KeyRing {
    keel_journal::crypto::keys::KeyRing::parse(&format!("1:{}", "be".repeat(32)), "benchmark key").expect("valid")
}

/// Opens a journal in `dir`, runs one scenario, closes it.
pub fn journal_run(dir: &Path, scenario: &Scenario, encrypt: bool) -> io::Result<Measurement> {
    let segment_bytes = keel_journal::limits::SEGMENT_BYTES_DEFAULT;
    let j = Arc::new(open_bench_journal(
        dir,
        scenario.max_batch_wait,
        4,
        segment_bytes,
        encrypt,
        Options::default().checkpoint_every_segments,
    )?);
    if !j.wait_for_spares(Duration::from_secs(120)) {
        return Err(io::Error::other("spare segments were not ready in 120 s"));
    }
    let m = journal_on(j.clone(), scenario.writers, scenario.size, scenario.duration)?;
    if let Ok(j) = Arc::try_unwrap(j) {
        j.close().map_err(io::Error::other)?;
    }
    Ok(m)
}

/// okaywal, with 64 MiB pre-allocated log files.
pub fn okaywal_run(dir: &Path, writers: u32, size: usize, duration: Duration) -> io::Result<Measurement> {
    let wal = okaywal::Configuration::default_for(dir)
        .preallocate_bytes(64 * 1024 * 1024)
        .checkpoint_after_bytes(48 * 1024 * 1024)
        .open(okaywal::LogVoid)?;
    let wal = Arc::new(wal);
    let record = vec![0xC3u8; size];
    let w = wal.clone();
    let m = closed_loop(writers, duration, size, move |_, _| {
        let mut entry = w.begin_entry()?;
        entry.write_chunk(&record)?;
        entry.commit()?;
        Ok(())
    })?;
    if let Ok(wal) = Arc::try_unwrap(wal) {
        wal.shutdown()?;
    }
    Ok(m)
}

/// surrealkv (an LSM with transparent encryption at rest), one transaction of one key per record,
/// committed with `Durability::Immediate` (its commit waits for an fsync of its write-ahead log, shared by
/// concurrent commits). `encrypt`: created with a key manager and XChaCha20-Poly1305, the cipher Keel uses.
pub fn surrealkv_run(
    dir: &Path,
    writers: u32,
    size: usize,
    duration: Duration,
    encrypt: bool,
) -> io::Result<Measurement> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let to_io = |e: surrealkv::Error| io::Error::other(e.to_string());
    let tree = {
        let _entered = rt.enter();
        let mut builder = surrealkv::TreeBuilder::new().with_path(dir.to_path_buf());
        if encrypt {
            let keys = surrealkv::SoftwareKeyManager::from_hex(&"be".repeat(32))
                .map_err(|e| io::Error::other(e.to_string()))?;
            builder = builder.with_encryption(Arc::new(keys), surrealkv::CipherSuite::XChaCha20Poly1305);
        }
        Arc::new(builder.build().map_err(to_io)?)
    };
    let record = vec![0x9Au8; size];
    let (t, handle) = (tree.clone(), rt.handle().clone());
    let m = closed_loop(writers, duration, size, move |w, seq| {
        let key = [w.to_be_bytes().as_slice(), seq.to_be_bytes().as_slice()].concat();
        handle
            .block_on(async {
                let mut tx = t.begin()?;
                tx.set(&key, &record)?;
                tx.set_durability(surrealkv::Durability::Immediate);
                tx.commit().await
            })
            .map_err(to_io)
    })?;
    rt.block_on(tree.close()).map_err(to_io)?;
    Ok(m)
}

/// The `keel bench journal` matrix.
#[derive(Clone, Debug)]
pub struct MatrixConfig {
    pub writers: Vec<u32>,
    pub sizes: Vec<usize>,
    pub duration: Duration,
    /// Each system is measured in this many interleaved rounds of `duration / rounds`, so that the shared
    /// disk's drift hits every system alike.
    pub rounds: u32,
    /// Within a round, Keel and the raw baselines take turns this many times, each turn `1 / passes` of
    /// the round's slice, in a rotating order. This disk's speed drifts by 10-30 % over seconds (traced:
    /// docs/BENCHMARKS.md, "Runs 18–32"); with one turn per round, whichever system ran in the faster
    /// seconds won by that much. Keel's spare pool is topped up only at the start of a round (it holds
    /// enough for the round's turns), never between turns. Peer engines run once per round, after the
    /// turns: each run opens a fresh store, whose pre-allocation would otherwise land between the turns.
    pub passes: u32,
    pub with_okaywal: bool,
    /// Keel's segment size.
    pub segment_bytes: u64,
    /// Keel's `Options::checkpoint_every_segments` (0: no periodic checkpoints), to see what checkpoints
    /// cost a row.
    pub checkpoint_every_segments: u32,
    /// Also measure an encrypted journal (XChaCha20-Poly1305) beside the plaintext one.
    pub with_encrypted: bool,
    /// Also measure surrealkv, plaintext and encrypted (with `with_encrypted`), as the encryption peer.
    pub with_surrealkv: bool,
    /// Idle time before each round, after the spare pool is topped up: the zero-fill of new spares is
    /// still being written back by the device when its fsync returns, and would otherwise slow whichever
    /// system is measured next.
    pub settle: Duration,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub writers: u32,
    pub size: usize,
    pub raw_loop: Option<Measurement>,
    /// The raw loop writing Keel's frames instead of bare records ([`raw_framed_loop`]; 1 writer only).
    pub raw_framed_loop: Option<Measurement>,
    pub raw_group_commit: Measurement,
    pub keel: Measurement,
    /// Frames ÷ fdatasyncs is Keel's average batch.
    pub keel_writer: WriterCounts,
    pub okaywal: Option<Measurement>,
    /// keel / raw_loop (1 writer only).
    pub keel_vs_raw_loop: Option<f64>,
    /// keel / raw_framed_loop: what the engine costs beyond the bytes its format writes (1 writer only).
    pub keel_vs_raw_framed_loop: Option<f64>,
    /// raw_framed_loop / raw_loop: what the format's frame header costs on this disk (1 writer only).
    pub raw_framed_loop_vs_raw_loop: Option<f64>,
    pub keel_vs_raw_group_commit: f64,
    /// Keel's ratios to each baseline, round by round: their spread is this row's noise.
    pub keel_vs_raw_loop_by_round: Vec<f64>,
    pub keel_vs_raw_framed_loop_by_round: Vec<f64>,
    pub keel_vs_raw_group_commit_by_round: Vec<f64>,
    pub okaywal_vs_raw_group_commit: Option<f64>,
    pub keel_encrypted: Option<Measurement>,
    pub keel_encrypted_writer: Option<WriterCounts>,
    /// keel_encrypted / keel, both measured in this run.
    pub encrypted_vs_plaintext: Option<f64>,
    pub surrealkv: Option<Measurement>,
    pub surrealkv_encrypted: Option<Measurement>,
    /// surrealkv_encrypted / surrealkv.
    pub surrealkv_encrypted_vs_plaintext: Option<f64>,
    /// keel_encrypted / surrealkv_encrypted.
    pub keel_encrypted_vs_surrealkv_encrypted: Option<f64>,
}

/// What Keel's group-commit writer did during a row's measurements (deltas of `Journal::write_stats`).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct WriterCounts {
    pub writes: u64,
    pub frames: u64,
    pub fdatasyncs: u64,
    pub overlapped_fdatasyncs: u64,
    pub sealed_units: u64,
    /// Checkpoints the maintenance thread wrote meanwhile, and how long appends waited for them.
    pub checkpoints: u64,
    pub checkpoint_pause_ms: f64,
}

impl WriterCounts {
    fn add_delta(&mut self, before: &Counted, after: &Counted) {
        let ((before, mb), (after, ma)) = (before, after);
        self.writes += after.writes - before.writes;
        self.frames += after.frames - before.frames;
        self.fdatasyncs += after.fdatasyncs - before.fdatasyncs;
        self.overlapped_fdatasyncs += after.overlapped_fdatasyncs - before.overlapped_fdatasyncs;
        self.sealed_units += after.sealed_units - before.sealed_units;
        self.checkpoints += ma.checkpoints - mb.checkpoints;
        self.checkpoint_pause_ms += (ma.checkpoint_pause - mb.checkpoint_pause).as_secs_f64() * 1e3;
    }
}

type Counted = (keel_journal::WriteStats, keel_journal::MaintenanceStats);

fn counted(journal: &Journal) -> Counted {
    (journal.write_stats(), journal.maintenance_stats())
}

/// Measures `journal` like [`journal_on`], adding what its writer did to `counts`.
fn journal_counted(
    journal: &Arc<Journal>,
    writers: u32,
    size: usize,
    duration: Duration,
    counts: &mut WriterCounts,
) -> io::Result<Measurement> {
    let before = counted(journal);
    let m = journal_on(journal.clone(), writers, size, duration)?;
    counts.add_delta(&before, &counted(journal));
    Ok(m)
}

/// The systems that take turns in a round of the matrix, in their default order (peers run after the turns).
#[derive(Clone, Copy, Debug)]
enum System {
    RawLoop,
    RawFramedLoop,
    RawGroupCommit,
    Keel,
    KeelEncrypted,
}

/// Runs the matrix in `dir` (on the disk to measure). `progress` hears about each row as it completes.
pub fn run_matrix(dir: &Path, cfg: &MatrixConfig, progress: &mut dyn FnMut(&Row)) -> io::Result<Vec<Row>> {
    let journal_dir = dir.join("keel");
    // 2.5 GiB of spares per second of a round's slice (up to 4 GiB): Keel's turns in a round never drain
    // the pool below half (64 × 16 KiB writes ~0.8 GB/s here), so no refill competes with a measurement
    // (the baselines' file is pre-allocated too); the pool is topped up at the start of each round.
    let slice_secs = (cfg.duration / cfg.rounds.max(1)).as_secs_f64().max(1.0);
    let per_second = (40 * keel_journal::limits::SEGMENT_BYTES_DEFAULT / cfg.segment_bytes) as f64;
    let spares = (per_second * slice_secs).ceil().clamp(2.0, 64.0) as u32;
    let journal = Arc::new(open_bench_journal(
        &journal_dir,
        Duration::ZERO,
        spares,
        cfg.segment_bytes,
        false,
        cfg.checkpoint_every_segments,
    )?);
    let encrypted = if cfg.with_encrypted {
        let e_dir = dir.join("keel-encrypted");
        let j = Arc::new(open_bench_journal(
            &e_dir,
            Duration::ZERO,
            spares,
            cfg.segment_bytes,
            true,
            cfg.checkpoint_every_segments,
        )?);
        if !j.wait_for_spares(Duration::from_secs(600)) {
            return Err(io::Error::other("spare segments were not ready in 600 s"));
        }
        Some(j)
    } else {
        None
    };
    if !journal.wait_for_spares(Duration::from_secs(600)) {
        return Err(io::Error::other("spare segments were not ready in 600 s"));
    }
    let raw = raw_file(dir)?;
    let rounds = cfg.rounds.max(1);
    let slice = cfg.duration / rounds;
    let mut rows = Vec::new();
    for &size in &cfg.sizes {
        for &writers in &cfg.writers {
            let (mut raw_loop, mut group, mut keel, mut okay) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let (mut framed, mut keel_vs_raw_framed_loop_by_round) = (Vec::new(), Vec::new());
            let (mut enc, mut skv, mut skv_enc) = (Vec::new(), Vec::new(), Vec::new());
            let (mut keel_writer, mut enc_writer) = (WriterCounts::default(), WriterCounts::default());
            let (mut keel_vs_raw_loop_by_round, mut keel_vs_raw_group_commit_by_round) = (Vec::new(), Vec::new());
            for round in 0..rounds {
                // Every system starts a round from the same device state: the pool is full and the zero-fill
                // it took has drained.
                for j in std::iter::once(&journal).chain(encrypted.as_ref()) {
                    if !j.wait_for_spares(Duration::from_secs(600)) {
                        return Err(io::Error::other("spare segments were not ready in 600 s"));
                    }
                }
                std::thread::sleep(cfg.settle);
                // Each turn starts with a different system, so that no system always runs first on the
                // settled disk or always follows the heaviest writer.
                let mut order = vec![System::RawGroupCommit, System::Keel];
                if writers == 1 {
                    order.insert(0, System::RawLoop);
                    order.insert(1, System::RawFramedLoop);
                }
                if encrypted.is_some() {
                    order.push(System::KeelEncrypted);
                }
                let passes = cfg.passes.max(1);
                let turn = slice / passes;
                let (loop_before, group_before, keel_before) = (raw_loop.len(), group.len(), keel.len());
                let framed_before = framed.len();
                for pass in 0..passes {
                    let mut order = order.clone();
                    let first = (round * passes + pass) as usize % order.len();
                    order.rotate_left(first);
                    for system in order {
                        match system {
                            System::RawLoop => raw_loop.push(raw_fdatasync_loop(&raw, size, turn)?),
                            System::RawFramedLoop => framed.push(raw_framed_loop(&raw, size, turn)?),
                            System::RawGroupCommit => group.push(raw_group_commit(&raw, writers, size, turn)?),
                            System::Keel => {
                                keel.push(journal_counted(&journal, writers, size, turn, &mut keel_writer)?)
                            }
                            System::KeelEncrypted => {
                                if let Some(e) = &encrypted {
                                    enc.push(journal_counted(e, writers, size, turn, &mut enc_writer)?);
                                }
                            }
                        }
                    }
                }
                let keel_round = Measurement::merge(&keel[keel_before..], size).appends_per_sec;
                if writers == 1 {
                    let base = Measurement::merge(&raw_loop[loop_before..], size).appends_per_sec;
                    keel_vs_raw_loop_by_round.push(keel_round / base);
                    let base = Measurement::merge(&framed[framed_before..], size).appends_per_sec;
                    keel_vs_raw_framed_loop_by_round.push(keel_round / base);
                }
                let base = Measurement::merge(&group[group_before..], size).appends_per_sec;
                keel_vs_raw_group_commit_by_round.push(keel_round / base);
                if cfg.with_okaywal {
                    let d = dir.join(format!("okaywal-{writers}-{size}-{round}"));
                    okay.push(okaywal_run(&d, writers, size, slice)?);
                    let _ = std::fs::remove_dir_all(&d);
                }
                if cfg.with_surrealkv {
                    for (encrypt, out) in [(false, &mut skv), (true, &mut skv_enc)] {
                        if encrypt && !cfg.with_encrypted {
                            continue;
                        }
                        let d = dir.join(format!("surrealkv-{writers}-{size}-{round}-{encrypt}"));
                        out.push(surrealkv_run(&d, writers, size, slice, encrypt)?);
                        let _ = std::fs::remove_dir_all(&d);
                    }
                }
            }
            let raw_loop = (!raw_loop.is_empty()).then(|| Measurement::merge(&raw_loop, size));
            let raw_framed_loop = (!framed.is_empty()).then(|| Measurement::merge(&framed, size));
            let raw_group_commit = Measurement::merge(&group, size);
            let keel = Measurement::merge(&keel, size);
            let okaywal = (!okay.is_empty()).then(|| Measurement::merge(&okay, size));
            let keel_encrypted = (!enc.is_empty()).then(|| Measurement::merge(&enc, size));
            let surrealkv = (!skv.is_empty()).then(|| Measurement::merge(&skv, size));
            let surrealkv_encrypted = (!skv_enc.is_empty()).then(|| Measurement::merge(&skv_enc, size));
            let row = Row {
                surrealkv_encrypted_vs_plaintext: surrealkv
                    .as_ref()
                    .zip(surrealkv_encrypted.as_ref())
                    .map(|(p, e)| e.appends_per_sec / p.appends_per_sec),
                keel_encrypted_vs_surrealkv_encrypted: keel_encrypted
                    .as_ref()
                    .zip(surrealkv_encrypted.as_ref())
                    .map(|(k, e)| k.appends_per_sec / e.appends_per_sec),
                surrealkv,
                surrealkv_encrypted,
                writers,
                size,
                keel_vs_raw_loop: raw_loop.as_ref().map(|r| keel.appends_per_sec / r.appends_per_sec),
                keel_vs_raw_group_commit: keel.appends_per_sec / raw_group_commit.appends_per_sec,
                keel_vs_raw_loop_by_round,
                keel_vs_raw_framed_loop: raw_framed_loop.as_ref().map(|r| keel.appends_per_sec / r.appends_per_sec),
                raw_framed_loop_vs_raw_loop: raw_framed_loop
                    .as_ref()
                    .zip(raw_loop.as_ref())
                    .map(|(f, r)| f.appends_per_sec / r.appends_per_sec),
                keel_vs_raw_framed_loop_by_round,
                keel_vs_raw_group_commit_by_round,
                okaywal_vs_raw_group_commit: okaywal
                    .as_ref()
                    .map(|o| o.appends_per_sec / raw_group_commit.appends_per_sec),
                encrypted_vs_plaintext: keel_encrypted.as_ref().map(|e| e.appends_per_sec / keel.appends_per_sec),
                keel_encrypted_writer: keel_encrypted.is_some().then_some(enc_writer),
                keel_encrypted,
                keel_writer,
                raw_loop,
                raw_framed_loop,
                raw_group_commit,
                keel,
                okaywal,
            };
            progress(&row);
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Recovery throughput of one journal: how fast a read-only recovery reads it from the page cache.
#[derive(Debug, Serialize)]
pub struct RecoveryRate {
    pub encrypted: bool,
    pub bytes: u64,
    pub records: usize,
    /// Best of the timed runs (the page cache is warm after the first).
    pub secs: f64,
    pub mb_per_sec: f64,
}

/// Builds a journal of about `mb` MiB of 1 KiB records in `dir` (written with `sync = never`, then
/// closed), and times a full read-only recovery of it `runs` times.
pub fn recovery_rate(dir: &Path, mb: u64, encrypt: bool, runs: u32) -> io::Result<RecoveryRate> {
    let keys = encrypt.then(bench_keys);
    {
        let opts = Options { sync: SyncPolicy::Never, keys: keys.clone(), spare_segments: 2, ..Options::default() };
        let (j, _) = Journal::open(dir, opts).map_err(io::Error::other)?;
        let record = vec![0x6Bu8; 1024];
        for id in 0..(mb * 1024) {
            j.add(id, 0, &record).map_err(io::Error::other)?;
        }
        j.close().map_err(io::Error::other)?;
    }
    let mut best = f64::MAX;
    let mut last = None;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let i = keel_journal::inspect::inspect(dir, keel_journal::RecoveryMode::Strict, keys.as_ref(), &mut |_| {})
            .map_err(io::Error::other)?;
        best = best.min(t.elapsed().as_secs_f64());
        last = Some(i);
    }
    let i = last.expect("at least one run");
    let bytes = i.recovered.report.bytes_read;
    Ok(RecoveryRate {
        encrypted: encrypt,
        bytes,
        records: i.recovered.records.len(),
        secs: best,
        mb_per_sec: bytes as f64 / best / 1e6,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The framed loop writes what Keel's format writes: frames of header + record packed back to back,
    /// each write padded with zeros to its page's end, so the bytes after the last frame stay zero.
    #[test]
    fn raw_framed_loop_packs_frames_and_pads_to_the_page() {
        let dir = tempfile::tempdir().unwrap();
        // Not zeros, so that the padding's zeros are the loop's own.
        let file = Arc::new(filled_file(&dir.path().join("raw.dat"), 16 << 20, 0xEE).unwrap());
        let size = 1000;
        let m = raw_framed_loop(&file, size, Duration::from_millis(30)).unwrap();
        assert!(m.appends > 0);
        let frame = keel_journal::limits::FRAME_HEADER_BYTES + size as u64;
        let end = m.appends * frame;
        let page_end = end.next_multiple_of(keel_journal::limits::PAGE_BYTES);
        assert!(page_end < 16 << 20, "the file holds every frame without wrapping");
        let mut written = vec![0u8; page_end as usize];
        file.read_exact_at(&mut written, 0).unwrap();
        assert!(written[..end as usize].iter().all(|&b| b == 0xA5), "frames are packed from offset 0");
        assert!(written[end as usize..].iter().all(|&b| b == 0), "the last write is padded to its page's end");
        let mut after = [0u8; 1];
        file.read_exact_at(&mut after, page_end).unwrap();
        assert_eq!(after[0], 0xEE, "the padding stops at the page's end");
    }

    /// The bare raw loop stays the baseline it was: records back to back, nothing written after the last.
    #[test]
    fn raw_fdatasync_loop_writes_bare_records() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(filled_file(&dir.path().join("raw.dat"), 16 << 20, 0xEE).unwrap());
        let m = raw_fdatasync_loop(&file, 1000, Duration::from_millis(30)).unwrap();
        let end = m.appends * 1000;
        assert!(m.appends > 0 && end + 4096 < 16 << 20, "{} appends fit the file", m.appends);
        let mut written = vec![0u8; end as usize + 4096];
        file.read_exact_at(&mut written, 0).unwrap();
        assert!(written[..end as usize].iter().all(|&b| b == 0xA5), "records are packed from offset 0");
        assert!(written[end as usize..].iter().all(|&b| b == 0xEE), "no padding after the last record");
    }
}
