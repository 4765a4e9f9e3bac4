//! Gathers validated frames into a batch, written by size or age, and tracks the next offset per
//! partition that the batch covers (dead-lettered messages included). A frame that comes twice
//! into one batch is kept once: the second delivery is a replay, or a conflict if its content
//! differs (the first stays whole either way).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::consume::Consumed;
use crate::tables::same_content;

/// A frame message with where it was read, and the bytes it came as (for the dead-letter topic,
/// should the database refuse its rows).
pub struct Row {
    pub msg: wire::FrameMessage,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// A frame's natural key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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

impl Row {
    pub fn key(&self) -> FrameKey {
        FrameKey { camera_id: self.msg.camera_id.clone(), run_id: self.msg.run_id, frame_seq: self.msg.frame_seq as i64 }
    }
}

/// A second delivery of a frame already in the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Echo {
    pub partition: i32,
    pub key: FrameKey,
    /// The same content as the first delivery (a replay), or not (a conflict).
    pub same: bool,
}

#[derive(Default)]
pub struct Batch {
    pub frames: Vec<Row>,
    /// Per partition: the offset after the last message this batch accounts for.
    pub next_offsets: BTreeMap<i32, i64>,
    /// Frames delivered again within this batch: not stored twice, never merged.
    pub echoes: Vec<Echo>,
    /// Where each key's frame is in `frames`.
    keys: HashMap<FrameKey, usize>,
    rows: usize,
    opened: Option<Instant>,
}

