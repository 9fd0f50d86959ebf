//! Datums are written by the kept `apache-avro` crate (or by hand where a byte layout is the
//! point) and read back by this module's decoder.

use std::sync::Arc;

use apache_avro::types::Value;
use apache_avro::{to_avro_datum, Schema};

use super::*;

/// Debezium's documented change-event schema for a `customers` table (AvroConverter), trimmed
/// of `source` fields that add nothing here.
const ENVELOPE: &str = r#"{
  "type": "record", "name": "Envelope", "namespace": "dbserver1.inventory.customers",
  "fields": [
    {"name": "before", "type": ["null", {"type": "record", "name": "Value", "fields": [
      {"name": "id", "type": "int"},
      {"name": "first_name", "type": "string"},
      {"name": "email", "type": ["null", "string"], "default": null}
    ], "connect.name": "dbserver1.inventory.customers.Value"}], "default": null},
    {"name": "after", "type": ["null", "Value"], "default": null},
    {"name": "source", "type": {"type": "record", "name": "Source", "namespace": "io.debezium.connector.postgresql",
      "fields": [{"name": "version", "type": "string"}, {"name": "lsn", "type": ["null", "long"]}]}},
    {"name": "op", "type": "string"},
    {"name": "ts_ms", "type": ["null", "long"], "default": null}
  ]
}"#;

fn plan(schema: &str) -> Arc<Plan> {
    Arc::new(Plan::parse(schema).expect("schema compiles"))
}

fn datum<'a>(bytes: &'a [u8], plan: &Arc<Plan>, id: u32) -> Part<'a> {
    Some(Ok(Datum {
        bytes,
        schema: SchemaRef::Id(id),
        plan: plan.clone(),
    }))
}

fn customer(id: i32, name: &str, email: Option<&str>) -> Value {
    Value::Record(vec![
        ("id".into(), Value::Int(id)),
        ("first_name".into(), Value::String(name.into())),
        (
            "email".into(),
            match email {
                Some(e) => Value::Union(1, Box::new(Value::String(e.into()))),
                None => Value::Union(0, Box::new(Value::Null)),
            },
        ),
    ])
}

fn event(before: Option<Value>, after: Option<Value>, op: &str) -> Value {
    let nullable = |v: Option<Value>| match v {
        Some(v) => Value::Union(1, Box::new(v)),
        None => Value::Union(0, Box::new(Value::Null)),
    };
    Value::Record(vec![
        ("before".into(), nullable(before)),
        ("after".into(), nullable(after)),
        (
            "source".into(),
            Value::Record(vec![
                ("version".into(), Value::String("2.7.0.Final".into())),
                ("lsn".into(), Value::Union(1, Box::new(Value::Long(24023128)))),
            ]),
        ),
        ("op".into(), Value::String(op.into())),
        (
            "ts_ms".into(),
            Value::Union(1, Box::new(Value::Long(1_700_000_000_000))),
        ),
    ])
}

fn key_schema() -> (Schema, Arc<Plan>) {
    let text = r#"{"type":"record","name":"Key","namespace":"dbserver1.inventory.customers","fields":[{"name":"id","type":"int"}]}"#;
    (Schema::parse_str(text).unwrap(), plan(text))
}

fn key_bytes(id: i32) -> Vec<u8> {
    let (schema, _) = key_schema();
    to_avro_datum(&schema, Value::Record(vec![("id".into(), Value::Int(id))])).unwrap()
}

fn decode_event(value: Value) -> Result<Change, DecodeError> {
    let schema = Schema::parse_str(ENVELOPE).unwrap();
    let bytes = to_avro_datum(&schema, value).unwrap();
    let key = key_bytes(1004);
    let (_, key_plan) = key_schema();
    decode(&datum(&key, &key_plan, 1), &datum(&bytes, &plan(ENVELOPE), 2))
}

