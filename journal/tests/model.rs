//! The journal against a simple in-memory model: random sequences of add/update/delete, transactions with
//! prepare/commit/rollback, sync and reopen. After every reopen the recovered records and prepared
//! transactions must equal the model's, and every call must succeed or fail exactly as the model says.

use std::collections::BTreeMap;

use keel_journal::{AppendError, Journal, Options, RecordRef, SyncPolicy, TxId, TxOp};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Add(u64, u8, usize),
    Update(u64, u8, usize),
    Delete(u64),
    AddTx(u64, u64, usize),
    UpdateTx(u64, u64, usize),
    DeleteTx(u64, u64),
    Prepare(u64, usize),
    Commit(u64),
    Rollback(u64),
    Sync,
    Reopen,
    /// Reclaim dead segments, then read every live record back.
    Reclaim,
    /// Write a checkpoint; the next reopen starts from it.
    Checkpoint,
    /// Copy the live records of every sparse old segment forward, reclaim, and read every record back.
    Compact,
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0u64..8;
    let tx = 1u64..4;
    let len = prop_oneof![0usize..64, 900usize..3000, 10_000usize..20_000];
    prop_oneof![
        4 => (id.clone(), any::<u8>(), len.clone()).prop_map(|(i, k, l)| Op::Add(i, k, l)),
        2 => (id.clone(), any::<u8>(), len.clone()).prop_map(|(i, k, l)| Op::Update(i, k, l)),
        2 => id.clone().prop_map(Op::Delete),
        2 => (tx.clone(), id.clone(), len.clone()).prop_map(|(t, i, l)| Op::AddTx(t, i, l)),
        1 => (tx.clone(), id.clone(), len.clone()).prop_map(|(t, i, l)| Op::UpdateTx(t, i, l)),
        1 => (tx.clone(), id.clone()).prop_map(|(t, i)| Op::DeleteTx(t, i)),
        1 => (tx.clone(), 0usize..40).prop_map(|(t, l)| Op::Prepare(t, l)),
        1 => tx.clone().prop_map(Op::Commit),
        1 => tx.prop_map(Op::Rollback),
        1 => Just(Op::Sync),
        1 => Just(Op::Reopen),
        1 => Just(Op::Reclaim),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Compact),
    ]
}

/// Deterministic payload, distinct per (step, len).
fn payload(step: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (step.wrapping_mul(31) ^ i.wrapping_mul(7)) as u8).collect()
}

/// A staged record: operation, id, kind, payload.
type Staged = (TxOp, u64, u8, Vec<u8>);
/// A prepared transaction as compared: its data and staged records.
type PreparedView = BTreeMap<u64, (Vec<u8>, Vec<Staged>)>;

#[derive(Default, Debug)]
struct Tx {
    ops: Vec<Staged>,
    prepared: Option<Vec<u8>>,
}

#[derive(Default, Debug)]
struct Model {
    live: BTreeMap<u64, (u8, Vec<u8>)>,
    txs: BTreeMap<u64, Tx>,
}

#[derive(Debug, PartialEq)]
enum Expect {
    Ok,
    IdInUse,
    NoSuchRecord,
    NoSuchTx,
    TxPrepared,
}

fn classify(r: &Result<keel_journal::Lsn, AppendError>) -> Expect {
    match r {
        Ok(_) => Expect::Ok,
        Err(AppendError::IdInUse(_)) => Expect::IdInUse,
        Err(AppendError::NoSuchRecord(_)) => Expect::NoSuchRecord,
        Err(AppendError::NoSuchTx(_)) => Expect::NoSuchTx,
        Err(AppendError::TxPrepared(_)) => Expect::TxPrepared,
        Err(e) => panic!("unexpected error {e}"),
    }
}

impl Model {
    fn staged(&mut self, tx: u64, op: TxOp, id: u64, kind: u8, p: Vec<u8>) -> Expect {
        let t = self.txs.entry(tx).or_default();
        if t.prepared.is_some() {
            return Expect::TxPrepared;
        }
        t.ops.push((op, id, kind, p));
        Expect::Ok
    }

