//! Change points in a label's history (issue 13; the statistics, not yet wired to
//! `runs history`): where a series of measurements (one value per batch, in time order)
//! changes its distribution.
//!
//! E-Divisive with α = 1 (Matteson and James, "A Nonparametric Approach for Multiple
//! Change Point Analysis of Multivariate Data", JASA 2014; the method MongoDB's and Apache
//! Otava's performance tooling use): each candidate split of a segment is scored by the
//! energy distance between its two sides, scaled by their sizes; the best split is kept
//! when a permutation test (the segment's values shuffled, seeded) says a split that good
//! is unlikely by chance, and both sides are searched again. Segments shorter than a
//! minimum length are not split.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::verdict::median_of;

/// How change points are searched for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// The fewest values on either side of a change point (default 5).
    pub min_segment: usize,
    /// The p-value below which a change point is kept (default 0.05).
    pub significance: f64,
    /// Permutations per test (default 199).
    pub permutations: usize,
    /// Seed of the permutations: the same series and seed give the same points.
    pub seed: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            min_segment: 5,
            significance: 0.05,
            permutations: 199,
            seed: 0x6564_6976_6973_6976,
        }
    }
}

/// One change point.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangePoint {
    /// The index of the first value after the change.
    pub index: usize,
    /// The median after over the median before, within the segment it split.
    pub magnitude: f64,
    /// The permutation test's p-value (its confidence is 1 - p).
    pub p: f64,
}

/// The scaled energy statistic of splitting `xs` at `tau` (α = 1):
/// `τ(n-τ)/n · (2/(τ(n-τ)) Σ|x-y| - 1/C(τ,2) Σ|x-x'| - 1/C(n-τ,2) Σ|y-y'|)`.
pub fn energy(xs: &[f64], tau: usize) -> f64 {
    let (a, b) = xs.split_at(tau);
    let (m, k) = (a.len() as f64, b.len() as f64);
    if a.len() < 2 || b.len() < 2 {
        return 0.0;
    }
    let between: f64 = a
        .iter()
        .flat_map(|x| b.iter().map(move |y| (x - y).abs()))
        .sum();
    let within = |s: &[f64]| -> f64 {
        let mut t = 0.0;
        for i in 0..s.len() {
            for j in i + 1..s.len() {
                t += (s[i] - s[j]).abs();
            }
        }
        t / (s.len() * (s.len() - 1) / 2) as f64
    };
    let e = 2.0 * between / (m * k) - within(a) - within(b);
    m * k / (m + k) * e
}

/// The best split of `xs` with at least `min` values a side, and its statistic. Every
/// split is scored in O(n) from the one before (a value moves from the right side to the
/// left: its distances to the left join the left's sum and leave the between sum, its
/// distances to the right leave the right's and join the between), so a search is
/// O(n²), not the O(n³) of scoring each split afresh with [`energy`].
fn best_split(xs: &[f64], min: usize) -> Option<(usize, f64)> {
    let min = min.max(2);
    let n = xs.len();
    if n < 2 * min {
        return None;
    }
    let d = |i: usize, j: usize| (xs[i] - xs[j]).abs();
    // Sums of distances within the left, within the right, and between, for tau = 0.
    let (mut left, mut between) = (0.0, 0.0);
    let mut right: f64 = (0..n)
        .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
        .map(|(i, j)| d(i, j))
        .sum();
    let mut best: Option<(usize, f64)> = None;
    for tau in 1..=n - min {
        let x = tau - 1;
        let to_left: f64 = (0..x).map(|i| d(x, i)).sum();
        let to_right: f64 = (tau..n).map(|j| d(x, j)).sum();
        left += to_left;
        right -= to_right;
        between += to_right - to_left;
        if tau < min {
            continue;
        }
        let (m, k) = (tau as f64, (n - tau) as f64);
        let e =
            2.0 * between / (m * k) - left / (m * (m - 1.0) / 2.0) - right / (k * (k - 1.0) / 2.0);
        let stat = m * k / (m + k) * e;
        if best.is_none_or(|(_, b)| stat > b) {
            best = Some((tau, stat));
        }
    }
    best
}

