//! The typed clients of Filament's gRPC services, for the processes that
//! call them: the gateway reports its sockets to presence and asks voice
//! for rosters, the api takes people out of voice, presence tells voice
//! who went offline.
//!
//! A client lives here, over `filament-proto` and `filament-runtime` only,
//! so that a caller links the generated client and not the service's
//! server, store or dependencies (a gateway that calls presence does not
//! compile presence's Redis store). Every client connects through
//! [`filament_runtime::grpc_client::connect`]: lazily, with keepalive, its
//! calls timed into the process's `filament_grpc_client_duration_seconds`
//! and carrying the service token and the caller's trace.

mod error;
pub mod presence;
pub mod voice;

pub use error::ClientError;
pub use presence::{Disconnected, LeaseStatus, PresenceClient};
pub use voice::VoiceClient;

use std::time::Duration;

use filament_runtime::grpc_client::{GrpcChannel, GrpcClientMetrics};

/// The channel of a client of `service` at `url`: the connect and each
/// call fail after `timeout`.
fn connect(
    service: &'static str,
    url: &str,
    timeout: Duration,
    grpc_clients: &GrpcClientMetrics,
) -> Result<GrpcChannel, ClientError> {
    filament_runtime::grpc_client::connect(url, timeout, Some(timeout), grpc_clients)
        .map_err(|source| ClientError::InvalidUrl { service, source })
}

#[cfg(test)]
mod tests {
    use filament_runtime::service_auth::ServiceToken;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn metrics() -> GrpcClientMetrics {
        GrpcClientMetrics::new(ServiceToken::generate())
    }

    #[test]
    fn a_malformed_url_is_refused_naming_the_service() {
        let err = VoiceClient::new("not a url", TIMEOUT, &metrics())
            .err()
            .expect("refused");
        assert!(err.to_string().starts_with("invalid voice url: "), "{err}");
        assert!(err.status().is_none());
    }

    #[tokio::test]
    async fn a_failed_call_carries_the_status_and_names_the_service() {
        // A port that was free a moment ago: nothing listens on it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port");
        let presence =
            PresenceClient::new(&format!("http://{addr}"), "gateway", TIMEOUT, &metrics())
                .expect("a url");
        let err = presence
            .snapshot("guild")
            .await
            .expect_err("nobody listens");
        assert_eq!(
            err.status().map(tonic::Status::code),
            Some(tonic::Code::Unavailable),
            "{err}"
        );
        assert!(
            err.to_string().starts_with("presence call failed: "),
            "{err}"
        );
    }
}
