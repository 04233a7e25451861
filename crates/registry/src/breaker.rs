//! A circuit breaker in front of Redis, so that a Redis that is down costs
//! each caller nothing instead of a timeout.
//!
//! Every caller of the registry has a safe answer to an error (producers
//! send to every gateway, a gateway holds again at its next heartbeat), so
//! the only harm an unavailable Redis can do is time: a REST post that
//! waits for a lookup, a subscribe that waits for a hold. Timeouts bound
//! one call; the breaker stops paying even that. After
//! [`BreakerConfig::failures`] consecutive failures it opens for
//! [`BreakerConfig::cool_down`] and every call fails at once with
//! [`RegistryError::CircuitOpen`] without touching Redis. Then one call —
//! the probe — goes through (half-open): its success closes the breaker,
//! its failure opens it for another cool-down. Calls arriving while the
//! probe is in flight fail at once too, so a Redis that is still down is
//! asked once per cool-down, not once per request.
//!
//! The voice roster's Redis store stands behind one of its own
//! ([`Breaker::run`] takes any error type).
//!
//! Time is `tokio::time`, so the state machine is tested on a paused clock.

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::{RegistryError, RegistryResult};

/// When the breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker. At least 1.
    pub failures: u32,
    /// How long it stays open before one probe is let through.
    pub cool_down: Duration,
    /// The longest one call may take, whatever the client library's own
    /// timeouts do (a reconnect in progress, a retry): past it the call
    /// fails as [`RegistryError::TimedOut`] and counts as a failure.
    pub call_timeout: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 3,
            cool_down: Duration::from_secs(2),
            call_timeout: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// The probe is in flight; everything else is refused until it ends.
    HalfOpen,
}

/// Why [`Breaker::run`] did not give the call's own answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tripped {
    /// The breaker is open: the call was not made.
    Open,
    /// The call ran past the call timeout and was dropped.
    TimedOut,
}

/// The breaker's state machine; see the module docs.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: Mutex<State>,
}

/// Whether an admitted call is the half-open probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Normal,
    Probe,
}

/// An admitted call. A probe dropped before it reported (its caller was
/// cancelled) counts as a failed probe, so the breaker can never stay
/// half-open with nobody probing.
struct Permit<'a> {
    breaker: &'a Breaker,
    role: Role,
    reported: bool,
}

