//! Fidelity: the detector's detections against Ultralytics' own `predict` on the same frames, made
//! by scripts/reference_outputs.sh: with the square model, against `predict` on the same ONNX file
//! (tests/reference/ultralytics/); with the rectangular model (dynamic height and width), against
//! `predict` on the PyTorch checkpoint both were exported from, whose letterbox is rectangular too
//! (tests/reference/ultralytics-rect/). No broker: `--output stdout`, default --conf 0.25 and
//! --iou 0.7, as the references were made with.
//!
//! Per frame, boxes are matched one-to-one, best IoU first, at IoU >= 0.5:
//! - recall: reference detections with score >= 0.35, matched among all the detector's;
//! - precision: detector detections with score >= 0.35, matched among all the reference's.
//!
//! Matching each side's confident boxes against everything the other side reported keeps a score
//! that straddles 0.35 (0.351 against 0.349) from counting as a miss. Both must be >= 0.98 over
//! all frames of each source, and the keypoints of matched pairs must be close.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pipeline_tests::*;
use serde_json::Value;
use wire::FrameMessage;

const SCORE_MIN: f32 = 0.35;
const IOU_MIN: f32 = 0.5;
const RECALL_MIN: f64 = 0.98;
const PRECISION_MIN: f64 = 0.98;
/// Keypoints the reference calls visible (confidence >= 0.5) are compared.
const KPT_VISIBLE: f32 = 0.5;
/// Bound on the mean absolute keypoint error (px, over x and y of visible keypoints of matched
/// pairs). Measured: 0.004 px on vtest.avi (largest single error 1.33 px), 0.000 on the images
/// (the reference is rounded to 0.001). 0.1 px leaves 25x margin and still catches a geometry
/// slip: one input pixel of letterbox offset is 1.2 source px on vtest.avi, and the same test
/// one frame off gives 3.76 px.
const KPT_MAE_MAX: f64 = 0.1;

/// One detection, from either side: box, score, keypoints, all in source pixels.
#[derive(Debug, Clone)]
struct Det {
    xyxy: [f32; 4],
    score: f32,
    kpts: Vec<[f32; 3]>,
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// Greedy one-to-one matching, best IoU first, of `queries` (indices into `a`) against all of `b`.
/// Returns the pairs (index in a, index in b).
fn greedy_match(a: &[Det], queries: &[usize], b: &[Det]) -> Vec<(usize, usize)> {
    let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
    for &i in queries {
        for (j, d) in b.iter().enumerate() {
            let v = iou(&a[i].xyxy, &d.xyxy);
            if v >= IOU_MIN {
                pairs.push((v, i, j));
            }
        }
    }
    pairs.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    let (mut used_a, mut used_b) = (vec![false; a.len()], vec![false; b.len()]);
    let mut out = Vec::new();
    for (_, i, j) in pairs {
        if !used_a[i] && !used_b[j] {
            used_a[i] = true;
            used_b[j] = true;
            out.push((i, j));
        }
    }
    out
}

#[derive(Debug, Default)]
struct Figures {
    frames: usize,
    ref_boxes: usize,
    det_boxes: usize,
    ref_confident: usize,
    ref_matched: usize,
    det_confident: usize,
    det_matched: usize,
    iou_sum: f64,
    score_abs_sum: f64,
    score_abs_max: f64,
    kpt_abs_sum: f64,
    kpt_abs_max: f64,
    kpt_count: usize,
}

impl Figures {
    fn recall(&self) -> f64 {
        if self.ref_confident == 0 {
            1.0
        } else {
            self.ref_matched as f64 / self.ref_confident as f64
        }
    }
    fn precision(&self) -> f64 {
        if self.det_confident == 0 {
            1.0
        } else {
            self.det_matched as f64 / self.det_confident as f64
        }
    }
    fn kpt_mae(&self) -> f64 {
        if self.kpt_count == 0 {
            0.0
        } else {
            self.kpt_abs_sum / self.kpt_count as f64
        }
    }

