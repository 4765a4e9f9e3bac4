//! Wires the stages into threads: one capture thread per camera (capture + preprocess) -> a
//! bounded channel per camera -> one inference worker shared by all cameras -> bounded channel ->
//! decode + publish (the calling thread).
//!
//! Files lose nothing: a full channel blocks capture (backpressure all the way to the broker).
//! Live sources, and files played with `--realtime`, stay real time: a full channel drops its
//! oldest frame, so inference always gets the newest one and latency cannot drift. `--max-fps`
//! skips frames in capture, before they cost a letterbox or a place in the channel. Each camera
//! has its own channel, so one camera's frames never push out another's.
//!
//! The worker takes what is queued, one frame per camera per round, up to `--max-batch`, and runs
//! it as one ONNX Runtime call when the model's batch is dynamic. It never waits for a batch to
//! fill: a lone frame runs at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crossbeam_channel::{bounded, Receiver, Select, Sender, TryRecvError, TrySendError};

use crate::config::{Camera, Config};
use crate::decode::{Decoder, MAX_DET};
use crate::error::DetectorError;
use crate::identity::{self, Settings};
use crate::infer::{Model, RawOutput};
use crate::pacing::{sleep_until, MaxFps, Realtime};
use crate::preprocess::{letterbox, Letterbox};
use crate::publish::Output;
use crate::reconnect::{next_live_frame, Backoff};
use crate::snapshot::Snapshots;
use crate::source::{Source, SourceKind, SourceOptions};

/// What capture hands inference: a letterboxed frame and what the message needs to say about it.
struct Prepared {
    meta: FrameMeta,
    lb: Letterbox,
    input: Vec<f32>,
}

struct FrameMeta {
    /// Index into the run's cameras.
    camera: usize,
    /// The decoded frame, kept only when snapshots are on.
    image: Option<opencv::core::Mat>,
    seq: u64,
    pts_ms: i64,
    captured_at: DateTime<Utc>,
}

struct Inferred {
    meta: FrameMeta,
    lb: Letterbox,
    output: RawOutput,
}

/// One camera's counts.
#[derive(Default)]
struct Counters {
    /// Decoded, whatever became of them.
    read: AtomicU64,
    /// Left out by --max-fps.
    skipped: AtomicU64,
    /// Pushed out of the full channel by a newer frame (real-time policy).
    dropped: AtomicU64,
    /// Attempts to reopen a live source.
    reconnects: AtomicU64,
}

/// One count summed over the cameras.
fn total(counters: &[Counters], count: fn(&Counters) -> &AtomicU64) -> u64 {
    counters.iter().map(|c| count(c).load(Ordering::Relaxed)).sum()
}

/// Totals over all cameras.
#[derive(Debug)]
pub struct Summary {
    pub frames_read: u64,
    pub frames_skipped: u64,
    pub frames_dropped: u64,
    pub reconnects: u64,
    pub messages: u64,
    /// ONNX Runtime calls; fewer than messages when frames were batched.
    pub inference_runs: u64,
    pub elapsed: Duration,
}

