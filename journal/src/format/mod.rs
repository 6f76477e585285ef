//! The on-disk structures, exactly as docs/FORMAT.md draws them. Everything here is pure: bytes in, typed
//! values or a precise decode error out. Disk bytes are untrusted, so decoding never panics.

pub mod checkpoint;
pub mod frame;
pub mod horizon;
pub mod identity;
pub mod segment_header;

/// Binds a frame's checksum to one journal and one segment, so stale or foreign bytes never validate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    pub journal_id: [u8; 16],
    pub segment_seq: u64,
}

impl Binding {
    /// A hasher already fed with the binding; clone it per frame.
    pub fn hasher(&self) -> crc32fast::Hasher {
        let mut h = crc32fast::Hasher::new();
        h.update(&self.journal_id);
        h.update(&self.segment_seq.to_le_bytes());
        h
    }
}

pub fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

pub(crate) fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Whether every byte is zero. Folds 64 KiB at a time without an early exit inside a block, which the
/// compiler vectorizes: recovery checks tens of MiB of zero-filled tail this way at every open.
pub(crate) fn all_zero(b: &[u8]) -> bool {
    b.chunks(64 * 1024).all(|c| c.iter().fold(0u8, |acc, x| acc | x) == 0)
}

pub(crate) fn unix_ms_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
