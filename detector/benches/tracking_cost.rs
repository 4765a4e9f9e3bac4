//! What tracking and the zone and line rules add to a frame's time at 20 people a frame, against
//! the model's own time on the same machine, in one run:
//!   cargo bench -p detector --bench tracking_cost [-- VIDEO [MODEL [ROUNDS]]]
//! - model: ONNX Runtime on letterboxed frames of the video (40 distinct frames, cycled; one thread
//!   per core, the detector's default), each call timed alone, after a warm-up.
//! - tracking: `analytics::ByteTracker` (Ultralytics' `bytetrack.yaml`) then `analytics::Counter`
//!   with the rules of tests/reference/zones/vtest.avi.rules.toml (3 zones, 3 lines), on synthetic
//!   frames of 20 people walking across a 768x576 frame, each a box with 17 keypoints, scores and
//!   positions jittered from a fixed seed (some fall below the high threshold, a few are missed);
//!   each frame timed alone, from the detections to the counter's output.
//!
//! ROUNDS (default 5) times: 40 model calls, then 2,000 tracking frames (the tracker and the
//! counter carry on across rounds), so both see the machine in the same state. Per-frame times are
//! pooled per part. Last line: `tracking_over_model=<mean over mean> goal=0.03 met=<bool>`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use analytics::{ByteTracker, Counter, FrameTime, Keypoint, Observation, Rules, RulesConfig};
use detector::infer::Model;
use detector::preprocess::letterbox;
use detector::source::{Source, SourceOptions};

const PEOPLE: usize = 20;
const MODEL_FRAMES: usize = 40;
const TRACK_FRAMES: usize = 2_000;
const FPS: f64 = 10.0;
const WIDTH: f32 = 768.0;
const HEIGHT: f32 = 576.0;
const GOAL: f64 = 0.03;

/// xorshift64*: the same people every run, without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32
    }

    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.next()
    }
}

/// A walker: where its feet are, its velocity (px a frame) and its size.
struct Person {
    x: f32,
    y: f32,
    vx: f32,
    vy: f32,
    w: f32,
    h: f32,
}

/// COCO keypoints as fractions of the box (x, y): face, shoulders, elbows, wrists, hips, knees,
/// ankles.
const POSE: [(f32, f32); 17] = [
    (0.5, 0.07),
    (0.45, 0.05),
    (0.55, 0.05),
    (0.38, 0.07),
    (0.62, 0.07),
    (0.25, 0.2),
    (0.75, 0.2),
    (0.15, 0.38),
    (0.85, 0.38),
    (0.1, 0.52),
    (0.9, 0.52),
    (0.32, 0.52),
    (0.68, 0.52),
    (0.33, 0.75),
    (0.67, 0.75),
    (0.35, 0.97),
    (0.65, 0.97),
];

/// One synthetic frame: each person moves on (turning at the frame's edges) and is detected, or
/// missed (3 %); a box's score is mostly high, sometimes low (the tracker's second stage).
fn frame(people: &mut [Person], rng: &mut Rng) -> (Vec<analytics::Detection>, Vec<[Keypoint; 17]>) {
    let (mut dets, mut kps) = (Vec::new(), Vec::new());
    for p in people.iter_mut() {
        p.x += p.vx;
        p.y += p.vy;
        if !(p.w / 2.0..WIDTH - p.w / 2.0).contains(&p.x) {
            p.vx = -p.vx;
        }
        if !(p.h..HEIGHT).contains(&p.y) {
            p.vy = -p.vy;
        }
        if rng.next() < 0.03 {
            continue;
        }
        let (jx, jy) = (rng.range(-1.0, 1.0), rng.range(-1.0, 1.0));
        let (x1, y1) = (p.x - p.w / 2.0 + jx, p.y - p.h + jy);
        let score = if rng.next() < 0.1 { rng.range(0.11, 0.25) } else { rng.range(0.3, 0.95) };
        dets.push(analytics::Detection { xyxy: [x1, y1, x1 + p.w, y1 + p.h], score, class: 0 });
        kps.push(POSE.map(|(fx, fy)| Keypoint {
            x: f64::from(x1 + fx * p.w + rng.range(-1.5, 1.5)),
            y: f64::from(y1 + fy * p.h + rng.range(-1.5, 1.5)),
            score: f64::from(rng.range(0.3, 1.0)),
        }));
    }
    (dets, kps)
}

