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
    /// The S3 server this process starts (s3s-fs).
    S3,
    /// The server `KEEL_S3_TEST_ENDPOINT` names (CI: moto), with the AWS environment's credentials.
    External,
}

/// Every backend available here: the external one only when the environment names it.
pub fn backends() -> Vec<Backend> {
    let mut b = vec![Backend::Dir, Backend::S3];
    match external_endpoint() {
        Some(_) => b.push(Backend::External),
        None => eprintln!("KEEL_S3_TEST_ENDPOINT not set: the external-server run is skipped (CI sets it)"),
    }
    b
}

pub fn external_endpoint() -> Option<String> {
    std::env::var("KEEL_S3_TEST_ENDPOINT").ok().filter(|s| !s.is_empty())
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

fn unique() -> String {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{:x}-{}", t & 0xffff_ffff_ffff, N.fetch_add(1, Ordering::Relaxed))
}

/// Where a test repository's store is, in a form a child process can be given (`encode`/`decode`).
#[derive(Clone, Debug)]
pub struct StoreSpec {
    pub dir: Option<std::path::PathBuf>,
    pub endpoint: String,
    pub bucket: String,
    pub keys: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl StoreSpec {
    pub fn encode(&self) -> String {
        let p = |o: &Option<std::path::PathBuf>| o.as_ref().map_or(String::new(), |p| p.display().to_string());
        let (a, k) = self.keys.clone().unzip();
        [p(&self.dir), self.endpoint.clone(), self.bucket.clone(), p(&a), p(&k)].join("\u{1f}")
    }

    pub fn decode(s: &str) -> StoreSpec {
        let f: Vec<&str> = s.split('\u{1f}').collect();
        let path = |s: &str| (!s.is_empty()).then(|| std::path::PathBuf::from(s));
        StoreSpec {
            dir: path(f[0]),
            endpoint: f[1].to_owned(),
            bucket: f[2].to_owned(),
            keys: path(f[3]).zip(path(f[4])),
        }
    }

    pub fn connect(&self) -> AnyStore {
        if let Some(d) = &self.dir {
            return AnyStore::Dir(keel_s3::dir::DirStore::open(d).unwrap());
        }
        let mut cfg = S3Config::new(&self.bucket);
        cfg.endpoint = Some(self.endpoint.clone());
        cfg.path_style = true;
        cfg.region = Some(std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()));
        if let Some((a, s)) = &self.keys {
            cfg.access_key_file = Some(a.clone());
            cfg.secret_key_file = Some(s.clone());
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        AnyStore::S3(Box::new(rt.block_on(S3Store::connect(cfg)).unwrap()))
    }
}

/// A new, empty store for a repository (`dir` is used by the directory backend).
pub fn new_store(backend: Backend, dir: &Path) -> StoreSpec {
    let (endpoint, keys) = match backend {
        Backend::Dir => {
            return StoreSpec {
                dir: Some(dir.to_path_buf()),
                endpoint: String::new(),
                bucket: String::new(),
                keys: None,
            }
        }
        Backend::S3 => {
            let s = s3_server();
            (s.endpoint.clone(), Some((s.ak.clone(), s.sk.clone())))
        }
        Backend::External => (external_endpoint().unwrap(), None),
    };
    let spec = StoreSpec { dir: None, endpoint, bucket: format!("keel-backup-{}", unique()), keys };
    let AnyStore::S3(store) = spec.connect() else { unreachable!() };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(store.client().create_bucket().bucket(&spec.bucket).send()).unwrap();
    spec
}

/// A store for a new, empty repository (`dir` is used by the directory backend).
pub fn store(backend: Backend, dir: &Path) -> AnyStore {
    new_store(backend, dir).connect()
}

pub fn open_repo(store: &AnyStore) -> Repo {
    Repo::open_in(store.clone(), "repo", repo_key(), Create::IfAbsent).unwrap()
}

pub fn payload(id: u64) -> Vec<u8> {
    let mut p = format!("record {id} ").repeat(1 + (id % 13) as usize).into_bytes();
    p.resize(p.len().max(200), b'.');
    p
}

/// Polls `done` until it holds, failing the test after 120 s.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "waited 120 s for {what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
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

    /// Waits until the journal has sealed at least `n` segments, so that a backup taken now holds
    /// immutable segments that a later one can share. A fixed sleep is not enough on a busy disk.
    pub fn wait_for_sealed_segments(&self, n: u64) {
        // The first activation opens segment 1; each later one seals the segment before it.
        wait_until(&format!("the load to seal {n} segments"), || self.journal.write_stats().activations > n);
    }

    /// Waits until at least `n` adds were acknowledged in all (a fixed sleep proves nothing on a busy disk).
    pub fn wait_for_acked(&self, n: usize) {
        wait_until(&format!("the load to acknowledge {n} adds"), || self.acked.lock().unwrap().len() >= n);
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
        let r =
            rec.records.get(id).unwrap_or_else(|| panic!("acknowledged id {id} (LSN {lsn}) missing from the restore"));
        assert_eq!(r.lsn.0, *lsn);
        assert_eq!(j.read(*id).unwrap(), payload(*id), "id {id}");
    }
    for (id, r) in &rec.records {
        assert!(r.lsn.0 < next_lsn, "id {id} at LSN {} is at or after the cut {next_lsn}", r.lsn.0);
    }
    assert_eq!(rec.report.last_lsn.map_or(0, |l| l.0 + 1), next_lsn);
    rec.records.len()
}
