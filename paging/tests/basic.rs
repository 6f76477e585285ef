//! Behaviour of one process's life: memory mode and paging, delivery, acks and nacks, transactions,
//! reopen, page deletion, counts.

mod common;

use keel_journal::TxId;
use keel_paging::{Sent, MESSAGE_BYTES_MAX};

fn msg(i: u64, len: usize) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; len.max(8)];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

#[test]
fn pages_past_the_memory_limit_and_delivers_in_order_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (paging, _) = common::open(dir.path(), common::small_pages());
    let a = paging.address("orders").unwrap();
    let s1 = a.subscribe("s1").unwrap();
    let s2 = a.subscribe("s2").unwrap();
    let mut grants = Vec::new();
    let mut paged = Vec::new();
    for i in 0..300u64 {
        match a.send(&msg(i, 1000), None).unwrap() {
            Sent::Memory(g) => grants.push(g),
            Sent::Paged(seq) => paged.push((seq, i)),
        }
    }
    assert_eq!(grants.len(), 4, "4 KiB of 1000-byte messages stay in memory");
    assert!(a.is_paging());
    assert_eq!(paged.len(), 296);
    assert!(a.pages().len() > 3, "{:?}", a.pages());
    assert_eq!(s1.pending().messages, 296);
    assert_eq!(s1.pending().bytes, 296 * 1000);

    // s1 reads and acks half; s2 reads nothing.
    for (seq, i) in &paged[..150] {
        let d = s1.receive().unwrap().unwrap();
        assert_eq!((d.seq, &d.payload[..]), (*seq, &msg(*i, 1000)[..]));
        s1.ack(d.seq).unwrap();
    }
    assert_eq!(s1.pending().messages, 146);
    let pages_before = a.pages().len();
    drop((s1, s2, a, grants, paging));

    let (paging, _) = common::open(dir.path(), common::small_pages());
    let a = paging.address("orders").unwrap();
    assert!(a.is_paging(), "a recovered backlog keeps the address paging");
    let (s1, s2) = (a.subscription("s1").unwrap(), a.subscription("s2").unwrap());
    assert_eq!(s1.pending().messages, 146);
    assert_eq!(s2.pending().messages, 296);
    assert_eq!(a.pages().len(), pages_before, "s2 still needs every page");
    let d = s1.receive().unwrap().unwrap();
    assert_eq!(d.seq, paged[150].0, "resumes exactly after the last durable ack");
    assert!(d.redelivered);
    s1.ack(d.seq).unwrap();
    // Drain both; pages go once both are past them.
    let mut n = 1;
    while let Some(d) = s1.receive().unwrap() {
        s1.ack(d.seq).unwrap();
        n += 1;
    }
    assert_eq!(n, 146);
    let mut seqs = Vec::new();
    while let Some(d) = s2.receive().unwrap() {
        seqs.push(d.seq);
    }
    assert_eq!(seqs, paged.iter().map(|p| p.0).collect::<Vec<_>>(), "order kept");
    s2.ack_many(&seqs).unwrap();
    assert_eq!(a.pages().len(), 1, "only the newest page is kept");
    assert_eq!(s2.pending(), keel_paging::Pending::default());
    assert!(!a.is_paging(), "drained: back to memory mode");
    assert!(matches!(a.send(&msg(1, 10), None).unwrap(), Sent::Memory(_)));
}

#[test]
fn nacked_messages_come_back_first_and_acks_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let opts = common::always_paged();
    let (paging, _) = common::open(dir.path(), opts);
    let a = paging.address("q").unwrap();
    let s = a.subscribe("s").unwrap();
    for i in 0..5 {
        a.send(&msg(i, 100), None).unwrap();
    }
    let d0 = s.receive().unwrap().unwrap();
    let d1 = s.receive().unwrap().unwrap();
    s.nack(d0.seq).unwrap();
    let again = s.receive().unwrap().unwrap();
    assert_eq!((again.seq, again.redelivered), (d0.seq, true));
    assert!(s.ack(99).is_err(), "an ack of a message never delivered is refused");
    s.ack(d1.seq).unwrap();
    assert!(s.ack(d1.seq).is_err(), "a second ack is refused");
    assert_eq!(s.floor(), 0, "message 0 is still in flight");
    s.ack(again.seq).unwrap();
    assert_eq!(s.floor(), 2);
    assert_eq!(s.pending().messages, 3);
}

