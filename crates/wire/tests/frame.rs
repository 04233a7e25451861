//! The frame encoder's edges: the exact envelope bytes, the size cap, the
//! errors that keep bad payloads off the wire, and how large the largest
//! legal `message_create` gets.

use filament_proto::v1 as proto;
use filament_proto::v1::event::Payload;
use filament_proto::v1::markdown_token::Kind;
use filament_wire::{
    ConvertError, EncodeError, MAX_FRAME_BYTES, SerializeError, encode_event, encode_frames,
    event_type,
};

const GUILD: &str = "01HZX3N4B5C6D7E8F9G0H1J2K3";
const CHANNEL: &str = "01HZX3N4B5C6D7E8F9G0H1J2K4";
const USER: &str = "01HZX3N4B5C6D7E8F9G0H1J2K5";

fn event(payload: Payload) -> proto::Event {
    proto::Event {
        audience: None,
        published_at_unix_ms: 0,
        event_id: String::new(),
        positions: Vec::new(),
        payload: Some(payload),
    }
}

fn presence_sync(user_count: usize) -> proto::Event {
    event(Payload::PresenceSync(proto::PresenceSync {
        guild_id: GUILD.into(),
        user_ids: vec![USER.to_owned(); user_count],
    }))
}

#[test]
fn envelope_is_v_then_t_then_d() {
    let frame = encode_event(
        &event(Payload::Ready(proto::Ready {
            user_id: USER.into(),
        })),
        MAX_FRAME_BYTES,
    )
    .expect("encodes");
    assert_eq!(
        std::str::from_utf8(&frame.bytes).expect("UTF-8"),
        format!(r#"{{"v":1,"t":"ready","d":{{"user_id":"{USER}"}}}}"#)
    );
}

#[test]
fn oversized_frames_are_refused_with_their_size() {
    let event = presence_sync(100);
    let size = encode_event(&event, MAX_FRAME_BYTES)
        .expect("fits the default cap")
        .bytes
        .len();

    let at_limit = encode_event(&event, size).expect("a frame of exactly max bytes is allowed");
    assert_eq!(at_limit.bytes.len(), size);

    match encode_event(&event, size - 1) {
        Err(EncodeError::Oversized {
            event_type,
            size: reported,
            max,
        }) => {
            assert_eq!(event_type, "presence_sync");
            assert_eq!(reported, size);
            assert_eq!(max, size - 1);
        }
        other => panic!("expected Oversized, got {other:?}"),
    }
}

#[test]
fn unknown_enum_is_a_serialize_error() {
    let event = event(Payload::PresenceUpdate(proto::PresenceUpdate {
        guild_id: GUILD.into(),
        user_id: USER.into(),
        status: 42,
    }));
    match encode_event(&event, MAX_FRAME_BYTES) {
        Err(EncodeError::Serialize {
            event_type,
            source: SerializeError::Convert(ConvertError::UnknownEnum { field, value }),
        }) => {
            assert_eq!(event_type, "presence_update");
            assert_eq!(field, "PresenceUpdate.status");
            assert_eq!(value, 42);
        }
        other => panic!("expected a Serialize error, got {other:?}"),
    }
}

#[test]
fn unspecified_enum_is_a_serialize_error_not_a_default() {
    let event = event(Payload::VoiceStreamPublish(proto::VoiceStreamPublish {
        stream: proto::VoiceStream::Unspecified as i32,
        ..proto::VoiceStreamPublish::default()
    }));
    assert!(matches!(
        encode_event(&event, MAX_FRAME_BYTES),
        Err(EncodeError::Serialize {
            event_type: "voice_stream_publish",
            source: SerializeError::Convert(ConvertError::UnknownEnum { .. }),
        })
    ));
}

#[test]
fn bad_permission_inside_a_list_is_a_serialize_error() {
    let event = event(Payload::WorkspaceChannelRoleOverrideUpdate(
        proto::WorkspaceChannelRoleOverrideUpdate {
            role: proto::LegacyRole::Member as i32,
            updated_fields: Some(proto::OverrideFields {
                allow: vec![proto::Permission::CreateMessage as i32],
                deny: vec![proto::Permission::Unspecified as i32],
            }),
            ..proto::WorkspaceChannelRoleOverrideUpdate::default()
        },
    ));
    assert!(matches!(
        encode_event(&event, MAX_FRAME_BYTES),
        Err(EncodeError::Serialize {
            source: SerializeError::Convert(ConvertError::UnknownEnum {
                field: "OverrideFields.deny",
                value: 0
            }),
            ..
        })
    ));
}

#[test]
fn missing_sub_message_is_a_serialize_error() {
    let cases = [
        Payload::MessageCreate(proto::MessageCreate { message: None }),
        Payload::MessageUpdate(proto::MessageUpdate::default()),
        Payload::ChannelCreate(proto::ChannelCreate::default()),
        Payload::WorkspaceRoleCreate(proto::WorkspaceRoleCreate::default()),
        Payload::WorkspaceIpBanSync(proto::WorkspaceIpBanSync::default()),
        Payload::ProfileUpdate(proto::ProfileUpdate::default()),
        Payload::VoiceParticipantJoin(proto::VoiceParticipantJoin::default()),
        Payload::VoiceParticipantUpdate(proto::VoiceParticipantUpdate::default()),
    ];
    for payload in cases {
        let result = encode_event(&event(payload), MAX_FRAME_BYTES);
        assert!(
            matches!(
                result,
                Err(EncodeError::Serialize {
                    source: SerializeError::Convert(ConvertError::MissingField { .. }),
                    ..
                })
            ),
            "{result:?}"
        );
    }
}

#[test]
fn friend_request_state_other_than_accepted_is_refused() {
    let event = event(Payload::FriendRequestUpdate(proto::FriendRequestUpdate {
        state: "pending".into(),
        ..proto::FriendRequestUpdate::default()
    }));
    assert!(matches!(
        encode_event(&event, MAX_FRAME_BYTES),
        Err(EncodeError::Serialize {
            source: SerializeError::Convert(ConvertError::InvalidValue { .. }),
            ..
        })
    ));
}

#[test]
fn access_changed_is_not_for_clients() {
    let payload = Payload::AccessChanged(proto::AccessChanged {
        guild_id: GUILD.into(),
        user_ids: vec![USER.into()],
        membership_revoked: true,
        ip_bans_changed: false,
    });
    assert_eq!(event_type(&payload), None);
    assert!(matches!(
        encode_event(&event(payload), MAX_FRAME_BYTES),
        Err(EncodeError::NotForClients)
    ));
}

#[test]
fn session_revoked_is_not_for_clients() {
    let payload = Payload::SessionRevoked(proto::SessionRevoked {
        user_id: USER.into(),
        session_id: USER.into(),
    });
    assert_eq!(event_type(&payload), None);
    assert!(matches!(
        encode_event(&event(payload), MAX_FRAME_BYTES),
        Err(EncodeError::NotForClients)
    ));
}

#[test]
fn event_without_payload_is_refused() {
    let event = proto::Event::default();
    assert!(matches!(
        encode_event(&event, MAX_FRAME_BYTES),
        Err(EncodeError::MissingPayload)
    ));
}

// ---------------------------------------------------------------------------
// The largest legal message_create.
// ---------------------------------------------------------------------------

/// PROTOCOL.md §4.5 limits for a message, at their maximum.
const CONTENT_BYTES: usize = 2000;
const ATTACHMENTS: usize = 5;
const FILENAME_BYTES: usize = 128;
const REACTIONS: usize = 64;
const EMOJI_CHARS: usize = 32;
const REACTOR_IDS: usize = 32;

/// A ULID-shaped id that differs per `n`.
fn id(n: usize) -> String {
    format!("01HZX3N4B5C6D7E8F9G0{n:06}")
}

/// 2000 bytes of 4-byte characters: the most JSON per content byte that
/// still needs no escaping (`serde_json` writes non-ASCII as is).
fn max_content() -> String {
    let content = "😀".repeat(CONTENT_BYTES / 4);
    assert_eq!(content.len(), CONTENT_BYTES);
    content
}

fn max_attachments() -> Vec<proto::Attachment> {
    (0..ATTACHMENTS)
        .map(|n| proto::Attachment {
            attachment_id: id(100 + n),
            guild_id: GUILD.into(),
            channel_id: CHANNEL.into(),
            owner_id: USER.into(),
            filename: format!("{n}{}", "f".repeat(FILENAME_BYTES - 1)),
            // The longest common type `infer` reports.
            mime_type: "application/vnd.openxmlformats-officedocument.presentationml.presentation"
                .into(),
            size_bytes: 25 * 1024 * 1024,
            sha256_hex: "ab".repeat(32),
        })
        .collect()
}

fn max_reactions() -> Vec<proto::Reaction> {
    (0..REACTIONS)
        .map(|n| proto::Reaction {
            // 32 four-byte characters, distinct per reaction.
            emoji: format!(
                "{}{}",
                char::from_u32(0x1F600 + u32::try_from(n).expect("small")).expect("emoji"),
                "😀".repeat(EMOJI_CHARS - 1)
            ),
            count: i64::try_from(REACTOR_IDS).expect("small"),
            reacted_by_me: true,
            reactor_user_ids: (0..REACTOR_IDS).map(|r| id(1000 + r)).collect(),
        })
        .collect()
}

/// The tokens the api produces for plain text: one paragraph, one text.
fn plain_tokens(content: &str) -> Vec<proto::MarkdownToken> {
    let marker = |m: proto::MarkdownMarker| proto::MarkdownToken {
        kind: Some(Kind::Marker(m as i32)),
    };
    vec![
        marker(proto::MarkdownMarker::ParagraphStart),
        proto::MarkdownToken {
            kind: Some(Kind::Text(content.to_owned())),
        },
        marker(proto::MarkdownMarker::ParagraphEnd),
    ]
}

fn message_create(
    tokens: Vec<proto::MarkdownToken>,
    reactions: Vec<proto::Reaction>,
) -> proto::Event {
    event(Payload::MessageCreate(proto::MessageCreate {
        message: Some(proto::Message {
            message_id: id(1),
            guild_id: GUILD.into(),
            channel_id: CHANNEL.into(),
            author_id: USER.into(),
            content: max_content(),
            markdown_tokens: tokens,
            attachments: max_attachments(),
            reactions,
            created_at_unix: 1_767_225_600,
        }),
    }))
}

fn encoded_size(event: &proto::Event) -> usize {
    match encode_event(event, usize::MAX) {
        Ok(frame) => frame.bytes.len(),
        Err(err) => panic!("cannot encode: {err}"),
    }
}

/// What `message_create` really carries: a new message has no reactions yet
/// (PROTOCOL.md §2.11: the create response has `reactions:[]`), so the largest
/// emitted frame is 2000 bytes of content, its plain-text tokens and five
/// maximal attachments. It fits with plenty of room.
#[test]
fn largest_created_message_fits_in_a_frame() {
    let content = max_content();
    let event = message_create(plain_tokens(&content), Vec::new());
    let size = encoded_size(&event);
    println!("largest message_create as emitted (no reactions): {size} bytes");
    assert!(size < 8 * 1024, "{size} bytes");
    assert!(encode_event(&event, MAX_FRAME_BYTES).is_ok());
}

/// The same message with every reaction limit maxed out (64 reactions of 32
/// four-byte characters, 32 reactors each) does not fit: the reactions
/// alone take about 70 KB. `message_create` never carries reactions, but a
/// REST message page or a future event that does must budget for this; the
/// encoder refuses the frame rather than sending one the client ignores.
#[test]
fn message_with_every_reaction_limit_maxed_is_oversized() {
    let content = max_content();
    let event = message_create(plain_tokens(&content), max_reactions());
    let size = encoded_size(&event);
    println!("message_create with 64x32 reactions: {size} bytes");
    assert!(size > MAX_FRAME_BYTES, "{size} bytes");
    assert!(matches!(
        encode_event(&event, MAX_FRAME_BYTES),
        Err(EncodeError::Oversized {
            event_type: "message_create",
            ..
        })
    ));
}

/// Markdown tokens are the other variable: 2000 bytes of source can produce
/// up to the 4096-token cap, and even the smallest token serializes to ~20
/// bytes, so a token-dense message does not fit either.
#[test]
fn message_at_the_token_cap_is_oversized() {
    let marker = |m: proto::MarkdownMarker| proto::MarkdownToken {
        kind: Some(Kind::Marker(m as i32)),
    };
    let mut tokens = Vec::with_capacity(4096);
    for _ in 0..4096 / 2 {
        tokens.push(marker(proto::MarkdownMarker::ListItemStart));
        tokens.push(marker(proto::MarkdownMarker::ListItemEnd));
    }
    let event = message_create(tokens, Vec::new());
    let size = encoded_size(&event);
    println!("message_create with 4096 list-item tokens: {size} bytes");
    assert!(size > MAX_FRAME_BYTES, "{size} bytes");
}

/// A user id in the 26-character ULID alphabet, distinct per `n`.
fn ulid_like(n: usize) -> String {
    format!("01HZX3N4B5C6D7E8F9{n:08}")
}

fn full_voice_channel(participants: usize) -> proto::Event {
    let participant = |n: usize| proto::VoiceParticipant {
        user_id: ulid_like(n),
        identity: format!("u.{}.{GUILD}.{CHANNEL}", ulid_like(n)),
        joined_at_unix: 1_767_225_600,
        updated_at_unix: 1_767_225_600,
        is_muted: false,
        is_deafened: false,
        is_speaking: false,
        is_video_enabled: false,
        is_screen_share_enabled: false,
    };
    event(Payload::VoiceParticipantSync(proto::VoiceParticipantSync {
        guild_id: GUILD.into(),
        channel_id: CHANNEL.into(),
        participants: (0..participants).map(participant).collect(),
        synced_at_unix: 1_767_225_600,
    }))
}

fn parse(frame: &filament_wire::Frame) -> serde_json::Value {
    serde_json::from_slice(&frame.bytes).expect("json")
}

#[test]
fn a_full_voice_channel_splits_into_a_sync_and_joins_that_lose_nobody() {
    let frames = encode_frames(&full_voice_channel(512), MAX_FRAME_BYTES).expect("encodes");
    assert!(frames.iter().all(|f| f.bytes.len() <= MAX_FRAME_BYTES));
    assert_eq!(frames[0].event_type, "voice_participant_sync");
    let sync = parse(&frames[0]);
    let in_sync = sync["d"]["participants"].as_array().expect("list").len();
    // The sync is as full as the cap allows: one more would not fit.
    assert!(frames[0].bytes.len() + 400 > MAX_FRAME_BYTES, "{in_sync}");
    assert_eq!(frames.len(), 1 + 512 - in_sync);
    let mut seen: Vec<String> = sync["d"]["participants"]
        .as_array()
        .expect("list")
        .iter()
        .map(|p| p["user_id"].as_str().expect("id").to_owned())
        .collect();
    for frame in &frames[1..] {
        assert_eq!(frame.event_type, "voice_participant_join");
        let join = parse(frame);
        assert_eq!(join["d"]["channel_id"], CHANNEL);
        seen.push(
            join["d"]["participant"]["user_id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }
    // Everyone, once, in join order.
    assert_eq!(seen, (0..512).map(ulid_like).collect::<Vec<_>>());
    println!(
        "512 participants: a sync of {in_sync}, then {} joins",
        frames.len() - 1
    );
}

#[test]
fn a_crowded_presence_sync_splits_into_a_sync_and_online_updates() {
    let crowd = event(Payload::PresenceSync(proto::PresenceSync {
        guild_id: GUILD.into(),
        user_ids: (0..5000).map(ulid_like).collect(),
    }));
    let frames = encode_frames(&crowd, MAX_FRAME_BYTES).expect("encodes");
    assert!(frames.iter().all(|f| f.bytes.len() <= MAX_FRAME_BYTES));
    let sync = parse(&frames[0]);
    let mut seen: Vec<String> = sync["d"]["user_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|u| u.as_str().expect("id").to_owned())
        .collect();
    for frame in &frames[1..] {
        let update = parse(frame);
        assert_eq!(update["t"], "presence_update");
        assert_eq!(update["d"]["status"], "online");
        seen.push(update["d"]["user_id"].as_str().expect("id").to_owned());
    }
    assert_eq!(seen, (0..5000).map(ulid_like).collect::<Vec<_>>());
}

#[test]
fn events_that_fit_and_other_oversized_events_are_not_split() {
    let small = encode_frames(&full_voice_channel(3), MAX_FRAME_BYTES).expect("encodes");
    assert_eq!(small.len(), 1);
    assert!(matches!(
        encode_frames(&presence_sync(1), 10),
        Err(EncodeError::Oversized { .. })
    ));
    let big_delete = event(Payload::MessageDelete(proto::MessageDelete {
        guild_id: GUILD.into(),
        channel_id: CHANNEL.into(),
        message_id: "x".repeat(MAX_FRAME_BYTES),
        deleted_at_unix: 1,
    }));
    assert!(matches!(
        encode_frames(&big_delete, MAX_FRAME_BYTES),
        Err(EncodeError::Oversized { .. })
    ));
}
