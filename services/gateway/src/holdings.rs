//! Keeps the registry in step with the local indexes: this gateway is listed
//! for a guild (or user) while it has a socket there.
//!
//! A guild is registered before the socket's `subscribed` is sent, so every
//! event published after that reaches this gateway. Releases happen lazily,
//! in the periodic sweep; one async mutex orders registrations against the
//! sweep, so a sweep can never release a guild that a concurrent subscribe
//! just relied on.
//!
//! It is also where a new socket reads the registry's list of revoked
//! sessions, once its user is held (see `connection::serve`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use filament_registry::{Epoch, GatewayId, Registry, RegistryResult};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::ids::{GuildId, SessionId, UserId};
use crate::index::Index;

#[derive(Default)]
struct Held {
    guilds: HashSet<GuildId>,
    users: HashSet<UserId>,
    /// When the registry last confirmed this gateway alive.
    last_heartbeat: Option<Instant>,
    /// The registry's epoch at the last heartbeat.
    epoch: Option<Epoch>,
}

/// What a sweep found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sweep {
    Alive,
    /// The registry had stopped seeing this gateway (heartbeats failed for
    /// longer than the TTL). Its entries are registered again, but events
    /// routed while it was missing went elsewhere: resynchronise.
    Lapsed,
    /// The registry lost its state (its epoch changed) while this gateway
    /// kept heartbeating. Everything is held again within this heartbeat;
    /// producers sent every event to every gateway meanwhile (the registry
    /// answers `Recovering` until every gateway has had a heartbeat to do
    /// the same), so nothing was missed and no socket resynchronises.
    Healed,
}

pub(crate) struct Holdings {
    gateway: GatewayId,
    registry: Arc<dyn Registry>,
    ttl: Duration,
    held: Mutex<Held>,
}

impl Holdings {
    pub(crate) fn new(gateway: GatewayId, registry: Arc<dyn Registry>, ttl: Duration) -> Self {
        Self {
            gateway,
            registry,
            ttl,
            held: Mutex::new(Held::default()),
        }
    }

    pub(crate) fn gateway(&self) -> &GatewayId {
        &self.gateway
    }

    pub(crate) async fn hold_guild(&self, guild: GuildId) -> RegistryResult<()> {
        let mut held = self.held.lock().await;
        if !held.guilds.contains(&guild) {
            self.registry
                .hold_guilds(&self.gateway, &[guild.to_string()])
                .await?;
            held.guilds.insert(guild);
        }
        Ok(())
    }

    pub(crate) async fn hold_user(&self, user: UserId) -> RegistryResult<()> {
        let mut held = self.held.lock().await;
        if !held.users.contains(&user) {
            self.registry
                .hold_users(&self.gateway, &[user.to_string()])
                .await?;
            held.users.insert(user);
        }
        Ok(())
    }

    /// Whether the registry lists the session as revoked (logged out).
    pub(crate) async fn session_revoked(&self, session: SessionId) -> RegistryResult<bool> {
        self.registry.is_session_revoked(&session.to_string()).await
    }

    /// Heartbeats, and releases what no local socket needs any more.
    pub(crate) async fn sweep(&self, index: &Index) -> RegistryResult<Sweep> {
        let mut held = self.held.lock().await;
        let epoch = self
            .registry
            .heartbeat(&self.gateway, held.epoch.as_ref())
            .await?;
        let lost = held.epoch.as_ref().is_some_and(|known| *known != epoch);
        let now = Instant::now();
        let lapsed = held
            .last_heartbeat
            .is_some_and(|last| now.duration_since(last) > self.ttl);
        let (live_guilds, live_users) = index.holdings();
        if lapsed || lost {
            // The registry may have forgotten everything: hold it all again.
            // What was last seen is updated only once that succeeded, so a
            // failure here is retried at the next heartbeat.
            let guilds: Vec<_> = live_guilds.iter().map(ToString::to_string).collect();
            let users: Vec<_> = live_users.iter().map(ToString::to_string).collect();
            self.registry.hold_guilds(&self.gateway, &guilds).await?;
            self.registry.hold_users(&self.gateway, &users).await?;
            held.guilds = live_guilds;
            held.users = live_users;
            held.epoch = Some(epoch);
            held.last_heartbeat = Some(now);
            return Ok(if lapsed { Sweep::Lapsed } else { Sweep::Healed });
        }
        held.epoch = Some(epoch);
        held.last_heartbeat = Some(now);
        let stale_guilds: Vec<_> = held.guilds.difference(&live_guilds).copied().collect();
        let stale_users: Vec<_> = held.users.difference(&live_users).copied().collect();
        if !stale_guilds.is_empty() {
            let ids: Vec<_> = stale_guilds.iter().map(ToString::to_string).collect();
            self.registry.release_guilds(&self.gateway, &ids).await?;
            for guild in &stale_guilds {
                held.guilds.remove(guild);
            }
        }
        if !stale_users.is_empty() {
            let ids: Vec<_> = stale_users.iter().map(ToString::to_string).collect();
            self.registry.release_users(&self.gateway, &ids).await?;
            for user in &stale_users {
                held.users.remove(user);
            }
        }
        Ok(Sweep::Alive)
    }

    /// Leaves the registry (graceful shutdown).
    pub(crate) async fn deregister(&self) -> RegistryResult<()> {
        let mut held = self.held.lock().await;
        self.registry.deregister(&self.gateway).await?;
        held.guilds.clear();
        held.users.clear();
        Ok(())
    }
}
