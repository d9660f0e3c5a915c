//! Peak device-memory estimate of a run, before anything is loaded.
//!
//! Parts computed from the model's sizes, the method, the base's storage,
//! the batch shape and the precision: weights, gradients, optimizer state,
//! activations kept for the backward pass, and a fixed workspace for the
//! runtime's allocator and kernels. The peak is what is alive at the fuller
//! of two moments of a step (after the forward pass, or in the optimizer
//! step), plus the workspace.

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
    /// Activations kept for the backward pass at the planned batch shape
    /// (with the weight copies the products keep).
    pub activations: u64,
    /// Allocator slack, kernel workspace and the backward pass's temporaries.
    pub workspace: u64,
    /// The peak: the parts alive at [`MemoryEstimate::peak_at`], plus the
    /// workspace.
    pub total: u64,
    /// When the peak comes.
    #[serde(default)]
    pub peak_at: PeakMoment,
}

/// The moment of a training step that holds the most memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeakMoment {
    /// Weights, optimizer state and activations.
    #[default]
    AfterForward,
    /// Weights, optimizer state and the gradients twice.
    OptimizerStep,
}

impl PeakMoment {
    /// What holds the memory then, in words.
    pub fn describe(self) -> &'static str {
        match self {
            PeakMoment::AfterForward => "after the forward pass",
            PeakMoment::OptimizerStep => "in the optimizer step",
        }
    }
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

/// Whether LoRA adapts the query, key or value projection.
fn adapts_qkv(config: &RunConfig) -> bool {
    let Some(lora) = config.method.adapter() else {
        return false;
    };
    lora.targets
        .iter()
        .any(|t| matches!(t.as_str(), "query" | "key" | "value" | "q" | "k" | "v"))
}

/// LoRA with bf16 products: the frozen dense base is kept in bf16 only.
fn frozen_base_in_half(config: &RunConfig) -> bool {
    config.train.precision == Precision::Bf16
        && matches!(config.method, Method::Lora(_))
        && config.quantize.format == QuantFormat::None
}

/// Estimates the peak device memory of one run.
///
/// Training holds the most at one of two moments. After the forward pass:
/// the weights, the optimizer's moments, and everything kept for the
/// backward pass. During the optimizer step: the weights, the moments and
/// the gradients twice (as the backward pass left them, and laid out flat
/// for the update; the update itself writes in place). The estimate is the
/// higher of the two, plus a fixed workspace.
pub fn estimate(config: &RunConfig) -> MemoryEstimate {
    let params = parameters(config);
    let weights = base_weight_bytes(config, params.base)
        + if matches!(config.method, Method::Full) {
            0
        } else {
            params.trainable * 4
        };
    let gradients = params.trainable * 4;
    let optimizer = params.trainable * 8;
    let activations = activations(config);
    // Allocator slack, the products' workspace and the backward pass's
    // temporaries (one layer's at a time), not counted part by part: on the
    // H200 the six benchmark configurations' peaks exceeded the counted
    // parts by 14 to 33 MiB (BENCHMARKS.md, "Memory estimator").
    let workspace = 32 * 1024 * 1024;
    let after_forward = weights + optimizer + activations;
    let in_step = weights + 2 * gradients + optimizer;
    let (peak, at) = if after_forward >= in_step {
        (after_forward, PeakMoment::AfterForward)
    } else {
        (in_step, PeakMoment::OptimizerStep)
    };
    MemoryEstimate {
        weights,
        gradients,
        optimizer,
        activations,
        workspace,
        total: peak + workspace,
        peak_at: at,
    }
}

