//! `keel journal print`.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use keel_journal::crypto::keys::KeyRing;
use keel_journal::inspect::inspect;
use keel_journal::FrameType;

use super::mode;
use crate::Outcome;

pub fn run(dir: &Path, keys: Option<&KeyRing>, json: bool, salvage: bool) -> anyhow::Result<Outcome> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut write_err: Option<std::io::Error> = None;
    let inspection = inspect(dir, mode(salvage), keys, &mut |f| {
        if write_err.is_some() {
            return;
        }
        let h = f.header;
        let r = if json {
            writeln!(out, "{}", frame_json(h, f.payload))
        } else {
            let name = f.path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
            let tx = if h.tx == 0 { "-".to_owned() } else { h.tx.to_string() };
            let (id_label, id) = match h.frame_type {
                FrameType::Prepare | FrameType::Commit => ("records", h.id.to_string()),
                FrameType::Rollback => ("id", "-".to_owned()),
                _ => ("id", h.id.to_string()),
            };
            writeln!(
                out,
                "lsn={} {} {}={} kind={} tx={} len={} at {}:{}",
                h.lsn,
                h.frame_type.name(),
                id_label,
                id,
                h.kind,
                tx,
                h.payload_len,
                name,
                f.offset
            )
        };
        if let Err(e) = r {
            write_err = Some(e);
        }
    });
    if let Some(e) = write_err {
        return Err(e.into());
    }
    out.flush()?;
    let inspection = inspection?;
    let report = &inspection.recovered.report;
    for s in &report.skipped {
        eprintln!("skipped {} bytes at {}:{}: {}", s.bytes, s.path.display(), s.offset, s.reason);
    }
    if let Some(t) = &report.torn_tail {
        eprintln!(
            "torn tail: {} bytes at {}:{} (not acknowledged; discarded at the next open)",
            t.bytes,
            t.path.display(),
            t.offset
        );
    }
    Ok(if report.skipped.is_empty() { Outcome::Ok } else { Outcome::Problem })
}

/// The JSON-lines form shared with `import`.
pub fn frame_json(h: &keel_journal::FrameHeader, payload: &[u8]) -> serde_json::Value {
    let id = match h.frame_type {
        FrameType::Prepare | FrameType::Commit | FrameType::Rollback => serde_json::Value::Null,
        _ => h.id.into(),
    };
    let tx = if h.tx == 0 { serde_json::Value::Null } else { h.tx.into() };
    serde_json::json!({
        "type": h.frame_type.name(),
        "id": id,
        "kind": h.kind,
        "tx": tx,
        "lsn": h.lsn.0,
        "payload": base64::engine::general_purpose::STANDARD.encode(payload),
    })
}
