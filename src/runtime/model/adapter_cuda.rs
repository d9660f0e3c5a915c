//! A LoRA adapter's update under bf16 products, `dropout(x) · A · B`, as
//! one operation of burn's autodiff on CUDA, with ftl's own kernels
//! (`fusion_op`).
//!
//! Composed of tensor operations ([`super::projection::Adapter::product_half`]
//! elsewhere), one adapter costs a dozen operations of burn's fusion stream
//! per step, each a launch: A and B cast to bf16 and their gradients cast
//! back, the input dropped and cast (ftl's dropout kernel), the two thin
//! products forward, four products backward, and the dropout's backward
//! kernel. The fusion thread's work per operation is what bounds a
//! training step on CUDA (BENCHMARKS.md), and an MPNet LoRA step has 24
//! adapters. Here the forward pass is one kernel and the backward pass
//! two:
//!
//! ```text
//! forward  (one warp per row):       x̃ = dropout(x) in bf16   h = x̃·A   u = h·B
//! backward (a cube per 16 rows):     ∂h = ∂u·Bᵀ   ∂x = dropout(∂h·Aᵀ)   (a warp per row)
//!                                    the cube's part of x̃ᵀ·∂h and hᵀ·∂u
//!          (the parts added):        ∂A = x̃ᵀ·∂h   ∂B = hᵀ·∂u
//! ```
//!
//! The rank is small (8 in the benchmarks), so a row's `h` or `∂h` is a
//! handful of dot products over the row, each summed across the warp with
//! `plane_sum`, and the other product is a handful of multiply-adds per
//! value. ∂A and ∂B are sums over all rows: each cube of the backward
//! kernel sums its rows (∂h and h of its rows in shared memory, one thread
//! per row of A or column of B), and a second kernel adds the cubes' parts
//! in a fixed order, so a run gives the same gradients every time. burn's
//! thin products for these, which they replace, took 60 µs each under the
//! profiler (BENCHMARKS.md).
//!
//! The roundings are those of the composition where it rounds to bf16: A
//! and B as they are read, x̃, h, u, ∂h and `∂h·Aᵀ`, with the sums in
//! between in f32 as in the products' accumulators; the dropout is drawn
//! from the same seed with the same hash (`super::dropout_cuda`), so the
//! masks are the composition's. ∂A and ∂B are f32 sums written as A's and
//! B's dtype (f32 in training): the composition rounds them to bf16, as
//! its products' results, before casting them back. Otherwise only the
//! order of each sum differs.
//!
//! [`update_half`] says when it applies: training on ftl's CUDA backend,
//! `x` in f32 or bf16, `A` and `B` both f32 or both bf16, rank at most
//! [`MAX_RANK`]. `bench/adapter_check.rs` checks it on the GPU against a
//! host reference and against the composition.

use std::any::TypeId;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::prelude::*;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{DType, Shape, TensorMetadata, TensorPrimitive};
use cubecl::prelude::{CubeCount, CubeDim};

use crate::runtime::backend::{Gpu, same_type};
use crate::runtime::fusion_op::{Cube, Kernels, Prim, Runtime, contiguous, empty, launch_typed};
use crate::runtime::model::dropout::Seeded;
use crate::runtime::model::dropout_cuda::KernelDraw;

/// Lanes of a warp: one row's share each.
const LANES: u32 = 32;
/// Rows (warps) per cube.
const ROWS_PER_CUBE: u32 = 8;
/// The largest rank the kernels take: each lane holds one f32 per rank.
pub(crate) const MAX_RANK: usize = 64;
/// Rows per cube of the backward kernel, two per warp: the rows one part
/// of A's and B's gradients sums (128 parts for 32 × 64 tokens, about one
/// cube per multiprocessor of an H200).
const CHUNK: usize = 16;
/// Values per cube of the kernel that adds the parts: one per lane…
const SUM_WIDTH: usize = 32;
/// …with this many warps, each summing every `SUM_YS`-th part (4 each for
/// 128 parts).
const SUM_YS: usize = 32;

mod kernels {
    use crate::runtime::model::dropout_cuda::kernels::{Draw, dropped};
    use cubecl::prelude::*;

