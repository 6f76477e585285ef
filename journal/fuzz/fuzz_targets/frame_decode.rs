//! The frame decoder on arbitrary bytes: never panics; whatever it accepts re-encodes to the same bytes.
#![no_main]

use keel_journal::__format::{decode_frame, encode_frame, Binding};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let binding = Binding { journal_id: [0x4B; 16], segment_seq: 1 };
    if let Ok((header, payload)) = decode_frame(&binding, data) {
        let again = encode_frame(&binding, &header, payload);
        assert_eq!(&again[..], &data[..again.len()]);
    }
});
