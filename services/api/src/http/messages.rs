//! `/guilds/{g}/channels/{c}/messages`: create (optionally with uploaded
//! attachments), list (with attachments and the caller's view of the
//! reactions), edit and delete.
//!
//! This adapter owns the request and response shapes; the use cases are
//! `domain::messages`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Response};
use filament_ids::{ChannelId, GuildId, MessageId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use crate::domain::messages::{self, History, NewMessage};
use crate::domain::{MessageContent, page_limit, parse_id};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::{AuthUser, Ids, JsonBody, QueryParams};
use crate::http::idempotency::Keyed;
use crate::http::openapi::{ApiRouter, ChannelPath, Id, MessagePath};
use crate::state::AppState;
use crate::store::HistoryCursor;

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

impl From<History> for MessagePage {
    fn from(history: History) -> Self {
        let id = |message: Option<MessageId>| message.map(|id| id.to_string());
        Self {
            messages: history.messages,
            next_before: id(history.oldest),
            next_after: matches!(history.cursor, HistoryCursor::After(_))
                .then(|| id(history.newest)),
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
    Ids((guild_id, channel_id)): Ids<(GuildId, ChannelId)>,
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
    Ids((guild_id, channel_id)): Ids<(GuildId, ChannelId)>,
    QueryParams(query): QueryParams<HistoryQuery>,
) -> ApiResult<Json<MessagePage>> {
    let limit = page_limit(query.limit, 20, 100)?;
    let cursor = query.cursor()?;
    let history =
        messages::history(&state, user.user_id, guild_id, channel_id, cursor, limit).await?;
    Ok(Json(MessagePage::from(history)))
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
    Ids((guild_id, channel_id, message_id)): Ids<(GuildId, ChannelId, MessageId)>,
    JsonBody(dto): JsonBody<EditMessageDto>,
) -> ApiResult<Json<filament_wire::Message>> {
    let content = MessageContent::try_from(dto.content)?;
    messages::edit(
        &state,
        user.user_id,
        guild_id,
        channel_id,
        message_id,
        content,
    )
    .await
    .map(Json)
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
    Ids((guild_id, channel_id, message_id)): Ids<(GuildId, ChannelId, MessageId)>,
) -> ApiResult<StatusCode> {
    messages::delete(&state, user.user_id, guild_id, channel_id, message_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(edit, delete))
}
