//! The token bucket behind every rate limit: a client's frames (`crate::session`) and the
//! HTTP API's calls (`crate::api`).
//!
//! A bucket holds at most `burst` tokens and earns `rate` a second; each frame or call takes
//! one, and finds none when it comes too fast. Time enters as the `Instant` of each take,
//! which keeps tests exact.

use std::time::Instant;

/// The classic token bucket: `rate` tokens a second, holding at most `burst`.
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: Instant::now(),
        }
    }

    /// Takes a token if there is one. A rate of 0 means no limit.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let earned = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn token_bucket_allows_bursts_then_the_rate() {
        let start = Instant::now();
        let mut b = TokenBucket::new(10, 3);
        b.last = start;
        assert!((0..3).all(|_| b.take(start)));
        assert!(!b.take(start));
        assert!(b.take(start + Duration::from_millis(100)));
        assert!(!b.take(start + Duration::from_millis(150)));
        let mut off = TokenBucket::new(0, 1);
        assert!((0..1000).all(|_| off.take(start)));
    }
}
