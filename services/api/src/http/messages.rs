//! `/guilds/{g}/channels/{c}/messages`: create (optionally with uploaded
//! attachments), list (with attachments and the caller's view of the
//! reactions), edit and delete.
//!
//! Every write stores its event in the event outbox with the change and
//! publishes it after the commit (`crate::outbox`).
//!
//! Edits and deletes are the author's, or a moderator's (channel
//! `delete_message`); a moderator acting on someone else's message leaves
//! an audit entry.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Response};
use filament_proto::v1::{self as pb, event};
use serde::{Deserialize, Serialize};
use ulid::Ulid;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use crate::clock::now_unix;
use crate::domain::messages::{self, NewMessage, proto_attachment, proto_message, wire_message};
use crate::domain::permissions::{GuildAccess, Permission};
use crate::domain::{MessageContent, page_limit, parse_id};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::attachments::{remove_file, storage};
use crate::http::extract::{AuthUser, Ids, JsonBody, QueryParams};
use crate::http::idempotency::Keyed;
use crate::http::openapi::{ApiRouter, ChannelPath, Id, MessagePath};
use crate::http::reactions::proto_reaction;
use crate::outbox::Pending;
use crate::publish;
use crate::state::AppState;
use crate::store::{HistoryCursor, MessageRecord};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMessageDto {
    /// 1–2000 bytes; may be empty when something is attached.
    #[schema(max_length = 2000)]
    content: String,
    /// Up to 5 distinct uploads of the caller's to this channel, not yet
    /// used by a message.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Id>>, max_items = 5)]
    attachment_ids: Option<Vec<String>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditMessageDto {
    /// 1–2000 bytes.
    #[schema(min_length = 1, max_length = 2000)]
    content: String,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Page size, 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// Only messages older than this one, newest first.
    #[param(value_type = Option<Id>)]
    before: Option<String>,
    /// Only messages newer than this one, oldest first: what a client that
    /// reconnects missed since the last message it has. Not with `before`.
    #[param(value_type = Option<Id>)]
    after: Option<String>,
}

impl HistoryQuery {
    /// The page the query asks for: a malformed id, or `before` and
    /// `after` together, is a bad request.
    fn cursor(&self) -> ApiResult<HistoryCursor> {
        match (self.before.as_deref(), self.after.as_deref()) {
            (None, None) => Ok(HistoryCursor::Latest),
            (Some(before), None) => parse_id(before).map(HistoryCursor::Before),
            (None, Some(after)) => parse_id(after).map(HistoryCursor::After),
            (Some(_), Some(_)) => Err(ApiError::InvalidRequest),
        }
    }
}

/// One page of history. `next_before` is always the page's oldest message,
/// so it continues backwards from either kind of page; an `after` page adds
/// `next_after`, its newest.
#[derive(Serialize, ToSchema)]
pub struct MessagePage {
    /// Newest first; oldest first when the request had `after`.
    messages: Vec<filament_wire::Message>,
    /// The `before` of the next older page: this page's oldest message;
    /// `null` when this page is empty.
    #[schema(required = true)]
    next_before: Option<String>,
    /// Only when the request had `after`: the `after` of the next newer
    /// page, this page's newest message; `null` when this page is empty
    /// (nothing newer yet: keep the `after` you sent).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    next_after: Option<Option<String>>,
}

impl MessagePage {
    /// `records` in the order the store answered `cursor`.
    fn new(
        cursor: HistoryCursor,
        records: &[MessageRecord],
        messages: Vec<filament_wire::Message>,
    ) -> Self {
        let (oldest, newest) = match cursor {
            HistoryCursor::After(_) => (records.first(), records.last()),
            HistoryCursor::Latest | HistoryCursor::Before(_) => (records.last(), records.first()),
        };
        let id = |record: Option<&MessageRecord>| record.map(|m| m.message_id.to_string());
        Self {
            messages,
            next_before: id(oldest),
            next_after: matches!(cursor, HistoryCursor::After(_)).then(|| id(newest)),
        }
    }
}

impl TryFrom<CreateMessageDto> for NewMessage {
    type Error = ApiError;

    fn try_from(dto: CreateMessageDto) -> Result<Self, Self::Error> {
        let raw_ids = dto.attachment_ids.unwrap_or_default();
        NewMessage::parse(dto.content, &raw_ids)
    }
}

/// Takes an `Idempotency-Key` (`http::idempotency`): a retry with the key
/// of a message that was posted answers that message, and posts nothing.
#[utoipa::path(
    post,
    path = "/guilds/{guild_id}/channels/{channel_id}/messages",
    tag = "messages",
    security(("bearer" = [])),
    params(
        ChannelPath,
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry answer the first request's message instead of posting again."),
    ),
    request_body = CreateMessageDto,
    responses(
        (status = 200, description = "The posted message.", body = filament_wire::Message),
        (status = 403, description = "Cannot view the channel (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such channel in the guild (`not_found`).", body = ErrorBody),
        (status = 409, description = "A concurrent request holds the `Idempotency-Key` (`idempotency_key_reused`).", body = ErrorBody),
        (status = 422, description = "The body has the wrong shape, or the `Idempotency-Key` was used for another request (`invalid_request`, `idempotency_key_reused`).", body = ErrorBody),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids([guild_id, channel_id]): Ids<2>,
    headers: HeaderMap,
    JsonBody(dto): JsonBody<CreateMessageDto>,
) -> ApiResult<Response> {
    let route = format!("POST /guilds/{guild_id}/channels/{channel_id}/messages");
    let attachments = dto.attachment_ids.as_deref().unwrap_or_default().join(",");
    let keyed = Keyed::from_headers(
        &headers,
        user.user_id,
        &[&route, &dto.content, &attachments],
    )?;
    if let Some(keyed) = &keyed
        && let Some(original) = keyed.replay(&state).await?
    {
        return Ok(original);
    }
    let new = NewMessage::try_from(dto)?;
    let posted = messages::post(
        &state,
        user.user_id,
        guild_id,
        channel_id,
        new,
        keyed.as_ref().map(Keyed::key),
    )
    .await;
    match (posted, &keyed) {
        (Ok(message), _) => Ok(Json(message).into_response()),
        // A concurrent request with the key committed first: answer what
        // it answered.
        (Err(ApiError::IdempotencyKeyTaken), Some(keyed)) => keyed
            .replay(&state)
            .await?
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("idempotency key vanished"))),
        (Err(err), _) => Err(err),
    }
}

