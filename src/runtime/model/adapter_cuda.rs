//! A LoRA adapter's update under bf16 products, `dropout(x) · A · B`, as
//! one operation of burn's autodiff on CUDA, with ftl's own kernels for the
//! per-row work (`fusion_op`).
//!
//! Composed of tensor operations ([`super::projection::Adapter::product_half`]
//! elsewhere), one adapter costs eight operations of burn's fusion stream
//! per step, each a launch: the input dropped and cast (ftl's dropout
//! kernel), the two thin products forward, four products backward, and the
//! dropout's backward kernel. The fusion thread's work per operation is
//! what bounds a training step on CUDA (BENCHMARKS.md), and an MPNet LoRA
//! step has 24 adapters. Here the forward pass is one kernel and the
//! backward pass one kernel and two products:
//!
//! ```text
//! forward  (one warp per row):  x̃ = dropout(x) in bf16    h = x̃·A    u = h·B
//! backward (one warp per row):  ∂h = ∂u·Bᵀ    ∂x = dropout(∂h·Aᵀ)
//!          products:            ∂A = x̃ᵀ·∂h    ∂B = hᵀ·∂u
//! ```
//!
//! The rank is small (8 in the benchmarks), so a row's `h` or `∂h` is a
//! handful of dot products over the row, each summed across the warp with
//! `plane_sum`, and the other product is a handful of multiply-adds per
//! value. The roundings are those of the composition: x̃, h, u, ∂h and
//! `∂h·Aᵀ` are rounded to bf16 where the bf16 products round their
//! results, the sums in between are f32 as in the products' accumulators,
//! and the dropout is drawn from the same seed with the same hash
//! (`super::dropout_cuda`), so the masks are the composition's. Only the
//! order of each sum differs. ∂A and ∂B are sums over every row and stay
//! burn's products, the same ones the composition's backward pass runs.
//!
//! [`update_half`] says when it applies: training on ftl's CUDA backend,
//! `x` in f32 or bf16, `A` and `B` in bf16, rank at most [`MAX_RANK`].
//! `bench/adapter_check.rs` checks it on the GPU against a host reference
//! and against the composition.

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

mod kernels {
    use crate::runtime::model::dropout_cuda::kernels::{Draw, dropped};
    use cubecl::prelude::*;

    /// One warp per row of `x` `[rows, d_in]`: the row dropped and rounded
    /// to `O` (`dropped_x`), `h = x̃·A` `[rows, rank]` and `u = h·B`
    /// `[rows, d_out]`, each rounded to `O`. `A` is `[d_in, rank]`, `B`
    /// `[rank, d_out]`, both row-major.
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
                    acc[k] += v * f32::cast_from(a[j * rank + k]);
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
                    sum += acc[k] * f32::cast_from(b[k * d_out + c]);
                }
                u[out + c] = O::cast_from(sum);
                c += lanes;
            }
        }
    }

    /// One warp per row of `∂u` `[rows, d_out]`: `∂h = ∂u·Bᵀ` `[rows,
    /// rank]` rounded to `O`, and with `input` the input's gradient
    /// `dropout(∂h·Aᵀ)` `[rows, d_in]` in `D`, `∂h·Aᵀ` rounded to `O`
    /// first, as the product gives it.
    #[allow(clippy::too_many_arguments)]
    #[cube(launch_unchecked)]
    pub(super) fn backward<G: Float, W: Float, O: Float, D: Float>(
        du: &Array<G>,
        a: &Array<W>,
        b: &Array<W>,
        dh: &mut Array<O>,
        dx: &mut Array<D>,
        seed: u32,
        threshold: u32,
        inv_keep: f32,
        rows: usize,
        d_in: usize,
        d_out: usize,
        #[comptime] rank: usize,
        #[comptime] dropout: bool,
        #[comptime] input: bool,
        #[define(G, W, O, D)] _dtypes: [StorageType; 4],
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
            let start = row * d_out;
            let mut c = lane;
            loop {
                if c >= d_out {
                    break;
                }
                let g = f32::cast_from(du[start + c]);
                #[unroll]
                for k in 0..rank {
                    acc[k] += g * f32::cast_from(b[k * d_out + c]);
                }
                c += lanes;
            }
            #[unroll]
            for k in 0..rank {
                let s = O::cast_from(plane_sum(acc[k]));
                acc[k] = f32::cast_from(s);
                if lane == 0 {
                    dh[row * rank + k] = s;
                }
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
                        sum += acc[k] * f32::cast_from(a[j * rank + k]);
                    }
                    let rounded = f32::cast_from(O::cast_from(sum));
                    dx[out + j] = D::cast_from(dropped(rounded, out + j, &draw, dropout));
                    j += lanes;
                }
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