    /// `w` as the bf16 product reads it: rounded to `O`, widened to f32.
    #[cube]
    fn rounded<W: Float, O: Float>(w: W) -> f32 {
        f32::cast_from(O::cast_from(w))
    }

    /// One warp per row of `x` `[rows, d_in]`: the row dropped and rounded
    /// to `O` (`dropped_x`), `h = x̃·A` `[rows, rank]` and `u = h·B`
    /// `[rows, d_out]`, each rounded to `O`. `A` is `[d_in, rank]`, `B`
    /// `[rank, d_out]`, both row-major, each value rounded to `O` as it is
    /// read.
    #[allow(clippy::too_many_arguments)]
    #[cube(launch_unchecked)]
    pub(super) fn forward<F: Float, W: Float, O: Float>(
        x: &Array<F>,
        a: &Array<W>,
        b: &Array<W>,
        dropped_x: &mut Array<O>,
        h: &mut Array<O>,
        u: &mut Array<O>,
        seed: u32,
        threshold: u32,
        inv_keep: f32,
        rows: usize,
        d_in: usize,
        d_out: usize,
        #[comptime] rank: usize,
        #[comptime] dropout: bool,
        #[define(F, W, O)] _dtypes: [StorageType; 3],
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
            let mut acc = Array::<f32>::new(rank);
            #[unroll]
            for k in 0..rank {
                acc[k] = f32::new(0.0);
            }
            let start = row * d_in;
            let mut j = lane;
            loop {
                if j >= d_in {
                    break;
                }
                let i = start + j;
                let v = O::cast_from(dropped(f32::cast_from(x[i]), i, &draw, dropout));
                dropped_x[i] = v;
                let v = f32::cast_from(v);
                #[unroll]
                for k in 0..rank {
                    acc[k] += v * rounded::<W, O>(a[j * rank + k]);
                }
                j += lanes;
            }
            #[unroll]
            for k in 0..rank {
                let s = O::cast_from(plane_sum(acc[k]));
                acc[k] = f32::cast_from(s);
                if lane == 0 {
                    h[row * rank + k] = s;
                }
            }
            let out = row * d_out;
            let mut c = lane;
            loop {
                if c >= d_out {
                    break;
                }
                let mut sum = f32::new(0.0);
                #[unroll]
                for k in 0..rank {
                    sum += acc[k] * rounded::<W, O>(b[k * d_out + c]);
                }
                u[out + c] = O::cast_from(sum);
                c += lanes;
            }
        }
    }

    /// One cube per `chunk` rows of `∂u` `[rows, d_out]`, one warp per row
    /// in turn: `∂h = ∂u·Bᵀ` rounded to `O` (kept in shared memory), and
    /// with `input` the input's gradient `dropout(∂h·Aᵀ)` `[rows, d_in]` in
    /// `D`, `∂h·Aᵀ` rounded to `O` first, as the product gives it. Then
    /// every thread of the cube sums, over the chunk's rows, A's gradient
    /// `x̃ᵀ·∂h` for some of A's rows and B's `hᵀ·∂u` for some of B's
    /// columns, in f32, into the cube's part (`part_a` `[parts, d_in,
    /// rank]`, `part_b` `[parts, rank, d_out]`); `sum_parts` adds the parts.
    #[allow(clippy::too_many_arguments)]
    #[cube(launch_unchecked)]
    pub(super) fn backward<G: Float, W: Float, O: Float, D: Float>(
        du: &Array<G>,
        a: &Array<W>,
        b: &Array<W>,
        dropped_x: &Array<O>,
        h: &Array<O>,
        dx: &mut Array<D>,
        part_a: &mut Array<f32>,
        part_b: &mut Array<f32>,
        seed: u32,
        threshold: u32,
        inv_keep: f32,
        rows: usize,
        d_in: usize,
        d_out: usize,
        #[comptime] rank: usize,
        #[comptime] chunk: usize,
        #[comptime] dropout: bool,
        #[comptime] input: bool,
        #[define(G, W, O, D)] _dtypes: [StorageType; 4],
    ) {
        let draw = Draw {
            seed,
            threshold,
            inv_keep,
        };
        let mut dhs = SharedMemory::<f32>::new(chunk * rank);
        let mut hs = SharedMemory::<f32>::new(chunk * rank);
        let part = CUBE_POS_X as usize;
        let first = part * chunk;
        let lane = UNIT_POS_X as usize;
        let lanes = CUBE_DIM_X as usize;
        let warps = CUBE_DIM_Y as usize;
        let mut acc = Array::<f32>::new(rank);
        let mut local = UNIT_POS_Y as usize;
        loop {
            if local >= chunk {
                break;
            }
            let row = first + local;
            if row < rows {
                #[unroll]
                for k in 0..rank {
                    acc[k] = f32::new(0.0);
                }
                let start = row * d_out;
                let mut c = lane;
                loop {
                    if c >= d_out {
                        break;
                    }
                    let g = f32::cast_from(du[start + c]);
                    #[unroll]
                    for k in 0..rank {
                        acc[k] += g * rounded::<W, O>(b[k * d_out + c]);
                    }
                    c += lanes;
                }
                #[unroll]
                for k in 0..rank {
                    acc[k] = f32::cast_from(O::cast_from(plane_sum(acc[k])));
                }
                let mut k = lane;
                loop {
                    if k >= rank {
                        break;
                    }
                    dhs[local * rank + k] = acc[k];
                    hs[local * rank + k] = f32::cast_from(h[row * rank + k]);
                    k += lanes;
                }
                if input {
                    let out = row * d_in;
                    let mut j = lane;
                    loop {
                        if j >= d_in {
                            break;
                        }
                        let mut sum = f32::new(0.0);
                        #[unroll]
                        for k in 0..rank {
                            sum += acc[k] * rounded::<W, O>(a[j * rank + k]);
                        }
                        let value = f32::cast_from(O::cast_from(sum));
                        dx[out + j] = D::cast_from(dropped(value, out + j, &draw, dropout));
                        j += lanes;
                    }
                }
            } else {
                // Past the last row: nothing to add in the sums below.
                let mut k = lane;
                loop {
                    if k >= rank {
                        break;
                    }
                    dhs[local * rank + k] = f32::new(0.0);
                    hs[local * rank + k] = f32::new(0.0);
                    k += lanes;
                }
            }
            local += warps;
        }
        sync_cube();
        // The chunk's rows, all read at once (unrolled) for each row of A
        // or column of B; a row past the last reads the last row again,
        // with ∂h and h zero there.
        let last = rows - 1;
        let threads = lanes * warps;
        let unit = UNIT_POS_Y as usize * lanes + lane;
        let mut j = unit;
        loop {
            if j >= d_in {
                break;
            }
            #[unroll]
            for k in 0..rank {
                acc[k] = f32::new(0.0);
            }
            #[unroll]
            for t in 0..chunk {
                let mut row = first + t;
                if row > last {
                    row = last;
                }
                let v = f32::cast_from(dropped_x[row * d_in + j]);
                #[unroll]
                for k in 0..rank {
                    acc[k] += v * dhs[t * rank + k];
                }
            }
            let out = (part * d_in + j) * rank;
            #[unroll]
            for k in 0..rank {
                part_a[out + k] = acc[k];
            }
            j += threads;
        }
        let mut c = unit;
        loop {
            if c >= d_out {
                break;
            }
            #[unroll]
            for k in 0..rank {
                acc[k] = f32::new(0.0);
            }
            #[unroll]
            for t in 0..chunk {
                let mut row = first + t;
                if row > last {
                    row = last;
                }
                let g = f32::cast_from(du[row * d_out + c]);
                #[unroll]
                for k in 0..rank {
                    acc[k] += hs[t * rank + k] * g;
                }
            }
            #[unroll]
            for k in 0..rank {
                part_b[(part * rank + k) * d_out + c] = acc[k];
            }
            c += threads;
        }
    }

    /// A's and B's gradients from the backward kernel's parts: value `i`
    /// of the `n_a + n_b` is summed over the `parts` by the cube's `ys`
    /// rows of threads, each taking every `ys`-th part, and the rows' sums
    /// are added in order (the same order every run).
    #[allow(clippy::too_many_arguments)]
    #[cube(launch_unchecked)]
    pub(super) fn sum_parts<T: Float>(
        part_a: &Array<f32>,
        part_b: &Array<f32>,
        da: &mut Array<T>,
        db: &mut Array<T>,
        n_a: usize,
        n_b: usize,
        parts: usize,
        #[comptime] width: usize,
        #[comptime] ys: usize,
        #[define(T)] _dtype: StorageType,
    ) {
        let mut sums = SharedMemory::<f32>::new(width * ys);
        let x = UNIT_POS_X as usize;
        let y = UNIT_POS_Y as usize;
        let i = CUBE_POS_X as usize * width + x;
        let mut s = f32::new(0.0);
        let mut p = y;
        if i < n_a {
            loop {
                if p >= parts {
                    break;
                }
                s += part_a[p * n_a + i];
                p += ys;
            }
        } else if i < n_a + n_b {
            loop {
                if p >= parts {
                    break;
                }
                s += part_b[p * n_b + i - n_a];
                p += ys;
            }
        }
        sums[y * width + x] = s;
        sync_cube();
        if y == 0 {
            let mut total = f32::new(0.0);
            #[unroll]
            for r in 0..ys {
                total += sums[r * width + x];
            }
            if i < n_a {
                da[i] = T::cast_from(total);
            } else if i < n_a + n_b {
                db[i - n_a] = T::cast_from(total);
            }
        }
    }
}

