//! What the writer must know to validate a request before logging it — the live-record index and the open
//! transactions — with an undo log so a batch that fails to reach the disk leaves no trace. It mirrors
//! `recovery::replay` exactly; the model test checks that they agree.

use std::collections::HashMap;

use crate::error::AppendError;
use crate::format::frame::FrameType;
use crate::index::{LiveIndex, Location, RecordRef};
use crate::recovery::replay::{Staged, TxOp, TxRecord};
use crate::types::{Lsn, RecordId, TxId};

#[derive(Debug)]
pub(crate) enum Undo {
    /// The index entry of the id before the change.
    Indexed(RecordId, Option<RecordRef>),
    TxCreated(u64),
    TxOpPushed(u64),
    TxPrepared(u64),
    TxResolved(u64, Staged),
    /// The span entry for a first segment before the change.
    Span(u64, Option<u64>),
}

/// One frame the writer is about to log.
pub(crate) struct Planned<'a> {
    pub frame_type: FrameType,
    pub id: RecordId,
    pub tx: u64,
    pub kind: u8,
    pub lsn: Lsn,
    pub at: Location,
    /// The request's payload (prepare data; a relocate frame's LSN prefix and payload).
    pub payload: &'a [u8],
}

#[derive(Debug, Default)]
pub(crate) struct Model {
    pub index: LiveIndex,
    pub txs: HashMap<u64, Staged>,
}

impl Model {
    pub fn new(index: LiveIndex, open: impl IntoIterator<Item = (TxId, Staged)>) -> Model {
        Model { index, txs: open.into_iter().map(|(tx, s)| (tx.get(), s)).collect() }
    }

    /// The oldest segment holding a frame of an open transaction.
    pub fn open_tx_first_seq(&self) -> Option<u64> {
        self.txs.values().map(|s| s.first_seq).min()
    }

    fn set(&mut self, id: RecordId, r: Option<RecordRef>, undo: &mut Vec<Undo>) {
        let before = match r {
            Some(r) => self.index.insert(id, r),
            None => self.index.remove(id),
        };
        undo.push(Undo::Indexed(id, before));
    }

    fn span(&mut self, first: u64, last: u64, undo: &mut Vec<Undo>) {
        if first < last {
            undo.push(Undo::Span(first, self.index.spans.get(&first).copied()));
            self.index.note_span(first, last);
        }
    }

    /// Validates and applies one frame; returns the value of the frame's `id` field (the record count for
    /// prepare and commit).
    pub fn apply(&mut self, p: &Planned<'_>, undo: &mut Vec<Undo>) -> Result<u64, AppendError> {
        let tx_id = || TxId::new(p.tx).expect("transactional requests carry a non-zero tx");
        let version = RecordRef { kind: p.kind, lsn: p.lsn, location: p.at };
        let id = p.id;
        match p.frame_type {
            // Add, update and delete each probe the index once: with a million live records a probe is a
            // cache miss (docs/BENCHMARKS.md, "Runs 18–32").
            FrameType::Add => {
                if !self.index.insert_new(id, version) {
                    return Err(AppendError::IdInUse(id));
                }
                undo.push(Undo::Indexed(id, None));
                Ok(id)
            }
            FrameType::Update => {
                let before = self.index.replace(id, version).ok_or(AppendError::NoSuchRecord(id))?;
                undo.push(Undo::Indexed(id, Some(before)));
                Ok(id)
            }
            FrameType::Delete => {
                let before = self.index.remove(id).ok_or(AppendError::NoSuchRecord(id))?;
                undo.push(Undo::Indexed(id, Some(before)));
                Ok(id)
            }
            FrameType::Relocate => {
                let lsn = crate::recovery::replay::relocated_lsn(p.payload);
                match self.index.records.get(&id) {
                    Some(cur) if cur.lsn == lsn && cur.kind == p.kind => {
                        self.set(id, Some(RecordRef { lsn, ..version }), undo);
                        Ok(id)
                    }
                    _ => Err(AppendError::Superseded(id)),
                }
            }
            FrameType::AddTx | FrameType::UpdateTx | FrameType::DeleteTx => {
                let op = match p.frame_type {
                    FrameType::AddTx => TxOp::Add,
                    FrameType::UpdateTx => TxOp::Update,
                    _ => TxOp::Delete,
                };
                let t = self.open_tx(p.tx, p.at.seq, undo).ok_or_else(|| AppendError::TxPrepared(tx_id()))?;
                t.records.push(TxRecord { op, id, record: version });
                undo.push(Undo::TxOpPushed(p.tx));
                Ok(id)
            }
            FrameType::Prepare => {
                let t = self.open_tx(p.tx, p.at.seq, undo).ok_or_else(|| AppendError::TxPrepared(tx_id()))?;
                t.prepared = Some((p.payload.to_vec(), p.lsn));
                let count = t.records.len() as u64;
                undo.push(Undo::TxPrepared(p.tx));
                Ok(count)
            }
            FrameType::Commit => {
                let t = self.txs.remove(&p.tx).ok_or_else(|| AppendError::NoSuchTx(tx_id()))?;
                let count = t.records.len() as u64;
                for r in &t.records {
                    match r.op {
                        TxOp::Delete => {
                            if self.index.records.contains_key(&r.id) {
                                self.set(r.id, None, undo);
                            }
                        }
                        TxOp::Add | TxOp::Update => self.set(r.id, Some(r.record), undo),
                    }
                }
                self.span(t.first_seq, p.at.seq, undo);
                undo.push(Undo::TxResolved(p.tx, t));
                Ok(count)
            }
            FrameType::Rollback => {
                let t = self.txs.remove(&p.tx).ok_or_else(|| AppendError::NoSuchTx(tx_id()))?;
                self.span(t.first_seq, p.at.seq, undo);
                undo.push(Undo::TxResolved(p.tx, t));
                Ok(0)
            }
            FrameType::Seal => unreachable!("seal frames are not requests"),
        }
    }

    /// The open, unprepared transaction `tx`, created (with its first frame in segment `seq`) if absent;
    /// `None` if it is prepared.
    fn open_tx(&mut self, tx: u64, seq: u64, undo: &mut Vec<Undo>) -> Option<&mut Staged> {
        let t = self.txs.entry(tx).or_insert_with(|| {
            undo.push(Undo::TxCreated(tx));
            Staged { first_seq: seq, ..Staged::default() }
        });
        if t.prepared.is_some() {
            return None;
        }
        Some(t)
    }

    /// Reverts `undo` (newest first).
    pub fn revert(&mut self, undo: Vec<Undo>) {
        for step in undo.into_iter().rev() {
            match step {
                Undo::Indexed(id, before) => {
                    match before {
                        Some(r) => self.index.insert(id, r),
                        None => self.index.remove(id),
                    };
                }
                Undo::TxCreated(tx) => {
                    self.txs.remove(&tx);
                }
                Undo::TxOpPushed(tx) => {
                    if let Some(t) = self.txs.get_mut(&tx) {
                        t.records.pop();
                    }
                }
                Undo::TxPrepared(tx) => {
                    if let Some(t) = self.txs.get_mut(&tx) {
                        t.prepared = None;
                    }
                }
                Undo::TxResolved(tx, t) => {
                    self.txs.insert(tx, t);
                }
                Undo::Span(first, before) => match before {
                    Some(last) => {
                        self.index.spans.insert(first, last);
                    }
                    None => {
                        self.index.spans.remove(&first);
                    }
                },
            }
        }
    }
}
