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
//!
//! A hold that fails (Redis down, the registry's circuit open) does not
//! refuse the socket or the subscribe: the index has the entry, `held`
//! does not, and every sweep holds what the index has and `held` lacks,
//! retrying every [`REHOLD_RETRY`] until it succeeds. Why that loses no
//! event: while this gateway cannot reach the registry, neither (as a
//! rule) can the producers, and a producer whose lookup fails sends to
//! every gateway; when Redis comes back empty (restarted, failed over) the
//! registry answers `Recovering` — again to every gateway — until the
//! gateways have heartbeated and held everything again, this one included.
//! The one window left is a Redis that kept its state and was unreachable
//! from here only, or answers a producer again before this gateway's next
//! sweep: at most the breaker's cool-down plus [`REHOLD_RETRY`], the same
//! kind of window a gateway whose liveness lapsed already has (and covers
//! by resynchronising, see [`Sweep::Lapsed`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use filament_registry::{Epoch, GatewayId, Registry, RegistryResult};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::ids::{GuildId, SessionId, UserId};
use crate::index::Index;

/// How soon a sweep runs again while a hold is unconfirmed, instead of
/// the heartbeat's TTL / 3: this is the window in which a registry that
/// answers again may not know a guild one of our sockets subscribed to.
pub(crate) const REHOLD_RETRY: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Held {
    guilds: HashSet<GuildId>,
    users: HashSet<UserId>,
    /// When the registry last confirmed this gateway alive.
    last_heartbeat: Option<Instant>,
    /// The registry's epoch at the last heartbeat.
    epoch: Option<Epoch>,
    /// A hold failed since the last successful sweep: the index has
    /// something the registry may not (see the module docs).
    unconfirmed: bool,
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

    /// The registry, for the replay logs it also keeps.
    pub(crate) fn registry(&self) -> &dyn Registry {
        self.registry.as_ref()
    }

    pub(crate) fn gateway(&self) -> &GatewayId {
        &self.gateway
    }

    /// Holds the guild in the registry. On `Err` the guild is left for the
    /// sweeps to hold (it is in the index, not in `held`), and the caller
    /// may carry on: see the module docs.
    pub(crate) async fn hold_guild(&self, guild: GuildId) -> RegistryResult<()> {
        let mut held = self.held.lock().await;
        if !held.guilds.contains(&guild) {
            let result = self
                .registry
                .hold_guilds(&self.gateway, &[guild.to_string()])
                .await;
            held.unconfirmed |= result.is_err();
            result?;
            held.guilds.insert(guild);
        }
        Ok(())
    }

    /// Like [`hold_guild`](Self::hold_guild), for a user.
    pub(crate) async fn hold_user(&self, user: UserId) -> RegistryResult<()> {
        let mut held = self.held.lock().await;
        if !held.users.contains(&user) {
            let result = self
                .registry
                .hold_users(&self.gateway, &[user.to_string()])
                .await;
            held.unconfirmed |= result.is_err();
            result?;
            held.users.insert(user);
        }
        Ok(())
    }

    /// Whether a failed hold still waits for a sweep to confirm it.
    pub(crate) async fn unconfirmed(&self) -> bool {
        self.held.lock().await.unconfirmed
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
            held.unconfirmed = false;
            return Ok(if lapsed { Sweep::Lapsed } else { Sweep::Healed });
        }
        held.epoch = Some(epoch);
        held.last_heartbeat = Some(now);
        // What a failed hold left out (or anything else the index has that
        // `held` lacks). Idempotent, so a hold that did land but answered
        // an error is no harm.
        let missing_guilds: Vec<_> = live_guilds.difference(&held.guilds).copied().collect();
        let missing_users: Vec<_> = live_users.difference(&held.users).copied().collect();
        if !missing_guilds.is_empty() {
            let ids: Vec<_> = missing_guilds.iter().map(ToString::to_string).collect();
            self.registry.hold_guilds(&self.gateway, &ids).await?;
            held.guilds.extend(missing_guilds);
        }
        if !missing_users.is_empty() {
            let ids: Vec<_> = missing_users.iter().map(ToString::to_string).collect();
            self.registry.hold_users(&self.gateway, &ids).await?;
            held.users.extend(missing_users);
        }
        held.unconfirmed = false;
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;
    use filament_registry::{MemoryRegistry, RegistryConfig, RegistryError};
    use ulid::Ulid;

    use super::*;
    use crate::ids::ChannelId;

    /// A memory registry that can be switched off, as Redis behind an open
    /// circuit is: every call fails at once.
    struct Switchable {
        inner: MemoryRegistry,
        down: AtomicBool,
    }

    impl Switchable {
        fn check(&self) -> RegistryResult<()> {
            if self.down.load(Ordering::SeqCst) {
                Err(RegistryError::CircuitOpen)
            } else {
                Ok(())
            }
        }
    }

    #[async_trait]
    impl Registry for Switchable {
        async fn heartbeat(
            &self,
            gateway: &GatewayId,
            known: Option<&Epoch>,
        ) -> RegistryResult<Epoch> {
            self.check()?;
            self.inner.heartbeat(gateway, known).await
        }
        async fn hold_guilds(&self, gateway: &GatewayId, ids: &[String]) -> RegistryResult<()> {
            self.check()?;
            self.inner.hold_guilds(gateway, ids).await
        }
        async fn release_guilds(&self, gateway: &GatewayId, ids: &[String]) -> RegistryResult<()> {
            self.check()?;
            self.inner.release_guilds(gateway, ids).await
        }
        async fn hold_users(&self, gateway: &GatewayId, ids: &[String]) -> RegistryResult<()> {
            self.check()?;
            self.inner.hold_users(gateway, ids).await
        }
        async fn release_users(&self, gateway: &GatewayId, ids: &[String]) -> RegistryResult<()> {
            self.check()?;
            self.inner.release_users(gateway, ids).await
        }
        async fn live_gateways(&self) -> RegistryResult<Vec<GatewayId>> {
            self.check()?;
            self.inner.live_gateways().await
        }
        async fn gateways_for_guild(&self, guild_id: &str) -> RegistryResult<Vec<GatewayId>> {
            self.check()?;
            self.inner.gateways_for_guild(guild_id).await
        }
        async fn gateways_for_audience(
            &self,
            user_ids: &[String],
            guild_ids: &[String],
        ) -> RegistryResult<Vec<GatewayId>> {
            self.check()?;
            self.inner.gateways_for_audience(user_ids, guild_ids).await
        }
        async fn deregister(&self, gateway: &GatewayId) -> RegistryResult<()> {
            self.check()?;
            self.inner.deregister(gateway).await
        }
        async fn revoke_session(&self, session_id: &str, ttl: Duration) -> RegistryResult<()> {
            self.check()?;
            self.inner.revoke_session(session_id, ttl).await
        }
        async fn is_session_revoked(&self, session_id: &str) -> RegistryResult<bool> {
            self.check()?;
            self.inner.is_session_revoked(session_id).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_that_failed_is_made_by_the_first_sweep_that_reaches_the_registry() {
        let registry = Arc::new(Switchable {
            inner: MemoryRegistry::new(RegistryConfig::default()),
            down: AtomicBool::new(false),
        });
        let gateway = GatewayId::new("gw");
        let holdings = Holdings::new(
            gateway.clone(),
            Arc::clone(&registry) as Arc<dyn Registry>,
            Duration::from_secs(30),
        );
        let index = Index::new(Arc::default());
        assert_eq!(holdings.sweep(&index).await.unwrap(), Sweep::Alive);

        registry.down.store(true, Ordering::SeqCst);
        let user = UserId(Ulid::generate());
        let (guild, channel) = (GuildId(Ulid::generate()), ChannelId(Ulid::generate()));
        let socket = index.register(
            user,
            SessionId(Ulid::generate()),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            8,
        );
        holdings.hold_user(user).await.unwrap_err();
        let epoch = index.revocation_epoch();
        index.subscribe(socket.id, guild, channel, epoch);
        holdings.hold_guild(guild).await.unwrap_err();
        assert!(holdings.unconfirmed().await);
        // Still down: the sweep fails and the holds stay owed.
        holdings.sweep(&index).await.unwrap_err();
        assert!(holdings.unconfirmed().await);

        registry.down.store(false, Ordering::SeqCst);
        assert_eq!(holdings.sweep(&index).await.unwrap(), Sweep::Alive);
        assert!(!holdings.unconfirmed().await);
        assert_eq!(
            registry
                .gateways_for_guild(&guild.to_string())
                .await
                .unwrap(),
            vec![gateway.clone()]
        );
        assert_eq!(
            registry
                .gateways_for_audience(&[user.to_string()], &[])
                .await
                .unwrap(),
            vec![gateway]
        );
    }
}