/// p50, p99 and mean of per-frame times, in microseconds.
fn summary(times: &mut [Duration]) -> (f64, f64, f64) {
    times.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mean = times.iter().map(|d| us(*d)).sum::<f64>() / times.len() as f64;
    (us(times[times.len() / 2]), us(times[times.len() * 99 / 100]), mean)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    // cargo bench passes `--bench`; the rest are ours.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let video = args.first().map(PathBuf::from).unwrap_or_else(|| root.join("samples/vtest.avi"));
    let model_path = args.get(1).map(PathBuf::from).unwrap_or_else(|| root.join("models/yolo11n-pose.onnx"));
    let rounds: usize = args.get(2).map(|a| a.parse()).transpose()?.unwrap_or(5);
    let threads = std::thread::available_parallelism()?.get();

    let mut model = Model::load(&model_path, threads)?;
    let opts = SourceOptions { looped: false, open_timeout: Duration::from_secs(20), read_timeout: Duration::from_secs(10) };
    let mut source = Source::open(video.to_str().ok_or("path")?, opts)?;
    let mut inputs = Vec::new();
    while inputs.len() < MODEL_FRAMES && source.next_frame()?.is_some() {
        let mut t = Vec::new();
        let lb = letterbox(&source.image()?, model.input, &mut t)?;
        inputs.push((t, (lb.dst_w, lb.dst_h)));
    }
    for (t, size) in inputs.iter().take(5) {
        model.run(&[t], *size)?;
    }

    let rules_file = root.join("tests/reference/zones/vtest.avi.rules.toml");
    let rules: RulesConfig = toml::from_str(&std::fs::read_to_string(&rules_file)?)?;
    let (zones, lines) = (rules.zones.len(), rules.lines.len());
    let mut counter = Counter::new(Rules::new(&rules)?);
    let mut tracker = ByteTracker::new(analytics::Config::default());
    let mut rng = Rng(0x5eed_1234_abcd_0042);
    let mut people: Vec<Person> = (0..PEOPLE)
        .map(|_| {
            let h = rng.range(80.0, 130.0);
            Person {
                x: rng.range(40.0, WIDTH - 40.0),
                y: rng.range(h, HEIGHT),
                vx: rng.range(-6.0, 6.0),
                vy: rng.range(-3.0, 3.0),
                w: h * rng.range(0.35, 0.5),
                h,
            }
        })
        .collect();
    println!(
        "video={} model={} threads={threads} rounds={rounds} people={PEOPLE} zones={zones} lines={lines} model_frames={} track_frames={}",
        video.display(),
        model_path.display(),
        rounds * MODEL_FRAMES,
        rounds * TRACK_FRAMES
    );

    let (mut model_times, mut track_times) = (Vec::new(), Vec::new());
    let (mut seq, mut detections, mut tracked, mut events) = (0u64, 0usize, 0usize, 0usize);
    for _ in 0..rounds {
        for i in 0..MODEL_FRAMES {
            let (t, size) = &inputs[i % inputs.len()];
            let start = Instant::now();
            model.run(&[t], *size)?;
            model_times.push(start.elapsed());
        }
        for _ in 0..TRACK_FRAMES {
            // The synthetic frame is made outside the timing: in the detector it is the model's.
            let (dets, kps) = frame(&mut people, &mut rng);
            let at = FrameTime { seq, time: seq as f64 / FPS };
            seq += 1;
            let start = Instant::now();
            let boxes = tracker.update(&dets, at.time);
            let observations: Vec<Observation> =
                boxes.iter().map(|b| Observation { track: b.id, xyxy: b.xyxy.map(f64::from), keypoints: Some(kps[b.detection]) }).collect();
            let out = counter.update(at, &observations)?;
            track_times.push(start.elapsed());
            detections += dets.len();
            tracked += boxes.len();
            events += out.events.len();
        }
    }
    let (m50, m99, mmean) = summary(&mut model_times);
    let (t50, t99, tmean) = summary(&mut track_times);
    let frames = track_times.len() as f64;
    println!("part=model frames={} p50_us={m50:.0} p99_us={m99:.0} mean_us={mmean:.0}", model_times.len());
    println!(
        "part=tracking frames={} detections_per_frame={:.1} tracked_per_frame={:.1} events={events} p50_us={t50:.1} p99_us={t99:.1} mean_us={tmean:.1}",
        track_times.len(),
        detections as f64 / frames,
        tracked as f64 / frames,
    );
    let ratio = tmean / mmean;
    println!("p50_over_p50={:.5} p99_over_p50={:.5}", t50 / m50, t99 / m50);
    println!("tracking_over_model={ratio:.5} goal={GOAL} met={}", ratio < GOAL);
    Ok(())
}
