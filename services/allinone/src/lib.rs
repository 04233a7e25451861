//! Every Filament service in one process: api, gateways, presence, voice and
//! search, each on its own loopback port and talking real gRPC, plus one
//! public origin that routes like the production ingress (`/api/*` to the
//! api with the prefix stripped, `/gateway/ws` to a gateway).
//!
//! The `filament` binary runs a [`Stack`] on embedded defaults (SQLite in a
//! data directory, the in-memory registry); the end-to-end tests run the
//! same [`Stack`] on port 0, on SQLite or Postgres, with the in-memory or
//! the Redis registry.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use filament_registry::{MemoryRegistry, RedisOptions, RedisRegistry, Registry, RegistryConfig};
use filament_runtime::Env;
use filament_runtime::public::PublicLimits;
use filament_runtime::service_auth::ServiceToken;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Which registry the stack's services share. Its `Debug` hides a
/// password in the Redis URL.
#[derive(Clone)]
pub enum RegistryChoice {
    /// One in-memory registry shared by every service of this process.
    Memory,
    /// Redis; each service gets its own connection, as separate processes
    /// would.
    Redis { url: String, key_prefix: String },
}

impl std::fmt::Debug for RegistryChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("Memory"),
            Self::Redis { url, key_prefix } => f
                .debug_struct("Redis")
                .field("url", &filament_runtime::secret::redact_url(url))
                .field("key_prefix", key_prefix)
                .finish(),
        }
    }
}

#[derive(Clone)]
pub struct StackConfig {
    /// The public origin (`/api/*` and `/gateway/ws`).
    pub public_addr: SocketAddr,
    /// Where each internal service listens; port 0 picks a free port.
    pub internal_ip: std::net::IpAddr,
    pub database_url: String,
    /// An already opened store to use instead of opening `database_url`
    /// (tests use it to put each run in its own Postgres schema).
    pub store: Option<Arc<dyn filament_api::store::Store>>,
    pub registry: RegistryChoice,
    pub registry_ttl: Duration,
    pub token_secret: Vec<u8>,
    /// How many gateway instances to run.
    pub gateways: usize,
    pub password_hashing: filament_api::PasswordHashing,
    /// Applied to every gateway's config.
    pub tune_gateway: fn(&mut filament_gateway::Config),
    /// Applied to the api's config.
    pub tune_api: fn(&mut filament_api::Config),
    /// Where attachment files go; `None` is a fresh temp directory that is
    /// removed with the stack.
    pub attachment_root: Option<PathBuf>,
    /// The LiveKit deployment voice signs tokens for; `None` is a dev key
    /// with a random secret per start (tokens no real LiveKit accepts).
    pub livekit: Option<filament_voice::LiveKit>,
    /// Applied to the voice service's config.
    pub tune_voice: fn(&mut filament_voice::Config),
    /// The variables that tune the api, the gateways and the public
    /// listeners, read the way `filament-api` and `filament-gateway` read
    /// them (before `tune_api` and `tune_gateway`). Empty: the defaults.
    pub env: Env,
    /// The service secret every internal gRPC call carries; `new` makes a
    /// random one, since this process starts every service itself.
    pub internal_token: ServiceToken,
}

impl StackConfig {
    /// Loopback everywhere, port 0 everywhere, one gateway.
    pub fn new(database_url: impl Into<String>, token_secret: Vec<u8>) -> Self {
        Self {
            public_addr: ([127, 0, 0, 1], 0).into(),
            internal_ip: [127, 0, 0, 1].into(),
            database_url: database_url.into(),
            store: None,
            registry: RegistryChoice::Memory,
            registry_ttl: RegistryConfig::default().ttl,
            token_secret,
            gateways: 1,
            password_hashing: filament_api::PasswordHashing::default(),
            tune_gateway: |_| {},
            tune_api: |_| {},
            attachment_root: None,
            livekit: None,
            tune_voice: |_| {},
            env: Env::default(),
            internal_token: ServiceToken::generate(),
        }
    }
}

