//! The segment-header, identity-file and reclaim-horizon decoders on arbitrary bytes: never panic; whatever they accept
//! re-encodes to the same bytes.
#![no_main]

use keel_journal::__format::{decode_horizon, decode_identity, decode_segment_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = decode_segment_header(data) {
        assert_eq!(&h.encode()[..], &data[..256]);
    }
    if let Ok(i) = decode_identity(data) {
        assert_eq!(&i.encode()[..], data);
    }
    if let Ok(h) = decode_horizon(data) {
        assert_eq!(&h.encode()[..], data);
    }
});
