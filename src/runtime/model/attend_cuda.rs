//! Attention over short sequences as one ftl kernel each way, reading the
//! q/k/v product directly: what [`super::attention_core::own_projected`]
//! runs on CUDA when the sequence and head fit in one cube's shared memory.
//!
//! Without it, a layer's attention takes seven launches forward (the head
//! split, `QKᵀ`, the softmax kernel, `Pᵈ V`, the copy that merges the heads)
//! and about fourteen backward (f32 copies of the inputs, five products,
//! the softmax's backward kernel, casts back, the merge into the product's
//! gradient). Each launch costs burn's fusion thread time, and that thread
//! bounds a training step on CUDA (BENCHMARKS.md). Here one cube takes one
//! (sequence, head):
//!
//! ```text
//! forward:   q, k, v = y's parts + biases [+ s·Δ] (rounded to the products' dtype, as the head split does)
//!            s = bf16(q·kᵀ)/√d + bias    P = softmax(s)    Pᵈ = P ⊙ M / keep (in the products' dtype)
//!            C = Pᵈ V, written token by token: [batch, seq, heads, head_dim]
//! backward:  the same P and Pᵈ again    ∂Pᵈ = ∂C Vᵀ    ∂P = ∂Pᵈ ⊙ M / keep
//!            ∂S = P ⊙ (∂P − Σⱼ ∂P ⊙ P)    ∂V = Pᵈᵀ ∂C    ∂Q = ∂S K/√d    ∂K = ∂Sᵀ Q/√d
//!            written into the product's gradient `[rows, 3·width]` directly, and ∂S (f32)
//!            for the attention bias's gradient when it has one
//! ```
//!
//! Under LoRA a part with an adapter has its update `Δ` (`[rows, width]`,
//! computed outside) added times the adapter's scale `s` after the bias, in
//! f32, as `qkv::split_adapted` adds it, and the backward pass writes the
//! update's gradient `s · ∂part` as rows beside the product's, as
//! `qkv::merge_adapted` does: the same kernels serve full fine-tuning and
//! LoRA.
//!
//! These are the formulas, roundings and dropout draws of the path it
//! replaces (the head split, the products in the products' dtype forward
//! and in f32 backward, `softmax_cuda`'s kernels): the scores are rounded
//! to the products' dtype before the scale, the dropped probabilities
//! too, and a score's dropout draw is its index in `[batch, heads, seq,
//! seq]`. Only the order of the sums differs.
//!
//! Inside a cube, each warp takes every eighth query row: its lanes take a
//! strided share of the keys, `plane_max` and `plane_sum` combine them,
//! and the row's scores and probabilities go to shared memory; then every
//! thread computes outputs `(row, feature)` from shared memory. K and V are
//! stored with two values of padding per row, so lanes reading one feature
//! of consecutive keys hit different banks.
//!
//! [`applies`] says when it runs: ftl's CUDA backend, bf16 products, an f32
//! bias, an even head size, and shared memory enough for the sequence
//! (sequence 64 with heads of 64 takes 65 KiB of an H200's 227 KiB).
//! `bench/attention_check.rs` compares it with the path it replaces on the
//! GPU.

use std::any::TypeId;
use std::sync::OnceLock;

use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, TensorMetadata};
use cubecl::prelude::{CubeCount, CubeDim};

use crate::runtime::backend::{Gpu, same_type};
use crate::runtime::fusion_op::{Cube, Kernels, Prim, Runtime, contiguous, empty, launch_typed};
use crate::runtime::model::dropout::Seeded;
use crate::runtime::model::dropout_cuda::KernelDraw;
use crate::runtime::model::softmax_cuda::bias_strides;

/// Lanes of a warp.
const LANES: u32 = 32;
/// Warps per cube: each takes every `WARPS`-th query row.
const WARPS: u32 = 8;
/// Values of padding after each row of K and V in shared memory.
const PAD: usize = 2;

mod kernels {
    use crate::runtime::model::dropout_cuda::kernels::{Draw, dropped};
    use cubecl::prelude::*;

