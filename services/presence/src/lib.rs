//! The Filament presence service: who is online, across every gateway.
//!
//! Gateways report their sockets over gRPC (`filament.v1.Presence`, see
//! `proto/filament/v1/presence.proto`): a socket opened, entered a guild
//! (an accepted subscribe), left one, closed. The state lives behind
//! [`store::PresenceStore`] — Redis in production, memory in the all-in-one
//! — which decides every transition atomically. On a real transition the
//! service publishes `presence_update` to the guild on its own event stream
//! ([`filament_fanout::Fanout`]), which gateways follow like the api's.
//!
//! A user is online in a guild while at least one of their open
//! connections, on any gateway, is present in it (contract §5.1, §5.3).
//!
//! Gateway crashes: every gateway call renews that gateway's lease for one
//! TTL (`FILAMENT_REGISTRY_TTL_SECS`, the routing registry's). A sweeper
//! removes the connections of gateways whose lease ran out, so a crashed
//! gateway's users go offline at most TTL + one sweep interval (at most one
//! second) after its last heartbeat, with one `presence_update` per real
//! transition — none for users still connected elsewhere.
//!
//! When a user's last connection anywhere closes (or expires), presence
//! tells the voice service ([`notify`]), which removes them from voice.
//!
//! [`client::PresenceClient`] is the gateway's side of all this.

pub mod client;
mod grpc;
pub mod metrics;
mod notify;
mod service;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use filament_fanout::{COVERAGE_INTERVAL, Coverage, Fanout, FanoutConfig};
use filament_registry::Registry;
use filament_runtime::admin::AdminListener;
use filament_runtime::grpc_client::GrpcClientMetrics;
use filament_runtime::service_auth::{RequireServiceToken, ServiceToken};
use filament_runtime::{ConfigError, Env};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use metrics::PresenceMetrics;
pub use notify::VoiceNotifier;
pub use service::{EventSink, OfflineListener, PresenceService};

use crate::store::{MemoryPresenceStore, PresenceStore, PresenceStoreConfig, RedisPresenceStore};

/// The gRPC service name this process reports as serving.
pub const SERVICE_NAME: &str = "filament.v1.Presence";

#[derive(Debug, Clone)]
pub struct Config {
    pub grpc_addr: SocketAddr,
    /// Lease TTL (the registry TTL), caps and the Redis key prefix.
    pub store: PresenceStoreConfig,
    /// The voice service, told about users who went offline everywhere.
    /// Unset: voice relies on its own participant TTL.
    pub voice_grpc_url: Option<String>,
    /// Where `/metrics` is served; unset: nowhere.
    pub admin_addr: Option<SocketAddr>,
    /// Presented on every call to voice, and asked of every caller.
    pub internal_token: ServiceToken,
}

impl Config {
    /// Defaults for a presence service listening on `grpc_addr`.
    pub fn new(grpc_addr: SocketAddr) -> Self {
        Self {
            grpc_addr,
            store: PresenceStoreConfig::default(),
            voice_grpc_url: None,
            admin_addr: None,
            internal_token: ServiceToken::generate(),
        }
    }

    /// Reads the presence variables; see README.md for the list.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let mut config =
            Self::new(env.or("FILAMENT_PRESENCE_GRPC_ADDR", ([0, 0, 0, 0], 50052).into())?);
        config.store.lease_ttl =
            env.secs_or("FILAMENT_REGISTRY_TTL_SECS", config.store.lease_ttl)?;
        if config.store.lease_ttl < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                name: "FILAMENT_REGISTRY_TTL_SECS",
                value: config.store.lease_ttl.as_secs().to_string(),
                reason: "must be at least 1".to_owned(),
            });
        }
        let registry_prefix: String = env.or("FILAMENT_REGISTRY_PREFIX", "filament:".to_owned())?;
        config.store.key_prefix = format!("{registry_prefix}presence:");
        config.store.redis = filament_registry::RedisOptions::from_env(env)?;
        config.store.max_guilds_per_connection = env.or(
            "FILAMENT_PRESENCE_MAX_GUILDS_PER_CONNECTION",
            config.store.max_guilds_per_connection,
        )?;
        if config.store.max_guilds_per_connection == 0 {
            return Err(ConfigError::Invalid {
                name: "FILAMENT_PRESENCE_MAX_GUILDS_PER_CONNECTION",
                value: "0".to_owned(),
                reason: "must be at least 1".to_owned(),
            });
        }
        config.voice_grpc_url = env.optional("FILAMENT_PRESENCE_VOICE_GRPC_URL")?;
        config.admin_addr = env.optional("FILAMENT_PRESENCE_ADMIN_ADDR")?;
        config.internal_token = ServiceToken::from_env(env)?;
        Ok(config)
    }

    /// How often expired leases are swept: a tenth of the TTL, between 50 ms
    /// and one second, so the offline bound stays close to the TTL.
    pub fn sweep_interval(&self) -> Duration {
        (self.store.lease_ttl / 10).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}

