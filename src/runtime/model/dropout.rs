//! Dropout that keeps a one-byte mask for the backward pass.
//!
//! burn's `Dropout` multiplies the input by an f32 tensor of zeros and ones,
//! and the backward pass of that product keeps the whole tensor: four bytes
//! per activation, for every dropout of every layer. Here the same Bernoulli
//! draw becomes a boolean mask and the dropped values are filled with zero;
//! the backward pass of `mask_fill` keeps only the mask (one byte per value
//! on CUDA). The draws are burn's own, so a run computes what it computed
//! with burn's `Dropout`.

use burn::prelude::*;
use burn::tensor::Distribution;

/// Zeroes each value with probability `prob` during training and scales
/// the rest by `1 / (1 - prob)`; the identity outside training.
#[derive(Module, Clone, Debug)]
pub struct Dropout {
    /// Probability of zeroing a value.
    pub prob: f64,
}

impl Dropout {
    /// Dropout with probability `prob`.
    pub fn new(prob: f64) -> Self {
        Dropout { prob }
    }

    /// Applies dropout when the backend records gradients (training).
    pub fn forward<B: Backend, const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        match self.dropped::<B, D>(input.dims(), &input.device()) {
            Some(dropped) => input.mask_fill(dropped, 0.0).mul_scalar(1.0 / self.keep()),
            None => input,
        }
    }

    /// The values [`Dropout::forward`] zeroes on an input of `shape` (true
    /// where dropped): burn's Bernoulli draws in f32; `None` where it drops
    /// nothing (outside training, or with probability 0).
    pub fn dropped<B: Backend, const D: usize>(
        &self,
        shape: [usize; D],
        device: &B::Device,
    ) -> Option<Tensor<B, D, Bool>> {
        if !B::ad_enabled(device) || self.prob == 0.0 {
            return None;
        }
        #[cfg(test)]
        if let Some(seed) = tests::FIXED_DRAWS.get() {
            return Some(tests::fixed_draws(shape, self.prob, seed, device));
        }
        let draw = Tensor::<B, D>::random(shape, Distribution::Bernoulli(self.keep()), device);
        Some(draw.equal_elem(0.0))
    }

    /// The probability of keeping a value.
    pub fn keep(&self) -> f64 {
        1.0 - self.prob
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::runtime::backend::{Cpu, cpu_device};
    use burn::backend::Autodiff;

    type Train = Autodiff<Cpu>;

    thread_local! {
        /// On this test's thread, [`Dropout::dropped`] draws from this seed
        /// instead of burn's generator, which every test thread shares: a
        /// test that compares two computations' draws sets it.
        pub(crate) static FIXED_DRAWS: std::cell::Cell<Option<u64>> =
            const { std::cell::Cell::new(None) };
    }

    /// The same mask for the same seed and shape: each value dropped with
    /// probability `prob`.
    pub(crate) fn fixed_draws<B: Backend, const D: usize>(
        shape: [usize; D],
        prob: f64,
        seed: u64,
        device: &B::Device,
    ) -> Tensor<B, D, Bool> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let n = shape.iter().product();
        let mask: Vec<bool> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 11) as f64 / (1u64 << 53) as f64) < prob
            })
            .collect();
        Tensor::from_data(TensorData::new(mask, shape), device)
    }

    /// The same draws as burn's `Dropout`, so the same values and gradients.
    #[test]
    fn matches_burns_dropout_values_and_gradients() {
        let device = cpu_device();
        let x = Tensor::<Train, 2>::random([64, 48], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let run = |f: &dyn Fn(Tensor<Train, 2>) -> Tensor<Train, 2>| {
            <Train as Backend>::seed(&device, 11);
            let y = f(x.clone());
            let grads = (y.clone() * y.clone()).sum().backward();
            let g: Vec<f32> = x.grad(&grads).unwrap().into_data().to_vec().unwrap();
            let y: Vec<f32> = y.inner().into_data().to_vec().unwrap();
            (y, g)
        };
        let ours = Dropout::new(0.3);
        let burns = burn::nn::DropoutConfig::new(0.3).init();
        let (y1, g1) = run(&|t| ours.forward(t));
        let (y2, g2) = run(&|t| burns.forward(t));
        let zeros = y1.iter().filter(|v| **v == 0.0).count();
        assert!(
            zeros > 64 * 48 / 5 && zeros < 64 * 48 * 2 / 5,
            "{zeros} dropped"
        );
        // Equal as numbers (a dropped negative value is -0.0 in burn's).
        assert!(y1.iter().zip(&y2).all(|(a, b)| a == b));
        assert!(g1.iter().zip(&g2).all(|(a, b)| a == b));
    }

    #[test]
    fn is_the_identity_outside_training() {
        let x = Tensor::<Cpu, 1>::from_floats([1.0, -2.0, 3.0], &cpu_device());
        let y = Dropout::new(0.9).forward(x.clone());
        assert_eq!(y.into_data(), x.into_data());
    }
}