    /// Where one cube's (sequence, head) lies, and the settings its rows
    /// share.
    #[derive(CubeType)]
    pub struct Place {
        /// The sequence.
        pub batch: usize,
        /// The head.
        pub head: usize,
        /// Features of all heads: a part's width in the product.
        pub width: usize,
        pub heads: usize,
        /// The bias's strides (0 where it is broadcast).
        pub bias_batch: usize,
        pub bias_head: usize,
        pub bias_query: usize,
        pub bias_key: usize,
        pub root: f32,
        /// The adapters' scales of q, k and v (unused where a part has no
        /// adapter).
        pub scale_q: f32,
        pub scale_k: f32,
        pub scale_v: f32,
    }

    #[allow(clippy::too_many_arguments)]
    #[cube]
    pub fn place(
        width: usize,
        heads: usize,
        bias_batch: usize,
        bias_head: usize,
        bias_query: usize,
        bias_key: usize,
        root: f32,
        scale_q: f32,
        scale_k: f32,
        scale_v: f32,
    ) -> Place {
        let cube = CUBE_POS_X as usize;
        Place {
            batch: cube / heads,
            head: cube % heads,
            width,
            heads,
            bias_batch,
            bias_head,
            bias_query,
            bias_key,
            root,
            scale_q,
            scale_k,
            scale_v,
        }
    }

    /// Feature `e` of token `token` in part `part` (0 q, 1 k, 2 v), with
    /// its bias and, when `adapted`, its adapter's update (`[rows, width]`)
    /// times `scale`, in f32, rounded to `F` as the head split rounds it.
    #[allow(clippy::too_many_arguments)]
    #[cube]
    fn part_value<F: Float>(
        y: &Array<F>,
        b: &Array<f32>,
        update: &Array<F>,
        scale: f32,
        p: &Place,
        token: usize,
        part: usize,
        e: usize,
        #[comptime] seq: usize,
        #[comptime] dim: usize,
        #[comptime] adapted: bool,
    ) -> F {
        let column = p.head * dim + e;
        let row = p.batch * seq + token;
        let mut sum = f32::cast_from(y[row * 3 * p.width + part * p.width + column]) + b[column];
        if adapted {
            sum += f32::cast_from(update[row * p.width + column]) * scale;
        }
        F::cast_from(sum)
    }

    /// q (unpadded), k and v (padded) of this cube's head into shared
    /// memory.
    #[allow(clippy::too_many_arguments)]
    #[cube]
    fn stage<F: Float>(
        y: &Array<F>,
        bq: &Array<f32>,
        bk: &Array<f32>,
        bv: &Array<f32>,
        uq: &Array<F>,
        uk: &Array<F>,
        uv: &Array<F>,
        p: &Place,
        qs: &mut SharedMemory<F>,
        ks: &mut SharedMemory<F>,
        vs: &mut SharedMemory<F>,
        #[comptime] seq: usize,
        #[comptime] dim: usize,
        #[comptime] pad: usize,
        #[comptime] adapted_q: bool,
        #[comptime] adapted_k: bool,
        #[comptime] adapted_v: bool,
    ) {
        let threads = (CUBE_DIM_X * CUBE_DIM_Y) as usize;
        let mut i = UNIT_POS as usize;
        while i < seq * dim {
            let token = i / dim;
            let e = i % dim;
            let at = token * (dim + pad) + e;
            qs[i] = part_value::<F>(y, bq, uq, p.scale_q, p, token, 0, e, seq, dim, adapted_q);
            ks[at] = part_value::<F>(y, bk, uk, p.scale_k, p, token, 1, e, seq, dim, adapted_k);
            vs[at] = part_value::<F>(y, bv, uv, p.scale_v, p, token, 2, e, seq, dim, adapted_v);
            i += threads;
        }
        sync_cube();
    }

    /// `a[row]·b[key]` over `dim` features, in f32; `b` padded.
    #[cube]
    fn dot<F: Float>(
        a: &SharedMemory<F>,
        a_start: usize,
        b: &SharedMemory<F>,
        key: usize,
        #[comptime] dim: usize,
        #[comptime] pad: usize,
    ) -> f32 {
        let b_start = key * (dim + pad);
        let mut sum = f32::new(0.0);
        for e in 0..dim {
            sum += f32::cast_from(a[a_start + e]) * f32::cast_from(b[b_start + e]);
        }
        sum
    }

