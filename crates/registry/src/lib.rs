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

mod breaker;
mod memory;
pub mod metered;
mod redis_client;
mod redis_registry;
mod replay;
#[cfg(test)]
mod tests;

pub use breaker::{Breaker, BreakerConfig, Tripped};
pub use filament_ids::LogPosition;
pub use memory::MemoryRegistry;
pub use metered::RegistryMetrics;
pub use redis_client::RedisCa;
pub use redis_registry::{RedisRegistry, connection_manager};
pub use replay::{LogConfig, LogEntry, LogRead, Replay};

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

/// A gateway id as another process quotes it: only a canonical ULID, the
/// form a gateway names itself with.
impl std::str::FromStr for GatewayId {
    type Err = ulid::DecodeError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        filament_ids::canonical_ulid(raw).map(|id| Self(id.to_string()))
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
    /// Timeouts and the circuit breaker of the Redis registry.
    pub redis: RedisOptions,
    /// The replay logs' caps.
    pub log: LogConfig,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
            key_prefix: Self::DEFAULT_KEY_PREFIX.to_owned(),
            redis: RedisOptions::default(),
            log: LogConfig::default(),
        }
    }
}

impl RegistryConfig {
    /// The key prefix unless `FILAMENT_REGISTRY_PREFIX` says otherwise.
    pub const DEFAULT_KEY_PREFIX: &str = "filament:";

    /// The registry every deployable shares, as the environment describes
    /// it: the [TTL](Self::ttl_from_env), the
    /// [key prefix](Self::key_prefix_from_env) and
    /// [`RedisOptions::from_env`]; see README.md.
    pub fn from_env(env: &filament_runtime::Env) -> Result<Self, filament_runtime::ConfigError> {
        Ok(Self {
            ttl: Self::ttl_from_env(env)?,
            key_prefix: Self::key_prefix_from_env(env)?,
            redis: RedisOptions::from_env(env)?,
            log: LogConfig::from_env(env)?,
        })
    }

    /// `FILAMENT_REGISTRY_TTL_SECS`, at least one second: how long a
    /// gateway stays alive after its last heartbeat, and how long presence
    /// keeps a gateway's connections (a gateway asks for more).
    pub fn ttl_from_env(
        env: &filament_runtime::Env,
    ) -> Result<Duration, filament_runtime::ConfigError> {
        let ttl = env.secs_or("FILAMENT_REGISTRY_TTL_SECS", Self::default().ttl)?;
        if ttl < Duration::from_secs(1) {
            return Err(filament_runtime::ConfigError::Invalid {
                name: "FILAMENT_REGISTRY_TTL_SECS",
                value: ttl.as_secs().to_string(),
                reason: "must be at least 1".to_owned(),
            });
        }
        Ok(ttl)
    }

    /// `FILAMENT_REGISTRY_PREFIX`: prepended to the registry's Redis keys,
    /// and to those of the services that keep their own state in the same
    /// Redis (presence, voice).
    pub fn key_prefix_from_env(
        env: &filament_runtime::Env,
    ) -> Result<String, filament_runtime::ConfigError> {
        env.or(
            "FILAMENT_REGISTRY_PREFIX",
            Self::DEFAULT_KEY_PREFIX.to_owned(),
        )
    }
}

/// How long one Redis call may take, and when to stop asking a Redis that
/// keeps failing. Every caller of Redis has a degraded answer ready (send
/// to every gateway, hold again later), so waiting seconds for Redis only
/// turns its outage into ours. Also what a `rediss://` connection trusts
/// (see `redis_client.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// The response timeout of every command, and the timeout of each
    /// connection attempt (`FILAMENT_REDIS_TIMEOUT_MS`).
    pub timeout: Duration,
    /// The circuit breaker in front of the registry
    /// (`FILAMENT_REDIS_BREAKER_FAILURES`, `FILAMENT_REDIS_BREAKER_COOL_DOWN_MS`);
    /// its call timeout is derived from `timeout`.
    pub breaker: BreakerConfig,
    /// A private CA that signs the Redis server's TLS certificate
    /// (`FILAMENT_REDIS_CA_FILE`); `None` trusts the webpki roots.
    pub ca: Option<RedisCa>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self::with_timeout(Duration::from_millis(250), BreakerConfig::default())
    }
}

impl RedisOptions {
    /// A call may need a reconnect (two attempts, a backoff between them)
    /// before its command: four timeouts bound all of that.
    const CALL_TIMEOUTS: u32 = 4;

    fn with_timeout(timeout: Duration, breaker: BreakerConfig) -> Self {
        Self {
            timeout,
            breaker: BreakerConfig {
                call_timeout: timeout * Self::CALL_TIMEOUTS,
                ..breaker
            },
            ca: None,
        }
    }

