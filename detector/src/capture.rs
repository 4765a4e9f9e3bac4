//! One camera's capture thread: read, pace, letterbox, hand on to the inference worker, under the
//! camera's [`Policy`]:
//!
//! - **Lossless** (video files and images): every frame, in decode order; a full channel blocks
//!   capture, so backpressure reaches back from the broker to the decoder and nothing is lost.
//! - **Real time** (live sources, and files played with `--realtime`): the channel holds exactly
//!   the newest frame, and a full one drops its oldest (counted as dropped, behind), so latency
//!   cannot drift. Frames older than `--max-frame-age-s` are dropped at publishing too.
//!
//! `--max-fps` skips frames here, before they cost a BGR conversion, a letterbox or a place in the
//! channel (they are still decoded: the codec needs every frame). A live camera's frames decoded
//! further behind the stream's own clock than `--max-frame-age-s` ([`Drift`]) are dropped here as
//! stale, and the stream is reopened when that lasts; the others are stamped with the time the
//! stream says they were captured, not the later time they were grabbed.
//!
//! A camera's faults stay its own: a frame that cannot be letterboxed, a read error, even a panic,
//! and frames the model cannot run ([`Downstream`]: for a live camera, a few in a row), are
//! reported (one ERROR line, a metric); a live camera is then reopened, a file camera ends with
//! the error while the other cameras go on.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use opencv::prelude::MatTraitConst;

use crate::error::{Blame, DetectorError};
use crate::lane::Lane;
use crate::pacing::{sleep_until, Drift, MaxFps, Release};
use crate::preprocess::{letterbox, InputShape, Letterbox};
use crate::reconnect::{self, next_live_frame};
use crate::source::{Frame, Source, SourceKind};
use crate::stats::Drop;

/// What capture hands inference: a letterboxed frame and what the message needs to say about it.
pub struct Prepared {
    pub meta: FrameMeta,
    pub lb: Letterbox,
    pub input: Vec<f32>,
}

pub struct FrameMeta {
    pub lane: Arc<Lane>,
    /// The decoded frame, kept only when snapshots are on.
    pub image: Option<opencv::core::Mat>,
    pub seq: u64,
    pub pts_ms: i64,
    pub captured_at: DateTime<Utc>,
}

/// One camera's capture thread.
pub struct Capture {
    pub lane: Arc<Lane>,
    /// Carry each decoded frame to the publish stage (for `--snapshot-dir`).
    pub keep_images: bool,
    pub input: InputShape,
    pub tx: Sender<Prepared>,
    /// Real time: the channel's other end, to drop its oldest frame when it is full.
    pub drop_rx: Option<Receiver<Prepared>>,
    pub spare_rx: Receiver<Vec<f32>>,
    /// Live: frames decoded further behind the stream than this are stale.
    pub max_frame_age: Duration,
}

/// What survives a fault of a live camera: its pacing, its drift behind the stream, and how long to
/// wait before reopening.
struct State {
    max_fps: MaxFps,
    release: Release,
    backoff: common::backoff::Backoff,
    started: Instant,
    drift: Drift,
    /// The source's session the drift is reckoned in, and since when it has been too far behind.
    session: u64,
    behind_since: Option<Instant>,
}

impl Capture {
    /// Runs the camera until its source ends, the process stops or the lane is stopped. A live
    /// camera outlives its faults; a file camera's first fault is returned, also one inference
    /// finds in its last frames after the file has ended.
    pub fn run(self, mut source: Source, stop: &AtomicBool, abort: &AtomicBool) -> Result<(), DetectorError> {
        let lane = Arc::clone(&self.lane);
        let halted = || stop.load(Ordering::Relaxed) || abort.load(Ordering::Relaxed) || lane.stop.load(Ordering::Relaxed);
        let live = source.kind == SourceKind::Live;
        let mut state = State {
            max_fps: MaxFps::new(self.lane.camera.max_fps),
            release: Release::default(),
            backoff: reconnect::backoff(),
            started: Instant::now(),
            drift: Drift::default(),
            session: source.session(),
            behind_since: None,
        };
        let ended = loop {
            let fault = match panic::catch_unwind(AssertUnwindSafe(|| self.frames(&mut source, &mut state, &halted))) {
                Ok(Ok(())) => break Ok(()),
                Ok(Err(e)) => e,
                Err(panic) => DetectorError::Internal(format!("capture panicked: {}", panic_text(&*panic))),
            };
            self.lane.stats.error();
            if live && !halted() {
                tracing::error!(camera = %self.lane.camera.id, blame = %fault.blame(), "{fault}; reopening the camera");
                source.close();
                continue;
            }
            break Err(fault);
        };
        // Closed, so that the worker can tell when it has had the camera's every frame: a file's
        // last frames may yet fail there.
        drop(self.tx);
        let ended = ended.and_then(|()| {
            if live {
                return Ok(());
            }
            self.lane.downstream.wait_drained(&halted);
            self.lane.downstream.fault(false).map_or(Ok(()), |fault| {
                self.lane.stats.error();
                Err(fault)
            })
        });
        if let Err(fault) = &ended {
            tracing::error!(camera = %self.lane.camera.id, blame = %fault.blame(), "{fault}; the camera stops, the others go on");
        }
        ended
    }

