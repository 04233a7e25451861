//! Voice (PROTOCOL.md §2.14, §6): the use cases behind
//! `/guilds/{g}/channels/{c}/voice/{token,leave,state}`, the validated
//! [`TokenRequest`] and [`StateChange`] they take, the token route's
//! limiters, and the api's link to the voice service ([`VoiceLink`]) with
//! the rule that keeps a participant in voice.
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
//! need no permission beyond the IP gate; both are no-ops for someone who
//! is not in the channel.
//!
//! A participant stays in voice only while their permissions still cover
//! what their token grants: seeing the channel, and for each grant its
//! permission (microphone `create_message`, camera `publish_video`, screen
//! share `publish_screen_share`, subscribing `subscribe_streams`). Kicks and
//! bans remove the member outright; role and override changes re-check the
//! guild's participants against this rule.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use filament_clients::{ClientError, VoiceClient};
use filament_ids::{ChannelId, GuildId, UserId};
use filament_proto::v1 as pb;
use filament_runtime::grpc_client::GrpcClientMetrics;
use tokio::time::Instant;
use tonic::Code;
use ulid::Ulid;

use crate::domain::permissions::{Authorizer, Permission, Permissions};
use crate::error::{ApiError, ApiResult};
use crate::rate_limit::sliding::SlidingWindow;
use crate::state::AppState;
use crate::store::ChannelKind;

/// A voice call that takes longer than this has failed.
const VOICE_CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Token requests per minute per IP, user, guild and channel (PROTOCOL.md §4.2).
const TOKEN_REQUESTS_PER_MINUTE: usize = 60;
/// Camera or screen-share grants per minute per IP, user, guild, channel.
const PUBLISH_GRANTS_PER_MINUTE: usize = 60;
/// Publish sources one token request may name: three kinds exist.
const MAX_SOURCES: usize = 3;

// --- requests -------------------------------------------------------------

/// What a participant publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Microphone,
    Camera,
    ScreenShare,
}

/// What the caller asked for, validated; defaults per PROTOCOL.md §6.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    can_publish: bool,
    can_subscribe: bool,
    /// Distinct, ordered microphone, camera, screen share.
    sources: BTreeSet<Source>,
}

impl TokenRequest {
    /// Publishing defaults to `true`, subscribing to `false`, the sources
    /// to the microphone; at most three sources.
    pub fn parse(
        can_publish: Option<bool>,
        can_subscribe: Option<bool>,
        sources: Option<Vec<Source>>,
    ) -> ApiResult<Self> {
        let sources = sources.unwrap_or_else(|| vec![Source::Microphone]);
        // Three kinds exist; a longer list is malformed, not generous.
        if sources.len() > MAX_SOURCES {
            return Err(ApiError::InvalidRequest);
        }
        Ok(Self {
            can_publish: can_publish.unwrap_or(true),
            can_subscribe: can_subscribe.unwrap_or(false),
            sources: sources.into_iter().collect(),
        })
    }
}

/// A state change with at least one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange(pb::VoiceStateFields);

impl StateChange {
    /// Refuses a change of nothing.
    pub fn parse(is_muted: Option<bool>, is_deafened: Option<bool>) -> ApiResult<Self> {
        if is_muted.is_none() && is_deafened.is_none() {
            return Err(ApiError::InvalidRequest);
        }
        Ok(Self(pb::VoiceStateFields {
            is_muted,
            is_deafened,
            ..pb::VoiceStateFields::default()
        }))
    }
}

/// What the caller gets: what was asked for, limited by permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Grants {
    can_subscribe: bool,
    sources: Vec<Source>,
}

impl Grants {
    fn of(request: &TokenRequest, permissions: Permissions) -> ApiResult<Self> {
        let allowed = |source: &Source| {
            permissions.contains(match source {
                Source::Microphone => Permission::CreateMessage,
                Source::Camera => Permission::PublishVideo,
                Source::ScreenShare => Permission::PublishScreenShare,
            })
        };
        let sources: Vec<Source> = if request.can_publish {
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
        self.sources.iter().any(|s| *s != Source::Microphone)
    }
}

// --- use cases ------------------------------------------------------------

/// Who asks for a token, and from where.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: UserId,
    /// The name the caller has in the room.
    pub username: String,
    /// The client's address, one of the keys the request counts against.
    pub ip: IpAddr,
}

/// A LiveKit token for the caller in the voice channel, for what they
/// asked and may have; the request counts against `limits`.
pub async fn token(
    state: &AppState,
    limits: &VoiceLimiters,
    caller: Caller,
    guild_id: GuildId,
    channel_id: ChannelId,
    request: &TokenRequest,
) -> ApiResult<pb::VoiceJoinResponse> {
    let Caller {
        user_id: user,
        username,
        ip,
    } = caller;
    let (access, channel) = state
        .authorizer()
        .channel(guild_id, channel_id, user)
        .await?;
    if channel.kind != ChannelKind::Voice {
        return Err(ApiError::InvalidRequest);
    }
    let grants = Grants::of(request, access.permissions)?;
    let keys = [
        LimitKey::Ip(ip),
        LimitKey::User(user),
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
        user_id: user.to_string(),
        username,
        can_publish: !grants.sources.is_empty(),
        can_subscribe: grants.can_subscribe,
        publish_sources: grants
            .sources
            .iter()
            .map(|s| proto_stream(*s).into())
            .collect(),
    };
    state
        .voice()
        .client()?
        .join(join)
        .await
        .map_err(voice_error)
}

