//! Shared by keel-backup's tests: repositories on a directory and on the in-process S3 server, keys,
//! a journal under load.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use keel_backup::{Create, LeaseOptions, Repo};
use keel_journal::crypto::keys::KeyRing;
use keel_journal::{Journal, Options};
use keel_s3::s3::{S3Config, S3Store};
use keel_s3::AnyStore;

pub fn repo_key() -> KeyRing {
    KeyRing::parse(&format!("1:{}", "a1".repeat(32)), "repo key").unwrap()
}

pub fn journal_key() -> KeyRing {
    KeyRing::parse(&format!("1:{}", "b2".repeat(32)), "journal key").unwrap()
}

pub fn journal_options(keys: Option<KeyRing>) -> Options {
    Options { segment_bytes: 256 * 1024, keys, ..Options::default() }
}

pub fn quick_lease() -> LeaseOptions {
    LeaseOptions { ttl: Duration::from_secs(3), wait: Duration::from_secs(30) }
}

/// Which store a suite runs on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Dir,
    S3,
}

struct S3Server {
    endpoint: String,
    ak: std::path::PathBuf,
    sk: std::path::PathBuf,
    _root: tempfile::TempDir,
}

fn s3_server() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let root = tempfile::tempdir().unwrap();
        let addr = keel_s3::test_server::start(root.path()).unwrap();
        let (ak, sk) = (root.path().join("ak"), root.path().join("sk"));
        std::fs::write(&ak, keel_s3::test_server::ACCESS_KEY).unwrap();
        std::fs::write(&sk, keel_s3::test_server::SECRET_KEY).unwrap();
        S3Server { endpoint: format!("http://{addr}"), ak, sk, _root: root }
    })
}

/// A store for a new, empty repository.
pub fn store(backend: Backend, dir: &Path) -> AnyStore {
    match backend {
        Backend::Dir => AnyStore::Dir(keel_s3::dir::DirStore::open(dir).unwrap()),
        Backend::S3 => {
            let s = s3_server();
            let bucket = format!("b{}", dir.file_name().unwrap().to_string_lossy().to_lowercase().replace(['.', '_'], "-"));
            let bucket: String = bucket.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(60).collect();
            std::fs::create_dir_all(s._root.path().join(&bucket)).unwrap();
            let mut cfg = S3Config::new(bucket);
            cfg.endpoint = Some(s.endpoint.clone());
            cfg.path_style = true;
            cfg.access_key_file = Some(s.ak.clone());
            cfg.secret_key_file = Some(s.sk.clone());
            cfg.region = Some("us-east-1".into());
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            AnyStore::S3(Box::new(rt.block_on(S3Store::connect(cfg)).unwrap()))
        }
    }
}

pub fn open_repo(store: &AnyStore) -> Repo {
    Repo::open_in(store.clone(), "repo", repo_key(), Create::IfAbsent).unwrap()
}

pub fn payload(id: u64) -> Vec<u8> {
    let mut p = format!("record {id} ").repeat(1 + (id % 13) as usize).into_bytes();
    p.resize(p.len().max(200), b'.');
    p
}

/// Writers appending to a journal until stopped; every acknowledged add recorded with its LSN.
pub struct Load {
    pub journal: Arc<Journal>,
    pub acked: Arc<Mutex<BTreeMap<u64, u64>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(dir: &Path, keys: Option<KeyRing>, writers: u64) -> Load {
        let (journal, _) = Journal::open(dir, journal_options(keys)).unwrap();
        let journal = Arc::new(journal);
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..writers)
            .map(|w| {
                let (journal, acked, stop) = (journal.clone(), acked.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let id = w << 40 | i;
                        let lsn = journal.add(id, 1, &payload(id)).unwrap();
                        acked.lock().unwrap().insert(id, lsn.0);
                        i += 1;
                    }
                })
            })
            .collect();
        Load { journal, acked, stop, threads }
    }

    pub fn snapshot_of_acked(&self) -> BTreeMap<u64, u64> {
        self.acked.lock().unwrap().clone()
    }

    pub fn stop(self) -> Arc<Journal> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        self.journal
    }
}

/// Opens a restored journal and checks: every id in `must` present with its LSN and payload, no record
/// at or after `next_lsn`.
pub fn check_restored(journal_dir: &Path, keys: Option<KeyRing>, must: &BTreeMap<u64, u64>, next_lsn: u64) -> usize {
    let (j, rec) = Journal::open(journal_dir, journal_options(keys)).unwrap();
    for (id, lsn) in must {
        let r = rec.records.get(id).unwrap_or_else(|| panic!("acknowledged id {id} (LSN {lsn}) missing from the restore"));
        assert_eq!(r.lsn.0, *lsn);
        assert_eq!(j.read(*id).unwrap(), payload(*id), "id {id}");
    }
    for (id, r) in &rec.records {
        assert!(r.lsn.0 < next_lsn, "id {id} at LSN {} is at or after the cut {next_lsn}", r.lsn.0);
    }
    assert_eq!(rec.report.last_lsn.map_or(0, |l| l.0 + 1), next_lsn);
    rec.records.len()
}