    /// Reads `FILAMENT_REDIS_TIMEOUT_MS`, `FILAMENT_REDIS_BREAKER_FAILURES`,
    /// `FILAMENT_REDIS_BREAKER_COOL_DOWN_MS` and `FILAMENT_REDIS_CA_FILE`;
    /// see README.md.
    pub fn from_env(env: &filament_runtime::Env) -> Result<Self, filament_runtime::ConfigError> {
        let defaults = Self::default();
        let timeout = env.millis_or("FILAMENT_REDIS_TIMEOUT_MS", defaults.timeout)?;
        if timeout.is_zero() {
            return Err(filament_runtime::ConfigError::Invalid {
                name: "FILAMENT_REDIS_TIMEOUT_MS",
                value: "0".to_owned(),
                reason: "must be at least 1".to_owned(),
            });
        }
        let failures: u32 = env.or("FILAMENT_REDIS_BREAKER_FAILURES", defaults.breaker.failures)?;
        if failures == 0 {
            return Err(filament_runtime::ConfigError::Invalid {
                name: "FILAMENT_REDIS_BREAKER_FAILURES",
                value: "0".to_owned(),
                reason: "must be at least 1".to_owned(),
            });
        }
        let cool_down = env.millis_or(
            "FILAMENT_REDIS_BREAKER_COOL_DOWN_MS",
            defaults.breaker.cool_down,
        )?;
        Ok(Self {
            ca: RedisCa::from_env(env)?,
            ..Self::with_timeout(
                timeout,
                BreakerConfig {
                    failures,
                    cool_down,
                    call_timeout: defaults.breaker.call_timeout,
                },
            )
        })
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
    /// Redis failed repeatedly and is not asked until the circuit
    /// breaker's cool-down ends (see `breaker.rs`).
    #[error("redis is unavailable (circuit open)")]
    CircuitOpen,
    /// The call took longer than the breaker's call timeout.
    #[error("redis did not answer in time")]
    TimedOut,
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

    /// Every live gateway, sorted. A producer replica uses it to know when
    /// every gateway streams from it (its readiness), so that it never
    /// publishes to a gateway it has no stream from. Never `Recovering`:
    /// right after a loss of state the list may lack gateways for one
    /// heartbeat interval, which a caller treats as "not known yet".
    async fn live_gateways(&self) -> RegistryResult<Vec<GatewayId>>;

    /// Removes the gateway and everything it held (graceful shutdown).
    async fn deregister(&self, gateway: &GatewayId) -> RegistryResult<()>;

    /// Lists the session as revoked for `ttl` from now (the access-token
    /// lifetime: once every token of the session has expired, the entry is
    /// useless). Idempotent; a later call sets the TTL again from its own
    /// time. A revocation is not a holding: it survives `deregister`.
    async fn revoke_session(&self, session_id: &str, ttl: Duration) -> RegistryResult<()>;
    /// Whether the session was revoked and its revocation has not expired.
    async fn is_session_revoked(&self, session_id: &str) -> RegistryResult<bool>;

    /// Appends `event` (encoded by the publisher) to the replay log of each
    /// scope (`g:<guild>`, `u:<user>`; see `replay.rs`) and returns its
    /// positions, in the order of `scopes`. Idempotent by `event_id` for
    /// the marker TTL: a repeat returns the first append's positions. A
    /// registry without logs (a test double) logs nothing.
    async fn append_to_logs(
        &self,
        event_id: &str,
        scopes: &[String],
        event: &[u8],
        at_unix_ms: u64,
    ) -> RegistryResult<Vec<LogPosition>> {
        let _ = (event_id, scopes, event, at_unix_ms);
        Ok(Vec::new())
    }

    /// The position of the scope's newest entry, starting the log (at
    /// offset 0) if it has none, so that a client given this position can
    /// resume from it after the first append. `None` without logs.
    async fn log_head(&self, scope: &str) -> RegistryResult<Option<LogPosition>> {
        let _ = scope;
        Ok(None)
    }

    /// Every entry after `position`, when the log still covers all of them
    /// in the position's epoch, within `limit` entries and the retention;
    /// [`Replay::Gap`] otherwise (and always without logs).
    async fn replay(&self, position: &LogPosition, limit: usize) -> RegistryResult<Replay> {
        let _ = (position, limit);
        Ok(Replay::Gap)
    }
}

#[cfg(test)]
mod env_tests {
    use filament_runtime::{ConfigError, Env};

    use super::*;

    #[test]
    fn the_registry_reads_its_variables_and_refuses_a_zero_ttl() {
        let defaults = RegistryConfig::from_env(&Env::default()).expect("defaults");
        assert_eq!(defaults.ttl, RegistryConfig::default().ttl);
        assert_eq!(defaults.key_prefix, RegistryConfig::DEFAULT_KEY_PREFIX);
        assert_eq!(defaults.redis, RedisOptions::default());

        let tuned = RegistryConfig::from_env(&Env::from_pairs([
            ("FILAMENT_REGISTRY_TTL_SECS", "7"),
            ("FILAMENT_REGISTRY_PREFIX", "test:"),
            ("FILAMENT_REDIS_TIMEOUT_MS", "100"),
        ]))
        .expect("tuned");
        assert_eq!(tuned.ttl, Duration::from_secs(7));
        assert_eq!(tuned.key_prefix, "test:");
        assert_eq!(tuned.redis.timeout, Duration::from_millis(100));

        let zero =
            RegistryConfig::from_env(&Env::from_pairs([("FILAMENT_REGISTRY_TTL_SECS", "0")]));
        assert!(
            matches!(
                zero,
                Err(ConfigError::Invalid {
                    name: "FILAMENT_REGISTRY_TTL_SECS",
                    ..
                })
            ),
            "{zero:?}"
        );
    }
}
