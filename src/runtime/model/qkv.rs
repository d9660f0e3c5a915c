//! The query, key and value projections of a trained attention block as
//! one product (`super::attention_core::projected`): the three weights side
//! by side, `x · [W_q | W_k | W_v]`, and the product's columns split into
//! heads.
//!
//! Four steps move the tensors between the two layouts, each one kernel on
//! CUDA ([`super::qkv_cuda`]) and a composition of tensor operations
//! elsewhere:
//!
//! | step | from | to |
//! | --- | --- | --- |
//! | [`pack`] | three `[d_in, d]` weights | `[d_in, 3d]`, in the products' dtype |
//! | [`split`] | the product `[batch·seq, 3d]` and the three biases `[d]` | q, k, v `[batch, heads, seq, d / heads]`, biases added (in f32) |
//! | [`merge`] | the gradients of q, k, v | the product's gradient `[batch·seq, 3d]` |
//! | [`unpack`] | a `[d_in, 3d]` gradient | three `[d_in, d]` f32 gradients |
//!
//! With LoRA adapters on some of the three (their bases frozen),
//! [`split_adapted`] also adds each adapter's update `[batch·seq, d]` times
//! its scale, in f32 after the bias, and [`merge_adapted`] also gives each
//! update's gradient: the same additions and roundings as the layers one by
//! one (`super::projection`), in one kernel each way on CUDA.

use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, FloatDType, Scalar, Slice, TensorMetadata};

/// bf16 when `half`, else f32.
pub(crate) fn dtype(half: bool) -> FloatDType {
    if half {
        FloatDType::BF16
    } else {
        FloatDType::F32
    }
}

/// `t` in `dtype`, cast only when it is not already.
pub(crate) fn cast<I: Backend>(t: FloatTensor<I>, dtype: FloatDType) -> FloatTensor<I> {
    if t.dtype() == DType::from(dtype) {
        t
    } else {
        I::float_cast(t, dtype)
    }
}

/// `[W_q | W_k | W_v]` `[d_in, 3d]` in `dtype`, from three `[d_in, d]`.
pub(crate) fn pack<I: Backend>(weights: [FloatTensor<I>; 3], dtype: FloatDType) -> FloatTensor<I> {
    #[cfg(feature = "cuda")]
    if super::qkv_cuda::applies::<I>() {
        return super::qkv_cuda::pack::<I>(weights, dtype.into());
    }
    I::float_cat(weights.map(|w| cast::<I>(w, dtype)).to_vec(), 1)
}

/// The three `[d_in, d]` f32 gradients of a `[d_in, 3d]` one.
pub(crate) fn unpack<I: Backend>(grad: FloatTensor<I>) -> [FloatTensor<I>; 3] {
    #[cfg(feature = "cuda")]
    if super::qkv_cuda::applies::<I>() {
        return super::qkv_cuda::unpack::<I>(grad);
    }
    let shape = grad.shape();
    let (rows, d) = (shape[0], shape[1] / 3);
    [0, 1, 2].map(|part| {
        let slices = [Slice::from(0..rows), Slice::from(part * d..(part + 1) * d)];
        cast::<I>(I::float_slice(grad.clone(), &slices), FloatDType::F32)
    })
}

/// q, k, v `[batch, heads, seq, d / heads]` in `dtype` from the product
/// `y` `[batch·seq, 3d]`, with each part's bias `[d]` added in f32.
pub(crate) fn split<I: Backend>(
    y: FloatTensor<I>,
    biases: [FloatTensor<I>; 3],
    batch: usize,
    heads: usize,
    dtype: FloatDType,
) -> [FloatTensor<I>; 3] {
    #[cfg(feature = "cuda")]
    if super::qkv_cuda::applies::<I>() {
        return super::qkv_cuda::split::<I>(y, biases, batch, heads, dtype.into());
    }
    // The same composition, with no update.
    split_adapted::<I>(y, biases, [None, None, None], batch, heads, dtype)
}

