//! A hand-made scene whose right counts are known by construction: a door line and a queue zone,
//! people crossing together, one standing on the line, one turning back within the cooldown, one
//! passing beside the door, one occluded in the queue briefly and one for longer than the grace,
//! one counted by its ankles, and one still queueing when the scene ends. 10 frames per second.

use analytics::{Counter, Direction, Event, FrameTime, Keypoint, Observation, Rules, RulesConfig};

const FRAMES: u64 = 200;

const RULES: &str = r#"
# The door: a horizontal line at y = 300 from x = 100 to 500; "in" is downwards on screen.
[[lines]]
name = "door"
from = [100, 300]
to = [500, 300]
in_side = "right"
hold_frames = 3
dead_band_px = 5.0
cooldown = { seconds = 3.0 }

[[zones]]
name = "queue"
polygon = [[650, 100], [850, 100], [850, 280], [650, 280]]
enter_frames = 3
exit_grace = { frames = 10 }
"#;

/// A person: where their anchor is at each frame (None: not seen).
struct Person {
    track: u64,
    at: Box<dyn Fn(u64) -> Option<(f64, f64)>>,
    /// The anchor is the ankles' midpoint, and the box bottom 20 px below it.
    ankles: bool,
}

/// From (x, y0) at frame f0 at `speed` px per frame along y until frame f1.
fn walk_y(x: f64, y0: f64, speed: f64, f0: u64, f1: u64) -> impl Fn(u64) -> Option<(f64, f64)> {
    move |f| (f0..=f1).contains(&f).then(|| (x, y0 + speed * (f - f0) as f64))
}

fn scene() -> Vec<Person> {
    let person = |track, at: Box<dyn Fn(u64) -> Option<(f64, f64)>>| Person { track, at, ankles: false };
    vec![
        // Two side by side through the door, on the same frames: two ins.
        person(1, Box::new(walk_y(250.0, 200.0, 5.0, 0, 40))),
        person(2, Box::new(walk_y(290.0, 200.0, 5.0, 0, 40))),
        // Up to the line, then on it: jitter of 3 px (within the dead band), then of 8 px every
        // frame (never holding a side for 3 frames), then back up: nothing.
        person(
            3,
            Box::new(|f| match f {
                0..=9 => Some((400.0, 250.0 + 5.0 * f as f64)),
                10..=59 => Some((400.0, if f % 2 == 0 { 303.0 } else { 297.0 })),
                60..=99 => Some((400.0, if f % 2 == 0 { 308.0 } else { 292.0 })),
                100..=110 => Some((400.0, 300.0 - 5.0 * (f - 100) as f64)),
                _ => None,
            }),
        ),
        // In, back out within the cooldown, in again: one in.
        person(
            4,
            Box::new(|f| match f {
                0..=16 => Some((150.0, 250.0 + 5.0 * f as f64)),
                17..=28 => Some((150.0, 330.0 - 5.0 * (f - 16) as f64)),
                29..=44 => Some((150.0, 270.0 + 5.0 * (f - 28) as f64)),
                _ => None,
            }),
        ),
        // Beside the door (x = 560, past its end): nothing.
        person(5, Box::new(walk_y(560.0, 200.0, 5.0, 0, 40))),
        // Out through the door.
        person(6, Box::new(walk_y(350.0, 400.0, -5.0, 100, 140))),
        // Into the queue at its edge (x = 850) on frame 10, hidden on frames 40..=44, out after
        // frame 90 (x = 850 is the last inside): dwell 8 s.
        person(
            7,
            Box::new(|f| match f {
                0..=30 => Some((900.0 - 5.0 * f as f64, 200.0)),
                40..=44 => None,
                31..=80 => Some((750.0, 200.0)),
                81..=100 => Some((750.0 + 10.0 * (f - 80) as f64, 200.0)),
                _ => None,
            }),
        ),
        // In the queue, hidden for 20 frames (more than the grace): out at 119, in again at 140.
        person(8, Box::new(|f| (matches!(f, 100..=119 | 140..=179)).then_some((700.0, 150.0)))),
        // Still in the queue when the scene ends.
        person(9, Box::new(|f| (f >= 150).then_some((800.0, 250.0)))),
        // Counted by the ankles: they cross on frame 60; the box bottom, 20 px lower, on 56.
        Person { track: 10, at: Box::new(walk_y(450.0, 250.0, 5.0, 50, 70)), ankles: true },
    ]
}

