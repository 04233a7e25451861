//! The Filament gateway: a stateless websocket edge.
//!
//! It authenticates sockets with the api, keeps local indexes of who is
//! subscribed to what ([`index`]), mirrors those holdings into the shared
//! registry ([`holdings`]) so services route events only to gateways that
//! need them, follows each service's event stream ([`upstream`]), and turns
//! each event into one shared `{v,t,d}` frame ([`filament_wire`]) that it
//! queues on the bounded queue of every socket in the event's audience.
//! At the edge it enforces the limits ([`limits`]): frame size, ingress
//! rate, per-IP sockets and handshakes, queue depth.
//!
//! docs/ARCHITECTURE.md walks the whole path from a REST call to a frame.

mod access;
mod close;
mod config;
mod connection;
mod dedupe;
mod discovery;
mod holdings;
mod ids;
mod index;
mod ingress;
mod limits;
mod metrics;
mod peers;
mod resume;
mod server;
mod upstream;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use filament_ids::LogPosition;
use filament_proto::v1::{AccessChanged, Event, SessionRevoked, audience, event};
use filament_runtime::grpc_client::GrpcClientMetrics;

pub use close::CloseReason;
pub use config::Config;
pub use metrics::{DropReason, IngressRejection, Metrics, UpgradeRejection};
pub use server::{BoundGateway, Readiness, bind};

use crate::access::{Access, Verdict};
use crate::holdings::Holdings;
use crate::ids::{ChannelId, GuildId, SessionId, UserId};
use crate::index::{Departure, Index, Logged, Outbound, Target};
use crate::limits::IpLimits;

/// Decodes one client text frame exactly as a socket does: `Ok` for a
/// command the gateway would act on, else the close reason. For the fuzz
/// target (services/gateway/fuzz); sockets call the ingress module directly.
#[doc(hidden)]
pub fn decode_client_frame(text: &str) -> Result<(), CloseReason> {
    ingress::decode(text)
        .map(drop)
        .map_err(ingress::IngressError::close_reason)
}

/// State shared by every task of one gateway process.
pub(crate) struct Shared {
    config: Config,
    access: Access,
    index: Index,
    holdings: Holdings,
    peers: peers::Peers,
    ip_limits: Arc<IpLimits>,
    metrics: Arc<Metrics>,
    /// The series of every gRPC client the gateway holds (api, presence,
    /// voice, the event streams).
    grpc_clients: GrpcClientMetrics,
    /// The api replicas' streams: the gateway's readiness.
    api_streams: discovery::ApiStreams,
    /// Ids of the events applied lately, to apply a repeat only once.
    recent_events: dedupe::RecentEvents,
    /// Sockets that asked for replay positions: while there are none, a
    /// logged event's frame is not spliced with its positions.
    positioned_sockets: resume::PositionedCount,
}

impl Shared {
    /// Ready to accept sockets while an api event stream is open (see
    /// [`discovery::ApiStreams`]): without one a socket would miss
    /// messages. Presence and voice are views that repair themselves when
    /// their streams come back, so their outage does not make the gateway
    /// unready.
    pub(crate) fn is_ready(&self) -> bool {
        self.api_streams.is_ready()
    }

    /// The gateway may have missed events: every socket must reconnect.
    pub(crate) fn resync(&self) {
        if self.index.connection_count() > 0 {
            self.metrics.resynced();
        }
        self.index.close_all(CloseReason::Resync);
    }

    /// Applies one event from a service stream, unless it is a repeat of
    /// one applied lately (a service published it twice).
    pub(crate) async fn dispatch(&self, event: Event) {
        if self.recent_events.sight(&event.event_id) == dedupe::Sight::Repeat {
            self.metrics.dropped(DropReason::Duplicate);
            tracing::debug!(event_id = %event.event_id, "repeated event dropped");
            return;
        }
        match &event.payload {
            Some(event::Payload::AccessChanged(change)) => self.apply_access_change(change).await,
            Some(event::Payload::SessionRevoked(revoked)) => self.close_session(revoked),
            Some(_) => {
                let Some(target) = target_of(&event) else {
                    tracing::error!("event with a malformed audience dropped");
                    return;
                };
                self.send(&target, &event);
            }
            None => tracing::error!("event without payload dropped"),
        }
    }

