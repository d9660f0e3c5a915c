//! The core of self-attention, `dropout(softmax(QKᵀ/√d + bias)) · V`, with a
//! backward pass of its own on the autodiff backends ftl trains with.
//!
//! burn 0.21's autodiff differentiates the composition operation by
//! operation, and keeps for the backward pass what each step needs: the
//! shifted scores (what `exp` reads), the exponentials and their row sums
//! (what the division reads), the dropout mask, and the dropped
//! probabilities (what the second product reads, in bf16 under bf16
//! products). All of these are `[batch, heads, seq, seq]`: at sequence
//! length 64 they outweigh the `[batch, heads, seq, head_dim]` inputs.
//!
//! The operation here computes the same forward values, step for step, and
//! keeps only its inputs (which the products kept anyway) and the one-byte
//! dropout mask. The backward pass computes the probabilities again, as
//! memory-efficient attention kernels do, and gives the gradients in closed
//! form:
//!
//! ```text
//! S = QKᵀ/√d + bias     P = softmax(S)     Pᵈ = P ⊙ M / keep     C = Pᵈ V
//! ∂V = Pᵈᵀ ∂C     ∂Pᵈ = ∂C Vᵀ     ∂P = ∂Pᵈ ⊙ M / keep
//! ∂S = P ⊙ (∂P − Σⱼ ∂P ⊙ P)     ∂bias = ∂S summed to bias's shape
//! ∂Q = ∂S K / √d     ∂K = ∂Sᵀ Q / √d
//! ```
//!
//! That costs one more `[seq × head_dim] · [head_dim × seq]` product and a
//! softmax per layer in the backward pass. Under bf16 products the backward
//! pass multiplies in f32 (see [`HalfBackward`] for why).
//!
//! On CUDA the softmax with its scale, bias and dropout runs as ftl's own
//! kernels ([`super::softmax_cuda`]): one operation in the forward pass,
//! and one in the backward pass that gives ∂S/√d and the dropped
//! probabilities for ∂V together. On the CPU it is the composition below,
//! operation by operation.
//!
//! Under full fine-tuning the query, key and value projections join the
//! operation ([`own_projected`]): one product for the three, its result
//! split into heads, and in the backward pass two products where three
//! projections take six (`model::qkv`).
//!
//! Other backends (inference, the inner backend of evaluation) run the
//! composition as it is: nothing is kept there.

use std::any::TypeId;

use burn::backend::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::prelude::*;
use burn::tensor::ops::{BoolTensor, FloatTensor};
use burn::tensor::{FloatDType, Slice, TensorMetadata, TensorPrimitive};

use crate::runtime::backend::{Cpu, same_type};
use crate::runtime::model::dropout::Dropout;
#[cfg(feature = "cuda")]
use crate::runtime::model::dropout::Seeded;
use crate::runtime::model::projection::{to_full, to_half};
use crate::runtime::model::qkv;

/// `dropout(softmax(QKᵀ/√d + bias)) · V` for `q`, `k`, `v` of shape
/// `[batch, heads, seq, head_dim]` and `bias` broadcastable to
/// `[batch, heads, seq, seq]`. With `half`, `q`, `k` and `v` are bf16, the
/// forward products run in bf16, the softmax in f32, and the result is
/// bf16; in training the backward pass's products run in f32
/// ([`HalfBackward`]). Otherwise everything is f32.
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Tensor<B, 4>,
    dropout: &Dropout,
    half: bool,
) -> Tensor<B, 4> {
    if is_autodiff_of::<B, Cpu>() {
        return on_autodiff::<B, Cpu>(q, k, v, bias, dropout, half);
    }
    #[cfg(feature = "cuda")]
    if is_autodiff_of::<B, crate::runtime::backend::Gpu>() {
        return on_autodiff::<B, crate::runtime::backend::Gpu>(q, k, v, bias, dropout, half);
    }
    composed(q, k, v, bias, dropout, half)
}

/// [`own_backward`] for `B`, which is `Autodiff<I>`. burn's CUDA backend
/// fuses the bf16 backward products wrongly (NaN gradients, see
/// [`HalfBackward`]): training runs them in f32.
fn on_autodiff<B: Backend, I: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Tensor<B, 4>,
    dropout: &Dropout,
    half: bool,
) -> Tensor<B, 4> {
    same_type(own_backward::<I>(
        same_type(q),
        same_type(k),
        same_type(v),
        same_type(bias),
        dropout,
        half,
        HalfBackward::F32,
    ))
}

/// Where the backward pass's products run under bf16 products.
///
/// With bf16 products, burn 0.21's CUDA backend with operation fusion (the
/// one ftl trains with) gives NaN gradients for q and k at MiniLM's shape;
/// the same backend without fusion, and the CPU, give burn's gradients
/// (`bench/attention_check.rs` shows both). With f32 products the fused
/// backend is right too, so training uses [`HalfBackward::F32`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HalfBackward {
    /// In bf16, as burn's composition runs them.
    Bf16,
    /// In f32, from f32 copies of the bf16 inputs; the gradients are cast
    /// back to bf16.
    F32,
}

/// The same computation as burn's tensor operations, differentiated by
/// burn's autodiff step by step.
pub fn composed<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Tensor<B, 4>,
    dropout: &Dropout,
    half: bool,
) -> Tensor<B, 4> {
    let root = (q.dims()[3] as f64).sqrt();
    let mut scores = q.matmul(k.swap_dims(2, 3));
    if half {
        scores = to_full(scores);
    }
    let scores = scores.div_scalar(root) + bias;
    let mut probs = dropout.forward(burn::tensor::activation::softmax(scores, 3));
    if half {
        probs = to_half(probs);
    }
    probs.matmul(v)
}

fn is_autodiff_of<B: Backend, I: Backend>() -> bool {
    TypeId::of::<B>() == TypeId::of::<Autodiff<I>>()
}

/// The operation with its own backward pass, on any autodiff backend.
pub fn own_backward<I: Backend>(
    q: Tensor<Autodiff<I>, 4>,
    k: Tensor<Autodiff<I>, 4>,
    v: Tensor<Autodiff<I>, 4>,
    bias: Tensor<Autodiff<I>, 4>,
    dropout: &Dropout,
    half: bool,
    products: HalfBackward,
) -> Tensor<Autodiff<I>, 4> {
    let [batch, heads, seq, _] = q.dims();
    let softmax = softmax_for::<I>(q.dtype(), [batch, heads, seq], &bias, dropout);
    let q = q.into_primitive().tensor();
    let k = k.into_primitive().tensor();
    let v = v.into_primitive().tensor();
    let bias = bias.into_primitive().tensor();
    let nodes = [
        q.node.clone(),
        k.node.clone(),
        v.node.clone(),
        bias.node.clone(),
    ];
    let state = State {
        q: q.primitive,
        k: k.primitive,
        v: v.primitive,
        bias: bias.primitive,
        softmax,
        half,
        products,
    };
    let context = I::float_matmul(dropped_probabilities::<I>(&state), state.v.clone());
    let out = match AttentionBackward
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, context),
        OpsKind::UnTracked(prep) => prep.finish(context),
    };
    Tensor::<Autodiff<I>, 4>::from_primitive(TensorPrimitive::Float(out))
}

