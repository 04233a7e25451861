//! Golden frames: one realistic proto event per gateway event type, encoded
//! and compared with the exact JSON shape of PROTOCOL.md §5.4 (including which
//! optional fields are omitted and which are `null`).

use filament_proto::v1 as proto;
use filament_proto::v1::event::Payload;
use filament_proto::v1::markdown_token::Kind;
use filament_wire::{MAX_FRAME_BYTES, encode_event};
use serde_json::{Value, json};

const GUILD: &str = "01HZX3N4B5C6D7E8F9G0H1J2K3";
const CHANNEL: &str = "01HZX3N4B5C6D7E8F9G0H1J2K4";
const USER: &str = "01HZX3N4B5C6D7E8F9G0H1J2K5";
const ACTOR: &str = "01HZX3N4B5C6D7E8F9G0H1J2K6";
const MESSAGE: &str = "01HZX3N4B5C6D7E8F9G0H1J2K7";
const ROLE: &str = "01HZX3N4B5C6D7E8F9G0H1J2K8";
const ROLE_2: &str = "01HZX3N4B5C6D7E8F9G0H1J2K9";
const ATTACHMENT: &str = "01HZX3N4B5C6D7E8F9G0H1J2KA";
const REQUEST: &str = "01HZX3N4B5C6D7E8F9G0H1J2KB";
const FRIEND: &str = "01HZX3N4B5C6D7E8F9G0H1J2KC";
const AT: i64 = 1_767_225_600;
const IDENTITY: &str =
    "u.01HZX3N4B5C6D7E8F9G0H1J2K5.01HZX3N4B5C6D7E8F9G0H1J2K3.01HZX3N4B5C6D7E8F9G0H1J2K4";

/// Encodes `payload` and checks the whole frame: `v`, `t` and the exact `d`.
fn assert_frame(payload: Payload, event_type: &str, d: &Value) {
    let event = proto::Event {
        audience: None,
        published_at_unix_ms: 1_767_225_600_123,
        event_id: String::new(),
        positions: Vec::new(),
        payload: Some(payload),
    };
    let frame = encode_event(&event, MAX_FRAME_BYTES).expect("event encodes");
    assert_eq!(frame.event_type, event_type);
    let frame: Value = serde_json::from_slice(&frame.bytes).expect("frame is JSON");
    assert_eq!(frame, json!({"v": 1, "t": event_type, "d": d}));
}

fn marker(marker: proto::MarkdownMarker) -> proto::MarkdownToken {
    proto::MarkdownToken {
        kind: Some(Kind::Marker(marker as i32)),
    }
}

fn token(kind: Kind) -> proto::MarkdownToken {
    proto::MarkdownToken { kind: Some(kind) }
}

/// `**Hi** see https://example.com`, as the api tokenizes it.
fn tokens() -> Vec<proto::MarkdownToken> {
    use proto::MarkdownMarker as M;
    vec![
        marker(M::ParagraphStart),
        marker(M::StrongStart),
        token(Kind::Text("Hi".into())),
        marker(M::StrongEnd),
        token(Kind::Text(" see ".into())),
        token(Kind::LinkStartHref("https://example.com".into())),
        token(Kind::Text("https://example.com".into())),
        marker(M::LinkEnd),
        marker(M::ParagraphEnd),
    ]
}

fn tokens_json() -> Value {
    json!([
        {"type": "paragraph_start"},
        {"type": "strong_start"},
        {"type": "text", "text": "Hi"},
        {"type": "strong_end"},
        {"type": "text", "text": " see "},
        {"type": "link_start", "href": "https://example.com"},
        {"type": "text", "text": "https://example.com"},
        {"type": "link_end"},
        {"type": "paragraph_end"},
    ])
}

fn participant(user_id: &str, muted: bool) -> proto::VoiceParticipant {
    proto::VoiceParticipant {
        user_id: user_id.into(),
        identity: IDENTITY.into(),
        joined_at_unix: AT,
        updated_at_unix: AT + 5,
        is_muted: muted,
        is_deafened: false,
        is_speaking: false,
        is_video_enabled: true,
        is_screen_share_enabled: false,
    }
}

