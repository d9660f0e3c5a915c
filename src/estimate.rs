//! Peak device-memory estimate of a run, before anything is loaded.
//!
//! A sum of parts computed from the model's sizes, the method, the base's
//! storage, the batch shape and the precision: weights, gradients, optimizer
//! state, activations kept for the backward pass, and a fixed workspace for
//! the runtime's allocator and kernels.

use crate::config::{Method, Precision, QuantFormat, RunConfig};
use serde::{Deserialize, Serialize};

/// The parts of a memory estimate, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryEstimate {
    /// Parameters of the model (base as stored, plus adapters and head).
    pub weights: u64,
    /// Gradients of the trainable parameters.
    pub gradients: u64,
    /// AdamW moments (and fp32 master copies under bf16).
    pub optimizer: u64,
    /// Activations kept for the backward pass at the planned batch shape.
    pub activations: u64,
    /// Allocator slack and kernel workspace.
    pub workspace: u64,
    /// The sum.
    pub total: u64,
}

/// Parameter counts of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parameters {
    /// All parameters of the base encoder.
    pub base: u64,
    /// Parameters that train (adapters and head, or everything).
    pub trainable: u64,
}

/// Counts parameters of the encoder, the adapters and the head.
pub fn parameters(config: &RunConfig) -> Parameters {
    let d = &config.model.base.dims;
    let (h, i, l, v) = (
        d.hidden as u64,
        d.intermediate as u64,
        d.layers as u64,
        d.vocab as u64,
    );
    // BERT: a position table of max_positions rows and 2 token types. MPNet:
    // positions start after the pad id (2 more rows), no token types, and a
    // relative-position bias of 32 buckets per head.
    let (positions, token_types, relative) = match config.model.base.architecture {
        crate::config::Architecture::Bert => (d.max_positions as u64, 2, 0),
        crate::config::Architecture::Mpnet => (d.max_positions as u64 + 2, 0, 32 * d.heads as u64),
    };
    let embeddings = (v + positions + token_types) * h + 2 * h + relative;
    let per_layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h;
    let base = embeddings + l * per_layer;
    let labels = config.model.labels.len() as u64;
    let head = h * labels + labels;
    let trainable = match &config.method {
        Method::Full => base + head,
        Method::Lora(lora) | Method::Qlora(lora) => {
            let r = lora.rank as u64;
            let per_target: u64 = lora
                .targets
                .iter()
                .map(|t| {
                    let (fan_in, fan_out) = module_shape(t, h, i);
                    r * (fan_in + fan_out)
                })
                .sum();
            l * per_target + head
        }
    };
    Parameters { base, trainable }
}

/// (in, out) features of a module, by its Hugging Face name.
fn module_shape(name: &str, hidden: u64, inter: u64) -> (u64, u64) {
    match name {
        "intermediate.dense" => (hidden, inter),
        "output.dense" => (inter, hidden),
        _ => (hidden, hidden),
    }
}

/// Bytes of the base weights as stored. A frozen dense base under bf16
/// products (LoRA) keeps its linear weights in bf16 only.
fn base_weight_bytes(config: &RunConfig, base_params: u64) -> u64 {
    let d = &config.model.base.dims;
    let linear = d.layers as u64
        * (4 * d.hidden as u64 * d.hidden as u64 + 2 * d.hidden as u64 * d.intermediate as u64);
    let rest = base_params - linear;
    let q = &config.quantize;
    match q.format.bits() {
        None if frozen_base_in_half(config) => linear * 2 + rest * 4,
        None => base_params * 4,
        Some(bits) => {
            let blocks = linear.div_ceil(q.block_size as u64);
            let scales = if q.double_quant {
                blocks + blocks.div_ceil(256) * 4
            } else {
                blocks * 4
            };
            linear * bits as u64 / 8 + scales + rest * 4
        }
    }
}

/// LoRA with bf16 products: the frozen dense base is kept in bf16 only.
fn frozen_base_in_half(config: &RunConfig) -> bool {
    config.train.precision == Precision::Bf16
        && matches!(config.method, Method::Lora(_))
        && config.quantize.format == QuantFormat::None
}

/// Estimates the peak device memory of one run.
pub fn estimate(config: &RunConfig) -> MemoryEstimate {
    let params = parameters(config);
    let d = &config.model.base.dims;
    let bf16 = config.train.precision == Precision::Bf16;
    let weights = base_weight_bytes(config, params.base)
        + if matches!(config.method, Method::Full) {
            0
        } else {
            params.trainable * 4
        };
    let gradients = params.trainable * 4;
    let optimizer = params.trainable * 8;
    let (b, s, h, i, heads, l) = (
        config.train.batch_size as u64,
        config.dataset.max_tokens as u64,
        d.hidden as u64,
        d.intermediate as u64,
        d.heads as u64,
        d.layers as u64,
    );
    let linear = l * (4 * h * h + 2 * h * i);
    let packed = config.quantize.format != QuantFormat::None;
    let packed_half = packed && config.quantize.compute == Precision::Bf16;
    // Kept for the backward pass, per token of a layer. fp32: the inputs of
    // the projections, q, k, v and the context, the two LayerNorms' kept
    // tensors and the two dropout masks on the hidden states, one byte per
    // value (26·h bytes when the LayerNorms train, 34·h when they are
    // frozen), GELU's input and output (8·i), and per head and key the
    // softmax output and the dropped probabilities with their one-byte mask
    // (5). bf16 products keep bf16 copies of what the products read (the
    // shared q/k/v input, q, k, v, the context, the feed-forward input, the
    // dropped probabilities), GELU's input and output in bf16 (4·i: GELU
    // runs on the product's bf16 result, as under autocast) and f32 the rest.
    //
    // The LayerNorm terms are measured, not only counted: ftl's LayerNorm
    // (one normalised tensor kept per LayerNorm) lowered full fine-tuning's
    // peak on the H200 by what one tensor less per LayerNorm predicts, and
    // left LoRA's peak where it was (BENCHMARKS.md). With frozen γ and β,
    // burn's own decomposition already kept as little, and something else
    // of that size (counted here as a second tensor) stays alive.
    let layer_norms_train = matches!(config.method, Method::Full);
    let frozen_norms = if layer_norms_train { 0 } else { 8 * h };
    let per_layer = if bf16 {
        b * s * (14 * h + frozen_norms + 4 * i) + b * heads * s * s * 3
    } else {
        b * s * (26 * h + frozen_norms + 8 * i) + b * heads * s * s * 5
    };
    // A product's backward pass also needs its weight: under bf16 a bf16 copy
    // of every trained linear weight lives until then (a frozen base kept in
    // bf16 is itself what the product keeps: no copy); a packed base in fp32
    // keeps its dequantized f32 weights; in bf16 those are bf16 copies, and
    // only one f32 dequantized weight (the largest) exists at a time. (On the
    // CPU a packed base dequantizes again in the backward pass and keeps
    // none; the estimate is the CUDA figure.)
    let weight_copies = if frozen_base_in_half(config) {
        0
    } else if bf16 || packed_half {
        linear * 2 + if packed { h * i * 4 } else { 0 }
    } else if packed {
        linear * 4
    } else {
        0
    };
    let activations = l * per_layer + b * s * h * 4 + weight_copies;
    let workspace = 64 * 1024 * 1024;
    let total = weights + gradients + optimizer + activations + workspace;
    MemoryEstimate {
        weights,
        gradients,
        optimizer,
        activations,
        workspace,
        total,
    }
}

/// `512.0 MiB`, `8.00 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}
