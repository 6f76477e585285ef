//! `keel journal stress`: appends records from W writer threads under the chosen sync policy and logs each
//! record's id to an ack log the moment its append returns (that is, once it is durable under the policy).
//! `verify-acks` then proves every logged id is in the journal with its exact payload. Kill the process at
//! any moment, or pull the power: an id in the ack log that is missing means the disk lied about fsync.
//!
//! Payloads are derived from ids (see [`payload`]) so that they can be checked without storing them.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::Args;
use keel_journal::{Journal, TxId};

use super::{Failed, WriteArgs};
use crate::Outcome;

/// Bytes of a payload that encode its id and length.
pub const PAYLOAD_PREFIX_BYTES: usize = 12;

#[derive(Args)]
pub struct StressArgs {
    /// The journal directory (created if absent).
    #[arg(long)]
    dir: PathBuf,
    /// Concurrent writer threads.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    writers: u32,
    /// Payload bytes per record (at least 12: the payload encodes its id and length).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(12..=16_777_216))]
    size: u32,
    /// Total records to append.
    #[arg(long, required_unless_present = "secs", conflicts_with = "secs")]
    count: Option<u64>,
    /// Append for this many seconds.
    #[arg(long)]
    secs: Option<f64>,
    /// Group this many records per transaction (add in the tx, then commit; every other transaction is
    /// prepared first, two-phase). Ids are logged once their transaction's commit is durable. 0: no tx.
    #[arg(long, default_value_t = 0)]
    tx: u32,
    /// Delete this percentage of the records again right after their add is acknowledged (chosen by id),
    /// so that segments die and reclaim and compaction have work. The ack log then also holds `~ID` before
    /// a delete is issued and `-ID` once it is acknowledged; `verify-acks` checks that acknowledged deletes
    /// stay deleted. Ignored with `--tx`.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    delete_percent: u8,
    /// Compact in the background once the oldest segments' live ratio falls below this (0 < R <= 1).
    #[arg(long)]
    compact_below: Option<f64>,
    /// No background compaction (reclaim and checkpoints still run).
    #[arg(long, conflicts_with = "compact_below")]
    no_compaction: bool,
    /// Write a checkpoint every N sealed segments (0: only at close and after reclaim).
    #[arg(long)]
    checkpoint_every: Option<u32>,
    /// Where to log acknowledged ids, one a line; `-` for standard output.
    #[arg(long)]
    ack_log: String,
    #[command(flatten)]
    write: WriteArgs,
}

/// The payload of record `id`: id (u64 LE), length (u32 LE), then bytes of a SplitMix64 stream seeded by id.
pub fn payload(id: u64, size: usize) -> Vec<u8> {
    assert!(size >= PAYLOAD_PREFIX_BYTES);
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(size as u32).to_le_bytes());
    let mut state = id ^ 0x9E37_79B9_7F4A_7C15;
    while out.len() < size {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let take = (size - out.len()).min(8);
        out.extend_from_slice(&z.to_le_bytes()[..take]);
    }
    out
}

/// Checks that `bytes` is exactly the payload of record `id`; says where it differs if not.
pub fn check_payload(id: u64, bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < PAYLOAD_PREFIX_BYTES {
        return Err(format!("payload is {} bytes, shorter than its {PAYLOAD_PREFIX_BYTES}-byte prefix", bytes.len()));
    }
    let want = payload(id, bytes.len());
    match want.iter().zip(bytes).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(at) => Err(format!("payload differs from the expected bytes at byte {at}")),
    }
}

enum AckLog {
    File(std::fs::File),
    Stdout,
}

impl AckLog {
    fn ack(&self, id: u64) -> std::io::Result<()> {
        self.line(&id.to_string())
    }

    fn line(&self, text: &str) -> std::io::Result<()> {
        // One write per line: O_APPEND makes it atomic, and it reaches the page cache before we go on, so a
        // killed process never loses a logged ack (a power loss may; run verify on a separate machine then).
        let line = format!("{text}\n");
        match self {
            AckLog::File(f) => (&*f).write_all(line.as_bytes()),
            AckLog::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(line.as_bytes())?;
                out.flush()
            }
        }
    }
}