fn participant_json(user_id: &str, muted: bool) -> Value {
    json!({
        "user_id": user_id,
        "identity": IDENTITY,
        "joined_at_unix": AT,
        "updated_at_unix": AT + 5,
        "is_muted": muted,
        "is_deafened": false,
        "is_speaking": false,
        "is_video_enabled": true,
        "is_screen_share_enabled": false,
    })
}

fn permissions(list: &[proto::Permission]) -> Vec<i32> {
    list.iter().map(|p| *p as i32).collect()
}

#[test]
fn ready() {
    let payload = Payload::Ready(proto::Ready {
        user_id: USER.into(),
    });
    assert_frame(payload, "ready", &json!({"user_id": USER}));
}

#[test]
fn subscribed() {
    let payload = Payload::Subscribed(proto::Subscribed {
        guild_id: GUILD.into(),
        channel_id: CHANNEL.into(),
    });
    assert_frame(
        payload,
        "subscribed",
        &json!({"guild_id": GUILD, "channel_id": CHANNEL}),
    );
}

#[test]
fn resumed() {
    let payload = Payload::Resumed(proto::Resumed {
        scope: format!("g:{GUILD}"),
        replayed: 3,
        resync: false,
    });
    assert_frame(
        payload,
        "resumed",
        &json!({"scope": format!("g:{GUILD}"), "replayed": 3, "resync": false}),
    );
    let refused = Payload::Resumed(proto::Resumed {
        scope: format!("u:{GUILD}"),
        replayed: 0,
        resync: true,
    });
    assert_frame(
        refused,
        "resumed",
        &json!({"scope": format!("u:{GUILD}"), "replayed": 0, "resync": true}),
    );
}

#[test]
fn pong() {
    let payload = Payload::Pong(proto::Pong { nonce: "n1".into() });
    assert_frame(payload, "pong", &json!({"nonce": "n1"}));
    // A ping without a nonce is answered with an empty one.
    let bare = Payload::Pong(proto::Pong::default());
    assert_frame(bare, "pong", &json!({"nonce": ""}));
}

#[test]
fn presence_sync() {
    let payload = Payload::PresenceSync(proto::PresenceSync {
        guild_id: GUILD.into(),
        user_ids: vec![USER.into(), ACTOR.into()],
    });
    assert_frame(
        payload,
        "presence_sync",
        &json!({"guild_id": GUILD, "user_ids": [USER, ACTOR]}),
    );
}

#[test]
fn presence_update() {
    let payload = Payload::PresenceUpdate(proto::PresenceUpdate {
        guild_id: GUILD.into(),
        user_id: USER.into(),
        status: proto::PresenceStatus::Offline as i32,
    });
    assert_frame(
        payload,
        "presence_update",
        &json!({"guild_id": GUILD, "user_id": USER, "status": "offline"}),
    );
}

#[test]
fn message_create_is_the_flat_message() {
    let message = proto::Message {
        message_id: MESSAGE.into(),
        guild_id: GUILD.into(),
        channel_id: CHANNEL.into(),
        author_id: USER.into(),
        content: "**Hi** see https://example.com".into(),
        markdown_tokens: tokens(),
        attachments: vec![proto::Attachment {
            attachment_id: ATTACHMENT.into(),
            guild_id: GUILD.into(),
            channel_id: CHANNEL.into(),
            owner_id: USER.into(),
            filename: "cat.png".into(),
            mime_type: "image/png".into(),
            size_bytes: 48_213,
            sha256_hex: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        }],
        reactions: vec![
            proto::Reaction {
                emoji: "👍".into(),
                count: 2,
                reacted_by_me: true,
                reactor_user_ids: vec![USER.into(), ACTOR.into()],
            },
            proto::Reaction {
                emoji: "🎉".into(),
                count: 1,
                reacted_by_me: false,
                reactor_user_ids: Vec::new(),
            },
        ],
        created_at_unix: AT,
    };
    let payload = Payload::MessageCreate(proto::MessageCreate {
        message: Some(message),
    });
    assert_frame(
        payload,
        "message_create",
        &json!({
            "message_id": MESSAGE,
            "guild_id": GUILD,
            "channel_id": CHANNEL,
            "author_id": USER,
            "content": "**Hi** see https://example.com",
            "markdown_tokens": tokens_json(),
            "attachments": [{
                "attachment_id": ATTACHMENT,
                "guild_id": GUILD,
                "channel_id": CHANNEL,
                "owner_id": USER,
                "filename": "cat.png",
                "mime_type": "image/png",
                "size_bytes": 48_213,
                "sha256_hex": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            }],
            "reactions": [
                {"emoji": "👍", "count": 2, "reacted_by_me": true, "reactor_user_ids": [USER, ACTOR]},
                {"emoji": "🎉", "count": 1, "reacted_by_me": false},
            ],
            "created_at_unix": AT,
        }),
    );
}