    fn apply(&mut self, op: &Op, step: usize) -> Expect {
        match *op {
            Op::Add(id, k, l) => {
                if self.live.contains_key(&id) {
                    return Expect::IdInUse;
                }
                self.live.insert(id, (k, payload(step, l)));
                Expect::Ok
            }
            Op::Update(id, k, l) => match self.live.get_mut(&id) {
                None => Expect::NoSuchRecord,
                Some(v) => {
                    *v = (k, payload(step, l));
                    Expect::Ok
                }
            },
            Op::Delete(id) => match self.live.remove(&id) {
                None => Expect::NoSuchRecord,
                Some(_) => Expect::Ok,
            },
            Op::AddTx(tx, id, l) => self.staged(tx, TxOp::Add, id, 1, payload(step, l)),
            Op::UpdateTx(tx, id, l) => self.staged(tx, TxOp::Update, id, 2, payload(step, l)),
            Op::DeleteTx(tx, id) => self.staged(tx, TxOp::Delete, id, 0, Vec::new()),
            Op::Prepare(tx, l) => {
                let t = self.txs.entry(tx).or_default();
                if t.prepared.is_some() {
                    return Expect::TxPrepared;
                }
                t.prepared = Some(payload(step, l));
                Expect::Ok
            }
            Op::Commit(tx) => match self.txs.remove(&tx) {
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
            Op::Rollback(tx) => match self.txs.remove(&tx) {
                None => Expect::NoSuchTx,
                Some(_) => Expect::Ok,
            },
            Op::Sync | Op::Reopen | Op::Reclaim | Op::Checkpoint | Op::Compact => Expect::Ok,
        }
    }
}

/// How the test appends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Encrypted,
    /// Encrypted, and each run of record operations is submitted at once (`*_async`) and only then waited
    /// for, so that it forms one batch (one sealed unit): refused operations fall in the middle of a
    /// batch, and the writer's model, undo and LSNs must still agree with the model here.
    EncryptedBatched,
}

fn options(sync: SyncPolicy, mode: Mode) -> Options {
    let keys = (mode != Mode::Plain)
        .then(|| keel_journal::crypto::keys::KeyRing::parse(&format!("1:{}", "5a".repeat(32)), "test").unwrap());
    let max_batch_wait = match mode {
        Mode::EncryptedBatched => std::time::Duration::from_millis(5),
        _ => std::time::Duration::ZERO,
    };
    // Maintenance off: reclaim runs exactly where the op sequence says, so failures replay.
    Options { segment_bytes: 64 * 1024, sync, keys, max_batch_wait, auto_maintenance: false, ..Options::default() }
}

/// Compares one operation's outcome with the model's.
fn settle(model: &mut Model, last_lsn: &mut u64, step: usize, op: &Op, result: Result<keel_journal::Lsn, AppendError>) {
    let expected = model.apply(op, step);
    assert_eq!(classify(&result), expected, "step {step}: {op:?}");
    if let Ok(lsn) = result {
        if !matches!(op, Op::Sync) {
            assert!(lsn.0 > *last_lsn, "LSNs increase");
            *last_lsn = lsn.0;
        }
    }
}

fn check_recovered(model: &mut Model, recovered: &keel_journal::Recovered, read: &dyn Fn(&RecordRef) -> Vec<u8>) {
    // Transactions neither committed nor prepared were rolled back by recovery.
    model.txs.retain(|_, t| t.prepared.is_some());
    let got: BTreeMap<u64, (u8, Vec<u8>)> = recovered.records.iter().map(|(id, r)| (*id, (r.kind, read(r)))).collect();
    assert_eq!(got, model.live, "live records after reopen");
    let got_prepared: PreparedView = recovered
        .prepared
        .iter()
        .map(|p| {
            let ops = p
                .records
                .iter()
                .map(|r| (r.op, r.id, r.record.kind, if r.op == TxOp::Delete { Vec::new() } else { read(&r.record) }))
                .collect();
            (p.tx.get(), (p.data.clone(), ops))
        })
        .collect();
    let want_prepared: PreparedView =
        model.txs.iter().map(|(tx, t)| (*tx, (t.prepared.clone().unwrap(), t.ops.clone()))).collect();
    assert_eq!(got_prepared, want_prepared, "prepared transactions after reopen");
}

