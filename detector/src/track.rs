//! `--track`: a camera's ByteTrack tracker (the `analytics` crate) on the frames the publish stage
//! sends, in order, empty ones too; its tracks ride in the frame's message (wire v3's `tracker`).
//!
//! The tracker is fed every detection decoded down to its low threshold (0.1, as `model.track`
//! lowers `conf` to), while the message keeps only those above `--conf`, exactly what `predict`
//! gives: a track matched to a detection at or below `--conf` is in the message with no
//! `detection`. See docs/tracking.md.
//!
//! The camera's zone and line rules (`analytics::Counter`) then count the tracks, as a recount of
//! the stored tracks does (the same observations: the tracker's box and the published
//! detection's keypoints); their events ride in the frame's message. See docs/analytics.md.

use uuid::Uuid;

use crate::capture::FrameMeta;
use crate::config::Camera;
use crate::identity;
use crate::source::SourceKind;
use crate::stats::ZoneStats;

pub struct Tracker {
    tracker: analytics::ByteTracker,
    session: Uuid,
    clock: wire::Clock,
    counter: analytics::Counter,
    zones: ZoneStats,
    /// Events and samples past a message's bound, for the next frame's message (a crowd on many
    /// zones at once; `wire::MAX_EVENTS`), under the rules' version.
    backlog: wire::RulesOutput,
}

impl Tracker {
    /// The tracker of `camera`, whose run is `run` (its rules were validated with the config).
    pub fn new(config: analytics::Config, camera: &Camera, run: Uuid) -> Self {
        let live = SourceKind::of(&camera.source) == SourceKind::Live;
        let session = identity::tracker_session(run, live);
        let rules = analytics::Rules::new(&camera.rules).expect("rules validated with the config");
        let version = rules.version();
        tracing::info!(camera = %camera.id, %session, rule_version = format!("{version:016x}"), zones = camera.rules.zones.len(), lines = camera.rules.lines.len(), "tracking");
        Tracker {
            tracker: analytics::ByteTracker::new(config),
            session,
            clock: wire::Clock::of_session(session),
            counter: analytics::Counter::new(rules),
            zones: ZoneStats::new(&camera.id, &camera.rules),
            backlog: wire::RulesOutput::empty(version),
        }
    }

    /// Tracks a frame's decoded detections and counts its tracks; returns the detections the
    /// message carries (score above `conf`, in their order) and the frame's tracker: its tracks,
    /// each naming its detection among those, and the rules' events.
    pub fn track(
        &mut self,
        decoded: Vec<wire::Detection>,
        conf: f32,
        meta: &FrameMeta,
        class_names: &[String],
    ) -> (Vec<wire::Detection>, wire::Tracker) {
        let fed: Vec<analytics::Detection> = decoded
            .iter()
            .map(|d| analytics::Detection {
                xyxy: [d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2],
                score: d.score,
                class: class_names.iter().position(|n| *n == d.class).unwrap_or_default() as u32,
            })
            .collect();
        let time = self.clock.time(meta.pts_ms, meta.captured_at);
        let tracked = self.tracker.update(&fed, time);
        let (published, tracks) = publishable(decoded, &tracked, conf);
        let seen: Vec<analytics::Observation> = tracks.iter().map(|t| observation(t, &published)).collect();
        // Frames come in order, each track once: the counter cannot refuse them.
        let output = self.counter.update(analytics::FrameTime { seq: meta.seq, time }, &seen).expect("frames in order");
        let version = self.backlog.version;
        let new = wire::RulesOutput::new(version, &output);
        self.zones.observe(&self.counter.presences(), &new.events);
        let mut rules = std::mem::replace(&mut self.backlog, wire::RulesOutput::empty(version));
        rules.append(new);
        self.backlog = rules.split_at_bound();
        (published, wire::Tracker { session: self.session, tracks, rules: Some(rules) })
    }

    /// Ends the session (the camera's last frame was tracked): what its rules report then, every
    /// open presence's exit and every track's end, after what still waits in the backlog, to ride
    /// in that last frame's message.
    pub fn finish(self) -> wire::RulesOutput {
        let ended = wire::RulesOutput::new(self.backlog.version, &self.counter.finish());
        self.zones.ended(&ended.events);
        let mut rules = self.backlog;
        rules.append(ended);
        rules
    }
}

/// What the rules see of a track: its box, and the keypoints of the published detection it
/// matched (none for a low-score track, as none are stored for it).
fn observation(t: &wire::Track, published: &[wire::Detection]) -> analytics::Observation {
    let keypoints = t.detection.and_then(|d| published[d].keypoints.as_deref());
    analytics::Observation::from_f32(t.id, [t.bbox.x1, t.bbox.y1, t.bbox.x2, t.bbox.y2], keypoints)
}