/// The product's gradient `[batch·seq, 3d]` in `dtype` from those of q, k
/// and v `[batch, heads, seq, d / heads]`.
pub(crate) fn merge<I: Backend>(grads: [FloatTensor<I>; 3], dtype: FloatDType) -> FloatTensor<I> {
    #[cfg(feature = "cuda")]
    if super::qkv_cuda::applies::<I>() {
        return super::qkv_cuda::merge::<I>(grads, dtype.into());
    }
    cast::<I>(I::float_cat(grads.map(rows::<I>).to_vec(), 1), dtype)
}

/// A part `[batch, heads, seq, d / heads]` as token rows `[batch·seq, d]`.
fn rows<I: Backend>(part: FloatTensor<I>) -> FloatTensor<I> {
    let shape = part.shape();
    let (batch, heads, seq, head_dim) = (shape[0], shape[1], shape[2], shape[3]);
    let tokens = I::float_swap_dims(part, 1, 2);
    I::float_reshape(tokens, Shape::new([batch * seq, heads * head_dim]))
}

/// [`split`] with adapters' updates: each present `(update, scale)` (the
/// update `[batch·seq, d]` in the product's dtype) is added to its part
/// times its scale, in f32, after the bias.
pub(crate) fn split_adapted<I: Backend>(
    y: FloatTensor<I>,
    biases: [FloatTensor<I>; 3],
    deltas: [Option<(FloatTensor<I>, f64)>; 3],
    batch: usize,
    heads: usize,
    dtype: FloatDType,
) -> [FloatTensor<I>; 3] {
    #[cfg(feature = "cuda")]
    if super::qkv_cuda::applies::<I>() {
        return super::qkv_cuda::split_adapted::<I>(y, biases, deltas, batch, heads, dtype.into());
    }
    let shape = y.shape();
    let (rows, d) = (shape[0], shape[1] / 3);
    let seq = rows / batch;
    let y = cast::<I>(y, FloatDType::F32);
    let mut part = 0;
    let mut deltas = deltas.into_iter();
    biases.map(|bias| {
        let slices = [Slice::from(0..rows), Slice::from(part * d..(part + 1) * d)];
        part += 1;
        let columns = I::float_slice(y.clone(), &slices);
        let mut sum = I::float_add(columns, I::float_reshape(bias, Shape::new([1, d])));
        if let Some((delta, scale)) = deltas.next().flatten() {
            let delta = cast::<I>(delta, FloatDType::F32);
            sum = I::float_add(sum, I::float_mul_scalar(delta, Scalar::Float(scale)));
        }
        let split = I::float_reshape(sum, Shape::new([batch, seq, heads, d / heads]));
        cast::<I>(I::float_swap_dims(split, 1, 2), dtype)
    })
}

/// [`merge`], and for each part with a scale the gradient of its adapter's
/// update `[batch·seq, d]` in `dtype`: the part's gradient as rows, times
/// the scale in f32.
pub(crate) fn merge_adapted<I: Backend>(
    grads: [FloatTensor<I>; 3],
    dtype: FloatDType,
    scales: [Option<f64>; 3],
) -> (FloatTensor<I>, [Option<FloatTensor<I>>; 3]) {
    #[cfg(feature = "cuda")]
    if super::qkv_cuda::applies::<I>() {
        return super::qkv_cuda::merge_adapted::<I>(grads, dtype.into(), scales);
    }
    let mut parts = grads.clone().into_iter();
    let deltas = scales.map(|scale| {
        let g = parts.next().expect("three gradients");
        scale.map(|scale| {
            let rows = cast::<I>(rows::<I>(g), FloatDType::F32);
            cast::<I>(I::float_mul_scalar(rows, Scalar::Float(scale)), dtype)
        })
    });
    (merge::<I>(grads, dtype), deltas)
}
