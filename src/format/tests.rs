//! Table-driven tests of the decoder over every record shape it accepts or refuses.

use proptest::prelude::*;

use super::*;

fn upsert(key: &str, value: &str) -> Result<Change, DecodeError> {
    Ok(Change::Upsert {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    })
}

fn delete(key: &str) -> Result<Change, DecodeError> {
    Ok(Change::Delete {
        key: key.as_bytes().to_vec(),
    })
}

#[test]
fn raw_records() {
    type Case<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, Result<Change, DecodeError>);
    let cases: &[Case] = &[
        (Some(b"k"), Some(b"v"), upsert("k", "v")),
        (Some(b"k"), Some(b""), upsert("k", "")),
        (Some(b"k"), None, delete("k")),
        (Some(b""), None, Ok(Change::Delete { key: Vec::new() })),
        (None, Some(b"v"), Err(DecodeError::NullKey)),
        (None, None, Err(DecodeError::NullKey)),
        // Raw means raw: JSON-looking bytes are not interpreted.
        (
            Some(b"{ \"id\": 1 }"),
            Some(b"null"),
            upsert("{ \"id\": 1 }", "null"),
        ),
    ];
    for (key, value, want) in cases {
        assert_eq!(
            &decode(Format::Raw, *key, *value),
            want,
            "key {key:?} value {value:?}"
        );
    }
}

// The PostgreSQL connector's documented events (Debezium reference, "Data change events"),
// with the placeholders and trailing commas of the printed examples fixed.
const PG_KEY_WITH_SCHEMA: &str = r#"{
  "schema": {"type": "struct", "name": "PostgreSQL_server.public.customers.Key", "optional": false,
             "fields": [{"name": "id", "index": "0", "schema": {"type": "INT32", "optional": "false"}}]},
  "payload": {"id": "1"}
}"#;

const PG_CREATE_WITH_SCHEMA: &str = r#"{
  "schema": {
    "type": "struct",
    "fields": [
      {"type": "struct", "fields": [
        {"type": "int32", "optional": false, "field": "id"},
        {"type": "string", "optional": false, "field": "first_name"},
        {"type": "string", "optional": false, "field": "last_name"},
        {"type": "string", "optional": false, "field": "email"}],
       "optional": true, "name": "PostgreSQL_server.inventory.customers.Value", "field": "before"},
      {"type": "struct", "fields": [
        {"type": "int32", "optional": false, "field": "id"},
        {"type": "string", "optional": false, "field": "first_name"},
        {"type": "string", "optional": false, "field": "last_name"},
        {"type": "string", "optional": false, "field": "email"}],
       "optional": true, "name": "PostgreSQL_server.inventory.customers.Value", "field": "after"},
      {"type": "struct", "fields": [
        {"type": "string", "optional": false, "field": "version"},
        {"type": "string", "optional": false, "field": "connector"},
        {"type": "string", "optional": false, "field": "name"},
        {"type": "int64", "optional": false, "field": "ts_ms"},
        {"type": "boolean", "optional": true, "default": false, "field": "snapshot"},
        {"type": "string", "optional": false, "field": "db"},
        {"type": "string", "optional": false, "field": "schema"},
        {"type": "string", "optional": false, "field": "table"},
        {"type": "int64", "optional": true, "field": "txId"},
        {"type": "int64", "optional": true, "field": "lsn"},
        {"type": "int64", "optional": true, "field": "xmin"}],
       "optional": false, "name": "io.debezium.connector.postgresql.Source", "field": "source"},
      {"type": "string", "optional": false, "field": "op"},
      {"type": "int64", "optional": true, "field": "ts_ms"}],
    "optional": false,
    "name": "PostgreSQL_server.inventory.customers.Envelope"
  },
  "payload": {
    "before": null,
    "after": {"id": 1, "first_name": "Anne", "last_name": "Kretchmar", "email": "annek@noanswer.org"},
    "source": {"version": "2.7.3.Final", "connector": "postgresql", "name": "PostgreSQL_server",
               "ts_ms": 1559033904863, "snapshot": true, "db": "postgres", "sequence": "[\"24023119\",\"24023128\"]",
               "schema": "public", "table": "customers", "txId": 555, "lsn": 24023128, "xmin": null},
    "op": "c",
    "ts_ms": 1559033904863
  }
}"#;

