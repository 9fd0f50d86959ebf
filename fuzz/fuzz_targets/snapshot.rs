//! Any bytes as a snapshot file: the reader must answer (a snapshot or an error), never panic,
//! and never hand over records from a file it then refuses without the caller knowing.
//!
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run snapshot --sanitizer none -- -max_total_time=300`
#![no_main]

use cdc_cache::snapshot::format::read;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut records = 0u64;
    if let Ok((_, count)) = read(data, |_| records += 1) {
        assert_eq!(count, records, "an accepted snapshot reports what it handed over");
    }
});
