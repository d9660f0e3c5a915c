//! The encoder's linear layers: a base weight, dense or packed in 4/8 bits,
//! plus an optional LoRA adapter.
//!
//! `y = x·W + b + (α/r)·dropout(x)·A·B`
//!
//! - **dense** base: `W` is an f32 `[d_in, d_out]` parameter (burn's layout,
//!   the transpose of PyTorch's).
//! - **packed** base (QLoRA): `W` lives on the device as 4-bit (NF4, int4) or
//!   8-bit codes, eight or four to an `i32` word, with one scale per block;
//!   it is dequantized on the fly in `forward` and never receives gradients.
//!   When training on the CPU, the product is an autodiff operation of its
//!   own whose backward pass dequantizes the weight again, as bitsandbytes
//!   does, instead of keeping the dequantized weight from the forward pass.
//!   On CUDA it is not used: QLoRA runs with it trained with gradient norms
//!   hundreds of times LoRA's and did not learn (bf16, H200), although one
//!   forward and backward pass through it matched the CPU there
//!   (`bench/qlora_check.rs`). Until that is understood, CUDA differentiates
//!   through the dequantization with burn's autodiff, which keeps the
//!   dequantized weight. The codes come from [`crate::quant`], the host
//!   reference. On CUDA one kernel of ftl's dequantizes
//!   (`model::dequant_cuda`); elsewhere tensor operations do.
//! - **adapter**: `A` (`[d_in, r]`) and `B` (`[r, d_out]`). The product `A·B`
//!   is never formed: the update is two thin matmuls, so neither a dense
//!   `d_in × d_out` delta nor its weight-sized gradient exists. `A` starts
//!   uniform in ±1/√d_in (PEFT's `kaiming_uniform_(a = √5)`) and `B` at zero, so
//!   a fresh adapter leaves the output unchanged, as in the LoRA paper and
//!   PEFT (`LoraLayer.reset_lora_parameters`). burn's `A` is the transpose of
//!   PEFT's `lora_A.weight` (`[r, d_in]`), `B` of `lora_B.weight`.
//!
//! **bf16 compute** (`half`): the products run on bf16 copies of the input and
//! of the (f32 or dequantized) weight, accumulate in f32 inside the kernel,
//! and come back as f32 before the bias is added. Trained weights, their
//! gradients and the optimizer stay f32 (the master copy): the bf16 copies
//! exist only for the step, as under PyTorch's autocast. The backward pass of
//! a cast casts the gradient back, so an f32 parameter gets an f32 gradient.
//! A frozen dense base (LoRA) is kept in bf16 only
//! ([`Projection::keep_base_in_half`]): the products read exactly the values
//! a per-step cast would give, the f32 copy is never updated, and the product
//! keeps the stored weight for its backward pass instead of a fresh copy.
//! Merging such a layer for export reads the f32 base from its file again
//! ([`crate::runtime::model::classifier::Classifier::with_full_base`]).
//!
//! **A trained weight multiplies all tokens at once** ([`rows`]): `x`
//! `[batch, seq, d_in]` is multiplied as one `[batch·seq, d_in]` matrix.
//! Multiplied as a batch of `seq × d_in` matrices against the broadcast
//! weight, burn's autodiff computes the weight's gradient as `batch`
//! separate products with an inner dimension of only `seq`, writes all of
//! them (`[batch, d_in, d_out]`: 151 MB for one of MPNet's feed-forward
//! weights at batch 32) and sums them over the batch. As one product, the
//! gradient is a single `d_in × (batch·seq) × d_out` product and nothing is
//! summed afterwards. Its bias is added to the rows too, before they are
//! shaped back (`Projection::trained_rows`): added to the 3-d output,
//! its gradient would be two reductions, one per broadcast dimension.
//! Moving the bias took MiniLM full fine-tuning's step from 1,110 kernel
//! launches to 1,000 (BENCHMARKS.md).
//!
//! **A frozen dense base** (LoRA's, kept in bf16) multiplies the rows
//! through cuBLAS when training on CUDA where it applies
//! (`Projection::frozen_rows`, `model::product`): the result in f32, and
//! in the backward pass x's gradient only, with x not kept. cubecl's
//! kernels reached 60–90 TFLOP/s at these shapes; MPNet LoRA trained
//! 10–13% faster through cuBLAS, taking turns with cubecl's products on
//! one H200 (BENCHMARKS.md). Elsewhere a frozen base (QLoRA's packed one
//! too) keeps burn's batched product: on the rows, burn's products took
//! fewer output casts and biases into their own kernel, and LoRA's step
//! launched more kernels (776 → 819).

use std::any::TypeId;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::module::{AutodiffModule, Param, ParamId};
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, FloatDType, TensorPrimitive};

use crate::config::QuantFormat;
use crate::quant::{self, NF4, Scales};
use crate::runtime::backend::{Cpu, same_type};
use crate::runtime::model::dropout::Dropout;

/// A linear layer of the encoder.
#[derive(Module, Debug)]
pub struct Projection<B: Backend> {
    /// Dense base weight `[d_in, d_out]`; absent when the base is packed.
    pub weight: Option<Param<Tensor<B, 2>>>,
    /// Quantized base weight; absent when the base is dense.
    pub packed: Option<Packed<B>>,
    /// Bias `[d_out]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// LoRA adapter, when the layer is adapted.
    pub adapter: Option<Adapter<B>>,
    /// Products in bf16 (see the module documentation).
    pub half: bool,
}

/// `x` as bf16, for a product.
pub fn to_half<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.cast(FloatDType::BF16)
}

/// A bf16 result back in f32.
pub fn to_full<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.cast(FloatDType::F32)
}

