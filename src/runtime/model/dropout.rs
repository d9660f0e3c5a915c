//! Dropout that keeps a one-byte mask for the backward pass.
//!
//! burn's `Dropout` multiplies the input by an f32 tensor of zeros and ones,
//! and the backward pass of that product keeps the whole tensor: four bytes
//! per activation, for every dropout of every layer. Here the same Bernoulli
//! draw becomes a boolean mask and the dropped values are filled with zero;
//! the backward pass of `mask_fill` keeps only the mask (one byte per value
//! on CUDA). On the CPU the draws are burn's own, so a run computes what it
//! computed with burn's `Dropout`.
//!
//! On CUDA the draws are ftl's own ([`Draws`]): each
//! dropout takes one 32-bit seed from a generator the training loop seeds
//! per step, and whether value `i` is kept is a hash of the seed and `i`
//! (`super::dropout_cuda`). A kernel can then decide it where it reads the
//! value, and compute it again in the backward pass, instead of reading a
//! mask that a random-number kernel and a comparison wrote first: attention's
//! softmax and the residual LayerNorms do so. Where a mask is still wanted
//! (the embeddings' dropout, an adapter's), it is made from a seed the same
//! way, so kernels and tensor operations agree on every draw.

use std::sync::Mutex;

use burn::prelude::*;
use burn::tensor::Distribution;

/// The generator of ftl's own dropout seeds (splitmix64).
pub struct Draws;

/// Its state: the training loop sets it per step.
static DRAWS: Mutex<u64> = Mutex::new(0x853C_49E6_748F_EA9B);

impl Draws {
    /// Starts the sequence of seeds from `seed`: the same seed, the same
    /// seeds after it.
    pub fn seed(seed: u64) {
        *DRAWS.lock().unwrap_or_else(|e| e.into_inner()) = seed;
    }

    /// The next seed.
    pub fn next() -> u32 {
        let mut state = DRAWS.lock().unwrap_or_else(|e| e.into_inner());
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 32) as u32
    }
}

/// The hash that decides whether value `index` is kept under `seed`
/// (`super::dropout_cuda` computes the same on the GPU): kept when it is
/// below [`threshold`].
pub fn draw(seed: u32, index: u32) -> u32 {
    fn mix(mut x: u32) -> u32 {
        x ^= x >> 16;
        x = x.wrapping_mul(0x21F0_AAAD);
        x ^= x >> 15;
        x = x.wrapping_mul(0x735A_2D97);
        x ^ (x >> 15)
    }
    mix(mix(index) ^ seed)
}

/// The draw below which a value is kept with probability `keep`.
pub fn threshold(keep: f64) -> u32 {
    (keep * 4_294_967_296.0).min(u32::MAX as f64) as u32
}

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

    /// [`Dropout::forward`] in bf16 (an adapter's input, for its bf16
    /// products): on CUDA in training, one kernel of ftl's that drops and
    /// casts, and one for the gradient; elsewhere the mask and a cast.
    /// The same draws, and so the same values, either way.
    pub fn forward_to_half<B: Backend, const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        #[cfg(feature = "cuda")]
        if self.prob > 0.0
            && B::ad_enabled(&input.device())
            && let Some(out) = super::dropout_cuda::dropped_half(&input, self.keep())
        {
            return out;
        }
        let out = self.forward(input);
        if out.dtype() == burn::tensor::DType::BF16 {
            out
        } else {
            out.cast(burn::tensor::FloatDType::BF16)
        }
    }

    /// The values [`Dropout::forward`] zeroes on an input of `shape` (true
    /// where dropped): burn's Bernoulli draws in f32, or on CUDA ftl's
    /// own from the next seed; `None` where it drops nothing (outside
    /// training, or with probability 0).
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
        #[cfg(feature = "cuda")]
        if let Some(mask) = super::dropout_cuda::dropped::<B, D>(shape, self.keep(), device) {
            return Some(mask);
        }
        let draw = Tensor::<B, D>::random(shape, Distribution::Bernoulli(self.keep()), device);
        Some(draw.equal_elem(0.0))
    }

    /// The probability of keeping a value.
    pub fn keep(&self) -> f64 {
        1.0 - self.prob
    }

    /// This dropout as a kernel that draws for itself takes it: the next
    /// seed and the keep probability; `None` with probability 0. For
    /// training only: the caller knows gradients are recorded.
    pub fn seeded(&self) -> Option<Seeded> {
        (self.prob > 0.0).then(|| Seeded {
            seed: Draws::next(),
            keep: self.keep(),
        })
    }
}

/// One dropout drawn by ftl's kernels: the seed of its draws ([`draw`])
/// and the probability of keeping a value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Seeded {
    /// The seed, from [`Draws`].
    pub seed: u32,
    /// The probability of keeping a value.
    pub keep: f64,
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

    /// ftl's own draws keep each value with the probability asked for,
    /// independently of its neighbours and of the other seeds' draws.
    #[test]
    fn own_draws_keep_the_asked_share_and_differ_by_seed() {
        Draws::seed(7);
        let (a, b) = (Draws::next(), Draws::next());
        assert_ne!(a, b);
        Draws::seed(7);
        assert_eq!(Draws::next(), a, "the same seed, the same sequence");
        let n = 200_000u32;
        let keep = threshold(0.9);
        let kept = |seed| (0..n).filter(|&i| draw(seed, i) < keep).count() as f64 / n as f64;
        for seed in [a, b] {
            let share = kept(seed);
            assert!((share - 0.9).abs() < 0.003, "kept {share}");
        }
        // Two seeds' masks agree about as often as independent ones would
        // (0.9² + 0.1² = 0.82), and neighbours are not alike.
        let same = (0..n)
            .filter(|&i| (draw(a, i) < keep) == (draw(b, i) < keep))
            .count() as f64
            / n as f64;
        assert!((same - 0.82).abs() < 0.005, "agree {same}");
        let both_dropped = (0..n - 1)
            .filter(|&i| draw(a, i) >= keep && draw(a, i + 1) >= keep)
            .count() as f64
            / (n - 1) as f64;
        assert!(
            (both_dropped - 0.01).abs() < 0.002,
            "neighbours {both_dropped}"
        );
        assert_eq!(threshold(1.0), u32::MAX);
        assert_eq!(threshold(0.5), 1 << 31);
    }

    #[test]
    fn is_the_identity_outside_training() {
        let x = Tensor::<Cpu, 1>::from_floats([1.0, -2.0, 3.0], &cpu_device());
        let y = Dropout::new(0.9).forward(x.clone());
        assert_eq!(y.into_data(), x.into_data());
    }
}