/// A running stack.
pub struct Stack {
    pub public_addr: SocketAddr,
    pub api_http_addr: SocketAddr,
    pub api_grpc_addr: SocketAddr,
    /// One websocket address per gateway.
    pub gateway_addrs: Vec<SocketAddr>,
    pub presence_grpc_addr: SocketAddr,
    pub voice_grpc_addr: SocketAddr,
    pub search_grpc_addr: SocketAddr,
    /// The service secret the internal servers ask for (tests calling them
    /// directly present it).
    pub internal_token: ServiceToken,
    pub gateway_metrics: Vec<Arc<filament_gateway::Metrics>>,
    pub voice_metrics: Arc<filament_voice::VoiceMetrics>,
    /// `/metrics` of the api and of each gateway, on loopback admin
    /// listeners apart from the public origin.
    pub api_admin_addr: Option<SocketAddr>,
    pub gateway_admin_addrs: Vec<Option<SocketAddr>>,
    /// `/metrics` of presence, voice and search.
    pub presence_admin_addr: Option<SocketAddr>,
    pub voice_admin_addr: Option<SocketAddr>,
    pub search_admin_addr: Option<SocketAddr>,
    /// Where the api keeps attachment files.
    pub attachment_root: PathBuf,
    _attachment_dir: Option<RemoveOnDrop>,
    shutdown: CancellationToken,
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
}

impl Stack {
    /// Binds every listener, starts every service, and waits until the
    /// gateways have their event streams open.
    pub async fn start(config: StackConfig) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let ip = config.internal_ip;
        let memory: Arc<dyn Registry> = Arc::new(MemoryRegistry::new(registry_config(&config)?));
        let registry = || connect_registry(&config, &memory);

        let store = match &config.store {
            Some(store) => Arc::clone(store),
            None => filament_api::store::connect_with(
                &config.database_url,
                filament_api::store::DatabaseLimits::from_env(&config.env)?,
            )
            .await
            .context("opening the database")?,
        };
        // Voice and presence are bound before the api and the gateways,
        // which call them; presence tells voice who went offline.
        let livekit = match config.livekit.clone() {
            Some(livekit) => livekit,
            None => dev_livekit()?,
        };
        let mut voice_config = filament_voice::Config::new((ip, 0).into(), livekit);
        voice_config.admin_addr = Some((ip, 0).into());
        voice_config.internal_token = config.internal_token.clone();
        voice_config.redis = RedisOptions::from_env(&config.env)?;
        (config.tune_voice)(&mut voice_config);
        // Like presence: the roster goes where the registry goes.
        let voice_redis = match &config.registry {
            RegistryChoice::Redis { url, key_prefix } => {
                voice_config.roster_key_prefix = format!("{key_prefix}voice:");
                Some(url.as_str())
            }
            RegistryChoice::Memory => None,
        };
        let voice_store = filament_voice::open_store(&voice_config, voice_redis).await?;
        let voice = filament_voice::bind(voice_config, registry().await?, voice_store).await?;
        let voice_grpc_addr = voice.grpc_addr()?;
        let voice_admin_addr = voice.admin_addr();
        let voice_metrics = voice.metrics();
        tasks.spawn(named("voice", voice.run(shutdown.clone())));
        let mut presence_config = filament_presence::Config::new((ip, 0).into());
        presence_config.store.lease_ttl = config.registry_ttl;
        presence_config.store.redis = RedisOptions::from_env(&config.env)?;
        presence_config.voice_grpc_url = Some(format!("http://{voice_grpc_addr}"));
        presence_config.admin_addr = Some((ip, 0).into());
        presence_config.internal_token = config.internal_token.clone();
        let presence_redis = match &config.registry {
            RegistryChoice::Redis { url, key_prefix } => {
                presence_config.store.key_prefix = format!("{key_prefix}presence:");
                Some(url.as_str())
            }
            RegistryChoice::Memory => None,
        };
        let presence_store =
            filament_presence::open_store(&presence_config.store, presence_redis).await?;
        let presence =
            filament_presence::bind(presence_config, registry().await?, presence_store).await?;
        let presence_grpc_addr = presence.grpc_addr()?;
        let presence_admin_addr = presence.admin_addr();
        tasks.spawn(named("presence", presence.run(shutdown.clone())));

