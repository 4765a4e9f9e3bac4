//! Wires the stages into threads: capture + preprocess -> bounded channel -> inference worker ->
//! bounded channel -> decode + publish (the calling thread).
//!
//! Files lose nothing: a full channel blocks capture (backpressure all the way to the broker).
//! Live sources, and files played with `--realtime`, stay real time: a full channel drops its
//! oldest frame, so inference always gets the newest one and latency cannot drift. `--max-fps`
//! skips frames in capture, before they cost a letterbox or a place in the channel.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

use crate::config::Config;
use crate::decode::Decoder;
use crate::error::DetectorError;
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

#[derive(Debug)]
pub struct Summary {
    pub frames_read: u64,
    pub frames_skipped: u64,
    pub frames_dropped: u64,
    pub reconnects: u64,
    pub messages: u64,
    pub elapsed: Duration,
}

/// What capture does with the frames it reads before handing them on.
struct CapturePolicy {
    /// Release each frame at its pts (a file with --realtime).
    paced: bool,
    max_fps: f64,
    /// Carry each decoded frame to the publish stage (for --snapshot-dir).
    keep_images: bool,
}

pub fn run(cfg: &Config, stop: &AtomicBool) -> Result<Summary, DetectorError> {
    // Open everything before starting a thread, so a bad input fails at once and clearly.
    let opts = SourceOptions {
        looped: cfg.looped,
        open_timeout: Duration::from_secs(cfg.open_timeout_s),
        read_timeout: Duration::from_secs(cfg.read_timeout_s),
    };
    let source = Source::open(&cfg.source, opts)?;
    let model = Model::load(&cfg.model, cfg.intra_threads())?;
    let decoder = Decoder::new(model.layout, model.class_names.clone(), &cfg.classes, cfg.conf, cfg.iou)?;
    let output = Output::open(cfg)?;
    tracing::info!(
        source = %cfg.source, kind = ?source.kind, realtime = cfg.realtime, looped = cfg.looped,
        max_fps = cfg.max_fps, model = %model.info.name, sha256 = %model.info.sha256,
        input = %format!("{}x{}", model.input_w, model.input_h), layout = ?model.layout,
        threads = cfg.intra_threads(), "detector started"
    );

    let real_time = source.kind == SourceKind::Live || cfg.realtime;
    let policy = CapturePolicy { paced: cfg.realtime, max_fps: cfg.max_fps, keep_images: cfg.snapshot_dir.is_some() };
    // Real time: room for exactly the newest frame. Files: a little slack so capture overlaps
    // inference.
    let (frame_tx, frame_rx) = bounded::<Prepared>(if real_time { 1 } else { 4 });
    let (done_tx, done_rx) = bounded::<Inferred>(4);
    // Input buffers go back to capture for re-use: each is 3 x 640 x 640 floats.
    let (spare_tx, spare_rx) = bounded::<Vec<f32>>(8);
    let counters = Counters::default();
    let abort = AtomicBool::new(false);
    let started = Instant::now();
    let model_info = model.info.clone();
    let (input_w, input_h) = (model.input_w, model.input_h);

    let (publish_result, capture_result, infer_result) = std::thread::scope(|s| {
        let drop_rx = real_time.then(|| frame_rx.clone());
        let counters = &counters;
        let abort = &abort;
        let capture = std::thread::Builder::new()
            .name("capture".into())
            .spawn_scoped(s, move || {
                let r = capture_loop(source, &policy, (input_w, input_h), frame_tx, drop_rx, spare_rx, stop, abort, counters);
                if r.is_err() {
                    abort.store(true, Ordering::Relaxed);
                }
                r
            })
            .expect("spawn capture thread");
        let infer = std::thread::Builder::new()
            .name("infer".into())
            .spawn_scoped(s, move || {
                let r = infer_loop(model, frame_rx, done_tx, spare_tx);
                if r.is_err() {
                    abort.store(true, Ordering::Relaxed);
                }
                r
            })
            .expect("spawn inference thread");
        let published = publish_loop(cfg, &decoder, &model_info, output, done_rx, counters, stop);
        if published.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        (published, capture.join().expect("capture thread panicked"), infer.join().expect("inference thread panicked"))
    });
    // The first failure in the data's path is the one to report.
    capture_result?;
    infer_result?;
    let messages = publish_result?;
    Ok(Summary {
        frames_read: counters.read.load(Ordering::Relaxed),
        frames_skipped: counters.skipped.load(Ordering::Relaxed),
        frames_dropped: counters.dropped.load(Ordering::Relaxed),
        reconnects: counters.reconnects.load(Ordering::Relaxed),
        messages,
        elapsed: started.elapsed(),
    })
}

