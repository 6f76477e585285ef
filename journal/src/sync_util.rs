//! Locking that survives a panicked holder: the journal's invariants are guarded by poisoning the journal,
//! not by cascading panics through every thread that touches a mutex afterwards.

use std::sync::{Mutex, MutexGuard};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
