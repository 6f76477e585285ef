//! The journal under the simulator: one seeded run of operations, crashes, faults and reopens with
//! changing options, checked against the model after every reopen.
//!
//! The oracle: after every open, either the recovered records and prepared transactions equal the model's
//! after some prefix of the written operations that keeps every acknowledged one (a bit flip in the newest
//! segment may cost the last acknowledged sync group, which the format cannot tell from a torn write), or
//! strict open refused and named a file the simulator damaged. When nothing was damaged, open must succeed.
//! Every error an operation returns must be one the injected faults explain.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keel_journal::crypto::keys::KeyRing;
use keel_journal::{AppendError, CompactionPolicy, Journal, Options, Recovered, SyncPolicy, TxId, TxOp};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::disk::{Faults, Flip, SimDisk};
use crate::harness::{self, Events, Watchdog};
pub use crate::harness::{Profile, Stats, Violation};
use crate::model::{Expect, History, Op, Payload, State, Tx};

const IDS: u64 = 48;
const TXS: u64 = 6;
const SEGMENT_SIZES: [u64; 3] = [64 * 1024, 128 * 1024, 256 * 1024];

struct Sim {
    seed: u64,
    rng: ChaCha8Rng,
    disk: Arc<SimDisk>,
    dir: PathBuf,
    journal: Option<Journal>,
    sync: SyncPolicy,
    /// Master keys 1..=keys are in the ring (0: plaintext). Never shrinks: segments need their key.
    keys: u32,
    history: History,
    /// The journal's state now, every written operation applied.
    model: State,
    /// Damage injected and not yet found, by file name.
    damage: Vec<Flip>,
    faults_armed: bool,
    /// The disk was full at some point since this open: a spare's failed preparation is reported to the
    /// next roll-over until the preparer's retry succeeds, shortly after space returns.
    disk_was_full: bool,
    profile: Profile,
    stats: Stats,
    step: u64,
    /// Recent events, for the violation report and the watchdog.
    events: Events,
}

/// Runs one seeded simulation of about `ops` operations. A run that makes no progress for 30 s (a
/// deadlock in the journal) is reported as a violation with its last events; its threads are left behind.
pub fn run(seed: u64, ops: u64, profile: Profile) -> Result<Stats, Violation> {
    harness::supervised("journal", seed, move |watchdog| run_inner(seed, ops, profile, watchdog))
}

fn run_inner(seed: u64, ops: u64, profile: Profile, watchdog: Watchdog) -> Result<Stats, Violation> {
    let tmp = tempfile::tempdir().expect("tempdir for the journal's LOCK file");
    let mut sim = Sim {
        seed,
        rng: ChaCha8Rng::seed_from_u64(seed),
        disk: SimDisk::new(seed),
        dir: tmp.path().to_path_buf(),
        journal: None,
        sync: SyncPolicy::Always,
        keys: 0,
        history: History::default(),
        model: State::default(),
        damage: Vec::new(),
        faults_armed: false,
        disk_was_full: false,
        profile,
        stats: Stats::default(),
        step: 0,
        events: Events::new(watchdog),
    };
    // A panic in the journal (a failed assertion) is a violation like any other: report its seed.
    let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.main_loop(ops))) {
        Ok(r) => r,
        Err(panic) => Err(sim.violation(format!("panic: {}", harness::panic_message(&*panic)))),
    };
    if let Some(j) = sim.journal.take() {
        sim.disk.set_faults(Faults::default());
        drop(j);
    }
    sim.stats.disk_ops = sim.disk.ops();
    result.map(|()| sim.stats.clone())
}

fn payload(rng: &mut ChaCha8Rng) -> Payload {
    let len = match rng.random_range(0..10) {
        0 => 0,
        1..=6 => rng.random_range(1..400),
        7 | 8 => rng.random_range(400..4000),
        _ => rng.random_range(4000..24_000),
    };
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    Payload::from(v)
}

fn key_ring(keys: u32) -> Option<KeyRing> {
    (keys > 0).then(|| {
        let text: String = (1..=keys).map(|id| format!("{id}:{}\n", format!("{:02x}", id * 17).repeat(32))).collect();
        KeyRing::parse(&text, "sim").expect("valid key text")
    })
}

impl Sim {
    fn log(&mut self, event: String) {
        self.events.log(self.step, event);
    }

