//! A writer schema compiled for decoding: the schema the registry returns is parsed by the kept
//! `apache-avro` crate (names, namespaces, references within the schema, logical types), then
//! flattened into a table of nodes the decoder walks without allocating. Field names are stored
//! already written as JSON (`"email":`), enum symbols as JSON strings.
//!
//! Named types become one node each, referred to by index, so recursive schemas (a record that
//! contains itself through a union) compile to a cycle instead of an endless tree.

use std::collections::HashMap;

use apache_avro::schema::{Name, RecordSchema};
use apache_avro::Schema;

pub type NodeId = u32;

/// What a node writes, and how its bytes are read.
#[derive(Debug, Clone)]
pub enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    /// Base64, as Kafka Connect's JsonConverter writes bytes.
    Bytes,
    String,
    /// Base64 of the fixed bytes.
    Fixed(usize),
    /// A 16-byte fixed with logical type uuid: the canonical hyphenated text.
    UuidFixed,
    /// The exact decimal as a JSON string (`"1234.50"`): lossless in every client.
    Decimal {
        scale: u32,
        fixed: Option<usize>,
    },
    /// Debezium's `io.debezium.data.VariableScaleDecimal` record (`scale`, `value`): the exact
    /// decimal as a JSON string, like [`Node::Decimal`].
    VariableScaleDecimal,
    /// Avro's duration (fixed 12): `{"months":…,"days":…,"millis":…}`.
    Duration,
    /// Symbols, each already a JSON string.
    Enum(Box<[Box<[u8]>]>),
    Array(NodeId),
    Map(NodeId),
    Union(Box<[NodeId]>),
    Record(Box<[Field]>),
}

#[derive(Debug, Clone)]
pub struct Field {
    pub name: Box<str>,
    /// `"name":`, ready to copy.
    pub json_name: Box<[u8]>,
    pub node: NodeId,
}

/// How a value of this schema becomes a change: decided once per schema, which is what the
/// JSON path decides per record (a schema fixes the shape of every record written with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A Debezium change event: a record with an `op` field next to `before` or `after`.
    ChangeEvent { after: Option<usize>, op: usize },
    /// A flattened row (ExtractNewRecordState); `__deleted` (rewrite mode) marks deletes and is
    /// never stored.
    Row { deleted: Option<usize> },
    /// Not a record: usable as a key, refused as a value.
    NotRecord,
}

/// A compiled writer schema.
#[derive(Debug)]
pub struct Plan {
    nodes: Vec<Node>,
    root: NodeId,
    shape: Shape,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SchemaError(pub String);

/// The attribute a fixed uuid's logical type is moved to before parsing: `apache-avro` turns
/// both `string` and `fixed(16)` uuids into one `Schema::Uuid`, losing which encoding the bytes
/// have; under this name the crate keeps it as a plain attribute of the fixed.
const FIXED_UUID_MARK: &str = "cdc-cache.fixed-uuid";

impl Plan {
    /// Parses and compiles a schema as the registry returns it (Avro JSON text).
    pub fn parse(schema: &str) -> Result<Plan, SchemaError> {
        let mut json: serde_json::Value =
            serde_json::from_str(schema).map_err(|e| SchemaError(format!("schema is not JSON: {e}")))?;
        mark_fixed_uuids(&mut json);
        let parsed = Schema::parse(&json).map_err(|e| SchemaError(format!("not an Avro schema: {e}")))?;
        Plan::compile(&parsed)
    }

    pub fn compile(schema: &Schema) -> Result<Plan, SchemaError> {
        let mut compiler = Compiler {
            nodes: Vec::new(),
            named: HashMap::new(),
        };
        let root = compiler.node(schema, 0)?;
        let shape = match compiler.nodes.get(root as usize) {
            Some(Node::Record(fields)) => shape_of(fields),
            _ => Shape::NotRecord,
        };
        Ok(Plan {
            nodes: compiler.nodes,
            root,
            shape,
        })
    }

    pub fn root(&self) -> NodeId {
        self.root
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    /// The root record's fields (empty when the root is not a record).
    pub fn fields(&self) -> &[Field] {
        match self.node(self.root) {
            Node::Record(fields) => fields,
            _ => &[],
        }
    }
}

fn shape_of(fields: &[Field]) -> Shape {
    let index = |name: &str| fields.iter().position(|f| &*f.name == name);
    match index("op") {
        Some(op) if index("after").is_some() || index("before").is_some() => Shape::ChangeEvent {
            after: index("after"),
            op,
        },
        _ => Shape::Row {
            deleted: index("__deleted"),
        },
    }
}

/// Deepest nesting of schema definitions compiled; a deeper schema is refused, not a stack
/// overflow.
const MAX_SCHEMA_DEPTH: usize = 64;

struct Compiler {
    nodes: Vec<Node>,
    named: HashMap<String, NodeId>,
}

impl Compiler {
    fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        (self.nodes.len() - 1) as NodeId
    }

