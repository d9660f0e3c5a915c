//! AdamW with decoupled weight decay (Loshchilov & Hutter; PyTorch's
//! `torch.optim.AdamW`), the global gradient norm and its clipping, and the
//! learning-rate schedules.
//!
//! The optimizer keeps the trained parameters in two flat buffers, beside
//! flat first and second moments, and hands the model views into them: the
//! matrices (weights, embeddings), which decay, and the vectors (biases,
//! LayerNorm), which do not, as Hugging Face's trainer does. On CUDA one
//! step is one operation ([`multi`]): ftl's own kernels read each gradient
//! where autodiff left it, take the global norm, clip and update up to
//! eight parameters per launch, in place.
//! Elsewhere a step gathers the gradients into the same two layouts (one
//! copy per parameter), then takes the norm, clips and updates every
//! parameter in a handful of kernels per group instead of several per
//! parameter. The moments can be read out and restored per parameter, for
//! checkpoints.
//!
//! **bf16 views** ([`AdamW::keep_in_half`]): on CUDA, the weights that only
//! bf16 products read (a trained dense layer's weight, an adapter's `A` and
//! `B`) are handed to the model as views of a bf16 copy of the f32 master,
//! which the step's kernel writes beside the master. The forward pass then
//! casts no trained weight, and autodiff gives those weights bf16
//! gradients, which the step reads as they are: no cast of a weight each
//! way, per weight and step. The values are the ones the casts gave: the
//! bf16 copy is the master rounded as a cast rounds it, and the gradient of
//! a cast was the bf16 gradient widened. [`AdamW::masters`] gives the model
//! with f32 views of the masters again, for checkpoints and saving.

use std::collections::{HashMap, HashSet};

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use crate::config::{self, Schedule, Warmup};

/// First and second moments of one parameter, flattened.
#[derive(Clone, Debug)]
pub struct Moments<B: Backend> {
    /// Running mean of gradients.
    pub m: Tensor<B, 1>,
    /// Running mean of squared gradients.
    pub v: Tensor<B, 1>,
}

/// Each parameter starts on a multiple of this many values in its flat
/// buffer (512 bytes of f32): on CUDA, a slice whose start and end are
/// multiples of cubecl's memory alignment (512 bytes, `cubecl-cuda`'s
/// `runtime.rs`) is a view, where any other would be a copy. No finer: a
/// parameter whose size is not a multiple is followed by a gap of zeros in
/// the gathered gradients, and each gap is one more copy a step. At 512
/// bytes, every parameter of MiniLM and MPNet but the classifier's bias is
/// a whole number of them (384, 768, 1,536 and 3,072 values); at 1 KiB,
/// MiniLM's 384-value vectors each left a gap.
const ALIGN: usize = 128;

/// [`ALIGN`] for the bf16 copies: 512 bytes of bf16.
const HALF_ALIGN: usize = 256;

/// The group of matrices (which decay) and the group of vectors.
const MATRICES: usize = 0;
const VECTORS: usize = 1;

/// Where one parameter lives.
#[derive(Clone, Debug, PartialEq)]
struct Segment {
    id: ParamId,
    group: usize,
    offset: usize,
    dims: Vec<usize>,
    /// Its offset in the group's bf16 copy, when the model sees that copy.
    half: Option<usize>,
}

impl Segment {
    fn len(&self) -> usize {
        self.dims.iter().product()
    }
    fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// One group's flat parameters and moments.
#[derive(Debug)]
struct Flat<B: Backend> {
    p: Tensor<B, 1>,
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
    /// bf16 copies of the group's parameters the model sees in bf16, each
    /// at its segment's `half` offset; `None` when there are none.
    h: Option<Tensor<B, 1>>,
}

/// AdamW's state.
#[derive(Debug)]
pub struct AdamW<B: Backend> {
    settings: config::AdamW,
    /// Steps taken (bias correction uses it).
    pub steps: u64,
    layout: Vec<Segment>,
    /// Each group's buffers (none for a group with no parameter).
    flat: [Option<Flat<B>>; 2],
    /// Moments restored from a checkpoint, placed at the next step.
    restored: HashMap<ParamId, Moments<B>>,
    /// Parameters the model is to see in bf16 ([`AdamW::keep_in_half`]).
    half: HashSet<ParamId>,
}

/// One step's trained parameters and their gradients, in the model's order.
struct Gathered<B: Backend> {
    ids: Vec<(ParamId, Vec<usize>)>,
    grads: Vec<Tensor<B, 1>>,
}

impl<B: Backend> AdamW<B> {
    /// A fresh optimizer.
    pub fn new(settings: config::AdamW) -> Self {
        AdamW {
            settings,
            steps: 0,
            layout: Vec::new(),
            flat: [None, None],
            restored: HashMap::new(),
            half: HashSet::new(),
        }
    }

    /// Hands the model the matrices `ids` as bf16 views of their masters
    /// from [`AdamW::prepare`] on (see the module documentation). Name only
    /// weights that nothing but bf16 products reads, and only when each
    /// step's gradients come from one backward pass (accumulated in bf16
    /// they would round). Takes effect on ftl's CUDA backend only, where
    /// the step's kernel writes the copies; elsewhere every parameter stays
    /// f32.
    pub fn keep_in_half(&mut self, ids: impl IntoIterator<Item = ParamId>) {
        self.half = ids.into_iter().collect();
    }

    /// Whether bf16 views are made at all: on ftl's CUDA backend.
    fn shadows() -> bool {
        #[cfg(feature = "cuda")]
        {
            std::any::TypeId::of::<B>() == std::any::TypeId::of::<crate::runtime::backend::Gpu>()
        }
        #[cfg(not(feature = "cuda"))]
        {
            false
        }
    }

    /// The moments of parameter `id`, if it has been trained or restored.
    pub fn moments(&self, id: &ParamId) -> Option<Moments<B>> {
        if let Some(m) = self.restored.get(id) {
            return Some(m.clone());
        }
        let s = self.layout.iter().find(|s| s.id == *id)?;
        let flat = self.flat[s.group].as_ref()?;
        Some(Moments {
            m: flat.m.clone().slice(s.range()),
            v: flat.v.clone().slice(s.range()),
        })
    }

    /// Sets the moments of parameter `id` (from a checkpoint, before the
    /// first step).
    pub fn restore(&mut self, id: ParamId, moments: Moments<B>) {
        self.restored.insert(id, moments);
    }

