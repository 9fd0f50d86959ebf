//! Avro binary straight into compact JSON, walking a compiled [`Plan`]: no intermediate value
//! tree, one output buffer. Every read is bounds-checked and every count is checked against what
//! the input can hold, so no input panics, loops without end or allocates beyond its size.

use base64::Engine;

use super::plan::{Field, Node, NodeId, Plan};

/// Why a datum does not decode with its writer schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AvroDataError {
    #[error("ends early, at byte {0}")]
    Truncated(usize),
    #[error("has a malformed variable-length integer at byte {0}")]
    BadVarint(usize),
    #[error("has an int out of range at byte {0}")]
    IntOutOfRange(usize),
    #[error("has a negative length at byte {0}")]
    NegativeLength(usize),
    #[error("has a string that is not UTF-8 at byte {0}")]
    NotUtf8(usize),
    #[error("has union branch {branch} of {count} at byte {at}")]
    BadUnionBranch { branch: i64, count: usize, at: usize },
    #[error("has enum symbol {index} of {count} at byte {at}")]
    BadEnumSymbol { index: i64, count: usize, at: usize },
    #[error("holds more array or map items than its size allows")]
    TooManyItems,
    #[error("nests deeper than {0} levels")]
    TooDeep(usize),
    #[error("has {0} bytes left over after the value (written with another schema?)")]
    TrailingBytes(usize),
    #[error("has decimal scale {0} out of range")]
    BadScale(i64),
}

/// Deepest nesting decoded (recursive schemas can nest without bound).
const MAX_DEPTH: usize = 128;
/// Array and map items beyond one per input byte: items of an empty type (null, an empty record)
/// take no bytes, so their count alone must be bounded.
const FREE_ITEMS: usize = 4096;

/// A cursor over one datum.
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    items_left: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader {
            bytes,
            pos: 0,
            items_left: bytes.len() + FREE_ITEMS,
        }
    }

    /// Fails unless every byte was read.
    pub fn finish(&self) -> Result<(), AvroDataError> {
        match self.bytes.len() - self.pos {
            0 => Ok(()),
            left => Err(AvroDataError::TrailingBytes(left)),
        }
    }

    fn long(&mut self) -> Result<i64, AvroDataError> {
        let start = self.pos;
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = *self
                .bytes
                .get(self.pos)
                .ok_or(AvroDataError::Truncated(self.pos))?;
            self.pos += 1;
            if shift == 63 && byte > 1 {
                return Err(AvroDataError::BadVarint(start));
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err(AvroDataError::BadVarint(start))
    }

    fn int(&mut self) -> Result<i32, AvroDataError> {
        let start = self.pos;
        i32::try_from(self.long()?).map_err(|_| AvroDataError::IntOutOfRange(start))
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], AvroDataError> {
        let end = self.pos.checked_add(len).filter(|&end| end <= self.bytes.len());
        let end = end.ok_or(AvroDataError::Truncated(self.bytes.len()))?;
        let taken = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(taken)
    }

    fn bytes(&mut self) -> Result<&'a [u8], AvroDataError> {
        let at = self.pos;
        let len = self.long()?;
        let len = usize::try_from(len).map_err(|_| AvroDataError::NegativeLength(at))?;
        self.take(len)
    }

    pub fn str(&mut self) -> Result<&'a str, AvroDataError> {
        let at = self.pos;
        std::str::from_utf8(self.bytes()?).map_err(|_| AvroDataError::NotUtf8(at))
    }

    /// A union's branch, checked against its variants.
    pub fn branch(&mut self, variants: &[NodeId]) -> Result<NodeId, AvroDataError> {
        let at = self.pos;
        let branch = self.long()?;
        usize::try_from(branch)
            .ok()
            .and_then(|i| variants.get(i).copied())
            .ok_or(AvroDataError::BadUnionBranch {
                branch,
                count: variants.len(),
                at,
            })
    }

    /// The item count of the next array or map block (0 ends the list). A negative count is
    /// followed by the block's size in bytes, which `skip_bytes` may use to jump over it.
    fn block(&mut self) -> Result<(usize, Option<usize>), AvroDataError> {
        let count = self.long()?;
        let (count, size) = if count < 0 {
            let at = self.pos;
            let size = usize::try_from(self.long()?).map_err(|_| AvroDataError::NegativeLength(at))?;
            (count.unsigned_abs(), Some(size))
        } else {
            (count as u64, None)
        };
        let count = usize::try_from(count)
            .ok()
            .filter(|&count| count <= self.items_left)
            .ok_or(AvroDataError::TooManyItems)?;
        self.items_left -= count;
        Ok((count, size))
    }
}

/// Writes the datum at `node` as compact JSON into `out`.
pub fn write(plan: &Plan, node: NodeId, r: &mut Reader<'_>, out: &mut Vec<u8>) -> Result<(), AvroDataError> {
    write_at(plan, node, r, out, 0)
}

