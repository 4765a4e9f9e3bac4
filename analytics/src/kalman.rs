//! The Kalman filter of ByteTrack (after SORT and DeepSORT): state (cx, cy, a, h, vcx, vcy, va, vh)
//! for a box's centre, aspect ratio w / h and height, constant velocity, one step per frame, the
//! box observed directly. Its noise is relative to the height, so a near person (tall box) may move
//! more pixels a frame than a far one; the aspect's noise is fixed. In f64, as numpy computes it.

/// Position noise per unit of height.
const STD_POSITION: f64 = 1.0 / 20.0;
/// Velocity noise per unit of height.
const STD_VELOCITY: f64 = 1.0 / 160.0;

type Mat8 = [[f64; 8]; 8];

/// A box's state estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct Kalman {
    pub mean: [f64; 8],
    pub covariance: Mat8,
}

fn diagonal_squares(std: [f64; 8]) -> Mat8 {
    let mut m = [[0.0; 8]; 8];
    for (k, s) in std.iter().enumerate() {
        m[k][k] = s * s;
    }
    m
}

impl Kalman {
    /// A new track at measurement (cx, cy, a, h), standing still, uncertain in proportion to h.
    pub fn new(xyah: [f64; 4]) -> Self {
        let h = xyah[3];
        let (p, v) = (2.0 * STD_POSITION * h, 10.0 * STD_VELOCITY * h);
        Kalman {
            mean: [xyah[0], xyah[1], xyah[2], xyah[3], 0.0, 0.0, 0.0, 0.0],
            covariance: diagonal_squares([p, p, 1e-2, p, v, v, 1e-5, v]),
        }
    }

    /// One frame ahead: x += v; P = F P F^T + Q.
    pub fn predict(&mut self) {
        let h = self.mean[3];
        let (p, v) = (STD_POSITION * h, STD_VELOCITY * h);
        let q = diagonal_squares([p, p, 1e-2, p, v, v, 1e-5, v]);
        for k in 0..4 {
            self.mean[k] += self.mean[k + 4];
        }
        // F P F^T with F = [[I, I], [0, I]]: rows then columns k += k + 4.
        let c = &mut self.covariance;
        for row in c.iter_mut() {
            for k in 0..4 {
                row[k] += row[k + 4];
            }
        }
        let (top, bottom) = c.split_at_mut(4);
        for (row, below) in top.iter_mut().zip(bottom.iter()) {
            for (x, b) in row.iter_mut().zip(below) {
                *x += b;
            }
        }
        for (row, qrow) in c.iter_mut().zip(q) {
            for (x, qx) in row.iter_mut().zip(qrow) {
                *x += qx;
            }
        }
    }

    /// Corrects the state with a measured box (cx, cy, a, h).
    pub fn update(&mut self, xyah: [f64; 4]) {
        let h = self.mean[3];
        let r = [STD_POSITION * h, STD_POSITION * h, 1e-1, STD_POSITION * h];
        // S = H P H^T + R: the top-left 4 x 4 of P.
        let mut s: [[f64; 4]; 4] = std::array::from_fn(|i| std::array::from_fn(|j| self.covariance[i][j]));
        for (i, (row, ri)) in s.iter_mut().zip(r).enumerate() {
            row[i] += ri * ri;
        }
        let l = cholesky(s);
        // K = P H^T S^-1, row by row: solve S k = (P H^T)[row] (S is symmetric).
        let mut gain = [[0.0; 4]; 8];
        for (g, p) in gain.iter_mut().zip(&self.covariance) {
            *g = cholesky_solve(&l, [p[0], p[1], p[2], p[3]]);
        }
        let innovation: [f64; 4] = std::array::from_fn(|k| xyah[k] - self.mean[k]);
        for (m, g) in self.mean.iter_mut().zip(&gain) {
            *m += (0..4).map(|k| innovation[k] * g[k]).sum::<f64>();
        }
        // P -= K S K^T.
        let ks: [[f64; 4]; 8] = std::array::from_fn(|i| std::array::from_fn(|j| (0..4).map(|k| gain[i][k] * s[k][j]).sum()));
        for (row, ks) in self.covariance.iter_mut().zip(&ks) {
            for (p, g) in row.iter_mut().zip(&gain) {
                *p -= (0..4).map(|k| ks[k] * g[k]).sum::<f64>();
            }
        }
    }