impl Permit<'_> {
    fn report(mut self, success: bool) {
        self.reported = true;
        self.breaker.record(self.role, success);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.reported && self.role == Role::Probe {
            self.breaker.record(Role::Probe, false);
        }
    }
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config: BreakerConfig {
                failures: config.failures.max(1),
                ..config
            },
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// Runs `call` unless the breaker is open, within the call timeout,
    /// and records its outcome. Only a failure to reach Redis counts:
    /// `Recovering` is an answer.
    pub(crate) async fn call<T>(
        &self,
        call: impl Future<Output = RegistryResult<T>>,
    ) -> RegistryResult<T> {
        match self
            .run(call, |err| matches!(err, RegistryError::Redis(_)))
            .await
        {
            Ok(result) => result,
            Err(Tripped::Open) => Err(RegistryError::CircuitOpen),
            Err(Tripped::TimedOut) => Err(RegistryError::TimedOut),
        }
    }

    /// Runs `call` unless the breaker is open, within the call timeout, and
    /// records its outcome: a timeout, or an error for which `unreachable`
    /// holds, is a failure; any other answer is a success.
    pub async fn run<T, E>(
        &self,
        call: impl Future<Output = Result<T, E>>,
        unreachable: impl Fn(&E) -> bool,
    ) -> Result<Result<T, E>, Tripped> {
        let permit = self.admit().map_err(|_| Tripped::Open)?;
        let Ok(result) = tokio::time::timeout(self.config.call_timeout, call).await else {
            permit.report(false);
            return Err(Tripped::TimedOut);
        };
        permit.report(!result.as_ref().is_err_and(&unreachable));
        Ok(result)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value that every transition sets whole, so
        // a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn admit(&self) -> RegistryResult<Permit<'_>> {
        let mut state = self.lock();
        let role = match *state {
            State::Closed { .. } => Role::Normal,
            State::Open { until } if Instant::now() >= until => {
                *state = State::HalfOpen;
                Role::Probe
            }
            State::Open { .. } | State::HalfOpen => return Err(RegistryError::CircuitOpen),
        };
        Ok(Permit {
            breaker: self,
            role,
            reported: false,
        })
    }

    fn record(&self, role: Role, success: bool) {
        let mut state = self.lock();
        let next = match (*state, role, success) {
            // Redis answered: whatever was counted is forgiven.
            (State::HalfOpen, Role::Probe, true) => {
                tracing::info!("redis answers again; registry circuit closed");
                State::Closed { failures: 0 }
            }
            (State::Closed { .. }, _, true) => State::Closed { failures: 0 },
            (State::HalfOpen, Role::Probe, false) => self.open(),
            (State::Closed { failures }, _, false) => {
                let failures = failures.saturating_add(1);
                if failures >= self.config.failures {
                    tracing::warn!(
                        failures,
                        cool_down_ms = self.config.cool_down.as_millis(),
                        "redis keeps failing; registry circuit open"
                    );
                    self.open()
                } else {
                    State::Closed { failures }
                }
            }
            // A call admitted before the breaker opened, ending now: the
            // probe (or the cool-down) decides, not a straggler.
            (State::Open { .. } | State::HalfOpen, _, _) => *state,
        };
        *state = next;
    }

    fn open(&self) -> State {
        State::Open {
            until: Instant::now() + self.config.cool_down,
        }
    }

    #[cfg(test)]
    fn is_open(&self) -> bool {
        !matches!(*self.lock(), State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const COOL_DOWN: Duration = Duration::from_secs(2);

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            failures: 3,
            cool_down: COOL_DOWN,
            call_timeout: Duration::from_millis(500),
        })
    }

    /// A call that reaches "Redis" (counted) and fails or succeeds.
    async fn call(breaker: &Breaker, reached: &AtomicUsize, ok: bool) -> RegistryResult<()> {
        breaker
            .call(async {
                reached.fetch_add(1, Ordering::SeqCst);
                if ok {
                    Ok(())
                } else {
                    Err(RegistryError::Redis(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "connection refused",
                    ))))
                }
            })
            .await
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_then_answers_at_once() {
        let breaker = breaker();
        let reached = AtomicUsize::new(0);
        for _ in 0..2 {
            assert!(call(&breaker, &reached, false).await.is_err());
        }
        assert!(!breaker.is_open(), "two failures of three keep it closed");
        assert!(call(&breaker, &reached, false).await.is_err());
        assert!(breaker.is_open());
        assert_eq!(reached.load(Ordering::SeqCst), 3);

        let started = Instant::now();
        for _ in 0..100 {
            let refused = call(&breaker, &reached, true).await;
            assert!(matches!(refused, Err(RegistryError::CircuitOpen)));
        }
        assert_eq!(reached.load(Ordering::SeqCst), 3, "open: Redis untouched");
        assert_eq!(started.elapsed(), Duration::ZERO, "open: no waiting");
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count() {
        let breaker = breaker();
        let reached = AtomicUsize::new(0);
        for _ in 0..5 {
            assert!(call(&breaker, &reached, false).await.is_err());
            assert!(call(&breaker, &reached, false).await.is_err());
            assert!(call(&breaker, &reached, true).await.is_ok());
        }
        assert!(!breaker.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_one_probe_through_and_its_success_closes() {
        let breaker = breaker();
        let reached = AtomicUsize::new(0);
        for _ in 0..3 {
            assert!(call(&breaker, &reached, false).await.is_err());
        }
        tokio::time::advance(COOL_DOWN - Duration::from_millis(1)).await;
        assert!(matches!(
            call(&breaker, &reached, true).await,
            Err(RegistryError::CircuitOpen)
        ));
        tokio::time::advance(Duration::from_millis(1)).await;

        // The probe is slow; a call arriving meanwhile is refused at once.
        let (release, hold) = tokio::sync::oneshot::channel::<()>();
        let probe = breaker.call(async {
            reached.fetch_add(1, Ordering::SeqCst);
            let _ = hold.await;
            Ok(())
        });
        let refused_meanwhile = async {
            tokio::task::yield_now().await;
            let refused = call(&breaker, &reached, true).await;
            let _ = release.send(());
            refused
        };
        let (probed, refused) = tokio::join!(probe, refused_meanwhile);
        assert!(probed.is_ok());
        assert!(matches!(refused, Err(RegistryError::CircuitOpen)));
        assert_eq!(reached.load(Ordering::SeqCst), 4, "only the probe reached");

        assert!(!breaker.is_open());
        assert!(call(&breaker, &reached, true).await.is_ok());
        assert_eq!(reached.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_for_another_cool_down() {
        let breaker = breaker();
        let reached = AtomicUsize::new(0);
        for _ in 0..3 {
            assert!(call(&breaker, &reached, false).await.is_err());
        }
        tokio::time::advance(COOL_DOWN).await;
        assert!(call(&breaker, &reached, false).await.is_err());
        assert_eq!(reached.load(Ordering::SeqCst), 4);
        assert!(matches!(
            call(&breaker, &reached, true).await,
            Err(RegistryError::CircuitOpen)
        ));
        tokio::time::advance(COOL_DOWN).await;
        assert!(call(&breaker, &reached, true).await.is_ok());
        assert!(!breaker.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_call_times_out_and_counts_as_a_failure() {
        let breaker = breaker();
        for _ in 0..3 {
            let started = Instant::now();
            let hung = breaker
                .call(std::future::pending::<RegistryResult<()>>())
                .await;
            assert!(matches!(hung, Err(RegistryError::TimedOut)));
            assert_eq!(started.elapsed(), Duration::from_millis(500));
        }
        assert!(breaker.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_reopens_instead_of_sticking_half_open() {
        let breaker = breaker();
        let reached = AtomicUsize::new(0);
        for _ in 0..3 {
            assert!(call(&breaker, &reached, false).await.is_err());
        }
        tokio::time::advance(COOL_DOWN).await;
        let cancelled = tokio::time::timeout(
            Duration::from_millis(10),
            breaker.call(std::future::pending::<RegistryResult<()>>()),
        )
        .await;
        assert!(cancelled.is_err());
        tokio::time::advance(COOL_DOWN).await;
        assert!(call(&breaker, &reached, true).await.is_ok());
        assert!(!breaker.is_open());
    }

    #[test]
    fn redis_options_read_their_variables_and_derive_the_call_timeout() {
        use filament_runtime::Env;

        use crate::RedisOptions;

        let defaults = RedisOptions::from_env(&Env::default()).expect("defaults");
        assert_eq!(defaults, RedisOptions::default());
        assert_eq!(defaults.timeout, Duration::from_millis(250));
        assert_eq!(defaults.breaker.call_timeout, Duration::from_secs(1));

        let tuned = RedisOptions::from_env(&Env::from_pairs([
            ("FILAMENT_REDIS_TIMEOUT_MS", "100"),
            ("FILAMENT_REDIS_BREAKER_FAILURES", "5"),
            ("FILAMENT_REDIS_BREAKER_COOL_DOWN_MS", "750"),
        ]))
        .expect("tuned");
        assert_eq!(tuned.timeout, Duration::from_millis(100));
        assert_eq!(
            tuned.breaker,
            BreakerConfig {
                failures: 5,
                cool_down: Duration::from_millis(750),
                call_timeout: Duration::from_millis(400),
            }
        );

        for name in [
            "FILAMENT_REDIS_TIMEOUT_MS",
            "FILAMENT_REDIS_BREAKER_FAILURES",
        ] {
            let zero = RedisOptions::from_env(&Env::from_pairs([(name, "0")]));
            assert!(
                matches!(zero, Err(filament_runtime::ConfigError::Invalid { name: bad, .. }) if bad == name),
                "{zero:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn recovering_is_an_answer_not_a_failure() {
        let breaker = breaker();
        for _ in 0..10 {
            let answer = breaker
                .call(async { Err::<(), _>(RegistryError::Recovering) })
                .await;
            assert!(matches!(answer, Err(RegistryError::Recovering)));
        }
        assert!(!breaker.is_open());
    }
}
