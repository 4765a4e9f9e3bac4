//! The last stage: each inferred frame decoded into a wire message and published, to Kafka or to
//! standard output.
//!
//! To Kafka, through one producer per capture policy (idempotent, `acks=all`, lz4):
//! - lossless cameras' messages wait for a broker that is away (`message.timeout.ms=0`), with a
//!   bounded local queue that holds capture back;
//! - real-time cameras' messages expire once older than `--max-frame-age-s` (dropped as stale,
//!   counted), so that a queue filled during an outage does not go out minutes late: latency
//!   recovers within that age once the broker is back. A frame already that old when it is
//!   decoded is dropped here, unsent.
//!
//! A delivery that cannot succeed (a deleted topic, a revoked ACL, a message larger than the topic
//! takes) is counted and reported (ERROR, once per streak); once deliveries have failed for
//! `--delivery-failure-timeout-s` without one succeeding, publishing stops with that error.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::registry::Registry;
use common::telemetry::Heartbeat;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::config::{Config, OutputKind};
use crate::decode::Decoder;
use crate::error::DetectorError;
use crate::lane::{Lane, Lanes, Policy};
use crate::snapshot::Snapshots;
use crate::stats::{self, Drop};
use crate::track::Tracker;
use crate::worker::{Done, Inferred, BEAT_EVERY};

/// What a message carries to its delivery report.
pub struct Sent {
    lane: Arc<Lane>,
    people: usize,
    captured_at: chrono::DateTime<chrono::Utc>,
}

/// Counts delivery reports, which librdkafka hands back on its own thread, per camera.
pub struct Deliveries {
    delivered: AtomicU64,
    expired: AtomicU64,
    failed: AtomicU64,
    /// The latest failure, and since when deliveries have failed with none succeeding.
    failing: Mutex<Option<(Instant, String)>>,
}

impl Deliveries {
    fn new() -> Self {
        Deliveries { delivered: AtomicU64::new(0), expired: AtomicU64::new(0), failed: AtomicU64::new(0), failing: Mutex::new(None) }
    }

    /// How long deliveries have been failing, and why; `None` while they succeed.
    fn failing_for(&self) -> Option<(Duration, String)> {
        self.failing.lock().unwrap().as_ref().map(|(since, why)| (since.elapsed(), why.clone()))
    }

    /// Messages accounted for: delivered, or dropped by the broker's absence (expired).
    fn accounted(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed) + self.expired.load(Ordering::Relaxed)
    }
}

/// The producers' context: both producers count into one [`Deliveries`].
pub struct DeliveryContext(Arc<Deliveries>);

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        common::kafka::log_librdkafka(level, fac, msg);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        common::kafka::log_client_error(error, reason);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Sent>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Sent>) {
        self.0.report(result, &sent);
    }
}

impl Deliveries {
    fn report(&self, result: &DeliveryResult<'_>, sent: &Sent) {
        sent.lane.reported();
        let camera = &sent.lane.stats;
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                let since = (chrono::Utc::now() - sent.captured_at).num_milliseconds() as f64 / 1000.0;
                camera.published(sent.people, since);
                *self.failing.lock().unwrap() = None;
            }
            // Only a real-time camera's messages expire: they were too old to be worth sending.
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut), _)) => {
                self.expired.fetch_add(1, Ordering::Relaxed);
                camera.frame_dropped(Drop::Stale);
            }
            // Left in the queue at exit, after the flush timed out: `finish` has said so.
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight), _)) => {}
            Err((e, m)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(stats::DELIVERY_FAILURES).increment(1);
                let why = format!("topic {}: {e}", m.topic());
                let mut failing = self.failing.lock().unwrap();
                if failing.is_none() {
                    tracing::error!(error = %why, "kafka refuses the detector's messages; they are lost until this is fixed");
                    *failing = Some((Instant::now(), why));
                } else if let Some((_, last)) = failing.as_mut() {
                    *last = why;
                }
            }
        }
    }
}

type Kafka = ThreadedProducer<DeliveryContext>;

/// How long the brokers may take to answer at start.
const BROKER_CHECK: Duration = Duration::from_secs(10);

pub struct KafkaOutput {
    /// One producer per capture policy in use.
    lossless: Option<Kafka>,
    real_time: Option<Kafka>,
    deliveries: Arc<Deliveries>,
    topic: String,
    /// The registry's id of the wire schema, when messages are framed for it.
    schema_id: Option<u32>,
    sent: u64,
    flush_timeout: Duration,
    failure_timeout: Duration,
}

pub enum Output {
    Kafka(KafkaOutput),
    /// Line by line: a reader of a live camera's lines gets each frame when it is published, not
    /// when a buffer fills.
    Stdout(std::io::LineWriter<std::io::Stdout>),
}

