//! Commit and publish are one fact (docs/adr/0006-outbox.md): an event
//! whose request never published it after the commit still reaches the
//! subscribers, through the api's outbox relay, in order and once; a
//! repeat is dropped by the gateways; and a post retried with its
//! `Idempotency-Key` posts once.

mod support;

use std::time::Duration;

use filament_api::OutboxRequestPath;
use filament_gateway::DropReason;
use reqwest::Method;
use serde_json::{Value, json};
use support::{Backends, Socket, TestStack};

/// Alice's public guild with Bob in it, each subscribed to its channel on
/// a gateway of their own, on an api whose relay sweeps fast and whose
/// request path `tune_api` sets.
struct Scene {
    t: TestStack,
    a: support::User,
    b: support::User,
    guild: String,
    channel: String,
    sa: Socket,
    sb: Socket,
}

impl Scene {
    async fn start(backends: Backends, tune_api: fn(&mut filament_api::Config)) -> Option<Self> {
        let t = TestStack::start_with(backends, 2, |config| config.tune_api = tune_api).await?;
        let (a, b) = (t.user("alice").await, t.user("bob").await);
        let (guild, channel) = t.guild_with_channel(&a, "public").await;
        t.join(&b, &guild).await;
        // The setup's own events (`channel_create`, `workspace_member_add`)
        // go through the outbox too: under this request path the relay
        // publishes (or republishes) them once their lease ran out. Let
        // that happen, to nobody, before anyone subscribes, so that each
        // socket's first frame is the case's own.
        tokio::time::sleep(SETUP_SETTLES).await;
        let mut sa = t.connect(0, &a).await;
        let mut sb = t.connect(1, &b).await;
        sa.subscribed(&guild, &channel).await;
        sb.subscribed(&guild, &channel).await;
        Some(Self {
            t,
            a,
            b,
            guild,
            channel,
            sa,
            sb,
        })
    }
}

/// Ten leases of [`fast_relay`]: by then its relay has published the
/// scene's setup events.
const SETUP_SETTLES: Duration = Duration::from_secs(1);

/// A relay that sweeps every 20 ms and takes rows 100 ms after their writer.
fn fast_relay(api: &mut filament_api::Config) {
    api.outbox.lease = Duration::from_millis(100);
    api.outbox.sweep_interval = Duration::from_millis(20);
}

/// The request path publishes nothing: only the relay does.
fn only_the_relay(api: &mut filament_api::Config) {
    fast_relay(api);
    api.outbox.request_path = OutboxRequestPath::Nothing;
}

/// The request path publishes but leaves its row for the relay.
fn publish_but_never_forget(api: &mut filament_api::Config) {
    fast_relay(api);
    api.outbox.request_path = OutboxRequestPath::PublishOnly;
}

