//! Paging under the simulator: one seeded run of sends (alone and in transactions), subscriptions made
//! and removed, receives, acknowledgements, crashes, faults and reopens with changing options, with the
//! journal that holds paging's cursors on the same simulated disk, and pages on the volume or (a run in
//! three) uploaded to an object store.
//!
//! The oracle, after every open: every message whose send returned is delivered to every subscription
//! that existed when it was sent, once its transaction committed, until that subscription acknowledged
//! it; no acknowledged message comes back; no message of a rolled-back transaction, and no message whose
//! send failed without leaving its outcome open, is ever delivered; prepared transactions are exactly
//! those left prepared. Or the open of an address refuses, naming a page the simulator damaged (a bit
//! flip in the newest page's last write may instead be cut off as a torn tail, losing that write: the
//! format cannot tell the two apart). An operation's outcome is open only when a fault that makes
//! durability unknown (a power loss inside it, a failed fsync) hit it; the next open settles it. While
//! running, every delivery is checked the same way. Every error must be explained by an injected fault.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use keel_journal::crypto::keys::KeyRing;
use keel_journal::{Journal, Options, SyncPolicy, TxId};
use keel_paging::{Paging, PagingError, PagingOptions, RemotePages, Sent};
use keel_s3::dir::DirStore;
use keel_s3::AnyStore;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::disk::{Faults, Flip, SimDisk};
use crate::harness::{self, Events, Profile, Stats, Violation, Watchdog};

const ADDRESSES: [&str; 2] = ["orders", "events"];
const SUBSCRIPTIONS: [&str; 3] = ["s1", "s2", "s3"];
/// Journal transaction ids come from a small set, so that an id is used again once its transaction
/// ended: legitimate for a broker whose counter restarts (issue 31, defect 4).
const TX_IDS: u64 = 5;

/// Whether something an operation did is on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// It returned: durable.
    Done,
    /// A fault hit it: the next open shows whether it landed.
    Open,
}

#[derive(Debug)]
struct Msg {
    address: usize,
    /// Known once the send returned, or once a delivery showed it.
    seq: Option<u64>,
    payload: Vec<u8>,
    /// The transaction that sent it (a key of `Model::txs`).
    tx: Option<u64>,
    outcome: Outcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TxState {
    Open,
    Prepared,
    /// Its prepare failed under a fault: prepared or rolled back, the next open says.
    MaybePrepared,
    Committed,
    /// Its commit failed under a fault: committed or not, the next open (and what it delivers) says.
    MaybeCommitted,
    RolledBack,
}

#[derive(Debug)]
struct SimTx {
    id: u64,
    state: TxState,
    /// Its prepare returned: an open can no longer roll it back.
    was_prepared: bool,
    messages: Vec<u64>,
}

#[derive(Debug, Default)]
struct SubModel {
    /// Its first message: every one numbered from here on is for it. Known once subscribe returned (or an
    /// open showed the subscription).
    start: Option<u64>,
    outcome: Option<Outcome>,
    in_flight: BTreeSet<u64>,
    acked: BTreeSet<u64>,
    /// Acknowledgements a fault hit: the next open shows whether they landed.
    maybe_acked: BTreeSet<u64>,
}

#[derive(Debug, Default)]
struct AddrModel {
    outcome: Option<Outcome>,
    subs: BTreeMap<usize, SubModel>,
}

/// What was acknowledged to the caller, by message tag (each payload begins with its tag).
#[derive(Debug, Default)]
struct Model {
    next_tag: u64,
    messages: BTreeMap<u64, Msg>,
    /// Messages that must never be delivered: their send failed, their transaction rolled back, or an
    /// open showed that they did not land.
    gone: BTreeSet<u64>,
    addresses: [AddrModel; 2],
    /// By transaction key (never reused); `id` is the journal's id, which is.
    txs: BTreeMap<u64, SimTx>,
    next_tx: u64,
}

impl Model {
    fn visible(&self, m: &Msg) -> bool {
        m.tx.is_none_or(|t| self.txs[&t].state == TxState::Committed)
    }

    fn live_tx_ids(&self) -> BTreeSet<u64> {
        let live = |s: TxState| !matches!(s, TxState::Committed | TxState::RolledBack);
        self.txs.values().filter(|t| live(t.state)).map(|t| t.id).collect()
    }
}

struct Sim {
    seed: u64,
    rng: ChaCha8Rng,
    disk: Arc<SimDisk>,
    root: PathBuf,
    store: Option<AnyStore>,
    paging: Option<Paging>,
    keys: u32,
    model: Model,
    /// The most messages the last write to each address can have held: one for a lone send, a burst's
    /// sends for a burst (a torn cut of a damaged last write may lose them all).
    last_write: [usize; 2],
    /// The number each address gives its next message, while known: a new subscription starts there.
    next_seq: [Option<u64>; 2],
    /// Sends are in flight on other threads (a subscription's start is then theirs to move).
    in_burst: bool,
    /// Addresses whose newest page's damaged last write an open cut off as a torn tail, not yet checked.
    torn_damaged: BTreeSet<usize>,
    /// The open consumed an armed read error.
    read_eio_hit: bool,
    /// Each created address's directory.
    address_dirs: BTreeMap<usize, PathBuf>,
    /// Bit flips not yet reported, with the address directory of each.
    damage: Vec<(PathBuf, Flip)>,
    /// A fault is armed that may leave an operation's outcome open (power loss, fsync failure).
    unsure: bool,
    disk_full: bool,
    /// An operation failed in a way that needs a restart: the next step closes or crashes.
    restart: bool,
    profile: Profile,
    stats: Stats,
    step: u64,
    events: Events,
}

/// Runs one seeded simulation of about `ops` paging operations.
pub fn run(seed: u64, ops: u64, profile: Profile) -> Result<Stats, Violation> {
    harness::supervised("paging", seed, move |watchdog| run_inner(seed, ops, profile, watchdog))
}

fn run_inner(seed: u64, ops: u64, profile: Profile, watchdog: Watchdog) -> Result<Stats, Violation> {
    let tmp = tempfile::tempdir().expect("tempdir for the journal's LOCK file and the object store");
    // The journal's LOCK file is a real one (the disk models everything else).
    std::fs::create_dir(tmp.path().join("journal")).expect("a directory for the journal's LOCK file");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let store = rng.random_bool(0.3).then(|| {
        let dir = DirStore::open(tmp.path().join("objects")).expect("a directory object store");
        AnyStore::Dir(dir)
    });
    let mut sim = Sim {
        seed,
        rng,
        disk: SimDisk::new(seed),
        root: tmp.path().to_path_buf(),
        store,
        paging: None,
        keys: 0,
        model: Model { next_tx: 1, ..Model::default() },
        read_eio_hit: false,
        torn_damaged: BTreeSet::new(),
        last_write: [1; 2],
        next_seq: [None; 2],
        in_burst: false,
        address_dirs: BTreeMap::new(),
        damage: Vec::new(),
        unsure: false,
        disk_full: false,
        restart: false,
        profile,
        stats: Stats::default(),
        step: 0,
        events: Events::new(watchdog),
    };
    let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.main_loop(ops))) {
        Ok(r) => r,
        Err(panic) => Err(sim.violation(format!("panic: {}", harness::panic_message(&*panic)))),
    };
    if let Some(p) = sim.paging.take() {
        sim.disk.set_faults(Faults::default());
        drop(p);
    }
    sim.stats.disk_ops = sim.disk.ops();
    result.map(|()| sim.stats.clone())
}

