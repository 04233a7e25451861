//! Stamping events with their replay-log positions before they are sent
//! (docs/adr/0011-resume.md).
//!
//! A durable publisher (the api) appends each event to the logs of its
//! audience — the guild's for a channel or guild audience; each named
//! user's and each named guild's for a user audience — and sends it with
//! the positions it got. Gateways pass them on to the sockets that asked,
//! and replay from the logs when such a socket resumes.
//!
//! Two rules keep a replay exact:
//! - **Order.** Per guild (and per user), events must reach a gateway in
//!   offset order, or a client's newest position could pass an event still
//!   in flight. Appending and queueing therefore happen under the locks of
//!   the event's scopes (sharded, taken in shard order), so two events of
//!   one scope are queued in the order of their offsets.
//! - **No silent holes.** If an append fails (Redis down), the event still
//!   goes out, without positions, and its scopes are remembered. The next
//!   append that succeeds first writes a gap marker into each of them: a
//!   client whose position is older than the marker is told to resync
//!   instead of being replayed a log that lacks the event.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, PoisonError};

use filament_ids::{guild_scope, user_scope};
use filament_proto::v1::{Event, audience, event};
use filament_registry::Registry;
use prost::Message as _;

/// Shards of the ordering lock. Events of one scope share a shard.
const SHARDS: usize = 64;
/// Scopes remembered as broken; past this, more are only logged. A
/// registry down for long loses its logs anyway (it restarts empty, and
/// every log starts a new epoch).
const MAX_BROKEN: usize = 1 << 16;

pub(crate) struct Logs {
    shards: Vec<tokio::sync::Mutex<()>>,
    hasher: RandomState,
    broken: Mutex<HashSet<String>>,
}

/// Holds the shards of an event's scopes until the event is queued.
pub(crate) type OrderGuard<'a> = Vec<tokio::sync::MutexGuard<'a, ()>>;

