//! The Filament voice service: who is in which voice channel, what they
//! publish, and LiveKit join tokens.
//!
//! The api authorizes a caller (membership, channel visibility, channel
//! kind, grants from permissions) and calls `filament.v1.Voice.Join`
//! (`proto/filament/v1/voice.proto`); this service registers the participant
//! in its roster ([`roster::Roster`]'s rules, kept in a [`store::RosterStore`]) and signs a LiveKit access token with the key
//! and secret that only it holds. Every change — join, leave, flag updates,
//! streams published and unpublished — is published as a channel event on
//! the service's own event stream ([`filament_fanout::Fanout`]), which the
//! gateways follow, so only sockets that may see the channel receive it.
//!
//! Participants are removed by an explicit leave, by a kick or ban
//! (`RemoveUser`), when their last connection anywhere closes (presence
//! calls `ConnectionClosed`), when LiveKit reports they left (the optional
//! webhook receiver, [`webhook`]), and when their TTL runs out without a
//! renewal (a token, a state update, a webhook about them). Every removal
//! unpublishes their streams, then announces the leave.
//!
//! The roster is in Redis for the `filament-voice` binary, so that several
//! replicas share it and a restart loses no participant; the embedded
//! all-in-one keeps it in memory unless it runs on Redis ([`open_store`]).

mod drift;
mod grpc;
pub mod livekit;
pub mod metrics;
pub mod roster;
mod service;
pub mod store;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use filament_fanout::{Fanout, FanoutConfig, ProducerServer};
use filament_registry::{RedisOptions, Registry, RegistryConfig};
use filament_runtime::admin::AdminListener;
use filament_runtime::{ConfigError, Env};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use filament_runtime::service_auth::ServiceToken;
pub use livekit::LiveKit;
pub use metrics::VoiceMetrics;
pub use service::{Join, JoinGrant, Observed, TOKEN_TTL_SECS, TimeSource, VoiceService};

use crate::roster::Limits;
use crate::store::{MemoryRosterStore, RedisRosterStore, RedisRosterStoreConfig, RosterStore};

#[derive(Debug, Clone)]
pub struct Config {
    pub grpc_addr: SocketAddr,
    pub livekit: LiveKit,
    /// How long a participant stays without a renewal.
    pub participant_ttl: Duration,
    pub limits: Limits,
    /// Where the LiveKit webhook receiver listens; unset: no receiver.
    pub webhook_addr: Option<SocketAddr>,
    /// Where `/metrics` is served; unset: nowhere.
    pub admin_addr: Option<SocketAddr>,
    /// LiveKit's server API (`FILAMENT_LIVEKIT_API_URL`, `http://` only);
    /// unset: no drift check.
    pub livekit_api_url: Option<String>,
    /// How often the drift check runs (`FILAMENT_VOICE_DRIFT_CHECK_SECS`).
    pub drift_check_interval: Duration,
    /// Asked of every gRPC caller (`FILAMENT_INTERNAL_TOKEN`).
    pub internal_token: ServiceToken,
    /// Prepended to the roster's Redis keys: `$FILAMENT_REGISTRY_PREFIX` +
    /// `voice:`.
    pub roster_key_prefix: String,
    /// Timeouts of the roster's Redis calls (`FILAMENT_REDIS_TIMEOUT_MS`).
    pub redis: RedisOptions,
}

impl Config {
    /// Defaults (PROTOCOL.md §4.8) for a voice service on `grpc_addr`.
    pub fn new(grpc_addr: SocketAddr, livekit: LiveKit) -> Self {
        Self {
            grpc_addr,
            livekit,
            participant_ttl: Duration::from_secs(300),
            limits: Limits::default(),
            webhook_addr: None,
            admin_addr: None,
            livekit_api_url: None,
            drift_check_interval: Duration::from_secs(15),
            internal_token: ServiceToken::generate(),
            roster_key_prefix: "filament:voice:".to_owned(),
            redis: RedisOptions::default(),
        }
    }

