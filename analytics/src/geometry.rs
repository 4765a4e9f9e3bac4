//! Plane geometry in source pixels (x right, y down), f64, for the zone and line rules.

/// A point in source pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
}

impl Point {
    pub fn new(x: f64, y: f64) -> Self {
        Point { x, y }
    }

    fn sub(self, o: Point) -> Point {
        Point::new(self.x - o.x, self.y - o.y)
    }

    fn is_finite(self) -> bool {
        self.x.is_finite() && self.y.is_finite()
    }
}

/// (b - a) x (p - a): positive when p is to the right of a -> b as seen on screen (y grows
/// downwards), negative to the left, zero on the line through a and b.
pub fn cross(a: Point, b: Point, p: Point) -> f64 {
    let (d, v) = (b.sub(a), p.sub(a));
    d.x * v.y - d.y * v.x
}

fn dot(u: Point, v: Point) -> f64 {
    u.x * v.x + u.y * v.y
}

/// Whether p, known to be on the line through a and b, lies between them (ends included).
fn within(a: Point, b: Point, p: Point) -> bool {
    p.x >= a.x.min(b.x) && p.x <= a.x.max(b.x) && p.y >= a.y.min(b.y) && p.y <= a.y.max(b.y)
}

/// Whether the closed segments ab and cd share a point (touching counts).
pub fn segments_intersect(a: Point, b: Point, c: Point, d: Point) -> bool {
    let (d1, d2) = (cross(a, b, c), cross(a, b, d));
    let (d3, d4) = (cross(c, d, a), cross(c, d, b));
    if ((d1 > 0.0 && d2 < 0.0) || (d1 < 0.0 && d2 > 0.0)) && ((d3 > 0.0 && d4 < 0.0) || (d3 < 0.0 && d4 > 0.0)) {
        return true;
    }
    (d1 == 0.0 && within(a, b, c)) || (d2 == 0.0 && within(a, b, d)) || (d3 == 0.0 && within(c, d, a)) || (d4 == 0.0 && within(c, d, b))
}

/// A directed segment, the geometry of a counting line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    pub a: Point,
    pub b: Point,
}

impl Segment {
    /// Distance of p from the line through a and b, signed as [`cross`] (positive on the right).
    pub fn signed_distance(&self, p: Point) -> f64 {
        cross(self.a, self.b, p) / self.b.sub(self.a).x.hypot(self.b.sub(self.a).y)
    }

    /// Whether the path p -> q, whose ends are on opposite sides of the line, crosses it between
    /// a and b (ends included).
    pub fn crossed_within(&self, p: Point, q: Point) -> bool {
        segments_intersect(self.a, self.b, p, q)
    }
}

/// A simple polygon (its closing edge implied).
#[derive(Debug, Clone, PartialEq)]
pub struct Polygon {
    points: Vec<Point>,
}

/// Why a list of points is no simple polygon.
#[derive(Debug, Clone, PartialEq)]
pub enum PolygonError {
    TooFewPoints(usize),
    NotFinite(usize),
    /// Points i and i + 1 (or the last and the first) are the same.
    RepeatedPoint(usize),
    /// Edges i and j (edge i runs from point i to the next) cross, touch or overlap.
    EdgesIntersect(usize, usize),
    ZeroArea,
}

impl std::fmt::Display for PolygonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolygonError::TooFewPoints(n) => write!(f, "has {n} points, needs at least 3"),
            PolygonError::NotFinite(i) => write!(f, "point {i} is not finite"),
            PolygonError::RepeatedPoint(i) => write!(f, "point {i} repeats the point before it (do not close the ring)"),
            PolygonError::EdgesIntersect(i, j) => write!(f, "intersects itself: edges {i} and {j} meet"),
            PolygonError::ZeroArea => write!(f, "has no area"),
        }
    }
}

impl Polygon {
    /// Checks that the points make a simple polygon: at least 3, finite, no edge meeting another
    /// except its two neighbours at their shared ends, some area.
    pub fn new(points: Vec<Point>) -> Result<Self, PolygonError> {
        let n = points.len();
        if n < 3 {
            return Err(PolygonError::TooFewPoints(n));
        }
        if let Some(i) = points.iter().position(|p| !p.is_finite()) {
            return Err(PolygonError::NotFinite(i));
        }
        let edge = |i: usize| (points[i], points[(i + 1) % n]);
        for i in 0..n {
            let (p, q) = edge(i);
            if p == q {
                return Err(PolygonError::RepeatedPoint((i + 1) % n));
            }
        }
        for i in 0..n {
            let (p, q) = edge(i);
            // The next edge shares q; it may only fold back onto this one along the same line.
            let (_, r) = edge((i + 1) % n);
            if cross(p, q, r) == 0.0 && dot(q.sub(p), r.sub(q)) < 0.0 {
                return Err(PolygonError::EdgesIntersect(i, (i + 1) % n));
            }
            for j in i + 2..n {
                if i == 0 && j == n - 1 {
                    continue; // neighbours through the closing point
                }
                let (c, d) = edge(j);
                if segments_intersect(p, q, c, d) {
                    return Err(PolygonError::EdgesIntersect(i, j));
                }
            }
        }
        let polygon = Polygon { points };
        if polygon.twice_area() == 0.0 {
            return Err(PolygonError::ZeroArea);
        }
        Ok(polygon)
    }

