//! Avro decode throughput on one core: Debezium change events (AvroConverter's envelope, a
//! 7-column customer row with a decimal and a MicroTimestamp) decoded into the stored JSON row,
//! next to, in the same run and on the same events:
//! - the peer built on the `apache-avro` crate's generic `Value` (`from_avro_datum`, pick
//!   `after`, convert to `serde_json::Value`, serialize), and
//! - cdc-cache's own JSON path on the same events written by Kafka Connect's JsonConverter.
//!
//! `cargo bench --bench avro -- [--records N] [--runs N]`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use apache_avro::{from_avro_datum, to_avro_datum, Schema};
use cdc_cache::format::avro::{decode, Datum, Plan};
use cdc_cache::format::confluent::SchemaRef;
use cdc_cache::format::{self, Format};

mod common;

const KEY: &str = r#"{"type":"record","name":"Key","namespace":"shop.public.customers","fields":[{"name":"id","type":"long"}]}"#;

const ENVELOPE: &str = r#"{"type":"record","name":"Envelope","namespace":"shop.public.customers","fields":[
 {"name":"before","type":["null",{"type":"record","name":"Value","fields":[
   {"name":"id","type":"long"},{"name":"first_name","type":"string"},{"name":"last_name","type":"string"},
   {"name":"email","type":"string"},{"name":"status","type":["null","string"],"default":null},
   {"name":"balance","type":["null",{"type":"bytes","scale":2,"precision":10,"connect.name":"org.apache.kafka.connect.data.Decimal","logicalType":"decimal"}],"default":null},
   {"name":"updated_at","type":["null",{"type":"long","connect.name":"io.debezium.time.MicroTimestamp"}],"default":null}]}],"default":null},
 {"name":"after","type":["null","Value"],"default":null},
 {"name":"source","type":{"type":"record","name":"Source","namespace":"io.debezium.connector.postgresql","fields":[
   {"name":"version","type":"string"},{"name":"connector","type":"string"},{"name":"name","type":"string"},
   {"name":"ts_ms","type":"long"},{"name":"snapshot","type":["string","null"]},{"name":"db","type":"string"},
   {"name":"sequence","type":["null","string"]},{"name":"schema","type":"string"},{"name":"table","type":"string"},
   {"name":"txId","type":["null","long"]},{"name":"lsn","type":["null","long"]},{"name":"xmin","type":["null","long"]}]}},
 {"name":"op","type":"string"},
 {"name":"ts_ms","type":["null","long"],"default":null}]}"#;

fn row(id: i64) -> Value {
    Value::Record(vec![
        ("id".into(), Value::Long(id)),
        ("first_name".into(), Value::String("Grace".into())),
        ("last_name".into(), Value::String("Hopper".into())),
        (
            "email".into(),
            Value::String(format!("grace.hopper{id}@example.com")),
        ),
        (
            "status".into(),
            Value::Union(1, Box::new(Value::String("active".into()))),
        ),
        (
            "balance".into(),
            Value::Union(
                1,
                Box::new(Value::Decimal(apache_avro::Decimal::from(vec![0x01, 0xf4]))),
            ),
        ),
        (
            "updated_at".into(),
            Value::Union(1, Box::new(Value::Long(1_795_408_445_414_865))),
        ),
    ])
}

