//! `detector --fleet GROUP`: one host of a fleet of detectors that share the camera catalog
//! (`catalog`) through a Kafka consumer group, with no coordinator of our own (docs/fleet.md).
//!
//! - **Membership.** The group assigns the catalog's partitions (classic protocol,
//!   `cooperative-sticky`: a rebalance revokes only the partitions that move, the others' cameras
//!   run on; static membership, `group.instance.id`: a host back within the session timeout gets
//!   its partitions again, nothing moves). Nothing is committed: an assigned partition is read
//!   from its start, so the host knows every camera in it.
//! - **Running.** Each camera of an assigned partition runs as a lane of the pipeline; a changed
//!   record stops it and starts it again (a new run), a tombstone stops it. `--max-cameras` caps
//!   what runs; the rest wait, in a metric an alert watches.
//! - **Revocation.** The rebalance callback stops the revoked partitions' cameras and returns only
//!   once every message of theirs has its delivery report (or the flush timeout), so the next
//!   owner's first frame comes after this host's last.
//! - **Fencing.** Before a camera starts, the host writes a lease record (key: the camera) to the
//!   camera's catalog partition of `<catalog>.leases`, and waits for it; the record's offset is
//!   the camera's epoch, in every frame of the run. Offsets only grow within a partition and all
//!   of a camera's leases go to one, so the epoch grows with every start of the camera, on any
//!   host, across restarts and group resets (a group's generation does not: it starts again when
//!   the group empties). A host that was paused or cut off and has not noticed yet writes frames
//!   of an older epoch than the new owner's, which the sink refuses once it has seen the newer.
//!   The host notices on its own: librdkafka declares the assignment lost when it could not
//!   heartbeat for the session timeout, and the group says so when it comes back; both revoke,
//!   and its cameras stop.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};

use crate::catalog::{create_compacted, kafka_error};
use crate::config::{Camera, Config, References};
use crate::error::DetectorError;
use crate::lane::Lane;
use crate::pipeline::{source_options, Cameras, Pipeline, Summary};
use crate::source::{Source, SourceKind};
use crate::stats;

/// How long a call to the brokers may take at start.
const TIMEOUT: Duration = Duration::from_secs(30);

/// How long a camera whose lease failed waits before the next try.
const RETRY: Duration = Duration::from_secs(5);

/// A camera's newest record in an assigned partition.
#[derive(Clone, PartialEq)]
struct Entry {
    partition: i32,
    text: String,
}

/// A camera this host runs.
struct Running {
    entry: Entry,
    lane: Arc<Lane>,
    /// When the camera came to this host, until its first frame is delivered.
    starting: Option<Instant>,
}

/// What the host knows and runs; shared by the loop and the rebalance callback, which runs on
/// the loop's thread, inside its poll.
#[derive(Default)]
struct Host {
    assigned: BTreeMap<i32, Instant>,
    /// The cameras of the assigned partitions, and when each record came.
    catalog: BTreeMap<String, Entry>,
    arrived: BTreeMap<String, Instant>,
    running: BTreeMap<String, Running>,
    /// Entries that cannot run (refused by validation, or a lease that failed), by the text
    /// refused, so each is said once.
    refused: BTreeMap<String, String>,
    /// Cameras whose lease failed, not tried again before then.
    retry_at: BTreeMap<String, Instant>,
    /// The cameras whose metrics say assigned or running, to set them back to 0.
    shown: BTreeSet<String>,
}

/// The group member's context: logs, and the revocation that flushes before it returns.
struct Membership {
    host: Arc<Mutex<Host>>,
    flush_timeout: Duration,
}

impl ClientContext for Membership {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        common::kafka::log_librdkafka(level, fac, msg);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        common::kafka::log_client_error(error, reason);
    }
}

impl ConsumerContext for Membership {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(?partitions, "catalog partitions assigned to this host");
                metrics::counter!(stats::FLEET_CHANGES, "change" => "assigned").increment(partitions.len() as u64);
                let mut host = self.host.lock().unwrap();
                partitions.into_iter().for_each(|p| _ = host.assigned.insert(p, Instant::now()));
                metrics::gauge!(stats::FLEET_PARTITIONS).set(host.assigned.len() as f64);
            }
            Rebalance::Revoke(tpl) => {
                let partitions: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                let lost = consumer.assignment_lost();
                let change = if lost { "lost" } else { "revoked" };
                metrics::counter!(stats::FLEET_CHANGES, "change" => change).increment(partitions.len() as u64);
                let stopping = {
                    let mut host = self.host.lock().unwrap();
                    host.assigned.retain(|p, _| !partitions.contains(p));
                    host.catalog.retain(|_, e| !partitions.contains(&e.partition));
                    let Host { catalog, arrived, .. } = &mut *host;
                    arrived.retain(|id, _| catalog.contains_key(id));
                    metrics::gauge!(stats::FLEET_PARTITIONS).set(host.assigned.len() as f64);
                    host.stop_where(|r| partitions.contains(&r.entry.partition))
                };
                if lost {
                    tracing::warn!(
                        ?partitions, cameras = stopping.len(),
                        "catalog partitions lost (this host was away past the session timeout): other hosts run these cameras now; stopping them"
                    );
                } else {
                    tracing::info!(
                        ?partitions,
                        cameras = stopping.len(),
                        "catalog partitions revoked: stopping their cameras, delivering their frames"
                    );
                }
                let unflushed = wait_flushed(&stopping, self.flush_timeout);
                if unflushed > 0 {
                    tracing::warn!(
                        cameras = unflushed,
                        "revoked cameras' frames not all delivered within the flush timeout; letting them go"
                    );
                }
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "catalog group rebalance failed"),
        }
    }
}

