//! Opening a journal and a paging store over one data directory, as a broker does.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use keel_journal::{Journal, Options, Recovered};
use keel_paging::{Paging, PagingOptions};

pub fn journal_options() -> Options {
    Options { segment_bytes: 1 << 20, auto_maintenance: false, ..Options::default() }
}

pub fn small_pages() -> PagingOptions {
    PagingOptions {
        page_bytes: 64 << 10,
        max_size_bytes: 4 << 10,
        read_ahead_bytes: 64 << 10,
        ..PagingOptions::default()
    }
}

/// Small pages and no memory mode: every message is paged.
pub fn always_paged() -> PagingOptions {
    PagingOptions { max_size_bytes: 0, ..small_pages() }
}

/// `always_paged`, with complete pages uploaded to `objects` (any keel-s3 store).
pub fn with_objects(objects: keel_s3::AnyStore) -> PagingOptions {
    let remote = keel_paging::RemotePages { store: objects, prefix: "broker-1/pages/".into() };
    PagingOptions { remote: Some(remote), ..always_paged() }
}

pub fn open(dir: &Path, opts: PagingOptions) -> (Paging, Recovered) {
    open_with(dir, journal_options(), opts)
}

pub fn open_with(dir: &Path, jopts: Options, opts: PagingOptions) -> (Paging, Recovered) {
    let (journal, recovered) = Journal::open(dir.join("journal"), jopts).unwrap();
    let paging = Paging::open(dir.join("pages"), Arc::new(journal), &recovered.prepared, opts).unwrap();
    (paging, recovered)
}
