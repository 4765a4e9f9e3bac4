//! The Kafka message contract between the detector and the sink: wire schema v3 (v1 and v2 are
//! still read).
//!
//! One message per decoded frame, frames without people included, so that "nobody there" differs
//! from "no data". The message key is the camera id; a frame's natural key is
//! `(camera_id, run_id, frame_seq)`. The JSON Schema of the v3 message is
//! `wire/schema/frame-v3.schema.json`, which v2's messages satisfy too (v2:
//! `frame-v2.schema.json`, v1: `frame-v1.schema.json`); the tests at the bottom keep
//! the file and [`FrameMessage::from_json`] in step, bound by bound. A message may travel as plain
//! JSON or framed for a schema registry ([`envelope`]).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

pub mod envelope;

/// The version this build writes.
pub const SCHEMA_VERSION: u32 = 3;

/// The JSON Schema of [`FrameMessage`] as this build writes it (v3), registered by the detector.
pub const JSON_SCHEMA: &str = include_str!("../schema/frame-v3.schema.json");

/// The run of every v1 message and of the rows stored before runs existed: v1 carries no run id.
pub const V1_RUN_ID: Uuid = Uuid::nil();

/// Longest `camera_id`, `model.name` and class name, in characters (JSON Schema's `maxLength`).
pub const MAX_LABEL_CHARS: usize = 128;
/// Most detections in one message: Ultralytics' `max_det`, and what the detector keeps.
pub const MAX_DETECTIONS: usize = 300;
/// Most keypoints per detection: COCO-WholeBody's 133, the largest layout in common use.
pub const MAX_KEYPOINTS: usize = 133;
/// The class whose detections are people (COCO's, and every YOLO pose model's, class 0): what
/// the detector's people in view and the store's `person_count` count.
pub const PERSON_CLASS: &str = "person";

#[derive(Debug, Clone, PartialEq)]
pub struct FrameMessage {
    /// The version the message was written in (1, 2 or 3).
    pub schema_version: u32,
    pub camera_id: String,
    /// One run of one camera's source in one detector process; [`V1_RUN_ID`] for v1 messages.
    pub run_id: Uuid,
    /// 0-based decode order of the frame within its run.
    pub frame_seq: u64,
    /// When the frame was captured (UTC, RFC 3339 with milliseconds).
    pub captured_at: DateTime<Utc>,
    /// The frame's presentation time in its stream, in milliseconds.
    pub pts_ms: i64,
    pub frame_width: u32,
    pub frame_height: u32,
    pub model: ModelInfo,
    pub detections: Vec<Detection>,
    /// The camera's tracker on this frame (v3, with the detector's `--track`); `None`: not tracked.
    pub tracker: Option<Tracker>,
    /// The camera's lease when a fleet runs it (v3, `detector --fleet`): grows with every change
    /// of the camera's host, so a frame of an older epoch than one stored is a stale host's.
    pub epoch: Option<u64>,
}

/// Most events and occupancy samples in one message: far above what a frame reports (a track
/// ends once; a zone's occupancy goes out once a second), far below what a hostile one could hold.
pub const MAX_EVENTS: usize = 3000;

/// A frame's tracks: a track is one person within its session, so a person is
/// `(camera_id, run_id, session, id)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracker {
    /// One start of the camera's tracker (its ids start at 1 again): not the nil UUID.
    pub session: Uuid,
    pub tracks: Vec<Track>,
    /// What the camera's zone and line rules reported on this frame; `None`: no rules ran.
    pub rules: Option<RulesOutput>,
}

/// Which clock times a session's frames, for the tracker and the rules: a file's frames by their
/// pts (the same at any decoding speed), a live camera's by their capture time (a reopened stream
/// starts its pts again). The session says which: a live camera's is a UUIDv7 made at its start,
/// a file's a UUIDv8 derived from its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    Pts,
    Capture,
}

impl Clock {
    pub fn of_session(session: Uuid) -> Clock {
        if session.get_version_num() == 7 {
            Clock::Capture
        } else {
            Clock::Pts
        }
    }

    /// A frame's time in seconds on this clock.
    pub fn time(self, pts_ms: i64, captured_at: DateTime<Utc>) -> f64 {
        match self {
            Clock::Pts => pts_ms as f64 / 1000.0,
            // Milliseconds, as the wire and so the store carry it: live and recounted agree.
            Clock::Capture => captured_at.timestamp_millis() as f64 / 1000.0,
        }
    }
}

