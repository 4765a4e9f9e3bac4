//! `--snapshot-blur-heads`: each person's head is blurred in a snapshot before anything is drawn on
//! it. The head is placed from the pose model's face keypoints (COCO 0-4: nose, eyes, ears), so
//! no face detector is needed; without two of them (a back turned, a model without keypoints) it
//! is the top of the person's box. docs/detector.md, "Snapshots and privacy", states the rules.

use image::RgbImage;

/// COCO pose models give 17 keypoints, the first five of them the face's; another layout has no
/// face points we know of.
const COCO_KEYPOINTS: usize = 17;
const FACE_KEYPOINTS: usize = 5;
/// A face keypoint places the head when it scores at least this (the score snapshots draw at).
pub const MIN_FACE_SCORE: f32 = 0.5;
/// The head's width over the farthest two face keypoints' distance: ear to ear is about a head's
/// width, eye to eye half of it; twice leaves a margin for hair and a turned head.
const SPREAD_TO_WIDTH: f32 = 2.0;
/// A head is at least this much of its person's box wide, for faces whose keypoints lie close
/// together (eyes and nose only): a standing person's box is two to three heads wide.
const MIN_WIDTH_OF_BOX: f32 = 0.5;
/// A head region is this much taller than wide, centred on the face keypoints (about eye level).
const HEIGHT_TO_WIDTH: f32 = 1.2;
/// Without face keypoints: the top fifth of the box (a standing person is about 7.5 heads tall),
/// but at least half the box's width tall (an upper body alone is about as wide as tall).
const FALLBACK_TOP_OF_HEIGHT: f32 = 0.2;
const FALLBACK_TOP_OF_WIDTH: f32 = 0.5;
/// Cells of the blur span a third of the head region's shorter side: a face keeps the mean colours
/// of a few cells, nothing to recognise, and averaging cannot be undone.
const CELLS_ACROSS: f32 = 3.0;

/// Pixels `x0..x1` by `y0..y1` of the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
}

/// Where a person's head is, and how coarse its blur.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub region: Region,
    /// Whether face keypoints placed it (else it is the top of the box).
    pub from_keypoints: bool,
    /// Side of a blur cell in pixels, from the head's size before clipping.
    pub cell: u32,
}

/// The head of a detection in a `width` x `height` frame (`None` for a box outside it), within
/// its box: the blur changes nothing outside the people found, and a box is the model's estimate
/// of the whole person, head included.
pub fn head(d: &wire::Detection, width: u32, height: u32) -> Option<Head> {
    let b = d.bbox;
    let (bw, bh) = (b.x2 - b.x1, b.y2 - b.y1);
    if !(bw > 0.0 && bh > 0.0) {
        return None;
    }
    let face: Vec<[f32; 2]> = match &d.keypoints {
        Some(k) if k.len() == COCO_KEYPOINTS => k[..FACE_KEYPOINTS]
            .iter()
            .filter(|p| p[2] >= MIN_FACE_SCORE && p[0].is_finite() && p[1].is_finite())
            .map(|p| [p[0], p[1]])
            .collect(),
        _ => Vec::new(),
    };
    // Pixels partly inside count as inside: a sliver of a face left sharp is the failure to avoid.
    let clip = |[x1, y1, x2, y2]: [f32; 4]| {
        let span = |lo: f32, hi: f32, box_lo: f32, box_hi: f32, size: u32| {
            let lo = lo.max(box_lo).max(0.0).floor() as u32;
            let hi = (hi.min(box_hi).min(size as f32).ceil().max(0.0) as u32).min(size);
            (lo < hi).then_some((lo, hi))
        };
        let (x0, x1) = span(x1, x2, b.x1, b.x2, width)?;
        let (y0, y1) = span(y1, y2, b.y1, b.y2, height)?;
        Some(Region { x0, y0, x1, y1 })
    };
    let cell = |[x1, y1, x2, y2]: [f32; 4]| ((x2 - x1).min(y2 - y1) / CELLS_ACROSS).ceil().max(1.0) as u32;
    if face.len() >= 2 {
        let n = face.len() as f32;
        let (cx, cy) = (face.iter().map(|p| p[0]).sum::<f32>() / n, face.iter().map(|p| p[1]).sum::<f32>() / n);
        let spread = face.iter().flat_map(|p| face.iter().map(move |q| (p[0] - q[0]).hypot(p[1] - q[1]))).fold(0.0, f32::max);
        let w = (SPREAD_TO_WIDTH * spread).max(MIN_WIDTH_OF_BOX * bw);
        let h = HEIGHT_TO_WIDTH * w;
        let rect = [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0];
        // Face keypoints wholly outside their box (it happens, rarely) say less than the box.
        if let Some(region) = clip(rect) {
            return Some(Head { region, from_keypoints: true, cell: cell(rect) });
        }
    }
    let rect = [b.x1, b.y1, b.x2, b.y1 + (FALLBACK_TOP_OF_HEIGHT * bh).max(FALLBACK_TOP_OF_WIDTH * bw).min(bh)];
    clip(rect).map(|region| Head { region, from_keypoints: false, cell: cell(rect) })
}