/// The query, key and value projections of an attention block, in that
/// order: `[d_model, d_model]` weights and `[d_model]` biases, trained
/// (full fine-tuning) or frozen with LoRA adapters on some of them.
pub struct Projections<B: Backend> {
    /// `W_q`, `W_k`, `W_v`.
    pub weights: [Tensor<B, 2>; 3],
    /// `b_q`, `b_k`, `b_v`.
    pub biases: [Tensor<B, 1>; 3],
    /// Each adapted projection's adapter update `[batch·seq, d_model]`
    /// (unscaled, in the products' dtype) and its scale.
    pub deltas: [Option<(Tensor<B, 2>, f64)>; 3],
    /// The input already in the products' dtype, where the block before
    /// wrote it (`LayerNorm::forward_residual_copied`): a constant, read in
    /// place of a cast of x (x's gradient is x's, as without it).
    pub input_copy: Option<Tensor<B, 3>>,
}

impl<B: Backend> Projections<B> {
    fn into<C: Backend>(self) -> Projections<C> {
        Projections {
            weights: self.weights.map(same_type),
            biases: self.biases.map(same_type),
            deltas: self.deltas.map(|d| d.map(|(t, s)| (same_type(t), s))),
            input_copy: self.input_copy.map(same_type),
        }
    }
}

/// [`attention`] of the heads of `x · [W_q | W_k | W_v] + [b_q | b_k | b_v]`
/// for `x` `[batch, seq, d_model]`, as one operation with its own backward
/// pass ([`own_projected`]) on the autodiff backends ftl trains with;
/// `None` on any other backend.
pub fn projected<B: Backend>(
    x: Tensor<B, 3>,
    projections: Projections<B>,
    heads: usize,
    bias: Tensor<B, 4>,
    dropout: &Dropout,
    half: bool,
) -> Option<Tensor<B, 4>> {
    if is_autodiff_of::<B, Cpu>() {
        return Some(projected_on::<B, Cpu>(
            x,
            projections,
            heads,
            bias,
            dropout,
            half,
        ));
    }
    #[cfg(feature = "cuda")]
    if is_autodiff_of::<B, crate::runtime::backend::Gpu>() {
        return Some(projected_on::<B, crate::runtime::backend::Gpu>(
            x,
            projections,
            heads,
            bias,
            dropout,
            half,
        ));
    }
    None
}

/// [`own_projected`] for `B`, which is `Autodiff<I>`, with the backward
/// pass's attention products in f32 (see [`HalfBackward`]).
fn projected_on<B: Backend, I: Backend>(
    x: Tensor<B, 3>,
    projections: Projections<B>,
    heads: usize,
    bias: Tensor<B, 4>,
    dropout: &Dropout,
    half: bool,
) -> Tensor<B, 4> {
    same_type(own_projected::<I>(
        same_type(x),
        projections.into(),
        heads,
        same_type(bias),
        dropout,
        half,
        HalfBackward::F32,
    ))
}

/// The query, key and value projections and the attention as one
/// operation of burn's autodiff, on any autodiff backend. The three
/// products are one `[batch·seq, d_model] · [d_model, 3·d_model]` product
/// (`model::qkv`), in bf16 when `half`, and so are their two products in
/// the backward pass, where three projections take six:
///
/// ```text
/// Y = x · [W_q | W_k | W_v]     q, k, v = heads(Y + [b_q | b_k | b_v])
/// ∂Y = [∂q | ∂k | ∂v] (as rows)     ∂[W_q | W_k | W_v] = xᵀ ∂Y     ∂x = ∂Y [W_q | W_k | W_v]ᵀ     ∂b = Σ rows of ∂Y
/// ```
///
/// The values are those of three projections: each column of `Y` is the
/// same sum of products, and the biases are added in f32 before q, k and v
/// are rounded to the products' dtype, as [`super::projection`] does. The
/// backward pass keeps x in the products' dtype and the packed weight,
/// where three projections keep x and the three weights in that dtype.
///
/// With LoRA (frozen weights and biases), each adapter's update `Δ` enters
/// with its scale `s` where the layers add it, after the bias in f32
/// (`qkv::split_adapted`), and its gradient is `s · ∂part` as rows
/// (`qkv::merge_adapted`); the frozen weights get no gradient, so the
/// backward pass is one product, for ∂x. The adapters' own products stay
/// outside, in autodiff.
pub fn own_projected<I: Backend>(
    x: Tensor<Autodiff<I>, 3>,
    projections: Projections<Autodiff<I>>,
    heads: usize,
    bias: Tensor<Autodiff<I>, 4>,
    dropout: &Dropout,
    half: bool,
    products: HalfBackward,
) -> Tensor<Autodiff<I>, 4> {
    let [batch, seq, d_in] = x.dims();
    let dtype = qkv::dtype(half);
    let softmax = softmax_for::<I>(dtype.into(), [batch, heads, seq], &bias, dropout);
    let x = x.into_primitive().tensor();
    // x's rows are kept for the weights' gradient only (LoRA's are frozen).
    let trained = projections.weights.iter().any(|w| w.is_require_grad());
    let weights = projections.weights.map(|w| w.into_primitive().tensor());
    let biases = projections.biases.map(|b| b.into_primitive().tensor());
    let deltas = projections
        .deltas
        .map(|d| d.map(|(t, scale)| (t.into_primitive().tensor(), scale)));
    let copy = projections
        .input_copy
        .map(|c| c.into_primitive().tensor().primitive)
        .filter(|c| c.dtype() == dtype.into() && c.shape() == x.primitive.shape());
    let bias = bias.into_primitive().tensor();
    // A part without an update names x's node in its place; its scale is
    // `None` and the backward pass gives that place nothing.
    let delta_node = |t: usize| {
        deltas[t]
            .as_ref()
            .map_or_else(|| x.node.clone(), |(d, _)| d.node.clone())
    };
    let nodes = [
        x.node.clone(),
        weights[0].node.clone(),
        weights[1].node.clone(),
        weights[2].node.clone(),
        biases[0].node.clone(),
        biases[1].node.clone(),
        biases[2].node.clone(),
        bias.node.clone(),
        delta_node(0),
        delta_node(1),
        delta_node(2),
    ];
    let scales = [0, 1, 2].map(|t| deltas[t].as_ref().map(|(_, s)| *s));
    let x_dtype = x.primitive.dtype().into();
    let rows = I::float_reshape(
        copy.unwrap_or_else(|| qkv::cast::<I>(x.primitive, dtype)),
        Shape::new([batch * seq, d_in]),
    );
    let packed = qkv::pack::<I>(weights.map(|w| w.primitive), dtype);
    let y = product::<I>(rows.clone(), packed.clone(), [false, false]);
    let biases = biases.map(|b| b.primitive);
    let deltas = deltas.map(|d| d.map(|(t, s)| (t.primitive, s)));
    #[cfg(feature = "cuda")]
    let fused = fused_draw::<I>(&softmax, &y, &bias.primitive, &deltas, [seq, heads]);
    #[cfg(not(feature = "cuda"))]
    let fused: Option<()> = None;
    let (core, context) = match fused {
        #[cfg(feature = "cuda")]
        Some(draw) => {
            let inputs = super::attend_cuda::Inputs {
                y,
                biases,
                bias: bias.primitive,
                updates: deltas,
            };
            let tokens = super::attend_cuda::forward::<I>(inputs.clone(), seq, heads, draw);
            let core = Core::Fused(Fused {
                inputs,
                seq,
                heads,
                draw,
            });
            (core, I::float_swap_dims(tokens, 1, 2))
        }
        _ => {
            let attention = split_attention::<I>(
                y,
                biases,
                deltas,
                bias.primitive,
                softmax,
                [batch, heads],
                half,
                products,
            );
            let context =
                I::float_matmul(dropped_probabilities::<I>(&attention), attention.v.clone());
            (Core::Attention(attention), context)
        }
    };
    let out = match ProjectedBackward
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            Projected {
                core,
                rows: trained.then_some(rows),
                packed,
                x_shape: [batch, seq, d_in],
                x_dtype,
                scales,
            },
            context,
        ),
        OpsKind::UnTracked(prep) => prep.finish(context),
    };
    Tensor::<Autodiff<I>, 4>::from_primitive(TensorPrimitive::Float(out))
}

