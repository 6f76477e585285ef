//! Backup and restore against restic: the same journal (random, incompressible payloads), backed up by
//! `keel backup create` and by `restic backup` to local repositories on the same disk, restored by each,
//! then backed up again after 1 % new data. Every step runs in a child process whose wall time and peak
//! RSS (`wait4`'s `ru_maxrss`) are its own; the page cache is dropped before each step when we may
//! (root), so that both tools read from the disk.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use keel_journal::{Journal, Options, SyncPolicy};
use serde::Serialize;

/// One child process's cost.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub secs: f64,
    pub max_rss_kib: u64,
    #[serde(skip)]
    pub stdout: String,
}

/// Runs `cmd` to completion; fails on a non-zero exit.
pub fn measured(cmd: &mut Command) -> io::Result<Step> {
    drop_caches();
    let began = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || io::read_to_string(out));
    let err = std::thread::spawn(move || io::read_to_string(err));
    let mut status = 0i32;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our own unreaped child; status and usage point to live locals.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    let secs = began.elapsed().as_secs_f64();
    let stdout = out.join().expect("reader thread")?;
    let stderr = err.join().expect("reader thread")?;
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(io::Error::other(format!("{cmd:?} failed ({status}): {stderr}")));
    }
    Ok(Step { secs, max_rss_kib: usage.ru_maxrss as u64, stdout })
}

/// Writes back dirty pages and, when permitted, empties the page cache.
pub fn drop_caches() -> bool {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn fill_random(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
}

/// Appends `bytes` of records of `record_bytes` random bytes to the journal in `dir`, ids from `first_id`;
/// returns the next id. Removes spare segments afterwards (restic would read them; Keel skips them).
pub fn append_random(dir: &Path, bytes: u64, record_bytes: usize, first_id: u64) -> io::Result<u64> {
    let opts = Options {
        sync: SyncPolicy::Never,
        auto_maintenance: false,
        segment_bytes: 64 << 20,
        return_records: false,
        ..Options::default()
    };
    let (j, _) = Journal::open(dir, opts).map_err(io::Error::other)?;
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ first_id;
    let mut record = vec![0u8; record_bytes];
    let (mut written, mut id) = (0u64, first_id);
    let mut window = Vec::with_capacity(4096);
    while written < bytes {
        fill_random(&mut record, &mut state);
        window.push(j.add_async(id, 1, &record));
        written += record_bytes as u64 + 40;
        id += 1;
        if window.len() == 4096 {
            for p in window.drain(..) {
                p.wait().map_err(io::Error::other)?;
            }
        }
    }
    for p in window.drain(..) {
        p.wait().map_err(io::Error::other)?;
    }
    j.sync().map_err(io::Error::other)?;
    j.close().map_err(io::Error::other)?;
    remove_spares(dir)?;
    Ok(id)
}

fn remove_spares(dir: &Path) -> io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "kseg") {
            let mut head = [0u8; 8];
            use std::os::unix::fs::FileExt;
            std::fs::File::open(&p)?.read_exact_at(&mut head, 0)?;
            if head == [0u8; 8] {
                std::fs::remove_file(&p)?;
            }
        }
    }
    Ok(())
}

fn du(p: &Path) -> io::Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(p)? {
        let e = e?;
        let m = e.metadata()?;
        n += if m.is_dir() { du(&e.path())? } else { m.len() };
    }
    Ok(n)
}

