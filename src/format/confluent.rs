//! Confluent's wire format: how a serialized key or value names its writer schema.
//!
//! - Format 0: magic byte `0`, the schema id as 4 bytes big-endian, then the datum.
//! - Format 1: magic byte `1` and the schema's 16-byte GUID, either as that prefix or as the
//!   value of the record header `__key_schema_id` / `__value_schema_id`; with the header, the
//!   payload is the datum alone. A header wins over a prefix, as in Confluent's deserializers.

use std::fmt;

pub const KEY_SCHEMA_HEADER: &str = "__key_schema_id";
pub const VALUE_SCHEMA_HEADER: &str = "__value_schema_id";

/// Which schema a datum was written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SchemaRef {
    Id(u32),
    Guid([u8; 16]),
}

impl fmt::Display for SchemaRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaRef::Id(id) => write!(f, "id {id}"),
            SchemaRef::Guid(guid) => write!(f, "guid {}", SchemaRef::guid_text(guid)),
        }
    }
}

impl SchemaRef {
    /// The GUID's canonical hyphenated form, as the registry's `/schemas/guids/` path takes it.
    pub fn guid_text(guid: &[u8; 16]) -> String {
        let hex: String = guid.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("is empty: expected Confluent's wire format (magic byte 0 or 1, then the schema id)")]
    Empty,
    #[error("starts with byte {0:#04x}: expected Confluent's wire format (magic byte 0 or 1); was it written by another serializer?")]
    BadMagic(u8),
    #[error("is {len} bytes, too short for the schema id of wire format {magic}")]
    Truncated { magic: u8, len: usize },
}

/// Reads a frame: from the header when there is one, else from the payload's prefix. Returns
/// the schema and the datum.
pub fn read<'a>(payload: &'a [u8], header: Option<&[u8]>) -> Result<(SchemaRef, &'a [u8]), FrameError> {
    match header {
        Some(header) => {
            let (schema, _) = prefix(header)?;
            Ok((schema, payload))
        }
        None => prefix(payload),
    }
}

fn prefix(bytes: &[u8]) -> Result<(SchemaRef, &[u8]), FrameError> {
    let (&magic, rest) = bytes.split_first().ok_or(FrameError::Empty)?;
    match magic {
        0 => {
            let (id, datum) = rest.split_first_chunk::<4>().ok_or(FrameError::Truncated {
                magic,
                len: bytes.len(),
            })?;
            Ok((SchemaRef::Id(u32::from_be_bytes(*id)), datum))
        }
        1 => {
            let (guid, datum) = rest.split_first_chunk::<16>().ok_or(FrameError::Truncated {
                magic,
                len: bytes.len(),
            })?;
            Ok((SchemaRef::Guid(*guid), datum))
        }
        other => Err(FrameError::BadMagic(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_0_prefix() {
        assert_eq!(
            read(&[0, 0, 0, 1, 2, 9, 9], None),
            Ok((SchemaRef::Id(258), &[9u8, 9][..]))
        );
    }

    #[test]
    fn format_1_prefix_and_header() {
        let mut framed = vec![1];
        framed.extend(1..=16u8);
        framed.push(7);
        let guid: [u8; 16] = std::array::from_fn(|i| i as u8 + 1);
        assert_eq!(read(&framed, None), Ok((SchemaRef::Guid(guid), &[7u8][..])));
        // With the header, the whole payload is the datum.
        assert_eq!(
            read(&[7, 8], Some(&framed[..17])),
            Ok((SchemaRef::Guid(guid), &[7u8, 8][..]))
        );
        assert_eq!(
            SchemaRef::Guid(guid).to_string(),
            "guid 01020304-0506-0708-090a-0b0c0d0e0f10"
        );
    }

    #[test]
    fn malformed_frames_are_named() {
        assert_eq!(read(&[], None), Err(FrameError::Empty));
        assert_eq!(read(b"{\"id\":1}", None), Err(FrameError::BadMagic(b'{')));
        assert_eq!(
            read(&[0, 0, 1], None),
            Err(FrameError::Truncated { magic: 0, len: 3 })
        );
        assert_eq!(
            read(&[1; 10], None),
            Err(FrameError::Truncated { magic: 1, len: 10 })
        );
        assert_eq!(read(&[1], Some(&[5])), Err(FrameError::BadMagic(5)));
    }
}
