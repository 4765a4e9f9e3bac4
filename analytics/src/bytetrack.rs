//! ByteTrack (Zhang et al., "ByteTrack: Multi-Object Tracking by Associating Every Detection Box",
//! ECCV 2022; the authors' code, MIT), with the behaviour of Ultralytics 8.4.190's tracker, which
//! was observed as a black box (docs/tracking.md says how; none of its source is used):
//!
//! 1. Detections with a score of at least `track_high_thresh` are matched to the confirmed tracks
//!    and the lost ones (predicted a frame ahead by their Kalman filters) on `1 - IoU * score`, at
//!    most `match_thresh`.
//! 2. Tracked tracks left over are matched to the detections scoring above `track_low_thresh` but
//!    below `track_high_thresh` on `1 - IoU`, at most 0.5; those still unmatched are lost.
//! 3. Unconfirmed tracks (born on the frame before) are matched to the high detections left, on
//!    the fused cost, at most 0.7; those unmatched are removed, their ids used up.
//! 4. High detections left with a score of at least `new_track_thresh` start tracks: confirmed at
//!    once on the tracker's first frame, else unconfirmed until they match on the next frame.
//! 5. Lost tracks unseen for more than the buffer are removed, but stay in the lost list, and so
//!    can be matched, for one frame more; a lost track whose id is among the newest 1000 removals
//!    is dropped; a lost track that overlaps a tracked one (IoU above 0.85) is dropped, or the
//!    tracked one if it is the younger.
//!
//! Every assignment is `lap.lapjv` with its padding ([`crate::lapjv`]). Costs are f32 as numpy
//! computes them from float32 boxes (a cost can round to just above the threshold), and the Kalman
//! filter is f64. The order of the track lists is kept as the reference keeps it, since it breaks
//! ties between equal costs.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::kalman::Kalman;
use crate::lapjv;

/// Matching threshold of the second stage (low-score detections).
const SECOND_STAGE_THRESH: f64 = 0.5;
/// Matching threshold of unconfirmed tracks.
const UNCONFIRMED_THRESH: f64 = 0.7;
/// A lost track and a tracked one closer than this (1 - IoU) are one person.
const DUPLICATE_THRESH: f32 = 0.15;
/// How many removals the removed list remembers.
const REMOVED_MEMORY: usize = 1000;
/// Added to a union so that two empty boxes have IoU 0.
const IOU_EPS: f32 = 1e-7;

/// One detection of a frame, in source pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    pub xyxy: [f32; 4],
    pub score: f32,
    pub class: u32,
}

/// A confirmed track matched on this frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackedBox {
    /// 1, 2, ... in the order tracks were started; an unconfirmed track that failed used one up.
    pub id: u64,
    /// The index of the matched detection in the frame's detections.
    pub detection: usize,
    /// The Kalman filter's box after the update with this frame's detection.
    pub xyxy: [f32; 4],
    /// The matched detection's score and class.
    pub score: f32,
    pub class: u32,
}

/// How long a lost track is kept before it is removed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TrackBuffer {
    /// Frames the tracker was given (Ultralytics' `track_buffer`, whatever the frame rate).
    Frames(u32),
    /// Seconds of the frames' own times: for live cameras, where frames the real-time policy
    /// drops, or a `--max-fps` cap, would otherwise stretch or shrink the wait.
    Seconds(f64),
}

/// The tracker's settings; `Default` is Ultralytics 8.4.190's `bytetrack.yaml`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    pub track_high_thresh: f32,
    pub track_low_thresh: f32,
    pub new_track_thresh: f32,
    pub track_buffer: TrackBuffer,
    pub match_thresh: f64,
    pub fuse_score: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            track_high_thresh: 0.25,
            track_low_thresh: 0.1,
            new_track_thresh: 0.25,
            track_buffer: TrackBuffer::Frames(30),
            match_thresh: 0.8,
            fuse_score: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Tracked,
    Lost,
    Removed,
}

/// A detection as the tracker sees it: its box through float32 (cx, cy, w, h) and top-left
/// (x, y, w, h), as the reference converts it.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    index: usize,
    tlwh: [f32; 4],
    score: f32,
    class: u32,
}

impl Candidate {
    fn new(index: usize, d: &Detection) -> Self {
        let [x1, y1, x2, y2] = d.xyxy;
        let (cx, cy, w, h) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0, x2 - x1, y2 - y1);
        Candidate { index, tlwh: [cx - w / 2.0, cy - h / 2.0, w, h], score: d.score, class: d.class }
    }

    /// A box without area (or NaN) is no detection to the tracker.
    fn has_area(&self) -> bool {
        self.tlwh[2] > 0.0 && self.tlwh[3] > 0.0
    }

    fn xyah(&self) -> [f64; 4] {
        let [x, y, w, h] = self.tlwh;
        [(x + w / 2.0) as f64, (y + h / 2.0) as f64, (w / h) as f64, h as f64]
    }

    fn xyxy(&self) -> [f32; 4] {
        let [x, y, w, h] = self.tlwh;
        [x, y, x + w, y + h]
    }
}

