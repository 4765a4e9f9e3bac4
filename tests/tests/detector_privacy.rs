//! Snapshots with heads blurred (`--snapshot-blur-heads`, on by default) against the same frames
//! with it off, on the real detector, model and sample media (`--output stdout`, no broker). The
//! head regions are computed here from the published keypoints, by the rule docs/detector.md
//! states ("Snapshots and privacy").

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use image::RgbImage;
use pipeline_tests::*;
use wire::{Detection, FrameMessage};

/// Keypoints drawn and face keypoints used score at least this.
const MIN_SCORE: f32 = 0.5;
/// Pixels this close to a drawn box edge or bone are left out of the sharpness measure: the
/// drawing is on top of the blur and would dominate it.
const DRAWN_MARGIN: f32 = 3.0;
/// The sharpness of a head is measured this far inside its region: at the region's edge the blur
/// meets sharp pixels, and JPEG spreads that edge's ringing into the blocks that hold it.
const INSET: u32 = 4;
/// A head whose unblurred sharpness is at least this has detail to lose; blurred heads still
/// measure 4 to 10 here, JPEG's own blocks and ringing.
const DETAILED: f32 = 12.0;
/// JPEG codes 16 x 16 blocks (colour at half resolution), and a decoder smooths colour across a
/// block's edge: a block that holds a blurred pixel can change this far from it.
const JPEG_REACH: f32 = 17.0;

/// COCO skeleton (0-based), as snapshots draw it.
const SKELETON: [(usize, usize); 19] = [
    (15, 13),
    (13, 11),
    (16, 14),
    (14, 12),
    (11, 12),
    (5, 11),
    (6, 12),
    (5, 6),
    (5, 7),
    (6, 8),
    (7, 9),
    (8, 10),
    (1, 2),
    (0, 1),
    (0, 2),
    (1, 3),
    (2, 4),
    (3, 5),
    (4, 6),
];

/// A drawn line, from one point to another.
type Segment = ((f32, f32), (f32, f32));

struct Run {
    messages: BTreeMap<u64, FrameMessage>,
    snapshots: BTreeMap<u64, RgbImage>,
}

fn detect(source: &Path, model: &Path, blur: Option<bool>, dir: &Path) -> Result<Run> {
    let mut cmd = Command::new(bin("detector"));
    cmd.arg("--source").arg(source).arg("--model").arg(model).args(["--output", "stdout", "--camera-id", "cam", "--snapshot-every-s", "0"]);
    cmd.arg("--snapshot-dir").arg(dir);
    if let Some(on) = blur {
        cmd.args(["--snapshot-blur-heads", if on { "true" } else { "false" }]);
    }
    let out = run(&mut cmd, Duration::from_secs(300))?;
    ensure!(out.status.success(), "detector failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut messages = BTreeMap::new();
    for line in std::str::from_utf8(&out.stdout)?.lines() {
        let m = FrameMessage::from_json(line.as_bytes())?;
        messages.insert(m.frame_seq, m);
    }
    let mut snapshots = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let seq: u64 = path.file_stem().unwrap().to_str().unwrap().trim_start_matches("cam-").parse()?;
        snapshots.insert(seq, image::open(&path)?.to_rgb8());
    }
    Ok(Run { messages, snapshots })
}

/// The head region, x0 y0 x1 y1 in whole pixels, as docs/detector.md states it: around the face
/// keypoints scoring >= 0.5 when there are two or more (twice their farthest distance wide, at
/// least half the box; 1.2 times as tall), else the top of the box (a fifth of its height, at
/// least half its width); within the box and the frame.
fn head(d: &Detection, w: u32, h: u32) -> Option<[u32; 4]> {
    let b = d.bbox;
    let (bw, bh) = (b.x2 - b.x1, b.y2 - b.y1);
    let clip = |r: [f32; 4]| {
        let x0 = r[0].max(b.x1).max(0.0).floor() as u32;
        let y0 = r[1].max(b.y1).max(0.0).floor() as u32;
        let x1 = (r[2].min(b.x2).min(w as f32).ceil().max(0.0) as u32).min(w);
        let y1 = (r[3].min(b.y2).min(h as f32).ceil().max(0.0) as u32).min(h);
        (x0 < x1 && y0 < y1).then_some([x0, y0, x1, y1])
    };
    let face: Vec<&[f32; 3]> = d.keypoints.iter().flat_map(|k| &k[..5]).filter(|p| p[2] >= MIN_SCORE).collect();
    if face.len() >= 2 {
        let n = face.len() as f32;
        let (cx, cy) = (face.iter().map(|p| p[0]).sum::<f32>() / n, face.iter().map(|p| p[1]).sum::<f32>() / n);
        let spread = face.iter().flat_map(|p| face.iter().map(move |q| (p[0] - q[0]).hypot(p[1] - q[1]))).fold(0.0, f32::max);
        let rw = (2.0 * spread).max(0.5 * bw);
        if let Some(r) = clip([cx - rw / 2.0, cy - 0.6 * rw, cx + rw / 2.0, cy + 0.6 * rw]) {
            return Some(r);
        }
    }
    clip([b.x1, b.y1, b.x2, b.y1 + (0.2 * bh).max(0.5 * bw).min(bh)])
}

