//! How many frames go to inference, and when: the `--max-fps` cap, the release times of a file
//! played in real time (`--realtime`), a live stream's drift behind its own clock, and a sleep
//! that a stop request cuts short.

use std::time::{Duration, Instant};

/// Keeps at most `max_fps` frames a second of a timeline (a file's pts, or a live source's arrival
/// time) and tells the caller to skip the rest. Deterministic: the same timeline keeps the same
/// frames.
#[derive(Debug)]
pub struct MaxFps {
    /// 0: no cap.
    interval_ms: f64,
    next_due_ms: Option<f64>,
}

impl MaxFps {
    /// `max_fps` 0 keeps every frame.
    pub fn new(max_fps: f64) -> Self {
        MaxFps { interval_ms: if max_fps > 0.0 { 1000.0 / max_fps } else { 0.0 }, next_due_ms: None }
    }

    /// Whether the frame at `t_ms` goes on to inference.
    pub fn admit(&mut self, t_ms: f64) -> bool {
        if self.interval_ms == 0.0 {
            return true;
        }
        let due = match self.next_due_ms {
            // A timeline that jumps back (broken timestamps) starts a new grid rather than
            // skipping everything until it catches up.
            Some(due) if t_ms < due && t_ms >= due - self.interval_ms => return false,
            Some(due) if t_ms >= due => Some(due),
            _ => None,
        };
        // Frames that come steadily stay on the grid, so the rate is max_fps exactly rather than
        // drifting below it by the frame period; after a gap, the grid restarts at this frame.
        self.next_due_ms = Some(match due {
            Some(due) if t_ms - due < self.interval_ms => due + self.interval_ms,
            _ => t_ms + self.interval_ms,
        });
        true
    }
}

/// Release times of a file played in real time, as if it were a camera: the frame at pts `p` is
/// due `p - p0` after the first frame (pts `p0`) was released.
#[derive(Debug, Default)]
pub struct Release {
    origin: Option<(Instant, i64)>,
}

impl Release {
    pub fn due(&mut self, pts_ms: i64, now: Instant) -> Instant {
        let (t0, pts0) = *self.origin.get_or_insert((now, pts_ms));
        t0 + Duration::from_millis(pts_ms.saturating_sub(pts0).max(0) as u64)
    }
}

/// How far a live stream's frames are decoded behind the stream's own clock: a frame's arrival
/// time minus its pts, less the least of that since the stream was opened (the frame that came
/// soonest). A decoder that keeps up holds it near 0; one that falls behind, its frames piling up
/// in FFmpeg's and the socket's buffers, makes it grow, while the grab time alone would call
/// every frame fresh. A stream whose pts stand still (no timestamps) has no drift to tell; pts
/// that go back (a new session) start the reckoning again.
#[derive(Debug, Default)]
pub struct Drift {
    /// The least (arrival - pts) so far, the last pts, and the drift then.
    base_ms: f64,
    last: Option<(i64, f64)>,
}

impl Drift {
    /// The drift in ms of a frame that arrived at `t_ms` (a monotonic clock) with pts `pts_ms`.
    pub fn observe(&mut self, t_ms: f64, pts_ms: i64) -> f64 {
        let lag = t_ms - pts_ms as f64;
        let drift = match self.last {
            Some((last_pts, drift)) if pts_ms == last_pts => return drift,
            Some((last_pts, _)) if pts_ms > last_pts => {
                self.base_ms = self.base_ms.min(lag);
                lag - self.base_ms
            }
            _ => {
                self.base_ms = lag;
                0.0
            }
        };
        self.last = Some((pts_ms, drift));
        drift
    }
}