fn row_cubes(rows: usize) -> CubeCount {
    CubeCount::Static((rows as u32).div_ceil(ROWS_PER_CUBE), 1, 1)
}

/// The forward kernel: `[x, A, B]` → `[x̃, h, u]`.
#[derive(Debug)]
struct Forward {
    draw: KernelDraw,
}

impl Kernels for Forward {
    fn run(&self, inputs: Vec<Cube>) -> Vec<Cube> {
        let [x, a, b]: [Cube; 3] = inputs
            .into_iter()
            .map(contiguous)
            .collect::<Vec<_>>()
            .try_into()
            .expect("x, A, B");
        let (d_in, rank) = (a.meta.shape()[0], a.meta.shape()[1]);
        let d_out = b.meta.shape()[1];
        let rows = x.meta.shape().num_elements() / d_in;
        let dropped_x = empty(&x, Shape::new([rows, d_in]), DType::BF16);
        let h = empty(&x, Shape::new([rows, rank]), DType::BF16);
        let u = empty(&x, Shape::new([rows, d_out]), DType::BF16);
        let dtypes = [x.dtype.into(), a.dtype.into(), DType::BF16.into()];
        // SAFETY: `row < rows`, `j < d_in`, `c < d_out` and `k < rank` bound
        // every index: x and x̃ hold rows × d_in values, A d_in × rank, B
        // rank × d_out, h rows × rank and u rows × d_out, all contiguous.
        unsafe {
            kernels::forward::launch_unchecked::<Runtime>(
                &x.client,
                row_cubes(rows),
                CubeDim::new_2d(LANES, ROWS_PER_CUBE),
                x.clone().into_array_arg(),
                a.into_array_arg(),
                b.into_array_arg(),
                dropped_x.clone().into_array_arg(),
                h.clone().into_array_arg(),
                u.clone().into_array_arg(),
                self.draw.seed,
                self.draw.threshold,
                self.draw.inv_keep,
                rows,
                d_in,
                d_out,
                rank,
                self.draw.dropout,
                dtypes,
            )
        };
        vec![dropped_x, h, u]
    }
}

