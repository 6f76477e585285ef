//! Cutting files into chunks and storing the chunks the repository does not hold yet, a bounded number at
//! a time (docs/BACKUP-FORMAT.md, "Chunks").

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use keel_s3::{ObjectStore, PutBody, PutCondition, StoreError};

use crate::error::BackupError;
use crate::lease::Lease;
use crate::manifest::{chunk_name, ChunkRef, FileEntry};
use crate::progress::Progress;
use crate::repo::Repo;
use crate::seal::{hex, ChunkMode, ENVELOPE_HEADER};
use crate::source::SourceFile;

/// The stored form of a file.
pub(crate) struct Stored {
    pub entries: Vec<FileEntry>,
    /// Bytes of chunks newly stored, and of all chunks' contents.
    pub new_bytes: u64,
    pub total_bytes: u64,
}

/// One chunk's result: which file and chunk, its reference, and the bytes stored for it (0 if deduplicated).
type Done = (usize, usize, ChunkRef, u64);

/// Chunk buffers, reused: at most one per chunk in flight is ever allocated. Freeing and allocating
/// multi-MiB buffers instead left them in glibc's per-thread arenas (resident memory grew by about 30 MiB
/// per parallel chunk), and forcing them through mmap cost 17 % of the throughput in page faults.
struct Buffers(std::sync::Mutex<Vec<Vec<u8>>>);

impl Buffers {
    fn take(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default()
    }

    fn give(&self, mut b: Vec<u8>) {
        b.clear();
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(b);
    }
}

/// What the repository certainly holds from the previous snapshot of the same journal (read under the
/// same lease, so prune cannot have removed it since).
#[derive(Default)]
pub(crate) struct Previous {
    /// Chunk ids: neither checked nor uploaded again.
    pub chunks: HashSet<String>,
    /// Files by path: a sealed segment whose file is the same one is not even read.
    pub files: HashMap<String, FileEntry>,
}

impl Previous {
    pub fn of(entries: &[FileEntry]) -> Previous {
        Previous {
            chunks: entries.iter().flat_map(|f| f.chunks.iter().filter_map(|c| c.id.clone())).collect(),
            files: entries.iter().map(|f| (f.path.clone(), f.clone())).collect(),
        }
    }

    /// The chunks of `file` if the previous snapshot read this very file, sealed, at this length.
    fn reusable(&self, file: &SourceFile) -> Option<Vec<ChunkRef>> {
        let stat = file.stat.filter(|s| s.sealed)?;
        let p = self.files.get(&file.path)?;
        (p.stat == Some(stat) && p.size == file.size && p.copy_bytes == file.copy_bytes).then(|| p.chunks.clone())
    }
}

