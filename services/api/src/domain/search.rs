//! Searching a guild's messages, and the two maintenance use cases
//! (rebuilding and reconciling its index), answered by the search service
//! over gRPC through a [`SearchBackend`].
//!
//! The index only proposes candidates. Every hit is re-read from the
//! database (so a deleted message never shows, and an edited one shows as
//! it is now) and authorized by the channel the database says it is in,
//! with `Authorizer::can_view_channel`, once per distinct channel. Hits in
//! channels the caller cannot view are dropped and the query is asked again
//! with those channels excluded, so that a page still fills up with what the
//! caller may see. The search service being down costs only these use
//! cases, which fail with `ApiError::Internal` until it is back.

use std::collections::HashMap;
use std::time::Duration;

use filament_clients::{ClientError, SearchClient};
use filament_ids::{ChannelId, GuildId, MessageId, UserId};
use filament_proto::v1 as pb;
use filament_runtime::grpc_client::GrpcClientMetrics;
use tonic::Code;
use ulid::Ulid;

use crate::domain::messages::{full_messages, wire_message};
use crate::domain::permissions::Permission;
use crate::domain::{page_limit, parse_id, storable_text};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::MessageRecord;

/// Longest query, in bytes after trimming (PROTOCOL.md §4.6). The search service
/// enforces every cap; this one also keeps oversized text off the wire.
pub const MAX_QUERY_BYTES: usize = 256;
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

/// A search, validated.
#[derive(Debug)]
pub struct SearchRequest {
    text: String,
    limit: u32,
    channel_id: Option<ChannelId>,
}

impl SearchRequest {
    /// The query `q`, 1–[`MAX_QUERY_BYTES`] bytes after trimming; a page
    /// size of 1–50 (default 20); and the one channel to search, if any.
    pub fn parse(q: &str, limit: Option<u32>, channel_id: Option<&str>) -> ApiResult<Self> {
        let text = q.trim();
        if text.is_empty() || text.len() > MAX_QUERY_BYTES || !storable_text(text) {
            return Err(ApiError::InvalidRequest);
        }
        Ok(Self {
            text: text.to_owned(),
            limit: page_limit(limit, 20, 50)?,
            channel_id: channel_id.map(parse_id).transpose()?,
        })
    }
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

/// The messages matching `request` that `user` may see, as they are now,
/// best first, at most `request.limit` of them.
pub async fn search(
    state: &AppState,
    backend: &SearchBackend,
    user_id: UserId,
    guild_id: GuildId,
    request: &SearchRequest,
) -> ApiResult<Vec<filament_wire::Message>> {
    state
        .authorizer()
        .guild(guild_id, user_id)
        .await?
        .require(Permission::CreateMessage)?;
    let client = backend.client()?;
    let mut viewable = ViewableChannels::new(state, guild_id, user_id);
    if let Some(channel_id) = request.channel_id
        && !viewable.check(channel_id).await?
    {
        return Ok(Vec::new());
    }
    let page = authorized_hits(state, client, guild_id, request, &mut viewable).await?;
    full_messages(state, &page, user_id)
        .await?
        .iter()
        .map(wire_message)
        .collect()
}

/// The best hits the caller may see, at most `request.limit`, read from the
/// database in rank order.
async fn authorized_hits(
    state: &AppState,
    client: &SearchClient,
    guild_id: GuildId,
    request: &SearchRequest,
    viewable: &mut ViewableChannels<'_>,
) -> ApiResult<Vec<MessageRecord>> {
    let mut excluded: Vec<ChannelId> = Vec::new();
    let mut page = Vec::new();
    for _ in 0..MAX_ROUNDS {
        let hits = query(client, guild_id, request, &excluded).await?;
        let exhausted = hits.len() < request.limit as usize;
        let mut found: HashMap<MessageId, MessageRecord> = state
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
    guild_id: GuildId,
    request: &SearchRequest,
    excluded: &[ChannelId],
) -> ApiResult<Vec<MessageId>> {
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
            Ulid::from_string(&hit.message_id)
                .map(MessageId)
                .map_err(|_| {
                    ApiError::Internal(anyhow::anyhow!("search returned a malformed message id"))
                })
        })
        .collect()
}

/// `can_view_channel` answers, asked once per channel per search.
struct ViewableChannels<'a> {
    state: &'a AppState,
    guild_id: GuildId,
    user_id: UserId,
    known: HashMap<ChannelId, bool>,
}

impl<'a> ViewableChannels<'a> {
    fn new(state: &'a AppState, guild_id: GuildId, user_id: UserId) -> Self {
        Self {
            state,
            guild_id,
            user_id,
            known: HashMap::new(),
        }
    }

    async fn check(&mut self, channel_id: ChannelId) -> ApiResult<bool> {
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

/// Rebuilds the guild's index from the database, as `user`.
pub async fn rebuild(
    state: &AppState,
    backend: &SearchBackend,
    user: UserId,
    guild: GuildId,
) -> ApiResult<()> {
    require_maintainer(state, guild, user).await?;
    backend
        .client()?
        .rebuild(&guild.to_string(), MAINTENANCE_DEADLINE)
        .await
        .map_err(search_failed)?;
    Ok(())
}

/// Brings the guild's index in line with the database, as `user`, and
/// answers what that changed.
pub async fn reconcile(
    state: &AppState,
    backend: &SearchBackend,
    user: UserId,
    guild: GuildId,
) -> ApiResult<pb::ReconcileResponse> {
    require_maintainer(state, guild, user).await?;
    backend
        .client()?
        .reconcile(&guild.to_string(), MAINTENANCE_DEADLINE)
        .await
        .map_err(search_failed)
}

/// Rebuild and reconcile need `manage_workspace_roles` (PROTOCOL.md §2.13).
async fn require_maintainer(state: &AppState, guild_id: GuildId, user_id: UserId) -> ApiResult<()> {
    state
        .authorizer()
        .guild(guild_id, user_id)
        .await?
        .require(Permission::ManageWorkspaceRoles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_string_is_validated_before_any_call() {
        let ok = SearchRequest::parse("  hello  ", None, None).expect("valid");
        assert_eq!(
            (ok.text.as_str(), ok.limit, ok.channel_id),
            ("hello", 20, None)
        );
        assert!(SearchRequest::parse(&"a".repeat(256), Some(50), None).is_ok());
        for (q, limit, channel_id) in [
            ("", None, None),
            ("   ", None, None),
            (&*"a".repeat(257), None, None),
            ("a", Some(0), None),
            ("a", Some(51), None),
            ("a", None, Some("general")),
        ] {
            assert!(matches!(
                SearchRequest::parse(q, limit, channel_id),
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
            proptest::prop_assert!(SearchRequest::parse(&nul, None, None).is_err());
            if SearchRequest::parse(&raw, None, None).is_ok() {
                proptest::prop_assert!(crate::domain::storable_text(&raw), "{raw:?}");
            }
        }
    }
}
