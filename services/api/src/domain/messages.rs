//! The message use cases behind both adapters: posting (the REST route
//! `POST …/messages` and a client `message_create` on the gateway,
//! `EdgeAccess.CreateMessage`), editing, deleting and listing a channel's
//! history; and the proto shapes of a message that the adapters answer with.
//!
//! Every write stores its event in the event outbox with the change and
//! publishes it after the commit (`crate::outbox`). Edits and deletes are
//! the author's, or a moderator's (channel `delete_message`); a moderator
//! acting on someone else's message leaves an audit entry.

use std::collections::HashMap;

use filament_ids::{AttachmentId, ChannelId, GuildId, MessageId, UserId};
use filament_proto::v1::{self as pb, event};

// Attachments one message may carry.
use filament_proto::limits::MAX_ATTACHMENTS_PER_MESSAGE as MAX_ATTACHMENTS;

use crate::clock::now_unix;
use crate::domain::audit;
use crate::domain::idempotency::IdempotencyKey;
use crate::domain::permissions::{GuildAccess, Permission};
use crate::domain::reactions::proto_reaction;
use crate::domain::{MessageContent, parse_id};
use crate::error::{ApiError, ApiResult};
use crate::outbox::Pending;
use crate::publish;
use crate::state::AppState;
use crate::store::{AttachmentRecord, HistoryCursor, MessageInsert, MessageRecord};

/// HTTP 200, the status an idempotent replay of a posted message answers.
const POSTED_STATUS: u16 = 200;

/// A new message's content and attachments, validated together: the
/// content may be empty only when something is attached.
#[derive(Debug)]
pub struct NewMessage {
    content: String,
    attachment_ids: Vec<AttachmentId>,
}

impl NewMessage {
    /// At most [`MAX_ATTACHMENTS`] distinct attachment ids, and content
    /// that is a valid [`MessageContent`] unless it is empty with an
    /// attachment.
    pub fn parse(content: String, raw_ids: &[String]) -> ApiResult<Self> {
        if raw_ids.len() > MAX_ATTACHMENTS {
            return Err(ApiError::InvalidRequest);
        }
        let attachment_ids = raw_ids
            .iter()
            .map(|id| parse_id(id))
            .collect::<ApiResult<Vec<_>>>()?;
        let mut unique = attachment_ids.clone();
        unique.sort_unstable();
        unique.dedup();
        if unique.len() != attachment_ids.len() {
            return Err(ApiError::InvalidRequest);
        }
        let content = if content.is_empty() && !attachment_ids.is_empty() {
            content
        } else {
            MessageContent::try_from(content)?.into_string()
        };
        Ok(Self {
            content,
            attachment_ids,
        })
    }
}

/// Posts a message as `author`, recording `key`, if any, with it;
/// `ApiError::IdempotencyKeyTaken` if another request holds the key. The
/// caller has already refused IP-banned addresses.
pub async fn post(
    state: &AppState,
    author: UserId,
    guild_id: GuildId,
    channel_id: ChannelId,
    new: NewMessage,
    key: Option<&IdempotencyKey>,
) -> ApiResult<filament_wire::Message> {
    state
        .authorizer()
        .channel(guild_id, channel_id, author)
        .await?;
    let attachments = own_unused_attachments(state, author, guild_id, channel_id, &new).await?;
    let record = MessageRecord {
        message_id: state.new_id(),
        guild_id,
        channel_id,
        author_id: author,
        content: new.content,
        created_at_unix: now_unix(),
    };
    let message = pb::Message {
        attachments,
        ..proto_message(&record)
    };
    let body = wire_message(&message)?;
    let event = publish::message_create(message);
    publish::ensure_deliverable(&event)?;
    let pending = Pending::new(state.publisher(), event);
    let idempotency = key
        .map(|key| key.record(POSTED_STATUS, &body))
        .transpose()?;
    let inserted = state
        .store()
        .create_message_with_attachments(
            record,
            &new.attachment_ids,
            Some(pending.row()),
            idempotency,
        )
        .await?;
    if inserted == MessageInsert::AttachmentUnavailable {
        // Another message took an upload since it was checked above.
        return Err(ApiError::InvalidRequest);
    }
    pending.publish(state.publisher()).await;
    Ok(body)
}