fn write_at(
    plan: &Plan,
    node: NodeId,
    r: &mut Reader<'_>,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<(), AvroDataError> {
    if depth > MAX_DEPTH {
        return Err(AvroDataError::TooDeep(MAX_DEPTH));
    }
    match plan.node(node) {
        Node::Null => out.extend_from_slice(b"null"),
        Node::Boolean => {
            let byte = r.take(1)?[0];
            out.extend_from_slice(if byte != 0 { b"true" } else { b"false" });
        }
        Node::Int => write_integer(out, i64::from(r.int()?)),
        Node::Long => write_integer(out, r.long()?),
        Node::Float => {
            let bits = r.take(4)?;
            write_float(
                out,
                f64::from(f32::from_le_bytes(bits.try_into().expect("4 bytes"))),
                true,
            );
        }
        Node::Double => {
            let bits = r.take(8)?;
            write_float(out, f64::from_le_bytes(bits.try_into().expect("8 bytes")), false);
        }
        Node::Bytes => write_base64(out, r.bytes()?),
        Node::Fixed(size) => write_base64(out, r.take(*size)?),
        Node::String => write_string(out, r.str()?),
        Node::UuidFixed => write_uuid(out, r.take(16)?),
        Node::Decimal { scale, fixed } => {
            let unscaled = match fixed {
                Some(size) => r.take(*size)?,
                None => r.bytes()?,
            };
            write_decimal(out, unscaled, i64::from(*scale))?;
        }
        Node::VariableScaleDecimal => {
            let scale = r.int()?;
            let unscaled = r.bytes()?;
            write_decimal(out, unscaled, i64::from(scale))?;
        }
        Node::Duration => {
            let bytes = r.take(12)?;
            let part = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
            out.extend_from_slice(b"{\"months\":");
            write_integer(out, i64::from(part(0)));
            out.extend_from_slice(b",\"days\":");
            write_integer(out, i64::from(part(4)));
            out.extend_from_slice(b",\"millis\":");
            write_integer(out, i64::from(part(8)));
            out.push(b'}');
        }
        Node::Enum(symbols) => {
            let at = r.pos;
            let index = r.long()?;
            let symbol = usize::try_from(index).ok().and_then(|i| symbols.get(i)).ok_or(
                AvroDataError::BadEnumSymbol {
                    index,
                    count: symbols.len(),
                    at,
                },
            )?;
            out.extend_from_slice(symbol);
        }
        Node::Array(items) => {
            out.push(b'[');
            each_item(r, |r, first| {
                if !first {
                    out.push(b',');
                }
                write_at(plan, *items, r, out, depth + 1)
            })?;
            out.push(b']');
        }
        Node::Map(values) => {
            out.push(b'{');
            each_item(r, |r, first| {
                if !first {
                    out.push(b',');
                }
                write_string(out, r.str()?);
                out.push(b':');
                write_at(plan, *values, r, out, depth + 1)
            })?;
            out.push(b'}');
        }
        Node::Union(variants) => {
            // A union is written as its branch's value, as Kafka Connect's JsonConverter does
            // (not Avro's JSON encoding, which would wrap it in {"type": value}).
            let branch = r.branch(variants)?;
            write_at(plan, branch, r, out, depth + 1)?;
        }
        Node::Record(fields) => write_record(plan, fields, r, out, depth, None)?,
    }
    Ok(())
}

/// Calls `item` for every item of an array or map, block after block, saying whether it is
/// the first.
fn each_item<'a>(
    r: &mut Reader<'a>,
    mut item: impl FnMut(&mut Reader<'a>, bool) -> Result<(), AvroDataError>,
) -> Result<(), AvroDataError> {
    let mut first = true;
    loop {
        let (count, _) = r.block()?;
        if count == 0 {
            return Ok(());
        }
        for _ in 0..count {
            item(r, first)?;
            first = false;
        }
    }
}

/// Reads past every item of an array or map; a block that gives its size in bytes is jumped
/// over without reading its items.
fn skip_items<'a>(
    r: &mut Reader<'a>,
    mut item: impl FnMut(&mut Reader<'a>) -> Result<(), AvroDataError>,
) -> Result<(), AvroDataError> {
    loop {
        match r.block()? {
            (0, _) => return Ok(()),
            (_, Some(size)) => {
                r.take(size)?;
            }
            (count, None) => {
                for _ in 0..count {
                    item(r)?;
                }
            }
        }
    }
}

