//! LayerNorm's forward and backward passes as ftl's own CUDA kernels, each
//! one operation of burn's fusion stream (`fusion_op`).
//!
//! The composition in [`super::layer_norm`] registers eleven tensor
//! operations for the forward pass and fifteen for the backward pass, among
//! them five row and column reductions, and every one costs burn's fusion
//! thread time, which is what bounds a training step on CUDA (BENCHMARKS.md,
//! "Where the host time goes"). Here the forward pass is one operation (one
//! kernel) and the backward pass one operation (three kernels). They compute
//! the same formulas in f32:
//!
//! ```text
//! forward:   μ = mean x    σ = √(mean (x − μ)² + ε)    x̂ = (x − μ) / σ    y = γ·x̂ + β
//! backward:  ∂x = (γg − mean(γg) − x̂·mean(γg·x̂)) / σ    ∂γ = Σ g·x̂    ∂β = Σ g
//! ```
//!
//! One warp handles one row (a token's features): each lane sums a strided
//! share and `plane_sum` adds the shares. The per-feature sums of the
//! backward pass run over fixed chunks of rows and then over the chunks, so
//! the summation order, and the result, is the same on every run.
//!
//! The same kernels end a residual block, `LayerNorm(dropout(a) + residual)`
//! ([`forward_sum`], for `LayerNorm::forward_residual`): x is made where the
//! forward kernel reads it, the dropout drawn from its seed
//! (`super::dropout`), and the backward kernel also writes a's gradient,
//! `∂x ⊙ M / keep`, drawing the same mask again. Nothing more is kept.
//! With a bias (`LayerNorm::forward_residual_biased`, after LoRA's frozen
//! output projections), the forward kernel adds it to `a` first, and the
//! backward kernel writes a's gradient in bf16, the dtype the product's
//! backward pass reads: the addition and the cast were a launch each.
//!
//! [`applies`] says when they are used: on ftl's CUDA backend (fused, or
//! the `unfused` build), with every tensor in f32. `bench/layer_norm_check.rs` checks them against the
//! composition on the CPU.

use std::any::TypeId;

use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, TensorMetadata};
use cubecl::prelude::{CubeCount, CubeDim};

use crate::runtime::backend::{Gpu, same_type};
use crate::runtime::fusion_op::{
    Cube, Kernels, Prim, Runtime, contiguous, empty, empty_f32, launch_typed,
};
use crate::runtime::model::dropout::Seeded;
use crate::runtime::model::dropout_cuda::KernelDraw;

/// Lanes of a warp: one row's share each.
const LANES: u32 = 32;
/// Rows (warps) per cube.
const ROWS_PER_CUBE: u32 = 8;
/// Rows each thread of the per-feature sums adds up before the sum over
/// chunks.
const CHUNK_ROWS: usize = 16;
/// Threads per cube of the per-feature sums.
const COLUMN_CUBE: u32 = 256;

mod kernels {
    use crate::runtime::model::dropout_cuda::kernels::{Draw, dropped};
    use cubecl::prelude::*;

    /// The normalised input at `index` (feature `column`): `a`, or
    /// `dropout(a) + residual`, with `bias` added to `a` first when
    /// `biased`.
    #[allow(clippy::too_many_arguments)]
    #[cube]
    fn input(
        a: &Array<f32>,
        residual: &Array<f32>,
        bias: &Array<f32>,
        index: usize,
        column: usize,
        draw: &Draw,
        #[comptime] add: bool,
        #[comptime] biased: bool,
        #[comptime] dropout: bool,
    ) -> f32 {
        let mut v = a[index];
        if biased {
            v += bias[column];
        }
        let mut x = dropped(v, index, draw, dropout);
        if add {
            x += residual[index];
        }
        x
    }

