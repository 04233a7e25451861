//! `/guilds/{g}/channels`: create and list.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use filament_proto::v1 as pb;
use filament_wire::Channel;
use serde::{Deserialize, Serialize};

use crate::clock::now_unix;
use crate::domain::Name;
use crate::error::{ApiError, ApiResult};
use crate::events;
use crate::http::extract::{AuthUser, Ids, JsonBody};
use crate::permissions::Permission;
use crate::state::AppState;
use crate::store::{ChannelKind, ChannelRecord};

/// The most channels `GET /guilds/{g}/channels` returns.
const CHANNEL_LIST_LIMIT: u32 = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateChannelDto {
    name: String,
    #[serde(default)]
    kind: Option<String>,
}

/// The contract's Channel shape of a stored channel.
fn wire_channel(channel: &ChannelRecord) -> Channel {
    Channel {
        channel_id: channel.channel_id.to_string(),
        name: channel.name.clone(),
        kind: match channel.kind {
            ChannelKind::Text => filament_wire::ChannelKind::Text,
            ChannelKind::Voice => filament_wire::ChannelKind::Voice,
        },
    }
}

#[derive(Serialize)]
pub struct ChannelList {
    channels: Vec<Channel>,
}

pub async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids([guild_id]): Ids<1>,
    JsonBody(dto): JsonBody<CreateChannelDto>,
) -> ApiResult<Json<Channel>> {
    let name = Name::try_from(dto.name)?;
    let kind = match dto.kind.as_deref() {
        None => ChannelKind::Text,
        Some(raw) => ChannelKind::parse(raw).ok_or(ApiError::InvalidRequest)?,
    };
    state
        .authorizer()
        .guild(guild_id, user.user_id)
        .await?
        .require(Permission::ManageChannelOverrides)?;
    let channel = ChannelRecord {
        channel_id: state.new_id(),
        guild_id,
        name: name.into_string(),
        kind,
        created_at_unix: now_unix(),
    };
    state.store().create_channel(channel.clone()).await?;
    events::publish(
        &state,
        events::channel_create(&guild_id.to_string(), proto_channel(&channel)),
    )
    .await;
    Ok(Json(wire_channel(&channel)))
}

pub async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids([guild_id]): Ids<1>,
) -> ApiResult<Json<ChannelList>> {
    let access = state.authorizer().guild(guild_id, user.user_id).await?;
    let channels = if access.permissions.contains(Permission::CreateMessage) {
        state.store().channels(guild_id, CHANNEL_LIST_LIMIT).await?
    } else {
        Vec::new()
    };
    Ok(Json(ChannelList {
        channels: channels.iter().map(wire_channel).collect(),
    }))
}

pub fn proto_channel(channel: &ChannelRecord) -> pb::Channel {
    pb::Channel {
        channel_id: channel.channel_id.to_string(),
        name: channel.name.clone(),
        kind: match channel.kind {
            ChannelKind::Text => pb::ChannelKind::Text,
            ChannelKind::Voice => pb::ChannelKind::Voice,
        }
        .into(),
    }
}

pub fn routes() -> Router<AppState> {
    Router::new().route("/guilds/{guild_id}/channels", post(create).get(list))
}
