//! Message payloads: `message_create`, `message_update`, `message_delete`,
//! `message_reaction`.

use filament_proto::v1 as proto;
use schemars::JsonSchema;
use serde::Serialize;

use crate::convert::{ConvertError, convert_all, enum_value, required};
use crate::enums::ReactionOperation;
use crate::markdown::MarkdownToken;
use crate::shapes::Message;

/// `message_create`: the new [`Message`] itself is `d`, flat (PROTOCOL.md §5.4),
/// not wrapped in `{guild_id, channel_id, message}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct MessageCreate(pub Message);

impl TryFrom<&proto::MessageCreate> for MessageCreate {
    type Error = ConvertError;

    fn try_from(create: &proto::MessageCreate) -> Result<Self, Self::Error> {
        let message = required("MessageCreate.message", create.message.as_ref())?;
        Message::try_from(message).map(Self)
    }
}

/// `message_update`: an edit. Both content fields are always sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct MessageUpdate {
    pub guild_id: String,
    pub channel_id: String,
    pub message_id: String,
    pub updated_fields: MessageContentFields,
    pub updated_at_unix: i64,
}

/// The edited content of `message_update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct MessageContentFields {
    pub content: String,
    pub markdown_tokens: Vec<MarkdownToken>,
}

impl TryFrom<&proto::MessageUpdate> for MessageUpdate {
    type Error = ConvertError;

    fn try_from(update: &proto::MessageUpdate) -> Result<Self, Self::Error> {
        let fields = required(
            "MessageUpdate.updated_fields",
            update.updated_fields.as_ref(),
        )?;
        Ok(Self {
            guild_id: update.guild_id.clone(),
            channel_id: update.channel_id.clone(),
            message_id: update.message_id.clone(),
            updated_fields: MessageContentFields {
                content: fields.content.clone(),
                markdown_tokens: convert_all(&fields.markdown_tokens)?,
            },
            updated_at_unix: update.updated_at_unix,
        })
    }
}

/// `message_delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct MessageDelete {
    pub guild_id: String,
    pub channel_id: String,
    pub message_id: String,
    pub deleted_at_unix: i64,
}

impl TryFrom<&proto::MessageDelete> for MessageDelete {
    type Error = ConvertError;

    fn try_from(delete: &proto::MessageDelete) -> Result<Self, Self::Error> {
        Ok(Self {
            guild_id: delete.guild_id.clone(),
            channel_id: delete.channel_id.clone(),
            message_id: delete.message_id.clone(),
            deleted_at_unix: delete.deleted_at_unix,
        })
    }
}

/// `message_reaction` (schema 2): the client accepts `operation` and
/// `actor_user_id` only together, so both are always sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct MessageReaction {
    pub guild_id: String,
    pub channel_id: String,
    pub message_id: String,
    pub emoji: String,
    pub count: i64,
    pub operation: ReactionOperation,
    pub actor_user_id: String,
}

impl TryFrom<&proto::MessageReaction> for MessageReaction {
    type Error = ConvertError;

    fn try_from(reaction: &proto::MessageReaction) -> Result<Self, Self::Error> {
        Ok(Self {
            guild_id: reaction.guild_id.clone(),
            channel_id: reaction.channel_id.clone(),
            message_id: reaction.message_id.clone(),
            emoji: reaction.emoji.clone(),
            count: reaction.count,
            operation: enum_value("MessageReaction.operation", reaction.operation)?,
            actor_user_id: reaction.actor_user_id.clone(),
        })
    }
}