    fn twice_area(&self) -> f64 {
        let n = self.points.len();
        (0..n).map(|i| cross(Point::new(0.0, 0.0), self.points[i], self.points[(i + 1) % n])).sum()
    }

    /// Whether p is inside or on the boundary.
    pub fn covers(&self, p: Point) -> bool {
        let n = self.points.len();
        let mut inside = false;
        for i in 0..n {
            let (a, b) = (self.points[i], self.points[(i + 1) % n]);
            if cross(a, b, p) == 0.0 && within(a, b, p) {
                return true;
            }
            // Even-odd rule: count edges straddling the horizontal through p, right of p.
            if (a.y > p.y) != (b.y > p.y) {
                let x = a.x + (p.y - a.y) * (b.x - a.x) / (b.y - a.y);
                if x > p.x {
                    inside = !inside;
                }
            }
        }
        inside
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poly(points: &[(f64, f64)]) -> Result<Polygon, PolygonError> {
        Polygon::new(points.iter().map(|&(x, y)| Point::new(x, y)).collect())
    }

    #[test]
    fn right_of_a_directed_line_is_positive_on_screen() {
        // Walking right along the top of the screen, the screen's lower part is on the right.
        let (a, b) = (Point::new(0.0, 0.0), Point::new(10.0, 0.0));
        assert!(cross(a, b, Point::new(5.0, 3.0)) > 0.0);
        assert!(cross(a, b, Point::new(5.0, -3.0)) < 0.0);
        let s = Segment { a, b };
        assert_eq!(s.signed_distance(Point::new(5.0, 3.0)), 3.0);
        assert_eq!(s.signed_distance(Point::new(-50.0, -2.0)), -2.0);
    }

    #[test]
    fn a_path_crosses_within_the_segment_or_not() {
        let s = Segment { a: Point::new(0.0, 0.0), b: Point::new(10.0, 0.0) };
        assert!(s.crossed_within(Point::new(5.0, -1.0), Point::new(5.0, 1.0)));
        assert!(s.crossed_within(Point::new(10.0, -1.0), Point::new(10.0, 1.0)), "an end counts");
        assert!(!s.crossed_within(Point::new(11.0, -1.0), Point::new(11.0, 1.0)));
        assert!(!s.crossed_within(Point::new(-3.0, -1.0), Point::new(-1.0, 1.0)));
    }

    #[test]
    fn polygons_are_checked() {
        assert!(poly(&[(0.0, 0.0), (4.0, 0.0), (4.0, 4.0), (0.0, 4.0)]).is_ok());
        assert_eq!(poly(&[(0.0, 0.0), (4.0, 0.0)]), Err(PolygonError::TooFewPoints(2)));
        assert_eq!(poly(&[(0.0, 0.0), (4.0, f64::NAN), (4.0, 4.0)]), Err(PolygonError::NotFinite(1)));
        assert_eq!(poly(&[(0.0, 0.0), (4.0, 0.0), (4.0, 4.0), (0.0, 0.0)]), Err(PolygonError::RepeatedPoint(0)));
        // A bow tie: edges 0 and 2 cross.
        assert_eq!(poly(&[(0.0, 0.0), (4.0, 4.0), (4.0, 0.0), (0.0, 4.0)]), Err(PolygonError::EdgesIntersect(0, 2)));
        // A spike folding back along itself.
        assert_eq!(poly(&[(0.0, 0.0), (4.0, 0.0), (2.0, 0.0), (2.0, 3.0)]), Err(PolygonError::EdgesIntersect(0, 1)));
        // A vertex touching a non-adjacent edge.
        assert_eq!(poly(&[(0.0, 0.0), (4.0, 0.0), (4.0, 4.0), (2.0, 0.0), (0.0, 4.0)]), Err(PolygonError::EdgesIntersect(0, 2)));
        assert_eq!(poly(&[(0.0, 0.0), (1.0, 1.0), (2.0, 2.0)]), Err(PolygonError::EdgesIntersect(1, 2)));
    }

    #[test]
    fn covers_inside_and_boundary_not_outside() {
        // An L shape, concave at (2, 2).
        let l = poly(&[(0.0, 0.0), (4.0, 0.0), (4.0, 2.0), (2.0, 2.0), (2.0, 4.0), (0.0, 4.0)]).unwrap();
        for (p, inside) in [
            ((1.0, 1.0), true),
            ((3.0, 1.0), true),
            ((1.0, 3.0), true),
            ((3.0, 3.0), false),
            ((4.0, 1.0), true),
            ((2.0, 3.0), true),
            ((0.0, 0.0), true),
            ((5.0, 1.0), false),
            ((-0.1, 2.0), false),
            ((1.0, 2.0), true),
        ] {
            assert_eq!(l.covers(Point::new(p.0, p.1)), inside, "{p:?}");
        }
    }
}