/// Adds `ids` in one transaction (tx id = first id + 1, never 0) and commits; every other transaction is
/// prepared first.
fn in_transaction(journal: &Journal, ids: &[u64], size: usize) -> Result<(), keel_journal::AppendError> {
    let tx = TxId::new(ids[0] + 1).expect("non-zero");
    for id in ids {
        journal.add_tx(tx, *id, 0, &payload(*id, size))?;
    }
    if (ids[0] / ids.len() as u64).is_multiple_of(2) {
        journal.prepare(tx, b"stress")?;
    }
    journal.commit(tx)?;
    Ok(())
}

/// Whether record `id` is one of the `percent` % deleted again (a hash of the id, so reruns agree).
fn chosen(id: u64, percent: u64) -> bool {
    id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32 & 0xffff < percent * 0x10000 / 100
}

/// Deletes `id`, logging the intent before and the acknowledgement after.
fn delete_logged(journal: &Journal, ack_log: &AckLog, id: u64) -> Result<(), String> {
    ack_log.line(&format!("~{id}")).map_err(|e| format!("writing the ack log: {e}"))?;
    journal.delete(id).map_err(|e| format!("delete of record {id} failed: {e}"))?;
    ack_log.line(&format!("-{id}")).map_err(|e| format!("writing the ack log: {e}"))
}

