//! Presence end to end: reports to the presence service over gRPC, and the
//! `presence_update` events that reach websockets through two gateways.
//!
//! Some tests play the reporting side with [`PresenceClient`]s acting as
//! extra gateways (exactly what a gateway does), so that they control when a
//! "socket" comes and goes; the others use real gateways' sockets. The
//! delivery side is always the real one.

mod support;

use std::time::Duration;

use filament_clients::PresenceClient;
use serde_json::{Value, json};
use support::{Backends, Socket, TestStack, User};
use tokio::time::Instant;

/// Short, so a crash test takes seconds; the gateway's minimum.
const TTL: Duration = Duration::from_secs(3);

fn short_ttl(config: &mut filament_allinone::StackConfig) {
    config.registry_ttl = TTL;
}

/// A presence reporter standing in for a gateway process.
fn reporter(t: &TestStack) -> PresenceClient {
    PresenceClient::new(
        &format!("http://{}", t.stack.presence_grpc_addr),
        ulid::Ulid::generate().to_string(),
        Duration::from_secs(3),
        &filament_runtime::grpc_client::GrpcClientMetrics::new(t.stack.internal_token.clone()),
    )
    .expect("presence url")
}

async fn public_guild(t: &TestStack, owner: &User, members: &[&User]) -> (String, String) {
    let (guild, channel) = t.guild_with_channel(owner, "public").await;
    for member in members {
        t.join(member, &guild).await;
    }
    (guild, channel)
}

/// The next `presence_update` about someone other than the observers
/// themselves (once gateways report their own sockets, observers also hear
/// about each other; those are not what these tests watch).
async fn next_update(socket: &mut Socket, observers: &[&User]) -> Value {
    loop {
        let frame = socket.next_event().await;
        match frame["t"].as_str() {
            Some("presence_sync" | "voice_participant_sync") => {}
            Some("presence_update")
                if observers
                    .iter()
                    .any(|o| frame["d"]["user_id"] == o.id.as_str()) => {}
            _ => return frame,
        }
    }
}

/// A socket that shows presence frames: these tests are about them.
fn raw(mut socket: Socket) -> Socket {
    socket.hide_presence = false;
    socket
}

fn update(guild: &str, user: &User, status: &str) -> Value {
    json!({"v": 1, "t": "presence_update", "d": {"guild_id": guild, "user_id": user.id, "status": status}})
}

