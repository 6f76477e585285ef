//! Criterion micro-benchmarks of the journal's append paths. The figures that matter (ratios to the disk's
//! physical limit) come from `keel bench journal`; these track the code's own cost between commits.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use keel_journal::{Journal, Options, SyncPolicy};

fn appends(c: &mut Criterion) {
    let mut group = c.benchmark_group("journal_add_1KiB");
    group.throughput(Throughput::Elements(1));
    for (name, sync) in [("sync_always", SyncPolicy::Always), ("sync_never", SyncPolicy::Never)] {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options { sync, segment_bytes: 64 << 20, spare_segments: 2, ..Options::default() };
        let (j, _) = Journal::open(dir.path(), opts).unwrap();
        let payload = vec![7u8; 1024];
        let mut id = 0u64;
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    id += 1;
                    id
                },
                |id| j.add(id, 0, &payload).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, appends);
criterion_main!(benches);
