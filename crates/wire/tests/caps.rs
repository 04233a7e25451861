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
//! How "largest" is chosen, from contract §3/§6 and the api's validation:
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

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use filament_proto::v1 as proto;
use filament_proto::v1::event::Payload;
use filament_proto::v1::markdown_token::Kind;
use filament_wire::{EncodeError, Frame, MAX_FRAME_BYTES, encode_event, encode_frames, event_type};
use serde_json::Value;

const GUILD: &str = "01HZX3N4B5C6D7E8F9G0H1J2K3";
const CHANNEL: &str = "01HZX3N4B5C6D7E8F9G0H1J2K4";
/// The user an event is about.
const USER: &str = "01HZX3N4B5C6D7E8F9G0H1J2K5";
/// Whoever made the change (`actor_user_id`), or the other party.
const ACTOR: &str = "01HZX3N4B5C6D7E8F9G0H1J2K6";
/// The message, role, attachment or friend request an event names.
const ITEM: &str = "01HZX3N4B5C6D7E8F9G0H1J2K7";

/// No legal integer prints longer.
const MAX_INT: i64 = i64::MAX;

/// Guild and channel names: 1–64 bytes of printable ASCII (`domain::Name`).
const NAME_BYTES: usize = 64;
/// Role names: 1–32 bytes, no control characters (`roles::RoleName`).
const ROLE_NAME_BYTES: usize = 32;
/// Usernames: 3–32 bytes of `[A-Za-z0-9_.]` (`domain::Username`).
const USERNAME_BYTES: usize = 32;
/// Reaction emoji: 1–32 characters, no whitespace or control characters.
const EMOJI_CHARS: usize = 32;
/// Message content (`domain::MessageContent`).
const CONTENT_BYTES: usize = 2000;
/// Profile "about" text (`profiles::AboutMarkdown`).
const ABOUT_BYTES: usize = 2048;
/// Attachments per message, and their filename: 1–128 bytes without `/`,
/// `\` or control characters.
const ATTACHMENTS: usize = 5;
const FILENAME_BYTES: usize = 128;
/// The longest common media type the `infer` crate reports.
const LONGEST_MIME: &str =
    "application/vnd.openxmlformats-officedocument.presentationml.presentation";
/// Role ids in a reorder: the DTO's cap (only 62 of a guild's 64 roles are
/// not system roles, so this is an over-estimate).
const REORDERED_ROLES: usize = 64;
/// Voice participants per channel (`roster::Limits`).
const VOICE_PARTICIPANTS: usize = 512;
/// Users present in a guild: no hard cap; any number must get through.
const PRESENT_USERS: usize = 5000;
/// The api tokenizer's caps (`services/api/src/markdown.rs`).
const MAX_TOKENS: usize = 4096;
const MAX_INLINE_BYTES: usize = 4096;

/// What must happen to an event's largest legal payload.
enum Expect {
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
struct Row {
    event_type: &'static str,
    expect: Expect,
    payload: fn() -> Payload,
}

fn table() -> Vec<Row> {
    use Expect::{Fits, RefusedAtRest, Splits};
    let messages = "services/api/src/http/messages.rs";
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
        // A new message carries no reactions (contract §3.6). Plain content
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
                handler: "services/api/src/http/profiles.rs",
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
const COLOR: &str = "#FFFFFF";

/// A ULID-shaped id, distinct per `n`.
fn id(n: usize) -> String {
    format!("01HZX3N4B5C6D7E8F9{n:08}")
}

fn actor() -> Option<String> {
    Some(ACTOR.into())
}

/// `bytes` bytes of `"`: printable ASCII, and two JSON bytes each.
fn escaped(bytes: usize) -> String {
    "\"".repeat(bytes)
}

/// The longest username; its alphabet never needs escaping.
fn username() -> String {
    "u".repeat(USERNAME_BYTES)
}

fn identity(user_id: &str) -> String {
    format!("u.{user_id}.{GUILD}.{CHANNEL}")
}

fn participant(user_id: String) -> proto::VoiceParticipant {
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
fn every_permission() -> Vec<i32> {
    let all: Vec<i32> = (1..)
        .map_while(|raw| proto::Permission::try_from(raw).ok())
        .map(i32::from)
        .collect();
    assert_eq!(all.len(), filament_wire::Permission::ALL.len());
    all
}

/// An override may not allow and deny the same permission; all 12 in one
/// list is the longest split (one more comma than two lists of six).
fn every_permission_allowed() -> proto::OverrideFields {
    proto::OverrideFields {
        allow: every_permission(),
        deny: Vec::new(),
    }
}

fn attachments() -> Vec<proto::Attachment> {
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

fn token(kind: Kind) -> proto::MarkdownToken {
    proto::MarkdownToken { kind: Some(kind) }
}

fn marker(marker: proto::MarkdownMarker) -> proto::MarkdownToken {
    token(Kind::Marker(marker.into()))
}

/// How many bytes of link destinations pulldown-cmark (the api's markdown
/// parser) copies into reference-link uses before it leaves later uses as
/// plain text: its `link_ref_expansion_limit`, for any source under 100 000
/// bytes. A use is expanded while some of this is left.
const EXPANSION_FUEL: usize = 100_000;

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
fn amplified_markdown(bytes: usize) -> (String, Vec<proto::MarkdownToken>) {
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

// ---------------------------------------------------------------------------
// Checks.
// ---------------------------------------------------------------------------

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
