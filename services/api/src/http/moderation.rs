//! Moderation (PROTOCOL.md §2.6, §2.7): kick, ban, the audit log, and guild IP bans.
//!
//! A kick or ban returns once the removed user's access is gone everywhere.
//! IP bans never show an address: the list and the responses carry ids,
//! counts and times only.
//!
//! This adapter owns the request and response shapes; the use cases, with
//! the teardown and the IP ban sync, are `domain::moderation`.

use axum::Json;
use axum::extract::State;
use filament_ids::{GuildId, UserId};
use serde::{Deserialize, Serialize};
use ulid::Ulid;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use crate::domain::moderation::{
    self, AUDIT_DEFAULT_LIMIT, IP_BAN_DEFAULT_LIMIT, IP_BAN_MAX_LIMIT, IpBanByUser, action_prefix,
    parse_cursor,
};
use crate::domain::page_limit;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::{AuthUser, Ids, JsonBody, QueryParams};
use crate::http::openapi::{ApiRouter, GuildPath, Id, IpBanPath, MemberPath};
use crate::http::roles::{ACK, Ack};
use crate::state::AppState;
use crate::store::{AuditCursor, AuditEntry, IpBanCursor, IpBanRecord};

// --- kick and ban -------------------------------------------------------------

/// `POST /guilds/{g}/members/{u}/kick`.
#[utoipa::path(
    post,
    path = "/guilds/{guild_id}/members/{user_id}/kick",
    tag = "moderation",
    security(("bearer" = [])),
    params(MemberPath),
    responses(
        (status = 200, description = "Removed; their access is gone everywhere.", body = Ack),
        (status = 403, description = "Not a moderator, or does not outrank the member (`forbidden`).", body = ErrorBody),
        (status = 404, description = "Not a member (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn kick(
    State(state): State<AppState>,
    AuthUser(actor): AuthUser,
    Ids((guild_id, target)): Ids<(GuildId, UserId)>,
) -> ApiResult<Json<Ack>> {
    moderation::kick(&state, actor.user_id, guild_id, target).await?;
    Ok(Json(ACK))
}

/// `POST /guilds/{g}/members/{u}/ban`. Non-members can be banned too, so
/// they can never join.
#[utoipa::path(
    post,
    path = "/guilds/{guild_id}/members/{user_id}/ban",
    tag = "moderation",
    security(("bearer" = [])),
    params(MemberPath),
    responses(
        (status = 200, description = "Banned (and removed, if a member).", body = Ack),
        (status = 403, description = "Not a moderator, or does not outrank the member (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such user (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn ban(
    State(state): State<AppState>,
    AuthUser(actor): AuthUser,
    Ids((guild_id, target)): Ids<(GuildId, UserId)>,
) -> ApiResult<Json<Ack>> {
    moderation::ban(&state, actor.user_id, guild_id, target).await?;
    Ok(Json(ACK))
}

// --- the audit log ------------------------------------------------------------

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// The `next_cursor` of the page before: `<created_at_unix>_<id>`.
    #[param(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    cursor: Option<String>,
    /// Page size, 1 to the configured maximum (default 20).
    #[param(minimum = 1)]
    limit: Option<u32>,
    /// Only actions starting with this: 1–64 bytes of `[a-z0-9._]`.
    #[param(pattern = "^[a-z0-9._]{1,64}$")]
    action_prefix: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditEvent {
    audit_id: String,
    actor_user_id: String,
    #[schema(required = true)]
    target_user_id: Option<String>,
    action: String,
    created_at_unix: i64,
    ip_ban_match: bool,
}

impl From<&AuditEntry> for AuditEvent {
    fn from(entry: &AuditEntry) -> Self {
        Self {
            audit_id: entry.audit_id.to_string(),
            actor_user_id: entry.actor_user_id.to_string(),
            target_user_id: entry.target_user_id.map(|id| id.to_string()),
            action: entry.action.clone(),
            created_at_unix: entry.created_at_unix,
            ip_ban_match: entry.ip_ban_match(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct AuditList {
    events: Vec<AuditEvent>,
    /// Where the next page starts; `null` on the last page.
    #[schema(required = true)]
    next_cursor: Option<String>,
}

/// `GET /guilds/{g}/audit`: newest first. Refusals say
/// `audit_access_denied`, as the reference server does: to a non-member of
/// an existing guild and of an unknown one alike, and to a member without
/// `view_audit_log`. Only the server owner, who may see any guild, learns
/// that an id is unknown (404).
#[utoipa::path(
    get,
    path = "/guilds/{guild_id}/audit",
    tag = "moderation",
    security(("bearer" = [])),
    params(GuildPath, AuditQuery),
    responses(
        (status = 200, description = "A page of the audit log, newest first.", body = AuditList),
        (status = 403, description = "Not a member, no such guild, or lacks `view_audit_log` (`audit_access_denied`).", body = ErrorBody),
        (status = 404, description = "No such guild; told only to the server owner (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn audit(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids(guild_id): Ids<GuildId>,
    QueryParams(query): QueryParams<AuditQuery>,
) -> ApiResult<Json<AuditList>> {
    let max = state.config().audit_list_limit_max;
    let limit = page_limit(query.limit, AUDIT_DEFAULT_LIMIT.min(max), max)?;
    let cursor = query.cursor.as_deref().map(parse_cursor).transpose()?.map(
        |(created_at_unix, audit_id)| AuditCursor {
            created_at_unix,
            audit_id,
        },
    );
    let prefix = query
        .action_prefix
        .as_deref()
        .map(action_prefix)
        .transpose()?;
    let page = moderation::audit_log(&state, user.user_id, guild_id, cursor, prefix, limit).await?;
    Ok(Json(AuditList {
        next_cursor: page.next_cursor,
        events: page.entries.iter().map(AuditEvent::from).collect(),
    }))
}

// --- IP bans ------------------------------------------------------------------

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct IpBanQuery {
    /// The `next_cursor` of the page before: `<created_at_unix>_<id>`.
    #[param(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    cursor: Option<String>,
    /// Page size, 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
}

/// A ban as clients see it. The client rejects any key containing `ip` or
/// `cidr`; the address never leaves the store anyway.
#[derive(Serialize, ToSchema)]
pub struct IpBan {
    ban_id: String,
    #[schema(required = true)]
    source_user_id: Option<String>,
    #[schema(required = true)]
    reason: Option<String>,
    created_at_unix: i64,
    #[schema(required = true)]
    expires_at_unix: Option<i64>,
}

impl From<&IpBanRecord> for IpBan {
    fn from(ban: &IpBanRecord) -> Self {
        Self {
            ban_id: ban.ban_id.to_string(),
            source_user_id: ban.source_user_id.map(|id| id.to_string()),
            reason: ban.reason.clone(),
            created_at_unix: ban.created_at_unix,
            expires_at_unix: ban.expires_at_unix,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct IpBanList {
    bans: Vec<IpBan>,
    /// Where the next page starts; `null` on the last page.
    #[schema(required = true)]
    next_cursor: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IpBanByUserDto {
    #[schema(value_type = Id)]
    target_user_id: String,
    /// 1–240 bytes, not blank.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 240)]
    reason: Option<String>,
    /// 1 s to 180 days; none: until removed.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 15_552_000)]
    expires_in_secs: Option<u64>,
}

impl TryFrom<IpBanByUserDto> for IpBanByUser {
    type Error = ApiError;

    fn try_from(dto: IpBanByUserDto) -> Result<Self, Self::Error> {
        IpBanByUser::parse(&dto.target_user_id, dto.reason, dto.expires_in_secs)
    }
}

#[derive(Serialize, ToSchema)]
pub struct IpBansCreated {
    created_count: usize,
    ban_ids: Vec<String>,
}

/// `GET /guilds/{g}/ip-bans`: active bans, newest first.
#[utoipa::path(
    get,
    path = "/guilds/{guild_id}/ip-bans",
    tag = "moderation",
    security(("bearer" = [])),
    params(GuildPath, IpBanQuery),
    responses(
        (status = 200, description = "A page of active bans, without addresses.", body = IpBanList),
        (status = 403, description = "Not a member, or lacks `manage_ip_bans` (`forbidden`).", body = ErrorBody),
    ),
)]
pub async fn ip_bans(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids(guild_id): Ids<GuildId>,
    QueryParams(query): QueryParams<IpBanQuery>,
) -> ApiResult<Json<IpBanList>> {
    let limit = page_limit(query.limit, IP_BAN_DEFAULT_LIMIT, IP_BAN_MAX_LIMIT)?;
    let cursor =
        query
            .cursor
            .as_deref()
            .map(parse_cursor)
            .transpose()?
            .map(|(created_at_unix, ban_id)| IpBanCursor {
                created_at_unix,
                ban_id,
            });
    let page = moderation::ip_bans(&state, user.user_id, guild_id, cursor, limit).await?;
    Ok(Json(IpBanList {
        bans: page.bans.iter().map(IpBan::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// `POST /guilds/{g}/ip-bans/by-user`: bans every address the target made
/// accepted directory joins to this guild from. It is a ban, so the ban's
/// rule applies (403): a member the actor does not outrank, and any owner,
/// is refused; a non-member may be banned.
#[utoipa::path(
    post,
    path = "/guilds/{guild_id}/ip-bans/by-user",
    tag = "moderation",
    security(("bearer" = [])),
    params(GuildPath),
    request_body = IpBanByUserDto,
    responses(
        (status = 200, description = "The bans created (none if no address was seen).", body = IpBansCreated),
        (status = 403, description = "Lacks `manage_ip_bans`, or does not outrank the member (`forbidden`).", body = ErrorBody),
        (status = 409, description = "The guild holds as many IP bans as allowed (`quota_exceeded`).", body = ErrorBody),
    ),
)]
pub async fn ban_ips_by_user(
    State(state): State<AppState>,
    AuthUser(actor): AuthUser,
    Ids(guild_id): Ids<GuildId>,
    JsonBody(dto): JsonBody<IpBanByUserDto>,
) -> ApiResult<Json<IpBansCreated>> {
    let request = IpBanByUser::try_from(dto)?;
    let ban_ids = moderation::ban_ips_by_user(&state, actor.user_id, guild_id, request).await?;
    Ok(Json(IpBansCreated {
        created_count: ban_ids.len(),
        ban_ids: ban_ids.iter().map(Ulid::to_string).collect(),
    }))
}

/// `DELETE /guilds/{g}/ip-bans/{id}`.
#[utoipa::path(
    delete,
    path = "/guilds/{guild_id}/ip-bans/{ban_id}",
    tag = "moderation",
    security(("bearer" = [])),
    params(IpBanPath),
    responses(
        (status = 200, description = "Removed.", body = Ack),
        (status = 403, description = "Not a member, or lacks `manage_ip_bans` (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such ban (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn remove_ip_ban(
    State(state): State<AppState>,
    AuthUser(actor): AuthUser,
    Ids((guild_id, ban_id)): Ids<(GuildId, Ulid)>,
) -> ApiResult<Json<Ack>> {
    moderation::remove_ip_ban(&state, actor.user_id, guild_id, ban_id).await?;
    Ok(Json(ACK))
}

pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(kick))
        .routes(routes!(ban))
        .routes(routes!(audit))
        .routes(routes!(ip_bans))
        .routes(routes!(ban_ips_by_user))
        .routes(routes!(remove_ip_ban))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ban_by_user_requests_are_validated() {
        let dto = |reason: Option<&str>, secs: Option<u64>| IpBanByUserDto {
            target_user_id: UserId::generate().to_string(),
            reason: reason.map(str::to_owned),
            expires_in_secs: secs,
        };
        assert!(IpBanByUser::try_from(dto(None, None)).is_ok());
        assert!(IpBanByUser::try_from(dto(Some(&"r".repeat(240)), Some(15_552_000))).is_ok());
        assert!(IpBanByUser::try_from(dto(Some(&"r".repeat(241)), None)).is_err());
        assert!(IpBanByUser::try_from(dto(Some("  "), None)).is_err());
        assert!(IpBanByUser::try_from(dto(None, Some(0))).is_err());
        assert!(IpBanByUser::try_from(dto(None, Some(15_552_001))).is_err());
        let bad_id = IpBanByUserDto {
            target_user_id: "nope".to_owned(),
            reason: None,
            expires_in_secs: None,
        };
        assert!(IpBanByUser::try_from(bad_id).is_err());
    }
}
