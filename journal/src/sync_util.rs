//! Locks and scoped threads that survive failures: the journal's invariants are guarded by poisoning the
//! journal, not by cascading panics through every thread that touches a mutex afterwards, and work that
//! could use more cores still gets done, on the calling thread, when no thread can be started.

use std::sync::{Mutex, MutexGuard};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `f` applied to every item, in order: the first on the calling thread, each other on a scoped thread
/// named `name`, all at once. An item whose thread cannot be started (the process is out of threads or
/// memory) is done on the calling thread afterwards: a starved process gets slower, never fails. An item
/// whose `f` panicked on its own thread gives the panic's payload; a panic on the calling thread unwinds.
pub(crate) fn map_scoped<T: Send, R: Send>(
    name: &str,
    items: Vec<T>,
    f: impl Fn(T) -> R + Sync,
) -> Vec<std::thread::Result<R>> {
    if items.is_empty() {
        return Vec::new();
    }
    // Each item waits in a slot that its thread empties; a thread that never starts leaves it full, which
    // is how the caller finds what is left to do.
    let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    let take = |i: usize| lock(&slots[i]).take();
    let mut out: Vec<Option<std::thread::Result<R>>> = std::thread::scope(|scope| {
        let (f, take) = (&f, &take);
        let spawned: Vec<_> = (1..slots.len())
            .map(|i| match threads_refused() {
                true => None,
                false => std::thread::Builder::new().name(name.into()).spawn_scoped(scope, move || take(i).map(f)).ok(),
            })
            .collect();
        let mut out = Vec::with_capacity(slots.len());
        out.push(take(0).map(|t| Ok(f(t))));
        for job in spawned {
            out.push(job.and_then(|h| h.join().map_or_else(|p| Some(Err(p)), |r| r.map(Ok))));
        }
        out
    });
    for (i, r) in out.iter_mut().enumerate() {
        if r.is_none() {
            *r = take(i).map(|t| Ok(f(t)));
        }
    }
    out.into_iter().map(|r| r.expect("every item is taken exactly once, by its thread or by the caller")).collect()
}

#[cfg(test)]
thread_local! {
    /// Set by tests: every thread `map_scoped` starts on this thread fails to start, as in a process that
    /// is out of threads.
    static REFUSE_THREADS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn threads_refused() -> bool {
    #[cfg(test)]
    return REFUSE_THREADS.get();
    #[cfg(not(test))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_whose_threads_cannot_start_are_done_by_the_caller() {
        REFUSE_THREADS.set(true);
        let caller = std::thread::current().id();
        let out = map_scoped("test", (0..5u64).collect(), |x| (x * 10, std::thread::current().id()));
        REFUSE_THREADS.set(false);
        let got: Vec<(u64, std::thread::ThreadId)> = out.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(got, (0..5u64).map(|x| (x * 10, caller)).collect::<Vec<_>>());
    }

    #[test]
    fn results_come_back_in_item_order() {
        let out = map_scoped("test", (0..9u64).collect(), |x| x * x);
        let got: Vec<u64> = out.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(got, (0..9u64).map(|x| x * x).collect::<Vec<_>>());
        assert!(map_scoped("test", Vec::<u8>::new(), |x| x).is_empty());
    }

    #[test]
    fn a_panic_on_a_helper_thread_is_that_item_s_error_only() {
        let out = map_scoped("test", vec![1, 2, 3], |x| {
            if x == 2 {
                panic!("item 2");
            }
            x
        });
        assert!(matches!(out[0], Ok(1)));
        assert!(out[1].is_err());
        assert!(matches!(out[2], Ok(3)));
    }
}
