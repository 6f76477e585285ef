//! The completion of one request: how a caller learns its record's LSN (or error), and how a waiting caller
//! is asked to take over as group-commit leader.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};

use super::{lead, Shared};
use crate::error::AppendError;
use crate::sync_util::lock;
use crate::types::Lsn;

pub(crate) type Outcome = Result<Lsn, AppendError>;

#[derive(Debug)]
enum State {
    Waiting(Option<Waker>),
    /// The previous leader handed leadership to this (blocking) caller.
    Lead,
    /// Leadership was handed to this caller and then its request was completed before it woke: a
    /// concurrent poison (a failed fsync on the spare or maintenance thread) drained the queue in between.
    /// The caller still leads once, since the previous leader left `leader_active` set for it, and then
    /// returns the outcome.
    LeadThenDone(Outcome),
    Done(Outcome),
    Taken,
}

#[derive(Debug)]
struct Guarded {
    state: State,
    /// A blocking caller is asleep on `cv`. A completion wakes it only then: `Condvar::notify_one` makes a
    /// futex syscall even when no thread waits, and a lone writer, which completes its own request as
    /// leader, would otherwise pay one per append.
    parked: bool,
}

#[derive(Debug)]
pub(crate) struct Slot {
    inner: Mutex<Guarded>,
    cv: Condvar,
}

pub(crate) enum Wake {
    Done(Outcome),
    Lead,
}

impl Slot {
    pub fn new() -> Slot {
        Slot { inner: Mutex::new(Guarded { state: State::Waiting(None), parked: false }), cv: Condvar::new() }
    }

    pub fn complete(&self, outcome: Outcome) {
        let (waker, parked) = {
            let mut g = lock(&self.inner);
            let s = &mut g.state;
            let waker = match std::mem::replace(s, State::Done(outcome)) {
                State::Waiting(w) => w,
                State::Lead => {
                    let State::Done(outcome) = std::mem::replace(s, State::Taken) else { unreachable!() };
                    *s = State::LeadThenDone(outcome);
                    None
                }
                other => {
                    // A second completion is a bug in the group-commit protocol; keep the first outcome.
                    debug_assert!(false, "slot completed in state {other:?}");
                    *s = other;
                    None
                }
            };
            (waker, g.parked)
        };
        if parked {
            self.cv.notify_one();
        }
        if let Some(w) = waker {
            w.wake();
        }
    }

    pub fn designate_leader(&self) {
        let mut g = lock(&self.inner);
        assert!(matches!(g.state, State::Waiting(None)), "only a parked blocking caller can be made leader");
        g.state = State::Lead;
        let parked = g.parked;
        drop(g);
        if parked {
            self.cv.notify_one();
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(lock(&self.inner).state, State::Done(_))
    }

    pub(crate) fn wait(&self) -> Wake {
        let mut g = lock(&self.inner);
        loop {
            let s = &mut g.state;
            match s {
                State::Done(_) => match std::mem::replace(s, State::Taken) {
                    State::Done(o) => return Wake::Done(o),
                    _ => unreachable!(),
                },
                State::Lead => {
                    *s = State::Waiting(None);
                    return Wake::Lead;
                }
                State::LeadThenDone(_) => match std::mem::replace(s, State::Taken) {
                    State::LeadThenDone(o) => {
                        *s = State::Done(o);
                        return Wake::Lead;
                    }
                    _ => unreachable!(),
                },
                State::Taken => return Wake::Done(Err(AppendError::Closed)),
                State::Waiting(_) => {
                    g.parked = true;
                    g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
                    g.parked = false;
                }
            }
        }
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut g = lock(&self.inner);
        let s = &mut g.state;
        match s {
            State::Done(_) => match std::mem::replace(s, State::Taken) {
                State::Done(o) => Poll::Ready(o),
                _ => unreachable!(),
            },
            State::Waiting(w) => {
                *w = Some(cx.waker().clone());
                Poll::Pending
            }
            State::Lead | State::LeadThenDone(_) => unreachable!("async requests are never designated leader"),
            State::Taken => Poll::Ready(Err(AppendError::Closed)),
        }
    }
}

/// A submitted request. `wait()` blocks until it is durable (under the sync policy); `.await` does the same
/// without blocking a thread.
///
/// # Cancel safety
/// The request was submitted when the call that returned this value returned: dropping it, or dropping the
/// future before it completes, does not withdraw the record. It is still written in order, and a later
/// `sync()` covers it.
#[must_use = "the record is written either way; wait or await to learn whether it is durable"]
#[derive(Debug)]
pub struct Pending {
    inner: PendingInner,
}

#[derive(Debug)]
enum PendingInner {
    Queued { shared: Arc<Shared>, slot: Arc<Slot>, lead_first: bool },
    Ready(Option<Outcome>),
}

impl Pending {
    pub(crate) fn queued(shared: Arc<Shared>, slot: Arc<Slot>, lead_first: bool) -> Pending {
        Pending { inner: PendingInner::Queued { shared, slot, lead_first } }
    }

