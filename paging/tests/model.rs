//! The paging store against a model queue: producers (plain and transactional), two subscriptions
//! receiving, acknowledging and negatively acknowledging, transactions committed, rolled back and prepared,
//! and reopen — checked after every step: every message delivered at least once, an acknowledged one never
//! again, order kept per subscription, and exact pending counts.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use keel_journal::TxId;
use keel_paging::{Paging, Sent};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Send(usize),
    SendTx(usize, usize),
    Begin,
    Commit(usize),
    Rollback(usize),
    Prepare(usize),
    Receive(usize),
    Ack(usize, usize),
    AckAll(usize),
    Nack(usize, usize),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let len = prop_oneof![8usize..200, 1000usize..3000, 20_000usize..40_000];
    prop_oneof![
        6 => len.clone().prop_map(Op::Send),
        2 => (any::<usize>(), len).prop_map(|(t, l)| Op::SendTx(t, l)),
        1 => Just(Op::Begin),
        1 => any::<usize>().prop_map(Op::Commit),
        1 => any::<usize>().prop_map(Op::Rollback),
        1 => any::<usize>().prop_map(Op::Prepare),
        8 => (0usize..2).prop_map(Op::Receive),
        4 => (0usize..2, any::<usize>()).prop_map(|(s, k)| Op::Ack(s, k)),
        1 => (0usize..2).prop_map(Op::AckAll),
        2 => (0usize..2, any::<usize>()).prop_map(|(s, k)| Op::Nack(s, k)),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TxState {
    Open,
    Prepared,
    Committed,
    RolledBack,
}

#[derive(Default)]
struct SubModel {
    acked: BTreeSet<u64>,
    in_flight: BTreeSet<u64>,
    nacked: BTreeSet<u64>,
    /// The highest sequence number delivered fresh (not as a redelivery) since the last reopen.
    last_fresh: Option<u64>,
}

struct Model {
    /// seq → (payload, tx)
    messages: BTreeMap<u64, (Vec<u8>, u64)>,
    txs: BTreeMap<u64, TxState>,
    next_tx: u64,
    subs: [SubModel; 2],
}

impl Model {
    fn visible(&self, seq: u64) -> bool {
        match self.messages[&seq].1 {
            0 => true,
            tx => self.txs[&tx] == TxState::Committed,
        }
    }
    fn undecided(&self, seq: u64) -> bool {
        match self.messages[&seq].1 {
            0 => false,
            tx => matches!(self.txs[&tx], TxState::Open | TxState::Prepared),
        }
    }
    fn pending(&self, s: usize) -> (u64, u64) {
        let sub = &self.subs[s];
        let mut n = (0, 0);
        for (&seq, (p, _)) in &self.messages {
            if self.visible(seq) && !sub.acked.contains(&seq) {
                n.0 += 1;
                n.1 += p.len() as u64;
            }
        }
        n
    }
    /// What the subscription must deliver next: the lowest negatively acknowledged message, else the
    /// lowest visible message neither acknowledged nor in flight — unless an undecided one comes first.
    fn next_delivery(&self, s: usize) -> Option<u64> {
        let sub = &self.subs[s];
        if let Some(&seq) = sub.nacked.first() {
            return Some(seq);
        }
        for &seq in self.messages.keys() {
            if self.undecided(seq) {
                return None;
            }
            if self.visible(seq) && !sub.acked.contains(&seq) && !sub.in_flight.contains(&seq) {
                return Some(seq);
            }
        }
        None
    }
}

fn payload(seq_hint: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u64 ^ seq_hint.wrapping_mul(0x9E37)) as u8).collect()
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let (mut paging, _): (Paging, _) = common::open(dir.path(), common::always_paged());
    let names = ["s0", "s1"];
    {
        let a = paging.address("q").unwrap();
        a.subscribe(names[0]).unwrap();
        a.subscribe(names[1]).unwrap();
    }
    let mut m = Model { messages: BTreeMap::new(), txs: BTreeMap::new(), next_tx: 1, subs: Default::default() };
    for (step, op) in ops.into_iter().enumerate() {
        let a = paging.address("q").unwrap();
        let open_txs: Vec<u64> = m.txs.iter().filter(|(_, s)| **s == TxState::Open).map(|(t, _)| *t).collect();
        let prepared: Vec<u64> = m.txs.iter().filter(|(_, s)| **s == TxState::Prepared).map(|(t, _)| *t).collect();
        let undecided: Vec<u64> = open_txs.iter().chain(&prepared).copied().collect();
        match op {
            Op::Send(len) => {
                let p = payload(step as u64, len);
                let Sent::Paged(seq) = a.send(&p, None).unwrap() else { panic!("max_size_bytes 0 pages everything") };
                prop_assert_eq!(seq, m.messages.len() as u64);
                m.messages.insert(seq, (p, 0));
            }
            Op::SendTx(k, len) if !open_txs.is_empty() => {
                let tx = open_txs[k % open_txs.len()];
                let p = payload(step as u64, len);
                let Sent::Paged(seq) = a.send(&p, TxId::new(tx)).unwrap() else { panic!("transactional sends page") };
                m.messages.insert(seq, (p, tx));
            }
            Op::Begin => {
                m.txs.insert(m.next_tx, TxState::Open);
                m.next_tx += 1;
            }
            Op::Commit(k) if !undecided.is_empty() => {
                let tx = undecided[k % undecided.len()];
                let sent = m.messages.values().any(|(_, t)| *t == tx);
                if sent || m.txs[&tx] == TxState::Prepared {
                    paging.commit(TxId::new(tx).unwrap()).unwrap();
                    m.txs.insert(tx, TxState::Committed);
                } else {
                    // The journal knows no transaction that holds nothing.
                    m.txs.remove(&tx);
                }
            }
            Op::Rollback(k) if !undecided.is_empty() => {
                let tx = undecided[k % undecided.len()];
                let sent = m.messages.values().any(|(_, t)| *t == tx);
                if sent || m.txs[&tx] == TxState::Prepared {
                    paging.rollback(TxId::new(tx).unwrap()).unwrap();
                    m.txs.insert(tx, TxState::RolledBack);
                } else {
                    m.txs.remove(&tx);
                }
            }
            Op::Prepare(k) if !open_txs.is_empty() => {
                let tx = open_txs[k % open_txs.len()];
                if m.messages.values().any(|(_, t)| *t == tx) {
                    paging.journal().prepare(TxId::new(tx).unwrap(), b"xid").unwrap();
                    m.txs.insert(tx, TxState::Prepared);
                }
            }
            Op::Receive(s) => {
                let sub = a.subscription(names[s]).unwrap();
                let expect = m.next_delivery(s);
                let got = sub.receive().unwrap();
                prop_assert_eq!(got.as_ref().map(|d| d.seq), expect, "step {}: delivery to {}", step, names[s]);
                let sm = &mut m.subs[s];
                if let Some(d) = got {
                    let (p, _) = &m.messages[&d.seq];
                    prop_assert_eq!(&d.payload[..], &p[..], "step {}: payload of {}", step, d.seq);
                    if !sm.nacked.remove(&d.seq) {
                        if let Some(last) = sm.last_fresh {
                            prop_assert!(d.seq > last, "step {}: {} after {}: out of order", step, d.seq, last);
                        }
                        sm.last_fresh = Some(d.seq);
                    } else {
                        prop_assert!(d.redelivered);
                    }
                    sm.in_flight.insert(d.seq);
                }
            }
            Op::Ack(s, k) if !m.subs[s].in_flight.is_empty() => {
                let sm = &mut m.subs[s];
                let seq = *sm.in_flight.iter().nth(k % sm.in_flight.len()).unwrap();
                a.subscription(names[s]).unwrap().ack(seq).unwrap();
                sm.in_flight.remove(&seq);
                sm.acked.insert(seq);
            }
            Op::AckAll(s) if !m.subs[s].in_flight.is_empty() => {
                let sm = &mut m.subs[s];
                let seqs: Vec<u64> = sm.in_flight.iter().copied().collect();
                a.subscription(names[s]).unwrap().ack_many(&seqs).unwrap();
                sm.acked.extend(seqs);
                sm.in_flight.clear();
            }
            Op::Nack(s, k) if !m.subs[s].in_flight.is_empty() => {
                let sm = &mut m.subs[s];
                let seq = *sm.in_flight.iter().nth(k % sm.in_flight.len()).unwrap();
                a.subscription(names[s]).unwrap().nack(seq).unwrap();
                sm.in_flight.remove(&seq);
                sm.nacked.insert(seq);
            }
            Op::Reopen => {
                drop(a);
                drop(paging);
                let (p, rec) = common::open(dir.path(), common::always_paged());
                paging = p;
                // Open transactions are rolled back by the journal's recovery; prepared ones stay.
                for st in m.txs.values_mut() {
                    if *st == TxState::Open {
                        *st = TxState::RolledBack;
                    }
                }
                let in_doubt: BTreeSet<u64> = rec.prepared.iter().map(|p| p.tx.get()).collect();
                let want: BTreeSet<u64> =
                    m.txs.iter().filter(|(_, s)| **s == TxState::Prepared).map(|(t, _)| *t).collect();
                prop_assert_eq!(in_doubt, want);
                for sm in &mut m.subs {
                    sm.in_flight.clear();
                    sm.nacked.clear();
                    sm.last_fresh = None;
                }
                continue;
            }
            _ => {}
        }
        for (s, name) in names.iter().enumerate() {
            let sub = a.subscription(name).unwrap();
            let p = sub.pending();
            prop_assert_eq!((p.messages, p.bytes), m.pending(s), "step {}: pending counts of {}", step, name);
        }
        // Pages hold nothing every subscription has acknowledged, beyond the newest page.
        // (A floor from acknowledgements alone; the store's also passes rolled-back messages, so it is higher.)
        let floor = (0..2).map(|s| (0..).find(|x| !m.subs[s].acked.contains(x)).unwrap()).min().unwrap();
        let pages = a.pages();
        if pages.len() > 1 {
            prop_assert!(pages[0].end_seq > floor, "step {}: page {:?} kept below floor {}", step, pages[0], floor);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn paging_matches_a_model_queue(ops in proptest::collection::vec(op(), 1..120)) {
        run(ops)?;
    }
}
