//! The event manifest, generated from the proto event catalogue.
//!
//! `proto/filament/v1/events.proto` is the single source of truth: every
//! payload message in `Event.payload` carries a `(filament.v1.event)` option
//! (name, version, scope, recipients, emitting routes). This test compiles
//! the proto with protox (no system protoc), checks those options against
//! the wire crate's event table, and renders `docs/events.json` and
//! `docs/GATEWAY_EVENTS.md` from them. A checked-in file that differs from its
//! rendering fails the test, so the docs cannot drift from the code;
//! `UPDATE_MANIFEST=1 cargo test -p filament-wire --test manifest` rewrites
//! them.
//!
//! events.json is also a JSON Schema (draft 2020-12): the document validates
//! one frame, each event's `d_schema` refers to its payload in the shared
//! `$defs`, and all of it comes from the wire types
//! ([`filament_wire::schema`]). `tests/schema.rs` checks the encoder's output
//! against the checked-in file.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use filament_proto::v1 as proto;
use filament_proto::v1::event::Payload;
use filament_wire::schema::{
    FRAME_SCHEMA_NAME, GatewaySchema, JSON_SCHEMA_DIALECT, gateway_schema,
};
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor, Value,
};
use serde::Serialize;

/// Oneof variants of `Event.payload` that are gateway-internal and carry no
/// `(event)` option.
const CONTROL_PAYLOADS: &[&str] = &["access_changed", "session_revoked"];

/// The frame cap of PROTOCOL.md §4.7, for the docs.
const FRAME_LIMIT: &str = "64 KiB (65 536 bytes)";
/// What a positioned frame may add to it ([`filament_wire::POSITIONS_HEADROOM_BYTES`]).
const POSITIONS_HEADROOM: &str = "4 KiB (4 096 bytes)";
const POSITIONED_FRAME_LIMIT: &str = "69 632 bytes";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Compiles events.proto and its imports into a descriptor pool.
fn catalogue() -> DescriptorPool {
    let mut compiler = protox::Compiler::new([repo_root().join("proto")]).expect("proto dir");
    compiler.include_imports(true);
    compiler
        .open_file("filament/v1/events.proto")
        .expect("events.proto compiles");
    compiler.descriptor_pool()
}

/// One gateway event, as its proto payload declares it.
struct EventSpec {
    /// The `Event.payload` oneof field.
    variant: FieldDescriptor,
    event_type: String,
    version: u32,
    scope: String,
    recipients: String,
    emitted_by: Vec<String>,
    message: MessageDescriptor,
}

/// Every client event in oneof order; control payloads are skipped.
fn read_events(pool: &DescriptorPool) -> Vec<EventSpec> {
    let option = pool
        .get_extension_by_name("filament.v1.event")
        .expect("the (event) option is declared");
    payload_variants(pool)
        .into_iter()
        .filter(|variant| !CONTROL_PAYLOADS.contains(&variant.name()))
        .map(|variant| {
            let message = payload_message(&variant);
            let options = message.options();
            assert!(
                options.has_extension(&option),
                "{} has no (filament.v1.event) option",
                message.full_name()
            );
            let meta = options.get_extension(&option);
            let meta = meta.as_message().expect("EventMeta is a message");
            let field = |name: &str| {
                meta.get_field_by_name(name)
                    .expect("EventMeta field")
                    .into_owned()
            };
            let scope_enum = pool
                .get_enum_by_name("filament.v1.EventScope")
                .expect("EventScope");
            let scope_number = field("scope").as_enum_number().expect("scope is an enum");
            EventSpec {
                event_type: field("name").as_str().expect("name").to_owned(),
                version: field("version").as_u32().expect("version"),
                scope: wire_value(&scope_enum, scope_number).unwrap_or_default(),
                recipients: field("recipients").as_str().expect("recipients").to_owned(),
                emitted_by: field("emitted_by")
                    .as_list()
                    .expect("emitted_by")
                    .iter()
                    .map(|route| route.as_str().expect("route").to_owned())
                    .collect(),
                variant,
                message,
            }
        })
        .collect()
}