fn distance_to_segment(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 == 0.0 { 0.0 } else { (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0) };
    (p.0 - a.0 - t * dx).hypot(p.1 - a.1 - t * dy)
}

/// What snapshots draw over a frame (with the face's bones, which only the unblurred run has), as
/// segments.
fn drawn(detections: &[Detection]) -> Vec<Segment> {
    let mut segments = Vec::new();
    for d in detections {
        let b = d.bbox;
        let corners = [(b.x1, b.y1), (b.x2, b.y1), (b.x2, b.y2), (b.x1, b.y2)];
        (0..4).for_each(|i| segments.push((corners[i], corners[(i + 1) % 4])));
        if let Some(k) = &d.keypoints {
            for (a, b) in SKELETON {
                if k[a][2] >= MIN_SCORE && k[b][2] >= MIN_SCORE {
                    segments.push(((k[a][0], k[a][1]), (k[b][0], k[b][1])));
                }
            }
        }
    }
    segments
}

fn luma(img: &RgbImage, x: u32, y: u32) -> f32 {
    let p = img.get_pixel(x, y);
    0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2])
}

/// Mean absolute Laplacian (4 neighbours) of the luma over the region's pixels whose neighbours
/// are in the region too and that are clear of anything drawn; and how many pixels that is.
fn sharpness(img: &RgbImage, r: [u32; 4], lines: &[Segment]) -> (f32, usize) {
    let (mut sum, mut n) = (0.0, 0);
    for y in r[1] + INSET..r[3].saturating_sub(INSET) {
        for x in r[0] + INSET..r[2].saturating_sub(INSET) {
            let p = (x as f32, y as f32);
            if lines.iter().any(|&(a, b)| distance_to_segment(p, a, b) < DRAWN_MARGIN) {
                continue;
            }
            let lap = luma(img, x - 1, y) + luma(img, x + 1, y) + luma(img, x, y - 1) + luma(img, x, y + 1) - 4.0 * luma(img, x, y);
            sum += lap.abs();
            n += 1;
        }
    }
    (if n == 0 { 0.0 } else { sum / n as f32 }, n)
}

/// What the comparison of the two runs found.
#[derive(Debug, Default)]
struct Found {
    snapshots: usize,
    /// Head regions measured (at least `min_pixels` clear pixels), and of them placed from face
    /// keypoints.
    heads: usize,
    from_keypoints: usize,
    /// The highest ratio of a head's sharpness blurred over unblurred, and the mean ratio.
    worst_ratio: f32,
    mean_ratio: f32,
    /// Pixels compared outside every box (beyond JPEG's reach), and the largest difference of a
    /// channel among them.
    outside_pixels: usize,
    outside_max_diff: u8,
    /// The largest difference of a channel inside a head region, and inside a box beyond JPEG's
    /// reach below its head region.
    head_max_diff: u8,
    below_head_max_diff: u8,
}

