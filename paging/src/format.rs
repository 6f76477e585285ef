//! Page files and paging records, exactly as docs/FORMAT.md ("keel-paging") draws them. Pure: bytes in,
//! typed values or a precise error out; disk and journal bytes are untrusted, so decoding never panics.

use keel_journal::crypto::WRAPPED_KEY_BYTES;
use keel_journal::Binding;

use crate::ranges::RangeSet;

pub const PAGE_MAGIC: &[u8; 8] = b"KEELPAGE";
/// The page format this build writes; it also reads version 1 (frames without `since_sync`).
pub const PAGE_VERSION: u32 = 2;
const PAGE_VERSION_V1: u32 = 1;
pub const PAGE_HEADER_BYTES: usize = 128;
/// A frame header as this build writes it (page version 2).
pub const FRAME_HEADER_BYTES: usize = 32;
const FRAME_HEADER_BYTES_V1: usize = 24;
/// The largest message a page frame holds.
pub const MESSAGE_BYTES_MAX: u64 = 64 << 20;
const FLAG_ENCRYPTED: u32 = 1;

const _: () = assert!(52 + WRAPPED_KEY_BYTES == 124);

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A page file's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageHeader {
    /// The page format version: how its frames are laid out.
    pub version: u32,
    pub store_id: [u8; 16],
    pub page_id: u64,
    pub first_seq: u64,
    /// Master key id and wrapped data key, when encrypted.
    pub key: Option<(u32, [u8; WRAPPED_KEY_BYTES])>,
}

impl PageHeader {
    /// The bytes of a frame header in this page.
    pub fn frame_header_bytes(&self) -> usize {
        frame_header_bytes(self.version)
    }

    pub fn binding(&self) -> Binding {
        Binding { journal_id: self.store_id, segment_seq: self.page_id }
    }

    pub fn encode(&self) -> [u8; PAGE_HEADER_BYTES] {
        let mut b = [0u8; PAGE_HEADER_BYTES];
        b[0..8].copy_from_slice(PAGE_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        let flags = if self.key.is_some() { FLAG_ENCRYPTED } else { 0 };
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        b[16..32].copy_from_slice(&self.store_id);
        b[32..40].copy_from_slice(&self.page_id.to_le_bytes());
        b[40..48].copy_from_slice(&self.first_seq.to_le_bytes());
        if let Some((id, wrapped)) = &self.key {
            b[48..52].copy_from_slice(&id.to_le_bytes());
            b[52..124].copy_from_slice(wrapped);
        }
        let crc = crc32fast::hash(&b[..124]);
        b[124..128].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<PageHeader, String> {
        let b = b.get(..PAGE_HEADER_BYTES).ok_or("shorter than the 128-byte page header")?;
        if &b[0..8] != PAGE_MAGIC {
            return Err("bad magic (not a page file)".into());
        }
        if u32_at(b, 124) != crc32fast::hash(&b[..124]) {
            return Err("page header checksum mismatch".into());
        }
        let version = u32_at(b, 8);
        if version != PAGE_VERSION && version != PAGE_VERSION_V1 {
            return Err(format!("page format version {version}; this build reads versions 1 and {PAGE_VERSION}"));
        }
        let flags = u32_at(b, 12);
        if flags & !FLAG_ENCRYPTED != 0 {
            return Err(format!("unknown page flags {flags:#x}"));
        }
        let key = if flags & FLAG_ENCRYPTED != 0 {
            Some((u32_at(b, 48), b[52..124].try_into().expect("72 bytes")))
        } else {
            None
        };
        Ok(PageHeader {
            version,
            store_id: b[16..32].try_into().expect("16 bytes"),
            page_id: u64_at(b, 32),
            first_seq: u64_at(b, 40),
            key,
        })
    }
}

/// One message as a page holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHead {
    pub len: u32,
    pub seq: u64,
    pub tx: u64,
    /// Frames before this one in the page since its last completed fdatasync: `seq - since_sync` is the
    /// first message of this frame's sync group. 0 in version 1 pages.
    pub since_sync: u32,
}

impl FrameHead {
    /// Whether this frame's sync group began after message `seq`: then `seq`'s group had been
    /// fdatasynced before this frame was written.
    pub fn group_began_after(&self, seq: u64) -> bool {
        self.seq.saturating_sub(u64::from(self.since_sync)) > seq
    }
}

fn frame_header_bytes(version: u32) -> usize {
    if version == PAGE_VERSION_V1 {
        FRAME_HEADER_BYTES_V1
    } else {
        FRAME_HEADER_BYTES
    }
}

fn frame_crc(binding: &Binding, head: &[u8], payload: &[u8]) -> u32 {
    let mut h = binding.hasher();
    h.update(&head[0..4]);
    h.update(&head[8..]);
    h.update(payload);
    h.finalize()
}

/// Appends one frame, as a version 2 page holds it, to `out`.
pub fn encode_frame(binding: &Binding, head: FrameHead, payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("checked against MESSAGE_BYTES_MAX");
    debug_assert_eq!(len, head.len);
    let mut b = [0u8; FRAME_HEADER_BYTES];
    b[0..4].copy_from_slice(&len.to_le_bytes());
    b[8..16].copy_from_slice(&head.seq.to_le_bytes());
    b[16..24].copy_from_slice(&head.tx.to_le_bytes());
    b[24..28].copy_from_slice(&head.since_sync.to_le_bytes());
    let crc = frame_crc(binding, &b, payload);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&b);
    out.extend_from_slice(payload);
}