/// Bytes a training forward pass keeps for the backward pass on CUDA, at
/// the planned batch shape: counted tensor by tensor, and checked against a
/// counting allocator on the CPU (`tests/memory.rs`, and at the
/// benchmarks' shapes `bench/activation_memory.rs`), where the CPU's
/// composition also keeps [`dropout_masks`].
pub fn activations(config: &RunConfig) -> u64 {
    let d = &config.model.base.dims;
    let (b, s, h, i, heads, l) = (
        config.train.batch_size as u64,
        config.dataset.max_tokens as u64,
        d.hidden as u64,
        d.intermediate as u64,
        d.heads as u64,
        d.layers as u64,
    );
    let bf16 = config.train.precision == Precision::Bf16;
    let packed = config.quantize.format != QuantFormat::None;
    let packed_half = packed && config.quantize.compute == Precision::Bf16;
    let full = matches!(config.method, Method::Full);
    // Bytes per value: attention's q, k and v; what the products read.
    let attention = if bf16 { 2 } else { 4 };
    let product = if bf16 || packed_half { 2 } else { 4 };
    let mask = u64::from(config.model.dropout > 0.0);

    // Per token of a layer: the two LayerNorms keep their normalised input
    // (f32); attention keeps q, k and v; GELU keeps its input. The dropouts
    // on the hidden states and on attention's probabilities keep nothing on
    // CUDA: ftl's kernels draw their masks again in the backward pass
    // (`dropout_masks` is what the CPU keeps for them).
    let mut per_token = 2 * 4 * h + 3 * attention * h + product * i;
    // What each product reads, by the input it shares with the others:
    // q, k and v read the layer's input, o the context, the first
    // feed-forward product the block's input, the second GELU's output.
    // A product keeps its input when its weight trains.
    let inputs: [(&[&str], u64); 4] = [
        (&["query", "key", "value", "q", "k", "v"], h),
        (&["attention.output.dense", "o"], h),
        (&["intermediate.dense"], h),
        (&["output.dense"], i),
    ];
    match &config.method {
        Method::Full => {
            per_token += inputs.iter().map(|(_, width)| product * width).sum::<u64>();
        }
        Method::Lora(lora) | Method::Qlora(lora) => {
            for (modules, width) in inputs {
                let adapted = lora
                    .targets
                    .iter()
                    .filter(|t| modules.contains(&t.as_str()))
                    .count() as u64;
                if adapted == 0 {
                    continue;
                }
                // With dropout each adapter keeps its own dropped input, and
                // in fp32 its mask (under bf16 ftl's kernel draws the mask
                // again in the backward pass on CUDA; the CPU keeps it,
                // `dropout_masks`); without, the adapters read the base's
                // input, kept once.
                per_token += if lora.dropout > 0.0 {
                    adapted * (product + u64::from(!bf16)) * width
                } else {
                    product * width
                };
            }
        }
    }
    let per_layer = b * s * per_token;
    // Trained embeddings: their LayerNorm's normalised output and dropout mask.
    let embeddings = if full { b * s * (4 + mask) * h } else { 0 };
    // MPNet's relative-position bias, shared by every layer, which attention
    // keeps to compute the scores again.
    let bias = match config.model.base.architecture {
        crate::config::Architecture::Mpnet => b * heads * s * s * 4,
        crate::config::Architecture::Bert => 0,
    };
    // A product's backward pass also needs its weight: under bf16 a bf16 copy
    // of every trained linear weight lives until then (a frozen base kept in
    // bf16 is itself what the product keeps: no copy, but for the packed
    // query, key and value of LoRA on them); a packed base in fp32
    // keeps its dequantized f32 weights; in bf16 those are bf16 copies,
    // which ftl's kernel writes directly (no f32 weight on the way). (On the
    // CPU a packed base dequantizes again in the backward pass and keeps
    // none; the estimate is the CUDA figure.)
    let linear = l * (4 * h * h + 2 * h * i);
    let weight_copies = if frozen_base_in_half(config) {
        // Adapters on the query, key or value make the three frozen bases
        // one product, which keeps its packed bf16 weight.
        if adapts_qkv(config) {
            l * 3 * h * h * 2
        } else {
            0
        }
    } else if bf16 || packed_half {
        linear * 2
    } else if packed {
        linear * 4
    } else {
        0
    };
    l * per_layer + embeddings + bias + weight_copies
}