/// The head split of the product `y`, with the adapters' updates where
/// there are some, and the attention's state over the heads.
#[allow(clippy::too_many_arguments)]
fn split_attention<I: Backend>(
    y: FloatTensor<I>,
    biases: [FloatTensor<I>; 3],
    deltas: [Option<(FloatTensor<I>, f64)>; 3],
    bias: FloatTensor<I>,
    softmax: Softmax<I>,
    [batch, heads]: [usize; 2],
    half: bool,
    products: HalfBackward,
) -> State<I> {
    let dtype = qkv::dtype(half);
    let [q, k, v] = if deltas.iter().any(Option::is_some) {
        qkv::split_adapted::<I>(y, biases, deltas, batch, heads, dtype)
    } else {
        qkv::split::<I>(y, biases, batch, heads, dtype)
    };
    State {
        q,
        k,
        v,
        bias,
        softmax,
        half,
        products,
    }
}

/// The dropout's draw when ftl's attention kernels take this attention
/// (`attend_cuda`): the softmax runs as ftl's kernels, the adapters'
/// updates are in the product's dtype, and the kernels apply to the
/// product's and the bias's dtypes and to this sequence and head size.
#[cfg(feature = "cuda")]
fn fused_draw<I: Backend>(
    softmax: &Softmax<I>,
    y: &FloatTensor<I>,
    bias: &FloatTensor<I>,
    deltas: &[Option<(FloatTensor<I>, f64)>; 3],
    [seq, heads]: [usize; 2],
) -> Option<Option<Seeded>> {
    let Softmax::Kernels(draw) = softmax else {
        return None;
    };
    let dim = y.shape()[1] / 3 / heads;
    let updates_match = deltas.iter().flatten().all(|(d, _)| d.dtype() == y.dtype());
    let applies = updates_match
        && super::attend_cuda::applies::<I>(y.dtype(), bias.dtype(), seq, dim, &I::float_device(y));
    applies.then_some(*draw)
}

/// The dropout of the probabilities: where it dropped, and the keep
/// probability that scales the rest.
#[derive(Clone, Debug)]
struct Dropped<I: Backend> {
    mask: BoolTensor<I>,
    keep: f64,
}

/// How the softmax and its dropout run, the same in both passes.
#[derive(Clone, Debug)]
enum Softmax<I: Backend> {
    /// As tensor operations, the dropout reading a mask.
    Composition(Option<Dropped<I>>),
    /// As ftl's CUDA kernels (`softmax_cuda`), which draw the dropout
    /// themselves from its seed.
    #[cfg(feature = "cuda")]
    Kernels(Option<Seeded>),
}

/// Where the softmax runs for these scores' and bias's dtypes, with the
/// dropout drawn where the composition draws it: after the scores, before
/// anything else of this layer.
fn softmax_for<I: Backend>(
    scores: burn::tensor::DType,
    [batch, heads, seq]: [usize; 3],
    bias: &Tensor<Autodiff<I>, 4>,
    dropout: &Dropout,
) -> Softmax<I> {
    #[cfg(feature = "cuda")]
    if super::softmax_cuda::applies::<I>(scores, bias.dtype()) {
        return Softmax::Kernels(dropout.seeded());
    }
    #[cfg(not(feature = "cuda"))]
    let _ = scores;
    Softmax::Composition(
        dropout
            .dropped::<Autodiff<I>, 4>([batch, heads, seq, seq], &bias.device())
            .map(|mask| Dropped {
                mask: mask.into_primitive(),
                keep: dropout.keep(),
            }),
    )
}

/// What the backward pass keeps: the inputs and how the softmax ran (with
/// the composition's dropout mask, or the kernels' seed).
#[derive(Clone, Debug)]
struct State<I: Backend> {
    q: FloatTensor<I>,
    k: FloatTensor<I>,
    v: FloatTensor<I>,
    bias: FloatTensor<I>,
    softmax: Softmax<I>,
    half: bool,
    products: HalfBackward,
}

/// `QKᵀ`, in the products' dtype.
fn scores<I: Backend>(s: &State<I>) -> FloatTensor<I> {
    I::float_matmul(s.q.clone(), I::float_swap_dims(s.k.clone(), 2, 3))
}

/// √d, which the scores are divided by.
fn root<I: Backend>(s: &State<I>) -> f64 {
    (s.q.shape()[3] as f64).sqrt()
}

