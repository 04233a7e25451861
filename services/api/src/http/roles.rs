//! `/guilds/{g}/roles…`: the role list, role create/update/delete/reorder,
//! the default join role, and role assignments (PROTOCOL.md §2.8).
//!
//! This adapter owns the request and response shapes, and the `{"accepted":
//! true}` acknowledgement other routes answer with too; the use cases are
//! `domain::roles`.

use axum::Json;
use axum::extract::State;
use filament_ids::{GuildId, RoleId, UserId};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;
use utoipa_axum::routes;

use crate::domain::parse_id;
use crate::domain::permissions::parse_permissions;
use crate::domain::roles::{self, ColorHex, NewRole, RoleListing, RoleName, RoleOrder, RoleUpdate};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::{AuthUser, Ids, JsonBody};
use crate::http::openapi::{ApiRouter, GuildPath, Id, RoleMemberPath, RolePath};
use crate::state::AppState;

/// `{"accepted":true}`.
#[derive(Serialize, ToSchema)]
pub struct Ack {
    /// Always `true`.
    accepted: bool,
}

pub const ACK: Ack = Ack { accepted: true };

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoleDto {
    /// 1–32 bytes after trimming, no control characters; not `@everyone`
    /// or `workspace_owner`.
    #[schema(min_length = 1, max_length = 32)]
    name: String,
    #[schema(value_type = Vec<filament_wire::Permission>)]
    permissions: Vec<String>,
    /// 1 to 2^31-1, below the caller's highest role; default just below it.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 2_147_483_647)]
    position: Option<i64>,
    /// `#RRGGBB`.
    #[serde(default)]
    #[schema(pattern = "^#[0-9A-Fa-f]{6}$")]
    color_hex: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRoleDto {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<filament_wire::Permission>>)]
    permissions: Option<Vec<String>>,
    /// Absent leaves the color; `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = "^#[0-9A-Fa-f]{6}$")]
    color_hex: Option<Option<String>>,
}

/// Distinguishes a present `null` (`Some(None)`) from an absent field
/// (`None`, through `#[serde(default)]`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReorderDto {
    /// 1–64 distinct ids of roles the caller may manage.
    #[schema(value_type = Vec<Id>, min_items = 1, max_items = 64)]
    role_ids: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DefaultRoleDto {
    /// Required, and nullable: `null` clears the default (PROTOCOL.md §2.8);
    /// a missing field is a 422 like any other.
    #[serde(deserialize_with = "present")]
    #[schema(value_type = Option<Id>, required = true)]
    role_id: Option<Option<String>>,
}

#[derive(Serialize, ToSchema)]
pub struct RoleList {
    roles: Vec<filament_wire::Role>,
    #[schema(required = true)]
    default_join_role_id: Option<String>,
}

impl TryFrom<CreateRoleDto> for NewRole {
    type Error = ApiError;

    fn try_from(dto: CreateRoleDto) -> Result<Self, Self::Error> {
        let name = RoleName::try_from(dto.name)?;
        let permissions = parse_permissions(&dto.permissions)?;
        let color_hex = dto.color_hex.map(ColorHex::try_from).transpose()?;
        NewRole::new(name, permissions, dto.position, color_hex)
    }
}

impl TryFrom<UpdateRoleDto> for RoleUpdate {
    type Error = ApiError;

    fn try_from(dto: UpdateRoleDto) -> Result<Self, Self::Error> {
        let name = dto.name.map(RoleName::try_from).transpose()?;
        let permissions = dto
            .permissions
            .as_deref()
            .map(parse_permissions)
            .transpose()?;
        let color_hex = dto
            .color_hex
            .map(|color| color.map(ColorHex::try_from).transpose())
            .transpose()?;
        RoleUpdate::new(name, permissions, color_hex)
    }
}

impl From<RoleListing> for RoleList {
    fn from(listing: RoleListing) -> Self {
        Self {
            roles: listing.roles,
            default_join_role_id: listing.default_join_role.map(|id| id.to_string()),
        }
    }
}

#[utoipa::path(
    get,
    path = "/guilds/{guild_id}/roles",
    tag = "roles",
    security(("bearer" = [])),
    params(GuildPath),
    responses(
        (status = 200, description = "The guild's roles and its default join role.", body = RoleList),
        (status = 403, description = "Not a member, or no such guild (`forbidden`).", body = ErrorBody),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids(guild_id): Ids<GuildId>,
) -> ApiResult<Json<RoleList>> {
    let listing = roles::list(&state, user.user_id, guild_id).await?;
    Ok(Json(RoleList::from(listing)))
}

#[utoipa::path(
    post,
    path = "/guilds/{guild_id}/roles",
    tag = "roles",
    security(("bearer" = [])),
    params(GuildPath),
    request_body = CreateRoleDto,
    responses(
        (status = 200, description = "The new role.", body = filament_wire::Role),
        (status = 403, description = "Not a member, or lacks `manage_workspace_roles` or rank (`forbidden`).", body = ErrorBody),
        (status = 409, description = "The guild has 64 roles (`quota_exceeded`).", body = ErrorBody),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids(guild_id): Ids<GuildId>,
    JsonBody(dto): JsonBody<CreateRoleDto>,
) -> ApiResult<Json<filament_wire::Role>> {
    let new = NewRole::try_from(dto)?;
    roles::create(&state, user.user_id, guild_id, new)
        .await
        .map(Json)
}