/// Sleeps until `deadline` in short slices, so that a stop request is seen within 50 ms.
/// Returns false if `halted` said stop first.
pub fn sleep_until(deadline: Instant, halted: &dyn Fn() -> bool) -> bool {
    loop {
        if halted() {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(max_fps: f64, times: impl IntoIterator<Item = f64>) -> Vec<f64> {
        let mut p = MaxFps::new(max_fps);
        times.into_iter().filter(|&t| p.admit(t)).collect()
    }

    #[test]
    fn zero_keeps_everything() {
        assert_eq!(kept(0.0, [0.0, 0.0, 1.0, 2.0]).len(), 4);
    }

    #[test]
    fn ten_fps_capped_at_two_keeps_every_fifth_frame() {
        let pts = (0..50).map(|i| i as f64 * 100.0);
        assert_eq!(kept(2.0, pts), [0.0, 500.0, 1000.0, 1500.0, 2000.0, 2500.0, 3000.0, 3500.0, 4000.0, 4500.0]);
    }

    #[test]
    fn the_rate_is_exact_when_frames_do_not_fall_on_the_grid() {
        // 25 fps capped at 10: 0, 120, 200, 320, 400, ... (the grid is 0, 100, 200, ...), so
        // exactly 10 a second, not 25/3 = 8.3 as "every third frame" would give.
        let pts: Vec<f64> = (0..250).map(|i| i as f64 * 40.0).collect();
        let k = kept(10.0, pts);
        assert_eq!(&k[..5], [0.0, 120.0, 200.0, 320.0, 400.0]);
        assert_eq!(k.len(), 100, "10 s of video at 10 fps");
    }

    #[test]
    fn slower_sources_lose_nothing() {
        let pts: Vec<f64> = (0..20).map(|i| i as f64 * 200.0).collect();
        assert_eq!(kept(10.0, pts.clone()), pts);
    }

    #[test]
    fn a_gap_restarts_the_grid_at_the_next_frame() {
        // Kept 0; nothing until 1030 (a stall); the next is due 100 after 1030, not at 1100.
        assert_eq!(kept(10.0, [0.0, 1030.0, 1100.0, 1130.0, 1230.0]), [0.0, 1030.0, 1130.0, 1230.0]);
    }

    #[test]
    fn a_timeline_that_jumps_back_starts_again() {
        assert_eq!(kept(2.0, [5000.0, 5100.0, 0.0, 100.0, 500.0]), [5000.0, 0.0, 500.0]);
    }

    #[test]
    fn a_file_in_real_time_releases_frames_at_their_pts_from_the_first() {
        let mut rt = Release::default();
        let t0 = Instant::now();
        assert_eq!(rt.due(1000, t0), t0);
        // Later calls keep the first frame as origin, whatever `now` is.
        assert_eq!(rt.due(1040, t0 + Duration::from_secs(9)), t0 + Duration::from_millis(40));
        assert_eq!(rt.due(3000, t0), t0 + Duration::from_secs(2));
        assert_eq!(rt.due(900, t0), t0, "a pts before the first is due at once");
    }

    #[test]
    fn drift_is_how_much_later_than_the_soonest_frame_a_frame_comes() {
        let mut d = Drift::default();
        // Opened at 3000 ms; a burst of buffered frames first (later than they will come), then
        // frames in step with their pts.
        let steady: Vec<f64> =
            [(3000.0, 0), (3010.0, 40), (3020.0, 80), (3100.0, 120), (3140.0, 160)].into_iter().map(|(t, pts)| d.observe(t, pts)).collect();
        assert_eq!(steady, [0.0, 0.0, 0.0, 40.0, 40.0], "3100 - 120 is 40 ms later than 3020 - 80, the soonest");
        // A decoder that takes 60 ms for each 40 ms frame falls 20 ms further behind each time.
        assert_eq!([d.observe(3200.0, 200), d.observe(3260.0, 240), d.observe(3320.0, 280)], [60.0, 80.0, 100.0]);
        assert_eq!(d.observe(3330.0, 280), 100.0, "a pts that stands still tells nothing new");
        assert_eq!(d.observe(9000.0, 0), 0.0, "pts that go back start again (a reopened stream)");
        assert_eq!(d.observe(9040.0, 40), 0.0);
        let mut no_pts = Drift::default();
        assert_eq!([no_pts.observe(0.0, 0), no_pts.observe(5000.0, 0)], [0.0, 0.0], "no timestamps, no drift");
    }

    #[test]
    fn sleep_until_returns_at_once_when_halted() {
        let far = Instant::now() + Duration::from_secs(3600);
        assert!(!sleep_until(far, &|| true));
        assert!(sleep_until(Instant::now(), &|| false));
    }
}