impl Output {
    /// `client_id` names the producers to the brokers; `policies` are the cameras' policies.
    pub fn open(cfg: &Config, client_id: &str, policies: &[Policy], stop: &AtomicBool) -> Result<Self, DetectorError> {
        match cfg.output {
            OutputKind::Stdout => Ok(Output::Stdout(std::io::LineWriter::new(std::io::stdout()))),
            OutputKind::Kafka => KafkaOutput::connect(cfg, client_id, policies, stop).map(Output::Kafka),
        }
    }
}

/// Registers (or finds) the wire schema under `<topic>-value`; its id. A new subject gets BACKWARD
/// compatibility, so the registry refuses a later schema that could not read what this one wrote;
/// a subject that holds schemas already, or has a level of its own, keeps the level it has: an
/// operator may have set it.
fn register_schema(url: &str, topic: &str) -> Result<u32, DetectorError> {
    let registry = Registry::new(url, Duration::from_secs(10)).map_err(DetectorError::Config)?;
    registry.probe().map_err(DetectorError::registry)?;
    let subject = format!("{topic}-value");
    if !registry.subject_exists(&subject).map_err(DetectorError::registry)?
        && registry.compatibility(&subject).map_err(DetectorError::registry)?.is_none()
    {
        registry.set_compatibility(&subject, "BACKWARD").map_err(DetectorError::registry)?;
        tracing::info!(%subject, compatibility = "BACKWARD", "new subject: its compatibility set");
    }
    let id = registry.register(&subject, wire::JSON_SCHEMA).map_err(DetectorError::registry)?;
    tracing::info!(registry = %registry.url(), %subject, schema_id = id, "wire schema registered; messages are framed with its id");
    Ok(id)
}

impl KafkaOutput {
    fn connect(cfg: &Config, client_id: &str, policies: &[Policy], stop: &AtomicBool) -> Result<Self, DetectorError> {
        let schema_id = cfg.schema_registry.as_ref().map(|url| register_schema(url.expose(), &cfg.kafka.topic)).transpose()?;
        tracing::info!(brokers = %cfg.kafka.connection.brokers, topic = %cfg.kafka.topic, extra = ?cfg.kafka.shown(), "connecting to kafka");
        let deliveries = Arc::new(Deliveries::new());
        let make = |policy: Policy| -> Result<Option<Kafka>, DetectorError> {
            if !policies.contains(&policy) {
                return Ok(None);
            }
            let (suffix, timeout_ms) = match policy {
                // 0 = retry forever: a file's frames wait for a broker that is away rather than
                // being dropped; the bounded queue then holds capture back.
                Policy::Lossless => ("", 0),
                Policy::RealTime => ("-live", (cfg.max_frame_age_s * 1000.0) as u64),
            };
            let mut client = ClientConfig::new();
            client
                .set("client.id", format!("{client_id}{suffix}"))
                // Idempotence keeps retries from duplicating or reordering a camera's frames.
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("compression.type", "lz4")
                .set("linger.ms", "5")
                .set("message.timeout.ms", timeout_ms.to_string())
                .set("queue.buffering.max.messages", "10000");
            cfg.kafka.apply(&mut client);
            let producer: Kafka = client
                .create_with_context(DeliveryContext(Arc::clone(&deliveries)))
                .map_err(|e| DetectorError::Config(format!("kafka producer settings: {e}")))?;
            // Fail at start, with the address, rather than queueing into the void; asked a second
            // at a time, so that a signal need not wait for the whole check.
            let deadline = Instant::now() + BROKER_CHECK;
            while let Err(e) = producer.client().fetch_metadata(Some(&cfg.kafka.topic), Duration::from_secs(1)) {
                if stop.load(Ordering::Relaxed) {
                    return Err(DetectorError::Stopped);
                }
                if Instant::now() >= deadline {
                    return Err(DetectorError::Kafka(format!("cannot reach the brokers at {}: {e}", cfg.kafka.connection.brokers)));
                }
            }
            Ok(Some(producer))
        };
        Ok(KafkaOutput {
            lossless: make(Policy::Lossless)?,
            real_time: make(Policy::RealTime)?,
            deliveries,
            topic: cfg.kafka.topic.clone(),
            schema_id,
            sent: 0,
            flush_timeout: Duration::from_secs(cfg.flush_timeout_s),
            failure_timeout: Duration::from_secs(cfg.delivery_failure_timeout_s),
        })
    }

    fn producers(&self) -> impl Iterator<Item = &Kafka> {
        self.lossless.iter().chain(&self.real_time)
    }

    fn queued(&self) -> i32 {
        self.producers().map(|p| p.in_flight_count()).sum()
    }

