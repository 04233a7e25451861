//! The largest payload the server can legally emit, for every event.
//!
//! `tests/caps.rs` checks each against the frame cap and `tests/schema.rs`
//! validates each against the JSON Schema of `docs/events.json`; both take
//! them from [`table`], one row per event type.
//!
//! How "largest" is chosen, from PROTOCOL.md §2/§4 and the api's validation:
//! - ids are 26-character ULIDs; identities `u.<user>.<guild>.<channel>`;
//! - every integer is `i64::MAX`: no legal value prints longer (none is
//!   negative);
//! - booleans are `false` (longer than `true`), and enums take their
//!   longest wire name;
//! - text takes the character with the most JSON bytes per unit of its
//!   limit: `"` (escaped to 2 bytes) where the limit is in bytes and `"` is
//!   legal, a 4-byte character for the emoji, whose limit is in characters;
//!   usernames allow only `[A-Za-z0-9_.]`, which never escapes;
//! - lists are full: all 12 permissions, 64 role ids, 5 attachments, 512
//!   voice participants, and 5000 present users (no hard cap there, so the
//!   split must carry any number);
//! - markdown is the source that the api's tokenizer expands the most
//!   ([`amplified_markdown`]).

use filament_proto::v1 as proto;
use filament_proto::v1::event::Payload;
use filament_proto::v1::markdown_token::Kind;

pub const GUILD: &str = "01HZX3N4B5C6D7E8F9G0H1J2K3";
pub const CHANNEL: &str = "01HZX3N4B5C6D7E8F9G0H1J2K4";
/// The user an event is about.
pub const USER: &str = "01HZX3N4B5C6D7E8F9G0H1J2K5";
/// Whoever made the change (`actor_user_id`), or the other party.
pub const ACTOR: &str = "01HZX3N4B5C6D7E8F9G0H1J2K6";
/// The message, role, attachment or friend request an event names.
pub const ITEM: &str = "01HZX3N4B5C6D7E8F9G0H1J2K7";

/// No legal integer prints longer.
pub const MAX_INT: i64 = i64::MAX;

/// Guild and channel names: 1–64 bytes of printable ASCII (`domain::Name`).
pub const NAME_BYTES: usize = 64;
/// Role names: 1–32 bytes, no control characters (`roles::RoleName`).
pub const ROLE_NAME_BYTES: usize = 32;
/// Usernames: 3–32 bytes of `[A-Za-z0-9_.]` (`domain::Username`).
pub const USERNAME_BYTES: usize = 32;
/// Reaction emoji: 1–32 characters, no whitespace or control characters.
pub const EMOJI_CHARS: usize = 32;
/// Message content (`domain::MessageContent`).
pub const CONTENT_BYTES: usize = 2000;
/// Profile "about" text (`profiles::AboutMarkdown`).
pub const ABOUT_BYTES: usize = 2048;
/// Attachments per message, and their filename: 1–128 bytes without `/`,
/// `\` or control characters.
pub const ATTACHMENTS: usize = 5;
pub const FILENAME_BYTES: usize = 128;
/// The longest common media type the `infer` crate reports.
pub const LONGEST_MIME: &str =
    "application/vnd.openxmlformats-officedocument.presentationml.presentation";
/// Role ids in a reorder: the DTO's cap (only 62 of a guild's 64 roles are
/// not system roles, so this is an over-estimate).
pub const REORDERED_ROLES: usize = 64;
/// Voice participants per channel (`roster::Limits`).
pub const VOICE_PARTICIPANTS: usize = 512;
/// Users present in a guild: no hard cap; any number must get through.
pub const PRESENT_USERS: usize = 5000;
/// A ping's nonce, echoed in `pong`: at most 64 bytes, any characters
/// (`services/gateway/src/ingress.rs`).
pub const NONCE_BYTES: usize = 64;
/// The api tokenizer's caps (`services/api/src/markdown.rs`).
pub const MAX_TOKENS: usize = 4096;
pub const MAX_INLINE_BYTES: usize = 4096;

