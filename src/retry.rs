//! Retrying a gRPC call: exponential backoff with full jitter, per-attempt deadline, total budget.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use grpcio::RpcStatusCode;

use crate::rpc::RpcError;
use crate::shutdown::Shutdown;

/// First backoff ceiling; doubles after every failed attempt.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Largest backoff ceiling.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How one call is retried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Deadline of each attempt.
    pub attempt_timeout: Duration,
    /// Time after which no new attempt starts (the first attempt always runs).
    pub budget: Duration,
    /// Whether a status code is worth another attempt.
    pub retryable: fn(RpcStatusCode) -> bool,
}

impl RetryPolicy {
    /// The policy cut to end by `deadline`: no attempt starts after it, and none runs past it.
    pub fn until(self, deadline: Instant) -> RetryPolicy {
        let left = deadline.saturating_duration_since(Instant::now());
        RetryPolicy {
            budget: self.budget.min(left),
            attempt_timeout: self.attempt_timeout.min(left).max(Duration::from_millis(1)),
            ..self
        }
    }
}

/// Runs `attempt` (given its deadline) until it succeeds, fails for good, or the budget is spent.
/// `on_retry` hears about every failure that will be retried. A forced shutdown stops retrying.
pub fn retry<T>(
    policy: RetryPolicy,
    shutdown: &Shutdown,
    mut attempt: impl FnMut(Duration) -> Result<T, RpcError>,
    mut on_retry: impl FnMut(&RpcError, Duration),
) -> Result<T, RpcError> {
    let give_up_at = Instant::now() + policy.budget;
    let mut timeout = policy.attempt_timeout;
    let mut failures: u32 = 0;
    loop {
        let error = match attempt(timeout) {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        if !(policy.retryable)(error.code) || shutdown.is_forced() {
            return Err(error);
        }
        let pause = full_jitter(backoff_ceiling(failures));
        failures += 1;
        let remaining = give_up_at.saturating_duration_since(Instant::now());
        if pause >= remaining {
            return Err(error);
        }
        on_retry(&error, pause);
        if !shutdown.sleep(pause) {
            return Err(error);
        }
        timeout = policy
            .attempt_timeout
            .min(give_up_at.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(1));
    }
}

/// The backoff ceiling after `failures` failed attempts: 100 ms doubling, at most 5 s.
pub fn backoff_ceiling(failures: u32) -> Duration {
    INITIAL_BACKOFF
        .saturating_mul(2u32.saturating_pow(failures.min(16)))
        .min(MAX_BACKOFF)
}

/// Largest pause between failed FetchMatches calls of one profile.
const MAX_FETCH_BACKOFF: Duration = Duration::from_secs(30);

/// The pause after `failures` consecutive failed FetchMatches calls: the interval doubling per
/// failure up to 30 s, half of it fixed and half jittered, so a restarting backend is not stormed.
pub fn fetch_backoff(interval: Duration, failures: u32) -> Duration {
    let ceiling = interval
        .saturating_mul(2u32.saturating_pow(failures.min(16)))
        .min(MAX_FETCH_BACKOFF.max(interval));
    ceiling / 2 + full_jitter(ceiling / 2)
}

/// A uniformly random duration in `[0, ceiling]` ("full jitter").
pub fn full_jitter(ceiling: Duration) -> Duration {
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(random_u64() % nanos.saturating_add(1))
}

/// A random number from the standard library's per-process random hash keys.
fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn policy(budget_ms: u64) -> RetryPolicy {
        RetryPolicy {
            attempt_timeout: Duration::from_secs(1),
            budget: Duration::from_millis(budget_ms),
            retryable: |code| code == RpcStatusCode::UNAVAILABLE,
        }
    }

    fn unavailable() -> RpcError {
        RpcError::new(RpcStatusCode::UNAVAILABLE, "down")
    }

    #[test]
    fn ceiling_doubles_and_is_capped() {
        assert_eq!(backoff_ceiling(0), Duration::from_millis(100));
        assert_eq!(backoff_ceiling(3), Duration::from_millis(800));
        assert_eq!(backoff_ceiling(10), MAX_BACKOFF);
        assert_eq!(backoff_ceiling(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn fetch_backoff_grows_from_the_interval_up_to_30s() {
        let interval = Duration::from_secs(1);
        let first = fetch_backoff(interval, 1);
        assert!(first >= Duration::from_secs(1) && first <= Duration::from_secs(2));
        let late = fetch_backoff(interval, 20);
        assert!(late >= Duration::from_secs(15) && late <= MAX_FETCH_BACKOFF);
    }

    #[test]
    fn jitter_stays_within_ceiling_and_varies() {
        let ceiling = Duration::from_millis(100);
        let samples: Vec<_> = (0..200).map(|_| full_jitter(ceiling)).collect();
        assert!(samples.iter().all(|s| *s <= ceiling));
        assert!(samples.iter().any(|s| *s != samples[0]));
        assert_eq!(full_jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn retries_retryable_errors_until_success() {
        let calls = Cell::new(0);
        let result = retry(
            policy(10_000),
            &Shutdown::new(Duration::from_secs(1)),
            |_| {
                calls.set(calls.get() + 1);
                if calls.get() < 3 {
                    Err(unavailable())
                } else {
                    Ok(calls.get())
                }
            },
            |_, _| {},
        );
        assert_eq!(result, Ok(3));
    }

    /// How many attempts `retry` makes when every attempt fails with `code`.
    fn attempts_failing_with(code: RpcStatusCode, budget_ms: u64, shutdown: &Shutdown) -> usize {
        let calls = Cell::new(0);
        let result: Result<(), _> = retry(
            policy(budget_ms),
            shutdown,
            |_| {
                calls.set(calls.get() + 1);
                Err(RpcError::new(code, "failed"))
            },
            |_, _| {},
        );
        assert_eq!(result.unwrap_err().code, code);
        calls.get()
    }

    #[test]
    fn does_not_retry_other_codes() {
        let shutdown = Shutdown::new(Duration::from_secs(1));
        assert_eq!(
            attempts_failing_with(RpcStatusCode::INVALID_ARGUMENT, 10_000, &shutdown),
            1
        );
    }

    #[test]
    fn zero_budget_means_exactly_one_attempt() {
        let shutdown = Shutdown::new(Duration::from_secs(1));
        assert_eq!(
            attempts_failing_with(RpcStatusCode::UNAVAILABLE, 0, &shutdown),
            1
        );
    }

    #[test]
    fn budget_allows_several_attempts() {
        let shutdown = Shutdown::new(Duration::from_secs(1));
        assert!(attempts_failing_with(RpcStatusCode::UNAVAILABLE, 400, &shutdown) > 1);
    }

    #[test]
    fn forced_shutdown_stops_retrying() {
        let shutdown = Shutdown::new(Duration::from_secs(1));
        shutdown.force();
        assert_eq!(
            attempts_failing_with(RpcStatusCode::UNAVAILABLE, 10_000, &shutdown),
            1
        );
    }
}
