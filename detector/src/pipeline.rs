//! Wires the stages into threads: one capture thread per camera (`capture`) -> a bounded channel
//! per camera -> one inference worker shared by all cameras (`worker`) -> a bounded channel ->
//! decode + publish (`publish`). Each camera is a [`Lane`]. [`prepare`] opens and checks
//! everything first, so that a bad input fails at once and clearly; [`Pipeline::run`] then runs a
//! fixed list of cameras, and [`Pipeline::drive`] lets a controller (a fleet host, `fleet`) start
//! and stop cameras while the others run.
//!
//! A camera's faults stay its own (`capture`, and frames the model cannot run, `worker`): the
//! other cameras go on, and the run reports the cameras that failed. A failure of the shared
//! publishing stage stops them all.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use crate::capture::Capture;
use crate::config::{Camera, Config};
use crate::decode::{Decoder, MAX_DET};
use crate::error::DetectorError;
use crate::identity::{self, Settings, Tracking};
use crate::infer::Model;
use crate::lane::{Lane, Lanes, Policy};
use crate::preprocess::InputShape;
use crate::publish::{Output, Publisher};
use crate::source::{Source, SourceKind, SourceOptions};
use crate::stats;
use crate::worker::{Done, Intake, Worker};
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
    /// A fixed list's cameras, their sources open; none for a fleet, whose cameras come and go.
    opened: Vec<(Arc<Lane>, Source)>,
    model: Model,
    decoder: Decoder,
    namer: RunNamer,
    lanes: Lanes,
    output: Output,
    max_batch: usize,
    /// The inference worker's and the publishing loop's, which `/livez` watches.
    infer_beat: Heartbeat,
    publish_beat: Heartbeat,
}

/// How a camera's source is opened and read.
pub fn source_options(c: &Camera) -> SourceOptions {
    SourceOptions {
        looped: c.looped,
        open_timeout: Duration::from_secs(c.open_timeout_s),
        read_timeout: Duration::from_secs(c.read_timeout_s),
    }
}

/// Opens the sources, loads the model, names the runs, starts the metrics endpoint and connects
/// the output; `stop` (a signal) cuts the wait for the brokers short. `cameras` is empty for a
/// fleet (`--fleet`), whose cameras start later.
pub fn prepare<'a>(cfg: &'a Config, cameras: &[Camera], stop: &AtomicBool) -> Result<Pipeline<'a>, DetectorError> {
    // OpenCV's own thread pool (TBB here) would parallelise each resize across the cores that
    // ONNX Runtime's threads are using; sequential OpenCV in each capture thread (the cameras are
    // the parallelism) leaves those cores to inference.
    if let Err(e) = opencv::core::set_num_threads(0) {
        tracing::warn!(error = %e, "cannot make OpenCV sequential; its threads will compete with inference");
    }
    let sources = cameras.iter().map(|c| Source::open(&c.source, source_options(c))).collect::<Result<Vec<_>, _>>()?;
    let model = Model::load(&cfg.model, cfg.intra_threads())?;
    let decoder = Decoder::new(model.layout, model.class_names.clone(), &cfg.classes, cfg.decode_conf(), cfg.iou)?;
    check_people(&decoder, cfg, cameras)?;
    let namer = RunNamer::new(cfg, &model, &decoder);
    let run_ids = cameras.iter().zip(&sources).map(|(c, s)| namer.run_of(c, s.kind)).collect::<Result<Vec<_>, _>>()?;
    // The recorder before the first metric is made.
    let metrics = cfg.metrics_addr.map(|_| Metrics::install(stats::BUCKETS).map_err(DetectorError::Config)).transpose()?;
    stats::describe();
    let lanes = Lanes::default();
    let opened: Vec<(Arc<Lane>, Source)> = cameras
        .iter()
        .zip(sources)
        .zip(run_ids)
        .map(|((c, s), run)| {
            let lane = Arc::new(Lane::new(c.clone(), run, s.kind, None));
            lanes.add(Arc::clone(&lane));
            (lane, s)
        })
        .collect();
    let (infer_beat, publish_beat) = (Heartbeat::new("inference", LIVENESS_TIMEOUT), Heartbeat::new("publishing", LIVENESS_TIMEOUT));
    if let (Some(m), Some(addr)) = (metrics, cfg.metrics_addr) {
        let probes = Probes {
            ready: readiness(lanes.clone(), cfg.fleet.group.is_some()),
            live: vec![infer_beat.clone(), publish_beat.clone()],
            extra: None,
        };
        m.serve(addr, probes).map_err(DetectorError::Config)?;
    }
    let client_id = match (cameras, &cfg.fleet.group) {
        (_, Some(_)) => format!("detector-{}", cfg.fleet.instance()),
        ([one], None) => format!("detector-{}", one.id),
        _ => "detector".to_string(),
    };
    // A fleet's cameras may be of either policy.
    let policies: Vec<Policy> =
        if cfg.fleet.group.is_some() { vec![Policy::Lossless, Policy::RealTime] } else { opened.iter().map(|(l, _)| l.policy).collect() };
    let output = Output::open(cfg, &client_id, &policies, stop)?;
    let max_batch = if model.dynamic_batch { cfg.max_batch } else { 1 };
    tracing::info!(
        cameras = cameras.len(), model = %model.info.name, sha256 = %model.info.sha256,
        input = %model.input, layout = ?model.layout,
        dynamic_batch = model.dynamic_batch, max_batch, threads = cfg.intra_threads(), "detector started"
    );
    for (lane, s) in &opened {
        log_camera(lane, s.kind);
    }
    Ok(Pipeline { cfg, opened, model, decoder, namer, lanes, output, max_batch, infer_beat, publish_beat })
}