impl Logs {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: RandomState::new(),
            broken: Mutex::new(HashSet::new()),
        }
    }

    /// Appends `event` to its logs and stamps it with the positions.
    /// Returns the guard that must be held while the event is queued.
    pub(crate) async fn stamp<'a>(
        &'a self,
        registry: &dyn Registry,
        event: &mut Event,
    ) -> OrderGuard<'a> {
        let scopes = scopes_of(event);
        let mut shards: Vec<usize> = scopes
            .iter()
            .map(|scope| usize::try_from(self.hasher.hash_one(scope) % SHARDS as u64).unwrap_or(0))
            .collect();
        shards.sort_unstable();
        shards.dedup();
        let mut guard = Vec::with_capacity(shards.len());
        for shard in shards {
            guard.push(self.shards[shard].lock().await);
        }
        if scopes.is_empty() {
            return guard;
        }
        if !self.repair(registry).await {
            self.break_scopes(&scopes);
            return guard;
        }
        let at_unix_ms = u64::try_from(event.published_at_unix_ms).unwrap_or(0);
        match registry
            .append_to_logs(&event.event_id, &scopes, &event.encode_to_vec(), at_unix_ms)
            .await
        {
            Ok(positions) => {
                event.positions = positions.into_iter().map(Into::into).collect();
            }
            Err(err) => {
                tracing::debug!(%err, "replay log unavailable; event goes without positions");
                self.break_scopes(&scopes);
            }
        }
        guard
    }

    /// Writes a gap marker into every scope that missed an append. False
    /// while that still fails.
    async fn repair(&self, registry: &dyn Registry) -> bool {
        let broken: Vec<String> = self.lock().iter().cloned().collect();
        if broken.is_empty() {
            return true;
        }
        match registry.append_to_logs("", &broken, &[], 0).await {
            Ok(_) => {
                let mut set = self.lock();
                for scope in &broken {
                    set.remove(scope);
                }
                tracing::info!(scopes = broken.len(), "replay logs marked with a gap");
                true
            }
            Err(_) => false,
        }
    }

    fn break_scopes(&self, scopes: &[String]) {
        let mut broken = self.lock();
        for scope in scopes {
            if broken.len() >= MAX_BROKEN {
                tracing::warn!("too many replay logs missed an append; some will not be marked");
                return;
            }
            broken.insert(scope.clone());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.broken.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The logs an event belongs to; none for gateway-internal control events.
pub(crate) fn scopes_of(event: &Event) -> Vec<String> {
    if matches!(
        event.payload,
        None | Some(event::Payload::AccessChanged(_) | event::Payload::SessionRevoked(_))
    ) {
        return Vec::new();
    }
    match event.audience.as_ref().and_then(|a| a.target.as_ref()) {
        Some(audience::Target::Channel(channel)) => vec![guild_scope(&channel.guild_id)],
        Some(audience::Target::Guild(guild)) => vec![guild_scope(&guild.guild_id)],
        Some(audience::Target::Users(users)) => {
            let mut scopes: Vec<String> = users.user_ids.iter().map(user_scope).collect();
            scopes.extend(users.guild_ids.iter().map(guild_scope));
            scopes.sort_unstable();
            scopes.dedup();
            scopes
        }
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use async_trait::async_trait;
    use filament_proto::v1::{Audience, GuildAudience, MessageDelete};
    use filament_registry::{
        Epoch, GatewayId, LogPosition as Logged, MemoryRegistry, RegistryConfig, RegistryError,
        RegistryResult, Replay,
    };

    use super::*;

    /// The memory registry, whose log appends fail while `down` is set.
    struct Flaky {
        inner: MemoryRegistry,
        down: AtomicBool,
    }

    #[async_trait]
    impl Registry for Flaky {
        async fn heartbeat(&self, g: &GatewayId, known: Option<&Epoch>) -> RegistryResult<Epoch> {
            self.inner.heartbeat(g, known).await
        }
        async fn hold_guilds(&self, g: &GatewayId, ids: &[String]) -> RegistryResult<()> {
            self.inner.hold_guilds(g, ids).await
        }
        async fn release_guilds(&self, g: &GatewayId, ids: &[String]) -> RegistryResult<()> {
            self.inner.release_guilds(g, ids).await
        }
        async fn hold_users(&self, g: &GatewayId, ids: &[String]) -> RegistryResult<()> {
            self.inner.hold_users(g, ids).await
        }
        async fn release_users(&self, g: &GatewayId, ids: &[String]) -> RegistryResult<()> {
            self.inner.release_users(g, ids).await
        }
        async fn gateways_for_guild(&self, guild: &str) -> RegistryResult<Vec<GatewayId>> {
            self.inner.gateways_for_guild(guild).await
        }
        async fn gateways_for_audience(
            &self,
            users: &[String],
            guilds: &[String],
        ) -> RegistryResult<Vec<GatewayId>> {
            self.inner.gateways_for_audience(users, guilds).await
        }
        async fn live_gateways(&self) -> RegistryResult<Vec<GatewayId>> {
            self.inner.live_gateways().await
        }
        async fn deregister(&self, g: &GatewayId) -> RegistryResult<()> {
            self.inner.deregister(g).await
        }
        async fn revoke_session(&self, session: &str, ttl: Duration) -> RegistryResult<()> {
            self.inner.revoke_session(session, ttl).await
        }
        async fn is_session_revoked(&self, session: &str) -> RegistryResult<bool> {
            self.inner.is_session_revoked(session).await
        }
        async fn append_to_logs(
            &self,
            event_id: &str,
            scopes: &[String],
            event: &[u8],
            at_unix_ms: u64,
        ) -> RegistryResult<Vec<Logged>> {
            if self.down.load(Ordering::Relaxed) {
                return Err(RegistryError::CircuitOpen);
            }
            self.inner
                .append_to_logs(event_id, scopes, event, at_unix_ms)
                .await
        }
        async fn log_head(&self, scope: &str) -> RegistryResult<Option<Logged>> {
            self.inner.log_head(scope).await
        }
        async fn replay(&self, position: &Logged, limit: usize) -> RegistryResult<Replay> {
            self.inner.replay(position, limit).await
        }
    }

    fn event(id: &str) -> Event {
        Event {
            audience: Some(Audience {
                target: Some(audience::Target::Guild(GuildAudience {
                    guild_id: "G".to_owned(),
                })),
            }),
            published_at_unix_ms: i64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("after 1970")
                    .as_millis(),
            )
            .expect("fits"),
            event_id: id.to_owned(),
            positions: Vec::new(),
            payload: Some(event::Payload::MessageDelete(MessageDelete::default())),
        }
    }

    #[tokio::test]
    async fn an_append_that_failed_leaves_a_gap_marker_and_no_silent_hole() {
        let registry = Flaky {
            inner: MemoryRegistry::new(RegistryConfig::default()),
            down: AtomicBool::new(false),
        };
        let logs = Logs::new();
        let mut before = event("e1");
        drop(logs.stamp(&registry, &mut before).await);
        let seen = Logged {
            scope: before.positions[0].scope.clone(),
            epoch: before.positions[0].epoch.clone(),
            offset: before.positions[0].offset,
        };

        // Redis is away: the event goes out without positions.
        registry.down.store(true, Ordering::Relaxed);
        let mut lost = event("e2");
        drop(logs.stamp(&registry, &mut lost).await);
        assert!(lost.positions.is_empty());

        // Back: the next append marks the gap first, so a client that saw
        // only `e1` is told to resync rather than replayed a log without e2.
        registry.down.store(false, Ordering::Relaxed);
        let mut after = event("e3");
        drop(logs.stamp(&registry, &mut after).await);
        assert_eq!(after.positions[0].offset, 3, "e1, the marker, e3");
        assert_eq!(registry.replay(&seen, 10).await.unwrap(), Replay::Gap);
        let mut marker = seen;
        marker.offset = 2;
        let Replay::Covered(entries) = registry.replay(&marker, 10).await.unwrap() else {
            panic!("the log covers what came after the marker");
        };
        assert_eq!(entries.len(), 1);
    }

    #[test]
    fn control_events_are_not_logged_and_user_audiences_are_in_every_log() {
        let mut control = event("c");
        control.payload = Some(event::Payload::AccessChanged(
            filament_proto::v1::AccessChanged::default(),
        ));
        assert!(scopes_of(&control).is_empty());
        let mut users = event("u");
        users.audience = Some(Audience {
            target: Some(audience::Target::Users(filament_proto::v1::UserAudience {
                user_ids: vec!["U".to_owned(), "U".to_owned()],
                guild_ids: vec!["G".to_owned()],
            })),
        });
        assert_eq!(scopes_of(&users), ["g:G", "u:U"]);
    }
}