#[derive(Clone, Debug, Serialize)]
pub struct Tool {
    pub backup: Step,
    pub backup_mb_per_s: f64,
    pub restore: Step,
    pub restore_mb_per_s: f64,
    pub incremental: Step,
    /// Bytes the second backup added to the repository, and that as a share of the data backed up.
    pub incremental_bytes: u64,
    pub incremental_ratio: f64,
    pub repo_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackupBench {
    pub data_bytes: u64,
    pub new_bytes: u64,
    pub caches_dropped: bool,
    pub keel: Tool,
    pub restic: Tool,
    pub backup_ratio: f64,
    pub restore_ratio: f64,
    /// restic's restore followed by `sync` (as durable as Keel's), and Keel's throughput against it.
    pub restic_restore_synced: Step,
    pub restic_restore_synced_mb_per_s: f64,
    pub restore_ratio_synced: f64,
    /// `cp -r` of the data followed by `sync`: the disk's bound for a durable restore from this disk.
    pub raw_copy: Step,
    pub raw_copy_mb_per_s: f64,
    pub restore_ratio_raw_copy: f64,
}

/// The whole comparison in `scratch`: `keel` is this build's binary.
pub fn compare(scratch: &Path, keel: &Path, data_mib: u64, record_bytes: usize) -> io::Result<BackupBench> {
    let data = scratch.join("journal");
    let next_id = append_random(&data, data_mib << 20, record_bytes, 0)?;
    let data_bytes = du(&data)?;
    let key = scratch.join("repo.key");
    std::fs::write(&key, format!("1:{}\n", "3e".repeat(32)))?;
    let caches_dropped = drop_caches();

    let keel_repo = scratch.join("keel-repo");
    let keel_cmd = |args: &[&str], path: &Path| {
        let mut c = Command::new(keel);
        c.args(args).arg(path).arg("--repo").arg(&keel_repo).arg("--repo-key-file").arg(&key).arg("--json");
        c
    };
    let restic_repo = scratch.join("restic-repo");
    let restic = |args: &[&str]| {
        let mut c = Command::new("restic");
        c.arg("-r")
            .arg(&restic_repo)
            .args(args)
            .env("RESTIC_PASSWORD", "keel-bench")
            .env("RESTIC_CACHE_DIR", scratch.join("restic-cache"));
        c
    };
    let mib = |b: u64, s: f64| b as f64 / 1e6 / s;

    // Full backups.
    let k_backup = measured(&mut keel_cmd(&["backup", "create", "--data"], &data))?;
    measured(&mut restic(&["init"]))?;
    let r_backup = measured(restic(&["backup", "--json"]).arg(&data))?;
    // Restores.
    let (k_target, r_target) = (scratch.join("keel-restore"), scratch.join("restic-restore"));
    let k_restore = measured(&mut keel_cmd(&["backup", "restore", "--snapshot", "latest", "--target"], &k_target))?;
    let r_restore = measured(restic(&["restore", "latest", "--target"]).arg(&r_target))?;
    let restored = du(&k_target)?;
    let _ = std::fs::remove_dir_all(&r_target);
    // restic does not fsync what it restores; Keel does. The same restore with a sync after it is the
    // durable equivalent, and a plain copy of the data plus sync is the disk's bound for any restore.
    let r_restore_synced = measured(
        Command::new("sh")
            .arg("-c")
            .arg("restic -r \"$1\" restore latest --target \"$2\" >/dev/null && sync")
            .arg("sh")
            .arg(&restic_repo)
            .arg(&r_target)
            .env("RESTIC_PASSWORD", "keel-bench")
            .env("RESTIC_CACHE_DIR", scratch.join("restic-cache")),
    )?;
    let copy_target = scratch.join("copy");
    let raw_copy = measured(
        Command::new("sh").arg("-c").arg("cp -r \"$1\" \"$2\" && sync").arg("sh").arg(&data).arg(&copy_target),
    )?;
    for t in [&k_target, &r_target, &copy_target] {
        let _ = std::fs::remove_dir_all(t);
    }
    // 1 % new data, backed up again.
    let new_bytes = data_bytes / 100;
    append_random(&data, new_bytes, record_bytes, next_id)?;
    let (k_repo_before, r_repo_before) = (du(&keel_repo)?, du(&restic_repo)?);
    let k_incr = measured(&mut keel_cmd(&["backup", "create", "--data"], &data))?;
    let r_incr = measured(restic(&["backup", "--json"]).arg(&data))?;
    let (k_repo, r_repo) = (du(&keel_repo)?, du(&restic_repo)?);
    let k_added = k_repo - k_repo_before;
    let r_added = r_repo - r_repo_before;
    let keel = Tool {
        backup_mb_per_s: mib(data_bytes, k_backup.secs),
        backup: k_backup,
        restore_mb_per_s: mib(restored, k_restore.secs),
        restore: k_restore,
        incremental: k_incr,
        incremental_bytes: k_added,
        incremental_ratio: k_added as f64 / data_bytes as f64,
        repo_bytes: k_repo,
    };
    let restic = Tool {
        backup_mb_per_s: mib(data_bytes, r_backup.secs),
        backup: r_backup,
        restore_mb_per_s: mib(restored, r_restore.secs),
        restore: r_restore,
        incremental: r_incr,
        incremental_bytes: r_added,
        incremental_ratio: r_added as f64 / data_bytes as f64,
        repo_bytes: r_repo,
    };
    let synced = mib(restored, r_restore_synced.secs);
    let raw = mib(data_bytes, raw_copy.secs);
    Ok(BackupBench {
        restore_ratio_synced: keel.restore_mb_per_s / synced,
        restic_restore_synced: r_restore_synced,
        restic_restore_synced_mb_per_s: synced,
        restore_ratio_raw_copy: keel.restore_mb_per_s / raw,
        raw_copy,
        raw_copy_mb_per_s: raw,
        data_bytes,
        new_bytes,
        caches_dropped,
        backup_ratio: keel.backup_mb_per_s / restic.backup_mb_per_s,
        restore_ratio: keel.restore_mb_per_s / restic.restore_mb_per_s,
        keel,
        restic,
    })
}

/// A scratch directory under `dir` for `compare`.
pub fn scratch_in(dir: &Path) -> io::Result<(tempfile::TempDir, PathBuf)> {
    let t = tempfile::Builder::new().prefix("keel-bench-backup-").tempdir_in(dir)?;
    let p = t.path().to_path_buf();
    Ok((t, p))
}
