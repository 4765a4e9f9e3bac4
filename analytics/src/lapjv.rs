//! Linear assignment by the Jonker-Volgenant algorithm (LAPJV), as the `lap` package 0.5.13 solves
//! it for `lap.lapjv(cost, extend_cost=True, cost_limit=limit)`: the `rows x cols` matrix is padded
//! to a square of `rows + cols` whose extra cells cost `limit / 2` (and 0 where a dummy row meets a
//! dummy column), so leaving a row and a column unmatched costs `limit` and no pair costing more
//! is ever matched. That is not "solve, then drop pairs above the limit": a pair costing less than
//! the limit can still be left out when matching it would cost others more.
//!
//! Ties decide ids, so the solver follows the algorithm's steps in the same order as `lap`'s
//! (BSD-2-Clause, Tomas Kazmar): column reduction, reduction transfer, two rounds of augmenting
//! row reduction, then shortest augmenting paths, on the same f64 arithmetic. The constant `LARGE`
//! is `lap`'s too, so costs at or above it behave alike (the tracker's never come near it).

/// `lap`'s stand-in for infinity in the reductions.
const LARGE: f64 = 1_000_000.0;

/// The result: for each row the column it got, and for each column its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub row_to_col: Vec<Option<usize>>,
    pub col_to_row: Vec<Option<usize>>,
}

/// Assigns rows to columns of a `rows x cols` row-major `cost` matrix, at most `limit` per pair.
pub fn assign(cost: &[f64], rows: usize, cols: usize, limit: f64) -> Assignment {
    assert_eq!(cost.len(), rows * cols, "cost is not {rows} x {cols}");
    let n = rows + cols;
    let mut square = Square { n, cost: vec![limit / 2.0; n * n] };
    for i in 0..n {
        for j in 0..n {
            if i < rows && j < cols {
                square.cost[i * n + j] = cost[i * cols + j];
            } else if i >= rows && j >= cols {
                square.cost[i * n + j] = 0.0;
            }
        }
    }
    let (x, y) = square.solve();
    Assignment {
        row_to_col: x[..rows].iter().map(|&j| (j < cols).then_some(j)).collect(),
        col_to_row: y[..cols].iter().map(|&i| (i < rows).then_some(i)).collect(),
    }
}

/// A square problem. Rows and columns not yet assigned are `None` in `x` (row -> column) and
/// `y` (column -> row); `v` holds the column prices (dual variables).
struct Square {
    n: usize,
    cost: Vec<f64>,
}

impl Square {
    fn c(&self, i: usize, j: usize) -> f64 {
        self.cost[i * self.n + j]
    }

    /// Returns the complete assignment (row -> column, column -> row).
    fn solve(&self) -> (Vec<usize>, Vec<usize>) {
        let mut st = State { x: vec![None; self.n], y: vec![None; self.n], v: vec![LARGE; self.n] };
        let mut free = self.column_reduction(&mut st);
        for _ in 0..2 {
            if free.is_empty() {
                break;
            }
            free = self.augmenting_row_reduction(&mut st, free);
        }
        let mut pred = vec![0; self.n];
        for &start in &free {
            let mut j = self.shortest_path(&mut st, start, &mut pred);
            // Flip the path back to its start row.
            loop {
                let i = pred[j];
                st.y[j] = Some(i);
                let prev = st.x[i].replace(j);
                if i == start {
                    break;
                }
                j = prev.expect("a row on an augmenting path is assigned");
            }
        }
        let unwrap = |a: Vec<Option<usize>>| a.into_iter().map(|k| k.expect("the augmentation assigns everything")).collect();
        (unwrap(st.x), unwrap(st.y))
    }

    /// Column reduction and reduction transfer: each column goes to the row of its smallest cost
    /// (the last column wins a row that several choose), and a row holding one column lowers that
    /// column's price by its second-best margin. Returns the rows left free, in order.
    fn column_reduction(&self, st: &mut State) -> Vec<usize> {
        let n = self.n;
        // The row each column prefers; `lap` starts it at row 0, which a column whose every
        // cost is LARGE or more keeps.
        let mut best_row = vec![0; n];
        for i in 0..n {
            for (j, (v, best)) in st.v.iter_mut().zip(&mut best_row).enumerate() {
                if self.c(i, j) < *v {
                    *v = self.c(i, j);
                    *best = i;
                }
            }
        }
        let mut unique = vec![true; n];
        for j in (0..n).rev() {
            let i = best_row[j];
            if st.x[i].is_none() {
                st.x[i] = Some(j);
                st.y[j] = Some(i);
            } else {
                unique[i] = false;
            }
        }
        let mut free = Vec::new();
        for (i, (x, unique)) in st.x.iter().zip(unique).enumerate() {
            match *x {
                None => free.push(i),
                Some(j) if unique => {
                    let mut min = LARGE;
                    for j2 in (0..n).filter(|&j2| j2 != j) {
                        let c = self.c(i, j2) - st.v[j2];
                        if c < min {
                            min = c;
                        }
                    }
                    st.v[j] -= min;
                }
                Some(_) => {}
            }
        }
        free
    }

