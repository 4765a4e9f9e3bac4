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
}

/// A frame's tracks: a track is one person within its session, so a person is
/// `(camera_id, run_id, session, id)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracker {
    /// One start of the camera's tracker (its ids start at 1 again): not the nil UUID.
    pub session: Uuid,
    pub tracks: Vec<Track>,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTracker {
    session: String,
    tracks: Vec<Track>,
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
}

#[derive(Serialize)]
struct TrackerOut<'a> {
    session: String,
    tracks: &'a [Track],
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
            tracker: self.tracker.as_ref().map(|t| TrackerOut { session: t.session.hyphenated().to_string(), tracks: &t.tracks }),
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
        let tracker = self.tracker.map(|t| check_tracker(t, self.detections.len())).transpose()?;
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
        })
    }
}

/// A frame's tracks: a valid session, at most [`MAX_DETECTIONS`] tracks (one per detection fed
/// to the tracker, and the detector keeps that many), each with its own id and its own detection.
fn check_tracker(t: RawTracker, detections: usize) -> Result<Tracker, WireError> {
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
    Ok(Tracker { session, tracks: t.tracks })
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
