//! Row formats: how a topic's key and value bytes become a [`Change`] to the map, and how a
//! request key is brought into the form keys are stored in. Both ingest (decoding records) and
//! gRPC (canonicalizing request keys) use this module; neither reaches into the other.
//!
//! Decoding is pure: no I/O here, so every record shape is a table-driven unit test.
//!
//! `raw` stores bytes as they are. `debezium` understands Debezium's JSON (Kafka Connect's
//! JsonConverter, with or without `schemas.enable`):
//!
//! - **Key**: the key's payload (a `{"schema":…,"payload":…}` envelope removed) as compact JSON,
//!   fields in the order received: `{"id":1}`, `{"order_id":7,"line":2}`.
//! - **Value**, after removing a schema envelope the same way, is one of:
//!   - a *change event* when it is an object with a string `op` and a `before` or `after` field:
//!     `c`, `r`, `u` store `after`; `d` deletes; `t` (truncate) clears what this partition wrote;
//!   - otherwise a *flattened row* (ExtractNewRecordState): the object is the row; with
//!     `"__deleted":"true"` it is a delete, and the `__deleted` field is never stored;
//!   - `null` (the 4-byte JSON value, or an envelope whose payload is null) deletes, as does a
//!     Kafka tombstone.
//!
//! Values are re-emitted compactly but otherwise untouched: numbers, strings and base64 decimals
//! keep their exact text (the cache is not a schema engine).

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::store::Change;

pub mod avro;
pub mod confluent;
mod key_shape;
mod project;
pub use key_shape::{KeyShape, KeyShapes};
pub use project::{Projection, ProjectionError};

