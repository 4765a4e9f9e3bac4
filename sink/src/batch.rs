//! Gathers validated frames into a batch, flushed by size or age, and tracks the next offset per
//! partition that the batch covers (dead-lettered messages included).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A frame message with where it was read.
pub struct Row {
    pub msg: wire::FrameMessage,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Default)]
pub struct Batch {
    pub frames: Vec<Row>,
    /// Per partition: the offset after the last message this batch accounts for.
    pub next_offsets: BTreeMap<i32, i64>,
    rows: usize,
    opened: Option<Instant>,
}

impl Batch {
    pub fn push(&mut self, msg: wire::FrameMessage, partition: i32, offset: i64) {
        self.rows += 1 + msg.detections.len();
        self.frames.push(Row { msg, partition, offset });
        self.account(partition, offset);
    }

    /// Accounts for a message that produces no row (it went to the dead-letter topic).
    pub fn account(&mut self, partition: i32, offset: i64) {
        self.opened.get_or_insert_with(Instant::now);
        let next = self.next_offsets.entry(partition).or_insert(offset + 1);
        *next = (*next).max(offset + 1);
    }

    /// Rows to write: frames plus detections.
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn detections(&self) -> usize {
        self.rows - self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.next_offsets.is_empty()
    }

    /// When this batch must be written at the latest, if it holds anything.
    pub fn deadline(&self, max_age: Duration) -> Option<Instant> {
        self.opened.map(|t| t + max_age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(detections: usize) -> wire::FrameMessage {
        let d = wire::Detection {
            class: "person".into(),
            score: 0.5,
            bbox: wire::BBox { x1: 0.0, y1: 0.0, x2: 1.0, y2: 1.0 },
            keypoints: None,
        };
        wire::FrameMessage {
            schema_version: 1,
            camera_id: "c".into(),
            frame_seq: 0,
            captured_at: chrono::Utc::now(),
            pts_ms: 0,
            frame_width: 2,
            frame_height: 2,
            model: wire::ModelInfo { name: "m".into(), sha256: "00000000".into() },
            detections: vec![d; detections],
        }
    }

    #[test]
    fn counts_rows_and_next_offsets() {
        let mut b = Batch::default();
        assert!(b.is_empty() && b.deadline(Duration::from_millis(5)).is_none());
        b.push(msg(3), 0, 10);
        b.push(msg(0), 1, 4);
        b.account(0, 11); // dead-lettered
        b.push(msg(2), 0, 12);
        assert_eq!((b.rows(), b.detections(), b.frames.len()), (8, 5, 3));
        assert_eq!(b.next_offsets, BTreeMap::from([(0, 13), (1, 5)]));
        assert!(b.deadline(Duration::from_millis(5)).is_some());
    }
}
