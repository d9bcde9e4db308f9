//! Statistics across runs: mean, standard deviation, 95 % confidence interval, CV.

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};

/// Coefficient of variation above which a summary is flagged as noisy.
pub const HIGH_CV: f64 = 0.10;

/// Summary of one metric over runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stats {
    /// Number of values.
    pub n: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// Sample standard deviation (n − 1); absent for one value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sd: Option<f64>,
    /// Half-width of the 95 % confidence interval of the mean (Student t); absent for one value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ci95: Option<f64>,
    /// Coefficient of variation, sd / |mean|; absent when undefined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cv: Option<f64>,
}

impl Stats {
    /// Summarizes the values; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Stats> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        if n == 1 {
            return Some(Stats {
                n,
                mean,
                sd: None,
                ci95: None,
                cv: None,
            });
        }
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let sd = var.sqrt();
        let t = StudentsT::new(0.0, 1.0, (n - 1) as f64)
            .expect("n > 1 gives valid degrees of freedom")
            .inverse_cdf(0.975);
        Some(Stats {
            n,
            mean,
            sd: Some(sd),
            ci95: Some(t * sd / (n as f64).sqrt()),
            cv: (mean != 0.0).then(|| sd / mean.abs()),
        })
    }

    /// Whether the runs disagree more than [`HIGH_CV`].
    pub fn noisy(&self) -> bool {
        self.cv.is_some_and(|cv| cv > HIGH_CV)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_hand_computed_values() {
        // values 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.302653, ci = 4.302653 / sqrt(3)
        let s = Stats::of(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.mean, 2.0);
        assert!((s.sd.unwrap() - 1.0).abs() < 1e-12);
        assert!((s.ci95.unwrap() - 2.484138).abs() < 1e-5, "{s:?}");
        assert!((s.cv.unwrap() - 0.5).abs() < 1e-12);
        assert!(s.noisy());
        let one = Stats::of(&[5.0]).unwrap();
        assert_eq!((one.sd, one.ci95), (None, None));
        assert!(Stats::of(&[]).is_none());
    }
}