#[test]
fn message_update() {
    let payload = Payload::MessageUpdate(proto::MessageUpdate {
        guild_id: GUILD.into(),
        channel_id: CHANNEL.into(),
        message_id: MESSAGE.into(),
        updated_fields: Some(proto::MessageContentFields {
            content: "**Hi** see https://example.com".into(),
            markdown_tokens: tokens(),
        }),
        updated_at_unix: AT,
    });
    assert_frame(
        payload,
        "message_update",
        &json!({
            "guild_id": GUILD,
            "channel_id": CHANNEL,
            "message_id": MESSAGE,
            "updated_fields": {
                "content": "**Hi** see https://example.com",
                "markdown_tokens": tokens_json(),
            },
            "updated_at_unix": AT,
        }),
    );
}

#[test]
fn message_delete() {
    let payload = Payload::MessageDelete(proto::MessageDelete {
        guild_id: GUILD.into(),
        channel_id: CHANNEL.into(),
        message_id: MESSAGE.into(),
        deleted_at_unix: AT,
    });
    assert_frame(
        payload,
        "message_delete",
        &json!({"guild_id": GUILD, "channel_id": CHANNEL, "message_id": MESSAGE, "deleted_at_unix": AT}),
    );
}

#[test]
fn message_reaction() {
    let payload = Payload::MessageReaction(proto::MessageReaction {
        guild_id: GUILD.into(),
        channel_id: CHANNEL.into(),
        message_id: MESSAGE.into(),
        emoji: "👍".into(),
        count: 3,
        operation: proto::ReactionOperation::Add as i32,
        actor_user_id: ACTOR.into(),
    });
    assert_frame(
        payload,
        "message_reaction",
        &json!({
            "guild_id": GUILD,
            "channel_id": CHANNEL,
            "message_id": MESSAGE,
            "emoji": "👍",
            "count": 3,
            "operation": "add",
            "actor_user_id": ACTOR,
        }),
    );
}

#[test]
fn channel_create() {
    let payload = Payload::ChannelCreate(proto::ChannelCreate {
        guild_id: GUILD.into(),
        channel: Some(proto::Channel {
            channel_id: CHANNEL.into(),
            name: "lounge".into(),
            kind: proto::ChannelKind::Voice as i32,
        }),
    });
    assert_frame(
        payload,
        "channel_create",
        &json!({"guild_id": GUILD, "channel": {"channel_id": CHANNEL, "name": "lounge", "kind": "voice"}}),
    );
}

#[test]
fn channel_update() {
    let payload = Payload::ChannelUpdate(proto::ChannelUpdate {
        guild_id: GUILD.into(),
        channel_id: CHANNEL.into(),
        updated_fields: Some(proto::ChannelFields {
            name: Some("general".into()),
        }),
        updated_at_unix: AT,
        actor_user_id: Some(ACTOR.into()),
    });
    assert_frame(
        payload,
        "channel_update",
        &json!({
            "guild_id": GUILD,
            "channel_id": CHANNEL,
            "updated_fields": {"name": "general"},
            "updated_at_unix": AT,
            "actor_user_id": ACTOR,
        }),
    );
}

#[test]
fn channel_update_omits_absent_fields() {
    let payload = Payload::ChannelUpdate(proto::ChannelUpdate {
        guild_id: GUILD.into(),
        channel_id: CHANNEL.into(),
        updated_fields: Some(proto::ChannelFields { name: None }),
        updated_at_unix: AT,
        actor_user_id: None,
    });
    assert_frame(
        payload,
        "channel_update",
        &json!({"guild_id": GUILD, "channel_id": CHANNEL, "updated_fields": {}, "updated_at_unix": AT}),
    );
}