/// The capture time of the moment `time` (on the session's clock) of a message captured at
/// `captured_at`, whose frame is at `frame_time`: exact on a live camera's clock, the file's own
/// spacing of frames on a file's.
pub fn captured_at_of(time: f64, frame_time: f64, captured_at: DateTime<Utc>) -> DateTime<Utc> {
    captured_at + chrono::Duration::microseconds(((time - frame_time) * 1e6).round() as i64)
}

/// The rules' output on one frame: the events reported at it (dated at the frames that explain
/// them, at or before this one) and the zones' occupancy of the seconds that ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RulesOutput {
    /// The rule version the events are stored under (`analytics::Rules::version`); 16 hex digits
    /// on the wire.
    pub version: u64,
    pub events: Vec<Event>,
    pub occupancy: Vec<Occupancy>,
}

/// One event of the rules, with what explains it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub kind: analytics::EventKind,
    pub track: u64,
    /// The zone or line; empty (absent) for track start and end.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rule: String,
    /// The frame the event is dated at.
    pub frame: u64,
    /// That frame's time on the session's clock, seconds.
    pub time: f64,
    /// A zone exit's enter frame; a crossing's last frame on the old side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_frame: Option<u64>,
    /// A zone enter's or a crossing's frame at which it counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_frame: Option<u64>,
    /// A zone exit's time inside, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dwell_s: Option<f64>,
    /// A crossing's anchor points: the last on the old side, the first on the new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<[f64; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<[f64; 2]>,
}

impl From<&analytics::Event> for Event {
    fn from(e: &analytics::Event) -> Self {
        let key = e.key();
        let mut out = Event {
            kind: key.kind,
            track: key.track,
            rule: key.rule.to_string(),
            frame: key.frame,
            time: e.time(),
            from_frame: None,
            confirmed_frame: None,
            dwell_s: None,
            before: None,
            after: None,
        };
        match e {
            analytics::Event::TrackStart { .. } | analytics::Event::TrackEnd { .. } => {}
            analytics::Event::ZoneEnter { confirmed, .. } => out.confirmed_frame = Some(confirmed.seq),
            analytics::Event::ZoneExit { entered, dwell, .. } => (out.from_frame, out.dwell_s) = (Some(entered.seq), Some(*dwell)),
            analytics::Event::LineCross { before, after, confirmed, .. } => {
                out.from_frame = Some(before.at.seq);
                out.confirmed_frame = Some(confirmed.seq);
                out.before = Some([before.point.x, before.point.y]);
                out.after = Some([after.point.x, after.point.y]);
            }
        }
        out
    }
}

/// A zone's most tracks inside at any frame of one second (`floor` of the session clock's time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Occupancy {
    pub zone: String,
    pub second: i64,
    pub count: u32,
}

impl RulesOutput {
    pub fn new(version: u64, output: &analytics::Output) -> Self {
        RulesOutput {
            version,
            events: output.events.iter().map(Event::from).collect(),
            occupancy: output.occupancy.iter().map(|o| Occupancy { zone: o.zone.clone(), second: o.second, count: o.count }).collect(),
        }
    }

    /// Nothing to report, under `version`.
    pub fn empty(version: u64) -> Self {
        RulesOutput { version, events: Vec::new(), occupancy: Vec::new() }
    }

