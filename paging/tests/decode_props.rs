//! The fuzz target's decoders as a property test, so that every `cargo test` runs them on random bytes.

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        keel_paging::__fuzz::decoders(&data);
    }
}