    /// Reads, paces, letterboxes and hands on frames until the source ends, the process stops, or
    /// a fault.
    fn frames(&self, source: &mut Source, state: &mut State, halted: &dyn Fn() -> bool) -> Result<(), DetectorError> {
        let live = source.kind == SourceKind::Live;
        while !halted() {
            if let Some(fault) = self.lane.downstream.fault(live) {
                return Err(fault);
            }
            let next = if live { next_live_frame(source, &mut state.backoff, &self.lane.stats, halted)? } else { source.next_frame()? };
            let Some(mut frame) = next else {
                if !live && self.lane.stats.count(|c| &c.read) == 0 {
                    return Err(DetectorError::source(&source.uri, Blame::User, "no decodable frames"));
                }
                break;
            };
            self.lane.stats.frame_read();
            self.lane.stats.set_up(true);
            // A live stream's pts restart when it is reopened; its arrival time does not.
            let t_ms = if live { state.started.elapsed().as_secs_f64() * 1000.0 } else { frame.pts_ms as f64 };
            if live && !self.in_step(source, state, &mut frame, t_ms) {
                continue;
            }
            if !state.max_fps.admit(t_ms) {
                self.lane.stats.frame_skipped();
                continue;
            }
            if self.lane.camera.realtime {
                if !sleep_until(state.release.due(frame.pts_ms, Instant::now()), halted) {
                    break;
                }
                // Like a camera's frame, it is captured when it is released.
                frame.captured_at = chrono::Utc::now();
            }
            let image = source.image()?;
            // A used buffer if one has come back; letterbox sizes it to this frame's input.
            let mut input = self.spare_rx.try_recv().unwrap_or_default();
            let blame = if live { Blame::External } else { Blame::User };
            let lb = letterbox(&image, self.input, &mut input).map_err(|e| {
                DetectorError::source(&source.uri, blame, format!("frame {} ({}x{}): {e}", frame.seq, image.cols(), image.rows()))
            })?;
            let image = self.keep_images.then_some(image);
            let meta =
                FrameMeta { lane: Arc::clone(&self.lane), seq: frame.seq, pts_ms: frame.pts_ms, captured_at: frame.captured_at, image };
            if !self.hand_on(Prepared { meta, lb, input }) {
                break;
            }
        }
        Ok(())
    }

    /// A live frame's drift behind its stream: a frame within `--max-frame-age-s` is stamped with
    /// the time the stream says it was captured; one further behind is dropped as stale (false),
    /// and after that has lasted `--max-frame-age-s` the stream is closed, to be reopened without
    /// the backlog.
    fn in_step(&self, source: &mut Source, state: &mut State, frame: &mut Frame, t_ms: f64) -> bool {
        if state.session != source.session() {
            (state.session, state.drift, state.behind_since) = (source.session(), Drift::default(), None);
        }
        let drift_ms = state.drift.observe(t_ms, frame.pts_ms);
        self.lane.stats.drift(drift_ms / 1000.0);
        if drift_ms <= self.max_frame_age.as_secs_f64() * 1000.0 {
            state.behind_since = None;
            frame.captured_at -= chrono::Duration::milliseconds(drift_ms.round() as i64);
            return true;
        }
        self.lane.stats.frame_dropped(Drop::Stale);
        let since = *state.behind_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.max_frame_age {
            tracing::warn!(
                camera = %self.lane.camera.id,
                drift_s = (drift_ms / 100.0).round() / 10.0,
                "frames decoded this far behind the stream for --max-frame-age-s: reopening it to skip the backlog"
            );
            source.close();
        }
        false
    }

    /// Into the channel, under the camera's policy; false once inference has stopped.
    fn hand_on(&self, mut item: Prepared) -> bool {
        match &self.drop_rx {
            // Lossless: block until inference takes it.
            None => self.tx.send(item).is_ok(),
            // Real time: never wait; make room by dropping the oldest queued frame.
            Some(drop_rx) => loop {
                match self.tx.try_send(item) {
                    Ok(()) => return true,
                    Err(TrySendError::Full(back)) => {
                        if drop_rx.try_recv().is_ok() {
                            self.lane.stats.frame_dropped(Drop::Behind);
                        }
                        item = back;
                    }
                    Err(TrySendError::Disconnected(_)) => return false,
                }
            },
        }
    }
}

/// A panic's message, as far as it says one.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_messages() {
        let p = panic::catch_unwind(|| panic!("boom {}", 7)).unwrap_err();
        assert_eq!(panic_text(&*p), "boom 7");
        let p = panic::catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(panic_text(&*p), "static");
    }
}
