//! `keel backup` and `keel drill` as operators run them: a backup of a journal that a real `keel journal
//! stress` process keeps writing (every record acknowledged before the backup began is in the restore),
//! a data directory with page stores, and drills that pass and that fail — corrupted object, wrong key,
//! deadline — each with the exit code and metrics it should produce.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use keel_tests::{keel, keel_bin, stderr, stdout};

fn key_file(dir: &Path, name: &str, byte: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("1:{}\n", byte.repeat(32))).unwrap();
    p.to_str().unwrap().to_owned()
}

fn with_repo_key<'a>(args: &[&'a str], key: &'a str) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.extend(["--repo-key-file", key]);
    v
}

#[test]
fn backup_of_a_journal_a_live_process_writes_restores_every_acknowledged_record() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let repo = t.path().join("repo");
    let acks = t.path().join("acks");
    let key = key_file(t.path(), "repo.key", "4e");
    let (data_s, repo_s, acks_s) = (data.to_str().unwrap(), repo.to_str().unwrap(), acks.to_str().unwrap());
    let mut writer = Command::new(keel_bin())
        .args([
            "journal",
            "stress",
            "--dir",
            data_s,
            "--writers",
            "4",
            "--size",
            "2000",
            "--secs",
            "60",
            "--ack-log",
            acks_s,
        ])
        .args(["--segment-bytes", "1048576"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The writer has acknowledged records before the first backup (a fixed sleep proves nothing on a busy
    // machine: the child may still be starting).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(&acks).map_or(0, |a| a.lines().count()) < 200 {
        assert!(std::time::Instant::now() < deadline, "the writer acknowledged fewer than 200 records in 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut snapshots = Vec::new();
    for round in 0..3 {
        // What was acknowledged before this backup began must be in it.
        let acked_before = std::fs::read_to_string(&acks).unwrap();
        let acked_before = &acked_before[..acked_before.rfind('\n').map_or(0, |i| i + 1)];
        let before = t.path().join(format!("acks-{round}"));
        std::fs::write(&before, acked_before).unwrap();
        let o = keel(&with_repo_key(&["backup", "create", "--data", data_s, "--repo", repo_s, "--json"], &key));
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        snapshots.push((v["id"].as_str().unwrap().to_owned(), before, v["next_lsn"].as_u64().unwrap()));
        std::thread::sleep(Duration::from_millis(500));
    }
    writer.kill().unwrap();
    writer.wait().unwrap();
    for (id, before, next_lsn) in &snapshots {
        let target = t.path().join(format!("restore-{id}"));
        let target_s = target.to_str().unwrap();
        let o = keel(&with_repo_key(
            &["backup", "restore", "--repo", repo_s, "--snapshot", id, "--target", target_s],
            &key,
        ));
        assert!(o.status.success(), "{}", stderr(&o));
        let o = keel(&["journal", "verify-acks", "--dir", target_s, "--ack-log", before.to_str().unwrap()]);
        assert!(o.status.success(), "snapshot {id}: {}{}", stdout(&o), stderr(&o));
        let o = keel(&["journal", "verify", "--dir", target_s]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = stdout(&o);
        let last: u64 = out.split("last LSN ").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
        assert_eq!(last + 1, *next_lsn, "nothing after the cut: {out}");
    }
    // A restore refuses a non-empty target.
    let target = t.path().join(format!("restore-{}", snapshots[0].0));
    let o = keel(&with_repo_key(
        &["backup", "restore", "--repo", repo_s, "--snapshot", "latest", "--target", target.to_str().unwrap()],
        &key,
    ));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not empty"), "{}", stderr(&o));
}

fn paging_data(dir: &Path) {
    use keel_journal::{Journal, Options};
    use keel_paging::{Paging, PagingOptions};
    let jopts = Options { segment_bytes: 1 << 20, ..Options::default() };
    let (journal, rec) = Journal::open(dir.join("journal"), jopts).unwrap();
    let opts = PagingOptions { page_bytes: 64 << 10, max_size_bytes: 0, ..PagingOptions::default() };
    let paging = Paging::open(dir.join("pages"), Arc::new(journal), &rec.prepared, opts).unwrap();
    let a = paging.address("orders").unwrap();
    let s = a.subscribe("billing").unwrap();
    for i in 0..500u32 {
        a.send(&vec![(i % 250) as u8; 1000], None).unwrap();
    }
    for _ in 0..120 {
        let d = s.receive().unwrap().unwrap();
        s.ack(d.seq).unwrap();
    }
}

#[test]
fn a_data_directory_with_page_stores_round_trips() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    paging_data(&data);
    let key = key_file(t.path(), "repo.key", "51");
    let repo = t.path().join("repo");
    let (data_s, repo_s) = (data.to_str().unwrap(), repo.to_str().unwrap());
    let o = keel(&with_repo_key(&["backup", "create", "--data", data_s, "--repo", repo_s], &key));
    assert!(o.status.success(), "{}", stderr(&o));
    let target = t.path().join("restored");
    let target_s = target.to_str().unwrap();
    let o = keel(&with_repo_key(
        &["backup", "restore", "--repo", repo_s, "--snapshot", "latest", "--target", target_s],
        &key,
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let stats = |dir: &str| {
        let o = keel(&["paging", "stats", "--dir", dir, "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let (mut a, mut b) = (stats(data_s), stats(target_s));
    for v in [&mut a, &mut b] {
        for address in v["addresses"].as_array_mut().unwrap() {
            address.as_object_mut().unwrap().remove("dir");
        }
    }
    assert_eq!(a["addresses"], b["addresses"]);
    assert_eq!(a["addresses"][0]["subscriptions"][0]["pending_messages"], 380);
    let o = keel(&["paging", "verify", "--dir", target_s]);
    assert!(o.status.success(), "{}", stdout(&o));
    let o = keel(&with_repo_key(&["drill", "--repo", repo_s, "--json"], &key));
    assert!(o.status.success(), "{}", stdout(&o));
    // A point-in-time restore brings back the journal only, and says so.
    let o = keel(&with_repo_key(&["backup", "archive", "--data", data_s, "--repo", repo_s, "--once"], &key));
    assert!(o.status.success(), "{}", stderr(&o));
    let pit = t.path().join("pit");
    let o = keel(&with_repo_key(
        &["backup", "restore", "--repo", repo_s, "--to-lsn", "100", "--target", pit.to_str().unwrap()],
        &key,
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("journal only"), "{}", stdout(&o));
    assert!(pit.join("journal").join("KEEL-JOURNAL").exists() && !pit.join("pages").exists());
    let o = keel(&["journal", "verify", "--dir", pit.join("journal").to_str().unwrap()]);
    assert!(stdout(&o).contains("last LSN 100,"), "{}", stdout(&o));
}

fn metric(text: &str, line_start: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .unwrap_or_else(|| panic!("no {line_start} in {text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn drills_pass_and_fail_with_exit_codes_and_metrics() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let data_s = data.to_str().unwrap();
    let o = keel(&[
        "journal",
        "stress",
        "--dir",
        data_s,
        "--writers",
        "2",
        "--size",
        "500",
        "--count",
        "3000",
        "--ack-log",
        "-",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let key = key_file(t.path(), "repo.key", "62");
    let repo = t.path().join("repo");
    let repo_s = repo.to_str().unwrap();
    assert!(keel(&with_repo_key(&["backup", "create", "--data", data_s, "--repo", repo_s], &key)).status.success());
    let metrics = t.path().join("keel_drill.prom");
    let report = t.path().join("drill.json");
    let drill = |key: &str, extra: &[&str]| {
        let mut args = vec![
            "drill",
            "--repo",
            repo_s,
            "--metrics",
            metrics.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ];
        args.extend(extra);
        let o = keel(&with_repo_key(&args, key));
        let m = std::fs::read_to_string(&metrics).unwrap();
        let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        (o, m, r)
    };
    let reason = |m: &str, r: &str| metric(m, &format!("keel_drill_failure{{repository=\"{repo_s}\",reason=\"{r}\"}}"));
    let success = format!("keel_drill_success{{repository=\"{repo_s}\"}}");

    // Success.
    let (o, m, r) = drill(&key, &[]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(metric(&m, &success), "1");
    assert_eq!(r["records"], 3000);
    assert_eq!(r["frames"], r["expected_frames"]);
    assert!(metric(&m, "keel_drill_restore_bytes").parse::<u64>().unwrap() > 1_000_000);
    assert!(metric(&m, "keel_drill_data_age_seconds").parse::<f64>().unwrap() >= 0.0);
    for f in ["damaged", "key", "deadline"] {
        assert_eq!(reason(&m, f), "0");
    }
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("keel-drill-{}", 0)))
        .collect();
    assert!(leftovers.is_empty());

    // Wrong key.
    let wrong = key_file(t.path(), "wrong.key", "63");
    let (o, m, r) = drill(&wrong, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert_eq!(metric(&m, &success), "0");
    assert_eq!(reason(&m, "key"), "1");
    assert!(r["error"].as_str().unwrap().contains("wrong repository key"), "{r}");

    // Deadline: a drill that cannot finish in time.
    let (o, m, r) = drill(&key, &["--deadline", "1ms"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(reason(&m, "deadline"), "1");
    assert_eq!(r["failure"], "deadline");

    // A corrupted object: named in the report.
    let mut chunks = Vec::new();
    collect_files(&repo.join("data"), &mut chunks);
    chunks.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let victim = chunks.last().unwrap();
    let mut bytes = std::fs::read(victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(victim, bytes).unwrap();
    let (o, m, r) = drill(&key, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(reason(&m, "damaged"), "1");
    let name = victim.file_name().unwrap().to_str().unwrap();
    assert!(r["error"].as_str().unwrap().contains(name), "{r}");
    let o = keel(&with_repo_key(&["backup", "verify", "--repo", repo_s], &key));
    assert!(o.status.success(), "same size: only reading finds it: {}", stdout(&o));
    let o = keel(&with_repo_key(&["backup", "verify", "--repo", repo_s, "--read-data"], &key));
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains(name), "{}", stdout(&o));
}

#[test]
fn a_drill_against_an_unresponsive_s3_endpoint_stops_at_its_deadline() {
    // Accepts connections and never answers: a hung store, not a refused one.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = tempfile::tempdir().unwrap();
    let key = key_file(t.path(), "repo.key", "71");
    let metrics = t.path().join("m.prom");
    let bin = keel_bin(); // built (on first use) before the clock starts
    let began = std::time::Instant::now();
    let o = Command::new(bin)
        .args(["drill", "--repo", "s3://hung/keel", "--deadline", "3s", "--metrics", metrics.to_str().unwrap()])
        .args(["--repo-key-file", &key])
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "y")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    let took = began.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(
        took < Duration::from_secs(20),
        "the deadline did not bound the drill: {took:?}: {}{}",
        stdout(&o),
        stderr(&o)
    );
    let m = std::fs::read_to_string(&metrics).unwrap();
    assert!(m.contains("reason=\"deadline\"} 1"), "{m}");
    drop(listener);
}

fn collect_files(p: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            collect_files(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}