fn event(id: i64) -> Value {
    let some = |v: Value| Value::Union(1, Box::new(v));
    Value::Record(vec![
        ("before".into(), Value::Union(0, Box::new(Value::Null))),
        ("after".into(), some(row(id))),
        (
            "source".into(),
            Value::Record(vec![
                ("version".into(), Value::String("2.7.3.Final".into())),
                ("connector".into(), Value::String("postgresql".into())),
                ("name".into(), Value::String("shop".into())),
                ("ts_ms".into(), Value::Long(1_795_408_445_414)),
                (
                    "snapshot".into(),
                    Value::Union(0, Box::new(Value::String("false".into()))),
                ),
                ("db".into(), Value::String("shop".into())),
                (
                    "sequence".into(),
                    some(Value::String(r#"["24023119","24023128"]"#.into())),
                ),
                ("schema".into(), Value::String("public".into())),
                ("table".into(), Value::String("customers".into())),
                ("txId".into(), some(Value::Long(555))),
                ("lsn".into(), some(Value::Long(24_023_128))),
                ("xmin".into(), Value::Union(0, Box::new(Value::Null))),
            ]),
        ),
        ("op".into(), Value::String("u".into())),
        ("ts_ms".into(), some(Value::Long(1_795_408_445_420))),
    ])
}

fn main() {
    let records: usize = common::arg("--records", 200_000);
    let runs: usize = common::arg("--runs", 5);
    let key_schema = Schema::parse_str(KEY).unwrap();
    let value_schema = Schema::parse_str(ENVELOPE).unwrap();
    let key_plan = Arc::new(Plan::parse(KEY).unwrap());
    let value_plan = Arc::new(Plan::parse(ENVELOPE).unwrap());
    let keys: Vec<Vec<u8>> = (0..records as i64)
        .map(|id| to_avro_datum(&key_schema, Value::Record(vec![("id".into(), Value::Long(id))])).unwrap())
        .collect();
    let values: Vec<Vec<u8>> = (0..records as i64)
        .map(|id| to_avro_datum(&value_schema, event(id)).unwrap())
        .collect();
    let json_keys: Vec<String> = (0..records).map(|id| format!(r#"{{"id":{id}}}"#)).collect();
    let json_values: Vec<String> = (0..records as u64).map(common::debezium_json_event).collect();

    // The three must store the same row (the JSON path keeps the decimal's base64, the Avro
    // paths write it as a decimal string), or the comparison means nothing.
    let ours = decode_ours(&keys[7], &values[7], &key_plan, &value_plan);
    let peer = decode_peer(&keys[7], &values[7], &key_schema, &value_schema);
    assert_eq!(ours.0, peer.0, "keys differ");
    let ours_row: serde_json::Value = serde_json::from_slice(&ours.1).unwrap();
    let peer_row: serde_json::Value = serde_json::from_slice(&peer.1).unwrap();
    assert_eq!(ours_row["email"], peer_row["email"]);
    assert_eq!(ours_row["balance"], "5.00");

    let mut ours_times = Vec::new();
    let mut peer_times = Vec::new();
    let mut json_times = Vec::new();
    // Interleaved, so a noisy neighbour slows all three alike.
    for _ in 0..runs {
        ours_times.push(time(|| {
            for (k, v) in keys.iter().zip(&values) {
                black_box(decode_ours(k, v, &key_plan, &value_plan));
            }
        }));
        peer_times.push(time(|| {
            for (k, v) in keys.iter().zip(&values) {
                black_box(decode_peer(k, v, &key_schema, &value_schema));
            }
        }));
        json_times.push(time(|| {
            for (k, v) in json_keys.iter().zip(&json_values) {
                black_box(format::decode(Format::Debezium, Some(k.as_bytes()), Some(v.as_bytes())).unwrap());
            }
        }));
    }
    let rate = |times: &[Duration]| records as f64 / common::median(times).as_secs_f64();
    let (ours, peer, json) = (rate(&ours_times), rate(&peer_times), rate(&json_times));
    let avg = |v: &[Vec<u8>]| v.iter().map(Vec::len).sum::<usize>() / v.len();
    println!("## Avro decode, one core ({records} Debezium events per run, {runs} runs, medians)");
    println!(
        "Event size: Avro {} B key + {} B value; JSON {} B value.\n",
        avg(&keys),
        avg(&values),
        json_values.iter().map(String::len).sum::<usize>() / records
    );
    println!("| decoder | records/s | cdc-cache avro / this |");
    println!("|---|---|---|");
    println!("| cdc-cache avro (straight into JSON) | {ours:.0} | 1.00 |");
    println!(
        "| apache-avro generic Value peer | {peer:.0} | {:.2} |",
        ours / peer
    );
    println!(
        "| cdc-cache debezium JSON, same events | {json:.0} | {:.2} |",
        ours / json
    );
}

fn time(f: impl FnOnce()) -> Duration {
    let started = Instant::now();
    f();
    started.elapsed()
}

fn decode_ours(key: &[u8], value: &[u8], key_plan: &Arc<Plan>, value_plan: &Arc<Plan>) -> (Vec<u8>, Vec<u8>) {
    let datum = |bytes, plan: &Arc<Plan>, id| {
        Some(Ok(Datum {
            bytes,
            schema: SchemaRef::Id(id),
            plan: plan.clone(),
        }))
    };
    match decode(&datum(key, key_plan, 1), &datum(value, value_plan, 2)) {
        Ok(cdc_cache::store::Change::Upsert { key, value }) => (key, value),
        other => panic!("unexpected {other:?}"),
    }
}

/// What a decoder built on the Avro crate does: the generic value tree, `after` picked out,
/// converted to JSON and written.
fn decode_peer(key: &[u8], value: &[u8], key_schema: &Schema, value_schema: &Schema) -> (Vec<u8>, Vec<u8>) {
    let key = from_avro_datum(key_schema, &mut &key[..], None).unwrap();
    let key = serde_json::to_vec(&serde_json::Value::try_from(key).unwrap()).unwrap();
    let Value::Record(fields) = from_avro_datum(value_schema, &mut &value[..], None).unwrap() else {
        panic!("not a record")
    };
    let after = fields.into_iter().find(|(name, _)| name == "after").unwrap().1;
    let after = match after {
        Value::Union(_, inner) => *inner,
        other => other,
    };
    let row = serde_json::Value::try_from(after).unwrap();
    (key, serde_json::to_vec(&row).unwrap())
}
