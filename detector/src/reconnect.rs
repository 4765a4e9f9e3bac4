//! Keeping a live source alive: a source that cannot be opened, stalls or ends is reopened, forever,
//! after an exponential backoff with jitter (so that many detectors do not hammer a camera that
//! comes back all at the same moment).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::DetectorError;
use crate::pacing::sleep_until;
use crate::source::{Frame, Source};

const FIRST_DELAY: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(30);
/// Each delay is scaled by a random factor within 1 ± JITTER.
const JITTER: f64 = 0.2;

/// Counts the failed attempts of one outage; a frame ends the outage.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The number (1-based) of the next attempt within this outage, and how long to wait before it.
    pub fn next_attempt(&mut self) -> (u32, Duration) {
        let wait = delay(self.failures, rand::random::<f64>());
        self.failures = self.failures.saturating_add(1);
        (self.failures, wait)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// The wait after `failures` failed attempts: FIRST_DELAY doubled per failure up to MAX_DELAY, then
/// scaled by 1 + JITTER * (2 * unit - 1) for `unit` in [0, 1).
fn delay(failures: u32, unit: f64) -> Duration {
    let nominal = FIRST_DELAY.saturating_mul(1u32.checked_shl(failures).unwrap_or(u32::MAX)).min(MAX_DELAY);
    nominal.mul_f64(1.0 + JITTER * (2.0 * unit - 1.0))
}

/// The next frame of a live source, reopening it as often as it takes. `None` only once `halted`.
/// Each attempt is one WARN line and one count in `reconnects`.
pub fn next_live_frame(
    source: &mut Source,
    backoff: &mut Backoff,
    reconnects: &AtomicU64,
    halted: &dyn Fn() -> bool,
) -> Result<Option<Frame>, DetectorError> {
    // Only a source that could not be opened at start comes here closed: below, this function
    // returns with the source open, or halted.
    let mut reason = if source.is_open() {
        match source.next_frame() {
            Ok(Some(frame)) => {
                backoff.reset();
                return Ok(Some(frame));
            }
            Ok(None) => "no frame (the stream ended, stalled or dropped)".to_string(),
            Err(e) => e.to_string(),
        }
    } else {
        "not reachable at start".to_string()
    };
    loop {
        let (attempt, wait) = backoff.next_attempt();
        let total = reconnects.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(
            attempt, delay_ms = wait.as_millis() as u64, reconnects = total, uri = %source.uri, %reason,
            "live source unavailable; reopening after the delay"
        );
        if !sleep_until(Instant::now() + wait, halted) {
            return Ok(None);
        }
        reason = match source.connect().and_then(|()| source.next_frame()) {
            Ok(Some(frame)) => {
                tracing::info!(attempt, uri = %source.uri, "live source reopened");
                backoff.reset();
                return Ok(Some(frame));
            }
            // Also what OpenCV 4.6 does after an open that overran --open-timeout-s: it reports
            // success, then fails every read.
            Ok(None) => "opened, but no frame came".to_string(),
            Err(e) => e.to_string(),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nominal_schedule_doubles_from_half_a_second_to_thirty() {
        let secs: Vec<f64> = (0..10).map(|n| delay(n, 0.5).as_secs_f64()).collect();
        assert_eq!(secs, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]);
        // No overflow however long the outage.
        assert_eq!(delay(31, 0.5), MAX_DELAY);
        assert_eq!(delay(u32::MAX, 0.5), MAX_DELAY);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for n in 0..12 {
            let nominal = delay(n, 0.5).as_secs_f64();
            let low = delay(n, 0.0).as_secs_f64();
            let high = delay(n, 0.999_999).as_secs_f64();
            assert!((low - nominal * 0.8).abs() < 1e-6, "attempt {n}: {low} vs {nominal}");
            assert!(high < nominal * 1.2 && high > nominal * 1.199, "attempt {n}: {high} vs {nominal}");
        }
    }

    #[test]
    fn attempts_count_up_draw_random_jitter_and_reset() {
        let mut b = Backoff::default();
        let mut firsts = Vec::new();
        for _ in 0..200 {
            b.reset();
            let (attempt, wait) = b.next_attempt();
            assert_eq!(attempt, 1);
            assert!(wait >= Duration::from_millis(400) && wait < Duration::from_millis(600), "{wait:?}");
            firsts.push(wait);
        }
        firsts.sort();
        firsts.dedup();
        assert!(firsts.len() > 100, "the jitter is random: {} distinct delays of 200", firsts.len());
        for expected in 2..=20u32 {
            let (attempt, wait) = b.next_attempt();
            assert_eq!(attempt, expected);
            assert!(wait <= MAX_DELAY.mul_f64(1.2), "{wait:?}");
        }
    }
}