    /// Adds one frame: `r` the reference's detections, `d` the detector's.
    fn add(&mut self, r: &[Det], d: &[Det]) {
        self.frames += 1;
        self.ref_boxes += r.len();
        self.det_boxes += d.len();
        let confident = |v: &[Det]| (0..v.len()).filter(|&i| v[i].score >= SCORE_MIN).collect::<Vec<_>>();
        let rq = confident(r);
        let recall_pairs = greedy_match(r, &rq, d);
        self.ref_confident += rq.len();
        self.ref_matched += recall_pairs.len();
        let dq = confident(d);
        self.det_confident += dq.len();
        self.det_matched += greedy_match(d, &dq, r).len();
        for (i, j) in recall_pairs {
            let (a, b) = (&r[i], &d[j]);
            self.iou_sum += iou(&a.xyxy, &b.xyxy) as f64;
            let ds = (a.score - b.score).abs() as f64;
            self.score_abs_sum += ds;
            self.score_abs_max = self.score_abs_max.max(ds);
            for (ka, kb) in a.kpts.iter().zip(&b.kpts) {
                if ka[2] >= KPT_VISIBLE {
                    for e in [(ka[0] - kb[0]).abs() as f64, (ka[1] - kb[1]).abs() as f64] {
                        self.kpt_abs_sum += e;
                        self.kpt_abs_max = self.kpt_abs_max.max(e);
                        self.kpt_count += 1;
                    }
                }
            }
        }
    }

