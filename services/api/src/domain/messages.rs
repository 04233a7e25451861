//! Posting a message: the one use case behind the REST route
//! (`POST …/messages`) and a client `message_create` on the gateway
//! (`EdgeAccess.CreateMessage`), and the proto shapes of a message that
//! both adapters answer with.
//!
//! The write stores its event in the event outbox with the message and
//! publishes it after the commit (`crate::outbox`).

use filament_proto::v1 as pb;
use ulid::Ulid;

// Attachments one message may carry.
use filament_proto::limits::MAX_ATTACHMENTS_PER_MESSAGE as MAX_ATTACHMENTS;

use crate::clock::now_unix;
use crate::domain::idempotency::IdempotencyKey;
use crate::domain::{MessageContent, parse_id};
use crate::error::{ApiError, ApiResult};
use crate::outbox::Pending;
use crate::publish;
use crate::state::AppState;
use crate::store::{AttachmentRecord, MessageInsert, MessageRecord};

/// HTTP 200, the status an idempotent replay of a posted message answers.
const POSTED_STATUS: u16 = 200;

/// A new message's content and attachments, validated together: the
/// content may be empty only when something is attached.
#[derive(Debug)]
pub struct NewMessage {
    content: String,
    attachment_ids: Vec<Ulid>,
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
    author: Ulid,
    guild_id: Ulid,
    channel_id: Ulid,
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
    let pending = Pending::new(state, event);
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
    pending.publish(state).await;
    Ok(body)
}

/// The attachments `new` names: only the author's own, unused uploads to
/// this channel.
async fn own_unused_attachments(
    state: &AppState,
    author: Ulid,
    guild_id: Ulid,
    channel_id: Ulid,
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