/// The attachments `new` names: only the author's own, unused uploads to
/// this channel.
async fn own_unused_attachments(
    state: &AppState,
    author: UserId,
    guild_id: GuildId,
    channel_id: ChannelId,
    new: &NewMessage,
) -> ApiResult<Vec<pb::Attachment>> {
    let mut attachments = Vec::with_capacity(new.attachment_ids.len());
    for attachment_id in &new.attachment_ids {
        let attachment = state
            .store()
            .attachment(guild_id, channel_id, *attachment_id)
            .await?
            .filter(|a| a.owner_id == author && a.message_id.is_none())
            .ok_or(ApiError::InvalidRequest)?;
        attachments.push(proto_attachment(&attachment));
    }
    Ok(attachments)
}

/// Replaces the content of a message as `editor`, its author or a
/// moderator, and answers the message as the editor sees it.
pub async fn edit(
    state: &AppState,
    editor: UserId,
    guild_id: GuildId,
    channel_id: ChannelId,
    message_id: MessageId,
    content: MessageContent,
) -> ApiResult<filament_wire::Message> {
    let (access, _) = state
        .authorizer()
        .channel(guild_id, channel_id, editor)
        .await?;
    let mut record = state
        .store()
        .message(guild_id, channel_id, message_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let moderated = may_change(&access, &record)?;
    record.content = content.into_string();
    let event = message_update(&record, now_unix());
    publish::ensure_deliverable(&event)?;
    let pending = Pending::new(state.publisher(), event);
    let edited = state
        .store()
        .edit_message(
            guild_id,
            channel_id,
            message_id,
            &record.content,
            Some(pending.row()),
        )
        .await?;
    if !edited {
        return Err(ApiError::NotFound);
    }
    pending.publish(state.publisher()).await;
    if moderated {
        let action = "message.edit.moderation";
        audit::record(state, guild_id, editor, Some(record.author_id), action).await;
    }
    let full = full_messages(state, std::slice::from_ref(&record), editor).await?;
    full.first()
        .map(wire_message)
        .transpose()?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("edited message vanished")))
}