/// Why bytes are not a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The bytes end inside the frame; `need` is its total length if the header was readable.
    Incomplete {
        need: Option<u64>,
    },
    Bad(String),
}

/// Decodes the frame of a page of format `version` at the start of `b`: its head, and the range of its
/// payload within `b`.
pub fn decode_frame(
    binding: &Binding,
    version: u32,
    b: &[u8],
) -> Result<(FrameHead, std::ops::Range<usize>), FrameError> {
    let header_bytes = frame_header_bytes(version);
    let head = b.get(..header_bytes).ok_or(FrameError::Incomplete { need: None })?;
    let len = u32_at(head, 0);
    if u64::from(len) > MESSAGE_BYTES_MAX {
        return Err(FrameError::Bad(format!("frame length {len} exceeds the maximum")));
    }
    let since_sync = if version == PAGE_VERSION_V1 { 0 } else { u32_at(head, 24) };
    if version != PAGE_VERSION_V1 && u32_at(head, 28) != 0 {
        return Err(FrameError::Bad("a reserved frame field is not zero".into()));
    }
    let total = header_bytes + len as usize;
    let Some(payload) = b.get(header_bytes..total) else {
        return Err(FrameError::Incomplete { need: Some(total as u64) });
    };
    if u32_at(head, 4) != frame_crc(binding, head, payload) {
        return Err(FrameError::Bad("frame checksum mismatch".into()));
    }
    Ok((FrameHead { len, seq: u64_at(head, 8), tx: u64_at(head, 16), since_sync }, header_bytes..total))
}

// ---- Journal records -------------------------------------------------------------------------------

pub const NAMESPACE: u64 = 0xFF << 56;
pub const KIND_ADDRESS: u8 = 0xF0;
pub const KIND_CURSOR: u8 = 0xF1;
pub const KIND_TX_MARK: u8 = 0xF2;
const TYPE_ADDRESS: u64 = 1;
const TYPE_CURSOR: u64 = 2;
const TYPE_TX_MARK: u64 = 3;
const N_MAX: u64 = (1 << 52) - 1;
const RECORD_VERSION: u8 = 1;

fn id(ty: u64, n: u64) -> u64 {
    assert!(n <= N_MAX, "paging record number {n} out of range");
    NAMESPACE | ty << 52 | n
}

