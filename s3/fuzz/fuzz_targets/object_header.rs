//! The directory backend's object-file header decoder on arbitrary bytes: never panics; whatever it accepts
//! re-encodes to the same 32 bytes.
#![no_main]

use keel_s3::dir::ObjectHeader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = ObjectHeader::decode(data) {
        assert_eq!(&h.encode()[..], &data[..ObjectHeader::LEN]);
    }
});
