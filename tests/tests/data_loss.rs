//! The confirmed data-loss defects of issue 24, tried as a user would: with the `keel` binary alone (and
//! a byte edited on disk where the defect is damage). Each failed before its fix.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use base64::Engine;
use keel_journal::inspect::inspect;
use keel_journal::RecoveryMode;
use keel_tests::{keel, keel_bin, stderr, stdout};

/// `keel journal import` with `args`, fed `lines` on standard input.
fn import(dir: &Path, args: &[&str], lines: &str) -> Output {
    let mut child = Command::new(keel_bin())
        .args(["journal", "import", "--dir", dir.to_str().unwrap()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "import {args:?}: {}", stderr(&o));
    o
}

fn adds(ids: impl Iterator<Item = u64>, len: usize) -> String {
    ids.map(|id| {
        let payload = base64::engine::general_purpose::STANDARD.encode(vec![(id % 251) as u8; len]);
        format!("{{\"type\":\"add\",\"id\":{id},\"kind\":1,\"payload\":\"{payload}\"}}\n")
    })
    .collect()
}

/// Defect 1: tools run with their default segment size against a journal of another size overwrote its
/// segment 1 once a checkpoint had been taken with no active segment.
#[test]
fn importing_with_another_segment_size_keeps_every_record() {
    let t = tempfile::tempdir().unwrap();
    let (dir, key) = (t.path().join("j"), t.path().join("key"));
    std::fs::write(&key, format!("1:{}\n", "ab".repeat(32))).unwrap();
    let key = key.to_str().unwrap();
    import(&dir, &["--segment-bytes", "65536"], &adds(0..2000, 200));
    import(&dir, &["--segment-bytes", "65536", "--key-file", key], "");
    import(&dir, &["--segment-bytes", "131072", "--key-file", key], "");

    let dir = dir.to_str().unwrap();
    let o = keel(&["journal", "verify", "--dir", dir, "--key-file", key]);
    assert!(o.status.success(), "verify: {}{}", stdout(&o), stderr(&o));
    let o = keel(&["journal", "stats", "--dir", dir, "--key-file", key, "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(stats["live_records"], 2000, "{}", stdout(&o));
}

/// Defect 2: a flipped byte in an old, fdatasynced sync group was reported as a torn tail, `verify`
/// exited 0, and open discarded every later acknowledged record.
#[test]
fn damage_in_an_old_sync_group_fails_verify_and_open() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("j");
    let write = ["--segment-bytes", "16777216", "--sync", "interval:60000"];
    // One sync group of eight records (the import's closing fdatasync), then ten groups of one.
    import(&dir, &write, &adds(0..8, 100));
    for id in 100..110 {
        import(&dir, &write, &adds(id..id + 1, 100));
    }
    let mut at = None;
    inspect(&dir, RecoveryMode::Strict, None, &mut |f| {
        if f.header.id == 1 {
            at = Some((f.path.to_path_buf(), f.offset));
        }
    })
    .unwrap();
    let (path, offset) = at.expect("record 1's frame");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset as usize + 40 + 10] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let d = dir.to_str().unwrap();
    let o = keel(&["journal", "verify", "--dir", d]);
    assert_eq!(o.status.code(), Some(1), "verify fails: {}{}", stdout(&o), stderr(&o));
    let said = format!("{}{}", stdout(&o), stderr(&o));
    assert!(said.contains(path.file_name().unwrap().to_str().unwrap()), "names the file: {said}");
    assert!(said.contains(&offset.to_string()), "names the damaged frame's offset {offset}: {said}");
    // A writer's open starts from the checkpoint the last close wrote, which covers the damage: it drops
    // nothing, seals nothing over the damage, and every later record is still there.
    import(&dir, &[], "");
    let (j, recovered) = keel_journal::Journal::open(&dir, keel_journal::Options::default()).unwrap();
    assert!(recovered.report.torn_tail.is_none());
    let ids: Vec<u64> = recovered.records.keys().copied().collect();
    assert_eq!(ids, (0..8).chain(100..110).collect::<Vec<_>>());
    drop(j);
    let o = keel(&["journal", "verify", "--dir", d]);
    assert_eq!(o.status.code(), Some(1), "the damage is still reported: {}", stdout(&o));
}
