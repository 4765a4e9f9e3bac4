//! Command-line and environment configuration of the detector.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use common::kafka::KafkaArgs;
use common::secret::{hide_url, redact_url, SecretUrl};
use common::url::Url;
use serde::Deserialize;

use crate::error::DetectorError;
use crate::source::{RtspTransport, SourceKind, LIVE_SCHEMES};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputKind {
    /// Publish to a Kafka topic (default).
    Kafka,
    /// Write the same messages as JSON lines to standard output; no broker needed.
    Stdout,
}

/// Reads video, finds people with a YOLO model in ONNX Runtime, and publishes one JSON message per
/// frame (wire schema v3) to Kafka.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, after_help = "Logs go to standard error, at the level RUST_LOG sets (default: info). Exit codes: 0 done, 2 a setting to fix, 3 an outage, 130 a second signal. `detector cameras --help`: the camera catalog of a fleet (docs/fleet.md). See docs/detector.md.")]
pub struct Config {
    /// Video file, image file, rtsp:// or http(s):// URL, or V4L2 device (/dev/video0). A password
    /// in the URL is never shown.
    #[arg(long, env = "DETECTOR_SOURCE", hide_env_values = true, required_unless_present_any = ["cameras", "group"], conflicts_with = "cameras")]
    pub source: Option<SecretUrl>,

    /// TOML file listing many cameras (`[[camera]]` tables with `id`, `source` and per-camera
    /// options), run in one process through one shared inference worker. The per-camera flags
    /// below are the defaults for its entries. See docs/detector.md, "Many cameras".
    #[arg(long, env = "DETECTOR_CAMERAS", value_name = "FILE")]
    pub cameras: Option<PathBuf>,

    #[command(flatten)]
    pub fleet: FleetArgs,

    /// Frames (of any cameras) run in one ONNX Runtime call, when the model's batch dimension is
    /// dynamic (a model with a fixed batch of 1 runs them one by one).
    #[arg(long, env = "DETECTOR_MAX_BATCH", default_value_t = 4)]
    pub max_batch: usize,

    /// Video files: start again at the end, forever; frame_seq and pts_ms keep growing.
    #[arg(long = "loop", env = "DETECTOR_LOOP")]
    pub looped: bool,

    /// Video files: release frames at the file's own rate, as a camera would, and drop frames
    /// that inference cannot keep up with (the live policy) instead of waiting for it.
    #[arg(long, env = "DETECTOR_REALTIME")]
    pub realtime: bool,

    /// At most this many frames a second go to inference; capture skips the others (0: no cap).
    /// Files are paced by their pts, live sources by arrival time.
    #[arg(long, env = "DETECTOR_MAX_FPS", default_value_t = 0.0)]
    pub max_fps: f64,

    /// How rtsp:// streams are carried.
    #[arg(long, env = "DETECTOR_RTSP_TRANSPORT", value_enum, default_value_t = RtspTransport::Tcp)]
    pub rtsp_transport: RtspTransport,

    /// Live streams (FFmpeg; not V4L2 devices): seconds opening may take. It includes FFmpeg's
    /// probe of the stream (up to 5 s of it), so keep it well above that.
    #[arg(long, env = "DETECTOR_OPEN_TIMEOUT", default_value_t = 20)]
    pub open_timeout_s: u64,

    /// Live streams (FFmpeg; not V4L2 devices): seconds without a frame before the stream counts
    /// as stalled and is reopened.
    #[arg(long, env = "DETECTOR_READ_TIMEOUT", default_value_t = 10)]
    pub read_timeout_s: u64,

    /// The crowd alert's threshold: more than this many people in view ... (unset: no crowd
    /// alert). Exported as `detector_crowd_people{camera}` for the alert rule, so it needs
    /// --metrics-addr.
    #[arg(long, env = "DETECTOR_CROWD_PEOPLE", value_name = "N")]
    pub crowd_people: Option<u32>,

    /// ... for at least this many seconds. Exported as `detector_crowd_seconds{camera}`.
    #[arg(long, env = "DETECTOR_CROWD_SECONDS", default_value_t = 30)]
    pub crowd_seconds: u64,

    /// Camera id of `--source`: the Kafka message key and the `camera_id` of every row.
    #[arg(long, env = "DETECTOR_CAMERA_ID", default_value = "cam0")]
    pub camera_id: String,

