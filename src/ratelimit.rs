//! `ALLOCATE_RATE_LIMIT`: a token bucket per region that paces Allocate attempts, so that the
//! Director never sends an allocator more than it was told to. A worker reserves its turn before
//! the call, and only a turn that comes in time: a match that cannot get one before its deadline
//! is released at once instead of waiting past it. Fetchers do not fetch while the next turn is
//! further away than QUEUE_TIMEOUT.

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
    /// No token comes before the caller's deadline; none was taken.
    TooLate,
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

    /// Takes a token, waiting for the one reserved for this caller if the bucket is empty; but
    /// only a token that comes by `by` (when given): otherwise none is taken.
    pub fn acquire(&self, by: Option<Instant>, shutdown: &Shutdown) -> Turn {
        let now = Instant::now();
        let limit = by.map(|by| by.saturating_duration_since(now));
        match self.reserve(now, limit) {
            None => Turn::TooLate,
            Some(Duration::ZERO) => Turn::AtOnce,
            Some(wait) if shutdown.sleep(wait) => Turn::AfterWaiting,
            Some(_) => Turn::Cancelled,
        }
    }

    /// How long a caller asking now would wait for its token.
    pub fn wait_now(&self) -> Duration {
        let bucket = self.refilled(&mut lock(&self.bucket), Instant::now());
        Self::wait_for(bucket, self.per_second)
    }

    /// Reserves the next token at `now` if it comes within `limit` (any time when `None`);
    /// returns how long until it is there.
    fn reserve(&self, now: Instant, limit: Option<Duration>) -> Option<Duration> {
        let mut bucket = lock(&self.bucket);
        let tokens = self.refilled(&mut bucket, now);
        let wait = Self::wait_for(tokens, self.per_second);
        if limit.is_some_and(|limit| wait > limit) {
            return None;
        }
        bucket.tokens = tokens - 1.0;
        Some(wait)
    }

    /// The tokens at `now`, the bucket brought up to date.
    fn refilled(&self, bucket: &mut Bucket, now: Instant) -> f64 {
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now.max(bucket.at);
        bucket.tokens
    }

    /// How long until a token is there when the bucket holds `tokens`.
    fn wait_for(tokens: f64, per_second: f64) -> Duration {
        if tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - tokens) / per_second)
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
        let waits: Vec<Duration> = (0..8)
            .map(|_| limit.reserve(start, None).unwrap())
            .collect();
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
        assert_eq!(limit.reserve(start, None).unwrap(), Duration::ZERO);
        assert_eq!(limit.reserve(start, None).unwrap(), Duration::ZERO);
        assert_eq!(
            limit.reserve(start, None).unwrap(),
            Duration::from_millis(500)
        );
        let much_later = start + Duration::from_secs(60);
        assert_eq!(limit.reserve(much_later, None).unwrap(), Duration::ZERO);
        assert_eq!(limit.reserve(much_later, None).unwrap(), Duration::ZERO);
        assert!(
            limit.reserve(much_later, None).unwrap() > Duration::ZERO,
            "the burst is capped"
        );
    }

    #[test]
    fn a_forced_shutdown_cancels_the_wait() {
        let limit = RateLimit::new(1.0);
        let shutdown = Shutdown::new(Duration::ZERO);
        assert_eq!(limit.acquire(None, &shutdown), Turn::AtOnce);
        shutdown.force();
        assert_eq!(limit.acquire(None, &shutdown), Turn::Cancelled);
    }

    #[test]
    fn a_turn_that_would_come_too_late_is_not_taken() {
        let limit = RateLimit::new(1.0);
        let start = Instant::now();
        assert_eq!(
            limit.reserve(start, Some(Duration::ZERO)),
            Some(Duration::ZERO)
        );
        assert_eq!(limit.reserve(start, Some(Duration::from_millis(500))), None);
        assert_eq!(
            limit.reserve(start, Some(Duration::from_secs(1))),
            Some(Duration::from_secs(1)),
            "the turn refused above was not taken"
        );
        let shutdown = Shutdown::new(Duration::ZERO);
        assert_eq!(
            limit.acquire(Some(Instant::now()), &shutdown),
            Turn::TooLate
        );
        assert!(limit.wait_now() > Duration::from_millis(1500));
    }
}
