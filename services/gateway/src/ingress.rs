//! Typed ingress: a client frame becomes a [`Command`] or an
//! [`IngressError`], never anything in between.
//!
//! The envelope and every payload are DTOs with `deny_unknown_fields`;
//! each payload converts into its domain command with `TryFrom`, which is
//! where ids are validated. Decoding is table-driven: one row per event type
//! a client may send.

use serde::Deserialize;
use serde_json::value::RawValue;

use filament_ids::LogPosition;

use crate::close::CloseReason;
use crate::ids::{ChannelId, GuildId};

/// Something a client asked for, fully validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    Subscribe {
        guild: GuildId,
        channel: ChannelId,
    },
    /// A message to post, as `POST /guilds/{g}/channels/{c}/messages`
    /// would; the api validates the content and the attachments.
    CreateMessage {
        guild: GuildId,
        channel: ChannelId,
        content: String,
        attachment_ids: Vec<String>,
    },
    /// Replay what the socket missed after these positions
    /// (docs/adr/0011-resume.md).
    Resume {
        positions: Vec<LogPosition>,
    },
    /// Answer with a `pong` carrying this nonce, behind what is queued.
    Ping {
        nonce: String,
    },
}

/// A `resume` names at most this many logs: a guild per subscribed guild
/// and the user's own.
pub(crate) const MAX_RESUME_SCOPES: usize = 64;
/// A ping's nonce is echoed, so it is short.
const MAX_NONCE_BYTES: usize = 64;

// A message carries at most this many attachments (PROTOCOL.md §4.5); more
// is a malformed payload, refused before the api is asked.
use filament_proto::limits::MAX_ATTACHMENTS_PER_MESSAGE as MAX_ATTACHMENTS;

/// Why a frame was rejected. Each maps to one close reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum IngressError {
    #[error("not a valid {{v,t,d}} envelope")]
    InvalidEnvelope,
    #[error("unsupported protocol version")]
    UnsupportedVersion,
    #[error("unknown event type")]
    UnknownEvent,
    #[error("invalid payload")]
    InvalidPayload,
}

