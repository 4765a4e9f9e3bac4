//! People analytics from detections, pure and deterministic, so that the same code makes the
//! detector's live results and recounts stored ones: a ByteTrack tracker whose ids and boxes are
//! Ultralytics' ([`bytetrack`]), with its Kalman filter ([`kalman`]) and assignment ([`lapjv`]).

pub mod bytetrack;
pub mod kalman;
pub mod lapjv;

pub use bytetrack::{ByteTracker, Config, Detection, TrackBuffer, TrackedBox};