    /// One update of every parameter that has a gradient in `grads`, with
    /// the gradients first scaled to a global L2 norm of at most `clip`.
    /// `model` must be the model the previous step returned (its trained
    /// parameters are views of this optimizer's buffers). Returns the
    /// updated model and the gradients' global norm before clipping, as a
    /// 1-element tensor (reading it waits for the device), or `None` when
    /// nothing has a gradient.
    pub fn step<AB, M>(
        &mut self,
        model: M,
        mut grads: GradientsParams,
        lr: f64,
        clip: Option<f64>,
    ) -> (M, Option<Tensor<B, 1>>)
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        let mut gathered = Gathered {
            ids: Vec::new(),
            grads: Vec::new(),
        };
        model.visit(&mut Gather {
            grads: &mut grads,
            out: &mut gathered,
        });
        let Some(device) = gathered.grads.first().map(|g| g.device()) else {
            return (model, None);
        };
        self.steps += 1;
        let same = gathered.ids.len() == self.layout.len()
            && gathered
                .ids
                .iter()
                .zip(&self.layout)
                .all(|((id, dims), s)| *id == s.id && *dims == s.dims);
        let model = if same {
            model
        } else {
            // Laid out anew from the f32 masters, not the bf16 views.
            let model = self.masters(model);
            self.relayout(&model, &gathered.ids, &device);
            model
        };
        let s = self.settings;
        let [b1, b2] = s.betas;
        let t = self.steps as i32;
        let correction1 = 1.0 - b1.powi(t);
        let correction2 = 1.0 - b2.powi(t);
        let hyper = [MATRICES, VECTORS].map(|group| Hyper {
            b1,
            b2,
            eps: s.eps,
            decay: if group == MATRICES && s.weight_decay > 0.0 {
                1.0 - lr * s.weight_decay
            } else {
                1.0
            },
            step: lr / correction1,
            correction2_sqrt: correction2.sqrt(),
        });

        // The model's trained parameters are views of the flat buffers;
        // each path below lets go of them before its update, so that the
        // update can write the buffers in place instead of allocating a
        // second copy of every parameter.
        #[cfg(feature = "cuda")]
        let grads = if multi::applies(&self.flat, &self.layout, &gathered.grads) {
            let model = self.release(model);
            let placed = self
                .layout
                .iter()
                .map(|s| multi::Place {
                    group: s.group,
                    offset: s.offset,
                    half: s.half,
                })
                .zip(gathered.grads)
                .collect();
            let (flat, norm) = multi::step(std::mem::take(&mut self.flat), placed, hyper, clip);
            self.flat = flat;
            return (self.place(model), Some(norm));
        } else {
            gathered.grads
        };
        #[cfg(not(feature = "cuda"))]
        let grads = gathered.grads;
        // A bf16 view's gradient is bf16: the flat layout is f32.
        let grads = grads
            .into_iter()
            .map(|g| {
                if g.dtype() == burn::tensor::DType::F32 {
                    g
                } else {
                    g.cast(burn::tensor::FloatDType::F32)
                }
            })
            .collect();

        let (g, norm) = self.gather(grads, &device);
        let factor = clip.map(|max| clip_factor(norm.clone(), max));
        let model = self.release(model);
        let mut flat = std::mem::take(&mut self.flat);
        for (group, g) in g.into_iter().enumerate() {
            let (Some(g), Some(Flat { p, m, v, h })) = (g, flat[group].take()) else {
                continue;
            };
            let (p, m, v) = update(p, m, v, g, factor.clone(), hyper[group]);
            let h = h.map(|_| self.half_copies(&p, group));
            flat[group] = Some(Flat { p, m, v, h });
        }
        self.flat = flat;
        (self.place(model), Some(norm))
    }

