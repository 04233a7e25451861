//! What an operator runs on: JSON logs that never carry a secret, one
//! trace id followed from a REST post to the gateway's delivery, gRPC
//! reflection on every gRPC server, and the Prometheus series of every
//! service after a scripted scenario.

mod support;

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use serde_json::{Value, json};
use support::{Backends, DEADLINE, PASSWORD, TestStack};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;

/// The token secret the binary is started with; it must never be logged.
const TOKEN_SECRET: &str = "an-observability-test-secret-that-is-long-enough";
/// The service secret of the internal gRPC calls, set explicitly.
const INTERNAL_TOKEN: &str = "an-observability-internal-token-of-32-bytes-plus";
/// The LiveKit key pair voice signs tokens with.
const LIVEKIT_KEY: &str = "APIobservabilitykey";
const LIVEKIT_SECRET: &str = "an-observability-livekit-secret-of-32-bytes-plus";
/// The trace the REST post continues.
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
/// The trace the search continues.
const SEARCH_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SEARCH_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The `filament` binary with JSON logs at debug, and everything it wrote
/// to stdout (its logs) and stderr.
struct JsonFilament {
    child: tokio::process::Child,
    origin: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

/// Collects every line `from` writes, until it closes.
fn drain(from: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let mut reader = BufReader::new(from).lines();
    tokio::spawn({
        let lines = Arc::clone(&lines);
        async move {
            while let Ok(Some(line)) = reader.next_line().await {
                lines.lock().expect("lines").push(line);
            }
        }
    });
    lines
}

impl JsonFilament {
    /// Started with `extra` variables besides the usual ones.
    async fn start_with(extra: &[(&str, String)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut command = Command::new(env!("CARGO_BIN_EXE_filament"));
        for (name, value) in extra {
            command.env(name, value);
        }
        let mut child = command
            .env("FILAMENT_PUBLIC_ADDR", "127.0.0.1:0")
            .env("FILAMENT_DATA_DIR", dir.path())
            .env("FILAMENT_ARGON2_MEMORY_KIB", "1024")
            .env("FILAMENT_ARGON2_ITERATIONS", "1")
            .env("FILAMENT_TOKEN_SECRET", TOKEN_SECRET)
            .env("FILAMENT_LOG_FORMAT", "json")
            .env("RUST_LOG", "debug")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn filament");
        let stderr = drain(child.stderr.take().expect("stderr"));
        let mut reader = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let origin = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = reader.next_line().await.expect("stdout") {
                lines.lock().expect("lines").push(line.clone());
                let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if let Some(url) = entry["fields"]["web_clients"].as_str() {
                    return url
                        .strip_prefix("http://")
                        .expect("http origin")
                        .parse::<SocketAddr>()
                        .expect("origin address");
                }
            }
            panic!("filament exited before announcing its origin");
        })
        .await
        .expect("filament announced its origin");
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn({
            let lines = Arc::clone(&lines);
            async move {
                while let Ok(Some(line)) = reader.next_line().await {
                    lines.lock().expect("lines").push(line);
                }
            }
        });
        Self {
            child,
            origin,
            lines,
            stderr,
            _dir: dir,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// Stops the binary; its stdout and its stderr lines.
    async fn stop(mut self) -> (Vec<String>, Vec<String>) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        // Let the readers take what was still in the pipes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let stderr = self.stderr.lock().expect("stderr").clone();
        (self.lines(), stderr)
    }

    /// Stops the binary as Kubernetes does (SIGTERM) and waits for it to
    /// drain and exit on its own.
    async fn terminate(mut self) {
        let pid = self.child.id().expect("running");
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .expect("kill runs");
        assert!(sent.success());
        let exited = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("filament exits after SIGTERM")
            .expect("exit status");
        assert!(exited.success(), "{exited}");
    }
}

struct Client {
    http: reqwest::Client,
    origin: SocketAddr,
}

impl Client {
    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.send(
            self.http
                .post(format!("http://{}/api{path}", self.origin))
                .json(&body),
            token,
        )
        .await
    }

