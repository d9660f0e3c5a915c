//! Dequantization of a packed base weight ([`super::projection::Packed`])
//! as one ftl kernel: one operation of burn's fusion stream, one launch.
//!
//! Done with tensor operations, a 4-bit weight with double-quantized scales
//! is a shift and a mask of the codes, a slice, a codebook lookup, the same
//! steps again for the 8-bit scale codes, a repeat of the group scales, the
//! products and sums of the scales, two reshapes and slices, and the cast to
//! bf16 for the product: on the H200 about twelve launches for each of a
//! layer's six weights, every step (MPNet QLoRA: 1,936 launches a step,
//! 1,048 for LoRA; 1,090 with this kernel, BENCHMARKS.md). Here one thread computes one value: it takes its code
//! from its word, looks it up in the codebook, and multiplies it by its
//! block's scale, which it decodes itself from the 8-bit scale code and its
//! group's scale when the scales are double-quantized. The arithmetic is
//! the tensor path's, in the same order and in f32, so the values are the
//! same; `bench/qlora_check.rs` compares the two on the GPU.
//!
//! [`applies`] says when it is used: on ftl's CUDA backend.

use std::any::TypeId;

use burn::prelude::*;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{DType, Shape};
use cubecl::prelude::{CubeCount, CubeDim};

use crate::runtime::backend::{Gpu, same_type};
use crate::runtime::fusion_op::{Cube, Kernels, Prim, Runtime, contiguous, empty, launch_typed};

/// Threads per cube.
const CUBE: u32 = 256;

mod kernels {
    use cubecl::prelude::*;

    /// Code `i` of `words`, `bits` wide, lowest bits first.
    #[cube]
    fn code<N: Int>(words: &Array<N>, i: usize, bits: u32) -> usize {
        let per_word = usize::cast_from(32u32 / bits);
        let word = u32::cast_from(words[i / per_word]);
        let shift = u32::cast_from(i % per_word) * bits;
        let mask = (1u32 << bits) - 1;
        usize::cast_from((word >> shift) & mask)
    }

    /// `codebook[code] · scales[block]` in `O`.
    #[allow(clippy::too_many_arguments)]
    #[cube(launch_unchecked)]
    pub(super) fn plain<N: Int, O: Float>(
        words: &Array<N>,
        codebook: &Array<f32>,
        scales: &Array<f32>,
        out: &mut Array<O>,
        n: usize,
        bits: u32,
        block_size: usize,
        #[define(N, O)] _dtypes: [StorageType; 2],
    ) {
        let i = ABSOLUTE_POS;
        if i < n {
            let value = codebook[code::<N>(words, i, bits)];
            out[i] = O::cast_from(value * scales[i / block_size]);
        }
    }

    /// The same with the block's scale decoded from its signed 8-bit code
    /// (four to a word) and its group's scale: `code · group / 127 + offset`.
    #[allow(clippy::too_many_arguments)]
    #[cube(launch_unchecked)]
    pub(super) fn double<N: Int, O: Float>(
        words: &Array<N>,
        codebook: &Array<f32>,
        scale_words: &Array<N>,
        group_scales: &Array<f32>,
        out: &mut Array<O>,
        n: usize,
        bits: u32,
        block_size: usize,
        group: usize,
        offset: f32,
        #[define(N, O)] _dtypes: [StorageType; 2],
    ) {
        let i = ABSOLUTE_POS;
        if i < n {
            let value = codebook[code::<N>(words, i, bits)];
            let block = i / block_size;
            let byte = code::<N>(scale_words, block, 8u32);
            // Signed: (u ^ 0x80) - 0x80, as the tensor path computes it.
            let signed = i32::cast_from(byte ^ 128usize) - 128i32;
            let scale =
                f32::cast_from(signed) * group_scales[block / group] / f32::new(127.0) + offset;
            out[i] = O::cast_from(value * scale);
        }
    }
}

/// Whether the kernel dequantizes on backend `I`: ftl's CUDA backend.
pub(crate) fn applies<I: Backend>() -> bool {
    TypeId::of::<I>() == TypeId::of::<Gpu>()
}

/// How the codes and scales are laid out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    /// Bits per code: 4 or 8.
    pub bits: usize,
    /// Values per block scale.
    pub block_size: usize,
    /// Block scales per group scale (double quantization).
    pub group: usize,
    /// Added to each decoded block scale (double quantization).
    pub offset: f32,
    /// The weight's `[d_in, d_out]`.
    pub dims: [usize; 2],
    /// The output's dtype.
    pub out: DType,
}

/// Where the block scales come from.
pub(crate) enum Scales<I: Backend> {
    /// One f32 per block.
    Plain(FloatTensor<I>),
    /// Signed 8-bit codes, four per word, and one f32 per group.
    Double(IntTensor<I>, FloatTensor<I>),
}

#[derive(Debug)]
struct Dequantize {
    layout: Layout,
    double: bool,
}

impl Kernels for Dequantize {
    fn run(&self, inputs: Vec<Cube>) -> Vec<Cube> {
        let inputs: Vec<Cube> = inputs.into_iter().map(contiguous).collect();
        let l = self.layout;
        let n = l.dims[0] * l.dims[1];
        let words = &inputs[0];
        let out = empty(words, Shape::new(l.dims), l.out);
        let cubes = CubeCount::Static((n as u32).div_ceil(CUBE), 1, 1);
        let dtypes = [words.dtype.into(), l.out.into()];
        // SAFETY: `i < n` bounds the fresh, contiguous output. The codes
        // fill whole blocks (`Packed::from_host`), so word `i / per_word`
        // and block `i / block_size` exist for every `i < n`; so do the
        // scale code of each block and the group scale of each scale code.
        unsafe {
            if self.double {
                kernels::double::launch_unchecked::<Runtime>(
                    &words.client,
                    cubes,
                    CubeDim::new_1d(CUBE),
                    words.clone().into_array_arg(),
                    inputs[1].clone().into_array_arg(),
                    inputs[2].clone().into_array_arg(),
                    inputs[3].clone().into_array_arg(),
                    out.clone().into_array_arg(),
                    n,
                    l.bits as u32,
                    l.block_size,
                    l.group,
                    l.offset,
                    dtypes,
                );
            } else {
                kernels::plain::launch_unchecked::<Runtime>(
                    &words.client,
                    cubes,
                    CubeDim::new_1d(CUBE),
                    words.clone().into_array_arg(),
                    inputs[1].clone().into_array_arg(),
                    inputs[2].clone().into_array_arg(),
                    out.clone().into_array_arg(),
                    n,
                    l.bits as u32,
                    l.block_size,
                    dtypes,
                );
            }
        }
        vec![out]
    }
}

/// The weight `[d_in, d_out]` from its codes `words`, `codebook` and block
/// scales, in `layout.out`. Call only where [`applies`] said so.
pub(crate) fn dequantize<I: Backend>(
    words: IntTensor<I>,
    codebook: FloatTensor<I>,
    scales: Scales<I>,
    layout: Layout,
) -> FloatTensor<I> {
    let mut inputs: Vec<Prim> = vec![same_type(words), same_type(codebook)];
    let double = match scales {
        Scales::Plain(s) => {
            inputs.push(same_type(s));
            false
        }
        Scales::Double(codes, groups) => {
            inputs.push(same_type(codes));
            inputs.push(same_type(groups));
            true
        }
    };
    let mut out = launch_typed(
        "ftl_dequantize",
        inputs,
        vec![(Shape::new(layout.dims), layout.out)],
        Dequantize { layout, double },
    );
    same_type(out.remove(0))
}
