//! One encoder layer: self-attention then feed-forward, each with its residual LayerNorm.
//!
//! Mirrors `BertLayer` in
//! <https://github.com/huggingface/transformers/blob/v4.46.3/src/transformers/models/bert/modeling_bert.py>
//! and `MPNetLayer` in
//! <https://github.com/huggingface/transformers/blob/v4.46.3/src/transformers/models/mpnet/modeling_mpnet.py>.

use burn::prelude::*;

use crate::runtime::model::attention::{SelfAttention, SelfAttentionConfig};
use crate::runtime::model::feed_forward::{FeedForward, FeedForwardConfig};

/// Configuration of [`EncoderLayer`].
#[derive(Config, Debug)]
pub struct EncoderLayerConfig {
    /// The attention block.
    pub attention: SelfAttentionConfig,
    /// The feed-forward block.
    pub feed_forward: FeedForwardConfig,
}

/// A post-LayerNorm transformer encoder layer.
#[derive(Module, Debug)]
pub struct EncoderLayer<B: Backend> {
    /// Self-attention block.
    pub attention: SelfAttention<B>,
    /// Feed-forward block.
    pub feed_forward: FeedForward<B>,
}

impl EncoderLayerConfig {
    /// Builds the layer with freshly initialised weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> EncoderLayer<B> {
        EncoderLayer {
            attention: self.attention.init(device),
            feed_forward: self.feed_forward.init(device),
        }
    }
}

impl<B: Backend> EncoderLayer<B> {
    /// hidden: `[batch, seq, d_model]`; bias: broadcastable to `[batch, heads, seq, seq]`
    /// → `[batch, seq, d_model]`.
    pub fn forward(&self, hidden: Tensor<B, 3>, bias: Tensor<B, 4>) -> Tensor<B, 3> {
        self.feed_forward
            .forward(self.attention.forward(hidden, bias))
    }
}
