//! Channel permission overrides (PROTOCOL.md §2.9): the legacy
//! `/overrides/{role}` route the web client uses, and the
//! `/permission-overrides/{target_kind}/{target_id}` route.
//!
//! This adapter parses the paths and owns the request shape; the use cases
//! are `domain::overrides`.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::routes;

use crate::domain::overrides::{self, OverrideMasks};
use crate::domain::parse_id;
use crate::domain::permissions::parse_permissions;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::{AuthUser, JsonBody};
use crate::http::openapi::{ApiRouter, LegacyOverridePath, TargetOverridePath};
use crate::http::roles::{ACK, Ack};
use crate::state::AppState;
use crate::store::{MemberRole, OverrideTarget};

/// The permissions an override allows and denies; none in both.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverrideDto {
    #[schema(value_type = Vec<filament_wire::Permission>)]
    allow: Vec<String>,
    #[schema(value_type = Vec<filament_wire::Permission>)]
    deny: Vec<String>,
}

impl TryFrom<OverrideDto> for OverrideMasks {
    type Error = ApiError;

    fn try_from(dto: OverrideDto) -> Result<Self, Self::Error> {
        let allow = parse_permissions(&dto.allow)?;
        let deny = parse_permissions(&dto.deny)?;
        OverrideMasks::new(allow, deny)
    }
}

/// `POST /guilds/{g}/channels/{c}/overrides/{role}`: `role` is
/// `owner`/`moderator`/`member`, stored on the matching built-in role.
/// Legacy owners (and the server owner) only.
#[utoipa::path(
    post,
    path = "/guilds/{guild_id}/channels/{channel_id}/overrides/{role}",
    tag = "channels",
    security(("bearer" = [])),
    params(LegacyOverridePath),
    request_body = OverrideDto,
    responses(
        (status = 200, description = "The override is set.", body = Ack),
        (status = 403, description = "Not a legacy owner (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such channel, or the built-in role was deleted (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn set_legacy(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    path: Result<Path<(String, String, String)>, PathRejection>,
    JsonBody(dto): JsonBody<OverrideDto>,
) -> ApiResult<Json<Ack>> {
    let Path((guild, channel, role)) = path.map_err(|_| ApiError::InvalidRequest)?;
    let (guild_id, channel_id) = (parse_id(&guild)?, parse_id(&channel)?);
    let legacy = MemberRole::parse(&role).ok_or(ApiError::InvalidRequest)?;
    let masks = OverrideMasks::try_from(dto)?;
    overrides::set_legacy(&state, user.user_id, guild_id, channel_id, legacy, masks).await?;
    Ok(Json(ACK))
}

/// `POST /guilds/{g}/channels/{c}/permission-overrides/{target_kind}/{target_id}`:
/// an override on any role of the guild or on one member; channel-level
/// `manage_channel_overrides`.
#[utoipa::path(
    post,
    path = "/guilds/{guild_id}/channels/{channel_id}/permission-overrides/{target_kind}/{target_id}",
    tag = "channels",
    security(("bearer" = [])),
    params(TargetOverridePath),
    request_body = OverrideDto,
    responses(
        (status = 200, description = "The override is set.", body = Ack),
        (status = 403, description = "Cannot view the channel, or lacks `manage_channel_overrides` (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such channel, role or member (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn set_target(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    path: Result<Path<(String, String, String, String)>, PathRejection>,
    JsonBody(dto): JsonBody<OverrideDto>,
) -> ApiResult<Json<Ack>> {
    let Path((guild, channel, kind, raw_target)) = path.map_err(|_| ApiError::InvalidRequest)?;
    let (guild_id, channel_id) = (parse_id(&guild)?, parse_id(&channel)?);
    let target = match kind.as_str() {
        "role" => OverrideTarget::Role(parse_id(&raw_target)?),
        "member" => OverrideTarget::Member(parse_id(&raw_target)?),
        _ => return Err(ApiError::InvalidRequest),
    };
    let masks = OverrideMasks::try_from(dto)?;
    overrides::set_target(&state, user.user_id, guild_id, channel_id, target, masks).await?;
    Ok(Json(ACK))
}

pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(set_legacy))
        .routes(routes!(set_target))
}