    /// One row per warp: `normalized`, `y`, and the row's `deviation`, of
    /// `a` or (with `add`) of `dropout(a) + residual`; with `biased`, `a`
    /// is `a + bias` (a bias per feature).
    /// With `copy`, `y` is also written in `H` to `y_copy` (bf16 for the
    /// next product).
    #[allow(clippy::too_many_arguments)]
    #[cube(launch_unchecked)]
    pub(super) fn forward<H: Float>(
        a: &Array<f32>,
        residual: &Array<f32>,
        bias: &Array<f32>,
        gamma: &Array<f32>,
        beta: &Array<f32>,
        y: &mut Array<f32>,
        y_copy: &mut Array<H>,
        normalized: &mut Array<f32>,
        deviation: &mut Array<f32>,
        seed: u32,
        threshold: u32,
        inv_keep: f32,
        rows: usize,
        width: usize,
        inv_width: f32,
        epsilon: f32,
        #[comptime] add: bool,
        #[comptime] biased: bool,
        #[comptime] dropout: bool,
        #[comptime] copy: bool,
        #[define(H)] _copy_dtype: StorageType,
    ) {
        let draw = Draw {
            seed,
            threshold,
            inv_keep,
        };
        let row = CUBE_POS_X as usize * CUBE_DIM_Y as usize + UNIT_POS_Y as usize;
        if row < rows {
            let lane = UNIT_POS_X as usize;
            let lanes = CUBE_DIM_X as usize;
            let start = row * width;
            let mut total = f32::new(0.0);
            let mut i = lane;
            loop {
                if i >= width {
                    break;
                }
                total += input(a, residual, bias, start + i, i, &draw, add, biased, dropout);
                i += lanes;
            }
            let mean = plane_sum(total) * inv_width;
            let mut squares = f32::new(0.0);
            i = lane;
            loop {
                if i >= width {
                    break;
                }
                let c = input(a, residual, bias, start + i, i, &draw, add, biased, dropout) - mean;
                squares += c * c;
                i += lanes;
            }
            let sigma = f32::sqrt(plane_sum(squares) * inv_width + epsilon);
            i = lane;
            loop {
                if i >= width {
                    break;
                }
                let n = (input(a, residual, bias, start + i, i, &draw, add, biased, dropout)
                    - mean)
                    / sigma;
                normalized[start + i] = n;
                let out = n * gamma[i] + beta[i];
                y[start + i] = out;
                if copy {
                    y_copy[start + i] = H::cast_from(out);
                }
                i += lanes;
            }
            if lane == 0 {
                deviation[row] = sigma;
            }
        }
    }

    /// One row per warp: the input's gradient, and (with `write_a`) the
    /// gradient of the dropout's input, `∂x ⊙ M / keep` (`∂x` without
    /// `dropout`), in `D`.
    #[allow(clippy::too_many_arguments)]
    #[cube(launch_unchecked)]
    pub(super) fn backward_input<D: Float>(
        grad: &Array<f32>,
        normalized: &Array<f32>,
        deviation: &Array<f32>,
        gamma: &Array<f32>,
        dx: &mut Array<f32>,
        da: &mut Array<D>,
        seed: u32,
        threshold: u32,
        inv_keep: f32,
        rows: usize,
        width: usize,
        inv_width: f32,
        #[comptime] dropout: bool,
        #[comptime] write_a: bool,
        #[define(D)] _dtype: StorageType,
    ) {
        let draw = Draw {
            seed,
            threshold,
            inv_keep,
        };
        let row = CUBE_POS_X as usize * CUBE_DIM_Y as usize + UNIT_POS_Y as usize;
        if row < rows {
            let lane = UNIT_POS_X as usize;
            let lanes = CUBE_DIM_X as usize;
            let start = row * width;
            let mut total = f32::new(0.0);
            let mut dot = f32::new(0.0);
            let mut i = lane;
            loop {
                if i >= width {
                    break;
                }
                let g = grad[start + i] * gamma[i];
                total += g;
                dot += g * normalized[start + i];
                i += lanes;
            }
            let mean = plane_sum(total) * inv_width;
            let mean_dot = plane_sum(dot) * inv_width;
            let sigma = deviation[row];
            i = lane;
            loop {
                if i >= width {
                    break;
                }
                let index = start + i;
                let g = grad[index] * gamma[i];
                let d = (g - mean - normalized[index] * mean_dot) / sigma;
                dx[index] = d;
                if write_a {
                    da[index] = D::cast_from(dropped(d, index, &draw, dropout));
                }
                i += lanes;
            }
        }
    }