#[derive(Debug, Clone)]
struct Track {
    id: u64,
    kalman: Kalman,
    state: State,
    confirmed: bool,
    score: f32,
    class: u32,
    detection: usize,
    /// The tracker's frame count and the frame's time when the track was last matched.
    frame: u64,
    time: f64,
    start_frame: u64,
}

impl Track {
    fn xyxy(&self) -> [f64; 4] {
        let [cx, cy, a, h] = self.kalman.xyah();
        let w = a * h;
        let (x, y) = (cx - w / 2.0, cy - h / 2.0);
        [x, y, x + w, y + h]
    }

    fn xyxy_f32(&self) -> [f32; 4] {
        self.xyxy().map(|v| v as f32)
    }

    fn matched(&mut self, c: &Candidate, frame: u64, time: f64) {
        self.kalman.update(c.xyah());
        self.state = State::Tracked;
        self.confirmed = true;
        self.score = c.score;
        self.class = c.class;
        self.detection = c.index;
        self.frame = frame;
        self.time = time;
    }
}

/// One camera's tracker: feed it every processed frame in order, empty ones too.
#[derive(Debug, Clone)]
pub struct ByteTracker {
    config: Config,
    frame: u64,
    next_id: u64,
    tracks: BTreeMap<u64, Track>,
    /// Ids in the reference's list orders.
    tracked: Vec<u64>,
    lost: Vec<u64>,
    /// The newest removals (an id may be there twice), and how often each id is there.
    removed: VecDeque<u64>,
    removed_count: HashMap<u64, usize>,
}

impl ByteTracker {
    pub fn new(config: Config) -> Self {
        ByteTracker {
            config,
            frame: 0,
            next_id: 1,
            tracks: BTreeMap::new(),
            tracked: Vec::new(),
            lost: Vec::new(),
            removed: VecDeque::new(),
            removed_count: HashMap::new(),
        }
    }

