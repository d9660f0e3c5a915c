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
    // x is kept for W's gradient only, W for x's only: a frozen base
    // keeps no copy of its input.
    let x = x.into_primitive().tensor();
    if !cublas::applies::<I>(&x.primitive) {
        return None;
    }
    let w = w.into_primitive().tensor();
    // Tracked: a leaf that requires a gradient, or computed from one.
    let keep = [&w, &x].map(|t| !t.node.requirement.is_none());
    let out = cublas::matmul::<I>(
        x.primitive.clone(),
        w.primitive.clone(),
        [false, false],
        DType::F32,
    );
    let out = match RowsBackward
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            (
                keep[0].then_some(x.primitive),
                keep[1].then_some(w.primitive),
            ),
            out,
        ),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(Tensor::from_primitive(TensorPrimitive::Float(out)))
}

/// The gradients of x and W from the result's.
#[derive(Debug)]
struct RowsBackward;

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
            let dx = cublas::matmul::<I>(grad, w, [false, true], DType::BF16);
            grads.register::<I>(node.id, dx);
        }
    }
}