pub fn address_id(index: u32) -> u64 {
    id(TYPE_ADDRESS, u64::from(index))
}
pub fn cursor_id(index: u64) -> u64 {
    id(TYPE_CURSOR, index)
}
pub fn tx_mark_id(n: u64) -> u64 {
    id(TYPE_TX_MARK, n)
}

/// Whether a journal record id is paging's.
pub fn is_paging_id(id: u64) -> bool {
    id & (0xFF << 56) == NAMESPACE
}

/// The number in a paging record id.
pub fn id_number(id: u64) -> u64 {
    id & N_MAX
}

/// A cursor for record decoding that reports what ran short.
struct Bytes<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self.b.get(self.at..self.at + n).ok_or_else(|| format!("truncated at byte {}", self.at))?;
        self.at += n;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32_at(self.take(4)?, 0))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64_at(self.take(8)?, 0))
    }
    fn name(&mut self) -> Result<String, String> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "name is not UTF-8".to_owned())
    }
    fn version(&mut self) -> Result<(), String> {
        match self.take(1)?[0] {
            RECORD_VERSION => Ok(()),
            v => Err(format!("record version {v}; this build reads version {RECORD_VERSION}")),
        }
    }
    fn end(&self) -> Result<(), String> {
        if self.at == self.b.len() {
            Ok(())
        } else {
            Err(format!("{} trailing bytes", self.b.len() - self.at))
        }
    }
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    let n = u16::try_from(name.len()).expect("names are checked to be under 64 KiB");
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressRecord {
    pub index: u32,
    pub store_id: [u8; 16],
    pub name: String,
}