/// The backward pass's two kernels: `[∂u, A, B, x̃, h]` → `[∂A, ∂B]`, or
/// `[∂A, ∂B, ∂x]` with `input` (A's and B's gradients in their dtypes).
#[derive(Debug)]
struct UpdateGrads {
    draw: KernelDraw,
    input: Option<DType>,
}

impl Kernels for UpdateGrads {
    fn run(&self, inputs: Vec<Cube>) -> Vec<Cube> {
        let [du, a, b, dropped_x, h]: [Cube; 5] = inputs
            .into_iter()
            .map(contiguous)
            .collect::<Vec<_>>()
            .try_into()
            .expect("∂u, A, B, x̃, h");
        let (d_in, rank) = (a.meta.shape()[0], a.meta.shape()[1]);
        let d_out = b.meta.shape()[1];
        let rows = du.meta.shape().num_elements() / d_out;
        let parts = rows.div_ceil(CHUNK);
        let dx_dtype = self.input.unwrap_or(DType::F32);
        let dx = match self.input {
            Some(dtype) => empty(&du, Shape::new([rows, d_in]), dtype),
            None => empty(&du, Shape::new([1]), DType::F32),
        };
        let part_a = empty(&du, Shape::new([parts, d_in, rank]), DType::F32);
        let part_b = empty(&du, Shape::new([parts, rank, d_out]), DType::F32);
        let dtypes = [
            du.dtype.into(),
            a.dtype.into(),
            DType::BF16.into(),
            dx_dtype.into(),
        ];
        // SAFETY: `row = part · CHUNK + local < rows`, `j < d_in`,
        // `c < d_out` and `k < rank` bound every index of ∂u, A, B, x̃, h
        // and ∂x as in the forward pass (∂x is written only with `input`,
        // when it holds rows × d_in values); the second phase reads rows
        // `min(first + t, rows − 1)`, and cube `part < parts` writes its
        // own `d_in × rank` and `rank × d_out` values of the parts. The
        // shared memory holds CHUNK × rank values, indexed by
        // `local < CHUNK` and `k < rank`.
        unsafe {
            kernels::backward::launch_unchecked::<Runtime>(
                &du.client,
                CubeCount::Static(parts as u32, 1, 1),
                CubeDim::new_2d(LANES, ROWS_PER_CUBE),
                du.clone().into_array_arg(),
                a.clone().into_array_arg(),
                b.clone().into_array_arg(),
                dropped_x.into_array_arg(),
                h.into_array_arg(),
                dx.clone().into_array_arg(),
                part_a.clone().into_array_arg(),
                part_b.clone().into_array_arg(),
                self.draw.seed,
                self.draw.threshold,
                self.draw.inv_keep,
                rows,
                d_in,
                d_out,
                rank,
                CHUNK,
                self.draw.dropout,
                self.input.is_some(),
                dtypes,
            )
        };
        let da = empty(&a, Shape::new([d_in, rank]), a.dtype);
        let db = empty(&b, Shape::new([rank, d_out]), b.dtype);
        let (n_a, n_b) = (d_in * rank, rank * d_out);
        // SAFETY: value `i < n_a + n_b` reads part `p < parts` at
        // `p · n_a + i` (`i < n_a`) or `p · n_b + i − n_a`, inside the parts'
        // `parts · n_a` and `parts · n_b` values, and writes ∂A (n_a values)
        // or ∂B (n_b); the shared memory holds SUM_WIDTH × SUM_YS values.
        unsafe {
            kernels::sum_parts::launch_unchecked::<Runtime>(
                &a.client,
                CubeCount::Static((n_a + n_b).div_ceil(SUM_WIDTH) as u32, 1, 1),
                CubeDim::new_2d(SUM_WIDTH as u32, SUM_YS as u32),
                part_a.into_array_arg(),
                part_b.into_array_arg(),
                da.clone().into_array_arg(),
                db.clone().into_array_arg(),
                n_a,
                n_b,
                parts,
                SUM_WIDTH,
                SUM_YS,
                a.dtype.into(),
            )
        };
        let mut out = vec![da, db];
        if self.input.is_some() {
            out.push(dx);
        }
        out
    }
}