    /// `model` with every trained parameter an f32 view of its master
    /// (where [`AdamW::keep_in_half`] had it see a bf16 copy): what a
    /// checkpoint or a saved model holds. The optimizer keeps the copies;
    /// the next [`AdamW::step`] takes either form.
    pub fn masters<AB, M>(&self, model: M) -> M
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        if self.layout.iter().all(|s| s.half.is_none()) {
            return model;
        }
        model.map(&mut Place {
            layout: &self.layout,
            flat: &self.flat,
            half: false,
        })
    }

    /// Group `group`'s bf16 copies, from its parameters `p`: each half
    /// segment's values cast, zeros between.
    fn half_copies(&self, p: &Tensor<B, 1>, group: usize) -> Tensor<B, 1> {
        let device = p.device();
        let zeros =
            |len: usize| Tensor::<B, 1>::zeros([len], &device).cast(burn::tensor::FloatDType::BF16);
        let mut parts = Vec::new();
        let mut end = 0;
        for s in self.layout.iter().filter(|s| s.group == group) {
            let Some(at) = s.half else { continue };
            if at > end {
                parts.push(zeros(at - end));
            }
            parts.push(
                p.clone()
                    .slice(s.range())
                    .cast(burn::tensor::FloatDType::BF16),
            );
            end = at + s.len();
        }
        let n = end.next_multiple_of(HALF_ALIGN);
        if n > end {
            parts.push(zeros(n - end));
        }
        Tensor::cat(parts, 0)
    }

    /// `model` with its trained parameters let go ([`Release`]).
    fn release<AB, M>(&self, model: M) -> M
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        model.map(&mut Release {
            layout: &self.layout,
            placeholders: HashMap::new(),
        })
    }

    /// `model` with its trained parameters set to their views of the flat
    /// buffers ([`Place`]).
    fn place<AB, M>(&self, model: M) -> M
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        model.map(&mut Place {
            layout: &self.layout,
            flat: &self.flat,
            half: true,
        })
    }

    /// The gradients copied into the flat layout, one tensor per group, and
    /// their global norm: the step on the CPU, and on CUDA wherever
    /// [`multi`] declines.
    fn gather(
        &self,
        grads: Vec<Tensor<B, 1>>,
        device: &B::Device,
    ) -> ([Option<Tensor<B, 1>>; 2], Tensor<B, 1>) {
        // The gradients, laid out as the parameters are: each followed by
        // zeros up to the next parameter's offset. One concatenation
        // allocates each group once; writing into a buffer of zeros took a
        // second, transient copy of it.
        // The gaps are views of one small buffer of zeros (a gap is shorter
        // than ALIGN): no kernel per gap.
        let zeros = Tensor::<B, 1>::zeros([ALIGN], device);
        let gap = |len: usize| zeros.clone().slice(0..len);
        let mut parts: [Vec<Tensor<B, 1>>; 2] = [Vec::new(), Vec::new()];
        let mut ends = [0usize; 2];
        for (s, grad) in self.layout.iter().zip(grads) {
            if s.offset > ends[s.group] {
                parts[s.group].push(gap(s.offset - ends[s.group]));
            }
            parts[s.group].push(grad);
            ends[s.group] = s.offset + s.len();
        }
        let g: [Option<Tensor<B, 1>>; 2] = [0, 1].map(|group| {
            let n = self.flat[group].as_ref()?.p.dims()[0];
            let mut parts = std::mem::take(&mut parts[group]);
            if n > ends[group] {
                parts.push(gap(n - ends[group]));
            }
            Some(Tensor::cat(parts, 0))
        });
        let norm = g
            .iter()
            .flatten()
            .map(|g| sum_of_squares(g, PIECE))
            .reduce(|a, b| a + b)
            .expect("a gradient")
            .sqrt();
        (g, norm)
    }

    /// Lays the trained parameters of `model` (those that require a
    /// gradient) out in this optimizer's flat buffers now, before the first
    /// forward pass, and returns the model with views of them. The model's
    /// own copies are let go here, so the first step holds what every later
    /// step holds. Without this the first step lays the parameters out
    /// itself, while the loaded copies and the gradients are both alive: on
    /// CUDA, whose memory pool keeps every buffer it ever allocated, that
    /// high point stayed reserved for the whole run.
    pub fn prepare<AB, M>(&mut self, model: M) -> M
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        let mut trained = Trained {
            ids: Vec::new(),
            device: None,
        };
        model.visit(&mut trained);
        let Some(device) = trained.device else {
            return model;
        };
        self.relayout(&model, &trained.ids, &device);
        self.place(model)
    }

    /// Lays the parameters `ids` of `model` out in fresh flat buffers,
    /// carrying over the moments of those that had some. Each buffer is one
    /// concatenation: the values, and zeros in the gaps and wherever a
    /// parameter has no moments yet.
    fn relayout<AB, M>(&mut self, model: &M, ids: &[(ParamId, Vec<usize>)], device: &B::Device)
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        let mut values = Values {
            wanted: ids.iter().map(|(id, _)| *id).collect(),
            found: HashMap::new(),
        };
        model.visit(&mut values);
        let mut kept: HashMap<ParamId, Moments<B>> = std::mem::take(&mut self.restored);
        for (id, _) in ids {
            if !kept.contains_key(id)
                && let Some(m) = self.moments(id)
            {
                kept.insert(*id, m);
            }
        }
        let mut ends = [0usize; 2];
        let mut half_ends = [0usize; 2];
        let shadows = Self::shadows();
        self.layout = ids
            .iter()
            .map(|(id, dims)| {
                let group = if dims.len() >= 2 { MATRICES } else { VECTORS };
                let len: usize = dims.iter().product();
                let half = (shadows && group == MATRICES && self.half.contains(id)).then(|| {
                    let at = half_ends[group];
                    half_ends[group] = (at + len).next_multiple_of(HALF_ALIGN);
                    at
                });
                let s = Segment {
                    id: *id,
                    group,
                    offset: ends[group],
                    dims: dims.clone(),
                    half,
                };
                ends[group] = (s.offset + s.len()).next_multiple_of(ALIGN);
                s
            })
            .collect();
        let zeros = |len: usize| Tensor::<B, 1>::zeros([len], device);
        self.flat = [MATRICES, VECTORS].map(|group| {
            let n = ends[group];
            if n == 0 {
                return None;
            }
            let segments: Vec<&Segment> = self.layout.iter().filter(|s| s.group == group).collect();
            // Parts of one buffer: each segment's tensor, zeros between.
            let build = |part: &mut dyn FnMut(&Segment) -> Tensor<B, 1>| {
                let mut parts = Vec::new();
                let mut end = 0;
                for s in &segments {
                    if s.offset > end {
                        parts.push(zeros(s.offset - end));
                    }
                    parts.push(part(s));
                    end = s.offset + s.len();
                }
                if n > end {
                    parts.push(zeros(n - end));
                }
                Tensor::cat(parts, 0)
            };
            let p = build(&mut |s| values.found.remove(&s.id).expect("visited above"));
            let (m, v) = if segments.iter().any(|s| kept.contains_key(&s.id)) {
                let m = build(&mut |s| {
                    kept.get(&s.id)
                        .map_or_else(|| zeros(s.len()), |x| x.m.clone())
                });
                let v = build(&mut |s| kept.remove(&s.id).map_or_else(|| zeros(s.len()), |x| x.v));
                (m, v)
            } else {
                (zeros(n), zeros(n))
            };
            Some(Flat { p, m, v, h: None })
        });
        for group in [MATRICES, VECTORS] {
            if half_ends[group] > 0
                && let Some(p) = self.flat[group].as_ref().map(|f| f.p.clone())
            {
                let h = self.half_copies(&p, group);
                self.flat[group].as_mut().expect("its group").h = Some(h);
            }
        }
    }
}

/// The trained parameters' ids and shapes, in the model's order, and their
/// device.
struct Trained<B: Backend> {
    ids: Vec<(ParamId, Vec<usize>)>,
    device: Option<B::Device>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for Trained<AB::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        if param.is_require_grad() {
            let value = param.val();
            self.device.get_or_insert_with(|| value.device());
            self.ids.push((param.id, value.dims().to_vec()));
        }
    }
}

/// The most values whose squares [`sum_of_squares`] takes at once: 4 Mi
/// values, 16 MiB of f32.
const PIECE: usize = 1 << 22;

/// The sum of the squares of `g`'s values, taken in at most 8 pieces of at
/// least `piece` values each, as a 1-element tensor.
///
/// On burn's fused CUDA backend the squares of a whole group were one new
/// buffer the size of the parameters, and the memory pool kept it for the
/// whole run: with MPNet, a fifth 435 MB buffer beside the parameters,
/// their gradients and the two moments. In pieces the squares take an
/// eighth of that, one piece at a time. Each piece starts on a multiple of
/// [`ALIGN`] values, where a slice is a view.
fn sum_of_squares<B: Backend>(g: &Tensor<B, 1>, piece: usize) -> Tensor<B, 1> {
    let n = g.dims()[0];
    let pieces = (n / piece.max(1)).clamp(1, 8);
    let len = n.div_ceil(pieces).next_multiple_of(ALIGN).max(1);
    (0..n)
        .step_by(len)
        .map(|start| {
            g.clone()
                .slice(start..(start + len).min(n))
                .powi_scalar(2)
                .sum()
        })
        .reduce(|a, b| a + b)
        .unwrap_or_else(|| Tensor::zeros([1], &g.device()))
}

/// The numbers one group's update uses.
#[derive(Clone, Copy, Debug)]
struct Hyper {
    b1: f64,
    b2: f64,
    eps: f64,
    /// What the parameters are multiplied by first: 1 − lr·weight decay,
    /// or 1 for a group that does not decay.
    decay: f64,
    /// lr / (1 − b1^t).
    step: f64,
    /// √(1 − b2^t).
    correction2_sqrt: f64,
}

/// One group's AdamW update: the gradients `g` (scaled by `factor` when
/// clipping) move the moments `m`, `v` and the parameters `p`. Returns the
/// new `p`, `m` and `v`.
///
/// The tensor operations below reuse their inputs' buffers on the CPU. On
/// burn's fused CUDA backend they would not (fused kernels there write
/// every output to a new buffer: seven buffers the size of the parameters
/// at once, `bench/update_memory.rs`); there [`multi`] takes the step.
fn update<B: Backend>(
    p: Tensor<B, 1>,
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
    g: Tensor<B, 1>,
    factor: Option<Tensor<B, 1>>,
    h: Hyper,
) -> (Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>) {
    let g = match factor {
        Some(f) => g * f,
        None => g,
    };
    // b1·m + (1 − b1)·g, written so that every operation can reuse its
    // input's buffer: no temporary the size of the parameters.
    let m = m.sub(g.clone()).mul_scalar(h.b1).add(g.clone());
    let v = v.mul_scalar(h.b2) + g.powi_scalar(2).mul_scalar(1.0 - h.b2);
    let p = if h.decay != 1.0 {
        p.mul_scalar(h.decay)
    } else {
        p
    };
    let denom = v
        .clone()
        .sqrt()
        .div_scalar(h.correction2_sqrt)
        .add_scalar(h.eps);
    let p = p - denom.recip().mul(m.clone()).mul_scalar(h.step);
    (p, m, v)
}

