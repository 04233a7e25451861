//! User-scoped payloads: profile changes and the friend graph.

use std::borrow::Cow;

use filament_proto::v1 as proto;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Serialize;
use serde_json::Value;

use crate::convert::{ConvertError, convert_all, required};
use crate::enums::FriendRequestState;
use crate::markdown::MarkdownToken;

/// `profile_update`: at least one field changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ProfileUpdate {
    pub user_id: String,
    pub updated_fields: ProfileFields,
    pub updated_at_unix: i64,
}

/// What changed in `profile_update`. Its schema is written by hand (below).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProfileFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Flattened so that `about_markdown` and its tokens are either both
    /// present or both absent: PROTOCOL.md §5.4 sends tokens only with the text.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub about: Option<AboutFields>,
}

/// A new about text and its tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct AboutFields {
    pub about_markdown: String,
    pub about_markdown_tokens: Vec<MarkdownToken>,
}

/// Written by hand because `about` is flattened and optional: a derived
/// schema would let `about_markdown` come without its tokens. The encoder
/// sends both or neither, so the schema is a union of two closed objects,
/// the second with `AboutFields`' own properties (so a renamed field there
/// cannot drift from this one).
impl JsonSchema for ProfileFields {
    fn schema_name() -> Cow<'static, str> {
        "ProfileFields".into()
    }

    fn schema_id() -> Cow<'static, str> {
        concat!(module_path!(), "::ProfileFields").into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let username = generator.subschema_for::<String>().to_value();
        let mut with_about = AboutFields::json_schema(generator);
        with_about.remove("description");
        if let Some(properties) = with_about
            .get_mut("properties")
            .and_then(Value::as_object_mut)
        {
            properties.insert("username".to_owned(), username.clone());
        }
        with_about.insert("additionalProperties".to_owned(), Value::Bool(false));
        json_schema!({
            "description": "What changed in `profile_update`: `about_markdown` and \
                            `about_markdown_tokens` come together or not at all.",
            "oneOf": [
                {
                    "type": "object",
                    "properties": { "username": username },
                    "additionalProperties": false,
                },
                with_about,
            ],
        })
    }
}

impl TryFrom<&proto::ProfileUpdate> for ProfileUpdate {
    type Error = ConvertError;

    fn try_from(update: &proto::ProfileUpdate) -> Result<Self, Self::Error> {
        let fields = required(
            "ProfileUpdate.updated_fields",
            update.updated_fields.as_ref(),
        )?;
        let about = fields
            .about
            .as_ref()
            .map(|about| -> Result<_, ConvertError> {
                Ok(AboutFields {
                    about_markdown: about.about_markdown.clone(),
                    about_markdown_tokens: convert_all(&about.about_markdown_tokens)?,
                })
            })
            .transpose()?;
        Ok(Self {
            user_id: update.user_id.clone(),
            updated_fields: ProfileFields {
                username: fields.username.clone(),
                about,
            },
            updated_at_unix: update.updated_at_unix,
        })
    }
}

/// `profile_avatar_update`: clients refetch the avatar with the new version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ProfileAvatarUpdate {
    pub user_id: String,
    pub avatar_version: i64,
    pub updated_at_unix: i64,
}

impl TryFrom<&proto::ProfileAvatarUpdate> for ProfileAvatarUpdate {
    type Error = ConvertError;

    fn try_from(update: &proto::ProfileAvatarUpdate) -> Result<Self, Self::Error> {
        Ok(Self {
            user_id: update.user_id.clone(),
            avatar_version: update.avatar_version,
            updated_at_unix: update.updated_at_unix,
        })
    }
}

/// `profile_banner_update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ProfileBannerUpdate {
    pub user_id: String,
    pub banner_version: i64,
    pub updated_at_unix: i64,
}

impl TryFrom<&proto::ProfileBannerUpdate> for ProfileBannerUpdate {
    type Error = ConvertError;

    fn try_from(update: &proto::ProfileBannerUpdate) -> Result<Self, Self::Error> {
        Ok(Self {
            user_id: update.user_id.clone(),
            banner_version: update.banner_version,
            updated_at_unix: update.updated_at_unix,
        })
    }
}

/// `friend_request_create`: sent to both parties. Also the shape of one
/// pending request in `GET /friends/requests`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FriendRequestCreate {
    pub request_id: String,
    pub sender_user_id: String,
    pub sender_username: String,
    pub recipient_user_id: String,
    pub recipient_username: String,
    pub created_at_unix: i64,
}

impl TryFrom<&proto::FriendRequestCreate> for FriendRequestCreate {
    type Error = ConvertError;

    fn try_from(create: &proto::FriendRequestCreate) -> Result<Self, Self::Error> {
        Ok(Self {
            request_id: create.request_id.clone(),
            sender_user_id: create.sender_user_id.clone(),
            sender_username: create.sender_username.clone(),
            recipient_user_id: create.recipient_user_id.clone(),
            recipient_username: create.recipient_username.clone(),
            created_at_unix: create.created_at_unix,
        })
    }
}

/// `friend_request_update`: each party gets its own copy, where `user_id`
/// is the receiver and `friend_*` the other party.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct FriendRequestUpdate {
    pub request_id: String,
    pub state: FriendRequestState,
    pub user_id: String,
    pub friend_user_id: String,
    pub friend_username: String,
    pub friendship_created_at_unix: i64,
    pub updated_at_unix: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub actor_user_id: Option<String>,
}

impl TryFrom<&proto::FriendRequestUpdate> for FriendRequestUpdate {
    type Error = ConvertError;

    fn try_from(update: &proto::FriendRequestUpdate) -> Result<Self, Self::Error> {
        let state = FriendRequestState::parse(&update.state).ok_or(ConvertError::InvalidValue {
            field: "FriendRequestUpdate.state",
        })?;
        Ok(Self {
            request_id: update.request_id.clone(),
            state,
            user_id: update.user_id.clone(),
            friend_user_id: update.friend_user_id.clone(),
            friend_username: update.friend_username.clone(),
            friendship_created_at_unix: update.friendship_created_at_unix,
            updated_at_unix: update.updated_at_unix,
            actor_user_id: update.actor_user_id.clone(),
        })
    }
}

/// `friend_request_delete`: cancelled or declined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct FriendRequestDelete {
    pub request_id: String,
    pub deleted_at_unix: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub actor_user_id: Option<String>,
}

impl TryFrom<&proto::FriendRequestDelete> for FriendRequestDelete {
    type Error = ConvertError;

    fn try_from(delete: &proto::FriendRequestDelete) -> Result<Self, Self::Error> {
        Ok(Self {
            request_id: delete.request_id.clone(),
            deleted_at_unix: delete.deleted_at_unix,
            actor_user_id: delete.actor_user_id.clone(),
        })
    }
}

/// `friend_remove`: each former friend gets its own copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct FriendRemove {
    pub user_id: String,
    pub friend_user_id: String,
    pub removed_at_unix: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub actor_user_id: Option<String>,
}

impl TryFrom<&proto::FriendRemove> for FriendRemove {
    type Error = ConvertError;

    fn try_from(remove: &proto::FriendRemove) -> Result<Self, Self::Error> {
        Ok(Self {
            user_id: remove.user_id.clone(),
            friend_user_id: remove.friend_user_id.clone(),
            removed_at_unix: remove.removed_at_unix,
            actor_user_id: remove.actor_user_id.clone(),
        })
    }
}