fn payload_variants(pool: &DescriptorPool) -> Vec<FieldDescriptor> {
    let event = pool
        .get_message_by_name("filament.v1.Event")
        .expect("Event");
    let oneof = event
        .oneofs()
        .find(|oneof| oneof.name() == "payload")
        .expect("Event.payload");
    oneof.fields().collect()
}

fn payload_message(variant: &FieldDescriptor) -> MessageDescriptor {
    match variant.kind() {
        Kind::Message(message) => message,
        other => panic!(
            "Event.payload.{} is a {other:?}, not a message",
            variant.name()
        ),
    }
}

/// The generated `Payload` for a oneof variant, built by encoding a
/// dynamic `Event` with that variant set and decoding it with prost: this
/// ties the descriptor walk to the Rust enum without a hand-written table.
fn rust_payload(pool: &DescriptorPool, variant: &FieldDescriptor) -> Payload {
    let event = pool
        .get_message_by_name("filament.v1.Event")
        .expect("Event");
    let mut dynamic = DynamicMessage::new(event);
    let inner = DynamicMessage::new(payload_message(variant));
    dynamic.set_field(variant, Value::Message(inner));
    let decoded = proto::Event::decode(dynamic.encode_to_vec().as_slice()).expect("decodes");
    decoded
        .payload
        .expect("the variant survives the round trip")
}

/// An enum value as the wire spells it: the value name without the enum's
/// prefix, lowercased (`EVENT_SCOPE_GUILD` is `guild`). `None` for
/// `UNSPECIFIED` and unknown numbers.
fn wire_value(descriptor: &EnumDescriptor, number: i32) -> Option<String> {
    let unspecified = descriptor.get_value(0)?;
    let prefix = unspecified.name().strip_suffix("UNSPECIFIED")?;
    let value = descriptor.get_value(number).filter(|_| number != 0)?;
    let rest = value.name().strip_prefix(prefix)?;
    Some(rest.to_ascii_lowercase())
}

