//! Realtime delivery through faults the test injects itself, on a Redis
//! server it starts, kills and restarts on its own port (never the
//! machine's shared Redis).
//!
//! A Redis restarted empty forgets which gateway holds which guild. The
//! registry's epoch makes that loss visible: until every gateway has held
//! its guilds again, lookups answer "recovering" and producers send to
//! every gateway, so no message posted after the restart is dropped.

#[path = "support/redis_server.rs"]
mod redis_server;
mod support;

use std::sync::Arc;
use std::time::Duration;

use filament_allinone::RegistryChoice;
use redis_server::RedisServer;
use serde_json::json;
use support::{Backends, DEADLINE, Socket, TestStack, User};

/// Waits for the `message_create` of `message_id`, skipping anything else
/// but counting `presence_sync`s into `presence_syncs`; `Err` with the
/// close code if the socket was closed instead.
async fn receive_message(
    socket: &mut Socket,
    message_id: &str,
    presence_syncs: &mut usize,
) -> Result<(), u16> {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let frame = tokio::time::timeout(DEADLINE, socket.ws.next())
            .await
            .unwrap_or_else(|_| panic!("neither {message_id} nor a close arrived"));
        match frame {
            Some(Ok(Message::Text(text))) => {
                let event: serde_json::Value = serde_json::from_str(&text).expect("json");
                if event["t"] == "message_create" && event["d"]["message_id"] == message_id {
                    return Ok(());
                }
                if event["t"] == "presence_sync" {
                    *presence_syncs += 1;
                }
            }
            Some(Ok(Message::Close(close))) => {
                return Err(close.map_or(1005, |close| close.code.into()));
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return Err(1006),
        }
    }
}

/// A stack of two gateways on `redis` (keys under `prefix`), and a public
/// guild whose owner and members `names` joined; everyone but the last
/// `spare` members has a socket subscribed to its channel, alternating
/// between the gateways.
struct Scene {
    stack: TestStack,
    owner: User,
    guild_id: String,
    channel_id: String,
    sockets: Vec<Socket>,
    spare: Vec<User>,
}

impl Scene {
    async fn start(
        redis: &RedisServer,
        prefix: &str,
        registry_ttl: Duration,
        names: &[&str],
        spare: usize,
    ) -> Self {
        let (url, key_prefix) = (redis.url(), prefix.to_owned());
        let stack = TestStack::start_with(Backends::Embedded, 2, move |config| {
            config.registry = RegistryChoice::Redis { url, key_prefix };
            config.registry_ttl = registry_ttl;
        })
        .await
        .expect("embedded stack on our redis");
        let owner = stack.user("owner").await;
        let (guild_id, channel_id) = stack.guild_with_channel(&owner, "public").await;
        let mut members = vec![owner.clone()];
        for name in names {
            let member = stack.user(name).await;
            stack.join(&member, &guild_id).await;
            members.push(member);
        }
        let spare = members.split_off(members.len() - spare);
        let mut sockets = Vec::new();
        for (n, member) in members.iter().enumerate() {
            let mut socket = stack.connect(n % 2, member).await;
            socket.subscribed(&guild_id, &channel_id).await;
            sockets.push(socket);
        }
        Self {
            stack,
            owner,
            guild_id,
            channel_id,
            sockets,
            spare,
        }
    }

    /// Posts as the owner, which must succeed; the message id.
    async fn posted(&self, content: &str) -> String {
        let (status, body, _) = self.post(content).await;
        assert_eq!(status, 200, "{body}");
        body["message_id"].as_str().expect("message id").to_owned()
    }

    /// Posts as the owner; the status, the body and how long it took.
    async fn post(&self, content: &str) -> (u16, serde_json::Value, Duration) {
        let path = format!(
            "/guilds/{}/channels/{}/messages",
            self.guild_id, self.channel_id
        );
        let started = tokio::time::Instant::now();
        let (status, body) = self
            .stack
            .post(
                &path,
                Some(&self.owner.token),
                json!({ "content": content }),
            )
            .await;
        (status, body, started.elapsed())
    }
}