    /// Per feature and chunk of rows: Σ g·x̂ into `partials[chunk, feature]`
    /// and Σ g into `partials[chunks + chunk, feature]`.
    #[allow(clippy::too_many_arguments)]
    #[cube(launch_unchecked)]
    pub(super) fn backward_columns(
        grad: &Array<f32>,
        normalized: &Array<f32>,
        partials: &mut Array<f32>,
        rows: usize,
        width: usize,
        chunks: usize,
        chunk_rows: usize,
    ) {
        let column = ABSOLUTE_POS_X as usize;
        let chunk = CUBE_POS_Y as usize;
        if column < width {
            let mut scaled = f32::new(0.0);
            let mut plain = f32::new(0.0);
            let mut r = chunk * chunk_rows;
            let end = r + chunk_rows;
            loop {
                if r >= end || r >= rows {
                    break;
                }
                let g = grad[r * width + column];
                plain += g;
                scaled += g * normalized[r * width + column];
                r += 1;
            }
            partials[chunk * width + column] = scaled;
            partials[(chunks + chunk) * width + column] = plain;
        }
    }

    /// Per feature: the sums over the chunks, in chunk order.
    #[cube(launch_unchecked)]
    pub(super) fn backward_finish(
        partials: &Array<f32>,
        dgamma: &mut Array<f32>,
        dbeta: &mut Array<f32>,
        width: usize,
        chunks: usize,
    ) {
        let column = ABSOLUTE_POS;
        if column < width {
            let mut scaled = f32::new(0.0);
            let mut plain = f32::new(0.0);
            let mut c = 0;
            loop {
                if c >= chunks {
                    break;
                }
                scaled += partials[c * width + column];
                plain += partials[(chunks + c) * width + column];
                c += 1;
            }
            dgamma[column] = scaled;
            dbeta[column] = plain;
        }
    }
}

/// Whether the kernels take this LayerNorm: `I` is ftl's CUDA backend
/// and every tensor is f32.
pub(crate) fn applies<I: Backend>(tensors: &[&FloatTensor<I>]) -> bool {
    TypeId::of::<I>() == TypeId::of::<Gpu>() && tensors.iter().all(|t| t.dtype() == DType::F32)
}

fn prim<I: Backend>(t: FloatTensor<I>) -> Prim {
    same_type(t)
}

fn back<I: Backend>(t: Prim) -> FloatTensor<I> {
    same_type(t)
}

fn row_cubes(rows: usize) -> CubeCount {
    CubeCount::Static((rows as u32).div_ceil(ROWS_PER_CUBE), 1, 1)
}

/// The operation's shapes and settings.
#[derive(Debug)]
struct Forward {
    epsilon: f32,
    /// Whether a residual (the fourth input) is added after the dropout.
    add: bool,
    /// Whether a bias per feature (the last input) is added to `a` before
    /// the dropout.
    biased: bool,
    /// Whether y is also written in bf16 (a fourth output).
    copy: bool,
    draw: KernelDraw,
}

impl Kernels for Forward {
    fn run(&self, inputs: Vec<Cube>) -> Vec<Cube> {
        let mut inputs = inputs.into_iter().map(contiguous);
        let mut next = || inputs.next().expect("a, γ, β");
        let [a, gamma, beta] = [next(), next(), next()];
        let residual = if self.add {
            next()
        } else {
            empty_f32(&a, Shape::new([1]))
        };
        let bias = if self.biased {
            next()
        } else {
            empty_f32(&a, Shape::new([1]))
        };
        let shape = a.meta.shape().clone();
        let width = shape[shape.num_dims() - 1];
        let rows = shape.num_elements() / width;
        let mut per_row = shape.clone();
        per_row[shape.num_dims() - 1] = 1;
        let y = empty_f32(&a, shape.clone());
        let copy = if self.copy {
            empty(&a, shape.clone(), DType::BF16)
        } else {
            empty_f32(&a, Shape::new([1]))
        };
        let copy_dtype = copy.dtype;
        let normalized = empty_f32(&a, shape);
        let deviation = empty_f32(&a, per_row);
        // SAFETY: `row < rows` and `i < width` bound every index: a, the
        // residual (read only with `add`), y, the copy (written only with
        // `copy`) and normalized hold rows × width values, γ, β and the
        // bias (read only with `biased`) width, deviation rows.
        unsafe {
            kernels::forward::launch_unchecked::<Runtime>(
                &a.client,
                row_cubes(rows),
                CubeDim::new_2d(LANES, ROWS_PER_CUBE),
                a.clone().into_array_arg(),
                residual.into_array_arg(),
                bias.into_array_arg(),
                gamma.into_array_arg(),
                beta.into_array_arg(),
                y.clone().into_array_arg(),
                copy.clone().into_array_arg(),
                normalized.clone().into_array_arg(),
                deviation.clone().into_array_arg(),
                self.draw.seed,
                self.draw.threshold,
                self.draw.inv_keep,
                rows,
                width,
                1.0 / width as f32,
                self.epsilon,
                self.add,
                self.biased,
                self.draw.dropout,
                self.copy,
                copy_dtype.into(),
            )
        };
        let mut out = vec![y, normalized, deviation];
        if self.copy {
            out.push(copy);
        }
        out
    }
}

