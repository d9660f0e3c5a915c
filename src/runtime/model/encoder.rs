//! The encoder stack: embeddings, `num_layers` encoder layers and, for MPNet,
//! the relative-position attention bias shared by every layer.
//!
//! Mirrors `BertModel` / `BertEncoder` in
//! <https://github.com/huggingface/transformers/blob/v4.46.3/src/transformers/models/bert/modeling_bert.py>
//! and `MPNetModel` / `MPNetEncoder` (`compute_position_bias`,
//! `relative_position_bucket`) in
//! <https://github.com/huggingface/transformers/blob/v4.46.3/src/transformers/models/mpnet/modeling_mpnet.py>.
//! The upstream pooler (dense + tanh on the first token) is not part of the
//! encoder: ftl pools in [`crate::runtime::model::head`].

use burn::nn::{Embedding, EmbeddingConfig};
use burn::prelude::*;

use crate::runtime::error::{RuntimeError, RuntimeResult};
use crate::runtime::model::attention::SelfAttentionConfig;
use crate::runtime::model::config::{Architecture, EncoderConfig};
use crate::runtime::model::embeddings::{Embeddings, EmbeddingsConfig};
use crate::runtime::model::feed_forward::FeedForwardConfig;
use crate::runtime::model::layer::{EncoderLayer, EncoderLayerConfig};
use crate::runtime::model::lookup::lookup;

/// Largest distance MPNet's buckets tell apart (`max_distance` upstream).
const RELATIVE_MAX_DISTANCE: usize = 128;

/// A BERT or MPNet encoder producing one hidden state per token.
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    /// Input embeddings.
    pub embeddings: Embeddings<B>,
    /// The layers, applied in order.
    pub layers: Vec<EncoderLayer<B>>,
    /// MPNet's bias table `[buckets, heads]`; absent for BERT.
    pub relative_attention_bias: Option<Embedding<B>>,
    num_buckets: usize,
    max_sequence_length: usize,
}

impl EncoderConfig {
    /// Builds an encoder with freshly initialised weights (initialisation is
    /// lazy in burn, so loading real weights over it costs nothing).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Encoder<B> {
        let embeddings = EmbeddingsConfig::new(
            self.vocab_size,
            self.hidden_size,
            self.max_position_embeddings,
            self.type_vocab_size,
            self.pad_token_id,
            self.architecture == Architecture::MpNet,
            self.layer_norm_eps,
        )
        .with_dropout(self.hidden_dropout);
        let layer = EncoderLayerConfig::new(
            SelfAttentionConfig::new(self.hidden_size, self.num_heads, self.layer_norm_eps)
                .with_attention_dropout(self.attention_dropout)
                .with_hidden_dropout(self.hidden_dropout),
            FeedForwardConfig::new(
                self.hidden_size,
                self.intermediate_size,
                self.layer_norm_eps,
            )
            .with_dropout(self.hidden_dropout),
        );
        let relative_attention_bias = (self.architecture == Architecture::MpNet).then(|| {
            EmbeddingConfig::new(self.relative_attention_num_buckets, self.num_heads).init(device)
        });
        Encoder {
            embeddings: embeddings.init(device),
            layers: (0..self.num_layers).map(|_| layer.init(device)).collect(),
            relative_attention_bias,
            num_buckets: self.relative_attention_num_buckets,
            max_sequence_length: self.max_sequence_length(),
        }
    }
}

impl<B: Backend> Encoder<B> {
    /// Sets every dropout of the encoder (embeddings, attention
    /// probabilities, attention and feed-forward outputs) to `prob`.
    pub fn set_dropout(&mut self, prob: f64) {
        self.embeddings.set_dropout(prob);
        for layer in &mut self.layers {
            layer.attention.set_dropout(prob);
            layer.feed_forward.set_dropout(prob);
        }
    }