fn key_ring(keys: u32) -> Option<KeyRing> {
    (keys > 0).then(|| {
        let text: String = (1..=keys).map(|id| format!("{id}:{}\n", format!("{:02x}", id * 29).repeat(32))).collect();
        KeyRing::parse(&text, "sim").expect("valid key text")
    })
}

/// Why an error is acceptable, if it is.
enum Explained {
    /// A full disk refused the write; nothing of the operation landed.
    NoSpace,
    /// A power loss or failed fsync: the operation may or may not have landed; restart.
    Unsure,
}

impl Sim {
    fn log(&mut self, event: String) {
        self.events.log(self.step, event);
    }

    fn violation(&self, what: String) -> Violation {
        Violation { sim: "paging", seed: self.seed, step: self.step, what, recent: self.events.recent() }
    }

    fn paging(&self) -> &Paging {
        self.paging.as_ref().expect("open")
    }

    fn pages_dir(&self) -> PathBuf {
        self.root.join("pages")
    }

    fn main_loop(&mut self, ops: u64) -> Result<(), Violation> {
        while self.stats.ops < ops {
            self.step += 1;
            if self.paging.is_none() {
                self.open()?;
                continue;
            }
            if self.disk.frozen() {
                self.crash("frozen mid-operation");
                continue;
            }
            if self.restart {
                if self.rng.random_bool(0.5) {
                    self.crash("power loss after a fault");
                } else {
                    self.close();
                }
                continue;
            }
            match self.rng.random_range(0..1000) {
                0..=349 => self.send()?,
                350..=459 => self.receive()?,
                460..=569 => self.ack()?,
                570..=589 => self.nack()?,
                590..=614 => self.subscribe()?,
                615..=629 => self.unsubscribe()?,
                630..=699 => self.decide()?,
                700..=719 => self.free_pages()?,
                720..=759 => self.close(),
                760..=804 => self.crash("power loss"),
                805..=834 => self.arm_crash(),
                835..=854 if self.profile == Profile::Full => self.damage(),
                855..=869 if self.profile != Profile::PowerLoss => self.arm_sync_failure(),
                870..=889 if self.profile != Profile::PowerLoss => self.toggle_disk_full(),
                835..=889 => self.crash("power loss"),
                890..=939 => self.burst()?,
                _ => self.send()?,
            }
        }
        Ok(())
    }

    fn options(&mut self) -> (Options, PagingOptions) {
        let r = &mut self.rng;
        if self.keys < 2 && r.random_bool(0.1) {
            self.keys += 1;
        }
        let journal = Options {
            segment_bytes: [64 << 10, 256 << 10][r.random_range(0..2)],
            sync: SyncPolicy::Always,
            spare_segments: r.random_range(1..=2),
            auto_maintenance: r.random_bool(0.5),
            vfs: self.disk.vfs(),
            ..Options::default()
        };
        let paging = PagingOptions {
            page_bytes: [64 << 10, 128 << 10][r.random_range(0..2)],
            max_size_bytes: 0,
            read_ahead_bytes: 64 << 10,
            keys: key_ring(self.keys),
            remote: self.store.clone().map(|store| RemotePages { store, prefix: "pages/".into() }),
            vfs: self.disk.vfs(),
            ..PagingOptions::default()
        };
        (journal, paging)
    }

    /// An error is allowed only while a fault is armed that explains it.
    fn explain(&mut self, what: &str, e: &dyn std::fmt::Display) -> Result<Explained, Violation> {
        let text = e.to_string();
        self.log(format!("{what} failed: {text}"));
        // An armed fault explains only the error it causes: EIO (a frozen disk, a failed sync).
        if self.disk.frozen() || (self.unsure && text.contains("Input/output error")) {
            self.restart = true;
            return Ok(Explained::Unsure);
        }
        if self.disk_full && text.contains("No space left") {
            return Ok(Explained::NoSpace);
        }
        Err(self.violation(format!("{what} failed with no fault injected: {text}")))
    }

