//! The shared shapes of PROTOCOL.md §1.9: the JSON objects that appear both in
//! REST responses and inside gateway payloads.
//!
//! The api builds these for its responses and the gateway gets them from
//! proto payloads, so each shape is declared once and a REST `Message` can
//! never drift from a `message_create` one. Optional proto fields that the
//! catalogue marks nullable serialize as `null`; fields it marks "omitted"
//! carry `skip_serializing_if`.
//!
//! Each shape also derives its JSON Schema (`docs/events.json`) and its
//! OpenAPI schema (the api's REST document). These types are only ever
//! serialized, so `deny_unknown_fields` changes no behaviour: it is there
//! for both schema derives, which then close the object
//! (`additionalProperties: false`) as clients that validate strictly expect.

use filament_proto::v1 as proto;
use schemars::JsonSchema;
use serde::Serialize;
use utoipa::ToSchema;

use crate::convert::{ConvertError, convert_all, enum_list, enum_value};
use crate::enums::{ChannelKind, Permission, Visibility};
use crate::markdown::MarkdownToken;

/// `{guild_id, name, visibility}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Guild {
    pub guild_id: String,
    pub name: String,
    pub visibility: Visibility,
}

/// `{channel_id, name, kind}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    pub channel_id: String,
    pub name: String,
    pub kind: ChannelKind,
}

impl TryFrom<&proto::Channel> for Channel {
    type Error = ConvertError;

    fn try_from(channel: &proto::Channel) -> Result<Self, Self::Error> {
        Ok(Self {
            channel_id: channel.channel_id.clone(),
            name: channel.name.clone(),
            kind: enum_value("Channel.kind", channel.kind)?,
        })
    }
}

/// A user profile (`GET /auth/me`, profile routes). `about_markdown_tokens`
/// is always present here, unlike in `profile_update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub user_id: String,
    pub username: String,
    pub about_markdown: String,
    pub about_markdown_tokens: Vec<MarkdownToken>,
    pub avatar_version: i64,
    pub banner_version: i64,
}

/// A chat message, with its tokens, attachments (≤5) and reactions (≤64).
/// `message_create` sends this object itself as `d`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub message_id: String,
    pub guild_id: String,
    pub channel_id: String,
    pub author_id: String,
    pub content: String,
    pub markdown_tokens: Vec<MarkdownToken>,
    pub attachments: Vec<Attachment>,
    pub reactions: Vec<Reaction>,
    pub created_at_unix: i64,
}

impl TryFrom<&proto::Message> for Message {
    type Error = ConvertError;

    fn try_from(message: &proto::Message) -> Result<Self, Self::Error> {
        Ok(Self {
            message_id: message.message_id.clone(),
            guild_id: message.guild_id.clone(),
            channel_id: message.channel_id.clone(),
            author_id: message.author_id.clone(),
            content: message.content.clone(),
            markdown_tokens: convert_all(&message.markdown_tokens)?,
            attachments: message.attachments.iter().map(Attachment::from).collect(),
            reactions: message.reactions.iter().map(Reaction::from).collect(),
            created_at_unix: message.created_at_unix,
        })
    }
}

/// An uploaded file bound to a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub attachment_id: String,
    pub guild_id: String,
    pub channel_id: String,
    pub owner_id: String,
    pub filename: String,
    pub mime_type: String,
    pub size_bytes: i64,
    pub sha256_hex: String,
}

impl From<&proto::Attachment> for Attachment {
    fn from(attachment: &proto::Attachment) -> Self {
        Self {
            attachment_id: attachment.attachment_id.clone(),
            guild_id: attachment.guild_id.clone(),
            channel_id: attachment.channel_id.clone(),
            owner_id: attachment.owner_id.clone(),
            filename: attachment.filename.clone(),
            mime_type: attachment.mime_type.clone(),
            size_bytes: attachment.size_bytes,
            sha256_hex: attachment.sha256_hex.clone(),
        }
    }
}

/// One emoji's reactions on a message. The client rejects an empty
/// `reactor_user_ids` array, so an empty list is omitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reaction {
    pub emoji: String,
    pub count: i64,
    pub reacted_by_me: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1))]
    #[schema(min_items = 1)]
    pub reactor_user_ids: Vec<String>,
}

