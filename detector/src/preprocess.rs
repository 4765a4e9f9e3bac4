//! Letterbox exactly as Ultralytics does (keep aspect, centre, pad with grey 114), then BGR->RGB,
//! /255, NCHW float32: the model's input tensor.

use opencv::core::{Mat, Size};
use opencv::imgproc;
use opencv::prelude::*;

use crate::error::DetectorError;

pub const PAD_VALUE: u8 = 114;

/// The size of a frame's input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputShape {
    /// The model's fixed height and width: every frame is padded to it.
    Fixed { w: u32, h: u32 },
    /// A model with dynamic height and width: Ultralytics' rectangular letterbox (`auto`, its
    /// `predict` path for PyTorch and dynamic models). The frame is scaled to fit `w` x `h`, and
    /// padded only to the next multiple of `stride`: 640x480 for a 4:3 source, 640x384 for 16:9.
    Rect { w: u32, h: u32, stride: u32 },
}

impl std::fmt::Display for InputShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputShape::Fixed { w, h } => write!(f, "{w}x{h}"),
            InputShape::Rect { w, h, stride } => write!(f, "the source's aspect within {w}x{h}, stride {stride}"),
        }
    }
}

/// The geometry of one letterbox: how a source frame maps into the model's input and back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    pub src_w: u32,
    pub src_h: u32,
    /// The input tensor's width and height.
    pub dst_w: u32,
    pub dst_h: u32,
    /// Size of the resized image inside the padding.
    pub new_w: u32,
    pub new_h: u32,
    /// Padding on the left and top, where the resized image starts.
    pub left: u32,
    pub top: u32,
    /// The inverse mapping, as Ultralytics' `scale_boxes` and `scale_coords` compute it: from the
    /// input's size, the sizes the frame would round to in it, per axis.
    pub gain_x: f64,
    pub gain_y: f64,
    pub inv_pad_x: f64,
    pub inv_pad_y: f64,
}

/// Python's `round`: halves go to the even neighbour. Ultralytics' sizes and pads use it.
fn py_round(v: f64) -> f64 {
    v.round_ties_even()
}

impl Letterbox {
    /// Ultralytics' `LetterBox(new_shape, auto, stride)` (centred, scale-up allowed) for a
    /// `src_w` x `src_h` frame, and its `scale_boxes` inverse.
    pub fn new(src_w: u32, src_h: u32, shape: InputShape) -> Self {
        let (sw, sh) = (src_w as f64, src_h as f64);
        let (box_w, box_h) = match shape {
            InputShape::Fixed { w, h } | InputShape::Rect { w, h, .. } => (w, h),
        };
        let r = (box_h as f64 / sh).min(box_w as f64 / sw);
        let new_w = (py_round(sw * r) as u32).min(box_w);
        let new_h = (py_round(sh * r) as u32).min(box_h);
        let (dst_w, dst_h) = match shape {
            InputShape::Fixed { .. } => (box_w, box_h),
            InputShape::Rect { stride, .. } => (new_w + (box_w - new_w) % stride, new_h + (box_h - new_h) % stride),
        };
        let (dw, dh) = (dst_w as f64, dst_h as f64);
        let g = (dh / sh).min(dw / sw);
        let (inv_w, inv_h) = (py_round(sw * g).max(1.0), py_round(sh * g).max(1.0));
        Letterbox {
            src_w,
            src_h,
            dst_w,
            dst_h,
            new_w,
            new_h,
            left: py_round((dst_w - new_w) as f64 / 2.0 - 0.1) as u32,
            top: py_round((dst_h - new_h) as f64 / 2.0 - 0.1) as u32,
            gain_x: inv_w / sw,
            gain_y: inv_h / sh,
            inv_pad_x: py_round((dw - inv_w) / 2.0 - 0.1),
            inv_pad_y: py_round((dh - inv_h) / 2.0 - 0.1),
        }
    }

    /// Floats in the input tensor: 3 x height x width.
    pub fn tensor_len(&self) -> usize {
        3 * self.dst_w as usize * self.dst_h as usize
    }

