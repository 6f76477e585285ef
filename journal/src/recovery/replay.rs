//! Applies frames in LSN order to rebuild the live-record index and the open transactions (docs/FORMAT.md,
//! "Record semantics"). Total: any sequence the writer can produce replays without error; only a record count
//! that disagrees with the frames logged is an error, and that is corruption. Payloads are never kept: the
//! index holds where each live version lies.

use std::collections::HashMap;

use crate::error::CorruptionKind;
use crate::format::frame::{FrameHeader, FrameType, RELOCATE_PREFIX_BYTES};
use crate::index::{LiveIndex, Location, RecordRef};
use crate::types::{Lsn, RecordId, TxId};

/// The operation of a record inside a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxOp {
    Add,
    Update,
    Delete,
}

/// A record staged in a transaction. Its payload is read on demand from `record.location` (a delete has
/// an empty payload).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxRecord {
    pub op: TxOp,
    pub id: RecordId,
    pub record: RecordRef,
}

/// A transaction that was prepared and neither committed nor rolled back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedTx {
    pub tx: TxId,
    pub data: Vec<u8>,
    pub prepare_lsn: Lsn,
    pub records: Vec<TxRecord>,
}

/// A transaction's state during replay (and in a checkpoint).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Staged {
    pub records: Vec<TxRecord>,
    pub prepared: Option<(Vec<u8>, Lsn)>,
    /// The oldest segment holding one of its frames.
    pub first_seq: u64,
}

/// Replay state.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    pub index: LiveIndex,
    pub txs: HashMap<u64, Staged>,
    pub rolled_back: u64,
    pub committed: u64,
}

/// What replay left: the index and the transactions still open (prepared or not), in tx order.
pub(crate) struct ReplayEnd {
    pub index: LiveIndex,
    pub open: Vec<(TxId, Staged)>,
    pub rolled_back: u64,
    pub committed: u64,
}

/// The relocated version's LSN, from a relocate frame's payload (length checked by the frame decoder).
pub(crate) fn relocated_lsn(payload: &[u8]) -> Lsn {
    Lsn(crate::format::u64_at(payload, 0))
}

impl Replay {
    /// Applies one frame found at `at`. `lenient` (salvage) applies a transaction whose count disagrees
    /// instead of failing.
    pub fn apply(
        &mut self,
        h: &FrameHeader,
        payload: &[u8],
        at: Location,
        lenient: bool,
    ) -> Result<(), CorruptionKind> {
        let version = RecordRef { kind: h.kind, lsn: h.lsn, location: at };
        let seq = at.seq;
        let stage = |txs: &mut HashMap<u64, Staged>, op| {
            let s = txs.entry(h.tx).or_insert_with(|| Staged { first_seq: seq, ..Staged::default() });
            s.records.push(TxRecord { op, id: h.id, record: version });
        };
        match h.frame_type {
            FrameType::Add | FrameType::Update => {
                self.index.insert(h.id, version);
            }
            FrameType::Delete => {
                self.index.remove(h.id);
            }
            FrameType::Relocate => {
                debug_assert!(payload.len() >= RELOCATE_PREFIX_BYTES);
                let lsn = relocated_lsn(payload);
                // The writer relocates only the live version; a newer one here means salvage skipped frames.
                if self.index.records.get(&h.id).is_none_or(|cur| cur.lsn <= lsn) {
                    self.index.insert(h.id, RecordRef { lsn, ..version });
                }
            }
            FrameType::AddTx => stage(&mut self.txs, TxOp::Add),
            FrameType::UpdateTx => stage(&mut self.txs, TxOp::Update),
            FrameType::DeleteTx => stage(&mut self.txs, TxOp::Delete),
            FrameType::Prepare => {
                let staged = self.txs.entry(h.tx).or_insert_with(|| Staged { first_seq: seq, ..Staged::default() });
                check_count(h, "prepare", staged.records.len() as u64, lenient)?;
                staged.prepared = Some((payload.to_vec(), h.lsn));
            }
            FrameType::Commit => {
                let staged = self.txs.remove(&h.tx).unwrap_or(Staged { first_seq: seq, ..Staged::default() });
                check_count(h, "commit", staged.records.len() as u64, lenient)?;
                for r in staged.records {
                    match r.op {
                        TxOp::Add | TxOp::Update => {
                            self.index.insert(r.id, r.record);
                        }
                        TxOp::Delete => {
                            self.index.remove(r.id);
                        }
                    }
                }
                self.index.note_span(staged.first_seq, seq);
                self.committed += 1;
            }
            FrameType::Rollback => {
                if let Some(staged) = self.txs.remove(&h.tx) {
                    self.index.note_span(staged.first_seq, seq);
                }
                self.rolled_back += 1;
            }
            FrameType::Seal => {}
        }
        Ok(())
    }

    pub fn finish(self) -> ReplayEnd {
        let mut open: Vec<(TxId, Staged)> =
            self.txs.into_iter().filter_map(|(tx, s)| TxId::new(tx).map(|tx| (tx, s))).collect();
        open.sort_by_key(|(tx, _)| *tx);
        ReplayEnd { index: self.index, open, rolled_back: self.rolled_back, committed: self.committed }
    }
}

impl ReplayEnd {
    /// The prepared transactions, in prepare order.
    pub fn prepared(&self) -> Vec<PreparedTx> {
        let mut prepared: Vec<PreparedTx> = self
            .open
            .iter()
            .filter_map(|(tx, s)| {
                s.prepared.as_ref().map(|(data, lsn)| PreparedTx {
                    tx: *tx,
                    data: data.clone(),
                    prepare_lsn: *lsn,
                    records: s.records.clone(),
                })
            })
            .collect();
        prepared.sort_by_key(|p| p.prepare_lsn);
        prepared
    }

    /// Transactions neither prepared nor resolved: rolled back at open.
    pub fn incomplete(&self) -> Vec<TxId> {
        self.open.iter().filter(|(_, s)| s.prepared.is_none()).map(|(tx, _)| *tx).collect()
    }
}

fn check_count(h: &FrameHeader, frame: &'static str, staged: u64, lenient: bool) -> Result<(), CorruptionKind> {
    if h.id != staged && !lenient {
        return Err(CorruptionKind::TxCount { tx: h.tx, frame, declared: h.id, staged });
    }
    Ok(())
}
