//! What every simulation shares: its statistics, the violation it reports, the fault profiles, and the
//! watchdog that reports a run which stops making progress.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub ops: u64,
    pub opens: u64,
    pub crashes: u64,
    pub damaged: u64,
    pub refused: u64,
    pub disk_ops: u64,
}

impl Stats {
    pub fn add(&mut self, s: &Stats) {
        self.ops += s.ops;
        self.opens += s.opens;
        self.crashes += s.crashes;
        self.damaged += s.damaged;
        self.refused += s.refused;
        self.disk_ops += s.disk_ops;
    }
}

/// A broken guarantee: the seed that replays it and what was seen.
#[derive(Debug)]
pub struct Violation {
    /// Which simulation: `journal` or `paging`.
    pub sim: &'static str,
    pub seed: u64,
    pub step: u64,
    pub what: String,
    pub recent: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} simulator: seed {} step {}: {}", self.sim, self.seed, self.step, self.what)?;
        writeln!(f, "replay: KEEL_SIM_SEED={} cargo run --release -p keel-sim -- {} --profile P", self.seed, self.sim)?;
        writeln!(f, "last events:")?;
        for e in &self.recent {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// Which faults a run injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Power loss between operations and inside them, options that change across opens, concurrent
    /// maintenance: what the default test run searches (the wider profiles still find violations under
    /// triage, see docs/SIMULATOR.md).
    PowerLoss,
    /// Power loss at any point (between operations and inside them), fsync failures, a full disk, options
    /// that change across opens, concurrent maintenance.
    Crashes,
    /// All of `Crashes`, and damage to synced data: bit flips, EIO on reads.
    Full,
}

/// The step a run is at and its recent events, shared with the watchdog.
pub type Watchdog = Arc<Mutex<(u64, Vec<String>)>>;

/// A run's recent events: kept for its violation report and mirrored to the watchdog.
#[derive(Debug)]
pub struct Events {
    recent: VecDeque<String>,
    watchdog: Watchdog,
    /// `KEEL_SIM_TRACE` set: every event is also printed as it happens.
    trace: bool,
}

impl Events {
    pub fn new(watchdog: Watchdog) -> Events {
        Events { recent: VecDeque::new(), watchdog, trace: std::env::var_os("KEEL_SIM_TRACE").is_some() }
    }

    pub fn log(&mut self, step: u64, event: String) {
        if self.trace {
            eprintln!("#{step} {event}");
        }
        if self.recent.len() == 40 {
            self.recent.pop_front();
        }
        self.recent.push_back(format!("#{step} {event}"));
        let mut w = self.watchdog.lock().unwrap_or_else(|e| e.into_inner());
        w.0 = step;
        w.1 = self.recent.iter().cloned().collect();
    }

    pub fn recent(&self) -> Vec<String> {
        self.recent.iter().cloned().collect()
    }
}

/// How long a run may go without logging an event before it is reported as hung.
const STALL: Duration = Duration::from_secs(30);

/// Runs `body` on its own thread and waits for it; a run that logs no event for 30 s (a deadlock in the
/// code under test) is reported as a violation with its last events, and its threads are left behind.
pub fn supervised(
    sim: &'static str,
    seed: u64,
    body: impl FnOnce(Watchdog) -> Result<Stats, Violation> + Send + 'static,
) -> Result<Stats, Violation> {
    let watchdog: Watchdog = Arc::new(Mutex::new((0u64, Vec::new())));
    let (tx, rx) = std::sync::mpsc::channel();
    let w = watchdog.clone();
    std::thread::Builder::new()
        .name(format!("keel-sim-{seed}"))
        .spawn(move || {
            let _ = tx.send(body(w));
        })
        .expect("spawn the simulation thread");
    let mut last = (0u64, std::time::Instant::now());
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(result) => return result,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Violation { sim, seed, step: last.0, what: "the run died".into(), recent: Vec::new() })
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let (step, recent) = watchdog.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if step != last.0 {
                    last = (step, std::time::Instant::now());
                } else if last.1.elapsed() > STALL {
                    if std::env::var_os("KEEL_SIM_GDB").is_some() {
                        // Where every thread waits, for the report (gdb attaches to this process).
                        let _ = std::process::Command::new("gdb")
                            .args(["-p", &std::process::id().to_string(), "-batch"])
                            .args(match std::env::var("KEEL_SIM_GDB").ok().filter(|s| !s.is_empty() && s != "1") {
                                Some(script) => vec!["-x".to_owned(), script],
                                None => vec!["-ex".to_owned(), "thread apply all bt 30".to_owned()],
                            })
                            .status();
                    }
                    let what = format!("no progress for {} s: a hang (after the last event below)", STALL.as_secs());
                    return Err(Violation { sim, seed, step, what, recent });
                }
            }
        }
    }
}

/// The message of a caught panic.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}