impl Host {
    /// Stops the running cameras that `which` picks; their lanes, to wait for.
    fn stop_where(&mut self, which: impl Fn(&Running) -> bool) -> Vec<Arc<Lane>> {
        let ids: Vec<String> = self.running.iter().filter(|(_, r)| which(r)).map(|(id, _)| id.clone()).collect();
        ids.into_iter()
            .filter_map(|id| self.running.remove(&id))
            .map(|r| {
                r.lane.stop.store(true, Ordering::Relaxed);
                r.lane
            })
            .collect()
    }
}

/// Waits until the lanes have ended and every message of theirs is reported, at most `timeout`;
/// how many have not.
fn wait_flushed(lanes: &[Arc<Lane>], timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let left = lanes.iter().filter(|l| !l.flushed()).count();
        if left == 0 || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The lease topic: one record per start of a camera; its offset is the camera's epoch.
struct Leases {
    topic: String,
    producer: FutureProducer,
    instance: String,
}

impl Leases {
    /// Writes a lease for the camera in its catalog partition and waits for the brokers; the epoch.
    fn take(&self, camera: &str, partition: i32) -> Result<u64, DetectorError> {
        let value = serde_json::json!({ "host": self.instance, "at": chrono::Utc::now().to_rfc3339() }).to_string();
        let record: FutureRecord<str, str> = FutureRecord::to(&self.topic).key(camera).partition(partition).payload(&value);
        let delivery = self.producer.send_result(record).map_err(|(e, _)| kafka_error(e))?;
        match futures_executor::block_on(delivery) {
            Ok(Ok(d)) => Ok(d.offset as u64),
            Ok(Err((e, _))) => Err(kafka_error(e)),
            Err(_) => Err(DetectorError::Kafka("the lease producer stopped before the lease was delivered".into())),
        }
    }
}

/// Joins the group and runs the cameras it assigns until `stop`.
pub fn run(cfg: &Config, pipeline: Pipeline<'_>, stop: &AtomicBool) -> Result<Summary, DetectorError> {
    let group = cfg.fleet.group.clone().expect("--fleet given");
    let instance = cfg.fleet.instance();
    let mut kafka = ClientConfig::new();
    kafka.set("client.id", format!("detector-{instance}"));
    cfg.kafka.connection.apply(&mut kafka);
    let partitions = catalog_partitions(&kafka, &cfg.fleet.catalog)?;
    let lease_topic = format!("{}.leases", cfg.fleet.catalog);
    create_compacted(&kafka, &lease_topic, partitions, "leases")?;
    let mut producing = kafka.clone();
    producing.set("enable.idempotence", "true").set("acks", "all");
    let leases = Leases { topic: lease_topic, producer: producing.create().map_err(kafka_error)?, instance: instance.clone() };

    let host = Arc::new(Mutex::new(Host::default()));
    let membership = Membership { host: Arc::clone(&host), flush_timeout: Duration::from_secs(cfg.flush_timeout_s) };
    let mut member = kafka.clone();
    member
        .set("group.id", &group)
        .set("group.instance.id", &instance)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", (cfg.fleet.session_timeout_s * 1000).to_string())
        // A member that dies is noticed after the session timeout; the survivors learn of the
        // rebalance at their next heartbeat, so a tenth of it rather than librdkafka's third
        // shortens a takeover by up to 2 s of a 10 s timeout, for a heartbeat a second.
        .set("heartbeat.interval.ms", (cfg.fleet.session_timeout_s * 100).to_string())
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer<Membership> = member.create_with_context(membership).map_err(kafka_error)?;
    consumer.subscribe(&[&cfg.fleet.catalog]).map_err(kafka_error)?;
    metrics::gauge!(stats::FLEET_MAX_CAMERAS).set(cfg.fleet.max_cameras as f64);
    tracing::info!(%group, %instance, catalog = %cfg.fleet.catalog, partitions, max_cameras = cfg.fleet.max_cameras, "joining the fleet");

    let (summary, _) = pipeline.drive(stop, move |cameras| {
        let served = serve(cfg, &consumer, &host, &leases, cameras);
        // Leaving: every camera stops and delivers its frames first. A static member's close
        // does not rebalance: its partitions wait for the session timeout, so a restart with the
        // same instance id moves nothing.
        let stopping = host.lock().unwrap().stop_where(|_| true);
        wait_flushed(&stopping, Duration::from_secs(cfg.flush_timeout_s));
        consumer.unsubscribe();
        served
    })?;
    Ok(summary)
}

/// The catalog's partition count; the catalog must exist (`detector cameras put` creates it).
fn catalog_partitions(kafka: &ClientConfig, topic: &str) -> Result<i32, DetectorError> {
    let probe: BaseConsumer = kafka.clone().set("group.id", "detector-fleet-probe").create().map_err(kafka_error)?;
    let metadata = probe.fetch_metadata(Some(topic), TIMEOUT).map_err(kafka_error)?;
    match metadata.topics().first().map(|t| t.partitions().len()) {
        Some(n) if n > 0 => Ok(n as i32),
        _ => {
            Err(DetectorError::Config(format!("--catalog {topic}: no such topic; `detector cameras put` creates it with the first camera")))
        }
    }
}

/// The host's loop: reads the assigned partitions' records, and makes what runs what they say.
fn serve(
    cfg: &Config,
    consumer: &BaseConsumer<Membership>,
    host: &Mutex<Host>,
    leases: &Leases,
    cameras: &Cameras<'_, '_>,
) -> Result<(), DetectorError> {
    while !cameras.halted() {
        // The rebalance callbacks run inside this poll.
        let mut wait = Duration::from_millis(200);
        while let Some(m) = consumer.poll(wait) {
            wait = Duration::ZERO;
            match m {
                Ok(m) => record(host, &m),
                Err(e) => tracing::warn!(error = %e, "reading the camera catalog"),
            }
        }
        // A member the group has fenced for good (another host joined with this instance id)
        // cannot take part again: its cameras are another's now, so it stops.
        if let Some((code, reason)) = consumer.client().fatal_error() {
            return Err(DetectorError::Kafka(format!(
                "the catalog's group {} dropped this host for good ({code}: {reason}); does another host use --instance-id {}?",
                cfg.fleet.group.as_deref().unwrap_or_default(),
                cfg.fleet.instance()
            )));
        }
        reconcile(cfg, host, leases, cameras);
    }
    Ok(())
}

/// A catalog record of an assigned partition: the camera's newest entry, or its removal.
fn record(host: &Mutex<Host>, m: &rdkafka::message::BorrowedMessage<'_>) {
    let Some(id) = m.key().map(|k| String::from_utf8_lossy(k).into_owned()) else { return };
    let mut host = host.lock().unwrap();
    // A record of a partition revoked meanwhile is not this host's to act on.
    if !host.assigned.contains_key(&m.partition()) {
        return;
    }
    host.arrived.insert(id.clone(), Instant::now());
    match m.payload() {
        None => host.catalog.remove(&id),
        Some(v) => host.catalog.insert(id, Entry { partition: m.partition(), text: String::from_utf8_lossy(v).into_owned() }),
    };
}

/// Stops what no longer matches its record, starts what should run, and says so in the metrics.
fn reconcile(cfg: &Config, host: &Mutex<Host>, leases: &Leases, cameras: &Cameras<'_, '_>) {
    // A changed camera's old run delivers all it has before the new one starts.
    let stale = {
        let mut h = host.lock().unwrap();
        let catalog = h.catalog.clone();
        h.stop_where(|r| catalog.get(&r.lane.camera.id) != Some(&r.entry))
    };
    for lane in &stale {
        tracing::info!(camera = %lane.camera.id, run = %lane.run_id, "camera changed or removed in the catalog: stopping it");
    }
    wait_flushed(&stale, Duration::from_secs(cfg.flush_timeout_s));

    let mut h = host.lock().unwrap();
    let to_start: Vec<(String, Entry)> =
        h.catalog.iter().filter(|(id, _)| !h.running.contains_key(*id)).map(|(id, e)| (id.clone(), e.clone())).collect();
    let mut waiting = 0;
    for (id, entry) in to_start {
        if h.refused.get(&id) == Some(&entry.text) || h.retry_at.get(&id).is_some_and(|t| *t > Instant::now()) {
            waiting += 1;
            continue;
        }
        // Validated first, so that an entry this host cannot run says so even while the host is full.
        let started = camera_of(cfg, &id, &entry).and_then(|camera| {
            if cfg.fleet.max_cameras > 0 && h.running.len() >= cfg.fleet.max_cameras {
                return Ok(None);
            }
            start(camera, &entry, leases, cameras).map(Some)
        });
        match started {
            Ok(Some(lane)) => {
                // Since the later of its partition's assignment and its record's arrival.
                let since = match (h.assigned.get(&entry.partition), h.arrived.get(&id)) {
                    (Some(a), Some(r)) => *a.max(r),
                    _ => Instant::now(),
                };
                h.refused.remove(&id);
                h.retry_at.remove(&id);
                h.running.insert(id, Running { entry, lane, starting: Some(since) });
            }
            Ok(None) => waiting += 1,
            // An entry this host cannot run waits for its record to change; a lease the brokers
            // did not take is tried again.
            Err(e) if e.retryable() => {
                tracing::error!(camera = %id, blame = %e.blame(), "{e}; trying again in {} s", RETRY.as_secs());
                h.retry_at.insert(id, Instant::now() + RETRY);
                waiting += 1;
            }
            Err(e) => {
                tracing::error!(camera = %id, blame = %e.blame(), "{e}; the camera waits for its record to change");
                h.refused.insert(id, entry.text);
                waiting += 1;
            }
        }
    }
    // A lane that ended on its own (a file camera at its end) stays: it runs again when its
    // record changes or it comes back to this host.
    for r in h.running.values_mut() {
        if let Some(since) = r.starting.filter(|_| r.lane.stats.count(|c| &c.published) > 0) {
            metrics::histogram!(stats::FLEET_START).record(since.elapsed().as_secs_f64());
            tracing::info!(camera = %r.lane.camera.id, seconds = format!("{:.1}", since.elapsed().as_secs_f64()), epoch = ?r.lane.epoch, "camera publishing on this host");
            r.starting = None;
        }
    }
    let running = h.running.len();
    metrics::gauge!(stats::FLEET_CAMERAS, "state" => "running").set(running as f64);
    metrics::gauge!(stats::FLEET_CAMERAS, "state" => "waiting").set(waiting as f64);
    let now: BTreeSet<String> = h.catalog.keys().chain(h.running.keys()).cloned().collect();
    for id in h.shown.iter().filter(|id| !now.contains(*id)) {
        metrics::gauge!(stats::FLEET_CAMERA_ASSIGNED, "camera" => id.clone()).set(0.0);
        metrics::gauge!(stats::FLEET_CAMERA_RUNNING, "camera" => id.clone()).set(0.0);
    }
    for id in &now {
        metrics::gauge!(stats::FLEET_CAMERA_ASSIGNED, "camera" => id.clone()).set(if h.catalog.contains_key(id) { 1.0 } else { 0.0 });
        let runs = h.running.get(id).is_some_and(|r| !r.lane.ended());
        metrics::gauge!(stats::FLEET_CAMERA_RUNNING, "camera" => id.clone()).set(if runs { 1.0 } else { 0.0 });
    }
    h.shown = now;
}

/// The camera of a record, validated as a cameras file's entry is, its `${NAME}` references
/// expanded from this host's environment.
fn camera_of(cfg: &Config, id: &str, entry: &Entry) -> Result<Camera, DetectorError> {
    let camera = cfg
        .cameras_in(&entry.text, &format!("catalog {} partition {}", cfg.fleet.catalog, entry.partition), References::Expand)?
        .into_iter()
        .next()
        .expect("a valid entry is one camera");
    if camera.id != id {
        return Err(DetectorError::Config(format!("the catalog record keyed {id:?} is camera {:?}: written by another tool", camera.id)));
    }
    let has_rules = !camera.rules.zones.is_empty() || !camera.rules.lines.is_empty();
    if has_rules && !cfg.track {
        return Err(DetectorError::Config(format!("camera {id}'s zones and lines (rules) count tracks: they need --track on this host")));
    }
    Ok(camera)
}

/// Takes the camera's lease and starts it; its lane.
fn start(camera: Camera, entry: &Entry, leases: &Leases, cameras: &Cameras<'_, '_>) -> Result<Arc<Lane>, DetectorError> {
    let epoch = leases.take(&camera.id, entry.partition)?;
    let kind = SourceKind::of(&camera.source);
    let run = cameras.namer.run_of(&camera, kind)?;
    let lane = Arc::new(Lane::new(camera, run, kind, Some(epoch)));
    cameras.lanes().add(Arc::clone(&lane));
    let c = &lane.camera;
    tracing::info!(camera = %c.id, %run, epoch, partition = entry.partition, source = %common::secret::redact_url(&c.source), policy = ?lane.policy, "camera starting on this host");
    let (uri, opts) = (c.source.clone(), source_options(c));
    cameras.start(Arc::clone(&lane), move || Source::open(&uri, opts));
    Ok(lane)
}