/// Blurs every detection's head: the region is cut into cells (aligned to its top left), each
/// cell's colour is its mean, and pixels between cell centres are interpolated. Only the means
/// are left of the face, as with a mosaic, and the smooth result has no cell edges, which would
/// be sharp detail of their own.
pub fn blur_heads(img: &mut RgbImage, detections: &[wire::Detection]) {
    let (width, height) = img.dimensions();
    for h in detections.iter().filter_map(|d| head(d, width, height)) {
        let (r, cell) = (h.region, h.cell);
        let (nx, ny) = ((r.x1 - r.x0).div_ceil(cell), (r.y1 - r.y0).div_ceil(cell));
        let mut means = Vec::with_capacity((nx * ny) as usize);
        for j in 0..ny {
            for i in 0..nx {
                let (xs, ys) = (r.x0 + i * cell..(r.x0 + (i + 1) * cell).min(r.x1), r.y0 + j * cell..(r.y0 + (j + 1) * cell).min(r.y1));
                let mut sum = [0.0f32; 3];
                for y in ys.clone() {
                    for x in xs.clone() {
                        let p = img.get_pixel(x, y);
                        (0..3).for_each(|c| sum[c] += f32::from(p[c]));
                    }
                }
                let n = (xs.len() * ys.len()) as f32;
                means.push(sum.map(|s| s / n));
            }
        }
        // A pixel's place in cell units, from the first cell's centre, clamped to the centres:
        // the two cells it lies between and the weight of the second.
        let between = |offset: u32, cells: u32| {
            let u = ((offset as f32 + 0.5) / cell as f32 - 0.5).clamp(0.0, (cells - 1) as f32);
            let lo = u.floor() as u32;
            (lo, (lo + 1).min(cells - 1), u - lo as f32)
        };
        for y in r.y0..r.y1 {
            let (j0, j1, fy) = between(y - r.y0, ny);
            for x in r.x0..r.x1 {
                let (i0, i1, fx) = between(x - r.x0, nx);
                let m = |i: u32, j: u32| means[(j * nx + i) as usize];
                let (a, b, c, d) = (m(i0, j0), m(i1, j0), m(i0, j1), m(i1, j1));
                let v = |k: usize| (a[k] + (b[k] - a[k]) * fx) * (1.0 - fy) + (c[k] + (d[k] - c[k]) * fx) * fy;
                img.put_pixel(x, y, image::Rgb([0, 1, 2].map(|k| v(k).round() as u8)));
            }
        }
    }
}

/// Whether a COCO keypoint (0-based) is one of the face's: bones to it are not drawn over a
/// blurred head, since they would trace the face's pose back onto it.
pub fn is_face_keypoint(index: usize) -> bool {
    index < FACE_KEYPOINTS
}

#[cfg(test)]
mod tests {
    use image::Rgb;

    use super::*;

    fn det(bbox: [f32; 4], face: &[(usize, [f32; 3])]) -> wire::Detection {
        let [x1, y1, x2, y2] = bbox;
        let mut kps = vec![[0.0, 0.0, 0.0]; COCO_KEYPOINTS];
        face.iter().for_each(|&(i, p)| kps[i] = p);
        wire::Detection { class: "person".into(), score: 0.9, bbox: wire::BBox { x1, y1, x2, y2 }, keypoints: Some(kps) }
    }

