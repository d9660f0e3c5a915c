//! The table gradient of an embedding lookup ([`super::lookup`]) as ftl's
//! own CUDA kernels: one operation of burn's fusion stream, two kernels.
//!
//! The first writes zeros over the table's gradient. The second gives each
//! position a cube of eight warps. Each warp asks alone whether an earlier
//! position looked up the same row (each lane checks every 32nd earlier
//! position, `plane_any` combines them); the cube of the first position
//! that did then sums, column by column (one thread per column, striding by
//! the cube), the gradient of every position from there on that looked up
//! the row, in the order of the positions, and writes the row. The sum's
//! order, and so its value, is the same on every run; the other cubes stop
//! after the question.
//!
//! [`applies`] says when they are used: on ftl's CUDA backend, with the
//! table and the gradient in f32.

use std::any::TypeId;

use burn::prelude::*;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{DType, Shape, TensorMetadata};
use cubecl::prelude::{CubeCount, CubeDim};

use crate::runtime::backend::{Gpu, same_type};
use crate::runtime::fusion_op::{Cube, Kernels, Prim, Runtime, contiguous, empty_f32, launch};

/// Lanes of a warp.
const LANES: u32 = 32;
/// Warps per position's cube.
const WARPS: u32 = 8;
/// Threads per cube of the zero fill.
const FILL_CUBE: u32 = 256;

mod kernels {
    use cubecl::prelude::*;

    /// Zeros over `out`.
    #[cube(launch_unchecked)]
    pub(super) fn zero(out: &mut Array<f32>, n: usize) {
        let i = ABSOLUTE_POS;
        if i < n {
            out[i] = f32::new(0.0);
        }
    }

    /// Cube `i` is position `i`. When no earlier position looked up its
    /// row, the row of `out` becomes the sum of `grad`'s rows over the
    /// positions from `i` on that did, in order. An id outside the table
    /// writes nothing.
    #[cube(launch_unchecked)]
    pub(super) fn sum_rows<N: Int>(
        grad: &Array<f32>,
        ids: &Array<N>,
        out: &mut Array<f32>,
        positions: usize,
        width: usize,
        rows: usize,
        #[define(N)] _dtype: StorageType,
    ) {
        let i = CUBE_POS_X as usize;
        let id = ids[i];
        let mut seen = false;
        let mut j = UNIT_POS_X as usize;
        loop {
            if j >= i {
                break;
            }
            if ids[j] == id {
                seen = true;
            }
            j += CUBE_DIM_X as usize;
        }
        let row = usize::cast_from(id);
        if !plane_any(seen) && row < rows {
            let threads = (CUBE_DIM_X * CUBE_DIM_Y) as usize;
            let mut c = (UNIT_POS_Y * CUBE_DIM_X + UNIT_POS_X) as usize;
            loop {
                if c >= width {
                    break;
                }
                let mut sum = f32::new(0.0);
                let mut k = i;
                loop {
                    if k >= positions {
                        break;
                    }
                    if ids[k] == id {
                        sum += grad[k * width + c];
                    }
                    k += 1;
                }
                out[row * width + c] = sum;
                c += threads;
            }
        }
    }
}

/// Whether the kernels take this gradient: `I` is ftl's CUDA backend and
/// the table and the gradient are f32.
pub(crate) fn applies<I: Backend>(table: &FloatTensor<I>, grad: &FloatTensor<I>) -> bool {
    TypeId::of::<I>() == TypeId::of::<Gpu>()
        && table.dtype() == DType::F32
        && grad.dtype() == DType::F32
}

#[derive(Debug)]
struct TableGradient {
    rows: usize,
}

impl Kernels for TableGradient {
    fn run(&self, inputs: Vec<Cube>) -> Vec<Cube> {
        let [grad, ids]: [Cube; 2] = inputs.try_into().expect("gradient, ids");
        let grad = contiguous(grad);
        let ids = contiguous(ids);
        let shape = grad.meta.shape().clone();
        let width = shape[shape.num_dims() - 1];
        let positions = shape.num_elements() / width;
        let n = self.rows * width;
        let out = empty_f32(&grad, Shape::new([self.rows, width]));
        // SAFETY: `i < n` bounds the zero fill of `out` (rows × width
        // values). In `sum_rows`, cube `i` < positions reads `ids[i]`; `j`,
        // `k` < positions; `c` < width; and a row is written only when it
        // is below `rows`.
        unsafe {
            kernels::zero::launch_unchecked::<Runtime>(
                &grad.client,
                CubeCount::Static((n as u32).div_ceil(FILL_CUBE), 1, 1),
                CubeDim::new_1d(FILL_CUBE),
                out.clone().into_array_arg(),
                n,
            );
            kernels::sum_rows::launch_unchecked::<Runtime>(
                &grad.client,
                CubeCount::Static(positions as u32, 1, 1),
                CubeDim::new_2d(LANES, WARPS),
                grad.clone().into_array_arg(),
                ids.clone().into_array_arg(),
                out.clone().into_array_arg(),
                positions,
                width,
                self.rows,
                ids.dtype.into(),
            );
        }
        vec![out]
    }
}

/// The gradient of `table` `[rows, d]` from the lookup's, `grad`
/// `[…, d]`, for `ids` `[…]`. Call only where [`applies`] said so.
pub(crate) fn table_gradient<I: Backend>(
    table: FloatTensor<I>,
    grad: FloatTensor<I>,
    ids: IntTensor<I>,
) -> FloatTensor<I> {
    let shape = table.shape();
    let inputs: Vec<Prim> = vec![same_type(grad), same_type(ids)];
    let mut out = launch(
        "ftl_lookup_backward",
        inputs,
        vec![shape.clone()],
        TableGradient { rows: shape[0] },
    );
    same_type(out.remove(0))
}