#[test]
fn channel_delete() {
    let payload = Payload::ChannelDelete(proto::ChannelDelete {
        guild_id: GUILD.into(),
        channel_id: CHANNEL.into(),
        deleted_at_unix: AT,
        actor_user_id: None,
    });
    assert_frame(
        payload,
        "channel_delete",
        &json!({"guild_id": GUILD, "channel_id": CHANNEL, "deleted_at_unix": AT}),
    );
}

#[test]
fn workspace_update() {
    let payload = Payload::WorkspaceUpdate(proto::WorkspaceUpdate {
        guild_id: GUILD.into(),
        updated_fields: Some(proto::WorkspaceFields {
            name: Some("Night Owls".into()),
            visibility: Some(proto::Visibility::Public as i32),
        }),
        updated_at_unix: AT,
        actor_user_id: Some(ACTOR.into()),
    });
    assert_frame(
        payload,
        "workspace_update",
        &json!({
            "guild_id": GUILD,
            "updated_fields": {"name": "Night Owls", "visibility": "public"},
            "updated_at_unix": AT,
            "actor_user_id": ACTOR,
        }),
    );
}

#[test]
fn workspace_update_of_visibility_only() {
    let payload = Payload::WorkspaceUpdate(proto::WorkspaceUpdate {
        guild_id: GUILD.into(),
        updated_fields: Some(proto::WorkspaceFields {
            name: None,
            visibility: Some(proto::Visibility::Private as i32),
        }),
        updated_at_unix: AT,
        actor_user_id: None,
    });
    assert_frame(
        payload,
        "workspace_update",
        &json!({"guild_id": GUILD, "updated_fields": {"visibility": "private"}, "updated_at_unix": AT}),
    );
}

#[test]
fn workspace_member_add() {
    let payload = Payload::WorkspaceMemberAdd(proto::WorkspaceMemberAdd {
        guild_id: GUILD.into(),
        user_id: USER.into(),
        role: proto::LegacyRole::Member as i32,
        joined_at_unix: AT,
        actor_user_id: Some(USER.into()),
    });
    assert_frame(
        payload,
        "workspace_member_add",
        &json!({
            "guild_id": GUILD,
            "user_id": USER,
            "role": "member",
            "joined_at_unix": AT,
            "actor_user_id": USER,
        }),
    );
}

#[test]
fn workspace_member_update() {
    let payload = Payload::WorkspaceMemberUpdate(proto::WorkspaceMemberUpdate {
        guild_id: GUILD.into(),
        user_id: USER.into(),
        updated_fields: Some(proto::MemberFields {
            role: proto::LegacyRole::Moderator as i32,
        }),
        updated_at_unix: AT,
        actor_user_id: Some(ACTOR.into()),
    });
    assert_frame(
        payload,
        "workspace_member_update",
        &json!({
            "guild_id": GUILD,
            "user_id": USER,
            "updated_fields": {"role": "moderator"},
            "updated_at_unix": AT,
            "actor_user_id": ACTOR,
        }),
    );
}

#[test]
fn workspace_member_remove() {
    let payload = Payload::WorkspaceMemberRemove(proto::WorkspaceMemberRemove {
        guild_id: GUILD.into(),
        user_id: USER.into(),
        reason: proto::MemberRemoveReason::Kick as i32,
        removed_at_unix: AT,
        actor_user_id: Some(ACTOR.into()),
    });
    assert_frame(
        payload,
        "workspace_member_remove",
        &json!({
            "guild_id": GUILD,
            "user_id": USER,
            "reason": "kick",
            "removed_at_unix": AT,
            "actor_user_id": ACTOR,
        }),
    );
}

#[test]
fn workspace_member_ban() {
    let payload = Payload::WorkspaceMemberBan(proto::WorkspaceMemberBan {
        guild_id: GUILD.into(),
        user_id: USER.into(),
        banned_at_unix: AT,
        actor_user_id: Some(ACTOR.into()),
    });
    assert_frame(
        payload,
        "workspace_member_ban",
        &json!({"guild_id": GUILD, "user_id": USER, "banned_at_unix": AT, "actor_user_id": ACTOR}),
    );
}

