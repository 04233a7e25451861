//! Realtime delivery through faults the test injects itself, on a Redis
//! server it starts, kills and restarts on its own port (never the
//! machine's shared Redis).
//!
//! A Redis restarted empty forgets which gateway holds which guild. The
//! registry's epoch makes that loss visible: until every gateway has held
//! its guilds again, lookups answer "recovering" and producers send to
//! every gateway, so no message posted after the restart is dropped.

mod support;

use std::net::TcpListener as StdTcpListener;
use std::process::Stdio;
use std::time::Duration;

use filament_allinone::RegistryChoice;
use serde_json::json;
use support::{Backends, DEADLINE, Socket, TestStack};
use tokio::process::{Child, Command};

/// A `redis-server` of this test's own, with nothing on disk.
struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    async fn start() -> Option<Self> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .await
            .is_err()
        {
            eprintln!("SKIPPED: no redis-server on PATH; the Redis fault tests were NOT run");
            return None;
        }
        let port = StdTcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut server = Self { port, child: None };
        server.spawn().await;
        Some(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).expect("redis url");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis never answered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, then a new, empty server on the same port.
    async fn restart_empty(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().expect("kill redis");
            child.wait().await.expect("redis exits");
        }
        self.spawn().await;
    }
}

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

#[tokio::test]
async fn a_redis_restarted_empty_drops_no_message() {
    let _ = filament_runtime::telemetry::init();
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let url = redis.url();
    let stack = TestStack::start_with(Backends::Embedded, 2, move |config| {
        config.registry = RegistryChoice::Redis {
            url,
            key_prefix: "faults:".to_owned(),
        };
        // A heartbeat every second.
        config.registry_ttl = Duration::from_secs(3);
    })
    .await
    .expect("embedded stack on our redis");

    let owner = stack.user("owner").await;
    let (guild_id, channel_id) = stack.guild_with_channel(&owner, "public").await;
    let mut members = vec![owner.clone()];
    for name in ["ann", "bob", "cat"] {
        let member = stack.user(name).await;
        stack.join(&member, &guild_id).await;
        members.push(member);
    }
    // Two sockets on each gateway.
    let mut sockets = Vec::new();
    for (n, member) in members.iter().enumerate() {
        let mut socket = stack.connect(n % 2, member).await;
        socket.subscribed(&guild_id, &channel_id).await;
        sockets.push(socket);
    }
    let post = |content: String| {
        let stack = &stack;
        let owner = &owner;
        let path = format!("/guilds/{guild_id}/channels/{channel_id}/messages");
        async move {
            let (status, body) = stack
                .post(&path, Some(&owner.token), json!({ "content": content }))
                .await;
            assert_eq!(status, 200, "{body}");
            body["message_id"].as_str().expect("message id").to_owned()
        }
    };
    let before = post("before the restart".to_owned()).await;
    for socket in &mut sockets {
        receive_message(socket, &before, &mut 0)
            .await
            .expect("delivered");
    }

    redis.restart_empty().await;
    // Posted at once, before any gateway heartbeated into the new Redis,
    // and on through the gateways' recovery.
    let mut posted = Vec::new();
    for i in 0..12 {
        posted.push(post(format!("after the restart {i}")).await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let mut resyncs = 0;
    for (n, socket) in sockets.iter_mut().enumerate() {
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
