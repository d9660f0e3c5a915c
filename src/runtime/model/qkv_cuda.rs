//! [`super::qkv`]'s four layout steps as ftl's own CUDA kernels, each one
//! operation of burn's fusion stream and one kernel (`fusion_op`).
//!
//! Done with tensor operations, packing the three weights is three casts and
//! a concatenation (three more launches), splitting the product into heads
//! is a cast and a layout copy per part, and the backward pass mirrors both.
//! Every kernel here is element-wise: one thread per value of the
//! `[rows, 3d]` side, which it reads or writes in order; the other side is
//! reached through the index arithmetic of the head layout.
//!
//! [`applies`] says when they are used: on ftl's CUDA backend.
//! `bench/attention_check.rs` checks the operation built on them against
//! three projections and the attention operation on the same GPU.

use std::any::TypeId;

use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, TensorMetadata};
use cubecl::prelude::{CubeCount, CubeDim, SequenceArg};

use crate::runtime::backend::{Gpu, same_type};
use crate::runtime::fusion_op::{Cube, Kernels, Prim, Runtime, contiguous, empty, launch_typed};

/// Threads per cube.
const CUBE: u32 = 256;

mod kernels {
    use cubecl::prelude::*;

    /// Value `i` of `[rows, 3·width]` is in part `i % (3·width) / width`, at
    /// `(row, column)` of that part's `[rows, width]`.
    #[derive(CubeType)]
    pub struct At {
        pub part: usize,
        pub row: usize,
        pub column: usize,
    }

    #[cube]
    pub fn at(i: usize, width: usize) -> At {
        let wide = width * 3;
        let row = i / wide;
        let column = i % wide;
        let part = column / width;
        At {
            part,
            row,
            column: column - part * width,
        }
    }

    /// Where token `row` (of `seq` per sequence), feature `column` of
    /// `heads · head_dim`, sits in `[batch, heads, seq, head_dim]`.
    #[cube]
    pub fn in_heads(row: usize, column: usize, seq: usize, heads: usize, head_dim: usize) -> usize {
        let batch = row / seq;
        let token = row % seq;
        let head = column / head_dim;
        let e = column % head_dim;
        ((batch * heads + head) * seq + token) * head_dim + e
    }

    /// `[W_q | W_k | W_v]` in `O`.
    #[cube(launch_unchecked)]
    pub(super) fn pack<F: Float, O: Float>(
        wq: &Array<F>,
        wk: &Array<F>,
        wv: &Array<F>,
        out: &mut Array<O>,
        n: usize,
        width: usize,
        #[define(F, O)] _dtypes: [StorageType; 2],
    ) {
        let i = ABSOLUTE_POS;
        if i < n {
            let a = at(i, width);
            let from = a.row * width + a.column;
            if a.part == 0 {
                out[i] = O::cast_from(wq[from]);
            } else if a.part == 1 {
                out[i] = O::cast_from(wk[from]);
            } else {
                out[i] = O::cast_from(wv[from]);
            }
        }
    }

    /// The three f32 parts of a `[rows, 3·width]` gradient.
    #[cube(launch_unchecked)]
    pub(super) fn unpack<F: Float>(
        grad: &Array<F>,
        gq: &mut Array<f32>,
        gk: &mut Array<f32>,
        gv: &mut Array<f32>,
        n: usize,
        width: usize,
        #[define(F)] _dtype: StorageType,
    ) {
        let i = ABSOLUTE_POS;
        if i < n {
            let a = at(i, width);
            let to = a.row * width + a.column;
            let g = f32::cast_from(grad[i]);
            if a.part == 0 {
                gq[to] = g;
            } else if a.part == 1 {
                gk[to] = g;
            } else {
                gv[to] = g;
            }
        }
    }