/// What must happen to an event's largest legal payload.
pub enum Expect {
    /// One frame within the cap.
    Fits,
    /// A snapshot that does not fit whole: the first frame carries the
    /// longest prefix of `list`, and each remaining entry follows as one
    /// `follow_up` event with the entry in `entry` and the `fixed` fields.
    Splits {
        list: &'static str,
        follow_up: &'static str,
        entry: &'static str,
        fixed: &'static [(&'static str, &'static str)],
    },
    /// Cannot fit in a frame. `handler` (relative to the repository root)
    /// checks the event with `ensure_deliverable` and answers 400 before
    /// writing; `e2e` names the allinone test that shows that 400.
    RefusedAtRest {
        handler: &'static str,
        e2e: &'static str,
    },
}

/// One event type, its largest legal payload, and what must happen to it.
pub struct Row {
    pub event_type: &'static str,
    pub expect: Expect,
    pub payload: fn() -> Payload,
}

pub fn table() -> Vec<Row> {
    use Expect::{Fits, RefusedAtRest, Splits};
    let messages = "services/api/src/domain/messages.rs";
    vec![
        Row {
            event_type: "ready",
            expect: Fits,
            payload: || {
                Payload::Ready(proto::Ready {
                    user_id: USER.into(),
                })
            },
        },
        Row {
            event_type: "subscribed",
            expect: Fits,
            payload: || {
                Payload::Subscribed(proto::Subscribed {
                    guild_id: GUILD.into(),
                    channel_id: CHANNEL.into(),
                })
            },
        },
        Row {
            event_type: "presence_sync",
            expect: Splits {
                list: "user_ids",
                follow_up: "presence_update",
                entry: "user_id",
                fixed: &[("status", "online")],
            },
            payload: || {
                Payload::PresenceSync(proto::PresenceSync {
                    guild_id: GUILD.into(),
                    user_ids: (0..PRESENT_USERS).map(id).collect(),
                })
            },
        },
        Row {
            event_type: "presence_update",
            expect: Fits,
            payload: || {
                Payload::PresenceUpdate(proto::PresenceUpdate {
                    guild_id: GUILD.into(),
                    user_id: USER.into(),
                    status: proto::PresenceStatus::Offline.into(),
                })
            },
        },
        // The gateway replays at most 2048 events per resume, but the field
        // is a u64: count on the longest integer anyway.
        Row {
            event_type: "resumed",
            expect: Fits,
            payload: || {
                Payload::Resumed(proto::Resumed {
                    scope: format!("g:{}", id(0)),
                    replayed: MAX_INT.unsigned_abs(),
                    resync: true,
                })
            },
        },
        // A control character escapes to six bytes (`\u0001`).
        Row {
            event_type: "pong",
            expect: Fits,
            payload: || {
                Payload::Pong(proto::Pong {
                    nonce: "\u{1}".repeat(NONCE_BYTES),
                })
            },
        },
        // A new message carries no reactions (PROTOCOL.md §2.11). Plain content
        // fits with room to spare (`frame.rs`:
        // `largest_created_message_fits_in_a_frame`); markdown that expands
        // does not.
        Row {
            event_type: "message_create",
            expect: RefusedAtRest {
                handler: messages,
                e2e: "bad_bodies_are_rejected_and_write_nothing",
            },
            payload: || {
                let (content, markdown_tokens) = amplified_markdown(CONTENT_BYTES);
                Payload::MessageCreate(proto::MessageCreate {
                    message: Some(proto::Message {
                        message_id: ITEM.into(),
                        guild_id: GUILD.into(),
                        channel_id: CHANNEL.into(),
                        author_id: USER.into(),
                        content,
                        markdown_tokens,
                        attachments: attachments(),
                        reactions: Vec::new(),
                        created_at_unix: MAX_INT,
                    }),
                })
            },
        },
        Row {
            event_type: "message_update",
            expect: RefusedAtRest {
                handler: messages,
                e2e: "bad_edits_and_deletes_write_nothing",
            },
            payload: || {
                let (content, markdown_tokens) = amplified_markdown(CONTENT_BYTES);
                Payload::MessageUpdate(proto::MessageUpdate {
                    guild_id: GUILD.into(),
                    channel_id: CHANNEL.into(),
                    message_id: ITEM.into(),
                    updated_fields: Some(proto::MessageContentFields {
                        content,
                        markdown_tokens,
                    }),
                    updated_at_unix: MAX_INT,
                })
            },
        },
        Row {
            event_type: "message_delete",
            expect: Fits,
            payload: || {
                Payload::MessageDelete(proto::MessageDelete {
                    guild_id: GUILD.into(),
                    channel_id: CHANNEL.into(),
                    message_id: ITEM.into(),
                    deleted_at_unix: MAX_INT,
                })
            },
        },
        Row {
            event_type: "message_reaction",
            expect: Fits,
            payload: || {
                Payload::MessageReaction(proto::MessageReaction {
                    guild_id: GUILD.into(),
                    channel_id: CHANNEL.into(),
                    message_id: ITEM.into(),
                    // Four bytes each: more than `"` escaped.
                    emoji: "😀".repeat(EMOJI_CHARS),
                    count: MAX_INT,
                    operation: proto::ReactionOperation::Remove.into(),
                    actor_user_id: ACTOR.into(),
                })
            },
        },
        Row {
            event_type: "channel_create",
            expect: Fits,
            payload: || {
                Payload::ChannelCreate(proto::ChannelCreate {
                    guild_id: GUILD.into(),
                    channel: Some(proto::Channel {
                        channel_id: CHANNEL.into(),
                        name: escaped(NAME_BYTES),
                        kind: proto::ChannelKind::Voice.into(),
                    }),
                })
            },
        },
        Row {
            event_type: "channel_update",
            expect: Fits,
            payload: || {
                Payload::ChannelUpdate(proto::ChannelUpdate {
                    guild_id: GUILD.into(),
                    channel_id: CHANNEL.into(),
                    updated_fields: Some(proto::ChannelFields {
                        name: Some(escaped(NAME_BYTES)),
                    }),
                    updated_at_unix: MAX_INT,
                    actor_user_id: actor(),
                })
            },
        },
        Row {
            event_type: "channel_delete",
            expect: Fits,
            payload: || {
                Payload::ChannelDelete(proto::ChannelDelete {
                    guild_id: GUILD.into(),
                    channel_id: CHANNEL.into(),
                    deleted_at_unix: MAX_INT,
                    actor_user_id: actor(),
                })
            },
        },
        Row {
            event_type: "workspace_update",
            expect: Fits,
            payload: || {
                Payload::WorkspaceUpdate(proto::WorkspaceUpdate {
                    guild_id: GUILD.into(),
                    updated_fields: Some(proto::WorkspaceFields {
                        name: Some(escaped(NAME_BYTES)),
                        visibility: Some(proto::Visibility::Private.into()),
                    }),
                    updated_at_unix: MAX_INT,
                    actor_user_id: actor(),
                })
            },
        },
        Row {
            event_type: "workspace_member_add",
            expect: Fits,
            payload: || {
                Payload::WorkspaceMemberAdd(proto::WorkspaceMemberAdd {
                    guild_id: GUILD.into(),
                    user_id: USER.into(),
                    role: proto::LegacyRole::Moderator.into(),
                    joined_at_unix: MAX_INT,
                    actor_user_id: actor(),
                })
            },
        },
        Row {
            event_type: "workspace_member_update",
            expect: Fits,
            payload: || {
                Payload::WorkspaceMemberUpdate(proto::WorkspaceMemberUpdate {
                    guild_id: GUILD.into(),
                    user_id: USER.into(),
                    updated_fields: Some(proto::MemberFields {
                        role: proto::LegacyRole::Moderator.into(),
                    }),
                    updated_at_unix: MAX_INT,
                    actor_user_id: actor(),
                })
            },
        },
        Row {
            event_type: "workspace_member_remove",
            expect: Fits,
            payload: || {
                Payload::WorkspaceMemberRemove(proto::WorkspaceMemberRemove {
                    guild_id: GUILD.into(),
                    user_id: USER.into(),
                    reason: proto::MemberRemoveReason::Leave.into(),
                    removed_at_unix: MAX_INT,
                    actor_user_id: actor(),
                })
            },
        },
        Row {
            event_type: "workspace_member_ban",
            expect: Fits,
            payload: || {
                Payload::WorkspaceMemberBan(proto::WorkspaceMemberBan {
                    guild_id: GUILD.into(),
                    user_id: USER.into(),
                    banned_at_unix: MAX_INT,
                    actor_user_id: actor(),
                })
            },
        },
        Row {
            event_type: "workspace_role_create",
            expect: Fits,
            payload: || {
                Payload::WorkspaceRoleCreate(proto::WorkspaceRoleCreate {
                    guild_id: GUILD.into(),
                    role: Some(proto::Role {
                        role_id: ITEM.into(),
                        name: escaped(ROLE_NAME_BYTES),
                        position: MAX_INT,
                        is_system: false,
                        permissions: every_permission(),
                        color_hex: Some(COLOR.into()),
                    }),
                    actor_user_id: actor(),
                })
            },
        },
        Row {
            event_type: "workspace_role_update",
            expect: Fits,
            payload: || {
                Payload::WorkspaceRoleUpdate(proto::WorkspaceRoleUpdate {
                    guild_id: GUILD.into(),
                    role_id: ITEM.into(),
                    updated_fields: Some(proto::RoleFields {
                        name: Some(escaped(ROLE_NAME_BYTES)),
                        permissions: Some(proto::PermissionList {
                            permissions: every_permission(),
                        }),
                        color_hex: Some(proto::NullableString {
                            value: Some(COLOR.into()),
                        }),
                    }),
                    updated_at_unix: MAX_INT,
                    actor_user_id: actor(),
                })
            },
        },
        Row {
            event_type: "workspace_role_delete",
            expect: Fits,
            payload: || {
                Payload::WorkspaceRoleDelete(proto::WorkspaceRoleDelete {
                    guild_id: GUILD.into(),
                    role_id: ITEM.into(),
                    deleted_at_unix: MAX_INT,
                    actor_user_id: actor(),
                })
            },
        },
        Row {
            event_type: "workspace_role_reorder",
            expect: Fits,
            payload: || {
                Payload::WorkspaceRoleReorder(proto::WorkspaceRoleReorder {
                    guild_id: GUILD.into(),
                    role_ids: (0..REORDERED_ROLES).map(id).collect(),
                    updated_at_unix: MAX_INT,
                    actor_user_id: actor(),
                })
            },
        },
        Row {
            event_type: "workspace_role_assignment_add",
            expect: Fits,
            payload: || {
                Payload::WorkspaceRoleAssignmentAdd(proto::WorkspaceRoleAssignmentAdd {
                    guild_id: GUILD.into(),
                    user_id: USER.into(),
                    role_id: ITEM.into(),
                    assigned_at_unix: MAX_INT,
                    actor_user_id: actor(),
                })
            },
        },
        Row {
            event_type: "workspace_role_assignment_remove",
            expect: Fits,
            payload: || {
                Payload::WorkspaceRoleAssignmentRemove(proto::WorkspaceRoleAssignmentRemove {
                    guild_id: GUILD.into(),
                    user_id: USER.into(),
                    role_id: ITEM.into(),
                    removed_at_unix: MAX_INT,
                    actor_user_id: actor(),
                })
            },
        },
        Row {
            event_type: "workspace_channel_role_override_update",
            expect: Fits,
            payload: || {
                Payload::WorkspaceChannelRoleOverrideUpdate(
                    proto::WorkspaceChannelRoleOverrideUpdate {
                        guild_id: GUILD.into(),
                        channel_id: CHANNEL.into(),
                        role: proto::LegacyRole::Moderator.into(),
                        updated_fields: Some(every_permission_allowed()),
                        updated_at_unix: MAX_INT,
                        actor_user_id: actor(),
                    },
                )
            },
        },
        Row {
            event_type: "workspace_channel_permission_override_update",
            expect: Fits,
            payload: || {
                Payload::WorkspaceChannelPermissionOverrideUpdate(
                    proto::WorkspaceChannelPermissionOverrideUpdate {
                        guild_id: GUILD.into(),
                        channel_id: CHANNEL.into(),
                        target_kind: proto::OverrideTargetKind::Member.into(),
                        target_id: USER.into(),
                        updated_fields: Some(every_permission_allowed()),
                        updated_at_unix: MAX_INT,
                        actor_user_id: actor(),
                    },
                )
            },
        },
        Row {
            event_type: "workspace_ip_ban_sync",
            expect: Fits,
            payload: || {
                Payload::WorkspaceIpBanSync(proto::WorkspaceIpBanSync {
                    guild_id: GUILD.into(),
                    summary: Some(proto::IpBanSummary {
                        action: proto::IpBanAction::Upsert.into(),
                        changed_count: MAX_INT,
                    }),
                    updated_at_unix: MAX_INT,
                    actor_user_id: actor(),
                })
            },
        },
        Row {
            event_type: "profile_update",
            expect: RefusedAtRest {
                handler: "services/api/src/domain/profiles.rs",
                e2e: "profile_bad_input_is_refused_and_writes_nothing",
            },
            payload: || {
                let (about_markdown, about_markdown_tokens) = amplified_markdown(ABOUT_BYTES);
                Payload::ProfileUpdate(proto::ProfileUpdate {
                    user_id: USER.into(),
                    updated_fields: Some(proto::ProfileFields {
                        username: Some(username()),
                        about: Some(proto::AboutFields {
                            about_markdown,
                            about_markdown_tokens,
                        }),
                    }),
                    updated_at_unix: MAX_INT,
                })
            },
        },
        Row {
            event_type: "profile_avatar_update",
            expect: Fits,
            payload: || {
                Payload::ProfileAvatarUpdate(proto::ProfileAvatarUpdate {
                    user_id: USER.into(),
                    avatar_version: MAX_INT,
                    updated_at_unix: MAX_INT,
                })
            },
        },
        Row {
            event_type: "profile_banner_update",
            expect: Fits,
            payload: || {
                Payload::ProfileBannerUpdate(proto::ProfileBannerUpdate {
                    user_id: USER.into(),
                    banner_version: MAX_INT,
                    updated_at_unix: MAX_INT,
                })
            },
        },
        Row {
            event_type: "friend_request_create",
            expect: Fits,
            payload: || {
                Payload::FriendRequestCreate(proto::FriendRequestCreate {
                    request_id: ITEM.into(),
                    sender_user_id: ACTOR.into(),
                    sender_username: username(),
                    recipient_user_id: USER.into(),
                    recipient_username: username(),
                    created_at_unix: MAX_INT,
                })
            },
        },
        Row {
            event_type: "friend_request_update",
            expect: Fits,
            payload: || {
                Payload::FriendRequestUpdate(proto::FriendRequestUpdate {
                    request_id: ITEM.into(),
                    state: "accepted".into(),
                    user_id: USER.into(),
                    friend_user_id: ACTOR.into(),
                    friend_username: username(),
                    friendship_created_at_unix: MAX_INT,
                    updated_at_unix: MAX_INT,
                    actor_user_id: actor(),
                })
            },
        },
        Row {
            event_type: "friend_request_delete",
            expect: Fits,
            payload: || {
                Payload::FriendRequestDelete(proto::FriendRequestDelete {
                    request_id: ITEM.into(),
                    deleted_at_unix: MAX_INT,
                    actor_user_id: actor(),
                })
            },
        },
        Row {
            event_type: "friend_remove",
            expect: Fits,
            payload: || {
                Payload::FriendRemove(proto::FriendRemove {
                    user_id: USER.into(),
                    friend_user_id: ACTOR.into(),
                    removed_at_unix: MAX_INT,
                    actor_user_id: actor(),
                })
            },
        },
        Row {
            event_type: "voice_participant_sync",
            expect: Splits {
                list: "participants",
                follow_up: "voice_participant_join",
                entry: "participant",
                fixed: &[],
            },
            payload: || {
                Payload::VoiceParticipantSync(proto::VoiceParticipantSync {
                    guild_id: GUILD.into(),
                    channel_id: CHANNEL.into(),
                    participants: (0..VOICE_PARTICIPANTS)
                        .map(|n| participant(id(n)))
                        .collect(),
                    synced_at_unix: MAX_INT,
                })
            },
        },
        Row {
            event_type: "voice_participant_join",
            expect: Fits,
            payload: || {
                Payload::VoiceParticipantJoin(proto::VoiceParticipantJoin {
                    guild_id: GUILD.into(),
                    channel_id: CHANNEL.into(),
                    participant: Some(participant(USER.into())),
                })
            },
        },
        Row {
            event_type: "voice_participant_leave",
            expect: Fits,
            payload: || {
                Payload::VoiceParticipantLeave(proto::VoiceParticipantLeave {
                    guild_id: GUILD.into(),
                    channel_id: CHANNEL.into(),
                    user_id: USER.into(),
                    identity: identity(USER),
                    left_at_unix: MAX_INT,
                })
            },
        },
        Row {
            event_type: "voice_participant_update",
            expect: Fits,
            payload: || {
                Payload::VoiceParticipantUpdate(proto::VoiceParticipantUpdate {
                    guild_id: GUILD.into(),
                    channel_id: CHANNEL.into(),
                    user_id: USER.into(),
                    identity: identity(USER),
                    updated_fields: Some(proto::VoiceStateFields {
                        is_muted: Some(false),
                        is_deafened: Some(false),
                        is_speaking: Some(false),
                        is_video_enabled: Some(false),
                        is_screen_share_enabled: Some(false),
                    }),
                    updated_at_unix: MAX_INT,
                })
            },
        },
        Row {
            event_type: "voice_stream_publish",
            expect: Fits,
            payload: || {
                Payload::VoiceStreamPublish(proto::VoiceStreamPublish {
                    guild_id: GUILD.into(),
                    channel_id: CHANNEL.into(),
                    user_id: USER.into(),
                    identity: identity(USER),
                    stream: proto::VoiceStream::ScreenShare.into(),
                    published_at_unix: MAX_INT,
                })
            },
        },
        Row {
            event_type: "voice_stream_unpublish",
            expect: Fits,
            payload: || {
                Payload::VoiceStreamUnpublish(proto::VoiceStreamUnpublish {
                    guild_id: GUILD.into(),
                    channel_id: CHANNEL.into(),
                    user_id: USER.into(),
                    identity: identity(USER),
                    stream: proto::VoiceStream::ScreenShare.into(),
                    unpublished_at_unix: MAX_INT,
                })
            },
        },
    ]
}

