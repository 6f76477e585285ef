//! Cutting files into chunks and storing the chunks the repository does not hold yet, a bounded number at
//! a time (docs/BACKUP-FORMAT.md, "Chunks").

use std::collections::HashSet;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use keel_s3::{ObjectStore, PutBody, PutCondition, StoreError};

use crate::error::BackupError;
use crate::lease::Lease;
use crate::manifest::{chunk_name, ChunkRef, FileEntry};
use crate::progress::Progress;
use crate::repo::Repo;
use crate::seal::{envelope_for, hex, ChunkMode, ENVELOPE_HEADER};
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

/// Stores the chunks of `files`. `known`: chunk ids the repository certainly holds (those of the
/// previous snapshot, read under the same lease), which are neither checked nor uploaded.
pub(crate) fn store_files(
    repo: &Repo,
    files: Arc<Vec<SourceFile>>,
    known: Arc<HashSet<String>>,
    parallel: usize,
    progress: &Progress,
    lease: &Lease,
) -> Result<Stored, BackupError> {
    let chunk = repo.chunk_bytes();
    let jobs: Vec<(usize, usize)> = files
        .iter()
        .enumerate()
        .flat_map(|(f, file)| (0..file.copy_bytes.div_ceil(chunk) as usize).map(move |c| (f, c)))
        .collect();
    progress.start("storing", files.iter().map(|f| f.copy_bytes).sum());
    let results: Vec<Done> = repo.block_on(
        futures::stream::iter(jobs)
            .map(|(f, c)| {
                let (files, known, keys) = (files.clone(), known.clone(), repo.keys.clone());
                async move {
                    lease.check()?;
                    let prepared = tokio::task::spawn_blocking(move || {
                        let file = &files[f];
                        let offset = c as u64 * chunk;
                        let len = (file.copy_bytes - offset).min(chunk) as usize;
                        // One buffer per chunk: the file's bytes go straight where the envelope wants them.
                        let (mut buf, at) = match file.mode {
                            ChunkMode::Sealed => (envelope_for(len), ENVELOPE_HEADER),
                            ChunkMode::Raw => (vec![0u8; len], 0),
                        };
                        file.read_at(&mut buf[at..], offset).map_err(|e| BackupError::Data {
                            path: file.path.clone().into(),
                            why: format!("read at {offset}: {e}"),
                        })?;
                        let plain = &buf[at..];
                        if plain.iter().all(|b| *b == 0) {
                            return Ok::<_, BackupError>((ChunkRef::zero(len as u32), None));
                        }
                        let id = hex(&keys.chunk_id(file.mode, plain));
                        let r = ChunkRef { id: Some(id.clone()), len: len as u32, mode: Some(file.mode) };
                        if known.contains(&id) {
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
                    let Some(body) = body else { return Ok((f, c, r, 0)) };
                    let key = repo.key(&r.object_name().expect("a stored chunk has an id"));
                    // Chunks left by an interrupted run are reused, not stored again.
                    match repo.store.head(&key).await {
                        Ok(_) => return Ok((f, c, r, 0)),
                        Err(StoreError::NotFound { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                    let n = body.len() as u64;
                    match repo.store.put(&key, PutBody::Bytes(body.into()), PutCondition::IfAbsent).await {
                        Ok(_) | Err(StoreError::PreconditionFailed { .. }) => {}
                        Err(e) => return Err(BackupError::from(e)),
                    }
                    keel_crashpoint::hook("backup-chunk-stored");
                    Ok((f, c, r, n))
                }
            })
            .buffer_unordered(parallel.max(1))
            .try_collect(),
    )?;
    let mut entries: Vec<FileEntry> = files
        .iter()
        .map(|f| FileEntry {
            path: f.path.clone(),
            size: f.size,
            copy_bytes: f.copy_bytes,
            segment: f.segment,
            chunks: vec![ChunkRef::zero(0); f.copy_bytes.div_ceil(chunk) as usize],
        })
        .collect();
    let mut new_bytes = 0;
    for (f, c, r, n) in results {
        entries[f].chunks[c] = r;
        new_bytes += n;
    }
    Ok(Stored { entries, new_bytes, total_bytes: files.iter().map(|f| f.copy_bytes).sum() })
}
