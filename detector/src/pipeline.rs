//! Wires the stages into threads: one capture thread per camera (`capture`) -> a bounded channel
//! per camera -> one inference worker shared by all cameras (`worker`) -> a bounded channel ->
//! decode + publish (`publish`, on the calling thread). [`prepare`] opens and checks everything
//! first, so that a bad input fails at once and clearly; [`Pipeline::run`] then spawns the threads.
//!
//! A camera's faults stay its own (`capture`, and frames the model cannot run, `worker`): the
//! other cameras go on, and the run reports the cameras that failed. A failure of the shared
//! publishing stage stops them all.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;

use crate::capture::{Capture, Downstream, Policy, Prepared};
use crate::config::{Camera, Config};
use crate::decode::{Decoder, MAX_DET};
use crate::error::DetectorError;
use crate::identity::{self, Settings, Tracking};
use crate::infer::Model;
use crate::publish::{Output, Publisher};
use crate::source::{Source, SourceKind, SourceOptions};
use crate::stats::{self, total, CameraStats};
use crate::worker::{Inferred, Worker};
use common::telemetry::{Heartbeat, Metrics, Probes, Readiness};

/// A work loop silent this long makes `/livez` fail. The loops beat every second or so while they
/// wait; one ONNX Runtime run of a full batch takes seconds at most.
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// The cameras that stopped on a fault of their own, with it.
    pub failed: Vec<(String, DetectorError)>,
}

/// Everything opened and checked, before any thread starts.
pub struct Pipeline<'a> {
    cfg: &'a Config,
    cameras: &'a [Camera],
    sources: Vec<Source>,
    policies: Vec<Policy>,
    model: Model,
    decoder: Decoder,
    run_ids: Vec<uuid::Uuid>,
    stats: Arc<Vec<CameraStats>>,
    output: Output,
    max_batch: usize,
    /// The inference worker's and the publishing loop's, which `/livez` watches.
    infer_beat: Heartbeat,
    publish_beat: Heartbeat,
}

/// Opens the sources, loads the model, names the runs, starts the metrics endpoint and connects
/// the output; `stop` (a signal) cuts the wait for the brokers short.
pub fn prepare<'a>(cfg: &'a Config, cameras: &'a [Camera], stop: &AtomicBool) -> Result<Pipeline<'a>, DetectorError> {
    // OpenCV's own thread pool (TBB here) would parallelise each resize across the cores that
    // ONNX Runtime's threads are using; sequential OpenCV in each capture thread (the cameras are
    // the parallelism) leaves those cores to inference.
    if let Err(e) = opencv::core::set_num_threads(0) {
        tracing::warn!(error = %e, "cannot make OpenCV sequential; its threads will compete with inference");
    }
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
    let policies: Vec<Policy> = cameras.iter().zip(&sources).map(|(c, s)| Policy::of(s.kind, c.realtime)).collect();
    let model = Model::load(&cfg.model, cfg.intra_threads())?;
    let decoder = Decoder::new(model.layout, model.class_names.clone(), &cfg.classes, cfg.decode_conf(), cfg.iou)?;
    check_people(&decoder, cfg, cameras)?;
    let settings =
        Settings { model_sha256: &model.sha256, conf: cfg.conf, iou: cfg.iou, classes: decoder.kept_classes(), max_detections: MAX_DET };
    let run_ids = cameras
        .iter()
        .zip(&sources)
        .map(|(c, s)| {
            let tracking = cfg.tracker().map(|tracker| Tracking { max_fps: c.max_fps, tracker });
            identity::run_of(&c.source, s.kind, c.realtime, &settings, tracking)
        })
        .collect::<Result<Vec<_>, _>>()?;
    // The recorder before the first metric is made.
    let metrics = cfg.metrics_addr.map(|_| Metrics::install(stats::BUCKETS).map_err(DetectorError::Config)).transpose()?;
    stats::describe();
    let stats: Arc<Vec<CameraStats>> =
        Arc::new(cameras.iter().zip(&sources).map(|(c, s)| CameraStats::new(&c.id, c.crowd, s.kind == SourceKind::Live)).collect());
    let (infer_beat, publish_beat) = (Heartbeat::new("inference", LIVENESS_TIMEOUT), Heartbeat::new("publishing", LIVENESS_TIMEOUT));
    if let (Some(m), Some(addr)) = (metrics, cfg.metrics_addr) {
        let probes =
            Probes { ready: readiness(cameras, Arc::clone(&stats)), live: vec![infer_beat.clone(), publish_beat.clone()], extra: None };
        m.serve(addr, probes).map_err(DetectorError::Config)?;
    }
    let client_id = match cameras {
        [one] => format!("detector-{}", one.id),
        _ => "detector".to_string(),
    };
    let output = Output::open(cfg, &client_id, &policies, Arc::clone(&stats), stop)?;
    let max_batch = if model.dynamic_batch { cfg.max_batch } else { 1 };
    tracing::info!(
        cameras = cameras.len(), model = %model.info.name, sha256 = %model.info.sha256,
        input = %model.input, layout = ?model.layout,
        dynamic_batch = model.dynamic_batch, max_batch, threads = cfg.intra_threads(), "detector started"
    );
    for (((c, s), run), policy) in cameras.iter().zip(&sources).zip(&run_ids).zip(&policies) {
        tracing::info!(camera = %c.id, %run, source = %common::secret::redact_url(&c.source), kind = ?s.kind, ?policy, looped = c.looped, max_fps = c.max_fps, "camera");
    }
    Ok(Pipeline { cfg, cameras, sources, policies, model, decoder, run_ids, stats, output, max_batch, infer_beat, publish_beat })
}

