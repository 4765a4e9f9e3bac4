//! Turns the model's raw output into detections in source pixels: layout, score filter, NMS,
//! and the inverse letterbox.

use crate::error::DetectorError;
use crate::infer::RawOutput;
use crate::preprocess::Letterbox;

/// How an output tensor is laid out; boxes are in model-input pixels in every layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// YOLOv8/11 detect and pose: `[1, 4 + classes + dims x keypoints, anchors]`, channel-major:
    /// per anchor the box centre and size, one score per class (already sigmoid), then
    /// `x, y(, visibility)` per keypoint.
    Anchors { classes: usize, keypoints: usize, keypoint_dims: usize },
    /// YOLOv5: `[1, anchors, 5 + classes]`, row-major: centre, size, objectness, class scores;
    /// a detection's score is objectness x class score.
    V5 { classes: usize },
    /// End-to-end (YOLOv10, NMS-free exports): `[1, detections, 6]`: corners, score, class id,
    /// already suppressed.
    EndToEnd { classes: usize },
}

/// Most end-to-end exports keep 300 detections; anchor-based outputs have thousands of rows.
const END_TO_END_MAX_ROWS: i64 = 1000;
/// The class count assumed for a model without `names` whose layout does not tell it (COCO).
const DEFAULT_CLASSES: usize = 80;

impl Layout {
    /// Tells the layout from the output shape and the model's metadata: `names`, `kpt_shape` for
    /// pose models, and `end2end` where an exporter writes it. `num_names` is 0 without `names`.
    pub fn from_shape(shape: &[i64], num_names: usize, kpt_shape: Option<(usize, usize)>, end2end: bool) -> Result<Self, String> {
        let unsupported = |why: &str| format!("unsupported output layout {shape:?}: {why}");
        let expected = "expected [1, 4 + classes (+ keypoints), anchors] (YOLOv8/11), \
                        [1, anchors, 5 + classes] (YOLOv5) or [1, detections, 6] (end-to-end)";
        // -1 is a dynamic dimension (the batch, or the anchors in a dynamic-shape export).
        let (rows, cols) = match shape {
            [1 | -1, r, c] if (*r > 0 || *r == -1) && (*c > 4 || *c == -1) => (*r, *c),
            _ => return Err(unsupported(expected)),
        };
        let classes_or_default = if num_names > 0 { num_names } else { DEFAULT_CLASSES };
        if kpt_shape.is_none() && cols == 6 && (end2end || (1..=END_TO_END_MAX_ROWS).contains(&rows)) {
            return Ok(Layout::EndToEnd { classes: classes_or_default });
        }
        // Channel-major outputs have few channels and many anchors; row-major the other way round.
        if cols != -1 && (rows > cols || rows == -1) {
            let classes = cols as usize - 5;
            if kpt_shape.is_some() || classes == 0 || (num_names != 0 && classes != num_names) {
                return Err(unsupported(expected));
            }
            return Ok(Layout::V5 { classes });
        }
        if rows <= 4 {
            return Err(unsupported(expected));
        }
        let channels = rows as usize;
        let (classes, keypoints, keypoint_dims) = match kpt_shape {
            Some((k, d)) if (d == 2 || d == 3) && channels > 4 + k * d => (channels - 4 - k * d, k, d),
            Some((k, d)) => return Err(unsupported(&format!("metadata kpt_shape [{k}, {d}] does not fit"))),
            None if num_names == 0 || channels == 4 + num_names => (channels - 4, 0, 3),
            None => return Err(unsupported(&format!("{} channels do not fit {num_names} class names", channels))),
        };
        if num_names != 0 && classes != num_names {
            return Err(unsupported(&format!("{classes} class channels but {num_names} class names")));
        }
        Ok(Layout::Anchors { classes, keypoints, keypoint_dims })
    }

    /// Keypoints per detection (0 for a model without them).
    pub fn num_keypoints(&self) -> usize {
        match self {
            Layout::Anchors { keypoints, .. } => *keypoints,
            Layout::V5 { .. } | Layout::EndToEnd { .. } => 0,
        }
    }

    pub fn num_classes(&self) -> usize {
        match self {
            Layout::Anchors { classes, .. } | Layout::V5 { classes } | Layout::EndToEnd { classes } => *classes,
        }
    }
}

