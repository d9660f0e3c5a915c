//! Tokenization with a model's `tokenizer.json`, truncated and padded the way ftl batches.
//!
//! Saved tokenizers often carry the settings they were exported with (the
//! sentence-transformers ones truncate and pad every input to 128). ftl replaces
//! both: truncation to a `max_tokens` chosen by the pipeline (special tokens
//! included), and padding to the longest sequence of each batch with the model's
//! pad token, returning the attention mask alongside.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::runtime::error::{RuntimeError, RuntimeResult};

/// A tokenizer set up for ftl's batches.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    max_tokens: usize,
    pad_id: u32,
}

/// A padded batch: ids and mask, both `[batch, seq]`, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    /// Token ids, padded with the pad id.
    pub ids: Vec<i64>,
    /// 1 for tokens, 0 for padding.
    pub attention_mask: Vec<i64>,
    /// Number of sequences.
    pub batch: usize,
    /// Length of every (padded) sequence.
    pub seq: usize,
}

impl TokenBatch {
    /// The ids of sequence `row`, padding included.
    pub fn row_ids(&self, row: usize) -> &[i64] {
        &self.ids[row * self.seq..(row + 1) * self.seq]
    }

    /// The ids of sequence `row` without padding.
    pub fn tokens(&self, row: usize) -> Vec<i64> {
        let mask = &self.attention_mask[row * self.seq..(row + 1) * self.seq];
        self.row_ids(row)
            .iter()
            .zip(mask)
            .filter(|(_, m)| **m == 1)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Ids and mask as `[batch, seq]` int tensors on `device`.
    pub fn to_tensors<B: Backend>(
        &self,
        device: &B::Device,
    ) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>) {
        let shape = [self.batch, self.seq];
        (
            Tensor::from_data(TensorData::new(self.ids.clone(), shape), device),
            Tensor::from_data(TensorData::new(self.attention_mask.clone(), shape), device),
        )
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json`; `max_tokens` bounds every sequence, special tokens
    /// included; `pad_id` is used when the file names no pad token.
    pub fn from_file(path: &Path, max_tokens: usize, pad_id: u32) -> RuntimeResult<Self> {
        let error = |message: String| RuntimeError::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        if !path.exists() {
            return Err(RuntimeError::io(
                path,
                "read",
                &std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        if max_tokens < 2 {
            return Err(error(format!(
                "max tokens {max_tokens} leaves no room for special tokens"
            )));
        }
        let mut inner = Tokenizer::from_file(path).map_err(|e| error(e.to_string()))?;
        let truncation = TruncationParams {
            max_length: max_tokens,
            ..TruncationParams::default()
        };
        inner
            .with_truncation(Some(truncation))
            .map_err(|e| error(e.to_string()))?;
        let (pad_id, pad_token) = match inner.get_padding() {
            Some(existing) => (existing.pad_id, existing.pad_token.clone()),
            None => {
                let token = inner
                    .id_to_token(pad_id)
                    .ok_or_else(|| error(format!("pad id {pad_id} is not in the vocabulary")))?;
                (pad_id, token)
            }
        };
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id,
            pad_token,
            ..PaddingParams::default()
        }));
        Ok(TextTokenizer {
            inner,
            path: path.to_path_buf(),
            max_tokens,
            pad_id,
        })
    }

    /// The most tokens one sequence gets.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The id padding uses.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Tokenizes `texts` with special tokens, truncated and padded to the longest.
    pub fn encode_batch(&self, texts: &[&str]) -> RuntimeResult<TokenBatch> {
        if texts.is_empty() {
            return Ok(TokenBatch {
                ids: vec![],
                attention_mask: vec![],
                batch: 0,
                seq: 0,
            });
        }
        let encodings =
            self.inner
                .encode_batch(texts.to_vec(), true)
                .map_err(|e| RuntimeError::Tokenizer {
                    path: self.path.clone(),
                    message: e.to_string(),
                })?;
        let seq = encodings
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(0);
        let mut batch = TokenBatch {
            ids: Vec::with_capacity(seq * texts.len()),
            attention_mask: Vec::with_capacity(seq * texts.len()),
            batch: texts.len(),
            seq,
        };
        for encoding in &encodings {
            // Padding already made every row `seq` long.
            batch
                .ids
                .extend(encoding.get_ids().iter().map(|&id| id as i64));
            batch
                .attention_mask
                .extend(encoding.get_attention_mask().iter().map(|&m| m as i64));
        }
        Ok(batch)
    }
}
