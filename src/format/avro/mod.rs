//! `avro`: records written by Confluent's Avro serializers (Kafka Connect's AvroConverter for
//! Debezium), decoded with their writer schema from the Schema Registry into the same stored
//! form as the `debezium` JSON format:
//!
//! - **Key**: compact JSON, fields in the key schema's order (`{"id":42}`), so one request key
//!   works whatever converter the connector uses.
//! - **Value**: a Debezium change event (`op` next to `before`/`after`: `c`, `r`, `u` store
//!   `after`, `d` deletes, `t` truncates) or a flattened row (`__deleted` = `"true"` deletes and
//!   is never stored), decided by the value schema. A Kafka tombstone deletes.
//!
//! Values are written as Kafka Connect's JsonConverter writes them (numbers as numbers, bytes as
//! base64, unions as their branch's value), except where that loses information or readability:
//! decimals become exact decimal strings, fixed uuids their hyphenated text. The README's
//! "Avro topics" section has the full mapping.
//!
//! Decoding is pure: the frames come read and the schemas looked up ([`Datum`]); fetching
//! schemas is the ingest side's business.

mod decode;
mod plan;

use std::sync::Arc;

pub use decode::AvroDataError;
pub use plan::{Plan, SchemaError, Shape};

use self::decode::{skip, write, write_record, Reader};
use self::plan::Node;
use super::confluent::SchemaRef;
use super::DecodeError;
use crate::store::Change;

/// A key or value with its frame read and its writer schema looked up.
#[derive(Clone)]
pub struct Datum<'a> {
    /// The Avro binary after the frame.
    pub bytes: &'a [u8],
    pub schema: SchemaRef,
    pub plan: Arc<Plan>,
}

/// A key or value: `None` for Kafka's null, an error when its frame is malformed or its schema
/// could not be had.
pub type Part<'a> = Option<Result<Datum<'a>, DecodeError>>;

/// Decodes a record whose frames were read and schemas looked up.
pub fn decode(key: &Part<'_>, value: &Part<'_>) -> Result<Change, DecodeError> {
    let key = match key {
        Some(datum) => decode_key(datum.as_ref().map_err(Clone::clone)?)?,
        None => None,
    };
    let row = match value {
        Some(datum) => Some(decode_value(datum.as_ref().map_err(Clone::clone)?)?),
        None => None,
    };
    let Some(key) = key else {
        // Truncate events concern the whole table and may come without a key.
        return match row {
            Some(Row::Truncate) => Ok(Change::Truncate),
            _ => Err(DecodeError::NullKey),
        };
    };
    Ok(match row {
        None | Some(Row::Delete) => Change::Delete { key },
        Some(Row::Upsert(value)) => Change::Upsert { key, value },
        Some(Row::Truncate) => Change::Truncate,
    })
}

/// The key as compact JSON; `None` for a key whose datum is null (a union's null branch).
fn decode_key(datum: &Datum<'_>) -> Result<Option<Vec<u8>>, DecodeError> {
    let plan = &datum.plan;
    let mut reader = Reader::new(datum.bytes);
    let mut out = Vec::with_capacity(datum.bytes.len() + 16);
    write(plan, plan.root(), &mut reader, &mut out).map_err(|e| key_error(datum, e))?;
    reader.finish().map_err(|e| key_error(datum, e))?;
    Ok((out != b"null").then_some(out))
}

fn key_error(datum: &Datum<'_>, error: AvroDataError) -> DecodeError {
    DecodeError::AvroKey(format!("key written with schema {} {error}", datum.schema))
}

fn value_error(datum: &Datum<'_>, error: AvroDataError) -> DecodeError {
    DecodeError::AvroValue(format!("value written with schema {} {error}", datum.schema))
}

enum Row {
    Upsert(Vec<u8>),
    Delete,
    Truncate,
}

