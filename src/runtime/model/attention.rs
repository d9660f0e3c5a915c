//! Multi-head self-attention with its output projection and residual LayerNorm.
//!
//! Mirrors `BertSelfAttention` + `BertSelfOutput` in
//! <https://github.com/huggingface/transformers/blob/v4.46.3/src/transformers/models/bert/modeling_bert.py>
//! and `MPNetSelfAttention` + `MPNetAttention` in
//! <https://github.com/huggingface/transformers/blob/v4.46.3/src/transformers/models/mpnet/modeling_mpnet.py>.
//! The two differ only in what the additive bias holds: BERT passes the padding
//! mask, MPNet the padding mask plus its relative-position bias.

use burn::prelude::*;

use crate::runtime::model::attention_core::{Projections, attention, projected};
use crate::runtime::model::dropout::Dropout;
use crate::runtime::model::layer_norm::LayerNorm;
use crate::runtime::model::projection::{Projection, to_full, to_half};

/// Configuration of [`SelfAttention`].
#[derive(Config, Debug)]
pub struct SelfAttentionConfig {
    /// Width of the hidden states (`d_model`).
    pub hidden_size: usize,
    /// Number of heads; divides `hidden_size`.
    pub num_heads: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Dropout on attention probabilities during training.
    #[config(default = 0.1)]
    pub attention_dropout: f64,
    /// Dropout on the projected output during training.
    #[config(default = 0.1)]
    pub hidden_dropout: f64,
}

/// Self-attention block: `LayerNorm(x + O · softmax(QKᵀ/√d + bias) · V)`.
#[derive(Module, Debug)]
pub struct SelfAttention<B: Backend> {
    /// Query projection.
    pub query: Projection<B>,
    /// Key projection.
    pub key: Projection<B>,
    /// Value projection.
    pub value: Projection<B>,
    /// Output projection.
    pub output: Projection<B>,
    /// LayerNorm after the residual sum.
    pub layer_norm: LayerNorm<B>,
    attention_dropout: Dropout,
    hidden_dropout: Dropout,
    num_heads: usize,
    /// Products (projections and both attention products) in bf16; softmax,
    /// LayerNorm and the residual stay f32.
    pub half: bool,
}

impl SelfAttentionConfig {
    /// Builds the block with freshly initialised weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> SelfAttention<B> {
        let projection = || Projection::random(self.hidden_size, self.hidden_size, device);
        SelfAttention {
            query: projection(),
            key: projection(),
            value: projection(),
            output: projection(),
            layer_norm: LayerNorm::new(self.hidden_size, self.layer_norm_eps, device),
            attention_dropout: Dropout::new(self.attention_dropout),
            hidden_dropout: Dropout::new(self.hidden_dropout),
            num_heads: self.num_heads,
            half: false,
        }
    }
}

impl<B: Backend> SelfAttention<B> {
    /// The attention's result in heads (bf16) by [`projected`]: in training
    /// under bf16 products, when the query, key and value layers are all
    /// trained dense layers with biases and no adapter (full fine-tuning).
    /// `None` otherwise: the layers then project one by one.
    fn projected(
        &self,
        hidden: Tensor<B, 3>,
        copy: Option<Tensor<B, 3>>,
        bias: Tensor<B, 4>,
    ) -> Option<Tensor<B, 4>> {
        if !self.half {
            return None;
        }
        let (wq, bq) = self.query.trained_parts()?;
        let (wk, bk) = self.key.trained_parts()?;
        let (wv, bv) = self.value.trained_parts()?;
        let projections = Projections {
            weights: [wq, wk, wv],
            biases: [bq, bk, bv],
            deltas: [None, None, None],
            input_copy: copy,
        };
        projected(
            hidden,
            projections,
            self.num_heads,
            bias,
            &self.attention_dropout,
            true,
        )
    }

    /// The attention's result in heads (bf16) by [`projected`] for LoRA: in
    /// training under bf16 products, when the query, key and value layers
    /// are frozen dense layers (bases kept in bf16) with biases and some of
    /// them carry adapters. The three bases are one product; each adapter's
    /// update is added where the layer adds it (`qkv::split_adapted`).
    /// `None` otherwise.
    fn adapted(
        &self,
        hidden: Tensor<B, 3>,
        copy: Option<Tensor<B, 3>>,
        bias: Tensor<B, 4>,
    ) -> Option<Tensor<B, 4>> {
        let layers = [&self.query, &self.key, &self.value];
        if !self.half
            || !B::ad_enabled(&hidden.device())
            || layers.iter().all(|p| p.adapter.is_none())
        {
            return None;
        }
        let (wq, bq) = self.query.frozen_half_parts()?;
        let (wk, bk) = self.key.frozen_half_parts()?;
        let (wv, bv) = self.value.frozen_half_parts()?;
        let [batch, seq, _] = hidden.dims();
        // The adapters read the tracked input, not the copy: their input's
        // gradient is theirs to give.
        let deltas = layers.map(|p| {
            p.adapter.as_ref().map(|a| {
                let update = a.product_half(hidden.clone(), None);
                let width = update.dims()[2];
                (update.reshape([batch * seq, width]), a.scale())
            })
        });
        let projections = Projections {
            weights: [wq, wk, wv],
            biases: [bq, bk, bv],
            deltas,
            input_copy: copy,
        };
        projected(
            hidden,
            projections,
            self.num_heads,
            bias,
            &self.attention_dropout,
            true,
        )
    }

