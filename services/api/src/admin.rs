//! The api's metrics and the admin listener that serves them.
//!
//! The reference server's public `GET /metrics` told anyone how often logins fail
//! and limits trip; here metrics live only on `FILAMENT_API_ADMIN_ADDR`,
//! which the deployment keeps off the ingress, and the public router has no
//! `/metrics` route at all. Metric names and label values are constants in
//! this module; no label carries an id.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use filament_registry::RegistryMetrics;
use filament_runtime::admin::AdminListener;
use filament_runtime::grpc::GrpcServerMetrics;
use filament_runtime::grpc_client::GrpcClientMetrics;
use filament_runtime::public::ListenerMetrics;
use filament_runtime::service_auth::ServiceToken;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::rate_limit::RestLimiter;

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

/// Why password hashing turned a caller away with 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashingRefusal {
    /// Every hashing slot was busy and the queue was full.
    QueueFull,
    /// The caller waited in the queue for the whole queue wait.
    QueueTimeout,
}

impl HashingRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::QueueTimeout => "queue_timeout",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

/// The password hasher's counters. A cheap clone that shares the
/// counters: the hasher lives in the app state, which is built apart from
/// the registry.
#[derive(Debug, Clone, Default)]
pub struct HashingMetrics {
    refusals: Family<RefusalLabels, Counter>,
}

impl HashingMetrics {
    pub fn refused(&self, reason: HashingRefusal) {
        self.refusals
            .get_or_create(&RefusalLabels {
                reason: reason.as_str(),
            })
            .inc();
    }
}

/// The api's own counters.
/// `filament_api_http_request_duration_seconds{route,status}`.
pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";
/// The `route` label of a request no route matched (any path a client
/// sends would otherwise become a label value).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The status class label of a REST response.
pub fn status_class(status: axum::http::StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    /// The route template (`/guilds/{guild_id}/channels`), never the path.
    route: String,
    status: &'static str,
}

type DurationFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn request_duration_histogram() -> Histogram {
    // 1 ms to ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

#[derive(Debug)]
pub struct ApiMetrics {
    auth_failures: Counter,
    rate_limit_hits: Family<LimiterLabels, Counter>,
    hashing: HashingMetrics,
    request_duration: DurationFamily<RouteLabels>,
    message_log_head: Gauge,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self {
            auth_failures: Counter::default(),
            rate_limit_hits: Family::default(),
            hashing: HashingMetrics::default(),
            request_duration: Family::new_with_constructor(request_duration_histogram),
            message_log_head: Gauge::default(),
        }
    }
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
        prefixed.register(
            "password_hashing_refusals",
            "Requests refused 503 unavailable because password hashing was saturated, by reason",
            self.hashing.refusals.clone(),
        );
        prefixed.register(
            HTTP_REQUEST_DURATION,
            "REST requests, by route template and status class",
            self.request_duration.clone(),
        );
        prefixed.register(
            "message_log_head",
            "The message change log's last position, read about once a second; search's index lag is this minus filament_search_index_committed_position",
            self.message_log_head.clone(),
        );
        // Every counter series exists from the start, at zero: a scrape
        // lists each family, and `increase()` counts the first refusal.
        for limiter in [Limiter::Global, Limiter::Route] {
            drop(self.rate_limit_hits.get_or_create(&LimiterLabels {
                limiter: limiter.as_str(),
            }));
        }
        for reason in [HashingRefusal::QueueFull, HashingRefusal::QueueTimeout] {
            drop(self.hashing.refusals.get_or_create(&RefusalLabels {
                reason: reason.as_str(),
            }));
        }
    }

    /// Records one REST request; `route` is a route template or
    /// [`UNMATCHED_ROUTE`].
    pub fn request_served(&self, route: &str, status: axum::http::StatusCode, secs: f64) {
        self.request_duration
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
                status: status_class(status),
            })
            .observe(secs);
    }

    /// The counters the password hasher increments.
    pub fn hashing(&self) -> HashingMetrics {
        self.hashing.clone()
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
    public_listener: ListenerMetrics,
    grpc: GrpcServerMetrics,
    grpc_clients: GrpcClientMetrics,
    registry_calls: RegistryMetrics,
    internal_token: ServiceToken,
}

impl Admin {
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let edge = Arc::new(Edge {
            limiter: RestLimiter::new(config.rate_limit_per_minute),
            metrics: ApiMetrics::default(),
        });
        let mut registry = Registry::default();
        edge.metrics.register(&mut registry);
        let public_listener = ListenerMetrics::default();
        public_listener.register(&mut registry);
        // Labelled by method only for the methods `run` serves.
        let grpc = GrpcServerMetrics::serving(
            &[filament_proto::FILE_DESCRIPTOR_SET],
            &[
                filament_proto::v1::edge_access_server::SERVICE_NAME,
                filament_proto::v1::event_stream_server::SERVICE_NAME,
                filament_proto::v1::message_feed_server::SERVICE_NAME,
            ],
        )?;
        grpc.register(&mut registry);
        let grpc_clients = GrpcClientMetrics::new(config.internal_token.clone());
        grpc_clients.register(&mut registry);
        let registry_calls = RegistryMetrics::default();
        registry_calls.register(&mut registry);
        let listener = match config.admin_addr {
            Some(addr) => Some(AdminListener::bind(addr).await?),
            None => None,
        };
        Ok(Self {
            edge,
            registry: Arc::new(registry),
            listener,
            public_listener,
            grpc,
            grpc_clients,
            registry_calls,
            internal_token: config.internal_token.clone(),
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The gauge the outbox relay's housekeeping sets to the message change
    /// log's head.
    pub fn message_log_head(&self) -> Gauge {
        self.edge.metrics.message_log_head.clone()
    }

    /// The counters of the api's password hasher.
    pub fn hashing_metrics(&self) -> HashingMetrics {
        self.edge.metrics.hashing()
    }

    /// The counters of the REST listener's accept loop.
    pub fn listener_metrics(&self) -> ListenerMetrics {
        self.public_listener.clone()
    }

    /// The routing registry's call timings, served with these.
    pub fn registry_calls(&self) -> &RegistryMetrics {
        &self.registry_calls
    }

    /// The api's gRPC clients (voice, search) time their calls into these.
    pub fn grpc_clients(&self) -> &GrpcClientMetrics {
        &self.grpc_clients
    }

    /// The series the api's gRPC server times its calls into.
    pub fn grpc_metrics(&self) -> &GrpcServerMetrics {
        &self.grpc
    }

    /// What the api's gRPC server asks of every caller.
    pub fn internal_token(&self) -> ServiceToken {
        self.internal_token.clone()
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
        let hashing = metrics.hashing();
        hashing.refused(HashingRefusal::QueueFull);
        hashing.refused(HashingRefusal::QueueFull);
        hashing.refused(HashingRefusal::QueueTimeout);
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "filament_api_auth_failures_total 1",
            "filament_api_rate_limit_hits_total{limiter=\"global\"} 1",
            "filament_api_rate_limit_hits_total{limiter=\"route\"} 2",
            "filament_api_password_hashing_refusals_total{reason=\"queue_full\"} 2",
            "filament_api_password_hashing_refusals_total{reason=\"queue_timeout\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