impl IngressError {
    pub(crate) fn close_reason(self) -> CloseReason {
        match self {
            Self::InvalidEnvelope => CloseReason::InvalidEnvelope,
            Self::UnsupportedVersion => CloseReason::UnsupportedVersion,
            Self::UnknownEvent => CloseReason::UnknownEvent,
            Self::InvalidPayload => CloseReason::InvalidPayload,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeDto<'a> {
    v: u64,
    #[serde(borrow)]
    t: &'a str,
    #[serde(borrow)]
    d: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeDto<'a> {
    guild_id: &'a str,
    channel_id: &'a str,
}

impl TryFrom<SubscribeDto<'_>> for Command {
    type Error = IngressError;

    fn try_from(dto: SubscribeDto<'_>) -> Result<Self, Self::Error> {
        let (guild, channel) = place(dto.guild_id, dto.channel_id)?;
        Ok(Self::Subscribe { guild, channel })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageCreateDto {
    guild_id: String,
    channel_id: String,
    content: String,
    #[serde(default)]
    attachment_ids: Option<Vec<String>>,
}

impl TryFrom<MessageCreateDto> for Command {
    type Error = IngressError;

    fn try_from(dto: MessageCreateDto) -> Result<Self, Self::Error> {
        let attachment_ids = dto.attachment_ids.unwrap_or_default();
        if attachment_ids.len() > MAX_ATTACHMENTS {
            return Err(IngressError::InvalidPayload);
        }
        let (guild, channel) = place(&dto.guild_id, &dto.channel_id)?;
        Ok(Self::CreateMessage {
            guild,
            channel,
            content: dto.content,
            attachment_ids,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeDto {
    positions: std::collections::BTreeMap<String, String>,
}

impl TryFrom<ResumeDto> for Command {
    type Error = IngressError;

    fn try_from(dto: ResumeDto) -> Result<Self, Self::Error> {
        if dto.positions.len() > MAX_RESUME_SCOPES {
            return Err(IngressError::InvalidPayload);
        }
        let positions = dto
            .positions
            .iter()
            .map(|(scope, token)| LogPosition::parse(scope, token))
            .collect::<Option<Vec<_>>>()
            .ok_or(IngressError::InvalidPayload)?;
        Ok(Self::Resume { positions })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PingDto {
    #[serde(default)]
    nonce: Option<String>,
}

impl TryFrom<PingDto> for Command {
    type Error = IngressError;

    fn try_from(dto: PingDto) -> Result<Self, Self::Error> {
        let nonce = dto.nonce.unwrap_or_default();
        if nonce.len() > MAX_NONCE_BYTES {
            return Err(IngressError::InvalidPayload);
        }
        Ok(Self::Ping { nonce })
    }
}

/// The guild and channel a payload names; canonical ULIDs only.
fn place(guild_id: &str, channel_id: &str) -> Result<(GuildId, ChannelId), IngressError> {
    let guild = guild_id.parse().map_err(|_| IngressError::InvalidPayload)?;
    let channel = channel_id
        .parse()
        .map_err(|_| IngressError::InvalidPayload)?;
    Ok((guild, channel))
}

type Decoder = fn(&RawValue) -> Result<Command, IngressError>;

/// The event types clients may send, and how to decode each.
const DECODERS: &[(&str, Decoder)] = &[
    ("subscribe", |d| decode_payload::<SubscribeDto<'_>>(d)),
    ("message_create", |d| decode_payload::<MessageCreateDto>(d)),
    ("resume", |d| decode_payload::<ResumeDto>(d)),
    ("ping", |d| decode_payload::<PingDto>(d)),
];

/// Decodes one text frame.
pub(crate) fn decode(text: &str) -> Result<Command, IngressError> {
    let envelope: EnvelopeDto<'_> =
        serde_json::from_str(text).map_err(|_| IngressError::InvalidEnvelope)?;
    if !is_valid_event_type(envelope.t) {
        return Err(IngressError::InvalidEnvelope);
    }
    if envelope.v != u64::from(filament_wire::PROTOCOL_VERSION) {
        return Err(IngressError::UnsupportedVersion);
    }
    let (_, decoder) = DECODERS
        .iter()
        .find(|(name, _)| *name == envelope.t)
        .ok_or(IngressError::UnknownEvent)?;
    decoder(envelope.d)
}

fn decode_payload<'a, T>(raw: &'a RawValue) -> Result<Command, IngressError>
where
    T: Deserialize<'a>,
    Command: TryFrom<T, Error = IngressError>,
{
    let dto: T = serde_json::from_str(raw.get()).map_err(|_| IngressError::InvalidPayload)?;
    Command::try_from(dto)
}

/// `t` must match `[a-z0-9_.]{1,64}`.
pub(crate) fn is_valid_event_type(t: &str) -> bool {
    (1..=64).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: &str = "01HZ0000000000000000000000";
    const C: &str = "01HZ0000000000000000000001";

    fn subscribe() -> String {
        format!(r#"{{"v":1,"t":"subscribe","d":{{"guild_id":"{G}","channel_id":"{C}"}}}}"#)
    }

    #[test]
    fn decodes_a_subscribe() {
        let command = decode(&subscribe()).unwrap();
        assert_eq!(
            command,
            Command::Subscribe {
                guild: G.parse().unwrap(),
                channel: C.parse().unwrap()
            }
        );
    }

    #[test]
    fn decodes_a_resume_and_a_ping() {
        let frame = format!(r#"{{"v":1,"t":"resume","d":{{"positions":{{"g:{G}":"0a.7"}}}}}}"#);
        let Command::Resume { positions } = decode(&frame).unwrap() else {
            panic!("not a resume");
        };
        assert_eq!(positions[0].offset, 7);
        assert_eq!(
            decode(r#"{"v":1,"t":"ping","d":{"nonce":"n1"}}"#).unwrap(),
            Command::Ping {
                nonce: "n1".to_owned()
            }
        );
        assert!(decode(r#"{"v":1,"t":"ping","d":{}}"#).is_ok());
        let long = "x".repeat(65);
        for bad in [
            format!(r#"{{"v":1,"t":"resume","d":{{"positions":{{"g:{G}":"0a"}}}}}}"#),
            format!(r#"{{"v":1,"t":"resume","d":{{"positions":{{"x:{G}":"0a.1"}}}}}}"#),
            r#"{"v":1,"t":"resume","d":{}}"#.to_owned(),
            format!(r#"{{"v":1,"t":"ping","d":{{"nonce":"{long}"}}}}"#),
            r#"{"v":1,"t":"ping","d":{"nonce":1}}"#.to_owned(),
        ] {
            assert_eq!(decode(&bad), Err(IngressError::InvalidPayload), "{bad}");
        }
        let too_many: Vec<String> = (0..=MAX_RESUME_SCOPES)
            .map(|i| format!(r#""g:{}":"0a.1""#, ulid::Ulid::from_parts(i as u64, 0)))
            .collect();
        let frame = format!(
            r#"{{"v":1,"t":"resume","d":{{"positions":{{{}}}}}}}"#,
            too_many.join(",")
        );
        assert_eq!(decode(&frame), Err(IngressError::InvalidPayload));
    }

    #[test]
    fn decodes_a_message_create() {
        let frame = format!(
            r#"{{"v":1,"t":"message_create","d":{{"guild_id":"{G}","channel_id":"{C}","content":"hi","attachment_ids":["{G}"]}}}}"#
        );
        assert_eq!(
            decode(&frame).unwrap(),
            Command::CreateMessage {
                guild: G.parse().unwrap(),
                channel: C.parse().unwrap(),
                content: "hi".into(),
                attachment_ids: vec![G.into()],
            }
        );
        let six = format!(
            r#"{{"v":1,"t":"message_create","d":{{"guild_id":"{G}","channel_id":"{C}","content":"hi","attachment_ids":{}}}}}"#,
            serde_json::json!(vec![G; 6])
        );
        assert_eq!(decode(&six), Err(IngressError::InvalidPayload));
        let no_content = format!(
            r#"{{"v":1,"t":"message_create","d":{{"guild_id":"{G}","channel_id":"{C}"}}}}"#
        );
        assert_eq!(decode(&no_content), Err(IngressError::InvalidPayload));
    }

    #[test]
    fn rejects_each_kind_of_bad_frame_with_its_reason() {
        use IngressError::*;
        let cases: &[(&str, IngressError)] = &[
            ("", InvalidEnvelope),
            ("not json", InvalidEnvelope),
            ("[]", InvalidEnvelope),
            (r#"{"v":1,"t":"subscribe"}"#, InvalidEnvelope),
            (r#"{"v":1,"t":"subscribe","d":{},"x":1}"#, InvalidEnvelope),
            (r#"{"v":"1","t":"subscribe","d":{}}"#, InvalidEnvelope),
            (r#"{"v":1,"t":"Subscribe","d":{}}"#, InvalidEnvelope),
            (r#"{"v":1,"t":"","d":{}}"#, InvalidEnvelope),
            (r#"{"v":1e999,"t":"subscribe","d":{}}"#, InvalidEnvelope),
            (r#"{"v":2,"t":"subscribe","d":{}}"#, UnsupportedVersion),
            (r#"{"v":1,"t":"explode","d":{}}"#, UnknownEvent),
            (r#"{"v":1,"t":"subscribe","d":{}}"#, InvalidPayload),
            (r#"{"v":1,"t":"subscribe","d":[]}"#, InvalidPayload),
            (
                r#"{"v":1,"t":"subscribe","d":{"guild_id":"x","channel_id":"y"}}"#,
                InvalidPayload,
            ),
        ];
        for (frame, expected) in cases {
            assert_eq!(decode(frame), Err(*expected), "frame: {frame}");
        }
        let extra = subscribe().replace(r#""}}"#, r#"","extra":true}}"#);
        assert_eq!(decode(&extra), Err(InvalidPayload));
        let lower = subscribe().replace(G, &G.to_lowercase());
        assert_eq!(decode(&lower), Err(InvalidPayload));
    }

    #[test]
    fn hostile_shapes_are_refused_without_recursing() {
        use IngressError::*;
        let deep = format!("{}1{}", "[".repeat(50_000), "]".repeat(50_000));
        assert_eq!(decode(&deep), Err(InvalidEnvelope));
        let deep_d = format!(r#"{{"v":1,"t":"subscribe","d":{deep}}}"#);
        assert!(decode(&deep_d).is_err());
        let huge = format!(r#"{{"v":1{},"t":"subscribe","d":{{}}}}"#, "0".repeat(400));
        assert_eq!(decode(&huge), Err(InvalidEnvelope));
        let huge_d = format!(
            r#"{{"v":1,"t":"subscribe","d":{{"guild_id":1{},"channel_id":"{C}"}}}}"#,
            "0".repeat(400)
        );
        assert_eq!(decode(&huge_d), Err(InvalidPayload));
        let dup = r#"{"v":1,"v":1,"t":"subscribe","d":{}}"#;
        assert_eq!(decode(dup), Err(InvalidEnvelope));
    }

    #[test]
    fn event_type_pattern() {
        assert!(is_valid_event_type("message_create"));
        assert!(is_valid_event_type("a.b_9"));
        assert!(!is_valid_event_type(&"a".repeat(65)));
        assert!(!is_valid_event_type("a-b"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Every rejection carries one of the ingress close codes.
        fn assert_reasoned(result: &Result<Command, IngressError>) {
            if let Err(err) = result {
                let reason = err.close_reason();
                assert!((4001..=4004).contains(&reason.code()), "{err:?}");
                assert!(!reason.as_str().is_empty());
            }
        }

        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            use serde_json::Value;
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                ".{0,40}".prop_map(Value::String),
            ];
            leaf.prop_recursive(6, 64, 8, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                    prop::collection::btree_map("[a-z_]{0,12}", inner, 0..8)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn ulid() -> impl Strategy<Value = ulid::Ulid> {
            any::<u128>().prop_map(ulid::Ulid)
        }

        proptest! {
            #[test]
            fn arbitrary_text_never_panics(text in ".{0,300}") {
                assert_reasoned(&decode(&text));
            }

            #[test]
            fn arbitrary_bytes_as_text_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
                let text = String::from_utf8_lossy(&bytes);
                assert_reasoned(&decode(&text));
            }

            #[test]
            fn arbitrary_json_is_refused_with_a_reason(value in json_value()) {
                let result = decode(&value.to_string());
                assert_reasoned(&result);
                prop_assert!(result.is_err(), "a random value is not a subscribe: {value}");
            }

            #[test]
            fn envelope_fields_decide_the_reason(
                v in prop_oneof![Just(1_u64), any::<u64>()],
                t in prop_oneof![Just("subscribe".to_owned()), "[a-z0-9_.]{1,64}", ".{0,70}"],
                d in json_value(),
            ) {
                let frame = serde_json::json!({"v": v, "t": t, "d": d}).to_string();
                let result = decode(&frame);
                assert_reasoned(&result);
                let expected = if !is_valid_event_type(&t) {
                    Some(IngressError::InvalidEnvelope)
                } else if v != 1 {
                    Some(IngressError::UnsupportedVersion)
                } else if t != "subscribe" {
                    Some(IngressError::UnknownEvent)
                } else {
                    None
                };
                match expected {
                    Some(err) => prop_assert_eq!(result, Err(err)),
                    // A random `d` for a subscribe decodes only by chance.
                    None => prop_assert!(matches!(result, Ok(_) | Err(IngressError::InvalidPayload))),
                }
            }

            #[test]
            fn valid_subscribes_round_trip(guild in ulid(), channel in ulid()) {
                let frame = serde_json::json!({
                    "v": 1,
                    "t": "subscribe",
                    "d": {"guild_id": guild.to_string(), "channel_id": channel.to_string()},
                })
                .to_string();
                prop_assert_eq!(
                    decode(&frame),
                    Ok(Command::Subscribe { guild: GuildId(guild), channel: ChannelId(channel) })
                );
            }

            #[test]
            fn mutated_subscribes_never_panic(
                cut in 0_usize..120,
                at in 0_usize..120,
                byte in any::<u8>(),
            ) {
                let frame = subscribe();
                let cut = cut.min(frame.len());
                assert_reasoned(&decode(&frame[..cut]));
                let mut bytes = frame.into_bytes();
                let at = at % bytes.len();
                bytes[at] = byte;
                assert_reasoned(&decode(&String::from_utf8_lossy(&bytes)));
            }
        }
    }
}
