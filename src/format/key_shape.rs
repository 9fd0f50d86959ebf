//! The shape of a Debezium table's keys (field names and JSON types), learned from the keys
//! ingested, so that a request key of the wrong shape, `{"id":"42"}` for an integer `id`, is
//! refused naming the expected types instead of silently missing.
//!
//! Only a miss is checked, so hits pay nothing. A table whose key schema changed has several
//! shapes and a request matching any of them is a genuine miss; a table with more than
//! [`MAX_SHAPES`] shapes is not checked at all (its keys have no shape worth enforcing).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use serde_json::value::RawValue;

use super::{is_null, kind, Fields};

/// Beyond this many distinct shapes the check is switched off for the table.
pub const MAX_SHAPES: usize = 8;

/// The JSON type of each top-level field, in order; a key that is not an object has one
/// unnamed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyShape(Vec<(Box<str>, &'static str)>);

impl KeyShape {
    /// The shape of a JSON key; None when it is not JSON.
    pub fn of(key: &[u8]) -> Option<KeyShape> {
        let raw: &RawValue = serde_json::from_slice(key).ok()?;
        if !raw.get().starts_with('{') {
            return Some(KeyShape(vec![("".into(), kind(raw))]));
        }
        let Fields(fields) = serde_json::from_str(raw.get()).ok()?;
        Some(KeyShape(
            fields
                .into_iter()
                .map(|(name, value)| (Box::from(name.as_ref()), value_kind(value)))
                .collect(),
        ))
    }

    /// Same test as `KeyShape::of(key) == self` without building a `KeyShape` (no boxed names).
    fn matches(&self, key: &[u8]) -> bool {
        let Ok(raw) = serde_json::from_slice::<&RawValue>(key) else {
            return false;
        };
        if !raw.get().starts_with('{') {
            return matches!(self.0.as_slice(), [(name, k)] if name.is_empty() && *k == kind(raw));
        }
        let Ok(Fields(fields)) = serde_json::from_str::<Fields<'_>>(raw.get()) else {
            return false;
        };
        fields.len() == self.0.len()
            && fields
                .iter()
                .zip(&self.0)
                .all(|((name, value), (want_name, want_kind))| {
                    name.as_ref() == want_name.as_ref() && value_kind(value) == *want_kind
                })
    }
}

impl fmt::Display for KeyShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [(name, kind)] = self.0.as_slice() {
            if name.is_empty() {
                return write!(f, "a JSON {kind}");
            }
        }
        f.write_str("{")?;
        for (i, (name, kind)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name:?}: {kind}")?;
        }
        f.write_str("}")
    }
}

/// A null field is its own kind; anything else by its first byte.
fn value_kind(value: &RawValue) -> &'static str {
    if is_null(value) {
        "null"
    } else {
        kind(value)
    }
}

/// The shapes seen in one table's keys.
#[derive(Debug, Default)]
pub struct KeyShapes {
    shapes: RwLock<Vec<KeyShape>>,
    /// Fingerprints ([`skeleton`]) of keys whose shape is known: the fast path that spares most
    /// records a JSON parse.
    skeletons: RwLock<Vec<u64>>,
    /// Too many shapes: nothing is checked.
    unchecked: AtomicBool,
}

impl KeyShapes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the shape of a stored (canonical) key. Cheap when the shape is known already,
    /// which is every record but the first of each shape.
    pub fn observe(&self, key: &[u8]) {
        if self.unchecked.load(Ordering::Relaxed) {
            return;
        }
        let fingerprint = skeleton(key);
        if let Some(fingerprint) = fingerprint {
            if self.knows(fingerprint) {
                return;
            }
        }
        let shapes = self.shapes.read().unwrap_or_else(|e| e.into_inner());
        let known = shapes.iter().any(|shape| shape.matches(key));
        drop(shapes);
        if let Some(fingerprint) = fingerprint {
            let mut skeletons = self.skeletons.write().unwrap_or_else(|e| e.into_inner());
            // Keys of one shape can still differ in their fingerprint (escapes in names): keep
            // the list short, it only speeds things up.
            if skeletons.len() < 4 * MAX_SHAPES && !skeletons.contains(&fingerprint) {
                skeletons.push(fingerprint);
            }
        }
        if known {
            return;
        }
        let Some(shape) = KeyShape::of(key) else {
            return;
        };
        let mut shapes = self.shapes.write().unwrap_or_else(|e| e.into_inner());
        if shapes.contains(&shape) {
            return;
        }
        if shapes.len() >= MAX_SHAPES {
            self.unchecked.store(true, Ordering::Relaxed);
            shapes.clear();
            return;
        }
        shapes.push(shape);
    }

    fn knows(&self, fingerprint: u64) -> bool {
        self.skeletons
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&fingerprint)
    }

    /// For a request key that was not found: why it cannot match any stored key, when its shape
    /// is one no stored key has. None for a genuine miss, or when nothing is known.
    pub fn mismatch(&self, request_key: &[u8]) -> Option<String> {
        if skeleton(request_key).is_some_and(|fingerprint| self.knows(fingerprint)) {
            return None;
        }
        if self.unchecked.load(Ordering::Relaxed) {
            return None;
        }
        let shapes = self.shapes.read().unwrap_or_else(|e| e.into_inner());
        if shapes.is_empty() || shapes.iter().any(|shape| shape.matches(request_key)) {
            return None;
        }
        let got = KeyShape::of(request_key)?;
        let expected: Vec<String> = shapes.iter().map(ToString::to_string).collect();
        Some(format!(
            "key has the shape {got}, but this table's keys are {}; a key matches only with the same fields and JSON types",
            expected.join(" or ")
        ))
    }
}