/// `x · w` for `x` `[batch, seq, d_in]` and `w` `[d_in, d_out]`, as one
/// `[batch·seq, d_in]` product (see the module documentation).
pub fn rows<B: Backend>(x: Tensor<B, 3>, w: Tensor<B, 2>) -> Tensor<B, 3> {
    let [batch, seq, d_in] = x.dims();
    let d_out = w.dims()[1];
    x.reshape([batch * seq, d_in])
        .matmul(w)
        .reshape([batch, seq, d_out])
}

/// `x · w` in f32 for bf16 rows `x` and weight `w`: on CUDA through
/// cuBLAS where it applies (`model::product`), else burn's bf16 product
/// widened.
fn half_rows<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    cublas_rows(x.clone(), w.clone()).unwrap_or_else(|| to_full(x.matmul(w)))
}

/// `x · w` in f32 for bf16 rows `x` and weight `w` through cuBLAS
/// (`model::product`), when training on CUDA where it applies; else `None`.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
fn cublas_rows<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    #[cfg(feature = "cuda")]
    if std::any::TypeId::of::<B>()
        == std::any::TypeId::of::<burn::backend::Autodiff<crate::runtime::backend::Gpu>>()
    {
        use crate::runtime::backend::{Gpu, same_type};
        return super::product::half_rows::<Gpu>(same_type(x), same_type(w)).map(same_type);
    }
    None
}

/// `x` in bf16, cast only when it is not already.
fn as_half<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if x.dtype() == DType::BF16 {
        x
    } else {
        to_half(x)
    }
}

/// `x` in f32, cast only when it is not already.
fn as_full<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if x.dtype() == DType::F32 {
        x
    } else {
        to_full(x)
    }
}

/// Settings of a LoRA adapter.
#[derive(Config, Debug)]
pub struct AdapterConfig {
    /// Rank r.
    pub rank: usize,
    /// Scale numerator α: updates are scaled by α / r.
    pub alpha: f64,
    /// Dropout on the adapter's input during training.
    #[config(default = 0.0)]
    pub dropout: f64,
}

/// A low-rank update `(α/r)·dropout(x)·A·B`.
#[derive(Module, Debug)]
pub struct Adapter<B: Backend> {
    /// Down projection `[d_in, r]`.
    pub a: Param<Tensor<B, 2>>,
    /// Up projection `[r, d_out]`.
    pub b: Param<Tensor<B, 2>>,
    dropout: Dropout,
    scale: f64,
}

/// A weight stored in 4 or 8 bits per value, with block scales.
#[derive(Module, Debug)]
pub struct Packed<B: Backend> {
    /// Codes, `32 / bits` per word, lowest bits first.
    pub words: Param<Tensor<B, 1, Int>>,
    /// Block scales `[blocks]` (after undoing double quantization, see `scale_words`).
    pub scales: Option<Param<Tensor<B, 1>>>,
    /// Double quantization: int8 scale codes, four per word.
    pub scale_words: Option<Param<Tensor<B, 1, Int>>>,
    /// Double quantization: one f32 per group of 256 block scales.
    pub group_scales: Option<Param<Tensor<B, 1>>>,
    /// The value of each code (16 or 256 entries).
    pub codebook: Param<Tensor<B, 1>>,
    /// Where each code sits in its word: `[0, bits, 2·bits, …]`. Kept on
    /// the device with the codes: made afresh, it would be a host-to-device
    /// copy in every dequantization, several per layer and step.
    pub code_shifts: Param<Tensor<B, 1, Int>>,
    /// The same for double quantization's 8-bit scale codes.
    pub scale_shifts: Option<Param<Tensor<B, 1, Int>>>,
    offset: f64,
    bits: usize,
    block_size: usize,
    d_in: usize,
    d_out: usize,
}

impl AdapterConfig {
    /// A fresh adapter for a `d_in → d_out` layer; `A` is drawn from `seed`
    /// (the same on every backend), `B` is zero.
    pub fn init<B: Backend>(
        &self,
        d_in: usize,
        d_out: usize,
        seed: u64,
        device: &B::Device,
    ) -> Adapter<B> {
        let bound = 1.0 / (d_in as f64).sqrt();
        let mut rng = crate::data::rng::Rng::new(seed);
        let a: Vec<f32> = (0..d_in * self.rank)
            .map(|_| {
                let unit = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                ((unit * 2.0 - 1.0) * bound) as f32
            })
            .collect();
        Adapter {
            a: Param::from_tensor(Tensor::from_data(
                TensorData::new(a, [d_in, self.rank]),
                device,
            )),
            b: Param::from_tensor(Tensor::zeros([self.rank, d_out], device)),
            dropout: Dropout::new(self.dropout),
            scale: self.alpha / self.rank as f64,
        }
    }
}

impl<B: Backend> Adapter<B> {
    /// input `[batch, seq, d_in]` → the update `[batch, seq, d_out]`.
    pub fn forward(&self, input: Tensor<B, 3>) -> Tensor<B, 3> {
        self.dropout
            .forward(input)
            .matmul(self.a.val().unsqueeze())
            .matmul(self.b.val().unsqueeze())
            .mul_scalar(self.scale)
    }

    /// [`Adapter::forward`] with bf16 products. `half_input` is `input` as
    /// bf16, reused when there is no dropout to apply first.
    fn forward_half(&self, input: Tensor<B, 3>, half_input: Tensor<B, 3>) -> Tensor<B, 3> {
        to_full(self.product_half(input, Some(half_input))).mul_scalar(self.scale)
    }

