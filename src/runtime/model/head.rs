//! Pooling and the classification head put on top of an encoder.
//!
//! Pooling follows sentence-transformers (`Pooling` with `pooling_mode_mean_tokens`:
//! <https://github.com/UKPLab/sentence-transformers/blob/v3.3.1/sentence_transformers/models/Pooling.py>);
//! the head follows `BertForSequenceClassification`'s dropout + linear, with its
//! weights drawn as upstream's `_init_weights` does (normal, std 0.02, zero bias)
//! from an explicit seed so a run is reproducible on any backend.

use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::runtime::model::dropout::Dropout;

/// How token states become one vector per sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pooling {
    /// The first token's state (`[CLS]` / `<s>`).
    Cls,
    /// The mean over tokens whose attention mask is 1.
    Mean,
}

/// Configuration of [`ClassificationHead`].
#[derive(Config, Debug)]
pub struct ClassificationHeadConfig {
    /// Width of the encoder's hidden states.
    pub hidden_size: usize,
    /// Number of labels to score.
    pub num_labels: usize,
    /// How to pool token states.
    pub pooling: Pooling,
    /// Seed for the classifier's initial weights.
    pub seed: u64,
    /// Dropout before the classifier during training.
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Standard deviation of the initial weights.
    #[config(default = 0.02)]
    pub init_std: f64,
}

/// Pooling, dropout and a linear layer to `num_labels` logits.
#[derive(Module, Debug)]
pub struct ClassificationHead<B: Backend> {
    /// `d_model → num_labels` projection.
    pub classifier: Linear<B>,
    dropout: Dropout,
    #[module(skip)]
    pooling: Pooling,
}

impl ClassificationHeadConfig {
    /// Builds the head; the same seed gives the same weights on every backend.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ClassificationHead<B> {
        let mut classifier = LinearConfig::new(self.hidden_size, self.num_labels).init(device);
        let mut rng = SplitMix64(self.seed);
        let weights: Vec<f32> = (0..self.hidden_size * self.num_labels)
            .map(|_| (rng.next_normal() * self.init_std) as f32)
            .collect();
        classifier.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(weights, [self.hidden_size, self.num_labels]),
            device,
        ));
        classifier.bias = Some(Param::from_tensor(Tensor::zeros([self.num_labels], device)));
        ClassificationHead {
            classifier,
            dropout: Dropout::new(self.dropout),
            pooling: self.pooling,
        }
    }
}

impl<B: Backend> ClassificationHead<B> {
    /// hidden: `[batch, seq, d_model]`, attention_mask: `[batch, seq]` → logits `[batch, labels]`.
    pub fn forward(&self, hidden: Tensor<B, 3>, attention_mask: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let pooled = match self.pooling {
            Pooling::Cls => cls_pool(hidden),
            Pooling::Mean => mean_pool(hidden, attention_mask),
        };
        self.classifier.forward(self.dropout.forward(pooled))
    }

    /// The pooling this head applies.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }
}

/// hidden: `[batch, seq, d_model]` → the first token's state `[batch, d_model]`.
pub fn cls_pool<B: Backend>(hidden: Tensor<B, 3>) -> Tensor<B, 2> {
    let [batch, _, d_model] = hidden.dims();
    hidden.slice(s![.., 0..1, ..]).reshape([batch, d_model])
}

/// hidden: `[batch, seq, d_model]`, attention_mask: `[batch, seq]` → mean over
/// unmasked tokens `[batch, d_model]` (the count is clamped at 1e-9, as upstream).
pub fn mean_pool<B: Backend>(
    hidden: Tensor<B, 3>,
    attention_mask: Tensor<B, 2, Int>,
) -> Tensor<B, 2> {
    let [batch, seq, d_model] = hidden.dims();
    let mask = attention_mask.float().reshape([batch, seq, 1]);
    let summed = (hidden * mask.clone()).sum_dim(1).reshape([batch, d_model]);
    let counts = mask.sum_dim(1).reshape([batch, 1]).clamp_min(1e-9);
    summed / counts
}

/// A small deterministic generator (SplitMix64) so head weights depend only on the seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn next_unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Standard normal by Box–Muller.
    fn next_normal(&mut self) -> f64 {
        let (u1, u2) = (self.next_unit(), self.next_unit());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}
