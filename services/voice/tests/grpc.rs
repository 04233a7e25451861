//! The voice service over real gRPC and HTTP on port 0: joins and their
//! LiveKit tokens (checked with `jsonwebtoken`, independently of the
//! service's own encoder), the channel events a gateway receives, bounds,
//! bad input, removals, and the LiveKit webhook receiver.

#![allow(clippy::unwrap_used, reason = "a failed call is a failed test")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use filament_proto::v1::event_stream_client::EventStreamClient;
use filament_proto::v1::voice_client::VoiceClient as RawClient;
use filament_proto::v1::{
    Event, GatewayMessage, Hello, ServiceMessage, VoiceConnectionClosedRequest,
    VoiceGuildParticipantsRequest, VoiceJoinRequest, VoiceLeaveRequest, VoiceRemoveUserRequest,
    VoiceSnapshotRequest, VoiceStateFields, VoiceStream, VoiceUpdateStateRequest, audience, event,
    gateway_message, service_message,
};
use filament_registry::{GatewayId, MemoryRegistry, Registry, RegistryConfig};
use filament_runtime::grpc_client::{GrpcChannel, GrpcClientMetrics};
use filament_voice::metrics::SyncReason;
use filament_voice::roster::{ChannelKey, Clock};
use filament_voice::store::{Applied, Change, RosterStore, StoreError, StoreResult};
use filament_voice::{LiveKit, VoiceMetrics};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;

const API_KEY: &str = "APItestkey";
const API_SECRET: &str = "a-test-livekit-secret-of-at-least-32-bytes";
const LIVEKIT_URL: &str = "wss://livekit.example.com";
const DEADLINE: Duration = Duration::from_secs(10);

struct Service {
    addr: SocketAddr,
    webhook: SocketAddr,
    registry: Arc<MemoryRegistry>,
    metrics: Arc<VoiceMetrics>,
    shutdown: CancellationToken,
    /// What a caller presents; the server refuses calls without it.
    clients: GrpcClientMetrics,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(max_per_channel: usize) -> Service {
    start_on(max_per_channel, None).await
}

/// The service on `store`, or on a memory roster when `None`.
async fn start_on(max_per_channel: usize, store: Option<Arc<dyn RosterStore>>) -> Service {
    let registry = Arc::new(MemoryRegistry::new(RegistryConfig::default()));
    let livekit = LiveKit::new(API_KEY, API_SECRET, LIVEKIT_URL).unwrap();
    let mut config = filament_voice::Config::new(([127, 0, 0, 1], 0).into(), livekit);
    config.limits.max_participants_per_channel = max_per_channel;
    config.webhook_addr = Some(([127, 0, 0, 1], 0).into());
    let clients = GrpcClientMetrics::new(config.internal_token.clone());
    let store = match store {
        Some(store) => store,
        None => filament_voice::open_store(&config, None).await.unwrap(),
    };
    let bound = filament_voice::bind(config, registry.clone(), store)
        .await
        .unwrap();
    let service = Service {
        addr: bound.grpc_addr().unwrap(),
        webhook: bound.webhook_addr().unwrap(),
        registry,
        metrics: bound.metrics(),
        shutdown: CancellationToken::new(),
        clients,
    };
    tokio::spawn(bound.run(service.shutdown.clone()));
    service
}

impl Service {
    async fn client(&self) -> RawClient<GrpcChannel> {
        RawClient::new(self.channel())
    }