    fn violation(&self, what: String) -> Violation {
        Violation { sim: "journal", seed: self.seed, step: self.step, what, recent: self.events.recent() }
    }

    fn main_loop(&mut self, ops: u64) -> Result<(), Violation> {
        while self.stats.ops < ops {
            self.step += 1;
            if self.journal.is_none() {
                self.open()?;
                continue;
            }
            if self.disk.frozen() {
                self.crash("frozen mid-operation");
                continue;
            }
            if self.journal().poisoned().is_some() {
                // A stopped journal accepts nothing more: restart it, after a power loss or not.
                if self.rng.random_bool(0.5) {
                    self.crash("power loss after the journal stopped");
                } else {
                    self.close()?;
                }
                continue;
            }
            let roll = self.rng.random_range(0..1000);
            match roll {
                0..=649 => self.record_op()?,
                650..=709 => self.sync_op()?,
                710..=739 => self.maintenance("checkpoint")?,
                740..=769 => self.maintenance("reclaim")?,
                770..=789 => self.maintenance("compact")?,
                790..=799 => self.maintenance("rekey")?,
                800..=809 => self.concurrent_maintenance()?,
                810..=839 => self.read_check()?,
                840..=879 => self.close()?,
                880..=919 => self.crash("power loss"),
                920..=939 => self.arm_crash(),
                940..=954 if self.profile == Profile::Full => self.damage()?,
                940..=954 => self.crash("power loss"),
                955..=964 if self.profile != Profile::PowerLoss => self.arm_sync_failure(),
                955.. if self.profile == Profile::PowerLoss => self.crash("power loss"),
                _ => self.toggle_disk_full(),
            }
        }
        Ok(())
    }

    /// Options for the next open: they change from one open to the next, as a broker's configuration and
    /// the tools run against its journal do.
    fn options(&mut self) -> Options {
        let r = &mut self.rng;
        self.sync = match r.random_range(0..10) {
            0..=3 => SyncPolicy::Always,
            4..=6 => SyncPolicy::Interval(Duration::from_secs(3600)),
            _ => SyncPolicy::Never,
        };
        if self.keys < 3 && r.random_bool(0.1) {
            self.keys += 1;
        }
        let compaction = r.random_bool(0.5).then(|| CompactionPolicy {
            live_ratio_below: 0.6,
            min_segments: 1,
            bytes_per_sec: u64::MAX / 2,
            trim_bytes_per_sec: u64::MAX,
            ..CompactionPolicy::default()
        });
        Options {
            segment_bytes: SEGMENT_SIZES[r.random_range(0..SEGMENT_SIZES.len())],
            sync: self.sync,
            spare_segments: r.random_range(1..=3),
            auto_maintenance: r.random_bool(0.5),
            checkpoint_every_segments: r.random_range(0..=3),
            compaction,
            vfs: self.disk.vfs(),
            keys: key_ring(self.keys),
            ..Options::default()
        }
    }

    fn open(&mut self) -> Result<(), Violation> {
        self.disk.collect_garbage();
        let options = self.options();
        if self.rng.random_bool(0.03) && self.profile == Profile::Full {
            if let Some(name) = self.pick_file(&|n| n.ends_with(".kseg")) {
                self.log(format!("arm: EIO on the next read of {name}"));
                self.disk.set_faults(Faults { read_eio: Some(name), ..Faults::default() });
            }
        }
        let desc = format!(
            "open segment_bytes={} spares={} sync={:?} keys={} maintenance={} compaction={}",
            options.segment_bytes,
            options.spare_segments,
            options.sync,
            self.keys,
            options.auto_maintenance,
            options.compaction.is_some()
        );
        self.log(desc);
        self.stats.opens += 1;
        let faults_during_open = self.faults_armed;
        let full_during_open = self.disk.faults().disk_full;
        let opened = Journal::open(&self.dir, options);
        let read_eio = self.disk.faults().read_eio.take();
        self.disk.set_faults(Faults::default());
        self.faults_armed = false;
        self.disk_was_full = full_during_open;
        match opened {
            Ok((journal, recovered)) => self.check_open(journal, recovered),
            Err(e) if self.disk.frozen() => {
                self.log(format!("open failed on the frozen disk: {e}"));
                self.crash("frozen during open");
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                self.log(format!("open refused: {msg}"));
                self.stats.refused += 1;
                let named: Vec<Flip> = self.damage.iter().filter(|f| msg.contains(&f.name)).cloned().collect();
                if !named.is_empty() {
                    self.undo(&named);
                    return Ok(());
                }
                if faults_during_open && (msg.contains("Input/output error") || msg.contains("No space left")) {
                    self.log("the injected fault explains it".into());
                    return Ok(());
                }
                // An armed read error is consumed by the read it fails; one that was consumed and named is
                // explained.
                if read_eio.is_none() && self.disk_eio_named(&msg) {
                    return Ok(());
                }
                Err(self.violation(format!("strict open refused, naming no damage the simulator injected: {msg}")))
            }
        }
    }

