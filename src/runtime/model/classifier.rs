//! An encoder with a classification head, and what each fine-tuning method
//! does to it before training:
//!
//! - **full**: nothing; every parameter trains.
//! - **lora**: the whole encoder is frozen, then each targeted linear layer
//!   gets a fresh adapter; only adapters and the head train.
//! - **qlora**: as LoRA, and every frozen linear base weight of the layers is
//!   packed to 4 (or 8) bits on the device.

use burn::prelude::*;

use crate::config::{Method, Quantize};
use crate::runtime::error::{RuntimeError, RuntimeResult};
use crate::runtime::model::config::Architecture;
use crate::runtime::model::encoder::Encoder;
use crate::runtime::model::head::ClassificationHead;
use crate::runtime::model::layer::EncoderLayer;
use crate::runtime::model::projection::{AdapterConfig, Projection};

/// Encoder plus head: token ids in, label logits out.
#[derive(Module, Debug)]
pub struct Classifier<B: Backend> {
    /// The pretrained encoder.
    pub encoder: Encoder<B>,
    /// Pooling, dropout and the linear classifier.
    pub head: ClassificationHead<B>,
}

impl<B: Backend> Classifier<B> {
    /// input_ids, attention_mask `[batch, seq]` → logits `[batch, labels]`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 2> {
        let hidden = self.encoder.forward(input_ids, attention_mask.clone());
        self.head.forward(hidden, attention_mask)
    }

    /// Applies `method` (and, for QLoRA, `quantize`); adapters are drawn from `seed`.
    pub fn prepare(
        mut self,
        architecture: Architecture,
        method: &Method,
        quantize: &Quantize,
        seed: u64,
    ) -> RuntimeResult<Self> {
        let Some(lora) = method.adapter() else {
            return Ok(self);
        };
        let device = self.head.classifier.weight.device();
        let adapter = AdapterConfig::new(lora.rank as usize, lora.alpha).with_dropout(lora.dropout);
        let mut encoder = self.encoder.no_grad();
        let pack = matches!(method, Method::Qlora(_)).then_some(quantize);
        for (i, layer) in encoder.layers.iter_mut().enumerate() {
            for target in &lora.targets {
                let projection = projection_mut(layer, architecture, target).ok_or_else(|| {
                    RuntimeError::UnknownTarget {
                        target: target.clone(),
                    }
                })?;
                let [d_in, d_out] = projection.dims();
                let seed = seed ^ ((i as u64 + 1) << 32) ^ fnv(target);
                projection.adapter = Some(adapter.init(d_in, d_out, seed, &device));
            }
            if let Some(q) = pack {
                let format = q.format;
                let block = q.block_size as usize;
                for_each_projection(layer, |p| {
                    let taken = std::mem::replace(p, Projection::empty());
                    *p = taken.pack(format, block, q.double_quant);
                });
            }
        }
        self.encoder = encoder;
        Ok(self)
    }

    /// Chooses bf16 products: everywhere in the encoder (`all`), or only in
    /// the layers whose base is packed (`packed`, QLoRA's compute dtype).
    /// Trained weights stay f32; with `all`, a frozen dense base (LoRA) is
    /// kept in bf16 only, as its products read it. Embeddings, LayerNorm,
    /// softmax and the head stay f32.
    pub fn compute_in_half(mut self, all: bool, packed: bool) -> Self {
        for layer in &mut self.encoder.layers {
            layer.attention.half = all;
            for_each_projection(layer, |p| {
                p.half = all || (packed && p.packed.is_some());
                if all {
                    p.keep_base_in_half();
                }
            });
        }
        self
    }

    /// The trained matrices only bf16 products read
    /// ([`Projection::half_weights`]), over every layer.
    pub fn half_weights(&self) -> Vec<burn::module::ParamId> {
        self.encoder
            .layers
            .iter()
            .flat_map(|layer| {
                projections(layer)
                    .into_iter()
                    .flat_map(|p| p.half_weights())
            })
            .collect()
    }

    /// Whether any base weight is kept in bf16 (so merging needs the f32
    /// base from its file: [`Classifier::with_full_base`]).
    pub fn base_in_half(&self) -> bool {
        self.encoder
            .layers
            .iter()
            .any(|layer| projections(layer).iter().any(|p| p.base_in_half()))
    }

    /// Puts back the f32 base weights of `fresh` (the same model, loaded
    /// again from its file) wherever this model keeps a base in bf16.
    pub fn with_full_base(mut self, mut fresh: Encoder<B>) -> Self {
        for (layer, fresh) in self.encoder.layers.iter_mut().zip(&mut fresh.layers) {
            for (p, f) in projections_mut(layer)
                .into_iter()
                .zip(projections_mut(fresh))
            {
                if p.base_in_half() {
                    p.weight = f.weight.take();
                }
            }
        }
        self
    }

    /// Folds every adapter into its base weight (dequantizing packed bases).
    pub fn merged(mut self) -> Self {
        for layer in &mut self.encoder.layers {
            for_each_projection(layer, |p| {
                let taken = std::mem::replace(p, Projection::empty());
                *p = taken.merged();
            });
        }
        self
    }

    /// Bytes of packed base weights on the device.
    pub fn packed_bytes(&self) -> usize {
        self.encoder
            .layers
            .iter()
            .flat_map(projections)
            .filter_map(|p| p.packed.as_ref())
            .map(|p| p.bytes())
            .sum()
    }
}

