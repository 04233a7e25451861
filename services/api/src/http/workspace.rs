//! `PATCH /guilds/{g}`: the workspace's name and visibility (PROTOCOL.md §2.5),
//! announced with `workspace_update` when something actually changed. This
//! adapter owns the request shape; the use case is `domain::guilds::update`.

use axum::Json;
use axum::extract::State;
use filament_ids::GuildId;
use filament_wire::Guild;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::routes;

use crate::domain::Name;
use crate::domain::guilds::{self, GuildUpdate};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::{AuthUser, Ids, JsonBody};
use crate::http::openapi::{ApiRouter, GuildPath};
use crate::state::AppState;
use crate::store::Visibility;

/// At least one field.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateGuildDto {
    /// 1–64 printable ASCII characters or spaces, not blank.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64, pattern = "^[ -~]*[!-~][ -~]*$")]
    name: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<filament_wire::Visibility>)]
    visibility: Option<String>,
}

impl TryFrom<UpdateGuildDto> for GuildUpdate {
    type Error = ApiError;

    fn try_from(dto: UpdateGuildDto) -> Result<Self, Self::Error> {
        GuildUpdate::new(
            dto.name.map(Name::try_from).transpose()?,
            dto.visibility
                .map(|raw| Visibility::parse(&raw).ok_or(ApiError::InvalidRequest))
                .transpose()?,
        )
    }
}

#[utoipa::path(
    patch,
    path = "/guilds/{guild_id}",
    tag = "guilds",
    security(("bearer" = [])),
    params(GuildPath),
    request_body = UpdateGuildDto,
    responses(
        (status = 200, description = "The guild as it is now.", body = Guild),
        (status = 403, description = "Not a member, or lacks `manage_roles` (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such guild (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn update(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids(guild_id): Ids<GuildId>,
    JsonBody(dto): JsonBody<UpdateGuildDto>,
) -> ApiResult<Json<Guild>> {
    let update = GuildUpdate::try_from(dto)?;
    guilds::update(&state, user.user_id, guild_id, update)
        .await
        .map(Json)
}

pub fn routes() -> ApiRouter {
    ApiRouter::new().routes(routes!(update))
}