/// Takes `user` out of the voice channel, if they are in it.
pub async fn leave(
    state: &AppState,
    user: UserId,
    guild_id: GuildId,
    channel_id: ChannelId,
) -> ApiResult<()> {
    state
        .voice()
        .client()?
        .leave(
            &guild_id.to_string(),
            &channel_id.to_string(),
            &user.to_string(),
        )
        .await
        .map_err(voice_error)?;
    Ok(())
}

/// Mutes or deafens `user` in the voice channel, if they are in it.
pub async fn update_state(
    state: &AppState,
    user: UserId,
    guild_id: GuildId,
    channel_id: ChannelId,
    StateChange(fields): StateChange,
) -> ApiResult<()> {
    state
        .voice()
        .client()?
        .update_state(
            &guild_id.to_string(),
            &channel_id.to_string(),
            &user.to_string(),
            fields,
        )
        .await
        .map_err(voice_error)?;
    Ok(())
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

/// Voice follows an access change: members who are gone leave voice, and
/// the others are re-checked against what their voice tokens grant.
pub async fn follow_access(
    state: &AppState,
    guild_id: &str,
    user_ids: &[String],
    membership_revoked: bool,
) {
    if membership_revoked {
        state.voice().remove_members(guild_id, user_ids).await;
    } else {
        state
            .voice()
            .recheck(state.authorizer(), guild_id, user_ids)
            .await;
    }
}

fn proto_stream(source: Source) -> pb::VoiceStream {
    match source {
        Source::Microphone => pb::VoiceStream::Microphone,
        Source::Camera => pb::VoiceStream::Camera,
        Source::ScreenShare => pb::VoiceStream::ScreenShare,
    }
}

// --- the limiters ---------------------------------------------------------

/// The token route's limiters (PROTOCOL.md §4.2).
#[derive(Clone)]
pub struct VoiceLimiters {
    token_limiter: Arc<SlidingLimiter>,
    publish_limiter: Arc<SlidingLimiter>,
}

impl VoiceLimiters {
    pub fn new() -> Self {
        Self {
            token_limiter: Arc::new(SlidingLimiter::new(TOKEN_REQUESTS_PER_MINUTE)),
            publish_limiter: Arc::new(SlidingLimiter::new(PUBLISH_GRANTS_PER_MINUTE)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum LimitKey {
    Ip(IpAddr),
    User(UserId),
    Guild(GuildId),
    Channel(ChannelId),
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

// --- the link to the voice service -----------------------------------------

/// The api's link to the voice service: one lazily connected client, shared
/// by the voice routes and by the access changes that must take people out
/// of voice.
#[derive(Clone)]
pub struct VoiceLink {
    client: Option<VoiceClient>,
}

impl VoiceLink {
    /// Connects lazily: the api starts (and serves everything else) while
    /// the voice service is still down. No url: voice is not deployed.
    /// Every call carries the calling request's trace (the channel adds it).
    pub fn new(url: Option<&str>, grpc_clients: &GrpcClientMetrics) -> anyhow::Result<Self> {
        let client = url
            .map(|url| VoiceClient::new(url, VOICE_CALL_TIMEOUT, grpc_clients))
            .transpose()?;
        Ok(Self { client })
    }

    /// The client, for the voice routes (they map its status codes
    /// themselves); an error when voice is not configured.
    pub fn client(&self) -> ApiResult<&VoiceClient> {
        self.client
            .as_ref()
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no voice service configured")))
    }

    /// Takes users who are no longer members (kick, ban) out of the guild's
    /// voice channels, so the others see them leave at once rather than
    /// when their token expires. Best effort: a failure is logged, and the
    /// token's TTL bounds what it leaves behind.
    pub async fn remove_members(&self, guild_id: &str, user_ids: &[String]) {
        let Some(client) = &self.client else {
            return;
        };
        for user_id in user_ids {
            if let Err(err) = client.remove_user(guild_id, user_id).await {
                tracing::warn!(%err, "cannot take a removed member out of voice");
            }
        }
    }

    /// Re-checks the guild's participants (only `user_ids`, unless empty)
    /// after a permission change, and removes those whose permissions no
    /// longer cover their grants. Best effort, like
    /// [`remove_members`](Self::remove_members).
    pub async fn recheck(&self, authorizer: &Authorizer, guild_id: &str, user_ids: &[String]) {
        let Some(client) = &self.client else {
            return;
        };
        let participants = match client.guild_participants(guild_id).await {
            Ok(participants) => participants,
            Err(err) => {
                tracing::warn!(%err, "cannot re-check voice participants");
                return;
            }
        };
        let mut doomed = Vec::new();
        for holder in participants {
            if !user_ids.is_empty() && !user_ids.contains(&holder.user_id) {
                continue;
            }
            if !still_covered(authorizer, guild_id, &holder).await {
                doomed.push(holder.user_id);
            }
        }
        self.remove_members(guild_id, &doomed).await;
    }
}

/// Whether the holder's current permissions cover their grants. Anything
/// unreadable counts as not covered: the safe answer is to leave voice.
async fn still_covered(
    authorizer: &Authorizer,
    guild_id: &str,
    holder: &pb::VoiceGrantHolder,
) -> bool {
    let ids = (
        guild_id.parse::<Ulid>().map(GuildId),
        holder.channel_id.parse::<Ulid>().map(ChannelId),
        holder.user_id.parse::<Ulid>().map(UserId),
    );
    let (Ok(guild), Ok(channel), Ok(user)) = ids else {
        return false;
    };
    match authorizer.channel(guild, channel, user).await {
        Ok((access, _)) => grants_covered(holder, access.permissions),
        Err(ApiError::Internal(err)) => {
            // The store is down: do not evict anyone on a guess.
            tracing::warn!(%err, "cannot re-check a voice participant");
            true
        }
        Err(_) => false,
    }
}

fn grants_covered(holder: &pb::VoiceGrantHolder, permissions: Permissions) -> bool {
    let subscribe = !holder.can_subscribe || permissions.contains(Permission::SubscribeStreams);
    let sources = holder
        .publish_sources
        .iter()
        .all(|raw| match pb::VoiceStream::try_from(*raw) {
            Ok(pb::VoiceStream::Microphone) => permissions.contains(Permission::CreateMessage),
            Ok(pb::VoiceStream::Camera) => permissions.contains(Permission::PublishVideo),
            Ok(pb::VoiceStream::ScreenShare) => {
                permissions.contains(Permission::PublishScreenShare)
            }
            _ => false,
        });
    subscribe && sources
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::sliding::WINDOW;

    fn request(can_publish: bool, can_subscribe: bool, sources: &[Source]) -> TokenRequest {
        TokenRequest {
            can_publish,
            can_subscribe,
            sources: sources.iter().copied().collect(),
        }
    }

    #[test]
    fn defaults_follow_the_contract() {
        assert_eq!(
            TokenRequest::parse(None, None, None).ok(),
            Some(request(true, false, &[Source::Microphone]))
        );
        let four = Some(vec![Source::Camera; 4]);
        assert!(TokenRequest::parse(None, None, four).is_err());
    }

    #[test]
    fn a_state_change_changes_something() {
        assert!(StateChange::parse(None, None).is_err());
        assert!(StateChange::parse(Some(true), None).is_ok());
        assert!(StateChange::parse(None, Some(false)).is_ok());
    }

    #[test]
    fn grants_are_the_request_limited_by_permissions() {
        use Source::{Camera, Microphone, ScreenShare};
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
        let no_streams = Permissions::from_stored(Permission::CreateMessage.mask());
        assert!(Grants::of(&request(false, true, &[]), no_streams).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_limiter_counts_every_key_and_slides() {
        let limiter = SlidingLimiter::new(2);
        let ip = LimitKey::Ip([192, 0, 2, 1].into());
        let (a, b) = (
            LimitKey::User(UserId::generate()),
            LimitKey::User(UserId::generate()),
        );
        let start = Instant::now();
        assert!(limiter.admit(&[ip, a], start));
        assert!(limiter.admit(&[ip, b], start));
        assert!(!limiter.admit(&[ip, a], start), "the address is spent");
        assert!(!limiter.admit(&[ip, b], start + WINDOW - Duration::from_millis(1)));
        assert!(limiter.admit(&[ip, a], start + WINDOW));
    }

    fn holder(can_subscribe: bool, sources: &[pb::VoiceStream]) -> pb::VoiceGrantHolder {
        pb::VoiceGrantHolder {
            user_id: UserId::generate().to_string(),
            channel_id: ChannelId::generate().to_string(),
            can_subscribe,
            publish_sources: sources.iter().map(|s| (*s).into()).collect(),
        }
    }

    #[test]
    fn each_grant_needs_its_permission() {
        let talk = Permissions::from_iter([Permission::CreateMessage]);
        let watch = Permissions::from_iter([Permission::SubscribeStreams]);
        let mic = holder(false, &[pb::VoiceStream::Microphone]);
        assert!(grants_covered(&mic, talk));
        assert!(!grants_covered(&mic, watch));
        let listener = holder(true, &[]);
        assert!(grants_covered(&listener, watch));
        assert!(!grants_covered(&listener, talk));
        let camera = holder(
            false,
            &[pb::VoiceStream::Microphone, pb::VoiceStream::Camera],
        );
        assert!(!grants_covered(&camera, talk));
        let unknown = pb::VoiceGrantHolder {
            publish_sources: vec![99],
            ..holder(false, &[])
        };
        assert!(!grants_covered(&unknown, talk), "fails closed");
    }
}
