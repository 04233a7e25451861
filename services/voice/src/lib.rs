//! The Filament voice service. Voice: participants, streams and LiveKit join tokens. Today it serves `grpc.health.v1`; its state and events arrive with their issue.

use std::net::SocketAddr;

use filament_runtime::{ConfigError, Env};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

/// The gRPC service name this process reports as serving.
pub const SERVICE_NAME: &str = "filament.v1.Voice";

#[derive(Debug, Clone)]
pub struct Config {
    pub grpc_addr: SocketAddr,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            grpc_addr: env.or("FILAMENT_VOICE_GRPC_ADDR", ([0, 0, 0, 0], 50053).into())?,
        })
    }
}

/// The service with its listener bound.
pub struct BoundVoice {
    listener: TcpListener,
}

pub async fn bind(config: Config) -> anyhow::Result<BoundVoice> {
    Ok(BoundVoice {
        listener: TcpListener::bind(config.grpc_addr).await?,
    })
}

impl BoundVoice {
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(grpc = %self.listener.local_addr()?, "voice listening");
        tonic::transport::Server::builder()
            .add_service(filament_runtime::probes::grpc_health(SERVICE_NAME).await)
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(self.listener),
                shutdown.cancelled_owned(),
            )
            .await?;
        tracing::info!("voice stopped");
        Ok(())
    }
}