        // Search is bound first so the api knows its address; it follows the
        // api's message feed once the api is bound (`with_feed_url` below).
        let mut search_config = filament_search::Config::new((ip, 0).into(), String::new());
        search_config.admin_addr = Some((ip, 0).into());
        search_config.internal_token = config.internal_token.clone();
        let search = filament_search::bind(search_config).await?;
        let search_grpc_addr = search.grpc_addr()?;
        let search_admin_addr = search.admin_addr();
        let mut api_config = filament_api::Config::new(
            (ip, 0).into(),
            (ip, 0).into(),
            config.database_url.clone(),
            config.token_secret.clone(),
        );
        api_config.password_hashing = config.password_hashing;
        let (attachment_root, attachment_dir) = attachment_root(&config);
        api_config.attachment_root.clone_from(&attachment_root);
        api_config.admin_addr = Some((ip, 0).into());
        api_config.internal_token = config.internal_token.clone();
        api_config.search_url = Some(format!("http://{search_grpc_addr}"));
        api_config.voice_url = Some(format!("http://{voice_grpc_addr}"));
        api_config.apply_env(&config.env)?;
        (config.tune_api)(&mut api_config);
        let api = filament_api::bind(api_config, store, registry().await?).await?;
        let api_admin_addr = api.admin_addr();
        let api_http_addr = api.http_addr()?;
        let api_grpc_addr = api.grpc_addr()?;
        let api_router = api.router();
        tasks.spawn(named("api", api.run(shutdown.clone())));
        let search = search.with_feed_url(format!("http://{api_grpc_addr}"));
        tasks.spawn(named("search", search.run(shutdown.clone())));

        let mut gateway_addrs = Vec::new();
        let mut gateway_metrics = Vec::new();
        let mut gateway_admin_addrs = Vec::new();
        let mut readiness = Vec::new();
        let mut public_gateway = None;
        let mut origin_metrics = None;
        for _ in 0..config.gateways.max(1) {
            let mut gateway_config =
                filament_gateway::Config::new((ip, 0).into(), format!("http://{api_grpc_addr}"));
            gateway_config.registry_ttl = config.registry_ttl;
            gateway_config.event_service_urls = vec![
                format!("http://{presence_grpc_addr}"),
                format!("http://{voice_grpc_addr}"),
            ];
            gateway_config.admin_addr = Some((ip, 0).into());
            gateway_config.internal_token = config.internal_token.clone();
            gateway_config.presence_url = Some(format!("http://{presence_grpc_addr}"));
            gateway_config.voice_url = Some(format!("http://{voice_grpc_addr}"));
            let mut gateway_config = gateway_config.with_env(&config.env)?;
            (config.tune_gateway)(&mut gateway_config);
            let gateway = filament_gateway::bind(gateway_config, registry().await?).await?;
            gateway_admin_addrs.push(gateway.admin_addr());
            gateway_addrs.push(gateway.local_addr()?);
            gateway_metrics.push(gateway.metrics());
            readiness.push(gateway.readiness());
            public_gateway.get_or_insert_with(|| gateway.router());
            // The origin counts into the first gateway's listener series.
            origin_metrics.get_or_insert_with(|| gateway.listener_metrics());
            tasks.spawn(named("gateway", gateway.run(shutdown.clone())));
        }

