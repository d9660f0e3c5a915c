//! ftl's attention operation against burn's composition, on the CUDA
//! backend when there is one (else on the CPU), at MiniLM's attention shape
//! (batch 32, 12 heads, 64 tokens, head width 32, dropout 0.1): with BERT's
//! padding bias and with MPNet's trained per-head bias, in f32 and with
//! bf16 products (the backward pass's products in bf16, and in f32). On
//! CUDA it checks burn's CUDA backend as ftl trains with it (operation
//! fusion on) and without fusion (`cuda-unfused`), which tells a fault of
//! fusion from one of the operation. Per case it prints
//!
//! - the largest difference of the outputs, relative to the largest output;
//! - the relative L2 error of each input's gradient;
//! - on CUDA, the device bytes the forward pass left allocated (what the
//!   backward pass will read), per head, query and key, for both;
//! - the milliseconds of one forward and backward pass, for both.
//!
//! On burn's fused CUDA backend ftl's operation runs its softmax as ftl's
//! own kernels (`src/runtime/model/softmax_cuda.rs`), so there the check
//! compares those kernels with burn's composition. There both draw the
//! dropout from ftl's seeds (`src/runtime/model/dropout.rs`): the kernels
//! where they read each score, the composition as a mask from the same
//! seed. The unfused backend draws with burn's generator, so its outputs
//! are not comparable with the fused backend's.
//!
//! It exits 1 when an output differs by more than 1e-4 (f32) or 8e-3 (bf16:
//! two of its rounding steps, where a probability rounds the other way) or a
//! gradient by more than 1e-4 (f32) or 3e-2 (bf16). A case where burn's
//! composition itself is not finite is reported and not compared. ftl's
//! kernel cache and shipped tuning are used as `ftl run` uses them.
//!
//! Then the query, key and value projections with the attention as one
//! operation (`own_projected`: one product, ftl's packing and head-split
//! kernels on CUDA) against three projections split into heads and given to
//! the operation above, as full fine-tuning ran them before, at MiniLM's
//! width (384) with a trained bias, in f32 and bf16: the output's
//! difference, the relative error of the gradients of x, the three weights,
//! the three biases (∂b_k, zero but for rounding, against ∂b_q's size) and
//! the bias, and the milliseconds per pass, with the same tolerances but
//! for f32 on CUDA, whose products are TF32 (1e-3; see `TF32`). Then the
//! same for LoRA's case: frozen weights and biases with adapter updates on
//! the query and the value, comparing the gradients of x, the two updates
//! and the bias. Under bf16 on CUDA both cases run ftl's attention kernels
//! (`src/runtime/model/attend_cuda.rs`), at heads of 32 and 64 and with
//! both biases; `bf16` as an argument runs only those cases.
//!
//! `cargo run --release --example attention_check`

use std::time::Instant;

use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::FloatDType;
use ftl::runtime::model::attention_core::{
    HalfBackward, Projections, composed, own_backward, own_projected,
};
use ftl::runtime::model::dropout::{Draws, Dropout};

const B: usize = 32;
const H: usize = 12;
const S: usize = 64;
const D: usize = 32;

/// Deterministic values in (-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

struct Outcome {
    out: Vec<f32>,
    grads: Vec<Vec<f32>>,
    kept: Option<u64>,
    ms: f64,
}

type Train<I> = Autodiff<I>;

/// ftl's operation, its backward products in f32 or in bf16.
fn own<I: Backend, const F32_PRODUCTS: bool>(
    q: Tensor<Train<I>, 4>,
    k: Tensor<Train<I>, 4>,
    v: Tensor<Train<I>, 4>,
    bias: Tensor<Train<I>, 4>,
    dropout: &Dropout,
    half: bool,
) -> Tensor<Train<I>, 4> {
    let products = if F32_PRODUCTS {
        HalfBackward::F32
    } else {
        HalfBackward::Bf16
    };
    own_backward::<I>(q, k, v, bias, dropout, half, products)
}
type Op<I> = fn(
    Tensor<Train<I>, 4>,
    Tensor<Train<I>, 4>,
    Tensor<Train<I>, 4>,
    Tensor<Train<I>, 4>,
    &Dropout,
    bool,
) -> Tensor<Train<I>, 4>;

