//! Opening a paged address with a large backlog: the peak RSS open adds, with the backlog's complete
//! pages in an object store (a directory store on the same disk) beside the same backlog on the volume.
//! Open checks every frame of every page, so both read the whole backlog once; what this measures is
//! that the object-store case streams it (a read-ahead chunk at a time) rather than holding it.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use keel_journal::{Journal, Options};
use keel_paging::{Paging, PagingOptions, RemotePages};
use serde::Serialize;

use crate::paging::{reset_peak_rss, to_io};
use crate::restart::proc_status_kib;

#[derive(Clone, Debug, Serialize)]
pub struct OpenRow {
    /// Where the complete pages are: `volume` or `object store`.
    pub pages: &'static str,
    pub backlog_mib: u64,
    pub open_secs: f64,
    /// Peak RSS during open, less the RSS before it.
    pub open_rss_mib: f64,
    /// The memory budget (`global_max_bytes`) the issue bounds open by (plus 64 MiB).
    pub budget_mib: u64,
}

fn options(objects: Option<&Path>) -> io::Result<PagingOptions> {
    let remote = match objects {
        Some(o) => {
            let store = keel_s3::dir::DirStore::open(o).map_err(to_io)?;
            Some(RemotePages { store: store.into(), prefix: "pages/".into() })
        }
        None => None,
    };
    Ok(PagingOptions { max_size_bytes: 0, remote, ..PagingOptions::default() })
}

fn open(dir: &Path, objects: Option<&Path>) -> io::Result<Paging> {
    let (journal, rec) = Journal::open(dir.join("journal"), Options::default()).map_err(to_io)?;
    Paging::open(dir.join("pages"), Arc::new(journal), &rec.prepared, options(objects)?).map_err(to_io)
}

/// Fills a store with `backlog_mib` of 64 KiB messages under one subscription.
fn fill(dir: &Path, objects: Option<&Path>, backlog_mib: u64) -> io::Result<()> {
    let paging = Arc::new(open(dir, objects)?);
    let address = paging.address("backlog").map_err(to_io)?;
    address.subscribe("s").map_err(to_io)?;
    let per = (backlog_mib << 20) / (64 << 10) / 4;
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let address = address.clone();
            std::thread::spawn(move || -> io::Result<()> {
                let payload = vec![0x5Au8; 64 << 10];
                for _ in 0..per {
                    address.send(&payload, None).map_err(to_io)?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| io::Error::other("producer panicked"))??;
    }
    paging.wait_uploaded().map_err(to_io)?;
    Ok(())
}

/// Builds a backlog of `backlog_mib` on the volume and one in a directory object store under `dir`, and
/// opens each, measuring the RSS open adds.
pub fn run(dir: &Path, backlog_mib: u64) -> io::Result<Vec<OpenRow>> {
    let scratch = tempfile::Builder::new().prefix("keel-bench-paging-open-").tempdir_in(dir)?;
    let mut rows = Vec::new();
    for remote in [false, true] {
        let data = scratch.path().join(if remote { "remote" } else { "local" });
        let objects = remote.then(|| scratch.path().join("objects"));
        fill(&data, objects.as_deref(), backlog_mib)?;
        let before = proc_status_kib("VmRSS")?;
        reset_peak_rss();
        let t = Instant::now();
        let paging = open(&data, objects.as_deref())?;
        let sub =
            paging.address("backlog").map_err(to_io)?.subscription("s").ok_or_else(|| to_io("no subscription"))?;
        let open_secs = t.elapsed().as_secs_f64();
        let peak = proc_status_kib("VmHWM")?;
        let pending = sub.pending();
        if pending.bytes < (backlog_mib << 20) * 9 / 10 {
            return Err(io::Error::other(format!("the backlog holds {} bytes", pending.bytes)));
        }
        drop((sub, paging));
        rows.push(OpenRow {
            pages: if remote { "object store" } else { "volume" },
            backlog_mib,
            open_secs,
            open_rss_mib: peak.saturating_sub(before) as f64 / 1024.0,
            budget_mib: PagingOptions::default().global_max_bytes >> 20,
        });
        std::fs::remove_dir_all(&data)?;
    }
    Ok(rows)
}