    /// ONNX model file: a YOLOv8/11 detect or pose export, YOLOv5, or end-to-end (YOLOv10, NMS
    /// inside). A fixed input size is letterboxed to; with dynamic height and width
    /// (models/yolo11n-pose-rect*.onnx) each frame gets the smallest stride-32 rectangle of its own
    /// aspect, as Ultralytics' PyTorch predict does. A relative path is taken from the working
    /// directory.
    #[arg(long, env = "DETECTOR_MODEL", default_value = "models/yolo11n-pose.onnx")]
    pub model: PathBuf,

    /// Minimum detection score.
    #[arg(long, env = "DETECTOR_CONF", default_value_t = 0.25)]
    pub conf: f32,

    /// IoU above which NMS suppresses the weaker of two boxes (Ultralytics' predict default: 0.7).
    #[arg(long, env = "DETECTOR_IOU", default_value_t = 0.7)]
    pub iou: f32,

    /// Class names to keep, comma-separated.
    #[arg(long, env = "DETECTOR_CLASSES", value_delimiter = ',', default_value = "person")]
    pub classes: Vec<String>,

    /// Track: a ByteTrack tracker per camera (of every class kept) on every published frame, equal
    /// to Ultralytics' `model.track(..., tracker="bytetrack.yaml")`; each message carries the
    /// frame's tracks. Detections down to the tracker's low threshold (0.1) feed it; the message's
    /// detections stay those above --conf. See docs/tracking.md.
    #[arg(long, env = "DETECTOR_TRACK")]
    pub track: bool,

    /// With --track: a lost track is kept this many frames (bytetrack.yaml's track_buffer), 1 to
    /// 100000.
    #[arg(long, env = "DETECTOR_TRACK_BUFFER", default_value_t = 30, requires = "track")]
    pub track_buffer: u32,

    /// With --track: keep a lost track this many seconds of the frames' own time instead, 0 to 3600
    /// (for live cameras, whose dropped and skipped frames would change a wait counted in frames).
    #[arg(long, env = "DETECTOR_TRACK_BUFFER_S", value_name = "SECONDS", requires = "track", conflicts_with = "track_buffer")]
    pub track_buffer_s: Option<f64>,

    /// ONNX Runtime intra-op threads (0: one per core).
    #[arg(long, env = "DETECTOR_THREADS", default_value_t = 0)]
    pub threads: usize,

    /// Where messages go.
    #[arg(long, env = "DETECTOR_OUTPUT", value_enum, default_value_t = OutputKind::Kafka)]
    pub output: OutputKind,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Schema registry (Confluent-compatible API; for Apicurio, its `/apis/ccompat/v7`): the wire
    /// v3 JSON Schema is registered under `<topic>-value` at start (compatibility BACKWARD) and
    /// every message is framed with its id. Credentials may be given as URL user info. Like the
    /// other Kafka settings, not used with --output stdout.
    #[arg(long, env = "SCHEMA_REGISTRY_URL", value_name = "URL", hide_env_values = true)]
    pub schema_registry: Option<SecretUrl>,

    /// Write JPEGs of frames with detections here, boxes and skeletons drawn.
    #[arg(long, env = "DETECTOR_SNAPSHOT_DIR")]
    pub snapshot_dir: Option<PathBuf>,

    /// At most one snapshot per this many seconds of video (by the frames' timestamps).
    #[arg(long, env = "DETECTOR_SNAPSHOT_EVERY", default_value_t = 5.0)]
    pub snapshot_every_s: f64,

    /// How long to wait for outstanding deliveries at exit, in seconds.
    #[arg(long, env = "DETECTOR_FLUSH_TIMEOUT", default_value_t = 30)]
    pub flush_timeout_s: u64,

    /// Live sources (and --realtime files): a frame older than this (seconds since capture) when
    /// it is published is dropped, and so is one that waits longer than this in the producer's
    /// queue for a broker that is away; what reaches the broker after an outage is therefore at
    /// most twice this old, and latency recovers within seconds.
    #[arg(long, env = "DETECTOR_MAX_FRAME_AGE", default_value_t = 2.0)]
    pub max_frame_age_s: f64,

    /// When Kafka refuses every message (a deleted topic, a revoked ACL, messages too large) for
    /// this long, the detector exits (3) instead of losing frames forever, in seconds.
    #[arg(long, env = "DETECTOR_DELIVERY_FAILURE_TIMEOUT", default_value_t = 30)]
    pub delivery_failure_timeout_s: u64,