fn is_valid_event_type(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

#[test]
fn every_payload_is_a_named_event_that_the_wire_crate_encodes() {
    let pool = catalogue();
    let option = pool
        .get_extension_by_name("filament.v1.event")
        .expect("option");
    for variant in payload_variants(&pool) {
        let payload = rust_payload(&pool, &variant);
        if CONTROL_PAYLOADS.contains(&variant.name()) {
            assert!(
                !payload_message(&variant).options().has_extension(&option),
                "control payload {} must not be a gateway event",
                variant.name()
            );
            assert_eq!(filament_wire::event_type(&payload), None);
        }
    }

    let events = read_events(&pool);
    let mut seen = HashSet::new();
    for event in &events {
        let name = &event.event_type;
        assert!(
            is_valid_event_type(name),
            "{name}: not ^[a-z0-9_.]{{1,64}}$"
        );
        assert!(seen.insert(name.clone()), "{name}: declared twice");
        assert!(event.version >= 1, "{name}: version must be at least 1");
        assert!(!event.scope.is_empty(), "{name}: scope is unspecified");
        assert!(
            !event.recipients.is_empty(),
            "{name}: no recipients sentence"
        );
        assert!(!event.emitted_by.is_empty(), "{name}: no emitting route");
        let payload = rust_payload(&pool, &event.variant);
        assert_eq!(
            filament_wire::event_type(&payload),
            Some(name.as_str()),
            "Event.payload.{} is named differently by the wire crate",
            event.variant.name()
        );
    }
}

// ---------------------------------------------------------------------------
// docs/events.json
// ---------------------------------------------------------------------------

/// Field order here is the order in the file: the schema keywords that say
/// what the document validates, then the events, then the definitions.
#[derive(Serialize)]
struct Manifest {
    #[serde(rename = "$schema")]
    schema: &'static str,
    #[serde(rename = "$comment")]
    comment: &'static str,
    title: &'static str,
    description: &'static str,
    /// The frame schema: the whole document validates one frame.
    #[serde(rename = "$ref")]
    frame: String,
    /// Not a JSON Schema keyword: validators ignore it.
    events: Vec<ManifestEvent>,
    #[serde(rename = "$defs")]
    defs: serde_json::Map<String, serde_json::Value>,
}

const MANIFEST_COMMENT: &str = "Generated from proto/filament/v1/events.proto and the \
     filament-wire types by crates/wire/tests/manifest.rs; do not edit by hand.";

const MANIFEST_DESCRIPTION: &str = "The gateway event manifest. As a JSON Schema \
     (draft 2020-12) this document validates one gateway frame {v, t, d}, with an \
     optional fourth field `p` (replay positions, `$defs/LogPositions`) that only a \
     socket opened with `?positions=1` receives. `events` lists every event type with \
     its metadata and, in `d_schema`, a reference to the schema of its payload `d` in \
     `$defs`.";

/// Field order here is the order in the file.
#[derive(Serialize)]
struct ManifestEvent {
    event_type: String,
    schema_version: u32,
    scope: String,
    lifecycle: &'static str,
    recipients: String,
    emitted_by: Vec<String>,
    fields: Vec<ManifestField>,
    /// `{"$ref": "#/$defs/<payload type>"}`.
    d_schema: serde_json::Value,
}

#[derive(Serialize)]
struct ManifestField {
    name: String,
    #[serde(rename = "type")]
    ty: String,
}

fn fields_of(message: &MessageDescriptor) -> Vec<ManifestField> {
    message
        .fields()
        .map(|field| ManifestField {
            name: field.name().to_owned(),
            ty: type_of(&field),
        })
        .collect()
}

/// A field's proto type, with its cardinality: `string`, `optional string`,
/// `repeated Permission`, `FencedCode (oneof kind)`.
fn type_of(field: &FieldDescriptor) -> String {
    let base = match field.kind() {
        Kind::Message(message) => message.name().to_owned(),
        Kind::Enum(descriptor) => descriptor.name().to_owned(),
        scalar => scalar_name(&scalar).to_owned(),
    };
    let real_oneof = field
        .containing_oneof()
        .filter(|oneof| !oneof.is_synthetic());
    if let Some(oneof) = real_oneof {
        format!("{base} (oneof {})", oneof.name())
    } else if field.is_list() {
        format!("repeated {base}")
    } else if field.field_descriptor_proto().proto3_optional() {
        format!("optional {base}")
    } else {
        base
    }
}

fn scalar_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Double => "double",
        Kind::Float => "float",
        Kind::Int32 => "int32",
        Kind::Int64 => "int64",
        Kind::Uint32 => "uint32",
        Kind::Uint64 => "uint64",
        Kind::Sint32 => "sint32",
        Kind::Sint64 => "sint64",
        Kind::Fixed32 => "fixed32",
        Kind::Fixed64 => "fixed64",
        Kind::Sfixed32 => "sfixed32",
        Kind::Sfixed64 => "sfixed64",
        Kind::Bool => "bool",
        Kind::String => "string",
        Kind::Bytes => "bytes",
        Kind::Message(_) | Kind::Enum(_) => unreachable!("not a scalar"),
    }
}

/// Each event's payload schema, by event type, after checking that the wire
/// crate's event table describes exactly the proto's events, in the same
/// order.
fn payload_schemas(events: &[EventSpec], schema: &GatewaySchema) -> Vec<serde_json::Value> {
    let table: Vec<&str> = schema.events.iter().map(|event| event.event_type).collect();
    let proto: Vec<&str> = events
        .iter()
        .map(|event| event.event_type.as_str())
        .collect();
    assert_eq!(
        table, proto,
        "the wire crate's event table and events.proto list different events"
    );
    schema
        .events
        .iter()
        .map(|event| event.d_schema.clone())
        .collect()
}