    /// Encodes `event` once and queues it for `target`.
    pub(crate) fn send(&self, target: &Target, event: &Event) -> usize {
        let Some((event_type, frames)) = self.encode(event) else {
            return 0;
        };
        let delivered = self.index.deliver(target, &self.outbound(event, frames));
        self.metrics.emitted(event_type, delivered as u64);
        if delivered > 0 {
            self.metrics
                .delivered(event.published_at_unix_ms, now_unix_ms());
        }
        tracing::debug!(event_type, delivered, "event delivered");
        delivered
    }

    /// The queue item for an event's frames: with its positioned frame too
    /// when the event was logged (docs/adr/0011-resume.md).
    pub(crate) fn outbound(&self, event: &Event, frames: Vec<Utf8Bytes>) -> Outbound {
        if self.positioned_sockets.none() {
            return Outbound::of(frames);
        }
        if let [plain] = frames.as_slice()
            && !event.positions.is_empty()
        {
            let positions: Vec<LogPosition> =
                event.positions.iter().cloned().map(Into::into).collect();
            if let Some(positioned) = self.positioned(plain, &positions) {
                return Outbound::logged(Logged {
                    plain: plain.clone(),
                    positioned,
                    positions,
                    event_id: event.event_id.clone(),
                });
            }
        }
        Outbound::of(frames)
    }

    /// `frame` with these positions; `None` without positions, or (counted)
    /// when the positions would take the frame past its headroom.
    pub(crate) fn positioned(
        &self,
        frame: &Utf8Bytes,
        positions: &[LogPosition],
    ) -> Option<Utf8Bytes> {
        if positions.is_empty() {
            return None;
        }
        let bytes = filament_wire::with_positions(
            frame.as_str().as_bytes(),
            positions,
            self.config.max_frame_bytes,
        );
        let Some(text) = bytes.and_then(|bytes| Utf8Bytes::try_from(bytes).ok()) else {
            self.metrics.dropped(DropReason::PositionsOversized);
            return None;
        };
        Some(text)
    }

    /// Encodes frames that one socket writes at once, ahead of its queue.
    pub(crate) fn encode_for_one(&self, event: &Event) -> Vec<Utf8Bytes> {
        let Some((event_type, frames)) = self.encode(event) else {
            return Vec::new();
        };
        self.metrics.emitted(event_type, 1);
        frames
    }

    /// The event's type and frames (one, unless a snapshot had to be
    /// split), or `None`, counted by reason, when it cannot be sent: over
    /// the frame cap, or without a wire shape.
    fn encode(&self, event: &Event) -> Option<(&'static str, Vec<Utf8Bytes>)> {
        let frames = match filament_wire::encode_frames(event, self.config.max_frame_bytes) {
            Ok(frames) => frames,
            Err(err) => {
                let reason = match err {
                    filament_wire::EncodeError::Oversized { .. } => DropReason::OversizedOutbound,
                    _ => DropReason::SerializeError,
                };
                tracing::warn!(%err, "outbound event dropped");
                self.metrics.dropped(reason);
                return None;
            }
        };
        let event_type = frames.first()?.event_type;
        let texts = frames
            .into_iter()
            .map(|frame| Utf8Bytes::try_from(frame.bytes))
            .collect::<Result<Vec<_>, _>>();
        let Ok(texts) = texts else {
            self.metrics.dropped(DropReason::SerializeError);
            return None;
        };
        Some((event_type, texts))
    }

    /// Drops the subscriptions that users can no longer see, closes the
    /// sockets from addresses the guild now bans, and tells presence about
    /// every socket that is no longer present in the guild. Runs before the
    /// event is acknowledged, so the api's call returns only after every
    /// gateway applied it.
    async fn apply_access_change(&self, change: &AccessChanged) {
        let Ok(guild) = change.guild_id.parse::<GuildId>() else {
            tracing::error!("access change with a malformed guild id dropped");
            return;
        };
        let departures = if change.ip_bans_changed {
            self.close_banned_addresses(guild).await
        } else {
            let users: Vec<UserId> = if change.user_ids.is_empty() {
                self.index.users_in_guild(guild)
            } else {
                change
                    .user_ids
                    .iter()
                    .filter_map(|u| u.parse().ok())
                    .collect()
            };
            let mut departures = Vec::new();
            for user in users {
                if change.membership_revoked {
                    departures.extend(self.index.revoke_guild(guild, user));
                } else {
                    departures.extend(self.recheck(user, guild).await);
                }
            }
            departures
        };
        for departure in departures {
            self.peers.left(departure.connection, departure.guild).await;
        }
    }

