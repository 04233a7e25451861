//! Every event stays within the outbound frame cap (issue 4, "Caps").
//!
//! For each event of `docs/events.json`, [`table`] builds the largest
//! payload the server can legally emit and encodes it as the gateway does
//! (`encode_frames` at [`MAX_FRAME_BYTES`]). Each row states the outcome:
//!
//! - [`Expect::Fits`]: one frame within the cap;
//! - [`Expect::Splits`]: a snapshot too large for one frame, which the
//!   encoder splits into frames that each fit and together lose nothing;
//! - [`Expect::RefusedAtRest`]: the payload cannot fit, so the api must
//!   refuse the mutation with a 400 (`ensure_deliverable`) before writing,
//!   rather than the gateway dropping the event at the edge.
//!
//! `cargo test -p filament-wire --test caps -- --nocapture` prints each
//! event's largest frame and its margin.
//!
//! The table and its builders live in `common/largest.rs`, which
//! `tests/schema.rs` also encodes to check them against `docs/events.json`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::largest::{Expect, table};
use filament_proto::v1 as proto;
use filament_proto::v1::event::Payload;
use filament_wire::{EncodeError, Frame, MAX_FRAME_BYTES, encode_event, encode_frames, event_type};
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// The event types of docs/events.json.
fn manifest_event_types() -> BTreeSet<String> {
    let manifest: Value =
        serde_json::from_str(&read("docs/events.json")).expect("events.json is JSON");
    manifest["events"]
        .as_array()
        .expect("events.json has an events list")
        .iter()
        .map(|event| {
            event["event_type"]
                .as_str()
                .expect("every event has an event_type")
                .to_owned()
        })
        .collect()
}

/// Whether some allinone e2e test file defines a test function `name`.
fn e2e_test_exists(name: &str) -> bool {
    let dir = repo_root().join("services/allinone/tests");
    let signature = format!("fn {name}(");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .any(|path| {
            std::fs::read_to_string(&path)
                .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
                .contains(&signature)
        })
}

fn event(payload: Payload) -> proto::Event {
    proto::Event {
        audience: None,
        published_at_unix_ms: 0,
        event_id: String::new(),
        positions: Vec::new(),
        payload: Some(payload),
    }
}

fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("frames are JSON")
}

/// The event as one frame, however large.
fn whole_frame(event: &proto::Event) -> Frame {
    encode_event(event, usize::MAX).unwrap_or_else(|err| panic!("does not encode: {err}"))
}

/// Checks that the split frames of a snapshot carry exactly its entries, in
/// order, with the snapshot's other fields on every follow-up event.
fn assert_split_lost_nothing(event: &proto::Event, frames: &[Frame], expect: &Expect) {
    let Expect::Splits {
        list,
        follow_up,
        entry,
        fixed,
    } = expect
    else {
        unreachable!("only split rows are checked here");
    };
    let whole = parse(&whole_frame(event).bytes);
    let snapshot = parse(&frames[0].bytes);
    assert_eq!(snapshot["t"], whole["t"], "the snapshot comes first");
    let mut entries = snapshot["d"][list].as_array().expect("a list").clone();
    assert!(!entries.is_empty(), "the snapshot carries a prefix");
    for frame in &frames[1..] {
        let one = parse(&frame.bytes);
        assert_eq!(one["t"], *follow_up, "{one}");
        for (key, value) in one["d"].as_object().expect("d is an object") {
            if key == entry {
                entries.push(value.clone());
            } else if let Some(&(_, fixed_value)) = fixed.iter().find(|(name, _)| name == key) {
                assert_eq!(value, fixed_value, "{follow_up}.{key}");
            } else {
                assert_eq!(Some(value), snapshot["d"].get(key), "{follow_up}.{key}");
            }
        }
    }
    assert_eq!(Value::Array(entries), whole["d"][list], "entries lost");
}

#[test]
fn the_table_covers_exactly_the_manifest_events() {
    let table = table();
    let types: BTreeSet<String> = table.iter().map(|row| row.event_type.to_owned()).collect();
    assert_eq!(types.len(), table.len(), "an event type has two rows");
    assert_eq!(types, manifest_event_types());
    for row in &table {
        assert_eq!(
            event_type(&(row.payload)()),
            Some(row.event_type),
            "the row's payload is another event"
        );
    }
}

/// The acceptance test: every event's largest legal payload fits
/// the frame cap, splits without loss, or is refused at REST.
#[test]
fn largest_legal_payload_of_every_event_fits_or_is_refused_at_rest() {
    for row in table() {
        let t = row.event_type;
        let event = event((row.payload)());
        let whole = whole_frame(&event).bytes.len();
        let result = encode_frames(&event, MAX_FRAME_BYTES);
        let report = match &row.expect {
            Expect::Fits => {
                let frames = result.unwrap_or_else(|err| panic!("{t}: {err}"));
                assert_eq!(frames.len(), 1, "{t}");
                assert_eq!(frames[0].bytes.len(), whole, "{t}");
                format!("{whole:>6} bytes, {} spare", MAX_FRAME_BYTES - whole)
            }
            expect @ Expect::Splits { follow_up, .. } => {
                assert!(
                    whole > MAX_FRAME_BYTES,
                    "{t}: {whole} bytes fit whole; make it a Fits row"
                );
                let frames = result.unwrap_or_else(|err| panic!("{t}: {err}"));
                let largest = frames
                    .iter()
                    .map(|frame| frame.bytes.len())
                    .max()
                    .expect("at least one frame");
                assert!(largest <= MAX_FRAME_BYTES, "{t}: a {largest}-byte frame");
                assert_split_lost_nothing(&event, &frames, expect);
                format!(
                    "{largest:>6} bytes, {} spare (split: {whole} bytes whole, \
                     sent as 1 {t} + {} {follow_up})",
                    MAX_FRAME_BYTES - largest,
                    frames.len() - 1
                )
            }
            Expect::RefusedAtRest { handler, e2e } => {
                match result {
                    Err(EncodeError::Oversized {
                        event_type, size, ..
                    }) => assert_eq!((event_type, size), (t, whole)),
                    other => panic!(
                        "{t}: expected Oversized, got {:?}; if it fits now, make it a Fits row",
                        other.map(|frames| frames.len())
                    ),
                }
                assert!(
                    read(handler).contains("ensure_deliverable("),
                    "{t}: {handler} no longer refuses undeliverable events"
                );
                assert!(e2e_test_exists(e2e), "{t}: no e2e test {e2e}");
                format!(
                    "{whole:>6} bytes, {} over: REFUSED AT REST by {handler}; 400 shown by e2e {e2e}",
                    whole - MAX_FRAME_BYTES
                )
            }
        };
        println!("{t:<45} {report}");
    }
}
