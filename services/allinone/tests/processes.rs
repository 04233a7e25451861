//! The api and a gateway as separate OS processes, from their own binaries
//! (`filament-api`, `filament-gateway`), configured only through the
//! environment as a deployment configures them, sharing the Redis of
//! `TEST_REDIS_URL` under a key prefix of their own. One `traceparent`
//! sent with a REST post is followed through both processes' JSON logs:
//! the api's request span and the gateway's delivery of the event. A
//! second, on a channel's deletion, goes there and back: the access change
//! the gateway applies on that trace asks the api again about the socket's
//! subscription, and the api's gRPC span of that call holds the trace.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use support::DEADLINE;
use tokio::process::Child;
use tokio_tungstenite::tungstenite::Message;

const TOKEN_SECRET: &str = "a-secret-the-two-processes-share-of-32-bytes";
const INTERNAL_TOKEN: &str = "a-test-internal-service-token-of-32-bytes-or-more";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// The trace of the channel deletion.
const DELETE_TRACE_ID: &str = "5ce0e9a56015fec5aadfa328ae398115";
const DELETE_TRACEPARENT: &str = "00-5ce0e9a56015fec5aadfa328ae398115-ab42124a3c573678-01";

/// A service process and everything it logged so far (tracing writes JSON
/// lines to stdout).
struct Service {
    _child: Child,
    lines: support::JsonLog,
}

impl Service {
    fn spawn(binary: PathBuf, env: &[(&str, String)]) -> Self {
        let (child, lines) = support::spawn_logged(&binary, "debug", env);
        Self {
            _child: child,
            lines,
        }
    }

