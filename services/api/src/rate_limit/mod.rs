//! The api's limiters, apart from where they are enforced: the global REST
//! bucket of PROTOCOL.md §1.6 and §4.2 ([`RestLimiter`], enforced by the
//! `http::rate_limit` middleware and held by the admin listener's `Edge`),
//! the auth-route limiter of PROTOCOL.md §4.2 ([`AuthRouteLimiter`], held by
//! the `AppState`), and the sliding window behind the per-minute limits
//! ([`sliding`]).
//!
//! The REST bucket is keyed by the verified token's `sub`, so users behind
//! one NAT do not share it, else by the client IP.

pub mod sliding;

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use filament_ids::UserId;

use crate::error::ApiError;
use crate::rate_limit::sliding::SlidingWindow;

/// Whose bucket a request draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Caller {
    User(UserId),
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
    pub fn check(&self, caller: Caller) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.buckets.retain_recent();
            self.buckets.shrink_to_fit();
        }
        self.buckets
            .check_key(&caller)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
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
        let alice = Caller::User(UserId::generate());
        for _ in 0..600 {
            assert!(limiter.check(alice).is_ok());
        }
        let wait = limiter.check(alice).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // Another caller, or the same user's IP, has its own bucket.
        assert!(limiter.check(Caller::User(UserId::generate())).is_ok());
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
}
