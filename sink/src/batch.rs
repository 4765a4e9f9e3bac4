//! Gathers validated frames into a batch, written by size or age. A frame that comes twice into
//! one batch is kept once: the second delivery is a replay, or a conflict if its content differs
//! (the first stays whole either way). The offsets a batch stores are not the batch's: they are
//! `partition::Partitions`' claims, handed to [`Batch::split`] with it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::message::{FrameKey, Row};
use crate::offsets::Claim;
use crate::tables::same_content;

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
    /// Frames delivered again within this batch: not stored twice, never merged.
    pub echoes: Vec<Echo>,
    /// Where each key's frame is in `frames`.
    keys: HashMap<FrameKey, usize>,
    rows: usize,
    opened: Option<Instant>,
}

impl Batch {
    pub fn push(&mut self, row: Row) {
        self.open();
        match self.keys.get(&row.key()) {
            Some(&first) => {
                self.echoes.push(Echo { partition: row.partition, key: row.key(), same: same_content(&self.frames[first], &row) })
            }
            None => {
                self.keys.insert(row.key(), self.frames.len());
                self.rows += row.rows();
                self.frames.push(row);
            }
        }
    }

    /// Something is to be written (a row, or only an offset: a message that went to the
    /// dead-letter topic), from now if nothing was.
    pub fn open(&mut self) {
        self.opened.get_or_insert_with(Instant::now);
    }

    /// Rows to write: frames, detections and track observations.
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

    /// Forgets the rows and echoes of these partitions (given up, or to be read again).
    pub fn remove_partitions(&mut self, gone: &BTreeSet<i32>) {
        let before = self.frames.len();
        self.frames.retain(|r| !gone.contains(&r.partition));
        self.echoes.retain(|e| !gone.contains(&e.partition));
        if self.frames.len() != before {
            self.reindex();
        }
    }

