//! `/guilds`: create and list guilds, the public directory, and directory
//! joins.
//!
//! A join is rate limited per client IP and per user, here; this adapter
//! also owns the request and response shapes. The use cases are
//! `domain::guilds`.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use filament_ids::{GuildId, UserId};
use filament_wire::Guild;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::UtoipaMethodRouterExt as _;
use utoipa_axum::routes;

use crate::domain::Name;
use crate::domain::guilds::{self, DirectorySearch, NewGuild};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::client_ip::ClientIp;
use crate::http::extract::{AuthUser, Ids, JsonBody, QueryParams};
use crate::http::openapi::{ApiRouter, GuildPath};
use crate::rate_limit::sliding::SlidingWindow;
use crate::state::AppState;
use crate::store::Visibility;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGuildDto {
    /// 1–64 printable ASCII characters or spaces, not blank.
    #[schema(min_length = 1, max_length = 64, pattern = "^[ -~]*[!-~][ -~]*$")]
    name: String,
    /// `private` (the default) or `public`.
    #[serde(default)]
    #[schema(value_type = Option<filament_wire::Visibility>)]
    visibility: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DirectoryQuery {
    /// Only guilds whose name contains this, in any case; at most 64 bytes.
    q: Option<String>,
    /// Page size, 1–50 (default 20).
    #[param(minimum = 1, maximum = 50)]
    limit: Option<u32>,
}

impl TryFrom<CreateGuildDto> for NewGuild {
    type Error = ApiError;

    fn try_from(dto: CreateGuildDto) -> Result<Self, Self::Error> {
        let name = Name::try_from(dto.name)?;
        let visibility = match dto.visibility.as_deref() {
            None => Visibility::Private,
            Some(raw) => Visibility::parse(raw).ok_or(ApiError::InvalidRequest)?,
        };
        Ok(Self { name, visibility })
    }
}

impl TryFrom<DirectoryQuery> for DirectorySearch {
    type Error = ApiError;

    fn try_from(query: DirectoryQuery) -> Result<Self, Self::Error> {
        DirectorySearch::new(query.q.as_deref(), query.limit)
    }
}

#[derive(Serialize, ToSchema)]
pub struct GuildList {
    guilds: Vec<Guild>,
}

#[derive(Serialize, ToSchema)]
pub struct JoinOutcome {
    guild_id: String,
    /// `accepted`, or `already_member`.
    #[schema(value_type = String)]
    outcome: &'static str,
}

#[utoipa::path(
    post,
    path = "/guilds",
    tag = "guilds",
    security(("bearer" = [])),
    request_body = CreateGuildDto,
    responses(
        (status = 200, description = "The new guild, owned by the caller.", body = Guild),
        (status = 403, description = "The caller created as many guilds as allowed (`guild_creation_limit_reached`).", body = ErrorBody),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    JsonBody(dto): JsonBody<CreateGuildDto>,
) -> ApiResult<Json<Guild>> {
    let new = NewGuild::try_from(dto)?;
    guilds::create(&state, user.user_id, new).await.map(Json)
}

/// The caller's guilds; a ban removed the membership, so banned guilds are
/// not among them.
#[utoipa::path(
    get,
    path = "/guilds",
    tag = "guilds",
    security(("bearer" = [])),
    responses((status = 200, description = "The caller's guilds (at most 200).", body = GuildList)),
)]
pub async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> ApiResult<Json<GuildList>> {
    let guilds = guilds::list(&state, user.user_id).await?;
    Ok(Json(GuildList { guilds }))
}

/// `GET /guilds/public`: public guilds, newest first, optionally those whose
/// name contains `q` in any case.
#[utoipa::path(
    get,
    path = "/guilds/public",
    tag = "guilds",
    security(("bearer" = [])),
    params(DirectoryQuery),
    responses((status = 200, description = "Public guilds, newest first.", body = GuildList)),
)]
pub async fn directory(
    State(state): State<AppState>,
    AuthUser(_): AuthUser,
    QueryParams(query): QueryParams<DirectoryQuery>,
) -> ApiResult<Json<GuildList>> {
    let search = DirectorySearch::try_from(query)?;
    let guilds = guilds::directory(&state, search).await?;
    Ok(Json(GuildList { guilds }))
}

/// Joins a public guild. A private or unknown guild is a 404, so private
/// guilds cannot be discovered by id.
#[utoipa::path(
    post,
    path = "/guilds/{guild_id}/join",
    tag = "guilds",
    security(("bearer" = [])),
    params(GuildPath),
    responses(
        (status = 200, description = "Joined, or already a member.", body = JoinOutcome),
        (status = 403, description = "The caller is banned (`directory_join_user_banned`) or their address is (`directory_join_ip_banned`).", body = ErrorBody),
        (status = 404, description = "No such public guild (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn join(
    State(state): State<AppState>,
    Extension(limiter): Extension<Arc<JoinLimiter>>,
    AuthUser(user): AuthUser,
    ClientIp(ip): ClientIp,
    Ids(guild_id): Ids<GuildId>,
) -> ApiResult<Json<JoinOutcome>> {
    let config = state.config();
    let limits = JoinLimits {
        per_ip: config.directory_join_per_minute_per_ip,
        per_user: config.directory_join_per_minute_per_user,
    };
    if !limiter.admit(ip, user.user_id, limits, Instant::now()) {
        return Err(ApiError::RateLimited);
    }
    let joined = guilds::join(&state, user.user_id, ip, guild_id).await?;
    Ok(Json(JoinOutcome {
        guild_id: guild_id.to_string(),
        outcome: joined.as_str(),
    }))
}

pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(directory))
        .routes(routes!(join).layer(Extension(Arc::new(JoinLimiter::default()))))
}

// --- the directory-join limiter ------------------------------------------------

#[derive(Debug, Clone, Copy)]
pub struct JoinLimits {
    pub per_ip: u32,
    pub per_user: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum JoinCaller {
    Ip(IpAddr),
    User(UserId),
}

/// At most `per_ip` joins from one address and `per_user` joins by one
/// user in any 60 seconds. A refused attempt counts against neither.
#[derive(Debug, Default)]
pub struct JoinLimiter(SlidingWindow<JoinCaller>);

impl JoinLimiter {
    pub fn admit(&self, ip: IpAddr, user: UserId, limits: JoinLimits, now: Instant) -> bool {
        self.0.admit(
            &[
                (JoinCaller::Ip(ip), limits.per_ip as usize),
                (JoinCaller::User(user), limits.per_user as usize),
            ],
            now,
        )
    }
}