#[tokio::test]
async fn a_redis_restarted_empty_drops_no_message() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    // A heartbeat every second.
    let mut scene = Scene::start(
        &redis,
        "faults:",
        Duration::from_secs(3),
        &["ann", "bob", "cat"],
        0,
    )
    .await;
    let before = scene.posted("before the restart").await;
    for socket in &mut scene.sockets {
        receive_message(socket, &before, &mut 0)
            .await
            .expect("delivered");
    }

    redis.restart_empty().await;
    // Posted at once, before any gateway heartbeated into the new Redis,
    // and on through the gateways' recovery.
    let mut posted = Vec::new();
    for i in 0..12 {
        posted.push(scene.posted(&format!("after the restart {i}")).await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let mut resyncs = 0;
    for (n, socket) in scene.sockets.iter_mut().enumerate() {
        let mut presence_syncs = 0;
        for message_id in &posted {
            match receive_message(socket, message_id, &mut presence_syncs).await {
                Ok(()) => {}
                Err(code) => {
                    // Told to resynchronise is not stale, but this fault
                    // should cost nobody a reconnect.
                    assert_eq!(code, 4011, "socket {n} closed with {code}");
                    resyncs += 1;
                    break;
                }
            }
        }
        // Presence lived in the same Redis and forgot every socket: each
        // was reported again and got a fresh snapshot instead of a close.
        assert!(presence_syncs > 0, "socket {n} got no fresh presence_sync");
    }
    assert_eq!(resyncs, 0, "sockets resynchronised after a short restart");
}

/// How long one REST call may take while a dependency is down. A
/// correctness bound (the call must not hang on Redis), not a benchmark.
const DEGRADED_CALL_BOUND: Duration = Duration::from_secs(2);

#[tokio::test]
async fn posting_and_connecting_go_on_while_redis_is_down() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    // Longer than the outage below: a gateway whose liveness lapsed
    // resynchronises its sockets (4011), which is not what this tests.
    let names = ["ann", "bob", "cat", "dan"];
    let mut scene = Scene::start(&redis, "down:", Duration::from_secs(20), &names, 1).await;
    let late = scene.spare.pop().expect("dan connects while redis is down");
    let mut sockets = std::mem::take(&mut scene.sockets);
    let post = |content: String| {
        let scene = &scene;
        async move {
            let (status, body, took) = scene.post(&content).await;
            assert_eq!(status, 200, "{body}");
            assert!(
                took < DEGRADED_CALL_BOUND,
                "a post took {took:?} with redis down"
            );
            (
                body["message_id"].as_str().expect("message id").to_owned(),
                took,
            )
        }
    };
    let (before, _) = post("before the outage".to_owned()).await;
    for socket in &mut sockets {
        receive_message(socket, &before, &mut 0)
            .await
            .expect("delivered");
    }

    redis.stop().await;
    let outage = tokio::time::Instant::now();
    let mut posted = Vec::new();
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let (id, took) = post(format!("while redis is down {i}")).await;
        posted.push(id);
        slowest = slowest.max(took);
    }
    eprintln!("10 posts with redis down: slowest {slowest:?}");
    // Delivered to every subscribed socket: producers send to every
    // gateway while the registry fails.
    for (n, socket) in sockets.iter_mut().enumerate() {
        for message_id in &posted {
            receive_message(socket, message_id, &mut 0)
                .await
                .unwrap_or_else(|code| {
                    panic!("socket {n} closed with {code} while redis was down")
                });
        }
    }
    // A new socket connects and subscribes: neither needs Redis. (The
    // voice roster does: it lives in the same Redis, so the subscribe is
    // answered without one.)
    let mut newcomer = scene.stack.connect(0, &late).await;
    newcomer.subscribe(&scene.guild_id, &scene.channel_id).await;
    let ack = newcomer.next_event().await;
    assert_eq!(ack["t"], "subscribed", "{ack}");
    sockets.push(newcomer);
    let (id, _) = post("to the newcomer too".to_owned()).await;
    for (n, socket) in sockets.iter_mut().enumerate() {
        receive_message(socket, &id, &mut 0)
            .await
            .unwrap_or_else(|code| panic!("socket {n} closed with {code} while redis was down"));
    }
    assert!(
        outage.elapsed() < Duration::from_secs(20),
        "the outage outlasted the registry TTL; the test proves less than it says"
    );

    redis.start_again().await;
    // The registry learns again which gateways hold the guild: both do.
    let inspect = redis::Client::open(redis.url()).expect("redis url");
    let mut conn = inspect
        .get_multiplexed_async_connection()
        .await
        .expect("our redis answers");
    let holders_key = format!("down:guild:{}", scene.guild_id);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let holders: usize = redis::cmd("SCARD")
            .arg(&holders_key)
            .query_async(&mut conn)
            .await
            .expect("scard");
        if holders == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateways never held the guild again ({holders} of 2)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut after = Vec::new();
    for i in 0..5 {
        after.push(post(format!("after redis came back {i}")).await.0);
    }
    for (n, socket) in sockets.iter_mut().enumerate() {
        for message_id in &after {
            receive_message(socket, message_id, &mut 0)
                .await
                .unwrap_or_else(|code| {
                    panic!("socket {n} closed with {code} after redis came back")
                });
        }
    }
}