const PG_UPDATE: &str = r#"{
  "schema": {"type": "struct", "name": "PostgreSQL_server.inventory.customers.Envelope"},
  "payload": {
    "before": {"id": 1},
    "after": {"id": 1, "first_name": "Anne Marie", "last_name": "Kretchmar", "email": "annek@noanswer.org"},
    "source": {"version": "2.7.3.Final", "connector": "postgresql", "name": "PostgreSQL_server",
               "ts_ms": 1559033904863, "snapshot": false, "db": "postgres", "schema": "public",
               "table": "customers", "txId": 556, "lsn": 24023128, "xmin": null},
    "op": "u",
    "ts_ms": 1465584025523
  }
}"#;

const PG_DELETE: &str = r#"{
  "schema": {"type": "struct", "name": "PostgreSQL_server.inventory.customers.Envelope"},
  "payload": {
    "before": {"id": 1},
    "after": null,
    "source": {"version": "2.7.3.Final", "connector": "postgresql", "name": "PostgreSQL_server",
               "ts_ms": 1559033904863, "snapshot": false, "db": "postgres", "schema": "public",
               "table": "customers", "txId": 556, "lsn": 46523128, "xmin": null},
    "op": "d",
    "ts_ms": 1465581902461
  }
}"#;

const ANNE: &str = r#"{"id":1,"first_name":"Anne","last_name":"Kretchmar","email":"annek@noanswer.org"}"#;

