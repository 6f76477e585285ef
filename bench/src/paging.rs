//! Paging under load: producers send into a paged address while a consumer drains it, then a consumer
//! pages a cold backlog back in. Baselines measured in the same run: the raw leader/follower group commit
//! (`raw_group_commit`, same writers and message size) for producing, and a sequential read of an equally
//! large cold file for paging in. Peak RSS of each phase against the paged bytes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_journal::{Journal, Options};
use keel_paging::{Paging, PagingOptions, Subscription};
use serde::Serialize;

use crate::restart::proc_status_kib;

#[derive(Clone, Debug, Serialize)]
pub struct PagingRow {
    pub size: usize,
    pub producers: u32,
    pub produce_msgs_per_sec: f64,
    pub produce_mb_per_sec: f64,
    pub consume_msgs_per_sec: f64,
    /// `raw_group_commit` with the same writers and size, this run.
    pub raw_group_commit_mb_per_sec: f64,
    pub produce_vs_raw: f64,
    pub backlog_mb: f64,
    pub page_in_mb_per_sec: f64,
    /// A sequential 1 MiB-read of an equally large file evicted from the page cache, this run.
    pub sequential_read_mb_per_sec: f64,
    pub page_in_vs_sequential_read: f64,
    pub peak_rss_while_draining_mib: f64,
    pub peak_rss_paging_in_mib: f64,
}

pub(crate) fn to_io(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Evicts a file's cached pages (they are clean: written and fsynced), so the next read goes to the disk.
fn evict(path: &Path) -> io::Result<()> {
    let f = File::open(path)?;
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed)?;
    Ok(())
}

fn evict_dir(dir: &Path) -> io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            evict_dir(&p)?;
        } else {
            evict(&p)?;
        }
    }
    Ok(())
}

/// Resets the peak RSS (`VmHWM`) to the current RSS.
pub(crate) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn drain(sub: &Subscription, stop: &AtomicBool, until: Option<u64>) -> io::Result<(u64, u64)> {
    let (mut n, mut bytes) = (0u64, 0u64);
    let mut batch = Vec::with_capacity(1024);
    loop {
        match sub.receive_timeout(Duration::from_millis(20)).map_err(to_io)? {
            Some(d) => {
                n += 1;
                bytes += d.payload.len() as u64;
                batch.push(d.seq);
                if batch.len() == 1024 {
                    sub.ack_many(&batch).map_err(to_io)?;
                    batch.clear();
                }
                if until.is_some_and(|u| n >= u) {
                    break;
                }
            }
            None if stop.load(Ordering::SeqCst) => break,
            None => {}
        }
    }
    if !batch.is_empty() {
        sub.ack_many(&batch).map_err(to_io)?;
    }
    Ok((n, bytes))
}

fn open(dir: &Path) -> io::Result<Paging> {
    let jopts = Options { auto_maintenance: true, ..Options::default() };
    let (journal, rec) = Journal::open(dir.join("journal"), jopts).map_err(to_io)?;
    let popts = PagingOptions { max_size_bytes: 0, ..PagingOptions::default() };
    Paging::open(dir.join("pages"), Arc::new(journal), &rec.prepared, popts).map_err(to_io)
}

pub fn run(dir: &Path, size: usize, producers: u32, secs: f64, backlog_mib: u64) -> io::Result<PagingRow> {
    let scratch = tempfile::tempdir_in(dir)?;
    let raw = crate::raw_file(scratch.path())?;
    let duration = Duration::from_secs_f64(secs);
    let raw_group = crate::raw_group_commit(&raw, producers, size, duration)?;
    drop(raw);
    std::fs::remove_file(scratch.path().join("raw.dat"))?;

    let paging = open(scratch.path())?;
    let address = paging.address("bench").map_err(to_io)?;
    let sub = address.subscribe("consumer").map_err(to_io)?;

    // Phase 1: produce while the consumer drains.
    reset_peak_rss();
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (sub, stop) = (sub.clone(), stop.clone());
        std::thread::spawn(move || drain(&sub, &stop, None))
    };
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..producers)
        .map(|_| {
            let (address, sent) = (address.clone(), sent.clone());
            let payload = vec![0x5Au8; size];
            std::thread::spawn(move || -> io::Result<()> {
                while start.elapsed() < duration {
                    address.send(&payload, None).map_err(to_io)?;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| io::Error::other("producer panicked"))??;
    }
    let produce_secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    let (consumed, _) = consumer.join().map_err(|_| io::Error::other("consumer panicked"))??;
    let consume_secs = start.elapsed().as_secs_f64();
    let peak_draining = proc_status_kib("VmHWM")? as f64 / 1024.0;
    let produced = sent.load(Ordering::Relaxed);

    // Phase 2: a cold backlog, paged in.
    let backlog = (backlog_mib << 20) / size as u64;
    let per = backlog / u64::from(producers);
    let threads: Vec<_> = (0..producers)
        .map(|_| {
            let address = address.clone();
            let payload = vec![0xA5u8; size];
            std::thread::spawn(move || -> io::Result<()> {
                for _ in 0..per {
                    address.send(&payload, None).map_err(to_io)?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| io::Error::other("producer panicked"))??;
    }
    let backlog = per * u64::from(producers);
    evict_dir(&scratch.path().join("pages"))?;
    reset_peak_rss();
    let t = Instant::now();
    let (n, bytes) = drain(&sub, &AtomicBool::new(true), Some(backlog))?;
    let page_in_secs = t.elapsed().as_secs_f64();
    let peak_paging_in = proc_status_kib("VmHWM")? as f64 / 1024.0;
    assert_eq!(n, backlog, "the whole backlog was paged in");
    drop((sub, address, paging));

    // Baseline: an equally large cold file read sequentially.
    let path = scratch.path().join("seq.dat");
    drop(crate::filled_file(&path, bytes, 0x11)?);
    evict(&path)?;
    let f = File::open(&path)?;
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    let mut at = 0;
    while at < bytes {
        let n = f.read_at(&mut buf, at)?;
        if n == 0 {
            break;
        }
        at += n as u64;
    }
    let seq_secs = t.elapsed().as_secs_f64();

    let mb = |b: f64| b / 1e6;
    let produce_mb = mb(produced as f64 * size as f64) / produce_secs;
    let page_in = mb(bytes as f64) / page_in_secs;
    let seq_read = mb(at as f64) / seq_secs;
    Ok(PagingRow {
        size,
        producers,
        produce_msgs_per_sec: produced as f64 / produce_secs,
        produce_mb_per_sec: produce_mb,
        consume_msgs_per_sec: consumed as f64 / consume_secs,
        raw_group_commit_mb_per_sec: raw_group.mb_per_sec,
        produce_vs_raw: produce_mb / raw_group.mb_per_sec,
        backlog_mb: mb(bytes as f64),
        page_in_mb_per_sec: page_in,
        sequential_read_mb_per_sec: seq_read,
        page_in_vs_sequential_read: page_in / seq_read,
        peak_rss_while_draining_mib: peak_draining,
        peak_rss_paging_in_mib: peak_paging_in,
    })
}
