//! Recovery's segment scan on arbitrary bytes, strict and salvage, newest or not: never panics, and every
//! frame it hands out lies inside the segment.
#![no_main]

use keel_journal::__format::{scan_segment, Binding, ScanInput};
use keel_journal::{Lsn, RecoveryMode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let binding = Binding { journal_id: [0x4B; 16], segment_seq: 1 };
    for newest in [false, true] {
        for mode in [RecoveryMode::Strict, RecoveryMode::Salvage] {
            let input = ScanInput { path: std::path::Path::new("fuzz"), data, binding, first_lsn: Lsn(1), newest, mode, start: 256, frames_before: 0, base: 0, partial: false };
            let _ = scan_segment(&input, &mut |offset, h, payload| {
                assert!(offset as usize + 40 + payload.len() <= data.len());
                assert_eq!(h.payload_len as usize, payload.len());
                Ok(())
            });
        }
    }
});