    fn open(&mut self) -> Result<(), Violation> {
        self.disk.collect_garbage();
        let (joptions, poptions) = self.options();
        self.log(format!(
            "open segment_bytes={} maintenance={} page_bytes={} keys={} remote={}",
            joptions.segment_bytes,
            joptions.auto_maintenance,
            poptions.page_bytes,
            self.keys,
            poptions.remote.is_some()
        ));
        self.stats.opens += 1;
        let mut read_eio = None;
        if self.profile == Profile::Full && self.rng.random_bool(0.05) {
            read_eio = self.pick_page_name();
            if let Some(name) = &read_eio {
                self.log(format!("arm: EIO on the next read of {name}"));
                self.disk.set_faults(Faults { read_eio: Some(name.clone()), ..Faults::default() });
            }
        }
        let armed = self.unsure || self.disk_full;
        let opened = Journal::open(self.root.join("journal"), joptions).map_err(|e| e.to_string()).and_then(
            |(journal, recovered)| {
                let prepared = recovered.prepared;
                Paging::open(self.pages_dir(), Arc::new(journal), &prepared, poptions)
                    .map(|p| (p, prepared))
                    .map_err(|e| e.to_string())
            },
        );
        // An armed read error is consumed by the read it fails.
        self.read_eio_hit = read_eio.is_some() && self.disk.faults().read_eio.is_none();
        self.disk.set_faults(Faults::default());
        self.unsure = false;
        self.disk_full = false;
        self.restart = false;
        match opened {
            Ok((paging, prepared)) => {
                self.paging = Some(paging);
                let ids: BTreeSet<u64> = prepared.iter().map(|p| p.tx.get()).collect();
                self.check_open(&ids)
            }
            Err(e) if self.disk.frozen() || armed => {
                self.log(format!("open failed under a fault: {e}"));
                self.crash("after a failed open");
                Ok(())
            }
            Err(e) => Err(self.violation(format!("open failed with no fault injected: {e}"))),
        }
    }

    /// Settles every open outcome against what the open recovered, and checks every subscription's
    /// deliveries against the model.
    fn check_open(&mut self, prepared: &BTreeSet<u64>) -> Result<(), Violation> {
        // Transactions: the journal rolled back those not prepared; prepared ones are decided now.
        let keys: Vec<u64> = self.model.txs.keys().copied().collect();
        for key in keys {
            let tx = &self.model.txs[&key];
            let (id, state) = (tx.id, tx.state);
            let is_prepared = prepared.contains(&id);
            let now = match state {
                TxState::Open => TxState::RolledBack,
                TxState::MaybePrepared if is_prepared => TxState::Prepared,
                TxState::MaybePrepared => TxState::RolledBack,
                // Its commit failed after it was prepared: still prepared, or committed.
                TxState::MaybeCommitted if is_prepared => TxState::Prepared,
                TxState::MaybeCommitted if tx.was_prepared => TxState::Committed,
                TxState::Prepared if !is_prepared => {
                    return Err(self.violation(format!("transaction {id} was prepared; the open lost it")))
                }
                s => s,
            };
            self.model.txs.get_mut(&key).expect("listed").state = now;
        }
        let live_prepared: BTreeSet<u64> =
            self.model.txs.values().filter(|t| t.state == TxState::Prepared).map(|t| t.id).collect();
        if &live_prepared != prepared {
            return Err(self.violation(format!("prepared after open: {prepared:?}, the model: {live_prepared:?}")));
        }
        let keys: Vec<u64> =
            self.model.txs.iter().filter(|(_, t)| t.state == TxState::Prepared).map(|(&k, _)| k).collect();
        for key in keys {
            let commit = self.rng.random_bool(0.5);
            let id = TxId::new(self.model.txs[&key].id).expect("non-zero");
            let r = if commit { self.paging().commit(id) } else { self.paging().rollback(id) };
            if let Err(e) = r {
                return Err(self.violation(format!("deciding prepared transaction {id:?} after open: {e}")));
            }
            self.log(format!("prepared transaction {} {}", id.get(), if commit { "committed" } else { "rolled back" }));
            self.settle_tx(key, commit);
        }
        // Every address was recovered by the open: note each torn tail cut in a damaged page now, before
        // a refusal of another address closes the store (the next open finds the tail cut already).
        for (a, name) in ADDRESSES.iter().enumerate() {
            let Some(dir) = self.address_dir(a) else { continue };
            let Some(Ok(address)) = self.paging().addresses().into_iter().find(|(n, _)| n == name).map(|(_, x)| x)
            else {
                continue;
            };
            if let Some(t) = address.torn_tail() {
                let file = format!("{:020}.kpage", t.page);
                self.log(format!("address {name}: torn tail in page {} at {} ({} bytes)", t.page, t.offset, t.bytes));
                // The cut consumes the flips it covers.
                let covered = |(d, f): &(PathBuf, Flip)| *d == dir && f.name == file && f.offset >= t.offset;
                if self.damage.iter().any(covered) {
                    self.torn_damaged.insert(a);
                    self.damage.retain(|x| !covered(x));
                }
            }
        }
        for a in 0..ADDRESSES.len() {
            if !self.check_address(a)? {
                return Ok(());
            }
        }
        // Whatever no open revealed did not land: it can never be delivered now.
        let unsettled: Vec<u64> =
            self.model.messages.iter().filter(|(_, m)| m.outcome == Outcome::Open).map(|(&t, _)| t).collect();
        for tag in unsettled {
            self.model.messages.remove(&tag);
            self.model.gone.insert(tag);
        }
        // A flip in a page the open deleted (garbage, or after a tear) can be found no more; a page that
        // takes its name later is another.
        let vfs = self.disk.vfs();
        self.damage.retain(|(d, f)| vfs.list(d).is_ok_and(|names| names.contains(&f.name)));
        let maybe: Vec<u64> =
            self.model.txs.iter().filter(|(_, t)| t.state == TxState::MaybeCommitted).map(|(&k, _)| k).collect();
        for key in maybe {
            // None of its messages was delivered to a subscription that should have had it.
            self.settle_tx(key, false);
        }
        Ok(())
    }

    fn settle_tx(&mut self, key: u64, committed: bool) {
        let tx = self.model.txs.get_mut(&key).expect("known");
        tx.state = if committed { TxState::Committed } else { TxState::RolledBack };
        if !committed {
            for tag in tx.messages.clone() {
                self.model.messages.remove(&tag);
                self.model.gone.insert(tag);
            }
        }
    }