    /// The scaled score of (query `row`, key `key`): `F(q·k)/√d + bias`.
    #[cube]
    fn score<F: Float>(
        qs: &SharedMemory<F>,
        ks: &SharedMemory<F>,
        bias: &Array<f32>,
        p: &Place,
        row: usize,
        key: usize,
        #[comptime] dim: usize,
        #[comptime] pad: usize,
    ) -> f32 {
        let raw = F::cast_from(dot::<F>(qs, row * dim, ks, key, dim, pad));
        let at =
            p.batch * p.bias_batch + p.head * p.bias_head + row * p.bias_query + key * p.bias_key;
        f32::cast_from(raw) / p.root + bias[at]
    }

    /// A row's largest score and Σ exp(score − max).
    #[derive(CubeType)]
    pub struct RowStats {
        pub max: f32,
        pub sum: f32,
    }

    /// One warp's row: the scores into `scores[row]`, and the row's
    /// maximum and Σ exp(score − max) over the warp.
    #[allow(clippy::too_many_arguments)]
    #[cube]
    fn softmax_row<F: Float>(
        qs: &SharedMemory<F>,
        ks: &SharedMemory<F>,
        bias: &Array<f32>,
        p: &Place,
        scores: &mut SharedMemory<f32>,
        row: usize,
        lowest: f32,
        #[comptime] seq: usize,
        #[comptime] dim: usize,
        #[comptime] pad: usize,
    ) -> RowStats {
        let lanes = CUBE_DIM_X as usize;
        let mut max = lowest;
        let mut j = UNIT_POS_X as usize;
        while j < seq {
            let s = score::<F>(qs, ks, bias, p, row, j, dim, pad);
            scores[row * seq + j] = s;
            max = select(s > max, s, max);
            j += lanes;
        }
        let max = plane_max(max);
        let mut sum = f32::new(0.0);
        j = UNIT_POS_X as usize;
        while j < seq {
            sum += f32::exp(scores[row * seq + j] - max);
            j += lanes;
        }
        RowStats {
            max,
            sum: plane_sum(sum),
        }
    }

