//! Binding and running a gateway: the HTTP listener with `/gateway/ws` and
//! the probes, the upstream stream followers, and the registry heartbeat.
//! Shutdown closes every socket with a close frame, waits for the socket
//! tasks within the grace period, and leaves the registry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use filament_registry::{GatewayId, Registry};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::{Access, AccessError};
use crate::holdings::{Holdings, Sweep};
use crate::index::Index;
use crate::{Config, Metrics, Shared, connection, upstream};

/// Read buffer per socket. Inbound frames are small (a subscribe is ~120
/// bytes), and tungstenite grows the buffer up to the frame cap when needed;
/// the 128 KiB default would dominate the memory of an idle socket.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Frames are written eagerly; the queue is ours, not tungstenite's.
const WRITE_BUFFER_BYTES: usize = 0;

/// A gateway with its listener bound, ready to run.
pub struct BoundGateway {
    listener: TcpListener,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    sockets_shutdown: CancellationToken,
}

/// A handle that tells whether a gateway is ready.
#[derive(Clone)]
pub struct Readiness(Arc<Shared>);

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.0.is_ready()
    }
}

/// Binds the listener; nothing runs until [`BoundGateway::run`].
pub async fn bind(config: Config, registry: Arc<dyn Registry>) -> anyhow::Result<BoundGateway> {
    let listener = TcpListener::bind(config.listen_addr).await?;
    let gateway_id = GatewayId::new(ulid::Ulid::generate().to_string());
    let metrics = Arc::new(Metrics::default());
    let upstreams = 1 + config.event_service_urls.len();
    let shared = Arc::new(Shared {
        access: Access::new(&config.api_url, config.upstream_timeout)?,
        index: Index::new(Arc::clone(&metrics)),
        holdings: Holdings::new(gateway_id, registry, config.registry_ttl),
        metrics,
        upstream_ready: (0..upstreams).map(|_| AtomicBool::new(false)).collect(),
        config,
    });
    Ok(BoundGateway {
        listener,
        shared,
        tracker: TaskTracker::new(),
        sockets_shutdown: CancellationToken::new(),
    })
}

impl BoundGateway {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn gateway_id(&self) -> GatewayId {
        self.shared.holdings.gateway().clone()
    }

    /// Whether this gateway can accept sockets: every upstream event
    /// stream is open. Stays valid after [`run`](Self::run) takes `self`.
    pub fn readiness(&self) -> Readiness {
        Readiness(Arc::clone(&self.shared))
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// The routes of this gateway (`/gateway/ws`, `/healthz`, `/readyz`),
    /// for serving them on another listener too (the all-in-one origin).
    pub fn router(&self) -> Router {
        router(
            Arc::clone(&self.shared),
            self.tracker.clone(),
            self.sockets_shutdown.clone(),
        )
    }

    /// Serves until `shutdown` is cancelled, then drains.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            listener,
            shared,
            tracker,
            sockets_shutdown,
        } = self;
        let background = CancellationToken::new();
        let mut urls = vec![shared.config.api_url.clone()];
        urls.extend(shared.config.event_service_urls.iter().cloned());
        for (slot, url) in urls.into_iter().enumerate() {
            tokio::spawn(upstream::follow(
                Arc::clone(&shared),
                url,
                slot,
                background.clone(),
            ));
        }
        tokio::spawn(heartbeat(Arc::clone(&shared), background.clone()));

        tracing::info!(addr = %listener.local_addr()?, gateway = %shared.holdings.gateway(), "gateway listening");
        let app = router(
            Arc::clone(&shared),
            tracker.clone(),
            sockets_shutdown.clone(),
        );
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await?;

        // New upgrades are refused from here on; close the open sockets.
        sockets_shutdown.cancel();
        tracker.close();
        let grace = Duration::from_secs(5);
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!("sockets did not close within the grace period");
        }
        background.cancel();
        if let Err(err) = shared.holdings.deregister().await {
            tracing::warn!(%err, "cannot leave the registry; entries expire with the TTL");
        }
        tracing::info!("gateway stopped");
        Ok(())
    }
}

fn router(shared: Arc<Shared>, tracker: TaskTracker, shutdown: CancellationToken) -> Router {
    let ready = {
        let shared = Arc::clone(&shared);
        let shutdown = shutdown.clone();
        move || !shutdown.is_cancelled() && shared.is_ready()
    };
    Router::new()
        .route("/gateway/ws", get(upgrade))
        .with_state(Upgrade {
            shared,
            tracker,
            shutdown,
        })
        .merge(filament_runtime::probes::http_routes(ready))
}

#[derive(Clone)]
struct Upgrade {
    shared: Arc<Shared>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

#[derive(Deserialize)]
struct UpgradeQuery {
    access_token: Option<String>,
}

/// `GET /gateway/ws`: checks Origin and the token before upgrading, so a
/// refused client gets an HTTP status and a JSON error, not a websocket.
async fn upgrade(
    State(state): State<Upgrade>,
    Query(query): Query<UpgradeQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let shared = &state.shared;
    if state.shutdown.is_cancelled() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "internal_error");
    }
    if !origin_allowed(&shared.config.allowed_origins, &headers) {
        shared.metrics.rejected("origin_forbidden");
        return error(StatusCode::FORBIDDEN, "forbidden");
    }
    let Some(token) = query.access_token.or_else(|| bearer(&headers)) else {
        shared.metrics.rejected("missing_token");
        return error(StatusCode::UNAUTHORIZED, "invalid_credentials");
    };
    let identity = match shared.access.identify(&token).await {
        Ok(identity) => identity,
        Err(AccessError::Unauthenticated) => {
            shared.metrics.rejected("invalid_token");
            return error(StatusCode::UNAUTHORIZED, "invalid_credentials");
        }
        Err(err @ AccessError::Unavailable(_)) => {
            tracing::warn!(%err, "cannot identify socket");
            return error(StatusCode::SERVICE_UNAVAILABLE, "internal_error");
        }
    };
    let max = shared.config.max_frame_bytes;
    let shared = Arc::clone(shared);
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(max * 2)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            state
                .tracker
                .track_future(connection::run(socket, shared, identity, state.shutdown))
        })
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::to_owned)
}

fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|origin| allowed.iter().any(|a| a == origin))
}

fn error(status: StatusCode, code: &'static str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": code }))).into_response()
}

async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(shared.config.registry_ttl / 3);
    loop {
        tokio::select! {
            _ = tick.tick() => match shared.holdings.sweep(&shared.index).await {
                Ok(Sweep::Alive) => {}
                Ok(Sweep::Lapsed) => {
                    tracing::warn!("registry lost this gateway for longer than the TTL; resynchronising");
                    shared.resync();
                }
                Err(err) => tracing::warn!(%err, "registry heartbeat failed"),
            },
            () = stop.cancelled() => return,
        }
    }
}