fn created_role(color_hex: Option<&str>) -> Payload {
    Payload::WorkspaceRoleCreate(proto::WorkspaceRoleCreate {
        guild_id: GUILD.into(),
        role: Some(proto::Role {
            role_id: ROLE.into(),
            name: "helpers".into(),
            position: 5,
            is_system: false,
            permissions: permissions(&[
                proto::Permission::DeleteMessage,
                proto::Permission::CreateMessage,
            ]),
            color_hex: color_hex.map(str::to_owned),
        }),
        actor_user_id: Some(ACTOR.into()),
    })
}

#[test]
fn workspace_role_create_omits_a_null_color() {
    assert_frame(
        created_role(None),
        "workspace_role_create",
        &json!({
            "guild_id": GUILD,
            "role": {
                "role_id": ROLE,
                "name": "helpers",
                "position": 5,
                "is_system": false,
                "permissions": ["delete_message", "create_message"],
            },
            "actor_user_id": ACTOR,
        }),
    );
}

#[test]
fn workspace_role_create_with_a_color() {
    assert_frame(
        created_role(Some("#1ABC9C")),
        "workspace_role_create",
        &json!({
            "guild_id": GUILD,
            "role": {
                "role_id": ROLE,
                "name": "helpers",
                "position": 5,
                "is_system": false,
                "permissions": ["delete_message", "create_message"],
                "color_hex": "#1ABC9C",
            },
            "actor_user_id": ACTOR,
        }),
    );
}

fn role_update(fields: proto::RoleFields) -> Payload {
    Payload::WorkspaceRoleUpdate(proto::WorkspaceRoleUpdate {
        guild_id: GUILD.into(),
        role_id: ROLE.into(),
        updated_fields: Some(fields),
        updated_at_unix: AT,
        actor_user_id: Some(ACTOR.into()),
    })
}

fn role_update_json(fields: &Value) -> Value {
    json!({
        "guild_id": GUILD,
        "role_id": ROLE,
        "updated_fields": fields,
        "updated_at_unix": AT,
        "actor_user_id": ACTOR,
    })
}

#[test]
fn workspace_role_update_with_every_field() {
    let fields = proto::RoleFields {
        name: Some("mods".into()),
        permissions: Some(proto::PermissionList {
            permissions: permissions(&[
                proto::Permission::ManageRoles,
                proto::Permission::SubscribeStreams,
            ]),
        }),
        color_hex: Some(proto::NullableString {
            value: Some("#FF00AA".into()),
        }),
    };
    let expected = json!({
        "name": "mods",
        "permissions": ["manage_roles", "subscribe_streams"],
        "color_hex": "#FF00AA",
    });
    assert_frame(
        role_update(fields),
        "workspace_role_update",
        &role_update_json(&expected),
    );
}

#[test]
fn workspace_role_update_clearing_the_color_sends_null() {
    let fields = proto::RoleFields {
        name: None,
        permissions: None,
        color_hex: Some(proto::NullableString { value: None }),
    };
    assert_frame(
        role_update(fields),
        "workspace_role_update",
        &role_update_json(&json!({"color_hex": null})),
    );
}

#[test]
fn workspace_role_update_without_a_color_omits_it() {
    let fields = proto::RoleFields {
        name: Some("mods".into()),
        permissions: Some(proto::PermissionList {
            permissions: Vec::new(),
        }),
        color_hex: None,
    };
    assert_frame(
        role_update(fields),
        "workspace_role_update",
        &role_update_json(&json!({"name": "mods", "permissions": []})),
    );
}

#[test]
fn workspace_role_delete() {
    let payload = Payload::WorkspaceRoleDelete(proto::WorkspaceRoleDelete {
        guild_id: GUILD.into(),
        role_id: ROLE.into(),
        deleted_at_unix: AT,
        actor_user_id: Some(ACTOR.into()),
    });
    assert_frame(
        payload,
        "workspace_role_delete",
        &json!({"guild_id": GUILD, "role_id": ROLE, "deleted_at_unix": AT, "actor_user_id": ACTOR}),
    );
}

