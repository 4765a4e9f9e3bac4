//! The zone and line rules against an independent oracle: scripts/zone_oracle.py (shapely's
//! geometry, written from docs/analytics.md) worked out the events and occupancy of the rules in
//! tests/reference/zones/NAME.rules.toml over the reference tracks of vtest.avi
//! (tests/reference/tracks/vtest.avi.csv, the tracker's boxes) and over random tracks
//! (tests/reference/zones/random.csv, people loitering on lines and edges); the crate must give
//! the same events, field for field, and the same occupancy. And a recount from what the store
//! gives back (every frame, empty ones too, each frame's tracks in another order) gives the same
//! events.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use analytics::{Counter, Direction, Event, FrameTime, Observation, Occupancy, Rules, RulesConfig};

/// vtest.avi's frame rate (its AVI header: 100000 us per frame).
const FPS: f64 = 10.0;

fn reference(path: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/reference").join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The tracker's observations per frame of a file of scripts/reference_tracks.py's form (`# frames`
/// gives the count), boxes parsed to f64.
fn tracks(path: &str) -> Vec<Vec<Observation>> {
    let text = reference(path);
    let mut frames = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# frames ") {
            frames = vec![Vec::new(); rest.rsplit_once(' ').and_then(|(_, n)| n.parse().ok()).expect("# frames NAME N")];
        } else if !line.starts_with('#') && !line.starts_with("scenario,") {
            let c: Vec<&str> = line.split(',').collect();
            if c[9].is_empty() {
                continue; // a detection the tracker left
            }
            let b: Vec<f64> = c[10..14].iter().map(|v| v.parse().expect(line)).collect();
            let frame: usize = c[1].parse().expect(line);
            frames[frame].push(Observation { track: c[9].parse().expect(line), xyxy: [b[0], b[1], b[2], b[3]], keypoints: None });
        }
    }
    frames
}

/// Runs the frames given (seq and time from their index) through the rules, then finishes.
fn count(config: &RulesConfig, frames: &[(usize, Vec<Observation>)]) -> (Vec<Event>, Vec<Occupancy>) {
    let mut counter = Counter::new(Rules::new(config).expect("valid rules"));
    let (mut events, mut occupancy) = (Vec::new(), Vec::new());
    for (seq, seen) in frames {
        let out = counter.update(FrameTime { seq: *seq as u64, time: *seq as f64 / FPS }, seen).expect("frames in order");
        events.extend(out.events);
        occupancy.extend(out.occupancy);
    }
    let out = counter.finish();
    events.extend(out.events);
    occupancy.extend(out.occupancy);
    (events, occupancy)
}

/// An event as a row of the oracle's CSV: kind,track,rule,frame,time,entered,dwell,before,
/// before_x,before_y,after_x,after_y,confirmed (empty cells as None).
#[derive(Debug, Clone, PartialEq, PartialOrd)]
struct Row {
    frame: u64,
    track: u64,
    kind: String,
    rule: String,
    time: f64,
    entered: Option<u64>,
    dwell: Option<f64>,
    before: Option<u64>,
    before_point: Option<(f64, f64)>,
    after_point: Option<(f64, f64)>,
    confirmed: Option<u64>,
}

fn parse_row(line: &str) -> Row {
    let c: Vec<&str> = line.split(',').collect();
    assert_eq!(c.len(), 13, "{line}");
    let opt = |i: usize| (!c[i].is_empty()).then(|| c[i].parse::<f64>().expect(line));
    let opt_u = |i: usize| (!c[i].is_empty()).then(|| c[i].parse::<u64>().expect(line));
    let point = |i: usize| opt(i).map(|x| (x, opt(i + 1).expect(line)));
    Row {
        kind: c[0].into(),
        track: c[1].parse().expect(line),
        rule: c[2].into(),
        frame: c[3].parse().expect(line),
        time: c[4].parse().expect(line),
        entered: opt_u(5),
        dwell: opt(6),
        before: opt_u(7),
        before_point: point(8),
        after_point: point(10),
        confirmed: opt_u(12),
    }
}

fn row(e: &Event) -> Row {
    let key = e.key();
    let mut r = Row {
        frame: key.frame,
        track: key.track,
        kind: key.kind.as_str().into(),
        rule: key.rule.into(),
        time: e.time(),
        entered: None,
        dwell: None,
        before: None,
        before_point: None,
        after_point: None,
        confirmed: None,
    };
    match e {
        Event::TrackStart { .. } | Event::TrackEnd { .. } => {}
        Event::ZoneEnter { confirmed, .. } => r.confirmed = Some(confirmed.seq),
        Event::ZoneExit { entered, dwell, .. } => (r.entered, r.dwell) = (Some(entered.seq), Some(*dwell)),
        Event::LineCross { direction, before, after, confirmed, .. } => {
            assert_eq!(key.kind.as_str(), if *direction == Direction::In { "line_in" } else { "line_out" });
            r.before = Some(before.at.seq);
            r.before_point = Some((before.point.x, before.point.y));
            r.after_point = Some((after.point.x, after.point.y));
            r.confirmed = Some(confirmed.seq);
        }
    }
    r
}