/// What the backward pass keeps: x̃ and h (bf16 rows), A and B, the draw,
/// and x's shape and dtype.
#[derive(Debug, Clone)]
struct Saved {
    dropped_x: Prim,
    h: Prim,
    a: Prim,
    b: Prim,
    draw: KernelDraw,
    x_shape: Shape,
    x_dtype: DType,
}

#[derive(Debug)]
struct UpdateBackward;

impl Backward<Gpu, 3> for UpdateBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, a_node, b_node] = ops.parents;
        let s = ops.state;
        let du = grads.consume::<Gpu>(&ops.node);
        let d_out = s.b.shape()[1];
        let rows = s.h.shape()[0];
        let d_in = s.a.shape()[0];
        let du = Gpu::float_reshape(du, Shape::new([rows, d_out]));
        let mut outputs = vec![(s.a.shape(), s.a.dtype()), (s.b.shape(), s.b.dtype())];
        if x_node.is_some() {
            outputs.push((Shape::new([rows, d_in]), s.x_dtype));
        }
        let mut out = launch_typed(
            "ftl_adapter_backward",
            vec![du, s.a, s.b, s.dropped_x, s.h],
            outputs,
            UpdateGrads {
                draw: s.draw,
                input: x_node.as_ref().map(|_| s.x_dtype),
            },
        )
        .into_iter();
        let (da, db) = (out.next().expect("∂A"), out.next().expect("∂B"));
        if let Some(node) = a_node {
            grads.register::<Gpu>(node.id, da);
        }
        if let Some(node) = b_node {
            grads.register::<Gpu>(node.id, db);
        }
        if let Some(node) = x_node {
            let dx = Gpu::float_reshape(out.next().expect("∂x"), s.x_shape);
            grads.register::<Gpu>(node.id, dx);
        }
    }
}