    /// Hands the message to its policy's producer, waiting (and beating `heartbeat`) while the
    /// producer's queue is full.
    fn send(&mut self, msg: &wire::FrameMessage, lane: &Arc<Lane>, stop: &AtomicBool, heartbeat: &Heartbeat) -> Result<(), DetectorError> {
        if let Some((failing, why)) = self.deliveries.failing_for().filter(|(d, _)| *d >= self.failure_timeout) {
            return Err(DetectorError::Kafka(format!("deliveries have failed for {} s with none succeeding: {why}", failing.as_secs())));
        }
        let json = msg.to_json();
        let payload = match self.schema_id {
            Some(id) => wire::envelope::frame(id, &json),
            None => json,
        };
        let producer = match lane.policy {
            Policy::Lossless => self.lossless.as_ref(),
            Policy::RealTime => self.real_time.as_ref(),
        }
        .expect("a producer for every policy in use");
        let sent = Box::new(Sent { lane: Arc::clone(lane), people: msg.people(), captured_at: msg.captured_at });
        let mut record = BaseRecord::with_opaque_to(&self.topic, sent).key(msg.camera_id.as_str()).payload(&payload);
        let mut stopping_since = None;
        loop {
            match producer.send(record) {
                Ok(()) => {
                    lane.sent();
                    break;
                }
                // The local queue is full (broker slow or away): wait, which backs the pipeline up
                // (a live source then drops its oldest frames). Once a shutdown is asked, wait no
                // longer than the flush timeout, so SIGTERM ends a run whose broker never returns.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    if stop.load(Ordering::Relaxed) && stopping_since.get_or_insert_with(Instant::now).elapsed() >= self.flush_timeout {
                        return Err(DetectorError::Kafka(format!(
                            "shutting down with the broker unreachable: {} queued messages and frame {} of camera {} not delivered within the {} s flush timeout",
                            self.queued(),
                            msg.frame_seq,
                            msg.camera_id,
                            self.flush_timeout.as_secs()
                        )));
                    }
                    heartbeat.beat();
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err((e, _)) => return Err(DetectorError::Kafka(format!("send: {e}"))),
            }
        }
        self.sent += 1;
        metrics::gauge!(stats::QUEUE).set(self.queued() as f64);
        Ok(())
    }

    /// Waits for every message to be delivered or expired (or the timeout), then reports.
    fn finish(self) -> Result<u64, DetectorError> {
        let deadline = Instant::now() + self.flush_timeout;
        let flushed: Vec<_> = self.producers().map(|p| p.flush(deadline.saturating_duration_since(Instant::now()))).collect();
        let d = &self.deliveries;
        let (delivered, expired, failed) =
            (d.delivered.load(Ordering::Relaxed), d.expired.load(Ordering::Relaxed), d.failed.load(Ordering::Relaxed));
        if failed > 0 || flushed.iter().any(Result::is_err) || d.accounted() != self.sent {
            let last = d.failing_for().map(|(_, why)| why).unwrap_or_else(|| "flush timed out".into());
            return Err(DetectorError::Kafka(format!(
                "{} of {} messages not delivered ({failed} refused, {expired} expired as stale): {last}",
                self.sent - delivered,
                self.sent
            )));
        }
        tracing::info!(delivered, expired, "all messages delivered or expired");
        Ok(delivered)
    }
}

/// The last stage: what it needs besides the output and the frames.
pub struct Publisher<'a> {
    pub cfg: &'a Config,
    pub decoder: &'a Decoder,
    pub model: &'a wire::ModelInfo,
    pub lanes: &'a Lanes,
    pub stop: &'a AtomicBool,
    pub heartbeat: Heartbeat,
}

/// What publishing keeps of a lane between its frames.
struct LaneState {
    /// The camera's tracker sees the frames this stage sends, in order: not those dropped as
    /// stale, which never reach the broker (a message that later expires in the producer's queue
    /// was seen).
    tracker: Option<Tracker>,
    /// A tracked camera's message waits for its next frame, so that the last one can carry the
    /// end of the session (its tracks' ends and open presences' exits).
    held: Option<wire::FrameMessage>,
    snapshots: Option<Snapshots>,
}