fn run<I: Backend>(
    op: Op<I>,
    device: &I::Device,
    half: bool,
    trained_bias: bool,
    memory: &dyn Fn() -> Option<u64>,
) -> Outcome {
    let tensor = |seed: u64, shape: [usize; 4]| {
        let n = shape.iter().product();
        Tensor::<Train<I>, 4>::from_data(TensorData::new(values(n, seed), shape), device)
    };
    let as_used = |t: Tensor<Train<I>, 4>| if half { t.cast(FloatDType::BF16) } else { t };
    let (q, k, v) = (
        tensor(1, [B, H, S, D]).require_grad(),
        tensor(2, [B, H, S, D]).require_grad(),
        tensor(3, [B, H, S, D]).require_grad(),
    );
    let bias = if trained_bias {
        tensor(4, [B, H, S, S]).require_grad()
    } else {
        // Every other sequence ends in 16 padding tokens.
        let mask: Vec<f32> = (0..B * S)
            .map(|i| {
                if i / S % 2 == 1 && i % S >= S - 16 {
                    f32::MIN
                } else {
                    0.0
                }
            })
            .collect();
        Tensor::<Train<I>, 4>::from_data(TensorData::new(mask, [B, 1, 1, S]), device)
            .expand([B as i64, -1, S as i64, S as i64])
    };
    let weights = tensor(5, [B, H, S, D]);
    let dropout = Dropout::new(0.1);
    let pass = |measure: bool| {
        <Train<I> as Backend>::seed(device, 9);
        Draws::seed(9);
        <Train<I> as Backend>::sync(device).expect("sync");
        let before = if measure { memory() } else { None };
        let mut y = op(
            as_used(q.clone()),
            as_used(k.clone()),
            as_used(v.clone()),
            bias.clone(),
            &dropout,
            half,
        );
        if half {
            y = y.cast(FloatDType::F32);
        }
        <Train<I> as Backend>::sync(device).expect("sync");
        let kept = match (before, if measure { memory() } else { None }) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        let grads = (y.clone() * weights.clone()).sum().backward();
        (y, grads, kept)
    };
    // Warm: kernels compiled and tuned.
    for _ in 0..3 {
        drop(pass(false));
    }
    let started = Instant::now();
    let rounds = 20;
    for _ in 0..rounds {
        let (_, grads, _) = pass(false);
        drop(grads);
    }
    <Train<I> as Backend>::sync(device).expect("sync");
    let ms = started.elapsed().as_secs_f64() * 1e3 / rounds as f64;
    let (y, grads, kept) = pass(true);
    let flat = |t: Tensor<I, 4>| {
        t.cast(FloatDType::F32)
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("f32")
    };
    let mut all = vec![&q, &k, &v];
    if trained_bias {
        all.push(&bias);
    }
    Outcome {
        out: flat(y.inner()),
        grads: all
            .iter()
            .map(|t| t.grad(&grads).map(flat).unwrap_or_default())
            .collect(),
        kept,
        ms,
    }
}