impl Batch {
    pub fn push(&mut self, msg: wire::FrameMessage, from: Consumed) {
        self.account(from.partition, from.offset);
        let row = Row { msg, partition: from.partition, offset: from.offset, key: from.key, payload: from.payload.unwrap_or_default() };
        match self.keys.get(&row.key()) {
            Some(&first) => {
                self.echoes.push(Echo { partition: row.partition, key: row.key(), same: same_content(&self.frames[first], &row) })
            }
            None => {
                self.keys.insert(row.key(), self.frames.len());
                self.rows += 1 + row.msg.detections.len();
                self.frames.push(row);
            }
        }
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

    /// How long since the batch's first message, if it has one.
    pub fn age(&self) -> Option<Duration> {
        self.opened.map(|t| t.elapsed())
    }

    /// When this batch must be written at the latest, if it holds anything.
    pub fn deadline(&self, max_age: Duration) -> Option<Instant> {
        self.opened.map(|t| t + max_age)
    }

    /// Forgets everything of these partitions (given up, or to be read again): their rows, echoes
    /// and offsets.
    pub fn remove_partitions(&mut self, gone: &BTreeSet<i32>) {
        if !self.next_offsets.keys().any(|p| gone.contains(p)) {
            return;
        }
        self.frames.retain(|r| !gone.contains(&r.partition));
        self.echoes.retain(|e| !gone.contains(&e.partition));
        self.next_offsets.retain(|p, _| !gone.contains(p));
        self.keys = self.frames.iter().enumerate().map(|(i, r)| (r.key(), i)).collect();
        self.rows = self.frames.iter().map(|r| 1 + r.msg.detections.len()).sum();
        if self.next_offsets.is_empty() {
            self.opened = None;
        }
    }

    /// Takes these rows out (the database refused them); their offsets stay accounted for.
    pub fn take_rows(&mut self, which: &BTreeSet<usize>) -> Vec<Row> {
        let mut taken = Vec::with_capacity(which.len());
        let mut kept = Vec::with_capacity(self.frames.len());
        for (i, row) in std::mem::take(&mut self.frames).into_iter().enumerate() {
            if which.contains(&i) {
                taken.push(row);
            } else {
                kept.push(row);
            }
        }
        self.frames = kept;
        self.keys = self.frames.iter().enumerate().map(|(i, r)| (r.key(), i)).collect();
        self.rows = self.frames.iter().map(|r| 1 + r.msg.detections.len()).sum();
        taken
    }

    /// Splits the batch into at most `n` batches that each hold whole partitions, balanced by rows,
    /// so that they can be written in parallel transactions: each stores only its own partitions'
    /// offsets, and no key is in two of them (a camera's frames share a partition).
    pub fn split(self, n: usize) -> Vec<Batch> {
        if n <= 1 || self.next_offsets.len() <= 1 {
            return vec![self];
        }
        let mut rows: BTreeMap<i32, usize> = self.next_offsets.keys().map(|p| (*p, 0)).collect();
        for r in &self.frames {
            *rows.entry(r.partition).or_default() += 1 + r.msg.detections.len();
        }
        let mut by_size: Vec<(i32, usize)> = rows.into_iter().collect();
        by_size.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        // Largest partition first, each into the lightest part so far.
        let mut parts: Vec<Batch> = (0..n.min(by_size.len())).map(|_| Batch { opened: self.opened, ..Batch::default() }).collect();
        let mut part_of = BTreeMap::new();
        for (partition, rows) in by_size {
            let (i, part) = parts.iter_mut().enumerate().min_by_key(|(_, b)| b.rows).expect("at least one part");
            part.rows += rows;
            part.next_offsets.insert(partition, self.next_offsets[&partition]);
            part_of.insert(partition, i);
        }
        for row in self.frames {
            parts[part_of[&row.partition]].frames.push(row);
        }
        for echo in self.echoes {
            parts[part_of[&echo.partition]].echoes.push(echo);
        }
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(partition: i32, offset: i64) -> Consumed {
        Consumed { partition, offset, key: None, payload: Some(b"{}".to_vec()) }
    }

    fn msg_at(frame_seq: u64, detections: usize) -> wire::FrameMessage {
        let d = wire::Detection {
            class: "person".into(),
            score: 0.5,
            bbox: wire::BBox { x1: 0.0, y1: 0.0, x2: 1.0, y2: 1.0 },
            keypoints: None,
        };
        wire::FrameMessage {
            schema_version: 1,
            camera_id: "c".into(),
            run_id: Uuid::from_u128(1),
            frame_seq,
            captured_at: chrono::Utc::now(),
            pts_ms: 0,
            frame_width: 2,
            frame_height: 2,
            model: wire::ModelInfo { name: "m".into(), sha256: "00000000".into(), keypoints: 0 },
            detections: vec![d; detections],
        }
    }

    #[test]
    fn counts_rows_and_next_offsets() {
        let mut b = Batch::default();
        assert!(b.age().is_none() && b.deadline(Duration::from_millis(5)).is_none());
        b.push(msg_at(0, 3), from(0, 10));
        b.push(msg_at(1, 0), from(1, 4));
        b.account(0, 11); // dead-lettered
        b.push(msg_at(2, 2), from(0, 12));
        assert_eq!((b.rows(), b.frames.len()), (8, 3));
        assert_eq!(b.next_offsets, BTreeMap::from([(0, 13), (1, 5)]));
        assert!(b.deadline(Duration::from_millis(5)).is_some());
    }

    #[test]
    fn splits_by_whole_partitions_balanced_by_rows() {
        let mut b = Batch::default();
        for (seq, (partition, offset, persons)) in
            [(0, 0, 5), (1, 0, 1), (2, 0, 1), (0, 1, 5), (3, 7, 2), (1, 1, 1)].into_iter().enumerate()
        {
            b.push(msg_at(seq as u64, persons), from(partition, offset));
        }
        b.account(4, 9); // a partition with only a dead letter still has its offset stored
        let total = (b.rows(), b.frames.len());
        assert_eq!(Batch::default().split(2).len(), 1);
        let parts = b.split(2);
        assert_eq!(parts.len(), 2);
        // Partition 0 (12 rows) alone; 1, 2, 3 and 4 (4 + 2 + 3 + 0 rows) together.
        assert_eq!(parts[0].next_offsets, BTreeMap::from([(0, 2)]));
        assert_eq!(parts[1].next_offsets, BTreeMap::from([(1, 2), (2, 1), (3, 8), (4, 10)]));
        assert_eq!((parts[0].rows(), parts[1].rows()), (12, 9));
        assert!(parts.iter().all(|p| p.frames.iter().all(|r| p.next_offsets.contains_key(&r.partition))));
        assert_eq!((parts.iter().map(Batch::rows).sum::<usize>(), parts.iter().map(|p| p.frames.len()).sum::<usize>()), total);
        assert!(parts.iter().all(|p| p.deadline(Duration::from_millis(5)).is_some()));
    }

    #[test]
    fn a_frame_twice_in_one_batch_is_kept_once() {
        let mut b = Batch::default();
        b.push(msg_at(5, 2), from(0, 1));
        b.push(msg_at(5, 2), from(0, 2)); // the same again: a replay
        let mut other = msg_at(5, 3);
        other.detections[0].score = 0.9;
        b.push(other, from(0, 3)); // the same key, other content: a conflict, not merged
        b.push(msg_at(6, 1), from(0, 4));
        assert_eq!((b.frames.len(), b.rows()), (2, 3 + 2));
        assert_eq!(b.echoes.iter().map(|e| (e.key.frame_seq, e.same)).collect::<Vec<_>>(), [(5, true), (5, false)]);
        assert_eq!(b.frames[0].msg.detections.len(), 2, "the first delivery stays whole");
        assert_eq!(b.next_offsets, BTreeMap::from([(0, 5)]), "every delivery is accounted for");
        assert_eq!(b.split(2)[0].echoes.len(), 2, "one partition, one part");
    }

    #[test]
    fn partitions_and_rows_can_be_taken_out() {
        let mut b = Batch::default();
        b.push(msg_at(0, 2), from(0, 5));
        b.push(msg_at(1, 1), from(1, 8));
        b.push(msg_at(1, 1), from(1, 9)); // an echo, in partition 1
        b.push(msg_at(2, 3), from(0, 6));
        b.remove_partitions(&BTreeSet::from([1]));
        assert_eq!((b.frames.len(), b.rows(), b.echoes.len()), (2, 3 + 4, 0));
        assert_eq!(b.next_offsets, BTreeMap::from([(0, 7)]));
        let refused = b.take_rows(&BTreeSet::from([0]));
        assert_eq!((refused.len(), refused[0].offset, b.frames.len(), b.rows()), (1, 5, 1, 4));
        assert_eq!(b.next_offsets, BTreeMap::from([(0, 7)]), "a refused row's offset stays accounted for");
        // The key of a row taken out may come again as a new frame.
        b.push(msg_at(0, 1), from(0, 7));
        assert_eq!((b.frames.len(), b.echoes.len()), (2, 0));
        b.remove_partitions(&BTreeSet::from([0]));
        assert!(b.next_offsets.is_empty() && b.age().is_none());
    }
}
