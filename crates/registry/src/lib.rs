//! The routing registry: which gateway holds connections for which guild and
//! which user. Gateways write to it as sockets subscribe and leave; domain
//! services read it to send each event only to the gateways that need it.
//!
//! A gateway is alive while it heartbeats. Entries of a gateway that stopped
//! heartbeating (it crashed) stop being returned after the TTL, and are
//! cleaned up lazily. No operation scans keys: every lookup is by guild or
//! user id.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

mod memory;
mod redis_registry;
#[cfg(test)]
mod tests;

pub use memory::MemoryRegistry;
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
    /// Marks the gateway alive for one TTL from now.
    async fn heartbeat(&self, gateway: &GatewayId) -> RegistryResult<()>;

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

    /// Live gateways that hold the guild, sorted, without duplicates.
    async fn gateways_for_guild(&self, guild_id: &str) -> RegistryResult<Vec<GatewayId>>;
    /// Live gateways that hold any of the users or any of the guilds,
    /// sorted, without duplicates.
    async fn gateways_for_audience(
        &self,
        user_ids: &[String],
        guild_ids: &[String],
    ) -> RegistryResult<Vec<GatewayId>>;

    /// Removes the gateway and everything it held (graceful shutdown).
    async fn deregister(&self, gateway: &GatewayId) -> RegistryResult<()>;
}
