//! The login lockout: five failures in a row lock a username for 30 seconds
//! (even with the right password); a success resets the count. Kept in
//! memory, bounded, per api instance.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

const MAX_FAILURES: u32 = 5;
const LOCK_FOR: Duration = Duration::from_secs(30);
/// Usernames tracked at once; past this, the oldest entries are dropped.
const MAX_TRACKED: usize = 100_000;

#[derive(Default)]
pub struct Lockout {
    entries: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    failures: u32,
    last_failure: Instant,
}

impl Lockout {
    pub fn is_locked(&self, username: &str) -> bool {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(username).is_some_and(|entry| {
            entry.failures >= MAX_FAILURES && entry.last_failure.elapsed() < LOCK_FOR
        })
    }

    pub fn record_failure(&self, username: &str) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_TRACKED && !entries.contains_key(username) {
            entries.retain(|_, entry| entry.last_failure.elapsed() < LOCK_FOR);
            if entries.len() >= MAX_TRACKED {
                return;
            }
        }
        let entry = entries.entry(username.to_owned()).or_insert(Entry {
            failures: 0,
            last_failure: now,
        });
        if entry.last_failure.elapsed() >= LOCK_FOR {
            entry.failures = 0;
        }
        entry.failures += 1;
        entry.last_failure = now;
    }

    pub fn record_success(&self, username: &str) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(username);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn five_failures_lock_for_thirty_seconds() {
        let lockout = Lockout::default();
        for _ in 0..4 {
            lockout.record_failure("alice");
        }
        assert!(!lockout.is_locked("alice"));
        lockout.record_failure("alice");
        assert!(lockout.is_locked("alice"));
        assert!(!lockout.is_locked("bob"));
        tokio::time::advance(LOCK_FOR).await;
        assert!(!lockout.is_locked("alice"));
        lockout.record_failure("alice");
        assert!(!lockout.is_locked("alice"), "the count restarted");
        lockout.record_success("alice");
    }
}