    /// Maps a point of the model's input back to source pixels, clipped to the frame.
    pub fn to_source(&self, x: f32, y: f32) -> (f32, f32) {
        let sx = ((x as f64 - self.inv_pad_x) / self.gain_x).clamp(0.0, self.src_w as f64);
        let sy = ((y as f64 - self.inv_pad_y) / self.gain_y).clamp(0.0, self.src_h as f64);
        (sx as f32, sy as f32)
    }
}

/// `v / 255` for every byte value: the same quotients as dividing, without a division per value.
static UNIT: [f32; 256] = {
    let mut t = [0.0; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i as f32 / 255.0;
        i += 1;
    }
    t
};

/// Writes the NCHW RGB float tensor from a resized BGR image (`new_w` x `new_h`, 3 bytes a pixel,
/// rows `stride` bytes apart) placed at (`left`, `top`) on a grey canvas. Each value is written
/// once: the padding, then the image; this runs on every frame, beside inference.
pub fn fill_tensor(resized: &[u8], stride: usize, lb: &Letterbox, out: &mut [f32]) {
    let (w, h) = (lb.dst_w as usize, lb.dst_h as usize);
    let plane = w * h;
    assert_eq!(out.len(), 3 * plane, "tensor buffer must be 3 x {w} x {h}");
    let (left, top, new_w, new_h) = (lb.left as usize, lb.top as usize, lb.new_w as usize, lb.new_h as usize);
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    let pad = UNIT[PAD_VALUE as usize];
    for p in [&mut *r, &mut *g, &mut *b] {
        p[..top * w].fill(pad);
        p[(top + new_h) * w..].fill(pad);
        for y in top..top + new_h {
            p[y * w..y * w + left].fill(pad);
            p[y * w + left + new_w..(y + 1) * w].fill(pad);
        }
    }
    for y in 0..new_h {
        let row = &resized[y * stride..y * stride + new_w * 3];
        let at = (top + y) * w + left..(top + y) * w + left + new_w;
        let (r, g, b) = (&mut r[at.clone()], &mut g[at.clone()], &mut b[at]);
        for (x, px) in row.chunks_exact(3).enumerate() {
            // BGR in, RGB planes out.
            r[x] = UNIT[px[2] as usize];
            g[x] = UNIT[px[1] as usize];
            b[x] = UNIT[px[0] as usize];
        }
    }
}