    /// Closes the sockets of a session that ended (4012 `access_revoked`).
    /// Runs before the event is acknowledged, so a logout returns only
    /// after every gateway holding the user asked those sockets to close.
    fn close_session(&self, revoked: &SessionRevoked) {
        let (Ok(user), Ok(session)) = (
            revoked.user_id.parse::<UserId>(),
            revoked.session_id.parse::<SessionId>(),
        ) else {
            tracing::error!("session revocation with a malformed id dropped");
            return;
        };
        let closed = self
            .index
            .close_session(user, session, CloseReason::AccessRevoked);
        tracing::debug!(%user, closed, "session revoked; its sockets close");
    }

    /// Asks the api again about each of `user`'s subscriptions in `guild`
    /// (once per distinct address and channel) and drops what it refuses.
    async fn recheck(&self, user: UserId, guild: GuildId) -> Vec<Departure> {
        let mut verdicts = HashMap::new();
        for held in self.index.subscriptions_of(user, guild) {
            let key = (held.ip, held.channel);
            if verdicts.contains_key(&key) {
                continue;
            }
            match self
                .access
                .authorize_subscribe(user, held.ip, guild, held.channel)
                .await
            {
                Ok(verdict) => {
                    verdicts.insert(key, verdict);
                }
                Err(err) => {
                    // Cannot confirm access: fail closed for this user.
                    tracing::warn!(%err, %user, "cannot re-check access; closing the user's sockets");
                    self.index
                        .close_user(user, CloseReason::UpstreamUnavailable);
                    return self.index.revoke_guild(guild, user);
                }
            }
        }
        let mut banned_sockets = HashSet::new();
        let departures = self.index.revoke_user(user, |held| {
            let verdict = verdicts.get(&(held.ip, held.channel));
            if verdict == Some(&Verdict::IpBanned) {
                banned_sockets.insert(held.connection);
            }
            held.guild == guild && verdict.is_some_and(|v| *v != Verdict::Allowed)
        });
        self.index
            .close_connections(&banned_sockets, CloseReason::IpBanned);
        departures
    }

    /// Closes the sockets present in `guild` whose address the guild bans.
    async fn close_banned_addresses(&self, guild: GuildId) -> Vec<Departure> {
        let addresses = self.index.addresses_in_guild(guild);
        if addresses.is_empty() {
            return Vec::new();
        }
        match self.access.banned_addresses(guild, &addresses).await {
            Ok(banned) if banned.is_empty() => Vec::new(),
            Ok(banned) => self.index.revoke_addresses(guild, &banned),
            Err(err) => {
                // Cannot tell which sockets are banned: fail closed for
                // everyone present in the guild; they reconnect and
                // subscribe again through the ban check.
                tracing::warn!(%err, "cannot check banned addresses; closing the guild's sockets");
                let mut departures = Vec::new();
                for user in self.index.users_in_guild(guild) {
                    self.index
                        .close_user(user, CloseReason::UpstreamUnavailable);
                    departures.extend(self.index.revoke_guild(guild, user));
                }
                departures
            }
        }
    }
}

/// Where an event goes, from its audience. `None` for a malformed id.
fn target_of(event: &Event) -> Option<Target> {
    let target = match event.audience.as_ref()?.target.as_ref()? {
        audience::Target::Channel(channel) => {
            Target::Channel(channel.channel_id.parse::<ChannelId>().ok()?)
        }
        audience::Target::Guild(guild) => Target::Guild(guild.guild_id.parse().ok()?),
        audience::Target::Users(users) => Target::Audience {
            users: parse_all(&users.user_ids)?,
            guilds: parse_all(&users.guild_ids)?,
        },
    };
    Some(target)
}

