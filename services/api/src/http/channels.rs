//! `/guilds/{g}/channels…`: create, list (only the channels the caller can
//! view), rename, delete, and the caller's own channel permissions.
//!
//! This adapter owns the request and response shapes; the use cases are
//! `domain::channels`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use filament_ids::{ChannelId, GuildId};
use filament_wire::Channel;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::routes;

use crate::domain::Name;
use crate::domain::channels::{self, NewChannel};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::{AuthUser, Ids, JsonBody};
use crate::http::openapi::{ApiRouter, ChannelPath, GuildPath};
use crate::state::AppState;
use crate::store::{ChannelKind, MemberRole};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateChannelDto {
    /// 1–64 printable ASCII characters or spaces, not blank.
    #[schema(min_length = 1, max_length = 64, pattern = "^[ -~]*[!-~][ -~]*$")]
    name: String,
    /// `text` (the default) or `voice`.
    #[serde(default)]
    #[schema(value_type = Option<filament_wire::ChannelKind>)]
    kind: Option<String>,
}

impl TryFrom<CreateChannelDto> for NewChannel {
    type Error = ApiError;

    fn try_from(dto: CreateChannelDto) -> Result<Self, Self::Error> {
        let name = Name::try_from(dto.name)?;
        let kind = match dto.kind.as_deref() {
            None => ChannelKind::Text,
            Some(raw) => ChannelKind::parse(raw).ok_or(ApiError::InvalidRequest)?,
        };
        Ok(Self { name, kind })
    }
}

#[derive(Serialize, ToSchema)]
pub struct ChannelList {
    channels: Vec<Channel>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateChannelDto {
    /// The new name; without it the request is a 400.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64, pattern = "^[ -~]*[!-~][ -~]*$")]
    name: Option<String>,
}

/// `GET …/permissions/self`.
#[derive(Serialize, ToSchema)]
pub struct SelfPermissions {
    role: filament_wire::LegacyRole,
    permissions: Vec<filament_wire::Permission>,
}

#[utoipa::path(
    post,
    path = "/guilds/{guild_id}/channels",
    tag = "channels",
    security(("bearer" = [])),
    params(GuildPath),
    request_body = CreateChannelDto,
    responses(
        (status = 200, description = "The new channel.", body = Channel),
        (status = 403, description = "Not a member (or no such guild), or lacks `manage_channel_overrides` (`forbidden`).", body = ErrorBody),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids(guild_id): Ids<GuildId>,
    JsonBody(dto): JsonBody<CreateChannelDto>,
) -> ApiResult<Json<Channel>> {
    let new = NewChannel::try_from(dto)?;
    channels::create(&state, user.user_id, guild_id, new)
        .await
        .map(Json)
}

#[utoipa::path(
    get,
    path = "/guilds/{guild_id}/channels",
    tag = "channels",
    security(("bearer" = [])),
    params(GuildPath),
    responses(
        (status = 200, description = "The channels the caller can view (at most 500).", body = ChannelList),
        (status = 403, description = "Not a member, or no such guild (`forbidden`).", body = ErrorBody),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids(guild_id): Ids<GuildId>,
) -> ApiResult<Json<ChannelList>> {
    let channels = channels::list(&state, user.user_id, guild_id).await?;
    Ok(Json(ChannelList { channels }))
}

/// Renames a channel; channel-level `manage_channel_overrides`.
#[utoipa::path(
    patch,
    path = "/guilds/{guild_id}/channels/{channel_id}",
    tag = "channels",
    security(("bearer" = [])),
    params(ChannelPath),
    request_body = UpdateChannelDto,
    responses(
        (status = 200, description = "The renamed channel.", body = Channel),
        (status = 403, description = "Cannot view the channel, or lacks `manage_channel_overrides` (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such channel in the guild (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn update(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids((guild_id, channel_id)): Ids<(GuildId, ChannelId)>,
    JsonBody(dto): JsonBody<UpdateChannelDto>,
) -> ApiResult<Json<Channel>> {
    let name = Name::try_from(dto.name.ok_or(ApiError::InvalidRequest)?)?;
    channels::rename(&state, user.user_id, guild_id, channel_id, name)
        .await
        .map(Json)
}

/// Deletes a channel with its messages; channel-level
/// `manage_channel_overrides`. 204 like the other deletes of content.
#[utoipa::path(
    delete,
    path = "/guilds/{guild_id}/channels/{channel_id}",
    tag = "channels",
    security(("bearer" = [])),
    params(ChannelPath),
    responses(
        (status = 204, description = "Deleted, with its messages."),
        (status = 403, description = "Cannot view the channel, or lacks `manage_channel_overrides` (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such channel in the guild (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids((guild_id, channel_id)): Ids<(GuildId, ChannelId)>,
) -> ApiResult<StatusCode> {
    channels::delete(&state, user.user_id, guild_id, channel_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's legacy role and channel-level permissions, in bit order.
#[utoipa::path(
    get,
    path = "/guilds/{guild_id}/channels/{channel_id}/permissions/self",
    tag = "channels",
    security(("bearer" = [])),
    params(ChannelPath),
    responses(
        (status = 200, description = "The caller's role and permissions in the channel.", body = SelfPermissions),
        (status = 403, description = "Cannot view the channel (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such channel in the guild (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn permissions_self(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids((guild_id, channel_id)): Ids<(GuildId, ChannelId)>,
) -> ApiResult<Json<SelfPermissions>> {
    let own = channels::own_permissions(&state, user.user_id, guild_id, channel_id).await?;
    Ok(Json(SelfPermissions {
        role: match own.role {
            MemberRole::Owner => filament_wire::LegacyRole::Owner,
            MemberRole::Moderator => filament_wire::LegacyRole::Moderator,
            MemberRole::Member => filament_wire::LegacyRole::Member,
        },
        permissions: own.permissions.to_wire(),
    }))
}

pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(update, delete))
        .routes(routes!(permissions_self))
}