    /// Undoes damage that was found and reported, so the run goes on from an undamaged image.
    fn undo(&mut self, found: &[Flip]) {
        for f in found {
            let undone = self.disk.unflip(&self.dir, f);
            let how = if undone { "undone" } else { "rewritten or gone since" };
            self.log(format!("damage at {} of {}: {how}", f.offset, f.name));
        }
        self.damage.retain(|f| !found.contains(f));
    }

    /// Whether an open error is the injected read EIO (its file named and "Input/output error").
    fn disk_eio_named(&self, msg: &str) -> bool {
        msg.contains(".kseg") && msg.contains("Input/output error")
    }

    fn check_open(&mut self, journal: Journal, recovered: Recovered) -> Result<(), Violation> {
        // The format cannot tell damage to the newest segment's last sync group (or to the header of a
        // segment holding one write) from a torn write: recovery may discard it, if it says so there.
        let damaged = |p: &std::path::Path| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            self.damage.iter().any(|f| f.name == name)
        };
        let torn_in_damaged = recovered.report.torn_tail.as_ref().is_some_and(|t| damaged(&t.path))
            || recovered.report.torn_activation.as_deref().is_some_and(damaged);
        if let Some(t) = &recovered.report.torn_tail {
            self.log(format!("recovery: torn tail {} at {} ({} bytes)", t.path.display(), t.offset, t.bytes));
        }
        let mut got = State::default();
        let mut unreadable = None;
        for (id, r) in &recovered.records {
            // By id: background compaction may move a record (and reclaim its segment) while this reads.
            match journal.read(*id) {
                Ok(p) => {
                    got.live.insert(*id, (r.kind, Payload::from(p)));
                }
                Err(e) => unreadable = Some(format!("record {id}: {e}")),
            }
        }
        for p in &recovered.prepared {
            let mut ops = Vec::new();
            for r in &p.records {
                let payload = if r.op == TxOp::Delete {
                    Payload::from(&[][..])
                } else {
                    match journal.read_version(&r.record) {
                        Ok(b) => Payload::from(b),
                        Err(e) => {
                            unreadable = Some(format!("prepared record {}: {e}", r.id));
                            Payload::from(&[][..])
                        }
                    }
                };
                ops.push((r.op, r.id, r.record.kind, payload));
            }
            got.txs.insert(p.tx.get(), Tx { ops, prepared: Some(Payload::from(p.data.clone())) });
        }
        if unreadable.is_some() && self.disk.frozen() {
            self.log("reads failed on the frozen disk".into());
            drop(journal);
            self.crash("frozen while reading what was recovered");
            return Ok(());
        }
        if let Some(why) = unreadable {
            let named: Vec<Flip> = self.damage.iter().filter(|f| why.contains(&f.name)).cloned().collect();
            if named.is_empty() {
                return Err(self.violation(format!("a recovered record cannot be read: {why}")));
            }
            self.log(format!("read refused on damage: {why}"));
            drop(journal);
            self.undo(&named);
            return Ok(());
        }
        let candidates = self.history.candidates(torn_in_damaged);
        let Some((k, state)) = candidates.into_iter().find(|(_, s)| *s == got) else {
            let want = self.history.candidates(torn_in_damaged);
            return Err(self.violation(format!(
                "recovered state matches no allowed prefix: {} live records and {} prepared txs recovered; \
                 {} acknowledged and {} unacknowledged operations since the last open; {}",
                got.live.len(),
                got.txs.len(),
                self.history.durable.len(),
                self.history.pending.len(),
                describe_difference(&got, &want.last().expect("at least one candidate").1),
            )));
        };
        self.log(format!(
            "recovered: prefix {k} of {}+{} ops, {} live, {} prepared",
            self.history.durable.len(),
            self.history.pending.len(),
            state.live.len(),
            state.txs.len()
        ));
        self.history = self.history.recovered(k);
        self.model = state;
        self.journal = Some(journal);
        Ok(())
    }

    fn pick_file(&mut self, pick: &dyn Fn(&str) -> bool) -> Option<String> {
        let vfs = self.disk.vfs();
        let names: Vec<String> = vfs.list(&self.dir).ok()?.into_iter().filter(|n| pick(n)).collect();
        (!names.is_empty()).then(|| names[self.rng.random_range(0..names.len())].clone())
    }

    fn journal(&self) -> &Journal {
        self.journal.as_ref().expect("open")
    }

    /// A record operation, mostly one the journal must accept.
    fn next_record_op(&mut self) -> Op {
        let r = &mut self.rng;
        let live: Vec<u64> = self.model.live.keys().copied().collect();
        let pick_live = |r: &mut ChaCha8Rng| -> u64 {
            if live.is_empty() || r.random_bool(0.05) {
                r.random_range(0..IDS)
            } else {
                live[r.random_range(0..live.len())]
            }
        };
        let tx = r.random_range(1..=TXS);
        match r.random_range(0..100) {
            0..=34 => {
                let id = if r.random_bool(0.95) {
                    (0..8).map(|_| r.random_range(0..IDS)).find(|i| !self.model.live.contains_key(i)).unwrap_or(0)
                } else {
                    pick_live(r)
                };
                Op::Add(id, r.random(), payload(r))
            }
            35..=49 => Op::Update(pick_live(r), r.random(), payload(r)),
            50..=64 => Op::Delete(pick_live(r)),
            65..=74 => Op::AddTx(tx, r.random_range(0..IDS), r.random(), payload(r)),
            75..=79 => Op::UpdateTx(tx, pick_live(r), r.random(), payload(r)),
            80..=83 => Op::DeleteTx(tx, pick_live(r)),
            84..=89 => Op::Prepare(tx, payload(r)),
            90..=95 => Op::Commit(tx),
            _ => Op::Rollback(tx),
        }
    }

    fn record_op(&mut self) -> Result<(), Violation> {
        let op = self.next_record_op();
        self.stats.ops += 1;
        let j = self.journal();
        let t = |t: u64| TxId::new(t).expect("non-zero");
        let result = match &op {
            Op::Add(id, k, p) => j.add(*id, *k, p),
            Op::Update(id, k, p) => j.update(*id, *k, p),
            Op::Delete(id) => j.delete(*id),
            Op::AddTx(tx, id, k, p) => j.add_tx(t(*tx), *id, *k, p),
            Op::UpdateTx(tx, id, k, p) => j.update_tx(t(*tx), *id, *k, p),
            Op::DeleteTx(tx, id) => j.delete_tx(t(*tx), *id),
            Op::Prepare(tx, p) => j.prepare(t(*tx), p),
            Op::Commit(tx) => j.commit(t(*tx)),
            Op::Rollback(tx) => j.rollback(t(*tx)),
        };
        let expected = self.model.clone().apply(&op);
        let desc = op_name(&op);
        match result {
            Ok(lsn) => {
                if expected != Expect::Ok {
                    return Err(
                        self.violation(format!("{desc} was accepted (lsn {}), the model expected {expected:?}", lsn.0))
                    );
                }
                self.model.apply(&op);
                self.history.written(op);
                if self.sync == SyncPolicy::Always {
                    self.history.acknowledged();
                }
                self.log(format!("{desc} -> lsn {}", lsn.0));
                Ok(())
            }
            Err(e) => {
                let got = classify(&e);
                if let Some(g) = got {
                    if g == expected {
                        return Ok(());
                    }
                    return Err(self.violation(format!("{desc} failed with {e}, the model expected {expected:?}")));
                }
                self.fault_error(&desc, &e)?;
                if !matches!(e, AppendError::NoSpace { .. }) && expected == Expect::Ok {
                    // Written, perhaps: a failed fdatasync or a frozen disk leaves its bytes unknown.
                    self.model.apply(&op);
                    self.history.written(op);
                }
                Ok(())
            }
        }
    }

    /// An I/O failure is allowed only while a fault is armed; a poisoned journal is then restarted.
    fn fault_error(&mut self, what: &str, e: &dyn std::fmt::Display) -> Result<(), Violation> {
        self.log(format!("{what} failed: {e}"));
        let no_space = e.to_string().contains("No space left");
        let explained = self.faults_armed || self.disk.frozen() || (no_space && self.disk_was_full);
        if !explained {
            return Err(self.violation(format!("{what} failed with no fault injected: {e}")));
        }
        Ok(())
    }

    fn sync_op(&mut self) -> Result<(), Violation> {
        self.stats.ops += 1;
        match self.journal().sync() {
            Ok(_) => {
                self.history.acknowledged();
                self.log("sync".into());
                Ok(())
            }
            Err(e) => self.fault_error("sync", &e),
        }
    }

    fn maintenance(&mut self, which: &str) -> Result<(), Violation> {
        self.stats.ops += 1;
        let j = self.journal();
        let result: Result<String, String> = match which {
            "checkpoint" => j.checkpoint().map(|r| format!("{:?}", r.map(|r| r.bytes))).map_err(|e| e.to_string()),
            "reclaim" => j.reclaim().map(|r| format!("{:?}", r.segments)).map_err(|e| e.to_string()),
            "compact" => j
                .compact(&CompactionPolicy::offline())
                .map(|r| format!("moved {} reclaimed {:?}", r.records_moved, r.reclaimed.segments))
                .map_err(|e| e.to_string()),
            _ => {
                if self.keys == 0 {
                    return Ok(());
                }
                j.rekey().map(|r| format!("{} rewrapped", r.rewrapped.len())).map_err(|e| e.to_string())
            }
        };
        match result {
            Ok(r) => {
                self.log(format!("{which}: {r}"));
                self.read_all(which)
            }
            Err(e) => self.fault_error(which, &e),
        }
    }

    /// Reclaims and compactions at once, from several threads, beside the journal's own maintenance.
    fn concurrent_maintenance(&mut self) -> Result<(), Violation> {
        self.stats.ops += 1;
        let j = self.journal();
        let errors: Vec<String> = std::thread::scope(|s| {
            let a = s.spawn(|| j.reclaim().err().map(|e| format!("reclaim: {e}")));
            let b = s.spawn(|| j.compact(&CompactionPolicy::offline()).err().map(|e| format!("compact: {e}")));
            let c = s.spawn(|| j.reclaim().err().map(|e| format!("reclaim: {e}")));
            [a, b, c].into_iter().filter_map(|h| h.join().expect("no panic")).collect()
        });
        self.log("concurrent reclaim, compact, reclaim".into());
        for e in errors {
            self.fault_error("concurrent maintenance", &e)?;
        }
        self.read_all("concurrent maintenance")
    }

    /// Every live record reads back as the model holds it.
    fn read_all(&mut self, after: &str) -> Result<(), Violation> {
        if self.faults_armed || self.disk.frozen() {
            return Ok(());
        }
        let j = self.journal();
        for (id, (kind, p)) in &self.model.live {
            let got = j.get(*id).map(|r| r.kind);
            if got != Some(*kind) {
                return Err(self.violation(format!("after {after}: record {id} has kind {got:?}, want {kind}")));
            }
            match j.read(*id) {
                Ok(b) if b[..] == p[..] => {}
                Ok(b) => {
                    return Err(self.violation(format!(
                        "after {after}: record {id} reads {} bytes that differ from the {} written",
                        b.len(),
                        p.len()
                    )))
                }
                Err(e) => return Err(self.violation(format!("after {after}: record {id} cannot be read: {e}"))),
            }
        }
        if j.live_records() != self.model.live.len() as u64 {
            let n = j.live_records();
            return Err(
                self.violation(format!("after {after}: {n} live records, the model has {}", self.model.live.len()))
            );
        }
        Ok(())
    }

    fn read_check(&mut self) -> Result<(), Violation> {
        self.stats.ops += 1;
        self.read_all("reads")
    }

    fn close(&mut self) -> Result<(), Violation> {
        self.stats.ops += 1;
        let j = self.journal.take().expect("open");
        match j.close() {
            Ok(()) => {
                self.history.acknowledged();
                self.log("clean close".into());
                Ok(())
            }
            Err(e) => {
                self.fault_error("close", &e)?;
                // A poisoned journal restarts from what the disk holds, with or without a power loss.
                if self.rng.random_bool(0.5) {
                    self.crash("power loss after a failed close");
                }
                Ok(())
            }
        }
    }

    fn crash(&mut self, why: &str) {
        // Its own stream: how many pages a crash finds dirty depends on the journal's threads, and the
        // driver's choices must not.
        let mut crash_rng = ChaCha8Rng::seed_from_u64(self.rng.random());
        let report = self.disk.crash(&mut crash_rng);
        self.log(format!("crash ({why}): dropping the abandoned journal"));
        // The abandoned journal's threads now fail on every file: dropping it touches the new image no more.
        drop(self.journal.take());
        self.faults_armed = false;
        self.stats.crashes += 1;
        self.log(format!(
            "crash ({why}): pages lost {} kept {} torn {}, directory ops lost {}",
            report.pages_lost, report.pages_kept, report.pages_torn, report.dir_ops_lost
        ));
    }

    fn arm_crash(&mut self) {
        let n = self.rng.random_range(0..60);
        self.log(format!("arm: power loss in {n} disk operations"));
        self.disk.arm_crash_in(n);
        self.faults_armed = true;
    }

    fn arm_sync_failure(&mut self) {
        let n = self.rng.random_range(0..6);
        self.log(format!("arm: fsync fails after {n} more"));
        self.disk.arm_sync_failure(n, None);
        self.faults_armed = true;
    }

    fn toggle_disk_full(&mut self) {
        let f = self.disk.toggle_full();
        self.disk_was_full |= f.disk_full;
        self.log(format!("disk full: {}", f.disk_full));
        self.faults_armed = f.disk_full || f.syncs_fail_after.is_some() || f.crash_in.is_some();
    }

    /// A power loss, then one bit of synced data flipped while the journal is down.
    fn damage(&mut self) -> Result<(), Violation> {
        self.crash("power loss before damage");
        let pick = |n: &str| n.ends_with(".kseg") || n.ends_with(".kcp") || n == "RECLAIMED";
        let mut flip_rng = ChaCha8Rng::seed_from_u64(self.rng.random());
        if let Some(f) = self.disk.flip_bit(&mut flip_rng, &self.dir, &pick) {
            self.log(format!("damage: flipped bit {:#x} at {} of {}", f.bit, f.offset, f.name));
            self.stats.damaged += 1;
            self.damage.push(f);
        }
        Ok(())
    }
}

