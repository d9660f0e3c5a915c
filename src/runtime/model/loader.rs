//! Loads Hugging Face `model.safetensors` weights into an [`Encoder`].
//!
//! The tables below are the whole mapping from upstream tensor names to ftl's
//! module paths; `{i}` stands for a layer index. PyTorch stores a linear weight as
//! `[out, in]` and burn as `[in, out]`, so rows marked [`Dims::Linear`] are
//! transposed on load.
//!
//! Every tensor's dtype and shape is checked against the config before any
//! model memory is allocated, and a failure names the tensor. Pickled PyTorch
//! files (`pytorch_model.bin`, `.pt`, …) are refused: unpickling runs arbitrary
//! code, and pipelines are shared.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::Embedding;
use burn::prelude::*;
use safetensors::{Dtype, SafeTensors};

use crate::runtime::error::{RuntimeError, RuntimeResult};
use crate::runtime::model::config::{Architecture, EncoderConfig};
use crate::runtime::model::encoder::Encoder;
use crate::runtime::model::layer_norm::LayerNorm;
use crate::runtime::model::projection::Projection;

/// A size taken from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// `vocab_size`.
    Vocab,
    /// `hidden_size`.
    Hidden,
    /// `intermediate_size`.
    Intermediate,
    /// `max_position_embeddings`.
    Positions,
    /// `type_vocab_size`.
    TokenTypes,
    /// `relative_attention_num_buckets`.
    Buckets,
    /// `num_attention_heads`.
    Heads,
}

/// The stored shape of a tensor, in config sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dims {
    /// A vector `[n]` (bias, LayerNorm).
    Vector(Size),
    /// A table `[rows, cols]` loaded as is (embeddings).
    Table(Size, Size),
    /// A linear weight stored `[out, in]`, loaded transposed as `[in, out]`.
    Linear(Size, Size),
}

/// One row of a key table: upstream name, ftl module path, stored shape.
pub type KeyRow = (&'static str, &'static str, Dims);

use Dims::{Linear as Lin, Table, Vector as Vec1};
use Size::*;

/// BERT (`BertModel`, no `bert.` prefix) → ftl.
#[rustfmt::skip]
pub const BERT_KEYS: &[KeyRow] = &[
    ("embeddings.word_embeddings.weight", "embeddings.word.weight", Table(Vocab, Hidden)),
    ("embeddings.position_embeddings.weight", "embeddings.position.weight", Table(Positions, Hidden)),
    ("embeddings.token_type_embeddings.weight", "embeddings.token_type.weight", Table(TokenTypes, Hidden)),
    ("embeddings.LayerNorm.weight", "embeddings.layer_norm.gamma", Vec1(Hidden)),
    ("embeddings.LayerNorm.bias", "embeddings.layer_norm.beta", Vec1(Hidden)),
    ("encoder.layer.{i}.attention.self.query.weight", "layers.{i}.attention.query.weight", Lin(Hidden, Hidden)),
    ("encoder.layer.{i}.attention.self.query.bias", "layers.{i}.attention.query.bias", Vec1(Hidden)),
    ("encoder.layer.{i}.attention.self.key.weight", "layers.{i}.attention.key.weight", Lin(Hidden, Hidden)),
    ("encoder.layer.{i}.attention.self.key.bias", "layers.{i}.attention.key.bias", Vec1(Hidden)),
    ("encoder.layer.{i}.attention.self.value.weight", "layers.{i}.attention.value.weight", Lin(Hidden, Hidden)),
    ("encoder.layer.{i}.attention.self.value.bias", "layers.{i}.attention.value.bias", Vec1(Hidden)),
    ("encoder.layer.{i}.attention.output.dense.weight", "layers.{i}.attention.output.weight", Lin(Hidden, Hidden)),
    ("encoder.layer.{i}.attention.output.dense.bias", "layers.{i}.attention.output.bias", Vec1(Hidden)),
    ("encoder.layer.{i}.attention.output.LayerNorm.weight", "layers.{i}.attention.layer_norm.gamma", Vec1(Hidden)),
    ("encoder.layer.{i}.attention.output.LayerNorm.bias", "layers.{i}.attention.layer_norm.beta", Vec1(Hidden)),
    ("encoder.layer.{i}.intermediate.dense.weight", "layers.{i}.feed_forward.intermediate.weight", Lin(Intermediate, Hidden)),
    ("encoder.layer.{i}.intermediate.dense.bias", "layers.{i}.feed_forward.intermediate.bias", Vec1(Intermediate)),
    ("encoder.layer.{i}.output.dense.weight", "layers.{i}.feed_forward.output.weight", Lin(Hidden, Intermediate)),
    ("encoder.layer.{i}.output.dense.bias", "layers.{i}.feed_forward.output.bias", Vec1(Hidden)),
    ("encoder.layer.{i}.output.LayerNorm.weight", "layers.{i}.feed_forward.layer_norm.gamma", Vec1(Hidden)),
    ("encoder.layer.{i}.output.LayerNorm.bias", "layers.{i}.feed_forward.layer_norm.beta", Vec1(Hidden)),
];

