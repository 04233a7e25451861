//! What every Filament gRPC server carries besides its own services: server
//! reflection, so an operator's `grpcurl` can list and call them without
//! the `.proto` files, and one tower layer that times every call into a
//! histogram by method and status code and opens a span holding the
//! caller's trace id (`traceparent` metadata, see [`crate::trace`]).
//!
//! The layer is the one place this is done, so every server reports the
//! same series under the same names. It sits outside the service-token
//! check ([`crate::service_auth`]), so it sees every call, also those of a
//! caller without a token: a call is labelled by its method only when the
//! path is one of the methods the server serves ([`GrpcServerMetrics::serving`]),
//! else [`UNKNOWN_METHOD`], whatever its status, so no caller can mint
//! label values by sending made-up paths.
//!
//! [`server`] puts these, the token check and a health service together,
//! so that every server is built the same way, and [`parse_id`] is how
//! every server reads an id out of a request.

use std::collections::HashSet;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use http_body::{Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tonic::Code;
use tonic::body::Body;
use tonic::transport::server::Router;
use tonic_health::pb::health_server::{Health, HealthServer};
use tower::layer::util::{Identity, Stack};
use tower::{Layer, Service};
use tracing::Instrument as _;

use crate::service_auth::{RequireServiceToken, ServiceToken};
use crate::trace::{REQUEST_ID, TRACEPARENT, TraceContext};

/// Why [`reflection`] could not describe the descriptor sets.
pub use tonic_reflection::server::Error as ReflectionError;

/// `filament_grpc_server_duration_seconds{method,code}`: from the request's
/// arrival to the response's last frame (the trailers). For a streaming
/// method that is the stream's lifetime.
pub const SERVER_DURATION: &str = "filament_grpc_server_duration_seconds";
/// The `method` label of a path the server does not serve (so a caller
/// cannot mint label values by sending made-up paths).
pub const UNKNOWN_METHOD: &str = "unknown";

/// Why the methods of a server could not be listed: a bug in how the
/// server was put together, found at start-up.
#[derive(Debug, thiserror::Error)]
pub enum MethodsError {
    #[error("a gRPC descriptor set does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("no descriptor set describes the gRPC service {0}")]
    UnknownService(String),
}

/// Every `/package.Service/Method` path of the services named in
/// `services` (full names, as `NamedService::NAME` spells them), read from
/// `descriptor_sets` (encoded `FileDescriptorSet`s).
fn methods_of(
    descriptor_sets: &[&[u8]],
    services: &[&str],
) -> Result<HashSet<String>, MethodsError> {
    let mut methods = HashSet::new();
    let mut found = HashSet::new();
    for set in descriptor_sets {
        let set: prost_types::FileDescriptorSet = prost::Message::decode(*set)?;
        for file in &set.file {
            for service in &file.service {
                let name = match file.package() {
                    "" => service.name().to_owned(),
                    package => format!("{package}.{}", service.name()),
                };
                if !services.contains(&name.as_str()) {
                    continue;
                }
                methods.extend(
                    service
                        .method
                        .iter()
                        .map(|method| format!("/{name}/{}", method.name())),
                );
                found.insert(name);
            }
        }
    }
    match services.iter().find(|name| !found.contains(**name)) {
        Some(missing) => Err(MethodsError::UnknownService((*missing).to_owned())),
        None => Ok(methods),
    }
}

/// The health and reflection services every Filament gRPC server carries.
fn builtin_methods() -> Result<HashSet<String>, MethodsError> {
    methods_of(
        &[
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        ],
        &[
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
        ],
    )
}

/// A gRPC reflection service (`grpc.reflection.v1`) describing the
/// services in `descriptor_sets` (encoded `FileDescriptorSet`s), the health
/// service and reflection itself.
pub fn reflection(
    descriptor_sets: &[&'static [u8]],
) -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    ReflectionError,
> {
    descriptor_sets
        .iter()
        .fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |builder, set| builder.register_encoded_file_descriptor_set(set),
        )
        .build_v1()
}

/// The layers of every Filament gRPC server, outermost first: the call
/// metrics, then the service-token check, so refused calls are counted.
pub type ServerLayers = Stack<RequireServiceToken, Stack<GrpcServerLayer, Identity>>;

/// A gRPC server as every Filament process serves one: each call timed into
/// `metrics`, refused without `token` ([`crate::service_auth`]) unless it
/// is for health or reflection, beside the health service `health` and the
/// [`reflection`] of `descriptor_sets`. The caller adds its own services
/// and serves.
pub fn server<H: Health>(
    metrics: &GrpcServerMetrics,
    token: ServiceToken,
    health: HealthServer<H>,
    descriptor_sets: &[&'static [u8]],
) -> Result<Router<ServerLayers>, ReflectionError> {
    Ok(tonic::transport::Server::builder()
        .layer(metrics.layer())
        .layer(RequireServiceToken::new(token))
        .add_service(health)
        .add_service(reflection(descriptor_sets)?))
}

/// Parses the request field `field` into an id type (`filament_ids`'
/// `GuildId`, `UserId`, …, whose `FromStr` accepts only the canonical
/// 26-character uppercase ULID), or refuses the call with
/// `INVALID_ARGUMENT` "`<field>` must be a ULID" before the value reaches a
/// key or a query. The one place a gRPC server turns a wire id into a
/// typed one.
pub fn parse_id<T: FromStr>(field: &'static str, raw: &str) -> Result<T, tonic::Status> {
    raw.parse()
        .map_err(|_| tonic::Status::invalid_argument(format!("{field} must be a ULID")))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct CallLabels {
    /// The gRPC path, `/package.Service/Method`: one value per method a
    /// server implements, or [`UNKNOWN_METHOD`].
    method: String,
    code: &'static str,
}

/// Call durations by method and code: the server's series here, the
/// client's in [`crate::grpc_client`].
pub(crate) type DurationFamily = Family<CallLabels, Histogram, fn() -> Histogram>;

pub(crate) fn duration_family() -> Arc<DurationFamily> {
    // 0.5 ms to ~16 s.
    Arc::new(Family::new_with_constructor(|| {
        Histogram::new(exponential_buckets(0.0005, 2.0, 16))
    }))
}

/// Records one call under `method`, already chosen by the caller (a
/// server's known method or [`UNKNOWN_METHOD`]; a client's own path). A
/// path nobody answers (`UNIMPLEMENTED`) is labelled [`UNKNOWN_METHOD`]
/// too.
pub(crate) fn observe(duration: &DurationFamily, method: &str, code: Code, started: Instant) {
    let method = if code == Code::Unimplemented {
        UNKNOWN_METHOD.to_owned()
    } else {
        method.to_owned()
    };
    duration
        .get_or_create(&CallLabels {
            method,
            code: code_label(code),
        })
        .observe(started.elapsed().as_secs_f64());
}

/// The gRPC server series of one process, and the layer that records them.
/// (No `Default`: a server must say which methods it serves.)
#[derive(Debug, Clone)]
pub struct GrpcServerMetrics {
    duration: Arc<DurationFamily>,
    /// The paths labelled by name; every other path is [`UNKNOWN_METHOD`].
    methods: Arc<HashSet<String>>,
}

impl GrpcServerMetrics {
    /// The series of a server that serves `services` (full names, e.g.
    /// `filament.v1.Search`, as the generated `SERVICE_NAME` constants
    /// spell them), whose methods `descriptor_sets` describe (the sets its
    /// [`reflection`] serves), besides health and reflection. A service no
    /// set describes is an error, not a server whose calls all go
    /// unlabelled.
    pub fn serving(descriptor_sets: &[&[u8]], services: &[&str]) -> Result<Self, MethodsError> {
        let mut methods = builtin_methods()?;
        methods.extend(methods_of(descriptor_sets, services)?);
        Ok(Self {
            duration: duration_family(),
            methods: Arc::new(methods),
        })
    }

    /// The `method` label of a call to `path`.
    fn label(&self, path: &str) -> String {
        if self.methods.contains(path) {
            path.to_owned()
        } else {
            UNKNOWN_METHOD.to_owned()
        }
    }

    /// Registers the series in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            SERVER_DURATION,
            "gRPC calls served, by method and status code, timed to the last frame",
            (*self.duration).clone(),
        );
    }

    /// The tower layer for `tonic::transport::Server::builder().layer(…)`.
    pub fn layer(&self) -> GrpcServerLayer {
        GrpcServerLayer {
            metrics: self.clone(),
        }
    }

    fn observe(&self, method: &str, code: Code, started: Instant) {
        observe(&self.duration, method, code, started);
    }
}

/// The status code as gRPC spells it.
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Times every call and opens its span; see the module docs.
#[derive(Debug, Clone)]
pub struct GrpcServerLayer {
    metrics: GrpcServerMetrics,
}

impl<S> Layer<S> for GrpcServerLayer {
    type Service = GrpcServerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcServerService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcServerService<S> {
    inner: S,
    metrics: GrpcServerMetrics,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S> Service<Request<Body>> for GrpcServerService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let started = Instant::now();
        let path = request.uri().path().to_owned();
        let method = self.metrics.label(&path);
        let trace = request
            .headers()
            .get(TRACEPARENT)
            .and_then(|value| value.to_str().ok())
            .and_then(TraceContext::parse);
        let request_id = request
            .headers()
            .get(REQUEST_ID)
            .and_then(|value| value.to_str().ok())
            .and_then(crate::trace::usable_request_id)
            .map(str::to_owned);
        // The span holds the path as sent: it is a log line, not a series.
        let span = tracing::debug_span!(
            "grpc_call",
            method = %path,
            trace_id = tracing::field::Empty,
            request_id = tracing::field::Empty,
        );
        if let Some(trace) = &trace {
            span.record("trace_id", trace.trace_id());
            crate::trace::set_parent(&span, trace);
        }
        if let Some(request_id) = &request_id {
            span.record("request_id", request_id.as_str());
        }
        // The service that was polled ready is the one to call; a fresh
        // clone takes its place for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = self.metrics.clone();
        let future = inner.call(request);
        Box::pin(
            async move {
                // Events the call publishes, and calls it makes, carry the
                // caller's trace on.
                let response = match trace {
                    Some(trace) => {
                        crate::trace::scope_request(trace, request_id.as_deref(), future).await?
                    }
                    None => future.await?,
                };
                // Inside the call's span: at debug, every call leaves one
                // line with its method and the caller's trace and request.
                let code = header_code(response.headers());
                tracing::debug!(
                    code = code.map_or("in_trailers", code_label),
                    "grpc call answered"
                );
                // A trailers-only response (an error, or an unknown method)
                // carries its status in the headers and has no body to wait
                // for.
                if let Some(code) = code {
                    metrics.observe(&method, code, started);
                    return Ok(response);
                }
                let (parts, body) = response.into_parts();
                let timed = TimedBody::new(body, metrics.duration, method, started);
                Ok(Response::from_parts(parts, Body::new(timed)))
            }
            .instrument(span),
        )
    }
}

pub(crate) fn header_code(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|value| Code::from_bytes(value.as_bytes()))
}