    /// Checks one address after an open; false if the open was refused on injected damage (the paging
    /// store was closed and the damage undone).
    fn check_address(&mut self, a: usize) -> Result<bool, Violation> {
        let name = ADDRESSES[a];
        let exists = self.paging().addresses().iter().any(|(n, _)| n == name);
        match (self.model.addresses[a].outcome, exists) {
            (None, true) => return Err(self.violation(format!("address {name} exists; it was never created"))),
            (None, false) => return Ok(true),
            (Some(Outcome::Open), false) => {
                self.model.addresses[a] = AddrModel::default();
                self.drop_messages_of(a);
                return Ok(true);
            }
            (Some(Outcome::Done), false) => {
                return Err(self.violation(format!("address {name} was created; the open lost it")))
            }
            (Some(_), true) => self.model.addresses[a].outcome = Some(Outcome::Done),
        }
        let address = match self.paging().address(name) {
            Ok(x) => x,
            Err(e) => {
                let msg = e.to_string();
                let named: Vec<(PathBuf, Flip)> = self
                    .damage
                    .iter()
                    .filter(|(d, f)| msg.contains(&d.join(&f.name).display().to_string()))
                    .cloned()
                    .collect();
                if named.is_empty() && self.read_eio_hit && msg.contains("Input/output error") {
                    self.log(format!("address {name} refused on the injected read error: {msg}"));
                    self.close();
                    return Ok(false);
                }
                if named.is_empty() {
                    return Err(self.violation(format!("address {name} refused, naming no injected damage: {msg}")));
                }
                self.log(format!("address {name} refused on damage: {msg}"));
                self.stats.refused += 1;
                self.close();
                self.undo(&named);
                return Ok(false);
            }
        };
        self.address_dirs.insert(a, address.dir().to_path_buf());
        let end = address.next_seq();
        // A flip in the newest page's last write may be cut off as a torn tail: that write is lost.
        let torn_damaged = self.torn_damaged.remove(&a);
        let lost: Vec<u64> = self
            .model
            .messages
            .iter()
            .filter(|(_, m)| m.address == a && m.outcome == Outcome::Done && m.seq.is_some_and(|s| s >= end))
            .map(|(&t, _)| t)
            .collect();
        if !lost.is_empty() {
            if !torn_damaged || lost.len() > self.last_write[a] {
                return Err(self
                    .violation(format!("address {name} ends before message {end}; sent messages {lost:?} are lost")));
            }
            self.log(format!("the damaged last write (message {lost:?}) was cut off as torn"));
            for t in lost {
                self.model.messages.remove(&t);
                self.model.gone.insert(t);
            }
        }
        self.next_seq[a] = Some(end);
        // Every subscription drained first: a delivery to one settles outcomes the others are checked by.
        let subs: Vec<usize> = self.model.addresses[a].subs.keys().copied().collect();
        let mut drained = Vec::new();
        for s in subs {
            if let Some(d) = self.drain_subscription(a, s, &address)? {
                drained.push((s, d));
            }
        }
        self.settle_from_deliveries(&drained);
        for (s, delivered) in drained {
            self.verify_subscription(a, s, delivered)?;
        }
        for (i, sub_name) in SUBSCRIPTIONS.iter().enumerate() {
            if address.subscription(sub_name).is_some() && !self.model.addresses[a].subs.contains_key(&i) {
                return Err(self.violation(format!("{name}/{sub_name} exists; it was removed or never made")));
            }
        }
        Ok(true)
    }

    fn drop_messages_of(&mut self, a: usize) {
        let tags: Vec<u64> = self.model.messages.iter().filter(|(_, m)| m.address == a).map(|(&t, _)| t).collect();
        for t in tags {
            self.model.messages.remove(&t);
            self.model.gone.insert(t);
        }
    }

    /// After an open: the subscription exists as the model says, and delivers exactly what it must.
    /// Drains a subscription after an open, checking order and payloads; `None` if it does not exist (and
    /// may not).
    fn drain_subscription(
        &mut self,
        a: usize,
        s: usize,
        address: &Arc<keel_paging::Address>,
    ) -> Result<Option<BTreeMap<u64, u64>>, Violation> {
        let label = format!("{}/{}", ADDRESSES[a], SUBSCRIPTIONS[s]);
        let Some(sub) = address.subscription(SUBSCRIPTIONS[s]) else {
            if self.model.addresses[a].subs[&s].outcome == Some(Outcome::Done) {
                return Err(self.violation(format!("{label} was subscribed; the open lost it")));
            }
            self.model.addresses[a].subs.remove(&s);
            return Ok(None);
        };
        let model_sub = self.model.addresses[a].subs.get_mut(&s).expect("listed");
        if model_sub.start.is_some_and(|st| st != sub.start()) {
            let was = model_sub.start;
            return Err(self.violation(format!("{label} started at {was:?}, after open at {}", sub.start())));
        }
        model_sub.start = Some(sub.start());
        model_sub.outcome = Some(Outcome::Done);
        model_sub.in_flight.clear();
        let mut delivered = BTreeMap::new();
        let mut last = None;
        loop {
            let d = match sub.receive() {
                Ok(Some(d)) => d,
                Ok(None) => break,
                Err(e) => return Err(self.violation(format!("{label}: receive after open: {e}"))),
            };
            if last.is_some_and(|l| d.seq <= l) {
                return Err(self.violation(format!("{label}: message {} delivered after {last:?}", d.seq)));
            }
            last = Some(d.seq);
            let tag = self.identify(&label, d.seq, &d.payload)?;
            delivered.insert(tag, d.seq);
        }
        Ok(Some(delivered))
    }

    /// Settles what deliveries after an open showed: a message some subscription got was sent, and its
    /// transaction, if undecided, committed.
    fn settle_from_deliveries(&mut self, delivered: &[(usize, BTreeMap<u64, u64>)]) {
        for (tag, seq) in delivered.iter().flat_map(|(_, d)| d.iter()) {
            let m = self.model.messages.get_mut(tag).expect("identified");
            m.outcome = Outcome::Done;
            m.seq = Some(*seq);
            if let Some(t) = m.tx {
                let tx = self.model.txs.get_mut(&t).expect("known");
                if tx.state == TxState::MaybeCommitted {
                    tx.state = TxState::Committed;
                }
            }
        }
    }

