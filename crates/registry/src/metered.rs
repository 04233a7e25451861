//! Round-trip times of registry calls, by operation, for the operator: a
//! slow Redis shows up here before it shows up as late events.
//!
//! [`Metered`] wraps any [`Registry`] and times each call, so the series is
//! the same for Redis and memory and no implementation carries metrics
//! code. Each service wraps the registry it was given once, in `bind`, and
//! registers [`RegistryMetrics`] on its admin listener.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::{Epoch, GatewayId, LogPosition, Registry, RegistryResult, Replay};

/// `filament_registry_call_duration_seconds{operation}`.
pub const CALL_DURATION: &str = "filament_registry_call_duration_seconds";

/// The `operation` label values: one per trait method.
pub mod operation {
    pub const HEARTBEAT: &str = "heartbeat";
    pub const HOLD_GUILDS: &str = "hold_guilds";
    pub const RELEASE_GUILDS: &str = "release_guilds";
    pub const HOLD_USERS: &str = "hold_users";
    pub const RELEASE_USERS: &str = "release_users";
    pub const GATEWAYS_FOR_GUILD: &str = "gateways_for_guild";
    pub const GATEWAYS_FOR_AUDIENCE: &str = "gateways_for_audience";
    pub const LIVE_GATEWAYS: &str = "live_gateways";
    pub const DEREGISTER: &str = "deregister";
    pub const REVOKE_SESSION: &str = "revoke_session";
    pub const IS_SESSION_REVOKED: &str = "is_session_revoked";
    pub const APPEND_TO_LOGS: &str = "append_to_logs";
    pub const LOG_HEAD: &str = "log_head";
    pub const REPLAY: &str = "replay";
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

fn call_histogram() -> Histogram {
    // 50 µs to ~1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// The registry call series of one process.
#[derive(Debug, Clone)]
pub struct RegistryMetrics {
    duration: Family<OperationLabels, Histogram, fn() -> Histogram>,
}

impl Default for RegistryMetrics {
    fn default() -> Self {
        Self {
            duration: Family::new_with_constructor(call_histogram),
        }
    }
}

impl RegistryMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            CALL_DURATION,
            "Registry calls (a Redis round trip on Redis), by operation",
            self.duration.clone(),
        );
    }

    /// Wraps `inner` so that its calls are timed into these series.
    pub fn wrap(&self, inner: Arc<dyn Registry>) -> Arc<dyn Registry> {
        Arc::new(Metered {
            inner,
            metrics: self.clone(),
        })
    }

    fn observe(&self, operation: &'static str, started: Instant) {
        self.duration
            .get_or_create(&OperationLabels { operation })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// A registry whose calls are timed; see the module docs.
struct Metered {
    inner: Arc<dyn Registry>,
    metrics: RegistryMetrics,
}

impl Metered {
    async fn timed<T>(
        &self,
        operation: &'static str,
        call: impl std::future::Future<Output = T>,
    ) -> T {
        let started = Instant::now();
        let result = call.await;
        self.metrics.observe(operation, started);
        result
    }
}

#[async_trait]
impl Registry for Metered {
    async fn heartbeat(&self, gateway: &GatewayId, known: Option<&Epoch>) -> RegistryResult<Epoch> {
        self.timed(operation::HEARTBEAT, self.inner.heartbeat(gateway, known))
            .await
    }

    async fn hold_guilds(&self, gateway: &GatewayId, guild_ids: &[String]) -> RegistryResult<()> {
        self.timed(
            operation::HOLD_GUILDS,
            self.inner.hold_guilds(gateway, guild_ids),
        )
        .await
    }

    async fn release_guilds(
        &self,
        gateway: &GatewayId,
        guild_ids: &[String],
    ) -> RegistryResult<()> {
        self.timed(
            operation::RELEASE_GUILDS,
            self.inner.release_guilds(gateway, guild_ids),
        )
        .await
    }

    async fn hold_users(&self, gateway: &GatewayId, user_ids: &[String]) -> RegistryResult<()> {
        self.timed(
            operation::HOLD_USERS,
            self.inner.hold_users(gateway, user_ids),
        )
        .await
    }

    async fn release_users(&self, gateway: &GatewayId, user_ids: &[String]) -> RegistryResult<()> {
        self.timed(
            operation::RELEASE_USERS,
            self.inner.release_users(gateway, user_ids),
        )
        .await
    }

    async fn live_gateways(&self) -> RegistryResult<Vec<GatewayId>> {
        self.timed(operation::LIVE_GATEWAYS, self.inner.live_gateways())
            .await
    }

    async fn gateways_for_guild(&self, guild_id: &str) -> RegistryResult<Vec<GatewayId>> {
        self.timed(
            operation::GATEWAYS_FOR_GUILD,
            self.inner.gateways_for_guild(guild_id),
        )
        .await
    }

    async fn gateways_for_audience(
        &self,
        user_ids: &[String],
        guild_ids: &[String],
    ) -> RegistryResult<Vec<GatewayId>> {
        self.timed(
            operation::GATEWAYS_FOR_AUDIENCE,
            self.inner.gateways_for_audience(user_ids, guild_ids),
        )
        .await
    }

    async fn deregister(&self, gateway: &GatewayId) -> RegistryResult<()> {
        self.timed(operation::DEREGISTER, self.inner.deregister(gateway))
            .await
    }

    async fn revoke_session(&self, session_id: &str, ttl: Duration) -> RegistryResult<()> {
        self.timed(
            operation::REVOKE_SESSION,
            self.inner.revoke_session(session_id, ttl),
        )
        .await
    }

    async fn is_session_revoked(&self, session_id: &str) -> RegistryResult<bool> {
        self.timed(
            operation::IS_SESSION_REVOKED,
            self.inner.is_session_revoked(session_id),
        )
        .await
    }

    async fn append_to_logs(
        &self,
        event_id: &str,
        scopes: &[String],
        event: &[u8],
        at_unix_ms: u64,
    ) -> RegistryResult<Vec<LogPosition>> {
        self.timed(
            operation::APPEND_TO_LOGS,
            self.inner
                .append_to_logs(event_id, scopes, event, at_unix_ms),
        )
        .await
    }

    async fn log_head(&self, scope: &str) -> RegistryResult<Option<LogPosition>> {
        self.timed(operation::LOG_HEAD, self.inner.log_head(scope))
            .await
    }

    async fn replay(&self, position: &LogPosition, limit: usize) -> RegistryResult<Replay> {
        self.timed(operation::REPLAY, self.inner.replay(position, limit))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryRegistry, RegistryConfig};

    #[tokio::test]
    async fn every_call_is_timed_by_operation() {
        let metrics = RegistryMetrics::default();
        let registry = metrics.wrap(Arc::new(MemoryRegistry::new(RegistryConfig::default())));
        let gateway = GatewayId::new("gw");
        registry.heartbeat(&gateway, None).await.unwrap();
        registry
            .hold_guilds(&gateway, &["g".to_owned()])
            .await
            .unwrap();
        assert_eq!(
            registry.gateways_for_guild("g").await.unwrap(),
            vec![gateway]
        );
        let mut prometheus = prometheus_client::registry::Registry::default();
        metrics.register(&mut prometheus);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &prometheus).unwrap();
        for operation in ["heartbeat", "hold_guilds", "gateways_for_guild"] {
            let line = format!(
                "filament_registry_call_duration_seconds_count{{operation=\"{operation}\"}} 1"
            );
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
    }
}