    /// Reads the voice variables; see README.md for the list. The secret is
    /// never echoed in an error.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let key: String = env.required("FILAMENT_LIVEKIT_API_KEY")?;
        let secret: String = env.required("FILAMENT_LIVEKIT_API_SECRET")?;
        let url: String = env.or("FILAMENT_LIVEKIT_URL", "ws://127.0.0.1:7880".to_owned())?;
        let livekit = livekit_from(key, secret, url)?;
        let mut config = Self::new(
            env.or("FILAMENT_VOICE_GRPC_ADDR", ([0, 0, 0, 0], 50053).into())?,
            livekit,
        );
        config.participant_ttl = env.secs_or(
            "FILAMENT_VOICE_PARTICIPANT_TTL_SECS",
            config.participant_ttl,
        )?;
        let limits = &mut config.limits;
        limits.max_channels = env.or("FILAMENT_VOICE_MAX_CHANNELS", limits.max_channels)?;
        limits.max_participants_per_channel = env.or(
            "FILAMENT_VOICE_MAX_PARTICIPANTS_PER_CHANNEL",
            limits.max_participants_per_channel,
        )?;
        limits.max_participants =
            env.or("FILAMENT_VOICE_MAX_PARTICIPANTS", limits.max_participants)?;
        config.webhook_addr = env.optional("FILAMENT_VOICE_WEBHOOK_ADDR")?;
        config.admin_addr = env.optional("FILAMENT_VOICE_ADMIN_ADDR")?;
        config.internal_token = ServiceToken::from_env(env)?;
        let registry_prefix = RegistryConfig::key_prefix_from_env(env)?;
        config.roster_key_prefix = format!("{registry_prefix}voice:");
        config.redis = RedisOptions::from_env(env)?;
        config.livekit_api_url = env.optional("FILAMENT_LIVEKIT_API_URL")?;
        if let Some(url) = &config.livekit_api_url
            && !url.starts_with("http://")
        {
            return Err(invalid(
                "FILAMENT_LIVEKIT_API_URL",
                url.clone(),
                "must be LiveKit's http:// server address (no TLS client in this build)",
            ));
        }
        config.drift_check_interval = env.secs_or(
            "FILAMENT_VOICE_DRIFT_CHECK_SECS",
            config.drift_check_interval,
        )?;
        if config.drift_check_interval.is_zero() {
            return Err(invalid(
                "FILAMENT_VOICE_DRIFT_CHECK_SECS",
                "0".to_owned(),
                "must be at least 1",
            ));
        }
        for (name, value) in [
            ("FILAMENT_VOICE_MAX_CHANNELS", config.limits.max_channels),
            (
                "FILAMENT_VOICE_MAX_PARTICIPANTS_PER_CHANNEL",
                config.limits.max_participants_per_channel,
            ),
            (
                "FILAMENT_VOICE_MAX_PARTICIPANTS",
                config.limits.max_participants,
            ),
        ] {
            if value == 0 {
                return Err(invalid(name, "0".to_owned(), "must be at least 1"));
            }
        }
        if config.participant_ttl.is_zero() {
            return Err(invalid(
                "FILAMENT_VOICE_PARTICIPANT_TTL_SECS",
                "0".to_owned(),
                "must be at least 1",
            ));
        }
        Ok(config)
    }

    /// How often expired participants are pruned: a tenth of the TTL,
    /// between 100 ms and 5 s.
    pub fn prune_interval(&self) -> Duration {
        (self.participant_ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }
}

/// The LiveKit settings from their variables, naming the bad one.
pub fn livekit_from(key: String, secret: String, url: String) -> Result<LiveKit, ConfigError> {
    use livekit::LiveKitConfigError as E;
    LiveKit::new(key.clone(), secret, url.clone()).map_err(|err| match err {
        E::BadKey => invalid("FILAMENT_LIVEKIT_API_KEY", key, &err.to_string()),
        E::ShortSecret => invalid(
            "FILAMENT_LIVEKIT_API_SECRET",
            "<redacted>".to_owned(),
            &err.to_string(),
        ),
        E::BadUrl => invalid("FILAMENT_LIVEKIT_URL", url, &err.to_string()),
    })
}

fn invalid(name: &'static str, value: String, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        name,
        value,
        reason: reason.to_owned(),
    }
}

