//! Argon2id password hashing, always off the async reactor, and never more
//! of it at once than [`HashingLimits`] allows.
//!
//! Every hash holds its memory cost (19 MiB by default) while it runs, so
//! the number running at once is what bounds the api's memory under a
//! registration or login storm: unbounded, 64 registrations 16 at a time
//! took a process from 23 MB to over 1 GB. This module is the one place
//! that calls Argon2 at request time, and every call takes a slot here:
//! hashing a new password, checking a login, and checking the decoy for an
//! unknown user (which must cost a hash like a known one). Callers past the
//! running slots wait in a bounded queue for a bounded time; past either
//! bound they get [`HashError::Refused`], which the api answers 503.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::admin::{HashingMetrics, HashingRefusal};
use crate::config::{HashingLimits, PasswordHashing};

/// Why a hash was not computed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Hashing is saturated; the caller may retry after `retry_after`.
    #[error("password hashing refused: {}", reason.as_str())]
    Refused {
        reason: HashingRefusal,
        retry_after: Duration,
    },
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

#[derive(Debug, Clone)]
pub struct PasswordHasher {
    params: Params,
    /// A hash of a random password, verified against when the username is
    /// unknown, so a login takes as long whether or not the user exists.
    decoy: String,
    /// Callers inside the hasher, running or waiting: `max_concurrent +
    /// max_queued` permits, taken without waiting, so the queue is bounded.
    admitted: Arc<Semaphore>,
    /// Hashes running: `max_concurrent` permits.
    running: Arc<Semaphore>,
    queue_wait: Duration,
    metrics: HashingMetrics,
}

impl PasswordHasher {
    pub fn new(
        cost: PasswordHashing,
        limits: HashingLimits,
        metrics: HashingMetrics,
    ) -> anyhow::Result<Self> {
        let params = Params::new(cost.memory_kib, cost.iterations, 1, None)
            .map_err(|err| anyhow::anyhow!("argon2 parameters: {err}"))?;
        let decoy = hash_with(&params, &ulid::Ulid::generate().to_string())?;
        // A semaphore panics past MAX_PERMITS; a bound that high is "none".
        let running = limits.max_concurrent.get().min(Semaphore::MAX_PERMITS);
        let admitted = running
            .saturating_add(limits.max_queued)
            .min(Semaphore::MAX_PERMITS);
        Ok(Self {
            params,
            decoy,
            admitted: Arc::new(Semaphore::new(admitted)),
            running: Arc::new(Semaphore::new(running)),
            queue_wait: limits.queue_wait,
            metrics,
        })
    }

    pub async fn hash(&self, password: &str) -> Result<String, HashError> {
        let params = self.params.clone();
        let password = password.to_owned();
        Ok(self
            .bounded(move || hash_with(&params, &password))
            .await??)
    }

    /// Whether `password` matches `stored`. With `stored = None` it checks
    /// against the decoy and returns false, taking the same time.
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Result<bool, HashError> {
        let known = stored.is_some();
        let stored = stored.unwrap_or(&self.decoy).to_owned();
        let password = password.to_owned();
        // The stored hash carries its own parameters.
        let matches = self
            .bounded(move || {
                Argon2::default()
                    .verify_password(password.as_bytes(), stored.as_str())
                    .is_ok()
            })
            .await?;
        Ok(known && matches)
    }

    /// Runs `work` on the blocking pool once a slot is free.
    async fn bounded<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let slots = self.acquire().await?;
        // The permits move into the blocking task: a caller that goes away
        // (client disconnect, request timeout) cannot free a slot whose
        // hash is still running and holding its memory.
        tokio::task::spawn_blocking(move || {
            let result = work();
            drop(slots);
            result
        })
        .await
        .map_err(|err| HashError::Failed(anyhow::anyhow!("argon2 task: {err}")))
    }

    async fn acquire(&self) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), HashError> {
        let admitted = Arc::clone(&self.admitted)
            .try_acquire_owned()
            .map_err(|_| self.refuse(HashingRefusal::QueueFull))?;
        let running =
            tokio::time::timeout(self.queue_wait, Arc::clone(&self.running).acquire_owned())
                .await
                .map_err(|_| self.refuse(HashingRefusal::QueueTimeout))?
                .map_err(|err| HashError::Failed(anyhow::anyhow!("argon2 slots: {err}")))?;
        Ok((admitted, running))
    }

    fn refuse(&self, reason: HashingRefusal) -> HashError {
        self.metrics.refused(reason);
        // By then a full queue has had a queue wait to drain.
        HashError::Refused {
            reason,
            retry_after: self.queue_wait,
        }
    }
}

