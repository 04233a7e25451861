//! `/guilds/{g}/search` and its two maintenance routes, `…/search/rebuild`
//! and `…/search/reconcile`, answered by the search service over gRPC.
//!
//! The index only proposes candidates. Every hit is re-read from the
//! database (so a deleted message never shows, and an edited one shows as
//! it is now) and authorized by the channel the database says it is in,
//! with `Authorizer::can_view_channel`, once per distinct channel. Hits in
//! channels the caller cannot view are dropped and the query is asked again
//! with those channels excluded, so that a page still fills up with what the
//! caller may see. The search service being down costs only these routes,
//! which answer 500 until it is back.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use filament_clients::{ClientError, SearchClient};
use filament_proto::v1 as pb;
use filament_runtime::grpc_client::GrpcClientMetrics;
use serde::{Deserialize, Serialize};
use tonic::Code;
use ulid::Ulid;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use crate::domain::permissions::Permission;
use crate::domain::{page_limit, parse_id, storable_text};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::{AuthUser, Ids, QueryParams};
use crate::http::openapi::{ApiRouter, GuildPath, Id};
use crate::state::AppState;
use crate::store::MessageRecord;

/// Longest query, in bytes after trimming (PROTOCOL.md §4.6). The search service
/// enforces every cap; this one also keeps oversized text off the wire.
const MAX_QUERY_BYTES: usize = 256;
/// How long one query may take (PROTOCOL.md §4.6: past it, 400). The search
/// service stops at this budget; the api's own deadline adds a margin for
/// the network hop.
const QUERY_DEADLINE: Duration = Duration::from_millis(300);
/// Queries asked per search, each excluding the channels found hidden by
/// the one before.
const MAX_ROUNDS: usize = 4;
/// Rebuilds and reconciles walk a whole guild; the request timeout bounds
/// them from outside.
const MAINTENANCE_DEADLINE: Duration = Duration::from_secs(60);
/// How long connecting to the search service may take.
const SEARCH_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

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

/// A search as the handler runs it, validated.
struct SearchRequest {
    text: String,
    limit: u32,
    channel_id: Option<Ulid>,
}

impl TryFrom<SearchQueryDto> for SearchRequest {
    type Error = ApiError;

