//! ftl's fused LoRA adapter update on CUDA against a host reference and
//! against the composition of tensor operations it replaces.
//!
//! In bf16 training on CUDA, an adapter's update `dropout(x)·A·B` is one
//! operation with ftl's own kernels (`src/runtime/model/adapter_cuda.rs`);
//! `Adapter::product_half_by_tensor_ops` is the composition it replaces
//! (ftl's dropout kernel and burn's bf16 products). For each case the
//! update and the gradients of x, A and B under the loss `Σ u ⊙ w` are
//! computed on the GPU by the fused operation and, on the host in f64, from
//! the same x, A, B and w as the GPU holds them and the mask the host hash
//! gives for the same seed (`dropout::draw`). Where the composition's
//! products have tuned kernels (the models' shapes), the composition runs
//! too: a product shape met for the first time is tuned first, which took
//! over a minute for the odd shapes here. The cases cover MiniLM's and
//! MPNet's attention shapes (32 × 64 tokens, 384 and 768 features, rank 8),
//! an input that needs no gradient, no dropout with a bf16 input, rank 16
//! with A and B held in bf16 (f32 elsewhere, as training holds them),
//! a width that is not a multiple of a warp with fewer rows than a cube
//! holds, and a feed-forward shape (768 → 3,072).
//!
//! The GPU rounds x̃, h, u, ∂h and ∂h·Aᵀ to bf16 where the bf16 products
//! round; the host does not, and the composition sums in another order and
//! rounds ∂A and ∂B to bf16, which the fused operation does not.
//! Prints, per tensor, the largest difference relative to the tensor's
//! largest value and the cosine between the two, and exits non-zero when a
//! difference is above 2e-2 (a few bf16 steps) or a cosine below 0.9999: a
//! wrong index, mask or transpose gives differences of order 1.
//!
//! `cargo run --release --example adapter_check` (`CASES=1,3` runs only
//! those cases, numbered from 1)

#[cfg(feature = "cuda")]
#[path = "values.rs"]
mod values;

