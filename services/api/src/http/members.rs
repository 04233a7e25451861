//! `/guilds/{g}/members`: the member list, adding a member, and changing a
//! member's legacy role (PROTOCOL.md §2.6).
//!
//! This adapter owns the request and response shapes; the use cases and
//! the legacy rules are `domain::members`.

use axum::Json;
use axum::extract::State;
use filament_ids::{GuildId, RoleId, UserId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use crate::domain::members::{self, MEMBER_LIST_DEFAULT_LIMIT, MEMBER_LIST_MAX_LIMIT, MemberPage};
use crate::domain::{page_limit, parse_id};
use crate::error::{ApiResult, ErrorBody};
use crate::http::extract::{AuthUser, Ids, JsonBody, QueryParams};
use crate::http::openapi::{ApiRouter, GuildPath, Id, MemberPath};
use crate::http::roles::{ACK, Ack};
use crate::state::AppState;
use crate::store::MemberRole;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MemberListQuery {
    /// The `next_cursor` of the page before.
    #[param(value_type = Option<Id>)]
    cursor: Option<String>,
    /// Page size, 1–200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct MemberEntry {
    user_id: String,
    /// Explicitly assigned roles, ascending (at most 16).
    role_ids: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct MemberList {
    members: Vec<MemberEntry>,
    /// Where the next page starts; `null` on the last page.
    #[schema(required = true)]
    next_cursor: Option<String>,
}

impl From<MemberPage> for MemberList {
    fn from(page: MemberPage) -> Self {
        let ids = |ids: Vec<RoleId>| ids.iter().map(RoleId::to_string).collect();
        Self {
            members: page
                .members
                .into_iter()
                .map(|member| MemberEntry {
                    user_id: member.user_id.to_string(),
                    role_ids: ids(member.role_ids),
                })
                .collect(),
            next_cursor: page.next_cursor.map(|id| id.to_string()),
        }
    }
}

/// The legacy role as clients send it; anything else is a 422 like any
/// other mistyped field.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum LegacyRoleDto {
    Owner,
    Moderator,
    Member,
}

impl From<LegacyRoleDto> for MemberRole {
    fn from(role: LegacyRoleDto) -> Self {
        match role {
            LegacyRoleDto::Owner => Self::Owner,
            LegacyRoleDto::Moderator => Self::Moderator,
            LegacyRoleDto::Member => Self::Member,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMemberDto {
    role: LegacyRoleDto,
}

/// `GET /guilds/{g}/members`: members by user id, with their explicit role
/// assignments.
#[utoipa::path(
    get,
    path = "/guilds/{guild_id}/members",
    tag = "members",
    security(("bearer" = [])),
    params(GuildPath, MemberListQuery),
    responses(
        (status = 200, description = "A page of members, by user id.", body = MemberList),
        (status = 403, description = "Not a member, or no such guild (`forbidden`).", body = ErrorBody),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids(guild_id): Ids<GuildId>,
    QueryParams(query): QueryParams<MemberListQuery>,
) -> ApiResult<Json<MemberList>> {
    let limit = page_limit(
        query.limit,
        MEMBER_LIST_DEFAULT_LIMIT,
        MEMBER_LIST_MAX_LIMIT,
    )?;
    let cursor = query
        .cursor
        .as_deref()
        .map(parse_id)
        .transpose()?
        .map(UserId);
    let page = members::list(&state, user.user_id, guild_id, cursor, limit).await?;
    Ok(Json(MemberList::from(page)))
}

/// `POST /guilds/{g}/members/{u}`: adds a member. Idempotent; a banned user
/// cannot be added.
#[utoipa::path(
    post,
    path = "/guilds/{guild_id}/members/{user_id}",
    tag = "members",
    security(("bearer" = [])),
    params(MemberPath),
    responses(
        (status = 200, description = "A member now, or already.", body = Ack),
        (status = 403, description = "Lacks `manage_member_roles`, or the user is banned (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such user (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn add(
    State(state): State<AppState>,
    AuthUser(actor): AuthUser,
    Ids((guild_id, target)): Ids<(GuildId, UserId)>,
) -> ApiResult<Json<Ack>> {
    members::add(&state, actor.user_id, guild_id, target).await?;
    Ok(Json(ACK))
}

/// `PATCH /guilds/{g}/members/{u}`: moves a member between `member` and
/// `moderator` under the legacy rules.
#[utoipa::path(
    patch,
    path = "/guilds/{guild_id}/members/{user_id}",
    tag = "members",
    security(("bearer" = [])),
    params(MemberPath),
    request_body = UpdateMemberDto,
    responses(
        (status = 200, description = "The role is changed.", body = Ack),
        (status = 403, description = "The legacy rules refuse the change (`forbidden`).", body = ErrorBody),
        (status = 404, description = "Not a member (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn update(
    State(state): State<AppState>,
    AuthUser(actor): AuthUser,
    Ids((guild_id, target)): Ids<(GuildId, UserId)>,
    JsonBody(dto): JsonBody<UpdateMemberDto>,
) -> ApiResult<Json<Ack>> {
    let new_role = MemberRole::from(dto.role);
    members::update_role(&state, actor.user_id, guild_id, target, new_role).await?;
    Ok(Json(ACK))
}

pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(add, update))
}