    fn region(x0: u32, y0: u32, x1: u32, y1: u32) -> Region {
        Region { x0, y0, x1, y1 }
    }

    #[test]
    fn placed_from_the_face_keypoints_scaled_by_their_spread() {
        // A frontal face: ears 20 px apart around x = 100, eyes and nose between them.
        let d = det(
            [80.0, 40.0, 120.0, 200.0],
            &[(0, [100.0, 65.0, 0.9]), (1, [96.0, 60.0, 0.9]), (2, [104.0, 60.0, 0.9]), (3, [90.0, 62.0, 0.9]), (4, [110.0, 62.0, 0.9])],
        );
        let h = head(&d, 640, 480).unwrap();
        assert!(h.from_keypoints);
        // 2 x 20 = 40 wide (more than half the 40 px box), 48 tall, centred on the mean point
        // (100, 61.8): y 37.8 to 85.8, clipped to the box's top at 40.
        assert_eq!(h.region, region(80, 40, 120, 86));
        assert_eq!(h.cell, 14); // ceil(40 / 3)
    }

    #[test]
    fn eyes_alone_are_widened_to_half_the_box() {
        // Two eyes 6 px apart: 12 px would be too narrow; half the 60 px box is 30.
        let d = det([70.0, 50.0, 130.0, 250.0], &[(1, [97.0, 70.0, 0.8]), (2, [103.0, 70.0, 0.8])]);
        let h = head(&d, 640, 480).unwrap();
        assert_eq!(h.region, region(85, 52, 115, 88)); // x 100 +- 15, y 70 +- 18
        assert_eq!((h.from_keypoints, h.cell), (true, 10));
    }

    #[test]
    fn fewer_than_two_face_keypoints_fall_back_to_the_top_of_the_box() {
        // One visible face keypoint; the other scores below the threshold.
        let d = det([10.5, 20.5, 50.5, 220.5], &[(0, [30.0, 35.0, 0.9]), (1, [28.0, 33.0, 0.49])]);
        let h = head(&d, 640, 480).unwrap();
        assert!(!h.from_keypoints);
        // The top fifth (40 px) of a 200 px box; partly covered pixels count.
        assert_eq!(h.region, region(10, 20, 51, 61));
        // A box as wide as tall (an upper body): the top half of its width.
        assert_eq!(head(&det([0.0, 0.0, 100.0, 100.0], &[]), 640, 480).unwrap().region, region(0, 0, 100, 50));
        // A model without keypoints, or with another layout than COCO's 17.
        let mut d = det([0.0, 0.0, 40.0, 200.0], &[(0, [20.0, 10.0, 0.9]), (1, [22.0, 8.0, 0.9])]);
        assert!(head(&d, 640, 480).unwrap().from_keypoints);
        d.keypoints = None;
        assert_eq!(head(&d, 640, 480), Some(Head { region: region(0, 0, 40, 40), from_keypoints: false, cell: 14 }));
        d.keypoints = Some(vec![[20.0, 10.0, 0.9]; 5]);
        assert!(!head(&d, 640, 480).unwrap().from_keypoints);
        // Face keypoints wholly above their box.
        let d = det([100.0, 100.0, 140.0, 300.0], &[(1, [115.0, 80.0, 0.9]), (2, [125.0, 80.0, 0.9])]);
        assert_eq!(head(&d, 640, 480).map(|h| (h.region, h.from_keypoints)), Some((region(100, 100, 140, 140), false)));
    }

