//! Pages in an object store: complete pages are uploaded and deleted locally, read back in ranges,
//! recovered from the store after a reopen, and deleted from it once every cursor is past them — on a
//! directory store and on an S3 server started in this process (s3s-fs, signatures checked).

mod common;

use std::path::Path;

use keel_paging::{Paging, PagingOptions};
use keel_s3::dir::DirStore;
use keel_s3::s3::{S3Config, S3Store};
use keel_s3::AnyStore;

fn open(dir: &Path, opts: PagingOptions) -> Paging {
    common::open(dir, opts).0
}

fn message(i: u64) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; 700 + (i % 300) as usize];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

fn local_pages(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("pages/a-00000000")).unwrap().count()
}

/// The whole life: upload, read back, reopen from the store, and delete from it.
fn round_trip(store: AnyStore, remote_objects: &dyn Fn() -> usize) {
    let dir = tempfile::tempdir().unwrap();
    let opts = common::with_objects(store);
    let paging = open(dir.path(), opts.clone());
    let a = paging.address("orders").unwrap();
    let s = a.subscribe("s").unwrap();
    let slow = a.subscribe("slow").unwrap();
    for i in 0..400 {
        a.send(&message(i), None).unwrap();
    }
    paging.wait_uploaded().unwrap();
    let pages = a.pages().len();
    assert!(pages > 4, "{pages}");
    assert_eq!(local_pages(dir.path()), 1, "only the open page stays on the volume");
    assert_eq!(remote_objects(), pages - 1);

    // Read back from the store, half of it.
    for i in 0..200 {
        let d = s.receive().unwrap().unwrap();
        assert_eq!((d.seq, &d.payload[..]), (i, &message(i)[..]));
        s.ack(d.seq).unwrap();
    }
    drop((s, slow, a, paging));

    // Reopen: the backlog is recovered from the store, counts exact.
    let paging = open(dir.path(), opts.clone());
    let a = paging.address("orders").unwrap();
    let (s, slow) = (a.subscription("s").unwrap(), a.subscription("slow").unwrap());
    assert_eq!(s.pending().messages, 200);
    assert_eq!(slow.pending().messages, 400);
    let mut next = 200;
    while let Some(d) = s.receive().unwrap() {
        assert_eq!((d.seq, &d.payload[..]), (next, &message(next)[..]));
        s.ack(d.seq).unwrap();
        next += 1;
    }
    assert_eq!(next, 400);
    assert_eq!(remote_objects(), pages - 1, "the slow subscription still needs every page");
    let all: Vec<u64> = std::iter::from_fn(|| slow.receive().unwrap().map(|d| d.seq)).collect();
    assert_eq!(all, (0..400).collect::<Vec<_>>());
    slow.ack_many(&all).unwrap();
    assert_eq!(remote_objects(), 0, "pages every cursor passed are deleted from the store");
    assert_eq!(a.pages().len(), 1);
}

#[test]
fn pages_round_trip_through_a_directory_store() {
    let objects = tempfile::tempdir().unwrap();
    let store = DirStore::open(objects.path()).unwrap();
    let count = || walk(objects.path());
    round_trip(store.into(), &count);
}

fn walk(p: &Path) -> usize {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.map(|e| e.unwrap())
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if e.path().is_dir() {
                        walk(&e.path())
                    } else {
                        usize::from(name.ends_with(".kpage"))
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn pages_round_trip_through_s3() {
    let root = tempfile::tempdir().unwrap();
    let addr = keel_s3::test_server::start(root.path()).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (ak, sk) = (keys.path().join("a"), keys.path().join("s"));
    std::fs::write(&ak, keel_s3::test_server::ACCESS_KEY).unwrap();
    std::fs::write(&sk, keel_s3::test_server::SECRET_KEY).unwrap();
    let mut cfg = S3Config::new("pages");
    cfg.endpoint = Some(format!("http://{addr}"));
    cfg.access_key_file = Some(ak);
    cfg.secret_key_file = Some(sk);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = rt.block_on(async {
        let s = S3Store::connect(cfg).await.unwrap();
        s.client().create_bucket().bucket("pages").send().await.unwrap();
        s
    });
    let bucket_dir = root.path().join("pages");
    let count = || walk(&bucket_dir);
    round_trip(store.into(), &count);
}

#[test]
fn a_damaged_object_names_address_and_key_and_spares_other_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let objects = tempfile::tempdir().unwrap();
    let opts = common::with_objects(DirStore::open(objects.path()).unwrap().into());
    let paging = open(dir.path(), opts.clone());
    for name in ["bad", "good"] {
        let a = paging.address(name).unwrap();
        a.subscribe("s").unwrap();
        for i in 0..200 {
            a.send(&message(i), None).unwrap();
        }
    }
    paging.wait_uploaded().unwrap();
    drop(paging);
    // Damage the bad address's first uploaded page.
    let mut files = Vec::new();
    fn collect(p: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(p).unwrap() {
            let e = e.unwrap().path();
            if e.is_dir() {
                collect(&e, out)
            } else if e.to_string_lossy().ends_with(".kpage") {
                out.push(e)
            }
        }
    }
    collect(objects.path(), &mut files);
    let store_dirs: std::collections::BTreeSet<_> = files.iter().map(|f| f.parent().unwrap().to_owned()).collect();
    assert_eq!(store_dirs.len(), 2);
    // Which store id is "bad"? Address 0 was created first; find its id from a page header.
    let bad_first =
        std::fs::read(dir.path().join("pages/a-00000000").read_dir().unwrap().next().unwrap().unwrap().path()).unwrap();
    let store_id: String = bad_first[16..32].iter().map(|b| format!("{b:02x}")).collect();
    let victim = files.iter().filter(|f| f.to_string_lossy().contains(&store_id)).min().unwrap().clone();
    let mut b = std::fs::read(&victim).unwrap();
    let at = b.len() - 10;
    b[at] ^= 0x40;
    std::fs::write(&victim, &b).unwrap();

    let paging = open(dir.path(), opts);
    let e = paging.address("bad").unwrap_err().to_string();
    assert!(e.contains("\"bad\"") && e.contains(&store_id) && e.contains("checksum"), "{e}");
    let good = paging.address("good").unwrap().subscription("s").unwrap();
    assert_eq!(good.pending().messages, 200);
    let n = std::iter::from_fn(|| good.receive().unwrap()).count();
    assert_eq!(n, 200);
}

#[test]
fn a_store_used_and_dropped_inside_an_async_task_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let objects = tempfile::tempdir().unwrap();
    let opts = common::with_objects(DirStore::open(objects.path()).unwrap().into());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let paging = open(dir.path(), opts);
        let a = paging.address("q").unwrap();
        a.subscribe("s").unwrap();
        for i in 0..200 {
            a.send(&message(i), None).unwrap();
        }
        paging.wait_uploaded().unwrap();
        assert!(walk(objects.path()) > 0);
        drop(a);
        drop(paging);
    });
}