    /// One round of augmenting row reduction over the free rows; returns the rows still free.
    fn augmenting_row_reduction(&self, st: &mut State, mut free: Vec<usize>) -> Vec<usize> {
        let n = self.n;
        let n_free = free.len();
        let mut current = 0;
        let mut still_free = 0;
        let mut rounds = 0;
        while current < n_free {
            rounds += 1;
            let i = free[current];
            current += 1;
            // The row's best and second-best reduced costs.
            let (mut j1, mut u1) = (0, self.c(i, 0) - st.v[0]);
            let (mut j2, mut u2) = (None, LARGE);
            for j in 1..n {
                let c = self.c(i, j) - st.v[j];
                if c < u2 {
                    if c >= u1 {
                        (j2, u2) = (Some(j), c);
                    } else {
                        (j2, u2) = (Some(j1), u1);
                        (j1, u1) = (j, c);
                    }
                }
            }
            let mut i0 = st.y[j1];
            let v1_new = st.v[j1] - (u2 - u1);
            let v1_lowers = v1_new < st.v[j1];
            // `lap` bounds the work: past `current * n` rounds a displaced row waits for the
            // augmentation instead of being retried at once.
            if rounds < current * n {
                if v1_lowers {
                    st.v[j1] = v1_new;
                } else if let (Some(_), Some(j2)) = (i0, j2) {
                    j1 = j2;
                    i0 = st.y[j2];
                }
                if let Some(i0) = i0 {
                    if v1_lowers {
                        current -= 1;
                        free[current] = i0;
                    } else {
                        free[still_free] = i0;
                        still_free += 1;
                    }
                }
            } else if let Some(i0) = i0 {
                free[still_free] = i0;
                still_free += 1;
            }
            st.x[i] = Some(j1);
            st.y[j1] = Some(i);
        }
        free.truncate(still_free);
        free
    }

    /// Dijkstra from row `start` over reduced costs to the nearest unassigned column, which it
    /// returns; `pred[j]` is the row before column `j` on the path. Updates the prices of the
    /// columns settled before the last distance.
    fn shortest_path(&self, st: &mut State, start: usize, pred: &mut [usize]) -> usize {
        let n = self.n;
        // cols[..lo] are settled (READY), cols[lo..hi] are at the current minimum distance (SCAN),
        // cols[hi..] are the rest (TODO).
        let mut cols: Vec<usize> = (0..n).collect();
        let mut d: Vec<f64> = (0..n).map(|j| self.c(start, j) - st.v[j]).collect();
        pred.fill(start);
        let (mut lo, mut hi) = (0, 0);
        let mut n_ready = 0;
        let end = 'search: loop {
            if lo == hi {
                n_ready = lo;
                hi = Self::collect_minimum(&d, &mut cols, lo);
                // `lap` takes the last free column at the minimum.
                if let Some(&j) = cols[lo..hi].iter().rev().find(|&&j| st.y[j].is_none()) {
                    break 'search j;
                }
            }
            // Relax through the SCAN columns' rows; `lo` only advances on a full pass, as in `lap`.
            let mut k = lo;
            while k != hi {
                let j = cols[k];
                k += 1;
                let i = st.y[j].expect("a SCAN column is assigned");
                let mind = d[j];
                let h = self.c(i, j) - st.v[j] - mind;
                // The TODO range is the one at the start of the pass, though `hi` grows in it.
                let todo = hi;
                for t in todo..n {
                    let j = cols[t];
                    let reduced = self.c(i, j) - st.v[j] - h;
                    if reduced < d[j] {
                        d[j] = reduced;
                        pred[j] = i;
                        if reduced == mind {
                            if st.y[j].is_none() {
                                break 'search j;
                            }
                            cols.swap(t, hi);
                            hi += 1;
                        }
                    }
                }
            }
            lo = k;
        };
        let mind = d[cols[lo]];
        for &j in &cols[..n_ready] {
            st.v[j] += d[j] - mind;
        }
        end
    }

    /// Moves the columns of `cols[lo..]` at the smallest distance to `cols[lo..hi]`; returns `hi`.
    fn collect_minimum(d: &[f64], cols: &mut [usize], lo: usize) -> usize {
        let mut hi = lo + 1;
        let mut mind = d[cols[lo]];
        for k in lo + 1..cols.len() {
            let j = cols[k];
            if d[j] <= mind {
                if d[j] < mind {
                    hi = lo;
                    mind = d[j];
                }
                cols.swap(k, hi);
                hi += 1;
            }
        }
        hi
    }
}

struct State {
    x: Vec<Option<usize>>,
    y: Vec<Option<usize>>,
    v: Vec<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(a: &Assignment) -> Vec<Option<usize>> {
        a.row_to_col.clone()
    }

