//! The sliding-window limiter behind the per-minute limits of PROTOCOL.md §4.2
//! (directory joins, voice tokens and grants, the auth routes): at most
//! `limit` admissions per key in any 60 seconds, counted the way the
//! reference server counts (a sliding window, not a bucket).
//!
//! A request can count against several keys at once (an address and a
//! user, say): it is admitted only if every key is under its limit, and a
//! refused request counts against none of them.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The window every limit counts in.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Keys idle for a full window are forgotten every this many checks, so
/// memory follows the callers of the last minute.
const SWEEP_EVERY: u64 = 1024;

#[derive(Debug)]
pub struct SlidingWindow<K> {
    recent: Mutex<HashMap<K, VecDeque<Instant>>>,
    checks: AtomicU64,
}

impl<K> Default for SlidingWindow<K> {
    fn default() -> Self {
        Self {
            recent: Mutex::new(HashMap::new()),
            checks: AtomicU64::new(0),
        }
    }
}

impl<K: Hash + Eq + Copy> SlidingWindow<K> {
    /// Admits the request when each `(key, limit)` saw fewer than `limit`
    /// admissions in the last [`WINDOW`], and records it against every key.
    pub fn admit(&self, keys: &[(K, usize)], now: Instant) -> bool {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            recent.retain(|_, hits| hits.back().is_some_and(|t| now - *t < WINDOW));
        }
        for (key, limit) in keys {
            let hits = recent.entry(*key).or_default();
            while hits.front().is_some_and(|t| now - *t >= WINDOW) {
                hits.pop_front();
            }
            if hits.len() >= *limit {
                return false;
            }
        }
        for (key, _) in keys {
            recent.entry(*key).or_default().push_back(now);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn every_key_is_limited_and_a_refusal_costs_nothing() {
        let window = SlidingWindow::default();
        let start = Instant::now();
        let (address, alice, bob) = ("address", "alice", "bob");
        let as_alice = [(address, 3), (alice, 2)];
        let as_bob = [(address, 3), (bob, 2)];
        assert!(window.admit(&as_alice, start));
        assert!(window.admit(&as_alice, start));
        // Alice is at her limit; her refused attempt costs the address
        // nothing, so Bob still gets the address's third admission.
        assert!(!window.admit(&as_alice, start));
        assert!(window.admit(&as_bob, start));
        assert!(!window.admit(&as_bob, start));

        // The window slides: just short of a minute nothing has expired.
        let almost = start + WINDOW - Duration::from_millis(1);
        assert!(!window.admit(&as_alice, almost));
        assert!(window.admit(&as_alice, start + WINDOW));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_keys_are_forgotten() {
        let window = SlidingWindow::default();
        let start = Instant::now();
        for n in 0..SWEEP_EVERY - 1 {
            assert!(window.admit(&[(n, 1)], start));
        }
        assert!(window.admit(&[(u64::MAX, 1)], start + WINDOW));
        let recent = window.recent.lock().expect("lock");
        assert_eq!(recent.len(), 1, "only the last caller");
    }
}
