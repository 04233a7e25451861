//! The Filament search service: a tantivy index of messages, and the
//! `filament.v1.Search` gRPC service that queries it.
//!
//! The index is fed only by the api's message change log, followed over
//! gRPC (`MessageFeed.Follow`) from the position recorded in the index's
//! last commit: it never reads the database itself. Index writes and
//! searches run on the blocking pool, never on the reactor. See
//! docs/adr/0002-search-feed.md.

mod error;
mod grpc;
mod index;
mod indexer;
pub mod metrics;
pub mod query;
mod service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use filament_proto::v1::message_feed_client::MessageFeedClient;
use filament_runtime::admin::AdminListener;
use filament_runtime::{ConfigError, Env};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use error::SearchError;
pub use index::{
    DocChange, Hit, IndexError, IndexLocation, IndexedDoc, MessageIndex, SearchRequest,
    WriterConfig,
};
pub use indexer::{IndexerConfig, IndexerStats, Reconciled};
pub use service::{Engine, QueryRequest, SearchService};

use filament_runtime::service_auth::ServiceToken;

/// The gRPC service name this process reports as serving.
pub const SERVICE_NAME: &str = "filament.v1.Search";
/// How long connecting to the api's feed may take; the indexer retries.
const FEED_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct Config {
    pub grpc_addr: SocketAddr,
    /// The api's gRPC address, whose `MessageFeed` feeds the index.
    pub feed_url: String,
    /// Where the index lives; `Ram` keeps it in memory and rebuilds it from
    /// the log at every start.
    pub index: IndexLocation,
    pub writer: WriterConfig,
    pub indexer: IndexerConfig,
    /// The query budget (PROTOCOL.md §4.6: 200 ms).
    pub query_timeout: Duration,
    /// Searches running at once; more wait (within their budget).
    pub max_concurrent_queries: usize,
    /// Where `/metrics` is served; unset: nowhere.
    pub admin_addr: Option<SocketAddr>,
    /// Presented to the api's feed, and asked of every caller.
    pub internal_token: ServiceToken,
}

impl Config {
    /// An in-memory index fed from `feed_url`, with the limits of PROTOCOL.md §4.6.
    pub fn new(grpc_addr: SocketAddr, feed_url: impl Into<String>) -> Self {
        Self {
            grpc_addr,
            feed_url: feed_url.into(),
            index: IndexLocation::Ram,
            writer: WriterConfig::default(),
            indexer: IndexerConfig {
                commit_interval: Duration::from_millis(100),
                commit_spacing: Duration::from_secs(1),
            },
            query_timeout: Duration::from_millis(200),
            max_concurrent_queries: 8,
            admin_addr: None,
            internal_token: ServiceToken::generate(),
        }
    }

    /// Reads the service's variables; see README.md for the list.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let mut config = Self::new(
            env.or("FILAMENT_SEARCH_GRPC_ADDR", ([0, 0, 0, 0], 50054).into())?,
            env.required::<String>("FILAMENT_API_GRPC_URL")?,
        );
        if let Some(dir) = env.optional::<PathBuf>("FILAMENT_SEARCH_INDEX_DIR")? {
            config.index = IndexLocation::Dir(dir);
        }
        config.indexer.commit_interval = env.millis_or(
            "FILAMENT_SEARCH_COMMIT_INTERVAL_MS",
            config.indexer.commit_interval,
        )?;
        if config.indexer.commit_interval.is_zero() {
            return Err(ConfigError::Invalid {
                name: "FILAMENT_SEARCH_COMMIT_INTERVAL_MS",
                value: "0".to_owned(),
                reason: "must be at least 1".to_owned(),
            });
        }
        config.indexer.commit_spacing = env.millis_or(
            "FILAMENT_SEARCH_COMMIT_SPACING_MS",
            config.indexer.commit_spacing,
        )?;
        let memory_mb: usize = env.or("FILAMENT_SEARCH_WRITER_MEMORY_MB", 64)?;
        config.writer.threads = env.or("FILAMENT_SEARCH_WRITER_THREADS", 1)?;
        if memory_mb < 16 * config.writer.threads.max(1) {
            return Err(ConfigError::Invalid {
                name: "FILAMENT_SEARCH_WRITER_MEMORY_MB",
                value: memory_mb.to_string(),
                reason: "tantivy needs at least 16 MB per writer thread".to_owned(),
            });
        }
        config.writer.memory_bytes = memory_mb * 1024 * 1024;
        config.admin_addr = env.optional("FILAMENT_SEARCH_ADMIN_ADDR")?;
        config.internal_token = ServiceToken::from_env(env)?;
        Ok(config)
    }
}