/// A messages table locked by someone else: the post is refused 503 with
/// `retry-after` well before the REST timeout, and writes nothing.
#[tokio::test]
async fn a_locked_messages_table_answers_503_and_writes_nothing() {
    use sqlx::Connection as _;

    let Ok(pg) = std::env::var("TEST_DATABASE_URL") else {
        eprintln!("SKIPPED: TEST_DATABASE_URL is unset; the Postgres lock test was NOT run");
        return;
    };
    let schema = format!("e2e_{}", ulid::Ulid::generate().to_string().to_lowercase());
    let limits = filament_api::store::DatabaseLimits {
        acquire_timeout: Duration::from_secs(1),
        statement_timeout: Duration::from_secs(1),
    };
    let store: Arc<dyn filament_api::store::Store> = Arc::new(
        filament_api::store::PostgresStore::connect_in_schema_with(&pg, &schema, limits)
            .await
            .expect("postgres schema"),
    );
    let stack = TestStack::start_with(Backends::Embedded, 1, move |config| {
        config.store = Some(store);
    })
    .await
    .expect("stack on our postgres schema");
    let owner = stack.user("owner").await;
    let (guild_id, channel_id) = stack.guild_with_channel(&owner, "public").await;
    let path = format!("/guilds/{guild_id}/channels/{channel_id}/messages");
    let (status, body) = stack
        .post(
            &path,
            Some(&owner.token),
            json!({ "content": "before the lock" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let mut locker = sqlx::PgConnection::connect(&pg)
        .await
        .expect("a connection");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET search_path TO \"{schema}\""
    )))
    .execute(&mut locker)
    .await
    .expect("search path");
    let mut lock = locker.begin().await.expect("begin");
    sqlx::query("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("lock");

    let started = tokio::time::Instant::now();
    let response = stack
        .http
        .post(stack.api(&path))
        .bearer_auth(&owner.token)
        .json(&json!({ "content": "during the lock" }))
        .send()
        .await
        .expect("an answer");
    let took = started.elapsed();
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").cloned();
    let body: serde_json::Value = response.json().await.expect("json body");
    eprintln!("a post against a locked table answered {status} in {took:?}");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body, json!({ "error": "unavailable" }));
    assert!(retry_after.is_some(), "503 without retry-after");
    assert!(
        took < Duration::from_secs(5),
        "the 503 took {took:?}: the REST timeout is 10 s"
    );

    lock.rollback().await.expect("unlock");
    let (status, history) = stack.get(&path, Some(&owner.token)).await;
    assert_eq!(status, 200, "{history}");
    let history = history.to_string();
    assert!(history.contains("before the lock"), "{history}");
    assert!(
        !history.contains("during the lock"),
        "a refused post left a message: {history}"
    );
    let (status, body) = stack
        .post(
            &path,
            Some(&owner.token),
            json!({ "content": "after the lock" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    drop(stack);
    let drop_schema = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
    let _ = sqlx::query(sqlx::AssertSqlSafe(drop_schema))
        .execute(&mut locker)
        .await;
}
