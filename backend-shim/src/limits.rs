//! Token buckets for the writes one caller may make: messages and member
//! changes per user, account creation per source address. A bucket holds
//! `burst` tokens and refills at `rate_per_s`; each write takes one. An empty
//! bucket answers 429 with the time until the next token, and the handler
//! writes nothing.
//!
//! The buckets are per process: with several backends behind a load
//! balancer each enforces its own limit, so a caller gets at most that many
//! times the rate, which still bounds what one token can do to a channel.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// More keys than this and idle (full) buckets are forgotten: a full bucket
/// is the same as no bucket, so memory stays bounded by the active callers.
const PRUNE_ABOVE: usize = 10_000;

/// How long until the caller may try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited: retry in {} ms", retry_after.as_millis())]
pub struct RateLimited {
    pub retry_after: Duration,
}

/// A rate and a burst; `rate_per_s == 0` or `burst == 0` turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_s: f64,
    pub burst: u32,
}

impl Rate {
    fn is_off(&self) -> bool {
        self.per_s <= 0.0 || self.burst == 0
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One bucket per key.
#[derive(Debug)]
pub struct RateLimit<K> {
    rate: Rate,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Copy> RateLimit<K> {
    pub fn new(rate: Rate) -> RateLimit<K> {
        RateLimit {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key`, or says how long until one is there.
    pub fn take(&self, key: K) -> Result<(), RateLimited> {
        self.take_at(key, Instant::now())
    }

    fn take_at(&self, key: K, now: Instant) -> Result<(), RateLimited> {
        if self.rate.is_off() {
            return Ok(());
        }
        let burst = f64::from(self.rate.burst);
        let per_s = self.rate.per_s;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_s < burst
            });
        }
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refilled = now.saturating_duration_since(b.at).as_secs_f64() * per_s;
        b.tokens = (b.tokens + refilled).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) / per_s;
            Err(RateLimited {
                retry_after: Duration::from_secs_f64(wait).max(Duration::from_millis(1)),
            })
        }
    }
}

/// Every limit of the API.
#[derive(Debug)]
pub struct Limits {
    /// `POST /channels/{id}/messages`, per user.
    pub messages: RateLimit<i64>,
    /// `PUT` and `DELETE /channels/{id}/members/{user}`, per user.
    pub members: RateLimit<i64>,
    /// `POST /users`, per source address.
    pub signups: RateLimit<IpAddr>,
}

impl Limits {
    pub fn new(messages: Rate, members: Rate, signups: Rate) -> Limits {
        Limits {
            messages: RateLimit::new(messages),
            members: RateLimit::new(members),
            signups: RateLimit::new(signups),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let limit = RateLimit::new(Rate {
            per_s: 2.0,
            burst: 3,
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limit.take_at(1, t0), Ok(()));
        }
        let refused = limit.take_at(1, t0).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        // Another key has its own bucket.
        assert_eq!(limit.take_at(2, t0), Ok(()));
        // Half a second later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(limit.take_at(1, t1), Ok(()));
        assert!(limit.take_at(1, t1).is_err());
    }

    #[test]
    fn zero_turns_a_limit_off() {
        for rate in [
            Rate {
                per_s: 0.0,
                burst: 5,
            },
            Rate {
                per_s: 5.0,
                burst: 0,
            },
        ] {
            let limit = RateLimit::new(rate);
            let t0 = Instant::now();
            for _ in 0..1000 {
                assert_eq!(limit.take_at(1, t0), Ok(()));
            }
        }
    }

    #[test]
    fn idle_buckets_are_forgotten() {
        let limit = RateLimit::new(Rate {
            per_s: 1000.0,
            burst: 1,
        });
        let t0 = Instant::now();
        for k in 0..=PRUNE_ABOVE as i64 {
            limit.take_at(k, t0).unwrap();
        }
        limit.take_at(-1, t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(limit.buckets.lock().unwrap().len(), 1);
    }
}