/// People are the model's [`wire::PERSON_CLASS`], when `--classes` keeps it. Without it nobody is
/// counted: said at start, and refused when a camera has a crowd alert, which could never fire.
fn check_people(decoder: &Decoder, cfg: &Config, cameras: &[Camera]) -> Result<(), DetectorError> {
    if decoder.kept_classes().contains(&wire::PERSON_CLASS) {
        return Ok(());
    }
    let why = format!(
        "the model's classes {:?} that --classes {:?} keeps include no {:?}",
        decoder.kept_classes(),
        cfg.classes,
        wire::PERSON_CLASS
    );
    if let Some(c) = cameras.iter().find(|c| c.crowd.is_some()) {
        return Err(DetectorError::Config(format!(
            "camera {}'s crowd alert (--crowd-people, crowd_people) counts people, but {why}",
            c.id
        )));
    }
    tracing::warn!("{why}: people are not counted (detector_people_in_view stays 0)");
    Ok(())
}

impl Pipeline<'_> {
    /// Runs every camera to its end (or until `stop`), each on its own capture thread, through the
    /// shared inference worker, published from this thread.
    pub fn run(self, stop: &AtomicBool) -> Result<Summary, DetectorError> {
        let Pipeline { cfg, cameras, sources, policies, model, decoder, run_ids, stats, output, max_batch, infer_beat, publish_beat } =
            self;
        let (done_tx, done_rx) = bounded::<Inferred>(4 * max_batch);
        // Input buffers go back to capture for re-use: each is 3 x 640 x 640 floats or so.
        let (spare_tx, spare_rx) = bounded::<Vec<f32>>(2 * max_batch + cameras.len());
        let downstream: Vec<Downstream> = cameras.iter().map(|_| Downstream::default()).collect();
        let inference_runs = AtomicU64::new(0);
        let abort = AtomicBool::new(false);
        let started = Instant::now();
        let model_info = model.info.clone();
        let input = model.input;
        let keep_images = cfg.snapshot_dir.is_some();
        let max_frame_age = Duration::from_secs_f64(cfg.max_frame_age_s);

        let (publish_result, capture_results) = std::thread::scope(|s| {
            let abort = &abort;
            let mut frame_rxs = Vec::with_capacity(cameras.len());
            let mut captures = Vec::with_capacity(cameras.len());
            for (i, (source, camera)) in sources.into_iter().zip(cameras).enumerate() {
                let policy = policies[i];
                let (tx, rx) = bounded::<Prepared>(policy.channel_len(max_batch));
                let capture = Capture {
                    camera: i,
                    id: &camera.id,
                    policy,
                    paced: camera.realtime,
                    max_fps: camera.max_fps,
                    keep_images,
                    input,
                    tx,
                    drop_rx: (policy == Policy::RealTime).then(|| rx.clone()),
                    spare_rx: spare_rx.clone(),
                    stats: &stats[i],
                    downstream: &downstream[i],
                    max_frame_age,
                };
                frame_rxs.push(rx);
                captures.push(
                    std::thread::Builder::new()
                        .name(format!("capture-{i}"))
                        .spawn_scoped(s, move || capture.run(source, stop, abort))
                        .expect("spawn capture thread"),
                );
            }
            let worker =
                Worker { model, max_batch, cameras, stats: &stats, downstream: &downstream, runs: &inference_runs, heartbeat: infer_beat };
            let infer = std::thread::Builder::new()
                .name("infer".into())
                .spawn_scoped(s, move || worker.run(frame_rxs, done_tx, spare_tx))
                .expect("spawn inference thread");
            let publisher = Publisher {
                cfg,
                cameras,
                policies: &policies,
                run_ids: &run_ids,
                decoder: &decoder,
                model: &model_info,
                stats: &stats,
                stop,
                heartbeat: publish_beat,
            };
            let published = publisher.run(output, done_rx);
            if published.is_err() {
                abort.store(true, Ordering::Relaxed);
            }
            // A capture thread's panics are caught inside it; a join error would be a bug there.
            let captured: Vec<_> = captures.into_iter().map(|c| c.join().expect("capture thread panicked")).collect();
            infer.join().expect("inference thread panicked");
            (published, captured)
        });
        let messages = publish_result?;
        let failed: Vec<(String, DetectorError)> =
            cameras.iter().zip(capture_results).filter_map(|(c, r)| r.err().map(|e| (c.id.clone(), e))).collect();
        if cameras.len() > 1 {
            for (c, n) in cameras.iter().zip(stats.iter()) {
                let outcome = failed.iter().find(|(id, _)| id == &c.id).map_or("ended", |_| "failed");
                tracing::info!(
                    camera = %c.id, outcome, frames = n.count(|c| &c.read), published = n.count(|c| &c.published), skipped = n.count(|c| &c.skipped),
                    dropped = n.count(|c| &c.dropped), reconnects = n.count(|c| &c.reconnects), errors = n.count(|c| &c.errors), "camera finished"
                );
            }
        }
        Ok(Summary {
            frames_read: total(&stats, |c| &c.read),
            frames_skipped: total(&stats, |c| &c.skipped),
            frames_dropped: total(&stats, |c| &c.dropped),
            reconnects: total(&stats, |c| &c.reconnects),
            messages,
            inference_runs: inference_runs.load(Ordering::Relaxed),
            elapsed: started.elapsed(),
            failed,
        })
    }
}

/// `/readyz`: ready while some camera delivers frames; the body says which do.
fn readiness(cameras: &[Camera], stats: Arc<Vec<CameraStats>>) -> Readiness {
    let ids: Vec<String> = cameras.iter().map(|c| c.id.clone()).collect();
    Arc::new(move || {
        let lines: Vec<String> =
            ids.iter().zip(stats.iter()).map(|(id, s)| format!("camera {id}: {}", if s.is_up() { "up" } else { "down" })).collect();
        if stats.iter().any(CameraStats::is_up) {
            Ok(lines.join("\n"))
        } else {
            Err(format!("no camera delivers frames\n{}", lines.join("\n")))
        }
    })
}