    /// Takes these rows out (the database refused them); their offsets stay claimed.
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
        self.reindex();
        taken
    }

    fn reindex(&mut self) {
        self.keys = self.frames.iter().enumerate().map(|(i, r)| (r.key(), i)).collect();
        self.rows = self.frames.iter().map(Row::rows).sum();
    }

    /// Splits the batch into at most `n` parts that each hold whole partitions with their claims,
    /// balanced by rows, so that they can be written in parallel transactions: each stores only
    /// its own partitions' offsets, and no key is in two of them (a camera's frames share a
    /// partition). Every row's partition has a claim; a claim may have no rows (dead letters only).
    pub fn split(self, n: usize, claims: BTreeMap<i32, Claim>) -> Vec<(Batch, Vec<Claim>)> {
        let mut rows: BTreeMap<i32, usize> = claims.keys().map(|p| (*p, 0)).collect();
        for r in &self.frames {
            *rows.get_mut(&r.partition).expect("a row's partition is claimed") += r.rows();
        }
        let mut by_size: Vec<(i32, usize)> = rows.into_iter().collect();
        by_size.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        // Largest partition first, each into the lightest part so far.
        let parts_n = n.clamp(1, by_size.len().max(1));
        let mut parts: Vec<(Batch, Vec<Claim>)> =
            (0..parts_n).map(|_| (Batch { opened: self.opened, ..Batch::default() }, vec![])).collect();
        let mut part_of = BTreeMap::new();
        for (partition, rows) in by_size {
            let (i, (part, part_claims)) = parts.iter_mut().enumerate().min_by_key(|(_, (b, _))| b.rows).expect("at least one part");
            part.rows += rows;
            part_claims.push(claims[&partition]);
            part_of.insert(partition, i);
        }
        for row in self.frames {
            let part = &mut parts[part_of[&row.partition]].0;
            part.keys.insert(row.key(), part.frames.len());
            part.frames.push(row);
        }
        for echo in self.echoes {
            parts[part_of[&echo.partition]].0.echoes.push(echo);
        }
        parts
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::message::Consumed;
    use crate::offsets::Fence;
    use uuid::Uuid;

    /// A frame of camera "c" with `detections` people, read at (`partition`, `offset`).
    pub fn row(frame_seq: u64, detections: usize, partition: i32, offset: i64) -> Row {
        let d = wire::Detection {
            class: wire::PERSON_CLASS.into(),
            score: 0.5,
            bbox: wire::BBox { x1: 0.0, y1: 0.0, x2: 1.0, y2: 1.0 },
            keypoints: None,
        };
        let msg = wire::FrameMessage {
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
            tracker: None,
            epoch: None,
        };
        Row::new(msg, Consumed { partition, offset, key: None, payload: Some(b"{}".to_vec()) })
    }

    fn claims(next: &[(i32, i64)]) -> BTreeMap<i32, Claim> {
        next.iter().map(|&(partition, next)| (partition, Claim { partition, fence: Fence::Fresh, next })).collect()
    }

    #[test]
    fn counts_rows() {
        let mut b = Batch::default();
        assert!(b.age().is_none() && b.deadline(Duration::from_millis(5)).is_none());
        b.push(row(0, 3, 0, 10));
        b.push(row(1, 0, 1, 4));
        b.push(row(2, 2, 0, 12));
        assert_eq!((b.rows(), b.frames.len()), (8, 3));
        assert!(b.deadline(Duration::from_millis(5)).is_some());
        let mut dead_letters_only = Batch::default();
        dead_letters_only.open();
        assert!(dead_letters_only.age().is_some() && dead_letters_only.rows() == 0);
    }

    #[test]
    fn splits_by_whole_partitions_balanced_by_rows() {
        let mut b = Batch::default();
        for (seq, (partition, offset, persons)) in
            [(0, 0, 5), (1, 0, 1), (2, 0, 1), (0, 1, 5), (3, 7, 2), (1, 1, 1)].into_iter().enumerate()
        {
            b.push(row(seq as u64, persons, partition, offset));
        }
        // Partition 4 only had a dead letter: its offset is still stored.
        let claims = claims(&[(0, 2), (1, 2), (2, 1), (3, 8), (4, 10)]);
        let total = (b.rows(), b.frames.len());
        assert_eq!(Batch::default().split(2, BTreeMap::new()).len(), 1);
        let parts = b.split(2, claims);
        assert_eq!(parts.len(), 2);
        let partitions = |i: usize| parts[i].1.iter().map(|c| (c.partition, c.next)).collect::<Vec<_>>();
        // Partition 0 (12 rows) alone; 1, 2, 3 and 4 (4 + 2 + 3 + 0 rows) together.
        assert_eq!(partitions(0), [(0, 2)]);
        assert_eq!(partitions(1), [(1, 2), (3, 8), (2, 1), (4, 10)]);
        assert_eq!((parts[0].0.rows(), parts[1].0.rows()), (12, 9));
        assert!(parts.iter().all(|(b, c)| b.frames.iter().all(|r| c.iter().any(|c| c.partition == r.partition))));
        assert_eq!((parts.iter().map(|p| p.0.rows()).sum::<usize>(), parts.iter().map(|p| p.0.frames.len()).sum::<usize>()), total);
        assert!(parts.iter().all(|p| p.0.deadline(Duration::from_millis(5)).is_some()));
    }

    #[test]
    fn a_frame_twice_in_one_batch_is_kept_once() {
        let mut b = Batch::default();
        b.push(row(5, 2, 0, 1));
        b.push(row(5, 2, 0, 2)); // the same again: a replay
        let mut other = row(5, 3, 0, 3);
        other.msg.detections[0].score = 0.9;
        b.push(other); // the same key, other content: a conflict, not merged
        b.push(row(6, 1, 0, 4));
        assert_eq!((b.frames.len(), b.rows()), (2, 3 + 2));
        assert_eq!(b.echoes.iter().map(|e| (e.key.frame_seq, e.same)).collect::<Vec<_>>(), [(5, true), (5, false)]);
        assert_eq!(b.frames[0].msg.detections.len(), 2, "the first delivery stays whole");
        assert_eq!(b.split(2, claims(&[(0, 5)]))[0].0.echoes.len(), 2, "one partition, one part");
    }

    #[test]
    fn partitions_and_rows_can_be_taken_out() {
        let mut b = Batch::default();
        b.push(row(0, 2, 0, 5));
        b.push(row(1, 1, 1, 8));
        b.push(row(1, 1, 1, 9)); // an echo, in partition 1
        b.push(row(2, 3, 0, 6));
        b.remove_partitions(&BTreeSet::from([1]));
        assert_eq!((b.frames.len(), b.rows(), b.echoes.len()), (2, 3 + 4, 0));
        let refused = b.take_rows(&BTreeSet::from([0]));
        assert_eq!((refused.len(), refused[0].offset, b.frames.len(), b.rows()), (1, 5, 1, 4));
        // The key of a row taken out may come again as a new frame.
        b.push(row(0, 1, 0, 7));
        assert_eq!((b.frames.len(), b.echoes.len()), (2, 0));
    }
}