    async fn send(&self, request: reqwest::RequestBuilder, token: Option<&str>) -> (u16, Value) {
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// Secrets the scenario handled: none may appear in any log line.
#[derive(Default)]
struct Secrets(Vec<(&'static str, String)>);

impl Secrets {
    fn add(&mut self, what: &'static str, value: &str) {
        assert!(!value.is_empty(), "{what} is empty");
        self.0.push((what, value.to_owned()));
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON text frame.
async fn next_frame(ws: &mut Ws) -> Value {
    loop {
        let frame = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("readable");
        if let Message::Text(text) = frame {
            return serde_json::from_str(&text).expect("json frame");
        }
    }
}

fn span_has_trace(entry: &Value, trace_id: &str) -> bool {
    let in_span = |span: &Value| span["trace_id"].as_str() == Some(trace_id);
    in_span(&entry["span"])
        || entry["spans"]
            .as_array()
            .is_some_and(|spans| spans.iter().any(in_span))
}

#[tokio::test]
async fn json_logs_hold_no_secret_and_follow_one_trace_to_the_gateway() {
    let filament = JsonFilament::start_with(&[
        ("FILAMENT_INTERNAL_TOKEN", INTERNAL_TOKEN.to_owned()),
        ("FILAMENT_LIVEKIT_API_KEY", LIVEKIT_KEY.to_owned()),
        ("FILAMENT_LIVEKIT_API_SECRET", LIVEKIT_SECRET.to_owned()),
    ])
    .await;
    let client = Client {
        http: reqwest::Client::new(),
        origin: filament.origin,
    };
    let mut secrets = Secrets::default();
    secrets.add("the token secret", TOKEN_SECRET);
    secrets.add("the internal service token", INTERNAL_TOKEN);
    secrets.add("the LiveKit API key", LIVEKIT_KEY);
    secrets.add("the LiveKit API secret", LIVEKIT_SECRET);
    secrets.add("the password", PASSWORD);

    let username = format!("obs_{}", &ulid::Ulid::generate().to_string()[20..]).to_lowercase();
    let credentials = json!({"username": username, "password": PASSWORD});
    let (status, _) = client
        .post("/auth/register", None, credentials.clone())
        .await;
    assert_eq!(status, 200);
    let (status, login) = client.post("/auth/login", None, credentials).await;
    assert_eq!(status, 200, "{login}");
    secrets.add(
        "the first access token",
        login["access_token"].as_str().expect("access"),
    );
    secrets.add(
        "the first refresh token",
        login["refresh_token"].as_str().expect("refresh"),
    );
    let (status, refreshed) = client
        .post(
            "/auth/refresh",
            None,
            json!({"refresh_token": login["refresh_token"]}),
        )
        .await;
    assert_eq!(status, 200, "{refreshed}");
    let token = refreshed["access_token"]
        .as_str()
        .expect("access")
        .to_owned();
    let refresh = refreshed["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    secrets.add("the second access token", &token);
    secrets.add("the second refresh token", &refresh);

    let (status, guild) = client
        .post(
            "/guilds",
            Some(&token),
            json!({"name": "Observed", "visibility": "private"}),
        )
        .await;
    assert_eq!(status, 200, "{guild}");
    let guild_id = guild["guild_id"].as_str().expect("guild").to_owned();
    let (status, channel) = client
        .post(
            &format!("/guilds/{guild_id}/channels"),
            Some(&token),
            json!({"name": "general"}),
        )
        .await;
    assert_eq!(status, 200, "{channel}");
    let channel_id = channel["channel_id"].as_str().expect("channel").to_owned();
    // A voice token, signed with the LiveKit secret and naming the key.
    let (status, voice) = client
        .post(
            &format!("/guilds/{guild_id}/channels"),
            Some(&token),
            json!({"name": "lounge", "kind": "voice"}),
        )
        .await;
    assert_eq!(status, 200, "{voice}");
    let (status, seat) = client
        .post(
            &format!(
                "/guilds/{guild_id}/channels/{}/voice/token",
                voice["channel_id"].as_str().expect("voice channel")
            ),
            Some(&token),
            json!({"can_subscribe": true, "publish_sources": ["microphone"]}),
        )
        .await;
    assert_eq!(status, 200, "{seat}");
    secrets.add(
        "the voice token",
        seat["token"].as_str().expect("voice token"),
    );

    // The token in the query string, as web clients send it.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/gateway/ws?access_token={token}",
        filament.origin
    ))
    .await
    .expect("ws connects");
    assert_eq!(next_frame(&mut ws).await["t"], "ready");
    ws.send(Message::Text(
        json!({"v": 1, "t": "subscribe", "d": {"guild_id": guild_id, "channel_id": channel_id}})
            .to_string()
            .into(),
    ))
    .await
    .expect("subscribe sent");
    while next_frame(&mut ws).await["t"] != "subscribed" {}

    // The post continues the caller's trace.
    let (status, message) = client
        .send(
            client
                .http
                .post(format!(
                    "http://{}/api/guilds/{guild_id}/channels/{channel_id}/messages",
                    filament.origin
                ))
                .header("traceparent", TRACEPARENT)
                .json(&json!({"content": "traced hello"})),
            Some(&token),
        )
        .await;
    assert_eq!(status, 200, "{message}");
    loop {
        let frame = next_frame(&mut ws).await;
        if frame["t"] == "message_create" {
            assert_eq!(frame["d"]["content"], "traced hello");
            break;
        }
    }

    // A search continues another trace into the search service's gRPC span.
    let (status, found) = client
        .send(
            client
                .http
                .get(format!(
                    "http://{}/api/guilds/{guild_id}/search?q=traced",
                    filament.origin
                ))
                .header("traceparent", SEARCH_TRACEPARENT),
            Some(&token),
        )
        .await;
    assert_eq!(status, 200, "{found}");

    let (status, _) = client
        .post("/auth/logout", None, json!({"refresh_token": refresh}))
        .await;
    assert!(status < 300, "logout answered {status}");

    // The delivery is logged after the frame is queued; give the pipe a moment.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let delivered = filament.lines().iter().any(|line| {
            serde_json::from_str::<Value>(line).is_ok_and(|entry| {
                entry["fields"]["message"] == "event delivered" && span_has_trace(&entry, TRACE_ID)
            })
        });
        if delivered || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (lines, stderr) = filament.stop().await;

    assert!(lines.len() > 20, "too few log lines: {lines:?}");
    for line in &stderr {
        for (what, secret) in &secrets.0 {
            assert!(!line.contains(secret.as_str()), "{what} on stderr: {line}");
        }
    }
    let mut entries = Vec::new();
    for line in &lines {
        let entry: Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("a log line that is not JSON ({err}): {line}"));
        assert!(entry.is_object(), "{line}");
        for (what, secret) in &secrets.0 {
            assert!(!line.contains(secret.as_str()), "{what} logged: {line}");
        }
        entries.push(entry);
    }

    // The api's request span holds the caller's trace id and a request id…
    let api_request = entries
        .iter()
        .find(|entry| {
            entry["spans"].as_array().is_some_and(|spans| {
                spans.iter().any(|span| {
                    span["name"] == "http_request"
                        && span["trace_id"] == TRACE_ID
                        && span["route"] == "/guilds/{guild_id}/channels/{channel_id}/messages"
                        && span["request_id"].as_str().is_some_and(|id| !id.is_empty())
                })
            })
        })
        .unwrap_or_else(|| panic!("no api log line in the trace {TRACE_ID}"));
    // …and the gateway logged the delivery of the event it caused under it.
    let delivery = entries
        .iter()
        .find(|entry| {
            entry["fields"]["message"] == "event delivered"
                && entry["fields"]["event_type"] == "message_create"
                && span_has_trace(entry, TRACE_ID)
        })
        .unwrap_or_else(|| panic!("no gateway delivery logged in the trace {TRACE_ID}"));
    assert_ne!(api_request["target"], delivery["target"]);
    // The api's call to search carried the search request's trace.
    entries
        .iter()
        .find(|entry| {
            entry["spans"].as_array().is_some_and(|spans| {
                spans.iter().any(|span| {
                    span["name"] == "grpc_call"
                        && span["method"] == "/filament.v1.Search/Query"
                        && span["trace_id"] == SEARCH_TRACE_ID
                        && span["request_id"].as_str().is_some_and(|id| !id.is_empty())
                })
            })
        })
        .unwrap_or_else(|| panic!("no search gRPC call logged in the trace {SEARCH_TRACE_ID}"));
    assert!(
        delivery["target"]
            .as_str()
            .is_some_and(|target| target.starts_with("filament_gateway")),
        "{delivery}"
    );
}

/// A loopback port nothing listens on (it was free a moment ago).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("free port")
}

#[tokio::test]
async fn passwords_in_connection_urls_never_reach_the_logs_even_when_start_fails() {
    const DATABASE_PASSWORD: &str = "s3cretpw-of-the-database";
    const REDIS_PASSWORD: &str = "s3cretpw-of-the-redis";
    let port = closed_port();
    for (name, url) in [
        (
            "DATABASE_URL",
            format!("postgres://filament:{DATABASE_PASSWORD}@127.0.0.1:{port}/filament"),
        ),
        (
            "REDIS_URL",
            format!("redis://default:{REDIS_PASSWORD}@127.0.0.1:{port}/0"),
        ),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let output = tokio::time::timeout(
            Duration::from_secs(60),
            Command::new(env!("CARGO_BIN_EXE_filament"))
                .env_remove("DATABASE_URL")
                .env_remove("REDIS_URL")
                .env(name, &url)
                .env("FILAMENT_PUBLIC_ADDR", "127.0.0.1:0")
                .env("FILAMENT_DATA_DIR", dir.path())
                .env("FILAMENT_TOKEN_SECRET", TOKEN_SECRET)
                .env("FILAMENT_LOG_FORMAT", "json")
                .env("RUST_LOG", "debug")
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("with nothing at {name} the binary stops"))
        .expect("ran");
        assert!(!output.status.success(), "{name}: started against nothing");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        // It said why it stopped…
        assert!(!stderr.trim().is_empty(), "{name}: a silent failure");
        // …without the password, in the logs or the error.
        for (stream, text) in [("stdout", &stdout), ("stderr", &stderr)] {
            for password in [DATABASE_PASSWORD, REDIS_PASSWORD] {
                assert!(
                    !text.contains(password),
                    "{name}'s password on {stream}:\n{text}"
                );
            }
        }
    }
}

#[tokio::test]
async fn an_invalid_log_format_stops_the_binary_naming_the_variable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(env!("CARGO_BIN_EXE_filament"))
            .env("FILAMENT_PUBLIC_ADDR", "127.0.0.1:0")
            .env("FILAMENT_DATA_DIR", dir.path())
            .env("FILAMENT_LOG_FORMAT", "xml")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the binary stops at once")
    .expect("ran");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("FILAMENT_LOG_FORMAT=\"xml\" is invalid"),
        "{stderr}"
    );
}

