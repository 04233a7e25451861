//! The identity internal gRPC calls carry: one shared service secret
//! (`FILAMENT_INTERNAL_TOKEN`) that every client attaches to every call
//! ([`crate::grpc_client::connect`]) and every server checks, in one tower
//! layer ([`RequireServiceToken`]), before a service sees the call.
//!
//! Without it the internal services would trust any caller that can reach
//! them (`EdgeAccess` trusts the `user_id` it is sent), and the network
//! policy would be the only guard; with it, a pod that can reach a port but
//! does not hold the Secret is refused with `UNAUTHENTICATED`.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use subtle::ConstantTimeEq as _;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::{ConfigError, Env};

/// The variable every split binary reads the secret from.
pub const ENV_VAR: &str = "FILAMENT_INTERNAL_TOKEN";
/// The metadata key the secret travels under.
pub const METADATA_KEY: &str = "x-filament-service-token";
/// The message of a refusal, so a caller (and a test) can tell the layer's
/// `UNAUTHENTICATED` from a service's own.
pub const REFUSED: &str = "missing or wrong service token";
/// The shortest secret accepted, in bytes.
pub const MIN_LEN: usize = 32;

/// Paths no token is asked of. Health: the kubelet's gRPC probes carry no
/// metadata, and a health answer reveals nothing. Reflection: it only
/// describes the schema, which is public in `proto/`, and an operator's
/// `grpcurl` uses it; every call it leads to is still checked.
const EXEMPT_PREFIXES: &[&str] = &["/grpc.health.v1.Health/", "/grpc.reflection.v1"];

/// The shared service secret. Its `Debug` never shows the value, so it can
/// sit in a config that is logged.
#[derive(Clone)]
pub struct ServiceToken {
    header: Arc<HeaderValue>,
}

impl fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServiceToken(<redacted>)")
    }
}

/// Why a secret was refused. Never holds the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("must be at least {MIN_LEN} bytes")]
    TooShort,
    #[error("must be visible ASCII (no spaces or control characters)")]
    NotVisibleAscii,
}

impl ServiceToken {
    /// A secret given as text: at least [`MIN_LEN`] bytes of visible ASCII
    /// (it travels as a header value).
    pub fn new(secret: &str) -> Result<Self, TokenError> {
        if !secret.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(TokenError::NotVisibleAscii);
        }
        if secret.len() < MIN_LEN {
            return Err(TokenError::TooShort);
        }
        let mut header = HeaderValue::from_str(secret).map_err(|_| TokenError::NotVisibleAscii)?;
        // Kept out of HPACK's dynamic table, so it is never indexed.
        header.set_sensitive(true);
        Ok(Self {
            header: Arc::new(header),
        })
    }

    /// A random secret, for the all-in-one (which starts every service
    /// itself) and tests.
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        match Self::new(&hex) {
            Ok(token) => token,
            // 64 hex digits are always valid.
            Err(_) => unreachable!("a generated token is valid"),
        }
    }

    /// Reads [`ENV_VAR`]; unset or invalid stops start-up, with a message
    /// naming the variable but never its value.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let secret = env
            .raw(ENV_VAR)
            .ok_or(ConfigError::Missing { name: ENV_VAR })?;
        Self::new(secret).map_err(|err| ConfigError::Invalid {
            name: ENV_VAR,
            value: "<redacted>".to_owned(),
            reason: err.to_string(),
        })
    }

    /// Like [`Self::from_env`], but a random secret when unset (the
    /// all-in-one).
    pub fn from_env_or_generate(env: &Env) -> Result<Self, ConfigError> {
        if env.raw(ENV_VAR).is_none() {
            return Ok(Self::generate());
        }
        Self::from_env(env)
    }

    pub(crate) fn header(&self) -> &HeaderValue {
        &self.header
    }

    fn matches(&self, presented: &[u8]) -> bool {
        // Constant time, so the time taken does not say how many leading
        // bytes were right (the length check may leak the length, which is
        // not secret).
        self.header.as_bytes().ct_eq(presented).into()
    }
}

/// The server layer: refuses every call without the right token with
/// `UNAUTHENTICATED`, except health and reflection (see
/// [`EXEMPT_PREFIXES`]).
#[derive(Debug, Clone)]
pub struct RequireServiceToken {
    token: ServiceToken,
}

impl RequireServiceToken {
    pub fn new(token: ServiceToken) -> Self {
        Self { token }
    }
}