/// Writes a record's fields as an object. The field at `aside.0`, if any, is written into
/// `aside.1` instead of the object (a flattened row's `__deleted` flag, read in the same pass).
pub fn write_record(
    plan: &Plan,
    fields: &[Field],
    r: &mut Reader<'_>,
    out: &mut Vec<u8>,
    depth: usize,
    mut aside: Option<(usize, &mut Vec<u8>)>,
) -> Result<(), AvroDataError> {
    out.push(b'{');
    let mut first = true;
    for (i, field) in fields.iter().enumerate() {
        if let Some((_, side)) = aside.as_mut().filter(|(index, _)| *index == i) {
            write_at(plan, field.node, r, side, depth + 1)?;
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(&field.json_name);
        write_at(plan, field.node, r, out, depth + 1)?;
    }
    out.push(b'}');
    Ok(())
}

/// Reads past the datum at `node` without writing it.
pub fn skip(plan: &Plan, node: NodeId, r: &mut Reader<'_>) -> Result<(), AvroDataError> {
    skip_value(plan, node, r, 0)
}

fn skip_value(plan: &Plan, node: NodeId, r: &mut Reader<'_>, depth: usize) -> Result<(), AvroDataError> {
    if depth > MAX_DEPTH {
        return Err(AvroDataError::TooDeep(MAX_DEPTH));
    }
    match plan.node(node) {
        Node::Null => {}
        Node::Boolean => {
            r.take(1)?;
        }
        Node::Int | Node::Long => {
            r.long()?;
        }
        Node::Float => {
            r.take(4)?;
        }
        Node::Double => {
            r.take(8)?;
        }
        Node::Bytes | Node::String | Node::Decimal { fixed: None, .. } => {
            r.bytes()?;
        }
        Node::Fixed(size)
        | Node::Decimal {
            fixed: Some(size), ..
        } => {
            r.take(*size)?;
        }
        Node::UuidFixed => {
            r.take(16)?;
        }
        Node::Duration => {
            r.take(12)?;
        }
        Node::VariableScaleDecimal => {
            r.long()?;
            r.bytes()?;
        }
        Node::Enum(_) => {
            r.long()?;
        }
        Node::Array(items) => skip_items(r, |r| skip_value(plan, *items, r, depth + 1))?,
        Node::Map(values) => skip_items(r, |r| {
            r.bytes()?;
            skip_value(plan, *values, r, depth + 1)
        })?,
        Node::Union(variants) => {
            let branch = r.branch(variants)?;
            skip_value(plan, branch, r, depth + 1)?;
        }
        Node::Record(fields) => {
            for field in fields.iter() {
                skip_value(plan, field.node, r, depth + 1)?;
            }
        }
    }
    Ok(())
}

fn write_integer(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// Shortest text that reads back as the same float (`f32` text for floats, so 0.1f32 is `0.1`).
/// JSON has no NaN or infinities: they are written as the strings Java writes for them.
fn write_float(out: &mut Vec<u8>, value: f64, single: bool) {
    if !value.is_finite() {
        out.extend_from_slice(match value {
            v if v.is_nan() => b"\"NaN\"".as_slice(),
            v if v > 0.0 => b"\"Infinity\"",
            _ => b"\"-Infinity\"",
        });
        return;
    }
    let mut buffer = ryu::Buffer::new();
    let text = if single {
        buffer.format_finite(value as f32)
    } else {
        buffer.format_finite(value)
    };
    out.extend_from_slice(text.as_bytes());
}

fn write_string(out: &mut Vec<u8>, value: &str) {
    // Most strings need no escape: copy them in one go.
    if value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, value).expect("writing to a Vec cannot fail");
    }
}

fn write_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    let start = out.len();
    out.resize(start + base64::encoded_len(bytes.len(), true).unwrap_or(0), 0);
    let written = base64::engine::general_purpose::STANDARD
        .encode_slice(bytes, &mut out[start..])
        .expect("sized by encoded_len");
    out.truncate(start + written);
    out.push(b'"');
}

fn write_uuid(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push(b'-');
        }
        out.push(HEX[usize::from(byte >> 4)]);
        out.push(HEX[usize::from(byte & 0xf)]);
    }
    out.push(b'"');
}

/// Largest scale written out digit by digit (Java's BigDecimal allows up to 2^31; a scale this
/// large is not a database column).
const MAX_SCALE: i64 = 1000;

/// The decimal `unscaled × 10^-scale` (two's-complement big-endian bytes) as an exact JSON
/// string.
fn write_decimal(out: &mut Vec<u8>, unscaled: &[u8], scale: i64) -> Result<(), AvroDataError> {
    if !(-MAX_SCALE..=MAX_SCALE).contains(&scale) {
        return Err(AvroDataError::BadScale(scale));
    }
    let digits = if unscaled.len() <= 16 {
        let mut value: i128 = if unscaled.first().is_some_and(|b| b & 0x80 != 0) {
            -1
        } else {
            0
        };
        for &byte in unscaled {
            value = (value << 8) | i128::from(byte);
        }
        value.to_string()
    } else {
        num_bigint::BigInt::from_signed_bytes_be(unscaled).to_string()
    };
    let (negative, digits) = match digits.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, digits.as_str()),
    };
    out.push(b'"');
    if negative {
        out.push(b'-');
    }
    if scale <= 0 {
        out.extend_from_slice(digits.as_bytes());
        if digits != "0" {
            out.extend(std::iter::repeat_n(b'0', scale.unsigned_abs() as usize));
        }
    } else {
        let scale = scale as usize;
        if digits.len() > scale {
            let (whole, fraction) = digits.split_at(digits.len() - scale);
            out.extend_from_slice(whole.as_bytes());
            out.push(b'.');
            out.extend_from_slice(fraction.as_bytes());
        } else {
            out.extend_from_slice(b"0.");
            out.extend(std::iter::repeat_n(b'0', scale - digits.len()));
            out.extend_from_slice(digits.as_bytes());
        }
    }
    out.push(b'"');
    Ok(())
}
