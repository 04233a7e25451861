//! The global REST limiter (PROTOCOL.md §1.6, §4.2), as a middleware
//! in front of every route.
//!
//! Each caller has a bucket of `FILAMENT_RATE_LIMIT_REQUESTS_PER_MINUTE`
//! (600) requests that refills at that rate — a real per-minute bucket, not
//! the reference server's one-request-per-minute refill (PROTOCOL.md §7.2). The
//! bucket is keyed by the verified token's `sub`, so users behind one NAT
//! do not share it, else by the client IP. The token is verified (a cheap
//! HMAC) before its `sub` is trusted: an unverified `sub` would let anyone
//! drain someone else's bucket. Over the limit: `429 {"error":"rate_limited"}`
//! with `retry-after`.
//!
//! The same middleware counts what the edge refused (401s and 429s) for the
//! admin listener's metrics.
//!
//! The limiters themselves live in `crate::rate_limit`, where the admin
//! listener and the app state can hold them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use filament_ids::UserId;
use ulid::Ulid;

use crate::admin::{Edge, Limiter};
use crate::error::ApiError;
use crate::rate_limit::Caller;
use crate::state::AppState;

/// The middleware: limits, then counts refusals.
pub async fn enforce(
    State(state): State<AppState>,
    Extension(edge): Extension<Arc<Edge>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    request: Request,
    next: Next,
) -> Response {
    let ip = peer.map(|p| {
        super::client_ip::resolve(
            p.0.0.ip(),
            request.headers(),
            &state.config().trusted_proxy_cidrs,
        )
    });
    let caller = caller(&state, &request, ip);
    if let Err(wait) = edge.limiter.check(caller) {
        edge.metrics.rate_limited(Limiter::Global);
        return too_many_requests(wait);
    }
    let response = next.run(request).await;
    match response.status() {
        StatusCode::UNAUTHORIZED => edge.metrics.auth_failed(),
        StatusCode::TOO_MANY_REQUESTS => edge.metrics.rate_limited(Limiter::Route),
        _ => {}
    }
    response
}

fn caller(state: &AppState, request: &Request, ip: Option<IpAddr>) -> Caller {
    let user = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|token| state.tokens().verify(token))
        .and_then(|claims| Ulid::from_string(&claims.sub).ok().map(UserId));
    // Without the peer address (a router served without connect info)
    // anonymous callers share one bucket: stricter, never looser.
    user.map_or_else(
        || Caller::Ip(ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))),
        Caller::User,
    )
}

fn too_many_requests(wait: Duration) -> Response {
    let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
    let mut response = ApiError::RateLimited.into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let response = too_many_requests(Duration::from_millis(100));
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let response = too_many_requests(Duration::from_millis(2_500));
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    }
}
