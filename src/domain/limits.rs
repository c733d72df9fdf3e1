//! Rate limits as plain state machines: a token bucket, growing back-off after
//! failed logins, and a sliding window for registrations. Time arrives as
//! `now`, so every rule is tested without sleeping.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Tokens refill at `rate` per second up to `burst`; each frame takes one.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token, or says how long until one is available.
    ///
    /// # Errors
    /// The wait before the next token.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// How failed logins are slowed down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Failures allowed before the first wait.
    pub free_failures: u32,
    /// The first wait; each further failure doubles it.
    pub initial: Duration,
    pub max: Duration,
    /// A key with no failure for this long is forgotten.
    pub forget_after: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    blocked_until: Instant,
    last: Instant,
}

/// Failed attempts per key (a username, or a source address) with growing back-off.
#[derive(Debug)]
pub struct Backoff<K> {
    policy: BackoffPolicy,
    keys: HashMap<K, Failures>,
    /// Bound on remembered keys, so a flood of made-up names cannot grow memory.
    capacity: usize,
}

impl<K: Hash + Eq + Clone> Backoff<K> {
    pub fn new(policy: BackoffPolicy, capacity: usize) -> Backoff<K> {
        Backoff {
            policy,
            keys: HashMap::new(),
            capacity,
        }
    }

    /// Whether `key` may try now.
    ///
    /// # Errors
    /// How long it must wait.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        match self.keys.get(key) {
            Some(f) if f.blocked_until > now => Err(f.blocked_until - now),
            _ => Ok(()),
        }
    }

    /// Records a failure; returns the wait it now imposes, if any.
    pub fn fail(&mut self, key: &K, now: Instant) -> Option<Duration> {
        if self.keys.len() >= self.capacity && !self.keys.contains_key(key) {
            self.forget_old(now);
            if self.keys.len() >= self.capacity {
                // Full of live entries: make room by dropping the least recent.
                if let Some(oldest) = self
                    .keys
                    .iter()
                    .min_by_key(|(_, f)| f.last)
                    .map(|(k, _)| k.clone())
                {
                    self.keys.remove(&oldest);
                }
            }
        }
        let policy = self.policy;
        let entry = self.keys.entry(key.clone()).or_insert(Failures {
            count: 0,
            blocked_until: now,
            last: now,
        });
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        let over = entry.count.checked_sub(policy.free_failures)?;
        if over == 0 {
            return None;
        }
        let factor = 2u32.saturating_pow(over.saturating_sub(1).min(30));
        let wait = policy.initial.saturating_mul(factor).min(policy.max);
        entry.blocked_until = now + wait;
        Some(wait)
    }

    /// A success clears the key.
    pub fn succeed(&mut self, key: &K) {
        self.keys.remove(key);
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn forget_old(&mut self, now: Instant) {
        let forget = self.policy.forget_after;
        self.keys
            .retain(|_, f| f.blocked_until > now || now.saturating_duration_since(f.last) < forget);
    }
}

/// At most `limit` events per key per `window`.
#[derive(Debug)]
pub struct Window<K> {
    limit: u32,
    window: Duration,
    keys: HashMap<K, (Instant, u32)>,
}

impl<K: Hash + Eq + Clone> Window<K> {
    pub fn new(limit: u32, window: Duration) -> Window<K> {
        Window {
            limit,
            window,
            keys: HashMap::new(),
        }
    }

    /// Counts an event for `key` if the window has room.
    ///
    /// # Errors
    /// How long until the window resets.
    pub fn admit(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        if self.keys.len() > 10_000 {
            let window = self.window;
            self.keys
                .retain(|_, (start, _)| now.saturating_duration_since(*start) < window);
        }
        let entry = self.keys.entry(key.clone()).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.limit {
            return Err(self.window - now.saturating_duration_since(entry.0));
        }
        entry.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A bucket gives its burst at once, then one token per 1/rate seconds.
    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3.0, t0);
        assert!((0..3).all(|_| b.take(t0).is_ok()));
        let wait = b.take(t0).unwrap_err();
        assert_eq!(wait, 100 * MS);
        assert!(b.take(t0 + 50 * MS).is_err());
        assert!(b.take(t0 + 101 * MS).is_ok());
        assert!(b.take(t0 + 10_000 * MS).is_ok(), "refills");
    }

    /// Waits start after the free failures and double up to the maximum; success clears them.
    #[test]
    fn login_backoff_grows_and_a_success_clears_it() {
        let policy = BackoffPolicy {
            free_failures: 2,
            initial: 1000 * MS,
            max: 5000 * MS,
            forget_after: Duration::from_secs(60),
        };
        let mut b = Backoff::new(policy, 100);
        let t = Instant::now();
        assert_eq!(b.fail(&"alice", t), None);
        assert_eq!(b.fail(&"alice", t), None);
        assert_eq!(b.check(&"alice", t), Ok(()));
        assert_eq!(b.fail(&"alice", t), Some(1000 * MS));
        assert_eq!(b.check(&"alice", t + 400 * MS), Err(600 * MS));
        assert_eq!(b.fail(&"alice", t), Some(2000 * MS));
        assert_eq!(b.fail(&"alice", t), Some(4000 * MS));
        assert_eq!(b.fail(&"alice", t), Some(5000 * MS), "capped");
        assert_eq!(b.check(&"bob", t), Ok(()), "other keys are unaffected");
        b.succeed(&"alice");
        assert_eq!(b.check(&"alice", t), Ok(()));
    }

    /// The table never holds more than its capacity, however many keys fail.
    #[test]
    fn the_backoff_table_is_bounded() {
        let policy = BackoffPolicy {
            free_failures: 0,
            initial: MS,
            max: MS,
            forget_after: Duration::from_secs(60),
        };
        let mut b = Backoff::new(policy, 10);
        let t = Instant::now();
        for i in 0..1000 {
            b.fail(&i, t);
        }
        assert!(b.len() <= 10);
    }

    /// A window admits its limit, refuses until it resets, then admits again.
    #[test]
    fn a_window_admits_its_limit_per_period() {
        let mut w = Window::new(2, Duration::from_secs(60));
        let t = Instant::now();
        assert!(w.admit(&1, t).is_ok() && w.admit(&1, t).is_ok());
        assert_eq!(
            w.admit(&1, t + Duration::from_secs(10)),
            Err(Duration::from_secs(50))
        );
        assert!(w.admit(&2, t).is_ok(), "per key");
        assert!(w.admit(&1, t + Duration::from_secs(60)).is_ok());
    }
}
