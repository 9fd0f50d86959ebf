//! Any bytes as an Avro record, framed or not, against writer schemas that cover every node
//! kind (a Debezium envelope, a recursive record, logical types, maps and arrays of nulls): the
//! decoder must answer, never panic or loop, and whatever it stores must be valid JSON.
//!
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run avro --sanitizer none -- -max_total_time=300`
#![no_main]

use std::sync::{Arc, OnceLock};

use cdc_cache::format::avro::{decode, Datum, Plan};
use cdc_cache::format::confluent::{self, SchemaRef};
use cdc_cache::store::Change;
use libfuzzer_sys::fuzz_target;

const SCHEMAS: [&str; 4] = [
    r#"{"type":"record","name":"Envelope","fields":[
        {"name":"before","type":["null",{"type":"record","name":"Value","fields":[
            {"name":"id","type":"long"},{"name":"name","type":"string"},
            {"name":"price","type":{"type":"bytes","logicalType":"decimal","precision":30,"scale":4}},
            {"name":"ref","type":{"type":"fixed","name":"U","size":16,"logicalType":"uuid"}},
            {"name":"tags","type":{"type":"map","values":{"type":"array","items":"null"}}},
            {"name":"kind","type":{"type":"enum","name":"K","symbols":["a","b"]}},
            {"name":"f","type":"float"},{"name":"d","type":"double"},{"name":"b","type":"boolean"},
            {"name":"v","type":{"type":"record","name":"VariableScaleDecimal","namespace":"io.debezium.data",
                "fields":[{"name":"scale","type":"int"},{"name":"value","type":"bytes"}]}},
            {"name":"dur","type":{"type":"fixed","name":"Dur","size":12,"logicalType":"duration"}}]}]},
        {"name":"after","type":["null","Value"]},
        {"name":"op","type":["null","string"]}]}"#,
    r#"{"type":"record","name":"Node","fields":[{"name":"v","type":"int"},{"name":"next","type":["null","Node"]}]}"#,
    r#"{"type":"record","name":"Row","fields":[{"name":"id","type":"int"},{"name":"__deleted","type":["null","string","boolean"]},{"name":"x","type":{"type":"array","items":"Row"}}]}"#,
    r#"{"type":"record","name":"Key","fields":[{"name":"tenant","type":"string"},{"name":"id","type":"long"}]}"#,
];

fn plans() -> &'static Vec<Arc<Plan>> {
    static PLANS: OnceLock<Vec<Arc<Plan>>> = OnceLock::new();
    PLANS.get_or_init(|| SCHEMAS.iter().map(|s| Arc::new(Plan::parse(s).expect("schema compiles"))).collect())
}

fuzz_target!(|data: &[u8]| {
    // First byte: which schemas the key and value use, and whether each is null; then the key
    // and value split at the first 0xFF, each read as a Confluent frame first.
    let Some((&flags, rest)) = data.split_first() else { return };
    let (key, value) = match rest.iter().position(|&b| b == 0xFF) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let plans = plans();
    let _ = confluent::read(key, None);
    let _ = confluent::read(value, Some(key));
    let part = |bytes, index: u8, present: bool| {
        present.then(|| {
            Ok(Datum {
                bytes,
                schema: SchemaRef::Id(u32::from(index)),
                plan: plans[usize::from(index) % plans.len()].clone(),
            })
        })
    };
    let key = part(key, flags & 3, flags & 0x10 == 0);
    let value = part(value, (flags >> 2) & 3, flags & 0x20 == 0);
    if let Ok(Change::Upsert { key, value }) = decode(&key, &value) {
        serde_json::from_slice::<&serde_json::value::RawValue>(&key).expect("stored key is JSON");
        serde_json::from_slice::<&serde_json::value::RawValue>(&value).expect("stored value is JSON");
    }
});