    pub fn len(&self) -> usize {
        self.events.len() + self.occupancy.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Puts `later`'s events and samples after this output's.
    pub fn append(&mut self, later: RulesOutput) {
        self.events.extend(later.events);
        self.occupancy.extend(later.occupancy);
    }

    /// Splits off what is past one message's bound ([`MAX_EVENTS`] events and samples together),
    /// keeping the earliest events, then samples. What is split off can ride in a later message of
    /// the session: an event names its own frame, a sample its own second.
    pub fn split_at_bound(&mut self) -> RulesOutput {
        let events = self.events.len().min(MAX_EVENTS);
        let samples = self.occupancy.len().min(MAX_EVENTS - events);
        RulesOutput { version: self.version, events: self.events.split_off(events), occupancy: self.occupancy.split_off(samples) }
    }
}

/// A confirmed track matched on this frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Track {
    /// 1, 2, ... within the session; unique in a frame.
    pub id: u64,
    /// The Kalman filter's box after this frame's update, in source-frame pixels.
    pub bbox: BBox,
    /// The matched detection's score.
    pub score: f32,
    /// The matched detection's index in the frame's detections; `None` when it scored at most the
    /// detector's `--conf`, and so is no detection of the message (absent or null on the wire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub name: String,
    /// A hex prefix of the model file's sha256, so rows say exactly which weights made them.
    pub sha256: String,
    /// Keypoints per detection; 0 for a model without keypoints. (v1 messages do not say: it is
    /// taken from their detections.)
    #[serde(default)]
    pub keypoints: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detection {
    pub class: String,
    pub score: f32,
    /// Corners in source-frame pixels.
    pub bbox: BBox,
    /// `[x, y, score]` per keypoint in source-frame pixels, for models that have keypoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keypoints: Option<Vec<[f32; 3]>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

/// Whether a text can be a `camera_id`, `model.name` or class: not empty, not too long, and no
/// control characters (NUL above all would make PostgreSQL refuse the whole batch).
pub fn is_label(s: &str, max_chars: usize) -> bool {
    !s.is_empty() && s.chars().count() <= max_chars && !s.chars().any(char::is_control)
}

/// Why a payload is not a valid frame message. The text goes into dead-letter headers and logs.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("not a frame message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported schema_version {0} (this build reads 1, 2 and 3)")]
    Version(u64),
    #[error("invalid field {field}: {reason}")]
    Field { field: String, reason: String },
    #[error("invalid envelope: {0}")]
    Envelope(String),
}

/// The message as it is on the wire, v1, v2 or v3: the later versions' fields are optional here,
/// and which must (or may) be there is decided by the version.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    schema_version: u32,
    camera_id: String,
    #[serde(default)]
    run_id: Option<String>,
    frame_seq: u64,
    #[serde(with = "rfc3339_ms")]
    captured_at: DateTime<Utc>,
    pts_ms: i64,
    frame_width: u32,
    frame_height: u32,
    model: RawModel,
    detections: Vec<Detection>,
    #[serde(default)]
    tracker: Option<RawTracker>,
    #[serde(default)]
    epoch: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTracker {
    session: String,
    tracks: Vec<Track>,
    #[serde(default)]
    rules: Option<RawRules>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    version: String,
    events: Vec<Event>,
    occupancy: Vec<Occupancy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: String,
    sha256: String,
    #[serde(default)]
    keypoints: Option<u32>,
}

/// What the detector writes: v3 (`tracker` left out when the frame was not tracked).
#[derive(Serialize)]
struct V3<'a> {
    schema_version: u32,
    camera_id: &'a str,
    run_id: String,
    frame_seq: u64,
    #[serde(with = "rfc3339_ms")]
    captured_at: DateTime<Utc>,
    pts_ms: i64,
    frame_width: u32,
    frame_height: u32,
    model: &'a ModelInfo,
    detections: &'a [Detection],
    #[serde(skip_serializing_if = "Option::is_none")]
    tracker: Option<TrackerOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<u64>,
}

#[derive(Serialize)]
struct TrackerOut<'a> {
    session: String,
    tracks: &'a [Track],
    #[serde(skip_serializing_if = "Option::is_none")]
    rules: Option<RulesOut<'a>>,
}

#[derive(Serialize)]
struct RulesOut<'a> {
    version: String,
    events: &'a [Event],
    occupancy: &'a [Occupancy],
}

impl FrameMessage {
    /// People in the frame: its detections of [`PERSON_CLASS`].
    pub fn people(&self) -> usize {
        self.detections.iter().filter(|d| d.class == PERSON_CLASS).count()
    }

