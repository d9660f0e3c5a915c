//! Saving and restoring what training produced: parameters by module path,
//! checkpoints (trainable parameters, AdamW moments and progress, in one
//! safetensors file replaced atomically), PEFT adapters, the head, and
//! Hugging Face weights for full fine-tunes and merged models.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use crate::config::{Lora, ModelSpec};
use crate::report::Evaluation;
use crate::runtime::error::{RuntimeError, RuntimeResult};
use crate::runtime::model::classifier::projection;
use crate::runtime::model::loader::expected_tensors;
use crate::runtime::model::{Classifier, EncoderConfig};
use crate::runtime::train::optim::{AdamW, Moments};

/// A float parameter: its module path, id, shape and whether it trains.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedParam {
    /// `encoder.layers.0.attention.query.adapter.a`.
    pub path: String,
    /// burn's id.
    pub id: ParamId,
    /// Shape.
    pub shape: Vec<usize>,
    /// Whether it receives gradients.
    pub trainable: bool,
}

struct Names {
    stack: Vec<String>,
    out: Vec<NamedParam>,
}

impl<B: Backend> ModuleVisitor<B> for Names {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.out.push(NamedParam {
            path: self.stack.join("."),
            id: param.id,
            shape: param.dims().to_vec(),
            trainable: param.is_require_grad(),
        });
    }
}

/// Every float parameter of `module`, in visiting order.
pub fn named_params<B: Backend, M: Module<B>>(module: &M) -> Vec<NamedParam> {
    let mut names = Names {
        stack: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut names);
    names.out
}

struct Values<'a> {
    stack: Vec<String>,
    wanted: &'a dyn Fn(&str) -> bool,
    out: Vec<(String, TensorData)>,
}

impl<B: Backend> ModuleVisitor<B> for Values<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let path = self.stack.join(".");
        if (self.wanted)(&path) {
            self.out
                .push((path, param.val().into_data().convert::<f32>()));
        }
    }
}

/// The values of the parameters whose path `wanted` accepts.
pub fn param_values<B: Backend, M: Module<B>>(
    module: &M,
    wanted: &dyn Fn(&str) -> bool,
) -> Vec<(String, TensorData)> {
    let mut v = Values {
        stack: Vec::new(),
        wanted,
        out: Vec::new(),
    };
    module.visit(&mut v);
    v.out
}

struct Assign<'a, B: Backend> {
    stack: Vec<String>,
    values: &'a mut HashMap<String, TensorData>,
    device: B::Device,
}

impl<B: Backend> ModuleMapper<B> for Assign<'_, B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let path = self.stack.join(".");
        let (id, tensor, mapper) = param.consume();
        let tensor = match self.values.remove(&path) {
            Some(data) if data.shape.as_slice() == tensor.dims().as_slice() => {
                let trains = tensor.is_require_grad();
                let fresh = Tensor::<B, D>::from_data(data, &self.device);
                if trains { fresh.require_grad() } else { fresh }
            }
            Some(data) => {
                // Put it back so the caller reports the mismatch.
                self.values
                    .insert(format!("{path} (shape {:?})", data.shape), data);
                tensor
            }
            None => tensor,
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// Replaces parameters by path; returns the model and the values no
/// parameter took (wrong path or shape).
pub fn assign<B: Backend, M: Module<B>>(
    module: M,
    mut values: HashMap<String, TensorData>,
    device: &B::Device,
) -> (M, Vec<String>) {
    let mut assign = Assign {
        stack: Vec::new(),
        values: &mut values,
        device: device.clone(),
    };
    let module = module.map(&mut assign);
    let mut left: Vec<String> = values.into_keys().collect();
    left.sort();
    (module, left)
}

/// Where training stands, saved with each checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Optimizer steps done.
    pub step: u64,
    /// Epoch in progress, from 0.
    pub epoch: u64,
    /// Next batch of that epoch.
    pub batch: usize,
    /// Evaluations taken so far.
    pub evaluations: Vec<Evaluation>,
    /// Seconds spent so far: load, first step, train, eval.
    pub seconds: [f64; 4],
    /// Highest device memory seen so far.
    pub peak_memory_bytes: Option<u64>,
}