fn log_camera(lane: &Lane, kind: SourceKind) {
    let c = &lane.camera;
    tracing::info!(
        camera = %c.id, run = %lane.run_id, source = %common::secret::redact_url(&c.source), ?kind, policy = ?lane.policy,
        looped = c.looped, max_fps = c.max_fps, epoch = ?lane.epoch, "camera"
    );
}

/// Names a camera's runs (`identity`) from what decides its frames.
pub struct RunNamer {
    model_sha256: String,
    classes: Vec<String>,
    conf: f32,
    iou: f32,
    tracker: Option<analytics::Config>,
}

impl RunNamer {
    fn new(cfg: &Config, model: &Model, decoder: &Decoder) -> Self {
        RunNamer {
            model_sha256: model.sha256.clone(),
            classes: decoder.kept_classes().into_iter().map(String::from).collect(),
            conf: cfg.conf,
            iou: cfg.iou,
            tracker: cfg.tracker(),
        }
    }

    /// The run of a camera whose source is of this kind.
    pub fn run_of(&self, c: &Camera, kind: SourceKind) -> Result<uuid::Uuid, DetectorError> {
        let classes = self.classes.iter().map(String::as_str).collect();
        let settings = Settings { model_sha256: &self.model_sha256, conf: self.conf, iou: self.iou, classes, max_detections: MAX_DET };
        let tracking = self.tracker.map(|tracker| Tracking { max_fps: c.max_fps, tracker });
        identity::run_of(&c.source, kind, c.realtime, &settings, tracking)
    }
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
    /// Runs a fixed list of cameras to their end (or until `stop`), each on its own capture
    /// thread, through the shared inference worker and publishing.
    pub fn run(mut self, stop: &AtomicBool) -> Result<Summary, DetectorError> {
        let opened = std::mem::take(&mut self.opened);
        let many = opened.len() > 1;
        let summary = self.drive(stop, move |cameras| {
            for (lane, source) in opened {
                cameras.start(lane, move || Ok(source));
            }
            Ok(())
        })?;
        if many {
            for l in summary.1.all() {
                let (c, n) = (&l.camera, &l.stats);
                let outcome = summary.0.failed.iter().find(|(id, _)| id == &c.id).map_or("ended", |_| "failed");
                tracing::info!(
                    camera = %c.id, outcome, frames = n.count(|c| &c.read), published = n.count(|c| &c.published), skipped = n.count(|c| &c.skipped),
                    dropped = n.count(|c| &c.dropped), reconnects = n.count(|c| &c.reconnects), errors = n.count(|c| &c.errors), "camera finished"
                );
            }
        }
        Ok(summary.0)
    }

