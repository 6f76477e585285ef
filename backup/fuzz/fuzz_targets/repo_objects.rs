//! A repository's objects as read back from an untrusted store: the config, sealed envelopes, manifests
//! and archive entries, object names, and manifest paths. Never panic; what decodes re-encodes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keel_backup::__fuzz::decoders(data);
});
