//! The decoders on arbitrary and on mutated valid input, in the default test run (the cargo-fuzz targets in
//! `journal/fuzz` explore further): never a panic, and salvage never hands out a frame that does not
//! validate.

use keel_journal::__format::{decode_frame, encode_frame, scan_segment, Binding, ScanInput};
use keel_journal::{FrameHeader, FrameType, Lsn, RecoveryMode};
use proptest::prelude::*;

const BINDING: Binding = Binding { journal_id: [9; 16], segment_seq: 5 };

/// A segment image: 256 header bytes (ignored by the scan) and `n` valid frames.
fn segment(n: u64, len: usize) -> Vec<u8> {
    let mut seg = vec![0u8; 256];
    for i in 0..n {
        let payload = vec![i as u8; len];
        let h = FrameHeader {
            payload_len: len as u32,
            lsn: Lsn(1 + i),
            id: i,
            tx: 0,
            since_sync: 0,
            frame_type: FrameType::Add,
            kind: 0,
        };
        seg.extend_from_slice(&encode_frame(&BINDING, &h, &payload));
    }
    seg.resize(seg.len() + 512, 0);
    seg
}

fn scan_all_modes(data: &[u8]) {
    for newest in [false, true] {
        for mode in [RecoveryMode::Strict, RecoveryMode::Salvage] {
            let input = ScanInput {
                path: std::path::Path::new("p"),
                data,
                binding: BINDING,
                first_lsn: Lsn(1),
                newest,
                mode,
                start: 256,
                frames_before: 0,
                base: 0,
                partial: false,
            };
            let _ = scan_segment(&input, &mut |offset, h, payload| {
                let (again, p) = decode_frame(&BINDING, &data[offset as usize..]).expect("handed-out frames validate");
                assert_eq!((&again, p), (h, payload));
                Ok(())
            });
        }
    }
}

proptest! {
    #[test]
    fn decode_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode_frame(&BINDING, &data);
        scan_all_modes(&data);
    }

    #[test]
    fn scan_mutated_segments(n in 1u64..20, len in 0usize..300, edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut seg = segment(n, len);
        for (at, byte) in edits {
            let i = at.index(seg.len());
            seg[i] = byte;
        }
        scan_all_modes(&seg);
    }
}

mod crypto_decoders {
    use keel_journal::__format::{unit_open, unit_peek, Binding};
    use keel_journal::crypto::keys::KeyRing;
    use keel_journal::crypto::SegmentCipher;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn units_from_arbitrary_bytes_never_authenticate(data in proptest::collection::vec(any::<u8>(), 0..700), offset in 0u64..300) {
            let ring = KeyRing::parse(&format!("1:{}", "42".repeat(32)), "t").unwrap();
            let binding = Binding { journal_id: [1; 16], segment_seq: 1 };
            let (cipher, _) = SegmentCipher::create(ring.current().1, 1, &binding);
            let _ = unit_peek(&binding, &data, offset);
            prop_assert!(unit_open(&cipher, &binding, &data, offset).is_err());
        }

        #[test]
        fn key_files_from_arbitrary_text_never_panic(text in "\\PC{0,200}") {
            let _ = KeyRing::parse(&text, "t");
        }

        #[test]
        fn key_file_lines_parse_or_name_their_line(id in 0u32..5, hex in "[0-9a-fA-Fg]{60,68}") {
            let r = KeyRing::parse(&format!("# c\n{id}:{hex}\n"), "t");
            match r {
                Ok(ring) => prop_assert_eq!(ring.ids(), vec![id]),
                Err(e) => prop_assert!(e.to_string().contains("line 2"), "{}", e),
            }
        }
    }
}

mod header_decoders {
    use keel_journal::__format::{decode_identity, decode_segment_header};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn headers_from_arbitrary_bytes_never_panic_and_round_trip(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(h) = decode_segment_header(&data) {
                prop_assert_eq!(&h.encode()[..], &data[..256]);
            }
            if let Ok(i) = decode_identity(&data) {
                prop_assert_eq!(&i.encode()[..], &data[..]);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Checkpoint headers and bodies: arbitrary bytes never panic.
    #[test]
    fn checkpoint_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = keel_journal::__format::decode_checkpoint_header(&bytes);
        let _ = keel_journal::__format::decode_horizon(&bytes);
        let _ = keel_journal::__format::decode_checkpoint_body(&bytes);
    }

    /// A body with a plausible record count and random contents: refused or decoded, never a panic, and
    /// never more records than the bytes could hold.
    #[test]
    fn checkpoint_body_counts_are_bounded(n in 0u64..50, rest in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let mut b = n.to_le_bytes().to_vec();
        b.extend_from_slice(&rest);
        if let Ok(records) = keel_journal::__format::decode_checkpoint_body(&b) {
            prop_assert!(records as u64 <= n);
        }
    }
}
