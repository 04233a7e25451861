//! `/guilds/{g}/channels/{c}/voice/{token,leave,state}` (PROTOCOL.md §2.14, §6).
//!
//! The api decides who may do what; the voice service keeps the roster,
//! signs LiveKit tokens and publishes the voice events. A token request is
//! refused before the voice service hears of it when the channel is not
//! visible to the caller (403/404), is not a voice channel (400: the
//! reference server's hole, closed; PROTOCOL.md §7.1), or grants nothing (400). Grants
//! are what was asked for, limited by the caller's channel permissions:
//! microphone by `create_message`, camera by `publish_video`, screen share
//! by `publish_screen_share`, subscribing by `subscribe_streams`.
//!
//! Token requests are limited per client IP, user, guild and channel (60 a
//! minute each, PROTOCOL.md §4.2), and so are grants of camera or screen share.
//! A full channel or voice registry is a 429 from the voice service.
//!
//! Leave and state only ever change the caller's own participant, so they
//! need no permission beyond the IP gate; both are 204, and no-ops for
//! someone who is not in the channel.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use filament_clients::ClientError;
use filament_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tonic::Code;
use ulid::Ulid;
use utoipa::ToSchema;
use utoipa_axum::routes;

use crate::domain::permissions::{Permission, Permissions};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::client_ip::ClientIp;
use crate::http::extract::{AuthUser, Ids, JsonBody};
use crate::http::openapi::{ApiRouter, ChannelPath};
use crate::rate_limit::sliding::SlidingWindow;
use crate::state::AppState;
use crate::store::ChannelKind;

/// Token requests per minute per IP, user, guild and channel (PROTOCOL.md §4.2).
const TOKEN_REQUESTS_PER_MINUTE: usize = 60;
/// Camera or screen-share grants per minute per IP, user, guild, channel.
const PUBLISH_GRANTS_PER_MINUTE: usize = 60;

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

/// What the caller asked for, validated; defaults per PROTOCOL.md §6.1.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TokenRequest {
    can_publish: bool,
    can_subscribe: bool,
    /// Distinct, ordered microphone, camera, screen share.
    sources: BTreeSet<SourceDto>,
}

impl TryFrom<TokenDto> for TokenRequest {
    type Error = ApiError;

    fn try_from(dto: TokenDto) -> Result<Self, Self::Error> {
        let sources = dto
            .publish_sources
            .unwrap_or_else(|| vec![SourceDto::Microphone]);
        // Three kinds exist; a longer list is malformed, not generous.
        if sources.len() > 3 {
            return Err(ApiError::InvalidRequest);
        }
        Ok(Self {
            can_publish: dto.can_publish.unwrap_or(true),
            can_subscribe: dto.can_subscribe.unwrap_or(false),
            sources: sources.into_iter().collect(),
        })
    }
}

/// A state change with at least one field.
struct StateChange(pb::VoiceStateFields);

impl TryFrom<StateDto> for StateChange {
    type Error = ApiError;

    fn try_from(dto: StateDto) -> Result<Self, Self::Error> {
        if dto.is_muted.is_none() && dto.is_deafened.is_none() {
            return Err(ApiError::InvalidRequest);
        }
        Ok(Self(pb::VoiceStateFields {
            is_muted: dto.is_muted,
            is_deafened: dto.is_deafened,
            ..pb::VoiceStateFields::default()
        }))
    }
}

/// What the caller gets: what was asked for, limited by permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Grants {
    can_subscribe: bool,
    sources: Vec<SourceDto>,
}

impl Grants {
    fn of(request: &TokenRequest, permissions: Permissions) -> ApiResult<Self> {
        let allowed = |source: &SourceDto| {
            permissions.contains(match source {
                SourceDto::Microphone => Permission::CreateMessage,
                SourceDto::Camera => Permission::PublishVideo,
                SourceDto::ScreenShare => Permission::PublishScreenShare,
            })
        };
        let sources: Vec<SourceDto> = if request.can_publish {
            request.sources.iter().copied().filter(allowed).collect()
        } else {
            Vec::new()
        };
        let can_subscribe =
            request.can_subscribe && permissions.contains(Permission::SubscribeStreams);
        if sources.is_empty() && !can_subscribe {
            return Err(ApiError::InvalidRequest);
        }
        Ok(Self {
            can_subscribe,
            sources,
        })
    }

