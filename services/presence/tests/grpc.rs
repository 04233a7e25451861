//! The presence service over real gRPC on port 0: a gateway's calls through
//! [`PresenceClient`], and the `presence_update` events a gateway receives
//! on the presence event stream. Each test starts its own service with the
//! memory store and a one-second lease TTL.

#![allow(clippy::unwrap_used, reason = "a failed call is a failed test")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use filament_clients::{ClientError, LeaseStatus, PresenceClient};
use filament_presence::store::PresenceStoreConfig;
use filament_proto::v1::event_stream_client::EventStreamClient;
use filament_proto::v1::presence_client::PresenceClient as RawClient;
use filament_proto::v1::{
    GatewayMessage, Hello, PresenceConnectedRequest, PresenceConnection, PresenceStatus,
    PresenceUpdate, ServiceMessage, event, gateway_message, service_message,
};
use filament_registry::{GatewayId, MemoryRegistry, Registry, RegistryConfig};
use filament_runtime::grpc_client::{GrpcChannel, GrpcClientMetrics};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;

const TTL: Duration = Duration::from_secs(1);
const DEADLINE: Duration = Duration::from_secs(10);

struct Service {
    addr: SocketAddr,
    registry: Arc<MemoryRegistry>,
    shutdown: CancellationToken,
    /// What a caller presents; the server refuses calls without it.
    clients: GrpcClientMetrics,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start() -> Service {
    // The fake gateways never heartbeat the registry: its TTL must outlast
    // every test. Presence leases are what these tests are about.
    let registry = Arc::new(MemoryRegistry::new(RegistryConfig::default()));
    let mut config = filament_presence::Config::new(([127, 0, 0, 1], 0).into());
    config.store = PresenceStoreConfig {
        lease_ttl: TTL,
        ..PresenceStoreConfig::default()
    };
    let clients = GrpcClientMetrics::new(config.internal_token.clone());
    let store = filament_presence::open_store(&config.store, None)
        .await
        .unwrap();
    let bound = filament_presence::bind(config, registry.clone(), store)
        .await
        .unwrap();
    let addr = bound.grpc_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(bound.run(shutdown.clone()));
    Service {
        addr,
        registry,
        shutdown,
        clients,
    }
}

impl Service {
    fn channel(&self) -> GrpcChannel {
        filament_runtime::grpc_client::connect(
            &format!("http://{}", self.addr),
            Duration::from_secs(3),
            None,
            &self.clients,
        )
        .unwrap()
    }
}

fn ulid() -> String {
    ulid::Ulid::generate().to_string()
}

/// The event-stream half of a gateway: holds guilds in the registry and
/// reads the presence updates routed to it.
struct FakeGateway {
    id: String,
    inbound: tonic::Streaming<ServiceMessage>,
    _hello: mpsc::Sender<GatewayMessage>,
}

impl FakeGateway {
    async fn open(service: &Service, guilds: &[&str]) -> Self {
        let id = ulid();
        let guilds: Vec<String> = guilds.iter().map(|g| (*g).to_owned()).collect();
        service
            .registry
            .hold_guilds(&GatewayId::new(id.clone()), &guilds)
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(4);
        tx.send(GatewayMessage {
            kind: Some(gateway_message::Kind::Hello(Hello {
                gateway_id: id.clone(),
            })),
        })
        .await
        .unwrap();
        let mut client = EventStreamClient::new(service.channel());
        let mut inbound = client
            .open(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        match inbound.message().await.unwrap().and_then(|m| m.kind) {
            Some(service_message::Kind::Welcome(welcome)) => {
                assert_eq!(welcome.service, "presence")
            }
            other => panic!("expected a welcome, got {other:?}"),
        }
        Self {
            id,
            inbound,
            _hello: tx,
        }
    }

    /// The next presence update on the stream; fails after the deadline.
    async fn next_update(&mut self) -> PresenceUpdate {
        let message = tokio::time::timeout(DEADLINE, self.inbound.message())
            .await
            .expect("an event before the deadline")
            .unwrap()
            .expect("stream open");
        let Some(service_message::Kind::Event(streamed)) = message.kind else {
            panic!("expected an event");
        };
        match streamed.event.and_then(|e| e.payload) {
            Some(event::Payload::PresenceUpdate(update)) => update,
            other => panic!("expected a presence update, got {other:?}"),
        }
    }

    fn client(&self, service: &Service) -> PresenceClient {
        PresenceClient::new(
            &format!("http://{}", service.addr),
            self.id.clone(),
            Duration::from_secs(3),
            &service.clients,
        )
        .unwrap()
    }
}

fn online(guild: &str, user: &str) -> PresenceUpdate {
    PresenceUpdate {
        guild_id: guild.to_owned(),
        user_id: user.to_owned(),
        status: PresenceStatus::Online.into(),
    }
}

fn offline(guild: &str, user: &str) -> PresenceUpdate {
    PresenceUpdate {
        status: PresenceStatus::Offline.into(),
        ..online(guild, user)
    }
}

/// Two gateways report one user; the guild hears online once, offline once,
/// and a snapshot always says who is present. The sentinel (carol's update)
/// proves that nothing came in between.
#[tokio::test]
async fn transitions_across_two_gateways_are_published_once() {
    let service = start().await;
    let (guild, alice, carol) = (ulid(), ulid(), ulid());
    let mut watcher = FakeGateway::open(&service, &[&guild]).await;
    let (gw1, gw2) = (
        FakeGateway::open(&service, &[]).await,
        FakeGateway::open(&service, &[]).await,
    );
    let (p1, p2) = (gw1.client(&service), gw2.client(&service));
    assert_eq!(p1.heartbeat().await.unwrap(), LeaseStatus::Held);

    p1.connected(1, &alice).await.unwrap();
    let sync = p1.enter_guild(1, &alice, &guild).await.unwrap();
    assert_eq!(sync.user_ids, std::slice::from_ref(&alice));
    assert_eq!(watcher.next_update().await, online(&guild, &alice));

    // A second socket on another gateway is no transition...
    let sync = p2.enter_guild(7, &alice, &guild).await.unwrap();
    assert_eq!(sync.user_ids, std::slice::from_ref(&alice));
    // ...and neither is closing the first.
    let gone = p1.disconnected(1).await.unwrap();
    assert!(!gone.user_offline && gone.went_offline_guild_ids.is_empty());
    p1.enter_guild(2, &carol, &guild).await.unwrap();
    assert_eq!(
        watcher.next_update().await,
        online(&guild, &carol),
        "sentinel"
    );

    let gone = p2.disconnected(7).await.unwrap();
    assert!(gone.user_offline);
    assert_eq!(gone.went_offline_guild_ids, std::slice::from_ref(&guild));
    assert_eq!(watcher.next_update().await, offline(&guild, &alice));
    assert_eq!(
        p2.snapshot(&guild).await.unwrap().user_ids,
        std::slice::from_ref(&carol)
    );
}

/// Only gateways holding the guild get its updates.
#[tokio::test]
async fn updates_reach_only_gateways_holding_the_guild() {
    let service = start().await;
    let (guild, other_guild, alice, bob) = (ulid(), ulid(), ulid(), ulid());
    let mut member = FakeGateway::open(&service, &[&guild]).await;
    let mut outsider = FakeGateway::open(&service, &[&other_guild]).await;
    let p = member.client(&service);
    p.enter_guild(1, &alice, &guild).await.unwrap();
    assert_eq!(member.next_update().await, online(&guild, &alice));
    // The outsider's next update is about its own guild: it never saw alice.
    p.enter_guild(2, &bob, &other_guild).await.unwrap();
    assert_eq!(outsider.next_update().await, online(&other_guild, &bob));
}

/// A gateway that stops heartbeating loses its users within TTL plus one
/// sweep interval, each with exactly one offline update.
#[tokio::test]
async fn a_crashed_gateway_goes_offline_within_the_bound() {
    let service = start().await;
    let (guild, alice, bob) = (ulid(), ulid(), ulid());
    let mut watcher = FakeGateway::open(&service, &[&guild]).await;
    let crashing = FakeGateway::open(&service, &[]).await;
    let p = crashing.client(&service);
    p.enter_guild(1, &alice, &guild).await.unwrap();
    p.enter_guild(2, &alice, &guild).await.unwrap();
    p.enter_guild(3, &bob, &guild).await.unwrap();
    let last_renewal = Instant::now();
    assert_eq!(watcher.next_update().await, online(&guild, &alice));
    assert_eq!(watcher.next_update().await, online(&guild, &bob));
    drop(p); // the crash: nothing more from this gateway

    let mut gone = vec![watcher.next_update().await, watcher.next_update().await];
    let elapsed = last_renewal.elapsed();
    gone.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    let mut expected = vec![offline(&guild, &alice), offline(&guild, &bob)];
    expected.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    assert_eq!(gone, expected);
    assert!(elapsed >= TTL, "offline after {elapsed:?}, before the TTL");
    // The bound is TTL + one sweep interval (100 ms here); allow scheduling.
    assert!(
        elapsed <= TTL + Duration::from_millis(600),
        "took {elapsed:?}"
    );

    // No duplicate: the next update is a fresh sentinel.
    let sentinel = ulid();
    crashing
        .client(&service)
        .enter_guild(9, &sentinel, &guild)
        .await
        .unwrap();
    assert_eq!(watcher.next_update().await, online(&guild, &sentinel));
}

/// A gateway whose lease lapsed while it was alive learns it at its next
/// heartbeat, and must resynchronise.
#[tokio::test]
async fn a_lapsed_lease_is_reported_once() {
    let service = start().await;
    let gateway = FakeGateway::open(&service, &[]).await;
    let p = gateway.client(&service);
    assert_eq!(
        p.heartbeat().await.unwrap(),
        LeaseStatus::Held,
        "first start"
    );
    p.connected(1, &ulid()).await.unwrap();
    assert_eq!(p.heartbeat().await.unwrap(), LeaseStatus::Held);
    tokio::time::sleep(TTL + Duration::from_millis(300)).await;
    // A call after the lapse notices it; the heartbeat reports it.
    p.connected(2, &ulid()).await.unwrap();
    assert_eq!(p.heartbeat().await.unwrap(), LeaseStatus::Lapsed);
    assert_eq!(p.heartbeat().await.unwrap(), LeaseStatus::Held, "once");
}

/// Malformed reports are refused with a clear status and change nothing.
#[tokio::test]
async fn bad_reports_are_refused_and_change_nothing() {
    let service = start().await;
    let guild = ulid();
    let mut watcher = FakeGateway::open(&service, &[&guild]).await;
    let mut raw = RawClient::new(service.channel());
    let gateway_id = ulid();
    let connected = |gateway_id: &str, user_id: &str| PresenceConnectedRequest {
        connection: Some(PresenceConnection {
            gateway_id: gateway_id.to_owned(),
            connection_id: 1,
        }),
        user_id: user_id.to_owned(),
    };
    let lower = ulid().to_lowercase();
    for (request, field) in [
        (connected("gw-1", &ulid()), "gateway_id"),
        (connected(&gateway_id, "someone"), "user_id"),
        (connected(&gateway_id, &lower), "user_id"),
        (
            PresenceConnectedRequest {
                connection: None,
                user_id: ulid(),
            },
            "connection",
        ),
    ] {
        let status = raw.connected(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(field), "{status:?}");
    }

    // A connection already reported for alice is not mallory's.
    let p = FakeGateway::open(&service, &[]).await.client(&service);
    let (alice, mallory) = (ulid(), ulid());
    p.connected(1, &alice).await.unwrap();
    let err = p.enter_guild(1, &mallory, &guild).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Call { status, .. } if status.code() == Code::FailedPrecondition),
        "{err:?}"
    );
    assert_eq!(
        p.snapshot(&guild).await.unwrap().user_ids,
        Vec::<String>::new()
    );
    // Nothing was published: the next update is the sentinel's.
    p.enter_guild(1, &alice, &guild).await.unwrap();
    assert_eq!(watcher.next_update().await, online(&guild, &alice));
}
