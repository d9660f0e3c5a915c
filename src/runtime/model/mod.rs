//! Encoder models: BERT and MPNet, one file per layer, plus pooling and a
//! classification head.
//!
//! | file | what |
//! | --- | --- |
//! | `config.rs` | [`EncoderConfig`] read from `config.json` |
//! | `dequant_cuda.rs` | a packed (QLoRA) base weight dequantized by one ftl kernel on CUDA |
//! | `dropout.rs`, `dropout_cuda.rs` | dropout with a one-byte mask; on CUDA, ftl's own draws that kernels compute where they read |
//! | `embeddings.rs` | word + position (+ token type) embeddings |
//! | `attention.rs` | multi-head self-attention block |
//! | `attention_core.rs` | `dropout(softmax(QKᵀ/√d + bias)) · V`, with a backward pass of its own when training |
//! | `feed_forward.rs` | GELU feed-forward block |
//! | `layer.rs` | one encoder layer |
//! | `layer_norm.rs` | LayerNorm, with a backward pass of its own when training |
//! | `encoder.rs` | the stack, and MPNet's relative-position bias |
//! | `head.rs` | pooling and [`ClassificationHead`] |
//! | `lookup.rs`, `lookup_cuda.rs` | embedding lookups whose backward pass, on CUDA, is ftl's own kernels |
//! | `loader.rs` | safetensors → [`Encoder`], with the upstream key table |
//! | `projection.rs` | [`Projection`]: a linear layer, dense or packed in 4/8 bits, with an optional LoRA adapter |
//! | `qkv.rs`, `qkv_cuda.rs` | the query, key and value projections as one product: the weights packed side by side, the product split into heads (on CUDA, ftl's own kernels) |
//! | `softmax_cuda.rs` | attention's softmax, with its scale, bias and dropout, as ftl's own CUDA kernels |
//! | `classifier.rs` | [`Classifier`]: encoder + head, and how a method prepares it for training |

#[cfg(feature = "cuda")]
mod adapter_cuda;
#[cfg(feature = "cuda")]
mod attend_cuda;
pub mod attention;
pub mod attention_core;
pub mod classifier;
pub mod config;
#[cfg(feature = "cuda")]
mod dequant_cuda;
pub mod dropout;
#[cfg(feature = "cuda")]
mod dropout_cuda;
pub mod embeddings;
pub mod encoder;
pub mod feed_forward;
pub mod head;
pub mod layer;
pub mod layer_norm;
#[cfg(feature = "cuda")]
mod layer_norm_cuda;
pub mod loader;
pub mod lookup;
#[cfg(feature = "cuda")]
mod lookup_cuda;
#[cfg(feature = "cuda")]
mod product;
pub mod projection;
mod qkv;
#[cfg(feature = "cuda")]
mod qkv_cuda;
#[cfg(feature = "cuda")]
mod softmax_cuda;

pub use classifier::Classifier;
pub use config::{Architecture, EncoderConfig};
pub use encoder::Encoder;
pub use head::{ClassificationHead, ClassificationHeadConfig, Pooling, cls_pool, mean_pool};
pub use loader::{LoadReport, load_encoder, load_model_dir};
pub use projection::{Adapter, AdapterConfig, Packed, Projection};
