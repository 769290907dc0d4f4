//! Token buckets per client (a token, or for anonymous reads an address's /64 or IPv4
//! address: `quota::Client`): `rate` requests per second on average, bursts up to `burst`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::quota::Client;

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<Buckets>,
}

#[derive(Default)]
struct Buckets {
    map: HashMap<Client, Bucket>,
    /// When full buckets were last dropped: at most once a second, so that clients who keep
    /// 100,000 buckets busy do not make every newcomer scan them all under the lock.
    swept: Option<Instant>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Buckets kept before idle ones are dropped (bounds memory under many anonymous clients).
const MAX_BUCKETS: usize = 100_000;

impl RateLimiter {
    /// `rate` 0 disables limiting; `burst` 0 means one second's worth.
    pub fn new(rate: u32, burst: u32) -> Self {
        let rate = f64::from(rate);
        let burst = if burst == 0 {
            rate.max(1.0)
        } else {
            f64::from(burst)
        };
        RateLimiter {
            rate,
            burst,
            buckets: Mutex::new(Buckets::default()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.rate > 0.0
    }

    /// Takes one token for `client`; `Err(seconds)` to wait when there is none.
    pub fn check(&self, client: &Client) -> Result<(), u64> {
        if !self.enabled() {
            return Ok(());
        }
        let now = Instant::now();
        let mut guard = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let Buckets {
            map: buckets,
            swept,
        } = &mut *guard;
        let sweep_due = swept.is_none_or(|at| now.duration_since(at).as_secs() >= 1);
        if buckets.len() >= MAX_BUCKETS && sweep_due && !buckets.contains_key(client) {
            // Full buckets are the same as no bucket: forget them.
            let burst = self.burst;
            let rate = self.rate;
            buckets
                .retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * rate < burst);
            *swept = Some(now);
        }
        let bucket = match buckets.get_mut(client) {
            Some(b) => b,
            None => buckets.entry(client.clone()).or_insert(Bucket {
                tokens: self.burst,
                last: now,
            }),
        };
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate;
            Err(wait.ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv6Addr};

    fn address(n: u32) -> Client {
        Client::Address(IpAddr::V6(Ipv6Addr::from(u128::from(n) << 64)))
    }

    /// With every bucket busy, the full scan for idle ones runs at most once a second, not for
    /// every new client: each newcomer would otherwise scan 100,000 buckets under the lock.
    #[test]
    fn busy_buckets_are_swept_at_most_once_a_second() {
        let limiter = RateLimiter::new(1, 1);
        for n in 0..MAX_BUCKETS as u32 {
            assert!(limiter.check(&address(n)).is_ok());
        }
        let swept = |l: &RateLimiter| l.buckets.lock().unwrap().swept;
        assert_eq!(swept(&limiter), None);
        assert!(limiter.check(&address(u32::MAX)).is_ok());
        let first = swept(&limiter).expect("swept once full");
        assert!(limiter.check(&address(u32::MAX - 1)).is_ok());
        assert_eq!(swept(&limiter), Some(first), "not again within the second");
        // The busy buckets were kept: their clients are still limited.
        assert!(limiter.check(&address(MAX_BUCKETS as u32 - 1)).is_err());
        assert_eq!(limiter.buckets.lock().unwrap().map.len(), MAX_BUCKETS + 2);
    }
}
