//! Probe endpoints: `/healthz` (the process is up) and `/readyz` (it can
//! serve), for HTTP services; and the standard `grpc.health.v1` service for
//! gRPC ones.

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

/// `/healthz` answers 200 while the process runs; `/readyz` answers 200
/// only while `ready()` holds (dependencies reachable, not draining), so
/// load balancers stop sending new work to an instance that cannot serve.
pub fn http_routes<S, F>(ready: F) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    F: Fn() -> bool + Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        )
}

/// A `grpc.health.v1` service reporting `service_name` (and the server as a
/// whole, the empty name) as serving.
pub async fn grpc_health(
    service_name: &str,
) -> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health> {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(service_name, tonic_health::ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    service
}