impl<S> Layer<S> for RequireServiceToken {
    type Service = RequireServiceTokenService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireServiceTokenService {
            inner,
            token: self.token.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RequireServiceTokenService<S> {
    inner: S,
    token: ServiceToken,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S> Service<Request<Body>> for RequireServiceTokenService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Error: Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let path = request.uri().path();
        let exempt = EXEMPT_PREFIXES
            .iter()
            .any(|prefix| path.starts_with(prefix));
        let allowed = exempt
            || request
                .headers()
                .get(METADATA_KEY)
                .is_some_and(|value| self.token.matches(value.as_bytes()));
        if allowed {
            return Box::pin(self.inner.call(request));
        }
        tracing::warn!(method = %path, "internal gRPC call without a valid service token refused");
        let response = tonic::Status::unauthenticated(REFUSED).into_http();
        Box::pin(std::future::ready(Ok(response)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

    use super::*;
    use crate::grpc_client::{GrpcClientMetrics, connect};

    const TIMEOUT: Duration = Duration::from_secs(5);
    const SERVICE: &str = "filament.test";

    /// A server with only health and reflection behind the layer: the
    /// layer judges by path alone, so a call to any other path stands in
    /// for a protected service (let through, nobody answers it).
    async fn serve(token: ServiceToken) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let health = crate::probes::grpc_health(SERVICE, || true, Default::default()).await;
        let reflection = crate::grpc::reflection(&[]).expect("reflection");
        tokio::spawn(
            tonic::transport::Server::builder()
                .layer(RequireServiceToken::new(token))
                .add_service(health)
                .add_service(reflection)
                .serve_with_incoming(crate::net::grpc_incoming(listener)),
        );
        addr
    }

    /// A unary call to a path the layer protects (no service answers it,
    /// so a call let through is `UNIMPLEMENTED`).
    async fn call_protected(addr: std::net::SocketAddr, token: Option<&str>) -> tonic::Code {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.expect("ready");
        let mut request = tonic::Request::new(HealthCheckRequest::default());
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert(METADATA_KEY, token.parse().expect("ascii"));
        }
        let path = http::uri::PathAndQuery::from_static("/filament.v1.Protected/Call");
        let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckRequest>::default();
        match grpc.unary(request, path, codec).await {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        }
    }

    #[tokio::test]
    async fn calls_without_the_right_token_are_refused_and_health_is_exempt() {
        let secret = "s".repeat(MIN_LEN);
        let addr = serve(ServiceToken::new(&secret).expect("valid")).await;

        assert_eq!(
            call_protected(addr, None).await,
            tonic::Code::Unauthenticated
        );
        let wrong = "w".repeat(MIN_LEN);
        assert_eq!(
            call_protected(addr, Some(&wrong)).await,
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            call_protected(addr, Some(&secret[..MIN_LEN - 1])).await,
            tonic::Code::Unauthenticated,
            "a prefix of the secret"
        );
        // Let through: no service answers the path.
        assert_eq!(
            call_protected(addr, Some(&secret)).await,
            tonic::Code::Unimplemented
        );

        // Health and reflection answer a caller without a token.
        let plain = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect_lazy();
        HealthClient::new(plain.clone())
            .check(HealthCheckRequest {
                service: SERVICE.into(),
            })
            .await
            .expect("health is exempt");
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = ServerReflectionClient::new(plain)
            .server_reflection_info(tokio_stream_once(request))
            .await
            .expect("reflection is exempt")
            .into_inner();
        assert!(answers.message().await.expect("answer").is_some());
    }

    #[tokio::test]
    async fn connect_presents_the_token() {
        let token = ServiceToken::generate();
        let addr = serve(token.clone()).await;
        let channel = connect(
            &format!("http://{addr}"),
            TIMEOUT,
            Some(TIMEOUT),
            &GrpcClientMetrics::new(token),
        )
        .expect("url");
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.expect("ready");
        let path = http::uri::PathAndQuery::from_static("/filament.v1.Protected/Call");
        let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckRequest>::default();
        let status = grpc
            .unary(
                tonic::Request::new(HealthCheckRequest::default()),
                path,
                codec,
            )
            .await
            .expect_err("nobody implements it");
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{status}");
    }

    #[test]
    fn short_or_missing_secrets_name_the_variable_and_hide_the_value() {
        let missing = ServiceToken::from_env(&Env::default()).expect_err("unset");
        assert!(missing.to_string().contains(ENV_VAR), "{missing}");
        let short = "short-secret-value";
        let err = ServiceToken::from_env(&Env::from_pairs([(ENV_VAR, short)])).expect_err("short");
        let text = err.to_string();
        assert!(text.contains(ENV_VAR), "{text}");
        assert!(!text.contains(short), "{text}");
        let token = ServiceToken::generate();
        assert_eq!(format!("{token:?}"), "ServiceToken(<redacted>)");
        assert!(ServiceToken::from_env_or_generate(&Env::default()).is_ok());
    }

    fn tokio_stream_once(
        request: ServerReflectionRequest,
    ) -> impl tokio_stream::Stream<Item = ServerReflectionRequest> {
        tokio_stream::iter([request])
    }
}
