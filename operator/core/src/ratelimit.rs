//! Keyed rate limiting: the one implementation (GCRA from the `governor` crate) for every
//! per-key limit, with eviction so that a key seen once does not stay in memory forever.
//!
//! A limit of `n` per minute allows a burst of `n` calls per key and then one call every
//! `60 s / n` (the hand-made fixed window it replaces allowed `2n` across a window boundary).

use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Keys whose state is back to "fresh" are dropped every this many checks.
const EVICT_EVERY: u64 = 4096;

pub struct KeyedLimiter<K: Hash + Eq + Clone> {
    /// `None`: unlimited.
    limiter: Option<DefaultKeyedRateLimiter<K>>,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// At most `n` calls per key per minute; `0` means no limit.
    pub fn per_minute(n: u32) -> Self {
        Self::with_quota(NonZeroU32::new(n).map(Quota::per_minute))
    }

    /// A limiter with an explicit quota (`None`: no limit).
    pub fn with_quota(quota: Option<Quota>) -> Self {
        Self {
            limiter: quota.map(RateLimiter::keyed),
            checks: AtomicU64::new(0),
        }
    }

    /// Count one call for `key`; `false` when it is over the limit.
    pub fn check(&self, key: &K) -> bool {
        let Some(l) = &self.limiter else {
            return true;
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % EVICT_EVERY == EVICT_EVERY - 1 {
            self.evict();
        }
        l.check_key(key).is_ok()
    }

    /// Drop every key whose state is indistinguishable from a fresh one (no call within its
    /// replenish period).
    pub fn evict(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refused_per_key() {
        let l = KeyedLimiter::per_minute(2);
        assert!(l.check(&"a"));
        assert!(l.check(&"a"));
        assert!(!l.check(&"a"));
        // Another key has its own budget.
        assert!(l.check(&"b"));
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn zero_means_unlimited() {
        let l = KeyedLimiter::per_minute(0);
        assert!((0..10_000).all(|_| l.check(&1u8)));
        assert!(l.is_empty());
    }

    #[test]
    fn idle_keys_are_evicted() {
        let l =
            KeyedLimiter::with_quota(Some(Quota::with_period(Duration::from_millis(5)).unwrap()));
        for k in 0..100u32 {
            assert!(l.check(&k));
        }
        assert_eq!(l.len(), 100);
        std::thread::sleep(Duration::from_millis(30));
        l.evict();
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn eviction_runs_on_its_own() {
        let l =
            KeyedLimiter::with_quota(Some(Quota::with_period(Duration::from_millis(1)).unwrap()));
        for k in 0..EVICT_EVERY as u32 - 1 {
            l.check(&k);
        }
        std::thread::sleep(Duration::from_millis(20));
        l.check(&u32::MAX);
        assert!(l.len() <= 1, "{} keys kept", l.len());
    }
}