/// Deletes a message, with its attachments, as `actor`: its author or a
/// moderator.
pub async fn delete(
    state: &AppState,
    actor: UserId,
    guild_id: GuildId,
    channel_id: ChannelId,
    message_id: MessageId,
) -> ApiResult<()> {
    let (access, _) = state
        .authorizer()
        .channel(guild_id, channel_id, actor)
        .await?;
    let record = state
        .store()
        .message(guild_id, channel_id, message_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let moderated = may_change(&access, &record)?;
    let event = message_delete(&record, now_unix());
    publish::ensure_deliverable(&event)?;
    let pending = Pending::new(state.publisher(), event);
    let attachments = state
        .store()
        .delete_message(guild_id, channel_id, message_id, Some(pending.row()))
        .await?
        .ok_or(ApiError::NotFound)?;
    // Published before the files go: subscribers hear of the delete as soon
    // as it committed.
    pending.publish(state.publisher()).await;
    let storage = crate::attachments::storage(state);
    for attachment in &attachments {
        crate::attachments::remove_file(&storage, attachment.attachment_id).await;
    }
    if moderated {
        let action = "message.delete.moderation";
        audit::record(state, guild_id, actor, Some(record.author_id), action).await;
    }
    Ok(())
}

/// One page of a channel's history, as its viewer sees it.
#[derive(Debug)]
pub struct History {
    /// The cursor the page answers.
    pub cursor: HistoryCursor,
    /// Newest first; oldest first after [`HistoryCursor::After`].
    pub messages: Vec<filament_wire::Message>,
    /// The page's oldest message, where an older page continues.
    pub oldest: Option<MessageId>,
    /// The page's newest message, where a newer page continues.
    pub newest: Option<MessageId>,
}

/// Up to `limit` messages of the channel from `cursor`, with their
/// attachments and `viewer`'s view of the reactions.
pub async fn history(
    state: &AppState,
    viewer: UserId,
    guild_id: GuildId,
    channel_id: ChannelId,
    cursor: HistoryCursor,
    limit: u32,
) -> ApiResult<History> {
    state
        .authorizer()
        .channel(guild_id, channel_id, viewer)
        .await?;
    let records = state
        .store()
        .messages(guild_id, channel_id, cursor, limit)
        .await?;
    let messages = full_messages(state, &records, viewer)
        .await?
        .iter()
        .map(wire_message)
        .collect::<ApiResult<_>>()?;
    // The store answers in the order the cursor reads.
    let (oldest, newest) = match cursor {
        HistoryCursor::After(_) => (records.first(), records.last()),
        HistoryCursor::Latest | HistoryCursor::Before(_) => (records.last(), records.first()),
    };
    let id = |record: Option<&MessageRecord>| record.map(|m| m.message_id);
    Ok(History {
        cursor,
        messages,
        oldest: id(oldest),
        newest: id(newest),
    })
}

/// Whether `access` may edit or delete the message: its author may, and so
/// may whoever holds channel `delete_message`. Returns whether that is a
/// moderation (someone else's message).
fn may_change(access: &GuildAccess, message: &MessageRecord) -> ApiResult<bool> {
    if message.author_id == access.user_id {
        return Ok(false);
    }
    access.require(Permission::DeleteMessage)?;
    Ok(true)
}

/// The messages with their attachments and reactions, as `viewer` sees
/// them, in the order given.
pub async fn full_messages(
    state: &AppState,
    records: &[MessageRecord],
    viewer: UserId,
) -> ApiResult<Vec<pb::Message>> {
    let ids: Vec<MessageId> = records.iter().map(|m| m.message_id).collect();
    let mut attachments: HashMap<MessageId, Vec<pb::Attachment>> = HashMap::new();
    for attachment in state.store().attachments_of(&ids).await? {
        if let Some(message_id) = attachment.message_id {
            attachments
                .entry(message_id)
                .or_default()
                .push(proto_attachment(&attachment));
        }
    }
    let mut reactions: HashMap<MessageId, Vec<pb::Reaction>> = HashMap::new();
    for summary in state.store().reactions_of(&ids, viewer).await? {
        reactions
            .entry(summary.message_id)
            .or_default()
            .push(proto_reaction(&summary));
    }
    Ok(records
        .iter()
        .map(|record| pb::Message {
            attachments: attachments.remove(&record.message_id).unwrap_or_default(),
            reactions: reactions.remove(&record.message_id).unwrap_or_default(),
            ..proto_message(record)
        })
        .collect())
}

fn message_update(record: &MessageRecord, updated_at_unix: i64) -> pb::Event {
    let (guild_id, channel_id) = (record.guild_id.to_string(), record.channel_id.to_string());
    publish::for_channel(
        &guild_id,
        &channel_id,
        event::Payload::MessageUpdate(pb::MessageUpdate {
            guild_id: guild_id.clone(),
            channel_id: channel_id.clone(),
            message_id: record.message_id.to_string(),
            updated_fields: Some(pb::MessageContentFields {
                content: record.content.clone(),
                markdown_tokens: crate::markdown::tokenize(&record.content),
            }),
            updated_at_unix,
        }),
    )
}

fn message_delete(record: &MessageRecord, deleted_at_unix: i64) -> pb::Event {
    let (guild_id, channel_id) = (record.guild_id.to_string(), record.channel_id.to_string());
    publish::for_channel(
        &guild_id,
        &channel_id,
        event::Payload::MessageDelete(pb::MessageDelete {
            guild_id: guild_id.clone(),
            channel_id: channel_id.clone(),
            message_id: record.message_id.to_string(),
            deleted_at_unix,
        }),
    )
}

/// A message as stored, without attachments or reactions.
pub fn proto_message(record: &MessageRecord) -> pb::Message {
    pb::Message {
        message_id: record.message_id.to_string(),
        guild_id: record.guild_id.to_string(),
        channel_id: record.channel_id.to_string(),
        author_id: record.author_id.to_string(),
        markdown_tokens: crate::markdown::tokenize(&record.content),
        content: record.content.clone(),
        attachments: Vec::new(),
        reactions: Vec::new(),
        created_at_unix: record.created_at_unix,
    }
}

pub fn proto_attachment(attachment: &AttachmentRecord) -> pb::Attachment {
    pb::Attachment {
        attachment_id: attachment.attachment_id.to_string(),
        guild_id: attachment.guild_id.to_string(),
        channel_id: attachment.channel_id.to_string(),
        owner_id: attachment.owner_id.to_string(),
        filename: attachment.filename.clone(),
        mime_type: attachment.mime_type.clone(),
        size_bytes: attachment.size_bytes,
        sha256_hex: attachment.sha256_hex.clone(),
    }
}

/// The REST body of a message: the same JSON shape the gateway sends.
pub fn wire_message(message: &pb::Message) -> ApiResult<filament_wire::Message> {
    filament_wire::Message::try_from(message)
        .map_err(|err| ApiError::Internal(anyhow::anyhow!("message shape: {err}")))
}