/// The per-row backward kernel: `[∂u, A, B]` → `[∂h]`, or `[∂h, ∂x]` with
/// `input`.
#[derive(Debug)]
struct RowsBackward {
    draw: KernelDraw,
    input: Option<DType>,
}

impl Kernels for RowsBackward {
    fn run(&self, inputs: Vec<Cube>) -> Vec<Cube> {
        let [du, a, b]: [Cube; 3] = inputs
            .into_iter()
            .map(contiguous)
            .collect::<Vec<_>>()
            .try_into()
            .expect("∂u, A, B");
        let (d_in, rank) = (a.meta.shape()[0], a.meta.shape()[1]);
        let d_out = b.meta.shape()[1];
        let rows = du.meta.shape().num_elements() / d_out;
        let dh = empty(&du, Shape::new([rows, rank]), DType::BF16);
        let dx_dtype = self.input.unwrap_or(DType::F32);
        let dx = match self.input {
            Some(dtype) => empty(&du, Shape::new([rows, d_in]), dtype),
            None => empty(&du, Shape::new([1]), DType::F32),
        };
        let dtypes = [
            du.dtype.into(),
            a.dtype.into(),
            DType::BF16.into(),
            dx_dtype.into(),
        ];
        // SAFETY: as in the forward pass; ∂x is written only with `input`,
        // when it holds rows × d_in values.
        unsafe {
            kernels::backward::launch_unchecked::<Runtime>(
                &du.client,
                row_cubes(rows),
                CubeDim::new_2d(LANES, ROWS_PER_CUBE),
                du.clone().into_array_arg(),
                a.into_array_arg(),
                b.into_array_arg(),
                dh.clone().into_array_arg(),
                dx.clone().into_array_arg(),
                self.draw.seed,
                self.draw.threshold,
                self.draw.inv_keep,
                rows,
                d_in,
                d_out,
                rank,
                self.draw.dropout,
                self.input.is_some(),
                dtypes,
            )
        };
        let mut out = vec![dh];
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
        let [d_in, rank] = [s.a.shape()[0], s.a.shape()[1]];
        let du = Gpu::float_reshape(du, Shape::new([rows, d_out]));
        let mut outputs = vec![(Shape::new([rows, rank]), DType::BF16)];
        if x_node.is_some() {
            outputs.push((Shape::new([rows, d_in]), s.x_dtype));
        }
        let mut out = launch_typed(
            "ftl_adapter_backward",
            vec![du.clone(), s.a, s.b],
            outputs,
            RowsBackward {
                draw: s.draw,
                input: x_node.as_ref().map(|_| s.x_dtype),
            },
        );
        let dh = out.remove(0);
        if let Some(node) = b_node {
            let db = Gpu::float_matmul(Gpu::float_swap_dims(s.h, 0, 1), du);
            grads.register::<Gpu>(node.id, db);
        }
        if let Some(node) = a_node {
            let da = Gpu::float_matmul(Gpu::float_swap_dims(s.dropped_x, 0, 1), dh);
            grads.register::<Gpu>(node.id, da);
        }
        if let Some(node) = x_node {
            let dx = Gpu::float_reshape(out.remove(0), s.x_shape);
            grads.register::<Gpu>(node.id, dx);
        }
    }
}

/// `dropout(x) · A · B` in bf16 `[batch, seq, d_out]` for `x` `[batch,
/// seq, d_in]` (f32, or bf16), `A` `[d_in, r]` and `B` `[r, d_out]` (bf16),
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
        && a.dtype() == DType::BF16
        && b.dtype() == DType::BF16
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