impl AddressRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![RECORD_VERSION];
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&self.store_id);
        put_name(&mut out, &self.name);
        out
    }
    pub fn decode(b: &[u8]) -> Result<AddressRecord, String> {
        let mut r = Bytes { b, at: 0 };
        r.version()?;
        let index = r.u32()?;
        let store_id = r.take(16)?.try_into().expect("16");
        let name = r.name()?;
        r.end()?;
        Ok(AddressRecord { index, store_id, name })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CursorRecord {
    pub address: u32,
    pub name: String,
    /// The first sequence number the subscription receives.
    pub start: u64,
    /// Every message below is acknowledged (or was never the subscription's).
    pub floor: u64,
    /// Acknowledged above the floor.
    pub acked: RangeSet,
}

impl CursorRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + 16 * self.acked.len() + self.name.len());
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.address.to_le_bytes());
        out.extend_from_slice(&self.start.to_le_bytes());
        out.extend_from_slice(&self.floor.to_le_bytes());
        out.extend_from_slice(&(self.acked.len() as u32).to_le_bytes());
        for (s, e) in self.acked.iter() {
            out.extend_from_slice(&s.to_le_bytes());
            out.extend_from_slice(&e.to_le_bytes());
        }
        put_name(&mut out, &self.name);
        out
    }
    pub fn decode(b: &[u8]) -> Result<CursorRecord, String> {
        let mut r = Bytes { b, at: 0 };
        r.version()?;
        let address = r.u32()?;
        let start = r.u64()?;
        let floor = r.u64()?;
        let n = r.u32()?;
        let mut acked = RangeSet::default();
        let mut prev_end = floor;
        for _ in 0..n {
            let (s, e) = (r.u64()?, r.u64()?);
            if s <= prev_end || e <= s {
                return Err(format!("acknowledged ranges not sorted, disjoint and above the floor at {s}..{e}"));
            }
            acked.insert_range(s, e);
            prev_end = e;
        }
        let name = r.name()?;
        r.end()?;
        Ok(CursorRecord { address, name, start, floor, acked })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxMarkRecord {
    pub address: u32,
    pub tx: u64,
    /// The first sequence number the mark covers: messages of `tx` below it belong to an earlier use of
    /// the id. 0 in version 1 records.
    pub first_seq: u64,
}

/// A transaction mark's record version with `first_seq`.
const TX_MARK_VERSION: u8 = 2;

impl TxMarkRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![TX_MARK_VERSION];
        out.extend_from_slice(&self.address.to_le_bytes());
        out.extend_from_slice(&self.tx.to_le_bytes());
        out.extend_from_slice(&self.first_seq.to_le_bytes());
        out
    }
    pub fn decode(b: &[u8]) -> Result<TxMarkRecord, String> {
        let mut r = Bytes { b, at: 0 };
        let version = r.take(1)?[0];
        if version != RECORD_VERSION && version != TX_MARK_VERSION {
            return Err(format!("transaction mark version {version}; this build reads versions 1 and 2"));
        }
        let address = r.u32()?;
        let tx = r.u64()?;
        let first_seq = if version == TX_MARK_VERSION { r.u64()? } else { 0 };
        r.end()?;
        Ok(TxMarkRecord { address, tx, first_seq })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decoders_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let binding = Binding { journal_id: [7; 16], segment_seq: 3 };
            let _ = PageHeader::decode(&b);
            let _ = decode_frame(&binding, PAGE_VERSION, &b);
            let _ = decode_frame(&binding, PAGE_VERSION_V1, &b);
            let _ = AddressRecord::decode(&b);
            let _ = CursorRecord::decode(&b);
            let _ = TxMarkRecord::decode(&b);
        }

        #[test]
        fn frames_round_trip_and_bit_flips_are_caught(seq in any::<u64>(), tx in any::<u64>(), since_sync in any::<u32>(), payload in proptest::collection::vec(any::<u8>(), 0..200), bit in any::<usize>()) {
            let binding = Binding { journal_id: [7; 16], segment_seq: 3 };
            let mut out = Vec::new();
            let head = FrameHead { len: payload.len() as u32, seq, tx, since_sync };
            encode_frame(&binding, head, &payload, &mut out);
            let (h, r) = decode_frame(&binding, PAGE_VERSION, &out).unwrap();
            prop_assert_eq!((h, &out[r]), (head, &payload[..]));
            let other = Binding { journal_id: [7; 16], segment_seq: 4 };
            prop_assert!(decode_frame(&other, PAGE_VERSION, &out).is_err(), "a frame of another page must not validate");
            let bit = bit % (out.len() * 8);
            out[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode_frame(&binding, PAGE_VERSION, &out).is_err());
        }

        #[test]
        fn records_round_trip(index in any::<u32>(), name in "[a-z./-]{0,20}", start in 0u64..1000, floor in 0u64..1000, acks in proptest::collection::vec(1000u64..1100, 0..10)) {
            let a = AddressRecord { index, store_id: [index as u8; 16], name: name.clone() };
            prop_assert_eq!(AddressRecord::decode(&a.encode()).unwrap(), a);
            let mut acked = RangeSet::default();
            for x in acks { acked.insert(x + floor); }
            let c = CursorRecord { address: index, name, start, floor, acked };
            prop_assert_eq!(CursorRecord::decode(&c.encode()).unwrap(), c);
            let t = TxMarkRecord { address: index, tx: start, first_seq: floor };
            prop_assert_eq!(TxMarkRecord::decode(&t.encode()).unwrap(), t);
        }

        #[test]
        fn page_header_round_trips(page_id in any::<u64>(), first_seq in any::<u64>(), enc in any::<bool>(), bit in 0usize..1024) {
            let h = PageHeader { version: PAGE_VERSION, store_id: [9; 16], page_id, first_seq, key: enc.then_some((3, [5; WRAPPED_KEY_BYTES])) };
            let mut b = h.encode();
            prop_assert_eq!(PageHeader::decode(&b).unwrap(), h);
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(PageHeader::decode(&b).is_err());
        }
    }
}