/// A 64-bit fingerprint of a compact JSON key's shape (field names, escaped as written, and the
/// kind of each value), found by scanning the bytes: no parse, no allocation. Keys are stored and
/// asked for in compact form, so this understands only that; None for anything else, and the
/// caller takes the parsing path.
fn skeleton(key: &[u8]) -> Option<u64> {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0100_0000_01b3;
    let mix = |hash: u64, byte: u8| (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
    let kind = |byte: u8| match byte {
        b'"' => b's',
        b'{' => b'o',
        b'[' => b'a',
        b't' | b'f' => b'b',
        b'n' => b'n',
        _ => b'd',
    };
    let first = *key.first()?;
    if first != b'{' {
        return Some(mix(mix(FNV_OFFSET, b'!'), kind(first)));
    }
    let mut hash = FNV_OFFSET;
    let mut i = 1;
    if key.get(i) == Some(&b'}') {
        return (key.len() == 2).then_some(hash);
    }
    loop {
        if key.get(i) != Some(&b'"') {
            return None;
        }
        let end = string_end(key, i)?;
        for &byte in &key[i + 1..end] {
            hash = mix(hash, byte);
        }
        i = end + 1;
        if key.get(i) != Some(&b':') {
            return None;
        }
        i += 1;
        hash = mix(mix(hash, 0), kind(*key.get(i)?));
        i = value_end(key, i)?;
        match key.get(i) {
            Some(b',') => i += 1,
            Some(b'}') if i + 1 == key.len() => return Some(hash),
            _ => return None,
        }
    }
}

/// The index of the quote that closes the string opening at `start`.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// The index just past the compact JSON value starting at `start`.
fn value_end(bytes: &[u8], start: usize) -> Option<usize> {
    match *bytes.get(start)? {
        b'"' => Some(string_end(bytes, start)? + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            while i < bytes.len() {
                match bytes[i] {
                    b'"' => i = string_end(bytes, i)?,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            let len = bytes[start..]
                .iter()
                .position(|&b| matches!(b, b',' | b'}' | b']'))?;
            Some(start + len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_name_fields_and_types() {
        let shape = KeyShape::of(br#"{"id":42,"region":"eu","deleted":null}"#).unwrap();
        assert_eq!(
            shape.to_string(),
            r#"{"id": number, "region": string, "deleted": null}"#
        );
        assert_eq!(KeyShape::of(b"42").unwrap().to_string(), "a JSON number");
        assert!(KeyShape::of(b"not json").is_none());
    }

    #[test]
    fn a_request_of_another_type_is_explained_and_a_genuine_miss_is_not() {
        let shapes = KeyShapes::new();
        assert_eq!(shapes.mismatch(br#"{"id":"1"}"#), None, "nothing known yet");
        shapes.observe(br#"{"id":1}"#);
        shapes.observe(br#"{"id":2}"#);
        assert_eq!(
            shapes.mismatch(br#"{"id":3}"#),
            None,
            "right shape: a genuine miss"
        );
        let why = shapes.mismatch(br#"{"id":"3"}"#).unwrap();
        assert!(why.contains(r#"{"id": string}"#), "{why}");
        assert!(why.contains(r#"{"id": number}"#), "{why}");
        let why = shapes.mismatch(br#"{"customer_id":3}"#).unwrap();
        assert!(why.contains("customer_id"), "{why}");
    }

    #[test]
    fn every_key_schema_seen_is_accepted() {
        let shapes = KeyShapes::new();
        shapes.observe(br#"{"id":1}"#);
        // A key schema change (a column made optional, a column added) adds a shape.
        shapes.observe(br#"{"id":1,"tenant":"a"}"#);
        assert_eq!(shapes.mismatch(br#"{"id":5,"tenant":"b"}"#), None);
        assert_eq!(shapes.mismatch(br#"{"id":5}"#), None);
        assert!(
            shapes.mismatch(br#"{"tenant":"b","id":5}"#).is_some(),
            "field order is part of the key"
        );
    }

    #[test]
    fn too_many_shapes_switch_the_check_off() {
        let shapes = KeyShapes::new();
        for i in 0..=MAX_SHAPES {
            shapes.observe(format!(r#"{{"f{i}":1}}"#).as_bytes());
        }
        assert_eq!(shapes.mismatch(br#"{"other":"x"}"#), None);
    }

    #[test]
    fn fingerprints_follow_shapes() {
        let same = [
            br#"{"id":1,"region":"eu"}"#.as_slice(),
            br#"{"id":987,"region":"a\"b"}"#,
        ];
        assert_eq!(skeleton(same[0]), skeleton(same[1]));
        assert!(skeleton(same[0]).is_some());
        for other in [
            br#"{"id":"1","region":"eu"}"#.as_slice(),
            br#"{"region":"eu","id":1}"#,
            br#"{"id":1}"#,
            br#"{"id":null,"region":"eu"}"#,
            br#"{"id":{"a":[1,{"b":2}]},"region":"eu"}"#,
        ] {
            assert_ne!(
                skeleton(same[0]),
                skeleton(other),
                "{}",
                String::from_utf8_lossy(other)
            );
            assert!(skeleton(other).is_some(), "{}", String::from_utf8_lossy(other));
        }
        assert_eq!(skeleton(b"42"), skeleton(b"7"));
        assert_ne!(skeleton(b"42"), skeleton(br#""42""#));
        for not_compact in [b"{ \"id\": 1 }".as_slice(), b"{\"id\":1", b"", b"{\"id\"1}"] {
            assert_eq!(
                skeleton(not_compact),
                None,
                "{}",
                String::from_utf8_lossy(not_compact)
            );
        }
    }
}
