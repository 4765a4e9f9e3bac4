//! What the detector counts, each count in one place: per camera for the progress and summary
//! lines, and the same figures as Prometheus metrics (`--metrics-addr`). Labels are the camera id
//! only, so the series are bounded by the number of cameras.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use metrics::{describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Histogram, Unit};

pub const READ: &str = "detector_frames_read_total";
pub const PUBLISHED: &str = "detector_frames_published_total";
pub const SKIPPED: &str = "detector_frames_skipped_total";
pub const DROPPED: &str = "detector_frames_dropped_total";
pub const RECONNECTS: &str = "detector_reconnects_total";
pub const ERRORS: &str = "detector_camera_errors_total";
pub const UP: &str = "detector_camera_up";
pub const PEOPLE: &str = "detector_people_in_view";
pub const CAPTURE_TO_PUBLISH: &str = "detector_capture_to_publish_seconds";
pub const INFERENCE: &str = "detector_inference_seconds";
pub const BATCH: &str = "detector_inference_batch_frames";
pub const QUEUE: &str = "detector_producer_queue_messages";
pub const DELIVERY_FAILURES: &str = "detector_delivery_failures_total";
pub const CROWD_PEOPLE: &str = "detector_crowd_people";
pub const CROWD_SECONDS: &str = "detector_crowd_seconds";
pub const DRIFT: &str = "detector_stream_drift_seconds";
pub const ZONE_OCCUPANCY: &str = "detector_zone_occupancy";
pub const ZONE_DWELL_LONGEST: &str = "detector_zone_dwell_longest_seconds";
pub const ZONE_EVENTS: &str = "detector_zone_events_total";
pub const ZONE_CROWD_PEOPLE: &str = "detector_zone_crowd_people";
pub const ZONE_CROWD_SECONDS: &str = "detector_zone_crowd_seconds";
pub const ZONE_DWELL_ALERT: &str = "detector_zone_dwell_alert_seconds";
pub const FLEET_CAMERAS: &str = "detector_fleet_cameras";
pub const FLEET_MAX_CAMERAS: &str = "detector_fleet_max_cameras";
pub const FLEET_PARTITIONS: &str = "detector_fleet_partitions";
pub const FLEET_CAMERA_ASSIGNED: &str = "detector_fleet_camera_assigned";
pub const FLEET_CAMERA_RUNNING: &str = "detector_fleet_camera_running";
pub const FLEET_CHANGES: &str = "detector_fleet_assignment_changes_total";
pub const FLEET_START: &str = "detector_fleet_camera_start_seconds";

/// Histogram buckets of the metrics that have them.
pub const BUCKETS: &[(&str, &[f64])] = &[
    (CAPTURE_TO_PUBLISH, &[0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0]),
    (INFERENCE, &[0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0]),
    (BATCH, &[1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0]),
    (FLEET_START, &[0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0]),
];

/// Why a frame that was read did not go out.
#[derive(Debug, Clone, Copy)]
pub enum Drop {
    /// Pushed out of a full real-time channel by a newer frame.
    Behind,
    /// Older than `--max-frame-age-s` by the time it could be published, or waiting for a
    /// broker longer than that, or decoded that far behind its live stream.
    Stale,
    /// The model could not run it, even alone.
    Failed,
}

/// One camera's counts.
pub struct CameraStats {
    pub read: AtomicU64,
    pub skipped: AtomicU64,
    pub dropped: AtomicU64,
    pub reconnects: AtomicU64,
    pub published: AtomicU64,
    pub errors: AtomicU64,
    up: AtomicBool,
    m: CameraMetrics,
}

struct CameraMetrics {
    read: Counter,
    skipped: Counter,
    behind: Counter,
    stale: Counter,
    failed: Counter,
    reconnects: Counter,
    published: Counter,
    errors: Counter,
    up: Gauge,
    people: Gauge,
    latency: Histogram,
    /// Live cameras only.
    drift: Option<Gauge>,
}

