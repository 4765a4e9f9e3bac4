//! Zone and line rules over a tracker's output: events (track start and end, zone enter and exit
//! with dwell, line crossings with direction) and occupancy per zone and second. docs/analytics.md
//! states the rules; in short:
//!
//! - The point that counts (the anchor) is the midpoint of the ankles (COCO keypoints 15 and 16)
//!   when both score above `ankle_score`, else the bottom centre of the box.
//! - Only what is observed counts: the input is the tracker's confirmed tracks, one
//!   [`Observation`] per track and frame, as the store keeps them, so a recount of stored tracks
//!   gives the live events. Counts of "frames" are observations of the track; spans
//!   ([`Span`]) are differences of frame seq numbers or of frame times.
//! - A zone is entered after `enter_frames` observations inside in a row (the enter event is dated
//!   at the first of them) and left once the track is not seen inside for more than `exit_grace`
//!   (the exit is dated at the last frame seen inside; dwell is the time between the two).
//! - A line counts a crossing when the anchor, settled on one side, holds the other side for
//!   `hold_frames` observations in a row, the path from the last point on the old side to the
//!   first on the new one meets the segment, and the track's last crossing of that line is more
//!   than `cooldown` ago (else the crossing waits for the cooldown while the side holds). Points
//!   within `dead_band_px` of the line are on neither side.
//!
//! Events are dated at the frames that explain them, which can be before the frame whose update
//! reports them; their content does not depend on when they are reported.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::geometry::{Point, Polygon, Segment};

/// Changes whenever a change of this module changes the events of the same rules and tracks, so
/// that it changes the rule version too.
const ENGINE_VERSION: u32 = 1;

/// COCO keypoint indices of the left and right ankles.
const LEFT_ANKLE: usize = 15;
const RIGHT_ANKLE: usize = 16;

/// A length of time, in frames or seconds (of frame times). Frames are those given to the
/// [`Counter`], i.e. the frames the tracker processed, as ByteTrack's buffer counts them: not seq
/// numbers, which also count the frames `--max-fps` skipped or a live camera dropped.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Span {
    Frames(u32),
    Seconds(f64),
}

impl Span {
    /// Whether `to` is more than this span after `from`.
    fn exceeded(self, from: At, to: At) -> bool {
        match self {
            Span::Frames(n) => to.given - from.given > u64::from(n),
            Span::Seconds(s) => to.frame.time - from.frame.time > s,
        }
    }

    fn check(self, min_frames: u32, allow_zero_seconds: bool) -> Result<(), String> {
        match self {
            Span::Frames(n) if n < min_frames => Err(format!("{n} frames, needs at least {min_frames}")),
            Span::Seconds(s) if !s.is_finite() || s < 0.0 || (s == 0.0 && !allow_zero_seconds) => {
                Err(format!("{s} seconds, needs a finite number {}", if allow_zero_seconds { ">= 0" } else { "> 0" }))
            }
            _ => Ok(()),
        }
    }
}

/// Which side of a line, facing from its first point to its second on screen (y down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Left,
    Right,
}

/// A camera's rules, as written in the cameras file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// Both ankle keypoints must score above this for their midpoint to be the anchor.
    #[serde(default = "default_ankle_score")]
    pub ankle_score: f64,
    /// A track not seen for longer than this has ended. At least the tracker's buffer plus two
    /// frames (ByteTrack can match a lost track on the frame after it removed it).
    #[serde(default = "default_track_end")]
    pub track_end: Span,
    #[serde(default)]
    pub zones: Vec<ZoneConfig>,
    #[serde(default)]
    pub lines: Vec<LineConfig>,
}

/// A named polygon in source pixels, its points in order (the ring is closed implicitly).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    pub name: String,
    pub polygon: Vec<[f64; 2]>,
    #[serde(default = "default_enter_frames")]
    pub enter_frames: u32,
    #[serde(default = "default_exit_grace")]
    pub exit_grace: Span,
    /// Alert thresholds on the zone's metrics: not rules (no event depends on them), so not part
    /// of the rule version.
    #[serde(default)]
    pub alert: ZoneAlert,
}

/// When a zone's metrics should alert (the detector exports these as gauges beside the zone's
/// occupancy, and Prometheus' rules compare; docs/monitoring.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneAlert {
    /// Crowded: more than this many tracks inside ...
    pub crowd_people: Option<u32>,
    /// ... for this many seconds without a break (0 when left out).
    pub crowd_seconds: Option<u64>,
    /// Someone inside for longer than this many seconds.
    pub dwell_s: Option<f64>,
}

/// A named directed segment in source pixels; `in_side` is the side a track enters to cross in.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineConfig {
    pub name: String,
    pub from: [f64; 2],
    pub to: [f64; 2],
    pub in_side: Side,
    #[serde(default = "default_hold_frames")]
    pub hold_frames: u32,
    #[serde(default = "default_dead_band_px")]
    pub dead_band_px: f64,
    #[serde(default = "default_cooldown")]
    pub cooldown: Span,
}

fn default_ankle_score() -> f64 {
    0.5
}
fn default_track_end() -> Span {
    Span::Frames(32)
}
fn default_enter_frames() -> u32 {
    3
}
fn default_exit_grace() -> Span {
    Span::Frames(10)
}
fn default_hold_frames() -> u32 {
    3
}
fn default_dead_band_px() -> f64 {
    5.0
}
fn default_cooldown() -> Span {
    Span::Frames(10)
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig { ankle_score: default_ankle_score(), track_end: default_track_end(), zones: Vec::new(), lines: Vec::new() }
    }
}

/// A rule that cannot be built, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleError {
    /// `zone "NAME"`, `line "NAME"`, or the setting's name for those of the whole set.
    pub rule: String,
    pub problem: String,
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.rule, self.problem)
    }
}

impl std::error::Error for RuleError {}

fn point([x, y]: [f64; 2]) -> Point {
    Point::new(x, y)
}

impl RulesConfig {
    /// Checks every rule (the cameras file can be checked before anything runs).
    pub fn validate(&self) -> Result<(), RuleError> {
        self.build().map(|_| ())
    }