/// Bytes of dropout masks a training forward pass keeps where the
/// dropouts are tensor operations (the CPU): one byte per value of the two
/// dropouts on each layer's hidden states and of attention's probabilities,
/// and under bf16 of each adapter's input dropout. On CUDA ftl's kernels
/// keep none of them ([`activations`]).
pub fn dropout_masks(config: &RunConfig) -> u64 {
    let d = &config.model.base.dims;
    let (b, s, h, i, heads, l) = (
        config.train.batch_size as u64,
        config.dataset.max_tokens as u64,
        d.hidden as u64,
        d.intermediate as u64,
        d.heads as u64,
        d.layers as u64,
    );
    let layers = if config.model.dropout > 0.0 {
        l * (b * s * 2 * h + b * heads * s * s)
    } else {
        0
    };
    let adapters = match &config.method {
        Method::Lora(lora) | Method::Qlora(lora)
            if lora.dropout > 0.0 && config.train.precision == Precision::Bf16 =>
        {
            // One byte per value of each adapter's input: the layer's input
            // (width h) for all but the second feed-forward product (i).
            let widths: u64 = lora
                .targets
                .iter()
                .map(|t| if t == "output.dense" { i } else { h })
                .sum();
            l * b * s * widths
        }
        _ => 0,
    };
    layers + adapters
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::MemoryLoader;
    use crate::span::Sources;

    fn run(method: &str, batch: u32, tokens: u32) -> RunConfig {
        let text = format!(
            "import \"std/models\"\nimport \"std/datasets\"\n\
             pipeline p {{\n  model.base = models.minilm_l6\n  \
             dataset = datasets.sst2 {{\n    max_tokens = {tokens}\n  }}\n  \
             method = {method}\n  train.batch_size = {batch}\n}}\n"
        );
        let loader = MemoryLoader::new([("p.ft", text.as_str())]);
        let mut sources = Sources::new();
        let checked = crate::check("p.ft", &loader, &mut sources, "").expect("checks");
        let plan = crate::lower(&checked, &sources).expect("lowers");
        plan.runs[0].config.clone()
    }

    #[test]
    fn the_peak_is_the_fuller_of_the_two_moments() {
        // Full fine-tuning of one short sequence: the step's second copy of
        // the gradients outweighs the activations.
        let small = estimate(&run("full", 1, 8));
        assert_eq!(small.peak_at, PeakMoment::OptimizerStep);
        assert_eq!(
            small.total,
            small.weights + 2 * small.gradients + small.optimizer + small.workspace
        );
        assert!(small.activations < small.gradients);
        // The benchmarks' batch: the activations do.
        let large = estimate(&run("full", 32, 64));
        assert_eq!(large.peak_at, PeakMoment::AfterForward);
        assert_eq!(
            large.total,
            large.weights + large.optimizer + large.activations + large.workspace
        );
        // Adapters have next to no gradients: always after the forward pass.
        let lora = estimate(&run("lora(rank = 8)", 1, 8));
        assert_eq!(lora.peak_at, PeakMoment::AfterForward);
    }

    #[test]
    fn activations_grow_with_the_batch_and_with_the_length_only_through_the_cpus_masks() {
        // fp32 (the default): no weight copies, everything is per sequence.
        let a = activations(&run("full", 16, 64));
        let b = activations(&run("full", 32, 64));
        assert_eq!(b, 2 * a);
        // Attention keeps q, k and v and computes the scores again, and on
        // CUDA no dropout mask is kept: twice the length, twice the bytes.
        let config = |s| run("lora(rank = 8)", 32, s);
        let (short, long) = (config(32), config(64));
        assert_eq!(activations(&long), 2 * activations(&short));
        // The CPU's attention dropout keeps a mask per head, query and key.
        let on_cpu = |c: &RunConfig| (activations(c) + dropout_masks(c)) as f64;
        assert!(on_cpu(&long) > 2.0 * on_cpu(&short));
    }
}