    /// The forward pass: one cube per (sequence, head), the context in
    /// token order, `[batch, seq, heads, dim]`, in `F`.
    #[allow(clippy::too_many_arguments)]
    #[cube(launch_unchecked)]
    pub(super) fn forward<F: Float>(
        y: &Array<F>,
        bq: &Array<f32>,
        bk: &Array<f32>,
        bv: &Array<f32>,
        uq: &Array<F>,
        uk: &Array<F>,
        uv: &Array<F>,
        bias: &Array<f32>,
        seed: u32,
        threshold: u32,
        out: &mut Array<F>,
        width: usize,
        heads: usize,
        bias_batch: usize,
        bias_head: usize,
        bias_query: usize,
        bias_key: usize,
        root: f32,
        scale_q: f32,
        scale_k: f32,
        scale_v: f32,
        inv_keep: f32,
        lowest: f32,
        #[comptime] seq: usize,
        #[comptime] dim: usize,
        #[comptime] pad: usize,
        #[comptime] dropout: bool,
        #[comptime] adapted_q: bool,
        #[comptime] adapted_k: bool,
        #[comptime] adapted_v: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let p = place(
            width, heads, bias_batch, bias_head, bias_query, bias_key, root, scale_q, scale_k,
            scale_v,
        );
        let draw = Draw {
            seed,
            threshold,
            inv_keep,
        };
        let mut qs = SharedMemory::<F>::new(seq * dim);
        let mut ks = SharedMemory::<F>::new(seq * (dim + pad));
        let mut vs = SharedMemory::<F>::new(seq * (dim + pad));
        let mut scores = SharedMemory::<f32>::new(seq * seq);
        let mut probs = SharedMemory::<F>::new(seq * seq);
        stage::<F>(
            y, bq, bk, bv, uq, uk, uv, &p, &mut qs, &mut ks, &mut vs, seq, dim, pad, adapted_q,
            adapted_k, adapted_v,
        );
        let lanes = CUBE_DIM_X as usize;
        let first_score = CUBE_POS_X as usize * seq * seq;
        let mut row = UNIT_POS_Y as usize;
        while row < seq {
            let stats =
                softmax_row::<F>(&qs, &ks, bias, &p, &mut scores, row, lowest, seq, dim, pad);
            let mut j = UNIT_POS_X as usize;
            while j < seq {
                let at = row * seq + j;
                let prob = f32::exp(scores[at] - stats.max) / stats.sum;
                probs[at] = F::cast_from(dropped(prob, first_score + at, &draw, dropout));
                j += lanes;
            }
            row += CUBE_DIM_Y as usize;
        }
        sync_cube();
        let threads = (CUBE_DIM_X * CUBE_DIM_Y) as usize;
        let mut i = UNIT_POS as usize;
        while i < seq * dim {
            let row = i / dim;
            let e = i % dim;
            let mut sum = f32::new(0.0);
            for j in 0..seq {
                sum +=
                    f32::cast_from(probs[row * seq + j]) * f32::cast_from(vs[j * (dim + pad) + e]);
            }
            let token = p.batch * seq + row;
            out[(token * p.heads + p.head) * dim + e] = F::cast_from(sum);
            i += threads;
        }
    }

    /// The backward pass: one cube per (sequence, head), from the
    /// context's gradient in token order; writes q's, k's and v's
    /// gradients into the product's `[rows, 3·width]` gradient, and with
    /// `bias_grad` ∂S (f32, `[batch, heads, seq, seq]`).
    #[allow(clippy::too_many_arguments)]
    #[cube(launch_unchecked)]
    pub(super) fn backward<F: Float>(
        y: &Array<F>,
        bq: &Array<f32>,
        bk: &Array<f32>,
        bv: &Array<f32>,
        uq: &Array<F>,
        uk: &Array<F>,
        uv: &Array<F>,
        bias: &Array<f32>,
        seed: u32,
        threshold: u32,
        grad: &Array<F>,
        dy: &mut Array<F>,
        d_scores: &mut Array<f32>,
        gq: &mut Array<F>,
        gk: &mut Array<F>,
        gv: &mut Array<F>,
        width: usize,
        heads: usize,
        bias_batch: usize,
        bias_head: usize,
        bias_query: usize,
        bias_key: usize,
        root: f32,
        scale_q: f32,
        scale_k: f32,
        scale_v: f32,
        inv_keep: f32,
        lowest: f32,
        #[comptime] seq: usize,
        #[comptime] dim: usize,
        #[comptime] pad: usize,
        #[comptime] dropout: bool,
        #[comptime] bias_grad: bool,
        #[comptime] adapted_q: bool,
        #[comptime] adapted_k: bool,
        #[comptime] adapted_v: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let p = place(
            width, heads, bias_batch, bias_head, bias_query, bias_key, root, scale_q, scale_k,
            scale_v,
        );
        let draw = Draw {
            seed,
            threshold,
            inv_keep,
        };
        let mut qs = SharedMemory::<F>::new(seq * dim);
        let mut ks = SharedMemory::<F>::new(seq * (dim + pad));
        let mut vs = SharedMemory::<F>::new(seq * (dim + pad));
        // The scores, then the probabilities, then ∂S/√d.
        let mut scores = SharedMemory::<f32>::new(seq * seq);
        // ∂Pᵈ, then ∂P.
        let mut d_probs = SharedMemory::<f32>::new(seq * seq);
        // Pᵈ in the products' dtype, for ∂V.
        let mut probs = SharedMemory::<F>::new(seq * seq);
        stage::<F>(
            y, bq, bk, bv, uq, uk, uv, &p, &mut qs, &mut ks, &mut vs, seq, dim, pad, adapted_q,
            adapted_k, adapted_v,
        );
        let lanes = CUBE_DIM_X as usize;
        let first_score = CUBE_POS_X as usize * seq * seq;
        // ∂C of this head, row `row`, feature `e`, in token order.
        let grad_at = p.batch * seq * p.heads * dim + p.head * dim;
        let grad_row = p.heads * dim;
        let mut row = UNIT_POS_Y as usize;
        while row < seq {
            let stats =
                softmax_row::<F>(&qs, &ks, bias, &p, &mut scores, row, lowest, seq, dim, pad);
            // ∂Pᵈ = ∂C Vᵀ in f32, then ∂P; Pᵈ; Σⱼ ∂P ⊙ P.
            let mut dot = f32::new(0.0);
            let mut j = UNIT_POS_X as usize;
            while j < seq {
                let at = row * seq + j;
                let mut d_dropped = f32::new(0.0);
                for e in 0..dim {
                    d_dropped += f32::cast_from(grad[grad_at + row * grad_row + e])
                        * f32::cast_from(vs[j * (dim + pad) + e]);
                }
                let prob = f32::exp(scores[at] - stats.max) / stats.sum;
                let index = first_score + at;
                let d_prob = dropped(d_dropped, index, &draw, dropout);
                probs[at] = F::cast_from(dropped(prob, index, &draw, dropout));
                scores[at] = prob;
                d_probs[at] = d_prob;
                dot += d_prob * prob;
                j += lanes;
            }
            let dot = plane_sum(dot);
            j = UNIT_POS_X as usize;
            while j < seq {
                let at = row * seq + j;
                let d_score = scores[at] * (d_probs[at] - dot);
                if bias_grad {
                    d_scores[first_score + at] = d_score;
                }
                scores[at] = d_score / p.root;
                j += lanes;
            }
            row += CUBE_DIM_Y as usize;
        }
        sync_cube();
        // ∂Q (row i), ∂K and ∂V (key i), feature e.
        let threads = (CUBE_DIM_X * CUBE_DIM_Y) as usize;
        let mut i = UNIT_POS as usize;
        while i < seq * dim {
            let n = i / dim;
            let e = i % dim;
            let mut dq = f32::new(0.0);
            let mut dk = f32::new(0.0);
            let mut dv = f32::new(0.0);
            for j in 0..seq {
                dq += scores[n * seq + j] * f32::cast_from(ks[j * (dim + pad) + e]);
                dk += scores[j * seq + n] * f32::cast_from(qs[j * dim + e]);
                dv += f32::cast_from(probs[j * seq + n])
                    * f32::cast_from(grad[grad_at + j * grad_row + e]);
            }
            let token = p.batch * seq + n;
            let column = p.head * dim + e;
            let start = token * 3 * p.width + column;
            dy[start] = F::cast_from(dq);
            dy[start + p.width] = F::cast_from(dk);
            dy[start + 2 * p.width] = F::cast_from(dv);
            // An adapter's update gets its part's gradient times its scale.
            let at = token * p.width + column;
            if adapted_q {
                gq[at] = F::cast_from(dq * p.scale_q);
            }
            if adapted_k {
                gk[at] = F::cast_from(dk * p.scale_k);
            }
            if adapted_v {
                gv[at] = F::cast_from(dv * p.scale_v);
            }
            i += threads;
        }
    }
}