/// The detections above `conf` (what `predict` gives: its threshold is strict), and the tracks
/// with their detection's index among those (none for a detection left out).
fn publishable(decoded: Vec<wire::Detection>, tracked: &[analytics::TrackedBox], conf: f32) -> (Vec<wire::Detection>, Vec<wire::Track>) {
    let mut index = Vec::with_capacity(decoded.len());
    let mut published = Vec::with_capacity(decoded.len());
    for d in decoded {
        if d.score > conf {
            index.push(Some(published.len()));
            published.push(d);
        } else {
            index.push(None);
        }
    }
    let tracks = tracked
        .iter()
        .map(|t| {
            let [x1, y1, x2, y2] = t.xyxy;
            wire::Track { id: t.id, bbox: wire::BBox { x1, y1, x2, y2 }, score: t.score, detection: index[t.detection] }
        })
        .collect();
    (published, tracks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Decoder, Layout};
    use crate::infer::RawOutput;
    use crate::preprocess::{InputShape, Letterbox};

    fn det(score: f32, x: f32) -> wire::Detection {
        wire::Detection { class: "person".into(), score, bbox: wire::BBox { x1: x, y1: 0.0, x2: x + 10.0, y2: 20.0 }, keypoints: None }
    }

    fn tracked(id: u64, detection: usize, score: f32) -> analytics::TrackedBox {
        analytics::TrackedBox { id, detection, xyxy: [1.0, 2.0, 3.0, 4.0], score, class: 0 }
    }

    #[test]
    fn tracks_name_their_detection_among_those_published() {
        let decoded = vec![det(0.9, 0.0), det(0.2, 50.0), det(0.25, 100.0), det(0.5, 150.0)];
        let tracks = [tracked(3, 3, 0.5), tracked(1, 1, 0.2), tracked(2, 0, 0.9), tracked(7, 2, 0.25)];
        let (published, tracks) = publishable(decoded.clone(), &tracks, 0.25);
        // A score equal to --conf is not published, as predict keeps only scores above it.
        assert_eq!(published, vec![decoded[0].clone(), decoded[3].clone()]);
        let got: Vec<(u64, Option<usize>, f32)> = tracks.iter().map(|t| (t.id, t.detection, t.score)).collect();
        assert_eq!(got, vec![(3, Some(1), 0.5), (1, None, 0.2), (2, Some(0), 0.9), (7, None, 0.25)]);
        assert_eq!(tracks[0].bbox, wire::BBox { x1: 1.0, y1: 2.0, x2: 3.0, y2: 4.0 }, "the Kalman box");
    }

    /// Decoding at the tracker's low threshold and then keeping the scores above --conf gives
    /// exactly what decoding at --conf gives: NMS visits boxes best first, so a weaker box never
    /// suppresses a stronger one, and the order is kept.
    #[test]
    fn decoding_lower_then_keeping_above_conf_is_decoding_at_conf() {
        // Rows: cx, cy, w, h, objectness, person (YOLOv5: the score is their product).
        let rows: [[f32; 6]; 6] = [
            [100.0, 100.0, 20.0, 40.0, 1.0, 0.2],  // 0.2, overlaps the 0.9 box: suppressed either way
            [101.0, 100.0, 20.0, 40.0, 1.0, 0.9],  // 0.9
            [300.0, 100.0, 20.0, 40.0, 1.0, 0.25], // exactly --conf: predict does not keep it
            [400.0, 100.0, 20.0, 40.0, 1.0, 0.15], // only the tracker sees it
            [500.0, 100.0, 20.0, 40.0, 1.0, 0.6],  // 0.6
            [600.0, 100.0, 20.0, 40.0, 1.0, 0.3],  // 0.3
        ];
        let raw = RawOutput { shape: vec![1, 6, 6], data: rows.iter().flatten().copied().collect() };
        let decoder = |conf| Decoder::new(Layout::V5 { classes: 1 }, vec!["person".into()], &["person".into()], conf, 0.7).unwrap();
        let lb = Letterbox::new(640, 640, InputShape::Fixed { w: 640, h: 640 });
        let at_conf = decoder(0.25).decode(&raw, &lb).unwrap();
        let low = decoder(0.1).decode(&raw, &lb).unwrap();
        assert_eq!(low.len(), 5, "the tracker gets the weak boxes too");
        let (published, _) = publishable(low, &[], 0.25);
        assert_eq!(published, at_conf);
        assert_eq!(published.iter().map(|d| d.score).collect::<Vec<_>>(), vec![0.9, 0.6, 0.3]);
    }
}