pub fn run(args: &StressArgs) -> anyhow::Result<Outcome> {
    let ack_log = if args.ack_log == "-" {
        AckLog::Stdout
    } else {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&args.ack_log)
            .with_context(|| format!("--ack-log {}", args.ack_log))?;
        AckLog::File(f)
    };
    let mut options = args.write.options()?;
    if let Some(r) = args.compact_below {
        anyhow::ensure!(r > 0.0 && r <= 1.0, "--compact-below {r}: must be in (0, 1]");
        options.compaction = Some(keel_journal::CompactionPolicy {
            live_ratio_below: r,
            min_segments: 2,
            ..keel_journal::CompactionPolicy::default()
        });
    }
    if args.no_compaction {
        options.compaction = None;
    }
    if let Some(n) = args.checkpoint_every {
        options.checkpoint_every_segments = n;
    }
    let (journal, recovered) = Journal::open(&args.dir, options)?;
    // Prepared transactions left by a killed run were never acknowledged: roll them back, and start ids
    // past every id they staged, so that ids and transaction ids are never reused.
    // Ids are never reused: not those of live records, nor those an earlier run logged (and perhaps
    // deleted since: a reused id would make an acknowledged delete look undone).
    let mut first_id = recovered.records.keys().next_back().map_or(0, |max| max + 1);
    if args.ack_log != "-" {
        let logged = std::fs::read_to_string(&args.ack_log).unwrap_or_default();
        let max_logged = logged.lines().filter_map(|l| l.trim_start_matches(['~', '-']).parse::<u64>().ok()).max();
        first_id = first_id.max(max_logged.map_or(0, |m| m + 1));
    }
    for p in &recovered.prepared {
        first_id = first_id.max(p.records.iter().map(|r| r.id + 1).max().unwrap_or(0)).max(p.tx.get());
        journal.rollback(p.tx).map_err(|e| anyhow!(e).context(Failed))?;
    }
    let journal = Arc::new(journal);
    let ack_log = Arc::new(ack_log);
    let stop = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicU64::new(0));
    let failure: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let deadline = args.secs.map(|s| Instant::now() + Duration::from_secs_f64(s));
    let start = Instant::now();
    let threads: Vec<_> = (0..args.writers)
        .map(|_| {
            let (journal, ack_log, stop, issued, failure) =
                (journal.clone(), ack_log.clone(), stop.clone(), issued.clone(), failure.clone());
            let (count, size, tx_records) = (args.count, args.size as usize, u64::from(args.tx));
            let delete_percent = if args.tx == 0 { u64::from(args.delete_percent) } else { 0 };
            std::thread::spawn(move || {
                let mut latencies_us: Vec<u32> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                    let group = tx_records.max(1);
                    let n = issued.fetch_add(group, Ordering::Relaxed);
                    if count.is_some_and(|c| n >= c) {
                        break;
                    }
                    let ids: Vec<u64> = (first_id + n..first_id + n + group).collect();
                    let t = Instant::now();
                    let result = if tx_records == 0 {
                        journal.add(ids[0], 0, &payload(ids[0], size)).map(|_| ())
                    } else {
                        in_transaction(&journal, &ids, size)
                    };
                    latencies_us.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    let err = match result {
                        Ok(()) => match ids.iter().try_for_each(|id| ack_log.ack(*id)) {
                            Ok(()) if delete_percent > 0 && chosen(ids[0], delete_percent) => {
                                match delete_logged(&journal, &ack_log, ids[0]) {
                                    Ok(()) => continue,
                                    Err(e) => e,
                                }
                            }
                            Ok(()) => continue,
                            Err(e) => format!("writing the ack log: {e}"),
                        },
                        Err(e) => format!("append of record {} failed: {e}", ids[0]),
                    };
                    failure.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(err);
                    stop.store(true, Ordering::Relaxed);
                }
                latencies_us
            })
        })
        .collect();
    let mut latencies: Vec<u32> = Vec::new();
    for t in threads {
        latencies.extend(t.join().map_err(|_| anyhow!("a writer thread panicked"))?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(f) = failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(anyhow!("stress: {f}").context(Failed));
    }
    let journal = Arc::try_unwrap(journal).map_err(|_| anyhow!("journal still shared"))?;
    let stats = journal.write_stats();
    journal.close().map_err(|e| anyhow!(e).context(Failed))?;
    latencies.sort_unstable();
    let n = latencies.len();
    let per_append = u64::from(args.tx.max(1));
    let records = n as u64 * per_append;
    let unit = if args.tx == 0 { "append" } else { "transaction" };
    let pct = |p: f64| if n == 0 { 0.0 } else { f64::from(latencies[((n as f64 * p) as usize).min(n - 1)]) / 1000.0 };
    let line = format!(
        "stress: {records} records of {} B by {} writers in {elapsed:.2} s: {:.0} records/s, {:.1} MB/s; {unit} latency p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; sync {:?}; ids {}..{}",
        args.size,
        args.writers,
        records as f64 / elapsed,
        records as f64 * f64::from(args.size) / elapsed / 1e6,
        pct(0.50),
        pct(0.99),
        pct(1.0),
        args.write.sync,
        first_id,
        first_id + records,
    );
    let mut writer = format!(
        "stress: writer: {} writes, {} fdatasyncs ({} overlapped), {} segments activated, {} waited for a spare ({} ms in all)",
        stats.writes,
        stats.fdatasyncs,
        stats.overlapped_fdatasyncs,
        stats.activations,
        stats.spare_waits,
        stats.spare_wait_time.as_millis(),
    );
    if stats.sealed_units > 0 {
        writer.push_str(&format!(", {} sealed units", stats.sealed_units));
    }
    if stats.spare_waits > 0 {
        // An operator reading this wants to know why the p99 is what it is, and what to change.
        writer.push_str(
            "; appends stalled at those roll-overs: this disk could not zero-fill the next segment in time \
             (more --spare-segments absorb bursts, larger --segment-bytes make roll-overs rarer)",
        );
    }
    if args.ack_log == "-" {
        eprintln!("{line}\n{writer}");
    } else {
        println!("{line}\n{writer}");
    }
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_checks() {
        let p = payload(42, 100);
        assert_eq!(p.len(), 100);
        assert!(check_payload(42, &p).is_ok());
        assert!(check_payload(43, &p).is_err());
        let mut q = p.clone();
        q[50] ^= 1;
        assert_eq!(check_payload(42, &q).unwrap_err(), "payload differs from the expected bytes at byte 50");
        assert!(check_payload(42, &p[..99]).is_err(), "a shortened payload fails on its length field");
    }
}