/// Stores the chunks of `files` that `previous` does not already account for.
pub(crate) fn store_files(
    repo: &Repo,
    files: Arc<Vec<SourceFile>>,
    previous: &Previous,
    parallel: usize,
    progress: &Progress,
    lease: &Lease,
) -> Result<Stored, BackupError> {
    let chunk = repo.chunk_bytes();
    let reused: Vec<Option<Vec<ChunkRef>>> = files.iter().map(|f| previous.reusable(f)).collect();
    let jobs: Vec<(usize, usize)> = files
        .iter()
        .enumerate()
        .filter(|(f, _)| reused[*f].is_none())
        .flat_map(|(f, file)| (0..file.copy_bytes.div_ceil(chunk) as usize).map(move |c| (f, c)))
        .collect();
    progress.start("storing", files.iter().map(|f| f.copy_bytes).sum());
    progress.advance(files.iter().zip(&reused).filter(|(_, r)| r.is_some()).map(|(f, _)| f.copy_bytes).sum());
    let known = Arc::new(previous.chunks.clone());
    let buffers = Arc::new(Buffers(std::sync::Mutex::new(Vec::new())));
    let results: Vec<Done> = repo.block_on(
        futures::stream::iter(jobs)
            .map(|(f, c)| {
                let (files, known, keys, buffers) = (files.clone(), known.clone(), repo.keys.clone(), buffers.clone());
                let give_back = buffers.clone();
                async move {
                    lease.check()?;
                    let prepared = tokio::task::spawn_blocking(move || {
                        let file = &files[f];
                        let offset = c as u64 * chunk;
                        let len = (file.copy_bytes - offset).min(chunk) as usize;
                        // The file's bytes go straight where the envelope wants them, in a reused buffer.
                        let at = match file.mode {
                            ChunkMode::Sealed => ENVELOPE_HEADER,
                            ChunkMode::Raw => 0,
                        };
                        let mut buf = buffers.take();
                        envelope_into(&mut buf, at + len);
                        if let Err(e) = file.read_at(&mut buf[at..], offset) {
                            buffers.give(buf);
                            let path = file.path.clone().into();
                            if e.kind() == std::io::ErrorKind::UnexpectedEof && file.segment.is_some() {
                                return Err(BackupError::SourceChanged { path });
                            }
                            let why = format!("read at {offset}: {e}");
                            return Err(BackupError::Data { path, why });
                        }
                        let plain = &buf[at..];
                        if plain.iter().all(|b| *b == 0) {
                            buffers.give(buf);
                            return Ok::<_, BackupError>((ChunkRef::zero(len as u32), None));
                        }
                        let id = hex(&keys.chunk_id(file.mode, plain));
                        let r = ChunkRef { id: Some(id.clone()), len: len as u32, mode: Some(file.mode) };
                        if known.contains(&id) {
                            buffers.give(buf);
                            return Ok((r, None));
                        }
                        if file.mode == ChunkMode::Sealed {
                            keys.seal_envelope(&chunk_name(&id), &mut buf);
                        }
                        Ok((r, Some(buf)))
                    })
                    .await
                    .expect("chunk preparation does not panic")?;
                    let (r, body) = prepared;
                    progress.advance(u64::from(r.len));
                    let Some(body) = body else { return Ok::<Done, BackupError>((f, c, r, 0)) };
                    let key = repo.key(&r.object_name().expect("a stored chunk has an id"));
                    let stored = store_chunk(repo, &key, body, &give_back).await?;
                    let n = if stored { r.stored_len() } else { 0 };
                    keel_crashpoint::hook("backup-chunk-stored");
                    Ok((f, c, r, n))
                }
            })
            .buffer_unordered(parallel.max(1))
            .try_collect(),
    )?;
    let mut entries: Vec<FileEntry> = files
        .iter()
        .zip(reused)
        .map(|(f, reused)| FileEntry {
            path: f.path.clone(),
            size: f.size,
            copy_bytes: f.copy_bytes,
            segment: f.segment,
            stat: f.stat,
            chunks: reused.unwrap_or_else(|| vec![ChunkRef::zero(0); f.copy_bytes.div_ceil(chunk) as usize]),
        })
        .collect();
    let mut new_bytes = 0;
    for (f, c, r, n) in results {
        entries[f].chunks[c] = r;
        new_bytes += n;
    }
    Ok(Stored { entries, new_bytes, total_bytes: files.iter().map(|f| f.copy_bytes).sum() })
}

/// Sizes `buf` to `len` bytes (their contents are overwritten by the caller), with room for a tag.
fn envelope_into(buf: &mut Vec<u8>, len: usize) {
    buf.reserve(len + crate::seal::OVERHEAD);
    buf.resize(len, 0);
}

/// Stores a chunk unless the store already has it (left by an interrupted run); gives its buffer back.
/// Returns whether it was stored now.
async fn store_chunk(repo: &Repo, key: &str, body: Vec<u8>, buffers: &Buffers) -> Result<bool, BackupError> {
    match repo.store.head(key).await {
        Ok(_) => {
            buffers.give(body);
            return Ok(false);
        }
        Err(StoreError::NotFound { .. }) => {}
        Err(e) => {
            buffers.give(body);
            return Err(e.into());
        }
    }
    // The store takes `Bytes`; the buffer comes back from it once the put is done with it.
    let bytes = bytes::Bytes::from(body);
    let put = repo.store.put(key, PutBody::Bytes(bytes.clone()), PutCondition::IfAbsent).await;
    if let Ok(b) = bytes.try_into_mut() {
        buffers.give(b.into());
    }
    match put {
        // A refused create-if-absent proves a chunk of this content is there (ours or another's).
        Ok(_) | Err(StoreError::PreconditionFailed { .. } | StoreError::Indeterminate { .. }) => Ok(true),
        Err(e) => Err(e.into()),
    }
}