    /// q, k, v in heads, in `O`, each with its bias added in f32.
    #[allow(clippy::too_many_arguments)]
    #[cube(launch_unchecked)]
    pub(super) fn split<F: Float, O: Float>(
        y: &Array<F>,
        bq: &Array<f32>,
        bk: &Array<f32>,
        bv: &Array<f32>,
        q: &mut Array<O>,
        k: &mut Array<O>,
        v: &mut Array<O>,
        n: usize,
        width: usize,
        seq: usize,
        heads: usize,
        head_dim: usize,
        #[define(F, O)] _dtypes: [StorageType; 2],
    ) {
        let i = ABSOLUTE_POS;
        if i < n {
            let a = at(i, width);
            let to = in_heads(a.row, a.column, seq, heads, head_dim);
            let x = f32::cast_from(y[i]);
            if a.part == 0 {
                q[to] = O::cast_from(x + bq[a.column]);
            } else if a.part == 1 {
                k[to] = O::cast_from(x + bk[a.column]);
            } else {
                v[to] = O::cast_from(x + bv[a.column]);
            }
        }
    }

    /// [`split`] with adapters' updates: each adapted part (`aq`, `ak`,
    /// `av`) adds its `[rows, width]` update `d` times its scale in f32,
    /// after the bias, before rounding to `O`. An unadapted part's update
    /// is never read.
    #[allow(clippy::too_many_arguments)]
    #[cube(launch_unchecked)]
    pub(super) fn split_adapted<F: Float, O: Float>(
        y: &Array<F>,
        bq: &Array<f32>,
        bk: &Array<f32>,
        bv: &Array<f32>,
        dq: &Array<F>,
        dk: &Array<F>,
        dv: &Array<F>,
        q: &mut Array<O>,
        k: &mut Array<O>,
        v: &mut Array<O>,
        scales: Sequence<f32>,
        n: usize,
        width: usize,
        seq: usize,
        heads: usize,
        head_dim: usize,
        #[comptime] adapted: [bool; 3],
        #[define(F, O)] _dtypes: [StorageType; 2],
    ) {
        let i = ABSOLUTE_POS;
        if i < n {
            let a = at(i, width);
            let to = in_heads(a.row, a.column, seq, heads, head_dim);
            let r = a.row * width + a.column;
            let x = f32::cast_from(y[i]);
            if a.part == 0 {
                let mut sum = x + bq[a.column];
                if comptime!(adapted[0]) {
                    sum += f32::cast_from(dq[r]) * scales[0];
                }
                q[to] = O::cast_from(sum);
            } else if a.part == 1 {
                let mut sum = x + bk[a.column];
                if comptime!(adapted[1]) {
                    sum += f32::cast_from(dk[r]) * scales[1];
                }
                k[to] = O::cast_from(sum);
            } else {
                let mut sum = x + bv[a.column];
                if comptime!(adapted[2]) {
                    sum += f32::cast_from(dv[r]) * scales[2];
                }
                v[to] = O::cast_from(sum);
            }
        }
    }

    /// [`merge`], and for each adapted part its gradient as `[rows, width]`
    /// rows times the part's scale (in f32, then rounded to `O`): the
    /// gradient of its adapter's update.
    #[allow(clippy::too_many_arguments)]
    #[cube(launch_unchecked)]
    pub(super) fn merge_adapted<F: Float, O: Float>(
        dq: &Array<F>,
        dk: &Array<F>,
        dv: &Array<F>,
        out: &mut Array<O>,
        gq: &mut Array<O>,
        gk: &mut Array<O>,
        gv: &mut Array<O>,
        scales: Sequence<f32>,
        n: usize,
        width: usize,
        seq: usize,
        heads: usize,
        head_dim: usize,
        #[comptime] adapted: [bool; 3],
        #[define(F, O)] _dtypes: [StorageType; 2],
    ) {
        let i = ABSOLUTE_POS;
        if i < n {
            let a = at(i, width);
            let from = in_heads(a.row, a.column, seq, heads, head_dim);
            let r = a.row * width + a.column;
            if a.part == 0 {
                let g = dq[from];
                out[i] = O::cast_from(g);
                if comptime!(adapted[0]) {
                    gq[r] = O::cast_from(f32::cast_from(g) * scales[0]);
                }
            } else if a.part == 1 {
                let g = dk[from];
                out[i] = O::cast_from(g);
                if comptime!(adapted[1]) {
                    gk[r] = O::cast_from(f32::cast_from(g) * scales[1]);
                }
            } else {
                let g = dv[from];
                out[i] = O::cast_from(g);
                if comptime!(adapted[2]) {
                    gv[r] = O::cast_from(f32::cast_from(g) * scales[2]);
                }
            }
        }
    }