    fn build(&self) -> Result<(Vec<Zone>, Vec<Line>), RuleError> {
        let err = |rule: String, problem: String| RuleError { rule, problem };
        if !(0.0..=1.0).contains(&self.ankle_score) {
            return Err(err("ankle_score".into(), format!("{}, needs a number from 0 to 1", self.ankle_score)));
        }
        self.track_end.check(1, false).map_err(|p| err("track_end".into(), p))?;
        // Zones and lines share the names of the event keys' rule.
        let mut names = HashSet::new();
        let mut name = |kind: &str, n: &str| {
            let rule = format!("{kind} {n:?}");
            if n.is_empty() {
                Err(err(rule, "needs a name".into()))
            } else if !names.insert(n.to_string()) {
                Err(err(rule, "the name is used by another zone or line".into()))
            } else {
                Ok(rule)
            }
        };
        let mut zones = Vec::new();
        for z in &self.zones {
            let rule = name("zone", &z.name)?;
            let polygon =
                Polygon::new(z.polygon.iter().copied().map(point).collect()).map_err(|e| err(rule.clone(), format!("polygon {e}")))?;
            if z.enter_frames < 1 {
                return Err(err(rule, "enter_frames is 0, needs at least 1".into()));
            }
            z.exit_grace.check(1, false).map_err(|p| err(rule.clone(), format!("exit_grace {p}")))?;
            if z.alert.crowd_seconds.is_some() && z.alert.crowd_people.is_none() {
                return Err(err(rule, "alert.crowd_seconds needs alert.crowd_people".into()));
            }
            if let Some(d) = z.alert.dwell_s.filter(|d| !(d.is_finite() && *d > 0.0)) {
                return Err(err(rule, format!("alert.dwell_s is {d}, needs a finite number > 0")));
            }
            zones.push(Zone { name: z.name.clone(), polygon, enter_frames: z.enter_frames, exit_grace: z.exit_grace });
        }
        let mut lines = Vec::new();
        for l in &self.lines {
            let rule = name("line", &l.name)?;
            let (a, b) = (point(l.from), point(l.to));
            if !(a.x.is_finite() && a.y.is_finite() && b.x.is_finite() && b.y.is_finite()) {
                return Err(err(rule, "a point is not finite".into()));
            }
            if a == b {
                return Err(err(rule, "from and to are the same point".into()));
            }
            if l.hold_frames < 1 {
                return Err(err(rule, "hold_frames is 0, needs at least 1".into()));
            }
            if !l.dead_band_px.is_finite() || l.dead_band_px < 0.0 {
                return Err(err(rule, format!("dead_band_px is {}, needs a finite number >= 0", l.dead_band_px)));
            }
            l.cooldown.check(0, true).map_err(|p| err(rule, format!("cooldown {p}")))?;
            lines.push(Line {
                name: l.name.clone(),
                segment: Segment { a, b },
                in_side: l.in_side,
                hold_frames: l.hold_frames,
                dead_band: l.dead_band_px,
                cooldown: l.cooldown,
            });
        }
        Ok((zones, lines))
    }

    /// A hash of everything that decides the events (FNV-1a 64 over a fixed encoding).
    fn version(&self) -> u64 {
        let mut h = Fnv(0xcbf2_9ce4_8422_2325);
        h.u64(ENGINE_VERSION.into());
        h.f64(self.ankle_score);
        h.span(self.track_end);
        h.u64(self.zones.len() as u64);
        for z in &self.zones {
            h.str(&z.name);
            h.u64(z.polygon.len() as u64);
            for &[x, y] in &z.polygon {
                h.f64(x);
                h.f64(y);
            }
            h.u64(z.enter_frames.into());
            h.span(z.exit_grace);
        }
        h.u64(self.lines.len() as u64);
        for l in &self.lines {
            h.str(&l.name);
            for v in [l.from[0], l.from[1], l.to[0], l.to[1], l.dead_band_px] {
                h.f64(v);
            }
            h.u64(match l.in_side {
                Side::Left => 0,
                Side::Right => 1,
            });
            h.u64(l.hold_frames.into());
            h.span(l.cooldown);
        }
        h.0
    }
}

struct Fnv(u64);