/// The largest dynamic shared memory a cube may take on `device`.
fn shared_memory_limit(device: &cubecl::cuda::CudaDevice) -> usize {
    static LIMIT: OnceLock<usize> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        <Runtime as cubecl::Runtime>::client(device)
            .properties()
            .hardware
            .max_shared_memory_size
    })
}

/// Bytes of shared memory the backward pass (the larger) takes for this
/// sequence and head size, with `size`-byte values.
fn shared_bytes(seq: usize, dim: usize, size: usize) -> usize {
    let staged = seq * dim + 2 * seq * (dim + PAD);
    let square = seq * seq;
    staged * size + 2 * square * 4 + square * size
}

/// Whether the kernels take this attention: `I` is ftl's CUDA backend, the
/// products are bf16, the bias f32, the head size even, and the backward
/// pass's shared memory fits the device.
pub(crate) fn applies<I: Backend>(
    products: DType,
    bias: DType,
    seq: usize,
    dim: usize,
    device: &Device<I>,
) -> bool {
    if TypeId::of::<I>() != TypeId::of::<Gpu>()
        || products != DType::BF16
        || bias != DType::F32
        || !dim.is_multiple_of(2)
        || seq == 0
    {
        return false;
    }
    let Some(device) = (device as &dyn std::any::Any).downcast_ref::<cubecl::cuda::CudaDevice>()
    else {
        return false;
    };
    shared_bytes(seq, dim, products.size()) <= shared_memory_limit(device)
}