    /// Whether [`SelfAttention::forward_copied`] reads a bf16 copy of its
    /// input: under bf16 products with dense query, key and value layers
    /// (one product for the three, full fine-tuning or LoRA).
    pub fn reads_copy(&self) -> bool {
        self.half
            && [&self.query, &self.key, &self.value]
                .iter()
                .all(|p| p.weight.is_some() && p.packed.is_none())
    }

    /// Replaces both dropout probabilities (attention and output).
    pub fn set_dropout(&mut self, prob: f64) {
        self.attention_dropout = Dropout::new(prob);
        self.hidden_dropout = Dropout::new(prob);
    }

    /// hidden: `[batch, seq, d_model]`; bias: additive scores, broadcastable to
    /// `[batch, heads, seq, seq]` (a padding mask is `[batch, 1, 1, seq]`)
    /// → `[batch, seq, d_model]`.
    pub fn forward(&self, hidden: Tensor<B, 3>, bias: Tensor<B, 4>) -> Tensor<B, 3> {
        self.forward_copied(hidden, None, bias, false).0
    }

    /// [`SelfAttention::forward`] given `copy`, the input in bf16 where the
    /// block before wrote it (read by the query, key and value product in
    /// place of a cast), and giving the output in bf16 too with `copy_out`
    /// (`LayerNorm::forward_residual_copied`).
    pub fn forward_copied(
        &self,
        hidden: Tensor<B, 3>,
        copy: Option<Tensor<B, 3>>,
        bias: Tensor<B, 4>,
        copy_out: bool,
    ) -> (Tensor<B, 3>, Option<Tensor<B, 3>>) {
        let [batch, seq, d_model] = hidden.dims();
        if let Some(context) = self.projected(hidden.clone(), copy.clone(), bias.clone()) {
            return self.output_block(context, hidden, true, copy_out);
        }
        if let Some(context) = self.adapted(hidden.clone(), copy, bias.clone()) {
            return self.output_block(context, hidden, true, copy_out);
        }
        let head_dim = d_model / self.num_heads;
        let heads = |x: Tensor<B, 3>| {
            x.reshape([batch, seq, self.num_heads, head_dim])
                .swap_dims(1, 2)
        };
        let (query, key, value) = if self.half {
            // One bf16 copy of the input serves all three projections.
            let half = to_half(hidden.clone());
            let project = |p: &Projection<B>| {
                to_half(heads(p.forward_with_half(hidden.clone(), half.clone())))
            };
            (
                project(&self.query),
                project(&self.key),
                project(&self.value),
            )
        } else {
            (
                heads(self.query.forward(hidden.clone())),
                heads(self.key.forward(hidden.clone())),
                heads(self.value.forward(hidden.clone())),
            )
        };

        let context = attention(query, key, value, bias, &self.attention_dropout, self.half);
        self.output_block(context, hidden, false, copy_out)
    }

    /// The output projection of the heads' `context` `[batch, heads, seq,
    /// head_dim]` (bf16 under bf16 products), its dropout, the residual
    /// `hidden` and the LayerNorm. With `merge_in_half` (after
    /// [`SelfAttention::projected`] and [`SelfAttention::adapted`], under
    /// bf16) the heads are merged in bf16 and the projection reads them as
    /// they are; otherwise (QLoRA, f32) they are cast to f32 for the merge
    /// and back for the product, three more launches each way for the same
    /// values. LoRA's frozen output projection leaves its bias to the
    /// LayerNorm (`Projection::frozen_product`). With `copy_out`, the
    /// LayerNorm gives its output in bf16 too, where its kernels apply.
    fn output_block(
        &self,
        context: Tensor<B, 4>,
        hidden: Tensor<B, 3>,
        merge_in_half: bool,
        copy_out: bool,
    ) -> (Tensor<B, 3>, Option<Tensor<B, 3>>) {
        let [batch, seq, d_model] = hidden.dims();
        let projected = if self.half && merge_in_half {
            let context = context.swap_dims(1, 2).reshape([batch, seq, d_model]);
            if let Some((product, bias)) = self.output.frozen_product(context.clone()) {
                return self.layer_norm.forward_residual_biased_copied(
                    product,
                    bias,
                    hidden,
                    &self.hidden_dropout,
                    copy_out,
                );
            }
            self.output.forward_from_half(context)
        } else {
            let context = if self.half { to_full(context) } else { context };
            let context = context.swap_dims(1, 2).reshape([batch, seq, d_model]);
            self.output.forward(context)
        };
        self.layer_norm
            .forward_residual_copied(projected, hidden, &self.hidden_dropout, copy_out)
    }
}
