//! Position-wise feed-forward block: dense, GELU, dense, residual LayerNorm.
//!
//! Mirrors `BertIntermediate` + `BertOutput` in
//! <https://github.com/huggingface/transformers/blob/v4.46.3/src/transformers/models/bert/modeling_bert.py>
//! (`MPNetIntermediate` + `MPNetOutput` are the same). GELU is the exact erf form,
//! as `hidden_act: "gelu"` selects upstream.

use burn::prelude::*;
use burn::tensor::activation::gelu;

use crate::runtime::model::dropout::Dropout;
use crate::runtime::model::layer_norm::LayerNorm;
use crate::runtime::model::projection::Projection;

/// Configuration of [`FeedForward`].
#[derive(Config, Debug)]
pub struct FeedForwardConfig {
    /// Width of the hidden states (`d_model`).
    pub hidden_size: usize,
    /// Width of the inner layer.
    pub intermediate_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Dropout on the output during training.
    #[config(default = 0.1)]
    pub dropout: f64,
}

/// Feed-forward block: `LayerNorm(x + W₂ · gelu(W₁ · x))`.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    /// `d_model → intermediate` projection.
    pub intermediate: Projection<B>,
    /// `intermediate → d_model` projection.
    pub output: Projection<B>,
    /// LayerNorm after the residual sum.
    pub layer_norm: LayerNorm<B>,
    dropout: Dropout,
}

impl FeedForwardConfig {
    /// Builds the block with freshly initialised weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> FeedForward<B> {
        FeedForward {
            intermediate: Projection::random(self.hidden_size, self.intermediate_size, device),
            output: Projection::random(self.intermediate_size, self.hidden_size, device),
            layer_norm: LayerNorm::new(self.hidden_size, self.layer_norm_eps, device),
            dropout: Dropout::new(self.dropout),
        }
    }
}

impl<B: Backend> FeedForward<B> {
    /// Replaces the dropout probability.
    pub fn set_dropout(&mut self, prob: f64) {
        self.dropout = Dropout::new(prob);
    }

    /// hidden: `[batch, seq, d_model]` → `[batch, seq, d_model]`.
    pub fn forward(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let inner = gelu(self.intermediate.forward(hidden.clone()));
        let out = self.dropout.forward(self.output.forward(inner));
        self.layer_norm.forward(out + hidden)
    }
}
