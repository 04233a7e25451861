//! Gateway configuration, read once from the environment. README.md lists
//! every variable; the defaults are the limits of PROTOCOL.md §4.7.

use std::net::SocketAddr;
use std::time::Duration;

use filament_runtime::{ConfigError, Env};

use filament_runtime::client_ip::TrustedProxy;
use filament_runtime::public::PublicLimits;
use filament_runtime::service_auth::ServiceToken;
use ipnet::IpNet;

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the websocket endpoint (`/gateway/ws`) and probes listen.
    pub listen_addr: SocketAddr,
    /// Where `/metrics` is served; `None` serves no metrics. Never the
    /// public listener.
    pub admin_addr: Option<SocketAddr>,
    /// The api's gRPC endpoint: identity, subscribe authorization, events.
    pub api_url: String,
    /// Where the api's replicas are found for their event streams, when
    /// not at `api_url`: in Kubernetes a headless Service that also lists
    /// replicas that are not ready yet (a replica waits for every gateway's
    /// stream before it is ready), while unary calls go through the
    /// load-balanced `api_url`.
    pub api_stream_url: Option<String>,
    /// Other services whose event streams this gateway follows
    /// (presence, voice). A host name is resolved to every replica behind
    /// it.
    pub event_service_urls: Vec<String>,
    /// How often service host names are resolved again to find replicas
    /// that came or went.
    pub discovery_interval: Duration,
    /// The presence service, told about every socket; unset: no presence.
    pub presence_url: Option<String>,
    /// The voice service, asked for rosters on subscribe; unset: empty
    /// rosters.
    pub voice_url: Option<String>,
    /// Largest inbound or outbound frame, in bytes. A larger inbound frame
    /// closes the socket (1009); a larger outbound one is never sent.
    pub max_frame_bytes: usize,
    /// Frames queued per socket before it counts as a slow consumer.
    pub outbound_queue: usize,
    /// How often the server pings each socket.
    pub ping_interval: Duration,
    /// A socket that sends nothing (not even a pong) for this long is closed.
    pub idle_timeout: Duration,
    /// Time allowed for calls to the api (identify, authorize).
    pub upstream_timeout: Duration,
    /// How long a close frame may take to send before the socket is simply
    /// dropped: a client that stopped reading cannot hold its task longer.
    pub close_timeout: Duration,
    /// Allowed `Origin` values; empty means any origin.
    pub allowed_origins: Vec<String>,
    /// Registry liveness TTL; the gateway heartbeats at a third of it.
    pub registry_ttl: Duration,
    /// Frames a socket may send per [`ingress_window`](Self::ingress_window)
    /// before it is closed 4008 (pings and pongs do not count).
    pub ingress_events_per_window: u32,
    pub ingress_window: Duration,
    /// Sockets one client IP may have open at once.
    pub max_connections_per_ip: u32,
    /// Upgrades one client IP may start per minute (a bucket of as many).
    pub handshakes_per_ip_per_minute: u32,
    /// Proxies whose forwarding headers name the client IP.
    pub trusted_proxies: Vec<IpNet>,
    /// The listener's connection caps and header timer (`FILAMENT_HTTP_*`).
    pub public: PublicLimits,
    /// Presented on every call to the api, presence and voice
    /// (`FILAMENT_INTERNAL_TOKEN`).
    pub internal_token: ServiceToken,
}

impl Config {
    pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;

    /// Defaults for a gateway listening on `listen_addr` and talking to the
    /// api at `api_url`.
    pub fn new(listen_addr: SocketAddr, api_url: impl Into<String>) -> Self {
        Self {
            listen_addr,
            admin_addr: None,
            api_url: api_url.into(),
            api_stream_url: None,
            event_service_urls: Vec::new(),
            discovery_interval: Duration::from_secs(5),
            presence_url: None,
            voice_url: None,
            max_frame_bytes: Self::DEFAULT_MAX_FRAME_BYTES,
            outbound_queue: 256,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            upstream_timeout: Duration::from_secs(3),
            close_timeout: Duration::from_secs(1),
            allowed_origins: Vec::new(),
            registry_ttl: Duration::from_secs(30),
            ingress_events_per_window: 60,
            ingress_window: Duration::from_secs(10),
            max_connections_per_ip: 256,
            handshakes_per_ip_per_minute: 120,
            trusted_proxies: Vec::new(),
            public: PublicLimits::default(),
            internal_token: ServiceToken::generate(),
        }
    }

