//! The typed clients of Filament's gRPC services, for the processes that
//! call them: the gateway reports its sockets to presence and asks voice
//! for rosters, the api asks search for hits and voice for tokens and takes
//! people out of voice, presence tells voice who went offline.
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
pub mod search;
pub mod voice;

pub use error::ClientError;
pub use presence::{Disconnected, LeaseStatus, PresenceClient};
pub use search::SearchClient;
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

    #[test]
    fn a_malformed_search_url_is_refused_naming_the_service() {
        let err = SearchClient::new("not a url", TIMEOUT, &metrics())
            .err()
            .expect("refused");
        assert!(err.to_string().starts_with("invalid search url: "), "{err}");
        assert!(err.status().is_none());
    }

    #[tokio::test]
    async fn a_search_call_to_nobody_is_unavailable_naming_the_service() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port");
        let search =
            SearchClient::new(&format!("http://{addr}"), TIMEOUT, &metrics()).expect("a url");
        let err = search
            .rebuild("guild", TIMEOUT)
            .await
            .expect_err("nobody listens");
        assert_eq!(
            err.status().map(tonic::Status::code),
            Some(tonic::Code::Unavailable),
            "{err}"
        );
        assert!(err.to_string().starts_with("search call failed: "), "{err}");
    }

    #[tokio::test]
    async fn a_search_call_gives_up_at_its_deadline() {
        // Accepts connections (the kernel's backlog) but never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let addr = silent.local_addr().expect("bound");
        let search =
            SearchClient::new(&format!("http://{addr}"), TIMEOUT, &metrics()).expect("a url");
        let started = std::time::Instant::now();
        let err = search
            .query(
                filament_proto::v1::QueryRequest::default(),
                Duration::from_millis(100),
            )
            .await
            .expect_err("nobody answers");
        assert_eq!(
            err.status().map(tonic::Status::code),
            Some(tonic::Code::DeadlineExceeded),
            "{err}"
        );
        assert!(started.elapsed() < TIMEOUT, "stopped at the deadline");
    }
}