// ---------------------------------------------------------------------------
// Builders of the largest legal values.
// ---------------------------------------------------------------------------

/// A role color: `#RRGGBB` is the only non-null form.
pub const COLOR: &str = "#FFFFFF";

/// A ULID-shaped id, distinct per `n`.
pub fn id(n: usize) -> String {
    format!("01HZX3N4B5C6D7E8F9{n:08}")
}

pub fn actor() -> Option<String> {
    Some(ACTOR.into())
}

/// `bytes` bytes of `"`: printable ASCII, and two JSON bytes each.
pub fn escaped(bytes: usize) -> String {
    "\"".repeat(bytes)
}

/// The longest username; its alphabet never needs escaping.
pub fn username() -> String {
    "u".repeat(USERNAME_BYTES)
}

pub fn identity(user_id: &str) -> String {
    format!("u.{user_id}.{GUILD}.{CHANNEL}")
}

pub fn participant(user_id: String) -> proto::VoiceParticipant {
    proto::VoiceParticipant {
        identity: identity(&user_id),
        user_id,
        joined_at_unix: MAX_INT,
        updated_at_unix: MAX_INT,
        is_muted: false,
        is_deafened: false,
        is_speaking: false,
        is_video_enabled: false,
        is_screen_share_enabled: false,
    }
}

