//! `/guilds`: create, list, join.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use filament_wire::Guild;
use serde::{Deserialize, Serialize};

use crate::clock::now_unix;
use crate::domain::Name;
use crate::error::{ApiError, ApiResult};
use crate::events;
use crate::http::extract::{AuthUser, Ids, JsonBody};
use crate::state::AppState;
use crate::store::{GuildRecord, MemberRecord, MemberRole, Visibility};

/// The most guilds `GET /guilds` returns.
const GUILD_LIST_LIMIT: u32 = 200;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGuildDto {
    name: String,
    #[serde(default)]
    visibility: Option<String>,
}

/// The contract's Guild shape of a stored guild.
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

#[derive(Serialize)]
pub struct GuildList {
    guilds: Vec<Guild>,
}

#[derive(Serialize)]
pub struct JoinOutcome {
    guild_id: String,
    outcome: &'static str,
}

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

/// Joins a public guild. A private or unknown guild is a 404, so private
/// guilds cannot be discovered by id.
pub async fn join(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids([guild_id]): Ids<1>,
) -> ApiResult<Json<JoinOutcome>> {
    let guild = state
        .store()
        .guild(guild_id)
        .await?
        .filter(|g| g.visibility == Visibility::Public)
        .ok_or(ApiError::NotFound)?;
    let joined_at_unix = now_unix();
    let added = state
        .store()
        .add_member(MemberRecord {
            guild_id: guild.guild_id,
            user_id: user.user_id,
            role: MemberRole::Member,
            joined_at_unix,
        })
        .await?;
    let guild_id = guild.guild_id.to_string();
    if added {
        let user_id = user.user_id.to_string();
        events::publish(
            &state,
            events::member_add(&guild_id, &user_id, joined_at_unix, &user_id),
        )
        .await;
    }
    Ok(Json(JoinOutcome {
        guild_id,
        outcome: if added { "accepted" } else { "already_member" },
    }))
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/guilds", post(create).get(list))
        .route("/guilds/{guild_id}/join", post(join))
}