/// The settings both passes share.
#[derive(Debug, Clone, Copy)]
struct Head {
    batch: usize,
    seq: usize,
    heads: usize,
    dim: usize,
    root: f32,
    draw: KernelDraw,
    /// Each adapted part's scale.
    scales: [Option<f64>; 3],
}

impl Head {
    fn cubes(&self) -> CubeCount {
        CubeCount::Static((self.batch * self.heads) as u32, 1, 1)
    }

    fn width(&self) -> usize {
        self.heads * self.dim
    }

    fn adapted(&self, part: usize) -> bool {
        self.scales[part].is_some()
    }

    fn scale(&self, part: usize) -> f32 {
        self.scales[part].unwrap_or(0.0) as f32
    }
}

/// The inputs both kernels read, as cubecl tensors: y, the three biases,
/// the attention bias and the three updates (a one-value stand-in for a
/// part without an adapter, never read).
struct Staged {
    y: Cube,
    biases: [Cube; 3],
    bias: Cube,
    updates: [Cube; 3],
}

impl Staged {
    fn take(inputs: &mut std::vec::IntoIter<Cube>, h: &Head) -> Staged {
        let mut next = || {
            inputs
                .next()
                .expect("y, three biases, the attention bias, updates")
        };
        let y = contiguous(next());
        let biases = [next(), next(), next()].map(contiguous);
        let bias = next();
        let unused = empty(&y, Shape::new([1]), y.dtype);
        let updates = h
            .scales
            .map(|s| s.map_or_else(|| unused.clone(), |_| contiguous(next())));
        Staged {
            y,
            biases,
            bias,
            updates,
        }
    }
}

#[derive(Debug)]
struct Forward {
    head: Head,
}

impl Kernels for Forward {
    fn run(&self, inputs: Vec<Cube>) -> Vec<Cube> {
        let h = self.head;
        let Staged {
            y,
            biases: [bq, bk, bv],
            bias,
            updates: [uq, uk, uv],
        } = Staged::take(&mut inputs.into_iter(), &h);
        let out = empty(&y, Shape::new([h.batch, h.seq, h.heads, h.dim]), y.dtype);
        let b = bias_strides(&bias);
        let dtype = y.dtype.into();
        // SAFETY: cube `c` < batch·heads reads rows `batch·seq + token`
        // (token < seq) of y ([batch·seq, 3·width], contiguous) at columns
        // `part·width + head·dim + e` (e < dim), the biases at `head·dim +
        // e` < width, an adapted part's update ([batch·seq, width],
        // contiguous) at `row·width + head·dim + e`, the bias through its
        // own strides within its shape (broadcast to [batch, heads, seq,
        // seq]), and writes `(token·heads + head)·dim + e` of the fresh
        // [batch, seq, heads, dim] output. Shared memory is indexed below
        // the sizes it was declared with.
        unsafe {
            kernels::forward::launch_unchecked::<Runtime>(
                &y.client,
                h.cubes(),
                CubeDim::new_2d(LANES, WARPS),
                y.clone().into_array_arg(),
                bq.into_array_arg(),
                bk.into_array_arg(),
                bv.into_array_arg(),
                uq.into_array_arg(),
                uk.into_array_arg(),
                uv.into_array_arg(),
                bias.into_array_arg(),
                h.draw.seed,
                h.draw.threshold,
                out.clone().into_array_arg(),
                h.width(),
                h.heads,
                b[0],
                b[1],
                b[2],
                b[3],
                h.root,
                h.scale(0),
                h.scale(1),
                h.scale(2),
                h.draw.inv_keep,
                f32::NEG_INFINITY,
                h.seq,
                h.dim,
                PAD,
                h.draw.dropout,
                h.adapted(0),
                h.adapted(1),
                h.adapted(2),
                dtype,
            )
        };
        vec![out]
    }
}

