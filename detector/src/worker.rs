//! The inference worker: one thread shared by every camera. It takes what the cameras have
//! queued, one frame per camera per round (each round starting at the next camera, so none is
//! always first), up to `--max-batch`, and runs it as one ONNX Runtime call when the model's batch
//! dimension is dynamic (one call per input size, for a rectangular model whose cameras differ in
//! aspect). It never waits for a batch to fill: a lone frame runs at once.
//!
//! A run that fails is one camera's fault, not the worker's: its frames run again one by one, and
//! a frame the model cannot run alone is dropped (counted) and handed back to its camera's capture
//! thread ([`Downstream`](crate::lane::Downstream)), which stops a file camera and reopens a live one, as for its other
//! faults; the other cameras' frames go on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::telemetry::Heartbeat;
use crossbeam_channel::{Receiver, Select, SendTimeoutError, Sender, TryRecvError};

use crate::capture::{FrameMeta, Prepared};
use crate::error::DetectorError;
use crate::infer::{Model, RawOutput};
use crate::lane::Lane;
use crate::preprocess::Letterbox;
use crate::stats::{self, Drop};

/// How often a loop that waits beats its heartbeat.
pub const BEAT_EVERY: Duration = Duration::from_secs(1);

/// What inference hands publishing.
pub struct Inferred {
    pub meta: FrameMeta,
    pub lb: Letterbox,
    pub output: RawOutput,
}

/// What publishing gets from inference, in each lane's order: its frames, then its end.
pub enum Done {
    Frame(Inferred),
    /// The lane's every frame has been through inference.
    End(Arc<Lane>),
}

/// A camera's frames, handed to the worker when its capture starts.
pub type Intake = (Arc<Lane>, Receiver<Prepared>);

/// The shared inference worker.
pub struct Worker<'a> {
    pub model: Model,
    pub max_batch: usize,
    /// ONNX Runtime calls made.
    pub runs: &'a AtomicU64,
    pub heartbeat: Heartbeat,
}

/// The lanes the worker serves; each is told it is drained however the worker ends, so that no
/// capture thread waits for it.
struct Served(Vec<Arc<Lane>>);

impl std::ops::Drop for Served {
    fn drop(&mut self) {
        self.0.iter().for_each(|l| l.downstream.drained());
    }
}

impl Worker<'_> {
    /// Runs the cameras' frames through the model until no camera is left and no more can come
    /// (`intake` closed), or publishing has stopped.
    pub fn run(mut self, intake: Receiver<Intake>, tx: Sender<Done>, spare_tx: Sender<Vec<f32>>) {
        let mut intake = Some(intake);
        let mut served = Served(Vec::new());
        let mut open: Vec<Option<Receiver<Prepared>>> = Vec::new();
        let mut batch = Vec::with_capacity(self.max_batch);
        let mut first = 0;
        while intake.is_some() || !open.is_empty() {
            self.heartbeat.beat();
            // Sleep until some camera has a frame (or its channel closes) or a camera comes,
            // waking to beat.
            {
                let mut ready = Select::new();
                open.iter().flatten().for_each(|rx| {
                    ready.recv(rx);
                });
                if let Some(rx) = &intake {
                    ready.recv(rx);
                }
                if ready.ready_timeout(BEAT_EVERY).is_err() {
                    continue;
                }
            }
            if let Some(rx) = &intake {
                loop {
                    match rx.try_recv() {
                        Ok((lane, frames)) => {
                            served.0.push(lane);
                            open.push(Some(frames));
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            intake = None;
                            break;
                        }
                    }
                }
            }
            if open.is_empty() {
                continue;
            }
            let start = first % open.len();
            gather(&mut open, start, self.max_batch, &mut batch);
            first = (first + 1) % open.len();
            let outputs = self.infer(&batch);
            for (Prepared { meta, lb, input }, output) in batch.drain(..).zip(outputs) {
                let _ = spare_tx.try_send(input);
                match output {
                    Ok(output) => {
                        meta.lane.downstream.ran();
                        if !self.send(&tx, Done::Frame(Inferred { meta, lb, output })) {
                            return; // publishing has stopped; its error is reported there
                        }
                    }
                    Err(e) => self.failed(&meta, &lb, e),
                }
            }
            // A camera whose channel closed has had its every frame through.
            let mut i = 0;
            while i < open.len() {
                if open[i].is_some() {
                    i += 1;
                    continue;
                }
                open.remove(i);
                let lane = served.0.remove(i);
                lane.downstream.drained();
                if !self.send(&tx, Done::End(lane)) {
                    return;
                }
            }
        }
    }

    /// Each frame's output, or why the model could not run it: a run that fails is tried again
    /// frame by frame, so that only the frames that fail alone are lost.
    fn infer(&mut self, batch: &[Prepared]) -> Vec<Result<RawOutput, DetectorError>> {
        let mut outputs: Vec<Option<Result<RawOutput, DetectorError>>> = batch.iter().map(|_| None).collect();
        for (size, members) in by_size(batch.iter().map(|p| (p.lb.dst_w, p.lb.dst_h))) {
            let inputs: Vec<&[f32]> = members.iter().map(|&i| batch[i].input.as_slice()).collect();
            match self.run_model(&inputs, size) {
                Ok(outs) => members.into_iter().zip(outs).for_each(|(i, o)| outputs[i] = Some(Ok(o))),
                Err(e) if members.len() == 1 => outputs[members[0]] = Some(Err(e)),
                Err(e) => {
                    tracing::debug!(error = %e, frames = members.len(), "a batch failed; running its frames one by one");
                    for i in members {
                        outputs[i] = Some(self.run_model(&[batch[i].input.as_slice()], size).map(|mut o| o.remove(0)));
                    }
                }
            }
        }
        outputs.into_iter().map(|o| o.expect("every frame of the batch ran")).collect()
    }

    fn run_model(&mut self, inputs: &[&[f32]], size: (u32, u32)) -> Result<Vec<RawOutput>, DetectorError> {
        let t = Instant::now();
        let outs = self.model.run(inputs, size);
        metrics::histogram!(stats::INFERENCE).record(t.elapsed().as_secs_f64());
        metrics::histogram!(stats::BATCH).record(inputs.len() as f64);
        self.runs.fetch_add(1, Ordering::Relaxed);
        outs
    }

    /// A frame the model cannot run: dropped, and its camera told.
    fn failed(&self, meta: &FrameMeta, lb: &Letterbox, e: DetectorError) {
        let lane = &meta.lane;
        lane.stats.frame_dropped(Drop::Failed);
        let why = DetectorError::model(&self.model.path, format!("cannot run frame {} ({}x{} input): {e}", meta.seq, lb.dst_w, lb.dst_h));
        let text = why.to_string();
        if lane.downstream.failed(why) == 1 {
            tracing::warn!(camera = %lane.camera.id, "{text}; the frame is dropped");
        }
    }

    /// Hands a frame to publishing, beating while it waits; false once publishing has stopped.
    fn send(&self, tx: &Sender<Done>, mut item: Done) -> bool {
        loop {
            self.heartbeat.beat();
            match tx.send_timeout(item, BEAT_EVERY) {
                Ok(()) => return true,
                Err(SendTimeoutError::Timeout(back)) => item = back,
                Err(SendTimeoutError::Disconnected(_)) => return false,
            }
        }
    }
}