impl CameraStats {
    /// A camera's counts; its crowd alert's threshold, if it has one, goes out as two gauges. A
    /// live camera's also tell how far its frames come behind its stream.
    pub fn new(camera: &str, crowd: Option<crate::config::Crowd>, live: bool) -> Self {
        let id = || camera.to_string();
        if let Some(c) = crowd {
            metrics::gauge!(CROWD_PEOPLE, "camera" => id()).set(f64::from(c.people));
            metrics::gauge!(CROWD_SECONDS, "camera" => id()).set(c.seconds as f64);
        }
        let dropped = |reason: &'static str| metrics::counter!(DROPPED, "camera" => id(), "reason" => reason);
        CameraStats {
            read: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            published: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            up: AtomicBool::new(false),
            m: CameraMetrics {
                read: metrics::counter!(READ, "camera" => id()),
                skipped: metrics::counter!(SKIPPED, "camera" => id()),
                behind: dropped("behind"),
                stale: dropped("stale"),
                failed: dropped("failed"),
                reconnects: metrics::counter!(RECONNECTS, "camera" => id()),
                published: metrics::counter!(PUBLISHED, "camera" => id()),
                errors: metrics::counter!(ERRORS, "camera" => id()),
                up: metrics::gauge!(UP, "camera" => id()),
                people: metrics::gauge!(PEOPLE, "camera" => id()),
                latency: metrics::histogram!(CAPTURE_TO_PUBLISH, "camera" => id()),
                drift: live.then(|| metrics::gauge!(DRIFT, "camera" => id())),
            },
        }
    }

    pub fn frame_read(&self) {
        self.read.fetch_add(1, Ordering::Relaxed);
        self.m.read.increment(1);
    }

    pub fn frame_skipped(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        self.m.skipped.increment(1);
    }

    pub fn frame_dropped(&self, why: Drop) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        match why {
            Drop::Behind => self.m.behind.increment(1),
            Drop::Stale => self.m.stale.increment(1),
            Drop::Failed => self.m.failed.increment(1),
        }
    }

    /// How far behind its stream's own clock a live camera's newest frame was decoded.
    pub fn drift(&self, seconds: f64) {
        if let Some(g) = &self.m.drift {
            g.set(seconds);
        }
    }

    pub fn reconnect(&self) -> u64 {
        self.m.reconnects.increment(1);
        self.reconnects.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A message went out: its people, and how long since its frame was captured.
    pub fn published(&self, people: usize, since_capture_s: f64) {
        self.published.fetch_add(1, Ordering::Relaxed);
        self.m.published.increment(1);
        self.m.people.set(people as f64);
        self.m.latency.record(since_capture_s.max(0.0));
    }

    /// The camera failed (a read, a frame, a panic); a live one is reopened.
    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.m.errors.increment(1);
        self.set_up(false);
    }

    /// Whether frames are coming.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        self.m.up.set(if up { 1.0 } else { 0.0 });
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn count(&self, c: fn(&CameraStats) -> &AtomicU64) -> u64 {
        c(self).load(Ordering::Relaxed)
    }
}

