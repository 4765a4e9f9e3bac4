//! The Kafka message contract between the detector and the sink: wire schema v1.
//!
//! One message per decoded frame, frames without people included, so that "nobody there" differs
//! from "no data". The message key is the camera id. The JSON Schema of this type is
//! `wire/schema/frame-v1.schema.json`; the test at the bottom keeps the two in step.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub const SCHEMA_VERSION: u32 = 1;

/// The JSON Schema of [`FrameMessage`], shipped with the crate so both services see the same file.
pub const JSON_SCHEMA: &str = include_str!("../schema/frame-v1.schema.json");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameMessage {
    pub schema_version: u32,
    pub camera_id: String,
    /// 0-based decode order of the frame within its camera's stream.
    pub frame_seq: u64,
    /// When the frame was captured (UTC, RFC 3339 with milliseconds).
    #[serde(with = "rfc3339_ms")]
    pub captured_at: DateTime<Utc>,
    /// The frame's presentation time in its stream, in milliseconds.
    pub pts_ms: i64,
    pub frame_width: u32,
    pub frame_height: u32,
    pub model: ModelInfo,
    pub detections: Vec<Detection>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub name: String,
    /// A hex prefix of the model file's sha256, so rows say exactly which weights made them.
    pub sha256: String,
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

/// Longest `camera_id` and `model.name`, in characters (JSON Schema's `maxLength`).
pub const MAX_LABEL_CHARS: usize = 128;

/// Whether a text can be a `camera_id`, `model.name` or class: not empty, not too long, and no
/// control characters (NUL above all would make PostgreSQL refuse the whole batch).
pub fn is_label(s: &str, max_chars: usize) -> bool {
    !s.is_empty() && s.chars().count() <= max_chars && !s.chars().any(char::is_control)
}

/// Why a payload is not a valid v1 message. The text goes into dead-letter headers and logs.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("not a v1 frame message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported schema_version {0} (this build knows {SCHEMA_VERSION})")]
    Version(u64),
    #[error("invalid field {field}: {reason}")]
    Field { field: String, reason: String },
}

impl FrameMessage {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a FrameMessage always serializes")
    }

    /// Parses and checks a payload. A message of another version is reported as such rather than
    /// as a pile of field errors; that second look is taken only when parsing fails.
    pub fn from_json(payload: &[u8]) -> Result<Self, WireError> {
        let msg: FrameMessage = match serde_json::from_slice(payload) {
            Ok(m) => m,
            Err(e) => {
                #[derive(Deserialize)]
                struct Versioned {
                    schema_version: Option<serde_json::Value>,
                }
                let version = serde_json::from_slice::<Versioned>(payload).ok().and_then(|v| v.schema_version);
                return Err(match version.as_ref().and_then(|v| v.as_u64()) {
                    Some(v) if v != u64::from(SCHEMA_VERSION) => WireError::Version(v),
                    _ => WireError::Json(e),
                });
            }
        };
        if msg.schema_version != SCHEMA_VERSION {
            return Err(WireError::Version(msg.schema_version.into()));
        }
        msg.check()?;
        Ok(msg)
    }

    /// Checks what serde's types cannot: ranges and geometry.
    fn check(&self) -> Result<(), WireError> {
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
        for (i, d) in self.detections.iter().enumerate() {
            let at = |name: &str| format!("detections[{i}].{name}");
            if !is_label(&d.class, usize::MAX) {
                return Err(field(&at("class"), "must be non-empty, without control characters"));
            }
            if !(0.0..=1.0).contains(&d.score) {
                return Err(field(&at("score"), "must be within 0 and 1"));
            }
            let b = d.bbox;
            if ![b.x1, b.y1, b.x2, b.y2].iter().all(|v| v.is_finite()) || b.x2 < b.x1 || b.y2 < b.y1 {
                return Err(field(&at("bbox"), "must be finite with x1 <= x2 and y1 <= y2"));
            }
            if let Some(kps) = &d.keypoints {
                if kps.iter().flatten().any(|v| !v.is_finite()) {
                    return Err(field(&at("keypoints"), "must be finite"));
                }
            }
        }
        Ok(())
    }
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
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| serde::de::Error::custom(format!("captured_at: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FrameMessage {
        FrameMessage {
            schema_version: 1,
            camera_id: "cam-1".into(),
            frame_seq: 7,
            captured_at: DateTime::parse_from_rfc3339("2026-11-22T10:00:00.123Z").unwrap().into(),
            pts_ms: 700,
            frame_width: 768,
            frame_height: 576,
            model: ModelInfo { name: "yolo11n-pose".into(), sha256: "062cd5417709".into() },
            detections: vec![Detection {
                class: "person".into(),
                score: 0.9,
                bbox: BBox { x1: 1.0, y1: 2.0, x2: 30.0, y2: 80.0 },
                keypoints: Some(vec![[5.0, 6.0, 0.5]; 17]),
            }],
        }
    }

    #[test]
    fn round_trips_and_writes_milliseconds() {
        let m = sample();
        let json = m.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains("\"captured_at\":\"2026-11-22T10:00:00.123Z\""), "{text}");
        assert_eq!(FrameMessage::from_json(&json).unwrap(), m);
    }

    #[test]
    fn rejects_other_versions_and_bad_fields() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        v["schema_version"] = 2.into();
        let err = FrameMessage::from_json(v.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, WireError::Version(2)), "{err}");

        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        v["detections"][0]["bbox"]["x2"] = (-5.0).into();
        let err = FrameMessage::from_json(v.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("detections[0].bbox"), "{err}");

        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        v.as_object_mut().unwrap().remove("camera_id");
        assert!(matches!(FrameMessage::from_json(v.to_string().as_bytes()), Err(WireError::Json(_))));

        assert!(matches!(FrameMessage::from_json(b"not json"), Err(WireError::Json(_))));

        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        v["camera_id"] = "cam\u{0}1".into();
        let err = FrameMessage::from_json(v.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("camera_id"), "{err}");

        // What the schema allows and PostgreSQL's columns hold, and no more.
        for (path, bad, named) in [
            ("/frame_seq", serde_json::json!(u64::MAX), "frame_seq"),
            ("/frame_width", serde_json::json!(3_000_000_000u64), "frame_width"),
            ("/model/name", serde_json::json!("m\u{0}"), "model.name"),
            ("/model/name", serde_json::json!(""), "model.name"),
            ("/model/sha256", serde_json::json!("XYZ"), "model.sha256"),
            ("/model/sha256", serde_json::json!("062CD541"), "model.sha256"),
        ] {
            let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
            *v.pointer_mut(path).unwrap() = bad;
            let err = FrameMessage::from_json(v.to_string().as_bytes()).unwrap_err();
            assert!(err.to_string().contains(named), "{path}: {err}");
        }
    }

    /// The schema file names exactly the fields the Rust type writes, and requires the ones that
    /// are always present.
    #[test]
    fn json_schema_matches_the_type() {
        let schema: serde_json::Value = serde_json::from_str(JSON_SCHEMA).unwrap();
        let msg: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys(&schema["properties"]), keys(&msg));
        let mut required: Vec<String> =
            schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
        required.sort();
        assert_eq!(required, keys(&msg));
        let det_schema = &schema["$defs"]["detection"];
        assert_eq!(keys(&det_schema["properties"]), keys(&msg["detections"][0]));
        assert_eq!(schema["properties"]["schema_version"]["const"], SCHEMA_VERSION);
    }
}
