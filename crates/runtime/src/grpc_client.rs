//! How every Filament gRPC client connects: one [`connect`] that turns a
//! service URL into a channel, so that each client gets the same transport
//! settings and reports the same series, instead of each crate building its
//! own `Endpoint`.
//!
//! The channel connects lazily (services start in any order), bounds the
//! connect and, when the caller gives one, each call; sets `TCP_NODELAY`
//! (small gRPC writes otherwise wait on a delayed ACK); and sends HTTP/2
//! keepalive pings, also while idle, so a connection to a peer that died
//! without closing it (a node lost, a partition) fails within
//! [`KEEPALIVE_INTERVAL`] + [`KEEPALIVE_TIMEOUT`] instead of at the next
//! call's timeout or never, for a stream that only reads. A tower layer
//! times every call into `filament_grpc_client_duration_seconds{method,code}`,
//! the client-side twin of the server layer in [`crate::grpc`]; every
//! call carries the process's service token ([`crate::service_auth`]), which
//! every internal server asks for, and the caller's trace context
//! ([`crate::trace::current`]: `traceparent` as a child of the current
//! span, and `x-request-id`), so no call site can forget to pass the trace
//! on.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use prometheus_client::registry::Registry;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::Service;

use crate::grpc::{DurationFamily, TimedBody, duration_family, header_code, observe};
use crate::service_auth::{METADATA_KEY, ServiceToken};

/// `filament_grpc_client_duration_seconds{method,code}`: from sending the
/// request to the response's last frame (its trailers), or to the failure
/// the caller saw. For a streaming method that is the stream's lifetime.
pub const CLIENT_DURATION: &str = "filament_grpc_client_duration_seconds";
/// How often an HTTP/2 ping goes out, idle or not.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection is dropped.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected client channel: a tonic [`Channel`] whose calls are timed.
pub type GrpcChannel = TimedChannel<Channel>;

/// What every gRPC client of one process shares: the series its calls are
/// timed into, and the service token each call presents. (No `Default`: a
/// client without the token would be refused by every internal server.)
#[derive(Debug, Clone)]
pub struct GrpcClientMetrics {
    duration: Arc<DurationFamily>,
    token: ServiceToken,
}

impl GrpcClientMetrics {
    /// Clients that present `token` on every call.
    pub fn new(token: ServiceToken) -> Self {
        Self {
            duration: duration_family(),
            token,
        }
    }

    /// Registers the series in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            CLIENT_DURATION,
            "gRPC calls made, by method and status code, timed to the last frame",
            (*self.duration).clone(),
        );
    }
}

/// A channel to the gRPC service at `url` (`http://host:port`); see the
/// module docs. A connection is attempted at the first call and again
/// after one breaks, each bounded by `connect_timeout`; `call_timeout`, when
/// given, bounds each call up to its response headers (leave it `None` for
/// streams that stay open). Must be called inside a tokio runtime.
pub fn connect(
    url: &str,
    connect_timeout: Duration,
    call_timeout: Option<Duration>,
    metrics: &GrpcClientMetrics,
) -> Result<GrpcChannel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let endpoint = match call_timeout {
        Some(timeout) => endpoint.timeout(timeout),
        None => endpoint,
    };
    Ok(TimedChannel {
        inner: endpoint.connect_lazy(),
        duration: Arc::clone(&metrics.duration),
        token: metrics.token.clone(),
    })
}

/// Times every call made through `inner`, and attaches the service token
/// and the calling task's trace context.
#[derive(Debug, Clone)]
pub struct TimedChannel<S> {
    inner: S,
    duration: Arc<DurationFamily>,
    token: ServiceToken,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S> Service<Request<Body>> for TimedChannel<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = tower::BoxError;
    type Future = BoxFuture<Result<Response<Body>, tower::BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let started = Instant::now();
        let method = request.uri().path().to_owned();
        request
            .headers_mut()
            .insert(METADATA_KEY, self.token.header().clone());
        // `call` runs in the calling task, where the trace is current.
        crate::trace::inject(request.headers_mut());
        let duration = Arc::clone(&self.duration);
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = match future.await {
                Ok(response) => response,
                Err(err) => {
                    // Recorded under the status the caller sees: tonic
                    // turns a transport failure or a timeout into one, and
                    // passes a status found in the error on unchanged.
                    let status = tonic::Status::from_error(err.into());
                    observe(&duration, &method, status.code(), started);
                    return Err(Box::new(status).into());
                }
            };
            // A trailers-only response (an error) has its status in the
            // headers and no body to wait for.
            if let Some(code) = header_code(response.headers()) {
                observe(&duration, &method, code, started);
                return Ok(response);
            }
            let (parts, body) = response.into_parts();
            let timed = TimedBody::new(body, duration, method, started);
            Ok(Response::from_parts(parts, Body::new(timed)))
        })
    }
}