/// The products' dtype.
#[cfg(feature = "cuda")]
fn product_dtype<I: Backend>(s: &State<I>) -> burn::tensor::DType {
    use burn::tensor::DType;
    if s.half { DType::BF16 } else { DType::F32 }
}

/// `softmax(QKᵀ/√d + bias)` in f32, with the operations (and so the
/// values) of burn's composition.
fn probabilities<I: Backend>(s: &State<I>, scores: FloatTensor<I>) -> FloatTensor<I> {
    let root = root::<I>(s);
    let mut scores = scores;
    if s.half {
        scores = I::float_cast(scores, FloatDType::F32);
    }
    let scores = I::float_add(I::float_div_scalar(scores, root.into()), s.bias.clone());
    let max = I::float_max_dim(scores.clone(), 3);
    let exp = I::float_exp(I::float_sub(scores, max));
    let sum = I::float_sum_dim(exp.clone(), 3);
    I::float_div(exp, sum)
}

/// `t ⊙ M / keep`: the dropout's forward pass, and its backward pass too.
fn apply_dropout<I: Backend>(t: FloatTensor<I>, dropped: &Option<Dropped<I>>) -> FloatTensor<I> {
    match dropped {
        Some(d) => I::float_mul_scalar(
            I::float_mask_fill(t, d.mask.clone(), 0.0.into()),
            (1.0 / d.keep).into(),
        ),
        None => t,
    }
}

/// The dropped probabilities in the products' dtype: by ftl's CUDA kernel
/// where it applies ([`super::softmax_cuda`]), else by the composition.
// One arm without CUDA, two with it.
#[cfg_attr(not(feature = "cuda"), allow(clippy::infallible_destructuring_match))]
fn dropped_probabilities<I: Backend>(s: &State<I>) -> FloatTensor<I> {
    let scores = scores::<I>(s);
    let dropped = match &s.softmax {
        #[cfg(feature = "cuda")]
        Softmax::Kernels(draw) => {
            return super::softmax_cuda::forward::<I>(
                scores,
                s.bias.clone(),
                *draw,
                root::<I>(s),
                product_dtype::<I>(s),
            );
        }
        Softmax::Composition(dropped) => dropped,
    };
    let probs = probabilities::<I>(s, scores);
    to_product_dtype::<I>(s, apply_dropout::<I>(probs, dropped))
}

/// `t` (f32) in the products' dtype.
fn to_product_dtype<I: Backend>(s: &State<I>, t: FloatTensor<I>) -> FloatTensor<I> {
    if s.half {
        I::float_cast(t, FloatDType::BF16)
    } else {
        t
    }
}

/// `grad` summed over the dimensions where `shape` is 1.
fn sum_to<I: Backend>(mut grad: FloatTensor<I>, shape: &[usize]) -> FloatTensor<I> {
    for (dim, &size) in shape.iter().enumerate() {
        if size == 1 && grad.shape()[dim] != 1 {
            grad = I::float_sum_dim(grad, dim);
        }
    }
    grad
}

/// V's gradient, `Pᵈᵀ · grad`.
fn dv<I: Backend>(dropped: FloatTensor<I>, grad: FloatTensor<I>) -> FloatTensor<I> {
    I::float_matmul(I::float_swap_dims(dropped, 2, 3), grad)
}

/// ∂S/√d, the scores' gradient scaled for the products of Q's and K's
/// gradients, from that of the dropped probabilities (f32), and V's
/// gradient (from `grad`, the result's) when `want_v`. Registers the
/// bias's gradient on the way. By ftl's
/// CUDA kernel where it applies ([`super::softmax_cuda`]), which gives the
/// dropped probabilities for V's gradient in the same pass; else by the
/// composition.
// One arm without CUDA, two with it.
#[cfg_attr(not(feature = "cuda"), allow(clippy::infallible_destructuring_match))]
fn score_gradient<I: Backend>(
    s: &State<I>,
    grad: FloatTensor<I>,
    d_dropped: FloatTensor<I>,
    want_v: bool,
    bias: Option<NodeId>,
    grads: &mut Gradients,
) -> (FloatTensor<I>, Option<FloatTensor<I>>) {
    let root = root::<I>(s);
    let scores = scores::<I>(s);
    let dropped = match &s.softmax {
        #[cfg(feature = "cuda")]
        Softmax::Kernels(draw) => {
            let (scaled, dropped) = super::softmax_cuda::backward::<I>(
                scores,
                s.bias.clone(),
                *draw,
                d_dropped,
                root,
                want_v.then(|| product_dtype::<I>(s)),
            );
            if let Some(id) = bias {
                let unscaled = I::float_mul_scalar(scaled.clone(), root.into());
                grads.register::<I>(id, sum_to::<I>(unscaled, &s.bias.shape()));
            }
            return (scaled, dropped.map(|dropped| dv::<I>(dropped, grad)));
        }
        Softmax::Composition(dropped) => dropped,
    };
    let probs = probabilities::<I>(s, scores);
    let dropped_probs = apply_dropout::<I>(probs.clone(), dropped);
    let d_v = want_v.then(|| dv::<I>(to_product_dtype::<I>(s, dropped_probs), grad));
    let d_probs = apply_dropout::<I>(d_dropped, dropped);
    let row = I::float_sum_dim(I::float_mul(d_probs.clone(), probs.clone()), 3);
    let d_scores = I::float_mul(probs, I::float_sub(d_probs, row));
    if let Some(id) = bias {
        grads.register::<I>(id, sum_to::<I>(d_scores.clone(), &s.bias.shape()));
    }
    (I::float_div_scalar(d_scores, root.into()), d_v)
}

/// The gradients of Q, K, V and the bias from the result's.
#[derive(Debug)]
struct AttentionBackward;

impl<I: Backend> Backward<I, 4> for AttentionBackward {
    type State = State<I>;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [q_node, k_node, v_node, bias_node] = ops.parents;
        let grad = grads.consume::<I>(&ops.node);
        let want = [q_node.is_some(), k_node.is_some(), v_node.is_some()];
        let bias_id = bias_node.map(|node| node.id);
        let [dq, dk, dv] = input_gradients::<I>(ops.state, grad, want, bias_id, grads);
        for (node, d) in [(q_node, dq), (k_node, dk), (v_node, dv)] {
            if let (Some(node), Some(d)) = (node, d) {
                grads.register::<I>(node.id, d);
            }
        }
    }
}

