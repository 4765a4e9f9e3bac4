//! Keeping a live source alive: a source that cannot be opened, stalls or ends is reopened, forever,
//! after an exponential backoff with jitter (so that many detectors do not hammer a camera that
//! comes back all at the same moment).

use std::time::{Duration, Instant};

use common::backoff::Backoff;
use common::secret::redact_url;

use crate::error::DetectorError;
use crate::pacing::sleep_until;
use crate::source::{Frame, Source};
use crate::stats::CameraStats;

/// The reopening schedule: waits doubling from half a second to thirty, each scaled by a random
/// factor within ±20 %; a frame starts it again from the first.
pub fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(500), Duration::from_secs(30)).with_jitter(0.2)
}

/// The next frame of a live source, reopening it as often as it takes. `None` only once `halted`.
/// Each attempt is one WARN line and one count in `reconnects`.
pub fn next_live_frame(
    source: &mut Source,
    backoff: &mut Backoff,
    stats: &CameraStats,
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
        "not open (not reachable at start, or closed after a fault or for decoding behind the stream)".to_string()
    };
    loop {
        let wait = backoff.next_delay();
        let attempt = backoff.failures();
        stats.set_up(false);
        let total = stats.reconnect();
        tracing::warn!(
            attempt, delay_ms = wait.as_millis() as u64, reconnects = total, uri = %redact_url(&source.uri), %reason,
            "live source unavailable; reopening after the delay"
        );
        if !sleep_until(Instant::now() + wait, halted) {
            return Ok(None);
        }
        reason = match source.connect().and_then(|()| source.next_frame()) {
            Ok(Some(frame)) => {
                tracing::info!(attempt, uri = %redact_url(&source.uri), "live source reopened");
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
    fn the_schedule_doubles_from_half_a_second_to_thirty() {
        let b = backoff();
        let secs: Vec<f64> = (0..10).map(|n| b.delay(n, 0.5).as_secs_f64()).collect();
        assert_eq!(secs, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]);
        assert!((b.delay(3, 0.0).as_secs_f64() - 3.2).abs() < 1e-9 && b.delay(3, 0.999_999).as_secs_f64() < 4.8, "within 20 %");
    }
}
