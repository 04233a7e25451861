//! Replay positions on the envelope (docs/adr/0011-resume.md).
//!
//! A socket that asked for positions gets each logged event's frame with a
//! fourth envelope field, `"p":{"<scope>":"<epoch>.<offset>",…}`: one token
//! per replay log the event was appended to. A client keeps the newest
//! token per scope and quotes them back in `resume`. Clients that never
//! asked see the plain `{v,t,d}` frame, byte for byte.

use bytes::Bytes;
use filament_ids::LogPosition;

/// How far a frame with positions may exceed [`crate::MAX_FRAME_BYTES`].
/// A client that asks for positions accepts frames this much larger; the
/// plain frame alone is still held to the cap.
pub const POSITIONS_HEADROOM_BYTES: usize = 4 * 1024;

/// A position token as the gateway writes it and accepts it back: a log's
/// epoch (1 to 16 lowercase hex digits), a dot, and the offset, a `u64` in
/// decimal. The manifest's schema of `p` uses this pattern;
/// [`LogPosition::parse`] applies the same grammar (and also refuses an
/// offset past `u64::MAX`).
pub const POSITION_TOKEN_PATTERN: &str = r"^[0-9a-f]{1,16}\.[0-9]{1,20}$";

/// `frame` (the text of an encoded frame) with its positions: the same
/// `{v,t,d}` text and `"p"` before the closing brace. `None` when there are
/// no positions, or when the result would pass the cap plus
/// [`POSITIONS_HEADROOM_BYTES`].
#[must_use]
pub fn with_positions(
    frame: &[u8],
    positions: &[LogPosition],
    max_frame_bytes: usize,
) -> Option<Bytes> {
    if positions.is_empty() {
        return None;
    }
    let map: serde_json::Map<String, serde_json::Value> = positions
        .iter()
        .map(|p| (p.scope.clone(), p.token().to_string().into()))
        .collect();
    let p = serde_json::to_vec(&map).ok()?;
    let body = frame.strip_suffix(b"}")?;
    let mut bytes = Vec::with_capacity(body.len() + p.len() + 6);
    bytes.extend_from_slice(body);
    bytes.extend_from_slice(b",\"p\":");
    bytes.extend_from_slice(&p);
    bytes.push(b'}');
    if bytes.len() > max_frame_bytes + POSITIONS_HEADROOM_BYTES {
        return None;
    }
    Some(Bytes::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &'static str) -> &'static [u8] {
        text.as_bytes()
    }

    fn position(scope: &str, offset: u64) -> LogPosition {
        LogPosition {
            scope: scope.to_owned(),
            epoch: "00ff".to_owned(),
            offset,
        }
    }

    #[test]
    fn positions_are_a_fourth_envelope_field() {
        let scope = format!("g:{}", ulid::Ulid::nil());
        let framed = with_positions(
            frame(r#"{"v":1,"t":"message_create","d":{"a":1}}"#),
            &[position(&scope, 7)],
            crate::MAX_FRAME_BYTES,
        )
        .expect("fits");
        let value: serde_json::Value = serde_json::from_slice(&framed).expect("json");
        assert_eq!(value["d"]["a"], 1);
        assert_eq!(value["p"][&scope], "00ff.7");
        assert!(with_positions(frame("{}"), &[], crate::MAX_FRAME_BYTES).is_none());
    }

    #[test]
    fn a_frame_past_the_headroom_goes_without_positions() {
        let scope = format!("g:{}", ulid::Ulid::nil());
        assert!(with_positions(frame(r#"{"v":1}"#), &[position(&scope, 1)], 0).is_some());
        let many: Vec<_> = (0..200)
            .map(|i| position(&format!("g:{i:026}"), i))
            .collect();
        assert!(with_positions(frame(r#"{"v":1}"#), &many, 0).is_none());
    }
}