/// The whole optimizer step as one operation on the CUDA backend
/// (`fusion_op`), reading each parameter's gradient where autodiff left
/// it: no copy of the gradients into the flat layout.
///
/// Two kernels of ftl's own do the work, each over up to [`PER_LAUNCH`]
/// gradients of one group (and one gradient dtype) per launch: one sums
/// the squares of the gradients into partial sums (one per GPU thread, so
/// the sum is the same from run to run), the other applies the clipped
/// AdamW update to the parameters and moments at each gradient's offset in
/// the flat buffers, in place, and writes the bf16 copy of each parameter
/// that has one. The gathered step held the gradients twice at its high
/// point (autodiff's own, and their flat copy) and, on CUDA, the memory
/// pool kept both for the whole run: with MPNet, 435 MB more than the four
/// buffers of parameters, gradients and moments that PyTorch's loop holds.
/// It also launched one copy per parameter (about 200 for MPNet) where
/// these kernels launch about 2 per 32 parameters.
#[cfg(feature = "cuda")]
mod multi {
    use std::any::TypeId;

    use burn::prelude::*;
    use burn::tensor::ops::FloatTensorOps;
    use burn::tensor::{DType, Scalar, Shape};
    use cubecl::prelude::{CubeCount, CubeDim, SequenceArg};

    use super::{Flat, Hyper};
    use crate::runtime::backend::{Gpu, same_type};
    use crate::runtime::fusion_op::{
        Cube, Inner, Kernels, Prim, Runtime, contiguous, empty, empty_f32, launch_typed,
    };

    /// Gradients per kernel launch. Each launch compiles one kernel per
    /// count of gradients it reads (1 to 32) and their dtype. At 8, MPNet's
    /// step launched each kernel 26 times, every launch one operation of
    /// burn's fusion thread, which bounds the step (BENCHMARKS.md).
    const PER_LAUNCH: usize = 32;
    /// Threads per cube.
    const CUBE: u32 = 256;
    /// The most threads one launch starts; each thread strides over the
    /// rest.
    const MAX_UNITS: usize = 1 << 17;

    use kernels::{adamw, sum_of_squares};

    /// ftl's own CUDA kernels.
    mod kernels {
        use cubecl::prelude::*;

        /// `partials[base + i]` = the sum of squares of every `stride`-th value
        /// of the gradients, starting at value `i` of each, in f32.
        #[cube(launch_unchecked)]
        pub(super) fn sum_of_squares<G: Float>(
            grads: Sequence<Array<G>>,
            partials: &mut Array<f32>,
            base: usize,
            stride: usize,
            #[define(G)] _dtype: StorageType,
        ) {
            let count = comptime!(grads.len());
            let mut acc = f32::new(0.0);
            #[unroll]
            for k in 0..count {
                let n = grads[k].len();
                let mut i = ABSOLUTE_POS;
                loop {
                    if i >= n {
                        break;
                    }
                    let x = f32::cast_from(grads[k][i]);
                    acc += x * x;
                    i += stride;
                }
            }
            partials[base + ABSOLUTE_POS] = acc;
        }

        /// AdamW on the values of `p`, `m` and `v` at each gradient's offset,
        /// the gradients (in `G`, read as f32) first multiplied by
        /// `factor[0]` when `clipped`; with `copies`, each new value is also
        /// written to `h` (in `S`) at the gradient's `halves` offset.
        #[allow(clippy::too_many_arguments)]
        #[cube(launch_unchecked)]
        pub(super) fn adamw<G: Float, S: Float>(
            p: &mut Array<f32>,
            m: &mut Array<f32>,
            v: &mut Array<f32>,
            h: &mut Array<S>,
            grads: Sequence<Array<G>>,
            offsets: Sequence<usize>,
            halves: Sequence<usize>,
            factor: &Array<f32>,
            b1: f32,
            b2: f32,
            eps: f32,
            decay: f32,
            step: f32,
            correction2_sqrt: f32,
            stride: usize,
            #[comptime] clipped: bool,
            #[comptime] copies: bool,
            #[define(G, S)] _dtypes: [StorageType; 2],
        ) {
            let count = comptime!(grads.len());
            let mut f = f32::new(1.0);
            if clipped {
                f = factor[0];
            }
            #[unroll]
            for k in 0..count {
                let n = grads[k].len();
                let offset = offsets[k];
                let half = halves[k];
                let mut i = ABSOLUTE_POS;
                loop {
                    if i >= n {
                        break;
                    }
                    let g = f32::cast_from(grads[k][i]) * f;
                    let j = offset + i;
                    let m_new = b1 * m[j] + (f32::new(1.0) - b1) * g;
                    let v_new = b2 * v[j] + (f32::new(1.0) - b2) * g * g;
                    m[j] = m_new;
                    v[j] = v_new;
                    let p_new =
                        decay * p[j] - step * m_new / (f32::sqrt(v_new) / correction2_sqrt + eps);
                    p[j] = p_new;
                    if copies {
                        h[half + i] = S::cast_from(p_new);
                    }
                    i += stride;
                }
            }
        }
    }

    type Groups<B> = [Option<Flat<B>>; 2];