#[test]
fn postgres_connector_documented_events() {
    let dbz = |key: &str, value: Option<&str>| {
        decode(Format::Debezium, Some(key.as_bytes()), value.map(str::as_bytes))
    };
    // The documented key carries the id as a string; the payload is kept as it is.
    assert_eq!(
        dbz(PG_KEY_WITH_SCHEMA, Some(PG_CREATE_WITH_SCHEMA)),
        upsert(r#"{"id":"1"}"#, ANNE)
    );
    assert_eq!(
        dbz(PG_KEY_WITH_SCHEMA, Some(PG_UPDATE)),
        upsert(
            r#"{"id":"1"}"#,
            r#"{"id":1,"first_name":"Anne Marie","last_name":"Kretchmar","email":"annek@noanswer.org"}"#
        )
    );
    assert_eq!(dbz(PG_KEY_WITH_SCHEMA, Some(PG_DELETE)), delete(r#"{"id":"1"}"#));
    // The tombstone that follows the delete.
    assert_eq!(dbz(PG_KEY_WITH_SCHEMA, None), delete(r#"{"id":"1"}"#));
}

#[test]
fn debezium_shapes() {
    let after = r#"{"id":7,"name":"x"}"#;
    let cases: &[(&str, Option<&str>, Result<Change, DecodeError>)] = &[
        // Envelope without schemas (schemas.enable=false), every op.
        (
            r#"{"id":7}"#,
            Some(r#"{"before":null,"after":{"id":7,"name":"x"},"op":"c","ts_ms":1}"#),
            upsert(r#"{"id":7}"#, after),
        ),
        (
            r#"{"id":7}"#,
            Some(r#"{"before":null,"after":{"id":7,"name":"x"},"op":"r"}"#),
            upsert(r#"{"id":7}"#, after),
        ),
        (
            r#"{"id":7}"#,
            Some(r#"{"before":{"id":7},"after":{"id":7,"name":"x"},"op":"u"}"#),
            upsert(r#"{"id":7}"#, after),
        ),
        (
            r#"{"id":7}"#,
            Some(r#"{"before":{"id":7},"after":null,"op":"d"}"#),
            delete(r#"{"id":7}"#),
        ),
        (r#"{"id":7}"#, None, delete(r#"{"id":7}"#)),
        // Truncate events clear the table, with or without a key.
        (
            r#"{"id":7}"#,
            Some(r#"{"before":null,"after":null,"op":"t"}"#),
            Ok(Change::Truncate),
        ),
        // Whitespace and field order: kept order, compact output, exact number text.
        (
            "{ \"order_id\" : 7 ,\n \"line\": 2 }",
            Some(
                r#"{"op":"c","after":{ "price" : "AfQ=", "qty": 1.50, "big": 123456789012345678901234567890, "s":"a b\" {}" }}"#,
            ),
            upsert(
                r#"{"order_id":7,"line":2}"#,
                r#"{"price":"AfQ=","qty":1.50,"big":123456789012345678901234567890,"s":"a b\" {}"}"#,
            ),
        ),
        // The same row with a different key schema maps to the same key.
        (
            r#"{"schema":{"type":"struct","fields":[{"field":"id","type":"int64"}]},"payload":{"id":7}}"#,
            None,
            delete(r#"{"id":7}"#),
        ),
        // Flattened (ExtractNewRecordState): the record is the row.
        (
            r#"{"id":7}"#,
            Some(r#"{"id":7,"name":"x"}"#),
            upsert(r#"{"id":7}"#, after),
        ),
        (
            r#"{"id":7}"#,
            Some(r#"{"schema":{"type":"struct"},"payload":{"id":7,"name":"x"}}"#),
            upsert(r#"{"id":7}"#, after),
        ),
        // Flattened deletes in every form the transform emits.
        (r#"{"id":7}"#, Some("null"), delete(r#"{"id":7}"#)),
        (
            r#"{"id":7}"#,
            Some(r#"{"schema":{"type":"struct"},"payload":null}"#),
            delete(r#"{"id":7}"#),
        ),
        (
            r#"{"id":7}"#,
            Some(r#"{"id":7,"name":"x","__deleted":"true"}"#),
            delete(r#"{"id":7}"#),
        ),
        (
            r#"{"id":7}"#,
            Some(r#"{"id":7,"__deleted":true}"#),
            delete(r#"{"id":7}"#),
        ),
        // Rewrite mode's live rows drop the marker.
        (
            r#"{"id":7}"#,
            Some(r#"{"id":7,"__deleted":"false","name":"x"}"#),
            upsert(r#"{"id":7}"#, after),
        ),
        // A primitive key payload (some key converters) stays valid JSON.
        ("42", Some(r#"{"id":42}"#), upsert("42", r#"{"id":42}"#)),
        // Bad records.
        (
            "not json",
            Some("{}"),
            Err(DecodeError::KeyNotJson(
                "expected ident at line 1 column 2".into(),
            )),
        ),
        (
            r#"{"id":7}"#,
            Some("{oops"),
            Err(DecodeError::ValueNotJson(
                "key must be a string at line 1 column 2".into(),
            )),
        ),
        (
            r#"{"id":7}"#,
            Some("[1,2]"),
            Err(DecodeError::ValueNotObject("array")),
        ),
        (
            r#"{"id":7}"#,
            Some(r#"{"before":null,"after":null,"op":"c"}"#),
            Err(DecodeError::MissingAfter { op: "c".into() }),
        ),
        (
            r#"{"id":7}"#,
            Some(r#"{"before":null,"after":[1],"op":"u"}"#),
            Err(DecodeError::ValueNotObject("array")),
        ),
        (
            r#"{"id":7}"#,
            Some(r#"{"before":null,"after":{},"op":"m"}"#),
            Err(DecodeError::UnsupportedOp("m".into())),
        ),
        (
            r#"{"schema":{},"payload":null}"#,
            Some(r#"{"id":1}"#),
            Err(DecodeError::NullKey),
        ),
        (
            "",
            Some(r#"{"id":1}"#),
            Err(DecodeError::KeyNotJson(
                "EOF while parsing a value at line 1 column 0".into(),
            )),
        ),
    ];
    for (key, value, want) in cases {
        let got = decode(Format::Debezium, Some(key.as_bytes()), value.map(str::as_bytes));
        assert_eq!(&got, want, "key {key} value {value:?}");
    }
    // No key: skipped, except truncates which concern the whole table.
    assert_eq!(
        decode(Format::Debezium, None, Some(br#"{"id":1}"#)),
        Err(DecodeError::NullKey)
    );
    let truncate = br#"{"before":null,"after":null,"op":"t"}"#;
    assert_eq!(
        decode(Format::Debezium, None, Some(truncate)),
        Ok(Change::Truncate)
    );
}

#[test]
fn request_keys_are_canonicalized_like_record_keys() {
    let canon = |k: &str| {
        canonical_key(Format::Debezium, k.as_bytes()).map(|c| String::from_utf8(c.into_owned()).unwrap())
    };
    assert_eq!(canon(r#"{ "id": 1 }"#), Ok(r#"{"id":1}"#.to_string()));
    assert_eq!(
        canon(r#"{"schema":{"type":"struct"},"payload":{"id":1}}"#),
        Ok(r#"{"id":1}"#.to_string())
    );
    assert!(matches!(canon("id=1"), Err(DecodeError::KeyNotJson(_))));
    assert_eq!(canonical_key(Format::Raw, b" x ").unwrap().as_ref(), b" x ");
}

proptest! {
    /// No input makes the decoder panic, in either format.
    #[test]
    fn decoding_never_panics(key in prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
                             value in prop::option::of(prop::collection::vec(any::<u8>(), 0..256))) {
        let _ = decode(Format::Debezium, key.as_deref(), value.as_deref());
        let _ = decode(Format::Raw, key.as_deref(), value.as_deref());
        if let Some(key) = &key {
            let _ = canonical_key(Format::Debezium, key);
        }
    }

    /// JSON-shaped input (the interesting part of the space) never panics, and whatever is
    /// stored is valid, compact JSON.
    #[test]
    fn stored_values_are_compact_json(fields in prop::collection::vec(("[a-z_]{1,8}", json_leaf()), 0..6),
                                      op in prop::sample::select(vec!["c", "u", "r", "d", "t", "x"]),
                                      envelope in any::<bool>(), pad in "[ \n\t]{0,2}") {
        let row = format!("{{{}}}", fields.iter().map(|(k, v)| format!("{pad}\"{k}\"{pad}:{pad}{v}")).collect::<Vec<_>>().join(","));
        let value = if envelope { format!(r#"{{"before":null,"after":{row},"op":"{op}"}}"#) } else { row };
        let decoded = decode(Format::Debezium, Some(br#"{"id":1}"#), Some(value.as_bytes()));
        match (envelope, op) {
            (true, "d") => prop_assert_eq!(decoded, Ok(Change::Delete { key: br#"{"id":1}"#.to_vec() })),
            (true, "t") => prop_assert_eq!(decoded, Ok(Change::Truncate)),
            (true, "x") => prop_assert_eq!(decoded, Err(DecodeError::UnsupportedOp("x".into()))),
            // c, r, u and flattened rows: an upsert of compact JSON.
            _ => {
                let Ok(Change::Upsert { value, .. }) = decoded else {
                    return Err(TestCaseError::fail(format!("expected an upsert, got {decoded:?}")));
                };
                let text = String::from_utf8(value).expect("utf-8");
                let parsed: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
                prop_assert!(parsed.is_object());
                prop_assert!(!text.contains('\n'));
            }
        }
    }
}

fn json_leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        "[a-z \\\\\"{}]{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        Just("[1, {\"a\" : [ ]}]".to_string()),
        Just("true".to_string()),
    ]
}