/// An OTLP collector that passes on every trace export it receives.
struct FakeCollector(tokio::sync::mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for FakeCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// `(service.name, span name, trace id as hex)` of every exported span.
fn exported_spans(export: &ExportTraceServiceRequest) -> Vec<(String, String, String)> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
    export
        .resource_spans
        .iter()
        .flat_map(|resource_spans| {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|attribute| attribute.key == "service.name")
                .and_then(|attribute| attribute.value.as_ref()?.value.as_ref())
                .and_then(|value| match value {
                    AnyValue::StringValue(name) => Some(name.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            resource_spans
                .scope_spans
                .iter()
                .flat_map(|scope| &scope.spans)
                .map(move |span| {
                    let trace_id = span.trace_id.iter().fold(String::new(), |mut hex, b| {
                        hex.push_str(&format!("{b:02x}"));
                        hex
                    });
                    (service.clone(), span.name.clone(), trace_id)
                })
        })
        .collect()
}

#[tokio::test]
async fn spans_are_exported_over_otlp_with_the_request_trace_and_flushed_at_sigterm() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let collector = listener.local_addr().expect("addr");
    let (received, mut exports) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(FakeCollector(received)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let filament =
        JsonFilament::start_with(&[("FILAMENT_OTLP_ENDPOINT", format!("http://{collector}"))])
            .await;
    let username = format!("otlp_{}", &ulid::Ulid::generate().to_string()[20..]).to_lowercase();
    let response = reqwest::Client::new()
        .post(format!("http://{}/api/auth/register", filament.origin))
        .header("traceparent", TRACEPARENT)
        .json(&json!({"username": username, "password": PASSWORD}))
        .send()
        .await
        .expect("register");
    assert_eq!(response.status(), 200);
    // Well inside the 5 s batch delay: the span leaves with the flush at
    // shutdown.
    filament.terminate().await;

    let mut spans = Vec::new();
    while let Ok(export) = exports.try_recv() {
        spans.extend(exported_spans(&export));
    }
    assert!(
        spans
            .iter()
            .any(|(service, name, trace_id)| service == "filament"
                && name == "http_request"
                && trace_id == TRACE_ID),
        "no http_request span of trace {TRACE_ID} from service filament in {spans:?}"
    );
}

/// Lists the services of the gRPC server at `addr` through reflection.
async fn reflected_services(addr: SocketAddr) -> HashSet<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("reflection client connects");
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection answers")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("a response")
        .expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("not a service list: {response:?}");
    };
    list.service
        .into_iter()
        .map(|service| service.name)
        .collect()
}

