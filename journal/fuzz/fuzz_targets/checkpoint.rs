//! The checkpoint header and body decoders on arbitrary bytes: never panic, never allocate beyond what the
//! input could describe; an accepted header re-encodes to the same bytes.
#![no_main]

use keel_journal::__format::{decode_checkpoint_body, decode_checkpoint_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = decode_checkpoint_header(data) {
        assert_eq!(&h.encode()[..], &data[..152]);
    }
    let _ = decode_checkpoint_body(data);
});