fn upsert(key: &str, value: &str) -> Change {
    Change::Upsert {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
}

#[test]
fn debezium_envelope_ops() {
    let row = r#"{"id":1004,"first_name":"Anne","email":"annek@noanswer.org"}"#;
    for op in ["c", "r", "u"] {
        let before = (op == "u").then(|| customer(1004, "Anne Marie", None));
        let change = decode_event(event(
            before,
            Some(customer(1004, "Anne", Some("annek@noanswer.org"))),
            op,
        ));
        assert_eq!(change, Ok(upsert(r#"{"id":1004}"#, row)), "op {op}");
    }
    let delete = decode_event(event(Some(customer(1004, "Anne", None)), None, "d"));
    assert_eq!(
        delete,
        Ok(Change::Delete {
            key: br#"{"id":1004}"#.to_vec()
        })
    );
    assert_eq!(decode_event(event(None, None, "t")), Ok(Change::Truncate));
    assert_eq!(
        decode_event(event(None, None, "c")),
        Err(DecodeError::MissingAfter { op: "c".into() })
    );
    assert_eq!(
        decode_event(event(None, None, "x")),
        Err(DecodeError::UnsupportedOp("x".into()))
    );
}

#[test]
fn tombstones_and_null_keys() {
    let key = key_bytes(7);
    let (_, key_plan) = key_schema();
    assert_eq!(
        decode(&datum(&key, &key_plan, 1), &None),
        Ok(Change::Delete {
            key: br#"{"id":7}"#.to_vec()
        })
    );
    let schema = Schema::parse_str(ENVELOPE).unwrap();
    let truncate = to_avro_datum(&schema, event(None, None, "t")).unwrap();
    assert_eq!(
        decode(&None, &datum(&truncate, &plan(ENVELOPE), 2)),
        Ok(Change::Truncate)
    );
    let create = to_avro_datum(&schema, event(None, Some(customer(1, "a", None)), "c")).unwrap();
    assert_eq!(
        decode(&None, &datum(&create, &plan(ENVELOPE), 2)),
        Err(DecodeError::NullKey)
    );
}

#[test]
fn flattened_rows_and_rewrite_deletes() {
    let text = r#"{"type":"record","name":"Value","fields":[
        {"name":"id","type":"int"},{"name":"name","type":"string"},
        {"name":"__deleted","type":["null","string"]},{"name":"tier","type":"string"}]}"#;
    let schema = Schema::parse_str(text).unwrap();
    let row = |deleted: &str| {
        to_avro_datum(
            &schema,
            Value::Record(vec![
                ("id".into(), Value::Int(3)),
                ("name".into(), Value::String("x\"y".into())),
                (
                    "__deleted".into(),
                    Value::Union(1, Box::new(Value::String(deleted.into()))),
                ),
                ("tier".into(), Value::String("gold".into())),
            ]),
        )
        .unwrap()
    };
    let key = key_bytes(3);
    let (_, key_plan) = key_schema();
    let value_plan = plan(text);
    let live = row("false");
    assert_eq!(
        decode(&datum(&key, &key_plan, 1), &datum(&live, &value_plan, 3)),
        Ok(upsert(r#"{"id":3}"#, r#"{"id":3,"name":"x\"y","tier":"gold"}"#))
    );
    let gone = row("true");
    assert_eq!(
        decode(&datum(&key, &key_plan, 1), &datum(&gone, &value_plan, 3)),
        Ok(Change::Delete {
            key: br#"{"id":3}"#.to_vec()
        })
    );
}

#[test]
fn composite_keys_keep_the_key_schema_order() {
    let text = r#"{"type":"record","name":"Key","fields":[{"name":"tenant","type":"string"},{"name":"id","type":"long"}]}"#;
    let schema = Schema::parse_str(text).unwrap();
    let bytes = to_avro_datum(
        &schema,
        Value::Record(vec![
            ("tenant".into(), Value::String("acme".into())),
            ("id".into(), Value::Long(-5)),
        ]),
    )
    .unwrap();
    let row_text = r#"{"type":"record","name":"Row","fields":[{"name":"v","type":"int"}]}"#;
    let row = to_avro_datum(
        &Schema::parse_str(row_text).unwrap(),
        Value::Record(vec![("v".into(), Value::Int(1))]),
    )
    .unwrap();
    assert_eq!(
        decode(&datum(&bytes, &plan(text), 1), &datum(&row, &plan(row_text), 2)),
        Ok(upsert(r#"{"tenant":"acme","id":-5}"#, r#"{"v":1}"#))
    );
}

/// Writes `value` with a one-field record schema whose field has `field_type`, and returns the
/// field as the decoder writes it.
fn field_json(field_type: &str, value: Value) -> String {
    let text = format!(r#"{{"type":"record","name":"R","fields":[{{"name":"f","type":{field_type}}}]}}"#);
    let schema = Schema::parse_str(&text).unwrap();
    let bytes = to_avro_datum(&schema, Value::Record(vec![("f".into(), value)])).unwrap();
    field_json_of_bytes(field_type, &bytes)
}

fn field_json_of_bytes(field_type: &str, bytes: &[u8]) -> String {
    let text = format!(r#"{{"type":"record","name":"R","fields":[{{"name":"f","type":{field_type}}}]}}"#);
    let plan = plan(&text);
    let mut reader = decode::Reader::new(bytes);
    let mut out = Vec::new();
    decode::write(&plan, plan.root(), &mut reader, &mut out).unwrap();
    reader.finish().unwrap();
    let json = String::from_utf8(out).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    parsed["f"].to_string()
}

#[test]
fn primitive_and_complex_types() {
    assert_eq!(field_json(r#""boolean""#, Value::Boolean(true)), "true");
    assert_eq!(field_json(r#""int""#, Value::Int(i32::MIN)), "-2147483648");
    assert_eq!(
        field_json(r#""long""#, Value::Long(i64::MAX)),
        "9223372036854775807"
    );
    assert_eq!(field_json(r#""float""#, Value::Float(0.1)), "0.1");
    assert_eq!(field_json(r#""double""#, Value::Double(-2.5e-8)), "-2.5e-8");
    assert_eq!(field_json(r#""double""#, Value::Double(f64::NAN)), r#""NaN""#);
    assert_eq!(
        field_json(r#""bytes""#, Value::Bytes(vec![0, 1, 254])),
        r#""AAH+""#
    );
    assert_eq!(
        field_json(r#""string""#, Value::String("é\n\u{1}".into())),
        r#""é\n\u0001""#
    );
    assert_eq!(
        field_json(
            r#"{"type":"enum","name":"Tier","symbols":["free","gold"]}"#,
            Value::Enum(1, "gold".into())
        ),
        r#""gold""#
    );
    assert_eq!(
        field_json(
            r#"{"type":"array","items":"int"}"#,
            Value::Array(vec![Value::Int(1), Value::Int(2)])
        ),
        "[1,2]"
    );
    assert_eq!(
        field_json(
            r#"{"type":"map","values":"string"}"#,
            Value::Map([("k".to_string(), Value::String("v".into()))].into())
        ),
        r#"{"k":"v"}"#
    );
    assert_eq!(
        field_json(
            r#"["null","long","string"]"#,
            Value::Union(2, Box::new(Value::String("s".into())))
        ),
        r#""s""#
    );
    assert_eq!(
        field_json(
            r#"{"type":"fixed","name":"F","size":2}"#,
            Value::Fixed(2, vec![255, 0])
        ),
        r#""/wA=""#
    );
}

#[test]
fn logical_types_are_lossless() {
    let decimal = r#"{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}"#;
    // 123450 = 0x01E23A
    assert_eq!(
        field_json_of_bytes(decimal, &[6, 0x01, 0xE2, 0x3A]),
        r#""1234.50""#
    );
    // -5 with scale 2
    assert_eq!(field_json_of_bytes(decimal, &[2, 0xFB]), r#""-0.05""#);
    assert_eq!(field_json_of_bytes(decimal, &[0]), r#""0.00""#);
    let fixed_decimal =
        r#"{"type":"fixed","name":"D","size":20,"logicalType":"decimal","precision":40,"scale":3}"#;
    let mut wide = vec![0xFF; 20];
    wide[19] = 0x9C; // -100
    assert_eq!(field_json_of_bytes(fixed_decimal, &wide), r#""-0.100""#);
    let mut big = vec![0u8; 20];
    big[0] = 0x01; // 2^152
    assert_eq!(
        field_json_of_bytes(fixed_decimal, &big),
        r#""5708990770823839524233143877797980545530986.496""#
    );
    assert_eq!(
        field_json(r#"{"type":"int","logicalType":"date"}"#, Value::Date(19000)),
        "19000"
    );
    assert_eq!(
        field_json(
            r#"{"type":"long","logicalType":"timestamp-micros"}"#,
            Value::TimestampMicros(1_700_000_000_123_456)
        ),
        "1700000000123456"
    );
    let uuid = "5f3c7a52-9d0e-4c1a-8f00-0123456789ab";
    let mut string_uuid = vec![(uuid.len() * 2) as u8];
    string_uuid.extend_from_slice(uuid.as_bytes());
    assert_eq!(
        field_json_of_bytes(r#"{"type":"string","logicalType":"uuid"}"#, &string_uuid),
        format!("\"{uuid}\"")
    );
    let fixed_uuid: Vec<u8> = (0..16).collect();
    assert_eq!(
        field_json_of_bytes(
            r#"{"type":"fixed","name":"U","size":16,"logicalType":"uuid"}"#,
            &fixed_uuid
        ),
        r#""00010203-0405-0607-0809-0a0b0c0d0e0f""#
    );
    // Debezium's VariableScaleDecimal: scale 3, unscaled 12345 (0x3039).
    let variable = r#"{"type":"record","name":"VariableScaleDecimal","namespace":"io.debezium.data",
        "fields":[{"name":"scale","type":"int"},{"name":"value","type":"bytes"}]}"#;
    assert_eq!(field_json_of_bytes(variable, &[6, 4, 0x30, 0x39]), r#""12.345""#);
    // A negative scale multiplies: 12 × 10^2.
    assert_eq!(field_json_of_bytes(variable, &[3, 2, 12]), r#""1200""#);
}

#[test]
fn recursive_schemas_compile_and_decode() {
    let text = r#"{"type":"record","name":"Node","fields":[
        {"name":"v","type":"int"},{"name":"next","type":["null","Node"]}]}"#;
    // v=1, next=(v=2, next=null)
    let bytes = [2, 2, 4, 0];
    let plan = plan(text);
    let mut reader = decode::Reader::new(&bytes);
    let mut out = Vec::new();
    decode::write(&plan, plan.root(), &mut reader, &mut out).unwrap();
    assert_eq!(out, br#"{"v":1,"next":{"v":2,"next":null}}"#);
    // Nesting deeper than the limit is refused, not a stack overflow.
    let deep: Vec<u8> = std::iter::repeat_n([2u8, 2], 10_000).flatten().collect();
    let mut reader = decode::Reader::new(&deep);
    let error = decode::write(&plan, plan.root(), &mut reader, &mut Vec::new()).unwrap_err();
    assert!(
        matches!(error, AvroDataError::TooDeep(_) | AvroDataError::Truncated(_)),
        "{error:?}"
    );
}

fn value_error_of(bytes: &[u8]) -> String {
    let key = key_bytes(1);
    let (_, key_plan) = key_schema();
    match decode(&datum(&key, &key_plan, 1), &datum(bytes, &plan(ENVELOPE), 9)) {
        Err(e) => e.to_string(),
        Ok(change) => panic!("decoded {change:?}"),
    }
}

#[test]
fn malformed_data_is_an_error_naming_the_schema_and_byte() {
    let schema = Schema::parse_str(ENVELOPE).unwrap();
    let good = to_avro_datum(&schema, event(None, Some(customer(1, "a", None)), "c")).unwrap();
    let truncated = value_error_of(&good[..good.len() - 3]);
    assert!(
        truncated.contains("schema id 9") && truncated.contains("ends early"),
        "{truncated}"
    );
    let mut extra = good.clone();
    extra.push(0);
    assert!(
        value_error_of(&extra).contains("1 bytes left over"),
        "{}",
        value_error_of(&extra)
    );
    let mut bad_branch = good.clone();
    bad_branch[0] = 8; // union branch 4 of 2
    assert!(value_error_of(&bad_branch).contains("union branch 4 of 2"));
    assert!(value_error_of(&[0xff; 11]).contains("malformed variable-length integer"));
}

#[test]
fn huge_item_counts_are_refused_before_any_work() {
    // An array of nulls claiming 2^62 items in 10 bytes.
    let plan = plan(r#"{"type":"array","items":"null"}"#);
    let bytes = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0];
    let mut reader = decode::Reader::new(&bytes);
    let error = decode::write(&plan, plan.root(), &mut reader, &mut Vec::new()).unwrap_err();
    assert_eq!(error, AvroDataError::TooManyItems);
    let mut reader = decode::Reader::new(&bytes);
    assert_eq!(
        decode::skip(&plan, plan.root(), &mut reader),
        Err(AvroDataError::TooManyItems)
    );
}

#[test]
fn unusable_schemas_are_refused_at_compile_time() {
    assert!(Plan::parse("not json").unwrap_err().0.contains("not JSON"));
    assert!(
        Plan::parse(r#"{"type":"record","name":"R","fields":[{"name":"f","type":"Nope"}]}"#)
            .unwrap_err()
            .0
            .contains("not an Avro schema")
    );
    assert_eq!(plan(r#""string""#).shape(), Shape::NotRecord);
    assert_eq!(
        plan(ENVELOPE).shape(),
        Shape::ChangeEvent {
            after: Some(1),
            op: 3
        }
    );
}

#[test]
fn a_non_record_value_is_refused_with_its_schema() {
    let string_plan = plan(r#""string""#);
    let key = key_bytes(1);
    let (_, key_plan) = key_schema();
    let error = decode(&datum(&key, &key_plan, 1), &datum(&[2, b'x'], &string_plan, 5)).unwrap_err();
    assert!(
        error.to_string().contains("value schema id 5 is not a record"),
        "{error}"
    );
}
