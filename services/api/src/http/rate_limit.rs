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
//! [`AuthRouteLimiter`] is the auth-route limiter of PROTOCOL.md §4.2: the routes that
//! check a password or take an upload, per route and client IP.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Extension;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use ulid::Ulid;

use crate::admin::{Edge, Limiter};
use crate::error::ApiError;
use crate::http::sliding::SlidingWindow;
use crate::state::AppState;

/// Whose bucket a request draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Caller {
    User(Ulid),
    Ip(IpAddr),
}

/// Buckets untouched for a full refill are dropped every this many checks,
/// so memory follows the callers active in the last minute.
const PRUNE_EVERY: u64 = 4096;

/// Per-caller buckets of requests.
pub struct RestLimiter<C: Clock = DefaultClock> {
    buckets: RateLimiter<Caller, DashMapStateStore<Caller>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    checks: AtomicU64,
}

impl<C: Clock> fmt::Debug for RestLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestLimiter")
            .field("callers", &self.buckets.len())
            .finish_non_exhaustive()
    }
}

impl RestLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self::with_clock(per_minute, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RestLimiter<C> {
    pub fn with_clock(per_minute: u32, clock: C) -> Self {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        Self {
            buckets: RateLimiter::dashmap_with_clock(Quota::per_minute(per_minute), clock.clone()),
            clock,
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one request from `caller`'s bucket, or says how long until it
    /// has one again.
    fn check(&self, caller: Caller) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.buckets.retain_recent();
            self.buckets.shrink_to_fit();
        }
        self.buckets
            .check_key(&caller)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

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
        .and_then(|claims| Ulid::from_string(&claims.sub).ok());
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

/// The routes the auth limiter counts, each on its own (PROTOCOL.md §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthRoute {
    Register,
    Login,
    Refresh,
    ProfileUpdate,
    AvatarUpload,
    BannerUpload,
}

/// At most `FILAMENT_AUTH_ROUTE_REQUESTS_PER_MINUTE` (60) requests to one
/// auth route from one client IP in any 60 seconds; past it, 429.
#[derive(Debug)]
pub struct AuthRouteLimiter {
    per_minute: usize,
    window: SlidingWindow<(AuthRoute, IpAddr)>,
}

impl AuthRouteLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: per_minute as usize,
            window: SlidingWindow::default(),
        }
    }

    /// `ip` as `ClientIp` resolved it (already canonical, like every
    /// address the api keys a limit by).
    pub fn check(&self, route: AuthRoute, ip: IpAddr) -> Result<(), ApiError> {
        let key = (route, ip);
        if self
            .window
            .admit(&[(key, self.per_minute)], tokio::time::Instant::now())
        {
            Ok(())
        } else {
            Err(ApiError::RateLimited)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn a_bucket_of_the_limit_refills_at_the_limit_per_minute() {
        let clock = FakeRelativeClock::default();
        let limiter = RestLimiter::with_clock(600, clock.clone());
        let alice = Caller::User(Ulid::generate());
        for _ in 0..600 {
            assert!(limiter.check(alice).is_ok());
        }
        let wait = limiter.check(alice).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // Another caller, or the same user's IP, has its own bucket.
        assert!(limiter.check(Caller::User(Ulid::generate())).is_ok());
        assert!(limiter.check(Caller::Ip([127, 0, 0, 1].into())).is_ok());
        // 600 per minute: one more every 100 ms, not one per minute.
        clock.advance(Duration::from_millis(100));
        assert!(limiter.check(alice).is_ok());
        assert!(limiter.check(alice).is_err());
        clock.advance(Duration::from_secs(60));
        for _ in 0..600 {
            assert!(limiter.check(alice).is_ok());
        }
    }

    #[test]
    fn idle_buckets_are_pruned() {
        let clock = FakeRelativeClock::default();
        let limiter = RestLimiter::with_clock(60, clock.clone());
        for n in 0..100 {
            assert!(limiter.check(Caller::Ip([10, 0, 0, n].into())).is_ok());
        }
        clock.advance(Duration::from_secs(120));
        for _ in 0..PRUNE_EVERY {
            // Over its limit after 60: only the pruning matters here.
            let _ = limiter.check(Caller::Ip([10, 1, 0, 0].into()));
        }
        assert!(limiter.buckets.len() <= 2, "{limiter:?}");
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let response = too_many_requests(Duration::from_millis(100));
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let response = too_many_requests(Duration::from_millis(2_500));
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    }
}