    /// input_ids, attention_mask: `[batch, seq]` (mask 1 for tokens, 0 for padding)
    /// → final hidden states `[batch, seq, d_model]`.
    ///
    /// The shapes must agree and `seq` must fit the position table; use
    /// [`Encoder::try_forward`] where they come from outside.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        let mut bias = padding_bias(attention_mask);
        if let Some(table) = &self.relative_attention_bias {
            bias = bias + self.position_bias(table, seq, &device);
        }
        let bias = bias.expand([batch as i64, -1, seq as i64, seq as i64]);
        let mut hidden = self.embeddings.forward(input_ids);
        // A layer's output in bf16 as well, where the next layer's
        // products read it (`LayerNorm::forward_residual_copied`).
        let mut copy = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let wanted = self
                .layers
                .get(i + 1)
                .is_some_and(|next| next.attention.reads_copy());
            (hidden, copy) = layer.forward_copied(hidden, copy, bias.clone(), wanted);
        }
        hidden
    }

    /// [`Encoder::forward`] after checking that the inputs fit the model.
    pub fn try_forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> RuntimeResult<Tensor<B, 3>> {
        self.check_input(input_ids.dims(), attention_mask.dims())?;
        Ok(self.forward(input_ids, attention_mask))
    }

    /// Checks `[batch, seq]` shapes of ids and mask against each other and the model.
    pub fn check_input(&self, ids: [usize; 2], mask: [usize; 2]) -> RuntimeResult<()> {
        let fail = |message: String| Err(RuntimeError::InputShape { message });
        if ids != mask {
            return fail(format!(
                "attention mask {mask:?} does not match input ids {ids:?}"
            ));
        }
        if ids[0] == 0 || ids[1] == 0 {
            return fail(format!("empty batch {ids:?}"));
        }
        if ids[1] > self.max_sequence_length {
            return fail(format!(
                "{} tokens, the model embeds at most {}",
                ids[1], self.max_sequence_length
            ));
        }
        Ok(())
    }

    /// The longest sequence this encoder embeds.
    pub fn max_sequence_length(&self) -> usize {
        self.max_sequence_length
    }

    /// Width of the hidden states.
    pub fn hidden_size(&self) -> usize {
        self.embeddings.word.weight.dims()[1]
    }

    /// MPNet's relative-position bias → `[1, heads, seq, seq]`.
    fn position_bias(&self, table: &Embedding<B>, seq: usize, device: &B::Device) -> Tensor<B, 4> {
        let buckets: Vec<i64> = (0..seq as i64)
            .flat_map(|query| {
                (0..seq as i64).map(move |key| {
                    relative_position_bucket(key - query, self.num_buckets, RELATIVE_MAX_DISTANCE)
                })
            })
            .collect();
        let buckets = Tensor::<B, 2, Int>::from_data(TensorData::new(buckets, [seq, seq]), device);
        // [seq, seq, heads] → [heads, seq, seq] → [1, heads, seq, seq]
        lookup(table.weight.val(), buckets)
            .permute([2, 0, 1])
            .unsqueeze::<4>()
    }
}

/// attention_mask `[batch, seq]` → additive bias `[batch, 1, 1, seq]`: 0 for tokens,
/// the most negative f32 for padding, as upstream's `get_extended_attention_mask`.
fn padding_bias<B: Backend>(attention_mask: Tensor<B, 2, Int>) -> Tensor<B, 4> {
    let [batch, seq] = attention_mask.dims();
    attention_mask
        .float()
        .neg()
        .add_scalar(1.0)
        .mul_scalar(f32::MIN)
        .reshape([batch, 1, 1, seq])
}

/// Bucket of a relative position `key - query`, as upstream's
/// `MPNetEncoder.relative_position_bucket`: half the buckets for each direction,
/// exact below `num_buckets / 4`, logarithmic up to `max_distance`. Computed in
/// f32, as upstream does, so the truncation lands on the same bucket.
pub fn relative_position_bucket(
    relative_position: i64,
    num_buckets: usize,
    max_distance: usize,
) -> i64 {
    let half = (num_buckets / 2) as i64;
    let n = -relative_position;
    let direction = if n < 0 { half } else { 0 };
    let n = n.abs();
    let max_exact = half / 2;
    if n < max_exact {
        return direction + n;
    }
    let log_ratio = (n as f32 / max_exact as f32).ln();
    let log_range = (max_distance as f64 / max_exact as f64).ln() as f32;
    let large = max_exact + (log_ratio / log_range * (half - max_exact) as f32) as i64;
    direction + large.min(half - 1)
}
