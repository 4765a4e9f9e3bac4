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
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use opencv::prelude::MatTraitConst;

use crate::error::{Blame, DetectorError};
use crate::pacing::{sleep_until, Drift, MaxFps, Release};
use crate::preprocess::{letterbox, InputShape, Letterbox};
use crate::reconnect::{self, next_live_frame};
use crate::source::{Frame, Source, SourceKind};
use crate::stats::{CameraStats, Drop};

/// How a camera's frames reach inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Every frame; a full channel blocks capture.
    Lossless,
    /// The newest frame; a full channel drops its oldest.
    RealTime,
}

impl Policy {
    /// Live sources are real time; so is a file played with `--realtime`.
    pub fn of(kind: SourceKind, realtime_flag: bool) -> Self {
        if kind == SourceKind::Live || realtime_flag {
            Policy::RealTime
        } else {
            Policy::Lossless
        }
    }

    /// Room in the camera's channel: exactly the newest frame in real time; for a file, a little
    /// slack so capture overlaps inference, and enough for a whole batch.
    pub fn channel_len(self, max_batch: usize) -> usize {
        match self {
            Policy::RealTime => 1,
            Policy::Lossless => max_batch.max(4),
        }
    }
}

/// What capture hands inference: a letterboxed frame and what the message needs to say about it.
pub struct Prepared {
    pub meta: FrameMeta,
    pub lb: Letterbox,
    pub input: Vec<f32>,
}

pub struct FrameMeta {
    /// Index into the run's cameras.
    pub camera: usize,
    /// The decoded frame, kept only when snapshots are on.
    pub image: Option<opencv::core::Mat>,
    pub seq: u64,
    pub pts_ms: i64,
    pub captured_at: DateTime<Utc>,
}

/// One camera's capture thread.
pub struct Capture<'a> {
    pub camera: usize,
    pub id: &'a str,
    pub policy: Policy,
    /// Release each frame at its pts (a file with `--realtime`).
    pub paced: bool,
    pub max_fps: f64,
    /// Carry each decoded frame to the publish stage (for `--snapshot-dir`).
    pub keep_images: bool,
    pub input: InputShape,
    pub tx: Sender<Prepared>,
    /// Real time: the channel's other end, to drop its oldest frame when it is full.
    pub drop_rx: Option<Receiver<Prepared>>,
    pub spare_rx: Receiver<Vec<f32>>,
    pub stats: &'a CameraStats,
    /// What inference found wrong with this camera's frames.
    pub downstream: &'a Downstream,
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

/// Frames of a live camera that fail inference in a row before that is a fault of the camera
/// (reopened); a single one is dropped and counted. A file camera's first is a fault.
const LIVE_FAILURES_TO_FAULT: u32 = 5;

/// What the inference worker found wrong with one camera's frames, handed back to the camera's
/// capture thread, which acts on it as on a fault of its own.
#[derive(Default)]
pub struct Downstream {
    state: Mutex<DownstreamState>,
    /// Signals `drained`.
    changed: Condvar,
}

#[derive(Default)]
struct DownstreamState {
    /// Frames that failed in a row.
    streak: u32,
    /// The latest failure, until the capture thread takes it.
    fault: Option<DetectorError>,
    /// The worker has taken the camera's last frame through inference.
    drained: bool,
}

impl Downstream {
    /// A frame ran.
    pub fn ran(&self) {
        self.state.lock().unwrap().streak = 0;
    }

    /// A frame could not be run; the failures in a row, this one included.
    pub fn failed(&self, e: DetectorError) -> u32 {
        let mut s = self.state.lock().unwrap();
        s.streak += 1;
        s.fault = Some(e);
        s.streak
    }

    /// The camera's channel is closed and its every frame has been through inference.
    pub fn drained(&self) {
        self.state.lock().unwrap().drained = true;
        self.changed.notify_all();
    }

    /// The failure that is the camera's fault now, if any: a file camera's any (a file loses no
    /// frame silently), a live camera's once a few have failed in a row.
    fn fault(&self, live: bool) -> Option<DetectorError> {
        let mut s = self.state.lock().unwrap();
        if live && s.streak < LIVE_FAILURES_TO_FAULT {
            return None;
        }
        s.streak = 0;
        s.fault.take()
    }

    /// Waits until the worker has been through the camera's last frame (or `halted`).
    fn wait_drained(&self, halted: &dyn Fn() -> bool) {
        let mut s = self.state.lock().unwrap();
        while !s.drained && !halted() {
            s = self.changed.wait_timeout(s, Duration::from_millis(50)).unwrap().0;
        }
    }
}