    fn publishes_media(&self) -> bool {
        self.sources.iter().any(|s| *s != SourceDto::Microphone)
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
    Ids([guild_id, channel_id]): Ids<2>,
    JsonBody(dto): JsonBody<TokenDto>,
) -> ApiResult<Json<VoiceToken>> {
    let request = TokenRequest::try_from(dto)?;
    let (access, channel) = state
        .authorizer()
        .channel(guild_id, channel_id, user.user_id)
        .await?;
    if channel.kind != ChannelKind::Voice {
        return Err(ApiError::InvalidRequest);
    }
    let grants = Grants::of(&request, access.permissions)?;
    let keys = [
        LimitKey::Ip(ip),
        LimitKey::User(user.user_id),
        LimitKey::Guild(guild_id),
        LimitKey::Channel(channel_id),
    ];
    if !limits.token_limiter.admit(&keys, Instant::now()) {
        return Err(ApiError::RateLimited);
    }
    if grants.publishes_media() && !limits.publish_limiter.admit(&keys, Instant::now()) {
        return Err(ApiError::RateLimited);
    }

    let join = pb::VoiceJoinRequest {
        guild_id: guild_id.to_string(),
        channel_id: channel_id.to_string(),
        user_id: user.user_id.to_string(),
        username: user.username,
        can_publish: !grants.sources.is_empty(),
        can_subscribe: grants.can_subscribe,
        publish_sources: grants
            .sources
            .iter()
            .map(|s| proto_stream(*s).into())
            .collect(),
    };
    let granted = state
        .voice()
        .client()?
        .join(join)
        .await
        .map_err(voice_error)?;
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
    Ids([guild_id, channel_id]): Ids<2>,
) -> ApiResult<StatusCode> {
    state
        .voice()
        .client()?
        .leave(
            &guild_id.to_string(),
            &channel_id.to_string(),
            &user.user_id.to_string(),
        )
        .await
        .map_err(voice_error)?;
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
    Ids([guild_id, channel_id]): Ids<2>,
    JsonBody(dto): JsonBody<StateDto>,
) -> ApiResult<StatusCode> {
    let StateChange(fields) = StateChange::try_from(dto)?;
    state
        .voice()
        .client()?
        .update_state(
            &guild_id.to_string(),
            &channel_id.to_string(),
            &user.user_id.to_string(),
            fields,
        )
        .await
        .map_err(voice_error)?;
    Ok(StatusCode::NO_CONTENT)
}

pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(token))
        .routes(routes!(leave))
        .routes(routes!(update_state))
        .layer(Extension(VoiceLimiters::new()))
}

// --- limiters -------------------------------------------------------------

/// The token route's limiters (PROTOCOL.md §4.2).
#[derive(Clone)]
pub struct VoiceLimiters {
    token_limiter: Arc<SlidingLimiter>,
    publish_limiter: Arc<SlidingLimiter>,
}

impl VoiceLimiters {
    fn new() -> Self {
        Self {
            token_limiter: Arc::new(SlidingLimiter::new(TOKEN_REQUESTS_PER_MINUTE)),
            publish_limiter: Arc::new(SlidingLimiter::new(PUBLISH_GRANTS_PER_MINUTE)),
        }
    }
}

/// A full channel or registry is the caller's 429; a refusal of what the
/// api itself validated, or the service being down, is ours.
fn voice_error(err: ClientError) -> ApiError {
    match err.status() {
        Some(status) if status.code() == Code::ResourceExhausted => ApiError::RateLimited,
        Some(status) => ApiError::Internal(anyhow::anyhow!("voice service: {status}")),
        None => ApiError::Internal(err.into()),
    }
}