/// MPNet (`MPNetModel`, no `mpnet.` prefix) → ftl.
#[rustfmt::skip]
pub const MPNET_KEYS: &[KeyRow] = &[
    ("embeddings.word_embeddings.weight", "embeddings.word.weight", Table(Vocab, Hidden)),
    ("embeddings.position_embeddings.weight", "embeddings.position.weight", Table(Positions, Hidden)),
    ("embeddings.LayerNorm.weight", "embeddings.layer_norm.gamma", Vec1(Hidden)),
    ("embeddings.LayerNorm.bias", "embeddings.layer_norm.beta", Vec1(Hidden)),
    ("encoder.relative_attention_bias.weight", "relative_attention_bias.weight", Table(Buckets, Heads)),
    ("encoder.layer.{i}.attention.attn.q.weight", "layers.{i}.attention.query.weight", Lin(Hidden, Hidden)),
    ("encoder.layer.{i}.attention.attn.q.bias", "layers.{i}.attention.query.bias", Vec1(Hidden)),
    ("encoder.layer.{i}.attention.attn.k.weight", "layers.{i}.attention.key.weight", Lin(Hidden, Hidden)),
    ("encoder.layer.{i}.attention.attn.k.bias", "layers.{i}.attention.key.bias", Vec1(Hidden)),
    ("encoder.layer.{i}.attention.attn.v.weight", "layers.{i}.attention.value.weight", Lin(Hidden, Hidden)),
    ("encoder.layer.{i}.attention.attn.v.bias", "layers.{i}.attention.value.bias", Vec1(Hidden)),
    ("encoder.layer.{i}.attention.attn.o.weight", "layers.{i}.attention.output.weight", Lin(Hidden, Hidden)),
    ("encoder.layer.{i}.attention.attn.o.bias", "layers.{i}.attention.output.bias", Vec1(Hidden)),
    ("encoder.layer.{i}.attention.LayerNorm.weight", "layers.{i}.attention.layer_norm.gamma", Vec1(Hidden)),
    ("encoder.layer.{i}.attention.LayerNorm.bias", "layers.{i}.attention.layer_norm.beta", Vec1(Hidden)),
    ("encoder.layer.{i}.intermediate.dense.weight", "layers.{i}.feed_forward.intermediate.weight", Lin(Intermediate, Hidden)),
    ("encoder.layer.{i}.intermediate.dense.bias", "layers.{i}.feed_forward.intermediate.bias", Vec1(Intermediate)),
    ("encoder.layer.{i}.output.dense.weight", "layers.{i}.feed_forward.output.weight", Lin(Hidden, Intermediate)),
    ("encoder.layer.{i}.output.dense.bias", "layers.{i}.feed_forward.output.bias", Vec1(Hidden)),
    ("encoder.layer.{i}.output.LayerNorm.weight", "layers.{i}.feed_forward.layer_norm.gamma", Vec1(Hidden)),
    ("encoder.layer.{i}.output.LayerNorm.bias", "layers.{i}.feed_forward.layer_norm.beta", Vec1(Hidden)),
];

