//! The data on the sink's path, as every stage sees it: a message as it was consumed, a validated
//! frame with where it came from, and a frame's natural key. A leaf: it imports no other module.

use std::fmt;

use uuid::Uuid;

/// One consumed message, owned, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// A frame message with where it was read, and the bytes it came as (for the dead-letter topic,
/// should the database refuse its rows).
pub struct Row {
    pub msg: wire::FrameMessage,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

impl Row {
    pub fn new(msg: wire::FrameMessage, from: Consumed) -> Self {
        Row { msg, partition: from.partition, offset: from.offset, key: from.key, payload: from.payload.unwrap_or_default() }
    }

    pub fn key(&self) -> FrameKey {
        FrameKey { camera_id: self.msg.camera_id.clone(), run_id: self.msg.run_id, frame_seq: self.msg.frame_seq as i64 }
    }

    /// The rows the frame is stored as: its own, its detections' and its tracks'.
    pub fn rows(&self) -> usize {
        1 + self.msg.detections.len() + self.msg.tracker.as_ref().map_or(0, |t| t.tracks.len())
    }

    /// People in the frame (`person_count`).
    pub fn people(&self) -> usize {
        self.msg.people()
    }
}

/// A frame's natural key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrameKey {
    pub camera_id: String,
    pub run_id: Uuid,
    pub frame_seq: i64,
}

impl fmt::Display for FrameKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({:?}, {}, {})", self.camera_id, self.run_id, self.frame_seq)
    }
}
