//! `/guilds/{g}/channels/{c}/messages`: create and list.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use filament_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::clock::now_unix;
use crate::domain::{MessageContent, page_limit, parse_id};
use crate::error::{ApiError, ApiResult};
use crate::events;
use crate::http::extract::{AuthUser, Ids, JsonBody, QueryParams};
use crate::state::AppState;
use crate::store::MessageRecord;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateMessageDto {
    content: String,
    #[serde(default)]
    attachment_ids: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    limit: Option<u32>,
    before: Option<String>,
}

#[derive(Serialize)]
pub struct MessagePage {
    messages: Vec<filament_wire::Message>,
    next_before: Option<String>,
}

pub async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids([guild_id, channel_id]): Ids<2>,
    JsonBody(dto): JsonBody<CreateMessageDto>,
) -> ApiResult<Json<filament_wire::Message>> {
    if dto.attachment_ids.is_some_and(|ids| !ids.is_empty()) {
        // Attachments arrive with the attachments routes; until then a
        // message that names one cannot be honoured.
        return Err(ApiError::InvalidRequest);
    }
    let content = MessageContent::try_from(dto.content)?;
    state
        .authorizer()
        .channel(guild_id, channel_id, user.user_id)
        .await?;
    let record = MessageRecord {
        message_id: state.new_id(),
        guild_id,
        channel_id,
        author_id: user.user_id,
        content: content.into_string(),
        created_at_unix: now_unix(),
    };
    let message = proto_message(&record);
    let body = wire_message(&message)?;
    let event = events::message_create(message);
    events::ensure_deliverable(&event)?;
    state.store().create_message(record).await?;
    events::publish(&state, event).await;
    Ok(Json(body))
}

pub async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids([guild_id, channel_id]): Ids<2>,
    QueryParams(query): QueryParams<HistoryQuery>,
) -> ApiResult<Json<MessagePage>> {
    let limit = page_limit(query.limit, 20, 100)?;
    let before = query.before.as_deref().map(parse_id).transpose()?;
    state
        .authorizer()
        .channel(guild_id, channel_id, user.user_id)
        .await?;
    let records = state
        .store()
        .messages(guild_id, channel_id, before, limit)
        .await?;
    let next_before = records.last().map(|m| m.message_id.to_string());
    let messages = records
        .iter()
        .map(|record| wire_message(&proto_message(record)))
        .collect::<ApiResult<_>>()?;
    Ok(Json(MessagePage {
        messages,
        next_before,
    }))
}

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

/// The REST body of a message: the same JSON shape the gateway sends.
fn wire_message(message: &pb::Message) -> ApiResult<filament_wire::Message> {
    filament_wire::Message::try_from(message)
        .map_err(|err| ApiError::Internal(anyhow::anyhow!("message shape: {err}")))
}

pub fn routes() -> Router<AppState> {
    Router::new().route(
        "/guilds/{guild_id}/channels/{channel_id}/messages",
        post(create).get(list),
    )
}