    /// The box (cx, cy, a, h) of the current estimate.
    pub fn xyah(&self) -> [f64; 4] {
        [self.mean[0], self.mean[1], self.mean[2], self.mean[3]]
    }
}

/// Lower triangular L with L L^T = S.
fn cholesky(s: [[f64; 4]; 4]) -> [[f64; 4]; 4] {
    let mut l = [[0.0; 4]; 4];
    for i in 0..4 {
        for j in 0..=i {
            let sum: f64 = (0..j).map(|k| l[i][k] * l[j][k]).sum();
            l[i][j] = if i == j { (s[i][i] - sum).sqrt() } else { (s[i][j] - sum) / l[j][j] };
        }
    }
    l
}

/// x with L L^T x = b.
fn cholesky_solve(l: &[[f64; 4]; 4], b: [f64; 4]) -> [f64; 4] {
    let mut y = [0.0; 4];
    for i in 0..4 {
        y[i] = (b[i] - (0..i).map(|k| l[i][k] * y[k]).sum::<f64>()) / l[i][i];
    }
    let mut x = [0.0; 4];
    for i in (0..4).rev() {
        x[i] = (y[i] - (i + 1..4).map(|k| l[k][i] * x[k]).sum::<f64>()) / l[i][i];
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_track_stands_still_where_it_was_seen() {
        let mut k = Kalman::new([125.0, 175.0, 0.5, 150.0]);
        assert_eq!(k.covariance[0][0], (0.1f64 * 150.0).powi(2));
        assert_eq!(k.covariance[4][4], (150.0f64 / 16.0).powi(2));
        k.predict();
        assert_eq!(k.xyah(), [125.0, 175.0, 0.5, 150.0]);
        k.update([125.0, 175.0, 0.5, 150.0]);
        assert_eq!(k.xyah(), [125.0, 175.0, 0.5, 150.0]);
    }

    #[test]
    fn follows_a_steady_motion() {
        let mut k = Kalman::new([100.0, 200.0, 0.5, 120.0]);
        for f in 1..60 {
            k.predict();
            k.update([100.0 + 3.0 * f as f64, 200.0, 0.5, 120.0]);
        }
        assert!((k.mean[4] - 3.0).abs() < 1e-3, "vx {}", k.mean[4]);
        k.predict();
        assert!((k.mean[0] - (100.0 + 3.0 * 60.0)).abs() < 1e-2, "cx {}", k.mean[0]);
    }

    #[test]
    fn matches_the_reference_filter_after_one_update() {
        // Ultralytics' state after a track started at (100.3, 100.7, 150.1, 250.9) is updated
        // with (101.3, 100.9, 151.1, 251.9) one frame later (both float32 boxes, read from the
        // oracle's track.mean): the velocities show the gain.
        let xyah = |x1: f32, y1: f32, x2: f32, y2: f32| {
            let (w, h) = (x2 - x1, y2 - y1);
            [(x1 + w / 2.0) as f64, (y1 + h / 2.0) as f64, (w / h) as f64, h as f64]
        };
        let mut k = Kalman::new(xyah(100.3, 100.7, 150.1, 250.9));
        k.predict();
        k.update(xyah(101.3, 100.9, 151.1, 251.9));
        // The oracle's figures are printed to 5 digits.
        assert!((k.mean[4] - 0.20661).abs() < 1e-4 && (k.mean[5] - 0.12397).abs() < 1e-4, "{:?}", k.mean);
        assert!((k.covariance[0][0] - 48.942).abs() < 1e-3 && (k.covariance[0][4] - 11.653).abs() < 1e-3);
    }
}