    /// The first log entry `matches` accepts, waiting for it.
    async fn logged(&self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(entry) = self
                .lines
                .lock()
                .expect("lines")
                .iter()
                .find(|e| matches(e))
            {
                return entry.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never logged: {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame as JSON; `None` on a close, an error or the deadline.
async fn next(ws: &mut Ws) -> Option<Value> {
    loop {
        match tokio::time::timeout(DEADLINE, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return serde_json::from_str(&text).ok(),
            Ok(Some(Ok(_))) => {}
            _ => return None,
        }
    }
}

fn message_is(entry: &Value, message: &str) -> bool {
    entry["fields"]["message"] == message
}

fn on_trace(entry: &Value) -> bool {
    on(entry, TRACE_ID)
}

/// Whether `entry` was logged inside a span of the trace `trace_id`.
fn on(entry: &Value, trace_id: &str) -> bool {
    let in_span = |span: &Value| span["trace_id"].as_str() == Some(trace_id);
    in_span(&entry["span"])
        || entry["spans"]
            .as_array()
            .is_some_and(|spans| spans.iter().any(in_span))
}

/// Whether `entry` was logged inside the api's span of a gRPC call to
/// `method` on the trace `trace_id`.
fn in_grpc_call(entry: &Value, method: &str, trace_id: &str) -> bool {
    entry["spans"].as_array().is_some_and(|spans| {
        spans.iter().any(|span| {
            span["name"] == "grpc_call"
                && span["method"] == method
                && span["trace_id"].as_str() == Some(trace_id)
        })
    })
}

#[tokio::test]
async fn one_trace_runs_from_the_api_process_to_the_gateway_process() {
    let Ok(redis) = std::env::var("TEST_REDIS_URL") else {
        eprintln!("SKIPPED: TEST_REDIS_URL is unset; the two-process trace test was NOT run");
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let prefix = format!("processes-{}:", ulid::Ulid::generate());
    let shared = [
        ("REDIS_URL", redis),
        ("FILAMENT_REGISTRY_PREFIX", prefix),
        ("FILAMENT_TOKEN_SECRET", TOKEN_SECRET.to_owned()),
        // The gateway's calls to the api carry it; the api refuses them
        // without it.
        ("FILAMENT_INTERNAL_TOKEN", INTERNAL_TOKEN.to_owned()),
    ];

    let api = Service::spawn(
        support::workspace_binaries().join("filament-api"),
        &[
            shared.as_slice(),
            &[
                (
                    "DATABASE_URL",
                    format!("sqlite://{}", dir.path().join("api.db").display()),
                ),
                (
                    "FILAMENT_ATTACHMENT_ROOT",
                    dir.path().join("attachments").display().to_string(),
                ),
                ("FILAMENT_API_HTTP_ADDR", "127.0.0.1:0".to_owned()),
                ("FILAMENT_API_GRPC_ADDR", "127.0.0.1:0".to_owned()),
                ("FILAMENT_ARGON2_MEMORY_KIB", "64".to_owned()),
                ("FILAMENT_ARGON2_ITERATIONS", "1".to_owned()),
            ],
        ]
        .concat(),
    );
    let listening = api
        .logged("api listening", |e| message_is(e, "api listening"))
        .await;
    let api_http = listening["fields"]["http"]
        .as_str()
        .expect("http")
        .to_owned();
    let api_grpc = listening["fields"]["grpc"]
        .as_str()
        .expect("grpc")
        .to_owned();

    let gateway = Service::spawn(
        support::workspace_binaries().join("filament-gateway"),
        &[
            shared.as_slice(),
            &[
                ("FILAMENT_API_GRPC_URL", format!("http://{api_grpc}")),
                ("FILAMENT_GATEWAY_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
            ],
        ]
        .concat(),
    );
    let listening = gateway
        .logged("gateway listening", |e| message_is(e, "gateway listening"))
        .await;
    let gateway_addr = listening["fields"]["addr"]
        .as_str()
        .expect("addr")
        .to_owned();

    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let ready = http
            .get(format!("http://{gateway_addr}/readyz"))
            .send()
            .await
            .is_ok_and(|response| response.status().is_success());
        if ready {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gateway never ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let call = |path: &str, token: Option<&str>, body: Value| {
        let request = http.post(format!("http://{api_http}{path}")).json(&body);
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        async move {
            let response = request.send().await.expect("api answers");
            assert!(response.status().is_success(), "{}", response.status());
            response.json::<Value>().await.unwrap_or(Value::Null)
        }
    };
    let credentials = json!({"username": "tracer", "password": "a password of some length"});
    call("/auth/register", None, credentials.clone()).await;
    let token = call("/auth/login", None, credentials).await["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let guild = call("/guilds", Some(&token), json!({"name": "traced"})).await;
    let guild_id = guild["guild_id"].as_str().expect("guild").to_owned();
    let channel = call(
        &format!("/guilds/{guild_id}/channels"),
        Some(&token),
        json!({"name": "general"}),
    )
    .await;
    let channel_id = channel["channel_id"].as_str().expect("channel").to_owned();

    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{gateway_addr}/gateway/ws?access_token={token}"
    ))
    .await
    .expect("socket opens");
    let subscribe =
        json!({"v": 1, "t": "subscribe", "d": {"guild_id": guild_id, "channel_id": channel_id}});
    ws.send(Message::Text(subscribe.to_string().into()))
        .await
        .expect("subscribe sent");
    loop {
        let frame = next(&mut ws).await.expect("frames until subscribed");
        if frame["t"] == "subscribed" {
            break;
        }
    }

    let response = http
        .post(format!(
            "http://{api_http}/guilds/{guild_id}/channels/{channel_id}/messages"
        ))
        .bearer_auth(&token)
        .header("traceparent", TRACEPARENT)
        .json(&json!({"content": "follow me"}))
        .send()
        .await
        .expect("posted");
    assert!(response.status().is_success());
    let message: Value = response.json().await.expect("message");
    loop {
        let frame = next(&mut ws).await.expect("the message arrives");
        if frame["t"] == "message_create" {
            assert_eq!(frame["d"]["message_id"], message["message_id"]);
            break;
        }
    }

    // Process one: the api handled the post on the caller's trace.
    api.logged("the post on the trace", |e| {
        on_trace(e)
            && e["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|span| span["name"] == "http_request"))
    })
    .await;
    // Process two: the gateway delivered its event on the same trace.
    gateway
        .logged("the delivery on the trace", |e| {
            message_is(e, "event delivered") && on_trace(e)
        })
        .await;

    // Deleting another channel of the guild changes access: the gateway
    // asks the api again whether the socket may keep its subscription, on
    // behalf of the deletion, so that call carries the deletion's trace.
    let doomed = call(
        &format!("/guilds/{guild_id}/channels"),
        Some(&token),
        json!({"name": "doomed"}),
    )
    .await;
    let doomed_id = doomed["channel_id"].as_str().expect("channel");
    let response = http
        .delete(format!(
            "http://{api_http}/guilds/{guild_id}/channels/{doomed_id}"
        ))
        .bearer_auth(&token)
        .header("traceparent", DELETE_TRACEPARENT)
        .send()
        .await
        .expect("deleted");
    assert!(response.status().is_success(), "{}", response.status());
    // The gateway's question went back to the api process on that trace
    // (the api's span of the call logs `grpc call answered` at debug).
    api.logged(
        "the gateway's AuthorizeSubscribe on the deletion's trace",
        |e| {
            in_grpc_call(
                e,
                "/filament.v1.EdgeAccess/AuthorizeSubscribe",
                DELETE_TRACE_ID,
            )
        },
    )
    .await;
}