/// Opens the presence state: Redis at `redis_url`, or memory without one.
pub async fn open_store(
    config: &PresenceStoreConfig,
    redis_url: Option<&str>,
) -> anyhow::Result<Arc<dyn PresenceStore>> {
    Ok(match redis_url {
        Some(url) => Arc::new(
            RedisPresenceStore::connect(url, config.clone())
                .await
                .context("connecting the Redis presence store")?,
        ),
        None => Arc::new(MemoryPresenceStore::new(config.clone())),
    })
}

/// The service with its listener bound.
pub struct BoundPresence {
    listener: TcpListener,
    service: PresenceService,
    fanout: Fanout,
    sweep_interval: Duration,
    background: CancellationToken,
    admin: Option<AdminListener>,
    metrics: Arc<PresenceMetrics>,
    grpc_clients: GrpcClientMetrics,
    internal_token: ServiceToken,
}

/// Binds the listener; nothing runs until [`BoundPresence::run`]. `registry`
/// routes events to gateways; `store` holds the state.
pub async fn bind(
    config: Config,
    registry: Arc<dyn Registry>,
    store: Arc<dyn PresenceStore>,
) -> anyhow::Result<BoundPresence> {
    let listener = TcpListener::bind(config.grpc_addr).await?;
    let metrics = Arc::new(PresenceMetrics::default());
    let registry = metrics.registry_calls().wrap(registry);
    let fanout = Fanout::new("presence", registry, FanoutConfig::default());
    let background = CancellationToken::new();
    let grpc_clients = GrpcClientMetrics::new(config.internal_token.clone());
    let offline: Option<Arc<dyn OfflineListener>> = match &config.voice_grpc_url {
        Some(url) => Some(Arc::new(
            VoiceNotifier::spawn(url, &grpc_clients, background.clone())
                .context("FILAMENT_PRESENCE_VOICE_GRPC_URL")?,
        )),
        None => None,
    };
    let events: Arc<dyn EventSink> = Arc::new(fanout.clone());
    let admin = match config.admin_addr {
        Some(addr) => Some(
            AdminListener::bind(addr)
                .await
                .context("FILAMENT_PRESENCE_ADMIN_ADDR")?,
        ),
        None => None,
    };
    Ok(BoundPresence {
        listener,
        service: PresenceService::new(store, events, offline).with_metrics(Arc::clone(&metrics)),
        sweep_interval: config.sweep_interval(),
        fanout,
        background,
        admin,
        metrics,
        grpc_clients,
        internal_token: config.internal_token,
    })
}

impl BoundPresence {
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where `/metrics` is served, if anywhere.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown`, then ends the event streams cleanly after
    /// the events already queued, and stops.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            listener,
            service,
            fanout,
            sweep_interval,
            background,
            admin,
            metrics,
            grpc_clients,
            internal_token,
        } = self;
        tracing::info!(grpc = %listener.local_addr()?, "presence listening");
        tokio::spawn(
            service
                .clone()
                .run_sweeper(sweep_interval, background.clone()),
        );

        // Labelled by method only for the methods served here.
        let grpc_metrics = filament_runtime::grpc::GrpcServerMetrics::serving(
            &[filament_proto::FILE_DESCRIPTOR_SET],
            &[
                filament_proto::v1::presence_server::SERVICE_NAME,
                filament_proto::v1::event_stream_server::SERVICE_NAME,
            ],
        )?;
        if let Some(admin) = admin {
            let mut registry = prometheus_client::registry::Registry::default();
            metrics.register(&mut registry);
            grpc_metrics.register(&mut registry);
            grpc_clients.register(&mut registry);
            tokio::spawn(admin.serve(Arc::new(registry), background.clone()));
        }

        let grpc_stop = CancellationToken::new();
        let health = Coverage::track(fanout.clone(), COVERAGE_INTERVAL, background.clone())
            .grpc_health(SERVICE_NAME, shutdown.clone())
            .await;
        let server = tonic::transport::Server::builder()
            .layer(grpc_metrics.layer())
            .layer(RequireServiceToken::new(internal_token))
            .add_service(health)
            .add_service(filament_runtime::grpc::reflection(&[
                filament_proto::FILE_DESCRIPTOR_SET,
            ])?)
            .add_service(grpc::PresenceGrpc::server(service))
            .add_service(fanout.grpc_service().into_server())
            .serve_with_incoming_shutdown(
                filament_runtime::net::grpc_incoming(listener),
                grpc_stop.clone().cancelled_owned(),
            );
        let mut server = tokio::spawn(server);
        let early = tokio::select! {
            result = &mut server => Some(result),
            () = shutdown.cancelled() => None,
        };
        background.cancel();
        fanout.close();
        grpc_stop.cancel();
        let result = match early {
            Some(result) => result,
            None => server.await,
        };
        result??;
        tracing::info!("presence stopped");
        Ok(())
    }
}