#[allow(clippy::too_many_arguments)]
fn capture_loop(
    mut source: Source,
    policy: &CapturePolicy,
    (input_w, input_h): (u32, u32),
    tx: Sender<Prepared>,
    drop_rx: Option<Receiver<Prepared>>,
    spare_rx: Receiver<Vec<f32>>,
    stop: &AtomicBool,
    abort: &AtomicBool,
    counters: &Counters,
) -> Result<(), DetectorError> {
    let tensor_len = 3 * input_w as usize * input_h as usize;
    let live = source.kind == SourceKind::Live;
    let halted = || stop.load(Ordering::Relaxed) || abort.load(Ordering::Relaxed);
    let mut backoff = Backoff::default();
    let mut max_fps = MaxFps::new(policy.max_fps);
    let mut realtime = Realtime::default();
    let started = Instant::now();
    while !halted() {
        let next = if live {
            next_live_frame(&mut source, &mut backoff, &counters.reconnects, &halted)?
        } else {
            source.next_frame()?
        };
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
        if policy.paced {
            if !sleep_until(realtime.due(frame.pts_ms, Instant::now()), &halted) {
                break;
            }
            // Like a camera's frame, it is captured when it is released.
            frame.captured_at = chrono::Utc::now();
        }
        let mut input = spare_rx.try_recv().unwrap_or_else(|_| vec![0.0; tensor_len]);
        let lb = letterbox(&frame.image, input_w, input_h, &mut input)?;
        let image = policy.keep_images.then_some(frame.image);
        let meta = FrameMeta { seq: frame.seq, pts_ms: frame.pts_ms, captured_at: frame.captured_at, image };
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

fn infer_loop(
    mut model: Model,
    rx: Receiver<Prepared>,
    tx: Sender<Inferred>,
    spare_tx: Sender<Vec<f32>>,
) -> Result<(), DetectorError> {
    for Prepared { meta, lb, input } in rx {
        let output = model.run(&input)?;
        let _ = spare_tx.try_send(input);
        if tx.send(Inferred { meta, lb, output }).is_err() {
            break; // publishing has stopped; its error is reported there
        }
    }
    Ok(())
}

fn publish_loop(
    cfg: &Config,
    decoder: &Decoder,
    model: &wire::ModelInfo,
    mut output: Output,
    rx: Receiver<Inferred>,
    counters: &Counters,
    stop: &AtomicBool,
) -> Result<u64, DetectorError> {
    let mut published = 0u64;
    let mut last_report = Instant::now();
    let started = Instant::now();
    let mut snapshots = cfg.snapshot_dir.as_deref().map(|d| Snapshots::new(d, cfg.snapshot_every_s, &cfg.camera_id));
    for Inferred { meta, lb, output: raw } in rx {
        let detections = decoder.decode(&raw, &lb)?;
        let msg = wire::FrameMessage {
            schema_version: wire::SCHEMA_VERSION,
            camera_id: cfg.camera_id.clone(),
            frame_seq: meta.seq,
            captured_at: meta.captured_at,
            pts_ms: meta.pts_ms,
            frame_width: lb.src_w,
            frame_height: lb.src_h,
            model: model.clone(),
            detections,
        };
        if let (Some(s), Some(image)) = (snapshots.as_mut(), meta.image.as_ref()) {
            s.offer(image, &msg);
        }
        output.publish(&msg, stop)?;
        published += 1;
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            tracing::info!(
                frames = published,
                fps = format!("{:.1}", published as f64 / started.elapsed().as_secs_f64()),
                skipped = counters.skipped.load(Ordering::Relaxed),
                dropped = counters.dropped.load(Ordering::Relaxed),
                reconnects = counters.reconnects.load(Ordering::Relaxed),
                "progress"
            );
        }
    }
    output.finish(Duration::from_secs(cfg.flush_timeout_s))?;
    Ok(published)
}
