//! Errors of the runtime, as data.
//!
//! Every failure a user can cause (a missing or corrupt file, a config that does
//! not describe the weights, an unsafe weights format) is a [`RuntimeError`]
//! value naming the file or tensor involved, with a hint saying what to do.
//! Nothing here prints; the command line renders these.

use std::fmt;
use std::path::{Path, PathBuf};

/// Result of a runtime operation.
pub type RuntimeResult<T> = Result<T, RuntimeError>;

/// A failure of the runtime, naming the file or tensor at fault.
#[derive(Debug, Clone, PartialEq)]
pub enum RuntimeError {
    /// A file could not be read or written: `model.safetensors: No such file or directory`.
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done, e.g. "read".
        action: &'static str,
        /// The operating system's message.
        message: String,
    },
    /// `config.json` is not valid JSON or lacks a field: `missing field hidden_size`.
    ConfigParse {
        /// The config file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A config field has a value ftl cannot use: `hidden_size 100 not divisible by 12 heads`.
    ConfigInvalid {
        /// The config file.
        path: PathBuf,
        /// The field at fault.
        field: &'static str,
        /// Why the value is refused.
        reason: String,
    },
    /// The model type is not one ftl implements: `model_type "gpt2"`.
    UnsupportedModel {
        /// The config file.
        path: PathBuf,
        /// The `model_type` found.
        model_type: String,
    },
    /// Weights stored as a Python pickle (`pytorch_model.bin`, `.pt`, `.pth`, `.ckpt`).
    UnsafeWeightsFormat {
        /// The refused file.
        path: PathBuf,
    },
    /// The safetensors file is truncated or its header is malformed.
    CorruptWeights {
        /// The weights file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A tensor the config requires is absent: `encoder.layer.5.output.dense.weight`.
    MissingTensor {
        /// The weights file.
        path: PathBuf,
        /// The upstream tensor name.
        tensor: String,
    },
    /// A tensor's shape disagrees with the config: `[384, 384]` where `[768, 768]` was expected.
    TensorShape {
        /// The weights file.
        path: PathBuf,
        /// The upstream tensor name.
        tensor: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape stored in the file.
        found: Vec<usize>,
    },
    /// A tensor is stored in a dtype ftl does not load: `F16` where `F32` was expected.
    TensorDtype {
        /// The weights file.
        path: PathBuf,
        /// The upstream tensor name.
        tensor: String,
        /// The dtype stored in the file.
        found: String,
    },
    /// Inputs handed to a model do not fit it: `attention mask [2, 7] for ids [2, 8]`.
    InputShape {
        /// What was wrong.
        message: String,
    },
    /// `tokenizer.json` could not be loaded or used.
    Tokenizer {
        /// The tokenizer file (or the model folder).
        path: PathBuf,
        /// The tokenizer library's message.
        message: String,
    },
    /// A downloaded or cached file does not have the expected SHA-256.
    Checksum {
        /// The file checked.
        path: PathBuf,
        /// The digest expected, hex.
        expected: String,
        /// The digest found, hex.
        found: String,
    },
    /// The plan asks for a CUDA device this machine does not have.
    NoCudaDevice {
        /// The GPU ordinal asked for.
        ordinal: u32,
        /// Why it cannot be used.
        reason: String,
    },
    /// A model could not be found anywhere ftl looks; each place and its outcome is listed.
    ModelNotFound {
        /// The model asked for.
        model: String,
        /// Each place looked, with what happened there.
        attempts: Vec<String>,
    },
    /// A LoRA target names no linear layer of the model: `dense`.
    UnknownTarget {
        /// The target asked for.
        target: String,
    },
    /// The data could not be read: a missing file, a bad row, a checksum.
    Data {
        /// The data layer's message (it names file and line).
        message: String,
    },
    /// The run directory cannot be used (finished, taken, interrupted).
    RunDir {
        /// What is wrong, with its hint.
        message: String,
    },
    /// Ctrl-C stopped training; a checkpoint was saved.
    Interrupted {
        /// The run's working directory, to resume.
        dir: PathBuf,
    },
    /// A checkpoint or saved run cannot be used.
    BadRun {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The loss became NaN or infinite.
    NonFinite {
        /// The optimizer step.
        step: u64,
    },
    /// A library call on the GPU failed during training: `cuBLAS product
    /// [2048×768]·[768×2304] failed: CUBLAS_STATUS_EXECUTION_FAILED`.
    DeviceFailure {
        /// The optimizer step whose results showed it.
        step: u64,
        /// The library's message.
        message: String,
    },
}

impl RuntimeError {
    /// Builds an [`RuntimeError::Io`] from an I/O error.
    pub fn io(path: &Path, action: &'static str, error: &std::io::Error) -> Self {
        RuntimeError::Io {
            path: path.to_path_buf(),
            action,
            message: error.to_string(),
        }
    }

    /// A short, stable code for the error kind, for tests and documentation.
    pub fn code(&self) -> &'static str {
        match self {
            RuntimeError::Io { .. } => "R001",
            RuntimeError::ConfigParse { .. } => "R002",
            RuntimeError::ConfigInvalid { .. } => "R003",
            RuntimeError::UnsupportedModel { .. } => "R004",
            RuntimeError::UnsafeWeightsFormat { .. } => "R005",
            RuntimeError::CorruptWeights { .. } => "R006",
            RuntimeError::MissingTensor { .. } => "R007",
            RuntimeError::TensorShape { .. } => "R008",
            RuntimeError::TensorDtype { .. } => "R009",
            RuntimeError::InputShape { .. } => "R010",
            RuntimeError::Tokenizer { .. } => "R011",
            RuntimeError::Checksum { .. } => "R012",
            RuntimeError::ModelNotFound { .. } => "R013",
            RuntimeError::NoCudaDevice { .. } => "R014",
            RuntimeError::UnknownTarget { .. } => "R015",
            RuntimeError::Data { .. } => "R016",
            RuntimeError::RunDir { .. } => "R017",
            RuntimeError::Interrupted { .. } => "R018",
            RuntimeError::BadRun { .. } => "R019",
            RuntimeError::NonFinite { .. } => "R020",
            RuntimeError::DeviceFailure { .. } => "R021",
        }
    }

    /// The error as the command line prints it: `error[CODE]: message`, then
    /// the hint, unless the message (from the data or run-folder layer)
    /// already ends with its own, more specific one.
    pub fn report(&self) -> String {
        let message = self.to_string();
        if message.contains("\nhint: ") {
            format!("error[{}]: {message}", self.code())
        } else {
            format!("error[{}]: {message}\nhint: {}", self.code(), self.hint())
        }
    }

    /// What the user can do about it.
    pub fn hint(&self) -> String {
        match self {
            RuntimeError::Io { .. } => {
                "check that the path exists and is readable by this user".into()
            }
            RuntimeError::ConfigParse { .. } => {
                "config.json should be the Hugging Face config saved with the model".into()
            }
            RuntimeError::ConfigInvalid { .. } => {
                "the config does not describe a model ftl can build; was it edited by hand?".into()
            }
            RuntimeError::UnsupportedModel { .. } => {
                "ftl runs model_type \"bert\" and \"mpnet\" encoders".into()
            }
            RuntimeError::UnsafeWeightsFormat { .. } => {
                "loading a pickle runs arbitrary code, and \
                 pipelines are shared; convert it once, where you trust it, with \
                 `safetensors.torch.save_file(torch.load(path), \"model.safetensors\")`"
                    .into()
            }
            RuntimeError::CorruptWeights { .. } => {
                "the file is damaged or was cut short; fetch the model again".into()
            }
            RuntimeError::MissingTensor { .. } => "the weights do not belong to this config, or \
                 carry a prefix (`bert.`, `mpnet.`) from a task model; save the base model"
                .into(),
            RuntimeError::TensorShape { .. } => {
                "config.json and model.safetensors come from different models".into()
            }
            RuntimeError::TensorDtype { .. } => {
                "ftl loads F32, F16 and BF16 weights; re-save them in one of those".into()
            }
            RuntimeError::InputShape { .. } => {
                "ids and attention mask must both be [batch, seq], seq within the model's positions"
                    .into()
            }
            RuntimeError::Tokenizer { .. } => {
                "tokenizer.json should be the fast-tokenizer file saved with the model".into()
            }
            RuntimeError::Checksum { .. } => {
                "the file differs from the one pinned; delete it and fetch again".into()
            }
            RuntimeError::NoCudaDevice { .. } => {
                "set `device.backend = auto` to fall back to the CPU, or `cpu`; list the GPUs this machine has with `nvidia-smi`".into()
            }
            RuntimeError::ModelNotFound { .. } => "give a local folder holding config.json, \
                 tokenizer.json and model.safetensors, or set FTL_HOME to a cache holding it"
                .into(),
            RuntimeError::UnknownTarget { .. } => {
                "LoRA targets are the model's linear layers, as its `modules` list names them".into()
            }
            RuntimeError::Data { .. } | RuntimeError::RunDir { .. } => {
                "see the message above".into()
            }
            RuntimeError::Interrupted { dir } => format!(
                "continue where it stopped with `ftl run --resume {}`",
                dir.display()
            ),
            RuntimeError::BadRun { .. } => {
                "give the folder of a finished run (runs/PIPELINE/RUN) written by `ftl run`".into()
            }
            RuntimeError::NonFinite { .. } => {
                "lower `train.lr`, set `train.clip_grad_norm`, or use fp32 precision".into()
            }
            RuntimeError::DeviceFailure { .. } => {
                "run again with FTL_CUBLAS=off to use ftl's own matrix kernels instead of cuBLAS"
                    .into()
            }
        }
    }
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuntimeError::Io {
                path,
                action,
                message,
            } => {
                write!(f, "cannot {action} {}: {message}", path.display())
            }
            RuntimeError::ConfigParse { path, message } => {
                write!(f, "cannot parse {}: {message}", path.display())
            }
            RuntimeError::ConfigInvalid {
                path,
                field,
                reason,
            } => {
                write!(f, "{}: field `{field}`: {reason}", path.display())
            }
            RuntimeError::UnsupportedModel { path, model_type } => {
                write!(
                    f,
                    "{}: model_type \"{model_type}\" is not supported",
                    path.display()
                )
            }
            RuntimeError::UnsafeWeightsFormat { path } => write!(
                f,
                "{}: refusing to load pickled PyTorch weights; ftl loads only .safetensors",
                path.display()
            ),
            RuntimeError::CorruptWeights { path, message } => {
                write!(
                    f,
                    "{}: not a valid safetensors file: {message}",
                    path.display()
                )
            }
            RuntimeError::MissingTensor { path, tensor } => {
                write!(f, "{}: tensor `{tensor}` is missing", path.display())
            }
            RuntimeError::TensorShape {
                path,
                tensor,
                expected,
                found,
            } => write!(
                f,
                "{}: tensor `{tensor}` has shape {found:?}, the config implies {expected:?}",
                path.display()
            ),
            RuntimeError::TensorDtype {
                path,
                tensor,
                found,
            } => write!(
                f,
                "{}: tensor `{tensor}` is stored as {found}, expected F32",
                path.display()
            ),
            RuntimeError::InputShape { message } => write!(f, "model input: {message}"),
            RuntimeError::Tokenizer { path, message } => {
                write!(f, "{}: {message}", path.display())
            }
            RuntimeError::Checksum {
                path,
                expected,
                found,
            } => write!(
                f,
                "{}: sha256 is {found}, expected {expected}",
                path.display()
            ),
            RuntimeError::NoCudaDevice { ordinal, reason } => {
                write!(f, "the plan asks for CUDA device {ordinal}, but {reason}")
            }
            RuntimeError::ModelNotFound { model, attempts } => {
                write!(f, "model `{model}` not found; looked in:")?;
                for attempt in attempts {
                    write!(f, "\n  - {attempt}")?;
                }
                Ok(())
            }
            RuntimeError::UnknownTarget { target } => {
                write!(
                    f,
                    "LoRA target `{target}` is not a linear layer of this model"
                )
            }
            RuntimeError::Data { message } | RuntimeError::RunDir { message } => {
                write!(f, "{message}")
            }
            RuntimeError::Interrupted { dir } => {
                write!(f, "interrupted; checkpoint saved in {}", dir.display())
            }
            RuntimeError::BadRun { path, message } => {
                write!(f, "{}: {message}", path.display())
            }
            RuntimeError::NonFinite { step } => {
                write!(f, "the loss is not finite at step {step}; training stopped")
            }
            RuntimeError::DeviceFailure { step, message } => {
                write!(f, "{message} by step {step}; training stopped")
            }
        }
    }
}

impl std::error::Error for RuntimeError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_gpu_product_names_itself_the_step_and_the_way_around_it() {
        let e = RuntimeError::DeviceFailure {
            step: 40,
            message: "cuBLAS product [2048×768]·[768×2304] failed: CUBLAS_STATUS_EXECUTION_FAILED"
                .into(),
        };
        assert_eq!(
            e.report(),
            "error[R021]: cuBLAS product [2048×768]·[768×2304] failed: \
             CUBLAS_STATUS_EXECUTION_FAILED by step 40; training stopped\n\
             hint: run again with FTL_CUBLAS=off to use ftl's own matrix kernels instead of cuBLAS"
        );
    }
}
