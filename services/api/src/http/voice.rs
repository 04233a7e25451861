//! `/guilds/{g}/channels/{c}/voice/{token,leave,state}` (PROTOCOL.md §2.14, §6).
//!
//! A token is what was asked for, limited by the caller's channel
//! permissions, in a voice channel the caller can see; token requests are
//! rate limited (PROTOCOL.md §4.2). Leave and state only ever change the
//! caller's own participant: both are 204, and no-ops for someone who is
//! not in the channel.
//!
//! This adapter owns the request and response shapes; the use cases, the
//! grant rules and the limiters are `domain::voice`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use filament_ids::{ChannelId, GuildId};
use filament_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::routes;

use crate::domain::voice::{self, Caller, Source, StateChange, TokenRequest, VoiceLimiters};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::client_ip::ClientIp;
use crate::http::extract::{AuthUser, Ids, JsonBody};
use crate::http::openapi::{ApiRouter, ChannelPath};
use crate::state::AppState;

// --- DTOs -----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceDto {
    Microphone,
    Camera,
    ScreenShare,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenDto {
    /// Default `true`.
    #[serde(default)]
    can_publish: Option<bool>,
    /// Default `false`.
    #[serde(default)]
    can_subscribe: Option<bool>,
    /// Default `["microphone"]`; at most 3.
    #[serde(default)]
    #[schema(max_items = 3)]
    publish_sources: Option<Vec<SourceDto>>,
}

/// At least one field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateDto {
    #[serde(default)]
    is_muted: Option<bool>,
    #[serde(default)]
    is_deafened: Option<bool>,
}

impl From<SourceDto> for Source {
    fn from(source: SourceDto) -> Self {
        match source {
            SourceDto::Microphone => Self::Microphone,
            SourceDto::Camera => Self::Camera,
            SourceDto::ScreenShare => Self::ScreenShare,
        }
    }
}

impl TryFrom<TokenDto> for TokenRequest {
    type Error = ApiError;

    fn try_from(dto: TokenDto) -> Result<Self, Self::Error> {
        let sources = dto
            .publish_sources
            .map(|sources| sources.into_iter().map(Source::from).collect());
        TokenRequest::parse(dto.can_publish, dto.can_subscribe, sources)
    }
}

impl TryFrom<StateDto> for StateChange {
    type Error = ApiError;

    fn try_from(dto: StateDto) -> Result<Self, Self::Error> {
        StateChange::parse(dto.is_muted, dto.is_deafened)
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VoiceToken {
    token: String,
    livekit_url: String,
    room: String,
    identity: String,
    can_publish: bool,
    can_subscribe: bool,
    publish_sources: Vec<filament_wire::VoiceStream>,
    expires_in_secs: i64,
}

// --- handlers -------------------------------------------------------------

#[utoipa::path(
    post,
    path = "/guilds/{guild_id}/channels/{channel_id}/voice/token",
    tag = "voice",
    security(("bearer" = [])),
    params(ChannelPath),
    request_body = TokenDto,
    responses(
        (status = 200, description = "A LiveKit token for what was asked and is allowed.", body = VoiceToken),
        (status = 400, description = "A malformed request, not a voice channel, or nothing to grant (`invalid_request`).", body = ErrorBody),
        (status = 403, description = "Cannot view the channel (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such channel (`not_found`).", body = ErrorBody),
        (status = 429, description = "Too many token requests, or the channel or voice registry is full (`rate_limited`).", body = ErrorBody),
        (status = 500, description = "The voice service failed or is down (`internal_error`).", body = ErrorBody),
    ),
)]
pub async fn token(
    State(state): State<AppState>,
    Extension(limits): Extension<VoiceLimiters>,
    AuthUser(user): AuthUser,
    ClientIp(ip): ClientIp,
    Ids((guild_id, channel_id)): Ids<(GuildId, ChannelId)>,
    JsonBody(dto): JsonBody<TokenDto>,
) -> ApiResult<Json<VoiceToken>> {
    let request = TokenRequest::try_from(dto)?;
    let caller = Caller {
        user_id: user.user_id,
        username: user.username,
        ip,
    };
    let granted = voice::token(&state, &limits, caller, guild_id, channel_id, &request).await?;
    let publish_sources = granted
        .publish_sources
        .iter()
        .map(|raw| wire_stream(*raw))
        .collect::<ApiResult<_>>()?;
    Ok(Json(VoiceToken {
        token: granted.token,
        livekit_url: granted.livekit_url,
        room: granted.room,
        identity: granted.identity,
        can_publish: granted.can_publish,
        can_subscribe: granted.can_subscribe,
        publish_sources,
        expires_in_secs: granted.expires_in_secs,
    }))
}

#[utoipa::path(
    post,
    path = "/guilds/{guild_id}/channels/{channel_id}/voice/leave",
    tag = "voice",
    security(("bearer" = [])),
    params(ChannelPath),
    responses(
        (status = 204, description = "Not in the channel (any more)."),
        (status = 500, description = "The voice service failed or is down (`internal_error`).", body = ErrorBody),
    ),
)]
pub async fn leave(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids((guild_id, channel_id)): Ids<(GuildId, ChannelId)>,
) -> ApiResult<StatusCode> {
    voice::leave(&state, user.user_id, guild_id, channel_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/guilds/{guild_id}/channels/{channel_id}/voice/state",
    tag = "voice",
    security(("bearer" = [])),
    params(ChannelPath),
    request_body = StateDto,
    responses(
        (status = 204, description = "Updated, or not in the channel."),
        (status = 500, description = "The voice service failed or is down (`internal_error`).", body = ErrorBody),
    ),
)]
pub async fn update_state(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids((guild_id, channel_id)): Ids<(GuildId, ChannelId)>,
    JsonBody(dto): JsonBody<StateDto>,
) -> ApiResult<StatusCode> {
    let change = StateChange::try_from(dto)?;
    voice::update_state(&state, user.user_id, guild_id, channel_id, change).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(token))
        .routes(routes!(leave))
        .routes(routes!(update_state))
        .layer(Extension(VoiceLimiters::new()))
}

/// A granted source as clients see it.
fn wire_stream(raw: i32) -> ApiResult<filament_wire::VoiceStream> {
    match pb::VoiceStream::try_from(raw) {
        Ok(pb::VoiceStream::Microphone) => Ok(filament_wire::VoiceStream::Microphone),
        Ok(pb::VoiceStream::Camera) => Ok(filament_wire::VoiceStream::Camera),
        Ok(pb::VoiceStream::ScreenShare) => Ok(filament_wire::VoiceStream::ScreenShare),
        _ => Err(ApiError::Internal(anyhow::anyhow!(
            "voice service granted an unknown source {raw}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_contract() {
        let dto = TokenDto {
            can_publish: None,
            can_subscribe: None,
            publish_sources: None,
        };
        assert_eq!(
            TokenRequest::try_from(dto).ok(),
            TokenRequest::parse(Some(true), Some(false), Some(vec![Source::Microphone])).ok()
        );
        let four = TokenDto {
            can_publish: None,
            can_subscribe: None,
            publish_sources: Some(vec![SourceDto::Camera; 4]),
        };
        assert!(TokenRequest::try_from(four).is_err());
    }
}