fn compare(source: &Path, model: &Path, min_pixels: usize) -> Result<Found> {
    let dir = TempDir::new("privacy")?;
    let (blurred_dir, plain_dir) = (dir.join("blurred"), dir.join("plain"));
    // The default is on: no flag for the blurred run.
    let blurred = detect(source, model, None, &blurred_dir)?;
    let plain = detect(source, model, Some(false), &plain_dir)?;
    let people = |r: &Run| r.messages.iter().map(|(seq, m)| (*seq, m.detections.clone())).collect::<Vec<_>>();
    assert!(people(&blurred) == people(&plain), "the two runs found the same people");
    assert_eq!(blurred.snapshots.keys().collect::<Vec<_>>(), plain.snapshots.keys().collect::<Vec<_>>());
    let mut found = Found { snapshots: blurred.snapshots.len(), ..Found::default() };
    let mut ratios = Vec::new();
    for (seq, b_img) in &blurred.snapshots {
        let p_img = &plain.snapshots[seq];
        let msg = &blurred.messages[seq];
        let (w, h) = (msg.frame_width, msg.frame_height);
        assert_eq!((b_img.dimensions(), p_img.dimensions()), ((w, h), (w, h)));
        let lines = drawn(&msg.detections);
        let diff = |x: u32, y: u32| {
            let (bp, pp) = (b_img.get_pixel(x, y), p_img.get_pixel(x, y));
            (0..3).map(|c| bp[c].abs_diff(pp[c])).max().unwrap()
        };
        for d in &msg.detections {
            let Some(r) = head(d, w, h) else { continue };
            for y in r[1]..r[3] {
                for x in r[0]..r[2] {
                    found.head_max_diff = found.head_max_diff.max(diff(x, y));
                }
            }
            let (x0, x1) = (d.bbox.x1.max(0.0) as u32, (d.bbox.x2.ceil() as u32).min(w));
            for y in r[3] + JPEG_REACH as u32..(d.bbox.y2.ceil() as u32).min(h) {
                for x in x0..x1 {
                    found.below_head_max_diff = found.below_head_max_diff.max(diff(x, y));
                }
            }
            let (p_sharp, n) = sharpness(p_img, r, &lines);
            if n < min_pixels {
                continue;
            }
            let (b_sharp, _) = sharpness(b_img, r, &lines);
            let ratio = b_sharp / p_sharp;
            // A head with detail to lose loses most of it; one without (a blurred figure at the
            // frame's edge) is near JPEG's floor on both runs and only counts in the mean.
            assert!(
                p_sharp < DETAILED || ratio < 0.6,
                "frame {seq}: head {r:?} of {:?}: sharpness {b_sharp:.2} blurred against {p_sharp:.2} ({n} pixels)",
                d.bbox
            );
            ratios.push(ratio);
            found.heads += 1;
            let face = d.keypoints.iter().flat_map(|k| &k[..5]).filter(|p| p[2] >= MIN_SCORE).count();
            found.from_keypoints += usize::from(face >= 2);
        }
        // Outside every box, beyond JPEG's reach of it, the two snapshots are the same picture.
        let far = |x: u32, y: u32| {
            let (x, y) = (x as f32 + 0.5, y as f32 + 0.5);
            msg.detections.iter().all(|d| {
                let b = d.bbox;
                x < b.x1 - JPEG_REACH || x > b.x2 + JPEG_REACH || y < b.y1 - JPEG_REACH || y > b.y2 + JPEG_REACH
            })
        };
        for (x, y, bp) in b_img.enumerate_pixels().filter(|(x, y, _)| far(*x, *y)) {
            let pp = p_img.get_pixel(x, y);
            let diff = (0..3).map(|c| bp[c].abs_diff(pp[c])).max().unwrap();
            found.outside_max_diff = found.outside_max_diff.max(diff);
            found.outside_pixels += 1;
        }
    }
    found.worst_ratio = ratios.iter().copied().fold(0.0, f32::max);
    found.mean_ratio = ratios.iter().sum::<f32>() / ratios.len().max(1) as f32;
    println!("{}: {found:?}", source.display());
    Ok(found)
}

#[test]
fn heads_blurred_in_a_still() -> Result<()> {
    let found = compare(&sample("basketball1.png"), &model(), 100)?;
    // Both players: one face seen (nose, eyes and an ear), one turned away (an ear alone: the top
    // of its box).
    assert_eq!((found.snapshots, found.heads, found.from_keypoints), (1, 2, 1), "{found:?}");
    assert!(found.mean_ratio < 0.35, "{found:?}");
    assert!(found.outside_pixels > 100_000, "{found:?}");
    assert_eq!(found.outside_max_diff, 0, "{found:?}");
    Ok(())
}

#[test]
fn heads_blurred_in_a_video() -> Result<()> {
    let dir = TempDir::new("privacy-clip")?;
    let clip = dir.join("vtest-3s.mp4");
    h264_mp4(&sample("vtest.avi"), &clip, Some(3))?;
    let found = compare(&clip, &model(), 30)?;
    // 27 of the 30 frames have people; heads of both kinds are measured.
    assert_eq!(found.snapshots, 27, "{found:?}");
    assert!(found.heads >= 30 && found.from_keypoints >= 10 && found.heads > found.from_keypoints, "{found:?}");
    assert!(found.mean_ratio < 0.35, "{found:?}");
    assert!(found.outside_pixels > 27 * 300_000, "{found:?}");
    assert_eq!(found.outside_max_diff, 0, "{found:?}");
    Ok(())
}

#[test]
fn a_model_without_keypoints_blurs_the_top_of_each_box() -> Result<()> {
    // tests/models/yolov5-layout.onnx finds one person, no keypoints, at (180, 80)-(220, 160) in
    // basketball1.png (tests/tests/detector_layouts.rs).
    let found = compare(&sample("basketball1.png"), &repo_root().join("tests/models/yolov5-layout.onnx"), 100)?;
    assert_eq!((found.snapshots, found.heads, found.from_keypoints), (1, 1, 0), "{found:?}");
    // The top 20 px of the box are blurred: a flat part of the picture, so they change little (up
    // to 12 levels in a channel when this was written) and their sharpness proves nothing; the
    // two runs encode the same pixels elsewhere, so any change is the blur's. The rest of the
    // box and everything outside it are untouched.
    assert!(found.head_max_diff >= 5, "{found:?}");
    assert_eq!((found.below_head_max_diff, found.outside_max_diff), (0, 0), "{found:?}");
    Ok(())
}