fn render_json(events: &[EventSpec]) -> String {
    let schema = gateway_schema();
    let d_schemas = payload_schemas(events, &schema);
    let manifest = Manifest {
        schema: JSON_SCHEMA_DIALECT,
        comment: MANIFEST_COMMENT,
        title: "Filament gateway frame",
        description: MANIFEST_DESCRIPTION,
        frame: format!("#/$defs/{FRAME_SCHEMA_NAME}"),
        events: events
            .iter()
            .zip(d_schemas)
            .map(|(event, d_schema)| ManifestEvent {
                event_type: event.event_type.clone(),
                schema_version: event.version,
                scope: event.scope.clone(),
                lifecycle: "active",
                recipients: event.recipients.clone(),
                emitted_by: event.emitted_by.clone(),
                fields: fields_of(&event.message),
                d_schema,
            })
            .collect(),
        defs: schema.defs,
    };
    let mut json = serde_json::to_string_pretty(&manifest).expect("serializes");
    json.push('\n');
    json
}

// ---------------------------------------------------------------------------
// docs/GATEWAY_EVENTS.md
// ---------------------------------------------------------------------------

const INTRO: &str = r#"# Gateway events

<!-- Generated from proto/filament/v1/events.proto by crates/wire/tests/manifest.rs.
     Do not edit by hand: change the proto, then run
     UPDATE_MANIFEST=1 cargo test -p filament-wire --test manifest -->

The gateway (`GET /gateway/ws`) speaks JSON text frames. Every frame, in both
directions, is one envelope:

```json
{"v":1,"t":"message_delete","d":{"guild_id":"01HZX3N4B5C6D7E8F9G0H1J2K3","channel_id":"01HZX3N4B5C6D7E8F9G0H1J2K4","message_id":"01HZX3N4B5C6D7E8F9G0H1J2K7","deleted_at_unix":1767225600}}
```

| Key | Meaning |
|---|---|
| `v` | Protocol version, always `1`. |
| `t` | Event type, matching `^[a-z0-9_.]{1,64}$`. |
| `d` | The payload, an object whose shape depends on `t` (below). |
| `p` | Optional, server to client only: replay positions (below). |

Clients ignore event types and payload fields they do not know: a payload may
gain optional fields within a schema version, and an incompatible change bumps
the event's schema version.

`docs/events.json` lists the same events and is also a JSON Schema (draft
2020-12) of a frame, generated from the types the server encodes: validated
against the whole document, a frame must match the `d` schema of its `t`.
Each event's `d_schema` refers to the definition of its payload in `$defs`.
Those schemas are exact for the server that generated them: every object
lists all its fields, a field that is always sent is `required`, and no other
field is allowed (`additionalProperties: false`), so the server's own tests
catch any drift. A client that follows the rule above still accepts a field
that a newer server added.

## Replay positions

A socket opened with `GET /gateway/ws?positions=1` gets a fourth envelope
field, `p`, on every event that was appended to a replay log:

```json
{"v":1,"t":"message_delete","d":{"guild_id":"01HZX3N4B5C6D7E8F9G0H1J2K3","channel_id":"01HZX3N4B5C6D7E8F9G0H1J2K4","message_id":"01HZX3N4B5C6D7E8F9G0H1J2K7","deleted_at_unix":1767225600},"p":{"g:01HZX3N4B5C6D7E8F9G0H1J2K3":"0a1b2c3d4e5f6071.42"}}
```

Each key is a log's scope (`g:<guild id>` for a guild's channel and guild
events, `u:<user id>` for events sent to that user by name) and each value is
the event's position in that log, `"<epoch>.<offset>"` (the epoch is hex,
the offset a decimal `u64`). As a baseline, `ready` carries the newest
position of the user's own log, and the first `subscribed` in a guild that
guild's; other connection events, presence and voice events carry none. A
client keeps the newest position per scope.