/// The attention's inputs: the q/k/v product `y` (`[batch·seq, 3·width]`),
/// the three biases (f32), the attention bias, and each adapted part's
/// update (`[batch·seq, width]`, y's dtype) with its scale.
pub(crate) struct Inputs<I: Backend> {
    pub y: FloatTensor<I>,
    pub biases: [FloatTensor<I>; 3],
    pub bias: FloatTensor<I>,
    pub updates: [Option<(FloatTensor<I>, f64)>; 3],
}

impl<I: Backend> Clone for Inputs<I> {
    fn clone(&self) -> Self {
        Inputs {
            y: self.y.clone(),
            biases: self.biases.clone(),
            bias: self.bias.clone(),
            updates: self.updates.clone(),
        }
    }
}

impl<I: Backend> std::fmt::Debug for Inputs<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inputs").finish_non_exhaustive()
    }
}

impl<I: Backend> Inputs<I> {
    /// In [`Staged::take`]'s order.
    fn prims(self) -> Vec<Prim> {
        let [bq, bk, bv] = self.biases;
        let mut prims = vec![
            same_type(self.y),
            same_type(bq),
            same_type(bk),
            same_type(bv),
            same_type(self.bias),
        ];
        prims.extend(
            self.updates
                .into_iter()
                .flatten()
                .map(|(u, _)| same_type(u)),
        );
        prims
    }
}

fn head<I: Backend>(x: &Inputs<I>, seq: usize, heads: usize, draw: Option<Seeded>) -> Head {
    let rows = x.y.shape()[0];
    let width = x.y.shape()[1] / 3;
    let dim = width / heads;
    Head {
        batch: rows / seq,
        seq,
        heads,
        dim,
        root: (dim as f64).sqrt() as f32,
        draw: KernelDraw::new(draw),
        scales: [0, 1, 2].map(|t| x.updates[t].as_ref().map(|(_, s)| *s)),
    }
}

/// The context `dropout(softmax(QKᵀ/√d + bias)) · V` in token order,
/// `[batch, seq, heads, head_dim]`, in y's dtype. Call only where
/// [`applies`] said so.
pub(crate) fn forward<I: Backend>(
    x: Inputs<I>,
    seq: usize,
    heads: usize,
    draw: Option<Seeded>,
) -> FloatTensor<I> {
    let head = head(&x, seq, heads, draw);
    let dtype = x.y.dtype();
    let shape = Shape::new([head.batch, seq, heads, head.dim]);
    let mut out = launch_typed(
        "ftl_attention",
        x.prims(),
        vec![(shape, dtype)],
        Forward { head },
    );
    same_type(out.remove(0))
}

#[derive(Debug)]
struct Backward {
    head: Head,
    bias_grad: bool,
}