/// Ultralytics writes `names` as a Python dict literal: `{0: 'person', 1: 'bicycle'}`.
pub fn parse_names(s: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = s.trim().trim_start_matches('{');
    while let Some(colon) = rest.find(':') {
        let after = rest[colon + 1..].trim_start();
        let Some(quote) = after.chars().next().filter(|c| *c == '\'' || *c == '"') else { break };
        let Some(end) = after[1..].find(quote) else { break };
        names.push(after[1..1 + end].to_string());
        rest = &after[end + 2..];
    }
    names
}

/// `kpt_shape` is written as `[17, 3]`.
pub fn parse_kpt_shape(s: &str) -> Option<(usize, usize)> {
    let inner = s.trim().strip_prefix('[')?.strip_suffix(']')?;
    let mut it = inner.split(',').map(|v| v.trim().parse::<usize>());
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(k)), Some(Ok(d)), None) => Some((k, d)),
        _ => None,
    }
}

/// A detection in model-input pixels, before the inverse letterbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub class_id: usize,
    pub score: f32,
    /// x1, y1, x2, y2
    pub xyxy: [f32; 4],
    pub keypoints: Vec<[f32; 3]>,
}

pub struct Decoder {
    pub layout: Layout,
    pub conf: f32,
    pub iou: f32,
    /// Per class id: whether the class filter keeps it.
    pub keep_class: Vec<bool>,
    pub class_names: Vec<String>,
}

/// Ultralytics' caps: boxes entering NMS, and detections kept per frame (what the wire carries).
const MAX_NMS: usize = 30_000;
pub const MAX_DET: usize = wire::MAX_DETECTIONS;

impl Decoder {
    pub fn new(layout: Layout, class_names: Vec<String>, keep: &[String], conf: f32, iou: f32) -> Result<Self, DetectorError> {
        // A name the model lacks is a typo or the wrong model: refused, not silently dropped.
        if let Some(unknown) = keep.iter().map(|k| k.trim()).find(|k| !k.is_empty() && !class_names.iter().any(|n| n == k)) {
            return Err(DetectorError::Config(format!(
                "--classes: the model has no class {unknown:?} (its classes: {})",
                class_names.join(", ")
            )));
        }
        let keep_class: Vec<bool> = class_names.iter().map(|n| keep.iter().any(|k| k.trim() == n)).collect();
        Ok(Decoder { layout, conf, iou, keep_class, class_names })
    }

    /// The names of the classes kept.
    pub fn kept_classes(&self) -> Vec<&str> {
        self.class_names.iter().zip(&self.keep_class).filter(|(_, k)| **k).map(|(n, _)| n.as_str()).collect()
    }

    /// Candidates above the score threshold, of kept classes, after NMS, best first.
    pub fn candidates(&self, raw: &RawOutput) -> Result<Vec<Candidate>, DetectorError> {
        let [1, rows, cols] = raw.shape[..] else {
            return Err(DetectorError::Inference(format!("output shape {:?} is not [1, rows, cols]", raw.shape)));
        };
        if raw.data.len() != rows * cols {
            return Err(DetectorError::Inference(format!("output has {} values for shape {:?}", raw.data.len(), raw.shape)));
        }
        let mismatch = |want: usize| {
            DetectorError::Inference(format!("output shape {:?} does not match the layout's {want} values per box", raw.shape))
        };
        match self.layout {
            Layout::Anchors { classes, keypoints, keypoint_dims } => {
                let channels = 4 + classes + keypoints * keypoint_dims;
                if rows != channels {
                    return Err(mismatch(channels));
                }
                Ok(nms(self.anchors(raw, cols, classes, keypoints, keypoint_dims), self.iou, MAX_NMS, MAX_DET))
            }
            Layout::V5 { classes } => {
                if cols != 5 + classes {
                    return Err(mismatch(5 + classes));
                }
                Ok(nms(self.v5(raw, cols, classes), self.iou, MAX_NMS, MAX_DET))
            }
            Layout::EndToEnd { .. } => {
                if cols != 6 {
                    return Err(mismatch(6));
                }
                let mut found = self.end_to_end(raw);
                // Suppressed by the model already: only order and cap, as Ultralytics does.
                found.sort_by(|a, b| b.score.total_cmp(&a.score));
                found.truncate(MAX_DET);
                Ok(found)
            }
        }
    }

    /// Whether a (class, score) pair passes the threshold and the class filter.
    fn keeps(&self, class_id: usize, score: f32) -> bool {
        score > self.conf && self.keep_class.get(class_id).copied().unwrap_or(false)
    }

