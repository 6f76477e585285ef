//! What the writer must know to validate a request before logging it: which record ids are live and which
//! transactions are open, with an undo log so a batch that fails to reach the disk leaves no trace.
//! It mirrors `recovery::replay` exactly on everything it tracks; the model test checks that they agree.

use std::collections::{HashMap, HashSet};

use crate::error::AppendError;
use crate::format::frame::FrameType;
use crate::types::{RecordId, TxId};

#[derive(Debug, Default, Clone)]
pub(crate) struct TxModel {
    ops: Vec<(FrameType, RecordId)>,
    prepared: bool,
}

#[derive(Debug)]
pub(crate) enum Undo {
    LiveInserted(RecordId),
    LiveRemoved(RecordId),
    TxCreated(u64),
    TxOpPushed(u64),
    TxPrepared(u64),
    TxResolved(u64, TxModel),
}

#[derive(Debug, Default)]
pub(crate) struct Model {
    live: HashSet<RecordId>,
    txs: HashMap<u64, TxModel>,
}

impl Model {
    pub fn seed(live: impl IntoIterator<Item = RecordId>) -> Model {
        Model { live: live.into_iter().collect(), txs: HashMap::new() }
    }

    /// Registers a transaction found open by recovery; `ops` are its logged records.
    pub fn seed_tx(&mut self, tx: TxId, ops: Vec<(FrameType, RecordId)>, prepared: bool) {
        self.txs.insert(tx.get(), TxModel { ops, prepared });
    }

    /// Validates and applies one frame; returns the value of the frame's `id` field (the record count for
    /// prepare and commit).
    pub fn apply(
        &mut self,
        frame_type: FrameType,
        id: RecordId,
        tx: u64,
        undo: &mut Vec<Undo>,
    ) -> Result<u64, AppendError> {
        let tx_id = || TxId::new(tx).expect("transactional requests carry a non-zero tx");
        match frame_type {
            FrameType::Add => {
                if !self.live.insert(id) {
                    return Err(AppendError::IdInUse(id));
                }
                undo.push(Undo::LiveInserted(id));
                Ok(id)
            }
            FrameType::Update => {
                if !self.live.contains(&id) {
                    return Err(AppendError::NoSuchRecord(id));
                }
                Ok(id)
            }
            FrameType::Delete => {
                if !self.live.remove(&id) {
                    return Err(AppendError::NoSuchRecord(id));
                }
                undo.push(Undo::LiveRemoved(id));
                Ok(id)
            }
            FrameType::AddTx | FrameType::UpdateTx | FrameType::DeleteTx => {
                let t = self.open_tx(tx, undo).ok_or_else(|| AppendError::TxPrepared(tx_id()))?;
                t.ops.push((frame_type, id));
                undo.push(Undo::TxOpPushed(tx));
                Ok(id)
            }
            FrameType::Prepare => {
                let t = self.open_tx(tx, undo).ok_or_else(|| AppendError::TxPrepared(tx_id()))?;
                t.prepared = true;
                let count = t.ops.len() as u64;
                undo.push(Undo::TxPrepared(tx));
                Ok(count)
            }
            FrameType::Commit => {
                let t = self.txs.remove(&tx).ok_or_else(|| AppendError::NoSuchTx(tx_id()))?;
                let count = t.ops.len() as u64;
                let ops = t.ops.clone();
                undo.push(Undo::TxResolved(tx, t));
                for (op, rid) in ops {
                    match op {
                        FrameType::DeleteTx => {
                            if self.live.remove(&rid) {
                                undo.push(Undo::LiveRemoved(rid));
                            }
                        }
                        _ => {
                            if self.live.insert(rid) {
                                undo.push(Undo::LiveInserted(rid));
                            }
                        }
                    }
                }
                Ok(count)
            }
            FrameType::Rollback => {
                let t = self.txs.remove(&tx).ok_or_else(|| AppendError::NoSuchTx(tx_id()))?;
                undo.push(Undo::TxResolved(tx, t));
                Ok(0)
            }
            FrameType::Seal => unreachable!("seal frames are not requests"),
        }
    }

    /// The open, unprepared transaction `tx`, created if absent; `None` if it is prepared.
    fn open_tx(&mut self, tx: u64, undo: &mut Vec<Undo>) -> Option<&mut TxModel> {
        let t = self.txs.entry(tx).or_insert_with(|| {
            undo.push(Undo::TxCreated(tx));
            TxModel::default()
        });
        if t.prepared {
            return None;
        }
        Some(t)
    }

    /// Reverts `undo` (newest first).
    pub fn revert(&mut self, undo: Vec<Undo>) {
        for step in undo.into_iter().rev() {
            match step {
                Undo::LiveInserted(id) => {
                    self.live.remove(&id);
                }
                Undo::LiveRemoved(id) => {
                    self.live.insert(id);
                }
                Undo::TxCreated(tx) => {
                    self.txs.remove(&tx);
                }
                Undo::TxOpPushed(tx) => {
                    if let Some(t) = self.txs.get_mut(&tx) {
                        t.ops.pop();
                    }
                }
                Undo::TxPrepared(tx) => {
                    if let Some(t) = self.txs.get_mut(&tx) {
                        t.prepared = false;
                    }
                }
                Undo::TxResolved(tx, t) => {
                    self.txs.insert(tx, t);
                }
            }
        }
    }
}
