//! Crash points for the crash tests: `KEEL_CRASH_AT=<name>` (or `<name>:<n>` for the n-th time the point
//! is passed) makes the process kill itself with SIGKILL at that named point, so a test can stop a real
//! process exactly between two steps of a multi-step operation. Unset (always, outside tests), a hook
//! costs one atomic load.
//!
//! One crate so that every Keel crate (journal, object store, paging) names its points the same way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
static PASSED: AtomicU64 = AtomicU64::new(0);

/// Marks the named point; kills the process if the test asked to crash here.
pub fn hook(name: &str) {
    let target = TARGET.get_or_init(|| {
        let v = std::env::var("KEEL_CRASH_AT").ok()?;
        let (n, count) = match v.split_once(':') {
            Some((n, c)) => (n.to_owned(), c.parse().unwrap_or(1)),
            None => (v, 1),
        };
        Some((n, count))
    });
    if let Some((n, count)) = target {
        if n == name && PASSED.fetch_add(1, Ordering::SeqCst) + 1 == *count {
            // SAFETY: kill(2) on our own pid with a valid signal has no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}
