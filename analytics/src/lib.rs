//! People analytics from detections, pure and deterministic, so that the same code makes the
//! detector's live results and recounts stored ones: a ByteTrack tracker whose ids and boxes are
//! Ultralytics' ([`bytetrack`]), with its Kalman filter ([`kalman`]) and assignment ([`lapjv`]);
//! zone and line rules over its tracks ([`zones`], with their [`geometry`]).

pub mod bytetrack;
pub mod geometry;
pub mod kalman;
pub mod lapjv;
pub mod zones;

pub use bytetrack::{ByteTracker, Config, Detection, TrackBuffer, TrackedBox};
pub use zones::{
    Counter, Direction, Event, EventKey, EventKind, FrameTime, InputError, Keypoint, LineConfig, Observation, Occupancy, Output, RuleError,
    Rules, RulesConfig, Sample, Side, Span, ZoneAlert, ZoneConfig,
};
