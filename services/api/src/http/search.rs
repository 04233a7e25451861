//! `/guilds/{g}/search` and its two maintenance routes, `…/search/rebuild`
//! and `…/search/reconcile`, answered by the search service over gRPC.
//!
//! This adapter owns the query and response shapes; the use cases, and how
//! hits are re-read and authorized, are `domain::search`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use filament_ids::GuildId;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

pub use crate::domain::search::SearchBackend;
use crate::domain::search::{self, SearchRequest};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::{AuthUser, Ids, QueryParams};
use crate::http::openapi::{ApiRouter, GuildPath, Id};
use crate::state::AppState;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchQueryDto {
    /// The words to find: 1–256 bytes after trimming.
    #[param(min_length = 1, max_length = 256)]
    q: String,
    /// Page size, 1–50 (default 20).
    #[param(minimum = 1, maximum = 50)]
    limit: Option<u32>,
    /// Only this channel.
    #[param(value_type = Option<Id>)]
    channel_id: Option<String>,
}

impl TryFrom<SearchQueryDto> for SearchRequest {
    type Error = ApiError;

    fn try_from(dto: SearchQueryDto) -> Result<Self, Self::Error> {
        SearchRequest::parse(&dto.q, dto.limit, dto.channel_id.as_deref())
    }
}

#[derive(Serialize, ToSchema)]
pub struct SearchResults {
    /// The ids of `messages`, best first.
    message_ids: Vec<String>,
    messages: Vec<filament_wire::Message>,
}

#[derive(Serialize, ToSchema)]
pub struct ReconcileResults {
    upserted: u64,
    deleted: u64,
}

#[utoipa::path(
    get,
    path = "/guilds/{guild_id}/search",
    tag = "search",
    security(("bearer" = [])),
    params(GuildPath, SearchQueryDto),
    responses(
        (status = 200, description = "The best matches the caller may see, as they are now.", body = SearchResults),
        (status = 400, description = "A malformed query, or the search took too long (`invalid_request`).", body = ErrorBody),
        (status = 403, description = "Not a member, or lacks `create_message` (`forbidden`).", body = ErrorBody),
        (status = 500, description = "The search service is down or not configured (`internal_error`).", body = ErrorBody),
    ),
)]
pub async fn search(
    State(state): State<AppState>,
    Extension(backend): Extension<SearchBackend>,
    AuthUser(user): AuthUser,
    Ids(guild_id): Ids<GuildId>,
    QueryParams(dto): QueryParams<SearchQueryDto>,
) -> ApiResult<Json<SearchResults>> {
    let request = SearchRequest::try_from(dto)?;
    let messages = search::search(&state, &backend, user.user_id, guild_id, &request).await?;
    Ok(Json(SearchResults {
        message_ids: messages.iter().map(|m| m.message_id.clone()).collect(),
        messages,
    }))
}

#[utoipa::path(
    post,
    path = "/guilds/{guild_id}/search/rebuild",
    tag = "search",
    security(("bearer" = [])),
    params(GuildPath),
    responses(
        (status = 204, description = "The guild's index is rebuilt."),
        (status = 403, description = "Lacks `manage_workspace_roles` (`forbidden`).", body = ErrorBody),
        (status = 500, description = "The search service is down or not configured (`internal_error`).", body = ErrorBody),
    ),
)]
pub async fn rebuild(
    State(state): State<AppState>,
    Extension(backend): Extension<SearchBackend>,
    AuthUser(user): AuthUser,
    Ids(guild_id): Ids<GuildId>,
) -> ApiResult<StatusCode> {
    search::rebuild(&state, &backend, user.user_id, guild_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/guilds/{guild_id}/search/reconcile",
    tag = "search",
    security(("bearer" = [])),
    params(GuildPath),
    responses(
        (status = 200, description = "What the reconcile changed.", body = ReconcileResults),
        (status = 403, description = "Lacks `manage_workspace_roles` (`forbidden`).", body = ErrorBody),
        (status = 500, description = "The search service is down or not configured (`internal_error`).", body = ErrorBody),
    ),
)]
pub async fn reconcile(
    State(state): State<AppState>,
    Extension(backend): Extension<SearchBackend>,
    AuthUser(user): AuthUser,
    Ids(guild_id): Ids<GuildId>,
) -> ApiResult<Json<ReconcileResults>> {
    let response = search::reconcile(&state, &backend, user.user_id, guild_id).await?;
    Ok(Json(ReconcileResults {
        upserted: response.upserted,
        deleted: response.deleted,
    }))
}

/// The routes, with the client for the search service.
pub fn routes(backend: SearchBackend) -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(search))
        .routes(routes!(rebuild))
        .routes(routes!(reconcile))
        .layer(Extension(backend))
}
