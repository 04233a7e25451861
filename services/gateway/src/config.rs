//! Gateway configuration, read once from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use filament_runtime::{ConfigError, Env};

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the websocket endpoint (`/gateway/ws`) and probes listen.
    pub listen_addr: SocketAddr,
    /// The api's gRPC endpoint: identity, subscribe authorization, events.
    pub api_url: String,
    /// Other services whose event streams this gateway follows
    /// (presence, voice).
    pub event_service_urls: Vec<String>,
    /// Largest inbound or outbound frame, in bytes.
    pub max_frame_bytes: usize,
    /// Frames queued per socket before it counts as a slow consumer.
    pub outbound_queue: usize,
    /// How often the server pings each socket.
    pub ping_interval: Duration,
    /// A socket that sends nothing (not even a pong) for this long is closed.
    pub idle_timeout: Duration,
    /// Time allowed for calls to the api (identify, authorize).
    pub upstream_timeout: Duration,
    /// Allowed `Origin` values; empty means any origin.
    pub allowed_origins: Vec<String>,
    /// Registry liveness TTL; the gateway heartbeats at a third of it.
    pub registry_ttl: Duration,
}

impl Config {
    pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;

    /// Defaults for a gateway listening on `listen_addr` and talking to the
    /// api at `api_url`.
    pub fn new(listen_addr: SocketAddr, api_url: impl Into<String>) -> Self {
        Self {
            listen_addr,
            api_url: api_url.into(),
            event_service_urls: Vec::new(),
            max_frame_bytes: Self::DEFAULT_MAX_FRAME_BYTES,
            outbound_queue: 256,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            upstream_timeout: Duration::from_secs(3),
            allowed_origins: Vec::new(),
            registry_ttl: Duration::from_secs(30),
        }
    }

    /// Reads `FILAMENT_GATEWAY_*` variables; see README.md for the list.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let defaults = Self::new(
            env.or("FILAMENT_GATEWAY_LISTEN_ADDR", ([0, 0, 0, 0], 8081).into())?,
            env.required::<String>("FILAMENT_API_GRPC_URL")?,
        );
        let config = Self {
            event_service_urls: env.list("FILAMENT_GATEWAY_EVENT_SERVICE_URLS")?,
            max_frame_bytes: env
                .or("FILAMENT_GATEWAY_MAX_FRAME_BYTES", defaults.max_frame_bytes)?,
            outbound_queue: env.or("FILAMENT_GATEWAY_OUTBOUND_QUEUE", defaults.outbound_queue)?,
            ping_interval: env.secs_or(
                "FILAMENT_GATEWAY_PING_INTERVAL_SECS",
                defaults.ping_interval,
            )?,
            idle_timeout: env
                .secs_or("FILAMENT_GATEWAY_IDLE_TIMEOUT_SECS", defaults.idle_timeout)?,
            upstream_timeout: defaults.upstream_timeout,
            allowed_origins: env.list("FILAMENT_GATEWAY_ALLOWED_ORIGINS")?,
            registry_ttl: env.secs_or("FILAMENT_REGISTRY_TTL_SECS", defaults.registry_ttl)?,
            ..defaults
        };
        config.validate()
    }

    fn validate(self) -> Result<Self, ConfigError> {
        let invalid = |name: &'static str, value: String, reason: &str| ConfigError::Invalid {
            name,
            value,
            reason: reason.to_owned(),
        };
        if !(1024..=1024 * 1024).contains(&self.max_frame_bytes) {
            return Err(invalid(
                "FILAMENT_GATEWAY_MAX_FRAME_BYTES",
                self.max_frame_bytes.to_string(),
                "must be between 1024 and 1048576",
            ));
        }
        if !(1..=65_536).contains(&self.outbound_queue) {
            return Err(invalid(
                "FILAMENT_GATEWAY_OUTBOUND_QUEUE",
                self.outbound_queue.to_string(),
                "must be between 1 and 65536",
            ));
        }
        if self.idle_timeout <= self.ping_interval {
            return Err(invalid(
                "FILAMENT_GATEWAY_IDLE_TIMEOUT_SECS",
                self.idle_timeout.as_secs().to_string(),
                "must be longer than the ping interval",
            ));
        }
        if self.registry_ttl < Duration::from_secs(3) {
            return Err(invalid(
                "FILAMENT_REGISTRY_TTL_SECS",
                self.registry_ttl.as_secs().to_string(),
                "must be at least 3",
            ));
        }
        Ok(self)
    }
}
