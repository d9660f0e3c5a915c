//! The encoder's shape, read from a Hugging Face `config.json`.
//!
//! Only the fields that decide the architecture are read; the rest of the file
//! (training settings, transformers version) is ignored. [`EncoderConfig::validate`]
//! refuses values that cannot build a model, so a bad config fails here, naming
//! the field, rather than deep inside a tensor operation.

use std::path::Path;

use serde::Deserialize;

use crate::runtime::error::{RuntimeError, RuntimeResult};

/// Which encoder family the weights belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// BERT: absolute positions from 0, token type embeddings, post-LayerNorm.
    Bert,
    /// MPNet: RoBERTa-style positions offset past the pad id, relative-position
    /// attention bias shared by all layers, no token types.
    MpNet,
}

/// The raw fields of `config.json` that ftl reads.
#[derive(Debug, Clone, Deserialize)]
struct HfConfig {
    model_type: String,
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "default_hidden_act")]
    hidden_act: String,
    layer_norm_eps: Option<f64>,
    #[serde(default)]
    type_vocab_size: Option<usize>,
    pad_token_id: Option<usize>,
    relative_attention_num_buckets: Option<usize>,
    #[serde(default)]
    hidden_dropout_prob: Option<f64>,
    #[serde(default)]
    attention_probs_dropout_prob: Option<f64>,
    #[serde(default)]
    position_embedding_type: Option<String>,
}

fn default_hidden_act() -> String {
    "gelu".into()
}

/// Everything needed to build an encoder, checked for consistency.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderConfig {
    /// The encoder family.
    pub architecture: Architecture,
    /// Number of rows in the word embedding table.
    pub vocab_size: usize,
    /// Width of every hidden state (`d_model`).
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_layers: usize,
    /// Number of attention heads; divides `hidden_size`.
    pub num_heads: usize,
    /// Width of the feed-forward block.
    pub intermediate_size: usize,
    /// Rows of the position embedding table.
    pub max_position_embeddings: usize,
    /// Token type rows (BERT); 0 for MPNet.
    pub type_vocab_size: usize,
    /// Id of the padding token.
    pub pad_token_id: usize,
    /// LayerNorm epsilon (1e-12 for BERT, 1e-5 for MPNet).
    pub layer_norm_eps: f64,
    /// Relative attention buckets (MPNet); 0 for BERT.
    pub relative_attention_num_buckets: usize,
    /// Dropout on hidden states during training.
    pub hidden_dropout: f64,
    /// Dropout on attention probabilities during training.
    pub attention_dropout: f64,
}

impl EncoderConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> RuntimeResult<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| RuntimeError::io(path, "read", &e))?;
        Self::from_json(&text, path)
    }

    /// Parses and validates the text of a `config.json`; `path` names it in errors.
    pub fn from_json(text: &str, path: &Path) -> RuntimeResult<Self> {
        let raw: HfConfig = serde_json::from_str(text).map_err(|e| RuntimeError::ConfigParse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let invalid = |field: &'static str, reason: String| RuntimeError::ConfigInvalid {
            path: path.to_path_buf(),
            field,
            reason,
        };
        let architecture = match raw.model_type.as_str() {
            "bert" => Architecture::Bert,
            "mpnet" => Architecture::MpNet,
            other => {
                return Err(RuntimeError::UnsupportedModel {
                    path: path.to_path_buf(),
                    model_type: other.to_string(),
                });
            }
        };
        if raw.hidden_act != "gelu" {
            return Err(invalid(
                "hidden_act",
                format!(
                    "\"{}\" is not supported; ftl implements \"gelu\" (erf)",
                    raw.hidden_act
                ),
            ));
        }
        if let Some(kind) = &raw.position_embedding_type
            && kind != "absolute"
        {
            return Err(invalid(
                "position_embedding_type",
                format!("\"{kind}\" is not supported; ftl implements \"absolute\""),
            ));
        }
        // What differs between the families: token types, pad id, LayerNorm
        // epsilon and MPNet's relative-position buckets.
        let (type_vocab_size, pad_token_id, layer_norm_eps, buckets) = match architecture {
            Architecture::Bert => (
                raw.type_vocab_size.unwrap_or(2),
                raw.pad_token_id.unwrap_or(0),
                raw.layer_norm_eps.unwrap_or(1e-12),
                0,
            ),
            Architecture::MpNet => (
                0,
                raw.pad_token_id.unwrap_or(1),
                raw.layer_norm_eps.unwrap_or(1e-5),
                raw.relative_attention_num_buckets.unwrap_or(32),
            ),
        };
        let config = EncoderConfig {
            architecture,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            max_position_embeddings: raw.max_position_embeddings,
            type_vocab_size,
            pad_token_id,
            layer_norm_eps,
            relative_attention_num_buckets: buckets,
            hidden_dropout: raw.hidden_dropout_prob.unwrap_or(0.1),
            attention_dropout: raw.attention_probs_dropout_prob.unwrap_or(0.1),
        };
        config
            .validate()
            .map_err(|(field, reason)| invalid(field, reason))?;
        Ok(config)
    }

    /// Checks that the sizes can build a model; on failure names the field and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err((field, "must be greater than 0".into()));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            return Err((
                "hidden_size",
                format!(
                    "{} is not divisible by num_attention_heads {}",
                    self.hidden_size, self.num_heads
                ),
            ));
        }
        if self.pad_token_id >= self.vocab_size {
            return Err((
                "pad_token_id",
                format!(
                    "{} is outside the vocabulary of {}",
                    self.pad_token_id, self.vocab_size
                ),
            ));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps < 1.0) {
            return Err((
                "layer_norm_eps",
                format!("{} is not in (0, 1)", self.layer_norm_eps),
            ));
        }
        for (field, p) in [
            ("hidden_dropout_prob", self.hidden_dropout),
            ("attention_probs_dropout_prob", self.attention_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err((field, format!("{p} is not a probability in [0, 1)")));
            }
        }
        match self.architecture {
            Architecture::Bert if self.type_vocab_size == 0 => Err((
                "type_vocab_size",
                "BERT needs at least one token type".into(),
            )),
            Architecture::MpNet if self.relative_attention_num_buckets < 4 => Err((
                "relative_attention_num_buckets",
                format!(
                    "{} is too few; MPNet uses 32",
                    self.relative_attention_num_buckets
                ),
            )),
            Architecture::MpNet if self.max_position_embeddings <= self.pad_token_id + 1 => Err((
                "max_position_embeddings",
                "positions start after the pad id, leaving no room for tokens".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// The longest sequence the position table can embed.
    pub fn max_sequence_length(&self) -> usize {
        match self.architecture {
            Architecture::Bert => self.max_position_embeddings,
            // Positions start at pad_token_id + 1.
            Architecture::MpNet => self.max_position_embeddings - self.pad_token_id - 1,
        }
    }
}
