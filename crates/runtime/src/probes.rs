//! Probe endpoints: `/healthz` (the process is up) and `/readyz` (it can
//! serve), for HTTP services; and the standard `grpc.health.v1` service for
//! gRPC ones.

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

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

/// How often a gRPC health status follows its readiness.
const HEALTH_POLL: Duration = Duration::from_millis(250);

/// A `grpc.health.v1` service. `service_name` is the readiness: SERVING
/// while `ready()` holds, NOT_SERVING otherwise, and NOT_SERVING for good
/// from the moment `draining` fires, so that a load balancer or a kubelet
/// stops sending work to an instance that is on its way out while it still
/// finishes what it has. The server as a whole (the empty name) is the
/// liveness: SERVING until the drain, whatever `ready()` says, so that an
/// instance waiting for a dependency is not restarted for it.
pub async fn grpc_health<F>(
    service_name: &str,
    ready: F,
    draining: CancellationToken,
) -> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>
where
    F: Fn() -> bool + Send + Sync + 'static,
{
    let (reporter, service) = tonic_health::server::health_reporter();
    let name = service_name.to_owned();
    let status = |serving: bool| {
        if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    };
    let mut current = status(ready() && !draining.is_cancelled());
    reporter.set_service_status(&name, current).await;
    reporter
        .set_service_status("", status(!draining.is_cancelled()))
        .await;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(HEALTH_POLL) => {}
                () = draining.cancelled() => {
                    for service in [name.as_str(), ""] {
                        reporter.set_service_status(service, ServingStatus::NotServing).await;
                    }
                    return;
                }
            }
            let next = status(ready());
            if next != current {
                current = next;
                reporter.set_service_status(&name, current).await;
            }
        }
    });
    service
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;

    const SERVICE: &str = "filament.test";

    async fn status(client: &mut HealthClient<tonic::transport::Channel>, service: &str) -> i32 {
        client
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .expect("a known service")
            .into_inner()
            .status
    }

    /// Polls until `service` reports `expected`, or fails after a deadline.
    async fn until(
        client: &mut HealthClient<tonic::transport::Channel>,
        service: &str,
        expected: ServingStatus,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while status(client, service).await != expected as i32 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{service:?} never became {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn the_named_service_follows_readiness_and_everything_stops_at_the_drain() {
        let ready = Arc::new(AtomicBool::new(false));
        let draining = CancellationToken::new();
        let flag = Arc::clone(&ready);
        let health = grpc_health(
            SERVICE,
            move || flag.load(Ordering::Relaxed),
            draining.clone(),
        )
        .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(crate::net::grpc_incoming(listener)),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect_lazy();
        let mut client = HealthClient::new(channel);

        until(&mut client, SERVICE, ServingStatus::NotServing).await;
        until(&mut client, "", ServingStatus::Serving).await;
        ready.store(true, Ordering::Relaxed);
        until(&mut client, SERVICE, ServingStatus::Serving).await;
        ready.store(false, Ordering::Relaxed);
        until(&mut client, SERVICE, ServingStatus::NotServing).await;
        assert_eq!(
            status(&mut client, "").await,
            ServingStatus::Serving as i32,
            "not ready is still alive"
        );

        ready.store(true, Ordering::Relaxed);
        until(&mut client, SERVICE, ServingStatus::Serving).await;
        draining.cancel();
        until(&mut client, SERVICE, ServingStatus::NotServing).await;
        until(&mut client, "", ServingStatus::NotServing).await;
    }
}
