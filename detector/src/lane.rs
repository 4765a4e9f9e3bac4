//! A lane: one run of one camera in this process, from its capture thread through the shared
//! inference worker to publishing. Every stage reaches the camera's settings, counts and faults
//! through its frames' lane, so cameras can start and stop while the others run (a fleet's
//! cameras come and go; a fixed list is the case where none does).
//!
//! A lane ends in order: its capture thread closes its channel; the worker takes its last frame
//! through inference and hands publishing the lane's end; publishing sends its last message (the
//! end of its tracker's session); the lane is [`flushed`](Lane::flushed) once every message it
//! sent has its delivery report. A fleet lets a camera go only then.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::config::Camera;
use crate::error::DetectorError;
use crate::source::SourceKind;
use crate::stats::CameraStats;

/// One run of one camera.
pub struct Lane {
    /// Unique in the process, never reused.
    pub serial: u64,
    pub camera: Camera,
    pub run_id: uuid::Uuid,
    pub policy: Policy,
    pub live: bool,
    /// The camera's lease when a fleet runs it (wire `epoch`).
    pub epoch: Option<u64>,
    pub stats: CameraStats,
    /// What inference found wrong with the camera's frames.
    pub downstream: Downstream,
    /// Stops this camera alone.
    pub stop: AtomicBool,
    /// Messages handed to the output, and those with a delivery report (delivered or not).
    sent: AtomicU64,
    reported: AtomicU64,
    /// Publishing has sent the lane's last message.
    ended: AtomicBool,
}

impl Lane {
    pub fn new(camera: Camera, run_id: uuid::Uuid, kind: SourceKind, epoch: Option<u64>) -> Self {
        static SERIALS: AtomicU64 = AtomicU64::new(0);
        let live = kind == SourceKind::Live;
        Lane {
            serial: SERIALS.fetch_add(1, Ordering::Relaxed),
            policy: Policy::of(kind, camera.realtime),
            stats: CameraStats::new(&camera.id, camera.crowd, live),
            camera,
            run_id,
            live,
            epoch,
            downstream: Downstream::default(),
            stop: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            reported: AtomicU64::new(0),
            ended: AtomicBool::new(false),
        }
    }

    /// A message of the lane went to the output.
    pub fn sent(&self) {
        self.sent.fetch_add(1, Ordering::SeqCst);
    }

    /// A message of the lane has its delivery report.
    pub fn reported(&self) {
        self.reported.fetch_add(1, Ordering::SeqCst);
    }

    /// Publishing has sent the lane's last message.
    pub fn end(&self) {
        self.ended.store(true, Ordering::SeqCst);
    }

    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }

    /// Ended, and every message it sent reported: nothing of the camera is left in this process.
    pub fn flushed(&self) -> bool {
        self.ended() && self.reported.load(Ordering::SeqCst) >= self.sent.load(Ordering::SeqCst)
    }
}

/// Every lane this process has run, for its totals and `/readyz` (a lane is a few hundred bytes:
/// a fleet host keeps the ended ones of a year of changes without noticing).
#[derive(Clone, Default)]
pub struct Lanes(Arc<Mutex<Vec<Arc<Lane>>>>);

impl Lanes {
    pub fn add(&self, lane: Arc<Lane>) {
        self.0.lock().unwrap().push(lane);
    }

    /// The lanes not ended yet.
    pub fn running(&self) -> Vec<Arc<Lane>> {
        self.0.lock().unwrap().iter().filter(|l| !l.ended()).cloned().collect()
    }

    pub fn all(&self) -> Vec<Arc<Lane>> {
        self.0.lock().unwrap().clone()
    }

    /// One count summed over every lane.
    pub fn total(&self, count: fn(&CameraStats) -> &AtomicU64) -> u64 {
        self.0.lock().unwrap().iter().map(|l| l.stats.count(count)).sum()
    }
}

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
    pub fn fault(&self, live: bool) -> Option<DetectorError> {
        let mut s = self.state.lock().unwrap();
        if live && s.streak < LIVE_FAILURES_TO_FAULT {
            return None;
        }
        s.streak = 0;
        s.fault.take()
    }

    /// Waits until the worker has been through the camera's last frame (or `halted`).
    pub fn wait_drained(&self, halted: &dyn Fn() -> bool) {
        let mut s = self.state.lock().unwrap();
        while !s.drained && !halted() {
            s = self.changed.wait_timeout(s, Duration::from_millis(50)).unwrap().0;
        }
    }
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
}
