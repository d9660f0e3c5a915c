//! What the GPU checks share: MiniLM- and MPNet-shaped configurations, a small
//! deterministic generator, and random weights written as a safetensors file
//! the loader reads. Included by `gpu_check.rs` and `qlora_check.rs`, each
//! of which uses part of it.
#![allow(dead_code)]

use std::path::Path;

use ftl::runtime::model::EncoderConfig;
use ftl::runtime::model::loader::expected_tensors;

pub const MINILM: &str = r#"{"model_type": "bert", "vocab_size": 30522, "hidden_size": 384,
  "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
  "max_position_embeddings": 512, "type_vocab_size": 2, "pad_token_id": 0, "layer_norm_eps": 1e-12}"#;
pub const MPNET: &str = r#"{"model_type": "mpnet", "vocab_size": 30527, "hidden_size": 768,
  "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
  "max_position_embeddings": 514, "pad_token_id": 1, "layer_norm_eps": 1e-5,
  "relative_attention_num_buckets": 32}"#;

/// A small deterministic generator for weights and ids.
pub fn lcg(state: &mut u64) -> f32 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
}

/// Random weights for every tensor `config` expects (LayerNorm γ near 1).
pub fn write_random_weights(path: &Path, config: &EncoderConfig) {
    let mut state = 42u64;
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = expected_tensors(config)
        .into_iter()
        .map(|t| {
            let n: usize = t.stored.iter().product();
            let is_gamma = t.path.ends_with("gamma");
            let bytes = (0..n)
                .flat_map(|_| {
                    let v = lcg(&mut state) * 0.1 + if is_gamma { 1.0 } else { 0.0 };
                    v.to_le_bytes()
                })
                .collect();
            (t.upstream, t.stored, bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .expect("consistent view");
            (name.clone(), view)
        })
        .collect();
    std::fs::write(
        path,
        safetensors::serialize(views, None).expect("serializes"),
    )
    .expect("writes");
}