/// Wall-clock milliseconds, the clock `Event.published_at_unix_ms` is on.
fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn parse_all<T: std::str::FromStr>(raw: &[String]) -> Option<Vec<T>> {
    raw.iter().map(|id| id.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use filament_proto::v1::{Audience, ChannelAudience, MessageDelete, PresenceUpdate};
    use filament_registry::{GatewayId, MemoryRegistry, RegistryConfig};
    use ulid::Ulid;

    use crate::index::Item;
    use crate::metrics::DropReason;

    const HOME: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn shared(max_frame_bytes: usize) -> Shared {
        let mut config = Config::new(([127, 0, 0, 1], 0).into(), "http://127.0.0.1:9");
        config.max_frame_bytes = max_frame_bytes;
        let metrics = Arc::new(Metrics::default());
        let registry = Arc::new(MemoryRegistry::new(RegistryConfig::default()));
        let grpc_clients = GrpcClientMetrics::new(config.internal_token.clone());
        Shared {
            access: Access::new(&config.api_url, config.upstream_timeout, &grpc_clients).unwrap(),
            index: Index::new(Arc::clone(&metrics)),
            peers: peers::Peers::new(None, None, "test", config.upstream_timeout, &grpc_clients)
                .expect("no peers"),
            holdings: Holdings::new(GatewayId::new("test"), registry, config.registry_ttl),
            ip_limits: Arc::new(IpLimits::new(1, 1)),
            metrics,
            grpc_clients,
            api_streams: discovery::ApiStreams::default(),
            recent_events: crate::dedupe::RecentEvents::default(),
            positioned_sockets: resume::PositionedCount::default(),
            config,
        }
    }

    fn message_delete(guild: GuildId, channel: ChannelId, message_id: String) -> Event {
        Event {
            audience: Some(Audience {
                target: Some(audience::Target::Channel(ChannelAudience {
                    guild_id: guild.to_string(),
                    channel_id: channel.to_string(),
                })),
            }),
            published_at_unix_ms: 0,
            event_id: String::new(),
            positions: Vec::new(),
            payload: Some(event::Payload::MessageDelete(MessageDelete {
                guild_id: guild.to_string(),
                channel_id: channel.to_string(),
                message_id,
                deleted_at_unix: 1_767_225_600,
            })),
        }
    }

    fn ids() -> (UserId, GuildId, ChannelId) {
        (
            UserId(Ulid::generate()),
            GuildId(Ulid::generate()),
            ChannelId(Ulid::generate()),
        )
    }

    #[tokio::test]
    async fn one_encode_is_shared_by_every_socket() {
        let shared = shared(Config::DEFAULT_MAX_FRAME_BYTES);
        let (user, guild, channel) = ids();
        let mut a = shared
            .index
            .register(user, SessionId(Ulid::generate()), HOME, 8);
        let mut b = shared
            .index
            .register(user, SessionId(Ulid::generate()), HOME, 8);
        shared.index.subscribe(a.id, guild, channel, 0);
        shared.index.subscribe(b.id, guild, channel, 0);

        let event = message_delete(guild, channel, Ulid::generate().to_string());
        assert_eq!(shared.send(&Target::Channel(channel), &event), 2);
        let only = |item: Outbound| match item.item() {
            Item::Frame(frame) => frame.clone(),
            Item::Batch(_) | Item::Logged(_) => panic!("one plain frame expected"),
        };
        let (a, b) = (
            only(a.frames.try_recv().unwrap()),
            only(b.frames.try_recv().unwrap()),
        );
        assert_eq!(a.as_bytes(), b.as_bytes());
        // Not two equal encodings: the very same bytes, encoded once.
        assert_eq!(a.as_str().as_ptr(), b.as_str().as_ptr());
        assert!(
            a.as_str()
                .starts_with(r#"{"v":1,"t":"message_delete","d":{"#)
        );
        assert_eq!(shared.metrics.emitted_count("message_delete"), 2);
    }

    #[tokio::test]
    async fn a_repeated_event_id_is_applied_once_and_counted() {
        let shared = shared(Config::DEFAULT_MAX_FRAME_BYTES);
        let (user, guild, channel) = ids();
        let mut socket = shared
            .index
            .register(user, SessionId(Ulid::generate()), HOME, 8);
        shared.index.subscribe(socket.id, guild, channel, 0);
        let event = Event {
            event_id: Ulid::generate().to_string(),
            ..message_delete(guild, channel, Ulid::generate().to_string())
        };
        shared.dispatch(event.clone()).await;
        shared.dispatch(event).await;
        // Events without an id are never taken for repeats.
        let anonymous = message_delete(guild, channel, Ulid::generate().to_string());
        shared.dispatch(anonymous.clone()).await;
        shared.dispatch(anonymous).await;
        let mut frames = 0;
        while socket.frames.try_recv().is_ok() {
            frames += 1;
        }
        assert_eq!(frames, 3);
        assert_eq!(shared.metrics.dropped_count(DropReason::Duplicate), 1);
    }

    #[tokio::test]
    async fn an_oversized_frame_is_never_queued_and_is_counted() {
        let shared = shared(1024);
        let (user, guild, channel) = ids();
        let mut socket = shared
            .index
            .register(user, SessionId(Ulid::generate()), HOME, 8);
        shared.index.subscribe(socket.id, guild, channel, 0);

        let big = message_delete(guild, channel, "x".repeat(1024));
        assert_eq!(shared.send(&Target::Channel(channel), &big), 0);
        assert!(socket.frames.try_recv().is_err());
        assert_eq!(
            shared.metrics.dropped_count(DropReason::OversizedOutbound),
            1
        );
        // Just under the cap still goes out.
        let small = message_delete(guild, channel, Ulid::generate().to_string());
        assert_eq!(shared.send(&Target::Channel(channel), &small), 1);
    }

    #[tokio::test]
    async fn an_event_without_a_wire_shape_is_counted_as_a_serialize_error() {
        let shared = shared(Config::DEFAULT_MAX_FRAME_BYTES);
        let (user, guild, _) = ids();
        let mut socket = shared
            .index
            .register(user, SessionId(Ulid::generate()), HOME, 8);
        // `UNSPECIFIED` has no JSON value: the event cannot be encoded.
        let event = Event {
            audience: None,
            published_at_unix_ms: 0,
            event_id: String::new(),
            positions: Vec::new(),
            payload: Some(event::Payload::PresenceUpdate(PresenceUpdate {
                guild_id: guild.to_string(),
                user_id: user.to_string(),
                status: 0,
            })),
        };
        assert_eq!(shared.send(&Target::Connection(socket.id), &event), 0);
        assert!(socket.frames.try_recv().is_err());
        assert_eq!(shared.metrics.dropped_count(DropReason::SerializeError), 1);
    }

    #[tokio::test]
    async fn a_full_voice_roster_is_one_queue_item_of_several_frames() {
        let shared = shared(Config::DEFAULT_MAX_FRAME_BYTES);
        let (user, guild, channel) = ids();
        let mut socket = shared
            .index
            .register(user, SessionId(Ulid::generate()), HOME, 1);
        let participant = |n: u32| filament_proto::v1::VoiceParticipant {
            user_id: format!("01HZX3N4B5C6D7E8F9{n:08}"),
            identity: format!("u.01HZX3N4B5C6D7E8F9{n:08}.{guild}.{channel}"),
            ..Default::default()
        };
        let roster = Event {
            audience: None,
            published_at_unix_ms: 0,
            event_id: String::new(),
            positions: Vec::new(),
            payload: Some(event::Payload::VoiceParticipantSync(
                filament_proto::v1::VoiceParticipantSync {
                    guild_id: guild.to_string(),
                    channel_id: channel.to_string(),
                    participants: (0..512).map(participant).collect(),
                    synced_at_unix: 1,
                },
            )),
        };
        // A queue of one slot takes it whole.
        assert_eq!(shared.send(&Target::Connection(socket.id), &roster), 1);
        let item = socket.frames.try_recv().expect("an item");
        let Item::Batch(frames) = item.item() else {
            panic!("a batch expected");
        };
        assert!(frames.len() > 1);
        assert!(
            frames[0]
                .as_str()
                .contains(r#""t":"voice_participant_sync""#)
        );
        assert!(
            frames[1..]
                .iter()
                .all(|f| f.as_str().contains(r#""t":"voice_participant_join""#))
        );
        assert_eq!(shared.metrics.emitted_count("voice_participant_sync"), 1);
    }

    #[tokio::test]
    async fn a_send_to_a_closed_socket_is_counted() {
        let shared = shared(Config::DEFAULT_MAX_FRAME_BYTES);
        let (user, guild, channel) = ids();
        let socket = shared
            .index
            .register(user, SessionId(Ulid::generate()), HOME, 8);
        shared.index.subscribe(socket.id, guild, channel, 0);
        // The socket task ended but has not unregistered yet.
        drop(socket.frames);
        let event = message_delete(guild, channel, Ulid::generate().to_string());
        assert_eq!(shared.send(&Target::Channel(channel), &event), 0);
        assert_eq!(shared.metrics.dropped_count(DropReason::Closed), 1);
    }
}