    /// Serve Prometheus metrics at http://ADDR/metrics, liveness at /livez, readiness at /readyz
    /// (e.g. 0.0.0.0:9188, localhost:9188; port 0: one the system picks, logged); off when unset.
    #[arg(long, env = "DETECTOR_METRICS_ADDR", value_name = "HOST:PORT", value_parser = common::telemetry::parse_addr)]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Blur each person's head in snapshots, placed from the face keypoints (the top of the box
    /// without them, or with a model that has none). On unless set to false: a snapshot is a file
    /// anyone with the folder can open. See docs/detector.md, "Snapshots and privacy".
    #[arg(long, env = "DETECTOR_SNAPSHOT_BLUR_HEADS", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub snapshot_blur_heads: bool,
}

/// A host of a fleet: its cameras come from the camera catalog (docs/fleet.md).
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// Join the fleet of detector hosts GROUP (a Kafka consumer group on the camera catalog) and
    /// run the cameras of the catalog partitions it is assigned, instead of --source/--cameras.
    #[arg(long = "fleet", env = "DETECTOR_FLEET", value_name = "GROUP", conflicts_with_all = ["source", "cameras"])]
    pub group: Option<String>,

    /// The camera catalog's topic (`detector cameras`); its leases are in `<topic>.leases`.
    #[arg(long, env = "DETECTOR_CATALOG_TOPIC", default_value = "cameras", value_name = "TOPIC")]
    pub catalog: String,

    /// This host's static member id in the group (default: the host name). A host restarted
    /// with the same id within the session timeout gets its cameras back; two hosts must not
    /// share one.
    #[arg(long, env = "DETECTOR_INSTANCE_ID", value_name = "ID")]
    pub instance_id: Option<String>,

    /// Most cameras this host runs (0: no cap); the others of its partitions wait, counted in
    /// detector_fleet_cameras{state="waiting"}, which an alert watches.
    #[arg(long, env = "DETECTOR_MAX_CAMERAS", default_value_t = 0)]
    pub max_cameras: usize,

    /// How long the group waits for a silent host before its cameras go to the others.
    #[arg(long, env = "DETECTOR_SESSION_TIMEOUT", default_value_t = 10)]
    pub session_timeout_s: u64,
}

impl FleetArgs {
    /// The member id: --instance-id, or the host name.
    pub fn instance(&self) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "detector".into())
        })
    }
}

/// One camera as the pipeline runs it: from the flags (`--source`) or an entry of `--cameras`.
#[derive(Clone, PartialEq)]
pub struct Camera {
    pub id: String,
    pub source: String,
    pub looped: bool,
    pub realtime: bool,
    pub max_fps: f64,
    pub open_timeout_s: u64,
    pub read_timeout_s: u64,
    /// The crowd alert: more than `people` in view for `seconds` (none: no alert).
    pub crowd: Option<Crowd>,
    /// Zones and lines over its tracks (`[camera.rules]` in the cameras file; none from flags).
    pub rules: analytics::RulesConfig,
}

/// Whether a cameras file's `${NAME}` references in sources are expanded (to run the cameras) or
/// kept as written (to store them in the camera catalog, where they are expanded by each host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum References {
    Expand,
    AsWritten,
}

/// A crowd alert's threshold for one camera.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Crowd {
    pub people: u32,
    pub seconds: u64,
}

impl std::fmt::Debug for Camera {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A camera's URL often carries its password.
        f.debug_struct("Camera")
            .field("id", &self.id)
            .field("source", &redact_url(&self.source))
            .field("looped", &self.looped)
            .field("realtime", &self.realtime)
            .field("max_fps", &self.max_fps)
            .field("open_timeout_s", &self.open_timeout_s)
            .field("read_timeout_s", &self.read_timeout_s)
            .field("crowd", &self.crowd)
            .field("rules", &self.rules)
            .finish()
    }
}

/// The `--cameras` file: `[[camera]]` tables. Unknown keys are refused, so a typo cannot
/// silently fall back to a default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CamerasFile {
    camera: Vec<toml::Spanned<CameraEntry>>,
}

/// Options left out take the value of the matching flag (or its environment variable).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CameraEntry {
    id: String,
    source: String,
    #[serde(rename = "loop")]
    looped: Option<bool>,
    realtime: Option<bool>,
    max_fps: Option<f64>,
    open_timeout_s: Option<u64>,
    read_timeout_s: Option<u64>,
    crowd_people: Option<u32>,
    crowd_seconds: Option<u64>,
    /// The zone and line rules (docs/analytics.md); they need --track.
    rules: Option<analytics::RulesConfig>,
}