/// `[normalized, deviation, y]` for `x` over its last dimension; the
/// deviation has `x`'s shape with a last dimension of 1. Call only where
/// [`applies`] said so.
pub(crate) fn forward<I: Backend>(
    x: FloatTensor<I>,
    gamma: FloatTensor<I>,
    beta: FloatTensor<I>,
    epsilon: f64,
) -> [FloatTensor<I>; 3] {
    let ([normalized, deviation, y], _) =
        forward_sum::<I>(x, None, None, gamma, beta, epsilon, None, false);
    [normalized, deviation, y]
}

/// [`forward`] of `dropout(a + bias) + residual` (`draw`: the dropout's
/// seed and keep probability; `bias` `[width]`, added to every row), the
/// sum made where the kernel reads it; with `copy`, also y in bf16,
/// written by the same kernel (a cast after it would be a launch of its
/// own). Call only where [`applies`] said so.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_sum<I: Backend>(
    a: FloatTensor<I>,
    residual: Option<FloatTensor<I>>,
    bias: Option<FloatTensor<I>>,
    gamma: FloatTensor<I>,
    beta: FloatTensor<I>,
    epsilon: f64,
    draw: Option<Seeded>,
    copy: bool,
) -> ([FloatTensor<I>; 3], Option<FloatTensor<I>>) {
    let shape = a.shape();
    let mut deviation = shape.clone();
    let last = deviation.num_dims() - 1;
    deviation[last] = 1;
    let add = residual.is_some();
    let biased = bias.is_some();
    let mut inputs = vec![prim::<I>(a), prim::<I>(gamma), prim::<I>(beta)];
    inputs.extend(residual.map(prim::<I>));
    inputs.extend(bias.map(prim::<I>));
    let mut outputs = vec![
        (shape.clone(), DType::F32),
        (shape.clone(), DType::F32),
        (deviation, DType::F32),
    ];
    if copy {
        outputs.push((shape, DType::BF16));
    }
    let mut out = launch_typed(
        if add {
            "ftl_residual_layer_norm"
        } else {
            "ftl_layer_norm"
        },
        inputs,
        outputs,
        Forward {
            epsilon: epsilon as f32,
            add,
            biased,
            copy,
            draw: KernelDraw::new(draw),
        },
    )
    .into_iter();
    let mut next = || back::<I>(out.next().expect("y, normalized, deviation"));
    let [y, normalized, deviation] = [next(), next(), next()];
    let copy = copy.then(next);
    ([normalized, deviation, y], copy)
}

#[derive(Debug)]
struct Backward {
    input: bool,
    parameters: bool,
    draw: KernelDraw,
    /// a's gradient, when it is written (with a dropout, or asked for in
    /// bf16), and its dtype.
    a_grad: Option<DType>,
}