    /// The update before its scale, `dropout(input) · A · B`, in bf16 products
    /// and bf16 (`[batch, seq, d_out]`). `half_input` is `input` as bf16,
    /// when the caller has it: read when there is no dropout to apply
    /// first (made here when absent).
    ///
    /// Training on CUDA, the update is one operation of ftl's own kernels
    /// (`model::adapter_cuda`: one launch forward, two backward); elsewhere,
    /// and where that does not apply, [`Adapter::product_half_by_tensor_ops`].
    pub fn product_half(
        &self,
        input: Tensor<B, 3>,
        half_input: Option<Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        #[cfg(feature = "cuda")]
        if B::ad_enabled(&input.device()) {
            let dropout = self.dropout.prob > 0.0;
            let x = match &half_input {
                Some(half) if !dropout => half,
                _ => &input,
            };
            if let Some(update) =
                super::adapter_cuda::update_half(x, &self.a.val(), &self.b.val(), || {
                    self.dropout.seeded()
                })
            {
                return update;
            }
        }
        let (a, b) = (as_half(self.a.val()), as_half(self.b.val()));
        self.update_by_tensor_ops(input, half_input, a, b)
    }

    /// [`Adapter::product_half`] composed of tensor operations (ftl's
    /// dropout kernel on CUDA, burn's bf16 products), as it runs where the
    /// fused operation does not apply. Public for `bench/adapter_check.rs`,
    /// which compares the two.
    ///
    /// The products run on the rows (`[batch·seq, d_in]`): A's and B's
    /// gradients are then one product each, where a batched product over
    /// `[batch, seq, d_in]` gave one per sequence and a reduction over the
    /// batch (two more launches per adapter and step, and the per-sequence
    /// gradients rounded to bf16 before they were summed).
    pub fn product_half_by_tensor_ops(
        &self,
        input: Tensor<B, 3>,
        half_input: Option<Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        let (a, b) = (as_half(self.a.val()), as_half(self.b.val()));
        self.update_by_tensor_ops(input, half_input, a, b)
    }

    fn update_by_tensor_ops(
        &self,
        input: Tensor<B, 3>,
        half_input: Option<Tensor<B, 3>>,
        a: Tensor<B, 2>,
        b: Tensor<B, 2>,
    ) -> Tensor<B, 3> {
        let x = if self.dropout.prob > 0.0 && B::ad_enabled(&input.device()) {
            self.dropout.forward_to_half(input)
        } else {
            half_input.unwrap_or_else(|| to_half(input))
        };
        let [batch, seq, d_in] = x.dims();
        let update = x.reshape([batch * seq, d_in]).matmul(a).matmul(b);
        let d_out = update.dims()[1];
        update.reshape([batch, seq, d_out])
    }

    /// α / r.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The rank r.
    pub fn rank(&self) -> usize {
        self.a.dims()[1]
    }

    /// The dense update `(α/r)·A·B` `[d_in, d_out]`, for merging only.
    pub fn delta(&self) -> Tensor<B, 2> {
        self.a.val().matmul(self.b.val()).mul_scalar(self.scale)
    }
}

impl<B: Backend> Projection<B> {
    /// A dense layer from its weight `[d_in, d_out]` and bias.
    pub fn dense(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Projection {
            weight: Some(Param::from_tensor(weight)),
            packed: None,
            bias: bias.map(Param::from_tensor),
            adapter: None,
            half: false,
        }
    }

    /// A dense layer with weights drawn as burn's `Linear` does.
    pub fn random(d_in: usize, d_out: usize, device: &B::Device) -> Self {
        let linear = burn::nn::LinearConfig::new(d_in, d_out).init::<B>(device);
        Projection::dense(linear.weight.val(), linear.bias.map(|b| b.val()))
    }

    /// `[d_in, d_out]`.
    pub fn dims(&self) -> [usize; 2] {
        match (&self.weight, &self.packed) {
            (Some(w), _) => w.dims(),
            (None, Some(p)) => [p.d_in, p.d_out],
            (None, None) => [0, 0],
        }
    }

    /// input `[batch, seq, d_in]` → `[batch, seq, d_out]`.
    pub fn forward(&self, input: Tensor<B, 3>) -> Tensor<B, 3> {
        if self.half {
            let half = as_half(input.clone());
            return self.forward_with_half(input, half);
        }
        if let Some(out) = self.trained_rows(input.clone(), false) {
            return out;
        }
        let mut out = self.base_product(input.clone(), false);
        if let Some(bias) = &self.bias {
            out = out + bias.val().unsqueeze();
        }
        if let Some(adapter) = &self.adapter {
            out = out + adapter.forward(input);
        }
        out
    }

    /// [`Projection::forward`] given `copy`, the f32 input in bf16 where
    /// the block before wrote it (`LayerNorm::forward_residual_copied`; a
    /// constant). Training on CUDA under bf16 products, a dense layer
    /// without an adapter is one operation (`model::product::full_rows`)
    /// that reads the copy (or casts the input itself) and writes the
    /// input's gradient in f32, where autodiff's cast costs a launch each
    /// way. Otherwise [`Projection::forward`]. The output is the same
    /// either way; the input's gradient is not rounded to bf16 here.
    pub fn forward_copied(&self, input: Tensor<B, 3>, copy: Option<Tensor<B, 3>>) -> Tensor<B, 3> {
        match self.full_rows(input.clone(), copy) {
            Some(out) => out,
            None => self.forward(input),
        }
    }

    /// Whether [`Projection::forward_copied`] reads a bf16 copy of its
    /// input: a dense layer without an adapter, under bf16 products.
    pub fn reads_copy(&self) -> bool {
        self.half && self.adapter.is_none() && self.packed.is_none() && self.weight.is_some()
    }

