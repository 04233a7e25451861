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
//! connections, on any gateway, is present in it (PROTOCOL.md §5.5, §5.9).
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
//! [`filament_clients::PresenceClient`] is the gateway's side of all this.

mod grpc;
pub mod metrics;
mod notify;
mod service;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use filament_fanout::{EventSink, Fanout, FanoutConfig, ProducerServer};
use filament_registry::{Registry, RegistryConfig};
use filament_runtime::admin::AdminListener;
use filament_runtime::grpc_client::GrpcClientMetrics;
use filament_runtime::service_auth::ServiceToken;
use filament_runtime::{ConfigError, Env};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use metrics::PresenceMetrics;
pub use notify::VoiceNotifier;
pub use service::{OfflineListener, PresenceService};

use crate::store::{MemoryPresenceStore, PresenceStore, PresenceStoreConfig, RedisPresenceStore};

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
        config.store.lease_ttl = RegistryConfig::ttl_from_env(env)?;
        let registry_prefix = RegistryConfig::key_prefix_from_env(env)?;
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
    server: ProducerServer,
    service: PresenceService,
    sweep_interval: Duration,
    metrics: Arc<PresenceMetrics>,
    grpc_clients: GrpcClientMetrics,
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
    let sweep_interval = config.sweep_interval();
    Ok(BoundPresence {
        server: ProducerServer {
            listener,
            fanout,
            internal_token: config.internal_token,
            admin,
            background,
        },
        service: PresenceService::new(store, events, offline).with_metrics(Arc::clone(&metrics)),
        sweep_interval,
        metrics,
        grpc_clients,
    })
}

impl BoundPresence {
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.server.grpc_addr()
    }

    /// Where `/metrics` is served, if anywhere.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.server.admin_addr()
    }

    /// Serves until `shutdown`, then ends the event streams cleanly after
    /// the events already queued, and stops.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            server,
            service,
            sweep_interval,
            metrics,
            grpc_clients,
        } = self;
        tracing::info!(grpc = %server.grpc_addr()?, "presence listening");
        tokio::spawn(
            service
                .clone()
                .run_sweeper(sweep_interval, server.background.clone()),
        );
        let register = |registry: &mut prometheus_client::registry::Registry| {
            metrics.register(registry);
            grpc_clients.register(registry);
        };
        server
            .serve(grpc::PresenceGrpc::server(service), register, shutdown)
            .await?;
        tracing::info!("presence stopped");
        Ok(())
    }
}