    fn anchors(&self, raw: &RawOutput, anchors: usize, classes: usize, keypoints: usize, keypoint_dims: usize) -> Vec<Candidate> {
        let at = |c: usize, i: usize| raw.data[c * anchors + i];
        let mut found = Vec::new();
        for i in 0..anchors {
            let (mut class_id, mut score) = (0, f32::MIN);
            for c in 0..classes {
                let s = at(4 + c, i);
                if s > score {
                    (class_id, score) = (c, s);
                }
            }
            if !self.keeps(class_id, score) {
                continue;
            }
            let kbase = 4 + classes;
            let kps = (0..keypoints)
                .map(|k| {
                    let c = kbase + k * keypoint_dims;
                    let vis = if keypoint_dims == 3 { at(c + 2, i) } else { 1.0 };
                    [at(c, i), at(c + 1, i), vis]
                })
                .collect();
            found.push(Candidate { class_id, score, xyxy: centre_to_corners(at(0, i), at(1, i), at(2, i), at(3, i)), keypoints: kps });
        }
        found
    }

    fn v5(&self, raw: &RawOutput, cols: usize, classes: usize) -> Vec<Candidate> {
        let mut found = Vec::new();
        for row in raw.data.chunks_exact(cols) {
            let objectness = row[4];
            if objectness <= self.conf {
                continue; // no class score can lift it above the threshold
            }
            let (mut class_id, mut best) = (0, f32::MIN);
            for (c, s) in row[5..5 + classes].iter().enumerate() {
                if *s > best {
                    (class_id, best) = (c, *s);
                }
            }
            let score = objectness * best;
            if self.keeps(class_id, score) {
                found.push(Candidate { class_id, score, xyxy: centre_to_corners(row[0], row[1], row[2], row[3]), keypoints: vec![] });
            }
        }
        found
    }

    fn end_to_end(&self, raw: &RawOutput) -> Vec<Candidate> {
        raw.data
            .chunks_exact(6)
            .filter_map(|r| {
                let class_id = r[5].round();
                (class_id >= 0.0 && self.keeps(class_id as usize, r[4])).then(|| Candidate {
                    class_id: class_id as usize,
                    score: r[4],
                    xyxy: [r[0], r[1], r[2], r[3]],
                    keypoints: vec![],
                })
            })
            .collect()
    }

    /// The frame's detections in source pixels, ready for the wire.
    pub fn decode(&self, raw: &RawOutput, lb: &Letterbox) -> Result<Vec<wire::Detection>, DetectorError> {
        Ok(self
            .candidates(raw)?
            .into_iter()
            .map(|c| {
                let (x1, y1) = lb.to_source(c.xyxy[0], c.xyxy[1]);
                let (x2, y2) = lb.to_source(c.xyxy[2], c.xyxy[3]);
                let keypoints = (!c.keypoints.is_empty()).then(|| {
                    c.keypoints
                        .iter()
                        .map(|[x, y, s]| {
                            let (sx, sy) = lb.to_source(*x, *y);
                            [sx, sy, *s]
                        })
                        .collect()
                });
                wire::Detection {
                    class: self.class_names[c.class_id].clone(),
                    score: c.score,
                    bbox: wire::BBox { x1, y1, x2, y2 },
                    keypoints,
                }
            })
            .collect())
    }
}

fn centre_to_corners(cx: f32, cy: f32, w: f32, h: f32) -> [f32; 4] {
    [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]
}

pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
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

