//! What the journal must hold: live records and transactions, as a pure function of the operations it
//! accepted, and the set of states a recovery may legitimately return.

use std::collections::BTreeMap;
use std::sync::Arc;

use keel_journal::TxOp;

pub type Payload = Arc<[u8]>;

/// One record operation, as the driver issued it.
#[derive(Clone, Debug)]
pub enum Op {
    Add(u64, u8, Payload),
    Update(u64, u8, Payload),
    Delete(u64),
    AddTx(u64, u64, u8, Payload),
    UpdateTx(u64, u64, u8, Payload),
    DeleteTx(u64, u64),
    Prepare(u64, Payload),
    Commit(u64),
    Rollback(u64),
}

/// A staged record: operation, id, kind, payload (empty for a delete, whose kind is 0).
pub type Staged = (TxOp, u64, u8, Payload);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tx {
    pub ops: Vec<Staged>,
    pub prepared: Option<Payload>,
}

/// How the journal must answer an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Ok,
    IdInUse,
    NoSuchRecord,
    NoSuchTx,
    TxPrepared,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub live: BTreeMap<u64, (u8, Payload)>,
    pub txs: BTreeMap<u64, Tx>,
}

impl State {
    fn stage(&mut self, tx: u64, staged: Staged) -> Expect {
        let t = self.txs.entry(tx).or_default();
        if t.prepared.is_some() {
            return Expect::TxPrepared;
        }
        t.ops.push(staged);
        Expect::Ok
    }

    /// Applies `op` if the journal must accept it, and says how the journal must answer.
    pub fn apply(&mut self, op: &Op) -> Expect {
        match op {
            Op::Add(id, k, p) => {
                if self.live.contains_key(id) {
                    return Expect::IdInUse;
                }
                self.live.insert(*id, (*k, p.clone()));
                Expect::Ok
            }
            Op::Update(id, k, p) => match self.live.get_mut(id) {
                None => Expect::NoSuchRecord,
                Some(v) => {
                    *v = (*k, p.clone());
                    Expect::Ok
                }
            },
            Op::Delete(id) => match self.live.remove(id) {
                None => Expect::NoSuchRecord,
                Some(_) => Expect::Ok,
            },
            Op::AddTx(tx, id, k, p) => self.stage(*tx, (TxOp::Add, *id, *k, p.clone())),
            Op::UpdateTx(tx, id, k, p) => self.stage(*tx, (TxOp::Update, *id, *k, p.clone())),
            Op::DeleteTx(tx, id) => self.stage(*tx, (TxOp::Delete, *id, 0, Payload::from(&[][..]))),
            Op::Prepare(tx, data) => {
                let t = self.txs.entry(*tx).or_default();
                if t.prepared.is_some() {
                    return Expect::TxPrepared;
                }
                t.prepared = Some(data.clone());
                Expect::Ok
            }
            Op::Commit(tx) => match self.txs.remove(tx) {
                None => Expect::NoSuchTx,
                Some(t) => {
                    for (op, id, kind, p) in t.ops {
                        match op {
                            TxOp::Delete => {
                                self.live.remove(&id);
                            }
                            _ => {
                                self.live.insert(id, (kind, p));
                            }
                        }
                    }
                    Expect::Ok
                }
            },
            Op::Rollback(tx) => match self.txs.remove(tx) {
                None => Expect::NoSuchTx,
                Some(_) => Expect::Ok,
            },
        }
    }

    /// What recovery leaves of this state: transactions neither committed nor prepared are rolled back.
    pub fn recovered(mut self) -> State {
        self.txs.retain(|_, t| t.prepared.is_some());
        self
    }
}

/// The operations since the last recovery, split by what is known of their durability:
///
/// `base` + `durable[..last_group]` is certainly durable; `durable[last_group..]` is the last sync group
/// that was acknowledged (durable, but a bit flip there reads as a torn write, which the format allows
/// recovery to discard); `pending` were written and not yet acknowledged (each may or may not survive a
/// crash, but only as a prefix: recovery never keeps a later one without the earlier ones).
#[derive(Clone, Debug, Default)]
pub struct History {
    pub base: State,
    pub durable: Vec<Op>,
    pub last_group: usize,
    pub pending: Vec<Op>,
}

impl History {
    /// An operation was written; not yet known durable.
    pub fn written(&mut self, op: Op) {
        self.pending.push(op);
    }

    /// Everything written so far was acknowledged durable, as one sync group (older groups fold into
    /// `base`, which keeps the history short).
    pub fn acknowledged(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        for op in self.durable.drain(..) {
            self.base.apply(&op);
        }
        self.durable = std::mem::take(&mut self.pending);
        self.last_group = 0;
    }

    /// The states recovery may return: `base` plus each prefix of the operations since, from the first
    /// that keeps everything acknowledged (or, with `torn_allowed`, everything before the last acknowledged
    /// sync group) to all of them. Each with its prefix length.
    pub fn candidates(&self, torn_allowed: bool) -> Vec<(usize, State)> {
        let min = if torn_allowed { self.last_group } else { self.durable.len() };
        let mut state = self.base.clone();
        let mut out = Vec::new();
        for (k, op) in self.durable.iter().chain(&self.pending).enumerate() {
            if k >= min {
                out.push((k, state.clone().recovered()));
            }
            state.apply(op);
        }
        out.push((self.durable.len() + self.pending.len(), state.recovered()));
        out
    }

    /// The history after a recovery that kept the first `k` operations: those before the last
    /// acknowledged sync group are certain; the rest stay the last sync group, since their frames' sync
    /// markers still say so (an open's fdatasync of the tail it resumes writes no frame that could prove
    /// it, and neither does a clean close), until a later acknowledged write follows them.
    pub fn recovered(&self, k: usize) -> History {
        let ops: Vec<&Op> = self.durable.iter().chain(&self.pending).collect();
        let mut base = self.base.clone();
        let cut = self.last_group.min(k);
        for op in &ops[..cut] {
            base.apply(op);
        }
        let mut durable: Vec<Op> = ops[cut..k].iter().map(|op| (*op).clone()).collect();
        // Recovery logs a rollback of every transaction it found neither committed nor prepared.
        let mut state = base.clone();
        for op in &durable {
            state.apply(op);
        }
        durable.extend(state.txs.iter().filter(|(_, t)| t.prepared.is_none()).map(|(tx, _)| Op::Rollback(*tx)));
        History { base, durable, last_group: 0, pending: Vec::new() }
    }
}