fn proto_stream(source: SourceDto) -> pb::VoiceStream {
    match source {
        SourceDto::Microphone => pb::VoiceStream::Microphone,
        SourceDto::Camera => pb::VoiceStream::Camera,
        SourceDto::ScreenShare => pb::VoiceStream::ScreenShare,
    }
}

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

// --- the limiters ---------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum LimitKey {
    Ip(IpAddr),
    User(Ulid),
    Guild(Ulid),
    Channel(Ulid),
}

/// At most `per_minute` admissions per key in any 60 seconds, for every
/// key of a request at once.
#[derive(Debug)]
struct SlidingLimiter {
    per_minute: usize,
    window: SlidingWindow<LimitKey>,
}

impl SlidingLimiter {
    fn new(per_minute: usize) -> Self {
        Self {
            per_minute,
            window: SlidingWindow::default(),
        }
    }

    fn admit(&self, keys: &[LimitKey], now: Instant) -> bool {
        let limited: Vec<_> = keys.iter().map(|key| (*key, self.per_minute)).collect();
        self.window.admit(&limited, now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::rate_limit::sliding::WINDOW;

    fn request(can_publish: bool, can_subscribe: bool, sources: &[SourceDto]) -> TokenRequest {
        TokenRequest {
            can_publish,
            can_subscribe,
            sources: sources.iter().copied().collect(),
        }
    }

    #[test]
    fn defaults_follow_the_contract() {
        let dto = TokenDto {
            can_publish: None,
            can_subscribe: None,
            publish_sources: None,
        };
        assert_eq!(
            TokenRequest::try_from(dto).ok(),
            Some(request(true, false, &[SourceDto::Microphone]))
        );
        let four = TokenDto {
            can_publish: None,
            can_subscribe: None,
            publish_sources: Some(vec![SourceDto::Camera; 4]),
        };
        assert!(TokenRequest::try_from(four).is_err());
    }

    #[test]
    fn grants_are_the_request_limited_by_permissions() {
        use SourceDto::{Camera, Microphone, ScreenShare};
        let all = [ScreenShare, Camera, Microphone];
        let member = Permissions::EVERYONE;
        let granted = Grants::of(&request(true, true, &all), member).ok();
        assert_eq!(
            granted,
            Some(Grants {
                can_subscribe: true,
                sources: vec![Microphone],
            }),
            "members publish only their microphone"
        );
        let granted = Grants::of(&request(true, false, &all), Permissions::MODERATOR).ok();
        assert_eq!(
            granted.map(|g| g.sources),
            Some(vec![Microphone, Camera, ScreenShare]),
            "ordered"
        );
        let listen_only = Grants::of(&request(false, true, &all), member).ok();
        assert_eq!(listen_only.map(|g| g.sources), Some(vec![]));
        // Nothing left to grant.
        assert!(Grants::of(&request(true, false, &[Camera]), member).is_err());
        assert!(Grants::of(&request(false, false, &all), Permissions::ALL).is_err());
        let no_streams = Permissions::from_stored(Permission::CreateMessage.bit());
        assert!(Grants::of(&request(false, true, &[]), no_streams).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_limiter_counts_every_key_and_slides() {
        let limiter = SlidingLimiter::new(2);
        let ip = LimitKey::Ip([192, 0, 2, 1].into());
        let (a, b) = (
            LimitKey::User(Ulid::generate()),
            LimitKey::User(Ulid::generate()),
        );
        let start = Instant::now();
        assert!(limiter.admit(&[ip, a], start));
        assert!(limiter.admit(&[ip, b], start));
        assert!(!limiter.admit(&[ip, a], start), "the address is spent");
        assert!(!limiter.admit(&[ip, b], start + WINDOW - Duration::from_millis(1)));
        assert!(limiter.admit(&[ip, a], start + WINDOW));
    }
}