impl Camera {
    /// The checks every camera passes, wherever it was configured. Messages name the option both
    /// ways, as a flag and as a key of the cameras file.
    fn validate(&self) -> Result<(), String> {
        check_source(&self.source)?;
        if !wire::is_label(&self.id, wire::MAX_LABEL_CHARS) {
            return Err("the camera id (--camera-id, id) must be 1 to 128 characters, none of them control characters".into());
        }
        if !(self.max_fps.is_finite() && (0.0..=1000.0).contains(&self.max_fps)) {
            return Err(format!("--max-fps (max_fps) must be 0 (no cap) to 1000, got {}", self.max_fps));
        }
        for (flag, v) in
            [("--open-timeout-s (open_timeout_s)", self.open_timeout_s), ("--read-timeout-s (read_timeout_s)", self.read_timeout_s)]
        {
            if !(1..=3600).contains(&v) {
                return Err(format!("{flag} must be within 1 and 3600, got {v}"));
            }
        }
        self.rules.validate().map_err(|e| format!("rules: {e}"))?;
        if (self.looped || self.realtime) && SourceKind::of(&self.source) != SourceKind::File {
            return Err(
                "--loop and --realtime (loop, realtime) apply to video files only (a live source is real time already, and is reopened when it ends)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// A source that is a URL must be one the detector reads, and whole. The message shows no more
/// than its scheme: a URL that does not parse may hold a password that nothing hides.
fn check_source(source: &str) -> Result<(), String> {
    let Some((scheme, _)) = source.split_once("://").filter(|(s, _)| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric())) else {
        return Ok(());
    };
    let scheme = scheme.to_ascii_lowercase();
    if LIVE_SCHEMES.contains(&scheme.as_str()) {
        return Url::parse(source).map(drop).map_err(|why| format!("--source (source) {scheme}://...: {why}"));
    }
    if scheme == "file" {
        return Err("--source (source) file://...: give the file's path itself, without file://".into());
    }
    Err(format!(
        "--source (source) {scheme}://...: the detector does not read {scheme}:// (it reads a file, an image, {}, /dev/videoN)",
        LIVE_SCHEMES.iter().map(|s| format!("{s}://")).collect::<Vec<_>>().join(", ")
    ))
}

impl Config {
    /// Checks what clap's types cannot and returns the cameras to run; nothing is opened yet, so
    /// a bad setting fails at once and clearly.
    pub fn validate(&self) -> Result<Vec<Camera>, DetectorError> {
        if !(0.0..=1.0).contains(&self.conf) {
            return Err(DetectorError::Config(format!("--conf must be within 0 and 1, got {}", self.conf)));
        }
        if !(0.0..=1.0).contains(&self.iou) {
            return Err(DetectorError::Config(format!("--iou must be within 0 and 1, got {}", self.iou)));
        }
        if !(self.snapshot_every_s.is_finite() && (0.0..=86_400.0).contains(&self.snapshot_every_s)) {
            return Err(DetectorError::Config(format!("--snapshot-every-s must be within 0 and 86400, got {}", self.snapshot_every_s)));
        }
        // Each frame of a batch is a 5 MB tensor, times the spares kept for re-use: a huge batch
        // is memory that cannot be had, not speed.
        if !(1..=64).contains(&self.max_batch) {
            return Err(DetectorError::Config(format!("--max-batch must be within 1 and 64, got {}", self.max_batch)));
        }
        if self.threads > 256 {
            return Err(DetectorError::Config(format!("--threads must be 0 (one per core) to 256, got {}", self.threads)));
        }
        if self.flush_timeout_s > 3600 {
            return Err(DetectorError::Config(format!("--flush-timeout-s must be within 0 and 3600, got {}", self.flush_timeout_s)));
        }
        if !(self.max_frame_age_s.is_finite() && (0.1..=3600.0).contains(&self.max_frame_age_s)) {
            return Err(DetectorError::Config(format!("--max-frame-age-s must be within 0.1 and 3600, got {}", self.max_frame_age_s)));
        }
        if !(1..=3600).contains(&self.delivery_failure_timeout_s) {
            return Err(DetectorError::Config(format!(
                "--delivery-failure-timeout-s must be within 1 and 3600, got {}",
                self.delivery_failure_timeout_s
            )));
        }
        if !(1..=100_000).contains(&self.track_buffer) {
            return Err(DetectorError::Config(format!("--track-buffer must be within 1 and 100000 frames, got {}", self.track_buffer)));
        }
        if let Some(s) = self.track_buffer_s.filter(|s| !(s.is_finite() && (0.0..=3600.0).contains(s))) {
            return Err(DetectorError::Config(format!("--track-buffer-s must be within 0 and 3600, got {s}")));
        }
        if self.classes.iter().all(|c| c.trim().is_empty()) {
            return Err(DetectorError::Config("--classes names no class".into()));
        }
        if self.output == OutputKind::Kafka {
            self.kafka.check().map_err(DetectorError::Config)?;
        }
        let cameras = if self.fleet.group.is_some() {
            if !(6..=1800).contains(&self.fleet.session_timeout_s) {
                return Err(DetectorError::Config(format!(
                    "--session-timeout-s must be within 6 and 1800 (the brokers' group.min/max.session.timeout.ms), got {}",
                    self.fleet.session_timeout_s
                )));
            }
            if self.output != OutputKind::Kafka {
                return Err(DetectorError::Config("--fleet publishes to Kafka: --output stdout is for one process's own cameras".into()));
            }
            vec![] // from the catalog, as the group assigns them
        } else {
            self.cameras()?
        };
        let has_rules = |c: &&Camera| !c.rules.zones.is_empty() || !c.rules.lines.is_empty();
        if let (false, Some(c)) = (self.track, cameras.iter().find(has_rules)) {
            return Err(DetectorError::Config(format!("camera {}'s zones and lines (rules) count tracks: they need --track", c.id)));
        }
        if let (None, Some(c)) = (self.metrics_addr, cameras.iter().find(|c| c.crowd.is_some())) {
            return Err(DetectorError::Config(format!(
                "camera {}'s crowd alert (--crowd-people, crowd_people) needs --metrics-addr: the alert is a Prometheus rule on the detector's metrics",
                c.id
            )));
        }
        if let Some(dir) = &self.snapshot_dir {
            if dir.exists() && !dir.is_dir() {
                return Err(DetectorError::Config(format!("--snapshot-dir {}: exists and is not a directory", dir.display())));
            }
            std::fs::create_dir_all(dir).map_err(|e| DetectorError::Config(format!("--snapshot-dir {}: {e}", dir.display())))?;
        }
        Ok(cameras)
    }

    /// With --track, each camera's tracker's settings: bytetrack.yaml's, with the flags' buffer.
    pub fn tracker(&self) -> Option<analytics::Config> {
        let track_buffer = match self.track_buffer_s {
            Some(s) => analytics::TrackBuffer::Seconds(s),
            None => analytics::TrackBuffer::Frames(self.track_buffer),
        };
        self.track.then(|| analytics::Config { track_buffer, ..analytics::Config::default() })
    }

    /// The score detections are decoded from: --conf, or lower with --track, whose second stage
    /// takes detections from its low threshold, as `model.track` lowers its conf to 0.1.
    pub fn decode_conf(&self) -> f32 {
        self.tracker().map_or(self.conf, |t| self.conf.min(t.track_low_thresh))
    }

    /// The one camera of `--source`, or the entries of `--cameras` with the flags as defaults.
    fn cameras(&self) -> Result<Vec<Camera>, DetectorError> {
        let Some(path) = &self.cameras else {
            // clap requires one of --source and --cameras.
            let camera = self.camera_with_flags(&self.camera_id, self.source.as_ref().map(SecretUrl::expose).unwrap_or_default());
            camera.validate().map_err(DetectorError::Config)?;
            return Ok(vec![camera]);
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| DetectorError::Config(format!("--cameras {}: cannot read: {e}", path.display())))?;
        self.cameras_in(&text, &format!("--cameras {}", path.display()), References::Expand)
    }

    /// The cameras of a cameras file's text (`origin` names it in errors), the flags as defaults,
    /// each validated; sources' `${NAME}` references expanded from the environment or not.
    pub fn cameras_in(&self, text: &str, origin: &str, references: References) -> Result<Vec<Camera>, DetectorError> {
        let in_file = |why: String| DetectorError::Config(format!("{origin}: {why}"));
        let file: CamerasFile = toml::from_str(text).map_err(|e| {
            // toml's Display draws the line over several; one line with its number reads better in logs.
            let line = e.span().map_or(0, |s| text[..s.start].matches('\n').count() + 1);
            in_file(format!("line {line}: {}", e.message()))
        })?;
        if file.camera.is_empty() {
            return Err(in_file("lists no [[camera]]".into()));
        }
        let mut cameras: Vec<Camera> = Vec::with_capacity(file.camera.len());
        for entry in file.camera {
            let line = text[..entry.span().start].matches('\n').count() + 1;
            let e = entry.into_inner();
            let source = match references {
                References::Expand => common::secret::expand_env(&e.source)
                    .map_err(|why| in_file(format!("line {line}: camera {:?}: source: {why}", e.id)))?,
                References::AsWritten => e.source.clone(),
            };
            hide_url(&source);
            let defaults = self.camera_with_flags(&e.id, &source);
            let camera = Camera {
                looped: e.looped.unwrap_or(defaults.looped),
                realtime: e.realtime.unwrap_or(defaults.realtime),
                max_fps: e.max_fps.unwrap_or(defaults.max_fps),
                open_timeout_s: e.open_timeout_s.unwrap_or(defaults.open_timeout_s),
                read_timeout_s: e.read_timeout_s.unwrap_or(defaults.read_timeout_s),
                crowd: match (e.crowd_people.or(self.crowd_people), e.crowd_seconds.unwrap_or(self.crowd_seconds)) {
                    (Some(people), seconds) => Some(Crowd { people, seconds }),
                    (None, _) => None,
                },
                rules: e.rules.unwrap_or_default(),
                ..defaults
            };
            camera.validate().map_err(|why| in_file(format!("line {line}: camera {:?}: {why}", camera.id)))?;
            if cameras.iter().any(|c| c.id == camera.id) {
                return Err(in_file(format!("line {line}: camera id {:?} is listed twice (ids key the messages and rows)", camera.id)));
            }
            cameras.push(camera);
        }
        Ok(cameras)
    }

    /// A camera with the flags' options.
    fn camera_with_flags(&self, id: &str, source: &str) -> Camera {
        Camera {
            id: id.to_string(),
            source: source.to_string(),
            looped: self.looped,
            realtime: self.realtime,
            max_fps: self.max_fps,
            open_timeout_s: self.open_timeout_s,
            read_timeout_s: self.read_timeout_s,
            crowd: self.crowd_people.map(|people| Crowd { people, seconds: self.crowd_seconds }),
            rules: analytics::RulesConfig::default(),
        }
    }

    pub fn intra_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_out_of_range_thresholds() {
        let mut c = Config::parse_from(["detector", "--source", "x.mp4"]);
        assert!(c.validate().is_ok());
        c.conf = 1.5;
        assert!(c.validate().unwrap_err().to_string().contains("--conf"));
    }

    #[test]
    fn settings_that_cannot_work_are_refused_with_one_line() {
        for (flags, needle) in [
            (&["--max-batch", "0"][..], "--max-batch must be within 1 and 64"),
            (&["--max-batch", "100000"], "--max-batch must be within 1 and 64"),
            (&["--threads", "5000"], "--threads must be 0 (one per core) to 256"),
            (&["--flush-timeout-s", "999999"], "--flush-timeout-s must be within 0 and 3600"),
            (&["--snapshot-every-s", "1e12"], "--snapshot-every-s"),
            (&["--read-timeout-s", "0"], "--read-timeout-s (read_timeout_s) must be within 1 and 3600"),
            (&["--open-timeout-s", "100000"], "--open-timeout-s (open_timeout_s) must be within 1 and 3600"),
            (&["--max-fps", "1e9"], "--max-fps (max_fps) must be 0 (no cap) to 1000"),
            (&["--track", "--track-buffer", "0"], "--track-buffer must be within 1 and 100000 frames"),
            (&["--track", "--track-buffer", "100001"], "--track-buffer must be within 1 and 100000 frames"),
            (&["--track", "--track-buffer-s=-0.5"], "--track-buffer-s must be within 0 and 3600"),
            (&["--track", "--track-buffer-s", "3600.5"], "--track-buffer-s must be within 0 and 3600"),
            (&["--track", "--track-buffer-s", "NaN"], "--track-buffer-s must be within 0 and 3600"),
        ] {
            let c = Config::parse_from(["detector", "--source", "x.mp4"].into_iter().chain(flags.iter().copied()));
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(needle) && !err.contains('\n'), "{flags:?}: {err}");
        }
    }

    #[test]
    fn track_flags() {
        let parse = |flags: &[&str]| Config::try_parse_from(["detector", "--source", "x.mp4"].iter().chain(flags));
        let c = parse(&[]).unwrap();
        assert_eq!((c.tracker(), c.decode_conf()), (None, 0.25), "untracked: decoded at --conf");
        let c = parse(&["--track"]).unwrap();
        assert_eq!(c.tracker(), Some(analytics::Config::default()), "bytetrack.yaml's");
        assert_eq!(c.decode_conf(), 0.1, "down to the tracker's low threshold");
        let c = parse(&["--track", "--conf", "0.05"]).unwrap();
        assert_eq!(c.decode_conf(), 0.05, "a lower --conf stays");
        let c = parse(&["--track", "--track-buffer-s", "2.5"]).unwrap();
        assert_eq!(c.tracker().unwrap().track_buffer, analytics::TrackBuffer::Seconds(2.5));
        let c = parse(&["--track", "--track-buffer", "1", "--track-buffer-s", "0"]).unwrap_err().to_string();
        assert!(c.contains("cannot be used with"), "{c}");
        assert!(parse(&["--track-buffer", "60"]).unwrap_err().to_string().contains("--track"), "the buffer needs --track");
        assert!(parse(&["--track", "--track-buffer", "1"]).unwrap().validate().is_ok());
        assert!(parse(&["--track", "--track-buffer-s", "3600"]).unwrap().validate().is_ok());
    }

    #[test]
    fn no_secret_in_debug() {
        let c = Config::parse_from([
            "detector",
            "--source",
            "rtsp://admin:hunter2@cam/1",
            "--schema-registry",
            "https://u:hunter3@reg/x",
            "-X",
            "sasl.password=hunter4",
        ]);
        let cameras = c.validate().unwrap();
        let shown = format!("{c:?} {cameras:?}");
        for secret in ["hunter2", "hunter3", "hunter4"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert_eq!(cameras[0].source, "rtsp://admin:hunter2@cam/1", "the source itself is intact");
    }

    #[test]
    fn max_fps_must_be_a_rate() {
        for bad in ["-1", "NaN", "inf"] {
            let c = Config::parse_from(["detector", "--source", "x.mp4", &format!("--max-fps={bad}")]);
            assert!(c.validate().unwrap_err().to_string().contains("--max-fps"), "{bad}");
        }
        let c = Config::parse_from(["detector", "--source", "rtsp://cam/1", "--max-fps", "2.5"]);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn loop_and_realtime_are_for_files() {
        let ok = Config::parse_from(["detector", "--source", "x.mp4", "--loop", "--realtime"]);
        assert!(ok.validate().is_ok());
        for (source, flag) in [("rtsp://cam/1", "--loop"), ("/dev/video0", "--realtime"), ("a.png", "--loop")] {
            let c = Config::parse_from(["detector", "--source", source, flag]);
            assert!(c.validate().unwrap_err().to_string().contains("video files only"), "{source} {flag}");
        }
    }

    /// Runs validate() on a cameras file with these contents and extra flags.
    fn cameras_from(toml: &str, flags: &[&str]) -> Result<Vec<Camera>, DetectorError> {
        let path = std::env::temp_dir().join(format!("cameras-{}-{}.toml", std::process::id(), rand::random::<u32>()));
        std::fs::write(&path, toml).unwrap();
        let mut args = vec!["detector", "--cameras", path.to_str().unwrap()];
        args.extend_from_slice(flags);
        let result = Config::parse_from(args).validate();
        std::fs::remove_file(&path).unwrap();
        result
    }

    #[test]
    fn a_cameras_file_takes_the_flags_as_defaults() {
        let cams = cameras_from(
            "[[camera]]\nid = \"door\"\nsource = \"rtsp://cam/door\"\n\n\
             [[camera]]\nid = \"yard\"\nsource = \"yard.mp4\"\nmax_fps = 2.5\nloop = true\nread_timeout_s = 3\ncrowd_people = 4\n",
            &["--max-fps", "5", "--read-timeout-s", "7", "--crowd-seconds", "20", "--metrics-addr", "127.0.0.1:9188"],
        )
        .unwrap();
        assert_eq!(cams.len(), 2);
        assert_eq!((cams[0].id.as_str(), cams[0].source.as_str()), ("door", "rtsp://cam/door"));
        assert_eq!((cams[0].max_fps, cams[0].read_timeout_s, cams[0].looped), (5.0, 7, false));
        assert_eq!((cams[1].max_fps, cams[1].read_timeout_s, cams[1].looped), (2.5, 3, true));
        assert_eq!((cams[0].crowd, cams[1].crowd), (None, Some(Crowd { people: 4, seconds: 20 })));
        assert_eq!(cams[1].open_timeout_s, 20);
    }

    #[test]
    fn a_bad_cameras_file_is_refused_with_the_reason() {
        let cases = [
            ("", "missing field `camera`"),
            ("camera = []", "lists no [[camera]]"),
            ("[[camera]]\nid = \"a\"\nsource = \"a.mp4\"\nfps = 3\n", "unknown field `fps`"),
            ("[[camera]]\nid = \"a\"\n", "missing field `source`"),
            (
                "[[camera]]\nid = \"a\"\nsource = \"a.mp4\"\n[[camera]]\nid = \"a\"\nsource = \"b.mp4\"\n",
                "line 4: camera id \"a\" is listed twice",
            ),
            ("[[camera]]\nid = \"a\"\nsource = \"rtsp://x/1\"\nloop = true\n", "line 1: camera \"a\": --loop and --realtime"),
            ("[[camera]]\nid = \"a\"\nsource = \"a.mp4\"\nmax_fps = -1.0\n", "camera \"a\": --max-fps (max_fps)"),
            ("[[camera]]\nid = \"\"\nsource = \"a.mp4\"\n", "camera \"\": the camera id"),
            ("[[camera]]\nid = \"a\"\nsource = \"rtsp://[::1\"\n", "camera \"a\": --source (source) rtsp://...: its host has a '['"),
            ("[[camera]]\nid = \"a\"\n\nsource = a.mp4\n", "line 4: "),
        ];
        for (toml, needle) in cases {
            let err = cameras_from(toml, &[]).unwrap_err().to_string();
            assert!(err.starts_with("invalid configuration: --cameras "), "{err}");
            assert!(err.contains(needle), "{toml:?}: expected {needle:?} in {err:?}");
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
        let missing = Config::parse_from(["detector", "--cameras", "/nonexistent/cams.toml"]).validate().unwrap_err();
        assert!(missing.to_string().contains("cannot read"), "{missing}");
    }

    const RULES: &str = "[[camera]]\nid = \"door\"\nsource = \"door.mp4\"\n\
        [camera.rules]\ntrack_end = { seconds = 4.0 }\n\
        [[camera.rules.zones]]\nname = \"queue\"\npolygon = [[0, 0], [100, 0], [100, 50]]\nalert = { crowd_people = 3, dwell_s = 60.0 }\n\
        [[camera.rules.lines]]\nname = \"entrance\"\nfrom = [0, 300]\nto = [400, 300]\nin_side = \"left\"\n";

    #[test]
    fn a_camera_has_zones_and_lines_under_its_rules() {
        let cams = cameras_from(RULES, &["--track"]).unwrap();
        let rules = &cams[0].rules;
        assert_eq!((rules.zones.len(), rules.lines.len()), (1, 1));
        assert_eq!(rules.track_end, analytics::Span::Seconds(4.0));
        assert_eq!(rules.zones[0].alert, analytics::ZoneAlert { crowd_people: Some(3), crowd_seconds: None, dwell_s: Some(60.0) });
        assert_eq!(rules.lines[0].in_side, analytics::Side::Left);
        let plain = cameras_from("[[camera]]\nid = \"a\"\nsource = \"a.mp4\"\n", &[]).unwrap();
        assert_eq!(plain[0].rules, analytics::RulesConfig::default(), "no rules");
    }

    #[test]
    fn bad_rules_are_refused_with_the_camera_and_the_rule() {
        let cases = [
            (RULES.to_string(), vec![], "camera door's zones and lines (rules) count tracks: they need --track"),
            (RULES.replace("[100, 50]", "[200, 0]"), vec!["--track"], "camera \"door\": rules: zone \"queue\": polygon"),
            (
                RULES.replace("to = [400, 300]", "to = [0, 300]"),
                vec!["--track"],
                "rules: line \"entrance\": from and to are the same point",
            ),
            (RULES.replace("\"entrance\"", "\"queue\""), vec!["--track"], "line \"queue\": the name is used by another zone or line"),
            (RULES.replace("in_side = \"left\"", "in_side = \"up\""), vec!["--track"], "unknown variant `up`"),
            (RULES.replace("dwell_s = 60.0", "dwell_s = 0.0"), vec!["--track"], "alert.dwell_s is 0"),
            (RULES.replace("crowd_people = 3", "crowd_seconds = 3"), vec!["--track"], "alert.crowd_seconds needs alert.crowd_people"),
            (RULES.replace("track_end", "track_ends"), vec!["--track"], "unknown field `track_ends`"),
        ];
        for (toml, flags, needle) in cases {
            let err = cameras_from(&toml, &flags).unwrap_err().to_string();
            assert!(err.contains(needle), "expected {needle:?} in {err:?}");
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
    }

    #[test]
    fn source_and_cameras_exclude_each_other() {
        assert!(Config::try_parse_from(["detector"]).is_err());
        assert!(Config::try_parse_from(["detector", "--source", "a.mp4", "--cameras", "c.toml"]).is_err());
    }
}