/// Describes the metrics for the endpoint's `# HELP` lines.
pub fn describe() {
    describe_counter!(READ, "Frames decoded, whatever became of them");
    describe_counter!(PUBLISHED, "Frame messages handed to the output (Kafka or stdout)");
    describe_counter!(SKIPPED, "Frames left out by --max-fps, before any work was spent on them");
    describe_counter!(
        DROPPED,
        "Frames read but not published: behind (a newer frame took its place), stale (older than --max-frame-age-s, or decoded that far behind the stream) or failed (the model could not run it)"
    );
    describe_counter!(RECONNECTS, "Attempts to reopen a live source");
    describe_counter!(
        ERRORS,
        "Faults of a camera's own (a read, a frame that cannot be prepared or run, a panic); live cameras are reopened"
    );
    describe_gauge!(UP, "1 while the camera delivers frames, 0 while it is away or being reopened");
    describe_gauge!(PEOPLE, "People in the camera's newest published frame");
    describe_histogram!(CAPTURE_TO_PUBLISH, Unit::Seconds, "From a frame's capture to its message being handed to the producer");
    describe_histogram!(INFERENCE, Unit::Seconds, "One ONNX Runtime run (a batch of frames)");
    describe_histogram!(BATCH, "Frames per ONNX Runtime run");
    describe_gauge!(QUEUE, "Messages in the Kafka producer's local queue, not yet acknowledged");
    describe_counter!(DELIVERY_FAILURES, "Messages Kafka will not take (a deleted topic, a revoked ACL, a message too large)");
    describe_gauge!(CROWD_PEOPLE, "The camera's crowd alert: more than this many people in view...");
    describe_gauge!(CROWD_SECONDS, "...for at least this many seconds");
    describe_gauge!(ZONE_OCCUPANCY, "Tracks inside the zone now (entered and not yet exited, under the camera's rules)");
    describe_gauge!(ZONE_DWELL_LONGEST, Unit::Seconds, "The longest presence now open in the zone (0 when it is empty)");
    describe_counter!(ZONE_EVENTS, "Zone and line events: zone_enter, zone_exit, line_in, line_out (rule: the zone or line)");
    describe_gauge!(ZONE_CROWD_PEOPLE, "The zone's crowd alert: more than this many tracks inside...");
    describe_gauge!(ZONE_CROWD_SECONDS, "...for at least this many seconds");
    describe_gauge!(ZONE_DWELL_ALERT, Unit::Seconds, "The zone's dwell alert: someone inside longer than this");
    describe_gauge!(FLEET_CAMERAS, "A fleet host's cameras: running, or waiting (past --max-cameras, or refused)");
    describe_gauge!(FLEET_MAX_CAMERAS, "A fleet host's --max-cameras (0: no cap)");
    describe_gauge!(FLEET_PARTITIONS, "Catalog partitions assigned to this fleet host");
    describe_gauge!(FLEET_CAMERA_ASSIGNED, "1 while the camera is in a catalog partition of this host");
    describe_gauge!(FLEET_CAMERA_RUNNING, "1 while this host runs the camera");
    describe_counter!(FLEET_CHANGES, "Catalog partitions assigned, revoked, or lost (taken while this host was away) by the group");
    describe_histogram!(
        FLEET_START,
        Unit::Seconds,
        "From a camera coming to this host (its partition assigned, or its record read) to its first delivered frame: a takeover's time on this side"
    );
    describe_gauge!(
        DRIFT,
        Unit::Seconds,
        "Live cameras: how far behind the stream's own clock the newest frame was decoded (beyond --max-frame-age-s frames are dropped as stale)"
    );
}

/// A camera's zones as metrics: each zone's occupancy and longest open presence (labels: camera
/// and zone, bounded by the cameras file), its alert thresholds, and the events per rule and kind.
pub struct ZoneStats {
    camera: String,
    /// Per zone, in the rules' order: occupancy, longest dwell.
    zones: Vec<(Gauge, Gauge)>,
}

impl ZoneStats {
    pub fn new(camera: &str, rules: &analytics::RulesConfig) -> Self {
        let zones = rules
            .zones
            .iter()
            .map(|z| {
                let labels = [("camera", camera.to_string()), ("zone", z.name.clone())];
                if let Some(people) = z.alert.crowd_people {
                    metrics::gauge!(ZONE_CROWD_PEOPLE, &labels).set(f64::from(people));
                    metrics::gauge!(ZONE_CROWD_SECONDS, &labels).set(z.alert.crowd_seconds.unwrap_or(0) as f64);
                }
                if let Some(dwell) = z.alert.dwell_s {
                    metrics::gauge!(ZONE_DWELL_ALERT, &labels).set(dwell);
                }
                (metrics::gauge!(ZONE_OCCUPANCY, &labels), metrics::gauge!(ZONE_DWELL_LONGEST, &labels))
            })
            .collect();
        ZoneStats { camera: camera.to_string(), zones }
    }

    /// After a frame: each zone's presences (`Counter::presences`, in the rules' order) and the
    /// events reported.
    pub fn observe(&self, presences: &[(&str, u32, f64)], events: &[wire::Event]) {
        for ((occupancy, longest), (_, inside, dwell)) in self.zones.iter().zip(presences) {
            occupancy.set(f64::from(*inside));
            longest.set(*dwell);
        }
        self.count(events);
    }

    /// The session ended: no one is inside any more.
    pub fn ended(&self, events: &[wire::Event]) {
        for (occupancy, longest) in &self.zones {
            occupancy.set(0.0);
            longest.set(0.0);
        }
        self.count(events);
    }

    fn count(&self, events: &[wire::Event]) {
        for e in events.iter().filter(|e| !e.rule.is_empty()) {
            let labels = [("camera", self.camera.clone()), ("rule", e.rule.clone()), ("kind", e.kind.as_str().to_string())];
            metrics::counter!(ZONE_EVENTS, &labels).increment(1);
        }
    }
}
