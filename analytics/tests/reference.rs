//! The tracker against Ultralytics 8.4.190's own ByteTrack, fed the same detections: recorded by
//! scripts/reference_tracks.sh in tests/reference/tracks/ (`model.track` on vtest.avi with the
//! repo's ONNX file, and hand-made scenarios). Every detection must get the same track id (or
//! none) and the same Kalman box within 1e-3 px; the scenarios' point is also asserted by name,
//! on the reference's rows, so that what docs/tracking.md says of the reference is checked. And
//! the assignment against the `lap` package itself, ties included.

use std::collections::BTreeMap;
use std::path::PathBuf;

use analytics::{lapjv, ByteTracker, Config, Detection};

const BOX_TOLERANCE_PX: f32 = 1e-3;

/// One detection as recorded, with the reference tracker's answer for it.
#[derive(Debug, Clone)]
struct Row {
    detection: Detection,
    /// Track id and Kalman box, when the reference tracked it.
    track: Option<(u64, [f32; 4])>,
}

/// A recorded scenario: its frames, each its detections in the order fed.
struct Scenario {
    frames: Vec<Vec<Row>>,
}

fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/tracks")
}

/// Reads a CSV of scripts/reference_tracks.py: `# frames NAME N` lines, a header, then rows
/// `scenario,frame,det,x1,y1,x2,y2,score,class,id,tx1,ty1,tx2,ty2`. Floats are parsed from
/// their text straight to f32, as they were written.
fn read(file: &str) -> BTreeMap<String, Scenario> {
    let path = reference_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut scenarios = BTreeMap::new();
    let mut lines = text.lines();
    for line in lines.by_ref() {
        if let Some(rest) = line.strip_prefix("# frames ") {
            let (name, n) = rest.rsplit_once(' ').expect("# frames NAME N");
            let n: usize = n.parse().expect("a frame count");
            scenarios.insert(name.to_string(), Scenario { frames: vec![Vec::new(); n] });
        } else if !line.starts_with('#') {
            assert_eq!(line, "scenario,frame,det,x1,y1,x2,y2,score,class,id,tx1,ty1,tx2,ty2");
            break;
        }
    }
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells.len(), 14, "{line}");
        let f32s = |r: std::ops::Range<usize>| -> Vec<f32> { cells[r].iter().map(|c| c.parse().expect(line)).collect() };
        let b = f32s(3..8);
        let detection = Detection { xyxy: [b[0], b[1], b[2], b[3]], score: b[4], class: cells[8].parse().expect(line) };
        let track = (!cells[9].is_empty()).then(|| {
            let t = f32s(10..14);
            (cells[9].parse().expect(line), [t[0], t[1], t[2], t[3]])
        });
        let frames = &mut scenarios.get_mut(cells[0]).expect("a scenario with a frame count").frames;
        let frame = &mut frames[cells[1].parse::<usize>().expect(line)];
        assert_eq!(cells[2].parse::<usize>().expect(line), frame.len(), "detections in order: {line}");
        frame.push(Row { detection, track });
    }
    scenarios
}

/// What the comparison found over a scenario.
#[derive(Debug, Default)]
struct Comparison {
    detections: usize,
    same_id: usize,
    tracked: usize,
    max_box_error: f32,
    /// The first few differences, for the failure message.
    differences: Vec<String>,
}

/// Runs a fresh tracker (the reference's settings: bytetrack.yaml) over a scenario.
fn compare(scenario: &Scenario) -> Comparison {
    let mut tracker = ByteTracker::new(Config::default());
    let mut cmp = Comparison::default();
    for (f, rows) in scenario.frames.iter().enumerate() {
        let detections: Vec<Detection> = rows.iter().map(|r| r.detection).collect();
        let tracks = tracker.update(&detections, f as f64);
        let mut ours: Vec<Option<(u64, [f32; 4])>> = vec![None; rows.len()];
        for t in &tracks {
            assert!(ours[t.detection].is_none(), "frame {f}: two tracks on detection {}", t.detection);
            ours[t.detection] = Some((t.id, t.xyxy));
        }
        for (d, (row, ours)) in rows.iter().zip(ours).enumerate() {
            cmp.detections += 1;
            match (row.track, ours) {
                (None, None) => cmp.same_id += 1,
                (Some((id, b)), Some((our_id, our_b))) if id == our_id => {
                    cmp.same_id += 1;
                    cmp.tracked += 1;
                    let err = b.iter().zip(our_b).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                    cmp.max_box_error = cmp.max_box_error.max(err);
                }
                (theirs, ours) => {
                    if cmp.differences.len() < 10 {
                        cmp.differences.push(format!("frame {f} detection {d}: reference {theirs:?}, ours {ours:?}"));
                    }
                }
            }
        }
    }
    cmp
}

fn assert_equal(name: &str, scenario: &Scenario) {
    let c = compare(scenario);
    println!(
        "{name}: {} frames, {} detections, {} tracked, id equality {:.4} %, max box error {:e} px",
        scenario.frames.len(),
        c.detections,
        c.tracked,
        100.0 * c.same_id as f64 / c.detections as f64,
        c.max_box_error
    );
    assert_eq!(c.same_id, c.detections, "{name}: ids differ:\n{}", c.differences.join("\n"));
    assert!(c.max_box_error <= BOX_TOLERANCE_PX, "{name}: box error {} px", c.max_box_error);
}

