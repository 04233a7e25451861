//! `/guilds/{g}/channels…`: create, list (only the channels the caller can
//! view), rename, delete, and the caller's own channel permissions.
//!
//! A deleted channel is announced, then access is revoked before the call
//! returns, so no gateway keeps a subscription to a channel that is gone.
//! Each change's events are stored with it (docs/adr/0006-outbox.md).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use filament_proto::v1::{self as pb, event};
use filament_wire::Channel;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::routes;

use crate::clock::now_unix;
use crate::domain::Name;
use crate::domain::permissions::Permission;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::{AuthUser, Ids, JsonBody};
use crate::http::openapi::{ApiRouter, ChannelPath, GuildPath};
use crate::outbox::Pending;
use crate::publish;
use crate::state::AppState;
use crate::store::{ChannelChange, ChannelKind, ChannelRecord, MemberRole};

/// The most channels `GET /guilds/{g}/channels` returns.
const CHANNEL_LIST_LIMIT: u32 = 500;

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

/// The Channel shape (PROTOCOL.md §1.9) of a stored channel.
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
    let created = Pending::new(
        &state,
        publish::channel_create(&guild_id.to_string(), proto_channel(&channel)),
    );
    state
        .store()
        .create_channel(channel.clone(), vec![created.row()])
        .await?;
    created.publish(&state).await;
    Ok(Json(wire_channel(&channel)))
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
    Ids([guild_id]): Ids<1>,
) -> ApiResult<Json<ChannelList>> {
    let channels = state
        .authorizer()
        .visible_channels(guild_id, user.user_id, CHANNEL_LIST_LIMIT)
        .await?;
    Ok(Json(ChannelList {
        channels: channels.iter().map(wire_channel).collect(),
    }))
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
    Ids([guild_id, channel_id]): Ids<2>,
    JsonBody(dto): JsonBody<UpdateChannelDto>,
) -> ApiResult<Json<Channel>> {
    let name = Name::try_from(dto.name.ok_or(ApiError::InvalidRequest)?)?;
    let (access, _) = state
        .authorizer()
        .channel(guild_id, channel_id, user.user_id)
        .await?;
    access.require(Permission::ManageChannelOverrides)?;
    let guild = guild_id.to_string();
    let now = now_unix();
    // Only a rename that changed the name is announced, which only the
    // write's transaction knows.
    let deferred = publish::Deferred::new(&state);
    let outbox = |change: &ChannelChange| {
        if change.after.name == change.before.name {
            return Vec::new();
        }
        // Only sockets subscribed to the channel: they were authorized to
        // see it, while a guild-wide event would show a private channel's
        // name to members who cannot view it.
        let event = publish::for_channel(
            &guild,
            &channel_id.to_string(),
            event::Payload::ChannelUpdate(pb::ChannelUpdate {
                guild_id: guild.clone(),
                channel_id: channel_id.to_string(),
                updated_fields: Some(pb::ChannelFields {
                    name: Some(change.after.name.clone()),
                }),
                updated_at_unix: now,
                actor_user_id: Some(user.user_id.to_string()),
            }),
        );
        deferred.rows(vec![event])
    };
    let change = state
        .store()
        .rename_channel(guild_id, channel_id, name.into_string(), &outbox)
        .await?
        .ok_or(ApiError::NotFound)?;
    publish::publish_all(&state, deferred.into_pending()).await;
    Ok(Json(wire_channel(&change.after)))
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
    Ids([guild_id, channel_id]): Ids<2>,
) -> ApiResult<StatusCode> {
    let (access, _) = state
        .authorizer()
        .channel(guild_id, channel_id, user.user_id)
        .await?;
    access.require(Permission::ManageChannelOverrides)?;
    let guild = guild_id.to_string();
    // The event first, to the channel's subscribers only (see `update`): a
    // socket whose only subscription was this channel is no longer present
    // in the guild once access is revoked.
    let event = publish::for_channel(
        &guild,
        &channel_id.to_string(),
        event::Payload::ChannelDelete(pb::ChannelDelete {
            guild_id: guild.clone(),
            channel_id: channel_id.to_string(),
            deleted_at_unix: now_unix(),
            actor_user_id: Some(user.user_id.to_string()),
        }),
    );
    let deleted = Pending::new(&state, event);
    let revocation = publish::AccessRevocation::new(&state, &guild, Vec::new(), false);
    let outbox = vec![deleted.row(), revocation.row()];
    if !state
        .store()
        .delete_channel(guild_id, channel_id, outbox)
        .await?
    {
        return Err(ApiError::NotFound);
    }
    deleted.publish(&state).await;
    revocation.publish(&state).await;
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
    Ids([guild_id, channel_id]): Ids<2>,
) -> ApiResult<Json<SelfPermissions>> {
    let (access, _) = state
        .authorizer()
        .channel(guild_id, channel_id, user.user_id)
        .await?;
    Ok(Json(SelfPermissions {
        role: match access.role {
            MemberRole::Owner => filament_wire::LegacyRole::Owner,
            MemberRole::Moderator => filament_wire::LegacyRole::Moderator,
            MemberRole::Member => filament_wire::LegacyRole::Member,
        },
        permissions: access.permissions.to_wire(),
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

pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(update, delete))
        .routes(routes!(permissions_self))
}
