//! `--snapshot-dir`: JPEGs of frames with detections, boxes and skeletons drawn, at most one per
//! `--snapshot-every-s` of video, heads blurred unless `--snapshot-blur-heads false`
//! ([`crate::privacy`]). Paced by the frames' timestamps, not the wall clock, so a file gives the
//! same snapshots however fast it is processed.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use opencv::core::Mat;
use opencv::prelude::*;

use crate::config::Config;
use crate::privacy;

/// COCO keypoint pairs joined in the drawn skeleton (1-based, as Ultralytics lists them).
const SKELETON: [(usize, usize); 19] = [
    (16, 14),
    (14, 12),
    (17, 15),
    (15, 13),
    (12, 13),
    (6, 12),
    (7, 13),
    (6, 7),
    (6, 8),
    (7, 9),
    (8, 10),
    (9, 11),
    (2, 3),
    (1, 2),
    (1, 3),
    (2, 4),
    (3, 5),
    (4, 6),
    (5, 7),
];
/// Keypoints below this visibility are not drawn.
const MIN_KEYPOINT_SCORE: f32 = 0.5;
const BOX: Rgb<u8> = Rgb([0, 255, 0]);
const BONE: Rgb<u8> = Rgb([255, 64, 0]);

pub struct Snapshots {
    dir: PathBuf,
    every_ms: i64,
    camera: String,
    last_pts: Option<i64>,
    blur_heads: bool,
}

impl Snapshots {
    pub fn new(dir: &Path, every_s: f64, camera: &str) -> Self {
        // The camera id goes into file names: keep it to safe characters.
        let camera = camera.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        Snapshots { dir: dir.to_path_buf(), every_ms: (every_s * 1000.0).round() as i64, camera, last_pts: None, blur_heads: true }
    }

    /// As the flags say: `--snapshot-every-s`, `--snapshot-blur-heads`.
    pub fn configured(dir: &Path, cfg: &Config, camera: &str) -> Self {
        Snapshots { blur_heads: cfg.snapshot_blur_heads, ..Snapshots::new(dir, cfg.snapshot_every_s, camera) }
    }

    /// Whether a frame at `pts_ms` may be snapshotted; a timeline that restarts (a reopened
    /// stream) starts the pacing again.
    fn due(&self, pts_ms: i64) -> bool {
        self.last_pts.is_none_or(|last| pts_ms < last || pts_ms - last >= self.every_ms)
    }

    /// Writes the frame if it has detections and is due. A failure is logged, never fatal: a
    /// snapshot is a convenience, the message is what counts.
    pub fn offer(&mut self, frame: &Mat, msg: &wire::FrameMessage) {
        if msg.detections.is_empty() || !self.due(msg.pts_ms) {
            return;
        }
        let path = self.dir.join(format!("{}-{:08}.jpg", self.camera, msg.frame_seq));
        match to_rgb(frame).and_then(|mut img| {
            if self.blur_heads {
                privacy::blur_heads(&mut img, &msg.detections);
            }
            draw(&mut img, &msg.detections, self.blur_heads);
            img.save(&path).map_err(|e| e.to_string())
        }) {
            Ok(()) => {
                self.last_pts = Some(msg.pts_ms);
                tracing::debug!(path = %path.display(), "snapshot written");
            }
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "snapshot not written"),
        }
    }
}

fn to_rgb(frame: &Mat) -> Result<RgbImage, String> {
    if frame.typ() != opencv::core::CV_8UC3 || !frame.is_continuous() {
        return Err("expected a continuous 8-bit 3-channel frame".into());
    }
    let bgr = frame.data_bytes().map_err(|e| e.to_string())?;
    let rgb: Vec<u8> = bgr.chunks_exact(3).flat_map(|p| [p[2], p[1], p[0]]).collect();
    RgbImage::from_raw(frame.cols() as u32, frame.rows() as u32, rgb).ok_or_else(|| "frame size mismatch".into())
}

