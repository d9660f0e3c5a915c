//! ftl's own dropout draws on CUDA (see [`super::dropout`]): whether value
//! `i` is kept under a seed is a hash of the two, which any kernel can
//! compute where it reads the value. `kernels::kept` is that hash as a cube
//! function and `kernels::dropped` applies it to one value, with the
//! settings [`KernelDraw`] gives a launch; [`dropped`] makes a mask from it
//! where tensor operations want one (one operation of burn's fusion stream
//! and one kernel, where burn's Bernoulli draw was a random-number kernel).
//! [`dropped_half`] is an adapter's input dropout under bf16 as an autodiff
//! operation of two such kernels: the input dropped and cast, and its
//! gradient dropped by the same draw, with no mask in between.

use std::any::TypeId;

use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::{DType, Shape};
use cubecl::prelude::{CubeCount, CubeDim};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::TensorPrimitive;
use burn::tensor::ops::FloatTensor;

use crate::runtime::backend::{Gpu, same_type};
use crate::runtime::fusion_op::{
    Cube, Kernels, Prim, Runtime, contiguous, empty, empty_on, launch_new, launch_typed,
};
use crate::runtime::model::dropout::{Draws, Seeded, threshold};

/// Values each cube of the mask and drop kernels writes.
const CUBE: u32 = 256;

pub(crate) mod kernels {
    use cubecl::prelude::*;

    /// One round of the hash: the same as `dropout::draw`'s on the host.
    #[cube]
    fn mix(x: u32) -> u32 {
        let a = x ^ (x >> 16u32);
        let b = a * 0x21F0_AAADu32;
        let c = b ^ (b >> 15u32);
        let d = c * 0x735A_2D97u32;
        d ^ (d >> 15u32)
    }

    /// Whether value `index` is kept under `seed`: its draw is below
    /// `threshold` (`dropout::threshold(keep)`).
    #[cube]
    fn kept(seed: u32, index: u32, threshold: u32) -> bool {
        mix(mix(index) ^ seed) < threshold
    }

    /// One dropout's settings inside a kernel (`super::KernelDraw`).
    #[derive(CubeType)]
    pub struct Draw {
        pub seed: u32,
        pub threshold: u32,
        pub inv_keep: f32,
    }

    /// `t ⊙ M / keep` for value `index`: `t / keep` where it is kept, 0
    /// where it is dropped; `t` where there is no dropout.
    #[cube]
    pub fn dropped(t: f32, index: usize, draw: &Draw, #[comptime] dropout: bool) -> f32 {
        if dropout {
            select(
                kept(draw.seed, u32::cast_from(index), draw.threshold),
                t * draw.inv_keep,
                f32::new(0.0),
            )
        } else {
            t
        }
    }

    /// `dropped(x)` for every value, in `O`: an adapter's dropped input
    /// (`F` f32, `O` bf16) and, with the same draw, its gradient (`F` the
    /// gradient's dtype, `O` f32).
    #[allow(clippy::too_many_arguments)]
    #[cube(launch_unchecked)]
    pub(super) fn drop_values<F: Float, O: Float>(
        x: &Array<F>,
        out: &mut Array<O>,
        n: usize,
        seed: u32,
        threshold: u32,
        inv_keep: f32,
        #[define(F, O)] _dtypes: [StorageType; 2],
    ) {
        let i = ABSOLUTE_POS;
        if i < n {
            let draw = Draw {
                seed,
                threshold,
                inv_keep,
            };
            out[i] = O::cast_from(dropped(f32::cast_from(x[i]), i, &draw, true));
        }
    }

    /// 1 where a value is kept, 0 where it is dropped.
    #[cube(launch_unchecked)]
    pub(super) fn keep_mask(out: &mut Array<f32>, n: usize, seed: u32, threshold: u32) {
        let i = ABSOLUTE_POS;
        if i < n {
            out[i] = select(
                kept(seed, u32::cast_from(i), threshold),
                f32::new(1.0),
                f32::new(0.0),
            );
        }
    }
}

/// Makes the mask of one seed.
#[derive(Debug)]
struct KeepMask {
    device: cubecl::cuda::CudaDevice,
    n: usize,
    seed: u32,
    threshold: u32,
}

impl Kernels for KeepMask {
    fn run(&self, _inputs: Vec<Cube>) -> Vec<Cube> {
        let n = self.n;
        let out = empty_on(&self.device, Shape::new([n]), DType::F32);
        // SAFETY: `i < n` bounds the only index; `out` holds n values.
        unsafe {
            kernels::keep_mask::launch_unchecked(
                &out.client,
                CubeCount::Static((n as u32).div_ceil(CUBE), 1, 1),
                CubeDim::new_1d(CUBE),
                out.clone().into_array_arg(),
                n,
                self.seed,
                self.threshold,
            )
        };
        vec![out]
    }
}

/// A dropout's draw as a launch takes it: seed, threshold and 1 / keep
/// (`dropout` false: no dropout, the rest unused).
#[derive(Debug, Clone, Copy)]
pub(crate) struct KernelDraw {
    pub seed: u32,
    pub threshold: u32,
    pub inv_keep: f32,
    pub dropout: bool,
}