    /// Where one gradient goes.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub(super) struct Place {
        pub(super) group: usize,
        /// In the group's f32 buffers.
        pub(super) offset: usize,
        /// In the group's bf16 copies, when the parameter has one.
        pub(super) half: Option<usize>,
    }

    /// Where each input and output of the operation belongs.
    #[derive(Debug)]
    struct Step {
        /// Which groups have buffers (inputs and outputs p, m, v each, in
        /// group order, before the gradients) and which of those have bf16
        /// copies (after their v).
        groups: [bool; 2],
        copies: [bool; 2],
        /// Each gradient's place, in input order.
        placed: Vec<Place>,
        hyper: [Hyper; 2],
        clip: Option<f64>,
    }

    fn units(n: usize) -> usize {
        n.clamp(1, MAX_UNITS).next_multiple_of(CUBE as usize)
    }

    /// The gradients' launches: up to [`PER_LAUNCH`] of one kind each (the
    /// same group, gradient dtype and whether a bf16 copy is written), in
    /// the model's order within the kind, with the threads the longest
    /// needs. `kinds[i]` is gradient `i`'s `(group, kind within the
    /// group)`. Grouping first matters: the model's order alternates
    /// weights and biases, and launches cut at every change held one
    /// gradient each (76 launches of each kernel per MiniLM step, measured).
    fn launches(kinds: &[(usize, usize)], lens: &[usize]) -> Vec<(usize, Vec<usize>, usize)> {
        let mut out = Vec::new();
        for group in [super::MATRICES, super::VECTORS] {
            let mut seen: Vec<usize> = Vec::new();
            for &(g, kind) in kinds {
                if g == group && !seen.contains(&kind) {
                    seen.push(kind);
                }
            }
            for kind in seen {
                let members: Vec<usize> = (0..kinds.len())
                    .filter(|&i| kinds[i] == (group, kind))
                    .collect();
                for chunk in members.chunks(PER_LAUNCH) {
                    let longest = chunk.iter().map(|&i| lens[i]).max().unwrap_or(1);
                    out.push((group, chunk.to_vec(), units(longest)));
                }
            }
        }
        out
    }

    impl Kernels for Step {
        fn run(&self, inputs: Vec<Cube>) -> Vec<Cube> {
            let mut inputs = inputs.into_iter();
            let mut buffers: [Option<Vec<Cube>>; 2] = [None, None];
            for (group, present) in self.groups.iter().enumerate() {
                if *present {
                    let count = if self.copies[group] { 4 } else { 3 };
                    let own = (0..count)
                        .map(|_| {
                            let t = inputs.next().expect("p, m, v (and h)");
                            if t.can_mut() && t.is_contiguous() {
                                t
                            } else {
                                t.copy()
                            }
                        })
                        .collect();
                    buffers[group] = Some(own);
                }
            }
            let grads: Vec<Cube> = inputs.map(contiguous).collect();
            let lens: Vec<usize> = grads.iter().map(|g| g.meta.num_elements()).collect();
            let kinds: Vec<(usize, usize)> = grads
                .iter()
                .zip(&self.placed)
                .map(|(g, place)| {
                    let half = usize::from(g.dtype != DType::F32);
                    (place.group, half * 2 + usize::from(place.half.is_some()))
                })
                .collect();
            let plan = launches(&kinds, &lens);
            let client = grads[0].client.clone();

            // The norm: partial sums, then their sum.
            let total: usize = plan.iter().map(|(_, _, threads)| threads).sum();
            let partials = empty_f32(&grads[0], Shape::new([total]));
            let mut base = 0;
            for (_, members, threads) in &plan {
                let mut seq = SequenceArg::new();
                for &i in members {
                    seq.push(grads[i].clone().into_array_arg());
                }
                // SAFETY: every index is below its array's length: the loop
                // stops at each gradient's length, and `partials` holds
                // `base + threads` values. The members share one dtype.
                unsafe {
                    sum_of_squares::launch_unchecked(
                        &client,
                        CubeCount::Static((*threads as u32) / CUBE, 1, 1),
                        CubeDim::new_1d(CUBE),
                        seq,
                        partials.clone().into_array_arg(),
                        base,
                        *threads,
                        grads[members[0]].dtype.into(),
                    )
                };
                base += threads;
            }
            let sum = Inner::float_sum(partials);
            let norm = Inner::float_sqrt(sum);
            let factor = self.clip.map(|max| {
                let f = Inner::float_add_scalar(norm.clone(), Scalar::Float(1e-6));
                let f = Inner::float_recip(f);
                let f = Inner::float_mul_scalar(f, Scalar::Float(max));
                Inner::float_clamp_max(f, Scalar::Float(1.0))
            });

            // Launches that write no copy still bind one: a one-value bf16
            // buffer they never touch.
            let unused = empty(&grads[0], Shape::new([1]), DType::BF16);
            for (group, members, threads) in &plan {
                let own = buffers[*group].as_ref().expect("the group's buffers");
                let copies = self.placed[members[0]].half.is_some();
                let h = if copies { &own[3] } else { &unused };
                let hyper = self.hyper[*group];
                let mut seq = SequenceArg::new();
                let mut offsets = SequenceArg::<Runtime, usize>::new();
                let mut halves = SequenceArg::<Runtime, usize>::new();
                for &i in members {
                    seq.push(grads[i].clone().into_array_arg());
                    offsets.push(self.placed[i].offset);
                    halves.push(self.placed[i].half.unwrap_or(0));
                }
                let factor = factor.as_ref().unwrap_or(&norm);
                // SAFETY: every gradient lies inside its group's buffers at
                // its offset, and inside the bf16 copies at its half offset
                // when it has one (the layout puts it there); the loop stops
                // at each gradient's length. The members share one dtype and
                // either all have copies or none does.
                unsafe {
                    adamw::launch_unchecked(
                        &client,
                        CubeCount::Static((*threads as u32) / CUBE, 1, 1),
                        CubeDim::new_1d(CUBE),
                        own[0].clone().into_array_arg(),
                        own[1].clone().into_array_arg(),
                        own[2].clone().into_array_arg(),
                        h.clone().into_array_arg(),
                        seq,
                        offsets,
                        halves,
                        factor.clone().into_array_arg(),
                        hyper.b1 as f32,
                        hyper.b2 as f32,
                        hyper.eps as f32,
                        hyper.decay as f32,
                        hyper.step as f32,
                        hyper.correction2_sqrt as f32,
                        *threads,
                        self.clip.is_some(),
                        copies,
                        [grads[members[0]].dtype.into(), h.dtype.into()],
                    )
                };
            }

            let mut outputs: Vec<Cube> = buffers.into_iter().flatten().flatten().collect();
            outputs.push(norm);
            outputs
        }
    }

    /// Whether [`step`] takes this step: `B` is ftl's CUDA backend, every
    /// buffer is f32 but the bf16 copies, every gradient is f32 or bf16,
    /// and every gradient's group has buffers.
    pub(super) fn applies<B: Backend>(
        flat: &Groups<B>,
        layout: &[super::Segment],
        grads: &[Tensor<B, 1>],
    ) -> bool {
        TypeId::of::<B>() == TypeId::of::<Gpu>()
            && !grads.is_empty()
            && layout.iter().all(|s| flat[s.group].is_some())
            && flat
                .iter()
                .flatten()
                .flat_map(|f| [&f.p, &f.m, &f.v])
                .all(|t| t.dtype() == DType::F32)
            && flat
                .iter()
                .flatten()
                .filter_map(|f| f.h.as_ref())
                .all(|t| t.dtype() == DType::BF16)
            && grads
                .iter()
                .all(|t| matches!(t.dtype(), DType::F32 | DType::BF16))
    }

    /// The step as one operation, where [`applies`] said so: the updated
    /// buffers and the gradients' norm. `placed` holds each gradient with
    /// where it goes.
    pub(super) fn step<B: Backend>(
        flat: Groups<B>,
        placed: Vec<(Place, Tensor<B, 1>)>,
        hyper: [Hyper; 2],
        clip: Option<f64>,
    ) -> (Groups<B>, Tensor<B, 1>) {
        let prim = |t: Tensor<B, 1>| -> Prim {
            let t: Tensor<Gpu, 1> = same_type(t);
            t.into_primitive().tensor()
        };
        let groups = [flat[0].is_some(), flat[1].is_some()];
        let copies = [0, 1].map(|g| flat[g].as_ref().is_some_and(|f| f.h.is_some()));
        let mut shapes = Vec::new();
        let mut inputs = Vec::new();
        for f in flat.into_iter().flatten() {
            let n = Shape::new([f.p.dims()[0]]);
            shapes.extend([
                (n.clone(), DType::F32),
                (n.clone(), DType::F32),
                (n, DType::F32),
            ]);
            inputs.extend([prim(f.p), prim(f.m), prim(f.v)]);
            if let Some(h) = f.h {
                shapes.push((Shape::new([h.dims()[0]]), DType::BF16));
                inputs.push(prim(h));
            }
        }
        let (places, grads): (Vec<Place>, Vec<Tensor<B, 1>>) = placed.into_iter().unzip();
        inputs.extend(grads.into_iter().map(prim));
        shapes.push((Shape::new([1]), DType::F32));
        let step = Step {
            groups,
            copies,
            placed: places,
            hyper,
            clip,
        };
        let mut out = launch_typed("ftl_adamw_step", inputs, shapes, step)
            .into_iter()
            .map(|t| {
                let t: Tensor<Gpu, 1> =
                    Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(t));
                same_type::<_, Tensor<B, 1>>(t)
            });
        let mut next = || out.next().expect("an output per buffer, and the norm");
        let flat = [0, 1].map(|g| {
            groups[g].then(|| Flat {
                p: next(),
                m: next(),
                v: next(),
                h: copies[g].then(&mut next),
            })
        });
        (flat, next())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Weights and biases alternate in the model's order; each launch
        /// still holds up to 32 gradients of one kind, in order, and starts
        /// whole cubes of threads, no more than the cap.
        #[test]
        fn launches_hold_up_to_32_gradients_of_one_kind() {
            // 81 gradients: even ones matrices, odd ones vectors; every
            // third matrix of another kind (a bf16 gradient, say).
            let kinds: Vec<(usize, usize)> = (0..81)
                .map(|i| (i % 2, usize::from(i % 2 == 0 && i % 3 == 0)))
                .collect();
            let mut lens: Vec<usize> = (0..81).map(|i| 100 + i).collect();
            lens[4] = 3 * MAX_UNITS;
            let plan = launches(&kinds, &lens);
            let members =
                |f: &dyn Fn(usize) -> bool| -> Vec<usize> { (0..81).filter(|&i| f(i)).collect() };
            let plain = members(&|i| i % 2 == 0 && i % 3 != 0);
            let other = members(&|i| i % 2 == 0 && i % 3 == 0);
            let vectors = members(&|i| i % 2 == 1);
            let groups: Vec<(usize, Vec<usize>)> =
                plan.iter().map(|(g, m, _)| (*g, m.clone())).collect();
            assert_eq!(
                groups,
                vec![
                    // Kinds in the order of their first gradient.
                    (0, other.clone()),
                    (0, plain.clone()),
                    (1, vectors[..32].to_vec()),
                    (1, vectors[32..].to_vec()),
                ]
            );
            assert_eq!((plain.len(), other.len(), vectors.len()), (27, 14, 40));
            let threads: Vec<usize> = plan.iter().map(|(_, _, t)| *t).collect();
            assert_eq!(threads, vec![256, MAX_UNITS, 256, 256]);
            // Every gradient is in exactly one launch.
            let mut all: Vec<usize> = plan.iter().flat_map(|(_, m, _)| m.clone()).collect();
            all.sort();
            assert_eq!(all, (0..81).collect::<Vec<_>>());
        }
    }
}

