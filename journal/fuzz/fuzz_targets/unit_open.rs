//! Sealed-unit decoding on arbitrary bytes: never panics, and nothing forged authenticates.
#![no_main]

use keel_journal::__format::{unit_open, unit_peek, Binding};
use keel_journal::crypto::keys::KeyRing;
use keel_journal::crypto::SegmentCipher;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ring = KeyRing::parse(&format!("1:{}", "42".repeat(32)), "fuzz").unwrap();
    let binding = Binding { journal_id: [0x4B; 16], segment_seq: 1 };
    let (cipher, _) = SegmentCipher::create(ring.current().1, 1, &binding);
    for offset in [0u64, 1, 256] {
        let _ = unit_peek(&binding, data, offset);
        assert!(unit_open(&cipher, &binding, data, offset).is_err(), "random bytes never authenticate");
    }
});