    fn try_from(dto: SearchQueryDto) -> Result<Self, Self::Error> {
        let text = dto.q.trim();
        if text.is_empty() || text.len() > MAX_QUERY_BYTES || !storable_text(text) {
            return Err(ApiError::InvalidRequest);
        }
        Ok(Self {
            text: text.to_owned(),
            limit: page_limit(dto.limit, 20, 50)?,
            channel_id: dto.channel_id.as_deref().map(parse_id).transpose()?,
        })
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

/// The search service's client; `None` when no search service is
/// configured.
#[derive(Clone)]
pub struct SearchBackend {
    client: Option<SearchClient>,
}

impl SearchBackend {
    /// Connects lazily: the api starts (and serves everything else) while
    /// the search service is still down.
    pub fn new(url: Option<&str>, grpc_clients: &GrpcClientMetrics) -> Self {
        // Each call carries its own deadline (`QUERY_DEADLINE`,
        // `MAINTENANCE_DEADLINE`).
        let client = url.and_then(|url| {
            match SearchClient::new(url, SEARCH_CONNECT_TIMEOUT, grpc_clients) {
                Ok(client) => Some(client),
                Err(err) => {
                    tracing::error!(%err, url, "FILAMENT_SEARCH_GRPC_URL is not a valid url");
                    None
                }
            }
        });
        Self { client }
    }

    /// No search service: every search route answers 500. The document is
    /// built from routes with this backend.
    pub fn disconnected() -> Self {
        Self { client: None }
    }

    fn client(&self) -> ApiResult<&SearchClient> {
        self.client
            .as_ref()
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no search service configured")))
    }
}

/// The search service's refusals, and a query past its deadline, are the
/// caller's fault (400); its absence or failure is ours (500).
fn search_error(status: &tonic::Status) -> ApiError {
    match status.code() {
        Code::InvalidArgument | Code::DeadlineExceeded | Code::FailedPrecondition => {
            tracing::debug!(%status, "search refused the request");
            ApiError::InvalidRequest
        }
        _ => ApiError::Internal(anyhow::anyhow!("search service: {status}")),
    }
}

/// A call to the search service that did not succeed, as the routes answer
/// it ([`search_error`]).
fn search_failed(err: ClientError) -> ApiError {
    match err.status() {
        Some(status) => search_error(status),
        None => ApiError::Internal(err.into()),
    }
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
    Ids([guild_id]): Ids<1>,
    QueryParams(dto): QueryParams<SearchQueryDto>,
) -> ApiResult<Json<SearchResults>> {
    let request = SearchRequest::try_from(dto)?;
    state
        .authorizer()
        .guild(guild_id, user.user_id)
        .await?
        .require(Permission::CreateMessage)?;
    let client = backend.client()?;
    let mut viewable = ViewableChannels::new(&state, guild_id, user.user_id);
    if let Some(channel_id) = request.channel_id
        && !viewable.check(channel_id).await?
    {
        return Ok(Json(SearchResults {
            message_ids: Vec::new(),
            messages: Vec::new(),
        }));
    }
    let page = authorized_hits(&state, client, guild_id, &request, &mut viewable).await?;
    let messages = crate::domain::messages::full_messages(&state, &page, user.user_id)
        .await?
        .iter()
        .map(crate::domain::messages::wire_message)
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(SearchResults {
        message_ids: messages.iter().map(|m| m.message_id.clone()).collect(),
        messages,
    }))
}

/// The best hits the caller may see, at most `request.limit`, read from the
/// database in rank order.
async fn authorized_hits(
    state: &AppState,
    client: &SearchClient,
    guild_id: Ulid,
    request: &SearchRequest,
    viewable: &mut ViewableChannels<'_>,
) -> ApiResult<Vec<MessageRecord>> {
    let mut excluded: Vec<Ulid> = Vec::new();
    let mut page = Vec::new();
    for _ in 0..MAX_ROUNDS {
        let hits = query(client, guild_id, request, &excluded).await?;
        let exhausted = hits.len() < request.limit as usize;
        let mut found: HashMap<Ulid, MessageRecord> = state
            .store()
            .messages_by_ids(guild_id, &hits)
            .await?
            .into_iter()
            .map(|record| (record.message_id, record))
            .collect();
        page.clear();
        let mut hidden_found = false;
        // Hits the database no longer has (deleted, the index not caught up
        // yet) are dropped here.
        for record in hits.iter().filter_map(|id| found.remove(id)) {
            if viewable.check(record.channel_id).await? {
                page.push(record);
            } else if !excluded.contains(&record.channel_id) {
                excluded.push(record.channel_id);
                hidden_found = true;
            }
        }
        if !hidden_found || exhausted {
            break;
        }
    }
    Ok(page)
}

/// One query to the search service: candidate message ids, best first.
async fn query(
    client: &SearchClient,
    guild_id: Ulid,
    request: &SearchRequest,
    excluded: &[Ulid],
) -> ApiResult<Vec<Ulid>> {
    let query = pb::QueryRequest {
        guild_id: guild_id.to_string(),
        query: request.text.clone(),
        limit: request.limit,
        channel_id: request
            .channel_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        exclude_channel_ids: excluded.iter().map(ToString::to_string).collect(),
    };
    client
        .query(query, QUERY_DEADLINE)
        .await
        .map_err(search_failed)?
        .iter()
        .map(|hit| {
            Ulid::from_string(&hit.message_id).map_err(|_| {
                ApiError::Internal(anyhow::anyhow!("search returned a malformed message id"))
            })
        })
        .collect()
}

/// `can_view_channel` answers, asked once per channel per search.
struct ViewableChannels<'a> {
    state: &'a AppState,
    guild_id: Ulid,
    user_id: Ulid,
    known: HashMap<Ulid, bool>,
}

