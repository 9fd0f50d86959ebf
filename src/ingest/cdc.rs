//! Pure decoding: a record's key and value bytes become a [`Change`] to the map. No I/O here, so
//! every record shape is a table-driven unit test.

use std::borrow::Cow;

use crate::config::Format;
use crate::store::Change;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A record without a key cannot be looked up; it is skipped.
    #[error("record has no key")]
    NullKey,
}

/// Decodes one record. `None` is Kafka's null (absent), distinct from an empty byte string.
pub fn decode(format: Format, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Change, DecodeError> {
    match format {
        Format::Raw | Format::Debezium => decode_raw(key, value),
    }
}

/// Brings a key from a lookup request into the form keys are stored in.
pub fn canonical_key(format: Format, key: &[u8]) -> Result<Cow<'_, [u8]>, DecodeError> {
    match format {
        Format::Raw | Format::Debezium => Ok(Cow::Borrowed(key)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_records() {
        type Case<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, Result<Change, DecodeError>);
        let cases: &[Case] = &[
            (
                Some(b"k"),
                Some(b"v"),
                Ok(Change::Upsert {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                }),
            ),
            (
                Some(b"k"),
                Some(b""),
                Ok(Change::Upsert {
                    key: b"k".to_vec(),
                    value: Vec::new(),
                }),
            ),
            (Some(b"k"), None, Ok(Change::Delete { key: b"k".to_vec() })),
            (Some(b""), None, Ok(Change::Delete { key: Vec::new() })),
            (None, Some(b"v"), Err(DecodeError::NullKey)),
            (None, None, Err(DecodeError::NullKey)),
        ];
        for (key, value, want) in cases {
            assert_eq!(
                &decode(Format::Raw, *key, *value),
                want,
                "key {key:?} value {value:?}"
            );
        }
    }
}