impl Fnv {
    fn bytes(&mut self, b: &[u8]) {
        for &c in b {
            self.0 = (self.0 ^ u64::from(c)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.bytes(s.as_bytes());
    }
    fn span(&mut self, s: Span) {
        match s {
            Span::Frames(n) => {
                self.u64(0);
                self.u64(n.into());
            }
            Span::Seconds(v) => {
                self.u64(1);
                self.f64(v);
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Zone {
    name: String,
    polygon: Polygon,
    enter_frames: u32,
    exit_grace: Span,
}

#[derive(Debug, Clone)]
struct Line {
    name: String,
    segment: Segment,
    in_side: Side,
    hold_frames: u32,
    dead_band: f64,
    cooldown: Span,
}

impl Line {
    /// The side of p, or none within the dead band.
    fn side(&self, p: Point) -> Option<Side> {
        let d = self.segment.signed_distance(p);
        if d > self.dead_band {
            Some(Side::Right)
        } else if d < -self.dead_band {
            Some(Side::Left)
        } else {
            None
        }
    }
}

/// A camera's rules, checked and ready.
#[derive(Debug, Clone)]
pub struct Rules {
    ankle_score: f64,
    track_end: Span,
    zones: Vec<Zone>,
    lines: Vec<Line>,
    version: u64,
}

impl Rules {
    pub fn new(config: &RulesConfig) -> Result<Self, RuleError> {
        let (zones, lines) = config.build()?;
        Ok(Rules { ankle_score: config.ankle_score, track_end: config.track_end, zones, lines, version: config.version() })
    }

    /// The rule version events are stored under: a hash of the rules and of this code's
    /// version, so equal rules give equal keys (a replay overwrites nothing new) and any edit
    /// gives new ones (a recount stores beside the old events).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The point that counts for an observation.
    pub fn anchor(&self, o: &Observation) -> Point {
        if let Some(k) = &o.keypoints {
            let (l, r) = (k[LEFT_ANKLE], k[RIGHT_ANKLE]);
            if l.score > self.ankle_score && r.score > self.ankle_score {
                return Point::new((l.x + r.x) / 2.0, (l.y + r.y) / 2.0);
            }
        }
        let [x1, _, x2, y2] = o.xyxy;
        Point::new((x1 + x2) / 2.0, y2)
    }
}

/// One COCO keypoint in source pixels with the model's score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Keypoint {
    pub x: f64,
    pub y: f64,
    pub score: f64,
}

/// A confirmed track seen on a frame: what the store keeps per track and frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    pub track: u64,
    /// The tracker's box, x1 y1 x2 y2 in source pixels.
    pub xyxy: [f64; 4],
    /// The 17 COCO keypoints, when the model is a pose model.
    pub keypoints: Option<[Keypoint; 17]>,
}

impl Observation {
    /// An observation from what the wire and the store keep (single precision): the tracker's
    /// box, and the keypoints of the detection it matched, which count only in COCO's layout of
    /// 17. The detector's live counter and a recount both build theirs here, so both see the same.
    pub fn from_f32(track: u64, xyxy: [f32; 4], keypoints: Option<&[[f32; 3]]>) -> Self {
        let keypoints = keypoints
            .filter(|k| k.len() == 17)
            .map(|k| std::array::from_fn(|i| Keypoint { x: f64::from(k[i][0]), y: f64::from(k[i][1]), score: f64::from(k[i][2]) }));
        Observation { track, xyxy: xyxy.map(f64::from), keypoints }
    }
}

/// A frame's seq number (increasing) and time in seconds (not decreasing; the epoch is the
/// caller's: the file's start, or Unix time).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameTime {
    pub seq: u64,
    pub time: f64,
}

/// A frame as the counter's spans see it: and how many frames the counter was given before it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct At {
    frame: FrameTime,
    given: u64,
}

/// An anchor point at a frame: what explains a crossing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at: FrameTime,
    pub point: Point,
}

/// In: into the line's `in_side`; out: into the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

/// What the rules report, dated at the frame that explains it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// At the track's first observation.
    TrackStart { track: u64, at: FrameTime },
    /// At the track's last observation.
    TrackEnd { track: u64, at: FrameTime },
    /// At the first of the `enter_frames` observations inside; `confirmed` is the last of them.
    ZoneEnter { track: u64, zone: String, at: FrameTime, confirmed: FrameTime },
    /// At the last observation inside; `dwell` is its time minus the enter event's.
    ZoneExit { track: u64, zone: String, at: FrameTime, entered: FrameTime, dwell: f64 },
    /// `before` is the last anchor on the old side, `after` the first on the new side (the
    /// event's frame); `confirmed` is the observation at which it counted (the side held and the
    /// cooldown had passed).
    LineCross { track: u64, line: String, direction: Direction, before: Sample, after: Sample, confirmed: FrameTime },
}

/// An event's kind as stored and sent (`as_str`); a crossing's kind carries its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    TrackStart,
    TrackEnd,
    ZoneEnter,
    ZoneExit,
    LineIn,
    LineOut,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::TrackStart => "track_start",
            EventKind::TrackEnd => "track_end",
            EventKind::ZoneEnter => "zone_enter",
            EventKind::ZoneExit => "zone_exit",
            EventKind::LineIn => "line_in",
            EventKind::LineOut => "line_out",
        }
    }
}

/// The part of an event's store key the rules decide; the caller adds camera, run, tracker
/// session and rule version. No two events of a session share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKey<'a> {
    pub track: u64,
    /// The zone's or line's name; empty for track start and end.
    pub rule: &'a str,
    pub kind: EventKind,
    pub frame: u64,
}

impl Event {
    pub fn key(&self) -> EventKey<'_> {
        let (track, rule, kind, at) = match self {
            Event::TrackStart { track, at } => (*track, "", EventKind::TrackStart, at),
            Event::TrackEnd { track, at } => (*track, "", EventKind::TrackEnd, at),
            Event::ZoneEnter { track, zone, at, .. } => (*track, zone.as_str(), EventKind::ZoneEnter, at),
            Event::ZoneExit { track, zone, at, .. } => (*track, zone.as_str(), EventKind::ZoneExit, at),
            Event::LineCross { track, line, direction, after, .. } => {
                let kind = match direction {
                    Direction::In => EventKind::LineIn,
                    Direction::Out => EventKind::LineOut,
                };
                (*track, line.as_str(), kind, &after.at)
            }
        };
        EventKey { track, rule, kind, frame: at.seq }
    }

    /// The time of the event's frame.
    pub fn time(&self) -> f64 {
        match self {
            Event::TrackStart { at, .. } | Event::TrackEnd { at, .. } | Event::ZoneEnter { at, .. } | Event::ZoneExit { at, .. } => at.time,
            Event::LineCross { after, .. } => after.at.time,
        }
    }
}

/// Tracks inside a zone during a second: the most at any frame of that second, counting those
/// entered (reported) and not yet exited (reported).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occupancy {
    pub zone: String,
    /// `floor(frame time)`.
    pub second: i64,
    pub count: u32,
}

/// What an update or the finish reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Output {
    pub events: Vec<Event>,
    /// Each zone's occupancy of every second that had a frame, once the second is over.
    pub occupancy: Vec<Occupancy>,
}

/// Frames given in an order or shape the rules cannot follow (a store's data can be wrong).
#[derive(Debug, Clone, PartialEq)]
pub enum InputError {
    /// A frame whose seq is not above the last one's.
    OutOfOrder {
        last: FrameTime,
        got: FrameTime,
    },
    TimeNotFinite(FrameTime),
    DuplicateTrack {
        seq: u64,
        track: u64,
    },
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputError::OutOfOrder { last, got } => {
                write!(f, "frame {} at {} s after frame {} at {} s: frames must come in order", got.seq, got.time, last.seq, last.time)
            }
            InputError::TimeNotFinite(at) => write!(f, "frame {} has the time {}", at.seq, at.time),
            InputError::DuplicateTrack { seq, track } => write!(f, "frame {seq} has track {track} twice"),
        }
    }
}

impl std::error::Error for InputError {}

#[derive(Debug, Clone, Copy)]
enum ZoneState {
    /// Not in the zone; `run` is the first and count of the observations inside in a row.
    Outside {
        run: Option<(FrameTime, u32)>,
    },
    Inside {
        entered: FrameTime,
        last_inside: At,
    },
}

