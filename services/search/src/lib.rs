//! The Filament search service. Search: a tantivy index of messages, fed by the event stream. Today it serves `grpc.health.v1`; indexing and queries arrive with their issue.

use std::net::SocketAddr;

use filament_runtime::{ConfigError, Env};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

/// The gRPC service name this process reports as serving.
pub const SERVICE_NAME: &str = "filament.v1.Search";

#[derive(Debug, Clone)]
pub struct Config {
    pub grpc_addr: SocketAddr,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            grpc_addr: env.or("FILAMENT_SEARCH_GRPC_ADDR", ([0, 0, 0, 0], 50054).into())?,
        })
    }
}

/// The service with its listener bound.
pub struct BoundSearch {
    listener: TcpListener,
}

pub async fn bind(config: Config) -> anyhow::Result<BoundSearch> {
    Ok(BoundSearch {
        listener: TcpListener::bind(config.grpc_addr).await?,
    })
}

impl BoundSearch {
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(grpc = %self.listener.local_addr()?, "search listening");
        tonic::transport::Server::builder()
            .add_service(filament_runtime::probes::grpc_health(SERVICE_NAME).await)
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(self.listener),
                shutdown.cancelled_owned(),
            )
            .await?;
        tracing::info!("search stopped");
        Ok(())
    }
}