    /// [`Projection::forward_copied`]'s one operation, where it applies.
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    fn full_rows(&self, x: Tensor<B, 3>, copy: Option<Tensor<B, 3>>) -> Option<Tensor<B, 3>> {
        #[cfg(feature = "cuda")]
        if self.reads_copy()
            && x.dtype() == DType::F32
            && std::any::TypeId::of::<B>()
                == std::any::TypeId::of::<burn::backend::Autodiff<crate::runtime::backend::Gpu>>()
        {
            use crate::runtime::backend::{Gpu, same_type};
            let w = as_half(self.weight.as_ref()?.val());
            let [batch, seq, d_in] = x.dims();
            let d_out = w.dims()[1];
            let rows = |t: Tensor<B, 3>| t.reshape([batch * seq, d_in]);
            let out = super::product::full_rows::<Gpu>(
                same_type(rows(x)),
                copy.map(|c| same_type(rows(c))),
                same_type(w),
            )?;
            let mut out: Tensor<B, 2> = same_type(out);
            if let Some(bias) = &self.bias {
                out = out + bias.val().unsqueeze();
            }
            return Some(out.reshape([batch, seq, d_out]));
        }
        None
    }

    /// [`Projection::forward`] in bf16 given the input in both precisions
    /// (layers that read the same input cast it once).
    pub fn forward_with_half(&self, input: Tensor<B, 3>, half: Tensor<B, 3>) -> Tensor<B, 3> {
        if let Some(out) = self.trained_rows(half.clone(), true) {
            return out;
        }
        let mut out = match self.frozen_rows(half.clone()) {
            Some(out) => out,
            None => to_full(self.base_product(half.clone(), true)),
        };
        if let Some(bias) = &self.bias {
            out = out + bias.val().unsqueeze();
        }
        if let Some(adapter) = &self.adapter {
            out = out + adapter.forward_half(input, half);
        }
        out
    }

    /// [`Projection::forward`] in bf16 of an input that is bf16 already.
    /// The f32 input [`Projection::forward_with_half`] also takes is made
    /// only where it is read: for an adapter's dropout in training.
    pub fn forward_from_half(&self, half: Tensor<B, 3>) -> Tensor<B, 3> {
        let dropout = self
            .adapter
            .as_ref()
            .is_some_and(|a| a.dropout.prob > 0.0 && B::ad_enabled(&half.device()));
        let input = if dropout {
            to_full(half.clone())
        } else {
            half.clone()
        };
        self.forward_with_half(input, half)
    }

    /// `x · W + b` for a trained dense weight without an adapter, computed
    /// on the `[batch·seq, d_in]` rows and shaped back only at the end: the
    /// bias is added to rows, so its gradient is one sum over them. Added
    /// to the `[batch, seq, d_out]` output, burn's autodiff sums a
    /// broadcast bias over each broadcast dimension in turn, two
    /// reductions. The values are the same either way. `x` is bf16 when
    /// `half`. `None` for any other layer.
    fn trained_rows(&self, x: Tensor<B, 3>, half: bool) -> Option<Tensor<B, 3>> {
        let w = self.trained_weight()?;
        let [batch, seq, d_in] = x.dims();
        let d_out = w.dims()[1];
        let w = if half { as_half(w) } else { as_full(w) };
        let x = x.reshape([batch * seq, d_in]);
        let mut out = if half { half_rows(x, w) } else { x.matmul(w) };
        if let Some(bias) = &self.bias {
            out = out + bias.val().unsqueeze();
        }
        Some(out.reshape([batch, seq, d_out]))
    }

    /// `x · W` in f32 for bf16 `x` and a frozen dense base (LoRA's, kept in
    /// bf16) through cuBLAS on the `[batch·seq, d_in]` rows, when training
    /// on CUDA where it applies (`model::product`: the backward pass gives
    /// x's gradient only); `None` otherwise, and the batched product runs.
    fn frozen_rows(&self, x: Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        let w = self.weight.as_ref()?.val();
        if self.packed.is_some() || w.is_require_grad() {
            return None;
        }
        let [batch, seq, d_in] = x.dims();
        let d_out = w.dims()[1];
        let out = cublas_rows(x.reshape([batch * seq, d_in]), as_half(w))?;
        Some(out.reshape([batch, seq, d_out]))
    }

    /// `x · W` in f32 for bf16 `x` and a frozen dense base (LoRA's, kept
    /// in bf16) through cuBLAS, as [`Projection::frozen_rows`], without the
    /// layer's bias, and that bias: for the block's LayerNorm to add where
    /// it reads the product (`LayerNorm::forward_residual_biased`), which
    /// also gives the product's gradient in bf16, as its backward pass
    /// reads it. `None` for a layer with an adapter, a bias that trains, or
    /// none, products in f32, or where cuBLAS does not take the product.
    pub fn frozen_product(&self, x: Tensor<B, 3>) -> Option<(Tensor<B, 3>, Tensor<B, 1>)> {
        if !self.half || self.adapter.is_some() {
            return None;
        }
        let bias = self.bias.as_ref()?.val();
        if bias.is_require_grad() {
            return None;
        }
        Some((self.frozen_rows(x)?, bias))
    }

    /// The weight of a trained dense layer without an adapter; `None` for
    /// any other layer.
    fn trained_weight(&self) -> Option<Tensor<B, 2>> {
        let w = self.weight.as_ref()?.val();
        let trained = self.packed.is_none() && self.adapter.is_none() && w.is_require_grad();
        trained.then_some(w)
    }

    /// The weight and bias of a trained dense layer without an adapter
    /// (what `Projection::trained_rows` multiplies); `None` for any other
    /// layer, or one without a bias.
    pub fn trained_parts(&self) -> Option<(Tensor<B, 2>, Tensor<B, 1>)> {
        Some((self.trained_weight()?, self.bias.as_ref()?.val()))
    }

    /// `x · W` with the base weight, in bf16 when `half` (`x` is then bf16).
    fn base_product(&self, x: Tensor<B, 3>, half: bool) -> Tensor<B, 3> {
        if let Some(packed) = &self.packed {
            return packed.product(x, half);
        }
        let w = self.weight.as_ref().expect("a dense base").val();
        let trained = w.is_require_grad();
        let w = if half { as_half(w) } else { as_full(w) };
        if trained {
            rows(x, w)
        } else {
            x.matmul(w.unsqueeze())
        }
    }