/// Greedy per-class NMS, as torchvision's with Ultralytics' class offsets: best score first, a box
/// is dropped when it overlaps a kept box of its class by more than `iou_threshold`.
pub fn nms(mut found: Vec<Candidate>, iou_threshold: f32, max_in: usize, max_out: usize) -> Vec<Candidate> {
    found.sort_by(|a, b| b.score.total_cmp(&a.score));
    found.truncate(max_in);
    let mut kept: Vec<Candidate> = Vec::new();
    for c in found {
        if kept.len() == max_out {
            break;
        }
        if kept.iter().all(|k| k.class_id != c.class_id || iou(&k.xyxy, &c.xyxy) <= iou_threshold) {
            kept.push(c);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(class_id: usize, score: f32, xyxy: [f32; 4]) -> Candidate {
        Candidate { class_id, score, xyxy, keypoints: vec![] }
    }

    #[test]
    fn layouts_from_shape_and_metadata() {
        let pose = Layout::from_shape(&[1, 56, 8400], 1, Some((17, 3)), false).unwrap();
        assert_eq!(pose, Layout::Anchors { classes: 1, keypoints: 17, keypoint_dims: 3 });
        let det = Layout::from_shape(&[1, 84, 8400], 80, None, false).unwrap();
        assert_eq!(det, Layout::Anchors { classes: 80, keypoints: 0, keypoint_dims: 3 });
        assert_eq!(Layout::from_shape(&[1, 84, -1], 0, None, false).unwrap().num_classes(), 80);
        assert_eq!(Layout::from_shape(&[1, -1, 85], 0, None, false).unwrap(), Layout::V5 { classes: 80 });
        assert_eq!(Layout::from_shape(&[-1, 56, 8400], 1, Some((17, 3)), false).unwrap(), pose, "dynamic batch");
        // YOLOv5 and end-to-end exports, told apart by shape (and `end2end` metadata).
        assert_eq!(Layout::from_shape(&[1, 25200, 85], 80, None, false).unwrap(), Layout::V5 { classes: 80 });
        assert_eq!(Layout::from_shape(&[1, 25200, 6], 0, None, false).unwrap(), Layout::V5 { classes: 1 });
        assert_eq!(Layout::from_shape(&[1, 300, 6], 0, None, false).unwrap(), Layout::EndToEnd { classes: 80 });
        assert_eq!(Layout::from_shape(&[1, 300, 6], 2, None, false).unwrap(), Layout::EndToEnd { classes: 2 });
        assert_eq!(Layout::from_shape(&[1, 5000, 6], 1, None, true).unwrap(), Layout::EndToEnd { classes: 1 });
        // Unknown ones name the shape.
        let err = Layout::from_shape(&[1, 25200, 85], 3, None, false).unwrap_err();
        assert!(err.contains("[1, 25200, 85]"), "{err}");
        assert!(Layout::from_shape(&[1, 56, 8400], 80, None, false).is_err());
        assert!(Layout::from_shape(&[2, 3], 0, None, false).unwrap_err().contains("[2, 3]"));
        assert!(Layout::from_shape(&[1, 8400, 4], 0, None, false).is_err());
        assert!(Layout::from_shape(&[1, -1, -1], 0, None, false).is_err());
    }

    #[test]
    fn metadata_parsers() {
        assert_eq!(parse_names("{0: 'person', 1: \"traffic light\"}"), vec!["person", "traffic light"]);
        assert!(parse_names("").is_empty());
        assert_eq!(parse_kpt_shape("[17, 3]"), Some((17, 3)));
        assert_eq!(parse_kpt_shape("[17]"), None);
    }

    #[test]
    fn iou_of_known_rectangles() {
        // Two 10x10 squares overlapping in a 5x10 strip: 50 / (100 + 100 - 50) = 1/3.
        assert!((iou(&[0.0, 0.0, 10.0, 10.0], &[5.0, 0.0, 15.0, 10.0]) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(iou(&[0.0, 0.0, 1.0, 1.0], &[2.0, 2.0, 3.0, 3.0]), 0.0);
        assert_eq!(iou(&[0.0, 0.0, 4.0, 4.0], &[0.0, 0.0, 4.0, 4.0]), 1.0);
    }

    #[test]
    fn nms_keeps_best_per_overlap_group_and_per_class() {
        let found = vec![
            cand(0, 0.6, [1.0, 0.0, 11.0, 10.0]), // IoU 9/11 with the best: suppressed
            cand(0, 0.9, [0.0, 0.0, 10.0, 10.0]),
            cand(0, 0.5, [5.0, 0.0, 15.0, 10.0]), // IoU 1/3 with the best: kept at 0.45
            cand(1, 0.4, [0.0, 0.0, 10.0, 10.0]), // another class: never suppressed by class 0
            cand(0, 0.3, [100.0, 100.0, 110.0, 110.0]),
        ];
        let kept = nms(found.clone(), 0.45, 100, 100);
        let scores: Vec<f32> = kept.iter().map(|c| c.score).collect();
        assert_eq!(scores, vec![0.9, 0.5, 0.4, 0.3]);
        // At 0.3 the 1/3 overlap is suppressed too.
        assert_eq!(nms(found.clone(), 0.3, 100, 100).len(), 3);
        // Caps on what enters and what leaves.
        assert_eq!(nms(found.clone(), 0.45, 100, 2).len(), 2);
        assert_eq!(nms(found, 0.45, 1, 100).len(), 1);
    }

    /// A synthetic pose output with two anchors: one person box and one below the threshold.
    #[test]
    fn decodes_pose_output_into_source_pixels() {
        let layout = Layout::Anchors { classes: 1, keypoints: 1, keypoint_dims: 3 };
        let anchors = 2;
        // channels: cx, cy, w, h, score, kx, ky, kv
        let rows: [[f32; 2]; 8] =
            [[320.0, 10.0], [320.0, 10.0], [100.0, 4.0], [200.0, 4.0], [0.9, 0.1], [330.0, 0.0], [300.0, 0.0], [0.8, 0.0]];
        let raw = RawOutput { shape: vec![1, 8, anchors], data: rows.iter().flatten().copied().collect() };
        let dec = Decoder::new(layout, vec!["person".into()], &["person".into()], 0.25, 0.7).unwrap();
        // Source 768x576 letterboxed to 640x640: gain 5/6, 80 px of padding on top.
        let lb = Letterbox::new(768, 576, crate::preprocess::InputShape::Fixed { w: 640, h: 640 });
        let dets = dec.decode(&raw, &lb).unwrap();
        assert_eq!(dets.len(), 1);
        let d = &dets[0];
        assert_eq!(d.class, "person");
        assert_eq!(d.score, 0.9);
        // Input box (270, 220)-(370, 420) -> source ((270-0)*1.2, (220-80)*1.2) = (324, 168), (444, 408).
        let b = d.bbox;
        for (got, want) in [(b.x1, 324.0), (b.y1, 168.0), (b.x2, 444.0), (b.y2, 408.0)] {
            assert!((got - want).abs() < 1e-3, "{b:?}");
        }
        let k = d.keypoints.as_ref().unwrap()[0];
        assert!((k[0] - 396.0).abs() < 1e-3 && (k[1] - 264.0).abs() < 1e-3 && k[2] == 0.8, "{k:?}");
    }

    fn decoder(layout: Layout, names: &[&str], keep: &[&str]) -> Decoder {
        let names = names.iter().map(|s| s.to_string()).collect();
        let keep: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
        Decoder::new(layout, names, &keep, 0.25, 0.7).unwrap()
    }

    #[test]
    fn decodes_yolov5_rows_with_objectness_times_class_score() {
        // Rows: cx, cy, w, h, objectness, person, car.
        let rows: [[f32; 7]; 4] = [
            [100.0, 100.0, 20.0, 40.0, 0.9, 0.8, 0.1], // person 0.72
            [102.0, 100.0, 20.0, 40.0, 0.9, 0.5, 0.1], // person 0.45, overlaps the first: suppressed
            [300.0, 300.0, 10.0, 10.0, 0.9, 0.1, 0.9], // car: filtered out by class
            [500.0, 500.0, 10.0, 10.0, 0.2, 1.0, 0.0], // objectness under the threshold
        ];
        let raw = RawOutput { shape: vec![1, 4, 7], data: rows.iter().flatten().copied().collect() };
        let d = decoder(Layout::V5 { classes: 2 }, &["person", "car"], &["person"]);
        let c = d.candidates(&raw).unwrap();
        assert_eq!(c.len(), 1);
        assert!((c[0].score - 0.72).abs() < 1e-6);
        assert_eq!(c[0].xyxy, [90.0, 80.0, 110.0, 120.0]);
    }

    #[test]
    fn end_to_end_rows_are_taken_as_they_are() {
        // Rows: x1, y1, x2, y2, score, class. Overlapping boxes stay: the model has suppressed.
        let rows: [[f32; 6]; 4] = [
            [10.0, 10.0, 50.0, 90.0, 0.5, 0.0],
            [12.0, 10.0, 52.0, 90.0, 0.9, 0.0],
            [0.0, 0.0, 5.0, 5.0, 0.1, 0.0], // under the threshold
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0], // padding row
        ];
        let raw = RawOutput { shape: vec![1, 4, 6], data: rows.iter().flatten().copied().collect() };
        let d = decoder(Layout::EndToEnd { classes: 1 }, &["person"], &["person"]);
        let c = d.candidates(&raw).unwrap();
        let scores: Vec<f32> = c.iter().map(|c| c.score).collect();
        assert_eq!(scores, vec![0.9, 0.5]);
        assert_eq!(c[1].xyxy, [10.0, 10.0, 50.0, 90.0]);
        // A class id outside the model's classes is not kept.
        let raw = RawOutput { shape: vec![1, 1, 6], data: vec![0.0, 0.0, 1.0, 1.0, 0.9, 7.0] };
        assert!(d.candidates(&raw).unwrap().is_empty());
    }

    #[test]
    fn class_filter_must_name_a_model_class() {
        let layout = Layout::Anchors { classes: 1, keypoints: 0, keypoint_dims: 3 };
        let err = Decoder::new(layout, vec!["person".into()], &["car".into()], 0.25, 0.7).err().unwrap();
        assert!(err.to_string().contains("car"));
    }
}