    /// After every subscription of the address was drained and the outcomes settled: each delivered
    /// exactly what it is owed.
    fn verify_subscription(&mut self, a: usize, s: usize, delivered: BTreeMap<u64, u64>) -> Result<(), Violation> {
        let label = format!("{}/{}", ADDRESSES[a], SUBSCRIPTIONS[s]);
        let model = &self.model;
        let sub_model = &model.addresses[a].subs[&s];
        let mut missing = Vec::new();
        for (&tag, m) in &model.messages {
            let for_it = m.address == a && m.seq.is_some_and(|seq| Some(seq) >= sub_model.start);
            let owed = for_it && model.visible(m) && !sub_model.acked.contains(&tag);
            let certain = m.outcome == Outcome::Done
                && m.tx.is_none_or(|t| model.txs[&t].state == TxState::Committed)
                && !sub_model.maybe_acked.contains(&tag);
            if owed && certain && !delivered.contains_key(&tag) {
                missing.push((tag, m.seq));
            }
        }
        if !missing.is_empty() {
            return Err(self.violation(format!("{label}: owed messages not delivered after open: {missing:?}")));
        }
        for (&tag, &seq) in &delivered {
            let m = &self.model.messages[&tag];
            if m.address != a || Some(seq) < self.model.addresses[a].subs[&s].start {
                return Err(self.violation(format!("{label}: delivered message {seq} (tag {tag}) is not for it")));
            }
            if self.model.addresses[a].subs[&s].acked.contains(&tag) {
                return Err(self.violation(format!("{label}: acknowledged message {seq} delivered again")));
            }
            if let Some(t) = m.tx {
                match self.model.txs[&t].state {
                    TxState::Committed => {}
                    st => return Err(self.violation(format!("{label}: message {seq} of a transaction {st:?}"))),
                }
            }
        }
        let sub_model = self.model.addresses[a].subs.get_mut(&s).expect("listed");
        for tag in std::mem::take(&mut sub_model.maybe_acked) {
            if !delivered.contains_key(&tag) {
                sub_model.acked.insert(tag);
            }
        }
        sub_model.in_flight = delivered.keys().copied().collect();
        Ok(())
    }