/// `dropout(x) · A · B` in bf16 `[batch, seq, d_out]` for `x` `[batch,
/// seq, d_in]` (f32, or bf16), `A` `[d_in, r]` and `B` `[r, d_out]` (both
/// f32, the trained parameters, or both bf16; read as bf16),
/// with `draw` the dropout's (`None`: none), as one autodiff operation (see
/// the module documentation). Applies when training on ftl's CUDA backend
/// with those dtypes and `r ≤ MAX_RANK`; `None` elsewhere, with nothing
/// drawn or registered.
pub(crate) fn update_half<B: Backend>(
    x: &Tensor<B, 3>,
    a: &Tensor<B, 2>,
    b: &Tensor<B, 2>,
    draw: impl FnOnce() -> Option<Seeded>,
) -> Option<Tensor<B, 3>> {
    let applies = TypeId::of::<B>() == TypeId::of::<Autodiff<Gpu>>()
        && matches!(x.dtype(), DType::F32 | DType::BF16)
        && matches!(a.dtype(), DType::F32 | DType::BF16)
        && b.dtype() == a.dtype()
        && a.dims()[1] <= MAX_RANK
        && a.dims()[1] == b.dims()[0]
        && a.dims()[0] == x.dims()[2];
    if !applies {
        return None;
    }
    let [batch, seq, d_in] = x.dims();
    let [rank, d_out] = b.dims();
    let rows = batch * seq;
    let draw = KernelDraw::new(draw());
    let x = same_type::<_, Tensor<Autodiff<Gpu>, 3>>(x.clone())
        .into_primitive()
        .tensor();
    let a = same_type::<_, Tensor<Autodiff<Gpu>, 2>>(a.clone())
        .into_primitive()
        .tensor();
    let b = same_type::<_, Tensor<Autodiff<Gpu>, 2>>(b.clone())
        .into_primitive()
        .tensor();
    let x_shape = x.primitive.shape();
    let x_dtype = x.primitive.dtype();
    let bf16 = DType::BF16;
    let out = launch_typed(
        "ftl_adapter_forward",
        vec![
            x.primitive.clone(),
            a.primitive.clone(),
            b.primitive.clone(),
        ],
        vec![
            (Shape::new([rows, d_in]), bf16),
            (Shape::new([rows, rank]), bf16),
            (Shape::new([rows, d_out]), bf16),
        ],
        Forward { draw },
    );
    let [dropped_x, h, u]: [Prim; 3] = out.try_into().expect("x̃, h, u");
    let u = Gpu::float_reshape(u, Shape::new([batch, seq, d_out]));
    let out = match UpdateBackward
        .prepare::<NoCheckpointing>([x.node.clone(), a.node.clone(), b.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            Saved {
                dropped_x,
                h,
                a: a.primitive,
                b: b.primitive,
                draw,
                x_shape,
                x_dtype,
            },
            u,
        ),
        OpsKind::UnTracked(prep) => prep.finish(u),
    };
    Some(same_type(Tensor::<Autodiff<Gpu>, 3>::from_primitive(
        TensorPrimitive::Float(out),
    )))
}