/// Checks every case on one backend; false when one fails.
fn check<I: Backend>(name: &str, device: &I::Device, memory: &dyn Fn() -> Option<u64>) -> bool {
    let mut ok = true;
    let scores = (B * H * S * S) as f64;
    let cases = [
        (false, "f32 ", own::<I, false> as Op<I>),
        (true, "bf16", own::<I, false>),
        (true, "bf16, f32 backward", own::<I, true>),
    ];
    for (half, precision, op) in cases {
        for trained_bias in [false, true] {
            let ours = run::<I>(op, device, half, trained_bias, memory);
            let burns = run::<I>(composed, device, half, trained_bias, memory);
            let out_diff = relative_difference(&ours.out, &burns.out);
            let grad_errors: Vec<f32> = ours
                .grads
                .iter()
                .zip(&burns.grads)
                .map(|(a, b)| relative_error(a, b, b))
                .collect();
            let (out_tolerance, tolerance) = tolerances(half);
            let burns_finite = burns
                .out
                .iter()
                .chain(burns.grads.iter().flatten())
                .all(|v| v.is_finite());
            let pass = out_diff <= out_tolerance && grad_errors.iter().all(|e| *e <= tolerance);
            ok &= pass || !burns_finite;
            let kept = match (ours.kept, burns.kept) {
                (Some(a), Some(b)) => format!(
                    ", kept per score {:.2} against {:.2} bytes",
                    a as f64 / scores,
                    b as f64 / scores
                ),
                _ => String::new(),
            };
            println!(
                "{name} {precision} {} bias: output {out_diff:.1e}, gradients {}{kept}, \
                 {:.2} ms against {:.2} ms per pass: {}",
                if trained_bias { "trained" } else { "padding" },
                grad_errors
                    .iter()
                    .map(|e| format!("{e:.1e}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                ours.ms,
                burns.ms,
                if !burns_finite {
                    "burn's composition is not finite, not compared"
                } else if pass {
                    "ok"
                } else {
                    "FAILED"
                }
            );
        }
    }
    ok
}

/// One forward and backward pass of the projections and the attention,
/// fused (`own_projected`) or as three projections. `adapted`: LoRA's case,
/// the weights and biases frozen (the weights in the products' dtype) and
/// adapter updates on the query and the value, whose gradients are
/// compared instead of the weights' and biases'.
fn projected_run<I: Backend>(
    fused: bool,
    half: bool,
    adapted: bool,
    shape: QkvCase,
    device: &I::Device,
) -> Outcome {
    let QkvCase { dim, trained_bias } = shape;
    let width = H * dim;
    let leaf = |seed: u64, shape: Vec<usize>, scale: f32| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = values(n, seed).into_iter().map(|x| x * scale).collect();
        Tensor::<Train<I>, 1>::from_data(TensorData::new(v, [n]), device)
    };
    let x: Tensor<Train<I>, 3> = leaf(11, vec![B, S, width], 1.0)
        .reshape([B, S, width])
        .require_grad();
    let scale = 1.0 / (width as f32).sqrt();
    let trained = |t: Tensor<Train<I>, 2>| if adapted { t } else { t.require_grad() };
    let w: Vec<Tensor<Train<I>, 2>> = (0..3)
        .map(|i| {
            let w = leaf(12 + i, vec![width, width], scale).reshape([width, width]);
            if adapted && half {
                w.cast(FloatDType::BF16)
            } else {
                trained(w)
            }
        })
        .collect();
    let b: Vec<Tensor<Train<I>, 1>> = (0..3)
        .map(|i| {
            let b = leaf(15 + i, vec![width], 0.1);
            if adapted { b } else { b.require_grad() }
        })
        .collect();
    // The adapters' updates of q and v (LoRA's default targets), α/r = 2.
    let updates: Vec<Tensor<Train<I>, 2>> = (0..2)
        .map(|i| {
            leaf(20 + i, vec![B * S, width], 0.1)
                .reshape([B * S, width])
                .require_grad()
        })
        .collect();
    let update_of = [Some(0), None, Some(1)];
    let update_scale = 2.0;
    // MPNet's trained per-head bias, or BERT's padding bias: the last
    // `b % 16` keys of sequence `b` masked, broadcast over heads and
    // queries, no gradient.
    let bias: Tensor<Train<I>, 4> = if trained_bias {
        leaf(18, vec![B, H, S, S], 1.0)
            .reshape([B, H, S, S])
            .require_grad()
    } else {
        let padding: Vec<f32> = (0..B * S)
            .map(|i| {
                if i % S >= S - (i / S) % 16 {
                    -10_000.0
                } else {
                    0.0
                }
            })
            .collect();
        Tensor::<Train<I>, 1>::from_data(TensorData::new(padding, [B * S]), device)
            .reshape([B, 1, 1, S])
    };
    let target: Tensor<Train<I>, 4> = leaf(19, vec![B, H, S, dim], 1.0).reshape([B, H, S, dim]);
    let dropout = Dropout::new(0.1);
    let half_of = |t: Tensor<Train<I>, 2>| if half { t.cast(FloatDType::BF16) } else { t };
    let pass = || {
        <Train<I> as Backend>::seed(device, 9);
        Draws::seed(9);
        let mut y = if fused {
            let projections = Projections {
                weights: [w[0].clone(), w[1].clone(), w[2].clone()],
                biases: [b[0].clone(), b[1].clone(), b[2].clone()],
                deltas: if adapted {
                    update_of.map(|u| u.map(|u| (half_of(updates[u].clone()), update_scale)))
                } else {
                    [None, None, None]
                },
                // Under bf16, x's bf16 copy as the LayerNorm before writes
                // it: a constant, so x's gradient must still reach x.
                input_copy: half.then(|| x.clone().detach().cast(FloatDType::BF16)),
            };
            own_projected::<I>(
                x.clone(),
                projections,
                H,
                bias.clone(),
                &dropout,
                half,
                HalfBackward::F32,
            )
        } else {
            let rows = x.clone().reshape([B * S, width]);
            let rows = if half {
                rows.cast(FloatDType::BF16)
            } else {
                rows
            };
            let heads = |part: usize| {
                let mut out = rows.clone().matmul(half_of(w[part].clone()));
                if half {
                    out = out.cast(FloatDType::F32);
                }
                let mut out = out + b[part].clone().unsqueeze();
                if let (true, Some(u)) = (adapted, update_of[part]) {
                    let update = half_of(updates[u].clone()).cast(FloatDType::F32);
                    out = out + update.mul_scalar(update_scale);
                }
                let out = out.reshape([B, S, H, dim]).swap_dims(1, 2);
                if half {
                    out.cast(FloatDType::BF16)
                } else {
                    out
                }
            };
            let (q, k, v) = (heads(0), heads(1), heads(2));
            own_backward::<I>(q, k, v, bias.clone(), &dropout, half, HalfBackward::F32)
        };
        if half {
            y = y.cast(FloatDType::F32);
        }
        let grads = (y.clone() * target.clone()).sum().backward();
        (y, grads)
    };
    for _ in 0..3 {
        drop(pass());
    }
    <Train<I> as Backend>::sync(device).expect("sync");
    let started = Instant::now();
    let rounds = 20;
    for _ in 0..rounds {
        drop(pass());
    }
    <Train<I> as Backend>::sync(device).expect("sync");
    let ms = started.elapsed().as_secs_f64() * 1e3 / rounds as f64;
    let (y, grads) = pass();
    fn flat<J: Backend, const N: usize>(t: Tensor<J, N>) -> Vec<f32> {
        t.cast(FloatDType::F32)
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("f32")
    }
    let mut all = vec![flat(x.grad(&grads).expect("∂x"))];
    if adapted {
        all.extend(updates.iter().map(|u| flat(u.grad(&grads).expect("∂Δ"))));
    } else {
        all.extend(w.iter().map(|w| flat(w.grad(&grads).expect("∂W"))));
        all.extend(b.iter().map(|b| flat(b.grad(&grads).expect("∂b"))));
    }
    if trained_bias {
        all.push(flat(bias.grad(&grads).expect("∂bias")));
    }
    Outcome {
        out: flat(y.inner()),
        grads: all,
        kept: None,
        ms,
    }
}

/// The head size and the attention bias of a q/k/v case.
#[derive(Clone, Copy)]
struct QkvCase {
    /// 32 as MiniLM's heads, 64 as MPNet's.
    dim: usize,
    /// MPNet's trained per-head bias, else BERT's padding bias.
    trained_bias: bool,
}

/// The projections with the attention as one operation against three
/// projections, in f32 and bf16 (only bf16 with `bf16_only`); false when
/// one fails. Under bf16 on CUDA, the operation runs ftl's attention
/// kernels (`attend_cuda`): checked at both head sizes and with both
/// biases, with and without adapters.
fn check_projected<I: Backend>(name: &str, device: &I::Device, bf16_only: bool) -> bool {
    let mut ok = true;
    let minilm = QkvCase {
        dim: 32,
        trained_bias: true,
    };
    let mpnet = QkvCase {
        dim: 64,
        trained_bias: true,
    };
    let padded = QkvCase {
        dim: 64,
        trained_bias: false,
    };
    // bf16 first: training's cases, whose product shapes the shipped tuning
    // table holds; the f32 products are tuned on first use.
    let mut cases = vec![
        (true, false, minilm),
        (true, false, mpnet),
        (true, false, padded),
        (true, true, minilm),
        (true, true, mpnet),
        (true, true, padded),
    ];
    if !bf16_only {
        cases.extend([(false, false, minilm), (false, true, minilm)]);
    }
    for (half, adapted, shape) in cases {
        let fused = projected_run::<I>(true, half, adapted, shape, device);
        let three = projected_run::<I>(false, half, adapted, shape, device);
        let out_diff = relative_difference(&fused.out, &three.out);
        let grad_errors: Vec<f32> = fused
            .grads
            .iter()
            .zip(&three.grads)
            .enumerate()
            .map(|(i, (a, b))| {
                // ∂b_k (index 5) is zero but for rounding: against ∂b_q's size.
                let reference = if i == 5 && !adapted {
                    &three.grads[4]
                } else {
                    b
                };
                relative_error(a, b, reference)
            })
            .collect();
        let (out_tolerance, tolerance) = if !half && name != "cpu" {
            TF32
        } else {
            tolerances(half)
        };
        let finite = fused
            .out
            .iter()
            .chain(fused.grads.iter().flatten())
            .all(|v| v.is_finite());
        let pass =
            finite && out_diff <= out_tolerance && grad_errors.iter().all(|e| *e <= tolerance);
        ok &= pass;
        println!(
            "{name} {} q/k/v as one product, heads of {}, {} bias{}: output {out_diff:.1e}, \
             gradients {} {}, {:.2} ms against {:.2} ms per pass: {}",
            if half { "bf16" } else { "f32 " },
            shape.dim,
            if shape.trained_bias {
                "trained"
            } else {
                "padding"
            },
            if adapted {
                ", frozen, adapters on q and v"
            } else {
                ""
            },
            match (adapted, shape.trained_bias) {
                (true, true) => "(x, Δq, Δv, bias)",
                (true, false) => "(x, Δq, Δv)",
                (false, true) => "(x, W_q, W_k, W_v, b_q, b_k, b_v, bias)",
                (false, false) => "(x, W_q, W_k, W_v, b_q, b_k, b_v)",
            },
            grad_errors
                .iter()
                .map(|e| format!("{e:.1e}"))
                .collect::<Vec<_>>()
                .join(" "),
            fused.ms,
            three.ms,
            if pass { "ok" } else { "FAILED" }
        );
    }
    ok
}

/// The L2 norm of `a − b`, relative to the norm of `reference`.
fn relative_error(a: &[f32], b: &[f32], reference: &[f32]) -> f32 {
    let diff: f32 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let norm: f32 = reference.iter().map(|y| y * y).sum();
    (diff / norm.max(f32::MIN_POSITIVE)).sqrt()
}

/// The tolerances of the f32 q/k/v comparison on CUDA, where f32 products
/// are TF32 (10-bit mantissa, BENCHMARKS.md): one `[d, 3d]` product and
/// three `[d, d]` ones are tuned and tiled apart and round differently
/// (1.3e-4 on the output and 1.8e-4 on ∂W_q on the H200). Training takes
/// that path only with bf16 products.
const TF32: (f32, f32) = (1e-3, 1e-3);

/// The largest output difference and gradient error that pass.
fn tolerances(half: bool) -> (f32, f32) {
    if half { (8e-3, 3e-2) } else { (1e-4, 1e-4) }
}

/// The largest difference between two outputs, relative to the second's
/// largest value.
fn relative_difference(a: &[f32], b: &[f32]) -> f32 {
    let largest = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / largest
}

fn main() {
    #[cfg(feature = "cuda")]
    {
        use ftl::runtime::backend::{Gpu, configure_cubecl, cuda_available, cuda_memory_in_use};
        if cuda_available() {
            configure_cubecl(0);
            let device = burn::backend::cuda::CudaDevice::new(0);
            let memory = || cuda_memory_in_use(&burn::backend::cuda::CudaDevice::new(0));
            let bf16_only = std::env::args().any(|a| a == "bf16");
            let projected = check_projected::<Gpu>("cuda", &device, bf16_only);
            if bf16_only {
                std::process::exit(if projected { 0 } else { 1 });
            }
            let fused = check::<Gpu>("cuda", &device, &memory);
            type Unfused = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;
            let unfused = check::<Unfused>("cuda-unfused", &device, &memory);
            std::process::exit(if projected && fused && unfused { 0 } else { 1 });
        }
    }
    println!("no CUDA driver: the check runs on the CPU");
    let device = ftl::runtime::backend::cpu_device();
    let projected = check_projected::<ftl::runtime::backend::Cpu>("cpu", &device, false);
    let ok = check::<ftl::runtime::backend::Cpu>("cpu", &device, &|| None);
    std::process::exit(if projected && ok { 0 } else { 1 });
}
