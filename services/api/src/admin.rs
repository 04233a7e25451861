//! The api's metrics and the admin listener that serves them.
//!
//! The contract's public `GET /metrics` told anyone how often logins fail
//! and limits trip; here metrics live only on `FILAMENT_API_ADMIN_ADDR`,
//! which the deployment keeps off the ingress, and the public router has no
//! `/metrics` route at all. Metric names and label values are constants in
//! this module; no label carries an id.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use filament_runtime::admin::AdminListener;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::http::rate_limit::RestLimiter;

/// Which limiter refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limiter {
    /// The global per-user (or per-IP) bucket in front of every route.
    Global,
    /// A limiter of one route (auth, directory join, voice, …).
    Route,
}

impl Limiter {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::Route => "route",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimiterLabels {
    limiter: &'static str,
}

/// The api's own counters.
#[derive(Debug, Default)]
pub struct ApiMetrics {
    auth_failures: Counter,
    rate_limit_hits: Family<LimiterLabels, Counter>,
}

impl ApiMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let prefixed = registry.sub_registry_with_prefix("filament_api");
        prefixed.register(
            "auth_failures",
            "Requests refused 401 invalid_credentials (bad, expired or missing token, failed login)",
            self.auth_failures.clone(),
        );
        prefixed.register(
            "rate_limit_hits",
            "Requests refused 429, by limiter",
            self.rate_limit_hits.clone(),
        );
    }

    pub fn auth_failed(&self) {
        self.auth_failures.inc();
    }

    pub fn rate_limited(&self, limiter: Limiter) {
        self.rate_limit_hits
            .get_or_create(&LimiterLabels {
                limiter: limiter.as_str(),
            })
            .inc();
    }
}

/// What the REST edge shares between every copy of the router: the global
/// limiter and the counters. One per api process, so the all-in-one's
/// public origin and the api's own listener draw from the same buckets.
#[derive(Debug)]
pub struct Edge {
    pub limiter: RestLimiter,
    pub metrics: ApiMetrics,
}

/// The admin side of one api: the shared [`Edge`], its registry, and the
/// listener when `admin_addr` is set.
pub struct Admin {
    edge: Arc<Edge>,
    registry: Arc<Registry>,
    listener: Option<AdminListener>,
}

impl Admin {
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let edge = Arc::new(Edge {
            limiter: RestLimiter::new(config.rate_limit_per_minute),
            metrics: ApiMetrics::default(),
        });
        let mut registry = Registry::default();
        edge.metrics.register(&mut registry);
        let listener = match config.admin_addr {
            Some(addr) => Some(AdminListener::bind(addr).await?),
            None => None,
        };
        Ok(Self {
            edge,
            registry: Arc::new(registry),
            listener,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The layer that hands the shared [`Edge`] to the REST middleware.
    pub fn extension(&self) -> Extension<Arc<Edge>> {
        Extension(Arc::clone(&self.edge))
    }

    /// Serves `/metrics` until `shutdown`, when a listener was bound.
    pub fn spawn(self, shutdown: CancellationToken) {
        let Some(listener) = self.listener else {
            return;
        };
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "api metrics listening");
        }
        tokio::spawn(async move {
            if let Err(err) = listener.serve(self.registry, shutdown).await {
                tracing::error!(%err, "admin listener failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_export_with_bounded_labels() {
        let metrics = ApiMetrics::default();
        metrics.auth_failed();
        metrics.rate_limited(Limiter::Global);
        metrics.rate_limited(Limiter::Route);
        metrics.rate_limited(Limiter::Route);
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "filament_api_auth_failures_total 1",
            "filament_api_rate_limit_hits_total{limiter=\"global\"} 1",
            "filament_api_rate_limit_hits_total{limiter=\"route\"} 2",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