/// The request path publishes nothing, standing for a process that died
/// (or a request that timed out) right after each commit: every event of a
/// message's life still arrives, in order, exactly once, through the relay.
async fn the_relay_delivers_what_no_request_published(backends: Backends) {
    let Some(Scene {
        t,
        a,
        b,
        guild,
        channel,
        mut sa,
        mut sb,
    }) = Scene::start(backends, only_the_relay).await
    else {
        return;
    };

    let messages = format!("/guilds/{guild}/channels/{channel}/messages");
    let (status, message) = t
        .post(&messages, Some(&a.token), json!({"content": "first"}))
        .await;
    assert_eq!(status, 200, "{message}");
    let id = message["message_id"].as_str().expect("id").to_owned();
    let one = format!("{messages}/{id}");
    let (status, _) = t
        .call(
            Method::PATCH,
            &one,
            Some(&a.token),
            Some(json!({"content": "edited"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = t
        .call(
            Method::POST,
            &format!("{one}/reactions/ok"),
            Some(&b.token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = t.call(Method::DELETE, &one, Some(&a.token), None).await;
    assert_eq!(status, 204);

    for socket in [&mut sa, &mut sb] {
        let created = socket.next_event().await;
        assert_eq!(
            created,
            json!({"v": 1, "t": "message_create", "d": message})
        );
        let edited = socket.next_event().await;
        assert_eq!(edited["t"], "message_update", "{edited}");
        assert_eq!(edited["d"]["updated_fields"]["content"], "edited");
        let reacted = socket.next_event().await;
        assert_eq!(reacted["t"], "message_reaction", "{reacted}");
        assert_eq!(reacted["d"]["count"], 1);
        let deleted = socket.next_event().await;
        assert_eq!(deleted["t"], "message_delete", "{deleted}");
        assert_eq!(deleted["d"]["message_id"], id.as_str());
    }
    // A sentinel proves nothing went out twice: it is the next frame.
    sentinel(&t, &a, &messages, &mut [&mut sa, &mut sb]).await;
    t.stack.stop().await.expect("clean shutdown");
}

/// A deployment stopped after a commit whose event was never published:
/// the restarted api's relay publishes it, once, to the new subscribers.
async fn a_restarted_api_publishes_what_its_predecessor_committed(backends: Backends) {
    let Some(t) = TestStack::start_with(backends, 1, |config| {
        config.tune_api = |api| {
            api.outbox.request_path = OutboxRequestPath::Nothing;
            // Outlasts the restart and the new subscription below (which
            // take well under a second), so the restarted relay publishes
            // the row after the socket subscribed, not to nobody; and it is
            // short enough to wait for within the socket's deadline. The
            // first api never sweeps again after its start.
            api.outbox.lease = Duration::from_secs(6);
            api.outbox.sweep_interval = Duration::from_secs(3600);
        };
    })
    .await
    else {
        return;
    };
    let a = t.user("alice").await;
    let (guild, channel) = t.guild_with_channel(&a, "private").await;
    let messages = format!("/guilds/{guild}/channels/{channel}/messages");
    let (status, lost) = t
        .post(&messages, Some(&a.token), json!({"content": "lost?"}))
        .await;
    assert_eq!(status, 200, "{lost}");

    let t = t
        .restart_with(|config| {
            config.tune_api = |api| {
                api.outbox.sweep_interval = Duration::from_millis(20);
            };
        })
        .await;
    let mut socket = t.connect(0, &a).await;
    socket.subscribed(&guild, &channel).await;
    // Arrive once the dead writer's lease ran out, in the order they were
    // committed: the channel's creation was not published either.
    let frame = socket.next_event().await;
    assert_eq!(frame["t"], "channel_create", "{frame}");
    assert_eq!(frame["d"]["channel"]["channel_id"], channel.as_str());
    let frame = socket.next_event().await;
    assert_eq!(frame, json!({"v": 1, "t": "message_create", "d": lost}));
    sentinel(&t, &a, &messages, &mut [&mut socket]).await;
    let (_, page) = t.get(&messages, Some(&a.token)).await;
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(2));
    t.stack.stop().await.expect("clean shutdown");
}

/// A process that died after publishing and before forgetting the row: a
/// relay publishes the event again, and each gateway drops the repeat by
/// its id, so every socket gets the message once.
async fn a_republished_event_reaches_each_socket_once(backends: Backends) {
    let Some(Scene {
        t,
        a,
        guild,
        channel,
        mut sa,
        mut sb,
        ..
    }) = Scene::start(backends, publish_but_never_forget).await
    else {
        return;
    };

    let messages = format!("/guilds/{guild}/channels/{channel}/messages");
    let (status, message) = t
        .post(&messages, Some(&a.token), json!({"content": "once"}))
        .await;
    assert_eq!(status, 200, "{message}");
    for socket in [&mut sa, &mut sb] {
        let frame = socket.next_event().await;
        assert_eq!(frame, json!({"v": 1, "t": "message_create", "d": message}));
    }
    // The relay's copy comes once the request's lease ran out; both
    // gateways hold the channel, so both see it and drop it.
    for n in 0..2 {
        let metrics = t.gateway_metrics(n);
        let deadline = tokio::time::Instant::now() + support::DEADLINE;
        while metrics.dropped_count(DropReason::Duplicate) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway {n} never saw the repeat"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    sentinel(&t, &a, &messages, &mut [&mut sa, &mut sb]).await;
    t.stack.stop().await.expect("clean shutdown");
}

/// `POST …/messages` with an `Idempotency-Key`.
async fn post_keyed(
    t: &TestStack,
    path: &str,
    token: &str,
    key: &str,
    body: Value,
) -> (u16, Value) {
    let response = t
        .http
        .post(t.api(path))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .expect("request sent");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

/// A post retried with its `Idempotency-Key` (its first answer lost)
/// answers the original message and posts nothing: subscribers get one
/// `message_create`, history holds one message. The key with another body
/// is 422; a malformed key is 400.
async fn a_retried_post_with_its_key_posts_once(backends: Backends) {
    let Some(t) = TestStack::start(backends, 1).await else {
        return;
    };
    let a = t.user("alice").await;
    let (guild, channel) = t.guild_with_channel(&a, "private").await;
    let mut socket = t.connect(0, &a).await;
    socket.subscribed(&guild, &channel).await;
    let messages = format!("/guilds/{guild}/channels/{channel}/messages");

    let body = json!({"content": "only once"});
    let (status, original) = post_keyed(&t, &messages, &a.token, "retry-1", body.clone()).await;
    assert_eq!(status, 200, "{original}");
    let (status, retried) = post_keyed(&t, &messages, &a.token, "retry-1", body.clone()).await;
    assert_eq!((status, &retried), (200, &original));
    // Two at once under a fresh key: one posts, both answer its message.
    let (first, second) = tokio::join!(
        post_keyed(
            &t,
            &messages,
            &a.token,
            "retry-2",
            json!({"content": "racing"})
        ),
        post_keyed(
            &t,
            &messages,
            &a.token,
            "retry-2",
            json!({"content": "racing"})
        ),
    );
    assert_eq!(first.0, 200, "{}", first.1);
    assert_eq!(first, second);

    let frame = socket.next_event().await;
    assert_eq!(frame, json!({"v": 1, "t": "message_create", "d": original}));
    let frame = socket.next_event().await;
    assert_eq!(frame, json!({"v": 1, "t": "message_create", "d": first.1}));
    sentinel(&t, &a, &messages, &mut [&mut socket]).await;

    let (status, reused) = post_keyed(
        &t,
        &messages,
        &a.token,
        "retry-1",
        json!({"content": "something else"}),
    )
    .await;
    assert_eq!(
        (status, reused),
        (422, json!({"error": "idempotency_key_reused"}))
    );
    let (status, bad) = post_keyed(&t, &messages, &a.token, "not a key!", body).await;
    assert_eq!((status, bad), (400, json!({"error": "invalid_request"})));
    // Keys are per user: bob's "retry-1" is his own.
    let b = t.user("bob").await;
    let (b_guild, b_channel) = t.guild_with_channel(&b, "private").await;
    let b_messages = format!("/guilds/{b_guild}/channels/{b_channel}/messages");
    let (status, _) = post_keyed(
        &t,
        &b_messages,
        &b.token,
        "retry-1",
        json!({"content": "bob's"}),
    )
    .await;
    assert_eq!(status, 200);

    let (_, page) = t.get(&messages, Some(&a.token)).await;
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(3), "{page}");
    t.stack.stop().await.expect("clean shutdown");
}

/// Posts a message and checks it is each socket's very next frame.
async fn sentinel(t: &TestStack, author: &support::User, path: &str, sockets: &mut [&mut Socket]) {
    let (status, sentinel) = t
        .post(path, Some(&author.token), json!({"content": "sentinel"}))
        .await;
    assert_eq!(status, 200, "{sentinel}");
    for socket in sockets.iter_mut() {
        let frame: Value = socket.next_event().await;
        assert_eq!(frame["t"], "message_create", "{frame}");
        assert_eq!(frame["d"]["message_id"], sentinel["message_id"], "{frame}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_the_relay_delivers_what_no_request_published() {
    the_relay_delivers_what_no_request_published(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_the_relay_delivers_what_no_request_published() {
    the_relay_delivers_what_no_request_published(Backends::External).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_restarted_api_publishes_what_its_predecessor_committed() {
    a_restarted_api_publishes_what_its_predecessor_committed(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_a_restarted_api_publishes_what_its_predecessor_committed() {
    a_restarted_api_publishes_what_its_predecessor_committed(Backends::External).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_republished_event_reaches_each_socket_once() {
    a_republished_event_reaches_each_socket_once(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_a_republished_event_reaches_each_socket_once() {
    a_republished_event_reaches_each_socket_once(Backends::External).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_retried_post_with_its_key_posts_once() {
    a_retried_post_with_its_key_posts_once(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_a_retried_post_with_its_key_posts_once() {
    a_retried_post_with_its_key_posts_once(Backends::External).await;
}
