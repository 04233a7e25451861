//! How a service that publishes on its own event stream (presence, voice)
//! serves gRPC: its domain service beside the stream, on the server every
//! Filament process runs ([`filament_runtime::grpc::server`]), with a health
//! service that is SERVING once every live gateway streams from this
//! replica ([`Coverage`]) and its `/metrics` on the admin listener.
//!
//! At shutdown the streams end cleanly after the events already queued,
//! and only then does the server stop, so a gateway sees the end of a
//! stream rather than a broken one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use filament_runtime::admin::AdminListener;
use filament_runtime::grpc::{GrpcServerMetrics, MethodsError, ReflectionError};
use filament_runtime::service_auth::ServiceToken;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http::{Request, Response};
use tonic::server::NamedService;

use crate::{COVERAGE_INTERVAL, Coverage, Fanout};

/// Why a producer's server could not start, or stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Methods(#[from] MethodsError),
    #[error(transparent)]
    Reflection(#[from] ReflectionError),
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
}

/// What a producer serves besides its domain service; see the module docs.
pub struct ProducerServer {
    /// Where gateways and callers connect.
    pub listener: TcpListener,
    /// The service's event stream.
    pub fanout: Fanout,
    /// Asked of every caller.
    pub internal_token: ServiceToken,
    /// Where `/metrics` is served, if anywhere.
    pub admin: Option<AdminListener>,
    /// The service's background tasks (its sweeper or pruner): stopped with
    /// the admin listener and the coverage check when serving ends.
    pub background: CancellationToken,
}

impl ProducerServer {
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where `/metrics` is served, if anywhere.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves `service` and the event stream until `shutdown` (or until the
    /// server fails), then stops the background, ends the streams and the
    /// server. `register` adds the service's own series to `/metrics`,
    /// before the server's call series. Health reports readiness under the
    /// service's own name (`S::NAME`).
    pub async fn serve<S>(
        self,
        service: S,
        register: impl FnOnce(&mut Registry),
        shutdown: CancellationToken,
    ) -> Result<(), ServeError>
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let Self {
            listener,
            fanout,
            internal_token,
            admin,
            background,
        } = self;
        // Labelled by method only for the methods served here.
        let grpc_metrics = GrpcServerMetrics::serving(
            &[filament_proto::FILE_DESCRIPTOR_SET],
            &[
                S::NAME,
                filament_proto::v1::event_stream_server::SERVICE_NAME,
            ],
        )?;
        if let Some(admin) = admin {
            let mut registry = Registry::default();
            register(&mut registry);
            grpc_metrics.register(&mut registry);
            tokio::spawn(admin.serve(Arc::new(registry), background.clone()));
        }

        let grpc_stop = CancellationToken::new();
        let health = Coverage::track(fanout.clone(), COVERAGE_INTERVAL, background.clone())
            .grpc_health(S::NAME, shutdown.clone())
            .await;
        let server = filament_runtime::grpc::server(
            &grpc_metrics,
            internal_token,
            health,
            &[filament_proto::FILE_DESCRIPTOR_SET],
        )?
        .add_service(service)
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
        Ok(())
    }
}