fn decode_value(datum: &Datum<'_>) -> Result<Row, DecodeError> {
    let plan = &datum.plan;
    let bytes = datum.bytes;
    let mut reader = Reader::new(bytes);
    let row = match plan.shape() {
        Shape::ChangeEvent { after, op } => change_event(plan, &mut reader, after, op, bytes.len()),
        Shape::Row { deleted } => flattened_row(plan, &mut reader, deleted, bytes.len()),
        Shape::NotRecord => {
            return Err(DecodeError::AvroValue(format!(
                "value schema {} is not a record: expected a change event or a row",
                datum.schema
            )))
        }
    }
    .map_err(|e| match e {
        Decoded::Data(e) => value_error(datum, e),
        Decoded::Change(e) => e,
    })?;
    reader.finish().map_err(|e| value_error(datum, e))?;
    Ok(row)
}

enum Decoded {
    Data(AvroDataError),
    Change(DecodeError),
}

impl From<AvroDataError> for Decoded {
    fn from(error: AvroDataError) -> Self {
        Decoded::Data(error)
    }
}

/// A Debezium envelope: `after` is written straight into the stored row, `op` is read, every
/// other field (`before`, `source`, …) is only read past.
fn change_event(
    plan: &Plan,
    r: &mut Reader<'_>,
    after: Option<usize>,
    op: usize,
    size: usize,
) -> Result<Row, Decoded> {
    let mut row: Option<Vec<u8>> = None;
    let mut op_text: Option<&str> = None;
    let mut after_kind: &'static str = "null";
    for (i, field) in plan.fields().iter().enumerate() {
        if i == op {
            op_text = read_text(plan, field.node, r)?;
        } else if Some(i) == after {
            let mut out = Vec::with_capacity(size + size / 2);
            write(plan, field.node, r, &mut out)?;
            after_kind = super::kind_of(&out);
            if out.first() == Some(&b'{') {
                row = Some(out);
            }
        } else {
            skip(plan, field.node, r)?;
        }
    }
    let op = op_text.unwrap_or("");
    match op {
        "c" | "r" | "u" => match row {
            Some(row) => Ok(Row::Upsert(row)),
            None if after_kind == "null" => Err(Decoded::Change(DecodeError::MissingAfter { op: op.into() })),
            None => Err(Decoded::Change(DecodeError::ValueNotObject(after_kind))),
        },
        "d" => Ok(Row::Delete),
        "t" => Ok(Row::Truncate),
        other => Err(Decoded::Change(DecodeError::UnsupportedOp(other.into()))),
    }
}

/// A string field, or a union of null and string; `None` for null.
fn read_text<'a>(plan: &Plan, node: plan::NodeId, r: &mut Reader<'a>) -> Result<Option<&'a str>, Decoded> {
    match plan.node(node) {
        Node::String => Ok(Some(r.str()?)),
        Node::Union(variants) => {
            let branch = r.branch(variants)?;
            read_text(plan, branch, r)
        }
        Node::Null => Ok(None),
        _ => {
            skip(plan, node, r)?;
            Ok(None)
        }
    }
}

/// A flattened row: every field but `__deleted`, which (as `"true"` or `true`) makes it a delete.
fn flattened_row(
    plan: &Plan,
    r: &mut Reader<'_>,
    deleted: Option<usize>,
    size: usize,
) -> Result<Row, Decoded> {
    let mut out = Vec::with_capacity(size + size / 2 + 16);
    let Some(deleted) = deleted else {
        write(plan, plan.root(), r, &mut out)?;
        return Ok(Row::Upsert(out));
    };
    // The flag is set aside while the row is written, in one pass.
    let mut flag = Vec::new();
    write_record(plan, plan.fields(), r, &mut out, 0, Some((deleted, &mut flag)))?;
    let is_delete = matches!(flag.as_slice(), b"\"true\"" | b"true");
    Ok(if is_delete { Row::Delete } else { Row::Upsert(out) })
}

#[cfg(test)]
mod tests;
