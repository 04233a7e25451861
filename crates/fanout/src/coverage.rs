//! Whether every live gateway streams from this producer: the readiness of
//! a producer replica.
//!
//! A producer publishes to the gateways the registry names, over their
//! streams to *this* replica. A replica that takes requests before a
//! gateway has opened its stream counts that gateway's events as missed,
//! and the gateway then resynchronises every socket (4011) when the stream
//! opens: exactly what a rolling update, whose new pod is discovered by the
//! gateways a few seconds after it starts, must not cost. So a replica is
//! ready only once the gateways it lacks a stream from are none; the
//! gateways find not-ready replicas through a headless Service that
//! publishes them (see docs/adr/0009-replicas.md).
//!
//! The registry is asked once per interval, off the request path. When it
//! cannot answer, the last answer stands: a Redis outage must not take
//! every producer out of its Service, and while it lasts events go to every
//! connected gateway anyway (docs/adr/0007-degraded-delivery.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use filament_registry::GatewayId;
use tokio_util::sync::CancellationToken;

use crate::Fanout;

/// How often a producer compares the live gateways with its streams.
pub const COVERAGE_INTERVAL: Duration = Duration::from_millis(500);

/// A cheap, shared answer to "does every live gateway stream from me?".
#[derive(Clone, Debug)]
pub struct Coverage {
    complete: Arc<AtomicBool>,
}

impl Coverage {
    /// Whether, at the last check, every live gateway had a stream open.
    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    /// Starts checking every `interval` until `stop`. Incomplete until the
    /// first answer, so that a replica is never ready before it asked.
    pub fn track(fanout: Fanout, interval: Duration, stop: CancellationToken) -> Self {
        let coverage = Self {
            complete: Arc::new(AtomicBool::new(false)),
        };
        let complete = Arc::clone(&coverage.complete);
        tokio::spawn(async move {
            let mut awaited: Vec<GatewayId> = Vec::new();
            loop {
                if let Some(missing) = fanout.gateways_without_stream().await {
                    if missing != awaited {
                        log_change(fanout.service_name(), &missing);
                        awaited = missing;
                    }
                    complete.store(awaited.is_empty(), Ordering::Release);
                }
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = stop.cancelled() => break,
                }
            }
        });
        coverage
    }
}

impl Coverage {
    /// The gRPC health service of a producer whose readiness is its
    /// coverage: `service_name` is SERVING once every live gateway streams
    /// from it, and NOT_SERVING from the drain on
    /// (`filament_runtime::probes::grpc_health`).
    pub async fn grpc_health(
        self,
        service_name: &str,
        draining: CancellationToken,
    ) -> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>
    {
        filament_runtime::probes::grpc_health(service_name, move || self.is_complete(), draining)
            .await
    }
}

fn log_change(service: &str, missing: &[GatewayId]) {
    if missing.is_empty() {
        tracing::info!(service, "every live gateway streams from this instance");
    } else {
        let missing: Vec<&str> = missing.iter().map(GatewayId::as_str).collect();
        tracing::info!(
            service,
            ?missing,
            "waiting for live gateways to open their streams"
        );
    }
}

impl Fanout {
    /// The live gateways with no stream open to this instance, sorted; or
    /// `None` when the registry cannot say.
    pub async fn gateways_without_stream(&self) -> Option<Vec<GatewayId>> {
        let live = match self.registry().live_gateways().await {
            Ok(live) => live,
            Err(err) => {
                tracing::debug!(%err, "cannot list live gateways; keeping the last answer");
                return None;
            }
        };
        let connected = self.connected_gateways();
        Some(
            live.into_iter()
                .filter(|gateway| connected.binary_search(gateway).is_err())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use filament_registry::{MemoryRegistry, Registry, RegistryConfig};
    use tokio::sync::mpsc;

    use super::*;
    use crate::FanoutConfig;

    #[tokio::test(start_paused = true)]
    async fn complete_only_once_every_live_gateway_has_a_stream() {
        let registry = Arc::new(MemoryRegistry::new(RegistryConfig::default()));
        let fanout = Fanout::new("test", registry.clone(), FanoutConfig::default());
        let stop = CancellationToken::new();
        let coverage = Coverage::track(fanout.clone(), Duration::from_millis(10), stop.clone());
        assert!(!coverage.is_complete(), "not ready before the first check");
        settle().await;
        assert!(coverage.is_complete(), "no gateway: nothing to wait for");

        let gateway = GatewayId::new("gw-1");
        registry.heartbeat(&gateway, None).await.unwrap();
        settle().await;
        assert!(!coverage.is_complete(), "a live gateway without a stream");
        assert_eq!(
            fanout.gateways_without_stream().await,
            Some(vec![gateway.clone()])
        );

        let (tx, _rx) = mpsc::channel(1);
        let _stream = fanout.attach(gateway.clone(), tx);
        settle().await;
        assert!(coverage.is_complete(), "its stream is open");

        registry.deregister(&gateway).await.unwrap();
        let other = GatewayId::new("gw-2");
        registry.heartbeat(&other, None).await.unwrap();
        settle().await;
        assert!(!coverage.is_complete(), "a second gateway came");
        stop.cancel();
    }

    /// Lets the tracker run a few rounds on the paused clock.
    async fn settle() {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(11)).await;
        }
    }
}
