//! Column projection (`--project TABLE=col,col`): a row keeps only the named top-level fields
//! and the fields of its key, so a table's memory goes to the columns its app reads.
//!
//! Pure, like the rest of this module: a decoded row (a compact JSON object) in, a smaller one
//! out, its fields in their order and their values byte for byte. Nested objects are kept or
//! dropped whole. A row that is not an object, or not JSON, is kept as it is: the decoder only
//! stores objects, and this must never be the step that loses a row.

use std::collections::BTreeSet;
use std::fmt;

use super::{Fields, Object};

/// The columns a table keeps, besides its key's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projection {
    columns: BTreeSet<Box<str>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectionError {
    #[error("an empty column name; expected TABLE=COLUMN[,COLUMN...]")]
    EmptyColumn,
}

impl Projection {
    /// Parses `col,col,...`; surrounding spaces are ignored, duplicates collapse.
    pub fn parse(columns: &str) -> Result<Self, ProjectionError> {
        let mut set = BTreeSet::new();
        for column in columns.split(',').map(str::trim) {
            if column.is_empty() {
                return Err(ProjectionError::EmptyColumn);
            }
            set.insert(Box::from(column));
        }
        Ok(Self { columns: set })
    }

    /// The columns, sorted.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(AsRef::as_ref)
    }

    /// `row` with only the projected columns and `key`'s fields (for a JSON object key).
    pub fn apply(&self, key: &[u8], row: Vec<u8>) -> Vec<u8> {
        let Ok(text) = std::str::from_utf8(&row) else {
            return row;
        };
        let Ok(raw) = serde_json::from_str::<&serde_json::value::RawValue>(text) else {
            return row;
        };
        let Ok(Some(object)) = Object::parse(raw) else {
            return row;
        };
        // Borrowed from the key: this runs for every record of a projected table.
        let key_fields: Option<Fields<'_>> = serde_json::from_slice(key).ok();
        let keep = |name: &str| {
            self.columns.contains(name)
                || key_fields
                    .as_ref()
                    .is_some_and(|k| k.0.iter().any(|(f, _)| f == name))
        };
        if object.fields.iter().all(|(name, _)| keep(name)) {
            return row;
        }
        object.compact_only(keep)
    }
}

impl fmt::Display for Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let columns: Vec<&str> = self.columns().collect();
        f.write_str(&columns.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(columns: &str, key: &str, row: &str) -> String {
        let projection = Projection::parse(columns).unwrap();
        String::from_utf8(projection.apply(key.as_bytes(), row.as_bytes().to_vec())).unwrap()
    }

    #[test]
    fn keeps_the_named_columns_and_the_key_in_row_order() {
        assert_eq!(
            project(
                "email, tier",
                r#"{"id":42}"#,
                r#"{"id":42,"name":"Ada","tier":"gold","email":"a@x","notes":{"a":[1,2]}}"#
            ),
            r#"{"id":42,"tier":"gold","email":"a@x"}"#
        );
        // A composite key keeps all its fields; values stay byte for byte.
        assert_eq!(
            project(
                "qty",
                r#"{"order_id":7,"line":2}"#,
                r#"{"line":2,"order_id":7,"qty":1.50,"sku":"x"}"#
            ),
            r#"{"line":2,"order_id":7,"qty":1.50}"#
        );
        // Nested objects are kept or dropped whole; escapes survive.
        assert_eq!(
            project(
                "addr",
                r#"{"id":1}"#,
                r#"{"id":1,"addr":{"city":"Z\"rich","zip":"8000"},"x":1}"#
            ),
            r#"{"id":1,"addr":{"city":"Z\"rich","zip":"8000"}}"#
        );
    }

    #[test]
    fn absent_columns_are_absent_and_a_row_with_nothing_else_is_unchanged() {
        assert_eq!(
            project("missing", r#"{"id":1}"#, r#"{"id":1,"a":2}"#),
            r#"{"id":1}"#
        );
        assert_eq!(
            project("a", r#"{"id":1}"#, r#"{"id":1,"a":2}"#),
            r#"{"id":1,"a":2}"#
        );
    }

    #[test]
    fn what_is_not_an_object_row_is_kept_as_it_is() {
        assert_eq!(project("a", r#"{"id":1}"#, "[1,2]"), "[1,2]");
        assert_eq!(project("a", r#"{"id":1}"#, "not json"), "not json");
        // A key that is not an object keeps only the named columns.
        assert_eq!(project("a", "42", r#"{"id":42,"a":1,"b":2}"#), r#"{"a":1}"#);
    }

    proptest::proptest! {
        /// Any object row: the projection is JSON, and holds exactly the kept fields, in order,
        /// their values untouched.
        #[test]
        fn projected_rows_are_the_kept_fields_in_order(
            fields in proptest::collection::vec(
                (
                    proptest::sample::select(vec!["id", "a", "b", "c", "d\"q", "é"]),
                    proptest::sample::select(vec![
                        "1", "-2.50e3", "\"x\"", "\"\\u00e9\\\"\"", "null", "true", "[1,{\"a\":2}]", "{\"id\":{}}",
                    ]),
                ),
                0..8,
            ),
        ) {
            let row = format!(
                "{{{}}}",
                fields
                    .iter()
                    .map(|(name, value)| format!("{}:{value}", serde_json::to_string(name).unwrap()))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let projection = Projection::parse("a,c").unwrap();
            let out = projection.apply(br#"{"id":1}"#, row.clone().into_bytes());
            let kept: Vec<(String, serde_json::Value)> = fields
                .iter()
                .filter(|(name, _)| ["id", "a", "c"].contains(name))
                .map(|(name, value)| (name.to_string(), serde_json::from_str(value).unwrap()))
                .collect();
            let Fields(got) = serde_json::from_slice(&out).expect("projected row is a JSON object");
            let got: Vec<(String, serde_json::Value)> = got
                .into_iter()
                .map(|(name, value)| (name.into_owned(), serde_json::from_str(value.get()).unwrap()))
                .collect();
            proptest::prop_assert_eq!(got, kept, "row {}", row);
        }
    }

    #[test]
    fn column_lists_are_checked() {
        assert_eq!(Projection::parse(""), Err(ProjectionError::EmptyColumn));
        assert_eq!(Projection::parse("a,,b"), Err(ProjectionError::EmptyColumn));
        let projection = Projection::parse(" b ,a,b").unwrap();
        assert_eq!(projection.to_string(), "a,b");
    }
}