#[utoipa::path(
    get,
    path = "/guilds/{guild_id}/channels/{channel_id}/messages",
    tag = "messages",
    security(("bearer" = [])),
    params(ChannelPath, HistoryQuery),
    responses(
        (status = 200, description = "A page of history: newest first, or oldest first after `after`.", body = MessagePage),
        (status = 400, description = "A malformed path id, `limit`, `before` or `after`, or `before` and `after` together (`invalid_request`).", body = ErrorBody),
        (status = 403, description = "Cannot view the channel (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such channel in the guild (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids([guild_id, channel_id]): Ids<2>,
    QueryParams(query): QueryParams<HistoryQuery>,
) -> ApiResult<Json<MessagePage>> {
    let limit = page_limit(query.limit, 20, 100)?;
    let cursor = query.cursor()?;
    state
        .authorizer()
        .channel(guild_id, channel_id, user.user_id)
        .await?;
    let records = state
        .store()
        .messages(guild_id, channel_id, cursor, limit)
        .await?;
    let messages = full_messages(&state, &records, user.user_id)
        .await?
        .iter()
        .map(wire_message)
        .collect::<ApiResult<_>>()?;
    Ok(Json(MessagePage::new(cursor, &records, messages)))
}

#[utoipa::path(
    patch,
    path = "/guilds/{guild_id}/channels/{channel_id}/messages/{message_id}",
    tag = "messages",
    security(("bearer" = [])),
    params(MessagePath),
    request_body = EditMessageDto,
    responses(
        (status = 200, description = "The edited message.", body = filament_wire::Message),
        (status = 403, description = "Cannot view the channel, or neither the author nor holds `delete_message` (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such channel or message (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn edit(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids([guild_id, channel_id, message_id]): Ids<3>,
    JsonBody(dto): JsonBody<EditMessageDto>,
) -> ApiResult<Json<filament_wire::Message>> {
    let content = MessageContent::try_from(dto.content)?.into_string();
    let (access, _) = state
        .authorizer()
        .channel(guild_id, channel_id, user.user_id)
        .await?;
    let mut record = state
        .store()
        .message(guild_id, channel_id, message_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let moderated = may_change(&access, &record)?;
    record.content = content;
    let event = message_update(&record, now_unix());
    publish::ensure_deliverable(&event)?;
    let pending = Pending::new(&state, event);
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
    pending.publish(&state).await;
    if moderated {
        let action = "message.edit.moderation";
        publish::audit(
            &state,
            guild_id,
            user.user_id,
            Some(record.author_id),
            action,
        )
        .await;
    }
    let full = full_messages(&state, std::slice::from_ref(&record), user.user_id).await?;
    full.first()
        .map(wire_message)
        .transpose()?
        .map(Json)
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("edited message vanished")))
}

#[utoipa::path(
    delete,
    path = "/guilds/{guild_id}/channels/{channel_id}/messages/{message_id}",
    tag = "messages",
    security(("bearer" = [])),
    params(MessagePath),
    responses(
        (status = 204, description = "Deleted, with its attachments."),
        (status = 403, description = "Cannot view the channel, or neither the author nor holds `delete_message` (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such channel or message (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids([guild_id, channel_id, message_id]): Ids<3>,
) -> ApiResult<StatusCode> {
    let (access, _) = state
        .authorizer()
        .channel(guild_id, channel_id, user.user_id)
        .await?;
    let record = state
        .store()
        .message(guild_id, channel_id, message_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let moderated = may_change(&access, &record)?;
    let event = message_delete(&record, now_unix());
    publish::ensure_deliverable(&event)?;
    let pending = Pending::new(&state, event);
    let attachments = state
        .store()
        .delete_message(guild_id, channel_id, message_id, Some(pending.row()))
        .await?
        .ok_or(ApiError::NotFound)?;
    // Published before the files go: subscribers hear of the delete as soon
    // as it committed.
    pending.publish(&state).await;
    let storage = storage(&state);
    for attachment in &attachments {
        remove_file(&storage, attachment.attachment_id).await;
    }
    if moderated {
        let action = "message.delete.moderation";
        publish::audit(
            &state,
            guild_id,
            user.user_id,
            Some(record.author_id),
            action,
        )
        .await;
    }
    Ok(StatusCode::NO_CONTENT)
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
pub(super) async fn full_messages(
    state: &AppState,
    records: &[MessageRecord],
    viewer: Ulid,
) -> ApiResult<Vec<pb::Message>> {
    let ids: Vec<Ulid> = records.iter().map(|m| m.message_id).collect();
    let mut attachments: HashMap<Ulid, Vec<pb::Attachment>> = HashMap::new();
    for attachment in state.store().attachments_of(&ids).await? {
        if let Some(message_id) = attachment.message_id {
            attachments
                .entry(message_id)
                .or_default()
                .push(proto_attachment(&attachment));
        }
    }
    let mut reactions: HashMap<Ulid, Vec<pb::Reaction>> = HashMap::new();
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

pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(edit, delete))
}