/// Upstream tensors that are present but deliberately not loaded: the int64
/// position id buffer, and the pooler (ftl pools in its own head).
pub const SKIPPED_KEYS: &[&str] = &[
    "embeddings.position_ids",
    "pooler.dense.weight",
    "pooler.dense.bias",
];

/// File names that hold pickled PyTorch weights.
const PICKLE_EXTENSIONS: &[&str] = &["bin", "pt", "pth", "ckpt", "pkl", "pickle"];

/// What a load did, for logs and tests.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoadReport {
    /// The weights file read.
    pub path: PathBuf,
    /// Tensors loaded into the encoder.
    pub tensors: usize,
    /// Scalars loaded.
    pub parameters: usize,
    /// Known upstream tensors left out on purpose ([`SKIPPED_KEYS`]).
    pub skipped: Vec<String>,
    /// Tensors in the file that ftl does not know, left out.
    pub unused: Vec<String>,
}

/// One tensor the config requires, with its names and shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedTensor {
    /// Upstream name in the safetensors file.
    pub upstream: String,
    /// ftl module path.
    pub path: String,
    /// Shape as stored upstream.
    pub stored: Vec<usize>,
    /// Whether it is transposed on load.
    pub transpose: bool,
}

/// The key table for an architecture.
pub fn key_table(architecture: Architecture) -> &'static [KeyRow] {
    match architecture {
        Architecture::Bert => BERT_KEYS,
        Architecture::MpNet => MPNET_KEYS,
    }
}

/// Every tensor `config` requires, layer rows expanded, in table order.
pub fn expected_tensors(config: &EncoderConfig) -> Vec<ExpectedTensor> {
    let size = |s: Size| match s {
        Vocab => config.vocab_size,
        Hidden => config.hidden_size,
        Intermediate => config.intermediate_size,
        Positions => config.max_position_embeddings,
        TokenTypes => config.type_vocab_size,
        Buckets => config.relative_attention_num_buckets,
        Heads => config.num_heads,
    };
    let mut out = Vec::new();
    for &(upstream, path, dims) in key_table(config.architecture) {
        let (stored, transpose) = match dims {
            Dims::Vector(n) => (vec![size(n)], false),
            Dims::Table(r, c) => (vec![size(r), size(c)], false),
            Dims::Linear(o, i) => (vec![size(o), size(i)], true),
        };
        let layers: Vec<Option<usize>> = if upstream.contains("{i}") {
            (0..config.num_layers).map(Some).collect()
        } else {
            vec![None]
        };
        for layer in layers {
            let fill = |s: &str| match layer {
                Some(i) => s.replace("{i}", &i.to_string()),
                None => s.to_string(),
            };
            out.push(ExpectedTensor {
                upstream: fill(upstream),
                path: fill(path),
                stored: stored.clone(),
                transpose,
            });
        }
    }
    out
}

/// Loads `config.json` and `model.safetensors` from a Hugging Face model folder.
pub fn load_model_dir<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> RuntimeResult<(EncoderConfig, Encoder<B>, LoadReport)> {
    let config = EncoderConfig::from_file(&dir.join("config.json"))?;
    let weights = dir.join("model.safetensors");
    if !weights.exists() {
        for pickle in ["pytorch_model.bin", "model.pt", "model.pth"] {
            if dir.join(pickle).exists() {
                return Err(RuntimeError::UnsafeWeightsFormat {
                    path: dir.join(pickle),
                });
            }
        }
    }
    let (encoder, report) = load_encoder(&weights, &config, device)?;
    Ok((config, encoder, report))
}