/// The batch's frames grouped by input size (width, height), as indices in batch order, the
/// groups in order of first appearance: one ONNX Runtime call takes one size, and frames of a
/// rectangular model differ by camera.
fn by_size(sizes: impl Iterator<Item = (u32, u32)>) -> Vec<((u32, u32), Vec<usize>)> {
    let mut groups: Vec<((u32, u32), Vec<usize>)> = Vec::new();
    for (i, size) in sizes.enumerate() {
        match groups.iter_mut().find(|(s, _)| *s == size) {
            Some((_, members)) => members.push(i),
            None => groups.push((size, vec![i])),
        }
    }
    groups
}

/// Moves up to `max` queued items into `batch`, one per channel per round, starting each round at
/// channel `first`, so that every camera gets its turn and none is always served first. A
/// channel found closed and empty is set to `None`.
fn gather<T>(channels: &mut [Option<Receiver<T>>], first: usize, max: usize, batch: &mut Vec<T>) {
    let n = channels.len();
    loop {
        let mut took = false;
        for i in (0..n).map(|k| (first + k) % n) {
            if batch.len() >= max {
                return;
            }
            let Some(rx) = &channels[i] else { continue };
            match rx.try_recv() {
                Ok(item) => {
                    batch.push(item);
                    took = true;
                }
                Err(TryRecvError::Disconnected) => channels[i] = None,
                Err(TryRecvError::Empty) => {}
            }
        }
        if !took {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;

    fn channel(items: &[u32], closed: bool) -> (Option<Sender<u32>>, Option<Receiver<u32>>) {
        let (tx, rx) = bounded(8);
        items.iter().for_each(|i| tx.send(*i).unwrap());
        (if closed { None } else { Some(tx) }, Some(rx))
    }

    #[test]
    fn gather_takes_one_frame_per_camera_per_round_up_to_the_batch() {
        let (_a, ra) = channel(&[10, 11, 12], false);
        let (_b, rb) = channel(&[20], false);
        let (_c, rc) = channel(&[30, 31], false);
        let mut chans = vec![ra, rb, rc];
        let mut batch = Vec::new();
        gather(&mut chans, 1, 5, &mut batch);
        // Starting at camera 1: 20, 30, 10, then camera 1 is empty: 31, 11.
        assert_eq!(batch, [20, 30, 10, 31, 11]);
        batch.clear();
        gather(&mut chans, 0, 5, &mut batch);
        assert_eq!(batch, [12], "what is left; nothing waited for");
        batch.clear();
        gather(&mut chans, 0, 5, &mut batch);
        assert!(batch.is_empty());
        assert!(chans.iter().all(Option::is_some), "empty but open channels stay");
    }

    #[test]
    fn frames_run_by_size_and_keep_their_order() {
        let (a, b) = ((640, 480), (640, 384));
        assert_eq!(by_size([a, b, a, a, b].into_iter()), vec![(a, vec![0, 2, 3]), (b, vec![1, 4])]);
        assert_eq!(by_size([a].into_iter()), vec![(a, vec![0])]);
        assert!(by_size(std::iter::empty()).is_empty());
    }

    #[test]
    fn gather_drains_a_closed_channel_before_dropping_it() {
        let (_a, ra) = channel(&[1], false);
        let (_b, rb) = channel(&[2, 3], true);
        let mut chans = vec![ra, rb];
        let mut batch = Vec::new();
        gather(&mut chans, 0, 1, &mut batch);
        assert_eq!(batch, [1], "the batch cap holds");
        batch.clear();
        gather(&mut chans, 0, 8, &mut batch);
        assert_eq!(batch, [2, 3]);
        assert!(chans[0].is_some() && chans[1].is_none());
    }
}