impl From<&proto::Reaction> for Reaction {
    fn from(reaction: &proto::Reaction) -> Self {
        Self {
            emoji: reaction.emoji.clone(),
            count: reaction.count,
            reacted_by_me: reaction.reacted_by_me,
            reactor_user_ids: reaction.reactor_user_ids.clone(),
        }
    }
}

/// A guild role as REST returns it: `color_hex` is `"#RRGGBB"` or `null`.
/// (`workspace_role_create` omits a null color instead; see
/// [`crate::payloads::CreatedRole`].)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Role {
    pub role_id: String,
    pub name: String,
    pub position: i64,
    pub is_system: bool,
    pub permissions: Vec<Permission>,
    // Always sent, `null` included; utoipa would otherwise make an
    // `Option` optional.
    #[schema(required = true)]
    pub color_hex: Option<String>,
}

impl TryFrom<&proto::Role> for Role {
    type Error = ConvertError;

    fn try_from(role: &proto::Role) -> Result<Self, Self::Error> {
        Ok(Self {
            role_id: role.role_id.clone(),
            name: role.name.clone(),
            position: role.position,
            is_system: role.is_system,
            permissions: enum_list("Role.permissions", &role.permissions)?,
            color_hex: role.color_hex.clone(),
        })
    }
}

/// A voice participant (PROTOCOL.md §6.3); every flag is always sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(clippy::struct_excessive_bools)] // The shape of PROTOCOL.md §6.3, flag for flag.
pub struct VoiceParticipant {
    pub user_id: String,
    pub identity: String,
    pub joined_at_unix: i64,
    pub updated_at_unix: i64,
    pub is_muted: bool,
    pub is_deafened: bool,
    pub is_speaking: bool,
    pub is_video_enabled: bool,
    pub is_screen_share_enabled: bool,
}

impl From<&proto::VoiceParticipant> for VoiceParticipant {
    fn from(participant: &proto::VoiceParticipant) -> Self {
        Self {
            user_id: participant.user_id.clone(),
            identity: participant.identity.clone(),
            joined_at_unix: participant.joined_at_unix,
            updated_at_unix: participant.updated_at_unix,
            is_muted: participant.is_muted,
            is_deafened: participant.is_deafened,
            is_speaking: participant.is_speaking,
            is_video_enabled: participant.is_video_enabled,
            is_screen_share_enabled: participant.is_screen_share_enabled,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn empty_reactor_ids_are_omitted() {
        let reaction = Reaction {
            emoji: "👍".into(),
            count: 1,
            reacted_by_me: true,
            reactor_user_ids: Vec::new(),
        };
        assert_eq!(
            serde_json::to_value(&reaction).expect("serializes"),
            json!({"emoji": "👍", "count": 1, "reacted_by_me": true})
        );
    }

    #[test]
    fn rest_role_sends_a_null_color() {
        let role = proto::Role {
            role_id: "01HZX3N4B5C6D7E8F9G0H1J2K3".into(),
            name: "member".into(),
            position: 1,
            is_system: false,
            permissions: vec![proto::Permission::CreateMessage as i32],
            color_hex: None,
        };
        let role = Role::try_from(&role).expect("valid role");
        assert_eq!(
            serde_json::to_value(&role).expect("serializes")["color_hex"],
            json!(null)
        );
    }

    #[test]
    fn unknown_permission_fails_the_role() {
        let role = proto::Role {
            permissions: vec![proto::Permission::CreateMessage as i32, 4096],
            ..proto::Role::default()
        };
        assert_eq!(
            Role::try_from(&role),
            Err(ConvertError::UnknownEnum {
                field: "Role.permissions",
                value: 4096
            })
        );
    }

    #[test]
    fn unspecified_channel_kind_fails_the_channel() {
        let channel = proto::Channel {
            kind: proto::ChannelKind::Unspecified as i32,
            ..proto::Channel::default()
        };
        assert!(Channel::try_from(&channel).is_err());
    }
}