    /// Every assignment of a small matrix, by brute force: the cheapest total, counting an
    /// unmatched row or column as limit / 2.
    fn brute_force(cost: &[f64], r: usize, c: usize, limit: f64) -> f64 {
        fn go(cost: &[f64], r: usize, c: usize, limit: f64, i: usize, used: &mut Vec<bool>) -> f64 {
            if i == r {
                return used.iter().filter(|u| !**u).count() as f64 * limit / 2.0;
            }
            let mut best = limit / 2.0 + go(cost, r, c, limit, i + 1, used);
            for j in 0..c {
                if !used[j] {
                    used[j] = true;
                    best = best.min(cost[i * c + j] + go(cost, r, c, limit, i + 1, used));
                    used[j] = false;
                }
            }
            best
        }
        go(cost, r, c, limit, 0, &mut vec![false; c])
    }

    fn total(a: &Assignment, cost: &[f64], c: usize, limit: f64) -> f64 {
        let matched: f64 = a.row_to_col.iter().enumerate().filter_map(|(i, j)| j.map(|j| cost[i * c + j])).sum();
        let unmatched = a.row_to_col.iter().filter(|j| j.is_none()).count() + a.col_to_row.iter().filter(|i| i.is_none()).count();
        matched + unmatched as f64 * limit / 2.0
    }

    #[test]
    fn matches_below_the_limit_only() {
        let cost = [0.1, 0.9, 0.95, 0.2];
        let a = assign(&cost, 2, 2, 0.8);
        assert_eq!(rows(&a), vec![Some(0), Some(1)]);
        let a = assign(&cost, 2, 2, 0.15);
        assert_eq!(rows(&a), vec![Some(0), None]);
        assert_eq!(a.col_to_row, vec![Some(0), None]);
    }

    #[test]
    fn padding_is_not_solve_then_drop() {
        // Solving without the limit pairs (0,1) and (1,0) for 0.7 + 0.7 = 1.4 < 0.1 + 2.0: both
        // under the limit 0.8, so "solve, then drop" would keep both. With the padding, (0,0) at
        // 0.1 and row 1, column 1 unmatched cost 0.1 + 0.8 = 0.9 < 1.4.
        let cost = [0.1, 0.7, 0.7, 2.0];
        let a = assign(&cost, 2, 2, 0.8);
        assert_eq!(rows(&a), vec![Some(0), None]);
    }

    #[test]
    fn a_cost_equal_to_the_limit_against_unmatched() {
        // 1 x 1 at the limit: matching costs 0.5, leaving both 0.25 + 0.25; `lap` matches.
        let a = assign(&[0.5], 1, 1, 0.5);
        assert_eq!(rows(&a), vec![Some(0)]);
        // Just above: unmatched.
        let a = assign(&[0.5000001], 1, 1, 0.5);
        assert_eq!(rows(&a), vec![None]);
    }

    #[test]
    fn ties_resolve_as_lap_does() {
        // Two identical rows: `lap` 0.5.13 gives row 0 the second column (checked with
        // lap.lapjv([[0.1, 0.2], [0.1, 0.2]], extend_cost=True, cost_limit=0.8)).
        let a = assign(&[0.1, 0.2, 0.1, 0.2], 2, 2, 0.8);
        assert_eq!(rows(&a), vec![Some(1), Some(0)]);
    }

    #[test]
    fn ties_among_free_columns_go_to_the_last() {
        // lap.lapjv([[0.2, 0.2, 0.4], [0.4, 0.6, 0.4]], extend_cost=True, cost_limit=0.4) gives
        // x = [0, 2]: the shortest path reaches two free columns at once and takes the last.
        let a = assign(&[0.2, 0.2, 0.4, 0.4, 0.6, 0.4], 2, 3, 0.4);
        assert_eq!(rows(&a), vec![Some(0), Some(2)]);
    }

    #[test]
    fn empty_sides() {
        let a = assign(&[], 0, 3, 0.8);
        assert_eq!(a.col_to_row, vec![None; 3]);
        let a = assign(&[], 2, 0, 0.8);
        assert_eq!(a.row_to_col, vec![None; 2]);
    }

    #[test]
    fn optimal_on_random_matrices() {
        // A small linear congruential generator: deterministic, no dependency.
        let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        for _ in 0..2000 {
            let r = 1 + (next() * 5.0) as usize;
            let c = 1 + (next() * 5.0) as usize;
            // Coarse values make ties common.
            let cost: Vec<f64> = (0..r * c).map(|_| (next() * 10.0).floor() / 10.0).collect();
            let limit = 0.2 + next();
            let a = assign(&cost, r, c, limit);
            for (i, j) in a.row_to_col.iter().enumerate() {
                if let Some(j) = j {
                    assert_eq!(a.col_to_row[*j], Some(i));
                }
            }
            let best = brute_force(&cost, r, c, limit);
            assert!((total(&a, &cost, c, limit) - best).abs() < 1e-9, "{cost:?} {r}x{c} limit {limit}");
        }
    }
}
