//! Exponential backoff with jitter: the one implementation for every retry loop (channel
//! deliveries, stdio MCP child restarts, the gateway's audit writer).
//!
//! The ceiling of retry `n` (0 = the first retry) is `base · 2ⁿ`, capped at `max`; the delay
//! is drawn uniformly from `[ceiling / 2, ceiling]` ("equal jitter"): it still grows with
//! every failure, never drops below half the ceiling, and many clients that failed together
//! (a provider outage, a database restart) do not retry in lockstep.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The largest delay of retry `n`: `base · 2ⁿ`, at most `max`.
    pub fn ceiling(&self, n: u32) -> Duration {
        self.base.saturating_mul(1u32 << n.min(20)).min(self.max)
    }

    /// The delay of retry `n`, with random jitter.
    pub fn delay(&self, n: u32) -> Duration {
        self.jittered(n, rand::random::<f64>())
    }

    /// The delay of retry `n` for a jitter draw `u` in `[0, 1)`: pure, for tests.
    pub fn jittered(&self, n: u32, u: f64) -> Duration {
        let c = self.ceiling(n);
        let half = c / 2;
        half + (c - half).mul_f64(u.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_and_caps() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let got: Vec<u128> = (0..7).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn jitter_stays_between_half_and_the_ceiling() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        assert_eq!(b.jittered(3, 0.0), Duration::from_millis(400));
        assert_eq!(b.jittered(3, 1.0), Duration::from_millis(800));
        assert_eq!(b.jittered(3, 0.5), Duration::from_millis(600));
        let draws: std::collections::HashSet<Duration> = (0..64).map(|_| b.delay(3)).collect();
        assert!(
            draws
                .iter()
                .all(|d| *d >= Duration::from_millis(400) && *d <= Duration::from_millis(800))
        );
        // Retries that failed together do not all wait the same time.
        assert!(draws.len() > 1, "no jitter: {draws:?}");
    }
}
