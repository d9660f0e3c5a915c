//! Attention's softmax, with its scale, bias and dropout, as ftl's own CUDA
//! kernels: one operation of burn's fusion stream for the forward pass and
//! one for the backward pass.
//!
//! In [`super::attention_core`]'s composition the forward pass registers
//! eleven tensor operations (the scores' cast to f32, the scale, the bias,
//! the row maximum, the shift, `exp`, the row sum, the division, the
//! dropout's fill and scale, the cast for the second product), two of them
//! row reductions that end a fused block. The backward pass computes the
//! probabilities again (the same eleven) and then six more for the scores'
//! gradient, one of them a row reduction. Every operation costs burn's
//! fusion thread time, and that thread bounds a training step on CUDA
//! (BENCHMARKS.md, "Where the host time goes"). Here each pass is one
//! operation and one kernel, computing the same formulas in f32:
//!
//! ```text
//! forward:   s = f32(QKᵀ)/√d + bias    P = softmax(s)    Pᵈ = P ⊙ M / keep (in the products' dtype)
//! backward:  ∂P = ∂Pᵈ ⊙ M / keep    ∂S/√d = P ⊙ (∂P − Σⱼ ∂P ⊙ P) / √d,   and Pᵈ again for ∂V
//! ```
//!
//! The dropout mask M is never stored: both kernels draw it from the
//! dropout's seed (ftl's own draws, `super::dropout`), where burn's
//! composition needs a random-number kernel and a comparison to write it
//! first and keeps it, one byte per score, for the backward pass.
//!
//! One warp handles one row of scores (a query's keys): each lane takes a
//! strided share, `plane_max` and `plane_sum` combine the shares. The bias
//! is read through its strides, so BERT's padding bias, broadcast over heads
//! and queries, is never materialised.
//!
//! [`applies`] says when they are used: on ftl's CUDA backend, with
//! the scores in f32 or bf16 and the bias in f32. `bench/attention_check.rs`
//! checks them against burn's composition on the same GPU.

use std::any::TypeId;

use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, TensorMetadata};
use cubecl::prelude::{CubeCount, CubeDim};

use crate::runtime::backend::{Gpu, same_type};
use crate::runtime::fusion_op::{Cube, Kernels, Prim, Runtime, contiguous, empty, launch_typed};
use crate::runtime::model::dropout::Seeded;
use crate::runtime::model::dropout_cuda::KernelDraw;

/// Lanes of a warp: one row's share each.
const LANES: u32 = 32;
/// Rows (warps) per cube.
const ROWS_PER_CUBE: u32 = 8;

mod kernels {
    use crate::runtime::model::dropout_cuda::kernels::{Draw, dropped};
    use cubecl::prelude::*;

    /// Where row `row`'s bias starts: the row is (batch, head, query) of
    /// `[batch, heads, queries, keys]` scores.
    #[cube]
    fn bias_start(
        row: usize,
        heads: usize,
        queries: usize,
        bias_batch: usize,
        bias_head: usize,
        bias_query: usize,
    ) -> usize {
        let query = row % queries;
        let rest = row / queries;
        let head = rest % heads;
        let batch = rest / heads;
        batch * bias_batch + head * bias_head + query * bias_query
    }

    /// One row of scores: where it starts, where its bias starts, and the
    /// settings every row shares.
    #[derive(CubeType)]
    struct Row {
        start: usize,
        at: usize,
        keys: usize,
        bias_key: usize,
        root: f32,
    }

    /// The scaled and shifted score of key `i`: `f32(QKᵀ)/√d + bias`.
    #[cube]
    fn score<F: Float>(scores: &Array<F>, bias: &Array<f32>, row: &Row, i: usize) -> f32 {
        f32::cast_from(scores[row.start + i]) / row.root + bias[row.at + i * row.bias_key]
    }

    /// The row's largest score, over the whole warp.
    #[cube]
    fn row_max<F: Float>(scores: &Array<F>, bias: &Array<f32>, row: &Row, lowest: f32) -> f32 {
        let mut max = lowest;
        let mut i = UNIT_POS_X as usize;
        loop {
            if i >= row.keys {
                break;
            }
            let s = score::<F>(scores, bias, row, i);
            max = select(s > max, s, max);
            i += CUBE_DIM_X as usize;
        }
        plane_max(max)
    }

