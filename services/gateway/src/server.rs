//! Binding and running a gateway: the HTTP listener with `/gateway/ws` and
//! the probes, the admin listener with `/metrics`, the upstream stream
//! followers, and the registry heartbeat. Shutdown closes every socket with
//! a close frame, waits for the socket tasks within the grace period, and
//! leaves the registry.
//!
//! An upgrade is checked cheapest first — the client IP's limits, the
//! Origin, the token — and refused with an HTTP status and a JSON error,
//! so nothing hostile ever becomes a socket.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use filament_registry::{GatewayId, Registry};
use filament_runtime::admin::AdminListener;
use filament_runtime::grpc_client::GrpcClientMetrics;
use filament_runtime::public::ListenerMetrics;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::{Access, AccessError};
use crate::holdings::{Holdings, Sweep};
use crate::index::Index;
use crate::limits::{IpLimits, IpRefusal};
use crate::metrics::UpgradeRejection;
use crate::upstream::Role;
use crate::{Config, Metrics, Shared, connection};
use filament_runtime::client_ip::resolve as client_ip;

/// Read buffer per socket, and the most one read asks the kernel for.
/// Inbound frames are small (a subscribe is ~120 bytes), and tungstenite
/// grows the buffer to a frame's length when it needs to. Small for two
/// reasons: every idle socket holds it, and tungstenite zeroes it before
/// each read attempt, including the one that finds nothing after every
/// batch of outbound frames.
const READ_BUFFER_BYTES: usize = 512;
/// Frames queued for a socket are fed to tungstenite together and flushed
/// once (see `connection::write_queued`); past this many buffered bytes it
/// writes to the socket without waiting for the flush. Small, because a
/// socket keeps the buffer's capacity; idle sockets never grow it.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// A gateway with its listeners bound, ready to run.
pub struct BoundGateway {
    listener: TcpListener,
    admin: Option<AdminListener>,
    metrics_registry: Arc<prometheus_client::registry::Registry>,
    listener_metrics: ListenerMetrics,
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
    let admin = match config.admin_addr {
        Some(addr) => Some(AdminListener::bind(addr).await?),
        None => None,
    };
    let gateway_id = GatewayId::new(ulid::Ulid::generate().to_string());
    let metrics = Arc::new(Metrics::default());
    let mut metrics_registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut metrics_registry);
    let listener_metrics = ListenerMetrics::default();
    listener_metrics.register(&mut metrics_registry);
    let registry_metrics = filament_registry::RegistryMetrics::default();
    registry_metrics.register(&mut metrics_registry);
    let registry = registry_metrics.wrap(registry);
    let grpc_clients = GrpcClientMetrics::new(config.internal_token.clone());
    grpc_clients.register(&mut metrics_registry);
    let shared = Arc::new(Shared {
        access: Access::new(&config.api_url, config.upstream_timeout, &grpc_clients)?,
        index: Index::new(Arc::clone(&metrics)),
        peers: crate::peers::Peers::new(
            config.presence_url.as_deref(),
            config.voice_url.as_deref(),
            &gateway_id.to_string(),
            config.upstream_timeout,
            &grpc_clients,
        )?,
        holdings: Holdings::new(gateway_id, registry, config.registry_ttl),
        ip_limits: Arc::new(IpLimits::new(
            config.max_connections_per_ip,
            config.handshakes_per_ip_per_minute,
        )),
        metrics,
        grpc_clients,
        api_streams: crate::discovery::ApiStreams::default(),
        recent_events: crate::dedupe::RecentEvents::default(),
        positioned_sockets: crate::resume::PositionedCount::default(),
        config,
    });
    Ok(BoundGateway {
        listener,
        admin,
        metrics_registry: Arc::new(metrics_registry),
        listener_metrics,
        shared,
        tracker: TaskTracker::new(),
        sockets_shutdown: CancellationToken::new(),
    })
}

impl BoundGateway {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where `/metrics` is served, when an admin address was configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
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

    /// The counters of the websocket listener's accept loop, for another
    /// listener serving [`router`](Self::router) to count into as well.
    pub fn listener_metrics(&self) -> ListenerMetrics {
        self.listener_metrics.clone()
    }