/// A call still to be recorded when its body ends.
struct Pending {
    duration: Arc<DurationFamily>,
    method: String,
    started: Instant,
}

/// A response body that records the call when its trailers pass (or, if
/// the caller goes away first, as cancelled). Servers and clients both
/// wrap their responses in it.
pub(crate) struct TimedBody {
    inner: Body,
    pending: Option<Pending>,
}

impl TimedBody {
    pub(crate) fn new(
        inner: Body,
        duration: Arc<DurationFamily>,
        method: String,
        started: Instant,
    ) -> Self {
        Self {
            inner,
            pending: Some(Pending {
                duration,
                method,
                started,
            }),
        }
    }

    fn finish(&mut self, code: Code) {
        if let Some(pending) = self.pending.take() {
            observe(&pending.duration, &pending.method, code, pending.started);
        }
    }
}

impl http_body::Body for TimedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(header_code) {
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(status))) => {
                let code = status.code();
                self.finish(code);
            }
            // A body that ends without trailers broke the protocol.
            Poll::Ready(None) => self.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TimedBody {
    fn drop(&mut self) {
        // The client went away before the last frame.
        self.finish(Code::Cancelled);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;

    const PROTECTED: &str = "filament.test.Protected";

    /// A descriptor set with one service, `filament.test.Protected`, whose
    /// only method is `Call`.
    fn descriptor_set() -> Vec<u8> {
        use prost_types::{
            FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto, ServiceDescriptorProto,
        };
        prost::Message::encode_to_vec(&FileDescriptorSet {
            file: vec![FileDescriptorProto {
                name: Some("filament/test.proto".into()),
                package: Some("filament.test".into()),
                service: vec![ServiceDescriptorProto {
                    name: Some("Protected".into()),
                    method: vec![MethodDescriptorProto {
                        name: Some("Call".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
    }

    fn scrape(metrics: &GrpcServerMetrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        text
    }

    #[test]
    fn ids_parse_or_are_invalid_arguments_naming_the_field() {
        let id: Result<u32, _> = parse_id("n", "42");
        assert_eq!(id.ok(), Some(42));
        let err = parse_id::<u32>("user_id", "nope").expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(err.message(), "user_id must be a ULID");
    }

    #[test]
    fn reflection_accepts_the_health_descriptors() {
        assert!(reflection(&[]).is_ok());
    }

    #[test]
    fn a_server_knows_its_methods_health_and_reflection_only() {
        let set = descriptor_set();
        let metrics = GrpcServerMetrics::serving(&[&set], &[PROTECTED]).expect("described");
        for known in [
            "/filament.test.Protected/Call",
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(metrics.label(known), known);
        }
        for unknown in [
            "/filament.test.Protected/Other",
            "/filament.test.Protected/Call/",
            "/made.Up/Path",
            "",
        ] {
            assert_eq!(metrics.label(unknown), UNKNOWN_METHOD, "{unknown}");
        }
        // Described but not served: unknown.
        let none = GrpcServerMetrics::serving(&[&set], &[]).expect("nothing to find");
        assert_eq!(none.label("/filament.test.Protected/Call"), UNKNOWN_METHOD);
        // Served but not described: refused at start-up.
        let err = GrpcServerMetrics::serving(&[&set], &["filament.test.Missing"])
            .expect_err("undescribed");
        assert!(err.to_string().contains("filament.test.Missing"), "{err}");
        assert!(GrpcServerMetrics::serving(&[b"\xff\xff"], &[]).is_err());
    }

    #[test]
    fn unimplemented_paths_share_one_label() {
        let set = descriptor_set();
        let metrics = GrpcServerMetrics::serving(&[&set], &[PROTECTED]).expect("described");
        metrics.observe(
            &metrics.label("/made.Up/Path"),
            Code::Unimplemented,
            Instant::now(),
        );
        metrics.observe(
            &metrics.label("/filament.test.Protected/Call"),
            Code::Ok,
            Instant::now(),
        );
        let text = scrape(&metrics);
        assert!(!text.contains("made.Up"), "{text}");
        assert!(
            text.contains(
                "filament_grpc_server_duration_seconds_count{method=\"unknown\",code=\"UNIMPLEMENTED\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("method=\"/filament.test.Protected/Call\",code=\"OK\"} 1"),
            "{text}"
        );
    }

    /// Calls `path` on `channel` with an empty message; the status.
    async fn call(channel: tonic::transport::Channel, path: String) -> Code {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.expect("ready");
        let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckRequest>::default();
        let path = http::uri::PathAndQuery::try_from(path).expect("path");
        match grpc
            .unary(
                tonic::Request::new(HealthCheckRequest::default()),
                path,
                codec,
            )
            .await
        {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        }
    }

    #[tokio::test]
    async fn made_up_paths_without_a_token_share_one_unknown_series() {
        let set = descriptor_set();
        let metrics = GrpcServerMetrics::serving(&[&set], &[PROTECTED]).expect("described");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let health = crate::probes::grpc_health(PROTECTED, || true, Default::default()).await;
        tokio::spawn(
            server(&metrics, ServiceToken::generate(), health, &[])
                .expect("reflection")
                .serve_with_incoming(crate::net::grpc_incoming(listener)),
        );
        // No token: every call but health's is refused by the token check,
        // which sits inside the timing layer.
        let plain = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        for n in 0..20 {
            for path in [
                format!("/made.Up{n}/Path"),
                format!("/filament.test.Protected/Made{n}"),
            ] {
                assert_eq!(call(plain.clone(), path).await, Code::Unauthenticated);
            }
        }
        assert_eq!(
            call(plain.clone(), "/filament.test.Protected/Call".into()).await,
            Code::Unauthenticated
        );
        HealthClient::new(plain)
            .check(HealthCheckRequest {
                service: PROTECTED.into(),
            })
            .await
            .expect("health is exempt");

        let text = scrape(&metrics);
        let counts: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("filament_grpc_server_duration_seconds_count"))
            .collect();
        assert!(
            !text.contains("Made") && !text.contains("made.Up"),
            "{text}"
        );
        assert!(
            counts.contains(
                &"filament_grpc_server_duration_seconds_count{method=\"unknown\",code=\"UNAUTHENTICATED\"} 40"
            ),
            "{text}"
        );
        assert!(
            counts.contains(
                &"filament_grpc_server_duration_seconds_count{method=\"/filament.test.Protected/Call\",code=\"UNAUTHENTICATED\"} 1"
            ),
            "{text}"
        );
        assert!(
            counts.contains(
                &"filament_grpc_server_duration_seconds_count{method=\"/grpc.health.v1.Health/Check\",code=\"OK\"} 1"
            ),
            "{text}"
        );
        assert_eq!(counts.len(), 3, "{text}");
    }
}