fn f32_bytes(data: &TensorData) -> Vec<u8> {
    data.as_slice::<f32>()
        .expect("f32 data")
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// Writes named f32 tensors to a safetensors file atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, TensorData)],
    metadata: Option<HashMap<String, String>>,
) -> RuntimeResult<()> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, d)| f32_bytes(d)).collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, data), b)| {
            let view =
                TensorView::new(Dtype::F32, data.shape.to_vec(), b).expect("shape matches data");
            (name.clone(), view)
        })
        .collect();
    let out = safetensors::serialize(views, metadata).map_err(|e| RuntimeError::Io {
        path: path.to_path_buf(),
        action: "serialize",
        message: e.to_string(),
    })?;
    let tmp = path.with_extension("safetensors.tmp");
    std::fs::write(&tmp, out).map_err(|e| RuntimeError::io(&tmp, "write", &e))?;
    std::fs::rename(&tmp, path).map_err(|e| RuntimeError::io(path, "rename", &e))
}

/// Reads every f32 tensor of a safetensors file, and its metadata.
pub fn read_safetensors(
    path: &Path,
) -> RuntimeResult<(HashMap<String, TensorData>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| RuntimeError::io(path, "read", &e))?;
    let corrupt = |message: String| RuntimeError::CorruptWeights {
        path: path.to_path_buf(),
        message,
    };
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut out = HashMap::new();
    for (name, view) in file.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(corrupt(format!(
                "tensor `{name}` is {:?}, not F32",
                view.dtype()
            )));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        out.insert(name, TensorData::new(values, view.shape().to_vec()));
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// Saves trainable parameters, their AdamW moments and `progress` in
/// `path`, replacing the previous checkpoint in one rename.
pub fn save_checkpoint<AB: AutodiffBackend, M: AutodiffModule<AB>>(
    path: &Path,
    model: &M,
    optimizer: &AdamW<AB::InnerBackend>,
    progress: &Progress,
) -> RuntimeResult<()> {
    // The f32 masters, where the model sees bf16 copies of some weights.
    let model = &optimizer.masters(model.clone());
    let names = named_params::<AB, M>(model);
    let trainable: HashMap<String, ParamId> = names
        .iter()
        .filter(|n| n.trainable)
        .map(|n| (n.path.clone(), n.id))
        .collect();
    let mut tensors = param_values::<AB, M>(model, &|p| trainable.contains_key(p));
    for (path, id) in &trainable {
        if let Some(Moments { m, v }) = optimizer.moments(id) {
            tensors.push((format!("adam.m.{path}"), m.clone().into_data()));
            tensors.push((format!("adam.v.{path}"), v.clone().into_data()));
        }
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut meta = HashMap::new();
    meta.insert(
        "progress".into(),
        serde_json::to_string(progress).expect("progress serializes"),
    );
    meta.insert("adam_steps".into(), optimizer.steps.to_string());
    write_safetensors(path, &tensors, Some(meta))
}

/// Restores a checkpoint into a freshly prepared model and optimizer.
pub fn load_checkpoint<AB: AutodiffBackend, M: AutodiffModule<AB>>(
    path: &Path,
    model: M,
    optimizer: &mut AdamW<AB::InnerBackend>,
    device: &AB::Device,
) -> RuntimeResult<(M, Progress)> {
    let bad = |message: String| RuntimeError::BadRun {
        path: path.to_path_buf(),
        message,
    };
    let (mut tensors, meta) = read_safetensors(path)?;
    let progress: Progress = meta
        .get("progress")
        .and_then(|p| serde_json::from_str(p).ok())
        .ok_or_else(|| bad("the checkpoint has no progress record".into()))?;
    optimizer.steps = meta
        .get("adam_steps")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("the checkpoint has no optimizer step count".into()))?;
    let names = named_params::<AB, M>(&model);
    let inner = device.clone();
    for n in names.iter().filter(|n| n.trainable) {
        let m = tensors.remove(&format!("adam.m.{}", n.path));
        let v = tensors.remove(&format!("adam.v.{}", n.path));
        if let (Some(m), Some(v)) = (m, v) {
            optimizer.restore(
                n.id,
                Moments {
                    m: Tensor::from_data(m, &inner),
                    v: Tensor::from_data(v, &inner),
                },
            );
        }
    }
    let expected = names.iter().filter(|n| n.trainable).count();
    if tensors.len() != expected {
        return Err(bad(format!(
            "it holds {} parameters, this run trains {expected}; was the pipeline changed?",
            tensors.len()
        )));
    }
    let (model, left) = assign::<AB, M>(model, tensors, device);
    if !left.is_empty() {
        return Err(bad(format!(
            "parameters that fit nothing in this model: {}",
            left.join(", ")
        )));
    }
    Ok((model, progress))
}

