//! The `keel` binary on good and bad input: exit codes, and errors that name what and where.

use std::io::Write;
use std::process::{Command, Stdio};

use keel_tests::{keel, keel_bin, stderr, stdout};

fn stress(dir: &str, acks: &str, count: &str) {
    let o = keel(&[
        "journal",
        "stress",
        "--dir",
        dir,
        "--ack-log",
        acks,
        "--count",
        count,
        "--writers",
        "4",
        "--size",
        "200",
        "--segment-bytes",
        "65536",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("records/s"), "prints throughput: {}", stdout(&o));
}

#[test]
fn stress_verify_print_import_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let (dir, acks, copy) = (t.path().join("j"), t.path().join("acks"), t.path().join("copy"));
    let (dir, acks, copy) = (dir.to_str().unwrap(), acks.to_str().unwrap(), copy.to_str().unwrap());
    stress(dir, acks, "2000");
    let o = keel(&["journal", "verify-acks", "--dir", dir, "--ack-log", acks]);
    assert!(o.status.success() && stdout(&o).contains("all 2000 acknowledged"), "{}", stdout(&o));
    let o = keel(&["journal", "verify", "--dir", dir]);
    assert!(o.status.success() && stdout(&o).contains("verify: ok"), "{}", stdout(&o));
    let o = keel(&["journal", "stats", "--dir", dir, "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(stats["live_records"], 2000);
    assert!(stats["segments"].as_u64().unwrap() > 3);
    let printed = keel(&["journal", "print", "--dir", dir, "--json"]);
    assert!(printed.status.success());
    let first: serde_json::Value =
        serde_json::from_slice(printed.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    for field in ["type", "id", "kind", "tx", "lsn", "payload"] {
        assert!(first.get(field).is_some(), "print --json has {field}: {first}");
    }
    let mut import = Command::new(keel_bin())
        .args(["journal", "import", "--dir", copy, "--segment-bytes", "65536"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    import.stdin.take().unwrap().write_all(&printed.stdout).unwrap();
    let o = import.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = keel(&["journal", "verify-acks", "--dir", copy, "--ack-log", acks]);
    assert!(o.status.success(), "the imported journal holds every record: {}", stdout(&o));
}

#[test]
fn verify_names_file_and_offset_of_corruption_and_exits_1() {
    let t = tempfile::tempdir().unwrap();
    let (dir, acks) = (t.path().join("j"), t.path().join("acks"));
    stress(dir.to_str().unwrap(), acks.to_str().unwrap(), "3000");
    let seg = dir.join("00000000000000000001.kseg");
    let mut b = std::fs::read(&seg).unwrap();
    b[5000] ^= 0x20;
    std::fs::write(&seg, b).unwrap();
    let o = keel(&["journal", "verify", "--dir", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let out = stdout(&o);
    assert!(out.contains("00000000000000000001.kseg") && out.contains("byte offset"), "{out}");
    let o = keel(&["journal", "print", "--dir", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "print refuses a corrupt journal");
    assert!(stderr(&o).contains("00000000000000000001.kseg"), "{}", stderr(&o));
    let o = keel(&["journal", "print", "--dir", dir.to_str().unwrap(), "--salvage"]);
    assert_eq!(o.status.code(), Some(1), "salvage prints what it can and reports the skip");
    assert!(stderr(&o).contains("skipped"), "{}", stderr(&o));
}

#[test]
fn bad_input_is_a_clear_error_never_a_panic() {
    let t = tempfile::tempdir().unwrap();
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["journal", "verify", "--dir", "/nonexistent/keel"], "/nonexistent/keel"),
        (vec!["journal", "verify", "--dir", empty.to_str().unwrap()], "no journal here"),
        (vec!["journal", "stress", "--dir", "x", "--ack-log", "-", "--count", "1", "--size", "4"], "--size"),
        (vec!["journal", "stress", "--dir", "x", "--ack-log", "-", "--count", "1", "--sync", "sometimes"], "sometimes"),
        (
            vec!["journal", "verify-acks", "--dir", empty.to_str().unwrap(), "--ack-log", "/nonexistent/acks"],
            "/nonexistent/acks",
        ),
    ];
    for (args, needle) in cases {
        let o = keel(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?} names {needle}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{args:?}");
    }
    // A malformed import line names its line number.
    let dir = t.path().join("imp");
    let mut import = Command::new(keel_bin())
        .args(["journal", "import", "--dir", dir.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    import
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"type\":\"add\",\"id\":1,\"kind\":0,\"tx\":null,\"payload\":\"AA==\"}\n{\"type\":\"explode\"}\n")
        .unwrap();
    let o = import.wait_with_output().unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("line 2"), "{}", stderr(&o));
    // An acked id that is missing is reported as lost, exit 1.
    let (j, acks) = (t.path().join("j2"), t.path().join("acks2"));
    stress(j.to_str().unwrap(), acks.to_str().unwrap(), "10");
    std::fs::OpenOptions::new().append(true).open(&acks).unwrap().write_all(b"999999\n").unwrap();
    let o = keel(&["journal", "verify-acks", "--dir", j.to_str().unwrap(), "--ack-log", acks.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("record 999999 was acknowledged but is missing"), "{}", stdout(&o));
}

/// A real full disk: a 4 MiB tmpfs. Stress stops with a clear error and a non-zero exit, and every id in
/// its ack log is in the journal. Needs root (CI runs as root) to mount.
#[test]
fn stress_on_a_full_disk_stops_cleanly_and_keeps_its_acks() {
    let t = tempfile::tempdir().unwrap();
    let mnt = t.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let m = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "keel-test", mnt.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(m.status.success(), "mounting a tmpfs needs root: {}", String::from_utf8_lossy(&m.stderr));
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let dir = mnt.join("j");
    let acks = t.path().join("acks");
    let o = keel(&[
        "journal",
        "stress",
        "--dir",
        dir.to_str().unwrap(),
        "--ack-log",
        acks.to_str().unwrap(),
        "--count",
        "100000",
        "--writers",
        "4",
        "--size",
        "1000",
        "--segment-bytes",
        "1048576",
    ]);
    assert_eq!(o.status.code(), Some(1), "stress fails on a full disk: {}", stderr(&o));
    assert!(stderr(&o).contains("no space left"), "{}", stderr(&o));
    let acked = std::fs::read_to_string(&acks).unwrap().lines().count();
    assert!(acked > 1000, "it wrote until the disk was full ({acked} acks)");
    let o = keel(&["journal", "verify-acks", "--dir", dir.to_str().unwrap(), "--ack-log", acks.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stdout(&o));
}

#[test]
fn encryption_tools_verify_rekey_and_key_errors() {
    let t = tempfile::tempdir().unwrap();
    let (dir, acks) = (t.path().join("j"), t.path().join("acks"));
    let (d, a) = (dir.to_str().unwrap(), acks.to_str().unwrap());
    let old = t.path().join("old.keys");
    let both = t.path().join("both.keys");
    let new = t.path().join("new.keys");
    std::fs::write(&old, format!("1:{}\n", "aa".repeat(32))).unwrap();
    std::fs::write(&both, format!("1:{}\n2:{}\n", "aa".repeat(32), "bb".repeat(32))).unwrap();
    std::fs::write(&new, format!("2:{}\n", "bb".repeat(32))).unwrap();
    let (old, both, new) = (old.to_str().unwrap(), both.to_str().unwrap(), new.to_str().unwrap());
    let o = keel(&[
        "journal",
        "stress",
        "--dir",
        d,
        "--ack-log",
        a,
        "--count",
        "3000",
        "--size",
        "300",
        "--segment-bytes",
        "65536",
        "--key-file",
        old,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = keel(&["journal", "verify", "--dir", d, "--key-file", old]);
    assert!(o.status.success() && stdout(&o).contains("authenticated"), "{}", stdout(&o));
    let o = keel(&["journal", "verify", "--dir", d]);
    assert!(o.status.success() && stdout(&o).contains("NOT AUTHENTICATED"), "{}", stdout(&o));
    let o = keel(&["journal", "verify-acks", "--dir", d, "--ack-log", a]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("key id 1"), "{}", stderr(&o));
    let o = keel(&["journal", "rekey", "--dir", d, "--key-file", both]);
    assert!(o.status.success() && stdout(&o).contains("key id 1 -> 2"), "{}{}", stdout(&o), stderr(&o));
    let o = keel(&["journal", "verify-acks", "--dir", d, "--ack-log", a, "--key-file", new]);
    assert!(o.status.success(), "after rekey the old key is not needed: {}{}", stdout(&o), stderr(&o));
    let o = keel(&["journal", "verify", "--dir", d, "--key-file", "/nonexistent/keel.keys"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent/keel.keys"), "names the missing key file: {}", stderr(&o));
    let bad = t.path().join("bad.keys");
    std::fs::write(&bad, "# keys\n1:nothex\n").unwrap();
    let o = keel(&["journal", "verify", "--dir", d, "--key-file", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("line 2"), "{}", stderr(&o));
}

/// `keel bench journal` runs end to end and reports, for a lone writer, Keel beside both raw loops: the
/// bare records and the same records framed as Keel's format frames them (docs/BENCHMARKS.md).
#[test]
fn bench_journal_reports_the_framed_baseline() {
    let t = tempfile::tempdir().unwrap();
    let o = keel(&[
        "bench",
        "journal",
        "--dir",
        t.path().to_str().unwrap(),
        "--writers",
        "1",
        "--sizes",
        "4096",
        "--secs",
        "0.3",
        "--rounds",
        "1",
        "--passes",
        "1",
        "--settle-ms",
        "0",
        "--segment-bytes",
        "1048576",
        "--no-peer",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let row = &out["rows"][0];
    for field in ["keel_vs_raw_loop", "keel_vs_raw_framed_loop", "raw_framed_loop_vs_raw_loop"] {
        assert!(row[field].as_f64().is_some_and(|r| r > 0.0), "{field} in {row}");
    }
    assert!(row["raw_framed_loop"]["appends"].as_u64().unwrap() > 0, "{row}");
    assert_eq!(row["keel_vs_raw_framed_loop_by_round"].as_array().unwrap().len(), 1);
}

/// An ack log that holds only deletes (a log cut at its start) is checked, not an arithmetic overflow.
#[test]
fn verify_acks_with_only_deletes() {
    let t = tempfile::tempdir().unwrap();
    let (dir, acks, only_deletes) = (t.path().join("j"), t.path().join("acks"), t.path().join("deletes"));
    let (dir, acks) = (dir.to_str().unwrap(), acks.to_str().unwrap());
    stress(dir, acks, "50");
    std::fs::write(&only_deletes, "-1000000\n-1000001\n").unwrap();
    let o = keel(&["journal", "verify-acks", "--dir", dir, "--ack-log", only_deletes.to_str().unwrap()]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("all 0 acknowledged records") && stdout(&o).contains("all 2 acknowledged deletes"));
    // A delete acknowledged for a record that is live fails.
    std::fs::write(&only_deletes, "-3\n").unwrap();
    let o = keel(&["journal", "verify-acks", "--dir", dir, "--ack-log", only_deletes.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
}