#[cfg(feature = "cuda")]
fn main() {
    use burn::backend::Autodiff;
    use burn::module::Param;
    use burn::prelude::*;
    use burn::tensor::{DType, FloatDType};
    use ftl::runtime::backend::{Gpu, configure_cubecl, cuda_available};
    use ftl::runtime::model::dropout::{Draws, draw, threshold};
    use ftl::runtime::model::projection::{Adapter, AdapterConfig};

    type Train = Autodiff<Gpu>;

    use values::values;

    struct Case {
        name: &'static str,
        /// batch, seq, d_in, d_out.
        shape: [usize; 4],
        rank: usize,
        dropout: f64,
        half_input: bool,
        input_grad: bool,
        /// A and B as bf16 parameters; f32 (as training holds them)
        /// otherwise. Their values are bf16 values either way.
        half_weights: bool,
        /// Whether the composition runs too (its products tuned).
        composed: bool,
    }

    /// The seed ftl's draws start from in every case.
    const SEED: u64 = 2024;

    fn flat<const D: usize>(t: Tensor<Gpu, D>) -> Vec<f32> {
        t.cast(FloatDType::F32)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 values")
    }

    /// u, ∂x, ∂A, ∂B (∂x empty where not asked for), by the fused
    /// operation or by the composition, and x, A, B and w as the GPU holds
    /// them.
    fn run(
        case: &Case,
        device: &burn::backend::cuda::CudaDevice,
        fused: bool,
    ) -> ([Vec<f32>; 4], [Vec<f32>; 4]) {
        let [batch, seq, d_in, d_out] = case.shape;
        let n = batch * seq * d_in;
        let mut adapter: Adapter<Train> = AdapterConfig::new(case.rank, 16.0)
            .with_dropout(case.dropout)
            .init(d_in, d_out, 7, device);
        let weight = |v: Vec<f32>, shape: [usize; 2]| {
            let w = Tensor::<Train, 1>::from_floats(v.as_slice(), device)
                .reshape(shape)
                .cast(FloatDType::BF16);
            if case.half_weights {
                w
            } else {
                w.cast(FloatDType::F32)
            }
        };
        adapter.a = Param::from_tensor(weight(
            values(d_in * case.rank, 2, 0.0, 0.05),
            [d_in, case.rank],
        ));
        adapter.b = Param::from_tensor(weight(
            values(case.rank * d_out, 3, 0.0, 0.05),
            [case.rank, d_out],
        ));
        let mut x: Tensor<Train, 3> =
            Tensor::<Train, 1>::from_floats(values(n, 1, 0.1, 2.0).as_slice(), device)
                .reshape([batch, seq, d_in]);
        if case.half_input {
            x = x.cast(FloatDType::BF16);
        }
        if case.input_grad {
            x = x.require_grad();
        }
        let w: Tensor<Train, 3> = Tensor::<Train, 1>::from_floats(
            values(batch * seq * d_out, 4, 0.0, 1.0).as_slice(),
            device,
        )
        .reshape([batch, seq, d_out]);
        Draws::seed(SEED);
        let u = if fused {
            adapter.product_half(x.clone(), None)
        } else {
            adapter.product_half_by_tensor_ops(x.clone(), None)
        };
        assert_eq!(u.dtype(), DType::BF16, "{}: the update is bf16", case.name);
        let loss = (u.clone().cast(FloatDType::F32) * w.clone()).sum();
        let grads = loss.backward();
        let dx = if case.input_grad {
            flat(x.grad(&grads).expect("x's gradient"))
        } else {
            Vec::new()
        };
        let da = flat(adapter.a.val().grad(&grads).expect("A's gradient"));
        let db = flat(adapter.b.val().grad(&grads).expect("B's gradient"));
        let inputs = [
            flat(x.inner()),
            flat(adapter.a.val().inner()),
            flat(adapter.b.val().inner()),
            flat(w.inner()),
        ];
        ([flat(u.inner()), dx, da, db], inputs)
    }

    /// u, ∂x, ∂A, ∂B on the host in f64, from the inputs as the GPU holds
    /// them and the host's mask for the case's seed.
    fn host(case: &Case, [x, a, b, w]: &[Vec<f32>; 4]) -> [Vec<f32>; 4] {
        let [batch, seq, d_in, d_out] = case.shape;
        let (rows, r) = (batch * seq, case.rank);
        let keep = 1.0 - case.dropout;
        Draws::seed(SEED);
        let seed = Draws::next();
        let limit = threshold(keep);
        let scale = |i: usize| {
            if case.dropout > 0.0 {
                if draw(seed, i as u32) < limit {
                    1.0 / keep
                } else {
                    0.0
                }
            } else {
                1.0
            }
        };
        let xd: Vec<f64> = (0..rows * d_in).map(|i| x[i] as f64 * scale(i)).collect();
        let mut h = vec![0f64; rows * r];
        let mut dh = vec![0f64; rows * r];
        for n in 0..rows {
            for k in 0..r {
                h[n * r + k] = (0..d_in)
                    .map(|j| xd[n * d_in + j] * a[j * r + k] as f64)
                    .sum();
                dh[n * r + k] = (0..d_out)
                    .map(|c| w[n * d_out + c] as f64 * b[k * d_out + c] as f64)
                    .sum();
            }
        }
        let u: Vec<f32> = (0..rows * d_out)
            .map(|i| {
                (0..r)
                    .map(|k| h[i / d_out * r + k] * b[k * d_out + i % d_out] as f64)
                    .sum::<f64>() as f32
            })
            .collect();
        let dx: Vec<f32> = if case.input_grad {
            (0..rows * d_in)
                .map(|i| {
                    let g: f64 = (0..r)
                        .map(|k| dh[i / d_in * r + k] * a[(i % d_in) * r + k] as f64)
                        .sum();
                    (g * scale(i)) as f32
                })
                .collect()
        } else {
            Vec::new()
        };
        let da: Vec<f32> = (0..d_in * r)
            .map(|i| {
                (0..rows)
                    .map(|n| xd[n * d_in + i / r] * dh[n * r + i % r])
                    .sum::<f64>() as f32
            })
            .collect();
        let db: Vec<f32> = (0..r * d_out)
            .map(|i| {
                (0..rows)
                    .map(|n| h[n * r + i / d_out] * w[n * d_out + i % d_out] as f64)
                    .sum::<f64>() as f32
            })
            .collect();
        [u, dx, da, db]
    }

    fn compare(a: &[f32], b: &[f32]) -> (f32, f64) {
        let scale = a
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(f32::MIN_POSITIVE);
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let cosine = if na == 0.0 && nb == 0.0 {
            1.0
        } else {
            dot / (na * nb)
        };
        (diff / scale, cosine)
    }

    /// Prints how far the fused values are from `reference`, at once;
    /// false when a tensor is off.
    fn report(case: &str, against: &str, fused: &[Vec<f32>; 4], reference: &[Vec<f32>; 4]) -> bool {
        let mut line = format!("{case:<30} vs {against:<9}");
        let mut agree = true;
        for (i, name) in ["u", "∂x", "∂A", "∂B"].iter().enumerate() {
            if fused[i].is_empty() && reference[i].is_empty() {
                continue;
            }
            if fused[i].len() != reference[i].len() {
                line.push_str(&format!(
                    " {name}: {} values against {} ✗",
                    fused[i].len(),
                    reference[i].len()
                ));
                agree = false;
                continue;
            }
            let (diff, cosine) = compare(&reference[i], &fused[i]);
            let bad = diff > 2e-2 || cosine < 0.9999 || diff.is_nan();
            agree &= !bad;
            line.push_str(&format!(
                "  {name} {diff:.1e} cos {cosine:.6}{}",
                if bad { " ✗" } else { "" }
            ));
        }
        println!("{line}");
        use std::io::Write;
        std::io::stdout().flush().ok();
        agree
    }

    if !cuda_available() {
        eprintln!("no CUDA device");
        std::process::exit(2);
    }
    configure_cubecl(0);
    let device = burn::backend::cuda::CudaDevice::new(0);
    let case = |name, shape, rank, dropout, half_input, input_grad, composed| Case {
        name,
        shape,
        rank,
        dropout,
        half_input,
        input_grad,
        half_weights: rank == 16,
        composed,
    };
    let cases = [
        case(
            "MiniLM q (384, r8, p 0.05)",
            [32, 64, 384, 384],
            8,
            0.05,
            false,
            true,
            true,
        ),
        case(
            "MPNet q (768, r8, p 0.05)",
            [32, 64, 768, 768],
            8,
            0.05,
            false,
            true,
            true,
        ),
        case(
            "MPNet first layer (no ∂x)",
            [32, 64, 768, 768],
            8,
            0.05,
            false,
            false,
            true,
        ),
        case(
            "no dropout, bf16 input",
            [32, 64, 768, 768],
            8,
            0.0,
            true,
            true,
            true,
        ),
        case(
            "rank 16, p 0.1, bf16 A, B",
            [8, 64, 384, 384],
            16,
            0.1,
            false,
            true,
            true,
        ),
        case(
            "odd width 100 → 70, 3 rows",
            [1, 3, 100, 70],
            8,
            0.2,
            false,
            true,
            false,
        ),
        case(
            "feed-forward 768 → 3072",
            [32, 64, 768, 3072],
            8,
            0.05,
            false,
            true,
            false,
        ),
    ];
    let mut failed = false;
    // CASES=3,5 runs only those cases (numbered from 1).
    let only: Option<Vec<usize>> = std::env::var("CASES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    for (number, c) in cases.iter().enumerate() {
        if only.as_ref().is_some_and(|o| !o.contains(&(number + 1))) {
            continue;
        }
        eprintln!("{}: fused", c.name);
        let (fused, inputs) = run(c, &device, true);
        failed |= !report(c.name, "host", &fused, &host(c, &inputs));
        if c.composed {
            eprintln!("{}: composed", c.name);
            let composed = run(c, &device, false).0;
            failed |= !report(c.name, "composed", &fused, &composed);
        }
    }
    if failed {
        eprintln!("the fused adapter update differs from the composition");
        std::process::exit(1);
    }
    println!("all cases agree");
}

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("built without the cuda feature");
    std::process::exit(2);
}