        // The ingress: the api under /api (prefix stripped), the first
        // gateway at /gateway/ws.
        let origin = Router::new()
            .nest_service("/api", api_router)
            .merge(public_gateway.unwrap_or_default());
        let public = TcpListener::bind(config.public_addr).await?;
        let public_addr = public.local_addr()?;
        let origin_serve = filament_runtime::public::serve(
            public,
            origin,
            PublicLimits::from_env(&config.env)?,
            origin_metrics.unwrap_or_default(),
            shutdown.clone(),
        );
        tasks.spawn(named("origin", async move {
            origin_serve.await.map_err(Into::into)
        }));

        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !readiness.iter().all(filament_gateway::Readiness::is_ready) {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "gateways did not connect to the api within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        Ok(Self {
            public_addr,
            api_http_addr,
            api_grpc_addr,
            gateway_addrs,
            presence_grpc_addr,
            voice_grpc_addr,
            search_grpc_addr,
            internal_token: config.internal_token.clone(),
            gateway_metrics,
            voice_metrics,
            api_admin_addr,
            gateway_admin_addrs,
            presence_admin_addr,
            voice_admin_addr,
            search_admin_addr,
            attachment_root,
            _attachment_dir: attachment_dir,
            shutdown,
            tasks,
        })
    }

    /// A token that stops the stack when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until every service stopped (after the shutdown token was
    /// cancelled, or because one failed, which stops the rest).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        while let Some(joined) = self.tasks.join_next().await {
            let (name, result) = joined.context("a service task panicked")?;
            if let Err(err) = result {
                tracing::error!(service = name, error = %err, "service failed; stopping the stack");
                self.shutdown.cancel();
                first_error.get_or_insert(err.context(name));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Stops every service and waits for them to drain.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

/// A LiveKit key pair for development: a fixed key and a random secret, so
/// the all-in-one runs without LiveKit configured.
fn dev_livekit() -> anyhow::Result<filament_voice::LiveKit> {
    tracing::warn!("FILAMENT_LIVEKIT_API_KEY/_SECRET unset: voice tokens use a random dev secret");
    let secret = format!("{}{}", ulid::Ulid::generate(), ulid::Ulid::generate());
    Ok(filament_voice::LiveKit::new(
        "filament-dev",
        secret,
        "ws://127.0.0.1:7880",
    )?)
}

/// The configured attachment root, or a fresh temp directory and the guard
/// that removes it.
fn attachment_root(config: &StackConfig) -> (PathBuf, Option<RemoveOnDrop>) {
    match &config.attachment_root {
        Some(root) => (root.clone(), None),
        None => {
            let dir = std::env::temp_dir().join(format!(
                "filament-attachments-{}",
                ulid::Ulid::generate().to_string().to_lowercase()
            ));
            (dir.clone(), Some(RemoveOnDrop(dir)))
        }
    }
}

/// A directory removed, with its contents, on drop.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        // It may never have been created (no upload); nothing to report.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The registry as `filament-*` processes configure it, but for the TTL
/// and the prefix, which the stack's config chooses.
fn registry_config(config: &StackConfig) -> anyhow::Result<RegistryConfig> {
    let key_prefix = match &config.registry {
        RegistryChoice::Redis { key_prefix, .. } => key_prefix.clone(),
        RegistryChoice::Memory => RegistryConfig::DEFAULT_KEY_PREFIX.to_owned(),
    };
    Ok(RegistryConfig {
        ttl: config.registry_ttl,
        key_prefix,
        ..RegistryConfig::from_env(&config.env)?
    })
}

async fn connect_registry(
    config: &StackConfig,
    memory: &Arc<dyn Registry>,
) -> anyhow::Result<Arc<dyn Registry>> {
    Ok(match &config.registry {
        RegistryChoice::Memory => Arc::clone(memory),
        RegistryChoice::Redis { url, .. } => {
            Arc::new(RedisRegistry::connect(url, registry_config(config)?).await?)
        }
    })
}

async fn named<F>(name: &'static str, future: F) -> (&'static str, anyhow::Result<()>)
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    (name, future.await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_choice_prints_without_its_redis_password() {
        let choice = RegistryChoice::Redis {
            url: "redis://default:s3cretpw@redis:6379/0".to_owned(),
            key_prefix: "filament:".to_owned(),
        };
        let printed = format!("{choice:?}");
        assert!(!printed.contains("s3cretpw"), "{printed}");
        assert!(
            printed.contains("redis://default:<redacted>@redis:6379/0"),
            "{printed}"
        );
    }
}