impl<B: Backend> Projection<B> {
    /// A placeholder while a projection is rebuilt in place.
    fn empty() -> Self {
        Projection {
            weight: None,
            packed: None,
            bias: None,
            adapter: None,
            half: false,
        }
    }
}

/// A layer's six linear layers.
pub fn projections<B: Backend>(layer: &EncoderLayer<B>) -> [&Projection<B>; 6] {
    let (a, ff) = (&layer.attention, &layer.feed_forward);
    [
        &a.query,
        &a.key,
        &a.value,
        &a.output,
        &ff.intermediate,
        &ff.output,
    ]
}

/// [`projections`], mutable.
pub fn projections_mut<B: Backend>(layer: &mut EncoderLayer<B>) -> [&mut Projection<B>; 6] {
    let (a, ff) = (&mut layer.attention, &mut layer.feed_forward);
    [
        &mut a.query,
        &mut a.key,
        &mut a.value,
        &mut a.output,
        &mut ff.intermediate,
        &mut ff.output,
    ]
}

/// Calls `f` on each of a layer's six linear layers.
pub fn for_each_projection<B: Backend>(
    layer: &mut EncoderLayer<B>,
    f: impl FnMut(&mut Projection<B>),
) {
    projections_mut(layer).into_iter().for_each(f);
}

/// The projection a Hugging Face module name (`query`, `q`,
/// `attention.output.dense`, `intermediate.dense`, …) denotes in a layer.
pub fn projection_mut<'a, B: Backend>(
    layer: &'a mut EncoderLayer<B>,
    architecture: Architecture,
    target: &str,
) -> Option<&'a mut Projection<B>> {
    let a = &mut layer.attention;
    let f = &mut layer.feed_forward;
    Some(match (architecture, target) {
        (Architecture::Bert, "query") | (Architecture::MpNet, "q") => &mut a.query,
        (Architecture::Bert, "key") | (Architecture::MpNet, "k") => &mut a.key,
        (Architecture::Bert, "value") | (Architecture::MpNet, "v") => &mut a.value,
        (Architecture::Bert, "attention.output.dense") | (Architecture::MpNet, "o") => {
            &mut a.output
        }
        (_, "intermediate.dense") => &mut f.intermediate,
        (_, "output.dense") => &mut f.output,
        _ => return None,
    })
}

/// Read-only [`projection_mut`].
pub fn projection<'a, B: Backend>(
    layer: &'a EncoderLayer<B>,
    architecture: Architecture,
    target: &str,
) -> Option<&'a Projection<B>> {
    let a = &layer.attention;
    let f = &layer.feed_forward;
    Some(match (architecture, target) {
        (Architecture::Bert, "query") | (Architecture::MpNet, "q") => &a.query,
        (Architecture::Bert, "key") | (Architecture::MpNet, "k") => &a.key,
        (Architecture::Bert, "value") | (Architecture::MpNet, "v") => &a.value,
        (Architecture::Bert, "attention.output.dense") | (Architecture::MpNet, "o") => &a.output,
        (_, "intermediate.dense") => &f.intermediate,
        (_, "output.dense") => &f.output,
        _ => return None,
    })
}

/// FNV-1a, to give each target its own adapter seed.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
