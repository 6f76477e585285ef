//! Progress of a long operation, counted by the library and drawn by whoever watches (the CLI's bars).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Progress {
    total: AtomicU64,
    done: AtomicU64,
    phase: Mutex<String>,
}

impl Progress {
    pub fn start(&self, phase: &str, total: u64) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = phase.to_owned();
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }

    pub fn advance(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// `(phase, done, total)`.
    pub fn get(&self) -> (String, u64, u64) {
        let phase = self.phase.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (phase, self.done.load(Ordering::Relaxed), self.total.load(Ordering::Relaxed))
    }
}
