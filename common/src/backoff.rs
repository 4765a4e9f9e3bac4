//! Exponential backoff: waits that double from a first delay up to a cap, each optionally scaled by
//! a random factor within `1 ± jitter` (so that many clients do not all knock at a server that
//! comes back at the same moment).

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    jitter: f64,
    failures: u32,
}

impl Backoff {
    /// Without jitter.
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff { first, max, jitter: 0.0, failures: 0 }
    }

    /// Each wait scaled by a random factor within `1 ± jitter` (0 to 1).
    pub fn with_jitter(self, jitter: f64) -> Self {
        Backoff { jitter: jitter.clamp(0.0, 1.0), ..self }
    }

    /// The wait before the next attempt; counts a failure.
    pub fn next_delay(&mut self) -> Duration {
        let wait = self.delay(self.failures, rand::random::<f64>());
        self.failures = self.failures.saturating_add(1);
        wait
    }

    /// Failures counted since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Success: the next wait is the first again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The wait after `failures` failures: `first` doubled per failure up to `max`, then scaled
    /// by `1 + jitter * (2 * unit - 1)` for `unit` in [0, 1).
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        let nominal = self.first.saturating_mul(1u32.checked_shl(failures).unwrap_or(u32::MAX)).min(self.max);
        nominal.mul_f64(1.0 + self.jitter * (2.0 * unit - 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let seen: Vec<u64> = (0..9).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(seen, vec![100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        assert_eq!(b.failures(), 9);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
        // No overflow however long the outage.
        assert_eq!(b.delay(u32::MAX, 0.5), Duration::from_secs(10));
    }

    #[test]
    fn jitter_stays_within_its_bounds() {
        let b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30)).with_jitter(0.2);
        for n in 0..12 {
            let nominal = b.delay(n, 0.5).as_secs_f64();
            assert!((b.delay(n, 0.0).as_secs_f64() - nominal * 0.8).abs() < 1e-6, "attempt {n}");
            let high = b.delay(n, 0.999_999).as_secs_f64();
            assert!(high < nominal * 1.2 && high > nominal * 1.199, "attempt {n}: {high} vs {nominal}");
        }
        let mut r = b.clone();
        let mut firsts: Vec<Duration> = (0..200)
            .map(|_| {
                r.reset();
                r.next_delay()
            })
            .collect();
        assert!(firsts.iter().all(|d| *d >= Duration::from_millis(400) && *d < Duration::from_millis(600)));
        firsts.sort();
        firsts.dedup();
        assert!(firsts.len() > 100, "the jitter is random: {} distinct delays of 200", firsts.len());
    }
}