/// Letterboxes a BGR frame into `out`, sized here to the input tensor, and returns the geometry
/// used.
pub fn letterbox(frame: &Mat, shape: InputShape, out: &mut Vec<f32>) -> Result<Letterbox, DetectorError> {
    let internal = |e: opencv::Error| DetectorError::Inference(format!("preprocessing: {e}"));
    if frame.typ() != opencv::core::CV_8UC3 {
        return Err(DetectorError::Inference(format!("preprocessing: expected an 8-bit 3-channel frame, got OpenCV type {}", frame.typ())));
    }
    let lb = Letterbox::new(frame.cols() as u32, frame.rows() as u32, shape);
    if lb.new_w == 0 || lb.new_h == 0 {
        return Err(DetectorError::Inference(format!(
            "preprocessing: a {}x{} frame scales to nothing in a {shape} input",
            lb.src_w, lb.src_h
        )));
    }
    out.resize(lb.tensor_len(), 0.0);
    let resized;
    let src = if lb.new_w == lb.src_w && lb.new_h == lb.src_h {
        frame
    } else {
        let mut dst = Mat::default();
        let size = Size::new(lb.new_w as i32, lb.new_h as i32);
        // INTER_LINEAR: what Ultralytics' LetterBox uses.
        imgproc::resize(frame, &mut dst, size, 0.0, 0.0, imgproc::INTER_LINEAR).map_err(internal)?;
        resized = dst;
        &resized
    };
    let stride = src.step1(0).map_err(internal)? * src.elem_size1();
    let bytes = if src.is_continuous() {
        src.data_bytes().map_err(internal)?
    } else {
        // A view into a larger image: rows are `stride` apart, which fill_tensor honours.
        let len = stride * (src.rows() as usize - 1) + src.cols() as usize * 3;
        // SAFETY: `data()` points at the first pixel and the rows lie `stride` apart within the
        // parent buffer, which outlives this borrow of `src`.
        unsafe { std::slice::from_raw_parts(src.data(), len) }
    };
    fill_tensor(bytes, stride, &lb, out);
    Ok(lb)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(w: u32, h: u32) -> InputShape {
        InputShape::Fixed { w, h }
    }

    const RECT: InputShape = InputShape::Rect { w: 640, h: 640, stride: 32 };

    #[test]
    fn rectangular_geometry_as_ultralytics_auto() {
        // 4:3 (vtest.avi): 640x480 exactly, no padding at all.
        let lb = Letterbox::new(768, 576, RECT);
        assert_eq!((lb.dst_w, lb.dst_h, lb.new_w, lb.new_h, lb.left, lb.top), (640, 480, 640, 480, 0, 0));
        assert_eq!((lb.inv_pad_x, lb.inv_pad_y), (0.0, 0.0));
        assert!((lb.gain_x - 5.0 / 6.0).abs() < 1e-12 && (lb.gain_y - 5.0 / 6.0).abs() < 1e-12);
        // 16:9 (zidane.jpg, 1280x720): 640x360 padded to 384, 12 rows above and below.
        let lb = Letterbox::new(1280, 720, RECT);
        assert_eq!((lb.dst_w, lb.dst_h, lb.new_h, lb.top), (640, 384, 360, 12));
        assert_eq!((lb.inv_pad_x, lb.inv_pad_y, lb.gain_x, lb.gain_y), (0.0, 12.0, 0.5, 0.5));
        // Portrait (bus.jpg, 810x1080): 480x640, and the tensor is as large as the input.
        let lb = Letterbox::new(810, 1080, RECT);
        assert_eq!((lb.dst_w, lb.dst_h, lb.left, lb.tensor_len()), (480, 640, 0, 3 * 480 * 640));
        // An odd width: 1000x333 -> 640 x 213.12 -> 213 high, padded by 11 to 224: 5 above, 6 below.
        let lb = Letterbox::new(1000, 333, RECT);
        assert_eq!((lb.new_h, lb.dst_h, lb.top), (213, 224, 5));
        // The inverse as scale_boxes computes it from the padded size: min(224/333, 0.64) = 0.64,
        // 213 rows again, so the y gain is 213/333 and the pad round(5.5 - 0.1).
        assert_eq!((lb.gain_x, lb.gain_y, lb.inv_pad_y), (0.64, 213.0 / 333.0, 5.0));
    }

    #[test]
    fn rectangular_inputs_are_never_larger_than_square_ones() {
        for (w, h) in [(1, 1), (7, 5), (640, 640), (641, 1), (1920, 1080), (1080, 1920), (352, 288), (4000, 3000)] {
            let (r, f) = (Letterbox::new(w, h, RECT), Letterbox::new(w, h, fixed(640, 640)));
            assert!(r.dst_w % 32 == 0 && r.dst_h % 32 == 0, "{w}x{h}: {r:?}");
            assert!(r.dst_w <= 640 && r.dst_h <= 640 && r.dst_w >= r.new_w && r.dst_h >= r.new_h, "{w}x{h}: {r:?}");
            assert_eq!((r.new_w, r.new_h), (f.new_w, f.new_h), "{w}x{h}: the same resize either way");
        }
    }

    #[test]
    fn geometry_of_a_landscape_frame() {
        // 768x576 into 640x640: gain 640/768 = 5/6, image 640x480, 80 rows of padding each side.
        let lb = Letterbox::new(768, 576, fixed(640, 640));
        assert!((lb.gain_x - 5.0 / 6.0).abs() < 1e-12 && (lb.gain_y - 5.0 / 6.0).abs() < 1e-12);
        assert_eq!((lb.new_w, lb.new_h), (640, 480));
        assert_eq!((lb.left, lb.top), (0, 80));
        assert_eq!((lb.inv_pad_x, lb.inv_pad_y), (0.0, 80.0));
    }

    #[test]
    fn geometry_with_odd_padding_and_python_rounding() {
        // 100x51 into 64x64: gain 0.64, 64 x 32.64 -> round 33 high; 31 rows of padding, split
        // round(15.5 - 0.1) = 15 above and 16 below.
        let lb = Letterbox::new(100, 51, fixed(64, 64));
        assert_eq!((lb.new_w, lb.new_h), (64, 33));
        assert_eq!((lb.left, lb.top), (0, 15));
        // The inverse from the rounded size, as Ultralytics 8.4 computes it: (64 - 33) / 2 - 0.1
        // -> 15, and 33 / 51 per source row.
        assert_eq!((lb.inv_pad_y, lb.gain_y, lb.gain_x), (15.0, 33.0 / 51.0, 0.64));
        // A portrait frame pads left and right instead.
        let lb = Letterbox::new(480, 640, fixed(320, 320));
        assert_eq!((lb.new_w, lb.new_h, lb.left, lb.top), (240, 320, 40, 0));
    }

    #[test]
    fn inverse_mapping_round_trips_and_clips() {
        let lb = Letterbox::new(768, 576, fixed(640, 640));
        // Source (384, 288), the centre, lands at (320, 80 + 240) in the input.
        assert_eq!(lb.to_source(320.0, 320.0), (384.0, 288.0));
        // Points in the padding clip to the frame's edge.
        assert_eq!(lb.to_source(-10.0, 10.0), (0.0, 0.0));
        assert_eq!(lb.to_source(700.0, 639.0), (768.0, 576.0));
    }

    #[test]
    fn tensor_is_rgb_planes_on_grey_padding() {
        let lb = Letterbox::new(2, 1, fixed(2, 2));
        // 2x1 into 2x2: no resize, top pad round(0.5 - 0.1) = 0, so the image is row 0.
        assert_eq!((lb.new_w, lb.new_h, lb.left, lb.top), (2, 1, 0, 0));
        let bgr = [10u8, 20, 30, 40, 50, 60];
        let mut out = vec![0.0; 12];
        fill_tensor(&bgr, 6, &lb, &mut out);
        let g = 114.0 / 255.0;
        let v = |x: u8| x as f32 / 255.0;
        assert_eq!(&out[0..4], &[v(30), v(60), g, g]); // R plane
        assert_eq!(&out[4..8], &[v(20), v(50), g, g]); // G plane
        assert_eq!(&out[8..12], &[v(10), v(40), g, g]); // B plane
    }

    #[test]
    fn tensor_matches_the_plain_definition_with_padding_on_either_axis() {
        // Portrait (padding left and right) and landscape (above and below), odd splits, and rows
        // with stride slack.
        for (src_w, src_h, dst) in [(30u32, 50u32, 40u32), (50, 31, 40)] {
            let lb = Letterbox::new(src_w, src_h, fixed(dst, dst));
            let (nw, nh, stride) = (lb.new_w as usize, lb.new_h as usize, lb.new_w as usize * 3 + 5);
            let img: Vec<u8> = (0..stride * nh).map(|i| (i * 7 % 251) as u8).collect();
            let mut out = vec![-1.0; 3 * (dst * dst) as usize];
            fill_tensor(&img, stride, &lb, &mut out);
            let plane = (dst * dst) as usize;
            for c in 0..3 {
                for y in 0..dst as usize {
                    for x in 0..dst as usize {
                        let (ix, iy) = (x as i64 - lb.left as i64, y as i64 - lb.top as i64);
                        let want = if (0..nw as i64).contains(&ix) && (0..nh as i64).contains(&iy) {
                            img[iy as usize * stride + ix as usize * 3 + (2 - c)] as f32 / 255.0
                        } else {
                            PAD_VALUE as f32 / 255.0
                        };
                        assert_eq!(out[c * plane + y * dst as usize + x], want, "{src_w}x{src_h} c{c} ({x}, {y})");
                    }
                }
            }
        }
    }

    #[test]
    fn letterbox_resizes_a_real_mat() {
        let frame =
            Mat::new_rows_cols_with_default(576, 768, opencv::core::CV_8UC3, opencv::core::Scalar::new(0.0, 0.0, 255.0, 0.0)).unwrap();
        let mut out = Vec::new();
        let lb = letterbox(&frame, fixed(64, 64), &mut out).unwrap();
        assert_eq!(out.len(), 3 * 64 * 64);
        assert_eq!((lb.new_w, lb.new_h, lb.top), (64, 48, 8));
        // Red in BGR is (0, 0, 255): the R plane is 1.0 inside the image and grey in the padding.
        assert_eq!(out[8 * 64 + 5], 1.0);
        assert_eq!(out[64 * 64 + 8 * 64 + 5], 0.0);
        assert_eq!(out[0], 114.0 / 255.0);
    }
}