impl KernelDraw {
    pub(crate) fn new(draw: Option<Seeded>) -> Self {
        KernelDraw {
            seed: draw.map_or(0, |d| d.seed),
            threshold: draw.map_or(u32::MAX, |d| threshold(d.keep)),
            inv_keep: draw.map_or(1.0, |d| (1.0 / d.keep) as f32),
            dropout: draw.is_some(),
        }
    }
}

/// The mask of `seed` with keep probability `keep` on a CUDA device: 1.0
/// where a value is kept, 0.0 where it is dropped.
fn keep_mask<const D: usize>(
    seed: u32,
    keep: f64,
    shape: [usize; D],
    device: &cubecl::cuda::CudaDevice,
) -> Tensor<Gpu, D> {
    let threshold = threshold(keep);
    let n: usize = shape.iter().product();
    let mut out = launch_new(
        "ftl_dropout_mask",
        device,
        vec![(Shape::new([n]), DType::F32)],
        KeepMask {
            device: device.clone(),
            n,
            seed,
            threshold,
        },
    );
    Tensor::<Gpu, 1>::from_primitive(burn::tensor::TensorPrimitive::Float(same_type(
        out.remove(0),
    )))
    .reshape(shape)
}

/// Where ftl's draws apply (training on CUDA), the values a dropout of
/// `shape` zeroes, drawn from the next seed; `None` elsewhere.
pub(crate) fn dropped<B: Backend, const D: usize>(
    shape: [usize; D],
    keep: f64,
    device: &B::Device,
) -> Option<Tensor<B, D, Bool>> {
    if TypeId::of::<B>() != TypeId::of::<Autodiff<Gpu>>() {
        return None;
    }
    let device: &cubecl::cuda::CudaDevice = (device as &dyn std::any::Any).downcast_ref()?;
    let mask = keep_mask(Draws::next(), keep, shape, device).equal_elem(0.0);
    Some(Tensor::from_primitive(same_type(mask.into_primitive())))
}

/// `dropped(x)` of one draw for every value of a tensor, written in `out`.
#[derive(Debug)]
struct DropValues {
    draw: KernelDraw,
    out: DType,
}

impl Kernels for DropValues {
    fn run(&self, inputs: Vec<Cube>) -> Vec<Cube> {
        let [x]: [Cube; 1] = inputs.try_into().expect("one input");
        let x = contiguous(x);
        let shape = x.meta.shape().clone();
        let n = shape.num_elements();
        let out = empty(&x, shape, self.out);
        let dtypes = [x.dtype.into(), self.out.into()];
        // SAFETY: `i < n` bounds both contiguous tensors of n values.
        unsafe {
            kernels::drop_values::launch_unchecked::<Runtime>(
                &x.client,
                CubeCount::Static((n as u32).div_ceil(CUBE), 1, 1),
                CubeDim::new_1d(CUBE),
                x.clone().into_array_arg(),
                out.clone().into_array_arg(),
                n,
                self.draw.seed,
                self.draw.threshold,
                self.draw.inv_keep,
                dtypes,
            )
        };
        vec![out]
    }
}

/// [`DropValues`] as an operation of the fusion stream.
fn drop_values(x: FloatTensor<Gpu>, draw: KernelDraw, out: DType) -> FloatTensor<Gpu> {
    let shape = burn::tensor::TensorMetadata::shape(&x);
    let mut outputs = launch_typed(
        "ftl_drop_values",
        vec![same_type::<_, Prim>(x)],
        vec![(shape, out)],
        DropValues { draw, out },
    );
    same_type(outputs.remove(0))
}

/// The gradient of [`dropped_half`]'s input: the output's, dropped by the
/// same draw, in f32.
#[derive(Debug)]
struct DroppedHalfBackward;

impl Backward<Gpu, 1> for DroppedHalfBackward {
    type State = KernelDraw;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<Gpu>(&ops.node);
        if let Some(node) = node {
            grads.register::<Gpu>(node.id, drop_values(grad, ops.state, DType::F32));
        }
    }
}

/// An adapter's input dropped and cast to bf16 in one kernel, its
/// gradient dropped by the same draw in one more: where tensor operations
/// draw a mask, compare it, fill, scale and cast (five launches forward,
/// three backward). The draw is the next seed's, as [`dropped`] takes it,
/// so the values are the ones the tensor operations give. Applies when
/// training on CUDA with an f32 input; `None` elsewhere.
pub(crate) fn dropped_half<B: Backend, const D: usize>(
    input: &Tensor<B, D>,
    keep: f64,
) -> Option<Tensor<B, D>> {
    if TypeId::of::<B>() != TypeId::of::<Autodiff<Gpu>>() || input.dtype() != DType::F32 {
        return None;
    }
    let x = same_type::<_, Tensor<Autodiff<Gpu>, D>>(input.clone())
        .into_primitive()
        .tensor();
    let draw = KernelDraw::new(Some(Seeded {
        seed: Draws::next(),
        keep,
    }));
    let out = drop_values(x.primitive, draw, DType::BF16);
    let out = match DroppedHalfBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(draw, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(same_type(Tensor::<Autodiff<Gpu>, D>::from_primitive(
        TensorPrimitive::Float(out),
    )))
}