    /// The `[rows, 3·width]` gradient, in `O`, from q's, k's and v's in heads.
    #[allow(clippy::too_many_arguments)]
    #[cube(launch_unchecked)]
    pub(super) fn merge<F: Float, O: Float>(
        dq: &Array<F>,
        dk: &Array<F>,
        dv: &Array<F>,
        out: &mut Array<O>,
        n: usize,
        width: usize,
        seq: usize,
        heads: usize,
        head_dim: usize,
        #[define(F, O)] _dtypes: [StorageType; 2],
    ) {
        let i = ABSOLUTE_POS;
        if i < n {
            let a = at(i, width);
            let from = in_heads(a.row, a.column, seq, heads, head_dim);
            if a.part == 0 {
                out[i] = O::cast_from(dq[from]);
            } else if a.part == 1 {
                out[i] = O::cast_from(dk[from]);
            } else {
                out[i] = O::cast_from(dv[from]);
            }
        }
    }
}

/// Whether the kernels run: `I` is ftl's CUDA backend.
pub(crate) fn applies<I: Backend>() -> bool {
    TypeId::of::<I>() == TypeId::of::<Gpu>()
}

fn cubes(n: usize) -> CubeCount {
    CubeCount::Static((n as u32).div_ceil(CUBE), 1, 1)
}

fn prims<I: Backend, const N: usize>(ts: [FloatTensor<I>; N]) -> Vec<Prim> {
    ts.into_iter().map(same_type).collect()
}

fn three<I: Backend>(out: Vec<Prim>) -> [FloatTensor<I>; 3] {
    let [a, b, c]: [Prim; 3] = out.try_into().expect("three outputs");
    [same_type(a), same_type(b), same_type(c)]
}

fn three_cubes(inputs: Vec<Cube>) -> [Cube; 3] {
    let [a, b, c]: [Cube; 3] = inputs.try_into().expect("three inputs");
    [contiguous(a), contiguous(b), contiguous(c)]
}

#[derive(Debug)]
struct Pack {
    out: DType,
}

impl Kernels for Pack {
    fn run(&self, inputs: Vec<Cube>) -> Vec<Cube> {
        let [wq, wk, wv] = three_cubes(inputs);
        let shape = wq.meta.shape().clone();
        let (rows, width) = (shape[0], shape[1]);
        let n = rows * width * 3;
        let out = empty(&wq, Shape::new([rows, width * 3]), self.out);
        let dtypes = [wq.dtype.into(), self.out.into()];
        // SAFETY: `i < n` bounds the output (rows × 3·width values, fresh
        // and contiguous) and `at` maps it to `row · width + column` with
        // `column < width`, inside each contiguous `[rows, width]` weight.
        unsafe {
            kernels::pack::launch_unchecked::<Runtime>(
                &wq.client,
                cubes(n),
                CubeDim::new_1d(CUBE),
                wq.clone().into_array_arg(),
                wk.into_array_arg(),
                wv.into_array_arg(),
                out.clone().into_array_arg(),
                n,
                width,
                dtypes,
            )
        };
        vec![out]
    }
}

/// `[W_q | W_k | W_v]` in `out`. Call only where [`applies`] said so.
pub(crate) fn pack<I: Backend>(weights: [FloatTensor<I>; 3], out: DType) -> FloatTensor<I> {
    let shape = weights[0].shape();
    let wide = Shape::new([shape[0], shape[1] * 3]);
    let mut outputs = launch_typed(
        "ftl_qkv_pack",
        prims::<I, 3>(weights),
        vec![(wide, out)],
        Pack { out },
    );
    same_type(outputs.remove(0))
}

#[derive(Debug)]
struct Unpack;

