//! Presence state: which connections are open, whose they are, and in which
//! guilds each is present, behind one trait with two implementations — Redis
//! for production (shared by every presence replica) and memory for the
//! all-in-one — kept in step by one conformance suite (`tests.rs`).
//!
//! The store, not the service, decides transitions: every method that can
//! make a user come online or go offline in a guild reports it, computed in
//! the same atomic step as the change. That is what makes two gateways
//! disconnecting one user at once produce exactly one `presence_update`,
//! and a crashed gateway's expiry produce one per real transition.
//!
//! Gateways hold leases. Each `heartbeat`, `connect` and `enter_guild`
//! renews the caller's lease for one TTL; a lease is live up to and
//! including exactly one TTL after its last renewal. [`PresenceStore::expire`]
//! removes the connections of gateways whose lease ran out.

use std::fmt;

use async_trait::async_trait;
use filament_registry::GatewayId;

mod memory;
mod redis_store;
#[cfg(test)]
mod tests;

pub use memory::MemoryPresenceStore;
pub use redis_store::RedisPresenceStore;

/// One socket: its gateway process and that gateway's connection number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionKey {
    pub gateway: GatewayId,
    pub connection: u64,
}

impl fmt::Display for ConnectionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.gateway, self.connection)
    }
}

/// What a lease renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The gateway already held a live lease before this call.
    pub was_live: bool,
}

/// The result of [`PresenceStore::enter_guild`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entered {
    pub lease: Lease,
    /// This call made the user present in the guild.
    pub came_online: bool,
    /// Users present in the guild after the call, sorted, at most the
    /// configured snapshot limit.
    pub present: Vec<String>,
}

/// A connection that was removed, and the transitions that caused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departure {
    pub user_id: String,
    /// Guilds where this was the user's last present connection, sorted.
    pub went_offline_in: Vec<String>,
    /// The user has no open connection left anywhere.
    pub user_offline: bool,
}

/// Bounds and timing shared by both implementations.
#[derive(Debug, Clone)]
pub struct PresenceStoreConfig {
    /// How long a gateway's connections outlive its last renewal.
    pub lease_ttl: std::time::Duration,
    /// Guilds one connection may be present in.
    pub max_guilds_per_connection: usize,
    /// Most user ids a snapshot returns (the web client accepts 1024).
    pub snapshot_limit: usize,
    /// Prepended to every Redis key.
    pub key_prefix: String,
    /// Timeouts of the Redis store's calls (`FILAMENT_REDIS_TIMEOUT_MS`),
    /// so a Redis that is down fails presence calls quickly instead of
    /// holding a gateway's subscribe for seconds.
    pub redis: filament_registry::RedisOptions,
}

impl Default for PresenceStoreConfig {
    fn default() -> Self {
        Self {
            lease_ttl: std::time::Duration::from_secs(30),
            max_guilds_per_connection: 256,
            snapshot_limit: 1024,
            key_prefix: "filament:presence:".to_owned(),
            redis: filament_registry::RedisOptions::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the connection belongs to another user")]
    ConnectionOwnedByAnotherUser,
    #[error("the connection is present in too many guilds (at most {limit})")]
    TooManyGuilds { limit: usize },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis answered something unexpected: {0}")]
    Protocol(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Presence state. Every method is atomic: concurrent calls, from any number
/// of presence replicas, see each other's changes whole.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// Renews the gateway's lease.
    async fn heartbeat(&self, gateway: &GatewayId) -> StoreResult<Lease>;

    /// Records an open connection of `user_id`, and renews its gateway's
    /// lease. Idempotent; a connection already recorded for another user is
    /// refused and nothing changes.
    async fn connect(&self, connection: &ConnectionKey, user_id: &str) -> StoreResult<Lease>;

    /// Marks the connection present in the guild (recording the connection
    /// first if needed), renews the lease, and returns the guild's presence.
    /// Idempotent. Refused, with nothing changed, past the per-connection
    /// guild cap or for a connection of another user.
    async fn enter_guild(
        &self,
        connection: &ConnectionKey,
        user_id: &str,
        guild_id: &str,
    ) -> StoreResult<Entered>;

    /// Marks the connection no longer present in the guild. Returns the
    /// user when that made them go offline there. Idempotent.
    async fn leave_guild(
        &self,
        connection: &ConnectionKey,
        guild_id: &str,
    ) -> StoreResult<Option<String>>;

    /// Removes the connection. `None` when it was not recorded.
    async fn disconnect(&self, connection: &ConnectionKey) -> StoreResult<Option<Departure>>;

    /// Users present in the guild, sorted, at most the snapshot limit.
    async fn present_in(&self, guild_id: &str) -> StoreResult<Vec<String>>;

    /// Removes up to `max_connections` connections of gateways whose lease
    /// ran out, and forgets those gateways once they have none left. Returns
    /// the departures and whether more expired connections remain.
    async fn expire(&self, max_connections: usize) -> StoreResult<(Vec<Departure>, bool)>;
}
