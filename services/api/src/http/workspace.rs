//! `PATCH /guilds/{g}`: the workspace's name and visibility (PROTOCOL.md §2.5),
//! announced with `workspace_update` when something actually changed.

use axum::Json;
use axum::extract::State;
use filament_proto::v1::{self as pb, event};
use filament_wire::Guild;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::routes;

use crate::clock::now_unix;
use crate::domain::Name;
use crate::domain::permissions::Permission;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::{AuthUser, Ids, JsonBody};
use crate::http::openapi::{ApiRouter, GuildPath};
use crate::publish;
use crate::state::AppState;
use crate::store::{GuildChange, GuildRecord, Visibility};

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

/// A validated guild update: at least one field.
struct GuildUpdate {
    name: Option<Name>,
    visibility: Option<Visibility>,
}

impl TryFrom<UpdateGuildDto> for GuildUpdate {
    type Error = ApiError;

    fn try_from(dto: UpdateGuildDto) -> Result<Self, Self::Error> {
        if dto.name.is_none() && dto.visibility.is_none() {
            return Err(ApiError::InvalidRequest);
        }
        Ok(Self {
            name: dto.name.map(Name::try_from).transpose()?,
            visibility: dto
                .visibility
                .map(|raw| Visibility::parse(&raw).ok_or(ApiError::InvalidRequest))
                .transpose()?,
        })
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
    Ids([guild_id]): Ids<1>,
    JsonBody(dto): JsonBody<UpdateGuildDto>,
) -> ApiResult<Json<Guild>> {
    let update = GuildUpdate::try_from(dto)?;
    state
        .authorizer()
        .guild(guild_id, user.user_id)
        .await?
        .require(Permission::ManageRoles)?;
    let now = now_unix();
    // What changed, and so the event, only the write's transaction knows.
    let deferred = publish::Deferred::new(&state);
    let outbox = |change: &GuildChange| {
        let (before, after) = (&change.before, &change.after);
        let fields = pb::WorkspaceFields {
            name: (after.name != before.name).then(|| after.name.clone()),
            visibility: (after.visibility != before.visibility)
                .then(|| proto_visibility(after.visibility).into()),
        };
        if fields.name.is_none() && fields.visibility.is_none() {
            return Vec::new();
        }
        let guild = guild_id.to_string();
        let event = publish::for_guild(
            &guild,
            event::Payload::WorkspaceUpdate(pb::WorkspaceUpdate {
                guild_id: guild.clone(),
                updated_fields: Some(fields),
                updated_at_unix: now,
                actor_user_id: Some(user.user_id.to_string()),
            }),
        );
        deferred.rows(vec![event])
    };
    let change = state
        .store()
        .update_guild(
            guild_id,
            update.name.map(Name::into_string),
            update.visibility,
            &outbox,
        )
        .await?
        .ok_or(ApiError::NotFound)?;
    publish::publish_all(&state, deferred.into_pending()).await;
    Ok(Json(wire_guild(&change.after)))
}

fn proto_visibility(visibility: Visibility) -> pb::Visibility {
    match visibility {
        Visibility::Private => pb::Visibility::Private,
        Visibility::Public => pb::Visibility::Public,
    }
}

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

pub fn routes() -> ApiRouter {
    ApiRouter::new().routes(routes!(update))
}