/// Takes each trained parameter's gradient out of `grads`.
struct Gather<'a, B: Backend> {
    grads: &'a mut GradientsParams,
    out: &'a mut Gathered<B>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for Gather<'_, AB::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        let Some(grad) = self.grads.remove::<AB::InnerBackend, D>(param.id) else {
            return;
        };
        let dims = grad.dims().to_vec();
        let n = dims.iter().product::<usize>();
        self.out.ids.push((param.id, dims));
        self.out.grads.push(grad.reshape([n]));
    }
}

/// The current values of the parameters `wanted`, flattened.
struct Values<B: Backend> {
    wanted: std::collections::HashSet<ParamId>,
    found: HashMap<ParamId, Tensor<B, 1>>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for Values<AB::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        if self.wanted.contains(&param.id) {
            let value = param.val().inner();
            let n = value.dims().iter().product::<usize>();
            self.found.insert(param.id, value.reshape([n]));
        }
    }
}

/// Replaces each trained parameter with a one-value tensor until [`Place`]
/// puts its view of the updated buffers back. Parameters of the same rank
/// share one placeholder: every tensor operation costs host time on the
/// CUDA backend (one empty tensor per parameter was ~200 operations a step
/// for MPNet).
struct Release<'a> {
    layout: &'a [Segment],
    /// One placeholder per rank, made on first use.
    placeholders: HashMap<usize, Box<dyn std::any::Any>>,
}

impl<AB: AutodiffBackend> ModuleMapper<AB> for Release<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        let (id, tensor, mapper) = param.consume();
        if !self.layout.iter().any(|s| s.id == id) {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let placeholder = self
            .placeholders
            .entry(D)
            .or_insert_with(|| Box::new(Tensor::<AB, D>::empty([1; D], &tensor.device())))
            .downcast_ref::<Tensor<AB, D>>()
            .expect("one placeholder type per rank")
            .clone();
        Param::from_mapped_value(id, placeholder, mapper)
    }
}

/// Replaces each trained parameter with its view of the updated buffers:
/// of its bf16 copy where it has one and `half`, else of its master.
struct Place<'a, B: Backend> {
    layout: &'a [Segment],
    flat: &'a [Option<Flat<B>>; 2],
    half: bool,
}

impl<AB: AutodiffBackend> ModuleMapper<AB> for Place<'_, AB::InnerBackend> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(s) = self.layout.iter().find(|s| s.id == id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let flat = self.flat[s.group].as_ref().expect("its group");
        let dims: [usize; D] = s.dims.clone().try_into().expect("same rank");
        let value = match (self.half, s.half, &flat.h) {
            (true, Some(at), Some(h)) => h.clone().slice(at..at + s.len()),
            _ => flat.p.clone().slice(s.range()),
        }
        .reshape(dims);
        Param::from_mapped_value(
            id,
            Tensor::<AB, D>::from_inner(value).require_grad(),
            mapper,
        )
    }
}

/// The factor that scales gradients to norm at most `max`.
pub fn clip_factor<B: Backend>(norm: Tensor<B, 1>, max: f64) -> Tensor<B, 1> {
    norm.add_scalar(1e-6).recip().mul_scalar(max).clamp_max(1.0)
}

