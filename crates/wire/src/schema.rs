//! The JSON Schema (draft 2020-12) of every gateway frame, derived from the
//! same types the encoder serializes.
//!
//! `docs/events.json` carries it (rendered by `tests/manifest.rs`), and
//! clients generate their types and validators from that file, so it must
//! say exactly what the encoder emits: `tests/schema.rs` validates encoder
//! output against the checked-in file. The schema is kept to plain keywords
//! (`type`, `properties`, `required`, `additionalProperties`, `items`,
//! `enum`, `const`, `$ref`, `oneOf`, bounds) that every client tool knows.
//!
//! Every object is closed (`additionalProperties: false`): a client that
//! validates strictly must see a new field in the schema before it sees one
//! in a frame, and a field the encoder stops sending must break validation
//! rather than pass as "optional". The one map is the envelope's optional
//! `p` ([`POSITIONS_SCHEMA_NAME`]), whose keys are log scopes.

use schemars::generate::SchemaSettings;
use schemars::transform::{RecursiveTransform, Transform};
use schemars::{Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::PROTOCOL_VERSION;
use crate::payloads::{self, EventTypeVisitor, WireEvent};

/// The `$schema` of the generated document.
pub const JSON_SCHEMA_DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// The name in `$defs` of the frame schema: `{v, t, d}` with `d` chosen by
/// `t`.
pub const FRAME_SCHEMA_NAME: &str = "GatewayFrame";

/// The name in `$defs` of the envelope's optional `p`: replay positions,
/// sent only to sockets opened with `?positions=1`
/// (`crate::with_positions`).
pub const POSITIONS_SCHEMA_NAME: &str = "LogPositions";

pub use crate::positions::POSITION_TOKEN_PATTERN;

/// The schema of one event's `d`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventSchema {
    /// The wire type `t`.
    pub event_type: &'static str,
    /// A `$ref` into [`GatewaySchema::defs`].
    pub d_schema: Value,
}

/// Every event's payload schema and the definitions they share.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewaySchema {
    /// One entry per client event, in event-table order.
    pub events: Vec<EventSchema>,
    /// The named schemas, to be placed in the document's top-level `$defs`:
    /// each payload, each shape and enum they use, and
    /// [`FRAME_SCHEMA_NAME`].
    pub defs: Map<String, Value>,
}

/// Builds the schema of every client event from the event table.
#[must_use]
pub fn gateway_schema() -> GatewaySchema {
    // The serialize contract is the one clients see: a field with
    // `skip_serializing_if` is optional, an `Option` without it is a
    // required, nullable field.
    let mut collector = Collector {
        generator: SchemaSettings::draft2020_12()
            .for_serialize()
            .into_generator(),
        events: Vec::new(),
    };
    payloads::visit_types(&mut collector);
    let Collector {
        mut generator,
        events,
    } = collector;

    let mut defs = generator.take_definitions(false);
    let frame = frame_schema(&events);
    defs.insert(FRAME_SCHEMA_NAME.to_owned(), frame);
    defs.insert(POSITIONS_SCHEMA_NAME.to_owned(), positions_schema());
    let mut plain = RecursiveTransform(make_plain);
    for value in defs.values_mut() {
        if let Ok(schema) = <&mut Schema>::try_from(value) {
            plain.transform(schema);
        }
    }
    GatewaySchema { events, defs }
}

struct Collector {
    generator: SchemaGenerator,
    events: Vec<EventSchema>,
}

impl EventTypeVisitor for Collector {
    fn visit<E: WireEvent>(&mut self) {
        let d_schema = self.generator.subschema_for::<E>().to_value();
        self.events.push(EventSchema {
            event_type: E::EVENT_TYPE,
            d_schema,
        });
    }
}

/// One closed `{v, t, d, p?}` object per event: the frame is a union
/// discriminated by the constant `t`.
fn frame_schema(events: &[EventSchema]) -> Value {
    let positions = json!({ "$ref": format!("#/$defs/{POSITIONS_SCHEMA_NAME}") });
    let variants: Vec<Value> = events
        .iter()
        .map(|event| {
            json!({
                "type": "object",
                "properties": {
                    "v": { "const": PROTOCOL_VERSION },
                    "t": { "const": event.event_type },
                    "d": event.d_schema,
                    "p": positions,
                },
                "required": ["v", "t", "d"],
                "additionalProperties": false,
            })
        })
        .collect();
    json!({
        "description": "One gateway frame: protocol version `v`, event type `t`, the payload `d` of that event type, and, only on a socket opened with `?positions=1`, the replay positions `p` of a logged event.",
        "oneOf": variants,
    })
}

/// `p`: one token per replay log the event was appended to, keyed by the
/// log's scope. Not closed: the keys are data, not field names.
fn positions_schema() -> Value {
    json!({
        "description": "Replay positions (`p`), sent only to a socket opened with `?positions=1`: one `\"<epoch>.<offset>\"` token per replay log the event was appended to, keyed by the log's scope, `g:<guild id>` or `u:<user id>`. `ready` carries the user's log and the first `subscribed` in a guild carries that guild's log. A client keeps the newest token per scope and quotes them in `resume`.",
        "type": "object",
        "additionalProperties": { "type": "string", "pattern": POSITION_TOKEN_PATTERN },
    })
}

/// Closes every object and drops `format`: schemars writes Rust integer
/// formats (`int64`, `uint8`) that are no JSON Schema format and that
/// client generators would only trip over; the bounds they imply are
/// stated with `minimum`/`maximum` where they matter.
fn make_plain(schema: &mut Schema) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    object.remove("format");
    let is_object = object.get("type").and_then(Value::as_str) == Some("object")
        || object.contains_key("properties");
    if is_object && !object.contains_key("additionalProperties") {
        object.insert("additionalProperties".to_owned(), Value::Bool(false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_refers_to_a_definition() {
        let schema = gateway_schema();
        assert!(!schema.events.is_empty());
        for event in &schema.events {
            let reference = event.d_schema["$ref"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: d_schema is not a $ref", event.event_type));
            let name = reference
                .strip_prefix("#/$defs/")
                .expect("a local definition");
            assert!(schema.defs.contains_key(name), "{reference} is not defined");
        }
    }

    #[test]
    fn integer_formats_are_dropped_and_objects_closed() {
        let schema = gateway_schema();
        let text = serde_json::to_string(&schema.defs).expect("serializes");
        assert!(!text.contains("\"format\""));
        let attachment = &schema.defs["Attachment"];
        assert_eq!(attachment["additionalProperties"], json!(false));
        assert_eq!(
            attachment["properties"]["size_bytes"],
            json!({"type": "integer"})
        );
    }
}
