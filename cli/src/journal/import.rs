//! `keel journal import`: appends the JSON lines of `print --json` read from standard input. LSNs are
//! assigned anew; `lsn` in the input is ignored.

use std::io::BufRead;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use keel_journal::{Journal, TxId};
use serde::Deserialize;

use super::{Failed, WriteArgs};
use crate::Outcome;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(rename = "type")]
    kind_of: String,
    id: Option<u64>,
    #[serde(default)]
    kind: u8,
    tx: Option<u64>,
    #[serde(default)]
    #[allow(dead_code)]
    lsn: Option<u64>,
    #[serde(default)]
    payload: String,
}

pub fn run(dir: &Path, write: &WriteArgs) -> anyhow::Result<Outcome> {
    let (journal, _) = Journal::open(dir, write.options()?)?;
    let stdin = std::io::stdin();
    let mut count = 0u64;
    for (index, line) in stdin.lock().lines().enumerate() {
        let n = index + 1;
        let line = line.with_context(|| format!("reading standard input line {n}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line = serde_json::from_str(&line).with_context(|| format!("line {n}: not a journal JSON line"))?;
        apply(&journal, &parsed).map_err(|e| {
            e.context(format!("line {n}: {}", line.chars().take(120).collect::<String>())).context(Failed)
        })?;
        count += 1;
    }
    journal.close().map_err(|e| anyhow!(e).context(Failed))?;
    println!("imported {count} frames into {}", dir.display());
    Ok(Outcome::Ok)
}

fn apply(j: &Journal, l: &Line) -> anyhow::Result<()> {
    let payload = base64::engine::general_purpose::STANDARD.decode(&l.payload).context("payload is not base64")?;
    let id = || l.id.ok_or_else(|| anyhow!("'{}' needs an id", l.kind_of));
    let tx = l.tx.map(|t| TxId::new(t).ok_or_else(|| anyhow!("tx 0 is reserved"))).transpose()?;
    let need_tx = || tx.ok_or_else(|| anyhow!("'{}' needs a tx", l.kind_of));
    match (l.kind_of.as_str(), tx) {
        ("add", None) => j.add(id()?, l.kind, &payload)?,
        ("add", Some(t)) => j.add_tx(t, id()?, l.kind, &payload)?,
        ("update", None) => j.update(id()?, l.kind, &payload)?,
        ("update", Some(t)) => j.update_tx(t, id()?, l.kind, &payload)?,
        ("delete", None) => j.delete(id()?)?,
        ("delete", Some(t)) => j.delete_tx(t, id()?)?,
        ("prepare", _) => j.prepare(need_tx()?, &payload)?,
        ("commit", _) => j.commit(need_tx()?)?,
        ("rollback", _) => j.rollback(need_tx()?)?,
        (other, _) => bail!("unknown type '{other}' (add, update, delete, prepare, commit, rollback)"),
    };
    Ok(())
}
