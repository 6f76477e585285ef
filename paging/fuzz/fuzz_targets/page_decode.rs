//! Page headers, message frames, a page's chunked reader and the paging journal records on arbitrary
//! bytes: never panic; what they accept re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keel_paging::__fuzz::decoders(data);
});