#[test]
fn transactional_messages_are_visible_only_after_commit_also_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let opts = common::always_paged();
    let (paging, _) = common::open(dir.path(), opts.clone());
    let a = paging.address("q").unwrap();
    let s = a.subscribe("s").unwrap();
    let (t1, t2, t3) = (TxId::new(1).unwrap(), TxId::new(2).unwrap(), TxId::new(3).unwrap());
    a.send(&msg(0, 50), Some(t1)).unwrap();
    a.send(&msg(1, 50), None).unwrap();
    a.send(&msg(2, 50), Some(t2)).unwrap();
    a.send(&msg(3, 50), Some(t3)).unwrap();
    assert!(s.receive().unwrap().is_none(), "readers wait at an undecided transaction");
    assert_eq!(s.pending().messages, 1);
    paging.commit(t1).unwrap();
    assert_eq!(s.receive().unwrap().unwrap().seq, 0);
    assert_eq!(s.receive().unwrap().unwrap().seq, 1);
    assert!(s.receive().unwrap().is_none());
    paging.rollback(t2).unwrap();
    paging.journal().prepare(t3, b"xid-3").unwrap();
    assert!(s.receive().unwrap().is_none(), "message 2 is dead, message 3 prepared");
    drop((s, a, paging));

    // Reopen: t1 committed, t2 rolled back, t3 prepared (in doubt).
    let (paging, rec) = common::open(dir.path(), opts);
    assert_eq!(rec.prepared.len(), 1);
    let a = paging.address("q").unwrap();
    let s = a.subscription("s").unwrap();
    assert_eq!(s.pending().messages, 2, "messages 0 and 1; 2 rolled back; 3 undecided");
    let got: Vec<u64> = std::iter::from_fn(|| s.receive().unwrap().map(|d| d.seq)).collect();
    assert_eq!(got, [0, 1]);
    paging.commit(t3).unwrap();
    assert_eq!(s.receive().unwrap().unwrap().seq, 3);
    assert_eq!(s.pending().messages, 3);
    s.ack_many(&[0, 1, 3]).unwrap();
    assert_eq!(s.floor(), 4, "the floor passes the rolled-back message");
    assert_eq!(s.pending().messages, 0);
}

#[test]
fn encrypted_pages_hold_no_plaintext_and_need_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keel_journal::crypto::keys::KeyRing::parse(&format!("1:{}\n", "ab".repeat(32)), "test").unwrap();
    let mut opts = common::small_pages();
    opts.keys = Some(keys.clone());
    opts.max_size_bytes = 0;
    let (paging, _) = common::open(dir.path(), opts.clone());
    let a = paging.address("secret").unwrap();
    let s = a.subscribe("s").unwrap();
    for i in 0..200 {
        let mut m = b"PLAINTEXT-MARKER-".to_vec();
        m.extend_from_slice(&msg(i, 500));
        a.send(&m, None).unwrap();
    }
    for p in std::fs::read_dir(dir.path().join("pages/a-00000000")).unwrap() {
        let bytes = std::fs::read(p.unwrap().path()).unwrap();
        assert!(!bytes.windows(16).any(|w| w == b"PLAINTEXT-MARKER"), "plaintext on disk");
    }
    let d = s.receive().unwrap().unwrap();
    assert!(d.payload.starts_with(b"PLAINTEXT-MARKER-"));
    drop((d, s, a, paging));

    // Without the key, and with a wrong one: the address fails with a clear error; others still open.
    for wrong in [None, Some(format!("1:{}\n", "cd".repeat(32)))] {
        let mut o = opts.clone();
        o.keys = wrong.map(|k| keel_journal::crypto::keys::KeyRing::parse(&k, "test").unwrap());
        let (paging, _) = common::open(dir.path(), o);
        let e = paging.address("secret").unwrap_err().to_string();
        assert!(e.contains("secret") && (e.contains("key")), "{e}");
        paging.address("other").unwrap().send(b"x", None).unwrap();
    }
    let (paging, _) = common::open(dir.path(), opts);
    let s = paging.address("secret").unwrap().subscription("s").unwrap();
    assert_eq!(s.pending().messages, 200);
}

#[test]
fn oversized_messages_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (paging, _) = common::open(dir.path(), common::small_pages());
    let a = paging.address("q").unwrap();
    let big = vec![0u8; MESSAGE_BYTES_MAX as usize + 1];
    assert!(matches!(a.send(&big, None), Err(keel_paging::PagingError::MessageTooLarge { .. })));
}

#[test]
fn the_global_memory_limit_pages_every_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = common::small_pages();
    opts.max_size_bytes = 10_000;
    opts.global_max_bytes = 15_000;
    let (paging, _) = common::open(dir.path(), opts);
    let (a, b) = (paging.address("a").unwrap(), paging.address("b").unwrap());
    let mut grants = Vec::new();
    for _ in 0..8 {
        if let Sent::Memory(g) = a.send(&[0u8; 1000], None).unwrap() {
            grants.push(g);
        }
    }
    assert_eq!(a.memory_bytes(), 8000);
    assert!(!a.is_paging());
    // b is under its own limit but the global one is reached at 15 000 bytes.
    let mut b_memory = 0;
    for _ in 0..10 {
        match b.send(&[0u8; 1000], None).unwrap() {
            Sent::Memory(g) => {
                b_memory += 1;
                grants.push(g);
            }
            Sent::Paged(_) => {}
        }
    }
    assert_eq!(b_memory, 7);
    assert!(b.is_paging() && !a.is_paging());
    assert_eq!(paging.memory_bytes(), 15_000);
    grants.clear();
    assert_eq!(paging.memory_bytes(), 0, "dropping the grants releases the memory");
}