#[test]
fn workspace_role_reorder() {
    let payload = Payload::WorkspaceRoleReorder(proto::WorkspaceRoleReorder {
        guild_id: GUILD.into(),
        role_ids: vec![ROLE_2.into(), ROLE.into()],
        updated_at_unix: AT,
        actor_user_id: Some(ACTOR.into()),
    });
    assert_frame(
        payload,
        "workspace_role_reorder",
        &json!({
            "guild_id": GUILD,
            "role_ids": [ROLE_2, ROLE],
            "updated_at_unix": AT,
            "actor_user_id": ACTOR,
        }),
    );
}

#[test]
fn workspace_role_assignment_add() {
    let payload = Payload::WorkspaceRoleAssignmentAdd(proto::WorkspaceRoleAssignmentAdd {
        guild_id: GUILD.into(),
        user_id: USER.into(),
        role_id: ROLE.into(),
        assigned_at_unix: AT,
        actor_user_id: Some(ACTOR.into()),
    });
    assert_frame(
        payload,
        "workspace_role_assignment_add",
        &json!({
            "guild_id": GUILD,
            "user_id": USER,
            "role_id": ROLE,
            "assigned_at_unix": AT,
            "actor_user_id": ACTOR,
        }),
    );
}

#[test]
fn workspace_role_assignment_remove() {
    let payload = Payload::WorkspaceRoleAssignmentRemove(proto::WorkspaceRoleAssignmentRemove {
        guild_id: GUILD.into(),
        user_id: USER.into(),
        role_id: ROLE.into(),
        removed_at_unix: AT,
        actor_user_id: None,
    });
    assert_frame(
        payload,
        "workspace_role_assignment_remove",
        &json!({"guild_id": GUILD, "user_id": USER, "role_id": ROLE, "removed_at_unix": AT}),
    );
}

fn override_fields() -> proto::OverrideFields {
    proto::OverrideFields {
        allow: permissions(&[proto::Permission::PublishVideo]),
        deny: permissions(&[
            proto::Permission::CreateMessage,
            proto::Permission::SubscribeStreams,
        ]),
    }
}

fn override_fields_json() -> Value {
    json!({"allow": ["publish_video"], "deny": ["create_message", "subscribe_streams"]})
}

#[test]
fn workspace_channel_role_override_update() {
    let payload =
        Payload::WorkspaceChannelRoleOverrideUpdate(proto::WorkspaceChannelRoleOverrideUpdate {
            guild_id: GUILD.into(),
            channel_id: CHANNEL.into(),
            role: proto::LegacyRole::Member as i32,
            updated_fields: Some(override_fields()),
            updated_at_unix: AT,
            actor_user_id: Some(ACTOR.into()),
        });
    assert_frame(
        payload,
        "workspace_channel_role_override_update",
        &json!({
            "guild_id": GUILD,
            "channel_id": CHANNEL,
            "role": "member",
            "updated_fields": override_fields_json(),
            "updated_at_unix": AT,
            "actor_user_id": ACTOR,
        }),
    );
}

#[test]
fn workspace_channel_permission_override_update() {
    let payload = Payload::WorkspaceChannelPermissionOverrideUpdate(
        proto::WorkspaceChannelPermissionOverrideUpdate {
            guild_id: GUILD.into(),
            channel_id: CHANNEL.into(),
            target_kind: proto::OverrideTargetKind::Member as i32,
            target_id: USER.into(),
            updated_fields: Some(override_fields()),
            updated_at_unix: AT,
            actor_user_id: Some(ACTOR.into()),
        },
    );
    assert_frame(
        payload,
        "workspace_channel_permission_override_update",
        &json!({
            "guild_id": GUILD,
            "channel_id": CHANNEL,
            "target_kind": "member",
            "target_id": USER,
            "updated_fields": override_fields_json(),
            "updated_at_unix": AT,
            "actor_user_id": ACTOR,
        }),
    );
}

#[test]
fn workspace_ip_ban_sync() {
    let payload = Payload::WorkspaceIpBanSync(proto::WorkspaceIpBanSync {
        guild_id: GUILD.into(),
        summary: Some(proto::IpBanSummary {
            action: proto::IpBanAction::Upsert as i32,
            changed_count: 3,
        }),
        updated_at_unix: AT,
        actor_user_id: Some(ACTOR.into()),
    });
    assert_frame(
        payload,
        "workspace_ip_ban_sync",
        &json!({
            "guild_id": GUILD,
            "summary": {"action": "upsert", "changed_count": 3},
            "updated_at_unix": AT,
            "actor_user_id": ACTOR,
        }),
    );
}