#[tokio::test]
async fn every_grpc_server_lists_its_services_through_reflection() {
    let Some(t) = TestStack::start(Backends::Embedded, 1).await else {
        return;
    };
    let stack = &t.stack;
    for (server, addr, own) in [
        ("api", stack.api_grpc_addr, "filament.v1.EdgeAccess"),
        ("presence", stack.presence_grpc_addr, "filament.v1.Presence"),
        ("voice", stack.voice_grpc_addr, "filament.v1.Voice"),
        ("search", stack.search_grpc_addr, "filament.v1.Search"),
    ] {
        let services = reflected_services(addr).await;
        for expected in [
            own,
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
        ] {
            assert!(
                services.contains(expected),
                "{server} does not list {expected}: {services:?}"
            );
        }
    }
    t.stack.stop().await.expect("clean stop");
}

async fn scrape(http: &reqwest::Client, addr: Option<SocketAddr>, service: &str) -> String {
    let addr = addr.unwrap_or_else(|| panic!("{service} has an admin listener"));
    let response = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status(), 200, "{service}");
    response.text().await.expect("metrics text")
}

/// The value of the first sample whose line starts with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// The sum of every sample whose line starts with `prefix`.
fn total(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next())
        .filter_map(|value| value.parse::<f64>().ok())
        .sum()
}

