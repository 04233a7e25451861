//! `/guilds`: create and list guilds, the public directory, and directory
//! joins.
//!
//! A join is rate limited per client IP and per user, records the address
//! it came from (so a moderator can later ban a user's addresses without
//! ever seeing them), and is refused — and audited — for private guilds,
//! banned users and banned addresses, in that order.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use filament_wire::Guild;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use ulid::Ulid;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::UtoipaMethodRouterExt as _;
use utoipa_axum::routes;

use crate::clock::now_unix;
use crate::domain::{Name, page_limit, storable_text};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::client_ip::ClientIp;
use crate::http::extract::{AuthUser, Ids, JsonBody, QueryParams};
use crate::http::members::apply_default_join_role;
use crate::http::openapi::{ApiRouter, GuildPath};
use crate::outbox::Pending;
use crate::publish;
use crate::rate_limit::sliding::SlidingWindow;
use crate::state::AppState;
use crate::store::{AddMemberOutcome, GuildRecord, MemberRecord, MemberRole, Visibility};

/// The most guilds `GET /guilds` returns.
const GUILD_LIST_LIMIT: u32 = 200;
/// `GET /guilds/public`: default and largest page, longest query.
const DIRECTORY_DEFAULT_LIMIT: u32 = 20;
const DIRECTORY_MAX_LIMIT: u32 = 50;
const DIRECTORY_MAX_QUERY_BYTES: usize = 64;

/// Audit actions of directory joins.
const JOIN_ACCEPTED: &str = "directory.join.accepted";
const JOIN_REJECTED_VISIBILITY: &str = "directory.join.rejected.visibility";
const JOIN_REJECTED_USER_BAN: &str = "directory.join.rejected.user_ban";
const JOIN_REJECTED_IP_BAN: &str = "directory.join.rejected.ip_ban";

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

/// A directory listing, validated: the page size, and the name filter
/// trimmed (`None` when blank).
struct DirectorySearch {
    needle: Option<String>,
    limit: u32,
}

impl TryFrom<DirectoryQuery> for DirectorySearch {
    type Error = ApiError;

    fn try_from(query: DirectoryQuery) -> Result<Self, Self::Error> {
        let limit = page_limit(query.limit, DIRECTORY_DEFAULT_LIMIT, DIRECTORY_MAX_LIMIT)?;
        let needle = match query.q.as_deref().map(str::trim) {
            Some(q) if q.len() > DIRECTORY_MAX_QUERY_BYTES || !storable_text(q) => {
                return Err(ApiError::InvalidRequest);
            }
            Some("") | None => None,
            Some(q) => Some(q.to_owned()),
        };
        Ok(Self { needle, limit })
    }
}