#[derive(Debug, Clone, Copy)]
struct LineState {
    /// The side the anchor last held for `hold_frames`, and its last sample there.
    settled: Option<(Side, Sample)>,
    /// Observations in a row on another side (or on any side before one is settled): the side,
    /// the first sample, how many.
    run: Option<(Side, Sample, u32)>,
    /// Where the last counted crossing was confirmed.
    last_crossing: Option<At>,
}

#[derive(Debug, Clone)]
struct TrackState {
    last_seen: At,
    zones: Vec<ZoneState>,
    lines: Vec<LineState>,
}

/// The rules applied to one tracker session's frames, in order. Give it every frame the tracker
/// processed, empty ones too (occupancy is sampled on them; the events do not depend on them),
/// and [`Counter::finish`] it when the session ends.
#[derive(Debug, Clone)]
pub struct Counter {
    rules: Rules,
    tracks: BTreeMap<u64, TrackState>,
    last: Option<FrameTime>,
    /// Frames given so far.
    given: u64,
    /// The second being sampled and each zone's most tracks inside so far in it.
    second: Option<(i64, Vec<u32>)>,
}

impl Counter {
    pub fn new(rules: Rules) -> Self {
        Counter { rules, tracks: BTreeMap::new(), last: None, given: 0, second: None }
    }

    /// Applies one frame: the observations of the tracks it saw (any order, each track once). A
    /// frame whose time is below the last one's is taken at the last one's time: a file's pts
    /// can step back, a camera's clock can be set back, and neither may end a presence early or
    /// make a dwell negative (live and recounted events do the same, as both come here).
    pub fn update(&mut self, mut at: FrameTime, observations: &[Observation]) -> Result<Output, InputError> {
        if !at.time.is_finite() {
            return Err(InputError::TimeNotFinite(at));
        }
        if let Some(last) = self.last {
            if at.seq <= last.seq {
                return Err(InputError::OutOfOrder { last, got: at });
            }
            at.time = at.time.max(last.time);
        }
        let mut seen: Vec<&Observation> = observations.iter().collect();
        seen.sort_by_key(|o| o.track);
        if let Some(w) = seen.windows(2).find(|w| w[0].track == w[1].track) {
            return Err(InputError::DuplicateTrack { seq: at.seq, track: w[0].track });
        }
        self.last = Some(at);
        let now = At { frame: at, given: self.given };
        self.given += 1;
        let mut out = Output::default();

        let second = at.time.floor() as i64;
        if self.second.as_ref().is_some_and(|(s, _)| *s != second) {
            self.flush_occupancy(&mut out);
        }

        // Tracks not seen on this frame: presences past their grace exit, tracks past their end end.
        let unseen: Vec<u64> = self.tracks.keys().copied().filter(|t| seen.binary_search_by_key(t, |o| o.track).is_err()).collect();
        for track in unseen {
            let state = self.tracks.get_mut(&track).expect("a known track");
            for (zone, z) in self.rules.zones.iter().zip(state.zones.iter_mut()) {
                if let ZoneState::Inside { entered, last_inside } = *z {
                    if zone.exit_grace.exceeded(last_inside, now) {
                        out.events.push(exit(track, zone, entered, last_inside));
                        *z = ZoneState::Outside { run: None };
                    }
                }
            }
            if self.rules.track_end.exceeded(state.last_seen, now) {
                let state = self.tracks.remove(&track).expect("a known track");
                self.end(track, state, &mut out.events);
            }
        }

        for o in seen {
            if self.tracks.get(&o.track).is_some_and(|s| self.rules.track_end.exceeded(s.last_seen, now)) {
                // Seen again after its end (a track end shorter than the tracker's buffer): it
                // ended, and starts anew.
                let state = self.tracks.remove(&o.track).expect("a known track");
                self.end(o.track, state, &mut out.events);
            }
            let rules = &self.rules;
            let state = self.tracks.entry(o.track).or_insert_with(|| {
                out.events.push(Event::TrackStart { track: o.track, at });
                TrackState {
                    last_seen: now,
                    zones: vec![ZoneState::Outside { run: None }; rules.zones.len()],
                    lines: vec![LineState { settled: None, run: None, last_crossing: None }; rules.lines.len()],
                }
            });
            state.last_seen = now;
            let p = rules.anchor(o);
            for (zone, z) in rules.zones.iter().zip(state.zones.iter_mut()) {
                update_zone(o.track, zone, z, now, zone.polygon.covers(p), &mut out.events);
            }
            for (line, l) in rules.lines.iter().zip(state.lines.iter_mut()) {
                update_line(o.track, line, l, now, p, &mut out.events);
            }
        }

        let inside = self.inside_counts();
        match &mut self.second {
            Some((_, most)) => most.iter_mut().zip(inside).for_each(|(m, n)| *m = (*m).max(n)),
            None => self.second = Some((second, inside)),
        }
        Ok(out)
    }

    /// Ends the session: every open presence exits and every track ends, at their last frames,
    /// and the last second's occupancy is reported.
    pub fn finish(mut self) -> Output {
        let mut out = Output::default();
        for (track, state) in std::mem::take(&mut self.tracks) {
            self.end(track, state, &mut out.events);
        }
        self.flush_occupancy(&mut out);
        out
    }

    /// The exits of a track's open presences, then its end.
    fn end(&self, track: u64, state: TrackState, events: &mut Vec<Event>) {
        for (zone, z) in self.rules.zones.iter().zip(state.zones) {
            if let ZoneState::Inside { entered, last_inside } = z {
                events.push(exit(track, zone, entered, last_inside));
            }
        }
        events.push(Event::TrackEnd { track, at: state.last_seen.frame });
    }

    /// Each zone's name, the tracks inside it now (entered and not exited) and the longest of
    /// their presences so far, in seconds up to the last frame: the live metrics.
    pub fn presences(&self) -> Vec<(&str, u32, f64)> {
        let now = self.last.map_or(0.0, |l| l.time);
        self.rules
            .zones
            .iter()
            .enumerate()
            .map(|(i, zone)| {
                let entered = self.tracks.values().filter_map(|s| match s.zones[i] {
                    ZoneState::Inside { entered, .. } => Some(entered.time),
                    ZoneState::Outside { .. } => None,
                });
                let (n, longest) = entered.fold((0, 0.0_f64), |(n, l), e| (n + 1, l.max(now - e)));
                (zone.name.as_str(), n, longest)
            })
            .collect()
    }

