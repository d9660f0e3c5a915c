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
        self.forward_copied(hidden, None, bias, false).0
    }

    /// [`EncoderLayer::forward`] given `copy`, the input in bf16 where the
    /// layer before wrote it, and giving the output in bf16 too with
    /// `copy_out`, where the kernels write both (see
    /// `LayerNorm::forward_residual_copied`). Each copy is a constant: read
    /// only by products that give their input's gradient to the f32
    /// tensor.
    pub fn forward_copied(
        &self,
        hidden: Tensor<B, 3>,
        copy: Option<Tensor<B, 3>>,
        bias: Tensor<B, 4>,
        copy_out: bool,
    ) -> (Tensor<B, 3>, Option<Tensor<B, 3>>) {
        let wanted = self.feed_forward.intermediate.reads_copy();
        let (hidden, copy) = self.attention.forward_copied(hidden, copy, bias, wanted);
        self.feed_forward.forward_copied(hidden, copy, copy_out)
    }
}
