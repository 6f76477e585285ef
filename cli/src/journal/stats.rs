//! `keel journal stats`: per-segment sizes, frames and live bytes, and the journal's live ratio.

use std::collections::HashMap;
use std::path::Path;

use keel_journal::crypto::keys::KeyRing;
use keel_journal::inspect::inspect;
use keel_journal::{RecoveryMode, SegmentEnd};

use crate::Outcome;

pub fn run(dir: &Path, keys: Option<&KeyRing>, json: bool) -> anyhow::Result<Outcome> {
    let first = inspect(dir, RecoveryMode::Strict, keys, &mut |_| {})?;
    let rec = &first.recovered;
    let per_seg: HashMap<u64, (u64, u64)> = first.live.iter().map(|(seq, l)| (*seq, (l.records, l.bytes))).collect();
    let mut segments = Vec::new();
    let (mut used_total, mut live_total, mut file_total) = (0u64, 0u64, 0u64);
    for s in &first.segments {
        let (live_frames, live_bytes) = per_seg.get(&s.seq).copied().unwrap_or_default();
        let used = s.end_offset;
        used_total += used;
        live_total += live_bytes;
        file_total += s.file_bytes;
        let state = match s.end {
            SegmentEnd::Sealed { .. } => "sealed",
            SegmentEnd::Open { .. } => "active",
            SegmentEnd::Torn { .. } => "torn-tail",
            SegmentEnd::Unterminated { .. } => "unterminated",
        };
        segments.push(serde_json::json!({
            "seq": s.seq,
            "file": s.path.file_name().map(|n| n.to_string_lossy().into_owned()),
            "state": state,
            "file_bytes": s.file_bytes,
            "used_bytes": used,
            "first_lsn": s.first_lsn.0,
            "frames": s.frames,
            "live_frames": live_frames,
            "live_bytes": live_bytes,
            "reclaimable": first.reclaimable_through.is_some_and(|k| s.seq <= k),
        }));
    }
    let ratio = if used_total == 0 { 0.0 } else { live_total as f64 / used_total as f64 };
    let summary = serde_json::json!({
        "journal_id": first.journal_id,
        "segments": first.segments.len(),
        "spare_segments": first.spares,
        "file_bytes": file_total,
        "used_bytes": used_total,
        "live_bytes": live_total,
        "live_ratio": ratio,
        "live_records": rec.records.len(),
        "prepared_transactions": rec.prepared.len(),
        "last_lsn": rec.report.last_lsn.map(|l| l.0),
        "reclaimable_through": first.reclaimable_through,
        "per_segment": segments,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(Outcome::Ok);
    }
    println!("journal {}", first.journal_id);
    println!(
        "{} segments ({} spare), {} bytes on disk, {} used, {} live: live ratio {:.1} %",
        first.segments.len(),
        first.spares,
        file_total,
        used_total,
        live_total,
        ratio * 100.0
    );
    println!("{} live records, {} prepared transactions", rec.records.len(), rec.prepared.len());
    match first.reclaimable_through {
        Some(k) => println!("reclaimable now: segments up to {k} (open the journal, or run `keel journal compact`)"),
        None => println!("reclaimable now: none"),
    }
    println!(
        "{:>8}  {:<13} {:>12} {:>12} {:>10} {:>10}  reclaimable",
        "segment", "state", "used", "live", "frames", "live rec."
    );
    for s in &segments {
        println!(
            "{:>8}  {:<13} {:>12} {:>12} {:>10} {:>10}  {}",
            s["seq"].as_u64().unwrap_or(0),
            s["state"].as_str().unwrap_or(""),
            s["used_bytes"].as_u64().unwrap_or(0),
            s["live_bytes"].as_u64().unwrap_or(0),
            s["frames"].as_u64().unwrap_or(0),
            s["live_frames"].as_u64().unwrap_or(0),
            if s["reclaimable"].as_bool().unwrap_or(false) { "yes" } else { "" }
        );
    }
    Ok(Outcome::Ok)
}