After a reconnect, to any gateway, the client sends `resume` with the
positions it held when the old socket ended (not the new socket's
baselines, which are past the gap), then subscribes again. The gateway
replays the user's log, and the log of any guild the socket is already
subscribed in, at once; a guild's log it replays right after the socket's
first `subscribed` (and that channel's voice roster) in that guild, so no
live frame of the guild comes before the replayed ones. Each log's replay
ends with one `resumed` for that log, carrying (in `p`) the position it
reached; `resync: true` means the log could not cover the gap (another
epoch, trimmed, too old, or a log the socket may not resume) and the client
refetches what it covers (`GET …/messages?after=<newest id>` per channel);
its `p` then holds the log's head, where the client stands after the
refetch (none for a log the socket may not resume).
Replayed and live frames never repeat one another. Without `positions=1`
(or with `positions=0`) frames never carry `p`, and every log a `resume`
names is answered with `resync: true`; any other value of `positions` is refused with HTTP 400.

"#;

const MAPPING: &str = r#"## From proto to JSON

Each event below lists the fields of its proto payload message. `d` uses the
same field names, with these rules:

- `int64` values are JSON integers: ids are ULID strings, times are Unix
  seconds in `*_unix` fields.
- `optional` fields are omitted when absent.
- Enum values are their proto name without the enum prefix, lowercased
  (`PRESENCE_STATUS_ONLINE` is `"online"`). `UNSPECIFIED` is never sent: an
  event carrying it is dropped.
- `message_create`: `d` is the `Message` itself, not `{"message": …}`.
- `NullableString` (`workspace_role_update`): absent when unchanged, `null`
  when cleared, else the string.
- `PermissionList` is the array of permission names itself.
- `ProfileFields.about` is flattened into `about_markdown` and
  `about_markdown_tokens`, which are both present or both absent.
- `Role.color_hex` is omitted when unset in `workspace_role_create` (REST
  responses send `null`).
- `Reaction.reactor_user_ids` is omitted when empty.
- `MarkdownToken` is `{"type": …}` plus its payload: a `marker` is
  `{"type":"<marker>"}`; `heading_start_level` is
  `{"type":"heading_start","level":1..6}`; `list_start_ordered` is
  `{"type":"list_start","ordered":bool}`; `link_start_href` is
  `{"type":"link_start","href":…}`; `text`, `code` and `fenced_code` are
  `{"type":"text","text":…}`, `{"type":"code","code":…}` and
  `{"type":"fenced_code","language":…|null,"code":…}`.

"#;

fn render_markdown(events: &[EventSpec]) -> String {
    let mut out = String::from(INTRO);
    render_limits(&mut out);
    out.push_str(MAPPING);
    render_event_index(&mut out, events);
    for event in events {
        render_event(&mut out, event);
    }
    render_types(&mut out, events);
    out
}

fn render_limits(out: &mut String) {
    let _ = write!(
        out,
        "## Limits\n\n\
         - A frame is at most {FRAME_LIMIT}, in both directions. The server\n  \
         never sends a larger frame: the event is dropped and counted, never\n  \
         truncated. A larger inbound frame closes the socket.\n\
         - A frame with positions (`p`) may exceed that by\n  \
         {POSITIONS_HEADROOM} for its `p`: a client that asks for positions\n  \
         accepts frames up to {POSITIONED_FRAME_LIMIT}.\n\
         - Other limits (ingress rate, outbound queue) are gateway settings:\n  \
         see docs/ARCHITECTURE.md.\n\n\
         ## Close codes\n\n\
         See docs/ARCHITECTURE.md.\n\n"
    );
}

fn render_event_index(out: &mut String, events: &[EventSpec]) {
    out.push_str("## Events\n\n| Event | Schema version | Scope |\n|---|---|---|\n");
    for event in events {
        let name = &event.event_type;
        let _ = writeln!(
            out,
            "| [`{name}`](#{name}) | {} | {} |",
            event.version, event.scope
        );
    }
    out.push('\n');
}

fn render_event(out: &mut String, event: &EventSpec) {
    let _ = write!(
        out,
        "### `{}`\n\nSchema version {}, scope `{}`.\n\n- **Recipients:** {}\n- **Emitted by:** {}\n\n",
        event.event_type,
        event.version,
        event.scope,
        event.recipients,
        event
            .emitted_by
            .iter()
            .map(|route| format!("`{route}`"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    render_field_table(out, &event.message);
}

fn render_field_table(out: &mut String, message: &MessageDescriptor) {
    let fields = fields_of(message);
    if fields.is_empty() {
        out.push_str("No fields.\n\n");
        return;
    }
    out.push_str("| Field | Type |\n|---|---|\n");
    for field in fields {
        let _ = writeln!(out, "| `{}` | `{}` |", field.name, field.ty);
    }
    out.push('\n');
}

/// The messages and enums that payloads use, in order of first use.
#[derive(Default)]
struct UsedTypes {
    seen: HashSet<String>,
    messages: Vec<MessageDescriptor>,
    enums: Vec<EnumDescriptor>,
}

impl UsedTypes {
    /// Visits `message`'s fields depth-first, so that a type is listed right
    /// after the first type that uses it.
    fn visit(&mut self, message: &MessageDescriptor) {
        for field in message.fields() {
            match field.kind() {
                Kind::Message(inner) if self.seen.insert(inner.full_name().to_owned()) => {
                    self.messages.push(inner.clone());
                    self.visit(&inner);
                }
                Kind::Enum(inner) if self.seen.insert(inner.full_name().to_owned()) => {
                    self.enums.push(inner);
                }
                _ => {}
            }
        }
    }
}

/// Each type that payloads use, with its fields or its wire values.
fn render_types(out: &mut String, events: &[EventSpec]) {
    let mut used = UsedTypes::default();
    for event in events {
        used.visit(&event.message);
    }
    let (messages, enums) = (used.messages, used.enums);

    out.push_str("## Types\n\n");
    for message in &messages {
        let _ = write!(out, "### `{}`\n\n", message.name());
        render_field_table(out, message);
    }
    for descriptor in &enums {
        let values: Vec<String> = descriptor
            .values()
            .filter_map(|value| wire_value(descriptor, value.number()))
            .map(|value| format!("`\"{value}\"`"))
            .collect();
        let _ = write!(
            out,
            "### `{}`\n\nValues: {}.\n\n",
            descriptor.name(),
            values.join(", ")
        );
    }
    // One trailing newline, not two.
    while out.ends_with("\n\n") {
        out.pop();
    }
}

// ---------------------------------------------------------------------------
// Drift check.
// ---------------------------------------------------------------------------

/// Compares `rendered` with the checked-in file, or rewrites the file when
/// `UPDATE_MANIFEST` is set.
fn check_or_update(relative: &str, rendered: &str) {
    let path = repo_root().join(relative);
    if std::env::var_os("UPDATE_MANIFEST").is_some() {
        std::fs::write(&path, rendered).expect("writes the generated file");
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == rendered,
        "{relative} is out of date with proto/filament/v1/events.proto; \
         rerun with UPDATE_MANIFEST=1 cargo test -p filament-wire --test manifest \
         and commit the result"
    );
}

/// The limits the docs spell out are the wire crate's.
#[test]
fn documented_limits_are_the_crate_limits() {
    assert_eq!(filament_wire::MAX_FRAME_BYTES, 65_536, "{FRAME_LIMIT}");
    assert_eq!(
        filament_wire::POSITIONS_HEADROOM_BYTES,
        4_096,
        "{POSITIONS_HEADROOM}"
    );
    assert_eq!(
        filament_wire::MAX_FRAME_BYTES + filament_wire::POSITIONS_HEADROOM_BYTES,
        69_632,
        "{POSITIONED_FRAME_LIMIT}"
    );
}

#[test]
fn events_json_matches_the_proto() {
    let pool = catalogue();
    check_or_update("docs/events.json", &render_json(&read_events(&pool)));
}

#[test]
fn gateway_events_md_matches_the_proto() {
    let pool = catalogue();
    check_or_update(
        "docs/GATEWAY_EVENTS.md",
        &render_markdown(&read_events(&pool)),
    );
}