/// The roster's store: on the Redis at `redis_url` under
/// `config.roster_key_prefix`, or in memory when there is none.
pub async fn open_store(
    config: &Config,
    redis_url: Option<&str>,
) -> anyhow::Result<Arc<dyn RosterStore>> {
    Ok(match redis_url {
        Some(url) => {
            let store_config = RedisRosterStoreConfig {
                limits: config.limits.clone(),
                ttl: config.participant_ttl,
                key_prefix: config.roster_key_prefix.clone(),
                redis: config.redis.clone(),
            };
            Arc::new(
                RedisRosterStore::connect(url, store_config)
                    .await
                    .context("connecting the Redis voice roster")?,
            )
        }
        None => Arc::new(MemoryRosterStore::new(
            config.limits.clone(),
            config.participant_ttl,
        )),
    })
}

/// The service with its listeners bound.
pub struct BoundVoice {
    server: ProducerServer,
    webhook: Option<TcpListener>,
    service: VoiceService,
    prune_interval: Duration,
    /// LiveKit's server API and how often to check it, when configured.
    drift: Option<(drift::RoomService, Duration)>,
    metrics: Arc<VoiceMetrics>,
}

/// Binds the listeners; nothing runs until [`BoundVoice::run`]. `registry`
/// routes events to the gateways that hold each channel's guild; `store`
/// holds the roster ([`open_store`]).
pub async fn bind(
    config: Config,
    registry: Arc<dyn Registry>,
    store: Arc<dyn RosterStore>,
) -> anyhow::Result<BoundVoice> {
    let grpc = TcpListener::bind(config.grpc_addr).await?;
    let webhook = match config.webhook_addr {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    let admin = match config.admin_addr {
        Some(addr) => Some(AdminListener::bind(addr).await?),
        None => None,
    };
    let metrics = Arc::new(VoiceMetrics::default());
    let registry = metrics.registry_calls().wrap(registry);
    let fanout = Fanout::new("voice", registry, FanoutConfig::default());
    let prune_interval = config.prune_interval();
    let drift = config
        .livekit_api_url
        .as_deref()
        .map(|url| drift::RoomService::new(url, config.livekit.clone()))
        .transpose()?
        .map(|rooms| (rooms, config.drift_check_interval));
    let service = VoiceService::new(
        config.livekit,
        store,
        Arc::new(fanout.clone()),
        Arc::clone(&metrics),
    );
    Ok(BoundVoice {
        server: ProducerServer {
            listener: grpc,
            fanout,
            internal_token: config.internal_token,
            admin,
            background: CancellationToken::new(),
        },
        webhook,
        service,
        prune_interval,
        drift,
        metrics,
    })
}

impl BoundVoice {
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.server.grpc_addr()
    }

    /// Where the LiveKit webhook receiver listens, if configured.
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.server.admin_addr()
    }

    pub fn metrics(&self) -> Arc<VoiceMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Serves until `shutdown`, then ends the event streams cleanly after
    /// the events already queued, and stops.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            server,
            webhook,
            service,
            prune_interval,
            drift,
            metrics,
        } = self;
        tracing::info!(grpc = %server.grpc_addr()?, "voice listening");
        let background = server.background.clone();
        tokio::spawn(
            service
                .clone()
                .run_pruner(prune_interval, background.clone()),
        );
        if let Some((rooms, interval)) = drift {
            tracing::info!(?interval, "LiveKit drift check on");
            tokio::spawn(drift::run(
                service.clone(),
                rooms,
                interval,
                background.clone(),
            ));
        }
        if let Some(listener) = webhook {
            tracing::info!(addr = %listener.local_addr()?, "LiveKit webhook receiver listening");
            let app = webhook::router(service.clone());
            let stop = background.clone();
            tokio::spawn(async move {
                if let Err(err) = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                {
                    tracing::error!(%err, "webhook receiver failed");
                }
            });
        }
        server
            .serve(
                grpc::VoiceGrpc::server(service),
                |registry| metrics.register(registry),
                shutdown,
            )
            .await?;
        tracing::info!("voice stopped");
        Ok(())
    }
}