/// The service with its listener bound and its index open.
pub struct BoundSearch {
    listener: TcpListener,
    config: Config,
    index: MessageIndex,
    engine: Engine,
    commands: mpsc::Receiver<indexer::Command>,
    stats: Arc<IndexerStats>,
    admin: Option<AdminListener>,
}

/// Binds the listener and opens (or creates) the index.
pub async fn bind(config: Config) -> anyhow::Result<BoundSearch> {
    let listener = TcpListener::bind(config.grpc_addr).await?;
    let admin = match config.admin_addr {
        Some(addr) => Some(
            AdminListener::bind(addr)
                .await
                .context("FILAMENT_SEARCH_ADMIN_ADDR")?,
        ),
        None => None,
    };
    let (location, writer) = (config.index.clone(), config.writer);
    let index =
        tokio::task::spawn_blocking(move || MessageIndex::open(&location, writer)).await??;
    let (commands_tx, commands) = mpsc::channel(16);
    let stats = Arc::new(IndexerStats::default());
    let engine = Engine::new(
        index.clone(),
        commands_tx,
        Arc::clone(&stats),
        config.max_concurrent_queries,
        config.query_timeout,
    );
    Ok(BoundSearch {
        listener,
        config,
        index,
        engine,
        commands,
        stats,
        admin,
    })
}

impl BoundSearch {
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where `/metrics` is served, if anywhere.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The service itself, to call without gRPC (tests, the all-in-one).
    pub fn engine(&self) -> Engine {
        self.engine.clone()
    }

    /// Follows the feed at `url` instead of the configured one (the
    /// all-in-one binds search before it knows the api's address).
    #[must_use]
    pub fn with_feed_url(mut self, url: impl Into<String>) -> Self {
        self.config.feed_url = url.into();
        self
    }

    /// Indexes and serves until `shutdown`; then stops serving, and commits
    /// what was indexed so that the next start resumes from there.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let internal_token = self.config.internal_token.clone();
        let grpc_clients =
            filament_runtime::grpc_client::GrpcClientMetrics::new(internal_token.clone());
        // The feed is one long stream: no call timeout.
        let feed = MessageFeedClient::new(filament_runtime::grpc_client::connect(
            &self.config.feed_url,
            FEED_CONNECT_TIMEOUT,
            None,
            &grpc_clients,
        )?)
        // A batch of full messages can exceed the 4 MiB default.
        .max_decoding_message_size(64 * 1024 * 1024);
        // Labelled by method only for the methods served here.
        let grpc_metrics = filament_runtime::grpc::GrpcServerMetrics::serving(
            &[filament_proto::FILE_DESCRIPTOR_SET],
            &[filament_proto::v1::search_server::SERVICE_NAME],
        )?;
        if let Some(admin) = self.admin {
            let mut registry = prometheus_client::registry::Registry::default();
            self.stats.metrics().register(&mut registry);
            grpc_metrics.register(&mut registry);
            grpc_clients.register(&mut registry);
            tokio::spawn(admin.serve(Arc::new(registry), shutdown.clone()));
        }
        let indexer = indexer::Indexer::new(
            self.index,
            feed,
            self.commands,
            self.config.indexer,
            self.stats,
        )?;
        let indexing = tokio::spawn(indexer.run(shutdown.clone()));
        tracing::info!(grpc = %self.listener.local_addr()?, "search listening");
        let health =
            filament_runtime::probes::grpc_health(SERVICE_NAME, || true, shutdown.clone()).await;
        let served = filament_runtime::grpc::server(
            &grpc_metrics,
            internal_token,
            health,
            &[filament_proto::FILE_DESCRIPTOR_SET],
        )?
        .add_service(grpc::SearchGrpc::server(Arc::new(self.engine)))
        .serve_with_incoming_shutdown(
            filament_runtime::net::grpc_incoming(self.listener),
            shutdown.cancelled_owned(),
        )
        .await;
        indexing.await?;
        served?;
        tracing::info!("search stopped");
        Ok(())
    }
}
