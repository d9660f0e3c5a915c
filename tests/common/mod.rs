//! Tiny configs and weight files shared by the tests that need no real model.

#![allow(dead_code)]

use std::path::Path;

use ftl::runtime::model::EncoderConfig;
use ftl::runtime::model::loader::expected_tensors;
use safetensors::{Dtype, tensor::TensorView};

/// A two-layer BERT small enough to run in milliseconds.
pub const TINY_BERT: &str = r#"{
  "model_type": "bert", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2,
  "num_attention_heads": 4, "intermediate_size": 32, "max_position_embeddings": 40,
  "type_vocab_size": 2, "pad_token_id": 0, "layer_norm_eps": 1e-12, "hidden_act": "gelu"
}"#;

/// A two-layer MPNet small enough to run in milliseconds.
pub const TINY_MPNET: &str = r#"{
  "model_type": "mpnet", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2,
  "num_attention_heads": 4, "intermediate_size": 32, "max_position_embeddings": 42,
  "pad_token_id": 1, "layer_norm_eps": 1e-5, "relative_attention_num_buckets": 32
}"#;

/// Parses one of the tiny configs.
pub fn config(json: &str) -> EncoderConfig {
    EncoderConfig::from_json(json, Path::new("config.json")).expect("tiny config is valid")
}

/// Deterministic stand-in weight values: tensor `index`, element `j`.
pub fn value(index: usize, j: usize) -> f32 {
    ((index * 7919 + j * 104_729) % 2000) as f32 / 1000.0 - 1.0
}

/// Writes a safetensors file with every tensor `config` needs (plus the int64
/// position ids and the pooler, as upstream files have), after `edit` may
/// change the list of `(name, shape, f32 values)`.
pub fn write_weights(
    path: &Path,
    config: &EncoderConfig,
    edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>),
) {
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = expected_tensors(config)
        .into_iter()
        .enumerate()
        .map(|(index, t)| {
            let n = t.stored.iter().product();
            (
                t.upstream,
                t.stored,
                (0..n).map(|j| value(index, j)).collect(),
            )
        })
        .collect();
    let h = config.hidden_size;
    tensors.push(("pooler.dense.weight".into(), vec![h, h], vec![0.0; h * h]));
    tensors.push(("pooler.dense.bias".into(), vec![h], vec![0.0; h]));
    edit(&mut tensors);

    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape, values)| {
            (
                name,
                shape,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let positions: Vec<u8> = (0..config.max_position_embeddings as i64)
        .flat_map(|p| p.to_le_bytes())
        .collect();
    let mut views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(name, shape, data)| {
            (
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    views.push((
        "embeddings.position_ids".into(),
        TensorView::new(
            Dtype::I64,
            vec![1, config.max_position_embeddings],
            &positions,
        )
        .unwrap(),
    ));
    let serialized = safetensors::serialize(views, None).unwrap();
    std::fs::write(path, serialized).unwrap();
}