    /// Tracks a frame's detections; `time` is the frame's time in seconds (read only with
    /// [`TrackBuffer::Seconds`]). Returns the confirmed tracks matched on this frame, each on
    /// its own detection.
    pub fn update(&mut self, detections: &[Detection], time: f64) -> Vec<TrackedBox> {
        self.frame += 1;
        let frame = self.frame;
        let cfg = self.config;
        let (mut high, mut low) = (Vec::new(), Vec::new());
        for c in detections.iter().enumerate().map(|(i, d)| Candidate::new(i, d)).filter(Candidate::has_area) {
            if c.score >= cfg.track_high_thresh {
                high.push(c);
            } else if c.score > cfg.track_low_thresh {
                low.push(c);
            }
        }
        let (unconfirmed, confirmed): (Vec<u64>, Vec<u64>) = self.tracked.iter().copied().partition(|id| !self.tracks[id].confirmed);
        let pool = joint(&confirmed, &self.lost);
        for id in &pool {
            let t = self.tracks.get_mut(id).expect("pooled tracks exist");
            if t.state != State::Tracked {
                t.kalman.mean[7] = 0.0;
            }
            t.kalman.predict();
        }

        let (mut activated, mut refound, mut lost, mut removed) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // 1. High detections against confirmed and lost tracks.
        let a = self.assign(&pool, &high, cfg.fuse_score, cfg.match_thresh);
        for (r, c) in a.row_to_col.iter().enumerate().filter_map(|(r, c)| c.map(|c| (r, c))) {
            let t = self.tracks.get_mut(&pool[r]).expect("pooled tracks exist");
            let was_tracked = t.state == State::Tracked;
            t.matched(&high[c], frame, time);
            if was_tracked {
                activated.push(t.id);
            } else {
                refound.push(t.id);
            }
        }
        // 2. Low detections against the tracked tracks left.
        let left: Vec<u64> = a
            .row_to_col
            .iter()
            .enumerate()
            .filter(|(r, c)| c.is_none() && self.tracks[&pool[*r]].state == State::Tracked)
            .map(|(r, _)| pool[r])
            .collect();
        let a2 = self.assign(&left, &low, false, SECOND_STAGE_THRESH);
        for (r, c) in a2.row_to_col.iter().enumerate() {
            let t = self.tracks.get_mut(&left[r]).expect("pooled tracks exist");
            match c {
                Some(c) => {
                    t.matched(&low[*c], frame, time);
                    activated.push(t.id);
                }
                None => {
                    t.state = State::Lost;
                    lost.push(t.id);
                }
            }
        }
        // 3. Unconfirmed tracks against the high detections left.
        let rest: Vec<Candidate> = a.col_to_row.iter().zip(&high).filter(|(r, _)| r.is_none()).map(|(_, c)| *c).collect();
        let a3 = self.assign(&unconfirmed, &rest, cfg.fuse_score, UNCONFIRMED_THRESH);
        for (r, c) in a3.row_to_col.iter().enumerate() {
            let t = self.tracks.get_mut(&unconfirmed[r]).expect("unconfirmed tracks exist");
            match c {
                Some(c) => {
                    t.matched(&rest[*c], frame, time);
                    activated.push(t.id);
                }
                None => {
                    t.state = State::Removed;
                    removed.push(t.id);
                }
            }
        }
        // 4. New tracks.
        for c in a3.col_to_row.iter().zip(&rest).filter(|(r, _)| r.is_none()).map(|(_, c)| c) {
            if c.score < cfg.new_track_thresh {
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            let track = Track {
                id,
                kalman: Kalman::new(c.xyah()),
                state: State::Tracked,
                confirmed: frame == 1,
                score: c.score,
                class: c.class,
                detection: c.index,
                frame,
                time,
                start_frame: frame,
            };
            self.tracks.insert(id, track);
            activated.push(id);
        }
        // 5. Lost too long: removed (they stay in the lost list until the next frame).
        for id in &self.lost {
            let t = self.tracks.get_mut(id).expect("lost tracks exist");
            let too_long = match cfg.track_buffer {
                TrackBuffer::Frames(n) => frame - t.frame > n as u64,
                TrackBuffer::Seconds(s) => time - t.time > s,
            };
            if too_long {
                t.state = State::Removed;
                removed.push(*id);
            }
        }

        let still: Vec<u64> = self.tracked.iter().copied().filter(|id| self.tracks[id].state == State::Tracked).collect();
        let tracked = joint(&joint(&still, &activated), &refound);
        let mut lost_now: Vec<u64> = self.lost.iter().copied().filter(|id| !tracked.contains(id)).collect();
        lost_now.extend(lost);
        lost_now.retain(|id| !self.removed_count.contains_key(id));
        for id in removed {
            self.removed.push_back(id);
            *self.removed_count.entry(id).or_default() += 1;
        }
        while self.removed.len() > REMOVED_MEMORY {
            let id = self.removed.pop_front().expect("longer than the memory");
            match self.removed_count.get_mut(&id) {
                Some(n) if *n > 1 => *n -= 1,
                _ => {
                    self.removed_count.remove(&id);
                }
            }
        }
        let (tracked, lost) = self.without_duplicates(tracked, lost_now);
        self.tracked = tracked;
        self.lost = lost;
        let live: HashSet<u64> = self.tracked.iter().chain(&self.lost).copied().collect();
        self.tracks.retain(|id, _| live.contains(id));

        self.tracked
            .iter()
            .map(|id| &self.tracks[id])
            .filter(|t| t.confirmed)
            .map(|t| TrackedBox { id: t.id, detection: t.detection, xyxy: t.xyxy_f32(), score: t.score, class: t.class })
            .collect()
    }

    /// Matches `tracks` (rows) to `candidates` (columns) on 1 - IoU, fused with the score when
    /// `fuse`, at most `thresh`.
    fn assign(&self, tracks: &[u64], candidates: &[Candidate], fuse: bool, thresh: f64) -> lapjv::Assignment {
        let mut cost = Vec::with_capacity(tracks.len() * candidates.len());
        for id in tracks {
            let b = self.tracks[id].xyxy_f32();
            for c in candidates {
                let mut d = 1.0 - iou(b, c.xyxy());
                if fuse {
                    d = 1.0 - (1.0 - d) * c.score;
                }
                cost.push(d as f64);
            }
        }
        lapjv::assign(&cost, tracks.len(), candidates.len(), thresh)
    }

    /// Drops one of each tracked and lost pair on one person (1 - IoU below 0.15): the one tracked
    /// for fewer frames, the tracked one on a tie.
    fn without_duplicates(&self, tracked: Vec<u64>, lost: Vec<u64>) -> (Vec<u64>, Vec<u64>) {
        let (mut drop_tracked, mut drop_lost) = (vec![false; tracked.len()], vec![false; lost.len()]);
        for (p, a) in tracked.iter().enumerate() {
            let a = &self.tracks[a];
            for (q, b) in lost.iter().enumerate() {
                let b = &self.tracks[b];
                if 1.0 - iou(a.xyxy_f32(), b.xyxy_f32()) < DUPLICATE_THRESH {
                    if a.frame - a.start_frame > b.frame - b.start_frame {
                        drop_lost[q] = true;
                    } else {
                        drop_tracked[p] = true;
                    }
                }
            }
        }
        let keep = |ids: Vec<u64>, drop: Vec<bool>| ids.into_iter().zip(drop).filter(|(_, d)| !d).map(|(id, _)| id).collect();
        (keep(tracked, drop_tracked), keep(lost, drop_lost))
    }
}

/// `a` then the ids of `b` not in `a`.
fn joint(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = a.to_vec();
    out.extend(b.iter().filter(|id| !a.contains(id)));
    out
}

/// IoU in f32, as numpy computes it for float32 boxes.
fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: [f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    inter / (area(a) + area(b) - inter + IOU_EPS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(x: f32) -> Detection {
        Detection { xyxy: [x, 100.0, x + 64.0, 228.0], score: 0.9, class: 0 }
    }

    fn ids(tracks: &[TrackedBox]) -> Vec<u64> {
        tracks.iter().map(|t| t.id).collect()
    }

    /// Seen at `seen`, missing at `gaps`, then seen twice more: the ids shown on those two frames.
    fn lost_and_found(buffer: TrackBuffer, seen: &[f64], gaps: &[f64], again: [f64; 2]) -> Vec<Vec<u64>> {
        let mut t = ByteTracker::new(Config { track_buffer: buffer, ..Config::default() });
        for &s in seen {
            assert_eq!(ids(&t.update(&[person(100.0)], s)), [1]);
        }
        for &g in gaps {
            assert!(t.update(&[], g).is_empty());
        }
        again.iter().map(|&s| ids(&t.update(&[person(100.0)], s))).collect()
    }

    #[test]
    fn a_buffer_in_seconds_keeps_a_lost_track_for_that_long_however_many_frames_come() {
        // 100 frames a second: 50 frames (0.5 s) without the person.
        let gaps: Vec<f64> = (2..52).map(|f| f as f64 / 100.0).collect();
        assert_eq!(lost_and_found(TrackBuffer::Seconds(1.0), &[0.0, 0.01], &gaps, [0.52, 0.53]), [[1], [1]]);
        // In frames the same wait is too long: a new track, shown from its second frame.
        assert_eq!(lost_and_found(TrackBuffer::Frames(30), &[0.0, 0.01], &gaps, [0.52, 0.53]), [vec![], vec![2]]);
    }

    #[test]
    fn a_buffer_in_seconds_removes_a_lost_track_after_that_long_however_few_frames_come() {
        // Two frames in 1.1 s without the person (a camera whose frames are dropped): kept for
        // 1.0 s exactly, removed after it; still found on the frame after its removal, as in
        // frames, and gone on the next.
        let found = lost_and_found(TrackBuffer::Seconds(1.0), &[0.0, 0.5], &[1.0, 1.5], [1.6, 1.7]);
        assert_eq!(found, [[1], [1]]);
        let found = lost_and_found(TrackBuffer::Seconds(1.0), &[0.0, 0.5], &[1.0, 1.51], [1.6, 1.7]);
        assert_eq!(found, [[1], [1]]);
        let found = lost_and_found(TrackBuffer::Seconds(1.0), &[0.0, 0.5], &[1.0, 1.51, 1.55], [1.6, 1.7]);
        assert_eq!(found, [vec![], vec![2]]);
        // Frames count the frames only: three are nothing to a 30-frame buffer.
        let found = lost_and_found(TrackBuffer::Frames(30), &[0.0, 0.5], &[1.0, 1.51, 1.55], [1.6, 1.7]);
        assert_eq!(found, [[1], [1]]);
    }

    #[test]
    fn each_tracker_numbers_its_own_tracks_from_1() {
        let mut a = ByteTracker::new(Config::default());
        let mut b = ByteTracker::new(Config::default());
        assert_eq!(ids(&a.update(&[person(100.0), person(400.0)], 0.0)), [1, 2]);
        assert_eq!(ids(&b.update(&[person(400.0)], 0.0)), [1]);
        // The index of each track's detection, past a box without height.
        let flat = Detection { xyxy: [0.0, 10.0, 50.0, 10.0], score: 0.9, class: 0 };
        let tracks = a.update(&[flat, person(400.0), person(100.0)], 0.1);
        assert_eq!(tracks.iter().map(|t| (t.id, t.detection)).collect::<Vec<_>>(), [(1, 2), (2, 1)]);
    }
}