#[test]
fn vtest_tracks_equal_ultralytics() {
    let scenarios = read("vtest.avi.csv");
    let vtest = &scenarios["vtest.avi"];
    assert_eq!(vtest.frames.len(), 795);
    assert_equal("vtest.avi", vtest);
}

#[test]
fn synthetic_scenarios_equal_ultralytics() {
    let scenarios = read("synthetic.csv");
    assert!(scenarios.len() >= 10);
    for (name, s) in &scenarios {
        assert_equal(name, s);
    }
}

/// The reference's id per detection of a frame of a scenario.
fn ids(scenarios: &BTreeMap<String, Scenario>, name: &str, frame: usize) -> Vec<Option<u64>> {
    scenarios[name].frames[frame].iter().map(|r| r.track.map(|t| t.0)).collect()
}

#[test]
fn synthetic_scenarios_show_what_they_are_named_for() {
    let s = read("synthetic.csv");
    // B's unconfirmed track took id 2 and failed; C, born two frames later, is 3.
    assert_eq!(ids(&s, "id_used_up", 1), [Some(1), None]);
    assert_eq!(ids(&s, "id_used_up", 3), [Some(1), None]);
    assert_eq!(ids(&s, "id_used_up", 4), [Some(1), Some(3)]);
    // Lost for 30 frames: found again. For 31: removed, yet matched on the next frame; then lost
    // for one frame, it is gone at once, and A's new track (4 frames on) is id 2. For 32: a new id.
    assert_eq!(ids(&s, "lost_30_frames", 32), [Some(1)]);
    assert_eq!(ids(&s, "lost_31_frames", 33), [Some(1)]);
    assert_eq!(ids(&s, "lost_31_frames", 36), [None]);
    assert_eq!(ids(&s, "lost_31_frames", 37), [Some(2)]);
    assert_eq!(ids(&s, "lost_32_frames", 34), [None]);
    assert_eq!(ids(&s, "lost_32_frames", 35), [Some(2)]);
    // Once 1000 newer removals have pushed R's out of the list, R lost for a frame comes back as 1.
    let cap = &s["removed_list_cap"];
    let last = cap.frames.len() - 1;
    assert!(cap.frames[last - 2].is_empty());
    assert_eq!(ids(&s, "removed_list_cap", last - 1), [Some(1)]);
    // Ties go as lapjv breaks them: the first detection to the second track.
    assert_eq!(ids(&s, "tie_two_tracks", 1), [Some(2), Some(1)]);
    assert_eq!(ids(&s, "tie_between_tracks", 2), [Some(1)]);
    // A cost equal to the threshold (0.5, second stage) matches; a fused cost that rounds to
    // 0.8 in float32 (0.800000012) does not, and the detection starts a track instead, whose id 2
    // is used up when the person is found again on the next frame.
    assert_eq!(ids(&s, "cost_at_threshold", 2), [Some(1)]);
    assert_eq!(ids(&s, "fused_cost_rounds_above_threshold", 2), [None]);
    assert_eq!(ids(&s, "fused_cost_rounds_above_threshold", 4), [Some(1)]);
    // 0.2 keeps a tracked track but starts none; 0.1 is not above the low threshold; a lost track
    // is not matched by a low score; 0.25 is a high score.
    assert_eq!(ids(&s, "second_stage_scores", 2), [Some(1), None]);
    assert_eq!(ids(&s, "second_stage_scores", 3), [None]);
    assert_eq!(ids(&s, "second_stage_scores", 4), [None]);
    assert_eq!(ids(&s, "second_stage_scores", 5), [Some(1)]);
    // Boxes of zero height or width are not tracked and do not keep a track.
    assert_eq!(ids(&s, "zero_height", 0), [None, Some(1)]);
    assert_eq!(ids(&s, "zero_height", 1), [Some(1), None]);
    assert_eq!(ids(&s, "zero_height", 2), [None]);
    assert_eq!(ids(&s, "zero_height", 3), [Some(1)]);
    // A lost track on the same box as a tracked, older one is dropped: the second person on that
    // box starts a new track (3) instead of taking 2 back.
    assert_eq!(ids(&s, "duplicate_lost_track", 3), [Some(1), Some(3)]);
}

#[test]
fn lapjv_equals_lap_on_random_matrices() {
    let path = reference_dir().join("lapjv.csv");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut cases = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')).skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        let (rows, cols): (usize, usize) = (cells[0].parse().unwrap(), cells[1].parse().unwrap());
        let limit: f64 = cells[2].parse().unwrap();
        let cost: Vec<f64> = cells[3].split(' ').map(|c| c.parse().unwrap()).collect();
        let x: Vec<Option<usize>> = cells[4].split(' ').map(|c| c.parse::<i64>().unwrap().try_into().ok()).collect();
        assert_eq!(lapjv::assign(&cost, rows, cols, limit).row_to_col, x, "{line}");
        cases += 1;
    }
    assert_eq!(cases, 2000);
}