    /// Σ exp(score − max) over the row, over the whole warp.
    #[cube]
    fn row_sum<F: Float>(scores: &Array<F>, bias: &Array<f32>, row: &Row, max: f32) -> f32 {
        let mut sum = f32::new(0.0);
        let mut i = UNIT_POS_X as usize;
        loop {
            if i >= row.keys {
                break;
            }
            sum += f32::exp(score::<F>(scores, bias, row, i) - max);
            i += CUBE_DIM_X as usize;
        }
        plane_sum(sum)
    }

    /// The row this warp handles (past the last one in the last cube).
    #[cube]
    fn this_row() -> usize {
        CUBE_POS_X as usize * CUBE_DIM_Y as usize + UNIT_POS_Y as usize
    }

    /// Row `r` of `[batch, heads, queries, keys]` scores, with its bias.
    #[allow(clippy::too_many_arguments)]
    #[cube]
    fn row_at(
        r: usize,
        keys: usize,
        heads: usize,
        queries: usize,
        bias_batch: usize,
        bias_head: usize,
        bias_query: usize,
        bias_key: usize,
        root: f32,
    ) -> Row {
        Row {
            start: r * keys,
            at: bias_start(r, heads, queries, bias_batch, bias_head, bias_query),
            keys,
            bias_key,
            root,
        }
    }

    /// One row per warp: the dropped probabilities, in `O`.
    #[allow(clippy::too_many_arguments)]
    #[cube(launch_unchecked)]
    pub(super) fn forward<F: Float, O: Float>(
        scores: &Array<F>,
        bias: &Array<f32>,
        seed: u32,
        threshold: u32,
        out: &mut Array<O>,
        rows: usize,
        keys: usize,
        heads: usize,
        queries: usize,
        bias_batch: usize,
        bias_head: usize,
        bias_query: usize,
        bias_key: usize,
        root: f32,
        inv_keep: f32,
        lowest: f32,
        #[comptime] dropout: bool,
        #[define(F, O)] _dtypes: [StorageType; 2],
    ) {
        let r = this_row();
        if r < rows {
            let row = row_at(
                r, keys, heads, queries, bias_batch, bias_head, bias_query, bias_key, root,
            );
            let draw = Draw {
                seed,
                threshold,
                inv_keep,
            };
            let max = row_max::<F>(scores, bias, &row, lowest);
            let sum = row_sum::<F>(scores, bias, &row, max);
            let mut i = UNIT_POS_X as usize;
            loop {
                if i >= keys {
                    break;
                }
                let p = f32::exp(score::<F>(scores, bias, &row, i) - max) / sum;
                let index = row.start + i;
                out[index] = O::cast_from(dropped(p, index, &draw, dropout));
                i += CUBE_DIM_X as usize;
            }
        }
    }

    /// One row per warp: the scores' gradient over √d, from the dropped
    /// probabilities' gradient, and (with `probabilities`) the dropped
    /// probabilities again, in `O`.
    #[allow(clippy::too_many_arguments)]
    #[cube(launch_unchecked)]
    pub(super) fn backward<F: Float, O: Float>(
        scores: &Array<F>,
        bias: &Array<f32>,
        seed: u32,
        threshold: u32,
        d_dropped: &Array<f32>,
        probs_out: &mut Array<O>,
        d_scores: &mut Array<f32>,
        rows: usize,
        keys: usize,
        heads: usize,
        queries: usize,
        bias_batch: usize,
        bias_head: usize,
        bias_query: usize,
        bias_key: usize,
        root: f32,
        inv_keep: f32,
        lowest: f32,
        #[comptime] dropout: bool,
        #[comptime] probabilities: bool,
        #[define(F, O)] _dtypes: [StorageType; 2],
    ) {
        let r = this_row();
        if r < rows {
            let row = row_at(
                r, keys, heads, queries, bias_batch, bias_head, bias_query, bias_key, root,
            );
            let draw = Draw {
                seed,
                threshold,
                inv_keep,
            };
            let max = row_max::<F>(scores, bias, &row, lowest);
            let sum = row_sum::<F>(scores, bias, &row, max);
            // Σⱼ ∂P ⊙ P, and the dropped probabilities on the way.
            let mut dot = f32::new(0.0);
            let mut i = UNIT_POS_X as usize;
            loop {
                if i >= keys {
                    break;
                }
                let p = f32::exp(score::<F>(scores, bias, &row, i) - max) / sum;
                let index = row.start + i;
                dot += dropped(d_dropped[index], index, &draw, dropout) * p;
                if probabilities {
                    probs_out[index] = O::cast_from(dropped(p, index, &draw, dropout));
                }
                i += CUBE_DIM_X as usize;
            }
            let dot = plane_sum(dot);
            i = UNIT_POS_X as usize;
            loop {
                if i >= keys {
                    break;
                }
                let p = f32::exp(score::<F>(scores, bias, &row, i) - max) / sum;
                let index = row.start + i;
                let dp = dropped(d_dropped[index], index, &draw, dropout);
                d_scores[index] = p * (dp - dot) / root;
                i += CUBE_DIM_X as usize;
            }
        }
    }
}