    fn inside_counts(&self) -> Vec<u32> {
        (0..self.rules.zones.len())
            .map(|i| self.tracks.values().filter(|s| matches!(s.zones[i], ZoneState::Inside { .. })).count() as u32)
            .collect()
    }

    fn flush_occupancy(&mut self, out: &mut Output) {
        if let Some((second, most)) = self.second.take() {
            for (zone, count) in self.rules.zones.iter().zip(most) {
                out.occupancy.push(Occupancy { zone: zone.name.clone(), second, count });
            }
        }
    }
}

fn exit(track: u64, zone: &Zone, entered: FrameTime, last_inside: At) -> Event {
    let at = last_inside.frame;
    Event::ZoneExit { track, zone: zone.name.clone(), at, entered, dwell: at.time - entered.time }
}

fn update_zone(track: u64, zone: &Zone, z: &mut ZoneState, now: At, inside: bool, events: &mut Vec<Event>) {
    let at = now.frame;
    let run = match *z {
        ZoneState::Inside { entered, last_inside } if !zone.exit_grace.exceeded(last_inside, now) => {
            if inside {
                *z = ZoneState::Inside { entered, last_inside: now };
            }
            return;
        }
        ZoneState::Inside { entered, last_inside } => {
            // Away longer than the grace, whatever this frame shows: the presence ended back then.
            events.push(exit(track, zone, entered, last_inside));
            None
        }
        ZoneState::Outside { run } => run,
    };
    if !inside {
        *z = ZoneState::Outside { run: None };
        return;
    }
    let (first, n) = run.map_or((at, 1), |(first, n)| (first, n + 1));
    if n >= zone.enter_frames {
        events.push(Event::ZoneEnter { track, zone: zone.name.clone(), at: first, confirmed: at });
        *z = ZoneState::Inside { entered: first, last_inside: now };
    } else {
        *z = ZoneState::Outside { run: Some((first, n)) };
    }
}

