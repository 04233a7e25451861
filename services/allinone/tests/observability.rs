//! What an operator runs on: JSON logs that never carry a secret, one
//! trace id followed from a REST post to the gateway's delivery, gRPC
//! reflection on every gRPC server, and the Prometheus series of every
//! service after a scripted scenario.

mod support;

use std::collections::HashSet;
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
/// The trace the REST post continues.
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
/// The trace the search continues.
const SEARCH_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SEARCH_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The `filament` binary with JSON logs at debug, and everything it wrote.
struct JsonFilament {
    child: tokio::process::Child,
    origin: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl JsonFilament {
    async fn start() -> Self {
        Self::start_with(&[]).await
    }

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
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn filament");
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
            _dir: dir,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    async fn stop(mut self) -> Vec<String> {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        // Let the reader take what was still in the pipe.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.lines()
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
    let filament = JsonFilament::start().await;
    let client = Client {
        http: reqwest::Client::new(),
        origin: filament.origin,
    };
    let mut secrets = Secrets::default();
    secrets.add("the token secret", TOKEN_SECRET);
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
    let lines = filament.stop().await;

    assert!(lines.len() > 20, "too few log lines: {lines:?}");
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

#[tokio::test]
async fn every_service_exports_its_series_after_a_post_a_subscribe_and_a_search() {
    let Some(t) = TestStack::start(Backends::Embedded, 1).await else {
        return;
    };
    let owner = t.user("metrics").await;
    let (guild_id, channel_id) = t.guild_with_channel(&owner, "private").await;
    let mut socket = t.connect(0, &owner).await;
    socket.subscribed(&guild_id, &channel_id).await;
    let (status, _) = t
        .post(
            &format!("/guilds/{guild_id}/channels/{channel_id}/messages"),
            Some(&owner.token),
            json!({"content": "a measurable kitten"}),
        )
        .await;
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
    assert_eq!(status, 404);
    assert_eq!(
        body,
        serde_json::json!({"error": "not_found"}),
        "a clear error"
    );

    let http = reqwest::Client::new();
    let stack = &t.stack;
    let api = scrape(&http, stack.api_admin_addr, "api").await;
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
    assert!(
        sample(&presence, "filament_presence_sessions ").is_some_and(|n| n >= 1.0),
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
    t.stack.stop().await.expect("clean stop");
}