    pub(crate) fn ready(outcome: Outcome) -> Pending {
        Pending { inner: PendingInner::Ready(Some(outcome)) }
    }

    /// Blocks until the request is durable under the sync policy, and returns its LSN. A caller that finds
    /// the journal idle writes the batch itself (it becomes the group-commit leader); others wait for theirs.
    pub fn wait(self) -> Outcome {
        match self.inner {
            PendingInner::Ready(o) => o.unwrap_or(Err(AppendError::Closed)),
            PendingInner::Queued { shared, slot, lead_first } => {
                if lead_first {
                    lead(&shared, Some(&slot));
                }
                loop {
                    match slot.wait() {
                        Wake::Done(o) => return o,
                        Wake::Lead => lead(&shared, Some(&slot)),
                    }
                }
            }
        }
    }
}

impl Future for Pending {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        match &mut self.inner {
            PendingInner::Ready(o) => Poll::Ready(o.take().unwrap_or(Err(AppendError::Closed))),
            PendingInner::Queued { slot, lead_first, .. } => {
                debug_assert!(!*lead_first, "async submissions are led by the writer thread");
                slot.poll(cx)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poisoned() -> AppendError {
        AppendError::Poisoned {
            path: std::path::PathBuf::from("seg"),
            op: "fdatasync",
            source: Arc::new(std::io::Error::other("test")),
        }
    }

    /// A caller handed leadership whose request a concurrent poison then completes: it still wakes as
    /// leader once (the previous leader left leadership to it), and then gets its outcome. Before this
    /// state existed, the completion was dropped and the caller waited forever.
    #[test]
    fn a_designated_leader_completed_before_it_wakes_leads_once_then_gets_its_outcome() {
        let slot = Slot::new();
        slot.designate_leader();
        slot.complete(Err(poisoned()));
        assert!(!slot.is_done(), "leadership is taken up before the outcome");
        assert!(matches!(slot.wait(), Wake::Lead));
        assert!(slot.is_done());
        assert!(matches!(slot.wait(), Wake::Done(Err(AppendError::Poisoned { .. }))));
    }

    /// A completion wakes a caller asleep on the slot only when it is parked (no futex syscall otherwise):
    /// a parked caller must still be woken, by its outcome and by leadership alike.
    #[test]
    fn a_parked_caller_is_woken_by_leadership_and_by_its_outcome() {
        let slot = Arc::new(Slot::new());
        let waiter = slot.clone();
        let t = std::thread::spawn(move || {
            let first = matches!(waiter.wait(), Wake::Lead);
            let second = matches!(waiter.wait(), Wake::Done(Ok(Lsn(9))));
            (first, second)
        });
        let parked = || {
            let g = lock(&slot.inner);
            g.parked && matches!(g.state, State::Waiting(None))
        };
        while !parked() {
            std::thread::yield_now();
        }
        slot.designate_leader();
        while !parked() {
            std::thread::yield_now();
        }
        slot.complete(Ok(Lsn(9)));
        assert_eq!(t.join().unwrap(), (true, true));
    }

    #[test]
    fn a_completed_slot_returns_its_outcome_once() {
        let slot = Slot::new();
        slot.complete(Ok(Lsn(7)));
        assert!(matches!(slot.wait(), Wake::Done(Ok(Lsn(7)))));
        assert!(matches!(slot.wait(), Wake::Done(Err(AppendError::Closed))));
    }
}
