//! `ALLOCATE_RATE_LIMIT`: a token bucket per region that paces Allocate attempts, so that the
//! Director never sends an allocator more than it was told to. A worker waits for its turn before
//! the call, so a throttled match waits (and the matches behind it wait in the queue) instead of
//! failing and burning retries.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::shutdown::Shutdown;
use crate::sync::lock;

/// Allocate attempts per second, with bursts of at most one second's worth (at least one).
pub struct RateLimit {
    per_second: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
}

/// Tokens at `at`; negative when callers have reserved tokens that are still to come.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// How a caller got its turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    /// A token was there.
    AtOnce,
    /// It waited for its token.
    AfterWaiting,
    /// Shutdown was forced while it waited: no call may be made.
    Cancelled,
}

impl RateLimit {
    /// A full bucket for `per_second` tokens a second (`per_second` > 0).
    pub fn new(per_second: f64) -> RateLimit {
        let burst = per_second.max(1.0);
        RateLimit {
            per_second,
            burst,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                at: Instant::now(),
            }),
        }
    }

    /// Takes a token, waiting for the one reserved for this caller if the bucket is empty.
    pub fn acquire(&self, shutdown: &Shutdown) -> Turn {
        match self.reserve(Instant::now()) {
            Duration::ZERO => Turn::AtOnce,
            wait if shutdown.sleep(wait) => Turn::AfterWaiting,
            _ => Turn::Cancelled,
        }
    }

    /// Reserves the next token at `now`; returns how long until it is there.
    fn reserve(&self, now: Instant) -> Duration {
        let mut bucket = lock(&self.bucket);
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.burst) - 1.0;
        bucket.at = now;
        if bucket.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-bucket.tokens / self.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_second_then_one_token_per_interval() {
        let limit = RateLimit::new(4.0);
        let start = Instant::now();
        let waits: Vec<Duration> = (0..8).map(|_| limit.reserve(start)).collect();
        assert_eq!(&waits[..4], [Duration::ZERO; 4]);
        assert_eq!(
            &waits[4..],
            [250, 500, 750, 1000].map(Duration::from_millis)
        );
    }

    #[test]
    fn tokens_come_back_with_time_up_to_the_burst() {
        let limit = RateLimit::new(2.0);
        let start = Instant::now();
        assert_eq!(limit.reserve(start), Duration::ZERO);
        assert_eq!(limit.reserve(start), Duration::ZERO);
        assert_eq!(limit.reserve(start), Duration::from_millis(500));
        let much_later = start + Duration::from_secs(60);
        assert_eq!(limit.reserve(much_later), Duration::ZERO);
        assert_eq!(limit.reserve(much_later), Duration::ZERO);
        assert!(
            limit.reserve(much_later) > Duration::ZERO,
            "the burst is capped"
        );
    }

    #[test]
    fn a_forced_shutdown_cancels_the_wait() {
        let limit = RateLimit::new(1.0);
        let shutdown = Shutdown::new(Duration::ZERO);
        assert_eq!(limit.acquire(&shutdown), Turn::AtOnce);
        shutdown.force();
        assert_eq!(limit.acquire(&shutdown), Turn::Cancelled);
    }
}