fn profile_update(fields: proto::ProfileFields) -> Payload {
    Payload::ProfileUpdate(proto::ProfileUpdate {
        user_id: USER.into(),
        updated_fields: Some(fields),
        updated_at_unix: AT,
    })
}

#[test]
fn profile_update_of_the_username_has_no_tokens() {
    let fields = proto::ProfileFields {
        username: Some("night.owl".into()),
        about: None,
    };
    assert_frame(
        profile_update(fields),
        "profile_update",
        &json!({"user_id": USER, "updated_fields": {"username": "night.owl"}, "updated_at_unix": AT}),
    );
}

#[test]
fn profile_update_of_the_about_carries_its_tokens() {
    let fields = proto::ProfileFields {
        username: Some("night.owl".into()),
        about: Some(proto::AboutFields {
            about_markdown: "**Hi** see https://example.com".into(),
            about_markdown_tokens: tokens(),
        }),
    };
    assert_frame(
        profile_update(fields),
        "profile_update",
        &json!({
            "user_id": USER,
            "updated_fields": {
                "username": "night.owl",
                "about_markdown": "**Hi** see https://example.com",
                "about_markdown_tokens": tokens_json(),
            },
            "updated_at_unix": AT,
        }),
    );
}

#[test]
fn profile_avatar_update() {
    let payload = Payload::ProfileAvatarUpdate(proto::ProfileAvatarUpdate {
        user_id: USER.into(),
        avatar_version: AT,
        updated_at_unix: AT,
    });
    assert_frame(
        payload,
        "profile_avatar_update",
        &json!({"user_id": USER, "avatar_version": AT, "updated_at_unix": AT}),
    );
}

#[test]
fn profile_banner_update() {
    let payload = Payload::ProfileBannerUpdate(proto::ProfileBannerUpdate {
        user_id: USER.into(),
        banner_version: AT + 1,
        updated_at_unix: AT,
    });
    assert_frame(
        payload,
        "profile_banner_update",
        &json!({"user_id": USER, "banner_version": AT + 1, "updated_at_unix": AT}),
    );
}

#[test]
fn friend_request_create() {
    let payload = Payload::FriendRequestCreate(proto::FriendRequestCreate {
        request_id: REQUEST.into(),
        sender_user_id: USER.into(),
        sender_username: "night.owl".into(),
        recipient_user_id: FRIEND.into(),
        recipient_username: "early_bird".into(),
        created_at_unix: AT,
    });
    assert_frame(
        payload,
        "friend_request_create",
        &json!({
            "request_id": REQUEST,
            "sender_user_id": USER,
            "sender_username": "night.owl",
            "recipient_user_id": FRIEND,
            "recipient_username": "early_bird",
            "created_at_unix": AT,
        }),
    );
}

#[test]
fn friend_request_update() {
    let payload = Payload::FriendRequestUpdate(proto::FriendRequestUpdate {
        request_id: REQUEST.into(),
        state: "accepted".into(),
        user_id: USER.into(),
        friend_user_id: FRIEND.into(),
        friend_username: "early_bird".into(),
        friendship_created_at_unix: AT,
        updated_at_unix: AT,
        actor_user_id: Some(FRIEND.into()),
    });
    assert_frame(
        payload,
        "friend_request_update",
        &json!({
            "request_id": REQUEST,
            "state": "accepted",
            "user_id": USER,
            "friend_user_id": FRIEND,
            "friend_username": "early_bird",
            "friendship_created_at_unix": AT,
            "updated_at_unix": AT,
            "actor_user_id": FRIEND,
        }),
    );
}

#[test]
fn friend_request_delete() {
    let payload = Payload::FriendRequestDelete(proto::FriendRequestDelete {
        request_id: REQUEST.into(),
        deleted_at_unix: AT,
        actor_user_id: Some(USER.into()),
    });
    assert_frame(
        payload,
        "friend_request_delete",
        &json!({"request_id": REQUEST, "deleted_at_unix": AT, "actor_user_id": USER}),
    );
}