impl Kernels for Unpack {
    fn run(&self, inputs: Vec<Cube>) -> Vec<Cube> {
        let [grad]: [Cube; 1] = inputs.try_into().expect("one gradient");
        let grad = contiguous(grad);
        let shape = grad.meta.shape().clone();
        let (rows, width) = (shape[0], shape[1] / 3);
        let n = rows * width * 3;
        let part = || empty(&grad, Shape::new([rows, width]), DType::F32);
        let (gq, gk, gv) = (part(), part(), part());
        // SAFETY: `i < n` bounds the contiguous gradient; `at` maps it into
        // `[rows, width]`, the shape of each fresh output.
        unsafe {
            kernels::unpack::launch_unchecked::<Runtime>(
                &grad.client,
                cubes(n),
                CubeDim::new_1d(CUBE),
                grad.clone().into_array_arg(),
                gq.clone().into_array_arg(),
                gk.clone().into_array_arg(),
                gv.clone().into_array_arg(),
                n,
                width,
                grad.dtype.into(),
            )
        };
        vec![gq, gk, gv]
    }
}

/// The three `[d_in, d]` f32 parts of a `[d_in, 3d]` gradient. Call only
/// where [`applies`] said so.
pub(crate) fn unpack<I: Backend>(grad: FloatTensor<I>) -> [FloatTensor<I>; 3] {
    let shape = grad.shape();
    let part = (Shape::new([shape[0], shape[1] / 3]), DType::F32);
    three::<I>(launch_typed(
        "ftl_qkv_unpack",
        vec![same_type(grad)],
        vec![part.clone(), part.clone(), part],
        Unpack,
    ))
}

/// How the `[batch·seq, 3d]` side maps to heads.
#[derive(Debug, Clone, Copy)]
struct Heads {
    seq: usize,
    heads: usize,
    head_dim: usize,
}

#[derive(Debug)]
struct Split {
    heads: Heads,
    out: DType,
}

impl Kernels for Split {
    fn run(&self, inputs: Vec<Cube>) -> Vec<Cube> {
        let [y, bq, bk, bv]: [Cube; 4] = inputs.try_into().expect("product, three biases");
        let y = contiguous(y);
        let [bq, bk, bv] = three_cubes(vec![bq, bk, bv]);
        let shape = y.meta.shape().clone();
        let (rows, width) = (shape[0], shape[1] / 3);
        let n = rows * width * 3;
        let h = self.heads;
        let heads_shape = Shape::new([rows / h.seq, h.heads, h.seq, h.head_dim]);
        let part = || empty(&y, heads_shape.clone(), self.out);
        let (q, k, v) = (part(), part(), part());
        let dtypes = [y.dtype.into(), self.out.into()];
        // SAFETY: `i < n` bounds the contiguous product; `at` gives a column
        // below `width`, inside each `[width]` bias, and `in_heads` maps
        // (row, column) one to one onto `[rows / seq, heads, seq,
        // head_dim]`, which holds rows × width values, for `width = heads ·
        // head_dim`.
        unsafe {
            kernels::split::launch_unchecked::<Runtime>(
                &y.client,
                cubes(n),
                CubeDim::new_1d(CUBE),
                y.clone().into_array_arg(),
                bq.into_array_arg(),
                bk.into_array_arg(),
                bv.into_array_arg(),
                q.clone().into_array_arg(),
                k.clone().into_array_arg(),
                v.clone().into_array_arg(),
                n,
                width,
                h.seq,
                h.heads,
                h.head_dim,
                dtypes,
            )
        };
        vec![q, k, v]
    }
}

/// q, k, v in heads, in `out`, from the product and the three biases.
/// Call only where [`applies`] said so.
pub(crate) fn split<I: Backend>(
    y: FloatTensor<I>,
    biases: [FloatTensor<I>; 3],
    batch: usize,
    heads: usize,
    out: DType,
) -> [FloatTensor<I>; 3] {
    let shape = y.shape();
    let (rows, width) = (shape[0], shape[1] / 3);
    let h = Heads {
        seq: rows / batch,
        heads,
        head_dim: width / heads,
    };
    let part = (Shape::new([batch, heads, h.seq, h.head_dim]), out);
    let mut inputs = vec![same_type(y)];
    inputs.extend(prims::<I, 3>(biases));
    three::<I>(launch_typed(
        "ftl_qkv_split",
        inputs,
        vec![part.clone(), part.clone(), part],
        Split { heads: h, out },
    ))
}

#[derive(Debug)]
struct Merge {
    out: DType,
}

