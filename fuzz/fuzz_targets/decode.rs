//! Any bytes as a record's key and value: the decoder must answer, never panic, and whatever it
//! stores must be valid JSON (debezium format), projected (`--project`) or not.
//!
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run decode --sanitizer none -- -max_total_time=300`
#![no_main]

use cdc_cache::format::Format;
use cdc_cache::format::{canonical_key, decode, Projection};
use cdc_cache::store::Change;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: shape flags; then the key and value split at the first 0xFF.
    let Some((&flags, rest)) = data.split_first() else { return };
    let (key, value) = match rest.iter().position(|&b| b == 0xFF) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let key = (flags & 1 == 0).then_some(key);
    let value = (flags & 2 == 0).then_some(value);
    let _ = decode(Format::Raw, key, value);
    if let Ok(Change::Upsert { key, value }) = decode(Format::Debezium, key, value) {
        // JSON grammar, not serde_json::Value: numbers beyond f64 are valid JSON and pass through.
        serde_json::from_slice::<&serde_json::value::RawValue>(&key).expect("stored key is JSON");
        serde_json::from_slice::<&serde_json::value::RawValue>(&value).expect("stored value is JSON");
        // What --project stores must be JSON too.
        let projection = Projection::parse("id,a,b").expect("a valid column list");
        let projected = projection.apply(&key, value);
        serde_json::from_slice::<&serde_json::value::RawValue>(&projected).expect("projected value is JSON");
    }
    if let Some(key) = key {
        let _ = canonical_key(Format::Debezium, key);
    }
});