/// The learning rate at optimizer step `step` (0-based) of `total`.
pub fn lr_at(peak: f64, schedule: &Schedule, step: u64, total: u64) -> f64 {
    let (warmup, decay) = match schedule {
        Schedule::Constant { warmup } => (warmup, None),
        Schedule::Linear { warmup } => (warmup, Some(false)),
        Schedule::Cosine { warmup } => (warmup, Some(true)),
    };
    let warm = match *warmup {
        Warmup::Steps(n) => n,
        Warmup::Fraction(f) => (f * total as f64).ceil() as u64,
    };
    if step < warm {
        return peak * (step + 1) as f64 / warm as f64;
    }
    let Some(cosine) = decay else {
        return peak;
    };
    let left = total.saturating_sub(warm).max(1) as f64;
    let progress = ((step - warm) as f64 / left).min(1.0);
    if cosine {
        peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    } else {
        peak * (1.0 - progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::backend::{Cpu, cpu_device};
    use burn::backend::Autodiff;

    type Train = Autodiff<Cpu>;

    /// A matrix, a vector and a frozen matrix.
    #[derive(Module, Debug)]
    struct Toy<B: Backend> {
        w: Param<Tensor<B, 2>>,
        b: Param<Tensor<B, 1>>,
        frozen: Param<Tensor<B, 2>>,
    }

    fn toy(device: &burn::tensor::Device<Train>) -> Toy<Train> {
        let w = Tensor::from_data(
            TensorData::new(vec![0.5f32, -1.0, 2.0, 0.25], [2, 2]),
            device,
        );
        let b = Tensor::from_data(TensorData::new(vec![0.1f32, -0.2, 0.3], [3]), device);
        let frozen = Tensor::from_data(TensorData::new(vec![1.0f32; 4], [2, 2]), device);
        Toy {
            w: Param::from_tensor(w),
            b: Param::from_tensor(b),
            frozen: Param::from_tensor(frozen).set_require_grad(false),
        }
    }

    /// Gradients of sum(w · cw) + sum(b · cb): exactly cw and cb.
    fn grads(model: &Toy<Train>, cw: &[f32], cb: &[f32]) -> GradientsParams {
        let device = cpu_device();
        let cw = Tensor::<Train, 2>::from_data(TensorData::new(cw.to_vec(), [2, 2]), &device);
        let cb = Tensor::<Train, 1>::from_data(TensorData::new(cb.to_vec(), [3]), &device);
        let loss =
            (model.w.val() * cw).sum() + (model.b.val() * cb).sum() + model.frozen.val().sum();
        GradientsParams::from_grads(loss.backward(), model)
    }

    /// PyTorch's AdamW on f64 values, for one parameter.
    struct Oracle {
        p: Vec<f64>,
        m: Vec<f64>,
        v: Vec<f64>,
    }

    impl Oracle {
        fn step(&mut self, g: &[f64], lr: f64, wd: f64, t: i32) {
            let (b1, b2, eps) = (0.9, 0.999, 1e-8);
            for (i, g) in g.iter().enumerate() {
                self.m[i] = b1 * self.m[i] + (1.0 - b1) * g;
                self.v[i] = b2 * self.v[i] + (1.0 - b2) * g * g;
                self.p[i] *= 1.0 - lr * wd;
                let denom = (self.v[i] / (1.0 - b2.powi(t))).sqrt() + eps;
                self.p[i] -= lr * self.m[i] / (1.0 - b1.powi(t)) / denom;
            }
        }
    }

    fn oracle(values: &[f32]) -> Oracle {
        Oracle {
            p: values.iter().map(|&x| x as f64).collect(),
            m: vec![0.0; values.len()],
            v: vec![0.0; values.len()],
        }
    }

    fn close<B: Backend>(got: Tensor<B, 1>, want: &[f64]) {
        let got = got.into_data().convert::<f32>().to_vec::<f32>().unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{got:?} against {want:?}");
        }
    }

    #[test]
    fn flat_adamw_matches_pytorch_clips_and_decays_matrices_only() {
        let device = cpu_device();
        let mut model = toy(&device);
        let mut optimizer = AdamW::new(config::AdamW {
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.1,
        });
        let mut w = oracle(&[0.5, -1.0, 2.0, 0.25]);
        let mut b = oracle(&[0.1, -0.2, 0.3]);
        // The first gradients have norm 10 and are clipped to 1; the
        // second (norm 0.5) are not.
        let steps: [(&[f32], &[f32], f64); 2] = [
            (&[6.0, 0.0, 0.0, 0.0], &[8.0, 0.0, 0.0], 0.1),
            (&[0.3, 0.0, 0.0, 0.0], &[0.0, 0.4, 0.0], 1.0),
        ];
        for (t, (cw, cb, factor)) in steps.iter().enumerate() {
            let g = grads(&model, cw, cb);
            let (updated, norm) = optimizer.step(model, g, 0.01, Some(1.0));
            model = updated;
            let norm = norm.expect("gradients").into_scalar() as f64;
            let expected = cw
                .iter()
                .chain(cb.iter())
                .map(|x| (*x as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(
                (norm - expected).abs() < 1e-5,
                "norm {norm}, expected {expected}"
            );
            let gw: Vec<f64> = cw.iter().map(|&x| x as f64 * factor).collect();
            let gb: Vec<f64> = cb.iter().map(|&x| x as f64 * factor).collect();
            w.step(&gw, 0.01, 0.1, t as i32 + 1);
            b.step(&gb, 0.01, 0.0, t as i32 + 1);
            close(model.w.val().inner().reshape([4]), &w.p);
            close(model.b.val().inner(), &b.p);
        }
        close(model.frozen.val().inner().reshape([4]), &[1.0; 4]);
        assert_eq!(model.w.val().dims(), [2, 2]);
        // The moments read out per parameter, as checkpoints store them.
        let moments = optimizer.moments(&model.b.id).expect("b was trained");
        close(moments.m, &b.m);
        close(moments.v, &b.v);
        assert!(optimizer.moments(&model.frozen.id).is_none());
    }

    /// Four vectors, sized as MiniLM's (384, 1,536, 384) and a classifier's bias (2).
    #[derive(Module, Debug)]
    struct Vectors<B: Backend> {
        hidden: Param<Tensor<B, 1>>,
        inner: Param<Tensor<B, 1>>,
        classes: Param<Tensor<B, 1>>,
        after: Param<Tensor<B, 1>>,
    }

    /// Parameters whose sizes are whole 512-byte units follow each other
    /// with no gap, so gathering the gradients copies no zeros for them; a
    /// size that is not (2 values) is padded, and the gradients' norm still
    /// counts only the gradients.
    #[test]
    fn whole_alignment_units_are_laid_out_back_to_back() {
        let device = cpu_device();
        let vector = |n: usize| Param::from_tensor(Tensor::<Train, 1>::ones([n], &device));
        let model = Vectors {
            hidden: vector(384),
            inner: vector(1536),
            classes: vector(2),
            after: vector(384),
        };
        let loss = model.hidden.val().sum()
            + model.inner.val().sum()
            + model.classes.val().sum()
            + model.after.val().sum();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let mut optimizer = AdamW::new(config::AdamW {
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.0,
        });
        let (_, norm) = optimizer.step(model, grads, 0.01, None);
        let offsets: Vec<usize> = optimizer.layout.iter().map(|s| s.offset).collect();
        assert_eq!(offsets, [0, 384, 1920, 2048]);
        let norm = norm.expect("gradients").into_scalar() as f64;
        let expected = ((384 + 1536 + 2 + 384) as f64).sqrt();
        assert!(
            (norm - expected).abs() < 1e-3,
            "norm {norm}, expected {expected}"
        );
    }

    #[test]
    fn restored_moments_continue_where_they_left_off() {
        let device = cpu_device();
        let settings = config::AdamW {
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let (cw, cb): (&[f32], &[f32]) = (&[1.0, -2.0, 0.5, 0.0], &[0.3, 0.0, -0.1]);
        // Two steps in one optimizer…
        let mut one = AdamW::new(settings);
        let mut a = toy(&device);
        for _ in 0..2 {
            let g = grads(&a, cw, cb);
            a = one.step(a, g, 0.01, None).0;
        }
        // …and one step, then a fresh optimizer given its moments.
        let mut first = AdamW::new(settings);
        let mut c = toy(&device);
        let g = grads(&c, cw, cb);
        c = first.step(c, g, 0.01, None).0;
        let mut second = AdamW::new(settings);
        second.steps = first.steps;
        for id in [c.w.id, c.b.id] {
            second.restore(id, first.moments(&id).expect("trained"));
        }
        let g = grads(&c, cw, cb);
        c = second.step(c, g, 0.01, None).0;
        assert_eq!(
            a.w.val().into_data().to_vec::<f32>().unwrap(),
            c.w.val().into_data().to_vec::<f32>().unwrap()
        );
        assert_eq!(
            a.b.val().into_data().to_vec::<f32>().unwrap(),
            c.b.val().into_data().to_vec::<f32>().unwrap()
        );
    }

    /// Laying the parameters out before the first step changes nothing a
    /// run computes: the same updates, the same moments, the frozen
    /// parameter left alone, and moments restored from a checkpoint carried
    /// into the buffers.
    #[test]
    fn parameters_laid_out_before_the_first_step_train_alike() {
        let device = cpu_device();
        let settings = config::AdamW {
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let steps: [(&[f32], &[f32]); 2] = [
            (&[1.0, -2.0, 0.5, 0.0], &[0.3, 0.0, -0.1]),
            (&[0.2, 0.1, -0.4, 3.0], &[0.0, 0.5, 0.2]),
        ];
        let mut plain = AdamW::new(settings);
        let mut a = toy(&device);
        let mut early = AdamW::new(settings);
        let mut b = early.prepare(toy(&device));
        let ids: Vec<ParamId> = early.layout.iter().map(|s| s.id).collect();
        assert_eq!(ids, [b.w.id, b.b.id], "the frozen matrix is not laid out");
        close(b.w.val().inner().reshape([4]), &[0.5, -1.0, 2.0, 0.25]);
        for (cw, cb) in steps {
            let g = grads(&a, cw, cb);
            a = plain.step(a, g, 0.01, Some(1.0)).0;
            let g = grads(&b, cw, cb);
            b = early.step(b, g, 0.01, Some(1.0)).0;
        }
        let values = |m: &Toy<Train>| {
            [m.w.val().inner().reshape([4]), m.b.val().inner()]
                .map(|t| t.into_data().to_vec::<f32>().unwrap())
        };
        assert_eq!(values(&a), values(&b));
        close(b.frozen.val().inner().reshape([4]), &[1.0; 4]);
        let moments = |o: &AdamW<Cpu>, id| {
            let m = o.moments(&id).expect("trained");
            [m.m, m.v].map(|t| t.into_data().to_vec::<f32>().unwrap())
        };
        assert_eq!(moments(&plain, a.w.id), moments(&early, b.w.id));

        // A checkpoint's moments, restored before the layout, continue.
        let mut resumed = AdamW::new(settings);
        resumed.steps = early.steps;
        let c = toy(&device);
        let c = c.load_record(b.clone().into_record());
        resumed.restore(c.w.id, early.moments(&b.w.id).expect("trained"));
        let c = resumed.prepare(c);
        assert_eq!(moments(&resumed, c.w.id), moments(&early, b.w.id));
        let b_moments = resumed.moments(&c.b.id).expect("laid out");
        close(b_moments.m, &[0.0; 3]);
    }

    /// Taken in pieces, the sum of squares is the whole one's: every value
    /// counted once, the last piece shorter, a tensor shorter than a piece
    /// taken whole, an empty one zero.
    #[test]
    fn sum_of_squares_in_pieces_counts_every_value_once() {
        let device = cpu_device();
        for (n, piece) in [
            (1000usize, 100usize),
            (1000, 128),
            (130, 1000),
            (4096, 128),
            (0, 128),
        ] {
            let values: Vec<f32> = (0..n).map(|i| ((i % 17) as f32 - 8.0) * 0.25).collect();
            let want: f64 = values.iter().map(|x| (*x as f64) * (*x as f64)).sum();
            let g = Tensor::<Cpu, 1>::from_floats(values.as_slice(), &device);
            let got = sum_of_squares(&g, piece).into_scalar() as f64;
            assert!(
                (got - want).abs() <= 1e-4 * want.max(1.0),
                "n {n}, piece {piece}: {got}, expected {want}"
            );
        }
    }

    #[test]
    fn warmup_rises_linearly_then_linear_decay_reaches_zero() {
        let s = Schedule::Linear {
            warmup: Warmup::Steps(10),
        };
        assert!((lr_at(1.0, &s, 0, 110) - 0.1).abs() < 1e-12);
        assert!((lr_at(1.0, &s, 9, 110) - 1.0).abs() < 1e-12);
        assert!((lr_at(1.0, &s, 60, 110) - 0.5).abs() < 1e-12);
        assert!(lr_at(1.0, &s, 109, 110) < 0.011);
    }

    #[test]
    fn cosine_is_half_way_down_at_mid_point_and_constant_stays() {
        let s = Schedule::Cosine {
            warmup: Warmup::Fraction(0.0),
        };
        assert!((lr_at(2.0, &s, 50, 100) - 1.0).abs() < 1e-12);
        let c = Schedule::Constant {
            warmup: Warmup::Fraction(0.1),
        };
        assert!((lr_at(2.0, &c, 5, 100) - 1.2).abs() < 1e-12);
        assert_eq!(lr_at(2.0, &c, 90, 100), 2.0);
    }
}