    /// The base weight `[d_in, d_out]` in f32 (dequantized when packed,
    /// widened when kept in bf16).
    pub fn base_weight(&self) -> Tensor<B, 2> {
        match (&self.weight, &self.packed) {
            (Some(w), _) => as_full(w.val()),
            (None, Some(p)) => p.dequantize(),
            (None, None) => panic!("a projection always holds a base weight"),
        }
    }

    /// Keeps a frozen dense base weight in bf16 only, for bf16 products
    /// (see the module documentation). A weight that trains, a packed base
    /// or one already in bf16 is left as it is.
    pub fn keep_base_in_half(&mut self) {
        if let Some(w) = &self.weight {
            let value = w.val();
            if !value.is_require_grad() && value.dtype() == DType::F32 {
                let half = to_half(value.detach());
                self.weight = Some(Param::initialized(w.id, half));
            }
        }
    }

    /// The frozen base weight (kept in bf16) and frozen bias of a dense
    /// layer, as LoRA leaves them; `None` for any other layer.
    pub fn frozen_half_parts(&self) -> Option<(Tensor<B, 2>, Tensor<B, 1>)> {
        if self.packed.is_some() {
            return None;
        }
        let w = self.weight.as_ref()?.val();
        let b = self.bias.as_ref()?.val();
        let frozen = !w.is_require_grad() && !b.is_require_grad();
        (frozen && w.dtype() == DType::BF16).then_some((w, b))
    }

    /// The trained matrices that only this layer's bf16 products read: a
    /// trained dense weight without an adapter, or the adapter's `A` and
    /// `B`. None when the layer computes in f32. The optimizer may hand
    /// these to the model in bf16 (`train::optim::AdamW::keep_in_half`).
    pub fn half_weights(&self) -> Vec<ParamId> {
        if !self.half {
            return Vec::new();
        }
        if let Some(adapter) = &self.adapter {
            return [&adapter.a, &adapter.b]
                .into_iter()
                .filter(|p| p.is_require_grad())
                .map(|p| p.id)
                .collect();
        }
        match (&self.weight, self.trained_weight()) {
            (Some(w), Some(_)) => vec![w.id],
            _ => Vec::new(),
        }
    }

    /// Whether the dense base weight is kept in bf16.
    pub fn base_in_half(&self) -> bool {
        self.weight
            .as_ref()
            .is_some_and(|w| w.val().dtype() == DType::BF16)
    }

    /// Stores the base weight in `format`, dropping the dense copy.
    pub fn pack(mut self, format: QuantFormat, block_size: usize, double_quant: bool) -> Self {
        if let Some(weight) = self.weight.take() {
            let [d_in, d_out] = weight.dims();
            let device = weight.device();
            let values: Vec<f32> = weight
                .val()
                .into_data()
                .convert::<f32>()
                .to_vec()
                .expect("f32 weights");
            let q = quant::quantize(&values, format, block_size, double_quant);
            self.packed = Some(Packed::from_host(&q, d_in, d_out, &device));
        }
        self
    }

    /// Folds the adapter into a dense base weight: `W + (α/r)·A·B`.
    pub fn merged(mut self) -> Self {
        let mut weight = self.base_weight();
        if let Some(adapter) = self.adapter.take() {
            weight = weight + adapter.delta();
        }
        self.weight = Some(Param::from_tensor(weight));
        self.packed = None;
        self
    }
}

impl<B: Backend> Packed<B> {
    /// Uploads a host-quantized `[d_in, d_out]` weight (row-major codes).
    pub fn from_host(q: &quant::Quantized, d_in: usize, d_out: usize, device: &B::Device) -> Self {
        let bits = q.format.bits().expect("a packed format") as usize;
        let mut words = bytes_to_words(&q.codes);
        // Whole blocks of codes, so dequantization can reshape by block.
        let coded = (d_in * d_out).div_ceil(q.block_size) * q.block_size;
        words.resize(coded.div_ceil(32 / bits), 0);
        let codebook: Vec<f32> = match q.format {
            QuantFormat::Nf4 => NF4.to_vec(),
            QuantFormat::Int4 => (0..16).map(|c| (c as f32 - 8.0) / 7.0).collect(),
            QuantFormat::Int8 => (0..256).map(|c| (c as u8 as i8) as f32 / 127.0).collect(),
            QuantFormat::None => unreachable!("unquantized weights are never packed"),
        };
        let int = |w: Vec<i32>| {
            let n = w.len();
            Param::initialized(
                burn::module::ParamId::new(),
                Tensor::<B, 1, Int>::from_data(TensorData::new(w, [n]), device),
            )
        };
        let float = |v: Vec<f32>| {
            let n = v.len();
            Param::from_tensor(Tensor::<B, 1>::from_data(TensorData::new(v, [n]), device))
        };
        let (scales, scale_words, group_scales, offset) = match &q.scales {
            Scales::Plain(s) => (Some(float(s.clone())), None, None, 0.0),
            Scales::Double {
                offset,
                codes,
                group_scale,
            } => {
                let bytes: Vec<u8> = codes.iter().map(|&c| c as u8).collect();
                (
                    None,
                    Some(int(bytes_to_words(&bytes))),
                    Some(float(group_scale.clone())),
                    *offset as f64,
                )
            }
        };
        let shifts = |bits: usize| int((0..32 / bits).map(|k| (k * bits) as i32).collect());
        Packed {
            words: int(words),
            code_shifts: shifts(bits),
            scale_shifts: scale_words.is_some().then(|| shifts(8)),
            scales: scales.map(|p| p.set_require_grad(false)),
            scale_words,
            group_scales: group_scales.map(|p| p.set_require_grad(false)),
            codebook: float(codebook).set_require_grad(false),
            offset,
            bits,
            block_size: q.block_size,
            d_in,
            d_out,
        }
    }

