//! The Filament gateway: a stateless websocket edge.
//!
//! It authenticates sockets with the api, keeps local indexes of who is
//! subscribed to what ([`index`]), mirrors those holdings into the shared
//! registry ([`holdings`]) so services route events only to gateways that
//! need them, follows each service's event stream ([`upstream`]), and turns
//! each event into one shared `{v,t,d}` frame ([`filament_wire`]) that it
//! queues on the bounded queue of every socket in the event's audience.
//!
//! docs/ARCHITECTURE.md walks the whole path from a REST call to a frame.

mod access;
mod close;
mod config;
mod connection;
mod holdings;
mod ids;
mod index;
mod ingress;
mod metrics;
mod server;
mod upstream;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::ws::Utf8Bytes;
use filament_proto::v1::{AccessChanged, Event, audience, event};

pub use close::CloseReason;
pub use config::Config;
pub use metrics::{DropReason, Metrics};
pub use server::{BoundGateway, Readiness, bind};

use crate::access::Access;
use crate::holdings::Holdings;
use crate::ids::{ChannelId, GuildId, UserId};
use crate::index::{Index, Target};

/// State shared by every task of one gateway process.
pub(crate) struct Shared {
    config: Config,
    access: Access,
    index: Index,
    holdings: Holdings,
    metrics: Arc<Metrics>,
    /// One flag per upstream event stream: open and welcomed.
    upstream_ready: Vec<AtomicBool>,
}

impl Shared {
    /// Ready to accept sockets: every upstream stream is open.
    pub(crate) fn is_ready(&self) -> bool {
        self.upstream_ready
            .iter()
            .all(|r| r.load(Ordering::Acquire))
    }

    pub(crate) fn set_upstream_ready(&self, slot: usize, ready: bool) {
        if let Some(flag) = self.upstream_ready.get(slot) {
            flag.store(ready, Ordering::Release);
        }
    }

    /// The gateway may have missed events: every socket must reconnect.
    pub(crate) fn resync(&self) {
        if self.index.connection_count() > 0 {
            self.metrics.resynced();
        }
        self.index.close_all(CloseReason::Resync);
    }

    /// Applies one event from a service stream.
    pub(crate) async fn dispatch(&self, event: Event) {
        match &event.payload {
            Some(event::Payload::AccessChanged(change)) => self.apply_access_change(change).await,
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
        let frame = match filament_wire::encode_event(event, self.config.max_frame_bytes) {
            Ok(frame) => frame,
            Err(err) => {
                let reason = match err {
                    filament_wire::EncodeError::Oversized { .. } => DropReason::OversizedOutbound,
                    _ => DropReason::SerializeError,
                };
                tracing::warn!(%err, "outbound event dropped");
                self.metrics.dropped(reason);
                return 0;
            }
        };
        let Ok(text) = Utf8Bytes::try_from(frame.bytes) else {
            self.metrics.dropped(DropReason::SerializeError);
            return 0;
        };
        let delivered = self.index.deliver(target, &text);
        self.metrics.emitted(frame.event_type, delivered as u64);
        delivered
    }

    /// Drops the subscriptions that users can no longer see. Runs before the
    /// event is acknowledged, so the api's call returns only after every
    /// gateway applied it.
    async fn apply_access_change(&self, change: &AccessChanged) {
        let Ok(guild) = change.guild_id.parse::<GuildId>() else {
            tracing::error!("access change with a malformed guild id dropped");
            return;
        };
        let users: Vec<UserId> = if change.user_ids.is_empty() {
            self.index.users_in_guild(guild)
        } else {
            change
                .user_ids
                .iter()
                .filter_map(|u| u.parse().ok())
                .collect()
        };
        for user in users {
            if change.membership_revoked {
                self.index.revoke_guild(guild, user);
                continue;
            }
            let mut denied = HashSet::new();
            for (g, channel) in self.index.subscriptions_of(user, guild) {
                match self.access.authorize_subscribe(user, g, channel).await {
                    Ok(true) => {}
                    Ok(false) => {
                        denied.insert((g, channel));
                    }
                    Err(err) => {
                        // Cannot confirm access: fail closed for this user.
                        tracing::warn!(%err, %user, "cannot re-check access; closing the user's sockets");
                        self.index.revoke_guild(guild, user);
                        self.index
                            .close_user(user, CloseReason::UpstreamUnavailable);
                        break;
                    }
                }
            }
            self.index.revoke_channels(user, &denied);
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

fn parse_all<T: std::str::FromStr>(raw: &[String]) -> Option<Vec<T>> {
    raw.iter().map(|id| id.parse().ok()).collect()
}