impl Kernels for Backward {
    fn run(&self, inputs: Vec<Cube>) -> Vec<Cube> {
        let [grad, normalized, deviation, gamma]: [Cube; 4] = inputs
            .into_iter()
            .map(contiguous)
            .collect::<Vec<_>>()
            .try_into()
            .expect("g, x̂, σ, γ");
        let shape = grad.meta.shape().clone();
        let width = shape[shape.num_dims() - 1];
        let rows = shape.num_elements() / width;
        let mut outputs = Vec::new();
        if self.input {
            let dx = empty_f32(&grad, shape.clone());
            let da = match self.a_grad {
                Some(dtype) => empty(&grad, shape.clone(), dtype),
                None => empty_f32(&grad, Shape::new([1])),
            };
            let da_dtype = da.dtype;
            // SAFETY: `row < rows` and `i < width` bound every index, as in
            // the forward pass; `da` is written only with `a_grad`, when it
            // holds rows × width values.
            unsafe {
                kernels::backward_input::launch_unchecked::<Runtime>(
                    &grad.client,
                    row_cubes(rows),
                    CubeDim::new_2d(LANES, ROWS_PER_CUBE),
                    grad.clone().into_array_arg(),
                    normalized.clone().into_array_arg(),
                    deviation.into_array_arg(),
                    gamma.into_array_arg(),
                    dx.clone().into_array_arg(),
                    da.clone().into_array_arg(),
                    self.draw.seed,
                    self.draw.threshold,
                    self.draw.inv_keep,
                    rows,
                    width,
                    1.0 / width as f32,
                    self.draw.dropout,
                    self.a_grad.is_some(),
                    da_dtype.into(),
                )
            };
            outputs.push(dx);
            if self.a_grad.is_some() {
                outputs.push(da);
            }
        }
        if self.parameters {
            let chunks = rows.div_ceil(CHUNK_ROWS);
            let partials = empty_f32(&grad, Shape::new([2 * chunks * width]));
            let dgamma = empty_f32(&grad, Shape::new([width]));
            let dbeta = empty_f32(&grad, Shape::new([width]));
            // SAFETY: `column < width`, `chunk < chunks` (the launch's y
            // count) and `r < rows` bound every index; partials hold
            // 2 × chunks × width values.
            unsafe {
                kernels::backward_columns::launch_unchecked(
                    &grad.client,
                    CubeCount::Static((width as u32).div_ceil(COLUMN_CUBE), chunks as u32, 1),
                    CubeDim::new_1d(COLUMN_CUBE),
                    grad.clone().into_array_arg(),
                    normalized.into_array_arg(),
                    partials.clone().into_array_arg(),
                    rows,
                    width,
                    chunks,
                    CHUNK_ROWS,
                );
                kernels::backward_finish::launch_unchecked(
                    &grad.client,
                    CubeCount::Static((width as u32).div_ceil(COLUMN_CUBE), 1, 1),
                    CubeDim::new_1d(COLUMN_CUBE),
                    partials.into_array_arg(),
                    dgamma.clone().into_array_arg(),
                    dbeta.clone().into_array_arg(),
                    width,
                    chunks,
                )
            };
            outputs.extend([dgamma, dbeta]);
        }
        outputs
    }
}

/// The gradients of x (when `input`) and of γ and β (when `parameters`),
/// from the output's gradient and the forward pass's normalised input and
/// deviation. γ may have any shape holding the features in order. With
/// `draw` (x was `dropout(a) + residual`), also a's gradient, second; with
/// `a_half`, a's gradient second in bf16, with or without a draw. Call only
/// where [`applies`] said so.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<I: Backend>(
    grad: FloatTensor<I>,
    normalized: FloatTensor<I>,
    deviation: FloatTensor<I>,
    gamma: FloatTensor<I>,
    input: bool,
    parameters: bool,
    draw: Option<Seeded>,
    a_half: bool,
) -> [Option<FloatTensor<I>>; 4] {
    if !input && !parameters {
        return [None, None, None, None];
    }
    let a_grad = if a_half {
        Some(DType::BF16)
    } else {
        draw.map(|_| DType::F32)
    };
    let shape = grad.shape();
    let width = shape[shape.num_dims() - 1];
    let mut shapes = Vec::new();
    if input {
        shapes.push((shape.clone(), DType::F32));
        if let Some(dtype) = a_grad {
            shapes.push((shape, dtype));
        }
    }
    if parameters {
        shapes.extend([Shape::new([width]), Shape::new([width])].map(|s| (s, DType::F32)));
    }
    let out = launch_typed(
        "ftl_layer_norm_backward",
        [grad, normalized, deviation, gamma]
            .into_iter()
            .map(prim::<I>)
            .collect(),
        shapes,
        Backward {
            input,
            parameters,
            draw: KernelDraw::new(draw),
            a_grad,
        },
    );
    let mut out = out.into_iter().map(back::<I>);
    let dx = if input { out.next() } else { None };
    let da = if input && a_grad.is_some() {
        out.next()
    } else {
        None
    };
    let (dgamma, dbeta) = if parameters {
        (out.next(), out.next())
    } else {
        (None, None)
    };
    [dx, da, dgamma, dbeta]
}