    /// Bytes the packed weight occupies on the device.
    pub fn bytes(&self) -> usize {
        let n = |d: [usize; 1]| d[0] * 4;
        n(self.words.dims())
            + self.scales.as_ref().map_or(0, |s| n(s.dims()))
            + self.scale_words.as_ref().map_or(0, |s| n(s.dims()))
            + self.group_scales.as_ref().map_or(0, |s| n(s.dims()))
            + n(self.codebook.dims())
            + n(self.code_shifts.dims())
            + self.scale_shifts.as_ref().map_or(0, |s| n(s.dims()))
    }

    /// The block scales `[blocks]`.
    fn block_scales(&self) -> Tensor<B, 1> {
        if let Some(scales) = &self.scales {
            return scales.val();
        }
        let words = self.scale_words.as_ref().expect("double-quantized scales");
        let groups = self.group_scales.as_ref().expect("group scales");
        let blocks = (self.d_in * self.d_out).div_ceil(self.block_size);
        // Signed bytes: (u ^ 0x80) - 0x80.
        let shifts = self.scale_shifts.as_ref().expect("scale code shifts");
        let codes = unpack(words.val(), shifts.val(), 8)
            .bitwise_xor_scalar(0x80.elem())
            .sub_scalar(0x80)
            .slice(s![0..blocks])
            .float();
        let group = quant::SCALE_GROUP;
        let padded = blocks.div_ceil(group) * group;
        let group_of_block = groups
            .val()
            .reshape([blocks.div_ceil(group), 1])
            .repeat_dim(1, group)
            .reshape([padded])
            .slice(s![0..blocks]);
        (codes * group_of_block)
            .div_scalar(127.0)
            .add_scalar(self.offset)
    }

    /// `x · W` for `x` `[batch, seq, d_in]`, with `W` dequantized, and cast
    /// to bf16 when `half` (`x` is then bf16 too). When training on the CPU,
    /// the backward pass dequantizes `W` again rather than keep it from the
    /// forward pass; elsewhere burn's autodiff keeps it (see the module
    /// documentation for why CUDA does not use the operation).
    pub fn product(&self, x: Tensor<B, 3>, half: bool) -> Tensor<B, 3> {
        let x = match self.product_on_autodiff::<Cpu>(x, half) {
            Ok(y) => return y,
            Err(x) => x,
        };
        x.matmul(weight_for(self, half).unsqueeze())
    }

    /// [`Packed::product`] as an operation of its own when `B` is
    /// `Autodiff<I>`; `x` back otherwise.
    fn product_on_autodiff<I: Backend>(
        &self,
        x: Tensor<B, 3>,
        half: bool,
    ) -> Result<Tensor<B, 3>, Tensor<B, 3>> {
        if TypeId::of::<B>() != TypeId::of::<Autodiff<I>>() {
            return Err(x);
        }
        let x: Tensor<Autodiff<I>, 3> = same_type(x);
        let packed: Packed<Autodiff<I>> = same_type(self.clone());
        let y = packed_product::<I>(x.into_primitive().tensor(), packed.valid(), half);
        Ok(same_type(Tensor::<Autodiff<I>, 3>::from_primitive(
            TensorPrimitive::Float(y),
        )))
    }

    /// The weight `[d_in, d_out]` in f32.
    pub fn dequantize(&self) -> Tensor<B, 2> {
        self.dequantize_as(FloatDType::F32)
    }

    /// The weight `[d_in, d_out]` in `dtype`: on CUDA by ftl's kernel
    /// (`model::dequant_cuda`, one launch), elsewhere by tensor operations
    /// ([`Packed::dequantize_by_tensor_ops`]), with the same values.
    pub fn dequantize_as(&self, dtype: FloatDType) -> Tensor<B, 2> {
        #[cfg(feature = "cuda")]
        if let Some(w) = self.dequantize_on_gpu(dtype) {
            return w;
        }
        let w = self.dequantize_by_tensor_ops();
        if dtype == FloatDType::F32 {
            w
        } else {
            w.cast(dtype)
        }
    }

    /// [`Packed::dequantize_as`] by ftl's kernel, when `B` is the CUDA
    /// backend or autodiff over it (the weight is then a constant: nothing
    /// it is made from trains); `None` on any other backend.
    #[cfg(feature = "cuda")]
    fn dequantize_on_gpu(&self, dtype: FloatDType) -> Option<Tensor<B, 2>> {
        use crate::runtime::backend::Gpu;
        use crate::runtime::model::dequant_cuda;
        if TypeId::of::<B>() == TypeId::of::<Autodiff<Gpu>>() {
            let packed: Packed<Autodiff<Gpu>> = same_type(self.clone());
            let w = packed.valid().dequantize_on_gpu(dtype)?;
            return Some(same_type(Tensor::<Autodiff<Gpu>, 2>::from_inner(
                same_type(w),
            )));
        }
        if !dequant_cuda::applies::<B>() {
            return None;
        }
        let scales = match (&self.scales, &self.scale_words, &self.group_scales) {
            (Some(s), _, _) => dequant_cuda::Scales::Plain(s.val().into_primitive().tensor()),
            (None, Some(codes), Some(groups)) => dequant_cuda::Scales::Double(
                codes.val().into_primitive(),
                groups.val().into_primitive().tensor(),
            ),
            _ => return None,
        };
        let layout = dequant_cuda::Layout {
            bits: self.bits,
            block_size: self.block_size,
            group: quant::SCALE_GROUP,
            offset: self.offset as f32,
            dims: [self.d_in, self.d_out],
            out: DType::from(dtype),
        };
        let w = dequant_cuda::dequantize::<B>(
            self.words.val().into_primitive(),
            self.codebook.val().into_primitive().tensor(),
            scales,
            layout,
        );
        Some(Tensor::from_primitive(TensorPrimitive::Float(w)))
    }