/// Online once and offline once however many connections, on however many
/// gateways, a user has; to members on both gateways, and to nobody else.
async fn transitions_reach_members_once(backends: Backends) {
    let Some(t) = TestStack::start(backends, 2).await else {
        return;
    };
    let (alice, bob, carol, uma, vic) = (
        t.user("alice").await,
        t.user("bob").await,
        t.user("carol").await,
        t.user("uma").await,
        t.user("vic").await,
    );
    let (guild, channel) = public_guild(&t, &alice, &[&bob, &uma, &vic]).await;
    let (carol_guild, carol_channel) = t.guild_with_channel(&carol, "private").await;
    let observers = [&alice, &bob];
    let mut a = raw(t.connect(0, &alice).await);
    let mut b = raw(t.connect(1, &bob).await);
    let mut c = raw(t.connect(0, &carol).await);
    a.subscribed_any(&guild, &channel).await;
    b.subscribed_any(&guild, &channel).await;
    c.subscribed_any(&carol_guild, &carol_channel).await;

    let (first, second) = (reporter(&t), reporter(&t));
    let sync = first.enter_guild(1, &uma.id, &guild).await.expect("enter");
    assert!(sync.user_ids.contains(&uma.id));
    for socket in [&mut a, &mut b] {
        assert_eq!(
            next_update(socket, &observers).await,
            update(&guild, &uma, "online")
        );
    }
    // A second connection elsewhere, and closing the first: no transition.
    second.enter_guild(7, &uma.id, &guild).await.expect("enter");
    first.disconnected(1).await.expect("disconnect");
    first.enter_guild(2, &vic.id, &guild).await.expect("enter");
    for socket in [&mut a, &mut b] {
        assert_eq!(
            next_update(socket, &observers).await,
            update(&guild, &vic, "online"),
            "the sentinel comes first"
        );
    }
    let gone = second.disconnected(7).await.expect("disconnect");
    assert!(gone.user_offline);
    for socket in [&mut a, &mut b] {
        assert_eq!(
            next_update(socket, &observers).await,
            update(&guild, &uma, "offline")
        );
    }

    // Carol, in no shared guild, heard none of it.
    let (_, message) = t
        .post(
            &format!("/guilds/{carol_guild}/channels/{carol_channel}/messages"),
            Some(&carol.token),
            json!({"content": "sentinel"}),
        )
        .await;
    let frame = next_update(&mut c, &[&carol]).await;
    assert_eq!(frame["t"], "message_create", "{frame}");
    assert_eq!(frame["d"]["message_id"], message["message_id"]);
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_transitions_reach_members_once() {
    transitions_reach_members_once(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_transitions_reach_members_once() {
    transitions_reach_members_once(Backends::External).await;
}

/// A gateway that stops heartbeating (it crashed) loses its users within
/// the registry TTL plus one sweep interval (at most a second), each with
/// exactly one `presence_update`; a user also connected elsewhere stays.
async fn a_crashed_gateway_goes_offline_within_the_ttl(backends: Backends) {
    let Some(t) = TestStack::start_with(backends, 2, short_ttl).await else {
        return;
    };
    let (alice, uma, vic, wes) = (
        t.user("alice").await,
        t.user("uma").await,
        t.user("vic").await,
        t.user("wes").await,
    );
    let (guild, channel) = public_guild(&t, &alice, &[&uma, &vic, &wes]).await;
    let mut a = raw(t.connect(1, &alice).await);
    a.subscribed_any(&guild, &channel).await;

    let survivor = reporter(&t);
    survivor
        .enter_guild(1, &wes.id, &guild)
        .await
        .expect("enter");
    assert_eq!(
        next_update(&mut a, &[&alice]).await,
        update(&guild, &wes, "online")
    );
    let crashing = reporter(&t);
    crashing
        .enter_guild(1, &uma.id, &guild)
        .await
        .expect("enter");
    crashing
        .enter_guild(2, &uma.id, &guild)
        .await
        .expect("enter");
    crashing
        .enter_guild(3, &vic.id, &guild)
        .await
        .expect("enter");
    crashing
        .enter_guild(4, &wes.id, &guild)
        .await
        .expect("enter");
    let last_heartbeat = Instant::now();
    drop(crashing);
    for user in [&uma, &vic] {
        assert_eq!(
            next_update(&mut a, &[&alice]).await,
            update(&guild, user, "online")
        );
    }
    // The survivor keeps heartbeating, as a live gateway does.
    let keep_alive = tokio::spawn(async move {
        loop {
            let _ = survivor.heartbeat().await;
            tokio::time::sleep(TTL / 3).await;
        }
    });

    let mut offline = Vec::new();
    for _ in 0..2 {
        let frame = next_update(&mut a, &[&alice]).await;
        assert_eq!(frame["d"]["status"], "offline", "{frame}");
        offline.push(frame["d"]["user_id"].as_str().expect("id").to_owned());
    }
    let took = last_heartbeat.elapsed();
    offline.sort();
    let mut expected = vec![uma.id.clone(), vic.id.clone()];
    expected.sort();
    assert_eq!(offline, expected, "one update each; wes is still connected");
    assert!(took >= TTL, "offline after {took:?}, inside the TTL");
    assert!(
        took <= TTL + Duration::from_secs(2),
        "offline only after {took:?}"
    );

    // Nothing more about the crash: the next update is a fresh sentinel.
    let sentinel = reporter(&t);
    sentinel
        .enter_guild(1, &vic.id, &guild)
        .await
        .expect("enter");
    assert_eq!(
        next_update(&mut a, &[&alice]).await,
        update(&guild, &vic, "online")
    );
    keep_alive.abort();
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_crashed_gateway_goes_offline_within_the_ttl() {
    a_crashed_gateway_goes_offline_within_the_ttl(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_a_crashed_gateway_goes_offline_within_the_ttl() {
    a_crashed_gateway_goes_offline_within_the_ttl(Backends::External).await;
}

// ---------------------------------------------------------------------------
// Real gateways report their own sockets.
// ---------------------------------------------------------------------------

/// PROTOCOL.md §5.5: a subscribe gets `presence_sync` (with the subscriber) before
/// `subscribed`; the guild hears `online` once per user, whichever gateway
/// and however many sockets; closing the last socket is one `offline`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_on_two_gateways_go_online_and_offline_once() {
    let t = TestStack::start(Backends::Embedded, 2)
        .await
        .expect("embedded");
    let (alice, bob, carol) = (
        t.user("alice").await,
        t.user("bob").await,
        t.user("carol").await,
    );
    let (guild, channel) = public_guild(&t, &alice, &[&bob]).await;
    let (carol_guild, carol_channel) = t.guild_with_channel(&carol, "private").await;
    let mut a = raw(t.connect(0, &alice).await);
    let mut c = raw(t.connect(1, &carol).await);
    c.subscribed_any(&carol_guild, &carol_channel).await;

    a.subscribe(&guild, &channel).await;
    // The snapshots come first, written ahead of the socket's queue; alice's
    // own `online`, which presence published while taking the snapshot,
    // follows them and cannot undo them.
    let first = a.next_event().await;
    assert_eq!(first["t"], "presence_sync", "{first}");
    assert_eq!(first["d"]["user_ids"], json!([alice.id]));
    assert_eq!(a.next_event().await["t"], "subscribed");
    assert_eq!(a.next_event().await["t"], "voice_participant_sync");
    assert_eq!(a.next_event().await, update(&guild, &alice, "online"));

    let mut b1 = raw(t.connect(1, &bob).await);
    b1.subscribed_any(&guild, &channel).await;
    let mut seen = Vec::new();
    while seen.is_empty() {
        let frame = a.next_event().await;
        if frame["t"] == "presence_update" && frame["d"]["user_id"] == bob.id.as_str() {
            seen.push(frame);
        }
    }
    assert_eq!(seen[0], update(&guild, &bob, "online"));
    let mut b2 = raw(t.connect(0, &bob).await);
    b2.subscribed_any(&guild, &channel).await;
    drop(b1);
    drop(b2);
    let frame = loop {
        let frame = a.next_event().await;
        if frame["t"] == "presence_update" {
            break frame;
        }
    };
    assert_eq!(
        frame,
        update(&guild, &bob, "offline"),
        "no online twice, one offline"
    );

    // Carol, in no shared guild, heard nothing of bob.
    let (_, message) = t
        .post(
            &format!("/guilds/{carol_guild}/channels/{carol_channel}/messages"),
            Some(&carol.token),
            json!({"content": "sentinel"}),
        )
        .await;
    let frame = next_update(&mut c, &[&carol]).await;
    assert_eq!(frame["d"]["message_id"], message["message_id"], "{frame}");
    t.stack.stop().await.expect("clean shutdown");
}

/// Helpers only these tests need.
trait SubscribeAny {
    /// Subscribes and waits for `subscribed`, skipping the snapshots and
    /// updates a gateway with hooks sends around it.
    async fn subscribed_any(&mut self, guild: &str, channel: &str);
}

impl SubscribeAny for Socket {
    async fn subscribed_any(&mut self, guild: &str, channel: &str) {
        self.subscribe(guild, channel).await;
        loop {
            let frame = self.next_event().await;
            if frame["t"] == "subscribed" {
                assert_eq!(
                    frame["d"],
                    json!({"guild_id": guild, "channel_id": channel})
                );
                return;
            }
        }
    }
}

/// A kick removes the member's subscriptions on every gateway, and with
/// them their presence in the guild: the guild hears them go offline at
/// once, though their socket stays open for their other guilds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_member_goes_offline_in_that_guild_at_once() {
    let t = TestStack::start(Backends::Embedded, 2)
        .await
        .expect("embedded");
    let (alice, bob) = (t.user("alice").await, t.user("bob").await);
    let (guild, channel) = public_guild(&t, &alice, &[&bob]).await;
    let (own_guild, own_channel) = t.guild_with_channel(&bob, "private").await;
    let mut a = raw(t.connect(0, &alice).await);
    a.subscribed_any(&guild, &channel).await;
    let mut b = raw(t.connect(1, &bob).await);
    b.subscribed_any(&own_guild, &own_channel).await;
    b.subscribed_any(&guild, &channel).await;
    assert_eq!(
        next_update(&mut a, &[&alice]).await,
        update(&guild, &bob, "online")
    );

    let (status, body) = t
        .post(
            &format!("/guilds/{guild}/members/{}/kick", bob.id),
            Some(&alice.token),
            json!(null),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // The removal (api stream) and the offline (presence stream) travel
    // separately; both must come, in either order.
    let mut offline = false;
    let mut removed = false;
    while !(offline && removed) {
        let frame = next_update(&mut a, &[&alice]).await;
        match frame["t"].as_str() {
            Some("presence_update") => {
                assert_eq!(frame, update(&guild, &bob, "offline"));
                offline = true;
            }
            Some("workspace_member_remove") => removed = true,
            _ => panic!("unexpected frame: {frame}"),
        }
    }
    // Bob's socket is still open and still present in his own guild.
    b.subscribe(&own_guild, &own_channel).await;
    let sync = loop {
        let frame = b.next_event().await;
        if frame["t"] == "presence_sync" {
            break frame;
        }
    };
    assert_eq!(sync["d"]["guild_id"], own_guild.as_str());
    assert_eq!(sync["d"]["user_ids"], json!([bob.id]));
    t.stack.stop().await.expect("clean shutdown");
}