impl Kernels for Merge {
    fn run(&self, inputs: Vec<Cube>) -> Vec<Cube> {
        let [dq, dk, dv] = three_cubes(inputs);
        let shape = dq.meta.shape().clone();
        let (batch, heads, seq, head_dim) = (shape[0], shape[1], shape[2], shape[3]);
        let (rows, width) = (batch * seq, heads * head_dim);
        let n = rows * width * 3;
        let out = empty(&dq, Shape::new([rows, width * 3]), self.out);
        let dtypes = [dq.dtype.into(), self.out.into()];
        // SAFETY: as in `Split`, the other way round: `i < n` bounds the
        // fresh output and `in_heads` stays inside each contiguous gradient.
        unsafe {
            kernels::merge::launch_unchecked::<Runtime>(
                &dq.client,
                cubes(n),
                CubeDim::new_1d(CUBE),
                dq.clone().into_array_arg(),
                dk.into_array_arg(),
                dv.into_array_arg(),
                out.clone().into_array_arg(),
                n,
                width,
                seq,
                heads,
                head_dim,
                dtypes,
            )
        };
        vec![out]
    }
}

/// The product's gradient `[batch·seq, 3d]` in `out` from q's, k's and
/// v's. Call only where [`applies`] said so.
pub(crate) fn merge<I: Backend>(grads: [FloatTensor<I>; 3], out: DType) -> FloatTensor<I> {
    let shape = grads[0].shape();
    let wide = Shape::new([shape[0] * shape[2], shape[1] * shape[3] * 3]);
    let mut outputs = launch_typed(
        "ftl_qkv_merge",
        prims::<I, 3>(grads),
        vec![(wide, out)],
        Merge { out },
    );
    same_type(outputs.remove(0))
}

/// The three scales as a kernel argument (an unadapted part's is unused).
fn scales_arg(scales: [Option<f64>; 3]) -> SequenceArg<Runtime, f32> {
    let mut seq = SequenceArg::new();
    for s in scales {
        seq.push(s.unwrap_or(0.0) as f32);
    }
    seq
}

#[derive(Debug)]
struct SplitAdapted {
    heads: Heads,
    out: DType,
    scales: [Option<f64>; 3],
}

impl Kernels for SplitAdapted {
    fn run(&self, inputs: Vec<Cube>) -> Vec<Cube> {
        let mut inputs = inputs.into_iter();
        let y = contiguous(inputs.next().expect("the product"));
        let [bq, bk, bv] = three_cubes(inputs.by_ref().take(3).collect());
        // An unadapted part reads nothing: a one-value buffer stands in.
        let unused = empty(&y, Shape::new([1]), y.dtype);
        let [dq, dk, dv] = self.scales.map(|s| {
            s.map_or_else(
                || unused.clone(),
                |_| contiguous(inputs.next().expect("an update")),
            )
        });
        let shape = y.meta.shape().clone();
        let (rows, width) = (shape[0], shape[1] / 3);
        let n = rows * width * 3;
        let h = self.heads;
        let heads_shape = Shape::new([rows / h.seq, h.heads, h.seq, h.head_dim]);
        let part = || empty(&y, heads_shape.clone(), self.out);
        let (q, k, v) = (part(), part(), part());
        let dtypes = [y.dtype.into(), self.out.into()];
        // SAFETY: as in `Split`; each adapted part's update is a contiguous
        // `[rows, width]`, indexed by `row · width + column` below that.
        unsafe {
            kernels::split_adapted::launch_unchecked::<Runtime>(
                &y.client,
                cubes(n),
                CubeDim::new_1d(CUBE),
                y.clone().into_array_arg(),
                bq.into_array_arg(),
                bk.into_array_arg(),
                bv.into_array_arg(),
                dq.into_array_arg(),
                dk.into_array_arg(),
                dv.into_array_arg(),
                q.clone().into_array_arg(),
                k.clone().into_array_arg(),
                v.clone().into_array_arg(),
                scales_arg(self.scales),
                n,
                width,
                h.seq,
                h.heads,
                h.head_dim,
                self.scales.map(|s| s.is_some()),
                dtypes,
            )
        };
        vec![q, k, v]
    }
}