    /// The weight `[d_in, d_out]` in f32, by burn's tensor operations on
    /// any backend (what the CUDA kernel is checked against).
    pub fn dequantize_by_tensor_ops(&self) -> Tensor<B, 2> {
        let len = self.d_in * self.d_out;
        let blocks = len.div_ceil(self.block_size);
        let codes = unpack(self.words.val(), self.code_shifts.val(), self.bits)
            .slice(s![0..blocks * self.block_size]);
        let values = self.codebook.val().select(0, codes);
        let scaled =
            values.reshape([blocks, self.block_size]) * self.block_scales().reshape([blocks, 1]);
        scaled
            .reshape([blocks * self.block_size])
            .slice(s![0..len])
            .reshape([self.d_in, self.d_out])
    }
}

/// The dequantized weight, in bf16 when `half`.
fn weight_for<B: Backend>(packed: &Packed<B>, half: bool) -> Tensor<B, 2> {
    packed.dequantize_as(if half {
        FloatDType::BF16
    } else {
        FloatDType::F32
    })
}

/// The input's gradient of `x · W`: `g · Wᵀ`, `W` dequantized again.
#[derive(Debug)]
struct PackedProductBackward;

impl<I: Backend> Backward<I, 1> for PackedProductBackward {
    /// The packed weight (already on the device) and the precision.
    type State = (Packed<I>, bool);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (packed, half) = ops.state;
        let [x_node] = ops.parents;
        let grad = grads.consume::<I>(&ops.node);
        if let Some(node) = x_node {
            let grad = Tensor::<I, 3>::from_primitive(TensorPrimitive::Float(grad));
            let w = weight_for(&packed, half);
            // As burn's autodiff does for a product: g · (the broadcast W)ᵀ.
            let dx = grad.matmul(w.unsqueeze::<3>().transpose());
            grads.register::<I>(node.id, dx.into_primitive().tensor());
        }
    }
}