/// Every permission the proto defines, in bit order (all 12).
pub fn every_permission() -> Vec<i32> {
    let all: Vec<i32> = (1..)
        .map_while(|raw| proto::Permission::try_from(raw).ok())
        .map(i32::from)
        .collect();
    assert_eq!(all.len(), filament_wire::Permission::ALL.len());
    all
}

/// An override may not allow and deny the same permission; all 12 in one
/// list is the longest split (one more comma than two lists of six).
pub fn every_permission_allowed() -> proto::OverrideFields {
    proto::OverrideFields {
        allow: every_permission(),
        deny: Vec::new(),
    }
}

pub fn attachments() -> Vec<proto::Attachment> {
    (0..ATTACHMENTS)
        .map(|n| proto::Attachment {
            attachment_id: id(n),
            guild_id: GUILD.into(),
            channel_id: CHANNEL.into(),
            owner_id: USER.into(),
            filename: escaped(FILENAME_BYTES),
            mime_type: LONGEST_MIME.into(),
            size_bytes: MAX_INT,
            sha256_hex: "f".repeat(64),
        })
        .collect()
}

pub fn token(kind: Kind) -> proto::MarkdownToken {
    proto::MarkdownToken { kind: Some(kind) }
}

pub fn marker(marker: proto::MarkdownMarker) -> proto::MarkdownToken {
    token(Kind::Marker(marker.into()))
}

