//! Replay positions on the envelope (docs/adr/0011-resume.md).
//!
//! A socket that asked for positions gets each logged event's frame with a
//! fourth envelope field, `"p":{"<scope>":"<epoch>.<offset>",…}`: one token
//! per replay log the event was appended to. A client keeps the newest
//! token per scope and quotes them back in `resume`. Clients that never
//! asked see the plain `{v,t,d}` frame, byte for byte.

use std::fmt;

use bytes::Bytes;
use filament_proto::v1::LogPosition;

/// How far a frame with positions may exceed [`crate::MAX_FRAME_BYTES`].
/// A client that asks for positions accepts frames this much larger; the
/// plain frame alone is still held to the cap.
pub const POSITIONS_HEADROOM_BYTES: usize = 4 * 1024;

/// A position token as the gateway writes it and accepts it back: a log's
/// epoch (1 to 16 lowercase hex digits), a dot, and the offset, a `u64` in
/// decimal. The manifest's schema of `p` uses this pattern; [`Position::parse`]
/// applies the same grammar (and also refuses an offset past `u64::MAX`).
pub const POSITION_TOKEN_PATTERN: &str = r"^[0-9a-f]{1,16}\.[0-9]{1,20}$";

/// Longest scope a position token may name: `g:` or `u:` and a ULID.
const MAX_SCOPE_BYTES: usize = 2 + 26;
/// Longest epoch: a log's epoch is 16 hex digits.
const MAX_EPOCH_BYTES: usize = 16;

/// A position as a client quotes it: one log, one epoch, one offset.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    pub scope: String,
    pub epoch: String,
    pub offset: u64,
}

impl Position {
    /// Parses a client's `scope` and `"<epoch>.<offset>"` token. `None` for
    /// anything that is not one: an unknown scope kind, an epoch that is not
    /// hex, an offset that is not a number.
    #[must_use]
    pub fn parse(scope: &str, token: &str) -> Option<Self> {
        let valid_scope = scope.len() <= MAX_SCOPE_BYTES
            && (scope.starts_with("g:") || scope.starts_with("u:"))
            && ulid::Ulid::from_string(&scope[2..]).is_ok();
        let (epoch, offset) = token.split_once('.')?;
        let valid_epoch = !epoch.is_empty()
            && epoch.len() <= MAX_EPOCH_BYTES
            && epoch
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let valid_offset =
            (1..=20).contains(&offset.len()) && offset.bytes().all(|b| b.is_ascii_digit());
        if !valid_scope || !valid_epoch || !valid_offset {
            return None;
        }
        Some(Self {
            scope: scope.to_owned(),
            epoch: epoch.to_owned(),
            offset: offset.parse().ok()?,
        })
    }
}

impl From<&LogPosition> for Position {
    fn from(position: &LogPosition) -> Self {
        Self {
            scope: position.scope.clone(),
            epoch: position.epoch.clone(),
            offset: position.offset,
        }
    }
}

/// The token a client quotes: `<epoch>.<offset>`.
struct Token<'a>(&'a str, u64);

impl fmt::Display for Token<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

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
        .map(|p| {
            (
                p.scope.clone(),
                Token(&p.epoch, p.offset).to_string().into(),
            )
        })
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

    #[test]
    fn tokens_parse_strictly() {
        let scope = format!("u:{}", ulid::Ulid::nil());
        let parsed = Position::parse(&scope, "0a1b.42").expect("valid");
        assert_eq!((parsed.epoch.as_str(), parsed.offset), ("0a1b", 42));
        for (scope, token) in [
            (scope.as_str(), "0a1b"),
            (scope.as_str(), "zz.1"),
            (scope.as_str(), ".1"),
            (scope.as_str(), "0a.-1"),
            (scope.as_str(), "0a.99999999999999999999999"),
            (scope.as_str(), "0A.1"),
            (scope.as_str(), "0a.+1"),
            ("x:01", "0a.1"),
            ("g:not-a-ulid", "0a.1"),
        ] {
            assert!(Position::parse(scope, token).is_none(), "{scope} {token}");
        }
    }
}
