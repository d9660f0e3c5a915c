//! Input embeddings: word + position (+ token type), then LayerNorm and dropout.
//!
//! Mirrors `BertEmbeddings` in
//! <https://github.com/huggingface/transformers/blob/v4.46.3/src/transformers/models/bert/modeling_bert.py>
//! and `MPNetEmbeddings` with `create_position_ids_from_input_ids` in
//! <https://github.com/huggingface/transformers/blob/v4.46.3/src/transformers/models/mpnet/modeling_mpnet.py>.
//! BERT numbers positions `0..seq` and adds token type 0 everywhere; MPNet has no
//! token types and numbers non-pad tokens `pad_id + 1, pad_id + 2, …`, giving pad
//! tokens the position `pad_id`.

use burn::nn::{Embedding, EmbeddingConfig};
use burn::prelude::*;

use crate::runtime::model::dropout::Dropout;
use crate::runtime::model::layer_norm::LayerNorm;
use crate::runtime::model::lookup::lookup;

/// Configuration of [`Embeddings`].
#[derive(Config, Debug)]
pub struct EmbeddingsConfig {
    /// Rows of the word table.
    pub vocab_size: usize,
    /// Width of each embedding (`d_model`).
    pub hidden_size: usize,
    /// Rows of the position table.
    pub max_position_embeddings: usize,
    /// Rows of the token type table; 0 means the model has none (MPNet).
    pub type_vocab_size: usize,
    /// Id of the padding token.
    pub pad_token_id: usize,
    /// Number positions from `pad_token_id + 1` over non-pad tokens (MPNet, RoBERTa)
    /// rather than from 0 (BERT).
    pub positions_after_pad: bool,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Dropout probability during training.
    #[config(default = 0.1)]
    pub dropout: f64,
}

/// Sum of word, position and token type embeddings, normalised.
#[derive(Module, Debug)]
pub struct Embeddings<B: Backend> {
    /// Word table `[vocab, d_model]`.
    pub word: Embedding<B>,
    /// Position table `[max_positions, d_model]`.
    pub position: Embedding<B>,
    /// Token type table `[types, d_model]`, absent for MPNet.
    pub token_type: Option<Embedding<B>>,
    /// LayerNorm over `d_model`.
    pub layer_norm: LayerNorm<B>,
    dropout: Dropout,
    pad_token_id: usize,
    positions_after_pad: bool,
}

impl EmbeddingsConfig {
    /// Builds the layer with freshly initialised tables.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Embeddings<B> {
        let token_type = (self.type_vocab_size > 0)
            .then(|| EmbeddingConfig::new(self.type_vocab_size, self.hidden_size).init(device));
        Embeddings {
            word: EmbeddingConfig::new(self.vocab_size, self.hidden_size).init(device),
            position: EmbeddingConfig::new(self.max_position_embeddings, self.hidden_size)
                .init(device),
            token_type,
            layer_norm: LayerNorm::new(self.hidden_size, self.layer_norm_eps, device),
            dropout: Dropout::new(self.dropout),
            pad_token_id: self.pad_token_id,
            positions_after_pad: self.positions_after_pad,
        }
    }
}

impl<B: Backend> Embeddings<B> {
    /// Replaces the dropout probability.
    pub fn set_dropout(&mut self, prob: f64) {
        self.dropout = Dropout::new(prob);
    }

    /// input_ids: `[batch, seq]` → `[batch, seq, d_model]`.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        let positions = self.position_ids(input_ids.clone());
        let mut embedded = lookup(self.word.weight.val(), input_ids)
            + lookup(self.position.weight.val(), positions);
        if let Some(token_type) = &self.token_type {
            // ftl encodes single sentences: every token is of type 0.
            let types = Tensor::<B, 2, Int>::zeros([batch, seq], &device);
            embedded = embedded + lookup(token_type.weight.val(), types);
        }
        self.dropout.forward(self.layer_norm.forward(embedded))
    }

    /// input_ids: `[batch, seq]` → position ids `[batch, seq]`.
    pub fn position_ids(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 2, Int> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        if self.positions_after_pad {
            let pad = self.pad_token_id as i64;
            let not_pad = input_ids.not_equal_elem(pad).int();
            not_pad.clone().cumsum(1).mul(not_pad).add_scalar(pad)
        } else {
            Tensor::<B, 1, Int>::arange(0..seq as i64, &device)
                .unsqueeze::<2>()
                .expand([batch, seq])
        }
    }
}
