//! Restore drills: restore a snapshot into a scratch directory, open it with full journal recovery, check
//! it against its manifest, and report — as JSON and as Prometheus text-format metrics — whether it
//! worked, how long it took and how old the data was.

use std::path::{Path, PathBuf};
use std::time::Instant;

use keel_journal::crypto::keys::KeyRing;
use keel_journal::RecoveryMode;

use crate::error::BackupError;
use crate::progress::Progress;
use crate::repo::Repo;
use crate::restore::{RestoreOptions, RestorePoint};

#[derive(Clone, Debug)]
pub struct DrillOptions {
    /// `latest`, a snapshot id or name.
    pub snapshot: String,
    /// The journal's master keys, when its segments are encrypted (recovery authenticates them).
    pub journal_keys: Option<KeyRing>,
    pub parallel: usize,
}

impl Default for DrillOptions {
    fn default() -> DrillOptions {
        DrillOptions { snapshot: "latest".into(), journal_keys: None, parallel: 8 }
    }
}

/// What went wrong, as a metric label: one of a few stable values an alert can match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DrillFailure {
    /// The repository could not be read (store unreachable, no repository, no snapshot).
    Repository,
    /// Wrong or missing repository or journal key.
    Key,
    /// An object is missing or does not match its checksum.
    Damaged,
    /// The restored journal does not recover.
    Recovery,
    /// It recovers, but not to what the manifest says.
    Mismatch,
    /// The drill ran past its deadline.
    Deadline,
    Other,
}

impl DrillFailure {
    pub fn label(self) -> &'static str {
        match self {
            DrillFailure::Repository => "repository",
            DrillFailure::Key => "key",
            DrillFailure::Damaged => "damaged",
            DrillFailure::Recovery => "recovery",
            DrillFailure::Mismatch => "mismatch",
            DrillFailure::Deadline => "deadline",
            DrillFailure::Other => "other",
        }
    }

    pub const ALL: [DrillFailure; 7] = [
        DrillFailure::Repository,
        DrillFailure::Key,
        DrillFailure::Damaged,
        DrillFailure::Recovery,
        DrillFailure::Mismatch,
        DrillFailure::Deadline,
        DrillFailure::Other,
    ];

    pub fn of(e: &BackupError) -> DrillFailure {
        use keel_journal::OpenError;
        match e {
            BackupError::WrongKey { .. } | BackupError::KeyMissing { .. } | BackupError::Key(_) => DrillFailure::Key,
            BackupError::Damaged { .. } | BackupError::Missing { .. } => DrillFailure::Damaged,
            BackupError::Store(keel_s3::StoreError::ChecksumMismatch { .. } | keel_s3::StoreError::Corrupt { .. }) => {
                DrillFailure::Damaged
            }
            BackupError::Store(keel_s3::StoreError::NotFound { .. }) => DrillFailure::Damaged,
            BackupError::Store(_) | BackupError::NoRepository { .. } | BackupError::NoSnapshot { .. } => {
                DrillFailure::Repository
            }
            BackupError::JournalOpen(OpenError::KeyUnavailable { .. }) => DrillFailure::Key,
            BackupError::JournalOpen(_) | BackupError::Journal(_) => DrillFailure::Recovery,
            BackupError::Deadline { .. } => DrillFailure::Deadline,
            _ => DrillFailure::Other,
        }
    }
}

/// A drill's outcome.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DrillReport {
    pub ok: bool,
    pub failure: Option<DrillFailure>,
    pub error: Option<String>,
    pub repository: String,
    pub snapshot: Option<String>,
    pub journal_id: Option<String>,
    pub started_unix_ms: u64,
    pub duration_secs: f64,
    pub restore_secs: f64,
    pub restore_bytes: u64,
    pub restore_chunks: u64,
    pub recovery_secs: f64,
    /// Live records after recovery, and frames read (seal frames included) against the manifest's count.
    pub records: u64,
    pub frames: u64,
    pub expected_frames: u64,
    pub next_lsn: u64,
    /// How old the restored data was when the drill ran: the recovery point an incident would have had.
    pub data_age_secs: f64,
}

impl DrillReport {
    pub fn failed(repository: &str, started_unix_ms: u64, failure: DrillFailure, error: String) -> DrillReport {
        DrillReport {
            ok: false,
            failure: Some(failure),
            error: Some(error),
            repository: repository.to_owned(),
            started_unix_ms,
            ..Default::default()
        }
    }

