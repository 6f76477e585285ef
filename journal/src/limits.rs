//! Every bound the journal relies on, named, with compile-time checks on how they relate.

/// The page size segments are sized in and writes are padded to: the smallest page of the platforms Keel
/// runs on (a larger page only gets less benefit from the padding).
pub const PAGE_BYTES: u64 = 4096;
/// Size of the segment header at offset 0 of every segment (docs/FORMAT.md).
pub const SEGMENT_HEADER_BYTES: u64 = 256;
/// Size of every frame header.
pub const FRAME_HEADER_BYTES: u64 = 40;
/// A record body or prepare payload may not exceed this.
pub const PAYLOAD_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Smallest segment a journal may be configured with.
pub const SEGMENT_BYTES_MIN: u64 = 64 * 1024;
/// Largest segment a journal may be configured with (recovery reads a whole segment at a time).
pub const SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// Bytes a relocate frame's payload carries before the copied record's payload.
pub const RELOCATE_PREFIX_BYTES: u64 = 8;
/// Default segment size.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Bytes a sealed unit (encryption) adds around the frames of one write: its header and tag.
pub const UNIT_OVERHEAD_BYTES: u64 = 48;
/// A seal frame carries no payload.
pub const SEAL_FRAME_BYTES: u64 = FRAME_HEADER_BYTES;
/// Default bound on the bytes one group-commit batch writes.
pub const BATCH_BYTES_DEFAULT: u64 = 4 * 1024 * 1024;
/// A batch at least this large has its fdatasync overlapped with the writing (and sealing, if encrypted)
/// of the next batch (`commit::writer`): that costs more than the two thread wake-ups the overlap adds.
pub const PIPELINE_MIN_BATCH_BYTES: u64 = 128 * 1024;
/// Batches one leader chains with overlapped fdatasyncs before it lets go (bounds its own caller's wait).
pub const PIPELINE_MAX_BATCHES: u32 = 16;
/// Upper bound on `max_batch_bytes`.
pub const BATCH_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// Upper bound on the configurable group-commit wait.
pub const BATCH_WAIT_MS_MAX: u64 = 100;
/// Slices handed to one vectored write (Linux IOV_MAX).
pub const IOV_MAX: usize = 1024;
/// Chunk used when zero-filling a spare segment. Its size is also the size of the page-cache folios the
/// spare is left in, and every append into a cached folio walks all of its 4 KiB blocks, on write and on
/// fdatasync: 1 MiB chunks cost a lone writer's 1 KiB append ~2 µs in `pwritev` alone (docs/BENCHMARKS.md,
/// "Large folios"), while 64 KiB chunks cost the zero-fill 1024 writes per 64 MiB segment.
pub const ZERO_FILL_CHUNK_BYTES: usize = 64 * 1024;

const _: () = assert!(SEGMENT_HEADER_BYTES.is_multiple_of(8));
const _: () =
    assert!(SEGMENT_BYTES_MIN > SEGMENT_HEADER_BYTES + FRAME_HEADER_BYTES + SEAL_FRAME_BYTES + 2 * UNIT_OVERHEAD_BYTES);
const _: () = assert!(SEGMENT_BYTES_DEFAULT >= SEGMENT_BYTES_MIN && SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX);
const _: () = assert!(SEGMENT_BYTES_MAX <= u32::MAX as u64, "since_sync and frame counts are u32");
const _: () = assert!(PAYLOAD_BYTES_MAX <= u32::MAX as u64, "payload_len is u32 on disk");
const _: () = assert!(BATCH_BYTES_DEFAULT <= BATCH_BYTES_MAX);
const _: () = assert!(SEGMENT_BYTES_DEFAULT.is_multiple_of(ZERO_FILL_CHUNK_BYTES as u64));

/// The largest payload that fits in a segment of `segment_bytes` next to its header, one frame header and
/// the seal frame that must always remain writable.
pub const fn payload_bytes_max_for(segment_bytes: u64) -> u64 {
    // Room for the frame and the seal, each possibly in a sealed unit of its own.
    let room = segment_bytes - SEGMENT_HEADER_BYTES - FRAME_HEADER_BYTES - SEAL_FRAME_BYTES - 2 * UNIT_OVERHEAD_BYTES;
    // Compaction copies a record into a relocate frame, whose payload is the record's plus an 8-byte LSN.
    let max = if room < PAYLOAD_BYTES_MAX { room } else { PAYLOAD_BYTES_MAX };
    max - RELOCATE_PREFIX_BYTES
}