impl Kernels for Backward {
    fn run(&self, inputs: Vec<Cube>) -> Vec<Cube> {
        let h = self.head;
        let mut inputs = inputs.into_iter();
        let Staged {
            y,
            biases: [bq, bk, bv],
            bias,
            updates: [uq, uk, uv],
        } = Staged::take(&mut inputs, &h);
        let grad = contiguous(inputs.next().expect("the context's gradient"));
        let dy = empty(&y, y.meta.shape().clone(), y.dtype);
        let unused = || empty(&y, Shape::new([1]), DType::F32);
        let d_scores = if self.bias_grad {
            empty(&y, Shape::new([h.batch, h.heads, h.seq, h.seq]), DType::F32)
        } else {
            unused()
        };
        let rows = y.meta.shape()[0];
        let [gq, gk, gv] = [0, 1, 2].map(|t| {
            if h.adapted(t) {
                empty(&y, Shape::new([rows, h.width()]), y.dtype)
            } else {
                empty(&y, Shape::new([1]), y.dtype)
            }
        });
        let b = bias_strides(&bias);
        let dtype = y.dtype.into();
        // SAFETY: as in the forward pass; the gradient ([batch, seq,
        // heads, dim], contiguous) is read where the forward pass wrote the
        // context; every (token, column) of the fresh `dy` is written once,
        // by the cube of its sequence and head, and of an adapted part's
        // fresh [batch·seq, width] update gradient likewise; `d_scores` is
        // written only when it holds [batch, heads, seq, seq] values
        // (`bias_grad`), an update's gradient only when its part is adapted.
        unsafe {
            kernels::backward::launch_unchecked::<Runtime>(
                &y.client,
                h.cubes(),
                CubeDim::new_2d(LANES, WARPS),
                y.clone().into_array_arg(),
                bq.into_array_arg(),
                bk.into_array_arg(),
                bv.into_array_arg(),
                uq.into_array_arg(),
                uk.into_array_arg(),
                uv.into_array_arg(),
                bias.into_array_arg(),
                h.draw.seed,
                h.draw.threshold,
                grad.into_array_arg(),
                dy.clone().into_array_arg(),
                d_scores.clone().into_array_arg(),
                gq.clone().into_array_arg(),
                gk.clone().into_array_arg(),
                gv.clone().into_array_arg(),
                h.width(),
                h.heads,
                b[0],
                b[1],
                b[2],
                b[3],
                h.root,
                h.scale(0),
                h.scale(1),
                h.scale(2),
                h.draw.inv_keep,
                f32::NEG_INFINITY,
                h.seq,
                h.dim,
                PAD,
                h.draw.dropout,
                self.bias_grad,
                h.adapted(0),
                h.adapted(1),
                h.adapted(2),
                dtype,
            )
        };
        let mut out = vec![dy];
        if self.bias_grad {
            out.push(d_scores);
        }
        for (t, g) in [gq, gk, gv].into_iter().enumerate() {
            if h.adapted(t) {
                out.push(g);
            }
        }
        out
    }
}

/// What [`backward`] gives.
pub(crate) struct Gradients<I: Backend> {
    /// The product's gradient `[batch·seq, 3·width]`, y's dtype.
    pub dy: FloatTensor<I>,
    /// ∂S, f32 `[batch, heads, seq, seq]`, when asked for.
    pub scores: Option<FloatTensor<I>>,
    /// Each adapted part's update gradient `[batch·seq, width]`: the part's
    /// gradient times its scale, y's dtype.
    pub updates: [Option<FloatTensor<I>>; 3],
}

/// The gradients from the context's, `grad`, in token order (`[batch,
/// seq, heads, head_dim]`); ∂S only with `bias_grad`. Call only where
/// [`applies`] said so.
pub(crate) fn backward<I: Backend>(
    x: Inputs<I>,
    grad: FloatTensor<I>,
    seq: usize,
    heads: usize,
    draw: Option<Seeded>,
    bias_grad: bool,
) -> Gradients<I> {
    let head = head(&x, seq, heads, draw);
    let y_shape = x.y.shape();
    let rows = y_shape[0];
    let dtype = x.y.dtype();
    let mut inputs = x.prims();
    inputs.push(same_type(grad));
    let mut outputs = vec![(y_shape, dtype)];
    if bias_grad {
        outputs.push((Shape::new([head.batch, heads, seq, seq]), DType::F32));
    }
    for t in 0..3 {
        if head.adapted(t) {
            outputs.push((Shape::new([rows, head.width()]), dtype));
        }
    }
    let mut out = launch_typed(
        "ftl_attention_backward",
        inputs,
        outputs,
        Backward { head, bias_grad },
    )
    .into_iter();
    let dy = same_type(out.next().expect("the product's gradient"));
    let scores = bias_grad.then(|| same_type(out.next().expect("∂S")));
    let updates = [0, 1, 2].map(|t| {
        head.adapted(t)
            .then(|| same_type(out.next().expect("an update's gradient")))
    });
    Gradients {
        dy,
        scores,
        updates,
    }
}