    /// The message a delivery carries, checked: known, not gone, with its exact payload and number.
    fn identify(&self, label: &str, seq: u64, payload: &[u8]) -> Result<u64, Violation> {
        let Some(tag) = payload.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))) else {
            return Err(self.violation(format!("{label}: message {seq} has a {}-byte payload", payload.len())));
        };
        if self.model.gone.contains(&tag) {
            return Err(self.violation(format!("{label}: message {seq} (tag {tag}) must never be delivered")));
        }
        let Some(m) = self.model.messages.get(&tag) else {
            return Err(self.violation(format!("{label}: message {seq} carries unknown tag {tag}")));
        };
        if m.payload != payload {
            return Err(self.violation(format!("{label}: message {seq} (tag {tag}) has another payload")));
        }
        if m.seq.is_some_and(|s| s != seq) {
            return Err(self.violation(format!("{label}: tag {tag} was message {:?}, now {seq}", m.seq)));
        }
        Ok(tag)
    }

    fn undo(&mut self, found: &[(PathBuf, Flip)]) {
        for (dir, f) in found {
            let undone = self.disk.unflip(dir, f);
            let how = if undone { "undone" } else { "rewritten or gone since" };
            self.log(format!("damage at {} of {}: {how}", f.offset, f.name));
        }
        self.damage.retain(|f| !found.contains(f));
    }

    // ---- operations ----

    fn address(&mut self, a: usize) -> Result<Option<Arc<keel_paging::Address>>, Violation> {
        let name = ADDRESSES[a];
        if self.model.addresses[a].outcome.is_none() {
            self.model.addresses[a].outcome = Some(Outcome::Open);
        }
        match self.paging().address(name) {
            Ok(x) => {
                if self.model.addresses[a].outcome != Some(Outcome::Done) {
                    self.log(format!("address {name} in {}", x.dir().display()));
                }
                self.model.addresses[a].outcome = Some(Outcome::Done);
                self.address_dirs.insert(a, x.dir().to_path_buf());
                Ok(Some(x))
            }
            Err(e) => {
                match self.explain(&format!("address {name}"), &e)? {
                    Explained::NoSpace if self.model.addresses[a].outcome == Some(Outcome::Open) => {
                        self.model.addresses[a].outcome = None;
                    }
                    _ => {}
                }
                Ok(None)
            }
        }
    }

    fn send(&mut self) -> Result<(), Violation> {
        self.stats.ops += 1;
        let a = self.rng.random_range(0..ADDRESSES.len());
        let Some(address) = self.address(a)? else { return Ok(()) };
        let tx = self.pick_tx_for_send();
        let tag = self.model.next_tag;
        self.model.next_tag += 1;
        let payload = self.payload(tag);
        let tx_id = tx.map(|k| TxId::new(self.model.txs[&k].id).expect("non-zero"));
        let result = address.send(&payload, tx_id);
        let mut msg = Msg { address: a, seq: None, payload, tx, outcome: Outcome::Done };
        match result {
            Ok(Sent::Paged(seq)) => {
                self.log(format!(
                    "send {} tag {tag} tx {:?} len {} -> {seq} pages {:?}",
                    ADDRESSES[a],
                    tx_id.map(|t| t.get()),
                    msg.payload.len(),
                    address.pages().iter().map(|p| (p.id, p.first_seq, p.end_seq, p.bytes)).collect::<Vec<_>>()
                ));
                if let Some(prev) = self.model.messages.values().filter(|m| m.address == a).filter_map(|m| m.seq).max()
                {
                    if seq <= prev {
                        return Err(self.violation(format!("send got number {seq}, after {prev}")));
                    }
                }
                msg.seq = Some(seq);
                self.last_write[a] = 1;
                self.next_seq[a] = Some(seq + 1);
            }
            Ok(Sent::Memory(_)) => return Err(self.violation("a send stayed in memory with max_size_bytes 0".into())),
            Err(e) => match self.explain("send", &e)? {
                Explained::NoSpace => {
                    self.model.gone.insert(tag);
                    return Ok(());
                }
                Explained::Unsure => msg.outcome = Outcome::Open,
            },
        }
        if let Some(k) = tx {
            self.model.txs.get_mut(&k).expect("picked").messages.push(tag);
        }
        self.model.messages.insert(tag, msg);
        Ok(())
    }

    /// Sends from several threads at once while this one subscribes, unsubscribes, receives and
    /// acknowledges: subscriptions made and removed while sends are in flight (issue 31, defect 3).
    fn burst(&mut self) -> Result<(), Violation> {
        let a = self.rng.random_range(0..ADDRESSES.len());
        let Some(address) = self.address(a)? else { return Ok(()) };
        let mut plans = Vec::new();
        for _ in 0..self.rng.random_range(2..=3) {
            let mut plan = Vec::new();
            for _ in 0..self.rng.random_range(1..=4) {
                let tag = self.model.next_tag;
                self.model.next_tag += 1;
                let payload = self.payload(tag);
                let msg = Msg { address: a, seq: None, payload: payload.clone(), tx: None, outcome: Outcome::Open };
                self.model.messages.insert(tag, msg);
                plan.push((tag, payload));
            }
            plans.push(plan);
        }
        self.log(format!("burst: {} senders to {}", plans.len(), ADDRESSES[a]));
        self.last_write[a] = plans.iter().map(Vec::len).sum();
        self.in_burst = true;
        let senders: Vec<_> = plans
            .into_iter()
            .map(|plan| {
                let address = address.clone();
                std::thread::spawn(move || {
                    let sent = plan.into_iter().map(|(tag, payload)| match address.send(&payload, None) {
                        Ok(Sent::Paged(seq)) => (tag, Ok(seq)),
                        Ok(Sent::Memory(_)) => (tag, Err("kept in memory".to_owned())),
                        Err(e) => (tag, Err(e.to_string())),
                    });
                    sent.collect::<Vec<_>>()
                })
            })
            .collect();
        for _ in 0..self.rng.random_range(1..=4) {
            match self.rng.random_range(0..4) {
                0 => self.subscribe()?,
                1 => self.unsubscribe()?,
                2 => self.receive()?,
                _ => self.ack()?,
            }
        }
        self.in_burst = false;
        self.next_seq[a] = None;
        for sender in senders {
            let sent = sender.join().map_err(|p| self.violation(format!("panic: {}", harness::panic_message(&*p))))?;
            for (tag, result) in sent {
                self.stats.ops += 1;
                self.settle_send(tag, result)?;
            }
        }
        Ok(())
    }

    /// What a send of the burst returned.
    fn settle_send(&mut self, tag: u64, result: Result<u64, String>) -> Result<(), Violation> {
        let seen = self.model.messages[&tag].seq;
        match result {
            Ok(seq) if seen.is_some_and(|s| s != seq) => {
                Err(self.violation(format!("tag {tag} was delivered as message {seen:?}; its send returned {seq}")))
            }
            Ok(seq) => {
                self.log(format!("burst send tag {tag} -> {seq}"));
                let a = self.model.messages[&tag].address;
                self.next_seq[a] = Some(self.next_seq[a].map_or(seq + 1, |n| n.max(seq + 1)));
                let m = self.model.messages.get_mut(&tag).expect("registered");
                m.seq = Some(seq);
                m.outcome = Outcome::Done;
                Ok(())
            }
            Err(e) => match self.explain(&format!("burst send tag {tag}"), &e)? {
                Explained::NoSpace if seen.is_some() => {
                    Err(self.violation(format!("tag {tag} was delivered as message {seen:?}; its send failed")))
                }
                Explained::NoSpace => {
                    self.model.messages.remove(&tag);
                    self.model.gone.insert(tag);
                    Ok(())
                }
                Explained::Unsure => Ok(()),
            },
        }
    }

    /// A payload that begins with its tag.
    fn payload(&mut self, tag: u64) -> Vec<u8> {
        let len = match self.rng.random_range(0..10) {
            0..=6 => self.rng.random_range(8..300),
            7 | 8 => self.rng.random_range(300..4000),
            _ => self.rng.random_range(4000..40_000),
        };
        let mut payload = vec![0u8; len];
        self.rng.fill(&mut payload[8..]);
        payload[..8].copy_from_slice(&tag.to_le_bytes());
        payload
    }

    /// A transaction to send in: an open one, a new one (with an id no live transaction has), or none.
    fn pick_tx_for_send(&mut self) -> Option<u64> {
        if self.rng.random_bool(0.6) {
            return None;
        }
        let open: Vec<u64> = self.model.txs.iter().filter(|(_, t)| t.state == TxState::Open).map(|(&k, _)| k).collect();
        if !open.is_empty() && self.rng.random_bool(0.7) {
            return Some(open[self.rng.random_range(0..open.len())]);
        }
        let live = self.model.live_tx_ids();
        let free: Vec<u64> = (1..=TX_IDS).filter(|i| !live.contains(i)).collect();
        if free.is_empty() {
            return None;
        }
        let id = free[self.rng.random_range(0..free.len())];
        let key = self.model.next_tx;
        self.model.next_tx += 1;
        self.model.txs.insert(key, SimTx { id, state: TxState::Open, was_prepared: false, messages: Vec::new() });
        Some(key)
    }

    /// Commits, rolls back or prepares a transaction that sent something.
    fn decide(&mut self) -> Result<(), Violation> {
        let ready: Vec<u64> = self
            .model
            .txs
            .iter()
            .filter(|(_, t)| matches!(t.state, TxState::Open | TxState::Prepared) && !t.messages.is_empty())
            .map(|(&k, _)| k)
            .collect();
        if ready.is_empty() {
            return Ok(());
        }
        self.stats.ops += 1;
        let key = ready[self.rng.random_range(0..ready.len())];
        let (id, state) = (TxId::new(self.model.txs[&key].id).expect("non-zero"), self.model.txs[&key].state);
        let choice = match (state, self.rng.random_range(0..10)) {
            (TxState::Open, 0..=2) => "prepare",
            (_, 0..=6) => "commit",
            _ => "rollback",
        };
        let p = self.paging();
        let r = match choice {
            "prepare" => p.journal().prepare(id, b"xa").map_err(PagingError::from),
            "commit" => p.commit(id),
            _ => p.rollback(id),
        };
        match r {
            Ok(_) => {
                self.log(format!("{choice} tx {}", id.get()));
                match choice {
                    "prepare" => {
                        let tx = self.model.txs.get_mut(&key).expect("picked");
                        tx.state = TxState::Prepared;
                        tx.was_prepared = true;
                    }
                    "commit" => self.settle_tx(key, true),
                    _ => self.settle_tx(key, false),
                }
            }
            Err(e) => {
                if let Explained::Unsure = self.explain(&format!("{choice} tx {}", id.get()), &e)? {
                    let tx = self.model.txs.get_mut(&key).expect("picked");
                    match choice {
                        "prepare" => tx.state = TxState::MaybePrepared,
                        // Prepared or open, it may have landed or not: committed, or (never prepared, or
                        // prepared and then decided by the open) not.
                        "commit" if state == TxState::Open => tx.state = TxState::MaybeCommitted,
                        "commit" => tx.state = TxState::MaybeCommitted,
                        // A rollback that may not have landed: rolled back by the open unless prepared.
                        _ if state == TxState::Prepared => tx.state = TxState::MaybePrepared,
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// A subscription that exists in the model and in the paging store, at random.
    fn pick_sub(&mut self) -> Option<(usize, usize, Arc<keel_paging::Subscription>)> {
        let subs: Vec<(usize, usize)> = (0..ADDRESSES.len())
            .flat_map(|a| self.model.addresses[a].subs.keys().map(move |&s| (a, s)))
            .filter(|&(a, s)| self.model.addresses[a].subs[&s].outcome == Some(Outcome::Done))
            .collect();
        if subs.is_empty() {
            return None;
        }
        let (a, s) = subs[self.rng.random_range(0..subs.len())];
        let address = self.paging().address(ADDRESSES[a]).ok()?;
        Some((a, s, address.subscription(SUBSCRIPTIONS[s])?))
    }

    fn receive(&mut self) -> Result<(), Violation> {
        self.stats.ops += 1;
        let Some((a, s, sub)) = self.pick_sub() else { return Ok(()) };
        let label = format!("{}/{}", ADDRESSES[a], SUBSCRIPTIONS[s]);
        for _ in 0..self.rng.random_range(1..=6) {
            match sub.receive() {
                Ok(Some(d)) => {
                    let tag = self.identify(&label, d.seq, &d.payload)?;
                    let m = &self.model.messages[&tag];
                    let sm = &self.model.addresses[a].subs[&s];
                    if m.address != a || Some(d.seq) < sm.start {
                        return Err(self.violation(format!("{label}: message {} (tag {tag}) is not for it", d.seq)));
                    }
                    if !self.model.visible(m) {
                        return Err(self.violation(format!("{label}: message {} of an undecided transaction", d.seq)));
                    }
                    if sm.acked.contains(&tag) || sm.in_flight.contains(&tag) {
                        return Err(self.violation(format!("{label}: message {} delivered twice", d.seq)));
                    }
                    self.log(format!("{label} received {} (tag {tag})", d.seq));
                    self.model.addresses[a].subs.get_mut(&s).expect("picked").in_flight.insert(tag);
                    // A message of a send still in flight (see `burst`) is numbered by its delivery.
                    self.model.messages.get_mut(&tag).expect("identified").seq = Some(d.seq);
                }
                Ok(None) => break,
                Err(e) => {
                    self.explain(&format!("{label} receive"), &e)?;
                    break;
                }
            }
        }
        Ok(())
    }

    fn ack(&mut self) -> Result<(), Violation> {
        self.stats.ops += 1;
        let Some((a, s, sub)) = self.pick_sub() else { return Ok(()) };
        let label = format!("{}/{}", ADDRESSES[a], SUBSCRIPTIONS[s]);
        let in_flight: Vec<u64> = self.model.addresses[a].subs[&s].in_flight.iter().copied().collect();
        if in_flight.is_empty() {
            return Ok(());
        }
        let n = if self.rng.random_bool(0.3) { self.rng.random_range(1..=in_flight.len().min(8)) } else { 1 };
        let mut tags = Vec::new();
        for _ in 0..n {
            let t = in_flight[self.rng.random_range(0..in_flight.len())];
            if !tags.contains(&t) {
                tags.push(t);
            }
        }
        let seqs: Vec<u64> = tags.iter().map(|t| self.model.messages[t].seq.expect("delivered")).collect();
        let r = if seqs.len() == 1 { sub.ack(seqs[0]) } else { sub.ack_many(&seqs) };
        let sm = self.model.addresses[a].subs.get_mut(&s).expect("picked");
        match r {
            Ok(()) => {
                for t in &tags {
                    sm.in_flight.remove(t);
                    sm.acked.insert(*t);
                }
                self.log(format!("{label} acked {seqs:?}"));
            }
            Err(e) => {
                if let Explained::Unsure = self.explain(&format!("{label} ack {seqs:?}"), &e)? {
                    let sm = self.model.addresses[a].subs.get_mut(&s).expect("picked");
                    for t in &tags {
                        sm.in_flight.remove(t);
                        sm.maybe_acked.insert(*t);
                    }
                }
            }
        }
        Ok(())
    }

    fn nack(&mut self) -> Result<(), Violation> {
        self.stats.ops += 1;
        let Some((a, s, sub)) = self.pick_sub() else { return Ok(()) };
        let in_flight: Vec<u64> = self.model.addresses[a].subs[&s].in_flight.iter().copied().collect();
        if in_flight.is_empty() {
            return Ok(());
        }
        let tag = in_flight[self.rng.random_range(0..in_flight.len())];
        let seq = self.model.messages[&tag].seq.expect("delivered");
        if let Err(e) = sub.nack(seq) {
            return Err(self.violation(format!("nack of in-flight message {seq}: {e}")));
        }
        self.log(format!("{}/{} nacked {seq}", ADDRESSES[a], SUBSCRIPTIONS[s]));
        self.model.addresses[a].subs.get_mut(&s).expect("picked").in_flight.remove(&tag);
        Ok(())
    }

    fn subscribe(&mut self) -> Result<(), Violation> {
        self.stats.ops += 1;
        let a = self.rng.random_range(0..ADDRESSES.len());
        let s = self.rng.random_range(0..SUBSCRIPTIONS.len());
        if self.model.addresses[a].subs.contains_key(&s) {
            return Ok(());
        }
        let Some(address) = self.address(a)? else { return Ok(()) };
        let label = format!("{}/{}", ADDRESSES[a], SUBSCRIPTIONS[s]);
        match address.subscribe(SUBSCRIPTIONS[s]) {
            Ok(sub) => {
                self.log(format!("subscribed {label} at {}", sub.start()));
                if !self.in_burst && self.next_seq[a].is_some_and(|n| n != sub.start()) {
                    let want = self.next_seq[a];
                    return Err(self.violation(format!("{label} starts at {}, not at {want:?}", sub.start())));
                }
                let sub = SubModel { start: Some(sub.start()), outcome: Some(Outcome::Done), ..SubModel::default() };
                self.model.addresses[a].subs.insert(s, sub);
            }
            Err(e) => {
                if let Explained::Unsure = self.explain(&format!("subscribe {label}"), &e)? {
                    let sub = SubModel { outcome: Some(Outcome::Open), ..SubModel::default() };
                    self.model.addresses[a].subs.insert(s, sub);
                }
            }
        }
        Ok(())
    }

    fn unsubscribe(&mut self) -> Result<(), Violation> {
        self.stats.ops += 1;
        let Some((a, s, _)) = self.pick_sub() else { return Ok(()) };
        let label = format!("{}/{}", ADDRESSES[a], SUBSCRIPTIONS[s]);
        let Some(address) = self.address(a)? else { return Ok(()) };
        match address.unsubscribe(SUBSCRIPTIONS[s]) {
            Ok(()) => {
                self.log(format!("unsubscribed {label}"));
                self.model.addresses[a].subs.remove(&s);
            }
            Err(e) => {
                if let Explained::Unsure = self.explain(&format!("unsubscribe {label}"), &e)? {
                    // Removed or not: the next open says. Its acknowledgements stand either way.
                    self.model.addresses[a].subs.get_mut(&s).expect("picked").outcome = Some(Outcome::Open);
                }
            }
        }
        Ok(())
    }

    fn free_pages(&mut self) -> Result<(), Violation> {
        self.stats.ops += 1;
        let a = self.rng.random_range(0..ADDRESSES.len());
        if self.model.addresses[a].outcome != Some(Outcome::Done) {
            return Ok(());
        }
        let Some(address) = self.address(a)? else { return Ok(()) };
        if let Err(e) = address.free_pages() {
            self.explain(&format!("free pages of {}", ADDRESSES[a]), &e)?;
        }
        if self.store.is_some() && self.rng.random_bool(0.3) {
            if let Err(e) = address.wait_uploaded() {
                self.explain(&format!("wait for the uploads of {}", ADDRESSES[a]), &e)?;
            }
        }
        Ok(())
    }

    // ---- faults ----

    fn close(&mut self) {
        self.log("close".into());
        self.disk.set_faults(Faults::default());
        drop(self.paging.take());
        self.unsure = false;
        self.disk_full = false;
        self.restart = false;
    }

    fn crash(&mut self, why: &str) {
        let mut crash_rng = ChaCha8Rng::seed_from_u64(self.rng.random());
        let report = self.disk.crash(&mut crash_rng);
        drop(self.paging.take());
        self.unsure = false;
        self.disk_full = false;
        self.restart = false;
        self.stats.crashes += 1;
        self.log(format!(
            "crash ({why}): pages lost {} kept {} torn {}, directory ops lost {}",
            report.pages_lost, report.pages_kept, report.pages_torn, report.dir_ops_lost
        ));
    }

    fn arm_crash(&mut self) {
        let n = self.rng.random_range(0..40);
        self.log(format!("arm: power loss in {n} disk operations"));
        self.disk.arm_crash_in(n);
        self.unsure = true;
    }

    fn arm_sync_failure(&mut self) {
        let n = self.rng.random_range(0..6);
        self.log(format!("arm: fsync fails after {n} more"));
        // Page files as Linux treats them: a failed sync forgets their dirty pages. (Journal segments keep
        // the kinder model until the journal cuts its unsynced writes off too: docs/SIMULATOR.md.)
        self.disk.arm_sync_failure(n, Some(".kpage"));
        self.unsure = true;
    }

    fn toggle_disk_full(&mut self) {
        let full = self.disk.toggle_full().disk_full;
        self.disk_full |= full;
        self.log(format!("disk full: {full}"));
    }

    /// A power loss, then a bit flip in a page of an address.
    fn damage(&mut self) {
        self.crash("power loss before damage");
        let dirs: Vec<PathBuf> = (0..ADDRESSES.len()).filter_map(|a| self.address_dir(a)).collect();
        if dirs.is_empty() {
            return;
        }
        let dir = dirs[self.rng.random_range(0..dirs.len())].clone();
        let mut rng = ChaCha8Rng::seed_from_u64(self.rng.random());
        if let Some(f) = self.disk.flip_bit(&mut rng, &dir, &|n| n.ends_with(".kpage")) {
            self.log(format!("damage: bit {} at {} of {}/{}", f.bit, f.offset, dir.display(), f.name));
            self.stats.damaged += 1;
            self.damage.push((dir, f));
        }
    }

    /// The name of a page file of some address, at random.
    fn pick_page_name(&mut self) -> Option<String> {
        let vfs = self.disk.vfs();
        let names: Vec<String> = self
            .address_dirs
            .values()
            .flat_map(|d| vfs.list(d).unwrap_or_default())
            .filter(|n| n.ends_with(".kpage"))
            .collect();
        (!names.is_empty()).then(|| names[self.rng.random_range(0..names.len())].clone())
    }

    /// The directory of an address that was created (directories are numbered in creation order).
    fn address_dir(&self, a: usize) -> Option<PathBuf> {
        self.address_dirs.get(&a).cloned()
    }
}