/// Transposes a 2-D tensor's data (burn's `[in, out]` ↔ PyTorch's `[out, in]`).
fn transposed(data: TensorData) -> TensorData {
    let [rows, cols] = [data.shape[0], data.shape[1]];
    let values = data.to_vec::<f32>().expect("f32");
    let mut out = vec![0.0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    TensorData::new(out, [cols, rows])
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` in PEFT's format.
pub fn save_adapter<B: Backend>(
    dir: &Path,
    model: &Classifier<B>,
    spec: &ModelSpec,
    lora: &Lora,
    architecture: crate::runtime::model::Architecture,
) -> RuntimeResult<()> {
    std::fs::create_dir_all(dir).map_err(|e| RuntimeError::io(dir, "create", &e))?;
    let mut tensors = Vec::new();
    for (i, layer) in model.encoder.layers.iter().enumerate() {
        for target in &lora.targets {
            let adapter = projection(layer, architecture, target)
                .and_then(|p| p.adapter.as_ref())
                .ok_or_else(|| RuntimeError::UnknownTarget {
                    target: target.clone(),
                })?;
            let (a_key, b_key) = crate::peft::lora_keys(spec.architecture, i as u32, target);
            tensors.push((
                a_key,
                transposed(adapter.a.val().into_data().convert::<f32>()),
            ));
            tensors.push((
                b_key,
                transposed(adapter.b.val().into_data().convert::<f32>()),
            ));
        }
    }
    write_safetensors(&dir.join("adapter_model.safetensors"), &tensors, None)?;
    let config = crate::peft::adapter_config(spec, lora);
    let path = dir.join("adapter_config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config).expect("json"))
        .map_err(|e| RuntimeError::io(&path, "write", &e))
}

/// Reads PEFT adapters back into a prepared (adapter-carrying) model.
pub fn load_adapter<B: Backend>(
    dir: &Path,
    model: Classifier<B>,
    spec: &ModelSpec,
    lora: &Lora,
    architecture: crate::runtime::model::Architecture,
    device: &B::Device,
) -> RuntimeResult<Classifier<B>> {
    let path = dir.join("adapter_model.safetensors");
    let (mut tensors, _) = read_safetensors(&path)?;
    let mut values = HashMap::new();
    for i in 0..model.encoder.layers.len() {
        for target in &lora.targets {
            let (a_key, b_key) = crate::peft::lora_keys(spec.architecture, i as u32, target);
            let prefix = format!(
                "encoder.layers.{i}.{}",
                ftl_projection_path(architecture, target).unwrap_or_default()
            );
            for (key, name) in [(a_key, "a"), (b_key, "b")] {
                let data = tensors
                    .remove(&key)
                    .ok_or_else(|| RuntimeError::MissingTensor {
                        path: path.clone(),
                        tensor: key.clone(),
                    })?;
                values.insert(format!("{prefix}.adapter.{name}"), transposed(data));
            }
        }
    }
    let (model, left) = assign(model, values, device);
    if !left.is_empty() {
        return Err(RuntimeError::BadRun {
            path,
            message: format!(
                "adapters that fit nothing in this model: {}",
                left.join(", ")
            ),
        });
    }
    Ok(model)
}

/// The path of a Hugging Face module name inside an ftl encoder layer.
pub fn ftl_projection_path(
    architecture: crate::runtime::model::Architecture,
    target: &str,
) -> Option<&'static str> {
    use crate::runtime::model::Architecture::{Bert, MpNet};
    Some(match (architecture, target) {
        (Bert, "query") | (MpNet, "q") => "attention.query",
        (Bert, "key") | (MpNet, "k") => "attention.key",
        (Bert, "value") | (MpNet, "v") => "attention.value",
        (Bert, "attention.output.dense") | (MpNet, "o") => "attention.output",
        (_, "intermediate.dense") => "feed_forward.intermediate",
        (_, "output.dense") => "feed_forward.output",
        _ => return None,
    })
}

/// Writes the head (`classifier.weight` `[labels, hidden]`, `classifier.bias`)
/// with its label names and pooling in the metadata.
pub fn save_head<B: Backend>(
    path: &Path,
    model: &Classifier<B>,
    labels: &[String],
) -> RuntimeResult<()> {
    let c = &model.head.classifier;
    let mut tensors = vec![(
        "classifier.weight".to_string(),
        transposed(c.weight.val().into_data().convert::<f32>()),
    )];
    if let Some(b) = &c.bias {
        tensors.push((
            "classifier.bias".into(),
            b.val().into_data().convert::<f32>(),
        ));
    }
    let mut meta = HashMap::new();
    meta.insert(
        "labels".into(),
        serde_json::to_string(labels).expect("json"),
    );
    meta.insert(
        "pooling".into(),
        format!("{:?}", model.head.pooling()).to_lowercase(),
    );
    write_safetensors(path, &tensors, Some(meta))
}

/// Reads a head written by [`save_head`] into `model`.
pub fn load_head<B: Backend>(
    path: &Path,
    mut model: Classifier<B>,
    device: &B::Device,
) -> RuntimeResult<Classifier<B>> {
    let (mut tensors, _) = read_safetensors(path)?;
    let missing = |t: &str| RuntimeError::MissingTensor {
        path: path.to_path_buf(),
        tensor: t.into(),
    };
    let w = tensors
        .remove("classifier.weight")
        .ok_or_else(|| missing("classifier.weight"))?;
    let b = tensors
        .remove("classifier.bias")
        .ok_or_else(|| missing("classifier.bias"))?;
    let w = transposed(w);
    if w.shape.as_slice() != model.head.classifier.weight.dims().as_slice() {
        return Err(RuntimeError::TensorShape {
            path: path.to_path_buf(),
            tensor: "classifier.weight".into(),
            expected: model.head.classifier.weight.dims().to_vec(),
            found: w.shape.to_vec(),
        });
    }
    model.head.classifier.weight = Param::from_tensor(Tensor::from_data(w, device));
    model.head.classifier.bias = Some(Param::from_tensor(Tensor::from_data(b, device)));
    Ok(model)
}

/// Writes the encoder as a Hugging Face `model.safetensors` (upstream names,
/// PyTorch layouts); adapters must have been merged first.
pub fn save_hf_encoder<B: Backend>(
    path: &Path,
    model: &Classifier<B>,
    config: &EncoderConfig,
) -> RuntimeResult<()> {
    let mut values: HashMap<String, TensorData> = param_values(&model.encoder, &|_| true)
        .into_iter()
        .collect();
    let mut tensors = Vec::new();
    for t in expected_tensors(config) {
        let data = values
            .remove(&t.path)
            .ok_or_else(|| RuntimeError::MissingTensor {
                path: path.to_path_buf(),
                tensor: t.path.clone(),
            })?;
        tensors.push((
            t.upstream,
            if t.transpose { transposed(data) } else { data },
        ));
    }
    let mut meta = HashMap::new();
    meta.insert("format".into(), "pt".into());
    write_safetensors(path, &tensors, Some(meta))
}
