//! Rate limits as plain state machines: a token bucket, one bucket per source
//! address (registrations), growing back-off after failed logins, and the
//! networks exempt from per-address limits. Time arrives as `now`, so every
//! rule is tested without sleeping.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
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

    /// Whether the bucket has refilled to its burst by `now`: forgetting it
    /// then changes nothing.
    fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
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

/// One [`TokenBucket`] per key (a source address), created full on first use:
/// a key may spend `burst` at once, then `rate` per second.
#[derive(Debug)]
pub struct Buckets<K> {
    rate: f64,
    burst: f64,
    keys: HashMap<K, TokenBucket>,
    /// Bound on remembered keys, so a flood from many addresses cannot grow memory.
    capacity: usize,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    pub fn new(rate: f64, burst: f64, capacity: usize) -> Buckets<K> {
        Buckets {
            rate,
            burst,
            keys: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Takes a token from `key`'s bucket.
    ///
    /// # Errors
    /// How long until the key has a token again.
    pub fn take(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        if self.keys.len() >= self.capacity && !self.keys.contains_key(key) {
            // A full bucket is what a new key gets anyway: dropping those loses nothing.
            self.keys.retain(|_, bucket| !bucket.is_full(now));
            if self.keys.len() >= self.capacity
                && let Some(oldest) = self
                    .keys
                    .iter()
                    .min_by_key(|(_, bucket)| bucket.last)
                    .map(|(k, _)| k.clone())
            {
                self.keys.remove(&oldest);
            }
        }
        let (rate, burst) = (self.rate, self.burst);
        self.keys
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::new(rate, burst, now))
            .take(now)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `::1/128`): the clients of
/// `limits.exempt_networks`. A bare address is a network of that one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a text is not a network; says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrError(String);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CidrError {}

impl Cidr {
    /// Whether `ip` is in this network. An IPv4 client seen on an IPv6 socket
    /// (`::ffff:10.1.2.3`) matches the IPv4 network it belongs to.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.contains_exactly(ip) || self.contains_exactly(ip.to_canonical())
    }

    /// Whether any of `networks` contains `ip`.
    pub fn any_contains(networks: &[Cidr], ip: IpAddr) -> bool {
        networks.iter().any(|n| n.contains(ip))
    }

    fn contains_exactly(&self, ip: IpAddr) -> bool {
        // A mask of the other family never equals the network.
        mask(ip, self.prefix).is_some_and(|masked| masked == self.network)
    }
}

/// `ip` with the bits after `prefix` cleared; `None` if `prefix` is too long.
fn mask(ip: IpAddr, prefix: u8) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(a) if prefix <= 32 => {
            let bits = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            Some(IpAddr::V4(Ipv4Addr::from(u32::from(a) & bits)))
        }
        IpAddr::V6(a) if prefix <= 128 => {
            let bits = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            Some(IpAddr::V6(Ipv6Addr::from(u128::from(a) & bits)))
        }
        _ => None,
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let text = text.trim();
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr = IpAddr::from_str(addr_text).map_err(|_| {
            CidrError(format!(
                "{text:?} is not a network: {addr_text:?} is not an IP address (write a network as 10.0.0.0/8 or fd00::/8)"
            ))
        })?;
        let (version, max) = if addr.is_ipv4() { (4, 32) } else { (6, 128) };
        let prefix = match prefix_text {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&n| n <= max && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| {
                    CidrError(format!(
                        "{text:?} is not a network: the prefix length after / must be a number from 0 to {max} for IPv{version}"
                    ))
                })?,
        };
        let network = mask(addr, prefix).unwrap_or(addr);
        if network != addr {
            return Err(CidrError(format!(
                "{text:?} has address bits set after the /{prefix} prefix; did you mean {network}/{prefix}?"
            )));
        }
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
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

    /// Each key has its own bucket: its burst at once, then its rate; a
    /// refilled bucket is forgotten before live ones when the table is full.
    #[test]
    fn buckets_per_key_allow_a_burst_then_the_rate() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let mut b = Buckets::new(0.5, 3.0, 2);
        assert!((0..3).all(|_| b.take(&1, t).is_ok()), "the burst");
        assert_eq!(b.take(&1, t), Err(s(2)));
        assert!(b.take(&2, t).is_ok(), "per key");
        assert!(b.take(&1, t + s(2)).is_ok(), "the rate");
        assert!(b.take(&1, t + s(3)).is_err());
        // At t+4 key 2 has refilled and key 1 has not: 2 is the one forgotten.
        assert!(b.take(&3, t + s(4)).is_ok());
        assert_eq!(b.len(), 2);
        assert!(b.take(&1, t + s(4)).is_ok());
        assert!(b.take(&1, t + s(4)).is_err(), "key 1 was remembered");
    }

    /// The bucket table never holds more than its capacity.
    #[test]
    fn the_bucket_table_is_bounded() {
        let t = Instant::now();
        let mut b = Buckets::new(0.001, 1.0, 10);
        for i in 0..1000 {
            let _ = b.take(&i, t);
        }
        assert!(b.len() <= 10);
    }

    fn net(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// IPv4 and IPv6 networks contain exactly their addresses; a bare address
    /// is a one-address network; IPv4 clients on an IPv6 socket still match.
    #[test]
    fn networks_contain_their_addresses() {
        let ten = net("10.0.0.0/8");
        assert!(ten.contains(ip("10.0.0.0")) && ten.contains(ip("10.255.255.255")));
        assert!(!ten.contains(ip("11.0.0.0")) && !ten.contains(ip("9.255.255.255")));
        assert!(ten.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped");
        assert!(!ten.contains(ip("::a01:203")), "IPv6 that is not mapped");
        let lan = net("192.168.1.0/24");
        assert!(lan.contains(ip("192.168.1.77")) && !lan.contains(ip("192.168.2.1")));
        let one = net("127.0.0.1");
        assert_eq!(one.to_string(), "127.0.0.1/32");
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let all4 = net("0.0.0.0/0");
        assert!(all4.contains(ip("203.0.113.9")) && !all4.contains(ip("2001:db8::1")));
        let loop6 = net("::1/128");
        assert!(loop6.contains(ip("::1")) && !loop6.contains(ip("::2")));
        assert!(!loop6.contains(ip("127.0.0.1")));
        let ula = net("fd00::/8");
        assert!(ula.contains(ip("fd12:3456::1")) && !ula.contains(ip("fe80::1")));
        let doc = net("2001:db8:0:1::/64");
        assert!(doc.contains(ip("2001:db8:0:1:ffff::1")) && !doc.contains(ip("2001:db8:0:2::1")));
        assert!(Cidr::any_contains(&[ten, loop6], ip("::1")));
        assert!(!Cidr::any_contains(&[], ip("::1")));
        assert_eq!(net(" 10.0.0.0/8 "), ten, "spaces around are ignored");
    }

    /// Malformed networks are refused with a message that says what is wrong.
    #[test]
    fn malformed_networks_are_refused_clearly() {
        let err = |text: &str| text.parse::<Cidr>().unwrap_err().to_string();
        assert!(
            err("10.0.0.0/33").contains("from 0 to 32 for IPv4"),
            "{}",
            err("10.0.0.0/33")
        );
        assert!(err("::/129").contains("from 0 to 128 for IPv6"));
        assert!(err("10.0.0.0/").contains("prefix length"));
        assert!(err("10.0.0.0/+8").contains("prefix length"));
        assert!(err("10.0.0.0/eight").contains("prefix length"));
        assert!(err("localhost/8").contains("\"localhost\" is not an IP address"));
        assert!(err("").contains("is not an IP address"));
        assert!(err("10.0.0/8").contains("is not an IP address"));
        assert_eq!(
            err("10.1.2.3/8"),
            "\"10.1.2.3/8\" has address bits set after the /8 prefix; did you mean 10.0.0.0/8?"
        );
        assert!(err("fd00::1/8").contains("did you mean fd00::/8?"));
    }
}