/// Loads a safetensors file into a new encoder built from `config`.
pub fn load_encoder<B: Backend>(
    path: &Path,
    config: &EncoderConfig,
    device: &B::Device,
) -> RuntimeResult<(Encoder<B>, LoadReport)> {
    refuse_pickle_name(path)?;
    let file = std::fs::File::open(path).map_err(|e| RuntimeError::io(path, "open", &e))?;
    // SAFETY: the map is read-only and dropped before returning; a file truncated
    // by another process while mapped is outside what ftl defends against.
    let map =
        unsafe { memmap2::Mmap::map(&file) }.map_err(|e| RuntimeError::io(path, "map", &e))?;
    refuse_pickle_bytes(path, &map)?;
    let file = SafeTensors::deserialize(&map).map_err(|e| RuntimeError::CorruptWeights {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;

    let expected = expected_tensors(config);
    check_tensors(path, &file, &expected)?;

    let mut report = LoadReport {
        path: path.to_path_buf(),
        ..LoadReport::default()
    };
    let known: std::collections::HashSet<&str> =
        expected.iter().map(|t| t.upstream.as_str()).collect();
    let mut names: Vec<String> = file.names().into_iter().map(String::from).collect();
    names.sort();
    for name in names {
        if SKIPPED_KEYS.contains(&name.as_str()) {
            report.skipped.push(name);
        } else if !known.contains(name.as_str()) {
            report.unused.push(name);
        }
    }

    let mut weights = Weights {
        path,
        tensors: HashMap::new(),
        device: device.clone(),
    };
    for tensor in &expected {
        let data = decode(path, &file, tensor)?;
        report.tensors += 1;
        report.parameters += data.num_elements();
        weights.tensors.insert(tensor.path.clone(), data);
    }
    let mut encoder = config.init::<B>(device);
    assign(&mut encoder, &mut weights)?;
    Ok((encoder, report))
}

/// Refuses pickle files by name.
fn refuse_pickle_name(path: &Path) -> RuntimeResult<()> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if PICKLE_EXTENSIONS.contains(&ext.as_str()) {
        return Err(RuntimeError::UnsafeWeightsFormat {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Refuses pickle files whatever their name: a zip archive (`PK`, torch's
/// default) or a raw pickle (protocol marker `0x80`).
fn refuse_pickle_bytes(path: &Path, bytes: &[u8]) -> RuntimeResult<()> {
    if bytes.starts_with(b"PK\x03\x04") || bytes.first() == Some(&0x80) {
        return Err(RuntimeError::UnsafeWeightsFormat {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Checks presence, dtype and shape of every expected tensor; allocates nothing.
fn check_tensors(
    path: &Path,
    file: &SafeTensors<'_>,
    expected: &[ExpectedTensor],
) -> RuntimeResult<()> {
    for tensor in expected {
        let view = file
            .tensor(&tensor.upstream)
            .map_err(|_| RuntimeError::MissingTensor {
                path: path.to_path_buf(),
                tensor: tensor.upstream.clone(),
            })?;
        if !matches!(view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(RuntimeError::TensorDtype {
                path: path.to_path_buf(),
                tensor: tensor.upstream.clone(),
                found: format!("{:?}", view.dtype()),
            });
        }
        if view.shape() != tensor.stored.as_slice() {
            return Err(RuntimeError::TensorShape {
                path: path.to_path_buf(),
                tensor: tensor.upstream.clone(),
                expected: tensor.stored.clone(),
                found: view.shape().to_vec(),
            });
        }
    }
    Ok(())
}

/// Reads one checked tensor as f32, transposing linear weights to `[in, out]`.
fn decode(
    path: &Path,
    file: &SafeTensors<'_>,
    tensor: &ExpectedTensor,
) -> RuntimeResult<TensorData> {
    let view = file
        .tensor(&tensor.upstream)
        .map_err(|_| RuntimeError::MissingTensor {
            path: path.to_path_buf(),
            tensor: tensor.upstream.clone(),
        })?;
    // Little-endian; the data may be unaligned in the map, so read bytewise.
    // Half-precision checkpoints are widened to f32 (exactly: both convert
    // without rounding).
    let bytes = view.data();
    let values: Vec<f32> = match view.dtype() {
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    };
    if !tensor.transpose {
        return Ok(TensorData::new(values, tensor.stored.clone()));
    }
    let (rows, cols) = (tensor.stored[0], tensor.stored[1]);
    let mut transposed = vec![0.0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            transposed[c * rows + r] = values[r * cols + c];
        }
    }
    Ok(TensorData::new(transposed, [cols, rows]))
}

/// Decoded tensors by ftl path, handed out to the modules.
struct Weights<'a, B: Backend> {
    path: &'a Path,
    tensors: HashMap<String, TensorData>,
    device: B::Device,
}

impl<B: Backend> Weights<'_, B> {
    fn take<const D: usize>(&mut self, name: &str) -> RuntimeResult<Param<Tensor<B, D>>> {
        let data = self
            .tensors
            .remove(name)
            .ok_or_else(|| RuntimeError::MissingTensor {
                path: self.path.to_path_buf(),
                tensor: name.to_string(),
            })?;
        Ok(Param::from_tensor(Tensor::from_data(data, &self.device)))
    }

    fn linear(&mut self, linear: &mut Projection<B>, prefix: &str) -> RuntimeResult<()> {
        linear.weight = Some(self.take(&format!("{prefix}.weight"))?);
        linear.bias = Some(self.take(&format!("{prefix}.bias"))?);
        Ok(())
    }

    fn layer_norm(&mut self, norm: &mut LayerNorm<B>, prefix: &str) -> RuntimeResult<()> {
        norm.gamma = self.take(&format!("{prefix}.gamma"))?;
        norm.beta = self.take(&format!("{prefix}.beta"))?;
        Ok(())
    }

    fn embedding(&mut self, table: &mut Embedding<B>, prefix: &str) -> RuntimeResult<()> {
        table.weight = self.take(&format!("{prefix}.weight"))?;
        Ok(())
    }
}

/// Puts every decoded tensor in its place; the paths are those of the key tables.
fn assign<B: Backend>(encoder: &mut Encoder<B>, weights: &mut Weights<'_, B>) -> RuntimeResult<()> {
    let embeddings = &mut encoder.embeddings;
    weights.embedding(&mut embeddings.word, "embeddings.word")?;
    weights.embedding(&mut embeddings.position, "embeddings.position")?;
    if let Some(token_type) = &mut embeddings.token_type {
        weights.embedding(token_type, "embeddings.token_type")?;
    }
    weights.layer_norm(&mut embeddings.layer_norm, "embeddings.layer_norm")?;
    if let Some(table) = &mut encoder.relative_attention_bias {
        weights.embedding(table, "relative_attention_bias")?;
    }
    for (i, layer) in encoder.layers.iter_mut().enumerate() {
        let attention = &mut layer.attention;
        let p = format!("layers.{i}.attention");
        weights.linear(&mut attention.query, &format!("{p}.query"))?;
        weights.linear(&mut attention.key, &format!("{p}.key"))?;
        weights.linear(&mut attention.value, &format!("{p}.value"))?;
        weights.linear(&mut attention.output, &format!("{p}.output"))?;
        weights.layer_norm(&mut attention.layer_norm, &format!("{p}.layer_norm"))?;
        let ff = &mut layer.feed_forward;
        let p = format!("layers.{i}.feed_forward");
        weights.linear(&mut ff.intermediate, &format!("{p}.intermediate"))?;
        weights.linear(&mut ff.output, &format!("{p}.output"))?;
        weights.layer_norm(&mut ff.layer_norm, &format!("{p}.layer_norm"))?;
    }
    Ok(())
}
