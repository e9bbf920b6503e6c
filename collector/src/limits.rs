//! Per-agent request rate limit: a token bucket per agent id. A bucket holds up to `burst`
//! tokens and refills at `reports_per_second`; each report takes one. The burst lets an agent
//! replay its spool after an outage at full speed up to that many reports, then at the
//! sustained rate (the agent retries a refused report about a second later), so a replay is
//! paced, never starved.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets kept before full (idle) ones are forgotten; a full bucket is the same as none.
const PRUNE_ABOVE: usize = 50_000;

/// The limits applied to every agent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained reports per second per agent.
    pub reports_per_second: f64,
    /// Reports an agent may send at once after being quiet.
    pub burst: u32,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets by agent id.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> RateLimiter {
        RateLimiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes a token for `agent_id`, or says how long until one is available.
    pub fn try_acquire(&self, agent_id: &str, now: Instant) -> Result<(), Duration> {
        let burst = f64::from(self.limit.burst.max(1));
        let rate = self.limit.reports_per_second;
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            buckets.retain(|_, bucket| {
                bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * rate < burst
            });
        }
        let bucket = buckets.entry(agent_id.to_owned()).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_sustained_rate() {
        let limiter = RateLimiter::new(RateLimit {
            reports_per_second: 2.0,
            burst: 3,
        });
        let start = Instant::now();
        let passed = (0..5)
            .filter(|_| limiter.try_acquire("a", start).is_ok())
            .count();
        assert_eq!(passed, 3, "the burst");
        // Another agent has its own bucket.
        assert!(limiter.try_acquire("b", start).is_ok());
        let wait = limiter.try_acquire("a", start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(limiter.try_acquire("a", start + wait).is_ok());
        assert!(limiter.try_acquire("a", start + wait).is_err());
        // Quiet for long: back to a full burst, never more.
        let later = start + Duration::from_secs(60);
        let passed = (0..10)
            .filter(|_| limiter.try_acquire("a", later).is_ok())
            .count();
        assert_eq!(passed, 3);
    }
}
