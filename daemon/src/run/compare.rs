//! Comparing two sets of runs: Welch's t-test on the means plus a relative threshold.
//!
//! A change is reported only when it is both statistically significant (two-sided p-value
//! below `alpha`, default 0.05) and large enough to matter (the relative change of the
//! mean beyond `threshold`, default 2 %). Welch's test does not assume equal variances,
//! which benchmark samples rarely have.

use cleanroom_proto::{Comparison, Verdict};
use statrs::distribution::{ContinuousCDF, StudentsT};

fn mean_var(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var)
}

/// Compares `current` against `baseline` samples of `metric` (lower is better).
pub fn compare(
    metric: &str,
    baseline: &[f64],
    current: &[f64],
    alpha: f64,
    threshold: f64,
) -> Option<Comparison> {
    if baseline.is_empty() || current.is_empty() {
        return None;
    }
    let (m1, v1) = mean_var(baseline);
    let (m2, v2) = mean_var(current);
    let (n1, n2) = (baseline.len() as f64, current.len() as f64);
    let se2 = v1 / n1 + v2 / n2;
    let p_value = if se2 <= 0.0 || n1 < 2.0 || n2 < 2.0 {
        if (m1 - m2).abs() < f64::EPSILON {
            1.0
        } else {
            0.0
        }
    } else {
        let t = (m2 - m1) / se2.sqrt();
        let df = se2.powi(2) / ((v1 / n1).powi(2) / (n1 - 1.0) + (v2 / n2).powi(2) / (n2 - 1.0));
        match StudentsT::new(0.0, 1.0, df) {
            Ok(dist) => 2.0 * (1.0 - dist.cdf(t.abs())),
            Err(_) => 1.0,
        }
    };
    let change = if m1 != 0.0 { (m2 - m1) / m1 } else { 0.0 };
    let verdict = if p_value < alpha && change.abs() > threshold {
        if change > 0.0 {
            Verdict::Slower
        } else {
            Verdict::Faster
        }
    } else {
        Verdict::NoChange
    };
    Some(Comparison {
        metric: metric.to_owned(),
        baseline_mean: m1,
        mean: m2,
        change_percent: change * 100.0,
        p_value,
        confidence_percent: (1.0 - p_value) * 100.0,
        alpha,
        threshold_percent: threshold * 100.0,
        verdict,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_regression_is_slower() {
        let base = [100.0, 101.0, 99.0, 100.5, 99.5, 100.2];
        let cur = [110.0, 111.0, 109.0, 110.5, 109.5, 110.2];
        let c = compare("wall_ms", &base, &cur, 0.05, 0.02).unwrap();
        assert_eq!(c.verdict, Verdict::Slower);
        assert!(c.p_value < 1e-6, "{}", c.p_value);
        assert!((c.change_percent - 10.0).abs() < 0.1);
        let c = compare("wall_ms", &cur, &base, 0.05, 0.02).unwrap();
        assert_eq!(c.verdict, Verdict::Faster);
    }

    #[test]
    fn noise_or_tiny_changes_are_no_change() {
        let base = [100.0, 130.0, 80.0, 120.0, 90.0];
        let cur = [105.0, 125.0, 85.0, 118.0, 95.0];
        assert_eq!(
            compare("wall_ms", &base, &cur, 0.05, 0.02).unwrap().verdict,
            Verdict::NoChange
        );
        // Significant but under the threshold.
        let base = [100.0, 100.1, 99.9, 100.0, 100.05, 99.95];
        let cur = [101.0, 101.1, 100.9, 101.0, 101.05, 100.95];
        let c = compare("wall_ms", &base, &cur, 0.05, 0.02).unwrap();
        assert!(c.p_value < 0.05);
        assert_eq!(c.verdict, Verdict::NoChange);
        assert!(compare("wall_ms", &[], &cur, 0.05, 0.02).is_none());
    }

    #[test]
    fn p_value_matches_a_known_welch_test() {
        // Welch by hand: t = 2.074, df = 10.21; the two-sided tail of Student's t, integrated
        // numerically, is p = 0.0643.
        let a = [19.8, 20.4, 19.6, 17.8, 18.5, 18.9, 18.3, 18.9, 19.5, 22.0];
        let b = [28.2, 26.6, 20.1, 23.3, 25.2, 22.1, 17.7, 27.6, 20.6, 13.7];
        let c = compare("x", &a, &b, 0.05, 0.0).unwrap();
        assert!((c.p_value - 0.0643).abs() < 0.001, "{}", c.p_value);
        assert_eq!(c.verdict, Verdict::NoChange, "p above alpha");
    }
}
