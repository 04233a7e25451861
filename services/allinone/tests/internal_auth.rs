//! Every internal gRPC server refuses a caller without the service token
//! (`FILAMENT_INTERNAL_TOKEN`), even one that can reach its port: a raw
//! tonic client, on a plain channel with no metadata, is answered
//! `UNAUTHENTICATED` by the api (`EdgeAccess`, `MessageFeed`), presence,
//! voice and search, and so is one with a wrong token. Health still answers
//! it, since the kubelet's probes carry no metadata.

mod support;

use std::future::Future;
use std::net::SocketAddr;

use filament_proto::v1::edge_access_client::EdgeAccessClient;
use filament_proto::v1::message_feed_client::MessageFeedClient;
use filament_proto::v1::presence_client::PresenceClient;
use filament_proto::v1::search_client::SearchClient;
use filament_proto::v1::voice_client::VoiceClient;
use support::{Backends, TestStack};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A token of the right shape that is not the stack's.
const WRONG_TOKEN: &str = "not-the-stacks-internal-token-but-long-enough";

/// A plain channel: no service token, exactly what any pod could open.
fn plain(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect_lazy()
}

/// `message`, with `token` under the service-token key when given.
fn request<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert(
            filament_runtime::service_auth::METADATA_KEY,
            token.parse().expect("ascii"),
        );
    }
    request
}

async fn assert_refused<R>(what: &str, call: impl Future<Output = Result<R, tonic::Status>>) {
    match call.await {
        Ok(_) => panic!("{what}: answered a caller without the service token"),
        Err(status) => {
            assert_eq!(
                status.code(),
                tonic::Code::Unauthenticated,
                "{what}: {status}"
            );
            assert_eq!(
                status.message(),
                filament_runtime::service_auth::REFUSED,
                "{what}: refused by the layer, not the service"
            );
        }
    }
}

/// Calls one RPC of every internal server with `token` (or none) and
/// expects each to be refused.
async fn every_server_refuses(t: &TestStack, token: Option<&str>) {
    let stack = &t.stack;
    let api = plain(stack.api_grpc_addr);
    assert_refused(
        "EdgeAccess.Identify",
        EdgeAccessClient::new(api.clone()).identify(request(Default::default(), token)),
    )
    .await;
    assert_refused(
        "MessageFeed.GuildMessages",
        MessageFeedClient::new(api).guild_messages(request(Default::default(), token)),
    )
    .await;
    assert_refused(
        "Presence.Snapshot",
        PresenceClient::new(plain(stack.presence_grpc_addr))
            .snapshot(request(Default::default(), token)),
    )
    .await;
    assert_refused(
        "Voice.Snapshot",
        VoiceClient::new(plain(stack.voice_grpc_addr)).snapshot(request(Default::default(), token)),
    )
    .await;
    assert_refused(
        "Search.Query",
        SearchClient::new(plain(stack.search_grpc_addr)).query(request(Default::default(), token)),
    )
    .await;
}

#[tokio::test]
async fn internal_servers_refuse_callers_without_the_service_token() {
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    every_server_refuses(&t, None).await;
    every_server_refuses(&t, Some(WRONG_TOKEN)).await;
}

#[tokio::test]
async fn health_answers_without_a_token() {
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let stack = &t.stack;
    for addr in [
        stack.api_grpc_addr,
        stack.presence_grpc_addr,
        stack.voice_grpc_addr,
        stack.search_grpc_addr,
    ] {
        HealthClient::new(plain(addr))
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap_or_else(|status| panic!("health of {addr}: {status}"));
    }
}

#[tokio::test]
async fn the_right_token_is_let_through() {
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let clients =
        filament_runtime::grpc_client::GrpcClientMetrics::new(t.stack.internal_token.clone());
    let channel = filament_runtime::grpc_client::connect(
        &format!("http://{}", t.stack.api_grpc_addr),
        support::DEADLINE,
        Some(support::DEADLINE),
        &clients,
    )
    .expect("url");
    // An empty access token is no user's: the api itself refuses it (also
    // `UNAUTHENTICATED`, but its own answer), the layer let the call in.
    let answer = EdgeAccessClient::new(channel)
        .identify(tonic::Request::new(Default::default()))
        .await;
    if let Err(status) = answer {
        assert_ne!(
            status.message(),
            filament_runtime::service_auth::REFUSED,
            "{status}"
        );
    }
}
