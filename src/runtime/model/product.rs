//! A trained layer's bf16 product on CUDA through cuBLAS
//! (`runtime::cublas`), as an autodiff operation of its own: `x · W` of bf16
//! rows and a bf16 weight, accumulated and written in f32.
//!
//! burn's product writes bf16, which the layer then widens to f32 for its
//! bias (burn fuses the two into its matrix kernel). cuBLAS writes f32
//! directly, so the result is not rounded to bf16 first. The backward pass
//! is burn's, in cuBLAS's products: the result's gradient cast to bf16
//! once (unless it comes in bf16), `∂x = ∂y · Wᵀ` and `∂W = xᵀ · ∂y`, both bf16 (the dtypes of x and
//! W). A frozen weight (LoRA's base) gets no gradient, and its input is
//! not kept.
//!
//! [`full_rows`] is the same product of an f32 x read in bf16: the cast is
//! made inside the operation (or taken from the LayerNorm before, which
//! writes x in both dtypes), and ∂x is written in f32 by cuBLAS.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, FloatDType, TensorMetadata, TensorPrimitive};

use crate::runtime::cublas;

/// `x · w` in f32 for bf16 `x` `[rows, d_in]` and `w` `[d_in, d_out]`, or
/// `None` where cuBLAS does not take it.
pub(crate) fn half_rows<I: Backend>(
    x: Tensor<Autodiff<I>, 2>,
    w: Tensor<Autodiff<I>, 2>,
) -> Option<Tensor<Autodiff<I>, 2>> {
    let x = x.into_primitive().tensor();
    if !cublas::applies::<I>(&x.primitive) {
        return None;
    }
    let half = x.primitive.clone();
    Some(rows_of(x, half, w, DType::BF16))
}

/// `x · w` in f32 for f32 `x` `[rows, d_in]`, read as bf16, and a bf16
/// `w` `[d_in, d_out]`: [`half_rows`] of `x` cast to bf16, where the cast
/// is no operation of autodiff's. `copy` is x in bf16 already (a constant,
/// `LayerNorm::forward_residual_copied`); without it x is cast here. x's
/// gradient is written by cuBLAS in f32, where the cast's backward pass
/// was a launch of its own after a bf16 one. `None` where cuBLAS does not
/// take the product.
pub(crate) fn full_rows<I: Backend>(
    x: Tensor<Autodiff<I>, 2>,
    copy: Option<Tensor<Autodiff<I>, 2>>,
    w: Tensor<Autodiff<I>, 2>,
) -> Option<Tensor<Autodiff<I>, 2>> {
    let x = x.into_primitive().tensor();
    if x.primitive.dtype() != DType::F32 {
        return None;
    }
    let half = match copy {
        Some(c) => c.into_primitive().tensor().primitive,
        None => I::float_cast(x.primitive.clone(), FloatDType::BF16),
    };
    if !cublas::applies::<I>(&half) || half.shape() != x.primitive.shape() {
        return None;
    }
    Some(rows_of(x, half, w, DType::F32))
}

/// The operation of [`half_rows`] and [`full_rows`]: `half · w` (`half` is
/// x's values in bf16) with x's gradient in `dx`.
fn rows_of<I: Backend>(
    x: FloatTensor<Autodiff<I>>,
    half: FloatTensor<I>,
    w: Tensor<Autodiff<I>, 2>,
    dx: DType,
) -> Tensor<Autodiff<I>, 2> {
    // x is kept for W's gradient only, W for x's only: a frozen base
    // keeps no copy of its input.
    let w = w.into_primitive().tensor();
    // Tracked: a leaf that requires a gradient, or computed from one.
    let keep = [&w, &x].map(|t| !t.node.requirement.is_none());
    let out = cublas::matmul::<I>(
        half.clone(),
        w.primitive.clone(),
        [false, false],
        DType::F32,
    );
    let out = match (RowsBackward { dx })
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            (keep[0].then_some(half), keep[1].then_some(w.primitive)),
            out,
        ),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// The gradients of x (in `dx`, x's dtype) and W from the result's.
#[derive(Debug)]
struct RowsBackward {
    dx: DType,
}

impl<I: Backend> Backward<I, 2> for RowsBackward {
    type State = (Option<FloatTensor<I>>, Option<FloatTensor<I>>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, w_node] = ops.parents;
        // Cast unless it comes in bf16 (`LayerNorm::forward_residual_biased`).
        let grad = grads.consume::<I>(&ops.node);
        let grad = if grad.dtype() == DType::BF16 {
            grad
        } else {
            I::float_cast(grad, FloatDType::BF16)
        };
        let (x, w) = ops.state;
        if let (Some(node), Some(x)) = (w_node, x) {
            let dw = cublas::matmul::<I>(x, grad.clone(), [true, false], DType::BF16);
            grads.register::<I>(node.id, dw);
        }
        if let (Some(node), Some(w)) = (x_node, w) {
            let dx = cublas::matmul::<I>(grad, w, [false, true], self.dx);
            grads.register::<I>(node.id, dx);
        }
    }
}