    fn node(&mut self, schema: &Schema, depth: usize) -> Result<NodeId, SchemaError> {
        if depth > MAX_SCHEMA_DEPTH {
            return Err(SchemaError(format!(
                "schema nests deeper than {MAX_SCHEMA_DEPTH} levels"
            )));
        }
        let node = match schema {
            Schema::Null => Node::Null,
            Schema::Boolean => Node::Boolean,
            Schema::Int | Schema::Date | Schema::TimeMillis => Node::Int,
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Node::Long,
            Schema::Float => Node::Float,
            Schema::Double => Node::Double,
            Schema::Bytes => Node::Bytes,
            // A fixed uuid was marked before parsing, so what is left is the string form.
            Schema::String | Schema::Uuid => Node::String,
            Schema::Duration => Node::Duration,
            Schema::BigDecimal => {
                return Err(SchemaError(
                    "logical type big-decimal is not supported (use decimal with a scale)".into(),
                ))
            }
            Schema::Decimal(decimal) => {
                let scale = u32::try_from(decimal.scale)
                    .map_err(|_| SchemaError(format!("decimal scale {} is too large", decimal.scale)))?;
                let fixed = match decimal.inner.as_ref() {
                    Schema::Fixed(fixed) => Some(fixed.size),
                    _ => None,
                };
                Node::Decimal { scale, fixed }
            }
            Schema::Fixed(fixed) => {
                let node = if fixed.size == 16 && fixed.attributes.contains_key(FIXED_UUID_MARK) {
                    Node::UuidFixed
                } else {
                    Node::Fixed(fixed.size)
                };
                let id = self.push(node);
                self.named.insert(fullname(&fixed.name), id);
                return Ok(id);
            }
            Schema::Enum(e) => {
                let symbols = e
                    .symbols
                    .iter()
                    .map(|s| {
                        serde_json::to_vec(s)
                            .expect("a string serializes")
                            .into_boxed_slice()
                    })
                    .collect();
                let id = self.push(Node::Enum(symbols));
                self.named.insert(fullname(&e.name), id);
                return Ok(id);
            }
            Schema::Array(array) => {
                let items = self.node(&array.items, depth + 1)?;
                Node::Array(items)
            }
            Schema::Map(map) => {
                let values = self.node(&map.types, depth + 1)?;
                Node::Map(values)
            }
            Schema::Union(union) => {
                let variants = union
                    .variants()
                    .iter()
                    .map(|variant| self.node(variant, depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                Node::Union(variants.into_boxed_slice())
            }
            Schema::Record(record) => return self.record(record, depth),
            Schema::Ref { name } => {
                return self.named.get(&fullname(name)).copied().ok_or_else(|| {
                    SchemaError(format!("schema refers to undefined type {}", fullname(name)))
                })
            }
        };
        Ok(self.push(node))
    }

    fn record(&mut self, record: &RecordSchema, depth: usize) -> Result<NodeId, SchemaError> {
        let name = fullname(&record.name);
        if name == "io.debezium.data.VariableScaleDecimal" && is_variable_scale_decimal(record) {
            let id = self.push(Node::VariableScaleDecimal);
            self.named.insert(name, id);
            return Ok(id);
        }
        // Registered before its fields, which may refer to it.
        let id = self.push(Node::Record(Box::new([])));
        self.named.insert(name, id);
        let mut fields = Vec::with_capacity(record.fields.len());
        for field in &record.fields {
            let node = self.node(&field.schema, depth + 1)?;
            let mut json_name = serde_json::to_vec(&field.name).expect("a string serializes");
            json_name.push(b':');
            fields.push(Field {
                name: field.name.as_str().into(),
                json_name: json_name.into_boxed_slice(),
                node,
            });
        }
        self.nodes[id as usize] = Node::Record(fields.into_boxed_slice());
        Ok(id)
    }
}

fn fullname(name: &Name) -> String {
    name.fullname(None)
}

fn is_variable_scale_decimal(record: &RecordSchema) -> bool {
    matches!(
        record.fields.as_slice(),
        [scale, value] if scale.name == "scale" && matches!(scale.schema, Schema::Int)
            && value.name == "value" && matches!(value.schema, Schema::Bytes)
    )
}

/// Moves `"logicalType":"uuid"` off every `fixed` type (see [`FIXED_UUID_MARK`]).
fn mark_fixed_uuids(json: &mut serde_json::Value) {
    match json {
        serde_json::Value::Object(object) => {
            let is_fixed_uuid = object.get("type").and_then(|t| t.as_str()) == Some("fixed")
                && object.get("logicalType").and_then(|t| t.as_str()) == Some("uuid");
            if is_fixed_uuid {
                object.remove("logicalType");
                object.insert(FIXED_UUID_MARK.into(), serde_json::Value::Bool(true));
            }
            object.values_mut().for_each(mark_fixed_uuids);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(mark_fixed_uuids),
        _ => {}
    }
}