    /// The message as JSON, in wire schema v3.
    pub fn to_json(&self) -> Vec<u8> {
        let v3 = V3 {
            schema_version: SCHEMA_VERSION,
            camera_id: &self.camera_id,
            run_id: self.run_id.hyphenated().to_string(),
            frame_seq: self.frame_seq,
            captured_at: self.captured_at,
            pts_ms: self.pts_ms,
            frame_width: self.frame_width,
            frame_height: self.frame_height,
            model: &self.model,
            detections: &self.detections,
            tracker: self.tracker.as_ref().map(|t| TrackerOut {
                session: t.session.hyphenated().to_string(),
                tracks: &t.tracks,
                rules: t.rules.as_ref().map(|r| RulesOut {
                    version: format!("{:016x}", r.version),
                    events: &r.events,
                    occupancy: &r.occupancy,
                }),
            }),
            epoch: self.epoch,
        };
        serde_json::to_vec(&v3).expect("a FrameMessage always serializes")
    }

    /// Parses and checks a v1, v2 or v3 payload. A message of another version is reported as such
    /// rather than as a pile of field errors; that second look is taken only when parsing fails.
    pub fn from_json(payload: &[u8]) -> Result<Self, WireError> {
        match serde_json::from_slice::<Raw>(payload) {
            Ok(raw) => raw.check(),
            Err(e) => Err(version_error(serde_json::from_slice::<Versioned>(payload).ok()).unwrap_or(WireError::Json(e))),
        }
    }

    /// As [`from_json`](Self::from_json), for a payload already parsed (to be checked against a
    /// registry's schema first).
    pub fn from_value(value: serde_json::Value) -> Result<Self, WireError> {
        let version = Versioned::deserialize(&value).ok();
        match serde_json::from_value::<Raw>(value) {
            Ok(raw) => raw.check(),
            Err(e) => Err(version_error(version).unwrap_or(WireError::Json(e))),
        }
    }
}

#[derive(Deserialize)]
struct Versioned {
    schema_version: Option<serde_json::Value>,
}

fn version_error(v: Option<Versioned>) -> Option<WireError> {
    match v?.schema_version?.as_u64() {
        Some(n) if !(1..=3).contains(&n) => Some(WireError::Version(n)),
        _ => None,
    }
}

impl Raw {
    /// Checks what serde's types cannot: the version's required fields, ranges and geometry.
    fn check(self) -> Result<FrameMessage, WireError> {
        let run_id = match (self.schema_version, &self.run_id, self.model.keypoints) {
            (1, None, None) => V1_RUN_ID,
            (1, _, _) => return Err(field("run_id/model.keypoints", "are not part of schema_version 1")),
            (2 | 3, Some(id), Some(_)) => parse_run_id(id, "run_id")?,
            (v @ (2 | 3), _, _) => return Err(field("run_id/model.keypoints", &format!("are required in schema_version {v}"))),
            (v, _, _) => return Err(WireError::Version(v.into())),
        };
        if self.schema_version < 3 && self.tracker.is_some() {
            return Err(field("tracker", &format!("is not part of schema_version {}", self.schema_version)));
        }
        if self.schema_version < 3 && self.epoch.is_some() {
            return Err(field("epoch", &format!("is not part of schema_version {}", self.schema_version)));
        }
        if self.epoch.is_some_and(|e| e > i64::MAX as u64) {
            return Err(field("epoch", "must be at most 2^63 - 1"));
        }
        if !is_label(&self.camera_id, MAX_LABEL_CHARS) {
            return Err(field("camera_id", "must be 1 to 128 characters, none of them control characters"));
        }
        // The columns are PostgreSQL bigint and integer.
        if self.frame_seq > i64::MAX as u64 {
            return Err(field("frame_seq", "must be at most 2^63 - 1"));
        }
        if !(1..=i32::MAX as u32).contains(&self.frame_width) || !(1..=i32::MAX as u32).contains(&self.frame_height) {
            return Err(field("frame_width/frame_height", "must be within 1 and 2^31 - 1"));
        }
        if !is_label(&self.model.name, MAX_LABEL_CHARS) {
            return Err(field("model.name", "must be 1 to 128 characters, none of them control characters"));
        }
        let sha = &self.model.sha256;
        if !(8..=64).contains(&sha.len()) || !sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(field("model.sha256", "must be 8 to 64 lowercase hex digits"));
        }
        if self.detections.len() > MAX_DETECTIONS {
            return Err(field("detections", &format!("must be at most {MAX_DETECTIONS}, got {}", self.detections.len())));
        }
        // v2 says how many keypoints its model has; v1 takes it from its first detection.
        let keypoints = match self.model.keypoints {
            Some(k) => k as usize,
            None => self.detections.first().and_then(|d| d.keypoints.as_ref()).map_or(0, Vec::len),
        };
        if keypoints > MAX_KEYPOINTS {
            return Err(field("model.keypoints", &format!("must be at most {MAX_KEYPOINTS}, got {keypoints}")));
        }
        for (i, d) in self.detections.iter().enumerate() {
            let at = |name: &str| format!("detections[{i}].{name}");
            if !is_label(&d.class, MAX_LABEL_CHARS) {
                return Err(field(&at("class"), "must be 1 to 128 characters, none of them control characters"));
            }
            if !(0.0..=1.0).contains(&d.score) {
                return Err(field(&at("score"), "must be within 0 and 1"));
            }
            let b = d.bbox;
            if ![b.x1, b.y1, b.x2, b.y2].iter().all(|v| v.is_finite()) || b.x2 < b.x1 || b.y2 < b.y1 {
                return Err(field(&at("bbox"), "must be finite with x1 <= x2 and y1 <= y2"));
            }
            let count = d.keypoints.as_ref().map_or(0, Vec::len);
            if count != keypoints || d.keypoints.as_ref().is_some_and(Vec::is_empty) {
                return Err(field(&at("keypoints"), &format!("must be {keypoints} keypoints (the model's), got {count}")));
            }
            if d.keypoints.iter().flatten().flatten().any(|v| !v.is_finite()) {
                return Err(field(&at("keypoints"), "must be finite"));
            }
        }
        let tracker = self.tracker.map(|t| check_tracker(t, self.detections.len(), self.frame_seq)).transpose()?;
        Ok(FrameMessage {
            schema_version: self.schema_version,
            camera_id: self.camera_id,
            run_id,
            frame_seq: self.frame_seq,
            captured_at: self.captured_at,
            pts_ms: self.pts_ms,
            frame_width: self.frame_width,
            frame_height: self.frame_height,
            model: ModelInfo { name: self.model.name, sha256: self.model.sha256, keypoints: keypoints as u32 },
            detections: self.detections,
            tracker,
            epoch: self.epoch,
        })
    }
}