    /// The routes of this gateway (`/gateway/ws`, `/healthz`, `/readyz`),
    /// for serving them on another listener too (the all-in-one origin).
    /// Serve it with `filament_runtime::public::serve`, which hands each
    /// request its peer address: without it, every client shares one IP's
    /// limits.
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
            admin,
            metrics_registry,
            listener_metrics,
            shared,
            tracker,
            sockets_shutdown,
        } = self;
        let background = CancellationToken::new();
        if let Some(admin) = admin {
            tracing::info!(addr = %admin.local_addr()?, "gateway metrics listening");
            let stop = background.clone();
            tokio::spawn(async move {
                if let Err(err) = admin.serve(metrics_registry, stop).await {
                    tracing::error!(%err, "admin listener failed");
                }
            });
        }
        let api = (shared.config.api_stream_url().to_owned(), Role::Api);
        let views = shared
            .config
            .event_service_urls
            .iter()
            .map(|url| (url.clone(), Role::View));
        for (url, role) in std::iter::once(api).chain(views) {
            tokio::spawn(crate::discovery::follow_service(
                Arc::clone(&shared),
                url,
                role,
                shared.config.discovery_interval,
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
        filament_runtime::public::serve(
            listener,
            app,
            shared.config.public.clone(),
            listener_metrics,
            shutdown.clone(),
        )
        .await?;

        // New upgrades are refused from here on; close the open sockets,
        // and any an upgrade in flight registers.
        sockets_shutdown.cancel();
        shared.index.shut_down();
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
    /// `1`: this socket wants replay positions (docs/adr/0011-resume.md).
    positions: Option<String>,
}

/// `GET /gateway/ws`: checks the client IP's limits, the Origin and the
/// token before upgrading, so a refused client gets an HTTP status and a
/// JSON error, not a websocket.
async fn upgrade(
    State(state): State<Upgrade>,
    Query(query): Query<UpgradeQuery>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let shared = &state.shared;
    if state.shutdown.is_cancelled() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "internal_error");
    }
    if !shared.is_ready() {
        shared.metrics.upgrade_rejected(UpgradeRejection::NotReady);
        return error(StatusCode::SERVICE_UNAVAILABLE, "internal_error");
    }
    // Without the peer address (a router served without connect info) all
    // clients share one bucket: stricter, never looser.
    let peer = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.0.0.ip());
    let ip = client_ip(peer, &headers, &shared.config.trusted_proxies);
    let permit = match shared.ip_limits.admit(ip, Instant::now()) {
        Ok(permit) => permit,
        Err(IpRefusal::TooManyConnections) => {
            shared
                .metrics
                .upgrade_rejected(UpgradeRejection::IpConnectionLimit);
            return rate_limited(Duration::from_secs(1));
        }
        Err(IpRefusal::HandshakeRate { retry_after }) => {
            shared
                .metrics
                .upgrade_rejected(UpgradeRejection::HandshakeRateLimited);
            return rate_limited(retry_after);
        }
    };
    if !origin_allowed(&shared.config.allowed_origins, &headers) {
        shared
            .metrics
            .upgrade_rejected(UpgradeRejection::OriginForbidden);
        return error(StatusCode::FORBIDDEN, "forbidden");
    }
    let positioned = match query.positions.as_deref() {
        None | Some("0") => false,
        Some("1") => true,
        Some(_) => return error(StatusCode::BAD_REQUEST, "invalid_request"),
    };
    let Some(token) = query.access_token.or_else(|| bearer(&headers)) else {
        shared
            .metrics
            .upgrade_rejected(UpgradeRejection::MissingToken);
        return error(StatusCode::UNAUTHORIZED, "invalid_credentials");
    };
    // PROTOCOL.md §1.5 bounds tokens to 32–4096 visible ASCII characters; a
    // token outside that is refused here, without a call to the api.
    let plausible =
        (32..=4096).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_graphic());
    let identified = if plausible {
        shared.access.identify(&token).await
    } else {
        Err(AccessError::Unauthenticated)
    };
    let identity = match identified {
        Ok(identity) => identity,
        Err(AccessError::Unauthenticated) => {
            shared
                .metrics
                .upgrade_rejected(UpgradeRejection::InvalidToken);
            return error(StatusCode::UNAUTHORIZED, "invalid_credentials");
        }
        Err(err @ (AccessError::Unavailable(_) | AccessError::Refused(_))) => {
            tracing::warn!(%err, "cannot identify socket");
            return error(StatusCode::SERVICE_UNAVAILABLE, "internal_error");
        }
    };
    let max = shared.config.max_frame_bytes;
    let shared = Arc::clone(shared);
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(WRITE_BUFFER_BYTES + max * 2)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            state.tracker.track_future(connection::run(
                socket, shared, identity, positioned, permit,
            ))
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

/// 429 with the error body of PROTOCOL.md §1.3 and when to try again (whole
/// seconds, rounded up).
fn rate_limited(retry_after: Duration) -> Response {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let mut response = error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    response
}

async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(shared.config.registry_ttl / 3);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let swept = shared.holdings.sweep(&shared.index).await;
                let failed = swept.is_err();
                match swept {
                    Ok(Sweep::Alive) => {}
                    Ok(Sweep::Lapsed) => {
                        tracing::warn!("registry lost this gateway for longer than the TTL; resynchronising");
                        shared.resync();
                    }
                    Ok(Sweep::Healed) => {
                        tracing::warn!("the registry lost its state; held everything again");
                    }
                    Err(err) => tracing::warn!(%err, "registry heartbeat failed"),
                }
                // The registry failed (a heartbeat, or a hold since the last
                // sweep): sweep again soon rather than in TTL / 3, so that a
                // registry that answers again learns at once what our sockets
                // subscribed to meanwhile (see `holdings`). While Redis stays
                // down these retries cost nothing: the circuit is open.
                if failed || shared.holdings.unconfirmed().await {
                    tick.reset_after(crate::holdings::REHOLD_RETRY.min(shared.config.registry_ttl / 3));
                }
                if shared.peers.heartbeat().await {
                    tracing::warn!("presence let this gateway's lease lapse; telling it again");
                    let shared = Arc::clone(&shared);
                    tokio::spawn(async move {
                        let repair = crate::connection::Repair::PresenceForgot;
                        crate::connection::repair_views(&shared, repair).await;
                    });
                }
            }
            () = stop.cancelled() => return,
        }
    }
}