    /// Starts the inference worker and publishing, then hands `control` the means to start
    /// cameras; once it returns no camera starts, and the run ends when the cameras it started
    /// have (or at `stop`). The summary, and every lane run.
    pub fn drive<F>(self, stop: &AtomicBool, control: F) -> Result<(Summary, Lanes), DetectorError>
    where
        F: for<'s, 'e> FnOnce(&Cameras<'s, 'e>) -> Result<(), DetectorError> + Send,
    {
        let Pipeline { cfg, opened: _, model, decoder, namer, lanes, output, max_batch, infer_beat, publish_beat } = self;
        let (done_tx, done_rx) = bounded::<Done>(4 * max_batch);
        // Input buffers go back to capture for re-use: each is 3 x 640 x 640 floats or so.
        let (spare_tx, spare_rx) = bounded::<Vec<f32>>(3 * max_batch);
        let (intake_tx, intake_rx) = unbounded::<Intake>();
        let inference_runs = AtomicU64::new(0);
        let abort = AtomicBool::new(false);
        let started = Instant::now();
        let model_info = model.info.clone();
        let input = model.input;

        let (published, controlled, failed) = std::thread::scope(|s| {
            let abort = &abort;
            let worker = Worker { model, max_batch, runs: &inference_runs, heartbeat: infer_beat };
            let infer = std::thread::Builder::new()
                .name("infer".into())
                .spawn_scoped(s, move || worker.run(intake_rx, done_tx, spare_tx))
                .expect("spawn inference thread");
            let publisher = Publisher { cfg, decoder: &decoder, model: &model_info, lanes: &lanes, stop, heartbeat: publish_beat };
            let publish = std::thread::Builder::new()
                .name("publish".into())
                .spawn_scoped(s, move || {
                    let published = publisher.run(output, done_rx);
                    if published.is_err() {
                        abort.store(true, Ordering::Relaxed);
                    }
                    published
                })
                .expect("spawn publishing thread");
            let cameras = Cameras {
                scope: s,
                intake: intake_tx,
                spare_rx,
                max_batch,
                keep_images: cfg.snapshot_dir.is_some(),
                input,
                max_frame_age: Duration::from_secs_f64(cfg.max_frame_age_s),
                stop,
                abort,
                lanes: lanes.clone(),
                namer,
                threads: Mutex::new(Vec::new()),
                failed: Mutex::new(Vec::new()),
            };
            let controlled = control(&cameras);
            if controlled.is_err() {
                abort.store(true, Ordering::Relaxed);
            }
            // No camera starts any more: the worker ends once the started ones have.
            let failed = cameras.join();
            let published = publish.join().expect("publishing thread panicked");
            infer.join().expect("inference thread panicked");
            (published, controlled, failed)
        });
        let messages = published?;
        controlled?;
        let summary = Summary {
            frames_read: lanes.total(|c| &c.read),
            frames_skipped: lanes.total(|c| &c.skipped),
            frames_dropped: lanes.total(|c| &c.dropped),
            reconnects: lanes.total(|c| &c.reconnects),
            messages,
            inference_runs: inference_runs.load(Ordering::Relaxed),
            elapsed: started.elapsed(),
            failed,
        };
        Ok((summary, lanes))
    }
}

type CameraThread<'s> = ScopedJoinHandle<'s, Result<(), DetectorError>>;