/// The change points of `series`, in order.
pub fn detect(series: &[f64], s: &Settings) -> Vec<ChangePoint> {
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let mut found = Vec::new();
    let mut segments = vec![(0, series.len())];
    while let Some((start, end)) = segments.pop() {
        let seg = &series[start..end];
        let Some((tau, stat)) = best_split(seg, s.min_segment) else {
            continue;
        };
        let mut shuffled = seg.to_vec();
        let mut as_good = 0;
        for _ in 0..s.permutations {
            shuffled.shuffle(&mut rng);
            if best_split(&shuffled, s.min_segment).is_some_and(|(_, t)| t >= stat) {
                as_good += 1;
            }
        }
        let p = (as_good + 1) as f64 / (s.permutations + 1) as f64;
        if p >= s.significance {
            continue;
        }
        let before = median_of(&seg[..tau]);
        found.push(ChangePoint {
            index: start + tau,
            magnitude: if before > 0.0 {
                median_of(&seg[tau..]) / before
            } else {
                f64::NAN
            },
            p,
        });
        segments.push((start, start + tau));
        segments.push((start + tau, end));
    }
    found.sort_by_key(|c| c.index);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Worked by hand: [0, 0 | 1, 1]: between 4 × 1 → 2/(2·2)·4 = 2, within 0 on each side,
    /// scaled by 2·2/4 = 1: 2. [0, 1 | 0, 1]: between |0-0|+|0-1|+|1-0|+|1-1| = 2 → 1,
    /// within 1 on each side: 1 - 1 - 1 = -1.
    #[test]
    fn the_energy_statistic_by_hand() {
        assert!((energy(&[0.0, 0.0, 1.0, 1.0], 2) - 2.0).abs() < 1e-12);
        assert!((energy(&[0.0, 1.0, 0.0, 1.0], 2) + 1.0).abs() < 1e-12);
        assert_eq!(
            energy(&[0.0, 1.0, 2.0], 1),
            0.0,
            "a side of one has no within term"
        );
    }

    /// A series with a small deterministic wobble (a sine of period 7) and steps where the
    /// construction put them.
    fn series(levels: &[(usize, f64)]) -> Vec<f64> {
        let mut out = Vec::new();
        for &(n, level) in levels {
            for _ in 0..n {
                let i = out.len() as f64;
                out.push(level * (1.0 + 0.01 * (i * 0.9).sin()));
            }
        }
        out
    }

    #[test]
    fn steps_are_found_where_they_are_and_flat_series_have_none() {
        let s = Settings::default();
        let one = detect(&series(&[(20, 100.0), (20, 110.0)]), &s);
        let [c] = &one[..] else { panic!("{one:?}") };
        assert_eq!(c.index, 20);
        assert!((c.magnitude - 1.1).abs() < 0.01, "{c:?}");
        assert!(c.p < 0.05, "{c:?}");
        let two = detect(&series(&[(15, 100.0), (15, 90.0), (15, 100.0)]), &s);
        let indices: Vec<usize> = two.iter().map(|c| c.index).collect();
        assert_eq!(indices, [15, 30], "{two:?}");
        assert!(detect(&series(&[(40, 100.0)]), &s).is_empty());
        // Noise and one wild outlier are no change.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut noisy: Vec<f64> = (0..40)
            .map(|_| 100.0 + 2.0 * (rand::Rng::random::<f64>(&mut rng) - 0.5))
            .collect();
        noisy[17] = 300.0;
        assert!(detect(&noisy, &s).is_empty(), "{:?}", detect(&noisy, &s));
        assert!(detect(&[1.0; 6], &s).is_empty(), "too short to split");
    }

    /// The incremental search scores every split as the formula does.
    #[test]
    fn the_incremental_search_agrees_with_the_formula() {
        let xs = [
            3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0, 8.0, 9.0, 7.0,
        ];
        let (tau, stat) = best_split(&xs, 3).unwrap();
        let (want_tau, want) = (3..=xs.len() - 3)
            .map(|t| (t, energy(&xs, t)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        assert_eq!(tau, want_tau);
        assert!((stat - want).abs() < 1e-9, "{stat} {want}");
    }
}