    fn channel(&self) -> GrpcChannel {
        filament_runtime::grpc_client::connect(
            &format!("http://{}", self.addr),
            DEADLINE,
            None,
            &self.clients,
        )
        .unwrap()
    }
}

fn ulid() -> String {
    ulid::Ulid::generate().to_string()
}

fn now_unix() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// The event-stream half of a gateway holding some guilds and users.
struct FakeGateway {
    inbound: tonic::Streaming<ServiceMessage>,
    _hello: mpsc::Sender<GatewayMessage>,
}

impl FakeGateway {
    async fn open(service: &Service, guilds: &[&str], users: &[&str]) -> Self {
        let id = GatewayId::new(ulid());
        let own = |ids: &[&str]| ids.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        service
            .registry
            .hold_guilds(&id, &own(guilds))
            .await
            .unwrap();
        service.registry.hold_users(&id, &own(users)).await.unwrap();
        let (tx, rx) = mpsc::channel(4);
        tx.send(GatewayMessage {
            kind: Some(gateway_message::Kind::Hello(Hello {
                gateway_id: id.to_string(),
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
        let welcome = inbound.message().await.unwrap().unwrap();
        assert!(matches!(
            welcome.kind,
            Some(service_message::Kind::Welcome(_))
        ));
        Self {
            inbound,
            _hello: tx,
        }
    }

    /// The next event, summarised as "kind user [detail]".
    async fn next(&mut self) -> String {
        let message = tokio::time::timeout(DEADLINE, self.inbound.message())
            .await
            .expect("an event before the deadline")
            .unwrap()
            .expect("stream open");
        let Some(service_message::Kind::Event(streamed)) = message.kind else {
            panic!("expected an event");
        };
        let event = streamed.event.unwrap();
        let to_user = matches!(
            event.audience.and_then(|a| a.target),
            Some(audience::Target::Users(_))
        );
        let stream = |raw: i32| {
            VoiceStream::try_from(raw)
                .unwrap()
                .as_str_name()
                .trim_start_matches("VOICE_STREAM_")
                .to_lowercase()
        };
        match event.payload.unwrap() {
            event::Payload::VoiceParticipantJoin(j) => {
                format!("join {}", j.participant.unwrap().user_id)
            }
            event::Payload::VoiceParticipantLeave(l) => format!("leave {}", l.user_id),
            event::Payload::VoiceParticipantUpdate(u) => {
                format!("update {} {:?}", u.user_id, u.updated_fields.unwrap())
            }
            event::Payload::VoiceStreamPublish(p) => {
                format!("publish {} {}", p.user_id, stream(p.stream))
            }
            event::Payload::VoiceStreamUnpublish(p) => {
                format!("unpublish {} {}", p.user_id, stream(p.stream))
            }
            event::Payload::VoiceParticipantSync(s) => {
                assert!(to_user, "a join's sync goes to the joiner's sockets");
                let users: Vec<_> = s.participants.into_iter().map(|p| p.user_id).collect();
                format!("sync {}", users.join(","))
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
}

fn join_request(
    guild: &str,
    channel: &str,
    user: &str,
    sources: &[VoiceStream],
) -> VoiceJoinRequest {
    VoiceJoinRequest {
        guild_id: guild.to_owned(),
        channel_id: channel.to_owned(),
        user_id: user.to_owned(),
        username: "alice".to_owned(),
        can_publish: !sources.is_empty(),
        can_subscribe: true,
        publish_sources: sources.iter().map(|s| (*s).into()).collect(),
    }
}

fn validation() -> Validation {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&[API_KEY]);
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "sub"]);
    validation.validate_nbf = true;
    validation.leeway = 0;
    validation
}

#[tokio::test]
async fn a_join_issues_a_livekit_token_with_the_granted_claims() {
    let service = start(512).await;
    let (guild, channel, user) = (ulid(), ulid(), ulid());
    let before = now_unix();
    let response = service
        .client()
        .await
        .join(join_request(
            &guild,
            &channel,
            &user,
            &[VoiceStream::ScreenShare, VoiceStream::Microphone],
        ))
        .await
        .unwrap()
        .into_inner();
    let after = now_unix();

    let room = format!("filament.voice.{guild}.{channel}");
    let identity = format!("u.{user}.{guild}.{channel}");
    assert_eq!(response.livekit_url, LIVEKIT_URL);
    assert_eq!(
        (response.room.as_str(), response.identity.as_str()),
        (room.as_str(), identity.as_str())
    );
    assert_eq!(response.expires_in_secs, 300);
    assert!(response.can_publish && response.can_subscribe);
    assert_eq!(
        response.publish_sources,
        [
            i32::from(VoiceStream::Microphone),
            i32::from(VoiceStream::ScreenShare)
        ],
        "ordered microphone, camera, screen share"
    );
    assert!(response.token.len() <= 8192 && response.token.bytes().all(|b| b.is_ascii_graphic()));

    let decoded = jsonwebtoken::decode::<Value>(
        &response.token,
        &DecodingKey::from_secret(API_SECRET.as_bytes()),
        &validation(),
    )
    .expect("the token verifies with the key and secret");
    let claims = decoded.claims;
    assert_eq!(decoded.header.alg, Algorithm::HS256);
    assert_eq!(claims["sub"], identity.as_str());
    assert_eq!(claims["name"], "alice");
    let exp = claims["exp"].as_i64().unwrap();
    let nbf = claims["nbf"].as_i64().unwrap();
    assert_eq!(exp - nbf, 300, "a 300 s TTL");
    assert!((before..=after).contains(&nbf), "issued now");
    assert_eq!(
        claims["video"],
        json!({
            "roomJoin": true,
            "room": room,
            "canPublish": true,
            "canSubscribe": true,
            "canPublishData": true,
            "canPublishSources": ["microphone", "screen_share"],
        })
    );

    // Another secret does not verify it, and it expires.
    let wrong = jsonwebtoken::decode::<Value>(
        &response.token,
        &DecodingKey::from_secret(b"another-secret-of-at-least-32-bytes-long"),
        &validation(),
    );
    assert!(wrong.is_err());
    let mut later = validation();
    later.leeway = 0;
    later.reject_tokens_expiring_in_less_than = 301;
    assert!(
        jsonwebtoken::decode::<Value>(
            &response.token,
            &DecodingKey::from_secret(API_SECRET.as_bytes()),
            &later
        )
        .is_err(),
        "it does not outlive 300 s"
    );
}

#[tokio::test]
async fn subscribe_only_grants_publish_nothing() {
    let service = start(512).await;
    let (guild, channel, user) = (ulid(), ulid(), ulid());
    let response = service
        .client()
        .await
        .join(join_request(&guild, &channel, &user, &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(!response.can_publish && response.can_subscribe);
    let claims = jsonwebtoken::decode::<Value>(
        &response.token,
        &DecodingKey::from_secret(API_SECRET.as_bytes()),
        &validation(),
    )
    .unwrap()
    .claims;
    assert_eq!(claims["video"]["canPublish"], false);
    assert_eq!(claims["video"]["canPublishData"], false);
    assert_eq!(claims["video"]["canPublishSources"], json!([]));
}

/// The full lifecycle seen by a gateway holding the guild, while a gateway
/// that holds only another guild sees none of it (the sentinel proves it).
#[tokio::test]
async fn lifecycle_events_reach_only_the_channel_audience() {
    let service = start(512).await;
    let (guild, channel, alice, bob) = (ulid(), ulid(), ulid(), ulid());
    let (other_guild, other_channel) = (ulid(), ulid());
    let mut member = FakeGateway::open(&service, &[&guild], &[]).await;
    let mut outsider = FakeGateway::open(&service, &[&other_guild], &[]).await;
    let mut client = service.client().await;

    client
        .join(join_request(
            &guild,
            &channel,
            &alice,
            &[VoiceStream::Microphone],
        ))
        .await
        .unwrap();
    assert_eq!(member.next().await, format!("join {alice}"));
    assert_eq!(member.next().await, format!("publish {alice} microphone"));
    client
        .join(join_request(&guild, &channel, &bob, &[]))
        .await
        .unwrap();
    assert_eq!(member.next().await, format!("join {bob}"));

    let mute = VoiceStateFields {
        is_muted: Some(true),
        ..VoiceStateFields::default()
    };
    let update = |user: &str, fields: VoiceStateFields| VoiceUpdateStateRequest {
        guild_id: guild.clone(),
        channel_id: channel.clone(),
        user_id: user.to_owned(),
        fields: Some(fields),
    };
    assert!(
        client
            .update_state(update(&alice, mute))
            .await
            .unwrap()
            .into_inner()
            .changed
    );
    assert_eq!(member.next().await, format!("update {alice} {mute:?}"));
    assert!(
        !client
            .update_state(update(&alice, mute))
            .await
            .unwrap()
            .into_inner()
            .changed
    );

    // A repeat join with the camera: update, then the new stream.
    client
        .join(join_request(
            &guild,
            &channel,
            &alice,
            &[VoiceStream::Microphone, VoiceStream::Camera],
        ))
        .await
        .unwrap();
    let video = VoiceStateFields {
        is_video_enabled: Some(true),
        ..VoiceStateFields::default()
    };
    assert_eq!(member.next().await, format!("update {alice} {video:?}"));
    assert_eq!(member.next().await, format!("publish {alice} camera"));

    let leave = VoiceLeaveRequest {
        guild_id: guild.clone(),
        channel_id: channel.clone(),
        user_id: alice.clone(),
    };
    assert!(client.leave(leave.clone()).await.unwrap().into_inner().left);
    assert_eq!(member.next().await, format!("unpublish {alice} microphone"));
    assert_eq!(member.next().await, format!("unpublish {alice} camera"));
    assert_eq!(member.next().await, format!("leave {alice}"));
    assert!(
        !client.leave(leave).await.unwrap().into_inner().left,
        "idempotent"
    );

    let roster = client
        .snapshot(VoiceSnapshotRequest {
            guild_id: guild.clone(),
            channel_id: channel.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let users: Vec<_> = roster
        .participants
        .iter()
        .map(|p| p.user_id.clone())
        .collect();
    assert_eq!(users, std::slice::from_ref(&bob));

    client
        .join(join_request(&other_guild, &other_channel, &ulid(), &[]))
        .await
        .unwrap();
    assert!(
        outsider.next().await.starts_with("join "),
        "the sentinel comes first"
    );
}

/// The joiner's own sockets get the roster as drift repair, counted.
#[tokio::test]
async fn a_join_and_a_subscribe_send_sync_repairs() {
    let service = start(512).await;
    let (guild, channel, alice, bob) = (ulid(), ulid(), ulid(), ulid());
    let mut alices = FakeGateway::open(&service, &[], &[&alice]).await;
    let mut client = service.client().await;
    client
        .join(join_request(&guild, &channel, &bob, &[]))
        .await
        .unwrap();
    client
        .join(join_request(&guild, &channel, &alice, &[]))
        .await
        .unwrap();
    let sync = alices.next().await;
    assert!(
        sync == format!("sync {bob},{alice}") || sync == format!("sync {alice},{bob}"),
        "{sync}"
    );
    assert_eq!(service.metrics.sync_repairs(SyncReason::Join), 2);

    client
        .snapshot(VoiceSnapshotRequest {
            guild_id: guild.clone(),
            channel_id: channel.clone(),
        })
        .await
        .unwrap();
    assert_eq!(service.metrics.sync_repairs(SyncReason::Subscribe), 1);
}

#[tokio::test]
async fn a_full_channel_refuses_a_join_and_changes_nothing() {
    let service = start(2).await;
    let (guild, channel, elsewhere) = (ulid(), ulid(), ulid());
    let mut member = FakeGateway::open(&service, &[&guild], &[]).await;
    let mut client = service.client().await;
    let (a, b, c) = (ulid(), ulid(), ulid());
    client
        .join(join_request(&guild, &channel, &a, &[]))
        .await
        .unwrap();
    client
        .join(join_request(&guild, &channel, &b, &[]))
        .await
        .unwrap();
    client
        .join(join_request(&guild, &elsewhere, &c, &[]))
        .await
        .unwrap();
    for _ in 0..3 {
        member.next().await;
    }
    let status = client
        .join(join_request(&guild, &channel, &c, &[]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    // c is still where they were, and nothing was published.
    let roster = client
        .snapshot(VoiceSnapshotRequest {
            guild_id: guild.clone(),
            channel_id: elsewhere.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(roster.participants.len(), 1);
    let sentinel = ulid();
    client
        .join(join_request(&guild, &elsewhere, &sentinel, &[]))
        .await
        .unwrap();
    assert_eq!(member.next().await, format!("join {sentinel}"));
}

#[tokio::test]
async fn bad_requests_are_refused_and_change_nothing() {
    let service = start(512).await;
    let (guild, channel, user) = (ulid(), ulid(), ulid());
    let mut member = FakeGateway::open(&service, &[&guild], &[]).await;
    let mut client = service.client().await;
    let good = join_request(&guild, &channel, &user, &[VoiceStream::Microphone]);
    let mic = i32::from(VoiceStream::Microphone);
    let cases: Vec<(VoiceJoinRequest, &str)> = vec![
        (
            VoiceJoinRequest {
                guild_id: "nope".into(),
                ..good.clone()
            },
            "guild_id",
        ),
        (
            VoiceJoinRequest {
                channel_id: channel.to_lowercase(),
                ..good.clone()
            },
            "channel_id",
        ),
        (
            VoiceJoinRequest {
                user_id: String::new(),
                ..good.clone()
            },
            "user_id",
        ),
        (
            VoiceJoinRequest {
                username: String::new(),
                ..good.clone()
            },
            "username",
        ),
        (
            VoiceJoinRequest {
                username: "x".repeat(65),
                ..good.clone()
            },
            "username",
        ),
        (
            VoiceJoinRequest {
                publish_sources: vec![mic, mic],
                ..good.clone()
            },
            "duplicate",
        ),
        (
            VoiceJoinRequest {
                publish_sources: vec![0],
                ..good.clone()
            },
            "unknown",
        ),
        (
            VoiceJoinRequest {
                publish_sources: vec![42],
                ..good.clone()
            },
            "unknown",
        ),
        (
            VoiceJoinRequest {
                can_publish: false,
                ..good.clone()
            },
            "can_publish",
        ),
        (
            VoiceJoinRequest {
                publish_sources: vec![],
                can_publish: false,
                can_subscribe: false,
                ..good.clone()
            },
            "grants nothing",
        ),
    ];
    for (request, needle) in cases {
        let status = client.join(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{needle}");
        assert!(status.message().contains(needle), "{needle}: {status:?}");
    }
    // An oversized request never reaches the service.
    let huge = VoiceJoinRequest {
        username: "x".repeat(8 * 1024),
        ..good.clone()
    };
    assert_ne!(client.join(huge).await.unwrap_err().code(), Code::Ok);
    let empty_update = VoiceUpdateStateRequest {
        guild_id: guild.clone(),
        channel_id: channel.clone(),
        user_id: user.clone(),
        fields: Some(VoiceStateFields::default()),
    };
    assert_eq!(
        client.update_state(empty_update).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    // Nothing changed: the next event is the good join's.
    client.join(good).await.unwrap();
    assert_eq!(member.next().await, format!("join {user}"));
}

#[tokio::test]
async fn removals_take_users_out_of_voice() {
    let service = start(512).await;
    let (guild, channel, alice, bob) = (ulid(), ulid(), ulid(), ulid());
    let mut member = FakeGateway::open(&service, &[&guild], &[]).await;
    let mut client = service.client().await;
    client
        .join(join_request(&guild, &channel, &alice, &[]))
        .await
        .unwrap();
    client
        .join(join_request(&guild, &channel, &bob, &[]))
        .await
        .unwrap();
    member.next().await;
    member.next().await;

    let removed = client
        .remove_user(VoiceRemoveUserRequest {
            guild_id: ulid(),
            user_id: alice.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.removed, 0, "another guild");
    let removed = client
        .remove_user(VoiceRemoveUserRequest {
            guild_id: guild.clone(),
            user_id: alice.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.removed, 1);
    assert_eq!(member.next().await, format!("leave {alice}"));

    // A close from before bob's join does not remove him; a later one does.
    let closed = |at: i64| VoiceConnectionClosedRequest {
        user_id: bob.clone(),
        closed_at_unix_ms: at,
    };
    let long_ago = (now_unix() - 60) * 1000;
    assert_eq!(
        client
            .connection_closed(closed(long_ago))
            .await
            .unwrap()
            .into_inner()
            .removed,
        0
    );
    let now_ms = (now_unix() + 1) * 1000;
    assert_eq!(
        client
            .connection_closed(closed(now_ms))
            .await
            .unwrap()
            .into_inner()
            .removed,
        1
    );
    assert_eq!(member.next().await, format!("leave {bob}"));
}

// ---------------------------------------------------------------------------
// The LiveKit webhook receiver.
// ---------------------------------------------------------------------------

/// A webhook as LiveKit signs it: `sha256` is the base64 SHA-256 of the body.
fn signed(body: &str, secret: &str, issuer: &str) -> String {
    let claims = json!({
        "iss": issuer,
        "nbf": now_unix(),
        "exp": now_unix() + 300,
        "sha256": base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body.as_bytes())),
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn post_webhook(service: &Service, body: &str, authorization: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("http://{}/livekit/webhook", service.webhook))
        .header("content-type", "application/webhook+json")
        .body(body.to_owned());
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn webhook_body(
    kind: &str,
    guild: &str,
    channel: &str,
    user: &str,
    track: Option<Value>,
) -> String {
    let mut body = json!({
        "event": kind,
        "room": {"sid": "RM_1", "name": format!("filament.voice.{guild}.{channel}"), "numParticipants": 1},
        "participant": {"sid": "PA_1", "identity": format!("u.{user}.{guild}.{channel}"), "state": "ACTIVE"},
        "id": "EV_1",
        "createdAt": (now_unix() + 1).to_string(),
        "someFutureField": {"LiveKit": "adds fields"},
    });
    if let Some(track) = track {
        body["track"] = track;
    }
    body.to_string()
}

#[tokio::test]
async fn verified_webhooks_update_the_observed_roster() {
    let service = start(512).await;
    let (guild, channel, alice) = (ulid(), ulid(), ulid());
    let mut member = FakeGateway::open(&service, &[&guild], &[]).await;
    let mut client = service.client().await;
    client
        .join(join_request(&guild, &channel, &alice, &[]))
        .await
        .unwrap();
    assert_eq!(member.next().await, format!("join {alice}"));

    let camera = json!({"sid": "TR_1", "type": "VIDEO", "source": "CAMERA", "muted": false});
    let body = webhook_body("track_published", &guild, &channel, &alice, Some(camera));
    let auth = signed(&body, API_SECRET, API_KEY);
    assert_eq!(
        post_webhook(&service, &body, Some(&auth)).await,
        (200, json!({"accepted": true}))
    );
    let video = VoiceStateFields {
        is_video_enabled: Some(true),
        ..VoiceStateFields::default()
    };
    assert_eq!(member.next().await, format!("update {alice} {video:?}"));
    assert_eq!(member.next().await, format!("publish {alice} camera"));

    // Delivered twice: nothing more happens.
    assert_eq!(post_webhook(&service, &body, Some(&auth)).await.0, 200);

    let body = webhook_body("participant_left", &guild, &channel, &alice, None);
    let auth = format!("Bearer {}", signed(&body, API_SECRET, API_KEY));
    assert_eq!(post_webhook(&service, &body, Some(&auth)).await.0, 200);
    assert_eq!(member.next().await, format!("unpublish {alice} camera"));
    assert_eq!(member.next().await, format!("leave {alice}"));
}

#[tokio::test]
async fn forged_or_malformed_webhooks_are_refused_and_change_nothing() {
    let service = start(512).await;
    let (guild, channel, alice) = (ulid(), ulid(), ulid());
    let mut member = FakeGateway::open(&service, &[&guild], &[]).await;
    let mut client = service.client().await;
    client
        .join(join_request(&guild, &channel, &alice, &[]))
        .await
        .unwrap();
    assert_eq!(member.next().await, format!("join {alice}"));

    let body = webhook_body("participant_left", &guild, &channel, &alice, None);
    let unauthorized = (401, json!({"error": "invalid_credentials"}));
    let other_body = webhook_body("participant_left", &guild, &channel, &ulid(), None);
    for (label, auth) in [
        ("no signature", None),
        ("not a jwt", Some("Bearer nonsense".to_owned())),
        (
            "wrong secret",
            Some(signed(
                &body,
                "another-secret-of-at-least-32-bytes-long",
                API_KEY,
            )),
        ),
        ("wrong issuer", Some(signed(&body, API_SECRET, "APIother"))),
        (
            "another body",
            Some(signed(&other_body, API_SECRET, API_KEY)),
        ),
    ] {
        assert_eq!(
            post_webhook(&service, &body, auth.as_deref()).await,
            unauthorized,
            "{label}"
        );
    }
    assert_eq!(service.metrics.webhooks_rejected(), 5);

    // Signed but not JSON: 400. Over the size cap: 413.
    let junk = "not json";
    assert_eq!(
        post_webhook(&service, junk, Some(&signed(junk, API_SECRET, API_KEY))).await,
        (400, json!({"error": "invalid_request"}))
    );
    let huge = "x".repeat(filament_voice::webhook::MAX_WEBHOOK_BYTES + 1);
    assert_eq!(
        post_webhook(&service, &huge, Some(&signed(&huge, API_SECRET, API_KEY)))
            .await
            .0,
        413
    );

    // alice is still there, and nothing was published before the sentinel.
    let roster = client
        .snapshot(VoiceSnapshotRequest {
            guild_id: guild.clone(),
            channel_id: channel.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(roster.participants.len(), 1);
    let sentinel = ulid();
    client
        .join(join_request(&guild, &channel, &sentinel, &[]))
        .await
        .unwrap();
    assert_eq!(member.next().await, format!("join {sentinel}"));
}

// ---------------------------------------------------------------------------
// A roster store that cannot answer.
// ---------------------------------------------------------------------------

/// What a Redis roster answers while Redis is down.
struct DownStore;

#[async_trait::async_trait]
impl RosterStore for DownStore {
    async fn apply(&self, _: &Change<'_>, _: Clock, _: &mut Vec<Event>) -> StoreResult<Applied> {
        Err(StoreError::TimedOut)
    }

    async fn channels(&self) -> StoreResult<Vec<ChannelKey>> {
        Err(StoreError::TimedOut)
    }
}

/// Every call fails closed: UNAVAILABLE, never a guessed answer (an empty
/// roster, "not in voice"); the webhook asks LiveKit to deliver again.
#[tokio::test]
async fn a_store_that_cannot_answer_fails_every_call_closed() {
    let service = start_on(512, Some(Arc::new(DownStore))).await;
    let (guild, channel, alice) = (ulid(), ulid(), ulid());
    let mut client = service.client().await;
    let unavailable = |status: tonic::Status| assert_eq!(status.code(), Code::Unavailable);
    unavailable(
        client
            .join(join_request(&guild, &channel, &alice, &[]))
            .await
            .unwrap_err(),
    );
    let leave = VoiceLeaveRequest {
        guild_id: guild.clone(),
        channel_id: channel.clone(),
        user_id: alice.clone(),
    };
    unavailable(client.leave(leave).await.unwrap_err());
    let update = VoiceUpdateStateRequest {
        guild_id: guild.clone(),
        channel_id: channel.clone(),
        user_id: alice.clone(),
        fields: Some(VoiceStateFields {
            is_muted: Some(true),
            ..VoiceStateFields::default()
        }),
    };
    unavailable(client.update_state(update).await.unwrap_err());
    let snapshot = VoiceSnapshotRequest {
        guild_id: guild.clone(),
        channel_id: channel.clone(),
    };
    unavailable(client.snapshot(snapshot).await.unwrap_err());
    let closed = VoiceConnectionClosedRequest {
        user_id: alice.clone(),
        closed_at_unix_ms: now_unix() * 1000,
    };
    unavailable(client.connection_closed(closed).await.unwrap_err());
    let remove = VoiceRemoveUserRequest {
        guild_id: guild.clone(),
        user_id: alice.clone(),
    };
    unavailable(client.remove_user(remove).await.unwrap_err());
    let holders = VoiceGuildParticipantsRequest {
        guild_id: guild.clone(),
    };
    unavailable(client.guild_participants(holders).await.unwrap_err());

    let body = webhook_body("participant_joined", &guild, &channel, &alice, None);
    let auth = signed(&body, API_SECRET, API_KEY);
    assert_eq!(
        post_webhook(&service, &body, Some(&auth)).await,
        (503, json!({"error": "unavailable"}))
    );
}