#[utoipa::path(
    patch,
    path = "/guilds/{guild_id}/roles/{role_id}",
    tag = "roles",
    security(("bearer" = [])),
    params(RolePath),
    request_body = UpdateRoleDto,
    responses(
        (status = 200, description = "The updated role.", body = filament_wire::Role),
        (status = 403, description = "Not a member, or lacks `manage_workspace_roles` or rank (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such role (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn update(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids((guild_id, role_id)): Ids<(GuildId, RoleId)>,
    JsonBody(dto): JsonBody<UpdateRoleDto>,
) -> ApiResult<Json<filament_wire::Role>> {
    let update = RoleUpdate::try_from(dto)?;
    roles::update(&state, user.user_id, guild_id, role_id, update)
        .await
        .map(Json)
}

#[utoipa::path(
    delete,
    path = "/guilds/{guild_id}/roles/{role_id}",
    tag = "roles",
    security(("bearer" = [])),
    params(RolePath),
    responses(
        (status = 200, description = "Deleted.", body = Ack),
        (status = 403, description = "A system role, or lacks `manage_workspace_roles` or rank (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such role (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids((guild_id, role_id)): Ids<(GuildId, RoleId)>,
) -> ApiResult<Json<Ack>> {
    roles::delete(&state, user.user_id, guild_id, role_id).await?;
    Ok(Json(ACK))
}

#[utoipa::path(
    post,
    path = "/guilds/{guild_id}/roles/reorder",
    tag = "roles",
    security(("bearer" = [])),
    params(GuildPath),
    request_body = ReorderDto,
    responses(
        (status = 200, description = "Reordered, highest first.", body = Ack),
        (status = 403, description = "Not a member, or lacks `manage_workspace_roles` or rank (`forbidden`).", body = ErrorBody),
    ),
)]
pub async fn reorder(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids(guild_id): Ids<GuildId>,
    JsonBody(dto): JsonBody<ReorderDto>,
) -> ApiResult<Json<Ack>> {
    let order = RoleOrder::try_from(dto.role_ids.as_slice())?;
    roles::reorder(&state, user.user_id, guild_id, order).await?;
    Ok(Json(ACK))
}

#[utoipa::path(
    post,
    path = "/guilds/{guild_id}/roles/default",
    tag = "roles",
    security(("bearer" = [])),
    params(GuildPath),
    request_body = DefaultRoleDto,
    responses(
        (status = 200, description = "Set, or cleared.", body = Ack),
        (status = 403, description = "Not a member, or lacks `manage_workspace_roles` or rank (`forbidden`).", body = ErrorBody),
    ),
)]
pub async fn set_default(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids(guild_id): Ids<GuildId>,
    JsonBody(dto): JsonBody<DefaultRoleDto>,
) -> ApiResult<Json<Ack>> {
    let role_id = dto.role_id.flatten().as_deref().map(parse_id).transpose()?;
    let role = role_id.map(RoleId);
    roles::set_default(&state, user.user_id, guild_id, role).await?;
    Ok(Json(ACK))
}

#[utoipa::path(
    post,
    path = "/guilds/{guild_id}/roles/{role_id}/members/{user_id}",
    tag = "roles",
    security(("bearer" = [])),
    params(RoleMemberPath),
    responses(
        (status = 200, description = "Assigned, or already.", body = Ack),
        (status = 403, description = "Lacks `manage_member_roles`, or the role is not below the caller (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such role, or not a member (`not_found`).", body = ErrorBody),
        (status = 409, description = "The member has 16 roles (`quota_exceeded`).", body = ErrorBody),
    ),
)]
pub async fn assign(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids((guild_id, role_id, target)): Ids<(GuildId, RoleId, UserId)>,
) -> ApiResult<Json<Ack>> {
    roles::assign(&state, user.user_id, guild_id, role_id, target).await?;
    Ok(Json(ACK))
}

#[utoipa::path(
    delete,
    path = "/guilds/{guild_id}/roles/{role_id}/members/{user_id}",
    tag = "roles",
    security(("bearer" = [])),
    params(RoleMemberPath),
    responses(
        (status = 200, description = "Unassigned, or was not assigned.", body = Ack),
        (status = 403, description = "Lacks `manage_member_roles` or rank, or the last `workspace_owner` (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such role, or not a member (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn unassign(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids((guild_id, role_id, target)): Ids<(GuildId, RoleId, UserId)>,
) -> ApiResult<Json<Ack>> {
    roles::unassign(&state, user.user_id, guild_id, role_id, target).await?;
    Ok(Json(ACK))
}

pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(reorder))
        .routes(routes!(set_default))
        .routes(routes!(update, delete))
        .routes(routes!(assign, unassign))
}