/// Starts cameras while a pipeline runs: a capture thread each, its frames to the shared worker.
pub struct Cameras<'s, 'e> {
    scope: &'s Scope<'s, 'e>,
    intake: Sender<Intake>,
    spare_rx: Receiver<Vec<f32>>,
    max_batch: usize,
    keep_images: bool,
    input: InputShape,
    max_frame_age: Duration,
    stop: &'e AtomicBool,
    abort: &'e AtomicBool,
    lanes: Lanes,
    pub namer: RunNamer,
    threads: Mutex<Vec<(Arc<Lane>, CameraThread<'s>)>>,
    /// The cameras that stopped on a fault of their own, with it.
    failed: Mutex<Vec<(String, DetectorError)>>,
}

impl<'s, 'e> Cameras<'s, 'e> {
    /// Starts the lane's capture on a thread of its own, with the source `open` gives there (a
    /// live camera's open may take its `open_timeout_s`). A lane stops at its own `stop`.
    pub fn start(&self, lane: Arc<Lane>, open: impl FnOnce() -> Result<Source, DetectorError> + Send + 's) {
        self.reap();
        let (tx, rx) = bounded(lane.policy.channel_len(self.max_batch));
        let capture = Capture {
            lane: Arc::clone(&lane),
            keep_images: self.keep_images,
            input: self.input,
            tx,
            drop_rx: (lane.policy == Policy::RealTime).then(|| rx.clone()),
            spare_rx: self.spare_rx.clone(),
            max_frame_age: self.max_frame_age,
        };
        // The worker serves the lane from now: its end reaches publishing even if the source
        // never opens.
        if self.intake.send((Arc::clone(&lane), rx)).is_err() {
            return; // the worker has stopped: publishing failed, and says why
        }
        let (stop, abort) = (self.stop, self.abort);
        let id = lane.camera.id.clone();
        let thread = std::thread::Builder::new()
            .name(format!("capture-{}", lane.serial))
            .spawn_scoped(self.scope, move || {
                let source =
                    open().inspect_err(|e| tracing::error!(camera = %id, blame = %e.blame(), "{e}; the camera stops, the others go on"))?;
                capture.run(source, stop, abort)
            })
            .expect("spawn capture thread");
        self.threads.lock().unwrap().push((lane, thread));
    }

    /// Whether the run is ending: a signal, or publishing failed.
    pub fn halted(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.abort.load(Ordering::Relaxed)
    }

    pub fn lanes(&self) -> &Lanes {
        &self.lanes
    }

    /// Joins the capture threads that have ended, keeping their faults.
    fn reap(&self) {
        let mut threads = self.threads.lock().unwrap();
        let (ended, running): (Vec<_>, Vec<_>) = threads.drain(..).partition(|(_, t)| t.is_finished());
        *threads = running;
        drop(threads);
        for (lane, t) in ended {
            // A capture thread's panics are caught inside it; a join error would be a bug there.
            if let Err(e) = t.join().expect("capture thread panicked") {
                self.failed.lock().unwrap().push((lane.camera.id.clone(), e));
            }
        }
    }

    /// Closes the intake and waits for every camera's capture; the faults.
    fn join(self) -> Vec<(String, DetectorError)> {
        let Cameras { intake, threads, failed, .. } = self;
        drop(intake);
        let mut failed = failed.into_inner().unwrap();
        for (lane, t) in threads.into_inner().unwrap() {
            if let Err(e) = t.join().expect("capture thread panicked") {
                failed.push((lane.camera.id.clone(), e));
            }
        }
        failed
    }
}

/// `/readyz`: ready while some camera delivers frames (a fleet host, also while it runs none);
/// the body says which do.
fn readiness(lanes: Lanes, fleet: bool) -> Readiness {
    Arc::new(move || {
        let running = lanes.running();
        let lines: Vec<String> =
            running.iter().map(|l| format!("camera {}: {}", l.camera.id, if l.stats.is_up() { "up" } else { "down" })).collect();
        if running.iter().any(|l| l.stats.is_up()) || (fleet && running.is_empty()) {
            Ok(lines.join("\n"))
        } else {
            Err(format!("no camera delivers frames\n{}", lines.join("\n")))
        }
    })
}
