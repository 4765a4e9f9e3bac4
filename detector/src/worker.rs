//! The inference worker: one thread shared by every camera. It takes what the cameras have
//! queued, one frame per camera per round (each round starting at the next camera, so none is
//! always first), up to `--max-batch`, and runs it as one ONNX Runtime call when the model's batch
//! dimension is dynamic. It never waits for a batch to fill: a lone frame runs at once.

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
        let inputs: Vec<&[f32]> = batch.iter().map(|p| p.input.as_slice()).collect();
        let t = Instant::now();
        let outputs = model.run(&inputs)?;
        metrics::histogram!(stats::INFERENCE).record(t.elapsed().as_secs_f64());
        metrics::histogram!(stats::BATCH).record(batch.len() as f64);
        runs.fetch_add(1, Ordering::Relaxed);
        for (Prepared { meta, lb, input }, output) in batch.drain(..).zip(outputs) {
            let _ = spare_tx.try_send(input);
            if tx.send(Inferred { meta, lb, output }).is_err() {
                return Ok(()); // publishing has stopped; its error is reported there
            }
        }
    }
    Ok(())
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