/// How many bytes of link destinations pulldown-cmark (the api's markdown
/// parser) copies into reference-link uses before it leaves later uses as
/// plain text: its `link_ref_expansion_limit`, for any source under 100 000
/// bytes. A use is expanded while some of this is left.
pub const EXPANSION_FUEL: usize = 100_000;

/// Markdown source of exactly `bytes` bytes that the api's tokenizer
/// expands the most, with the tokens it makes of it.
///
/// A link reference definition is written once and used many times: each
/// shortcut use `[a]x` (4 bytes) becomes `link_start{href}`, `text("a")`,
/// `link_end` and `text("x")`, so the href is copied in full per use (the
/// `x` keeps the next `[a]` from reading as this one's label). The href
/// takes the rest of the budget. Past half the budget in uses, more uses
/// mean fewer bytes in all (a shorter href), so the largest output is the
/// fewest uses past that point that [`EXPANSION_FUEL`] still expands every
/// one of: the copied hrefs come to about the fuel, and each use adds
/// ~110 bytes of token JSON on top. The tokens stay within the tokenizer's
/// caps (4096 tokens, 4096 bytes per href), so it keeps every one. (This
/// crate cannot call the api's tokenizer; these tokens were checked against
/// pulldown-cmark 0.13.6's events for both budgets used here.)
pub fn amplified_markdown(bytes: usize) -> (String, Vec<proto::MarkdownToken>) {
    const USE: &str = "[a]x";
    const DEFINITION: &str = "\n\n[a]: ";
    const SCHEME: &str = "https://";
    let href_len = |uses: usize| bytes - DEFINITION.len() - uses * USE.len();
    let uses = (bytes / (2 * USE.len())..)
        .find(|&uses| (uses - 1) * href_len(uses) < EXPANSION_FUEL)
        .expect("some number of uses all expand");
    let href = format!("{SCHEME}{}", "x".repeat(href_len(uses) - SCHEME.len()));
    let source = format!("{}{DEFINITION}{href}", USE.repeat(uses));
    assert_eq!(source.len(), bytes);
    let mut tokens = vec![marker(proto::MarkdownMarker::ParagraphStart)];
    for _ in 0..uses {
        tokens.extend([
            token(Kind::LinkStartHref(href.clone())),
            token(Kind::Text("a".into())),
            marker(proto::MarkdownMarker::LinkEnd),
            token(Kind::Text("x".into())),
        ]);
    }
    tokens.push(marker(proto::MarkdownMarker::ParagraphEnd));
    assert!(tokens.len() <= MAX_TOKENS && href.len() <= MAX_INLINE_BYTES);
    (source, tokens)
}