fn run(ops: Vec<Op>, sync: SyncPolicy, mode: Mode) {
    let options = |sync| options(sync, mode);
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::default();
    let (mut journal, recovered) = Journal::open(dir.path(), options(sync)).unwrap();
    assert!(recovered.records.is_empty());
    let mut last_lsn = 0u64;
    let mut checkpointed = false;
    let mut batch: Vec<(usize, &Op, keel_journal::Pending)> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        let tx = |t: u64| TxId::new(t).unwrap();
        if mode == Mode::EncryptedBatched {
            let submitted = match *op {
                Op::Add(id, k, l) => Some(journal.add_async(id, k, &payload(step, l))),
                Op::Update(id, k, l) => Some(journal.update_async(id, k, &payload(step, l))),
                Op::Delete(id) => Some(journal.delete_async(id)),
                Op::AddTx(t, id, l) => Some(journal.add_tx_async(tx(t), id, 1, &payload(step, l))),
                Op::UpdateTx(t, id, l) => Some(journal.update_tx_async(tx(t), id, 2, &payload(step, l))),
                Op::DeleteTx(t, id) => Some(journal.delete_tx_async(tx(t), id)),
                Op::Prepare(t, l) => Some(journal.prepare_async(tx(t), &payload(step, l))),
                Op::Commit(t) => Some(journal.commit_async(tx(t))),
                Op::Rollback(t) => Some(journal.rollback_async(tx(t))),
                _ => None,
            };
            if let Some(p) = submitted {
                batch.push((step, op, p));
                continue;
            }
        }
        for (step, op, p) in batch.drain(..) {
            settle(&mut model, &mut last_lsn, step, op, p.wait());
        }
        let result = match *op {
            Op::Add(id, k, l) => journal.add(id, k, &payload(step, l)),
            Op::Update(id, k, l) => journal.update(id, k, &payload(step, l)),
            Op::Delete(id) => journal.delete(id),
            Op::AddTx(t, id, l) => journal.add_tx(tx(t), id, 1, &payload(step, l)),
            Op::UpdateTx(t, id, l) => journal.update_tx(tx(t), id, 2, &payload(step, l)),
            Op::DeleteTx(t, id) => journal.delete_tx(tx(t), id),
            Op::Prepare(t, l) => journal.prepare(tx(t), &payload(step, l)),
            Op::Commit(t) => journal.commit(tx(t)),
            Op::Rollback(t) => journal.rollback(tx(t)),
            Op::Sync => journal.sync(),
            Op::Checkpoint => {
                checkpointed |= journal.checkpoint().unwrap().is_some();
                continue;
            }
            Op::Reclaim | Op::Compact => {
                // Reclaiming the checkpoint's resume segment supersedes it (open then scans, rightly).
                checkpointed = false;
                if matches!(op, Op::Compact) {
                    journal.compact(&keel_journal::CompactionPolicy::offline()).unwrap();
                } else {
                    journal.reclaim().unwrap();
                }
                for (id, (kind, p)) in &model.live {
                    assert_eq!(journal.get(*id).unwrap().kind, *kind, "step {step}: kind of {id}");
                    assert_eq!(&journal.read(*id).unwrap(), p, "step {step}: payload of {id} after reclaim");
                }
                continue;
            }
            Op::Reopen => {
                drop(journal);
                let (j, recovered) = Journal::open(dir.path(), options(sync)).unwrap();
                journal = j;
                assert!(recovered.report.torn_tail.is_none(), "a clean close leaves no torn tail");
                assert!(
                    recovered.report.checkpoints_rejected.is_empty(),
                    "{:?}",
                    recovered.report.checkpoints_rejected
                );
                if checkpointed {
                    assert!(recovered.report.checkpoint.is_some(), "step {step}: reopen starts from the checkpoint");
                }
                check_recovered(&mut model, &recovered, &|r| journal.read_version(r).unwrap());
                continue;
            }
        };
        settle(&mut model, &mut last_lsn, step, op, result);
    }
    for (step, op, p) in batch.drain(..) {
        settle(&mut model, &mut last_lsn, step, op, p.wait());
    }
    drop(journal);
    let (j, recovered) = Journal::open(dir.path(), options(sync)).unwrap();
    check_recovered(&mut model, &recovered, &|r| j.read_version(r).unwrap());
    // And the read-only inspection of the tools sees the same.
    drop(j);
    let inspection = keel_journal::inspect::inspect(
        dir.path(),
        keel_journal::RecoveryMode::Strict,
        options(sync).keys.as_ref(),
        &mut |_| {},
    )
    .unwrap();
    check_recovered(&mut model, &inspection.recovered, &|r| inspection.reader.read(r).unwrap());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn journal_matches_model_sync_always(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops, SyncPolicy::Always, Mode::Plain);
    }

    #[test]
    fn journal_matches_model_sync_never(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops, SyncPolicy::Never, Mode::Plain);
    }

    #[test]
    fn journal_matches_model_encrypted(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops, SyncPolicy::Always, Mode::Encrypted);
    }

    #[test]
    fn journal_matches_model_encrypted_batched(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops, SyncPolicy::Always, Mode::EncryptedBatched);
    }
}