impl Publisher<'_> {
    /// Sends one message to the output.
    fn emit(&self, output: &mut Output, msg: &wire::FrameMessage, lane: &Arc<Lane>, closed: &mut bool) -> Result<(), DetectorError> {
        match output {
            Output::Kafka(k) => k.send(msg, lane, self.stop, &self.heartbeat)?,
            Output::Stdout(_) if *closed => {}
            Output::Stdout(out) => {
                let mut line = msg.to_json();
                line.push(b'\n');
                match out.write_all(&line) {
                    Ok(()) => {
                        let since = (chrono::Utc::now() - msg.captured_at).num_milliseconds() as f64 / 1000.0;
                        lane.stats.published(msg.people(), since);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                        tracing::info!("standard output closed by its reader: stopping");
                        *closed = true;
                        self.stop.store(true, Ordering::Relaxed);
                    }
                    Err(e) => return Err(DetectorError::Output(format!("stdout: {e}"))),
                }
            }
        }
        Ok(())
    }

    fn state(&self, lane: &Lane) -> LaneState {
        let cfg = self.cfg;
        LaneState {
            tracker: cfg.tracker().map(|t| Tracker::new(t, &lane.camera, lane.run_id)),
            held: None,
            snapshots: cfg.snapshot_dir.as_deref().map(|d| Snapshots::configured(d, cfg, &lane.camera.id)),
        }
    }

    /// Decodes and publishes every inferred frame until inference has stopped; the messages
    /// delivered.
    pub fn run(&self, mut output: Output, rx: Receiver<Done>) -> Result<u64, DetectorError> {
        let (cfg, lanes) = (self.cfg, self.lanes);
        let mut last_report = Instant::now();
        let started = Instant::now();
        let max_age = chrono::Duration::milliseconds((cfg.max_frame_age_s * 1000.0) as i64);
        // The reader of standard output has gone (`| head -1`): the run ends as asked, quietly.
        let mut closed = false;
        let mut states: HashMap<u64, LaneState> = HashMap::new();
        loop {
            self.heartbeat.beat();
            let Inferred { meta, lb, output: raw } = match rx.recv_timeout(BEAT_EVERY) {
                Ok(Done::Frame(inferred)) => inferred,
                Ok(Done::End(lane)) => {
                    let state = states.remove(&lane.serial);
                    self.end(&mut output, &lane, state, &mut closed)?;
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let lane = &meta.lane;
            // Too old to be worth sending: a real-time camera drops it.
            if lane.policy == Policy::RealTime && chrono::Utc::now() - meta.captured_at > max_age {
                lane.stats.frame_dropped(Drop::Stale);
                continue;
            }
            let state = states.entry(lane.serial).or_insert_with(|| self.state(lane));
            let decoded = self.decoder.decode(&raw, &lb)?;
            let (detections, tracker) = match state.tracker.as_mut() {
                Some(t) => {
                    let (published, tracker) = t.track(decoded, cfg.conf, &meta, &self.decoder.class_names);
                    (published, Some(tracker))
                }
                None => (decoded, None),
            };
            let msg = wire::FrameMessage {
                schema_version: wire::SCHEMA_VERSION,
                camera_id: lane.camera.id.clone(),
                run_id: lane.run_id,
                frame_seq: meta.seq,
                captured_at: meta.captured_at,
                pts_ms: meta.pts_ms,
                frame_width: lb.src_w,
                frame_height: lb.src_h,
                model: self.model.clone(),
                detections,
                tracker,
                epoch: lane.epoch,
            };
            if let (Some(s), Some(image)) = (state.snapshots.as_mut(), meta.image.as_ref()) {
                s.offer(image, &msg);
            }
            let out = if state.tracker.is_some() { state.held.replace(msg) } else { Some(msg) };
            if let Some(msg) = out {
                self.emit(&mut output, &msg, lane, &mut closed)?;
            }
            if last_report.elapsed() >= Duration::from_secs(5) {
                last_report = Instant::now();
                let published = lanes.total(|c| &c.published);
                tracing::info!(
                    frames = published,
                    fps = format!("{:.1}", published as f64 / started.elapsed().as_secs_f64()),
                    skipped = lanes.total(|c| &c.skipped),
                    dropped = lanes.total(|c| &c.dropped),
                    reconnects = lanes.total(|c| &c.reconnects),
                    "progress"
                );
            }
        }
        match output {
            Output::Kafka(k) => k.finish(),
            Output::Stdout(mut out) => {
                match out.flush() {
                    Err(e) if !closed && e.kind() != std::io::ErrorKind::BrokenPipe => {
                        return Err(DetectorError::Output(format!("stdout: {e}")));
                    }
                    _ => {}
                }
                Ok(lanes.total(|c| &c.published))
            }
        }
    }

    /// A lane's every frame is through: its tracker's session ends in its last message.
    fn end(&self, output: &mut Output, lane: &Arc<Lane>, state: Option<LaneState>, closed: &mut bool) -> Result<(), DetectorError> {
        if let Some(LaneState { tracker: Some(tracker), held: Some(mut msg), .. }) = state {
            let rules = msg.tracker.as_mut().and_then(|t| t.rules.as_mut()).expect("a tracked frame has its rules' output");
            rules.append(tracker.finish());
            // No frame is left to carry more: the stored tracks let a recount add the rest.
            let left_out = rules.split_at_bound();
            if !left_out.is_empty() {
                tracing::warn!(
                    camera = %lane.camera.id,
                    left_out = left_out.len(),
                    "the session's last message cannot carry all its end events; `sink recount` with the same rules stores them"
                );
            }
            self.emit(output, &msg, lane, closed)?;
        }
        lane.end();
        Ok(())
    }
}