    fn report(&self, name: &str) -> String {
        let m = self.ref_matched.max(1) as f64;
        format!(
            "fidelity {name}: frames={} boxes ref={} detector={} | score>={SCORE_MIN}: ref={} matched={} recall={:.4} \
             detector={} matched={} precision={:.4} | matched pairs: mean IoU={:.4} score |diff| mean={:.4} max={:.4} \
             keypoints (ref conf>={KPT_VISIBLE}) n={} MAE={:.3} px max={:.2} px",
            self.frames,
            self.ref_boxes,
            self.det_boxes,
            self.ref_confident,
            self.ref_matched,
            self.recall(),
            self.det_confident,
            self.det_matched,
            self.precision(),
            self.iou_sum / m,
            self.score_abs_sum / m,
            self.score_abs_max,
            self.kpt_count / 2,
            self.kpt_mae(),
            self.kpt_abs_max,
        )
    }
}

/// A reference and the model the detector runs to be compared with it.
struct Against {
    dir: &'static str,
    model: &'static str,
}

/// `predict` on the square ONNX file.
const SQUARE: Against = Against { dir: "tests/reference/ultralytics", model: "models/yolo11n-pose.onnx" };
/// `predict` on the checkpoint (rectangular letterbox), against the dynamic-shape export.
const RECT: Against = Against { dir: "tests/reference/ultralytics-rect", model: "models/yolo11n-pose-rect.onnx" };

/// The images Ultralytics ships, copied beside the square reference.
fn asset(name: &str) -> PathBuf {
    repo_root().join(SQUARE.dir).join(name)
}

/// The reference: detections per frame index, and the document's header for the report.
fn load_reference(against: &Against, name: &str) -> Result<(Vec<Vec<Det>>, Value)> {
    let path = repo_root().join(against.dir).join(format!("{name}.json"));
    let doc: Value = serde_json::from_slice(&std::fs::read(&path).with_context(|| format!("{}", path.display()))?)?;
    let num = |v: &Value| v.as_f64().map(|x| x as f32).context("number");
    let mut frames = Vec::new();
    for f in doc["frames"].as_array().context("frames")? {
        let mut dets = Vec::new();
        for d in f.as_array().context("frame")? {
            let d = d.as_array().context("detection")?;
            let kpts = d[5]
                .as_array()
                .context("keypoints")?
                .iter()
                .map(|k| Ok([num(&k[0])?, num(&k[1])?, num(&k[2])?]))
                .collect::<Result<Vec<_>>>()?;
            dets.push(Det { xyxy: [num(&d[0])?, num(&d[1])?, num(&d[2])?, num(&d[3])?], score: num(&d[4])?, kpts });
        }
        frames.push(dets);
    }
    let mut head = doc;
    head["frames"] = Value::Null;
    Ok((frames, head))
}

/// The detector's detections per frame_seq, from `--output stdout`, and its log.
fn run_detector(source: &Path, model: &Path) -> Result<(Vec<Vec<Det>>, String)> {
    // Read while it runs: a video's JSON lines would fill a pipe nobody reads.
    let child = Spawned::start(Command::new(bin("detector")).args([
        "--source",
        source.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--output",
        "stdout",
    ]))?;
    let mut lines = Vec::new();
    while let Some(line) = child.next_line(Duration::from_secs(120))? {
        lines.push(line);
    }
    let (status, rest, stderr) = child.finish(Duration::from_secs(60))?;
    lines.extend(rest);
    ensure!(status.success(), "detector failed: {stderr}");
    let mut by_seq: BTreeMap<u64, Vec<Det>> = BTreeMap::new();
    for line in &lines {
        let msg = FrameMessage::from_json(line.as_bytes())?;
        let dets = msg
            .detections
            .iter()
            .map(|d| Det {
                xyxy: [d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2],
                score: d.score,
                kpts: d.keypoints.clone().unwrap_or_default(),
            })
            .collect();
        ensure!(by_seq.insert(msg.frame_seq, dets).is_none(), "frame_seq {} twice", msg.frame_seq);
    }
    let n = by_seq.len() as u64;
    ensure!(by_seq.keys().copied().eq(0..n), "frame_seq not 0..{n}");
    Ok((by_seq.into_values().collect(), stderr))
}

fn check_source(against: &Against, name: &str, source: PathBuf) -> Result<()> {
    let (reference, head) = load_reference(against, name)?;
    let (detected, log) = run_detector(&source, &repo_root().join(against.model))?;
    if against.dir == RECT.dir {
        ensure!(log.contains("the source's aspect within 640x640, stride 32"), "the rectangular letterbox is not in use: {log}");
    }
    ensure!(
        detected.len() == reference.len(),
        "{name}: the detector published {} frames, the reference has {}",
        detected.len(),
        reference.len()
    );
    let mut fig = Figures::default();
    for (r, d) in reference.iter().zip(&detected) {
        fig.add(r, d);
    }
    eprintln!("{}", fig.report(&format!("{name} ({})", against.model)));
    eprintln!("fidelity {name}: reference made with {} on {} frame_check {}", head["versions"], head["model"], head["frame_check"]);
    if detected.len() > 1 {
        // The same comparison with the detector one frame late: shows that frame indices line up.
        let mut shifted = Figures::default();
        for (r, d) in reference[1..].iter().zip(&detected) {
            shifted.add(r, d);
        }
        eprintln!(
            "fidelity {name}: for contrast, one frame off: recall={:.4} precision={:.4} keypoint MAE={:.3} px",
            shifted.recall(),
            shifted.precision(),
            shifted.kpt_mae()
        );
    }
    ensure!(fig.ref_confident > 0, "{name}: the reference has no detection with score >= {SCORE_MIN}");
    ensure!(fig.recall() >= RECALL_MIN, "{name}: recall {:.4} < {RECALL_MIN}", fig.recall());
    ensure!(fig.precision() >= PRECISION_MIN, "{name}: precision {:.4} < {PRECISION_MIN}", fig.precision());
    ensure!(fig.kpt_mae() <= KPT_MAE_MAX, "{name}: keypoint MAE {:.3} px > {KPT_MAE_MAX}", fig.kpt_mae());
    Ok(())
}

#[test]
fn matches_ultralytics_on_vtest_video() -> Result<()> {
    check_source(&SQUARE, "vtest.avi", sample("vtest.avi"))
}

#[test]
fn matches_ultralytics_on_basketball_image() -> Result<()> {
    check_source(&SQUARE, "basketball1.png", sample("basketball1.png"))
}

#[test]
fn matches_ultralytics_on_bus_image() -> Result<()> {
    check_source(&SQUARE, "bus.jpg", asset("bus.jpg"))
}

#[test]
fn matches_ultralytics_on_zidane_image() -> Result<()> {
    check_source(&SQUARE, "zidane.jpg", asset("zidane.jpg"))
}

// 768x576 runs at 640x480, a portrait 810x1080 at 480x640, 1280x720 at 640x384.
#[test]
fn rect_model_matches_ultralytics_pytorch_on_vtest_video() -> Result<()> {
    check_source(&RECT, "vtest.avi", sample("vtest.avi"))
}

#[test]
fn rect_model_matches_ultralytics_pytorch_on_basketball_image() -> Result<()> {
    check_source(&RECT, "basketball1.png", sample("basketball1.png"))
}

#[test]
fn rect_model_matches_ultralytics_pytorch_on_bus_image() -> Result<()> {
    check_source(&RECT, "bus.jpg", asset("bus.jpg"))
}

#[test]
fn rect_model_matches_ultralytics_pytorch_on_zidane_image() -> Result<()> {
    check_source(&RECT, "zidane.jpg", asset("zidane.jpg"))
}

#[test]
fn int8_model_agrees_with_fp32_on_frames_it_was_not_calibrated_on() -> Result<()> {
    int8_against_fp32("models/yolo11n-pose.onnx", "models/yolo11n-pose-int8.onnx")
}

#[test]
fn rect_int8_model_agrees_with_rect_fp32_on_frames_it_was_not_calibrated_on() -> Result<()> {
    int8_against_fp32("models/yolo11n-pose-rect.onnx", "models/yolo11n-pose-rect-int8.onnx")
}

/// A shipped int8 model against its fp32 one, both through the detector, on frames of the half
/// of `vtest.avi` that `scripts/quantize_model.sh` does not calibrate on (it calibrates on the
/// first half): the same matching, at recall and precision >= 0.95.
fn int8_against_fp32(fp32_model: &str, int8_model: &str) -> Result<()> {
    let dir = TempDir::new("int8")?;
    let clip = dir.join("second-half.mp4");
    // vtest.avi is 79.5 s; the calibration frames are all before 39.8 s.
    h264_clip(&sample("vtest.avi"), &clip, 41, Some(20))?;
    let (fp32, _) = run_detector(&clip, &repo_root().join(fp32_model))?;
    let (int8, _) = run_detector(&clip, &repo_root().join(int8_model))?;
    ensure!(fp32.len() == int8.len() && fp32.len() >= 150, "{} fp32 frames, {} int8", fp32.len(), int8.len());
    let mut fig = Figures::default();
    for (r, d) in fp32.iter().zip(&int8) {
        fig.add(r, d);
    }
    eprintln!("{}", fig.report(&format!("{int8_model} against {fp32_model}")));
    ensure!(fig.ref_confident > 100, "too few confident fp32 boxes to judge: {}", fig.ref_confident);
    ensure!(fig.recall() >= 0.95, "int8 recall {:.4} < 0.95", fig.recall());
    ensure!(fig.precision() >= 0.95, "int8 precision {:.4} < 0.95", fig.precision());
    Ok(())
}

#[test]
fn matching_is_one_to_one_best_iou_first() {
    let det = |x: f32, s: f32| Det { xyxy: [x, 0.0, x + 10.0, 10.0], score: s, kpts: vec![] };
    // Reference 0 overlaps both detections; detection 0 is its best, and reference 1's only one.
    let r = vec![det(0.0, 0.9), det(2.0, 0.8)];
    let d = vec![det(1.0, 0.9), det(40.0, 0.9)];
    // IoU(r0, d0) = 9/11, IoU(r1, d0) = 9/11 too: ties go to the lower index; one of them is left.
    let pairs = greedy_match(&r, &[0, 1], &d);
    assert_eq!(pairs, vec![(0, 0)]);
    let mut f = Figures::default();
    f.add(&r, &d);
    assert_eq!((f.ref_confident, f.ref_matched, f.det_confident, f.det_matched), (2, 1, 2, 1));
    assert_eq!((f.recall(), f.precision()), (0.5, 0.5));
    // A score straddling the threshold is no miss: the detector's 0.34 still matches a 0.36.
    let mut f = Figures::default();
    f.add(&[det(0.0, 0.36)], &[det(0.0, 0.34)]);
    assert_eq!((f.recall(), f.precision(), f.det_confident), (1.0, 1.0, 0));
}
