//! The Filament api: the REST routes of PROTOCOL.md §2 on axum, storage on sqlx (SQLite or
//! Postgres), and two gRPC services for the edge — `EdgeAccess` (who is
//! this token, may they subscribe) and `EventStream` (the events each
//! gateway needs, published after every commit).

pub mod config;
pub mod store;

mod admin;
mod attachments;
mod auth;
mod clock;
mod domain;
mod error;
mod feed;
mod grpc;
mod http;
mod id_generator;
mod markdown;
mod outbox;
mod publish;
mod rate_limit;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use filament_fanout::{COVERAGE_INTERVAL, Coverage, Fanout, FanoutConfig};
use filament_registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{Config, HashingLimits, OutboxConfig, OutboxRequestPath, PasswordHashing};
pub use domain::permissions;
pub use error::ApiError;
pub use http::openapi_document;

use crate::state::AppState;

/// An api with its listeners bound, ready to run.
pub struct BoundApi {
    http: TcpListener,
    grpc: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
    admin: admin::Admin,
    /// Whether every live gateway streams from this replica: until then it
    /// is not ready, so it takes no request whose event a gateway would miss.
    coverage: Coverage,
}

/// Connects nothing and binds both listeners; [`BoundApi::run`] serves.
pub async fn bind(
    config: Config,
    store: Arc<dyn store::Store>,
    registry: Arc<dyn Registry>,
) -> anyhow::Result<BoundApi> {
    let http = TcpListener::bind(config.http_addr).await?;
    let grpc = TcpListener::bind(config.grpc_addr).await?;
    let admin = admin::Admin::bind(&config).await?;
    let registry = admin.registry_calls().wrap(registry);
    // Every api event is kept in the outbox until each gateway holding its
    // audience acknowledged it (docs/adr/0010-durable-event-stream.md).
    let fanout = Fanout::new(
        "api",
        Arc::clone(&registry),
        FanoutConfig {
            durable: true,
            ..FanoutConfig::default()
        },
    );
    let shutdown = CancellationToken::new();
    let coverage = Coverage::track(fanout.clone(), COVERAGE_INTERVAL, shutdown.clone());
    let state = AppState::new(
        config,
        store,
        registry,
        fanout,
        admin.hashing_metrics(),
        admin.grpc_clients(),
    )?;
    Ok(BoundApi {
        http,
        grpc,
        state,
        shutdown,
        admin,
        coverage,
    })
}

impl BoundApi {
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    /// Where `/metrics` is served, when an admin address was configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr()
    }

    /// The REST routes, to serve under another prefix too (the all-in-one
    /// origin mounts them at `/api`).
    pub fn router(&self) -> Router {
        let draining = self.shutdown.clone();
        let coverage = self.coverage.clone();
        http::router(self.state.clone(), move || {
            !draining.is_cancelled() && coverage.is_complete()
        })
        .layer(self.admin.extension())
    }

    /// Serves until `shutdown`, then drains: in-flight requests finish and
    /// publish their events, the event streams end cleanly after the last
    /// event, and only then does gRPC stop.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let router = self.router();
        let Self {
            http,
            grpc,
            state,
            shutdown: draining,
            admin,
            coverage,
        } = self;
        let listener_metrics = admin.listener_metrics();
        let health = coverage
            .grpc_health("filament.v1.EdgeAccess", draining.clone())
            .await;
        let grpc_server = filament_runtime::grpc::server(
            admin.grpc_metrics(),
            admin.internal_token(),
            health,
            &[filament_proto::FILE_DESCRIPTOR_SET],
        )?;
        let log_head = admin.message_log_head();
        admin.spawn(shutdown.clone());
        tracing::info!(http = %http.local_addr()?, grpc = %grpc.local_addr()?, "api listening");

        let grpc_stop = CancellationToken::new();
        let grpc_server = grpc_server
            .add_service(grpc::EdgeAccessService::server(state.clone()))
            .add_service(state.fanout().grpc_service().into_server())
            .add_service(feed::MessageFeedService::server(
                state.clone(),
                grpc_stop.clone(),
            ))
            .serve_with_incoming_shutdown(
                filament_runtime::net::grpc_incoming(grpc),
                grpc_stop.clone().cancelled_owned(),
            );
        let grpc_task = tokio::spawn(grpc_server);

        // One relay per process, stopped only after the last request has
        // published: what it leaves, the next process (or another replica)
        // publishes.
        let relay_stop = CancellationToken::new();
        let relay = tokio::spawn(outbox::run_relay(
            state.clone(),
            log_head,
            relay_stop.clone(),
        ));

        // Readiness turns false with the drain, before the listener stops.
        let http_stop = shutdown.child_token();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            draining.cancel();
        });
        let http_result = filament_runtime::public::serve(
            http,
            router,
            state.config().public.clone(),
            listener_metrics,
            http_stop,
        )
        .await;

        relay_stop.cancel();
        if let Err(err) = relay.await {
            tracing::error!(%err, "outbox relay failed");
        }
        state.fanout().close();
        grpc_stop.cancel();
        let grpc_result = grpc_task.await?;
        http_result?;
        grpc_result?;
        tracing::info!("api stopped");
        Ok(())
    }
}