pub fn run(cfg: &Config, cameras: &[Camera], stop: &AtomicBool) -> Result<Summary, DetectorError> {
    // OpenCV's own thread pool (TBB here) would parallelise each resize across the cores that
    // ONNX Runtime's threads are using; sequential OpenCV in each capture thread (the cameras are
    // the parallelism) leaves those cores to inference.
    if let Err(e) = opencv::core::set_num_threads(0) {
        tracing::warn!(error = %e, "cannot make OpenCV sequential; its threads will compete with inference");
    }
    // Open everything before starting a thread, so a bad input fails at once and clearly.
    let sources = cameras
        .iter()
        .map(|c| {
            let opts = SourceOptions {
                looped: c.looped,
                open_timeout: Duration::from_secs(c.open_timeout_s),
                read_timeout: Duration::from_secs(c.read_timeout_s),
            };
            Source::open(&c.source, opts)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let model = Model::load(&cfg.model, cfg.intra_threads())?;
    let decoder = Decoder::new(model.layout, model.class_names.clone(), &cfg.classes, cfg.conf, cfg.iou)?;
    let settings =
        Settings { model_sha256: &model.sha256, conf: cfg.conf, iou: cfg.iou, classes: decoder.kept_classes(), max_detections: MAX_DET };
    let run_ids = cameras
        .iter()
        .zip(&sources)
        .map(|(c, s)| identity::run_of(&c.source, s.kind, c.realtime, &settings))
        .collect::<Result<Vec<_>, _>>()?;
    let client_id = match cameras {
        [one] => format!("detector-{}", one.id),
        _ => "detector".to_string(),
    };
    let output = Output::open(cfg, &client_id)?;
    let max_batch = if model.dynamic_batch { cfg.max_batch } else { 1 };
    tracing::info!(
        cameras = cameras.len(), model = %model.info.name, sha256 = %model.info.sha256,
        input = %format!("{}x{}", model.input_w, model.input_h), layout = ?model.layout,
        dynamic_batch = model.dynamic_batch, max_batch, threads = cfg.intra_threads(), "detector started"
    );
    for ((c, s), run) in cameras.iter().zip(&sources).zip(&run_ids) {
        tracing::info!(camera = %c.id, %run, source = %c.source, kind = ?s.kind, realtime = c.realtime, looped = c.looped, max_fps = c.max_fps, "camera");
    }

    let (done_tx, done_rx) = bounded::<Inferred>(4 * max_batch);
    // Input buffers go back to capture for re-use: each is 3 x 640 x 640 floats.
    let (spare_tx, spare_rx) = bounded::<Vec<f32>>(2 * max_batch + cameras.len());
    let counters: Vec<Counters> = cameras.iter().map(|_| Counters::default()).collect();
    let inference_runs = AtomicU64::new(0);
    let abort = AtomicBool::new(false);
    let started = Instant::now();
    let model_info = model.info.clone();
    let input_size = (model.input_w, model.input_h);
    let keep_images = cfg.snapshot_dir.is_some();

    let (publish_result, capture_results, infer_result) = std::thread::scope(|s| {
        let abort = &abort;
        // Whichever stage fails first stops the others.
        let aborting = |r: Result<(), DetectorError>| {
            if r.is_err() {
                abort.store(true, Ordering::Relaxed);
            }
            r
        };
        let mut frame_rxs = Vec::with_capacity(cameras.len());
        let mut captures = Vec::with_capacity(cameras.len());
        for (i, (source, camera)) in sources.into_iter().zip(cameras).enumerate() {
            let real_time = source.kind == SourceKind::Live || camera.realtime;
            // Real time: room for exactly the newest frame. Files: a little slack so capture
            // overlaps inference, and enough for a whole batch from one file.
            let (tx, rx) = bounded::<Prepared>(if real_time { 1 } else { max_batch.max(4) });
            let capture = Capture {
                camera: i,
                paced: camera.realtime,
                max_fps: camera.max_fps,
                keep_images,
                input_size,
                tx,
                drop_rx: real_time.then(|| rx.clone()),
                spare_rx: spare_rx.clone(),
                counters: &counters[i],
            };
            frame_rxs.push(rx);
            captures.push(
                std::thread::Builder::new()
                    .name(format!("capture-{i}"))
                    .spawn_scoped(s, move || aborting(capture.run(source, stop, abort)))
                    .expect("spawn capture thread"),
            );
        }
        let runs = &inference_runs;
        let infer = std::thread::Builder::new()
            .name("infer".into())
            .spawn_scoped(s, move || aborting(infer_loop(model, frame_rxs, max_batch, done_tx, spare_tx, runs)))
            .expect("spawn inference thread");
        let published = publish_loop(cfg, cameras, &run_ids, &decoder, &model_info, output, done_rx, &counters, stop);
        if published.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        let captured: Vec<_> = captures.into_iter().map(|c| c.join().expect("capture thread panicked")).collect();
        (published, captured, infer.join().expect("inference thread panicked"))
    });
    // The first failure in the data's path is the one to report.
    capture_results.into_iter().collect::<Result<(), _>>()?;
    infer_result?;
    let messages = publish_result?;
    let total = |f| total(&counters, f);
    if cameras.len() > 1 {
        for (c, n) in cameras.iter().zip(&counters) {
            tracing::info!(
                camera = %c.id, frames = n.read.load(Ordering::Relaxed), skipped = n.skipped.load(Ordering::Relaxed),
                dropped = n.dropped.load(Ordering::Relaxed), reconnects = n.reconnects.load(Ordering::Relaxed), "camera finished"
            );
        }
    }
    Ok(Summary {
        frames_read: total(|c| &c.read),
        frames_skipped: total(|c| &c.skipped),
        frames_dropped: total(|c| &c.dropped),
        reconnects: total(|c| &c.reconnects),
        messages,
        inference_runs: inference_runs.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}

/// One camera's capture thread: read, pace, letterbox, hand on.
struct Capture<'a> {
    camera: usize,
    /// Release each frame at its pts (a file with --realtime).
    paced: bool,
    max_fps: f64,
    /// Carry each decoded frame to the publish stage (for --snapshot-dir).
    keep_images: bool,
    input_size: (u32, u32),
    tx: Sender<Prepared>,
    /// Real time: the channel's other end, to drop its oldest frame when it is full.
    drop_rx: Option<Receiver<Prepared>>,
    spare_rx: Receiver<Vec<f32>>,
    counters: &'a Counters,
}

impl Capture<'_> {
    fn run(self, mut source: Source, stop: &AtomicBool, abort: &AtomicBool) -> Result<(), DetectorError> {
        let Capture { camera, paced, max_fps, keep_images, input_size: (input_w, input_h), tx, drop_rx, spare_rx, counters } = self;
        let tensor_len = 3 * input_w as usize * input_h as usize;
        let live = source.kind == SourceKind::Live;
        let halted = || stop.load(Ordering::Relaxed) || abort.load(Ordering::Relaxed);
        let mut backoff = Backoff::default();
        let mut max_fps = MaxFps::new(max_fps);
        let mut realtime = Realtime::default();
        let started = Instant::now();
        while !halted() {
            let next =
                if live { next_live_frame(&mut source, &mut backoff, &counters.reconnects, &halted)? } else { source.next_frame()? };
            let Some(mut frame) = next else {
                if !live && counters.read.load(Ordering::Relaxed) == 0 {
                    return Err(DetectorError::source(&source.uri, crate::error::Blame::User, "no decodable frames"));
                }
                break;
            };
            counters.read.fetch_add(1, Ordering::Relaxed);
            // A live stream's pts restart when it is reopened; its arrival time does not.
            let t_ms = if live { started.elapsed().as_secs_f64() * 1000.0 } else { frame.pts_ms as f64 };
            if !max_fps.admit(t_ms) {
                counters.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if paced {
                if !sleep_until(realtime.due(frame.pts_ms, Instant::now()), &halted) {
                    break;
                }
                // Like a camera's frame, it is captured when it is released.
                frame.captured_at = chrono::Utc::now();
            }
            let mut input = spare_rx.try_recv().unwrap_or_else(|_| vec![0.0; tensor_len]);
            let lb = letterbox(&frame.image, input_w, input_h, &mut input)?;
            let image = keep_images.then_some(frame.image);
            let meta = FrameMeta { camera, seq: frame.seq, pts_ms: frame.pts_ms, captured_at: frame.captured_at, image };
            let mut item = Prepared { meta, lb, input };
            match &drop_rx {
                // File: block until inference takes it; an error means inference has stopped.
                None => {
                    if tx.send(item).is_err() {
                        break;
                    }
                }
                // Real time: never wait; make room by dropping the oldest queued frame.
                Some(drop_rx) => loop {
                    match tx.try_send(item) {
                        Ok(()) => break,
                        Err(TrySendError::Full(back)) => {
                            if drop_rx.try_recv().is_ok() {
                                counters.dropped.fetch_add(1, Ordering::Relaxed);
                            }
                            item = back;
                        }
                        Err(TrySendError::Disconnected(_)) => return Ok(()),
                    }
                },
            }
        }
        Ok(())
    }
}

/// Runs the cameras' frames through the model until every camera's channel has closed.
fn infer_loop(
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
        let outputs = model.run(&inputs)?;
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

#[allow(clippy::too_many_arguments)]
fn publish_loop(
    cfg: &Config,
    cameras: &[Camera],
    run_ids: &[uuid::Uuid],
    decoder: &Decoder,
    model: &wire::ModelInfo,
    mut output: Output,
    rx: Receiver<Inferred>,
    counters: &[Counters],
    stop: &AtomicBool,
) -> Result<u64, DetectorError> {
    let mut published = 0u64;
    let mut last_report = Instant::now();
    let started = Instant::now();
    let mut snapshots: Vec<Option<Snapshots>> =
        cameras.iter().map(|c| cfg.snapshot_dir.as_deref().map(|d| Snapshots::new(d, cfg.snapshot_every_s, &c.id))).collect();
    let total = |f| total(counters, f);
    for Inferred { meta, lb, output: raw } in rx {
        let detections = decoder.decode(&raw, &lb)?;
        let msg = wire::FrameMessage {
            schema_version: wire::SCHEMA_VERSION,
            camera_id: cameras[meta.camera].id.clone(),
            run_id: run_ids[meta.camera],
            frame_seq: meta.seq,
            captured_at: meta.captured_at,
            pts_ms: meta.pts_ms,
            frame_width: lb.src_w,
            frame_height: lb.src_h,
            model: model.clone(),
            detections,
        };
        if let (Some(s), Some(image)) = (snapshots[meta.camera].as_mut(), meta.image.as_ref()) {
            s.offer(image, &msg);
        }
        output.publish(&msg, stop)?;
        published += 1;
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            tracing::info!(
                frames = published,
                fps = format!("{:.1}", published as f64 / started.elapsed().as_secs_f64()),
                skipped = total(|c| &c.skipped),
                dropped = total(|c| &c.dropped),
                reconnects = total(|c| &c.reconnects),
                "progress"
            );
        }
    }
    output.finish(Duration::from_secs(cfg.flush_timeout_s))?;
    Ok(published)
}

#[cfg(test)]
mod tests {
    use super::*;

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