#[test]
fn a_slow_subscription_neither_slows_nor_pages_out_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = common::small_pages();
    opts.max_size_bytes = 5_000;
    let (paging, _) = common::open(dir.path(), opts);
    let a = paging.address("q").unwrap();
    let fast = a.subscribe("fast").unwrap();
    let slow = a.subscribe("slow").unwrap();
    let mut in_memory = Vec::new();
    for i in 0..500u64 {
        if let Sent::Memory(g) = a.send(&msg(i, 1000), None).unwrap() {
            in_memory.push(g);
        }
    }
    assert_eq!(in_memory.len(), 5);
    let held = a.memory_bytes();
    // The fast subscription reads and acknowledges the whole paged backlog; the slow one reads nothing.
    let mut n = 0;
    while let Some(d) = fast.receive().unwrap() {
        fast.ack(d.seq).unwrap();
        n += 1;
    }
    assert_eq!(n, 495);
    assert_eq!(fast.pending().messages, 0);
    assert_eq!(slow.pending().messages, 495);
    assert_eq!(a.memory_bytes(), held, "in-memory messages stay in memory");
    assert!(a.is_paging(), "the slow subscription's backlog keeps new messages paged, in order");
    assert!(a.pages().len() > 2, "the slow subscription keeps its pages");
    // Once the slow one has read it all, the address returns to memory mode.
    let seqs: Vec<u64> = std::iter::from_fn(|| slow.receive().unwrap().map(|d| d.seq)).collect();
    assert_eq!(seqs.len(), 495);
    drop(in_memory);
    assert!(matches!(a.send(&msg(1, 10), None).unwrap(), Sent::Memory(_)), "back in memory mode");
    assert!(!a.is_paging());
    slow.ack_many(&seqs).unwrap();
    assert_eq!(a.pages().len(), 1);
}

/// Open file descriptors of this process on files under `dir`.
fn fds_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.starts_with(dir))
        .count()
}

#[test]
fn a_large_backlog_holds_no_file_descriptor_per_page() {
    let dir = tempfile::tempdir().unwrap();
    let opts = common::always_paged();
    let (paging, _) = common::open(dir.path(), opts.clone());
    let a = paging.address("q").unwrap();
    let s = a.subscribe("s").unwrap();
    for i in 0..3000 {
        a.send(&msg(i, 1000), None).unwrap();
    }
    let pages = dir.path().join("pages");
    assert!(a.pages().len() > 40, "{}", a.pages().len());
    assert_eq!(fds_under(&pages), 1, "only the open page is held open");
    // A reader holds the one page it reads.
    for _ in 0..10 {
        s.receive().unwrap().unwrap();
    }
    assert_eq!(fds_under(&pages), 2);
    drop((s, a, paging));
    let (paging, _) = common::open(dir.path(), opts);
    let a = paging.address("q").unwrap();
    assert_eq!(fds_under(&pages), 1, "nor after a reopen");
    assert_eq!(a.subscription("s").unwrap().pending().messages, 3000);
}

#[test]
fn unsubscribing_is_durable_and_frees_the_pages_only_it_needed() {
    let dir = tempfile::tempdir().unwrap();
    let opts = common::always_paged();
    let (paging, _) = common::open(dir.path(), opts.clone());
    let a = paging.address("q").unwrap();
    let done = a.subscribe("done").unwrap();
    let idle = a.subscribe("idle").unwrap();
    for i in 0..300 {
        a.send(&msg(i, 1000), None).unwrap();
    }
    let seqs: Vec<u64> = std::iter::from_fn(|| done.receive().unwrap().map(|d| d.seq)).collect();
    done.ack_many(&seqs).unwrap();
    assert!(a.pages().len() > 3, "the idle subscription keeps every page");
    a.unsubscribe("idle").unwrap();
    assert_eq!(a.pages().len(), 1, "pages only the removed subscription needed are deleted");
    assert!(matches!(idle.receive(), Err(keel_paging::PagingError::NoSuchSubscription { .. })));
    assert!(matches!(a.unsubscribe("idle"), Err(keel_paging::PagingError::NoSuchSubscription { .. })));
    drop((done, idle, a, paging));
    let (paging, _) = common::open(dir.path(), opts);
    let a = paging.address("q").unwrap();
    assert!(a.subscription("idle").is_none(), "the removal survived a reopen");
    assert_eq!(a.subscription("done").unwrap().pending().messages, 0);
}