/// The gradients of Q, K and V (those `want`ed, in their dtype) from the
/// result's, `grad`; the bias's is registered under `bias` on the way.
fn input_gradients<I: Backend>(
    s: State<I>,
    grad: FloatTensor<I>,
    [want_q, want_k, want_v]: [bool; 3],
    bias: Option<NodeId>,
    grads: &mut Gradients,
) -> [Option<FloatTensor<I>>; 3] {
    if !want_q && !want_k && bias.is_none() {
        let d_v = want_v.then(|| dv::<I>(dropped_probabilities::<I>(&s), grad));
        return [None, None, d_v];
    }
    let f32_products = s.half && s.products == HalfBackward::F32;
    let full = |t: FloatTensor<I>| I::float_cast(t, FloatDType::F32);
    let d_dropped = if f32_products {
        I::float_matmul(
            full(grad.clone()),
            I::float_swap_dims(full(s.v.clone()), 2, 3),
        )
    } else if s.half {
        full(I::float_matmul(
            grad.clone(),
            I::float_swap_dims(s.v.clone(), 2, 3),
        ))
    } else {
        I::float_matmul(grad.clone(), I::float_swap_dims(s.v.clone(), 2, 3))
    };
    let (mut d_scores, d_v) = score_gradient::<I>(&s, grad, d_dropped, want_v, bias, grads);
    // The products' inputs in the dtype they run in, and their results
    // back in the inputs' dtype.
    let (q, k) = if f32_products {
        (full(s.q), full(s.k))
    } else {
        (s.q, s.k)
    };
    if s.half && !f32_products {
        d_scores = I::float_cast(d_scores, FloatDType::BF16);
    }
    let back = |t: FloatTensor<I>| {
        if f32_products {
            I::float_cast(t, FloatDType::BF16)
        } else {
            t
        }
    };
    let d_k = want_k.then(|| {
        back(I::float_matmul(
            I::float_swap_dims(d_scores.clone(), 2, 3),
            q,
        ))
    });
    let d_q = want_q.then(|| back(I::float_matmul(d_scores, k)));
    [d_q, d_k, d_v]
}

/// How [`own_projected`]'s attention ran, and what its backward pass
/// keeps of it.
#[derive(Clone, Debug)]
enum Core<I: Backend> {
    /// The head split, then [`State`]'s operations.
    Attention(State<I>),
    /// ftl's attention kernels (`attend_cuda`), reading the product.
    #[cfg(feature = "cuda")]
    Fused(Fused<I>),
}

/// What the attention kernels' backward pass reads again.
#[cfg(feature = "cuda")]
#[derive(Clone, Debug)]
struct Fused<I: Backend> {
    inputs: super::attend_cuda::Inputs<I>,
    seq: usize,
    heads: usize,
    draw: Option<Seeded>,
}

/// What [`own_projected`]'s backward pass keeps: the attention's, x's
/// rows in the products' dtype and the packed weight.
#[derive(Clone, Debug)]
struct Projected<I: Backend> {
    core: Core<I>,
    /// x's rows in the products' dtype, when a weight trains.
    rows: Option<FloatTensor<I>>,
    packed: FloatTensor<I>,
    x_shape: [usize; 3],
    x_dtype: FloatDType,
    /// Each adapted part's scale.
    scales: [Option<f64>; 3],
}

/// The gradients of x, the three weights, the three biases, the
/// attention's bias and the adapters' updates from the result's.
#[derive(Debug)]
struct ProjectedBackward;

impl<I: Backend> Backward<I, 11> for ProjectedBackward {
    type State = Projected<I>;

    // One arm without CUDA, two with it.
    #[cfg_attr(not(feature = "cuda"), allow(clippy::infallible_destructuring_match))]
    fn backward(self, ops: Ops<Self::State, 11>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [
            x_node,
            wq,
            wk,
            wv,
            bq,
            bk,
            bv,
            bias_node,
            dq_node,
            dk_node,
            dv_node,
        ] = ops.parents;
        let grad = grads.consume::<I>(&ops.node);
        let s = ops.state;
        let bias_id = bias_node.map(|node| node.id);
        let ids = [&x_node, &wq, &wk, &wv, &bq, &bk, &bv].map(|n| n.as_ref().map(|n| n.id));
        let weights = [wq, wk, wv];
        let biases = [bq, bk, bv];
        // Only a present update's place counts (an absent one names x).
        let updates = [dq_node, dk_node, dv_node];
        let scales = [0, 1, 2].map(|t| s.scales[t].filter(|_| updates[t].is_some()));
        let any_weight = weights.iter().any(Option::is_some);
        let any_bias = biases.iter().any(Option::is_some);
        let any_update = scales.iter().any(Option::is_some);
        let attention = match s.core {
            Core::Attention(attention) => attention,
            #[cfg(feature = "cuda")]
            Core::Fused(fused) => {
                let tokens = I::float_swap_dims(grad, 1, 2);
                let bias_shape = fused.inputs.bias.shape();
                let g = super::attend_cuda::backward::<I>(
                    fused.inputs,
                    tokens,
                    fused.seq,
                    fused.heads,
                    fused.draw,
                    bias_id.is_some(),
                );
                if let (Some(id), Some(d_scores)) = (bias_id, g.scores) {
                    grads.register::<I>(id, sum_to::<I>(d_scores, &bias_shape));
                }
                for (node, update) in updates.iter().zip(g.updates) {
                    if let (Some(node), Some(update)) = (node, update) {
                        grads.register::<I>(node.id, update);
                    }
                }
                projection_gradients::<I>(g.dy, s.rows, s.packed, s.x_shape, s.x_dtype, ids, grads);
                return;
            }
        };
        if x_node.is_none() && !any_weight && !any_bias && !any_update {
            input_gradients::<I>(attention, grad, [false; 3], bias_id, grads);
            return;
        }
        let dtype = qkv::dtype(attention.half);
        let [Some(dq), Some(dk), Some(dv)] =
            input_gradients::<I>(attention, grad, [true; 3], bias_id, grads)
        else {
            unreachable!("all three gradients were asked for")
        };
        let dy = if any_update {
            let (dy, deltas) = qkv::merge_adapted::<I>([dq, dk, dv], dtype, scales);
            for (node, g) in updates.iter().zip(deltas) {
                if let (Some(node), Some(g)) = (node, g) {
                    grads.register::<I>(node.id, g);
                }
            }
            dy
        } else {
            qkv::merge::<I>([dq, dk, dv], dtype)
        };
        projection_gradients::<I>(dy, s.rows, s.packed, s.x_shape, s.x_dtype, ids, grads);
    }
}

/// `op(a) · op(b)` of 2-D tensors in their dtype, `op` transposing where
/// asked: through cuBLAS where it applies (`runtime::cublas`), else
/// burn's product.
fn product<I: Backend>(a: FloatTensor<I>, b: FloatTensor<I>, t: [bool; 2]) -> FloatTensor<I> {
    let dtype = a.dtype().into();
    product_in::<I>(a, b, t, dtype)
}

