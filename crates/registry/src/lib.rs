//! The routing registry: which gateway holds connections for which guild and
//! which user. Gateways write to it as sockets subscribe and leave; domain
//! services read it to send each event only to the gateways that need it.
//!
//! It also keeps the revoked sessions: a session ended by logout (or a
//! replayed refresh token) is listed for one access-token lifetime, so every
//! api replica refuses the session's access tokens and every gateway its
//! new sockets. That list must be shared by all replicas, short-lived and
//! read on every request, which is what this store already is.
//!
//! A gateway is alive while it heartbeats. Entries of a gateway that stopped
//! heartbeating (it crashed) stop being returned after the TTL, and are
//! cleaned up lazily. No operation scans keys: every lookup is by guild or
//! user id.
//!
//! The registry can lose its state (a Redis restarted empty, a failover to
//! a replica that was behind). An empty answer from a registry that lost
//! its state would silently drop events, so the state carries an [`Epoch`]:
//! every heartbeat tells the gateway the epoch, a gateway that sees it
//! change holds everything again at once, and for one TTL after a loss is
//! noticed — long enough for every live gateway to heartbeat — lookups
//! answer [`RegistryError::Recovering`] instead of a list, so producers
//! send to every gateway rather than to none.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

mod memory;
pub mod metered;
mod redis_registry;
#[cfg(test)]
mod tests;

pub use memory::MemoryRegistry;
pub use metered::RegistryMetrics;
pub use redis_registry::RedisRegistry;

/// A gateway process, named by a fresh ULID at start-up.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GatewayId(String);

impl GatewayId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GatewayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// How long a gateway stays alive after its last heartbeat.
    pub ttl: Duration,
    /// Prepended to every Redis key, so that deployments and tests can
    /// share one Redis.
    pub key_prefix: String,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
            key_prefix: "filament:".to_owned(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The registry lost its state recently and gateways are still holding
    /// theirs again: an answer now could miss a holder. Send to everyone.
    #[error("the registry is recovering lost state; its answers are incomplete")]
    Recovering,
}

/// One life of the registry's state. It changes only when the state was
/// lost, so a gateway that remembers the epoch it registered under can
/// tell "nothing changed" from "everything I held is gone".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Epoch(String);

impl Epoch {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub type RegistryResult<T> = Result<T, RegistryError>;

/// The two kinds of thing a gateway holds. Both implementations index them
/// the same way, so they share the code and differ only in this tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Guild,
    User,
}

/// Which gateways hold which guilds and users.
///
/// Holding is a set, not a count: holding a guild twice and releasing it
/// once leaves it released. A gateway that lets its liveness lapse must hold
/// its guilds and users again once it heartbeats: entries from before the
/// lapse may already have been cleaned up.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Marks the gateway alive for one TTL from now, and returns the
    /// registry's epoch (starting one if the state has none).
    ///
    /// `known` is the epoch the gateway last saw, if any. If the state's
    /// epoch differs, the state was lost since: lookups answer
    /// [`RegistryError::Recovering`] for one TTL from now, and the caller
    /// must hold everything again. A gateway's first heartbeat passes
    /// `None` and starts no recovery.
    async fn heartbeat(&self, gateway: &GatewayId, known: Option<&Epoch>) -> RegistryResult<Epoch>;

    /// Records that the gateway holds sockets present in these guilds.
    /// Idempotent. Also counts as a heartbeat.
    async fn hold_guilds(&self, gateway: &GatewayId, guild_ids: &[String]) -> RegistryResult<()>;
    /// Records that the gateway no longer holds these guilds. Idempotent.
    async fn release_guilds(&self, gateway: &GatewayId, guild_ids: &[String])
    -> RegistryResult<()>;

    /// Records that the gateway holds sockets of these users. Idempotent.
    /// Also counts as a heartbeat.
    async fn hold_users(&self, gateway: &GatewayId, user_ids: &[String]) -> RegistryResult<()>;
    /// Records that the gateway no longer holds these users. Idempotent.
    async fn release_users(&self, gateway: &GatewayId, user_ids: &[String]) -> RegistryResult<()>;

    /// Live gateways that hold the guild, sorted, without duplicates; or
    /// [`RegistryError::Recovering`] while the registry recovers lost state
    /// (or before any gateway heartbeated into it).
    async fn gateways_for_guild(&self, guild_id: &str) -> RegistryResult<Vec<GatewayId>>;
    /// Live gateways that hold any of the users or any of the guilds,
    /// sorted, without duplicates; [`RegistryError::Recovering`] as above.
    async fn gateways_for_audience(
        &self,
        user_ids: &[String],
        guild_ids: &[String],
    ) -> RegistryResult<Vec<GatewayId>>;

    /// Removes the gateway and everything it held (graceful shutdown).
    async fn deregister(&self, gateway: &GatewayId) -> RegistryResult<()>;

    /// Lists the session as revoked for `ttl` from now (the access-token
    /// lifetime: once every token of the session has expired, the entry is
    /// useless). Idempotent; a later call sets the TTL again from its own
    /// time. A revocation is not a holding: it survives `deregister`.
    async fn revoke_session(&self, session_id: &str, ttl: Duration) -> RegistryResult<()>;
    /// Whether the session was revoked and its revocation has not expired.
    async fn is_session_revoked(&self, session_id: &str) -> RegistryResult<bool>;
}
