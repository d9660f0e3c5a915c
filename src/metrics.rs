//! Classification metrics and loss-stability figures.
//!
//! Pure functions over predictions and per-step logs, so that the numbers in
//! a run's summary are testable without a model.

use serde::{Deserialize, Serialize};

/// Counts of (true label, predicted label) pairs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    /// `counts[true][predicted]`.
    pub counts: Vec<Vec<u64>>,
}

impl Confusion {
    /// The confusion matrix of `predicted` against `truth` over `classes` labels.
    pub fn new(truth: &[u32], predicted: &[u32], classes: usize) -> Confusion {
        let mut counts = vec![vec![0u64; classes]; classes];
        for (&t, &p) in truth.iter().zip(predicted) {
            if (t as usize) < classes && (p as usize) < classes {
                counts[t as usize][p as usize] += 1;
            }
        }
        Confusion { counts }
    }

    /// Examples counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    /// Share of correct predictions (0 with no examples).
    pub fn accuracy(&self) -> f64 {
        let total = self.total();
        if total == 0 {
            return 0.0;
        }
        let correct: u64 = (0..self.counts.len()).map(|i| self.counts[i][i]).sum();
        correct as f64 / total as f64
    }

    /// F1 of each class; a class never predicted and never present scores 0.
    pub fn f1_per_class(&self) -> Vec<f64> {
        let n = self.counts.len();
        (0..n)
            .map(|c| {
                let tp = self.counts[c][c] as f64;
                let predicted: u64 = (0..n).map(|t| self.counts[t][c]).sum();
                let actual: u64 = self.counts[c].iter().sum();
                let denom = predicted as f64 + actual as f64;
                if denom == 0.0 { 0.0 } else { 2.0 * tp / denom }
            })
            .collect()
    }

    /// Unweighted mean of the per-class F1 scores.
    pub fn macro_f1(&self) -> f64 {
        let f1 = self.f1_per_class();
        if f1.is_empty() {
            0.0
        } else {
            f1.iter().sum::<f64>() / f1.len() as f64
        }
    }
}

/// How steady training was.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stability {
    /// Standard deviation of the loss over the second half of the steps.
    pub loss_std_second_half: f64,
    /// Steps whose loss exceeds the mean of the preceding window by more than
    /// three of its standard deviations.
    pub spikes: u64,
    /// The largest gradient norm seen (before clipping).
    pub max_grad_norm: f64,
    /// Steps with a non-finite loss.
    pub non_finite: u64,
}

/// Steps in the moving window that spikes are measured against.
pub const SPIKE_WINDOW: usize = 50;

/// Stability figures of a run's per-step losses and gradient norms.
pub fn stability(losses: &[f64], grad_norms: &[f64]) -> Stability {
    let finite: Vec<f64> = losses.iter().copied().filter(|l| l.is_finite()).collect();
    let second = &finite[finite.len() / 2..];
    let mut spikes = 0;
    for i in SPIKE_WINDOW..finite.len() {
        let (mean, std) = mean_std(&finite[i - SPIKE_WINDOW..i]);
        if std > 0.0 && finite[i] > mean + 3.0 * std {
            spikes += 1;
        }
    }
    Stability {
        loss_std_second_half: mean_std(second).1,
        spikes,
        max_grad_norm: grad_norms
            .iter()
            .copied()
            .filter(|g| g.is_finite())
            .fold(0.0, f64::max),
        non_finite: (losses.len() - finite.len()) as u64,
    }
}

/// Mean and population standard deviation (0, 0 for no values).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_and_macro_f1_match_hand_computation() {
        // truth:     0 0 0 1 1 1 1 1
        // predicted: 0 0 1 1 1 1 0 1
        let c = Confusion::new(&[0, 0, 0, 1, 1, 1, 1, 1], &[0, 0, 1, 1, 1, 1, 0, 1], 2);
        assert_eq!(c.counts, vec![vec![2, 1], vec![1, 4]]);
        assert_eq!(c.accuracy(), 6.0 / 8.0);
        // class 0: p = 2/3, r = 2/3, f1 = 2/3; class 1: p = 4/5, r = 4/5, f1 = 4/5
        let f1 = c.f1_per_class();
        assert!((f1[0] - 2.0 / 3.0).abs() < 1e-12 && (f1[1] - 0.8).abs() < 1e-12);
        assert!((c.macro_f1() - (2.0 / 3.0 + 0.8) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn a_constant_predictor_has_high_accuracy_but_low_macro_f1() {
        let truth: Vec<u32> = (0..100).map(|i| u32::from(i >= 90)).collect();
        let c = Confusion::new(&truth, &[0; 100], 2);
        assert_eq!(c.accuracy(), 0.9);
        assert!(c.macro_f1() < 0.5);
    }

    #[test]
    fn spikes_are_counted_against_the_preceding_window() {
        let mut losses: Vec<f64> = (0..200)
            .map(|i| 0.5 + 0.01 * ((i * 37 % 11) as f64 - 5.0))
            .collect();
        losses[120] = 3.0;
        losses[170] = 2.5;
        let s = stability(&losses, &[1.0, 7.5, 2.0]);
        assert_eq!(s.spikes, 2);
        assert_eq!(s.max_grad_norm, 7.5);
        assert!(s.loss_std_second_half > 0.1);
        let calm = stability(&losses[..100], &[]);
        assert_eq!(calm.spikes, 0);
        assert!(calm.loss_std_second_half < 0.05);
    }

    #[test]
    fn non_finite_losses_are_counted_not_averaged() {
        let s = stability(&[1.0, f64::NAN, 0.5, f64::INFINITY], &[f64::NAN, 2.0]);
        assert_eq!(s.non_finite, 2);
        assert!(s.loss_std_second_half.is_finite());
        assert_eq!(s.max_grad_norm, 2.0);
    }
}