/// Whether the kernels take this softmax: `I` is ftl's CUDA backend, the
/// scores are f32 or bf16 and the bias f32.
pub(crate) fn applies<I: Backend>(scores: DType, bias: DType) -> bool {
    TypeId::of::<I>() == TypeId::of::<Gpu>()
        && matches!(scores, DType::F32 | DType::BF16)
        && bias == DType::F32
}

/// The settings every launch shares.
#[derive(Debug, Clone, Copy)]
struct Rows {
    root: f32,
    draw: KernelDraw,
}

impl Rows {
    fn new(root: f64, draw: Option<Seeded>) -> Self {
        Rows {
            root: root as f32,
            draw: KernelDraw::new(draw),
        }
    }
}

/// The scores' layout, read from the tensors the operation received.
struct Layout {
    rows: usize,
    keys: usize,
    heads: usize,
    queries: usize,
    /// The bias's strides, 0 along the dimensions it is broadcast over.
    bias: [usize; 4],
}

fn layout(scores: &Cube, bias: &Cube) -> Layout {
    let shape = scores.meta.shape();
    let [batch, heads, queries, keys] = [shape[0], shape[1], shape[2], shape[3]];
    Layout {
        rows: batch * heads * queries,
        keys,
        heads,
        queries,
        bias: bias_strides(bias),
    }
}

/// A 4-D attention bias's strides, 0 along the dimensions it is broadcast
/// over (size 1), so kernels read it as if it had the scores' shape.
pub(crate) fn bias_strides(bias: &Cube) -> [usize; 4] {
    let shape = bias.meta.shape();
    let strides = bias.meta.strides();
    let stride = |d: usize| if shape[d] == 1 { 0 } else { strides[d] };
    [stride(0), stride(1), stride(2), stride(3)]
}

fn row_cubes(rows: usize) -> CubeCount {
    CubeCount::Static((rows as u32).div_ceil(ROWS_PER_CUBE), 1, 1)
}

#[derive(Debug)]
struct Forward {
    rows: Rows,
    out: DType,
}

impl Kernels for Forward {
    fn run(&self, inputs: Vec<Cube>) -> Vec<Cube> {
        let [scores, bias]: [Cube; 2] = inputs.try_into().expect("scores, bias");
        let scores = contiguous(scores);
        let l = layout(&scores, &bias);
        let out = empty(&scores, scores.meta.shape().clone(), self.out);
        let dtypes = [scores.dtype.into(), self.out.into()];
        // SAFETY: `row < rows` and `i < keys` bound every index of the
        // scores and the output (rows × keys values, contiguous);
        // the bias is read through its own strides within its shape, which
        // broadcasts to the scores'.
        unsafe {
            kernels::forward::launch_unchecked::<Runtime>(
                &scores.client,
                row_cubes(l.rows),
                CubeDim::new_2d(LANES, ROWS_PER_CUBE),
                scores.clone().into_array_arg(),
                bias.into_array_arg(),
                self.rows.draw.seed,
                self.rows.draw.threshold,
                out.clone().into_array_arg(),
                l.rows,
                l.keys,
                l.heads,
                l.queries,
                l.bias[0],
                l.bias[1],
                l.bias[2],
                l.bias[3],
                self.rows.root,
                self.rows.draw.inv_keep,
                f32::NEG_INFINITY,
                self.rows.draw.dropout,
                dtypes,
            )
        };
        vec![out]
    }
}