fn update_line(track: u64, line: &Line, l: &mut LineState, at: At, point: Point, events: &mut Vec<Event>) {
    let now = Sample { at: at.frame, point };
    let Some(side) = line.side(now.point) else {
        l.run = None; // the dead band breaks a hold
        return;
    };
    if l.settled.is_some_and(|(s, _)| s == side) {
        l.settled = Some((side, now));
        l.run = None;
        return;
    }
    let (first, n) = match l.run {
        Some((s, first, n)) if s == side => (first, n + 1),
        _ => (now, 1),
    };
    l.run = Some((side, first, n));
    if n < line.hold_frames {
        return;
    }
    if let Some((_, before)) = l.settled {
        if l.last_crossing.is_some_and(|c| !line.cooldown.exceeded(c, at)) {
            return; // waits while the side holds
        }
        if line.segment.crossed_within(before.point, first.point) {
            let direction = if side == line.in_side { Direction::In } else { Direction::Out };
            events.push(Event::LineCross { track, line: line.name.clone(), direction, before, after: first, confirmed: now.at });
            l.last_crossing = Some(at);
        }
    }
    l.settled = Some((side, now));
    l.run = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At 10 frames per second, as vtest.avi.
    fn at(seq: u64) -> FrameTime {
        FrameTime { seq, time: seq as f64 / 10.0 }
    }

    /// A 20 x 40 box whose bottom centre is (x, y).
    fn obs(track: u64, x: f64, y: f64) -> Observation {
        Observation { track, xyxy: [x - 10.0, y - 40.0, x + 10.0, y], keypoints: None }
    }

    fn zone(enter_frames: u32, exit_grace: Span) -> RulesConfig {
        let polygon = vec![[0.0, 0.0], [100.0, 0.0], [100.0, 100.0], [0.0, 100.0]];
        RulesConfig {
            zones: vec![ZoneConfig { name: "z".into(), polygon, enter_frames, exit_grace, alert: ZoneAlert::default() }],
            ..RulesConfig::default()
        }
    }

    /// A line across the screen at y = 100 from x = 0 to 200; "in" is downwards on screen (the
    /// right of a line drawn rightwards).
    fn line(hold_frames: u32, dead_band_px: f64, cooldown: Span) -> RulesConfig {
        let l = LineConfig {
            name: "l".into(),
            from: [0.0, 100.0],
            to: [200.0, 100.0],
            in_side: Side::Right,
            hold_frames,
            dead_band_px,
            cooldown,
        };
        RulesConfig { lines: vec![l], ..RulesConfig::default() }
    }

    /// Runs frames 0, 1, ... (each the observations seen) and finishes; all that was reported.
    fn run(config: &RulesConfig, frames: &[Vec<Observation>]) -> Output {
        let mut counter = Counter::new(Rules::new(config).unwrap());
        let mut all = Output::default();
        for (seq, seen) in frames.iter().enumerate() {
            let out = counter.update(at(seq as u64), seen).unwrap();
            all.events.extend(out.events);
            all.occupancy.extend(out.occupancy);
        }
        let out = counter.finish();
        all.events.extend(out.events);
        all.occupancy.extend(out.occupancy);
        all
    }

    /// One track's frames from a pattern: I inside the zone, O outside, - unseen.
    fn pattern(p: &str) -> Vec<Vec<Observation>> {
        p.chars()
            .map(|c| match c {
                'I' => vec![obs(1, 50.0, 50.0)],
                'O' => vec![obs(1, 150.0, 50.0)],
                _ => vec![],
            })
            .collect()
    }

    /// The zone events as (kind, frame), with the dwell in milliseconds for exits (frame times
    /// of tenths are not exact in binary).
    fn zone_events(out: &Output) -> Vec<(&'static str, u64, Option<i64>)> {
        out.events
            .iter()
            .filter_map(|e| match e {
                Event::ZoneEnter { at, .. } => Some(("enter", at.seq, None)),
                Event::ZoneExit { at, dwell, .. } => Some(("exit", at.seq, Some((dwell * 1000.0).round() as i64))),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn entering_needs_k_observations_inside_in_a_row() {
        for (p, want) in [
            ("IIO", vec![]),
            ("III", vec![("enter", 0, None), ("exit", 2, Some(200))]),
            ("IIOIII", vec![("enter", 3, None), ("exit", 5, Some(200))]),
            // Unseen frames neither count nor break the run.
            ("I-II", vec![("enter", 0, None), ("exit", 3, Some(300))]),
            ("OOOIIIO", vec![("enter", 3, None), ("exit", 5, Some(200))]),
        ] {
            assert_eq!(zone_events(&run(&zone(3, Span::Frames(10)), &pattern(p))), want, "{p}");
        }
        let out = run(&zone(1, Span::Frames(10)), &pattern("OI"));
        assert_eq!(zone_events(&out), vec![("enter", 1, None), ("exit", 1, Some(0))], "k = 1 enters at once");
    }

    #[test]
    fn a_blip_outside_or_unseen_within_the_grace_does_not_exit() {
        let grace = Span::Frames(3);
        for (p, want) in [
            // Away two frames: the next inside frame is 3 frames after the last, within the grace.
            ("IIIOOII", vec![("enter", 0, None), ("exit", 6, Some(600))]),
            ("III--II", vec![("enter", 0, None), ("exit", 6, Some(600))]),
            ("IIIO-II", vec![("enter", 0, None), ("exit", 6, Some(600))]),
            // Away three frames: 4 frames apart, the presence ended at frame 2 and starts anew.
            ("IIIOOOIII", vec![("enter", 0, None), ("exit", 2, Some(200)), ("enter", 6, None), ("exit", 8, Some(200))]),
            // Occluded past the grace: out at the last frame seen inside; back, but not for k.
            ("III----II", vec![("enter", 0, None), ("exit", 2, Some(200))]),
        ] {
            assert_eq!(zone_events(&run(&zone(3, grace), &pattern(p))), want, "{p}");
        }
    }

    #[test]
    fn grace_in_seconds_uses_frame_times() {
        // 0.35 s of grace: frames 0.3 s apart keep the presence, 0.4 s apart do not.
        let config = zone(1, Span::Seconds(0.35));
        assert_eq!(zone_events(&run(&config, &pattern("I--I"))), vec![("enter", 0, None), ("exit", 3, Some(300))]);
        assert_eq!(
            zone_events(&run(&config, &pattern("I---I"))),
            vec![("enter", 0, None), ("exit", 0, Some(0)), ("enter", 4, None), ("exit", 4, Some(0))]
        );
    }

    #[test]
    fn an_occluded_track_stays_inside_until_the_grace_ends() {
        let config = zone(3, Span::Frames(5));
        let mut counter = Counter::new(Rules::new(&config).unwrap());
        let frames = pattern("III-----");
        for (seq, seen) in frames.iter().enumerate() {
            let out = counter.update(at(seq as u64), seen).unwrap();
            // Entered on frame 2, still inside on frames 3..=7 (5 frames unseen): no exit.
            assert!(out.events.iter().all(|e| !matches!(e, Event::ZoneExit { .. })), "frame {seq}");
            assert_eq!(counter.inside_counts(), vec![u32::from(seq >= 2)], "frame {seq}");
        }
        let out = counter.update(at(8), &[]).unwrap();
        assert_eq!(zone_events(&out), vec![("exit", 2, Some(200))], "6 frames after the last seen inside");
        assert_eq!(counter.inside_counts(), vec![0]);
    }

    /// The line events as (direction, frame of the first point on the new side).
    fn crossings(out: &Output) -> Vec<(u64, Direction, u64)> {
        out.events
            .iter()
            .filter_map(|e| match e {
                Event::LineCross { track, direction, after, .. } => Some((*track, *direction, after.at.seq)),
                _ => None,
            })
            .collect()
    }

    /// One track at x = 100 and these ys, a frame each (NaN: unseen).
    fn walk(track: u64, x: f64, ys: &[f64]) -> Vec<Vec<Observation>> {
        ys.iter().map(|&y| if y.is_nan() { vec![] } else { vec![obs(track, x, y)] }).collect()
    }

    #[test]
    fn line_rules() {
        use Direction::{In, Out};
        let u = f64::NAN;
        let config = line(3, 5.0, Span::Frames(10));
        for (name, x, ys, want) in [
            ("a crossing downwards is in", 100.0, vec![80.0, 80.0, 80.0, 90.0, 110.0, 120.0, 130.0], vec![(1, In, 4)]),
            ("upwards is out", 100.0, vec![130.0, 120.0, 110.0, 96.0, 90.0, 80.0, 70.0], vec![(1, Out, 4)]),
            ("a new side held 2 frames is not held", 100.0, vec![80.0, 80.0, 80.0, 120.0, 120.0, 80.0, 80.0], vec![]),
            ("the dead band breaks a hold", 100.0, vec![80.0, 80.0, 80.0, 120.0, 120.0, 101.0, 120.0, 120.0, 120.0], vec![(1, In, 6)]),
            ("unseen frames do not break a hold", 100.0, vec![80.0, 80.0, 80.0, 120.0, u, 120.0, u, 120.0], vec![(1, In, 3)]),
            ("standing on the line", 100.0, vec![80.0, 80.0, 80.0, 99.0, 101.0, 100.0, 104.0, 96.0, 100.0, 103.0, 97.0, 100.0], vec![]),
            ("jitter across the line", 100.0, vec![80.0, 80.0, 80.0, 92.0, 108.0, 92.0, 108.0, 94.0, 107.0, 93.0, 108.0], vec![]),
            ("outside the segment", 250.0, vec![80.0, 80.0, 80.0, 120.0, 120.0, 120.0], vec![]),
            ("no side held before: no crossing", 100.0, vec![80.0, 80.0, 120.0, 120.0, 120.0], vec![]),
            // In, back out within the cooldown (not counted), in again: one crossing.
            (
                "back and forth within the cooldown",
                100.0,
                vec![80.0, 80.0, 80.0, 120.0, 120.0, 120.0, 80.0, 80.0, 80.0, 120.0, 120.0, 120.0, 120.0, 120.0, 120.0, 120.0, 120.0],
                vec![(1, In, 3)],
            ),
            // Out and staying out: counted once the cooldown (10 frames after frame 5) is over.
            (
                "out waits for the cooldown",
                100.0,
                vec![80.0, 80.0, 80.0, 120.0, 120.0, 120.0, 80.0, 80.0, 80.0, 80.0, 80.0, 80.0, 80.0, 80.0, 80.0, 80.0, 80.0],
                vec![(1, In, 3), (1, Out, 6)],
            ),
        ] {
            assert_eq!(crossings(&run(&config, &walk(1, x, &ys))), want, "{name}");
        }
    }

    #[test]
    fn a_path_around_the_end_of_the_segment_does_not_count() {
        // Crosses beside the segment, then back through it: only the second counts.
        let config = line(1, 0.0, Span::Frames(0));
        let frames: Vec<_> = [(250.0, 80.0), (250.0, 120.0), (100.0, 80.0)].iter().map(|&(x, y)| vec![obs(1, x, y)]).collect();
        assert_eq!(crossings(&run(&config, &frames)), vec![(1, Direction::Out, 2)]);
        // A path from one side of the segment's end to the other, meeting the line past it.
        let frames: Vec<_> = [(210.0, 80.0), (230.0, 120.0)].iter().map(|&(x, y)| vec![obs(1, x, y)]).collect();
        assert_eq!(crossings(&run(&config, &frames)), vec![]);
    }

    #[test]
    fn two_people_crossing_together_count_two() {
        let config = line(3, 5.0, Span::Frames(10));
        let frames: Vec<_> = [80.0, 80.0, 80.0, 110.0, 120.0, 130.0].iter().map(|&y| vec![obs(7, 95.0, y), obs(8, 105.0, y)]).collect();
        assert_eq!(crossings(&run(&config, &frames)), vec![(7, Direction::In, 3), (8, Direction::In, 3)]);
    }

    #[test]
    fn a_crossing_carries_what_explains_it() {
        let config = line(2, 5.0, Span::Frames(10));
        let out = run(&config, &walk(4, 100.0, &[80.0, 80.0, 90.0, 120.0, 125.0]));
        let cross = out.events.iter().find(|e| matches!(e, Event::LineCross { .. })).unwrap();
        assert_eq!(
            *cross,
            Event::LineCross {
                track: 4,
                line: "l".into(),
                direction: Direction::In,
                before: Sample { at: at(2), point: Point::new(100.0, 90.0) },
                after: Sample { at: at(3), point: Point::new(100.0, 120.0) },
                confirmed: at(4),
            }
        );
        assert_eq!(cross.key(), EventKey { track: 4, rule: "l", kind: EventKind::LineIn, frame: 3 });
        assert_eq!(cross.time(), 0.3);
    }

    #[test]
    fn finish_closes_every_presence_and_track() {
        let config = zone(1, Span::Frames(10));
        let mut counter = Counter::new(Rules::new(&config).unwrap());
        counter.update(at(0), &[obs(1, 50.0, 50.0), obs(2, 150.0, 50.0)]).unwrap();
        counter.update(at(1), &[obs(1, 60.0, 50.0)]).unwrap();
        let out = counter.finish();
        let keys: Vec<_> = out.events.iter().map(|e| (e.key().track, e.key().kind, e.key().frame)).collect();
        assert_eq!(keys, vec![(1, EventKind::ZoneExit, 1), (1, EventKind::TrackEnd, 1), (2, EventKind::TrackEnd, 0)]);
        assert_eq!(out.occupancy, vec![Occupancy { zone: "z".into(), second: 0, count: 1 }]);
    }

    #[test]
    fn tracks_start_and_end_at_their_first_and_last_observations() {
        let config = RulesConfig { track_end: Span::Frames(3), ..RulesConfig::default() };
        // Back after 3 frames: the same track; after 4: it ended and starts anew.
        let frames = walk(5, 0.0, &[1.0, f64::NAN, f64::NAN, 1.0, f64::NAN, f64::NAN, f64::NAN, 1.0]);
        let keys: Vec<_> = run(&config, &frames).events.iter().map(|e| (e.key().kind, e.key().frame)).collect();
        use EventKind::{TrackEnd, TrackStart};
        assert_eq!(keys, vec![(TrackStart, 0), (TrackEnd, 3), (TrackStart, 7), (TrackEnd, 7)]);
    }

    #[test]
    fn the_ankles_count_when_both_are_seen_else_the_box_bottom() {
        let rules = Rules::new(&RulesConfig::default()).unwrap();
        let mut keypoints = [Keypoint { x: 0.0, y: 0.0, score: 0.9 }; 17];
        keypoints[LEFT_ANKLE] = Keypoint { x: 40.0, y: 95.0, score: 0.8 };
        keypoints[RIGHT_ANKLE] = Keypoint { x: 60.0, y: 97.0, score: 0.6 };
        let o = Observation { track: 1, xyxy: [30.0, 0.0, 70.0, 110.0], keypoints: Some(keypoints) };
        assert_eq!(rules.anchor(&o), Point::new(50.0, 96.0), "both ankles above 0.5");
        let mut one_low = o;
        one_low.keypoints.as_mut().unwrap()[RIGHT_ANKLE].score = 0.5;
        assert_eq!(rules.anchor(&one_low), Point::new(50.0, 110.0), "an ankle at the threshold is not seen");
        assert_eq!(rules.anchor(&Observation { keypoints: None, ..o }), Point::new(50.0, 110.0), "no keypoints");
    }

    #[test]
    fn occupancy_is_the_most_inside_at_any_frame_of_each_second() {
        let config = zone(1, Span::Frames(1));
        let mut frames = vec![vec![]; 25];
        frames[3] = vec![obs(1, 50.0, 50.0), obs(2, 50.0, 50.0)];
        frames[4] = vec![obs(1, 50.0, 50.0)];
        frames[12] = vec![obs(1, 50.0, 50.0)];
        let out = run(&config, &frames);
        let counts: Vec<_> = out.occupancy.iter().map(|o| (o.second, o.count)).collect();
        assert_eq!(counts, vec![(0, 2), (1, 1), (2, 0)]);
    }

    #[test]
    fn frames_out_of_order_or_a_track_twice_are_refused() {
        let mut counter = Counter::new(Rules::new(&RulesConfig::default()).unwrap());
        counter.update(at(5), &[]).unwrap();
        assert!(matches!(counter.update(at(5), &[]), Err(InputError::OutOfOrder { .. })));
        assert!(matches!(counter.update(FrameTime { seq: 6, time: f64::NAN }, &[]), Err(InputError::TimeNotFinite(_))));
        assert_eq!(counter.update(at(6), &[obs(3, 0.0, 0.0), obs(3, 1.0, 1.0)]), Err(InputError::DuplicateTrack { seq: 6, track: 3 }));
    }

    /// A clock set back (or a file's pts stepping back) holds the time where it was: a presence
    /// neither ends early nor gets a negative dwell.
    #[test]
    fn a_frame_earlier_than_the_last_is_taken_at_the_last_time() {
        let mut counter = Counter::new(Rules::new(&zone(1, Span::Seconds(1.0))).unwrap());
        let mut events = Vec::new();
        for (seq, time) in [(1, 100.0), (2, 100.5), (3, 40.0), (4, 40.5)] {
            events.extend(counter.update(FrameTime { seq, time }, &[obs(1, 50.0, 50.0)]).unwrap().events);
        }
        events.extend(counter.finish().events);
        let exit = events.iter().find_map(|e| match e {
            Event::ZoneExit { at, dwell, .. } => Some((at.seq, at.time, *dwell)),
            _ => None,
        });
        assert_eq!(exit, Some((4, 100.5, 0.5)));
    }

    /// Every third frame processed (--max-fps, a live camera dropping): spans in frames count the
    /// frames given, as ByteTrack's buffer does, not seq numbers, which would end a track or a
    /// presence the tracker still holds.
    #[test]
    fn frame_spans_count_the_frames_given_not_seq_numbers() {
        let config = RulesConfig { track_end: Span::Frames(4), ..zone(1, Span::Frames(2)) };
        let mut counter = Counter::new(Rules::new(&config).unwrap());
        let mut events = Vec::new();
        // Seen at the 1st and 2nd frames given, unseen at the 3rd to 5th, seen at the 6th: 4
        // frames after its last is within the end (4) but past the grace (2). In seq numbers it
        // would be 12, past both.
        for (i, seen) in [true, true, false, false, false, true].into_iter().enumerate() {
            let seq = 3 * i as u64;
            let o = if seen { vec![obs(1, 50.0, 50.0)] } else { vec![] };
            events.extend(counter.update(at(seq), &o).unwrap().events);
        }
        events.extend(counter.finish().events);
        let kinds: Vec<(EventKind, u64)> = events.iter().map(|e| (e.key().kind, e.key().frame)).collect();
        use EventKind::*;
        assert_eq!(kinds, [(TrackStart, 0), (ZoneEnter, 0), (ZoneExit, 3), (ZoneEnter, 15), (ZoneExit, 15), (TrackEnd, 15)]);
    }

    #[test]
    fn config_from_toml_with_defaults() {
        let config: RulesConfig = toml::from_str(
            r#"
            [[zones]]
            name = "queue"
            polygon = [[0, 0], [10.5, 0], [10, 10]]
            exit_grace = { seconds = 1.5 }

            [[lines]]
            name = "door"
            from = [0, 5]
            to = [10, 5]
            in_side = "left"
            "#,
        )
        .unwrap();
        assert_eq!(config.track_end, Span::Frames(32));
        assert_eq!(config.zones[0].polygon[1], [10.5, 0.0]);
        assert_eq!((config.zones[0].enter_frames, config.zones[0].exit_grace), (3, Span::Seconds(1.5)));
        let l = &config.lines[0];
        assert_eq!((l.in_side, l.hold_frames, l.dead_band_px, l.cooldown), (Side::Left, 3, 5.0, Span::Frames(10)));
        config.validate().unwrap();
        let unknown = toml::from_str::<RulesConfig>("[[lines]]\nname = \"a\"\nfrom = [0, 0]\nto = [1, 1]\nin_side = \"left\"\nhold = 3\n");
        assert!(unknown.unwrap_err().to_string().contains("unknown field `hold`"));
        let minutes = toml::from_str::<RulesConfig>("track_end = { minutes = 1 }\n");
        assert!(minutes.unwrap_err().to_string().contains("unknown variant `minutes`"));
    }

    #[test]
    fn invalid_rules_are_named() {
        let mut bow_tie = zone(3, Span::Frames(10));
        bow_tie.zones[0].polygon = vec![[0.0, 0.0], [4.0, 4.0], [4.0, 0.0], [0.0, 4.0]];
        let mut same_names = zone(3, Span::Frames(10));
        same_names.lines = line(3, 5.0, Span::Frames(0)).lines;
        same_names.lines[0].name = "z".into();
        let mut no_length = line(3, 5.0, Span::Frames(0));
        no_length.lines[0].to = [0.0, 100.0];
        let mut negative_band = line(3, -1.0, Span::Frames(0));
        negative_band.lines[0].name = "door".into();
        for (config, want) in [
            (bow_tie, "zone \"z\": polygon intersects itself: edges 0 and 2 meet"),
            (zone(0, Span::Frames(10)), "zone \"z\": enter_frames is 0, needs at least 1"),
            (zone(3, Span::Frames(0)), "zone \"z\": exit_grace 0 frames, needs at least 1"),
            (zone(3, Span::Seconds(f64::INFINITY)), "zone \"z\": exit_grace inf seconds, needs a finite number > 0"),
            (same_names, "line \"z\": the name is used by another zone or line"),
            (no_length, "line \"l\": from and to are the same point"),
            (negative_band, "line \"door\": dead_band_px is -1, needs a finite number >= 0"),
            (line(0, 5.0, Span::Frames(0)), "line \"l\": hold_frames is 0, needs at least 1"),
            (RulesConfig { ankle_score: 1.5, ..RulesConfig::default() }, "ankle_score: 1.5, needs a number from 0 to 1"),
        ] {
            assert_eq!(config.validate().unwrap_err().to_string(), want);
            assert_eq!(Rules::new(&config).unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn the_version_changes_with_the_rules_only() {
        let version = |c: &RulesConfig| Rules::new(c).unwrap().version();
        let a = zone(3, Span::Frames(10));
        assert_eq!(version(&a), version(&a.clone()));
        let mut moved = a.clone();
        moved.zones[0].polygon[2][0] = 101.0;
        let mut renamed = a.clone();
        renamed.zones[0].name = "y".into();
        let versions: HashSet<u64> =
            [a.clone(), moved, renamed, zone(4, Span::Frames(10)), zone(3, Span::Seconds(1.0)), zone(3, Span::Frames(11))]
                .iter()
                .map(version)
                .collect();
        assert_eq!(versions.len(), 6);
    }
}
