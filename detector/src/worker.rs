//! The inference worker: one thread shared by every camera. It takes what the cameras have
//! queued, one frame per camera per round (each round starting at the next camera, so none is
//! always first), up to `--max-batch`, and runs it as one ONNX Runtime call when the model's batch
//! dimension is dynamic (one call per input size, for a rectangular model whose cameras differ in
//! aspect). It never waits for a batch to fill: a lone frame runs at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError};

use crate::capture::{FrameMeta, Prepared};
use crate::error::DetectorError;
use crate::infer::{Model, RawOutput};
use crate::preprocess::Letterbox;
use crate::stats;

/// What inference hands publishing.
pub struct Inferred {
    pub meta: FrameMeta,
    pub lb: Letterbox,
    pub output: RawOutput,
}

/// Runs the cameras' frames through the model until every camera's channel has closed.
pub fn infer_loop(
    mut model: Model,
    frame_rxs: Vec<Receiver<Prepared>>,
    max_batch: usize,
    tx: Sender<Inferred>,
    spare_tx: Sender<Vec<f32>>,
    runs: &AtomicU64,
) -> Result<(), DetectorError> {
    let mut open: Vec<Option<Receiver<Prepared>>> = frame_rxs.into_iter().map(Some).collect();
    let mut batch = Vec::with_capacity(max_batch);
    let mut first = 0;
    while open.iter().any(Option::is_some) {
        // Sleep until some camera has a frame (or its channel closes).
        {
            let mut ready = Select::new();
            open.iter().flatten().for_each(|rx| {
                ready.recv(rx);
            });
            ready.ready();
        }
        gather(&mut open, first, max_batch, &mut batch);
        first = (first + 1) % open.len();
        if batch.is_empty() {
            continue; // what woke us was a channel closing
        }
        let mut outputs: Vec<Option<RawOutput>> = vec![None; batch.len()];
        for (size, members) in by_size(batch.iter().map(|p| (p.lb.dst_w, p.lb.dst_h))) {
            let inputs: Vec<&[f32]> = members.iter().map(|&i| batch[i].input.as_slice()).collect();
            let t = Instant::now();
            let outs = model.run(&inputs, size)?;
            metrics::histogram!(stats::INFERENCE).record(t.elapsed().as_secs_f64());
            metrics::histogram!(stats::BATCH).record(inputs.len() as f64);
            runs.fetch_add(1, Ordering::Relaxed);
            members.into_iter().zip(outs).for_each(|(i, o)| outputs[i] = Some(o));
        }
        let outputs = outputs.into_iter().map(|o| o.expect("every frame of the batch ran"));
        for (Prepared { meta, lb, input }, output) in batch.drain(..).zip(outputs) {
            let _ = spare_tx.try_send(input);
            if tx.send(Inferred { meta, lb, output }).is_err() {
                return Ok(()); // publishing has stopped; its error is reported there
            }
        }
    }
    Ok(())
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