/// How a topic's records are decoded into keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Key and value bytes stored as they are; a null value deletes.
    Raw,
    /// Debezium change events (JSON); keys are the primary key as compact JSON.
    Debezium,
    /// Avro in Confluent's wire format, schemas from a Schema Registry: Debezium change events
    /// or flattened rows, stored as for `debezium`.
    Avro,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Debezium => "debezium",
            Format::Avro => "avro",
        }
    }

    /// Keys are stored as compact JSON (a primary key's columns), whatever the bytes on the topic.
    pub fn json_keys(self) -> bool {
        matches!(self, Format::Debezium | Format::Avro)
    }

    /// Records name their writer schema, to be fetched from a Schema Registry.
    pub fn needs_schema_registry(self) -> bool {
        self == Format::Avro
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A record without a key cannot be looked up; it is skipped.
    #[error("record has no key")]
    NullKey,
    #[error("key is not JSON: {0}")]
    KeyNotJson(String),
    #[error("value is not JSON: {0}")]
    ValueNotJson(String),
    #[error("value is JSON {0}; expected an object (a change event or a row) or null")]
    ValueNotObject(&'static str),
    #[error("change event with op {op:?} has no \"after\" row")]
    MissingAfter { op: String },
    #[error("change event has op {0:?}; expected c, r, u, d or t")]
    UnsupportedOp(String),
    /// A key or value not in Confluent's wire format (the message names which).
    #[error("{0}")]
    Frame(String),
    #[error("{0}")]
    AvroKey(String),
    #[error("{0}")]
    AvroValue(String),
    /// The writer schema could not be had, or cannot be used (the message names the schema).
    #[error("{0}")]
    Schema(String),
}

/// Decodes one record of a format that needs nothing but its bytes (Avro records go through
/// [`avro::decode`] once their schemas are looked up). `None` is Kafka's null (absent),
/// distinct from an empty byte string.
pub fn decode(format: Format, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Change, DecodeError> {
    match format {
        Format::Raw => decode_raw(key, value),
        Format::Debezium => decode_debezium(key, value),
        Format::Avro => Err(DecodeError::Schema(
            "avro records need their schemas looked up first".into(),
        )),
    }
}

/// Brings a key from a lookup request into the form keys are stored in.
pub fn canonical_key(format: Format, key: &[u8]) -> Result<Cow<'_, [u8]>, DecodeError> {
    match format {
        Format::Raw => Ok(Cow::Borrowed(key)),
        // A request key is JSON whatever the topic's bytes are.
        Format::Debezium | Format::Avro => debezium_key(key)?.map(Cow::Owned).ok_or(DecodeError::NullKey),
    }
}

fn decode_raw(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Change, DecodeError> {
    let key = key.ok_or(DecodeError::NullKey)?.to_vec();
    Ok(match value {
        Some(value) => Change::Upsert {
            key,
            value: value.to_vec(),
        },
        None => Change::Delete { key },
    })
}

fn decode_debezium(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Change, DecodeError> {
    let key = match key {
        Some(key) => debezium_key(key)?,
        None => None,
    };
    let Some(key) = key else {
        // Truncate events concern the whole table and may come without a key.
        return match value.map(debezium_value).transpose()? {
            Some(Row::Truncate) => Ok(Change::Truncate),
            _ => Err(DecodeError::NullKey),
        };
    };
    let Some(value) = value else {
        return Ok(Change::Delete { key });
    };
    Ok(match debezium_value(value)? {
        Row::Upsert(value) => Change::Upsert { key, value },
        Row::Delete => Change::Delete { key },
        Row::Truncate => Change::Truncate,
    })
}

/// The key payload as compact JSON; None when the payload is null.
fn debezium_key(key: &[u8]) -> Result<Option<Vec<u8>>, DecodeError> {
    let raw: &RawValue = serde_json::from_slice(key).map_err(|e| DecodeError::KeyNotJson(e.to_string()))?;
    let raw = match Object::parse(raw).map_err(|e| DecodeError::KeyNotJson(e.to_string()))? {
        Some(object) => object.schema_payload().unwrap_or(raw),
        None => raw,
    };
    if is_null(raw) {
        return Ok(None);
    }
    Ok(Some(compact(raw)))
}

enum Row {
    Upsert(Vec<u8>),
    Delete,
    Truncate,
}

fn debezium_value(value: &[u8]) -> Result<Row, DecodeError> {
    let raw: &RawValue =
        serde_json::from_slice(value).map_err(|e| DecodeError::ValueNotJson(e.to_string()))?;
    let mut object = match parse_object(raw)? {
        Some(object) => object,
        None => return Ok(Row::Delete),
    };
    if let Some(payload) = object.schema_payload() {
        object = match parse_object(payload)? {
            Some(object) => object,
            None => return Ok(Row::Delete),
        };
    }
    if let Some(op) = object.change_event_op() {
        return match op.as_ref() {
            "c" | "r" | "u" => match object.get("after").filter(|after| !is_null(after)) {
                Some(after) if after.get().starts_with('{') => Ok(Row::Upsert(compact(after))),
                Some(after) => Err(DecodeError::ValueNotObject(kind(after))),
                None => Err(DecodeError::MissingAfter { op: op.into_owned() }),
            },
            "d" => Ok(Row::Delete),
            "t" => Ok(Row::Truncate),
            _ => Err(DecodeError::UnsupportedOp(op.into_owned())),
        };
    }
    // A flattened row. Rewrite mode marks deletes with "__deleted":"true".
    match object.get("__deleted") {
        None => Ok(Row::Upsert(compact(object.raw))),
        Some(flag) if matches!(flag.get(), "\"true\"" | "true") => Ok(Row::Delete),
        Some(_) => Ok(Row::Upsert(object.compact_without("__deleted"))),
    }
}

/// Parses `raw` as an object; Ok(None) for JSON null; an error for any other JSON type.
fn parse_object(raw: &RawValue) -> Result<Option<Object<'_>>, DecodeError> {
    if is_null(raw) {
        return Ok(None);
    }
    match Object::parse(raw) {
        Ok(Some(object)) => Ok(Some(object)),
        Ok(None) => Err(DecodeError::ValueNotObject(kind(raw))),
        Err(e) => Err(DecodeError::ValueNotJson(e.to_string())),
    }
}

/// A JSON object's top-level fields, borrowed from the input, in order.
struct Object<'a> {
    raw: &'a RawValue,
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> Object<'a> {
    /// Ok(None) when `raw` is valid JSON but not an object.
    fn parse(raw: &'a RawValue) -> Result<Option<Self>, serde_json::Error> {
        if !raw.get().starts_with('{') {
            return Ok(None);
        }
        let Fields(fields) = serde_json::from_str(raw.get())?;
        Ok(Some(Object { raw, fields }))
    }

    fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }

    /// The payload of a Kafka Connect `{"schema":…,"payload":…}` envelope.
    fn schema_payload(&self) -> Option<&'a RawValue> {
        match self.fields.as_slice() {
            [(a, _), (b, _)] if (a == "schema" && b == "payload") || (a == "payload" && b == "schema") => {
                self.get("payload")
            }
            _ => None,
        }
    }

    /// `op` when this is a Debezium change event (a string `op` next to `before` or `after`).
    fn change_event_op(&self) -> Option<Cow<'a, str>> {
        if self.get("after").is_none() && self.get("before").is_none() {
            return None;
        }
        serde_json::from_str::<Cow<'a, str>>(self.get("op")?.get()).ok()
    }

    fn compact_without(&self, skip: &str) -> Vec<u8> {
        self.compact_only(|name| name != skip)
    }

    /// The object, compact, with only the fields whose names `keep` accepts, in order.
    fn compact_only(&self, keep: impl Fn(&str) -> bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.raw.get().len());
        out.push(b'{');
        for (name, value) in self.fields.iter().filter(|(k, _)| keep(k)) {
            if out.len() > 1 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, name.as_ref()).expect("writing to a Vec cannot fail");
            out.push(b':');
            compact_into(value.get(), &mut out);
        }
        out.push(b'}');
        out
    }
}

/// Deserializes an object's entries without building values: each stays raw text.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(name) = map.next_key::<Cow<'de, str>>()? {
                    fields.push((name, map.next_value::<&'de RawValue>()?));
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

fn kind(raw: &RawValue) -> &'static str {
    kind_of(raw.get().as_bytes())
}

/// The JSON type of a JSON text, by its first byte.
fn kind_of(json: &[u8]) -> &'static str {
    match json.first() {
        Some(b'[') => "array",
        Some(b'"') => "string",
        Some(b't' | b'f') => "boolean",
        Some(b'n') => "null",
        Some(b'{') => "object",
        _ => "number",
    }
}

fn compact(raw: &RawValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.get().len());
    compact_into(raw.get(), &mut out);
    out
}

/// Copies valid JSON text without insignificant whitespace; everything else, including number
/// and string text, is kept byte for byte.
fn compact_into(json: &str, out: &mut Vec<u8>) {
    let bytes = json.as_bytes();
    let mut in_string = false;
    let mut escaped = false;
    let mut run_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            out.extend_from_slice(&bytes[run_start..i]);
            run_start = i + 1;
        }
    }
    out.extend_from_slice(&bytes[run_start..]);
}

#[cfg(test)]
mod tests;
