//! Applies frames in LSN order to rebuild the live records and the open transactions (docs/FORMAT.md,
//! "Record semantics"). Total: any sequence the writer can produce replays without error; only a record count
//! that disagrees with the frames logged is an error, and that is corruption.

use std::collections::{BTreeMap, HashMap};

use crate::error::CorruptionKind;
use crate::format::frame::{FrameHeader, FrameType};
use crate::types::{Lsn, RecordId, TxId};

/// A live record: the latest version of its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: u8,
    pub payload: Vec<u8>,
    pub lsn: Lsn,
}

/// The operation of a record inside a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxOp {
    Add,
    Update,
    Delete,
}

/// A record staged in a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxRecord {
    pub op: TxOp,
    pub id: RecordId,
    pub kind: u8,
    pub payload: Vec<u8>,
    pub lsn: Lsn,
}

/// A transaction that was prepared and neither committed nor rolled back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedTx {
    pub tx: TxId,
    pub data: Vec<u8>,
    pub prepare_lsn: Lsn,
    pub records: Vec<TxRecord>,
}

#[derive(Debug, Default)]
struct Staged {
    records: Vec<TxRecord>,
    prepared: Option<(Vec<u8>, Lsn)>,
}

/// Replay state.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    pub records: BTreeMap<RecordId, Record>,
    txs: HashMap<u64, Staged>,
    pub rolled_back: u64,
    pub committed: u64,
}

/// What replay left: live records, prepared transactions, and transactions to roll back.
pub(crate) struct ReplayEnd {
    pub records: BTreeMap<RecordId, Record>,
    pub prepared: Vec<PreparedTx>,
    pub incomplete: Vec<TxId>,
    pub rolled_back: u64,
    pub committed: u64,
}

impl Replay {
    /// Applies one frame. `lenient` (salvage) applies a transaction whose count disagrees instead of failing.
    pub fn apply(&mut self, h: &FrameHeader, payload: &[u8], lenient: bool) -> Result<(), CorruptionKind> {
        let staged_op = |op| TxRecord { op, id: h.id, kind: h.kind, payload: payload.to_vec(), lsn: h.lsn };
        match h.frame_type {
            FrameType::Add | FrameType::Update => {
                self.records.insert(h.id, Record { kind: h.kind, payload: payload.to_vec(), lsn: h.lsn });
            }
            FrameType::Delete => {
                self.records.remove(&h.id);
            }
            FrameType::AddTx => self.txs.entry(h.tx).or_default().records.push(staged_op(TxOp::Add)),
            FrameType::UpdateTx => self.txs.entry(h.tx).or_default().records.push(staged_op(TxOp::Update)),
            FrameType::DeleteTx => {
                let mut r = staged_op(TxOp::Delete);
                r.payload.clear();
                self.txs.entry(h.tx).or_default().records.push(r)
            }
            FrameType::Prepare => {
                let staged = self.txs.entry(h.tx).or_default();
                check_count(h, "prepare", staged.records.len() as u64, lenient)?;
                staged.prepared = Some((payload.to_vec(), h.lsn));
            }
            FrameType::Commit => {
                let staged = self.txs.remove(&h.tx).unwrap_or_default();
                check_count(h, "commit", staged.records.len() as u64, lenient)?;
                for r in staged.records {
                    match r.op {
                        TxOp::Add | TxOp::Update => {
                            self.records.insert(r.id, Record { kind: r.kind, payload: r.payload, lsn: r.lsn });
                        }
                        TxOp::Delete => {
                            self.records.remove(&r.id);
                        }
                    }
                }
                self.committed += 1;
            }
            FrameType::Rollback => {
                self.txs.remove(&h.tx);
                self.rolled_back += 1;
            }
            FrameType::Seal => {}
        }
        Ok(())
    }

    pub fn finish(self) -> ReplayEnd {
        let mut prepared = Vec::new();
        let mut incomplete = Vec::new();
        for (tx, staged) in self.txs {
            let Some(tx) = TxId::new(tx) else { continue };
            match staged.prepared {
                Some((data, prepare_lsn)) => {
                    prepared.push(PreparedTx { tx, data, prepare_lsn, records: staged.records })
                }
                None => incomplete.push(tx),
            }
        }
        prepared.sort_by_key(|p| p.prepare_lsn);
        incomplete.sort();
        ReplayEnd {
            records: self.records,
            prepared,
            incomplete,
            rolled_back: self.rolled_back,
            committed: self.committed,
        }
    }
}

fn check_count(h: &FrameHeader, frame: &'static str, staged: u64, lenient: bool) -> Result<(), CorruptionKind> {
    if h.id != staged && !lenient {
        return Err(CorruptionKind::TxCount { tx: h.tx, frame, declared: h.id, staged });
    }
    Ok(())
}
