//! The gateway's rate and concurrency limits.
//!
//! - [`IngressLimiter`]: frames a socket may send per sliding window
//!   (60 per 10 s by default); the socket is closed `4008 rate_limited` past
//!   it. An exact sliding window, not a token bucket, so a client can never
//!   send more than the limit in any window.
//! - [`IpLimits`]: per client IP, how many sockets may be open at once and
//!   how fast new upgrades may arrive (a GCRA bucket). Both are checked before
//!   the token is, so a flood never reaches the api.
//!
//! Time is `tokio::time`, so tests pause it instead of sleeping.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Counts one socket's inbound frames over a sliding window.
#[derive(Debug)]
pub(crate) struct IngressLimiter {
    limit: usize,
    window: Duration,
    /// When each frame still inside the window arrived. Allocated on the
    /// first frame, so an idle socket costs nothing here.
    recent: VecDeque<Instant>,
}

impl IngressLimiter {
    pub(crate) fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            window,
            recent: VecDeque::new(),
        }
    }

    /// Counts a frame that arrived at `now`; `false` when it is over the
    /// limit.
    pub(crate) fn admit(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|&at| now.duration_since(at) >= self.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.limit {
            return false;
        }
        self.recent.push_back(now);
        true
    }
}

/// Why an upgrade from an IP was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IpRefusal {
    /// The IP already has the maximum number of open sockets.
    TooManyConnections,
    /// Upgrades from the IP arrive too fast; try again after this long.
    HandshakeRate { retry_after: Duration },
}

#[derive(Debug)]
struct IpState {
    open: u32,
    /// GCRA theoretical arrival time: the bucket is full again at this
    /// instant.
    full_at: Instant,
}

/// Per-IP limits on open sockets and on the upgrade rate.
#[derive(Debug)]
pub(crate) struct IpLimits {
    max_connections: u32,
    /// Time for one handshake token to come back.
    interval: Duration,
    /// How far `full_at` may run ahead of now: `burst - 1` intervals.
    tolerance: Duration,
    state: Mutex<HashMap<IpAddr, IpState>>,
}

/// Holds one of an IP's connection slots until dropped.
#[derive(Debug)]
pub(crate) struct IpPermit {
    limits: Arc<IpLimits>,
    ip: IpAddr,
}

/// The state map is pruned of idle, refilled entries when it grows past
/// this, so its size follows the IPs active within one refill period.
const PRUNE_ABOVE: usize = 4096;

impl IpLimits {
    /// At most `max_connections` open sockets per IP, and upgrades at
    /// `handshakes_per_minute` with a burst of as many.
    pub(crate) fn new(max_connections: u32, handshakes_per_minute: u32) -> Self {
        let per_minute = handshakes_per_minute.max(1);
        let interval = Duration::from_secs(60) / per_minute;
        Self {
            max_connections,
            interval,
            tolerance: interval * (per_minute - 1),
            state: Mutex::new(HashMap::new()),
        }
    }

    /// Admits an upgrade from `ip` at `now`, or says why not. A refused
    /// upgrade does not use up a handshake.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<IpPermit, IpRefusal> {
        let mut state = self.lock();
        if state.len() > PRUNE_ABOVE {
            state.retain(|_, s| s.open > 0 || s.full_at > now);
        }
        let entry = state.entry(ip).or_insert(IpState {
            open: 0,
            full_at: now,
        });
        if entry.open >= self.max_connections {
            return Err(IpRefusal::TooManyConnections);
        }
        let full_at = entry.full_at.max(now);
        let ahead = full_at - now;
        if ahead > self.tolerance {
            return Err(IpRefusal::HandshakeRate {
                retry_after: ahead - self.tolerance,
            });
        }
        entry.full_at = full_at + self.interval;
        entry.open += 1;
        Ok(IpPermit {
            limits: Arc::clone(self),
            ip,
        })
    }

    /// Open sockets from `ip`.
    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> u32 {
        self.lock().get(&ip).map_or(0, |s| s.open)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, IpState>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl IpPermit {
    /// The client address this slot belongs to.
    pub(crate) fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        let mut state = self.limits.lock();
        if let Some(entry) = state.get_mut(&self.ip) {
            entry.open = entry.open.saturating_sub(1);
            if entry.open == 0 && entry.full_at <= Instant::now() {
                state.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 8));

    #[tokio::test(start_paused = true)]
    async fn ingress_allows_the_limit_per_sliding_window() {
        let mut limiter = IngressLimiter::new(3, Duration::from_secs(10));
        let start = Instant::now();
        assert!(limiter.admit(start));
        assert!(limiter.admit(start + Duration::from_secs(4)));
        assert!(limiter.admit(start + Duration::from_secs(8)));
        // A fourth frame within 10 s of the first is refused...
        assert!(!limiter.admit(start + Duration::from_millis(9_999)));
        // ...and so is one within 10 s of the second, once the first left.
        assert!(limiter.admit(start + Duration::from_secs(10)));
        assert!(!limiter.admit(start + Duration::from_secs(11)));
        assert!(limiter.admit(start + Duration::from_secs(14)));
    }

    #[test]
    fn an_idle_socket_allocates_no_window() {
        let limiter = IngressLimiter::new(60, Duration::from_secs(10));
        assert_eq!(limiter.recent.capacity(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn caps_open_sockets_per_ip_and_frees_them_on_drop() {
        let limits = Arc::new(IpLimits::new(2, 1000));
        let now = Instant::now();
        let first = limits.admit(IP, now).unwrap();
        let _second = limits.admit(IP, now).unwrap();
        assert_eq!(
            limits.admit(IP, now).unwrap_err(),
            IpRefusal::TooManyConnections
        );
        // Another IP is not affected.
        let _other = limits.admit(OTHER, now).unwrap();
        drop(first);
        assert_eq!(limits.open(IP), 1);
        assert!(limits.admit(IP, now).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn handshakes_are_a_bucket_per_ip() {
        // 60 per minute: a burst of 60, then one per second.
        let limits = Arc::new(IpLimits::new(1000, 60));
        let now = Instant::now();
        let permits: Vec<_> = (0..60).map(|_| limits.admit(IP, now).unwrap()).collect();
        let Err(IpRefusal::HandshakeRate { retry_after }) = limits.admit(IP, now) else {
            panic!("the 61st handshake in a burst must be refused");
        };
        assert_eq!(retry_after, Duration::from_secs(1));
        assert!(limits.admit(OTHER, now).is_ok());
        // Closing sockets does not give handshakes back; time does.
        drop(permits);
        assert!(limits.admit(IP, now).is_err());
        let later = now + Duration::from_secs(1);
        assert!(limits.admit(IP, later).is_ok());
        assert!(limits.admit(IP, later).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_refilled_ips_are_forgotten() {
        let limits = Arc::new(IpLimits::new(10, 60));
        let permit = limits.admit(IP, Instant::now()).unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        drop(permit);
        assert!(limits.lock().is_empty());
    }
}