#[cfg(test)]
mod tests {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn scrape(metrics: &GrpcClientMetrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        text
    }

    #[tokio::test]
    async fn calls_are_timed_by_method_and_code() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let health = crate::probes::grpc_health("filament.test", || true, Default::default()).await;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(crate::net::grpc_incoming(listener)),
        );
        let metrics = GrpcClientMetrics::new(ServiceToken::generate());
        let channel =
            connect(&format!("http://{addr}"), TIMEOUT, Some(TIMEOUT), &metrics).expect("url");
        let mut client = HealthClient::new(channel);
        client
            .check(HealthCheckRequest {
                service: "filament.test".into(),
            })
            .await
            .expect("serving");
        let status = client
            .check(HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await
            .expect_err("unknown service");
        assert_eq!(status.code(), tonic::Code::NotFound);

        let text = scrape(&metrics);
        assert!(
            text.contains(
                "filament_grpc_client_duration_seconds_count{method=\"/grpc.health.v1.Health/Check\",code=\"OK\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "filament_grpc_client_duration_seconds_count{method=\"/grpc.health.v1.Health/Check\",code=\"NOT_FOUND\"} 1"
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_peer_that_is_not_there_is_unavailable_to_the_caller_and_the_series() {
        // A port that was free a moment ago: nothing listens on it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port");
        let metrics = GrpcClientMetrics::new(ServiceToken::generate());
        let channel =
            connect(&format!("http://{addr}"), TIMEOUT, Some(TIMEOUT), &metrics).expect("url");
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .expect_err("nobody listens");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
        let text = scrape(&metrics);
        assert!(
            text.contains("method=\"/grpc.health.v1.Health/Check\",code=\"UNAVAILABLE\"} 1"),
            "{text}"
        );
    }

    /// What one call's metadata said: its `traceparent` and `x-request-id`.
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(Option<String>, Option<String>)>>>;

    #[tokio::test]
    async fn every_call_carries_the_callers_trace_as_a_child_span() {
        use crate::trace::{REQUEST_ID, TRACEPARENT, TraceContext};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Seen::default();
        let record = {
            let seen = std::sync::Arc::clone(&seen);
            move |request: tonic::Request<()>| {
                let value = |key: &str| {
                    request
                        .metadata()
                        .get(key)
                        .and_then(|value| value.to_str().ok())
                        .map(str::to_owned)
                };
                seen.lock()
                    .expect("seen")
                    .push((value(TRACEPARENT), value(REQUEST_ID)));
                Ok(request)
            }
        };
        let health = crate::probes::grpc_health("filament.test", || true, Default::default()).await;
        tokio::spawn(
            tonic::transport::Server::builder()
                .layer(tonic::service::InterceptorLayer::new(record))
                .add_service(health)
                .serve_with_incoming(crate::net::grpc_incoming(listener)),
        );
        let metrics = GrpcClientMetrics::new(ServiceToken::generate());
        let channel =
            connect(&format!("http://{addr}"), TIMEOUT, Some(TIMEOUT), &metrics).expect("url");
        let mut client = HealthClient::new(channel);
        let request = || HealthCheckRequest {
            service: "filament.test".into(),
        };

        // Outside any trace: nothing to send.
        client.check(request()).await.expect("serving");
        // On behalf of a traced request.
        let caller = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("valid");
        crate::trace::scope_request(caller.clone(), Some("req-42"), async {
            client.check(request()).await.expect("serving");
        })
        .await;
        // In a task spawned for the request, carried on.
        let mut spawned = client.clone();
        crate::trace::scope(caller.clone(), async move {
            tokio::spawn(crate::trace::carried(async move {
                spawned.check(request()).await.expect("serving");
            }))
            .await
            .expect("joined");
        })
        .await;

        let seen = seen.lock().expect("seen").clone();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen[0], (None, None));
        for (n, (traceparent, _)) in seen.iter().enumerate().skip(1) {
            let sent = traceparent
                .as_deref()
                .and_then(TraceContext::parse)
                .unwrap_or_else(|| panic!("call {n} carried no traceparent: {seen:?}"));
            assert_eq!(sent.trace_id(), caller.trace_id());
            // A child: this process's span, not the caller's.
            assert_ne!(sent.header(), caller.header());
        }
        assert_eq!(seen[1].1.as_deref(), Some("req-42"));
    }

    #[test]
    fn a_malformed_url_is_refused() {
        let metrics = GrpcClientMetrics::new(ServiceToken::generate());
        assert!(connect("not a url", TIMEOUT, None, &metrics).is_err());
    }
}