fn hash_with(params: &Params, password: &str) -> anyhow::Result<String> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|err| anyhow::anyhow!("argon2: {err}"))
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;
    use std::sync::mpsc;

    use super::*;

    /// The cheapest cost Argon2 accepts; these tests are about the slots.
    const FAST: PasswordHashing = PasswordHashing {
        memory_kib: 8,
        iterations: 1,
    };

    fn hasher(max_queued: usize, queue_wait: Duration) -> PasswordHasher {
        let limits = HashingLimits {
            max_concurrent: NonZeroUsize::MIN,
            max_queued,
            queue_wait,
        };
        PasswordHasher::new(FAST, limits, HashingMetrics::default()).unwrap()
    }

    /// Occupies the one running slot until the returned sender is dropped
    /// or sent to.
    async fn occupy(hasher: &PasswordHasher) -> (tokio::task::JoinHandle<()>, mpsc::Sender<()>) {
        let (release, released) = mpsc::channel::<()>();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let busy = hasher.clone();
        let task = tokio::spawn(async move {
            busy.bounded(move || {
                let _ = started_tx.send(());
                let _ = released.recv();
            })
            .await
            .unwrap();
        });
        started.await.unwrap();
        (task, release)
    }

    fn refusal(result: Result<String, HashError>) -> HashingRefusal {
        match result {
            Err(HashError::Refused { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_caller_past_the_running_slot_and_the_queue_is_refused() {
        let hasher = hasher(1, Duration::from_secs(30));
        let (running, release) = occupy(&hasher).await;
        let queued = tokio::spawn({
            let hasher = hasher.clone();
            async move { hasher.hash("queued password").await }
        });
        // Let the second caller take its queue slot.
        while hasher.admitted.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let third = hasher.hash("third password").await;
        assert_eq!(refusal(third), HashingRefusal::QueueFull);
        let login = hasher.verify("third password", None).await;
        assert!(matches!(
            login,
            Err(HashError::Refused {
                reason: HashingRefusal::QueueFull,
                ..
            })
        ));

        release.send(()).unwrap();
        running.await.unwrap();
        let queued = queued.await.unwrap().unwrap();
        assert!(
            hasher
                .verify("queued password", Some(&queued))
                .await
                .unwrap()
        );
        assert_eq!(hasher.admitted.available_permits(), 2);
    }

    #[tokio::test]
    async fn a_caller_queued_past_the_wait_is_refused() {
        let hasher = hasher(4, Duration::from_secs(5));
        let (running, release) = occupy(&hasher).await;
        // A running blocking task stops the paused clock from advancing on
        // its own, so the test moves it.
        tokio::time::pause();
        let waiting = tokio::spawn({
            let hasher = hasher.clone();
            async move { hasher.hash("patient password").await }
        });
        while hasher.admitted.available_permits() > 3 {
            tokio::task::yield_now().await;
        }
        tokio::time::advance(Duration::from_millis(4_900)).await;
        assert!(!waiting.is_finished(), "refused before the wait was up");
        tokio::time::advance(Duration::from_millis(200)).await;
        let waited = waiting.await.unwrap();
        assert_eq!(refusal(waited), HashingRefusal::QueueTimeout);
        tokio::time::resume();
        // The refused caller gave its queue slot back.
        assert_eq!(hasher.admitted.available_permits(), 4);

        drop(release);
        running.await.unwrap();
        let hash = hasher.hash("patient password").await.unwrap();
        assert!(
            hasher
                .verify("patient password", Some(&hash))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn refusals_carry_the_queue_wait_as_retry_after() {
        let hasher = hasher(0, Duration::from_secs(3));
        let (running, release) = occupy(&hasher).await;
        match hasher.verify("anything", None).await {
            Err(HashError::Refused { retry_after, .. }) => {
                assert_eq!(retry_after, Duration::from_secs(3));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        drop(release);
        running.await.unwrap();
    }

    #[tokio::test]
    async fn an_abandoned_caller_keeps_its_slot_until_the_hash_ends() {
        let hasher = hasher(0, Duration::from_secs(30));
        let (release, released) = mpsc::channel::<()>();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let abandoned = tokio::spawn({
            let hasher = hasher.clone();
            async move {
                hasher
                    .bounded(move || {
                        let _ = started_tx.send(());
                        let _ = released.recv();
                    })
                    .await
            }
        });
        started.await.unwrap();
        abandoned.abort();
        let _ = abandoned.await;
        // The request is gone but its hash still runs: still no slot.
        assert_eq!(
            refusal(hasher.hash("next").await),
            HashingRefusal::QueueFull
        );
        release.send(()).unwrap();
        // The blocking task frees the slot when its work returns.
        tokio::time::timeout(Duration::from_secs(10), async {
            while hasher.running.available_permits() == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        hasher.hash("next").await.unwrap();
    }
}