#[test]
fn friend_remove() {
    let payload = Payload::FriendRemove(proto::FriendRemove {
        user_id: USER.into(),
        friend_user_id: FRIEND.into(),
        removed_at_unix: AT,
        actor_user_id: Some(USER.into()),
    });
    assert_frame(
        payload,
        "friend_remove",
        &json!({"user_id": USER, "friend_user_id": FRIEND, "removed_at_unix": AT, "actor_user_id": USER}),
    );
}

#[test]
fn voice_participant_sync() {
    let payload = Payload::VoiceParticipantSync(proto::VoiceParticipantSync {
        guild_id: GUILD.into(),
        channel_id: CHANNEL.into(),
        participants: vec![participant(USER, true), participant(FRIEND, false)],
        synced_at_unix: AT,
    });
    assert_frame(
        payload,
        "voice_participant_sync",
        &json!({
            "guild_id": GUILD,
            "channel_id": CHANNEL,
            "participants": [participant_json(USER, true), participant_json(FRIEND, false)],
            "synced_at_unix": AT,
        }),
    );
}

#[test]
fn voice_participant_join() {
    let payload = Payload::VoiceParticipantJoin(proto::VoiceParticipantJoin {
        guild_id: GUILD.into(),
        channel_id: CHANNEL.into(),
        participant: Some(participant(USER, false)),
    });
    assert_frame(
        payload,
        "voice_participant_join",
        &json!({"guild_id": GUILD, "channel_id": CHANNEL, "participant": participant_json(USER, false)}),
    );
}

#[test]
fn voice_participant_leave() {
    let payload = Payload::VoiceParticipantLeave(proto::VoiceParticipantLeave {
        guild_id: GUILD.into(),
        channel_id: CHANNEL.into(),
        user_id: USER.into(),
        identity: IDENTITY.into(),
        left_at_unix: AT,
    });
    assert_frame(
        payload,
        "voice_participant_leave",
        &json!({
            "guild_id": GUILD,
            "channel_id": CHANNEL,
            "user_id": USER,
            "identity": IDENTITY,
            "left_at_unix": AT,
        }),
    );
}

#[test]
fn voice_participant_update_sends_only_changed_flags() {
    let payload = Payload::VoiceParticipantUpdate(proto::VoiceParticipantUpdate {
        guild_id: GUILD.into(),
        channel_id: CHANNEL.into(),
        user_id: USER.into(),
        identity: IDENTITY.into(),
        updated_fields: Some(proto::VoiceStateFields {
            is_muted: Some(true),
            is_deafened: Some(false),
            ..proto::VoiceStateFields::default()
        }),
        updated_at_unix: AT,
    });
    assert_frame(
        payload,
        "voice_participant_update",
        &json!({
            "guild_id": GUILD,
            "channel_id": CHANNEL,
            "user_id": USER,
            "identity": IDENTITY,
            "updated_fields": {"is_muted": true, "is_deafened": false},
            "updated_at_unix": AT,
        }),
    );
}

#[test]
fn voice_stream_publish() {
    let payload = Payload::VoiceStreamPublish(proto::VoiceStreamPublish {
        guild_id: GUILD.into(),
        channel_id: CHANNEL.into(),
        user_id: USER.into(),
        identity: IDENTITY.into(),
        stream: proto::VoiceStream::ScreenShare as i32,
        published_at_unix: AT,
    });
    assert_frame(
        payload,
        "voice_stream_publish",
        &json!({
            "guild_id": GUILD,
            "channel_id": CHANNEL,
            "user_id": USER,
            "identity": IDENTITY,
            "stream": "screen_share",
            "published_at_unix": AT,
        }),
    );
}

#[test]
fn voice_stream_unpublish() {
    let payload = Payload::VoiceStreamUnpublish(proto::VoiceStreamUnpublish {
        guild_id: GUILD.into(),
        channel_id: CHANNEL.into(),
        user_id: USER.into(),
        identity: IDENTITY.into(),
        stream: proto::VoiceStream::Microphone as i32,
        unpublished_at_unix: AT,
    });
    assert_frame(
        payload,
        "voice_stream_unpublish",
        &json!({
            "guild_id": GUILD,
            "channel_id": CHANNEL,
            "user_id": USER,
            "identity": IDENTITY,
            "stream": "microphone",
            "unpublished_at_unix": AT,
        }),
    );
}
