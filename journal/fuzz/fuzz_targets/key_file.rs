//! Key-file parsing on arbitrary text: an error or a key ring, never a panic.
#![no_main]

use keel_journal::crypto::keys::KeyRing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(ring) = KeyRing::parse(text, "fuzz") {
            assert!(!ring.ids().is_empty() && !ring.ids().contains(&0));
        }
    }
});