    /// Prometheus text format (for a node-exporter textfile collector or a push gateway).
    pub fn prometheus(&self) -> String {
        let repo = self.repository.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = String::new();
        let mut metric = |name: &str, help: &str, value: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{repository=\"{repo}\"}} {value}\n"
            ));
        };
        metric("keel_drill_success", "1 if the last restore drill succeeded, else 0.", u8::from(self.ok).to_string());
        metric(
            "keel_drill_last_run_timestamp_seconds",
            "When the last restore drill started (unix seconds).",
            format!("{:.3}", self.started_unix_ms as f64 / 1000.0),
        );
        metric(
            "keel_drill_duration_seconds",
            "Wall time of the last restore drill.",
            format!("{:.3}", self.duration_secs),
        );
        metric(
            "keel_drill_restore_seconds",
            "Time the last drill took to restore the snapshot.",
            format!("{:.3}", self.restore_secs),
        );
        metric("keel_drill_restore_bytes", "Bytes the last drill restored.", self.restore_bytes.to_string());
        metric(
            "keel_drill_recovery_seconds",
            "Time the restored journal took to recover.",
            format!("{:.3}", self.recovery_secs),
        );
        metric("keel_drill_records", "Live records in the restored journal.", self.records.to_string());
        metric("keel_drill_frames", "Frames recovered from the restored journal.", self.frames.to_string());
        metric(
            "keel_drill_data_age_seconds",
            "Age of the restored data at the drill: the recovery point an incident would have had.",
            format!("{:.3}", self.data_age_secs),
        );
        out.push_str(
            "# HELP keel_drill_failure 1 for the reason the last drill failed.\n# TYPE keel_drill_failure gauge\n",
        );
        for f in DrillFailure::ALL {
            let v = u8::from(self.failure == Some(f));
            out.push_str(&format!("keel_drill_failure{{repository=\"{repo}\",reason=\"{}\"}} {v}\n", f.label()));
        }
        out
    }
}

/// Writes `text` to `path` atomically (a textfile collector must never read half a file).
pub fn write_atomically(path: &Path, text: &str) -> Result<(), BackupError> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    std::fs::write(&tmp, text).map_err(BackupError::io(&tmp, "write"))?;
    std::fs::rename(&tmp, path).map_err(BackupError::io(path, "rename"))
}

impl Repo {
    /// Runs a drill restoring into `scratch` (which must be empty or absent; the caller removes it).
    /// Never fails: a failure is in the report.
    pub fn drill(&self, scratch: &Path, opts: &DrillOptions, progress: &Progress) -> DrillReport {
        let started = Instant::now();
        let started_unix_ms = crate::now_ms();
        let mut report = DrillReport { repository: self.location().to_owned(), started_unix_ms, ..Default::default() };
        if let Err(e) = self.drill_steps(scratch, opts, progress, &mut report) {
            report.failure = Some(DrillFailure::of(&e));
            report.error = Some(e.to_string());
        }
        report.ok = report.failure.is_none();
        report.duration_secs = started.elapsed().as_secs_f64();
        report
    }

    fn drill_steps(
        &self,
        scratch: &Path,
        opts: &DrillOptions,
        progress: &Progress,
        report: &mut DrillReport,
    ) -> Result<(), BackupError> {
        let ropts =
            RestoreOptions { parallel: opts.parallel, journal_keys: opts.journal_keys.clone(), ..Default::default() };
        let restored = self.restore(&RestorePoint::Snapshot(opts.snapshot.clone()), scratch, &ropts, progress)?;
        let s = &restored.snapshot;
        report.snapshot = Some(s.id.clone());
        report.journal_id = Some(s.journal_id.clone());
        report.restore_secs = restored.secs;
        report.restore_bytes = restored.bytes;
        report.restore_chunks = restored.chunks;
        report.expected_frames = s.frames;
        report.next_lsn = s.next_lsn;
        report.data_age_secs = crate::now_ms().saturating_sub(s.cut_unix_ms) as f64 / 1000.0;
        let began = Instant::now();
        let inspection = keel_journal::inspect::inspect(
            &restored.journal_dir,
            RecoveryMode::Strict,
            opts.journal_keys.as_ref(),
            &mut |_| {},
        )?;
        report.recovery_secs = began.elapsed().as_secs_f64();
        let rec = &inspection.recovered;
        let seals =
            inspection.segments.iter().filter(|g| matches!(g.end, keel_journal::SegmentEnd::Sealed { .. })).count()
                as u64;
        report.records = rec.records.len() as u64;
        report.frames = rec.report.frames + seals;
        let mismatch = |why: String| Err(BackupError::Data { path: restored.journal_dir.clone(), why });
        if let Some(t) = &rec.report.torn_tail {
            return mismatch(format!(
                "recovery found a torn tail in {} at {} (a snapshot ends at a whole frame)",
                t.path.display(),
                t.offset
            ));
        }
        let next = rec.report.last_lsn.map_or(s.first_lsn, |l| l.0 + 1);
        if next != s.next_lsn {
            return mismatch(format!("recovered up to LSN {next}, the manifest says the cut is {}", s.next_lsn));
        }
        if report.frames != s.frames {
            return mismatch(format!("recovered {} frames, the manifest says {}", report.frames, s.frames));
        }
        Ok(())
    }
}
