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
//! `cargo run --release --example attention_check`

use std::time::Instant;

use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::FloatDType;
use ftl::runtime::model::attention_core::{HalfBackward, composed, own_backward};
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
                .map(|(a, b)| {
                    let diff: f32 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
                    let norm: f32 = b.iter().map(|y| y * y).sum();
                    (diff / norm.max(f32::MIN_POSITIVE)).sqrt()
                })
                .collect();
            let tolerance = if half { 3e-2 } else { 1e-4 };
            let out_tolerance = if half { 8e-3 } else { 1e-4 };
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
            let fused = check::<Gpu>("cuda", &device, &memory);
            type Unfused = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;
            let unfused = check::<Unfused>("cuda-unfused", &device, &memory);
            std::process::exit(if fused && unfused { 0 } else { 1 });
        }
    }
    println!("no CUDA driver: the check runs on the CPU");
    let ok =
        check::<ftl::runtime::backend::Cpu>("cpu", &ftl::runtime::backend::cpu_device(), &|| None);
    std::process::exit(if ok { 0 } else { 1 });
}
