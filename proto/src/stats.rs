//! Statistics over repeated runs: the daemon's summaries and the client's charts use the
//! same quartiles.

use crate::Summary;

/// Q1, median and Q3 by linear interpolation between order statistics (R's type 7, numpy's
/// default). `None` for an empty sample.
pub fn quartiles(values: &[f64]) -> Option<[f64; 3]> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let pos = p * (sorted.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
    };
    Some([q(0.25), q(0.5), q(0.75)])
}

/// Tukey's fences: values outside Q1 − 1.5·IQR … Q3 + 1.5·IQR are outliers.
pub fn fences([q1, _, q3]: [f64; 3]) -> (f64, f64) {
    let iqr = q3 - q1;
    (q1 - 1.5 * iqr, q3 + 1.5 * iqr)
}

/// Mean, median, sample standard deviation, coefficient of variation, min, max, and the
/// indexes of outliers by Tukey's rule (outside Q1 − 1.5·IQR … Q3 + 1.5·IQR, quartiles by
/// linear interpolation). `None` for an empty sample.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    let stddev = var.sqrt();
    let quartiles = quartiles(values)?;
    let median = quartiles[1];
    let (lo, hi) = fences(quartiles);
    let outliers = values
        .iter()
        .enumerate()
        .filter(|(_, v)| **v < lo || **v > hi)
        .map(|(i, _)| i)
        .collect();
    Some(Summary {
        mean,
        median,
        stddev,
        cv_percent: if mean != 0.0 {
            stddev / mean * 100.0
        } else {
            0.0
        },
        min: values.iter().copied().fold(f64::INFINITY, f64::min),
        max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        outliers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let s = summarize(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert_eq!(s.mean, 5.0);
        assert_eq!(s.median, 4.5);
        assert!((s.stddev - 2.138_089_935).abs() < 1e-6, "{}", s.stddev);
        assert!((s.cv_percent - 42.761_798_7).abs() < 1e-4);
        assert_eq!((s.min, s.max), (2.0, 9.0));
        // Q1 = 4, Q3 = 5.5 (linear interpolation): the fences are 1.75 and 7.75.
        assert_eq!(s.outliers, vec![7]);
    }

    #[test]
    fn quartiles_as_numpy_computes_them() {
        // numpy.percentile(range(1, 11), [25, 50, 75]) = [3.25, 5.5, 7.75].
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(quartiles(&v), Some([3.25, 5.5, 7.75]));
        assert_eq!(fences([3.25, 5.5, 7.75]), (-3.5, 14.5));
        assert_eq!(quartiles(&[]), None);
    }

    #[test]
    fn tukey_outliers() {
        let s = summarize(&[10.0, 10.1, 9.9, 10.0, 10.2, 30.0]).unwrap();
        assert_eq!(s.outliers, vec![5]);
        assert!(summarize(&[]).is_none());
        let one = summarize(&[3.0]).unwrap();
        assert_eq!((one.stddev, one.median), (0.0, 3.0));
    }
}