/// The metric names a scrape exports, as docs/OPERATIONS.md names them: a
/// counter by its samples' name (`…_total`), a histogram or a gauge by its
/// family's (without `_bucket`, `_sum`, `_count`).
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| match kind {
            "counter" => format!("{name}_total"),
            _ => name.to_owned(),
        })
        .collect()
}

/// Every metric docs/OPERATIONS.md lists: the first cell of each row of its
/// metric tables.
fn documented_names() -> BTreeSet<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/OPERATIONS.md");
    std::fs::read_to_string(path)
        .expect("docs/OPERATIONS.md")
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`'))
        .map(|(name, _)| name)
        .filter(|name| name.starts_with("filament_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn names_are_read_as_the_doc_writes_them() {
    let text = "# HELP filament_x_events Events.\n# TYPE filament_x_events counter\n\
                filament_x_events_total 1\n# TYPE filament_x_seconds histogram\n\
                filament_x_seconds_count 1\n# TYPE filament_x_open gauge\nfilament_x_open 0\n";
    assert_eq!(
        exported_names(text),
        BTreeSet::from([
            "filament_x_events_total".to_owned(),
            "filament_x_seconds".to_owned(),
            "filament_x_open".to_owned(),
        ])
    );
    let documented = documented_names();
    assert!(
        documented.contains("filament_gateway_closes_total"),
        "{documented:?}"
    );
    assert!(
        documented.contains("filament_grpc_server_duration_seconds"),
        "{documented:?}"
    );
}

#[tokio::test]
async fn every_service_exports_its_series_after_a_post_a_subscribe_and_a_search() {
    let Some(t) = TestStack::start(Backends::Embedded, 1).await else {
        return;
    };
    // REST requests through the api, counted as they are made.
    let mut requests = 0.0;
    // `user`: register, login, me; `guild_with_channel`: two posts.
    let owner = t.user("metrics").await;
    let (guild_id, channel_id) = t.guild_with_channel(&owner, "private").await;
    requests += 5.0;
    let mut socket = t.connect(0, &owner).await;
    socket.subscribed(&guild_id, &channel_id).await;
    let (status, _) = t
        .post(
            &format!("/guilds/{guild_id}/channels/{channel_id}/messages"),
            Some(&owner.token),
            json!({"content": "a measurable kitten"}),
        )
        .await;
    requests += 1.0;
    assert_eq!(status, 200);
    assert_eq!(socket.next_event().await["t"], "message_create");
    // Searchable within the commit interval.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (status, body) = t
            .get(
                &format!("/guilds/{guild_id}/search?q=kitten"),
                Some(&owner.token),
            )
            .await;
        requests += 1.0;
        assert_eq!(status, 200, "{body}");
        if body["message_ids"]
            .as_array()
            .is_some_and(|hits| !hits.is_empty())
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never searchable: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = t.get("/no/such/route", Some(&owner.token)).await;
    requests += 1.0;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        serde_json::json!({"error": "not_found"}),
        "a clear error"
    );

    let http = reqwest::Client::new();
    let stack = &t.stack;
    let api = scrape(&http, stack.api_admin_addr, "api").await;
    // Every request was timed, each well under a minute.
    let timed = total(&api, "filament_api_http_request_duration_seconds_count{");
    assert!(
        timed >= requests,
        "{timed} timed of {requests} made:\n{api}"
    );
    let spent = total(&api, "filament_api_http_request_duration_seconds_sum{");
    assert!(spent > 0.0 && spent < 60.0, "{spent} s in all:\n{api}");
    let message_route = "filament_api_http_request_duration_seconds_count{route=\"/guilds/{guild_id}/channels/{channel_id}/messages\",status=\"2xx\"}";
    assert!(
        sample(&api, message_route).is_some_and(|n| n >= 1.0),
        "{api}"
    );
    assert!(
        sample(
            &api,
            "filament_api_http_request_duration_seconds_count{route=\"unmatched\",status=\"4xx\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{api}"
    );
    // The gateway's Identify and AuthorizeSubscribe, search's feed.
    assert!(
        sample(
            &api,
            "filament_grpc_server_duration_seconds_count{method=\"/filament.v1.EdgeAccess/Identify\",code=\"OK\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{api}"
    );
    assert!(
        total(
            &api,
            "filament_registry_call_duration_seconds_count{operation=\"gateways_for_guild\"}"
        ) >= 1.0,
        "{api}"
    );
    // The api's own gRPC client: the search it asked.
    assert!(
        sample(
            &api,
            "filament_grpc_client_duration_seconds_count{method=\"/filament.v1.Search/Query\",code=\"OK\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{api}"
    );

    let gateway = scrape(&http, stack.gateway_admin_addrs[0], "gateway").await;
    let delivered = sample(&gateway, "filament_gateway_publish_to_deliver_seconds_sum")
        .expect("publish to deliver");
    assert!((0.0..60.0).contains(&delivered), "{gateway}");
    assert_eq!(
        sample(&gateway, "filament_gateway_connections "),
        Some(1.0),
        "one socket:\n{gateway}"
    );
    for series in [
        "filament_gateway_publish_to_deliver_seconds_count",
        "filament_gateway_outbound_queue_depth_count",
        "filament_gateway_write_batch_items_count",
        "filament_registry_call_duration_seconds_count{operation=\"hold_guilds\"}",
        // The gateway's gRPC clients: its questions to the api.
        "filament_grpc_client_duration_seconds_count{method=\"/filament.v1.EdgeAccess/Identify\",code=\"OK\"}",
        "filament_grpc_client_duration_seconds_count{method=\"/filament.v1.EdgeAccess/AuthorizeSubscribe\",code=\"OK\"}",
    ] {
        assert!(
            sample(&gateway, series).is_some_and(|n| n >= 1.0),
            "{series} in\n{gateway}"
        );
    }

    let presence = scrape(&http, stack.presence_admin_addr, "presence").await;
    // The scenario's one socket.
    assert_eq!(
        sample(&presence, "filament_presence_sessions "),
        Some(1.0),
        "{presence}"
    );
    assert!(
        sample(
            &presence,
            "filament_presence_transitions_total{kind=\"online\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{presence}"
    );
    assert!(
        total(
            &presence,
            "filament_grpc_server_duration_seconds_count{method=\"/filament.v1.Presence/"
        ) >= 1.0,
        "{presence}"
    );

    let search = scrape(&http, stack.search_admin_addr, "search").await;
    for series in [
        "filament_search_commit_duration_seconds_count",
        "filament_search_query_duration_seconds_count{outcome=\"ok\"}",
        "filament_search_index_committed_position",
    ] {
        assert!(
            sample(&search, series).is_some_and(|n| n >= 1.0),
            "{series} in\n{search}"
        );
    }
    assert!(
        sample(&search, "filament_search_index_lag").is_some_and(|n| n >= 0.0),
        "{search}"
    );
    // The api's change-log head, which its relay reads about once a
    // second: at least what search committed, so the lag an operator
    // computes from the two is real.
    let committed =
        sample(&search, "filament_search_index_committed_position").expect("a committed position");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let api = scrape(&http, stack.api_admin_addr, "api").await;
        if sample(&api, "filament_api_message_log_head ").is_some_and(|head| head >= committed) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the api never exported a change-log head of at least {committed}:\n{api}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        total(
            &search,
            "filament_grpc_server_duration_seconds_count{method=\"/filament.v1.Search/Query\",code=\"OK\"}"
        ) >= 1.0,
        "{search}"
    );

    let voice = scrape(&http, stack.voice_admin_addr, "voice").await;
    assert!(
        total(
            &voice,
            "filament_grpc_server_duration_seconds_count{method=\"/filament.v1.Voice/"
        ) >= 1.0,
        "{voice}"
    );
    // Its own series: nobody joined voice, no webhook came.
    assert_eq!(
        sample(&voice, "filament_voice_participants "),
        Some(0.0),
        "{voice}"
    );
    assert_eq!(
        sample(&voice, "filament_voice_webhooks_rejected_total "),
        Some(0.0),
        "{voice}"
    );
    t.stack.stop().await.expect("clean stop");

    // docs/OPERATIONS.md lists exactly what the services export.
    let exported: BTreeSet<String> = [&api, &gateway, &presence, &search, &voice]
        .into_iter()
        .flat_map(|text| exported_names(text))
        .collect();
    let documented = documented_names();
    let undocumented: Vec<_> = exported.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in docs/OPERATIONS.md: {undocumented:?}"
    );
    let unexported: Vec<_> = documented.difference(&exported).collect();
    assert!(
        unexported.is_empty(),
        "in docs/OPERATIONS.md but exported by no service: {unexported:?}"
    );
}
