//! One message, from REST through api → gRPC → two gateways → websockets.

mod support;

use serde_json::json;
use support::{Backends, TestStack};

/// A and B are on different gateways and subscribed to C; D is not a member
/// and is refused. A posts: A and B each get exactly one `message_create`
/// with the REST body as payload, and D gets nothing.
async fn message_reaches_members_on_both_gateways_and_nobody_else(backends: Backends) {
    let Some(t) = TestStack::start(backends, 2).await else {
        return;
    };
    let (a, b, d) = (
        t.user("alice").await,
        t.user("bob").await,
        t.user("dave").await,
    );
    let (guild, channel) = t.guild_with_channel(&a, "public").await;
    t.join(&b, &guild).await;
    let (d_guild, d_channel) = t.guild_with_channel(&d, "private").await;

    let mut sa = t.connect(0, &a).await;
    let mut sb = t.connect(1, &b).await;
    let mut sd = t.connect(0, &d).await;
    sa.subscribed(&guild, &channel).await;
    sb.subscribed(&guild, &channel).await;
    // D's subscribe to C is ignored; the next frame D sees is the ack of a
    // subscribe D is allowed to make.
    sd.subscribe(&guild, &channel).await;
    sd.subscribed(&d_guild, &d_channel).await;

    let path = format!("/guilds/{guild}/channels/{channel}/messages");
    let (status, message) = t
        .post(&path, Some(&a.token), json!({"content": "hello **world**"}))
        .await;
    assert_eq!(status, 200, "{message}");
    assert_eq!(message["content"], "hello **world**");
    assert_eq!(message["author_id"], a.id.as_str());
    assert_eq!(message["reactions"], json!([]));
    assert!(
        message["markdown_tokens"]
            .as_array()
            .is_some_and(|t| !t.is_empty())
    );

    for socket in [&mut sa, &mut sb] {
        let frame = socket.next_event().await;
        assert_eq!(frame, json!({"v": 1, "t": "message_create", "d": message}));
    }

    // Sentinels prove absence without sleeping: each socket's next frame is
    // a later event, so no duplicate (for A, B) or leak (for D) came first.
    let d_path = format!("/guilds/{d_guild}/channels/{d_channel}/messages");
    let (_, d_message) = t
        .post(&d_path, Some(&d.token), json!({"content": "sentinel"}))
        .await;
    let frame = sd.next_event().await;
    assert_eq!(frame["t"], "message_create");
    assert_eq!(frame["d"]["message_id"], d_message["message_id"]);

    let (_, second) = t
        .post(&path, Some(&b.token), json!({"content": "second"}))
        .await;
    for socket in [&mut sa, &mut sb] {
        let frame = socket.next_event().await;
        assert_eq!(frame["d"]["message_id"], second["message_id"], "{frame}");
    }

    // History agrees with what was delivered, newest first.
    let (status, page) = t.get(&path, Some(&b.token)).await;
    assert_eq!(status, 200);
    assert_eq!(page["messages"][0], second);
    assert_eq!(page["messages"][1], message);
    assert_eq!(page["next_before"], message["message_id"]);

    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_message_reaches_members_on_both_gateways_and_nobody_else() {
    message_reaches_members_on_both_gateways_and_nobody_else(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_message_reaches_members_on_both_gateways_and_nobody_else() {
    message_reaches_members_on_both_gateways_and_nobody_else(Backends::External).await;
}

/// The single public origin routes like the ingress: `/api/*` with the
/// prefix stripped, and `/gateway/ws`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_origin_serves_rest_and_the_gateway() {
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let a = t.user("alice").await;
    let (guild, channel) = t.guild_with_channel(&a, "private").await;
    let url = format!(
        "ws://{}/gateway/ws?access_token={}",
        t.stack.public_addr, a.token
    );
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connects");
    let mut socket = support::Socket {
        ws,
        hide_presence: true,
    };
    assert_eq!(socket.next_event().await["t"], "ready");
    socket.subscribed(&guild, &channel).await;
    let (status, health) = t.get("/health", None).await;
    assert_eq!((status, health), (200, json!({"status": "ok"})));
    t.stack.stop().await.expect("clean shutdown");
}

/// Shutdown sends every socket a close frame and drains cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_sockets_with_going_away() {
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let a = t.user("alice").await;
    let mut socket = t.connect(0, &a).await;
    let stopping = tokio::spawn(t.stack.stop());
    assert_eq!(
        socket.next_close().await,
        (1001, "server_shutdown".to_owned())
    );
    tokio::time::timeout(support::DEADLINE, stopping)
        .await
        .expect("stops within the deadline")
        .expect("no panic")
        .expect("clean shutdown");
}