    /// Reads `FILAMENT_GATEWAY_*` variables; see README.md for the list.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let wired = Self {
            admin_addr: env.optional("FILAMENT_GATEWAY_ADMIN_ADDR")?,
            api_stream_url: env.optional("FILAMENT_GATEWAY_API_STREAM_URL")?,
            event_service_urls: env.list("FILAMENT_GATEWAY_EVENT_SERVICE_URLS")?,
            presence_url: env.optional("FILAMENT_GATEWAY_PRESENCE_GRPC_URL")?,
            voice_url: env.optional("FILAMENT_GATEWAY_VOICE_GRPC_URL")?,
            internal_token: ServiceToken::from_env(env)?,
            ..Self::new(
                env.or("FILAMENT_GATEWAY_LISTEN_ADDR", ([0, 0, 0, 0], 8081).into())?,
                env.required::<String>("FILAMENT_API_GRPC_URL")?,
            )
        };
        wired.with_env(env)
    }

    /// Applies the variables that tune the gateway rather than wire it up:
    /// frame and queue sizes, timers, limits and the listener's caps. The
    /// all-in-one reads them through here too, so both mean the same thing.
    pub fn with_env(self, env: &Env) -> Result<Self, ConfigError> {
        let defaults = self;
        let config = Self {
            max_frame_bytes: env
                .or("FILAMENT_GATEWAY_MAX_FRAME_BYTES", defaults.max_frame_bytes)?,
            outbound_queue: env.or("FILAMENT_GATEWAY_OUTBOUND_QUEUE", defaults.outbound_queue)?,
            ping_interval: env.secs_or(
                "FILAMENT_GATEWAY_PING_INTERVAL_SECS",
                defaults.ping_interval,
            )?,
            idle_timeout: env
                .secs_or("FILAMENT_GATEWAY_IDLE_TIMEOUT_SECS", defaults.idle_timeout)?,
            allowed_origins: env.list("FILAMENT_GATEWAY_ALLOWED_ORIGINS")?,
            registry_ttl: env.secs_or("FILAMENT_REGISTRY_TTL_SECS", defaults.registry_ttl)?,
            discovery_interval: env.secs_or(
                "FILAMENT_GATEWAY_DISCOVERY_INTERVAL_SECS",
                defaults.discovery_interval,
            )?,
            ingress_events_per_window: env.or(
                "FILAMENT_GATEWAY_INGRESS_EVENTS_PER_WINDOW",
                defaults.ingress_events_per_window,
            )?,
            ingress_window: env.secs_or(
                "FILAMENT_GATEWAY_INGRESS_WINDOW_SECS",
                defaults.ingress_window,
            )?,
            max_connections_per_ip: env.or(
                "FILAMENT_GATEWAY_MAX_CONNECTIONS_PER_IP",
                defaults.max_connections_per_ip,
            )?,
            handshakes_per_ip_per_minute: env.or(
                "FILAMENT_GATEWAY_HANDSHAKES_PER_IP_PER_MINUTE",
                defaults.handshakes_per_ip_per_minute,
            )?,
            trusted_proxies: env
                .list::<TrustedProxy>("FILAMENT_TRUSTED_PROXY_CIDRS")?
                .into_iter()
                .map(|proxy| proxy.0)
                .collect(),
            public: PublicLimits::from_env(env)?,
            ..defaults
        };
        config.validate()
    }

    /// Where the api's event streams are followed from.
    pub fn api_stream_url(&self) -> &str {
        self.api_stream_url.as_deref().unwrap_or(&self.api_url)
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
        if self.discovery_interval.is_zero() {
            return Err(invalid(
                "FILAMENT_GATEWAY_DISCOVERY_INTERVAL_SECS",
                "0".to_owned(),
                "must be at least 1",
            ));
        }
        if self.idle_timeout <= self.ping_interval {
            return Err(invalid(
                "FILAMENT_GATEWAY_IDLE_TIMEOUT_SECS",
                self.idle_timeout.as_secs().to_string(),
                "must be longer than the ping interval",
            ));
        }
        if !(1..=10_000).contains(&self.ingress_events_per_window) {
            return Err(invalid(
                "FILAMENT_GATEWAY_INGRESS_EVENTS_PER_WINDOW",
                self.ingress_events_per_window.to_string(),
                "must be between 1 and 10000",
            ));
        }
        if !(1..=3600).contains(&self.ingress_window.as_secs()) {
            return Err(invalid(
                "FILAMENT_GATEWAY_INGRESS_WINDOW_SECS",
                self.ingress_window.as_secs().to_string(),
                "must be between 1 and 3600",
            ));
        }
        if self.max_connections_per_ip == 0 {
            return Err(invalid(
                "FILAMENT_GATEWAY_MAX_CONNECTIONS_PER_IP",
                "0".to_owned(),
                "must be at least 1",
            ));
        }
        if !(1..=1_000_000).contains(&self.handshakes_per_ip_per_minute) {
            return Err(invalid(
                "FILAMENT_GATEWAY_HANDSHAKES_PER_IP_PER_MINUTE",
                self.handshakes_per_ip_per_minute.to_string(),
                "must be between 1 and 1000000",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(extra: &[(&'static str, &'static str)]) -> Env {
        let mut pairs = vec![
            ("FILAMENT_API_GRPC_URL", "http://api:50051"),
            (
                "FILAMENT_INTERNAL_TOKEN",
                "a-test-internal-service-token-of-32-bytes",
            ),
        ];
        pairs.extend_from_slice(extra);
        Env::from_pairs(pairs)
    }

    #[test]
    fn defaults_are_the_contract_limits() {
        let config = Config::from_env(&env(&[])).unwrap();
        assert_eq!(config.max_frame_bytes, 64 * 1024);
        assert_eq!(config.outbound_queue, 256);
        assert_eq!(config.ingress_events_per_window, 60);
        assert_eq!(config.ingress_window, Duration::from_secs(10));
        assert_eq!(config.ping_interval, Duration::from_secs(30));
        assert_eq!(config.admin_addr, None);
        assert!(config.trusted_proxies.is_empty());
    }

    #[test]
    fn reads_the_limits_and_the_admin_listener() {
        let config = Config::from_env(&env(&[
            ("FILAMENT_GATEWAY_ADMIN_ADDR", "127.0.0.1:9091"),
            ("FILAMENT_GATEWAY_INGRESS_EVENTS_PER_WINDOW", "5"),
            ("FILAMENT_GATEWAY_INGRESS_WINDOW_SECS", "2"),
            ("FILAMENT_GATEWAY_MAX_CONNECTIONS_PER_IP", "7"),
            ("FILAMENT_GATEWAY_HANDSHAKES_PER_IP_PER_MINUTE", "30"),
            ("FILAMENT_TRUSTED_PROXY_CIDRS", "10.0.0.0/8, fd00::/8"),
        ]))
        .unwrap();
        assert_eq!(config.admin_addr, Some(([127, 0, 0, 1], 9091).into()));
        assert_eq!(config.ingress_events_per_window, 5);
        assert_eq!(config.ingress_window, Duration::from_secs(2));
        assert_eq!(config.max_connections_per_ip, 7);
        assert_eq!(config.handshakes_per_ip_per_minute, 30);
        assert_eq!(config.trusted_proxies.len(), 2);
    }

    #[test]
    fn a_bad_limit_names_its_variable() {
        for (name, value) in [
            ("FILAMENT_GATEWAY_INGRESS_EVENTS_PER_WINDOW", "0"),
            ("FILAMENT_GATEWAY_INGRESS_WINDOW_SECS", "0"),
            ("FILAMENT_GATEWAY_MAX_CONNECTIONS_PER_IP", "0"),
            ("FILAMENT_GATEWAY_HANDSHAKES_PER_IP_PER_MINUTE", "0"),
            ("FILAMENT_GATEWAY_MAX_FRAME_BYTES", "100"),
            ("FILAMENT_TRUSTED_PROXY_CIDRS", "10.0.0.0/40"),
            ("FILAMENT_GATEWAY_ADMIN_ADDR", "nowhere"),
        ] {
            let err = Config::from_env(&env(&[(name, value)])).unwrap_err();
            assert!(err.to_string().starts_with(name), "{name}: {err}");
        }
    }

    #[test]
    fn the_service_token_is_required() {
        let env = Env::from_pairs([("FILAMENT_API_GRPC_URL", "http://api:50051")]);
        let err = Config::from_env(&env).unwrap_err();
        assert!(
            err.to_string().starts_with("FILAMENT_INTERNAL_TOKEN"),
            "{err}"
        );
    }
}
