//! A client channel from `grpc_client::connect` notices a peer that stopped
//! answering without closing the connection (a node lost, a partition):
//! its HTTP/2 keepalive pings go unanswered and the open stream fails
//! within `KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT`, instead of waiting
//! forever. Real sockets and real time (about 15 s), so its own binary.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use filament_runtime::grpc_client::{
    self, GrpcClientMetrics, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Copies `from` to `to` until `silent` is set; from then on it reads and
/// drops everything, keeping both sockets open: a half-open peer.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
) {
    let mut buffer = [0_u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                // Hold the connection open as a dead peer would.
                std::future::pending::<()>().await;
                return;
            }
            Ok(read) => read,
        };
        if !silent.load(Ordering::SeqCst) && to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// A TCP proxy to `upstream` that goes silent when told to.
async fn silenceable_proxy(upstream: std::net::SocketAddr, silent: Arc<AtomicBool>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(upstream).await.expect("upstream");
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pipe(client_read, server_write, Arc::clone(&silent)));
            tokio::spawn(pipe(server_read, client_write, Arc::clone(&silent)));
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_stream_to_a_peer_gone_silent_fails_within_the_keepalive_bound() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server = listener.local_addr().expect("addr");
    let health =
        filament_runtime::probes::grpc_health("filament.test", || true, Default::default()).await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(filament_runtime::net::grpc_incoming(listener)),
    );
    let silent = Arc::new(AtomicBool::new(false));
    let url = silenceable_proxy(server, Arc::clone(&silent)).await;

    let metrics = GrpcClientMetrics::new(filament_runtime::service_auth::ServiceToken::generate());
    // No call timeout, as for the event streams: only keepalive can end it.
    let channel = grpc_client::connect(&url, Duration::from_secs(1), None, &metrics).expect("url");
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest::default())
        .await
        .expect("watch opens")
        .into_inner();
    watch
        .message()
        .await
        .expect("first status")
        .expect("a status");

    silent.store(true, Ordering::SeqCst);
    let silenced = Instant::now();
    let bound = KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT + Duration::from_secs(3);
    let ended = tokio::time::timeout(bound, watch.message())
        .await
        .expect("the stream fails within the keepalive bound");
    assert!(ended.is_err(), "{ended:?}");
    assert!(silenced.elapsed() < bound);

    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(
        text.contains(
            "filament_grpc_client_duration_seconds_count{method=\"/grpc.health.v1.Health/Watch\""
        ),
        "{text}"
    );
}