/// [`split`] with the adapters' updates `[batch·seq, d]` (in the product's
/// dtype), each added times its scale. Call only where [`applies`] said so.
pub(crate) fn split_adapted<I: Backend>(
    y: FloatTensor<I>,
    biases: [FloatTensor<I>; 3],
    deltas: [Option<(FloatTensor<I>, f64)>; 3],
    batch: usize,
    heads: usize,
    out: DType,
) -> [FloatTensor<I>; 3] {
    let shape = y.shape();
    let (rows, width) = (shape[0], shape[1] / 3);
    let h = Heads {
        seq: rows / batch,
        heads,
        head_dim: width / heads,
    };
    let part = (Shape::new([batch, heads, h.seq, h.head_dim]), out);
    let mut inputs = vec![same_type(y)];
    inputs.extend(prims::<I, 3>(biases));
    let mut scales = [None; 3];
    for (t, delta) in deltas.into_iter().enumerate() {
        if let Some((d, s)) = delta {
            inputs.push(same_type(d));
            scales[t] = Some(s);
        }
    }
    three::<I>(launch_typed(
        "ftl_qkv_split_adapted",
        inputs,
        vec![part.clone(), part.clone(), part],
        SplitAdapted {
            heads: h,
            out,
            scales,
        },
    ))
}

#[derive(Debug)]
struct MergeAdapted {
    out: DType,
    scales: [Option<f64>; 3],
}

impl Kernels for MergeAdapted {
    fn run(&self, inputs: Vec<Cube>) -> Vec<Cube> {
        let [dq, dk, dv] = three_cubes(inputs);
        let shape = dq.meta.shape().clone();
        let (batch, heads, seq, head_dim) = (shape[0], shape[1], shape[2], shape[3]);
        let (rows, width) = (batch * seq, heads * head_dim);
        let n = rows * width * 3;
        let out = empty(&dq, Shape::new([rows, width * 3]), self.out);
        let unused = empty(&dq, Shape::new([1]), self.out);
        let grads = self
            .scales
            .map(|s| s.map(|_| empty(&dq, Shape::new([rows, width]), self.out)));
        let bound = |g: &Option<Cube>| g.clone().unwrap_or_else(|| unused.clone());
        let dtypes = [dq.dtype.into(), self.out.into()];
        // SAFETY: as in `Merge`; each adapted part's fresh `[rows, width]`
        // output is indexed by `row · width + column` below that, and an
        // unadapted part's stand-in is never written.
        unsafe {
            kernels::merge_adapted::launch_unchecked::<Runtime>(
                &dq.client,
                cubes(n),
                CubeDim::new_1d(CUBE),
                dq.clone().into_array_arg(),
                dk.into_array_arg(),
                dv.into_array_arg(),
                out.clone().into_array_arg(),
                bound(&grads[0]).into_array_arg(),
                bound(&grads[1]).into_array_arg(),
                bound(&grads[2]).into_array_arg(),
                scales_arg(self.scales),
                n,
                width,
                seq,
                heads,
                head_dim,
                self.scales.map(|s| s.is_some()),
                dtypes,
            )
        };
        let mut outputs = vec![out];
        outputs.extend(grads.into_iter().flatten());
        outputs
    }
}

/// [`merge`], and the gradient `[batch·seq, d]` (in `out`) of each
/// adapted part's update: its rows times its scale. Call only where
/// [`applies`] said so.
pub(crate) fn merge_adapted<I: Backend>(
    grads: [FloatTensor<I>; 3],
    out: DType,
    scales: [Option<f64>; 3],
) -> (FloatTensor<I>, [Option<FloatTensor<I>>; 3]) {
    let shape = grads[0].shape();
    let (rows, width) = (shape[0] * shape[2], shape[1] * shape[3]);
    let mut outputs = vec![(Shape::new([rows, width * 3]), out)];
    for s in scales.iter().flatten() {
        let _ = s;
        outputs.push((Shape::new([rows, width]), out));
    }
    let mut results = launch_typed(
        "ftl_qkv_merge_adapted",
        prims::<I, 3>(grads),
        outputs,
        MergeAdapted { out, scales },
    )
    .into_iter();
    let wide = same_type(results.next().expect("the product's gradient"));
    let deltas =
        scales.map(|s| s.map(|_| same_type(results.next().expect("an update's gradient"))));
    (wide, deltas)
}