/// Compares the crate with the oracle on one set of tracks and rules (`zones/NAME.*`); returns
/// the rules and the frames.
fn compare(name: &str, tracks_path: &str, n_frames: usize) -> (RulesConfig, Vec<(usize, Vec<Observation>)>) {
    let config: RulesConfig = toml::from_str(&reference(&format!("zones/{name}.rules.toml"))).expect("the rules");
    let frames: Vec<(usize, Vec<Observation>)> = tracks(tracks_path).into_iter().enumerate().collect();
    assert_eq!(frames.len(), n_frames);
    let (events, mut occupancy) = count(&config, &frames);

    let keys: HashSet<_> = events.iter().map(|e| e.key()).collect();
    assert_eq!(keys.len(), events.len(), "two events share a key");
    let ours = sorted_rows(&events);
    let text = reference(&format!("zones/{name}.events.csv"));
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("kind,track,rule,frame,time,entered,dwell,before,before_x,before_y,after_x,after_y,confirmed"));
    let theirs: Vec<Row> = lines.map(parse_row).collect();

    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &theirs {
        *by_kind.entry(r.kind.as_str()).or_default() += 1;
    }
    let mismatches: Vec<usize> = (0..ours.len().max(theirs.len())).filter(|&i| ours.get(i) != theirs.get(i)).collect();
    println!("{name}: oracle events {} {by_kind:?}; ours {}; rows that differ: {}", theirs.len(), ours.len(), mismatches.len());
    let shown: Vec<String> =
        mismatches.iter().take(5).map(|&i| format!("row {i}: oracle {:?}\n        ours {:?}", theirs.get(i), ours.get(i))).collect();
    assert!(mismatches.is_empty(), "{}", shown.join("\n"));
    for kind in ["track_start", "track_end", "zone_enter", "zone_exit", "line_in", "line_out"] {
        assert!(by_kind.get(kind).is_some_and(|&n| n > 0), "the reference exercises no {kind}");
    }

    let text = reference(&format!("zones/{name}.occupancy.csv"));
    let theirs: Vec<Occupancy> = text
        .lines()
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            Occupancy { zone: c[0].into(), second: c[1].parse().expect(l), count: c[2].parse().expect(l) }
        })
        .collect();
    occupancy.sort_by(|a, b| {
        (config.zones.iter().position(|z| z.name == a.zone), a.second).cmp(&(config.zones.iter().position(|z| z.name == b.zone), b.second))
    });
    println!(
        "{name}: oracle occupancy samples {}; ours {}; nonzero {}",
        theirs.len(),
        occupancy.len(),
        theirs.iter().filter(|o| o.count > 0).count()
    );
    assert_eq!(occupancy, theirs);
    (config, frames)
}

fn sorted_rows(events: &[Event]) -> Vec<Row> {
    let mut rows: Vec<Row> = events.iter().map(row).collect();
    rows.sort_by(|a, b| (a.frame, a.track, &a.kind, &a.rule).cmp(&(b.frame, b.track, &b.kind, &b.rule)));
    rows
}

/// A recount from the store: every frame (`frames` keeps the empty ones, and spans in frames
/// count them), each frame's tracks in reverse order (as the store's query returns them, in no
/// promised order); the events must be the live ones.
fn assert_recount_equal(config: &RulesConfig, frames: &[(usize, Vec<Observation>)]) {
    let (live, _) = count(config, frames);
    let stored: Vec<(usize, Vec<Observation>)> = frames.iter().map(|(f, seen)| (*f, seen.iter().rev().copied().collect())).collect();
    let (recounted, _) = count(config, &stored);
    assert_eq!(sorted_rows(&recounted), sorted_rows(&live));
}

#[test]
fn events_and_occupancy_equal_the_oracle_on_vtest() {
    let (config, frames) = compare("vtest.avi", "tracks/vtest.avi.csv", 795);
    assert_recount_equal(&config, &frames);
}

#[test]
fn events_and_occupancy_equal_the_oracle_on_random_tracks() {
    let (config, frames) = compare("random", "zones/random.csv", 600);
    assert_recount_equal(&config, &frames);
}