impl Capture<'_> {
    /// Runs the camera until its source ends or the process stops. A live camera outlives its
    /// faults; a file camera's first fault is returned, also one inference finds in its last
    /// frames after the file has ended.
    pub fn run(self, mut source: Source, stop: &AtomicBool, abort: &AtomicBool) -> Result<(), DetectorError> {
        let halted = || stop.load(Ordering::Relaxed) || abort.load(Ordering::Relaxed);
        let live = source.kind == SourceKind::Live;
        let mut state = State {
            max_fps: MaxFps::new(self.max_fps),
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
            self.stats.error();
            if live && !halted() {
                tracing::error!(camera = self.id, blame = %fault.blame(), "{fault}; reopening the camera");
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
            self.downstream.wait_drained(&halted);
            self.downstream.fault(false).map_or(Ok(()), |fault| {
                self.stats.error();
                Err(fault)
            })
        });
        if let Err(fault) = &ended {
            tracing::error!(camera = self.id, blame = %fault.blame(), "{fault}; the camera stops, the others go on");
        }
        ended
    }

    /// Reads, paces, letterboxes and hands on frames until the source ends, the process stops, or
    /// a fault.
    fn frames(&self, source: &mut Source, state: &mut State, halted: &dyn Fn() -> bool) -> Result<(), DetectorError> {
        let live = source.kind == SourceKind::Live;
        while !halted() {
            if let Some(fault) = self.downstream.fault(live) {
                return Err(fault);
            }
            let next = if live { next_live_frame(source, &mut state.backoff, self.stats, halted)? } else { source.next_frame()? };
            let Some(mut frame) = next else {
                if !live && self.stats.count(|c| &c.read) == 0 {
                    return Err(DetectorError::source(&source.uri, Blame::User, "no decodable frames"));
                }
                break;
            };
            self.stats.frame_read();
            self.stats.set_up(true);
            // A live stream's pts restart when it is reopened; its arrival time does not.
            let t_ms = if live { state.started.elapsed().as_secs_f64() * 1000.0 } else { frame.pts_ms as f64 };
            if live && !self.in_step(source, state, &mut frame, t_ms) {
                continue;
            }
            if !state.max_fps.admit(t_ms) {
                self.stats.frame_skipped();
                continue;
            }
            if self.paced {
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
            let meta = FrameMeta { camera: self.camera, seq: frame.seq, pts_ms: frame.pts_ms, captured_at: frame.captured_at, image };
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
        self.stats.drift(drift_ms / 1000.0);
        if drift_ms <= self.max_frame_age.as_secs_f64() * 1000.0 {
            state.behind_since = None;
            frame.captured_at -= chrono::Duration::milliseconds(drift_ms.round() as i64);
            return true;
        }
        self.stats.frame_dropped(Drop::Stale);
        let since = *state.behind_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.max_frame_age {
            tracing::warn!(
                camera = self.id,
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
                            self.stats.frame_dropped(Drop::Behind);
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
    fn policies() {
        assert_eq!(Policy::of(SourceKind::Live, false), Policy::RealTime);
        assert_eq!(Policy::of(SourceKind::File, true), Policy::RealTime);
        assert_eq!(Policy::of(SourceKind::File, false), Policy::Lossless);
        assert_eq!(Policy::of(SourceKind::Image, false), Policy::Lossless);
        assert_eq!((Policy::RealTime.channel_len(8), Policy::Lossless.channel_len(8), Policy::Lossless.channel_len(1)), (1, 8, 4));
    }

    #[test]
    fn a_files_inference_failure_stays_its_fault_a_live_cameras_once_it_lasts() {
        let failure = || DetectorError::Inference("Reshape".into());
        let file = Downstream::default();
        file.failed(failure());
        file.ran();
        assert!(file.fault(false).is_some(), "a file loses no frame silently, even when the next one ran");
        assert!(file.fault(false).is_none(), "taken once");

        let live = Downstream::default();
        for n in 1..LIVE_FAILURES_TO_FAULT {
            assert_eq!(live.failed(failure()), n);
        }
        live.ran();
        live.failed(failure());
        assert!(live.fault(true).is_none(), "a frame that ran breaks the streak");
        (1..LIVE_FAILURES_TO_FAULT).for_each(|_| _ = live.failed(failure()));
        assert!(live.fault(true).is_some());
        assert!(live.fault(true).is_none(), "the streak starts again");
    }

    #[test]
    fn panic_messages() {
        let p = panic::catch_unwind(|| panic!("boom {}", 7)).unwrap_err();
        assert_eq!(panic_text(&*p), "boom 7");
        let p = panic::catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(panic_text(&*p), "static");
    }
}