fn inputs<I: Backend>(scores: FloatTensor<I>, bias: FloatTensor<I>) -> Vec<Prim> {
    vec![same_type(scores), same_type(bias)]
}

/// `dropout(softmax(scores / root + bias))` in `out` (the products'
/// dtype), for `[batch, heads, queries, keys]` scores and a bias that
/// broadcasts to them. Call only where [`applies`] said so.
pub(crate) fn forward<I: Backend>(
    scores: FloatTensor<I>,
    bias: FloatTensor<I>,
    draw: Option<Seeded>,
    root: f64,
    out: DType,
) -> FloatTensor<I> {
    let shape = scores.shape();
    let inputs = inputs::<I>(scores, bias);
    let rows = Rows::new(root, draw);
    let mut outputs = launch_typed(
        "ftl_attention_softmax",
        inputs,
        vec![(shape, out)],
        Forward { rows, out },
    );
    same_type(outputs.remove(0))
}

#[derive(Debug)]
struct Backward {
    rows: Rows,
    /// The dtype of the dropped probabilities, when they are wanted too.
    probabilities: Option<DType>,
}

impl Kernels for Backward {
    fn run(&self, inputs: Vec<Cube>) -> Vec<Cube> {
        let [scores, bias, d_dropped]: [Cube; 3] =
            inputs.try_into().expect("scores, bias, ∂dropped");
        let scores = contiguous(scores);
        let d_dropped = contiguous(d_dropped);
        let l = layout(&scores, &bias);
        let shape = scores.meta.shape().clone();
        let d_scores = empty(&scores, shape.clone(), DType::F32);
        let (dropped, out) = match self.probabilities {
            Some(dtype) => (empty(&scores, shape, dtype), dtype),
            None => (empty(&scores, Shape::new([1]), DType::F32), DType::F32),
        };
        let dtypes = [scores.dtype.into(), out.into()];
        // SAFETY: as in the forward pass; `dropped` is written only when it
        // holds rows × keys values (`probabilities`).
        unsafe {
            kernels::backward::launch_unchecked::<Runtime>(
                &scores.client,
                row_cubes(l.rows),
                CubeDim::new_2d(LANES, ROWS_PER_CUBE),
                scores.clone().into_array_arg(),
                bias.into_array_arg(),
                self.rows.draw.seed,
                self.rows.draw.threshold,
                d_dropped.into_array_arg(),
                dropped.clone().into_array_arg(),
                d_scores.clone().into_array_arg(),
                l.rows,
                l.keys,
                l.heads,
                l.queries,
                l.bias[0],
                l.bias[1],
                l.bias[2],
                l.bias[3],
                self.rows.root,
                self.rows.draw.inv_keep,
                f32::NEG_INFINITY,
                self.rows.draw.dropout,
                self.probabilities.is_some(),
                dtypes,
            )
        };
        let mut outputs = vec![d_scores];
        if self.probabilities.is_some() {
            outputs.push(dropped);
        }
        outputs
    }
}

/// `(∂S / root, Pᵈ)`: the gradient of the scaled scores from that of the
/// dropped probabilities (f32), and with `probabilities` the dropped
/// probabilities again in that dtype. Call only where [`applies`] said so.
pub(crate) fn backward<I: Backend>(
    scores: FloatTensor<I>,
    bias: FloatTensor<I>,
    draw: Option<Seeded>,
    d_dropped: FloatTensor<I>,
    root: f64,
    probabilities: Option<DType>,
) -> (FloatTensor<I>, Option<FloatTensor<I>>) {
    let shape = scores.shape();
    let mut inputs = inputs::<I>(scores, bias);
    inputs.push(same_type(d_dropped));
    let rows = Rows::new(root, draw);
    let mut outputs = vec![(shape.clone(), DType::F32)];
    if let Some(dtype) = probabilities {
        outputs.push((shape, dtype));
    }
    let mut out = launch_typed(
        "ftl_attention_softmax_backward",
        inputs,
        outputs,
        Backward {
            rows,
            probabilities,
        },
    )
    .into_iter();
    let d_scores = same_type(out.next().expect("the scores' gradient"));
    (d_scores, out.next().map(same_type))
}