fn classify(e: &AppendError) -> Option<Expect> {
    Some(match e {
        AppendError::IdInUse(_) => Expect::IdInUse,
        AppendError::NoSuchRecord(_) => Expect::NoSuchRecord,
        AppendError::NoSuchTx(_) => Expect::NoSuchTx,
        AppendError::TxPrepared(_) => Expect::TxPrepared,
        _ => return None,
    })
}

fn op_name(op: &Op) -> String {
    match op {
        Op::Add(id, _, p) => format!("add {id} ({} B)", p.len()),
        Op::Update(id, _, p) => format!("update {id} ({} B)", p.len()),
        Op::Delete(id) => format!("delete {id}"),
        Op::AddTx(tx, id, _, p) => format!("tx {tx} add {id} ({} B)", p.len()),
        Op::UpdateTx(tx, id, _, p) => format!("tx {tx} update {id} ({} B)", p.len()),
        Op::DeleteTx(tx, id) => format!("tx {tx} delete {id}"),
        Op::Prepare(tx, _) => format!("prepare tx {tx}"),
        Op::Commit(tx) => format!("commit tx {tx}"),
        Op::Rollback(tx) => format!("rollback tx {tx}"),
    }
}

/// A short account of how two states differ, for the failure report.
fn describe_difference(got: &State, want: &State) -> String {
    let ids: BTreeSet<u64> = got.live.keys().chain(want.live.keys()).copied().collect();
    let mut diffs = Vec::new();
    for id in ids {
        match (got.live.get(&id), want.live.get(&id)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(_), Some(_)) => diffs.push(format!("record {id} differs")),
            (None, Some(_)) => diffs.push(format!("record {id} missing")),
            (Some(_), None) => diffs.push(format!("record {id} should not be live")),
            (None, None) => {}
        }
    }
    let got_tx: BTreeMap<u64, bool> = got.txs.iter().map(|(t, x)| (*t, want.txs.get(t) == Some(x))).collect();
    for (t, same) in got_tx {
        if !same {
            diffs.push(format!("prepared tx {t} differs"));
        }
    }
    for t in want.txs.keys().filter(|t| !got.txs.contains_key(t)) {
        diffs.push(format!("prepared tx {t} missing"));
    }
    diffs.truncate(12);
    format!("against all written operations: {}", diffs.join(", "))
}