/// [`Packed::product`] on `Autodiff<I>`'s tensors.
fn packed_product<I: Backend>(
    x: FloatTensor<Autodiff<I>>,
    packed: Packed<I>,
    half: bool,
) -> FloatTensor<Autodiff<I>> {
    let node = x.node.clone();
    let y = Tensor::<I, 3>::from_primitive(TensorPrimitive::Float(x.primitive))
        .matmul(weight_for(&packed, half).unsqueeze())
        .into_primitive()
        .tensor();
    match PackedProductBackward
        .prepare::<NoCheckpointing>([node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((packed, half), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

/// Little-endian bytes → i32 words (zero-padded to a whole word).
fn bytes_to_words(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            i32::from_le_bytes(w)
        })
        .collect()
}

/// Words → one code per element (`bits` wide, lowest bits first), unsigned.
/// `shifts` is `[0, bits, 2·bits, …]`, one per code in a word; each word is
/// shifted by all of them at once (broadcast, nothing repeated in memory).
fn unpack<B: Backend>(
    words: Tensor<B, 1, Int>,
    shifts: Tensor<B, 1, Int>,
    bits: usize,
) -> Tensor<B, 1, Int> {
    let per_word = 32 / bits;
    let [n] = words.dims();
    words
        .reshape([n, 1])
        .bitwise_right_shift(shifts.reshape([1, per_word]))
        .bitwise_and_scalar(((1i64 << bits) - 1).elem())
        .reshape([n * per_word])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::backend::{Cpu, cpu_device};
    use burn::backend::Autodiff;
    use burn::tensor::{Distribution, Tolerance};

    type Train = Autodiff<Cpu>;

    fn x<B: Backend>(device: &B::Device, d: usize) -> Tensor<B, 3> {
        Tensor::random([2, 5, d], Distribution::Normal(0.0, 1.0), device)
    }

    #[test]
    fn a_fresh_adapter_changes_nothing() {
        let device = cpu_device();
        let mut layer = Projection::<Cpu>::random(16, 8, &device);
        let input = x::<Cpu>(&device, 16);
        let expected = layer.forward(input.clone());
        layer.adapter = Some(AdapterConfig::new(4, 8.0).init(16, 8, 1, &device));
        layer
            .forward(input)
            .into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-6));
    }

    #[test]
    fn only_the_adapter_receives_gradients() {
        let device = cpu_device();
        let mut layer = Projection::<Train>::random(16, 8, &device).no_grad();
        layer.adapter = Some(AdapterConfig::new(4, 8.0).init(16, 8, 1, &device));
        let loss = layer.forward(x(&device, 16)).powf_scalar(2.0).mean();
        let grads = loss.backward();
        let weight = layer.weight.as_ref().expect("dense");
        assert!(weight.grad(&grads).is_none(), "the base weight is frozen");
        assert!(layer.bias.as_ref().expect("bias").grad(&grads).is_none());
        let adapter = layer.adapter.as_ref().expect("adapter");
        let gb = adapter.b.grad(&grads).expect("B trains");
        assert!(gb.abs().sum().into_scalar() > 0.0, "B gets a gradient");
        let ga = adapter.a.grad(&grads).expect("A trains");
        assert_eq!(
            ga.abs().sum().into_scalar(),
            0.0,
            "A's gradient is zero while B is"
        );
    }

    /// One product over all tokens gives the values and the weight's
    /// gradient that burn's batched product against the broadcast weight
    /// gives (which sums one gradient per sentence); only the order of the
    /// sums differs.
    #[test]
    fn a_trained_weight_gets_the_gradient_of_the_batched_product() {
        let device = cpu_device();
        let layer = Projection::<Train>::random(24, 40, &device);
        let input = x::<Train>(&device, 24);
        let upstream = x::<Train>(&device, 40);
        let run = |y: Tensor<Train, 3>| {
            let grads = (y.clone() * upstream.clone()).sum().backward();
            let w = layer.weight.as_ref().expect("dense");
            let g = w.grad(&grads).expect("the weight trains");
            let b = layer.bias.as_ref().expect("bias").grad(&grads);
            let b = b.expect("the bias trains");
            (y.inner().into_data(), g.into_data(), b.into_data())
        };
        let (y, g, gb) = run(layer.forward(input.clone()));
        let w = layer.weight.as_ref().expect("dense").val();
        let bias = layer.bias.as_ref().expect("bias").val();
        let (y_batched, g_batched, gb_batched) =
            run(input.matmul(w.unsqueeze()) + bias.unsqueeze());
        y.assert_approx_eq::<f32>(&y_batched, Tolerance::absolute(1e-5));
        g.assert_approx_eq::<f32>(&g_batched, Tolerance::absolute(1e-4));
        // The bias, added to the rows, gets the gradient of the broadcast
        // bias: the upstream gradient summed over sentences and tokens.
        gb.assert_approx_eq::<f32>(&gb_batched, Tolerance::absolute(1e-4));
        let expected = upstream.clone().inner().sum_dim(0).sum_dim(1).reshape([40]);
        gb.assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-4));
        let g: Vec<f32> = g.to_vec().expect("f32");
        assert!(g.iter().any(|v| v.abs() > 1e-2), "a real gradient");
    }

    #[test]
    fn the_update_is_scaled_by_alpha_over_rank() {
        let device = cpu_device();
        let mut adapter = AdapterConfig::new(2, 4.0).init::<Cpu>(6, 3, 9, &device);
        adapter.b = Param::from_tensor(Tensor::ones([2, 3], &device));
        let input = Tensor::<Cpu, 3>::ones([1, 1, 6], &device);
        // Each output is (α/r) · Σ_i Σ_k A[i][k] with B = 1.
        let expected = adapter.a.val().sum().into_scalar() * 2.0;
        let got: Vec<f32> = adapter.forward(input).into_data().to_vec().expect("f32");
        for v in got {
            assert!((v - expected).abs() < 1e-5, "{v} vs {expected}");
        }
    }

    #[test]
    fn the_packed_product_differentiates_as_burn_would_without_keeping_the_weight() {
        let device = cpu_device();
        let layer = Projection::<Train>::random(40, 24, &device).pack(QuantFormat::Nf4, 64, true);
        let packed = layer.packed.as_ref().expect("packed");
        let weights = x::<Cpu>(&device, 24);
        for half in [false, true] {
            let input = x::<Cpu>(&device, 40);
            let run = |product: &dyn Fn(Tensor<Train, 3>) -> Tensor<Train, 3>| {
                let x = Tensor::<Train, 3>::from_inner(input.clone()).require_grad();
                let xin = if half { to_half(x.clone()) } else { x.clone() };
                let y = to_full(product(xin));
                let loss = (y.clone() * Tensor::from_inner(weights.clone())).sum();
                let grads = loss.backward();
                let dx = x.grad(&grads).expect("x has a gradient");
                (
                    y.inner().into_data().to_vec::<f32>().unwrap(),
                    dx.into_data().to_vec::<f32>().unwrap(),
                )
            };
            // The operation, and burn's autodiff through the dequantization.
            let ours = run(&|x| packed.product(x, half));
            let burns = run(&|x| x.matmul(weight_for(packed, half).unsqueeze()));
            assert_eq!(ours.0, burns.0, "half = {half}: the same values");
            assert_eq!(ours.1, burns.1, "half = {half}: the same input gradient");
            assert!(ours.1.iter().any(|g| g.abs() > 1e-3));
        }
    }

    #[test]
    fn packed_weights_dequantize_on_device_as_the_host_reference() {
        let device = cpu_device();
        for (format, double) in [
            (QuantFormat::Nf4, false),
            (QuantFormat::Nf4, true),
            (QuantFormat::Int4, false),
            (QuantFormat::Int8, true),
        ] {
            // 37 × 29 is not a multiple of the block: the tail block is partial.
            let layer = Projection::<Cpu>::random(37, 29, &device);
            let dense: Vec<f32> = layer.base_weight().into_data().to_vec().expect("f32");
            let reference = quant::quantize(&dense, format, 64, double).dequantize();
            let packed = layer.pack(format, 64, double);
            assert!(packed.weight.is_none(), "the dense copy is dropped");
            let p = packed.packed.as_ref().expect("packed");
            let bits = format.bits().expect("bits") as usize;
            // Codes fill whole blocks of 64 (the tail block is padded).
            let padded = (37 * 29usize).div_ceil(64) * 64;
            assert!(
                p.words.dims()[0] * 4 <= (padded * bits).div_ceil(8) + 4,
                "{format:?}: codes take {} bits per weight",
                bits
            );
            let got: Vec<f32> = packed.base_weight().into_data().to_vec().expect("f32");
            assert_eq!(got.len(), reference.len());
            for (i, (g, r)) in got.iter().zip(&reference).enumerate() {
                assert!(
                    (g - r).abs() <= 1e-6,
                    "{format:?} double={double} [{i}]: {g} vs {r}"
                );
            }
        }
    }

    #[test]
    fn merging_folds_the_adapter_into_the_weight() {
        let device = cpu_device();
        let mut layer = Projection::<Cpu>::random(8, 6, &device);
        let mut adapter = AdapterConfig::new(2, 4.0).init::<Cpu>(8, 6, 3, &device);
        adapter.b = Param::from_tensor(Tensor::random(
            [2, 6],
            Distribution::Normal(0.0, 1.0),
            &device,
        ));
        layer.adapter = Some(adapter);
        let input = x::<Cpu>(&device, 8);
        let expected = layer.forward(input.clone());
        let merged = layer.merged();
        assert!(merged.adapter.is_none());
        merged
            .forward(input)
            .into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-5));
    }
}