impl<'a> ViewableChannels<'a> {
    fn new(state: &'a AppState, guild_id: Ulid, user_id: Ulid) -> Self {
        Self {
            state,
            guild_id,
            user_id,
            known: HashMap::new(),
        }
    }

    async fn check(&mut self, channel_id: Ulid) -> ApiResult<bool> {
        if let Some(&allowed) = self.known.get(&channel_id) {
            return Ok(allowed);
        }
        let allowed = self
            .state
            .authorizer()
            .can_view_channel(self.guild_id, channel_id, self.user_id)
            .await?;
        self.known.insert(channel_id, allowed);
        Ok(allowed)
    }
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
    Ids([guild_id]): Ids<1>,
) -> ApiResult<StatusCode> {
    require_maintainer(&state, guild_id, user.user_id).await?;
    backend
        .client()?
        .rebuild(&guild_id.to_string(), MAINTENANCE_DEADLINE)
        .await
        .map_err(search_failed)?;
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
    Ids([guild_id]): Ids<1>,
) -> ApiResult<Json<ReconcileResults>> {
    require_maintainer(&state, guild_id, user.user_id).await?;
    let response = backend
        .client()?
        .reconcile(&guild_id.to_string(), MAINTENANCE_DEADLINE)
        .await
        .map_err(search_failed)?;
    Ok(Json(ReconcileResults {
        upserted: response.upserted,
        deleted: response.deleted,
    }))
}

/// Rebuild and reconcile need `manage_workspace_roles` (PROTOCOL.md §2.13).
async fn require_maintainer(state: &AppState, guild_id: Ulid, user_id: Ulid) -> ApiResult<()> {
    state
        .authorizer()
        .guild(guild_id, user_id)
        .await?
        .require(Permission::ManageWorkspaceRoles)
}

/// The routes, with the client for the search service.
pub fn routes(backend: SearchBackend) -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(search))
        .routes(routes!(rebuild))
        .routes(routes!(reconcile))
        .layer(Extension(backend))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dto(q: &str, limit: Option<u32>, channel_id: Option<&str>) -> SearchQueryDto {
        SearchQueryDto {
            q: q.to_owned(),
            limit,
            channel_id: channel_id.map(str::to_owned),
        }
    }

    #[test]
    fn the_query_string_is_validated_before_any_call() {
        let ok = SearchRequest::try_from(dto("  hello  ", None, None)).expect("valid");
        assert_eq!(
            (ok.text.as_str(), ok.limit, ok.channel_id),
            ("hello", 20, None)
        );
        assert!(SearchRequest::try_from(dto(&"a".repeat(256), Some(50), None)).is_ok());
        for bad in [
            dto("", None, None),
            dto("   ", None, None),
            dto(&"a".repeat(257), None, None),
            dto("a", Some(0), None),
            dto("a", Some(51), None),
            dto("a", None, Some("general")),
        ] {
            assert!(matches!(
                SearchRequest::try_from(bad),
                Err(ApiError::InvalidRequest)
            ));
        }
    }

    #[test]
    fn the_callers_mistakes_are_400_and_the_rest_500() {
        for code in [
            Code::InvalidArgument,
            Code::DeadlineExceeded,
            Code::FailedPrecondition,
        ] {
            assert!(matches!(
                search_error(&tonic::Status::new(code, "x")),
                ApiError::InvalidRequest
            ));
        }
        for code in [Code::Unavailable, Code::Internal, Code::Unknown] {
            assert!(matches!(
                search_error(&tonic::Status::new(code, "x")),
                ApiError::Internal(_)
            ));
        }
    }

    proptest::proptest! {
        #[test]
        fn a_query_with_a_nul_is_refused(
            raw in crate::domain::hostile::text(),
            nul in crate::domain::hostile::plain_with_nul(),
        ) {
            proptest::prop_assert!(SearchRequest::try_from(dto(&nul, None, None)).is_err());
            if SearchRequest::try_from(dto(&raw.clone(), None, None)).is_ok() {
                proptest::prop_assert!(crate::domain::storable_text(&raw), "{raw:?}");
            }
        }
    }
}