/// A frame's tracks: a valid session, at most [`MAX_DETECTIONS`] tracks (one per detection fed
/// to the tracker, and the detector keeps that many), each with its own id and its own detection.
fn check_tracker(t: RawTracker, detections: usize, frame_seq: u64) -> Result<Tracker, WireError> {
    let session = parse_run_id(&t.session, "tracker.session")?;
    if t.tracks.len() > MAX_DETECTIONS {
        return Err(field("tracker.tracks", &format!("must be at most {MAX_DETECTIONS}, got {}", t.tracks.len())));
    }
    let (mut ids, mut named) = (std::collections::HashSet::new(), vec![false; detections]);
    for (i, track) in t.tracks.iter().enumerate() {
        let at = |name: &str| format!("tracker.tracks[{i}].{name}");
        if !(1..=i64::MAX as u64).contains(&track.id) {
            return Err(field(&at("id"), "must be within 1 and 2^63 - 1"));
        }
        if !ids.insert(track.id) {
            return Err(field(&at("id"), &format!("{} is another track's of this frame", track.id)));
        }
        if !(0.0..=1.0).contains(&track.score) {
            return Err(field(&at("score"), "must be within 0 and 1"));
        }
        let b = track.bbox;
        if ![b.x1, b.y1, b.x2, b.y2].iter().all(|v| v.is_finite()) || b.x2 < b.x1 || b.y2 < b.y1 {
            return Err(field(&at("bbox"), "must be finite with x1 <= x2 and y1 <= y2"));
        }
        if let Some(d) = track.detection {
            match named.get_mut(d) {
                None => return Err(field(&at("detection"), &format!("must index this message's {detections} detections, got {d}"))),
                Some(true) => return Err(field(&at("detection"), &format!("detection {d} is another track's"))),
                Some(seen) => *seen = true,
            }
        }
    }
    let rules = t.rules.map(|r| check_rules(r, frame_seq)).transpose()?;
    Ok(Tracker { session, tracks: t.tracks, rules })
}