fn observation(p: &Person, (x, y): (f64, f64)) -> Observation {
    if !p.ankles {
        return Observation { track: p.track, xyxy: [x - 15.0, y - 80.0, x + 15.0, y], keypoints: None };
    }
    let mut keypoints = [Keypoint { x, y: y - 40.0, score: 0.9 }; 17];
    keypoints[15] = Keypoint { x: x - 5.0, y, score: 0.9 };
    keypoints[16] = Keypoint { x: x + 5.0, y, score: 0.9 };
    Observation { track: p.track, xyxy: [x - 15.0, y - 80.0, x + 15.0, y + 20.0], keypoints: Some(keypoints) }
}

#[test]
fn the_scene_counts_what_it_was_built_to() {
    let config: RulesConfig = toml::from_str(RULES).unwrap();
    let mut counter = Counter::new(Rules::new(&config).unwrap());
    let people = scene();
    let (mut events, mut occupancy) = (Vec::new(), Vec::new());
    for f in 0..FRAMES {
        let seen: Vec<Observation> = people.iter().filter_map(|p| (p.at)(f).map(|a| observation(p, a))).collect();
        let out = counter.update(FrameTime { seq: f, time: f as f64 / 10.0 }, &seen).unwrap();
        events.extend(out.events);
        occupancy.extend(out.occupancy);
    }
    let out = counter.finish();
    events.extend(out.events);
    occupancy.extend(out.occupancy);

    let mut crossings: Vec<(u64, Direction, u64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::LineCross { track, direction, after, .. } => Some((*track, *direction, after.at.seq)),
            _ => None,
        })
        .collect();
    crossings.sort_by_key(|c| c.0);
    // Tracks 1 and 2 together (first below the dead band on frame 22), 4 once, 6 out, 10 by its
    // ankles (first below the dead band on frame 62).
    assert_eq!(
        crossings,
        vec![(1, Direction::In, 22), (2, Direction::In, 22), (4, Direction::In, 12), (6, Direction::Out, 122), (10, Direction::In, 62)]
    );

    let mut visits: Vec<(u64, u64, u64, i64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::ZoneExit { track, at, entered, dwell, .. } => Some((*track, entered.seq, at.seq, (dwell * 1000.0).round() as i64)),
            _ => None,
        })
        .collect();
    visits.sort();
    assert_eq!(visits, vec![(7, 10, 90, 8000), (8, 100, 119, 1900), (8, 140, 179, 3900), (9, 150, 199, 4900)]);
    let enters = events.iter().filter(|e| matches!(e, Event::ZoneEnter { .. })).count();
    assert_eq!(enters, 4);

    let starts = events.iter().filter(|e| matches!(e, Event::TrackStart { .. })).count();
    let ends = events.iter().filter(|e| matches!(e, Event::TrackEnd { .. })).count();
    assert_eq!((starts, ends), (10, 10));

    // Track 7 counts from frame 12 (its third inside) until its exit is decided on frame 101;
    // track 8 from 102 to 129 and from 142 to 189 (its grace runs out on 190); track 9 from 152.
    let queue: Vec<(i64, u32)> = occupancy.iter().map(|o| (o.second, o.count)).collect();
    let want = [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 2, 2, 2, 2, 1];
    assert_eq!(queue, want.iter().enumerate().map(|(s, &n)| (s as i64, n)).collect::<Vec<_>>());
}