/// The Guild shape (PROTOCOL.md §1.9) of a stored guild.
fn wire_guild(guild: &GuildRecord) -> Guild {
    Guild {
        guild_id: guild.guild_id.to_string(),
        name: guild.name.clone(),
        visibility: match guild.visibility {
            Visibility::Private => filament_wire::Visibility::Private,
            Visibility::Public => filament_wire::Visibility::Public,
        },
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
    let name = Name::try_from(dto.name)?;
    let visibility = match dto.visibility.as_deref() {
        None => Visibility::Private,
        Some(raw) => Visibility::parse(raw).ok_or(ApiError::InvalidRequest)?,
    };
    let created = state.store().count_guilds_created_by(user.user_id).await?;
    if created >= state.config().max_created_guilds_per_user {
        return Err(ApiError::GuildCreationLimitReached);
    }
    let guild = GuildRecord {
        guild_id: state.new_id(),
        name: name.into_string(),
        visibility,
        created_by: user.user_id,
        created_at_unix: now_unix(),
    };
    state.store().create_guild(guild.clone()).await?;
    // Nobody else can be present in a guild that did not exist a moment
    // ago, so there is no event to publish.
    Ok(Json(wire_guild(&guild)))
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
    let guilds = state
        .store()
        .guilds_for_user(user.user_id, GUILD_LIST_LIMIT)
        .await?;
    Ok(Json(GuildList {
        guilds: guilds.iter().map(wire_guild).collect(),
    }))
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
    let guilds = state
        .store()
        .public_guilds(search.needle.as_deref(), search.limit)
        .await?;
    Ok(Json(GuildList {
        guilds: guilds.iter().map(wire_guild).collect(),
    }))
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
    Ids([guild_id]): Ids<1>,
) -> ApiResult<Json<JoinOutcome>> {
    let config = state.config();
    let limits = JoinLimits {
        per_ip: config.directory_join_per_minute_per_ip,
        per_user: config.directory_join_per_minute_per_user,
    };
    if !limiter.admit(ip, user.user_id, limits, Instant::now()) {
        return Err(ApiError::RateLimited);
    }
    let now = now_unix();
    let guild = state
        .store()
        .guild(guild_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if let Some((action, error)) = refusal(&state, &guild, user.user_id, ip, now).await? {
        publish::audit(&state, guild_id, user.user_id, Some(user.user_id), action).await;
        return Err(error);
    }
    let member = MemberRecord {
        guild_id,
        user_id: user.user_id,
        role: MemberRole::Member,
        joined_at_unix: now,
    };
    let user_id = user.user_id.to_string();
    let added = Pending::new(
        &state,
        publish::member_add(&guild_id.to_string(), &user_id, now, &user_id),
    );
    // The address is recorded with the membership, in the guild, and only
    // for a join that let the user in (PROTOCOL.md §2.5): a refused join
    // records nothing, and a ban by user here bans only addresses seen here.
    // The event is stored only with a membership that is new.
    let outcome = match state
        .store()
        .join_from(member, ip, vec![added.row()])
        .await?
    {
        AddMemberOutcome::Banned => {
            // A ban that landed since the check above.
            let action = JOIN_REJECTED_USER_BAN;
            publish::audit(&state, guild_id, user.user_id, Some(user.user_id), action).await;
            return Err(ApiError::DirectoryJoinUserBanned);
        }
        AddMemberOutcome::AlreadyMember => "already_member",
        AddMemberOutcome::Added => {
            apply_default_join_role(&state, guild_id, user.user_id, now).await;
            added.publish(&state).await;
            "accepted"
        }
    };
    publish::audit(
        &state,
        guild_id,
        user.user_id,
        Some(user.user_id),
        JOIN_ACCEPTED,
    )
    .await;
    Ok(Json(JoinOutcome {
        guild_id: guild_id.to_string(),
        outcome,
    }))
}

/// Why a join must be refused, as its audit action and error; `None` to
/// let it through.
async fn refusal(
    state: &AppState,
    guild: &GuildRecord,
    user_id: Ulid,
    ip: IpAddr,
    now: i64,
) -> ApiResult<Option<(&'static str, ApiError)>> {
    Ok(if guild.visibility != Visibility::Public {
        Some((JOIN_REJECTED_VISIBILITY, ApiError::NotFound))
    } else if state.store().is_banned(guild.guild_id, user_id).await? {
        Some((JOIN_REJECTED_USER_BAN, ApiError::DirectoryJoinUserBanned))
    } else if state.store().ip_banned(guild.guild_id, ip, now).await? {
        Some((JOIN_REJECTED_IP_BAN, ApiError::DirectoryJoinIpBanned))
    } else {
        None
    })
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
    User(Ulid),
}

/// At most `per_ip` joins from one address and `per_user` joins by one
/// user in any 60 seconds. A refused attempt counts against neither.
#[derive(Debug, Default)]
pub struct JoinLimiter(SlidingWindow<JoinCaller>);

impl JoinLimiter {
    pub fn admit(&self, ip: IpAddr, user: Ulid, limits: JoinLimits, now: Instant) -> bool {
        self.0.admit(
            &[
                (JoinCaller::Ip(ip), limits.per_ip as usize),
                (JoinCaller::User(user), limits.per_user as usize),
            ],
            now,
        )
    }
}