    #[test]
    fn clipped_to_the_frame_and_the_box() {
        // A head at the top left corner, partly outside the frame.
        let d = det([-30.0, -20.0, 40.0, 200.0], &[(3, [-10.0, 5.0, 0.9]), (4, [10.0, 5.0, 0.9])]);
        let h = head(&d, 64, 48).unwrap();
        assert_eq!(h.region, region(0, 0, 20, 29)); // x 0 +- 20, y 5 +- 24
        assert_eq!(h.cell, 14); // from the head's size before clipping: ceil(40 / 3)
                                // Keypoints partly above the box: the region starts at the box's top.
        let d = det([100.0, 100.0, 140.0, 300.0], &[(1, [115.0, 100.0, 0.9]), (2, [125.0, 100.0, 0.9])]);
        assert_eq!(head(&d, 640, 480).unwrap().region, region(110, 100, 130, 112)); // x 120 +- 10, y 100 +- 12
                                                                                    // A box outside the frame, and one without area.
        assert_eq!(head(&det([700.0, 10.0, 750.0, 100.0], &[]), 640, 480), None);
        assert_eq!(head(&det([10.0, 10.0, 10.0, 100.0], &[]), 640, 480), None);
    }

    #[test]
    fn blurs_the_head_only() {
        // A checkerboard: every pixel differs from its neighbours.
        let mut img = RgbImage::from_fn(60, 60, |x, y| if (x + y) % 2 == 0 { Rgb([200, 10, 10]) } else { Rgb([0, 100, 0]) });
        let before = img.clone();
        let d = det([10.0, 10.0, 40.0, 58.0], &[]);
        let h = head(&d, 60, 60).unwrap();
        assert_eq!((h.region, h.cell), (region(10, 10, 40, 25), 5)); // the top 15 px of the box, cells of 5
        blur_heads(&mut img, &[d]);
        let r = h.region;
        for (x, y, p) in img.enumerate_pixels() {
            if !((r.x0..r.x1).contains(&x) && (r.y0..r.y1).contains(&y)) {
                assert_eq!(p, before.get_pixel(x, y), "({x}, {y}) is outside the head");
                continue;
            }
            // Each 5 x 5 cell holds 13 pixels of one colour and 12 of the other: at the cell's
            // centre, their mean; elsewhere between two such means.
            let (i, j) = ((x - r.x0) / 5, (y - r.y0) / 5);
            if (x - r.x0) % 5 == 2 && (y - r.y0) % 5 == 2 {
                let mean = if (i + j) % 2 == 0 { Rgb([104, 53, 5]) } else { Rgb([96, 57, 5]) };
                assert_eq!(*p, mean, "({x}, {y})");
            }
            assert!((96..=104).contains(&p[0]) && (53..=57).contains(&p[1]) && p[2] == 5, "({x}, {y}): {p:?}");
        }
        // Smooth: neighbours inside differ by a step of the interpolation (8 grey levels over
        // 5 pixels), where the checkerboard's differed by 200.
        for y in r.y0..r.y1 {
            for x in r.x0..r.x1 - 1 {
                assert!(img.get_pixel(x, y)[0].abs_diff(img.get_pixel(x + 1, y)[0]) <= 2, "({x}, {y})");
            }
        }
        // A region of one colour keeps it.
        let mut grey = RgbImage::from_pixel(60, 60, Rgb([77, 77, 77]));
        blur_heads(&mut grey, &[det([3.3, 4.4, 50.0, 59.0], &[(1, [20.0, 12.0, 0.9]), (2, [28.0, 12.0, 0.9])])]);
        assert!(grey.pixels().all(|p| *p == Rgb([77, 77, 77])));
    }

    #[test]
    fn the_flag_is_on_unless_set_to_false() {
        // As the binary parses it: booleans take true/false, on/off, yes/no, 1/0, and need a value.
        let blur = |flags: &[&str]| {
            common::cli::parse_from::<crate::config::Config>(["detector", "--source", "x.mp4"].iter().chain(flags))
                .map(|(c, _)| c.snapshot_blur_heads)
                .map_err(|_| ())
        };
        assert_eq!(blur(&[]), Ok(true));
        assert_eq!(blur(&["--snapshot-blur-heads", "false"]), Ok(false));
        assert_eq!(blur(&["--snapshot-blur-heads", "off"]), Ok(false));
        assert_eq!(blur(&["--snapshot-blur-heads", "yes"]), Ok(true));
        assert_eq!(blur(&["--snapshot-blur-heads"]), Err(()));
    }
}