/// [`product`] written in `out`: cuBLAS writes it directly (an f32 result
/// of bf16 operands is not rounded to bf16 first); burn's product is cast.
fn product_in<I: Backend>(
    a: FloatTensor<I>,
    b: FloatTensor<I>,
    [ta, tb]: [bool; 2],
    out: FloatDType,
) -> FloatTensor<I> {
    #[cfg(feature = "cuda")]
    if crate::runtime::cublas::applies::<I>(&a) {
        return crate::runtime::cublas::matmul::<I>(a, b, [ta, tb], out.into());
    }
    let a = if ta { I::float_swap_dims(a, 0, 1) } else { a };
    let b = if tb { I::float_swap_dims(b, 0, 1) } else { b };
    qkv::cast::<I>(I::float_matmul(a, b), out)
}

/// The gradients of x, the three weights and the three biases (those with
/// a node here) from the product's, `dy` (`[rows, 3·width]`).
fn projection_gradients<I: Backend>(
    dy: FloatTensor<I>,
    rows: Option<FloatTensor<I>>,
    packed: FloatTensor<I>,
    x_shape: [usize; 3],
    x_dtype: FloatDType,
    [x_node, wq, wk, wv, bq, bk, bv]: [Option<NodeId>; 7],
    grads: &mut Gradients,
) {
    let weights = [wq, wk, wv];
    let biases = [bq, bk, bv];
    if biases.iter().any(Option::is_some) {
        let width = dy.shape()[1] / 3;
        let summed = I::float_sum_dim(qkv::cast::<I>(dy.clone(), FloatDType::F32), 0);
        let summed = I::float_reshape(summed, Shape::new([3 * width]));
        for (part, node) in biases.iter().enumerate() {
            if let Some(node) = node {
                let slice = [Slice::from(part * width..(part + 1) * width)];
                grads.register::<I>(*node, I::float_slice(summed.clone(), &slice));
            }
        }
    }
    if weights.iter().any(Option::is_some)
        && let Some(rows) = rows
    {
        let dw = product::<I>(rows, dy.clone(), [true, false]);
        for (node, g) in weights.iter().zip(qkv::unpack::<I>(dw)) {
            if let Some(node) = node {
                grads.register::<I>(*node, g);
            }
        }
    }
    if let Some(node) = x_node {
        // In x's dtype directly (f32 under bf16 products: no cast after).
        let dx = product_in::<I>(dy, packed, [false, true], x_dtype);
        let dx = I::float_reshape(dx, Shape::new(x_shape));
        grads.register::<I>(node, dx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::backend::cpu_device;
    use burn::tensor::Distribution;

    type Train = Autodiff<Cpu>;
    type Attention<'a> = dyn Fn(
            Tensor<Train, 4>,
            Tensor<Train, 4>,
            Tensor<Train, 4>,
            Tensor<Train, 4>,
        ) -> Tensor<Train, 4>
        + 'a;

    struct Case {
        half: bool,
        dropout: f64,
        /// MPNet's bias: per head and trained; otherwise BERT's padding
        /// mask, constant and broadcast over heads and queries.
        trained_bias: bool,
        /// Where the backward pass's products run under bf16.
        products: HalfBackward,
    }

    /// Values, and the gradients of q, k, v and the bias under an uneven
    /// loss, for the operation and for burn's composition, from the same
    /// inputs and the same random draws.
    fn both(case: &Case) -> [[Vec<f32>; 5]; 2] {
        let device = cpu_device();
        let (b, h, s, d) = (2, 3, 7, 8);
        let normal = |shape: [usize; 4]| {
            Tensor::<Cpu, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device)
        };
        let (q, k, v) = (
            normal([b, h, s, d]),
            normal([b, h, s, d]),
            normal([b, h, s, d]),
        );
        let bias = if case.trained_bias {
            normal([b, h, s, s])
        } else {
            // The last two keys of the second sequence are padding.
            let mut mask = vec![0.0f32; b * s];
            mask[2 * s - 2..].fill(f32::MIN);
            Tensor::<Cpu, 4>::from_data(TensorData::new(mask, [b, 1, 1, s]), &device)
                .expand([b as i64, -1, s as i64, s as i64])
        };
        let weights = normal([b, h, s, d]);
        let dropout = Dropout::new(case.dropout);
        // The same dropout draws for both, whatever other tests draw meanwhile.
        crate::runtime::model::dropout::tests::FIXED_DRAWS.set(Some(5));
        let run = |f: &Attention<'_>| {
            let cast = |t: &Tensor<Cpu, 4>| {
                let t = Tensor::<Train, 4>::from_inner(t.clone()).require_grad();
                let used = if case.half {
                    to_half(t.clone())
                } else {
                    t.clone()
                };
                (t, used)
            };
            let ((q0, q1), (k0, k1), (v0, v1)) = (cast(&q), cast(&k), cast(&v));
            let b0 = Tensor::<Train, 4>::from_inner(bias.clone());
            let b0 = if case.trained_bias {
                b0.require_grad()
            } else {
                b0
            };
            let mut y = f(q1, k1, v1, b0.clone());
            if case.half {
                y = to_full(y);
            }
            let loss = (y.clone() * Tensor::from_inner(weights.clone())).sum();
            let grads = loss.backward();
            let flat = |t: Tensor<Cpu, 4>| t.into_data().to_vec::<f32>().unwrap();
            let grad = |t: &Tensor<Train, 4>| t.grad(&grads).map(flat).unwrap_or_default();
            [flat(y.inner()), grad(&q0), grad(&k0), grad(&v0), grad(&b0)]
        };
        let ours =
            run(&|q, k, v, b| own_backward::<Cpu>(q, k, v, b, &dropout, case.half, case.products));
        let burns = run(&|q, k, v, b| composed(q, k, v, b, &dropout, case.half));
        [ours, burns]
    }

    fn check(case: Case) {
        let [ours, burns] = both(&case);
        assert_eq!(ours[0], burns[0], "the forward pass is burn's, bitwise");
        // bf16 products round the gradients to 8 bits of mantissa; the two
        // computations round at different places.
        let tolerance = if case.half { 2e-2 } else { 1e-5 };
        let names = ["q", "k", "v", "bias"];
        for (k, name) in names.iter().enumerate().map(|(i, n)| (i + 1, n)) {
            if k == 4 && !case.trained_bias {
                assert!(ours[k].is_empty(), "a constant bias gets no gradient");
                continue;
            }
            let (a, b) = (&ours[k], &burns[k]);
            assert_eq!(a.len(), b.len(), "∂{name}");
            let diff: f32 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
            let norm: f32 = b.iter().map(|y| y * y).sum();
            assert!(norm > 1e-6, "∂{name} is not zero");
            assert!(
                (diff / norm).sqrt() < tolerance,
                "∂{name}: relative error {}",
                (diff / norm).sqrt()
            );
        }
    }

    #[test]
    fn same_values_and_gradients_as_burns_composition_in_f32() {
        check(Case {
            half: false,
            dropout: 0.0,
            trained_bias: false,
            products: HalfBackward::Bf16,
        });
    }

    #[test]
    fn with_dropout_the_same_draws_values_and_gradients() {
        check(Case {
            half: false,
            dropout: 0.3,
            trained_bias: false,
            products: HalfBackward::Bf16,
        });
    }

    #[test]
    fn a_trained_bias_gets_the_same_gradient() {
        check(Case {
            half: false,
            dropout: 0.1,
            trained_bias: true,
            products: HalfBackward::Bf16,
        });
    }

    #[test]
    fn bf16_products_agree_with_burns_composition() {
        check(Case {
            half: true,
            dropout: 0.1,
            trained_bias: true,
            products: HalfBackward::Bf16,
        });
    }

    #[test]
    fn bf16_inputs_with_f32_backward_products_agree_with_burns_composition() {
        check(Case {
            half: true,
            dropout: 0.1,
            trained_bias: true,
            products: HalfBackward::F32,
        });
    }

    /// The uneven loss `sum(y · weights)` (y taken to f32 first) run
    /// backward: y's values and the gradients.
    fn uneven_loss(
        y: Tensor<Train, 4>,
        half: bool,
        weights: &[f32],
    ) -> (
        Vec<f32>,
        <Train as burn::tensor::backend::AutodiffBackend>::Gradients,
    ) {
        let y = if half { to_full(y) } else { y };
        let target = TensorData::new(weights.to_vec(), y.dims());
        let loss = (y.clone()
            * Tensor::from_inner(Tensor::<Cpu, 4>::from_data(target, &cpu_device())))
        .sum();
        (flat(y.inner().flatten(0, 3)), loss.backward())
    }

    fn flat(t: Tensor<Cpu, 1>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    /// Values, and the gradients of x, the three weights, the three biases
    /// and the attention's bias, for [`own_projected`] and for three
    /// projections (as `projection::trained_rows` computes them) split into
    /// heads and given to [`own_backward`], from the same inputs and draws.
    fn projected_both(half: bool) -> [Vec<Vec<f32>>; 2] {
        let device = cpu_device();
        let (b, h, s, d) = (2, 3, 7, 8);
        let width = h * d;
        let normal = |shape: Vec<usize>| {
            Tensor::<Cpu, 1>::random(
                [shape.iter().product::<usize>()],
                Distribution::Normal(0.0, 1.0),
                &device,
            )
            .into_data()
            .to_vec::<f32>()
            .unwrap()
        };
        let x = normal(vec![b, s, width]);
        let ws: Vec<Vec<f32>> = (0..3).map(|_| normal(vec![width, width])).collect();
        let bs: Vec<Vec<f32>> = (0..3).map(|_| normal(vec![width])).collect();
        let bias = normal(vec![b, h, s, s]);
        let weights = normal(vec![b, h, s, d]);
        let dropout = Dropout::new(0.1);
        crate::runtime::model::dropout::tests::FIXED_DRAWS.set(Some(9));
        fn leaf<const D: usize>(v: &[f32], shape: [usize; D]) -> Tensor<Train, D> {
            Tensor::<Train, D>::from_data(TensorData::new(v.to_vec(), shape), &cpu_device())
                .require_grad()
        }
        let run = |fused: bool| {
            let x = leaf(&x, [b, s, width]);
            let w: Vec<Tensor<Train, 2>> = ws.iter().map(|w| leaf(w, [width, width])).collect();
            let bb: Vec<Tensor<Train, 1>> = bs.iter().map(|v| leaf(v, [width])).collect();
            let att_bias = leaf(&bias, [b, h, s, s]);
            let y = if fused {
                let projections = Projections {
                    input_copy: None,
                    weights: [w[0].clone(), w[1].clone(), w[2].clone()],
                    biases: [bb[0].clone(), bb[1].clone(), bb[2].clone()],
                    deltas: [None, None, None],
                };
                own_projected::<Cpu>(
                    x.clone(),
                    projections,
                    h,
                    att_bias.clone(),
                    &dropout,
                    half,
                    HalfBackward::F32,
                )
            } else {
                let used = if half { to_half(x.clone()) } else { x.clone() };
                let heads = |part: usize| {
                    let weight = if half {
                        to_half(w[part].clone())
                    } else {
                        w[part].clone()
                    };
                    let mut out = used.clone().reshape([b * s, width]).matmul(weight);
                    if half {
                        out = to_full(out);
                    }
                    let out = (out + bb[part].clone().unsqueeze())
                        .reshape([b, s, h, d])
                        .swap_dims(1, 2);
                    if half { to_half(out) } else { out }
                };
                let (q, k, v) = (heads(0), heads(1), heads(2));
                own_backward::<Cpu>(q, k, v, att_bias.clone(), &dropout, half, HalfBackward::F32)
            };
            let (values, grads) = uneven_loss(y, half, &weights);
            let mut out = vec![values];
            out.push(flat(x.grad(&grads).unwrap().flatten(0, 2)));
            for w in &w {
                out.push(flat(w.grad(&grads).unwrap().flatten(0, 1)));
            }
            for b in &bb {
                out.push(flat(b.grad(&grads).unwrap()));
            }
            out.push(flat(att_bias.grad(&grads).unwrap().flatten(0, 3)));
            out
        };
        [run(true), run(false)]
    }

    fn check_projected(half: bool) {
        let [fused, three] = projected_both(half);
        // In f32 the sums of products are the same sums, in another order;
        // in bf16 the gradients are rounded at different places (∂x in one
        // rounding of one sum, not three).
        let tolerance = if half { 2e-2 } else { 1e-5 };
        let names = [
            "value", "x", "W_q", "W_k", "W_v", "b_q", "b_k", "b_v", "bias",
        ];
        let square = |v: &[f32]| v.iter().map(|y| y * y).sum::<f32>();
        for (name, (a, b)) in names.iter().zip(fused.iter().zip(&three)) {
            assert_eq!(a.len(), b.len(), "{name}");
            let diff: f32 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
            // A key bias shifts each query's scores by a constant, which the
            // softmax removes: ∂b_k is zero but for rounding. Measured
            // against ∂b_q instead.
            let norm = if *name == "b_k" {
                square(&three[5])
            } else {
                square(b)
            };
            assert!(norm > 1e-6, "{name} is not zero");
            let relative = (diff / norm).sqrt();
            assert!(relative < tolerance, "{name}: relative error {relative}");
        }
    }

    #[test]
    fn one_product_for_q_k_v_gives_three_projections_values_and_gradients() {
        check_projected(false);
    }

    #[test]
    fn one_product_for_q_k_v_agrees_with_three_under_bf16() {
        check_projected(true);
    }

    /// Values, and the gradients of x, the adapters' updates of q and v and
    /// the attention's bias, for [`own_projected`] with frozen weights and
    /// biases and updates on q and v (LoRA's case), and for the layers one
    /// by one as `projection` computes them (the update in f32, times its
    /// scale, added after the bias), from the same inputs and draws.
    fn adapted_both(half: bool) -> [Vec<Vec<f32>>; 2] {
        let device = cpu_device();
        let (b, h, s, d) = (2, 3, 7, 8);
        let width = h * d;
        let normal = |n: usize| {
            Tensor::<Cpu, 1>::random([n], Distribution::Normal(0.0, 1.0), &device)
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        };
        let x = normal(b * s * width);
        let ws: Vec<Vec<f32>> = (0..3).map(|_| normal(width * width)).collect();
        let bs: Vec<Vec<f32>> = (0..3).map(|_| normal(width)).collect();
        let updates: Vec<Vec<f32>> = (0..2).map(|_| normal(b * s * width)).collect();
        let bias = normal(b * h * s * s);
        let weights = normal(b * h * s * d);
        let scales = [0.5, 2.0];
        let dropout = Dropout::new(0.1);
        crate::runtime::model::dropout::tests::FIXED_DRAWS.set(Some(9));
        let data = |v: &[f32], shape: Vec<usize>| TensorData::new(v.to_vec(), shape);
        let half_if = |t: Tensor<Train, 2>| if half { to_half(t) } else { t };
        let run = |fused: bool| {
            let x =
                Tensor::<Train, 3>::from_data(data(&x, vec![b, s, width]), &device).require_grad();
            // Frozen, the base kept in the products' dtype as LoRA keeps it.
            let w: Vec<Tensor<Train, 2>> = ws
                .iter()
                .map(|w| half_if(Tensor::from_data(data(w, vec![width, width]), &device)))
                .collect();
            let bb: Vec<Tensor<Train, 1>> = bs
                .iter()
                .map(|v| Tensor::from_data(data(v, vec![width]), &device))
                .collect();
            let u: Vec<Tensor<Train, 2>> = updates
                .iter()
                .map(|v| {
                    Tensor::<Train, 2>::from_data(data(v, vec![b * s, width]), &device)
                        .require_grad()
                })
                .collect();
            let att_bias = Tensor::<Train, 4>::from_data(data(&bias, vec![b, h, s, s]), &device)
                .require_grad();
            let used = [Some(0), None, Some(1)];
            let y = if fused {
                let projections = Projections {
                    input_copy: None,
                    weights: [w[0].clone(), w[1].clone(), w[2].clone()],
                    biases: [bb[0].clone(), bb[1].clone(), bb[2].clone()],
                    deltas: used.map(|i| i.map(|i| (half_if(u[i].clone()), scales[i]))),
                };
                own_projected::<Cpu>(
                    x.clone(),
                    projections,
                    h,
                    att_bias.clone(),
                    &dropout,
                    half,
                    HalfBackward::F32,
                )
            } else {
                let xin = if half { to_half(x.clone()) } else { x.clone() };
                let heads = |part: usize| {
                    let mut out = xin.clone().reshape([b * s, width]).matmul(w[part].clone());
                    if half {
                        out = to_full(out);
                    }
                    out = out + bb[part].clone().unsqueeze();
                    if let Some(i) = used[part] {
                        let update = half_if(u[i].clone());
                        let update = if half { to_full(update) } else { update };
                        out = out + update.mul_scalar(scales[i]);
                    }
                    let out = out.reshape([b, s, h, d]).swap_dims(1, 2);
                    if half { to_half(out) } else { out }
                };
                let (q, k, v) = (heads(0), heads(1), heads(2));
                own_backward::<Cpu>(q, k, v, att_bias.clone(), &dropout, half, HalfBackward::F32)
            };
            let (values, grads) = uneven_loss(y, half, &weights);
            vec![
                values,
                flat(x.grad(&grads).unwrap().flatten(0, 2)),
                flat(u[0].grad(&grads).unwrap().flatten(0, 1)),
                flat(u[1].grad(&grads).unwrap().flatten(0, 1)),
                flat(att_bias.grad(&grads).unwrap().flatten(0, 3)),
            ]
        };
        [run(true), run(false)]
    }

    fn check_adapted(half: bool) {
        let [fused, layers] = adapted_both(half);
        // The updates' gradients are the same roundings either way; ∂x is
        // one sum where the layers make three (rounded apart under bf16).
        let tolerance = if half { 2e-2 } else { 1e-5 };
        for (name, (a, b)) in ["value", "x", "update of q", "update of v", "bias"]
            .iter()
            .zip(fused.iter().zip(&layers))
        {
            assert_eq!(a.len(), b.len(), "{name}");
            let diff: f32 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
            let norm: f32 = b.iter().map(|y| y * y).sum();
            assert!(norm > 1e-6, "{name} is not zero");
            let relative = (diff / norm).sqrt();
            assert!(relative < tolerance, "{name}: relative error {relative}");
        }
    }

    #[test]
    fn one_product_for_frozen_q_k_v_with_adapters_gives_the_layers_values_and_gradients() {
        check_adapted(false);
    }

    #[test]
    fn one_product_for_frozen_q_k_v_with_adapters_agrees_under_bf16() {
        check_adapted(true);
    }

    #[test]
    fn inference_backends_use_the_composition() {
        let device = cpu_device();
        let t = |seed: u64| {
            <Cpu as Backend>::seed(&device, seed);
            Tensor::<Cpu, 4>::random([1, 2, 5, 4], Distribution::Normal(0.0, 1.0), &device)
        };
        let (q, k, v) = (t(1), t(2), t(3));
        let bias = Tensor::<Cpu, 4>::zeros([1, 1, 5, 5], &device);
        let dropout = Dropout::new(0.5);
        let a = attention(
            q.clone(),
            k.clone(),
            v.clone(),
            bias.clone(),
            &dropout,
            false,
        );
        let b = composed(q, k, v, bias, &dropout, false);
        assert_eq!(a.into_data(), b.into_data(), "no dropout, same values");
    }
}