/// Draws each detection's box (2 px) and, where it has keypoints, its skeleton (without the face's
/// bones over blurred heads).
pub fn draw(img: &mut RgbImage, detections: &[wire::Detection], heads_blurred: bool) {
    for d in detections {
        let b = d.bbox;
        for inset in 0..2 {
            let i = inset as f32;
            let (x1, y1, x2, y2) = (b.x1 + i, b.y1 + i, b.x2 - i, b.y2 - i);
            line(img, (x1, y1), (x2, y1), BOX);
            line(img, (x2, y1), (x2, y2), BOX);
            line(img, (x2, y2), (x1, y2), BOX);
            line(img, (x1, y2), (x1, y1), BOX);
        }
        if let Some(kps) = &d.keypoints {
            for (a, b) in SKELETON {
                if heads_blurred && (privacy::is_face_keypoint(a - 1) || privacy::is_face_keypoint(b - 1)) {
                    continue;
                }
                if let (Some(p), Some(q)) = (kps.get(a - 1), kps.get(b - 1)) {
                    if p[2] >= MIN_KEYPOINT_SCORE && q[2] >= MIN_KEYPOINT_SCORE {
                        line(img, (p[0], p[1]), (q[0], q[1]), BONE);
                    }
                }
            }
        }
    }
}

/// A 1-pixel line, clipped to the image.
fn line(img: &mut RgbImage, (x0, y0): (f32, f32), (x1, y1): (f32, f32), colour: Rgb<u8>) {
    let steps = (x1 - x0).abs().max((y1 - y0).abs()).ceil().max(1.0) as usize;
    for s in 0..=steps {
        let t = s as f32 / steps as f32;
        let (x, y) = ((x0 + (x1 - x0) * t).round(), (y0 + (y1 - y0) * t).round());
        if x >= 0.0 && y >= 0.0 && (x as u32) < img.width() && (y as u32) < img.height() {
            img.put_pixel(x as u32, y as u32, colour);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(bbox: [f32; 4], keypoints: Option<Vec<[f32; 3]>>) -> wire::Detection {
        let [x1, y1, x2, y2] = bbox;
        wire::Detection { class: "person".into(), score: 0.9, bbox: wire::BBox { x1, y1, x2, y2 }, keypoints }
    }

    #[test]
    fn draws_boxes_and_visible_bones_only() {
        let mut img = RgbImage::new(100, 100);
        let mut kps = vec![[0.0, 0.0, 0.0]; 17];
        kps[5] = [30.0, 50.0, 0.9]; // left shoulder
        kps[6] = [70.0, 50.0, 0.9]; // right shoulder: the (6, 7) bone is drawn
        kps[7] = [30.0, 80.0, 0.1]; // left elbow, not visible: the (6, 8) bone is not
        kps[0] = [50.0, 20.0, 0.9]; // nose
        kps[1] = [45.0, 15.0, 0.9]; // left eye: the (1, 2) bone
        let people = [det([10.0, 10.0, 90.0, 95.0], Some(kps)), det([-50.0, -50.0, 500.0, 5.0], None)];
        let mut blurred = img.clone();
        draw(&mut img, &people, false);
        draw(&mut blurred, &people, true);
        assert_eq!(*img.get_pixel(48, 18), BONE); // between the nose and the eye
        assert_eq!(*blurred.get_pixel(48, 18), Rgb([0, 0, 0])); // not over a blurred head
        assert_eq!(*blurred.get_pixel(50, 50), BONE); // the rest of the skeleton is drawn
        assert_eq!(*img.get_pixel(10, 40), BOX); // left edge
        assert_eq!(*img.get_pixel(11, 40), BOX); // 2 px thick
        assert_eq!(*img.get_pixel(50, 10), BOX); // top edge
        assert_eq!(*img.get_pixel(50, 50), BONE); // between the shoulders
        assert_eq!(*img.get_pixel(30, 65), Rgb([0, 0, 0])); // towards the hidden elbow
        assert_eq!(*img.get_pixel(50, 5), BOX); // a box partly outside is clipped, not dropped
        assert_eq!(*img.get_pixel(50, 30), Rgb([0, 0, 0]));
    }

    #[test]
    fn paced_by_pts_and_reset_by_a_restarted_timeline() {
        let mut s = Snapshots::new(Path::new("/tmp"), 5.0, "cam/1 x");
        assert_eq!(s.camera, "cam_1_x");
        assert!(s.due(0));
        s.last_pts = Some(1000);
        assert!(!s.due(5999));
        assert!(s.due(6000));
        assert!(s.due(200)); // pts went back: a reopened stream
    }
}
