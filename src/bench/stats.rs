//! Order statistics of timing samples.

/// The `p`-th percentile (0..=100) of sorted `v`, interpolated between the
/// two nearest ranks; NaN for no samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let rank = p.clamp(0.0, 100.0) / 100.0 * (n - 1) as f64;
            let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

pub fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

pub fn median(v: &[f64]) -> f64 {
    percentile(&sorted(v), 50.0)
}

/// Median and quartiles and the 99th percentile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub p25: f64,
    pub p75: f64,
    pub p99: f64,
}

pub fn summary(v: &[f64]) -> Summary {
    let s = sorted(v);
    Summary {
        median: percentile(&s, 50.0),
        p25: percentile(&s, 25.0),
        p75: percentile(&s, 75.0),
        p99: percentile(&s, 99.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let v = [4.0, 1.0, 3.0, 2.0];
        let s = summary(&v);
        assert_eq!(s.median, 2.5);
        assert_eq!(s.p25, 1.75);
        assert_eq!(s.p75, 3.25);
        assert!((s.p99 - 3.97).abs() < 1e-9);
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[7.0]), 7.0);
    }
}