/// The rules' output: a version of 16 hex digits, at most [`MAX_EVENTS`] events and samples, each
/// event of its kind's shape, dated at or before its frame (the detector reports an event once
/// the frames after it have confirmed it, never before), with names the store's keys can hold.
fn check_rules(r: RawRules, frame_seq: u64) -> Result<RulesOutput, WireError> {
    use analytics::EventKind::*;
    let version = (r.version.len() == 16 && r.version.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| u64::from_str_radix(&r.version, 16).ok())
        .flatten()
        .ok_or_else(|| field("tracker.rules.version", "must be 16 lowercase hex digits"))?;
    if r.events.len() + r.occupancy.len() > MAX_EVENTS {
        return Err(field("tracker.rules", &format!("must hold at most {MAX_EVENTS} events and occupancy samples")));
    }
    for (i, e) in r.events.iter().enumerate() {
        let at = |name: &str| format!("tracker.rules.events[{i}].{name}");
        if !(1..=i64::MAX as u64).contains(&e.track) {
            return Err(field(&at("track"), "must be within 1 and 2^63 - 1"));
        }
        if e.frame > frame_seq {
            return Err(field(&at("frame"), &format!("{} is after the message's frame {frame_seq}", e.frame)));
        }
        let has_rule = !matches!(e.kind, TrackStart | TrackEnd);
        if has_rule != is_label(&e.rule, MAX_LABEL_CHARS) {
            let why = if has_rule {
                "must name the zone or line: 1 to 128 characters, none of them control characters"
            } else {
                "must be absent for a track event"
            };
            return Err(field(&at("rule"), why));
        }
        let shape = (
            e.from_frame.is_some(),
            e.confirmed_frame.is_some(),
            e.dwell_s.is_some(),
            e.before.is_some() && e.after.is_some(),
            e.before.is_some() || e.after.is_some(),
        );
        let expected = match e.kind {
            TrackStart | TrackEnd => (false, false, false, false, false),
            ZoneEnter => (false, true, false, false, false),
            ZoneExit => (true, false, true, false, false),
            LineIn | LineOut => (true, true, false, true, true),
        };
        if shape != expected {
            return Err(field(&at("kind"), &format!("a {} event carries other fields", e.kind.as_str())));
        }
        let frames_ok = e.from_frame.is_none_or(|f| f <= e.frame) && e.confirmed_frame.is_none_or(|f| f >= e.frame && f <= frame_seq);
        if !frames_ok {
            return Err(field(&at("frame"), "from_frame must be at or before frame, confirmed_frame from frame to the message's"));
        }
        let numbers = [Some(e.time), e.dwell_s].into_iter().flatten().chain(e.before.into_iter().chain(e.after).flatten());
        if numbers.into_iter().any(|v| !v.is_finite()) || e.dwell_s.is_some_and(|d| d < 0.0) {
            return Err(field(&at("time"), "times, dwell and points must be finite, dwell >= 0"));
        }
    }
    for (i, o) in r.occupancy.iter().enumerate() {
        if !is_label(&o.zone, MAX_LABEL_CHARS) {
            return Err(field(
                &format!("tracker.rules.occupancy[{i}].zone"),
                "must be 1 to 128 characters, none of them control characters",
            ));
        }
        if o.count > i32::MAX as u32 {
            return Err(field(&format!("tracker.rules.occupancy[{i}].count"), "must be at most 2^31 - 1"));
        }
    }
    Ok(RulesOutput { version, events: r.events, occupancy: r.occupancy })
}

/// A UUID as the schema writes it: lowercase, hyphenated, not the nil UUID (that is v1's run).
fn parse_run_id(s: &str, name: &str) -> Result<Uuid, WireError> {
    let bad = || field(name, "must be a lowercase hyphenated UUID other than the nil UUID");
    let id = Uuid::try_parse(s).map_err(|_| bad())?;
    if id.is_nil() || id.hyphenated().to_string() != s {
        return Err(bad());
    }
    Ok(id)
}

fn field(name: &str, reason: &str) -> WireError {
    WireError::Field { field: name.to_string(), reason: reason.to_string() }
}

mod rfc3339_ms {
    use super::*;

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s).map(|t| t.with_timezone(&Utc)).map_err(|e| serde::de::Error::custom(format!("captured_at: {e}")))
    }
}

#[cfg(test)]
mod tests;
