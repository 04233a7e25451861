//! Markdown tokens as clients see them: `{"type":"…", …}` (PROTOCOL.md
//! §1.10).
//!
//! The api tokenizes markdown server-side so every client renders the same
//! safe subset; this module only carries the result. It does not re-check the
//! token caps (the tokenizer enforces them) but it does refuse tokens that the
//! client would reject by shape: a missing kind, an unknown marker, a heading
//! level outside 1..=6.

use filament_proto::v1 as proto;
use filament_proto::v1::markdown_token::Kind;
use schemars::JsonSchema;
use serde::Serialize;
use utoipa::ToSchema;

use crate::convert::ConvertError;

/// One markdown token. Unit variants carry no payload; the others carry
/// exactly the payload fields of PROTOCOL.md §1.10.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, JsonSchema, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum MarkdownToken {
    ParagraphStart,
    ParagraphEnd,
    HeadingStart {
        #[schemars(range(min = 1, max = 6))]
        #[schema(minimum = 1, maximum = 6)]
        level: u8,
    },
    HeadingEnd,
    EmphasisStart,
    EmphasisEnd,
    StrongStart,
    StrongEnd,
    ListStart {
        ordered: bool,
    },
    ListEnd,
    ListItemStart,
    ListItemEnd,
    LinkStart {
        href: String,
    },
    LinkEnd,
    Text {
        text: String,
    },
    Code {
        code: String,
    },
    /// `language` is `null` when the fence named none (or an invalid one).
    FencedCode {
        // Always sent, `null` included (utoipa would make an `Option`
        // optional).
        #[schema(required = true)]
        language: Option<String>,
        code: String,
    },
    SoftBreak,
    HardBreak,
}

impl MarkdownToken {
    /// The token for a payload-less marker; `None` for `UNSPECIFIED`.
    fn from_marker(marker: proto::MarkdownMarker) -> Option<Self> {
        use proto::MarkdownMarker as M;
        Some(match marker {
            M::Unspecified => return None,
            M::ParagraphStart => Self::ParagraphStart,
            M::ParagraphEnd => Self::ParagraphEnd,
            M::HeadingEnd => Self::HeadingEnd,
            M::EmphasisStart => Self::EmphasisStart,
            M::EmphasisEnd => Self::EmphasisEnd,
            M::StrongStart => Self::StrongStart,
            M::StrongEnd => Self::StrongEnd,
            M::ListEnd => Self::ListEnd,
            M::ListItemStart => Self::ListItemStart,
            M::ListItemEnd => Self::ListItemEnd,
            M::LinkEnd => Self::LinkEnd,
            M::SoftBreak => Self::SoftBreak,
            M::HardBreak => Self::HardBreak,
        })
    }
}

impl TryFrom<&proto::MarkdownToken> for MarkdownToken {
    type Error = ConvertError;

    fn try_from(token: &proto::MarkdownToken) -> Result<Self, Self::Error> {
        let kind = token.kind.as_ref().ok_or(ConvertError::MissingField {
            field: "MarkdownToken.kind",
        })?;
        Ok(match kind {
            Kind::Marker(raw) => proto::MarkdownMarker::try_from(*raw)
                .ok()
                .and_then(Self::from_marker)
                .ok_or(ConvertError::UnknownEnum {
                    field: "MarkdownToken.marker",
                    value: *raw,
                })?,
            Kind::HeadingStartLevel(level) => Self::HeadingStart {
                level: heading_level(*level)?,
            },
            Kind::ListStartOrdered(ordered) => Self::ListStart { ordered: *ordered },
            Kind::LinkStartHref(href) => Self::LinkStart { href: href.clone() },
            Kind::Text(text) => Self::Text { text: text.clone() },
            Kind::Code(code) => Self::Code { code: code.clone() },
            Kind::FencedCode(block) => Self::FencedCode {
                language: block.language.clone(),
                code: block.code.clone(),
            },
        })
    }
}

fn heading_level(level: u32) -> Result<u8, ConvertError> {
    u8::try_from(level)
        .ok()
        .filter(|level| (1..=6).contains(level))
        .ok_or(ConvertError::OutOfRange {
            field: "MarkdownToken.heading_start_level",
            value: i64::from(level),
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn marker(marker: proto::MarkdownMarker) -> proto::MarkdownToken {
        proto::MarkdownToken {
            kind: Some(Kind::Marker(marker as i32)),
        }
    }

    #[test]
    fn marker_types_follow_proto_names() {
        for raw in 1..64 {
            let Ok(proto_marker) = proto::MarkdownMarker::try_from(raw) else {
                continue;
            };
            let token = MarkdownToken::try_from(&marker(proto_marker)).expect("known marker");
            let expected = proto_marker
                .as_str_name()
                .trim_start_matches("MARKDOWN_MARKER_")
                .to_ascii_lowercase();
            assert_eq!(
                serde_json::to_value(token).expect("serializes"),
                json!({ "type": expected })
            );
        }
    }

    #[test]
    fn payload_tokens_carry_exactly_their_fields() {
        let cases = [
            (
                Kind::HeadingStartLevel(2),
                json!({"type": "heading_start", "level": 2}),
            ),
            (
                Kind::ListStartOrdered(true),
                json!({"type": "list_start", "ordered": true}),
            ),
            (
                Kind::LinkStartHref("https://example.com".into()),
                json!({"type": "link_start", "href": "https://example.com"}),
            ),
            (
                Kind::Text("hi".into()),
                json!({"type": "text", "text": "hi"}),
            ),
            (Kind::Code("x".into()), json!({"type": "code", "code": "x"})),
            (
                Kind::FencedCode(proto::FencedCode {
                    language: None,
                    code: "fn main() {}\n".into(),
                }),
                json!({"type": "fenced_code", "language": null, "code": "fn main() {}\n"}),
            ),
        ];
        for (kind, expected) in cases {
            let token = proto::MarkdownToken { kind: Some(kind) };
            let wire = MarkdownToken::try_from(&token).expect("valid token");
            assert_eq!(serde_json::to_value(wire).expect("serializes"), expected);
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let unspecified = marker(proto::MarkdownMarker::Unspecified);
        let unknown = proto::MarkdownToken {
            kind: Some(Kind::Marker(999)),
        };
        let heading_0 = proto::MarkdownToken {
            kind: Some(Kind::HeadingStartLevel(0)),
        };
        let heading_7 = proto::MarkdownToken {
            kind: Some(Kind::HeadingStartLevel(7)),
        };
        let empty = proto::MarkdownToken { kind: None };
        for token in [unspecified, unknown, heading_0, heading_7, empty] {
            assert!(MarkdownToken::try_from(&token).is_err(), "{token:?}");
        }
    }
}
