//! The admin listener: Prometheus metrics on a port of their own.
//!
//! Metrics tell an attacker how busy a service is, which limits are being
//! hit and how; they are for the operator's scraper, so they are never
//! served on a public port. Each service binds this listener on its own
//! address (`FILAMENT_*_ADMIN_ADDR`), which the deployment keeps off the
//! ingress.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The OpenMetrics text format that `prometheus_client` encodes, which
/// Prometheus negotiates.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A bound admin listener, serving `GET /metrics` once [`serve`](Self::serve)
/// runs.
pub struct AdminListener {
    listener: TcpListener,
}

impl AdminListener {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves the registry until `shutdown` is cancelled.
    pub async fn serve(
        self,
        registry: Arc<Registry>,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        axum::serve(self.listener, router(registry))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }
}

/// `GET /metrics`: the registry in the OpenMetrics text format.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let registry = Arc::clone(&registry);
            async move { encode(&registry) }
        }),
    )
}

fn encode(registry: &Registry) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body).into_response(),
        Err(err) => {
            tracing::error!(%err, "cannot encode metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[tokio::test]
    async fn serves_the_registry_as_openmetrics_text() {
        let mut registry = Registry::default();
        let hits: Counter = Counter::default();
        registry.register("hits", "Test hits", hits.clone());
        hits.inc_by(3);
        let response = encode(&registry);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            METRICS_CONTENT_TYPE
        );
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.contains("hits_total 3"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
